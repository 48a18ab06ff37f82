# The two commands a newcomer runs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out

.PHONY: venv demo test test-unit bench clean
venv: $(VENV)/.installed
# Quiet, but not silent: pip still prints errors and deprecations. setuptools' note on every
# editable install ("Editable installation ... folders with the same name") is left out.
$(VENV)/.installed: pyproject.toml
	@echo "installing raymesh and its dependencies into $(VENV)/ (first run only: a few minutes)"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e ".[test]"
	@touch $@

demo: venv
	@$(VENV)/bin/raymesh demo --out $(DEMO_OUT)

test: venv
	$(PY) -m pytest -q --durations=15 tests

test-unit: venv
	$(PY) -m pytest -q tests/unit

bench: venv
	$(PY) -m benchmarks.build_graph --quick

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
