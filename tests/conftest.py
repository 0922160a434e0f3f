import os

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@pytest.fixture(scope="module")
def fortunes_csv(tmp_path_factory) -> dict:
    """The fortunes topic task's train/validation/test CSVs, built as `make data` builds them."""
    from benchmarks import fortunes

    if not (fortunes.FORTUNES_DIR / "computers").is_file():
        pytest.skip("needs Debian's fortunes (`make data`)")
    return fortunes.main(["--output_dir", str(tmp_path_factory.mktemp("fortunes"))])


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer BERT with MiniLM's real tokenizer, saved like a Hub checkpoint."""
    from example_utils import minilm_path
    from testing_utils import tiny_bert_config
    from transformers import AutoTokenizer, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = tiny_bert_config(vocab_size=tokenizer.vocab_size, max_position_embeddings=64, num_labels=4)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
