# Everything a new user or CI needs: `make demo` and `make test` set up and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages that Python wheels cannot provide: pyzbar's libzbar, dciodvfy for DICOM
# validation, libturbojpeg for lossless DICOM conversion, tesseract for the OCR extra,
# chromium for the test of the QC page.
SYSTEM_PACKAGES := libzbar0 dicom3tools libturbojpeg0 tesseract-ocr tesseract-ocr-eng chromium

.PHONY: setup system demo test fuzz-smoke fuzz bench clean

setup: system $(VENV)/.installed

system:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test,ocr,dask]'
	touch $@

demo: setup
	rm -rf demo-out && mkdir -p demo-out/incoming
	$(BIN)/python -m fixtures.svs demo-out/incoming/S26-PLANT-4711.svs
	$(BIN)/python -m fixtures.ndpi demo-out/incoming/NDPI-REF-HS26.ndpi
	$(BIN)/python -m fixtures.ometiff demo-out/incoming/S26-OMEPLANT-4711.ome.tif
	$(BIN)/python -m fixtures.mrxs demo-out/incoming/S26-MRXSPLANT-0815.mrxs
	$(BIN)/wsideid deid demo-out/incoming -o demo-out/released --map demo-out/map.csv --key-file demo-out/secret.key
	$(BIN)/wsideid scan demo-out/released
	@echo "released: $$(ls demo-out/released | tr "\n" " ")  map (keep private): demo-out/map.csv"

test: setup
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory fuzz-smoke

# every fuzz target for 2 s (about 25 s); long runs: docs/robustness.md
fuzz-smoke: setup
	$(BIN)/python fuzz/run.py all --seconds 2

# one coverage-guided target for an hour: make fuzz TARGET=tiff_reader [FUZZ_SECONDS=3600]
FUZZ_SECONDS ?= 3600
fuzz: setup
	$(BIN)/pip install -q -c constraints.txt -e '.[fuzz]'
	$(BIN)/python fuzz/run.py $(TARGET) --engine atheris --seconds $(FUZZ_SECONDS)

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf demo-out bench/out .pytest_cache
