# vxmirror: `make run` and `make test` each do all set-up on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := tshark gcc libc6-dev iproute2 systemd
# Nothing started from this Makefile (tests, make run, benchmarks) may look for AWS instance
# credentials at the EC2 metadata address: everything here talks to loopback only.
export AWS_EC2_METADATA_DISABLED = true

.PHONY: setup system-deps run test lint typecheck clean

setup: $(STAMP)

# gcc (system-deps) builds receiver/native/_vxnative*.so during the install (setup.py)
$(STAMP): pyproject.toml constraints.txt setup.py receiver/native/vxnative.c receiver/listen/vxrecv.c receiver/capture/vxread.c receiver/capture/vxguard.c receiver/native/vxoffsets.h receiver/native/vxsync.h receiver/flows/vxrecords.c | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# bytecode, as a regular pip install writes it (an editable install does not; commands start faster)
	$(PY) -m compileall -q receiver forwarders mirror_sessions >/dev/null
	touch $@

# Debian packages the tests and the run use (tshark reads pcaps back, its dumpcap captures loopback
# for tests/test_redact.py; gcc builds the C loops of receiver/native and the C references of the
# benchmarks).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: setup system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info receiver/native/_vxnative*.so

-include mk/*.mk
