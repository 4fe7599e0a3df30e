# Set-up and the main jobs. `make test` and `make demo` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The versions tested, one per dependency (pyproject.toml keeps ranges for users): pip gets them with -c,
# so a dependency's new release (a new warning, which pytest makes an error) cannot turn CI red by itself.
CONSTRAINTS ?= constraints.txt
# The CPU wheel of torch is installed first, so that the range in pyproject.toml
# is already satisfied and pip never fetches a multi-GB CUDA build. Its version is the
# constraints file's; TORCH_SPEC="torch==2.5.1" (any pip requirement) installs another.
TORCH_SPEC ?= $(shell grep -m1 '^torch==' $(CONSTRAINTS))
BIN := $(VENV)/bin

.PHONY: install test demo bench tables constraints clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# everything but torch under the constraints: torch is already there, from TORCH_SPEC
$(VENV)/.installed: $(BIN)/activate pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	grep -v '^torch==' $(CONSTRAINTS) > $(VENV)/constraints-but-torch.txt
	$(BIN)/pip install --quiet -c $(VENV)/constraints-but-torch.txt -e ".[test]"
	touch $@

install: $(VENV)/.installed

# napari's tests open a viewer and need an X display: without one, pytest runs under a virtual X server
# (Debian's xvfb, which .ci/run installs) when xvfb-run exists (Qt's offscreen platform gives vispy no OpenGL)
XVFB_RUN := $(if $(DISPLAY),,$(shell command -v xvfb-run 2>/dev/null))
XVFB := $(if $(XVFB_RUN),$(XVFB_RUN) -a --server-args="-screen 0 1280x1024x24")

test: install
	$(XVFB) $(BIN)/python -m pytest -q

demo: install
	$(BIN)/hyperseg demo -o demo_out

bench: install
	$(BIN)/python benchmarks/bench_embed.py
	$(BIN)/python benchmarks/bench_kmeans.py

# the paper's tables with every row measured here (about 37 min on 2 CPU cores, BENCHMARKS.md)
tables: install
	$(BIN)/hyperseg bench --profile quick -o bench_out

# rewrite the constraints file from what .venv holds now (after testing an upgrade), keeping its comments
constraints: install
	{ grep '^#' $(CONSTRAINTS); $(BIN)/pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/'; } \
		> $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) demo_out bench_out
