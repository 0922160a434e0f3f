"""A stock `Seq2SeqTrainer` script shaped like transformers' `run_translation.py`, with no aesam_hf in it.

    python tests/scripts/run_stock_seq2seq.py --output_dir OUT --do_train --do_eval --predict_with_generate
    python -m aesam_hf.run tests/scripts/run_stock_seq2seq.py --output_dir OUT --do_train --optim sam

A small T5 built from its config learns to copy short token sequences, offline. Evaluation with
`--predict_with_generate` decodes with `generate` and scores exact copies. `tests/test_launcher.py` runs it.
"""

import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import transformers
from transformers import (
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    T5Config,
    T5ForConditionalGeneration,
    set_seed,
)


logger = logging.getLogger(__name__)

PAD, EOS = 0, 1


@dataclass
class ModelArguments:
    d_model: int = field(default=16, metadata={"help": "Model width of the T5 built from its config."})
    vocab_size: int = field(default=24, metadata={"help": "Vocabulary size."})


@dataclass
class DataTrainingArguments:
    max_train_samples: int = field(default=64, metadata={"help": "Number of training pairs."})
    max_eval_samples: int = field(default=16, metadata={"help": "Number of evaluation pairs."})
    max_source_length: int = field(default=6, metadata={"help": "Length of each source sequence."})


class CopyDataset(torch.utils.data.Dataset):
    def __init__(self, length: int, seq_len: int, vocab: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        body = torch.randint(EOS + 1, vocab, (length, seq_len), generator=gen)
        self.ids = torch.cat([body, torch.full((length, 1), EOS)], dim=1)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.ids[i]}


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses()

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler()]
    )
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    config = T5Config(
        vocab_size=model_args.vocab_size,
        d_model=model_args.d_model,
        d_ff=2 * model_args.d_model,
        d_kv=8,
        num_layers=1,
        num_heads=2,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
    )
    model = T5ForConditionalGeneration(config)
    seq_len, vocab = data_args.max_source_length, model_args.vocab_size
    train_dataset = CopyDataset(data_args.max_train_samples, seq_len, vocab, seed=0)
    eval_dataset = CopyDataset(data_args.max_eval_samples, seq_len, vocab, seed=1)

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        preds = np.asarray(preds)[:, 1 : labels.shape[1] + 1]  # drop the decoder start token
        width = min(preds.shape[1], labels.shape[1])
        exact = (preds[:, :width] == labels[:, :width]).all(axis=1) & (width == labels.shape[1])
        return {"exact_match": float(exact.mean())}

    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        compute_metrics=compute_metrics if training_args.predict_with_generate else None,
    )

    if training_args.do_train:
        train_result = trainer.train()
        trainer.save_model()
        metrics = train_result.metrics
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        metrics = trainer.evaluate(max_length=seq_len + 2, metric_key_prefix="eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


if __name__ == "__main__":
    main()
