# Set-up is part of every target: on a fresh machine `make demo` or `make test` is all it takes.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup system-deps demo test binary bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[train,heif,raw,review,cluster,dev]"
	touch $@

system-deps:
	bash scripts/install-system-deps.sh

demo: setup
	$(PY) scripts/demo.py

test: setup system-deps
	$(PY) -m pytest

binary:
	PYTHON=$(PYTHON) bash scripts/build_binary.sh --onefile

clean:
	rm -rf build dist demo .pytest_cache
