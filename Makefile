# Two commands do all the set-up:  `make run` (main job on the embedded Gemma)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# llama-cpp-python compiles llama.cpp: not for this CPU (-march=native), whose AMX path crashed on one of
# these machines and which changes between sessions, but for any x86-64 with AVX2.
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF
endif

.PHONY: run test ui train-merge runtimes

# the core: transformers, bitsandbytes, MLflow, Hydra (make run needs nothing more)
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# + llama.cpp and CTranslate2 (backend=llama-cpp, backend=ctranslate2; llama.cpp builds in ~4 min on 2 cores)
# and the test tools. llama-cpp-python's source distribution is downloaded once: the wheel is built from it, and
# llama.cpp's own converter (convert_hf_to_gguf.py, conversion/, gguf-py) is extracted from it beside the venv's
# packages, so that backend=llama-cpp converts any architecture it handles offline, at the version it runs.
LLAMA_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
LLAMA_SDIST := $(VENV)/share/qsweep/llama_cpp_python-$(LLAMA_VERSION).tar.gz
LLAMA_SOURCE := $(VENV)/share/qsweep/llama.cpp-$(LLAMA_VERSION)
$(VENV)/.installed-all: $(VENV)/.installed
	$(PY) -m pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_VERSION) -d $(dir $(LLAMA_SDIST))
	mkdir -p $(LLAMA_SOURCE)
	tar -xzf $(LLAMA_SDIST) -C $(LLAMA_SOURCE) --strip-components=3 \
		$(addprefix llama_cpp_python-$(LLAMA_VERSION)/vendor/llama.cpp/,convert_hf_to_gguf.py conversion gguf-py LICENSE)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q $(LLAMA_SDIST)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(PY) run.py

runtimes: $(VENV)/.installed-all

train-merge: $(VENV)/.installed
	$(PY) -m train_merge

# Two test processes (pytest-xdist), a test module's tests in one (its module-scoped sweeps run once): most of a
# test's time is a sweep's start-up, on one core. TEST_WORKERS=0: one after another in one process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-all
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

ui: $(VENV)/.installed
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000
