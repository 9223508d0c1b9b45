# aepacs — one virtualenv (.venv) serves every target; it is (re)built when setup.cfg changes.
PY    ?= python3
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test fuzz bench eval clean viewer

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/aepacs models verify  # the shipped models' hashes, and their codecs' numba loops compiled and cached
	touch $(STAMP)

install: $(STAMP)

## the main job on embedded defaults: a fresh archive served over DICOM and DICOMweb, the sample
## files sent, found and retrieved again, and compared with the originals (aepacs demo); the OHIF
## viewer is installed first where npm can (without it the demo leaves the viewer out)
demo: $(STAMP)
	-@$(MAKE) --no-print-directory viewer
	$(BIN)/aepacs demo --viewer build/viewer

## the test suite, after the lint (ruff), the types (mypy) and the layering (import-linter); two test
## processes (pytest-xdist), a test module each at a time (module fixtures start servers once)
## the OHIF viewer aepacs serve serves at /viewer/: npm pack @ohif/app from the npm registry,
## verified and unpacked into build/viewer (the tests' copy; a site runs aepacs viewer install)
viewer: build/viewer/index.html
build/viewer/index.html: $(STAMP)
	$(BIN)/aepacs viewer install --dest build/viewer

test: $(STAMP)
	$(BIN)/ruff check aepacs tests bench plugins
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

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
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/quality.py --ablation
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/rekey.py

## the full evaluation of the shipped models on held-out images (reports in docs/eval/; the
## held-out sets of docs/MODELS.md; JPEG 2000, HTJ2K and JPEG-XL at the same bytes per image)
GAINS  = 10 14 18 22 26 30 34 38
PYDATA = $(shell $(BIN)/python -c 'import data_store, os; print(os.path.dirname(data_store.__file__))')/data
PYTEST = $(shell $(BIN)/python -c 'import pydicom.data, os; print(os.path.dirname(pydicom.data.get_testdata_file("CT_small.dcm")))')
SHARED = ../shared/data
eval: $(STAMP)
	$(BIN)/aepacs eval --model ct@6 --paper paper-ct@1 --data $(SHARED)/ct/lung-pet-ct-dx-A0001/series-3-5mm \
		$(PYDATA)/693_UNCR.dcm $(PYTEST)/CT_small.dcm --limit 12 --gains $(GAINS) --noise all -o docs/eval/ct
	$(BIN)/aepacs eval --model mr@6 --data $(SHARED)/mr/dcm_qa_toshiba-galan-dti-b0 $(SHARED)/mr/dcm_qa_philips-vanderbilt-dti-b0 \
		$(PYDATA)/MR2_UNCR.dcm $(PYDATA)/MR-SIEMENS-DICOM-WithOverlays.dcm --limit 20 --gains $(GAINS) --noise all -o docs/eval/mr
	$(BIN)/aepacs eval --model cr@6 --data $(PYDATA)/RG1_UNCR.dcm --gains $(GAINS) --noise all -o docs/eval/cr
	$(BIN)/aepacs eval --model us@6 --data $(PYDATA)/US1_UNCR.dcm --gains $(GAINS) --noise all -o docs/eval/us

clean:
	rm -rf $(VENV) *.egg-info
