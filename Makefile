# `make test` and `make quickstart` work on a fresh machine with only python3.
# They create (or reuse) .venv, install the package, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ouro-installed
# Without an NVIDIA GPU we pin the CPU build of torch; an unpinned torch pulls a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: install test quickstart lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
ifeq ($(HAS_GPU),1)
	$(PY) -m pip install --quiet -e '.[dev,eval]'
else
	$(PY) -m pip install --quiet '$(TORCH_CPU)'
	$(PY) -m pip install --quiet '$(TORCH_CPU)' -e '.[dev,eval]'
endif
	# litdata pulls a torchvision built for another torch, which breaks `import lightning`
	# (operator torchvision::nms does not exist); litdata needs it only for images.
	$(PY) -m pip uninstall --quiet -y torchvision || true
	$(PY) -c "import torch, lightning, litdata, ouro; print('ouro installed: torch', torch.__version__, 'lightning', lightning.__version__)"
	touch $(STAMP)

# Test files are spread over this many pytest-xdist workers (one per core of a 2-core machine; tests marked
# `exclusive`, the SLURM ones, run alone). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

quickstart: $(STAMP)
	$(VENV)/bin/ouro fit --config recipes/quickstart.yaml
	@echo "ouro: the run is in runs/quickstart (checkpoints/last.ckpt, logs/ with metrics.csv, tensorboard/)"
	@echo "next: ouro plot runs/quickstart; ouro generate runs/quickstart 'def ' --max_new_tokens 40; ouro eval runs/quickstart --tasks ouro_arith --depths 1-4 --out runs/quickstart/eval"
	@echo "the per-step table: at this toy scale (2 layers, 400 steps of library text) later passes barely lower, even raise, the loss; on a task that needs several steps they pay off: ouro pipeline recipes/pipelines/demo.yaml"

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) build *.egg-info
