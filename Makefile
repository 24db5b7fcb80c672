PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test docs lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[plots,data,progress]"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test,plots,data,progress]"
	touch $@ $(VENV)/.installed $(VENV)/.installed-docs

$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[docs,plots,data,progress]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/pcmjax study

# The suite runs on TEST_WORKERS processes (pytest-xdist). A test file runs on one of them (its
# fixtures are built once), but the long independent tests of a few files are shared out one by
# one, the longest first (tests/conftest.py says which). TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)

# The site goes to build/site. Notebooks run once and are kept in build/notebooks/ (`make test`
# keeps them too); PCMJAX_DOCS_EXECUTE=0 builds without running any (pages without outputs).
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(VENV)/.installed-test
	$(BIN)/ruff check pcmjax tests benchmarks notebooks docs

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_mvm.py

clean:
	rm -rf $(VENV) build *.egg-info
