# The commands of the README: `make demo`, `make test`, `make lint` (ruff, as CI checks it) and
# `make serve` (the demo's run in a browser). Each sets up a local .venv on a fresh machine:
# torch (CPU build, from the local disk) first, then the project without build isolation so pip
# never fetches a CUDA torch, then it runs. The venv also gets the extras the suite uses
# (serve: fastapi and uvicorn; test: httpx2 and selenium, which drive `attngan serve`; ruff).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
TRITON_VERSION ?= 3.8.0
STAMP := $(VENV)/.attngan-installed
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.h csrc/cuda/*.cu)
DEMO_DIR ?= demo
PYTEST_ARGS ?=

.PHONY: demo serve test lint bench venv clean

venv: $(STAMP)

$(STAMP): setup.py pyproject.toml $(EXT_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "setuptools>=77" wheel
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet "triton==$(TRITON_VERSION)" numpy pyyaml tqdm pillow ninja pybind11 \
		pytest pytest-benchmark nvidia-ml-py fastapi uvicorn httpx2 selenium ruff==0.17.6
	$(PIP) install --quiet --no-build-isolation --no-deps -e .
	$(PY) -c "import attngan, attngan.backend as b; print('attngan installed;', b.describe())"
	touch $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: $(STAMP)
	$(PY) -m attngan demo --out $(DEMO_DIR)

serve: $(STAMP)
	$(PY) -m attngan serve --ckpt $(DEMO_DIR)/gan

bench: $(STAMP)
	$(PY) bench/bench_damsm.py

clean:
	rm -rf $(VENV) build *.egg-info attngan/_C*.so
