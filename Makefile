# Two set-up commands that work on a fresh machine: `make demo` and `make test`.
# Both build a virtual environment in the checkout first, and say what they install.
# torch: the CPU build (TORCH=cpu, the default) where one is offered: download.pytorch.org's
# CPU index, or a local wheel pip's configuration points at (find-links); on Linux that is
# about 200 MB, where plain `pip install torch` brings the CUDA build (several GB). Where no
# CPU build is offered (macOS, whose PyPI wheel is CPU/MPS anyway), or with TORCH=pypi, torch
# comes from PyPI as plain pip gives it. trl 1.16.0 is the first 1.x that trains on the CPU
# (1.15.0 fails there, see README "Versions").
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH ?= cpu
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if [ "$(TORCH)" = cpu ]; then \
	  echo "make: installing torch $(TORCH_VERSION)+cpu (the CPU build) from $(TORCH_CPU_INDEX) or a local wheel"; \
	  echo "      (without network pip retries that index for about 10 s before it takes a local wheel)"; \
	fi
	@if [ "$(TORCH)" = cpu ] && $(BIN)/pip install -q --retries 1 --no-deps "torch==$(TORCH_VERSION)+cpu" \
	    --extra-index-url $(TORCH_CPU_INDEX); then :; else \
	  echo "make: installing torch $(TORCH_VERSION) from PyPI as plain pip gives it: on Linux x86-64 that is the CUDA build (several GB)"; \
	  $(BIN)/pip install -q "torch==$(TORCH_VERSION)"; \
	fi
	@echo "make: installing ftc with its hf, train and test extras (transformers, peft, trl 1.16.0, datasets, pytest, tensorboard)"
	$(BIN)/pip install -q -e ".[hf,train,test]" "trl==1.16.0"
	@$(BIN)/python -c "import torch; c = torch.version.cuda; print(f'make: installed torch {torch.__version__}, ' + (f'a CUDA {c} build' if c else 'a CPU-only build'))"
	touch $(STAMP)

.PHONY: venv demo test bench
venv: $(STAMP)

# Run twice, the second `ftc run` finds the finished run of the same plan and says so.
demo: $(STAMP)
	$(BIN)/ftc compile recipes/demo.json -o runs/demo/plan.lock
	$(BIN)/ftc preview runs/demo/plan.lock -n 1 --tokens
	$(BIN)/ftc run runs/demo/plan.lock --output runs/demo/run
	$(BIN)/ftc infer runs/demo/run --max-new-tokens 40 \
	  --input '{"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"}'
	@echo "adapter and report: runs/demo/run (report.md, loss.png, metrics.jsonl)"
	# SFT -> GRPO: an SFT in the rewards' format, then GRPO from its adapter (model.adapter); the format reward rises
	$(BIN)/ftc compile recipes/demo_reasoning.json -o runs/demo_reasoning/plan.lock
	$(BIN)/ftc run runs/demo_reasoning/plan.lock --output runs/demo_reasoning/run
	$(BIN)/ftc compile recipes/demo_grpo.json -o runs/demo_grpo/plan.lock
	$(BIN)/ftc run runs/demo_grpo/plan.lock --output runs/demo_grpo/run
	$(BIN)/ftc infer runs/demo_grpo/run --max-new-tokens 48 --temperature 0 \
	  --input '{"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"}'
	@echo "GRPO report (rewards first vs last steps): runs/demo_grpo/run/report.md, rewards.png"

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

bench: $(STAMP)
	$(BIN)/python -m pytest -q tests/bench --benchmark-enable --benchmark-only
