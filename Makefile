# Two entry points, each installing what it needs into .venv first:
#   make demo   the main job on the embedded default (HoliSafe-Mini)
#   make test   the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The core alone (no extras, so no torch), to check that it evaluates API models and reports.
LEAN := .venv-lean
DEMO_OUT ?= runs/demo

.PHONY: install browser demo test lint lean

install: $(VENV)/.installed

# torch and torchvision are installed first and pinned to the builds that lie on this machine's
# disk, so nothing multi-gigabyte is pulled from the registry. torchvision is needed because
# transformers' Qwen2.5-VL processor requires it, and no torchvision loads beside the 2.13.0 CPU
# build of torch; 2.14.1 with torchvision 0.29.1 is the on-disk pair that works together.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -e ".[all,test]"
	touch $@

demo: install
	$(BIN)/holisafe demo --out $(DEMO_OUT)

# The browser tests (HTML report, the server's page) drive Debian's chromium through Playwright.
# Installed here where possible (root on Debian); elsewhere those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium is not installed: the browser tests will be skipped"

$(LEAN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LEAN)
	$(LEAN)/bin/python -m pip install --quiet -e .
	touch $@

lean: $(LEAN)/.installed
	$(LEAN)/bin/python .ci/lean_core_check.py

test: install browser lean
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
