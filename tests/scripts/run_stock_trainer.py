"""A stock `Trainer` script shaped like transformers' `examples/pytorch/*/run_*.py`, with no aesam_hf in it.

    python tests/scripts/run_stock_trainer.py --output_dir OUT --do_train --max_steps 4
    python -m aesam_hf.run tests/scripts/run_stock_trainer.py --output_dir OUT --do_train --optim aesam

It classifies random token sequences (the label is the parity of the first token) with a small BERT built from its
config, so that it runs offline. `tests/test_launcher.py` runs it as it is and through the launcher.
"""

import logging
import os
import sys
from dataclasses import dataclass, field

import torch
import transformers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)


logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    hidden_size: int = field(default=16, metadata={"help": "Hidden size of the BERT built from its config."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Number of layers."})
    vocab_size: int = field(default=50, metadata={"help": "Vocabulary size."})


@dataclass
class DataTrainingArguments:
    max_train_samples: int = field(default=64, metadata={"help": "Number of training sequences."})
    max_eval_samples: int = field(default=32, metadata={"help": "Number of evaluation sequences."})
    max_seq_length: int = field(default=8, metadata={"help": "Length of each sequence."})


class ParityDataset(torch.utils.data.Dataset):
    def __init__(self, length: int, seq_len: int, vocab: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, vocab, (length, seq_len), generator=gen)
        self.labels = self.ids[:, 0] % 2

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses()

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler()]
    )
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    logger.info(f"Training/evaluation parameters {training_args}")
    set_seed(training_args.seed)

    config = BertConfig(
        vocab_size=model_args.vocab_size,
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=2,
        intermediate_size=2 * model_args.hidden_size,
        max_position_embeddings=max(32, data_args.max_seq_length),
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    vocab, seq_len = model_args.vocab_size, data_args.max_seq_length
    train_dataset = ParityDataset(data_args.max_train_samples, seq_len, vocab, seed=0)
    eval_dataset = ParityDataset(data_args.max_eval_samples, seq_len, vocab, seed=1)

    def compute_metrics(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        compute_metrics=compute_metrics,
    )

    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


if __name__ == "__main__":
    main()
