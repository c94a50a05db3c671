# Two commands do all set-up: `make demo` and `make test`. Both create .venv when it is
# missing and (re)install the project whenever setup.py changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CHROMIUM := $(VENV)/.chromium

.PHONY: demo test bench clean

$(INSTALLED): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/python -m demo

# Headless Chromium for the report's browser test: Debian's package, installed as root (CI runs
# `make test` as root). Where it cannot be installed the test skips, unless CI is set.
$(CHROMIUM): | $(INSTALLED)
	if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	  else echo "note: /usr/bin/chromium is missing (apt-get install chromium as root); the browser test skips"; fi; \
	fi
	if [ -x /usr/bin/chromium ]; then touch $@; fi

test: $(INSTALLED) $(CHROMIUM)
	$(BIN)/python -m pytest tests

# The headline measurements (labeling job, forward FLOP/s, student input, memory), in one run.
bench: $(INSTALLED)
	$(BIN)/python -m benchmarks --output=out/bench.json

clean:
	rm -rf $(VENV) build dist *.egg-info
