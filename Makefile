# Set-up and the two jobs of the README. `make demo` and `make test` create the
# virtual environment on first use; nothing else has to be installed by hand.
PYTHON ?= python3
VENV ?= .venv
# On the project's CPU machines torch comes from the local 2.13.0 CPU build;
# elsewhere any torch >= 2.4 works: `make TORCH_SPEC='torch>=2.4' install`.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install chromium postgresql dicom3tools orthanc demo lint test clean

$(BIN)/cxr: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/cxr

install: $(BIN)/cxr

demo: install
	$(BIN)/cxr demo

# Lint, types and layers: ruff (rules and line length in pyproject.toml), ruff's formatter,
# mypy on src/cxr (strict for serving, tuning, tracking, export, inference, modelformat,
# gate and dicomout), and
# import-linter's contracts (the layers of the README's Architecture section, no cycles).
# Any finding fails `make lint`, and so `make test`.
lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# The browser test of `cxr serve` drives Debian's Chromium, headless. A target of its own
# (the virtual environment above is rebuilt only when pyproject.toml changes): installed
# once with apt-get when run as root; otherwise it stops and says what to do. CXR_CHROMIUM
# names another Chromium binary.
chromium:
	@if [ -n "$$CXR_CHROMIUM" ] && [ -x "$$CXR_CHROMIUM" ]; then exit 0; fi; \
	if command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Chromium for the browser test of cxr serve (apt-get)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
		echo "make: the browser test of cxr serve needs Chromium: run 'sudo apt-get install" \
			"chromium' (Debian) or 'sudo make chromium', or set CXR_CHROMIUM to a Chromium" \
			"binary" >&2; \
		exit 1; \
	fi

# The shared-study test of `cxr tune` starts its own PostgreSQL server (initdb, pg_ctl; on
# Debian they live in /usr/lib/postgresql/<version>/bin, off the PATH). Installed once with
# apt-get when run as root; otherwise it stops and says what to do.
postgresql:
	@if [ -n "$$CXR_SKIP_POSTGRES" ]; then exit 0; fi; \
	if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then exit 0; fi; \
	for d in /usr/lib/postgresql/*/bin; do \
		if [ -x "$$d/initdb" ] && [ -x "$$d/pg_ctl" ]; then exit 0; fi; \
	done; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing PostgreSQL for the shared-study test of cxr tune (apt-get)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	else \
		echo "make: the shared-study test of cxr tune needs a PostgreSQL server: run" \
			"'sudo apt-get install postgresql' (Debian) or 'sudo make postgresql', or set" \
			"CXR_SKIP_POSTGRES=1 to skip that test" >&2; \
		exit 1; \
	fi

# The DICOM result objects (cxr.dicomout) are checked with dciodvfy, Debian's DICOM
# validator (package dicom3tools). Installed once with apt-get when run as root; otherwise
# it stops and says what to do. CXR_SKIP_DCIODVFY=1 skips those checks.
dicom3tools:
	@if [ "$$CXR_SKIP_DCIODVFY" = 1 ]; then exit 0; fi; \
	if command -v dciodvfy >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing dicom3tools (dciodvfy) for the tests of the DICOM results (apt-get)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dicom3tools; \
	else \
		echo "make: the tests of the DICOM results need dciodvfy: run 'sudo apt-get install" \
			"dicom3tools' (Debian) or 'sudo make dicom3tools', or set CXR_SKIP_DCIODVFY=1 to" \
			"skip those checks" >&2; \
		exit 1; \
	fi

# The tests of the DICOM node against a real PACS start their own Orthanc (Debian's orthanc,
# with the DICOMweb plugin of orthanc-dicomweb) in a temporary folder on loopback ports; the
# Debian service is not used. Installed once with apt-get when run as root; otherwise it
# stops and says what to do. CXR_ORTHANC names another Orthanc binary (its DICOMweb plugin:
# CXR_ORTHANC_DICOMWEB); CXR_SKIP_ORTHANC=1 skips those tests.
orthanc:
	@if [ "$$CXR_SKIP_ORTHANC" = 1 ]; then exit 0; fi; \
	if [ -n "$$CXR_ORTHANC" ] && [ -x "$$CXR_ORTHANC" ]; then exit 0; fi; \
	if { command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } && \
		[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Orthanc and its DICOMweb plugin for the PACS tests of cxr dicom (apt-get)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q orthanc \
			orthanc-dicomweb; \
	else \
		echo "make: the PACS tests of cxr dicom need Orthanc: run 'sudo apt-get install" \
			"orthanc orthanc-dicomweb' (Debian) or 'sudo make orthanc', or set CXR_ORTHANC to" \
			"an Orthanc binary, or CXR_SKIP_ORTHANC=1 to skip those tests" >&2; \
		exit 1; \
	fi

test: lint chromium postgresql dicom3tools orthanc
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) cxr-demo
