# Set-up and the main jobs. `make test` and `make demo` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch is installed first, so that the range in pyproject.toml
# is already satisfied and pip never fetches a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install test demo bench tables clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/hyperseg demo -o demo_out

bench: install
	$(BIN)/python benchmarks/bench_embed.py
	$(BIN)/python benchmarks/bench_kmeans.py

# the paper's tables with every row measured here (~40 min on 2 CPU cores)
tables: install
	$(BIN)/hyperseg bench --profile quick -o bench_out

clean:
	rm -rf $(VENV) demo_out bench_out
