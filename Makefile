# Two commands do all the set-up:  `make run` (main job on the embedded Gemma)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test ui train-merge

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(PY) run.py

train-merge: $(VENV)/.installed
	$(PY) -m train_merge

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

ui: $(VENV)/.installed
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000
