# Two set-up commands: `make demo` and `make test` each do all set-up on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test results bench protos clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -e ".[train,dev]"
	touch $(STAMP)

# Fashion-MNIST from Debian's package when apt is there and the data is missing.
data:
	@if [ -f $(FASHION_DIR)/t10k-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: $(FASHION_DIR)"; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist; \
	else \
		echo "no apt-get: the demo will try a torchvision download of Fashion-MNIST"; \
	fi

demo: setup data
	$(BIN)/python scripts/demo.py

test: setup data
	$(BIN)/python -m pytest -q

results: setup data
	$(BIN)/python scripts/results.py

bench: setup data
	$(BIN)/python scripts/bench.py

protos: setup
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf runs .pytest_cache
