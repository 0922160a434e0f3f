"""aesam_hf.integrations.trl: TRL's defaults kept, `--optim aesam` parsed, TRL's metrics recorded once per SAM step.

A tiny Llama and a word-level tokenizer built here (no Hub). SAM and ERM runs start from the same weights and see the
same batches, so their first logged step is computed at the same w: every TRL metric must agree there, and the token
count at every step, while SAM's update makes the weights differ.
"""

import dataclasses
import importlib
import importlib.metadata
import subprocess
import sys

import pytest
import torch
from testing_utils import require_module
from transformers import HfArgumentParser, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


needs_trl = require_module("trl")

WORDS = "the a cat dog bird sat ran flew on under over mat log tree red blue big small quickly slowly and then".split()
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]
# Trains on the CPU: TRL's configs default to bf16, which transformers accepts on a CPU only with `use_cpu`.
QUIET = dict(report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no", seed=42)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    return LlamaForCausalLM(config)


def sentences(n: int, seed: int) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 10, (n,), generator=gen).tolist()
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (k,), generator=gen).tolist()) for k in lengths]


def step_logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]


def trl_metrics(log: dict) -> dict[str, float]:
    """What TRL's `compute_loss` recorded: everything but the stock Trainer's and our own keys."""
    stock = {"loss", "grad_norm", "learning_rate", "epoch", "step"}
    return {k: v for k, v in log.items() if k not in stock and not k.startswith("sam/")}


def assert_recorded_once(sam, erm, steps: int) -> None:
    """SAM's TRL metrics are those of the pass at w: the first step's equal ERM's, the token count every step's."""
    sam_logs, erm_logs = step_logs(sam), step_logs(erm)
    assert len(sam_logs) == len(erm_logs) == steps
    first_sam, first_erm = trl_metrics(sam_logs[0]), trl_metrics(erm_logs[0])
    assert first_sam.keys() == first_erm.keys() and "num_tokens" in first_sam
    for key, value in first_erm.items():
        assert first_sam[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    assert [h["num_tokens"] for h in sam_logs] == [h["num_tokens"] for h in erm_logs]
    # The SAM run really took SAM steps, and they changed the update.
    assert sam._sam_controller.sam_steps == steps and sam_logs[-1]["sam/passes"] == 2 * steps
    assert erm._sam_controller.sam_steps == 0
    assert any(not torch.equal(a, b) for a, b in zip(sam.model.parameters(), erm.model.parameters()))


# ---- without trl: aesam_hf does not need it, the integration says how to get it ----


def test_aesam_hf_imports_without_trl():
    code = "import sys, aesam_hf, aesam_hf.integrations, aesam_hf.run; print('trl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]


def test_the_trl_integration_names_the_extra_when_trl_is_missing(monkeypatch):
    real_version = importlib.metadata.version

    def version(name):
        if name == "trl":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.delitem(sys.modules, "aesam_hf.integrations.trl", raising=False)
    with pytest.raises(ImportError, match=r"trl >= 1.16, which is not installed: pip install 'aesam_hf\[trl\]'"):
        importlib.import_module("aesam_hf.integrations.trl")


# ---- configs: TRL's defaults kept, `optim` defaults to aesam ----


@needs_trl
@pytest.mark.parametrize("name", ["SFT", "DPO"])
def test_config_keeps_every_trl_default_but_optim(tmp_path, name):
    import trl

    from aesam_hf import AESAMConfig
    from aesam_hf.integrations import trl as integration

    trl_class, ours_class = getattr(trl, f"{name}Config"), getattr(integration, f"AESAM{name}Config")
    ours, stock = ours_class(output_dir=str(tmp_path), use_cpu=True), trl_class(output_dir=str(tmp_path), use_cpu=True)
    assert isinstance(ours, AESAMConfig) and isinstance(ours, trl_class)
    differ = {
        f.name: (getattr(ours, f.name), getattr(stock, f.name))
        for f in dataclasses.fields(stock)
        if getattr(ours, f.name) != getattr(stock, f.name)
    }
    assert set(differ) == {"optim"}, differ
    assert ours.sam_policy == "aesam" and ours.optim == "adamw_torch"


@needs_trl
def test_sft_config_defaults_are_trls_not_the_stock_ones(tmp_path):
    from aesam_hf.integrations.trl import AESAMSFTConfig

    args = AESAMSFTConfig(output_dir=str(tmp_path), use_cpu=True)
    # The four defaults `class C(AESAMConfig, SFTConfig)` used to revert to the stock ones.
    assert (args.learning_rate, args.bf16, args.gradient_checkpointing, args.logging_steps) == (2e-5, True, True, 10)


@needs_trl
def test_optim_aesam_parses_from_the_command_line(tmp_path):
    from aesam_hf import SAMPolicyName
    from aesam_hf.integrations.trl import AESAMDPOConfig, AESAMSFTConfig

    flags = ["--output_dir", str(tmp_path), "--use_cpu", "true", "--optim", "aesam", "--sam_rho", "0.1"]
    (sft,) = HfArgumentParser(AESAMSFTConfig).parse_args_into_dataclasses(flags + ["--max_length", "64"])
    assert (sft.sam_policy, sft.sam_rho, sft.max_length, sft.learning_rate) == (SAMPolicyName.AESAM, 0.1, 64, 2e-5)
    (dpo,) = HfArgumentParser(AESAMDPOConfig).parse_args_into_dataclasses(flags + ["--beta", "0.2"])
    assert (dpo.sam_policy, dpo.beta, dpo.learning_rate) == (SAMPolicyName.AESAM, 0.2, 1e-6)
    with pytest.raises(ValueError, match="sam_rho"):
        AESAMSFTConfig(output_dir=str(tmp_path), use_cpu=True, sam_rho=-1.0)


@needs_trl
def test_the_factory_serves_another_trl_trainer(tmp_path):
    import pickle

    from trl import KTOConfig, KTOTrainer

    from aesam_hf import AESAMTrainerMixin
    from aesam_hf.integrations import make_aesam_config, make_aesam_trainer

    config_class = make_aesam_config(KTOConfig)
    trainer_class = make_aesam_trainer(KTOTrainer, config_class)
    assert (config_class.__name__, config_class.__module__) == ("AESAMKTOConfig", __name__)
    assert trainer_class.__mro__[1:3] == (AESAMTrainerMixin, KTOTrainer)
    assert trainer_class.aesam_config_class is config_class
    args = config_class(output_dir=str(tmp_path), use_cpu=True, optim="sam")
    assert args.learning_rate == KTOConfig(output_dir=str(tmp_path), use_cpu=True).learning_rate
    assert args.sam_policy == "sam" and args.desirable_weight == 1.0
    globals()["AESAMKTOConfig"] = config_class  # pickle finds the class by module and name
    try:
        assert pickle.loads(pickle.dumps(args)).sam_policy == "sam"
    finally:
        del globals()["AESAMKTOConfig"]
    with pytest.raises(TypeError, match="config_class"):
        make_aesam_trainer(KTOTrainer, KTOConfig)


# ---- training: the second pass of a SAM step records nothing ----


def sft_run(tmp_path, optim: str, steps: int = 6, trainer_class=None, **kwargs):
    from datasets import Dataset

    from aesam_hf.integrations.trl import AESAMSFTConfig, AESAMSFTTrainer

    trainer_class = trainer_class or AESAMSFTTrainer
    settings = dict(per_device_train_batch_size=4, logging_steps=1, learning_rate=1e-2, **QUIET)
    args = AESAMSFTConfig(output_dir=str(tmp_path / optim), optim=optim, max_steps=steps, **{**settings, **kwargs})
    train = Dataset.from_dict({"text": sentences(32, seed=0)})
    trainer = trainer_class(model=tiny_llama(), args=args, train_dataset=train, processing_class=tiny_tokenizer())
    trainer.train()
    return trainer


def dpo_run(tmp_path, optim: str, steps: int = 4):
    from datasets import Dataset

    from aesam_hf.integrations.trl import AESAMDPOConfig, AESAMDPOTrainer

    args = AESAMDPOConfig(
        output_dir=str(tmp_path / optim),
        optim=optim,
        max_steps=steps,
        per_device_train_batch_size=4,
        logging_steps=1,
        learning_rate=1e-2,
        **QUIET,
    )
    train = Dataset.from_dict({"prompt": sentences(16, 1), "chosen": sentences(16, 2), "rejected": sentences(16, 3)})
    # A reference model unlike the policy: the rewards are not zero at the first step, so they can disagree.
    trainer = AESAMDPOTrainer(
        model=tiny_llama(),
        ref_model=tiny_llama(seed=1),
        args=args,
        train_dataset=train,
        processing_class=tiny_tokenizer(),
    )
    trainer.train()
    return trainer


@needs_trl
def test_sft_sam_records_the_metrics_of_an_erm_run(tmp_path):
    sam, erm = sft_run(tmp_path, "sam"), sft_run(tmp_path, "erm")
    assert_recorded_once(sam, erm, steps=6)
    assert {"entropy", "mean_token_accuracy", "num_tokens"} <= trl_metrics(step_logs(sam)[0]).keys()
    # TRL's running total, checked against the data: the batches' attention masks, counted once.
    assert sam._total_train_tokens == erm._total_train_tokens == step_logs(erm)[-1]["num_tokens"]
    # TRL's defaults stayed on: bf16 autocast and gradient checkpointing ran under SAM.
    assert sam.args.bf16 and sam.args.gradient_checkpointing and sam.model.is_gradient_checkpointing


@needs_trl
def test_dpo_sam_records_the_metrics_of_an_erm_run(tmp_path):
    sam, erm = dpo_run(tmp_path, "sam"), dpo_run(tmp_path, "erm")
    assert_recorded_once(sam, erm, steps=4)
    first = trl_metrics(step_logs(sam)[0])
    assert {"rewards/chosen", "rewards/margins", "logps/chosen", "entropy", "num_tokens"} <= first.keys()
    assert first["rewards/chosen"] != 0.0


@needs_trl
def test_metrics_in_a_logging_window_are_one_per_step(tmp_path):
    """With gradient accumulation and a window of 3 steps, SAM and ERM append as many values per window."""
    from aesam_hf.integrations.trl import AESAMSFTTrainer

    counts = {}

    class Counting(AESAMSFTTrainer):
        def log(self, logs, *args, **kwargs):
            if "loss" in logs and "train_runtime" not in logs:
                counts.setdefault(self.args.sam_policy.value, []).append(len(self._metrics["train"]["entropy"]))
            super().log(logs, *args, **kwargs)

    window = dict(steps=6, logging_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=2)
    sft_run(tmp_path, "sam", trainer_class=Counting, **window)
    sft_run(tmp_path, "erm", trainer_class=Counting, **window)
    assert counts == {"sam": [6, 6], "erm": [6, 6]}  # 3 steps x 2 micro-batches


@needs_trl
def test_a_plain_aesam_config_is_converted_keeping_its_values(tmp_path):
    from datasets import Dataset

    from aesam_hf import AESAMConfig
    from aesam_hf.integrations.trl import AESAMSFTConfig, AESAMSFTTrainer

    args = AESAMConfig(output_dir=str(tmp_path), optim="sam", sam_rho=0.2, max_steps=1, **QUIET)
    train = Dataset.from_dict({"text": sentences(8, seed=0)})
    trainer = AESAMSFTTrainer(model=tiny_llama(), args=args, train_dataset=train, processing_class=tiny_tokenizer())
    assert isinstance(trainer.args, AESAMSFTConfig)
    assert (trainer.args.sam_policy, trainer.args.sam_rho, trainer.args.learning_rate) == ("sam", 0.2, 5e-5)
