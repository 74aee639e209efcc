# Two set-up commands that work on a fresh machine: `make demo` and `make test`.
# Both build a virtual environment in the checkout first. torch is pinned to the
# CPU build that installs from local disk; trl 1.16.0 is the first 1.x that trains
# on the CPU (1.15.0 fails there, see README "Versions").
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[hf,train,test]" "trl==1.16.0"
	touch $(STAMP)

.PHONY: venv demo test bench
venv: $(STAMP)

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
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pytest -q tests/bench --benchmark-enable --benchmark-only
