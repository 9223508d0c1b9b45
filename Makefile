# aepacs — one virtualenv (.venv) serves every target; it is (re)built when setup.cfg changes.
PY    ?= python3
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test fuzz bench eval clean

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## the main job on embedded defaults: a fresh archive served over DICOM, the sample files sent,
## found and retrieved again, and compared with the originals (aepacs demo)
demo: $(STAMP)
	$(BIN)/aepacs demo

## the test suite, after the lint (ruff), the types (mypy) and the layering (import-linter)
test: $(STAMP)
	$(BIN)/ruff check aepacs tests bench plugins
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

## the fuzzing harness at length (CI runs it with its default case count as part of make test)
FUZZ_CASES ?= 5000
fuzz: $(STAMP)
	FUZZ_CASES=$(FUZZ_CASES) $(BIN)/python -m pytest -q -p no:cacheprovider tests/fuzz

## benchmarks (results go to docs/BENCHMARKS.md by hand)
bench: $(STAMP)
	$(BIN)/python bench/seal.py
	$(BIN)/python bench/codec.py --paper paper-ct@1
	$(BIN)/python bench/lossless.py
	$(BIN)/python bench/lossless.py --ablation
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/rekey.py

## the full evaluation of the shipped models on held-out images (reports in docs/eval/)
GAINS  = 6 8 10 12 14 16 18 20 22 24 26 28 30 32 34 36 38
PYDATA = $(shell $(BIN)/python -c 'import data_store, os; print(os.path.dirname(data_store.__file__))')/data
eval: $(STAMP)
	$(BIN)/aepacs eval --model ct@3 --paper paper-ct@1 --data ../shared/data/ct/lung-pet-ct-dx-A0001/series-3-5mm \
		--limit 16 --gains $(GAINS) --noise all -o docs/eval/ct
	$(BIN)/aepacs eval --model mr@3 --data $(PYDATA)/MR2_UNCR.dcm --gains $(GAINS) --noise all -o docs/eval/mr
	$(BIN)/aepacs eval --model cr@3 --data $(PYDATA)/RG1_UNCR.dcm --gains $(GAINS) --noise all -o docs/eval/cr
	$(BIN)/aepacs eval --model us@3 --data $(PYDATA)/US1_UNCR.dcm --gains $(GAINS) --noise all -o docs/eval/us

clean:
	rm -rf $(VENV) *.egg-info
