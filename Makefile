# Two set-up commands: `make demo` and `make test` each do all set-up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test test-gpu results bench bench-deps bench-gpu bench-workers protos clean image image-test

setup: $(STAMP)

$(STAMP): pyproject.toml
	@[ -n "$(PYTHON)" ] || { echo "need Python 3.11+ (python3.11 or python3; or set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -e ".[train,loadtest,dev]"
	touch $(STAMP)

# Fashion-MNIST from Debian's package when apt is there and the data is missing, else through
# torchvision (online) into ~/.cache/edgecnn. Never fatal: the tests that need it then skip,
# unless EDGECNN_REQUIRE_DATA=1 (CI) makes them fail.
data: setup
	@if [ -f $(FASHION_DIR)/t10k-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: $(FASHION_DIR)"; \
	elif command -v apt-get >/dev/null && SUDO=$$( [ "$$(id -u)" = 0 ] || command -v sudo ) \
		&& $$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist; then \
		echo "Fashion-MNIST: installed dataset-fashion-mnist"; \
	else \
		$(BIN)/python scripts/get_data.py \
			|| echo "no Fashion-MNIST (no apt package, no download): the tests that need it skip"; \
	fi

demo: setup data
	$(BIN)/python scripts/demo.py $$( [ -f $(FASHION_DIR)/t10k-images-idx3-ubyte.gz ] || echo --download )

test: setup data
	$(BIN)/python -m pytest -q

results: setup data
	$(BIN)/python scripts/results.py

# perf_analyzer (the tritonclient wheel's, in $(BIN)) needs libb64.so.0d (Debian's libb64-0d) and
# libcudart.so.12 (PyPI's nvidia-cuda-runtime-cu12; edgecnn/loadtest/perf_analyzer.py puts its lib
# folder on LD_LIBRARY_PATH). Never fatal: without them the bench reports why it has no perf_analyzer figures.
bench-deps: setup
	-@if ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then echo "libb64.so.0d: installed"; \
	elif command -v apt-get >/dev/null && SUDO=$$( [ "$$(id -u)" = 0 ] || command -v sudo ) \
		&& $$SUDO apt-get update -q && $$SUDO apt-get install -y -q libb64-0d; then echo "libb64.so.0d: installed libb64-0d"; \
	else echo "no libb64-0d (no apt, or it failed): the bench runs without perf_analyzer"; fi
	-@$(BIN)/pip install -q nvidia-cuda-runtime-cu12 \
		|| echo "no nvidia-cuda-runtime-cu12 (pip failed): the bench runs without perf_analyzer"

bench: setup data bench-deps
	$(BIN)/python scripts/bench.py

# On a machine with an NVIDIA GPU (they skip or refuse elsewhere).
test-gpu: setup data
	$(BIN)/python -m pytest -q -m cuda

bench-gpu: setup data bench-deps
	$(BIN)/python scripts/bench.py --devices cuda --out docs/benchmarks-gpu.md

# On a machine of 16 or more CPUs (issue 15's 4x goal): LeNet-5 under `edgecnn serve --workers 8`
# against --workers 1 on the CPU provider, with client processes enough to load 8 workers.
bench-workers: setup data bench-deps
	$(BIN)/python scripts/bench.py --devices cpu --models lenet5 --http-models '' --workers-count 8 --processes 6 \
		--out docs/benchmarks-workers8.md

protos: setup
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf runs .pytest_cache

# The CPU server image (deploy/docker/Dockerfile) with docker or podman, whichever works here.
# OFFLINE_BASE=1: no container registry reachable; builds the python:3.11-slim-bookworm base locally
# with debootstrap (root, a Debian mirror) and builds through the host's network and CA bundle
# (deploy/docker/image.py). image-test builds it, runs it with a model repository mounted
# read-only and checks it through its published ports (tests/deploy/test_image.py).
OFFLINE_BASE ?= 0

image:
	OFFLINE_BASE=$(OFFLINE_BASE) $(PYTHON) deploy/docker/image.py build

image-test: setup
	EDGECNN_IMAGE_TEST=1 OFFLINE_BASE=$(OFFLINE_BASE) $(BIN)/python -m pytest -q -rA -s tests/deploy/test_image.py
