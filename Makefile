# diffice — every target installs what it needs on first use: a fresh clone needs no other step.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= tiny
EXP ?= table1
HC18 ?= ../shared/data/hc18
ARGS ?=
CFG := configs/preset/$(PRESET).yaml
DIFFICE := $(BIN)/diffice
export WANDB_SILENT := true

.DEFAULT_GOAL := help
.PHONY: help install lock test test-dispatch test-all lint demo phantoms manifest data-check train-ddpm train-segmenter \
        train-classifier train-oracle train-all counterfactuals evaluate sample experiment bench clean realism \
        demo-scratch demo-models demo-hc18 train-synthesis synthesize

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'
	@echo "  variables: PRESET=tiny|demo|paper (default tiny)  ARGS='key=value ...'  EXP=table1|table2|ablation|synthesis_ablation"

# constraints.txt pins every dependency to the version the test suite passed with (pyproject.toml
# keeps ranges, for those who embed diffice); `make lock` regenerates it from .venv
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv with torch and diffice (+ test extras), at the tested versions (constraints.txt)

lock: $(STAMP) ## after upgrading .venv and passing `make test`: pin its versions in constraints.txt
	@{ echo "# The versions diffice's tests passed with; 'make install' installs exactly these. Regenerate:"; \
	   echo "# 'make lock' (pip freeze of .venv without diffice itself and torch's platform-specific CUDA wheels)."; \
	   $(BIN)/python -m pip freeze --exclude-editable | grep -v -i -E '^(nvidia-|cuda-|triton==|diffice)' | LC_ALL=C sort -f; \
	 } > constraints.txt.tmp && mv constraints.txt.tmp constraints.txt
	@echo "constraints.txt: $$(grep -c '==' constraints.txt) pinned packages"

test: $(STAMP) ## fast test suite (a few minutes on 2 CPU cores)
	WANDB_MODE=disabled $(BIN)/python -m pytest

# the same-bits claims (batch invariance, exact resume) once more under another CPU kernel dispatch: MKL, ATen
# and oneDNN limited to AVX2, as a CPU without AVX-512 (or MKL on an AMD CPU) runs them; CI runs both
DISPATCH := MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
test-dispatch: $(STAMP) ## the batch-invariance and resume tests under the AVX2 kernel dispatch
	WANDB_MODE=disabled $(DISPATCH) $(BIN)/python -m pytest tests/test_batch_invariance.py tests/test_resume_exact.py

test-all: $(STAMP) ## every test, the slow ones too
	WANDB_MODE=disabled $(BIN)/python -m pytest -m ''

lint: $(STAMP) ## ruff
	$(BIN)/ruff check src tests bench

demo: $(STAMP) ## Diff-ICE with the shipped model pack (models/demo): counterfactuals, metrics, report in minutes
	$(DIFFICE) demo $(ARGS)

demo-scratch: $(STAMP) ## the whole pipeline from nothing: phantom -> four models -> counterfactuals -> report (~10-15 min)
	$(DIFFICE) demo --scratch $(ARGS)

demo-hc18: $(STAMP) ## Diff-ICE on real HC18 heads with acquisition faults, with the real-data pack (models/hc18; HC18=PATH)
	$(DIFFICE) hc18-faults --root $(HC18) --out data/hc18-faults --if-missing
	$(DIFFICE) demo --pack models/hc18 --preset hc18 paths.runs=runs/demo-hc18 $(ARGS)

demo-models: $(STAMP) ## train the demo preset's models (resumable, ~1.5 h on 2 cores) and rewrite the pack in models/demo
	$(DIFFICE) demo-models $(ARGS)

phantoms: $(STAMP) ## write a phantom data set to data/phantom
	$(DIFFICE) phantoms --out data/phantom --count 400 --seed 0 $(ARGS)

realism: $(STAMP) ## how real the phantom looks: 300 phantom frames vs 300 HC18 frames (HC18=PATH)
	$(DIFFICE) phantoms --out runs/realism/phantom300 --count 300 --seed 0 data.image_size=[224,288] $(ARGS)
	$(DIFFICE) realism runs/realism/phantom300/manifest.csv $(HC18) --count 300 --out runs/realism

manifest: $(STAMP) ## a manifest from your own folder of frames: DIR=PATH (SP/ and NSP/ inside), ARGS='--masks M ...' (docs/your_data.md)
	@test -n "$(DIR)" || { echo "make manifest: set DIR=PATH, a folder of frames with SP/ and NSP/ inside (docs/your_data.md)" >&2; exit 2; }
	$(DIFFICE) manifest $(DIR) $(ARGS)

data-check: $(STAMP) ## check the configured data set
	$(DIFFICE) data-check $(CFG) $(ARGS)

train-ddpm: $(STAMP) ## train the DDPM (PRESET, ARGS)
	$(DIFFICE) train-ddpm $(CFG) $(ARGS)

train-segmenter: $(STAMP) ## train the segmenter
	$(DIFFICE) train-segmenter $(CFG) $(ARGS)

train-classifier: $(STAMP) ## train the standard-plane guide (needs the segmenter)
	$(DIFFICE) train-classifier $(CFG) $(ARGS)

train-synthesis: $(STAMP) ## train the layout-conditioned DDPM (FetalFlex synthesis)
	$(DIFFICE) train-synthesis $(CFG) $(ARGS)

synthesize: $(STAMP) ## synthesise the test layouts and edit test frames with runs/synthesis/last.ckpt (report, metrics)
	$(DIFFICE) synthesize runs/synthesis/last.ckpt $(CFG) --test $(ARGS)

train-oracle: $(STAMP) ## train the PCBM oracle
	$(DIFFICE) train-oracle $(CFG) $(ARGS)

train-all: train-ddpm train-segmenter train-classifier train-oracle ## all four models

counterfactuals: $(STAMP) ## Diff-ICE counterfactuals for the test NSP frames, metrics and report
	$(DIFFICE) counterfactuals $(CFG) $(ARGS)

sample: $(STAMP) ## 16 frames from the trained DDPM into runs/samples
	$(DIFFICE) sample runs/ddpm/last.ckpt --count 16 --out runs/samples $(ARGS)

experiment: $(STAMP) ## an experiment: EXP=table1|table2|ablation|synthesis_ablation|anomaly_fidelity|fetalflex_downstream|hc18_downstream PRESET=tiny|demo|paper|hc18
	$(DIFFICE) experiment experiments/$(EXP).yaml --preset $(PRESET) $(ARGS)

bench: $(STAMP) ## run the benchmarks in bench/ (results to bench/RESULTS.md)
	WANDB_MODE=disabled $(BIN)/python bench/run_all.py

clean: ## remove run outputs (keeps .venv)
	rm -rf runs wandb lightning_logs
