# aepacs — one virtualenv (.venv) serves every target; it is (re)built when setup.cfg changes.
PY    ?= python3
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## the main job on embedded defaults: a fresh archive, import the sample files, export them back
demo: $(STAMP)
	$(BIN)/aepacs demo

## the test suite (after a lint for unused and undefined names)
test: $(STAMP)
	$(BIN)/ruff check aepacs tests bench
	$(BIN)/python -m pytest -q

## benchmarks (results go to docs/BENCHMARKS.md by hand)
bench: $(STAMP)
	$(BIN)/python bench/seal.py

clean:
	rm -rf $(VENV) *.egg-info
