# Two commands do all set-up: `make demo` and `make test`. Both create .venv when it is
# missing and (re)install the project whenever setup.py changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test clean

$(INSTALLED): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/python -m demo

test: $(INSTALLED)
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) build dist *.egg-info
