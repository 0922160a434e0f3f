"""LoRA (peft) under the SAM policies: the frozen base weights stay bit-identical, and SAM's extra memory is the copy
of the trainable parameters only (the controller perturbs and saves only what requires grad)."""

import pytest
import torch
from testing_utils import TokenDataset, get_trainer, require_module, sam_logs, tiny_bert


pytestmark = require_module("peft")


def lora_bert():
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")
    return get_peft_model(tiny_bert(), config)


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("optim", ["sam", "aesam"])
def test_lora_keeps_the_base_weights_and_saves_only_the_trainable_ones(tmp_path, optim):
    model = lora_bert()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and trainable and any("lora_" in n for n in trainable)
    trainer = get_trainer(tmp_path, model=model, train_dataset=TokenDataset(), optim=optim, sam_rho=0.5, max_steps=4)
    trainer.train()

    controller = trainer._sam_controller
    assert controller.sam_steps > 0, [h["sam/fraction"] for h in sam_logs(trainer)]
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"base weight {name} changed"
    assert any(not torch.equal(p, trainable[n]) for n, p in model.named_parameters() if n in trainable)
    # The only memory SAM adds is the saved w: one copy of the trainable parameters, none of the frozen ones.
    assert nbytes(controller._w_saved) == nbytes(p for p in model.parameters() if p.requires_grad)
    assert nbytes(controller._w_saved) < nbytes(frozen.values()) / 10
