# The two set-up commands of a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

# torch first: torch==2.13.0 is a CPU build; an unpinned torch could pull a multi-GB CUDA build.
# DS_BUILD_OPS=0: DeepSpeed compiles the one small op it needs on first use instead.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e ".[dev]"
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
