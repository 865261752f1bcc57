# Two entry points, each installing what it needs into .venv first, from the committed lock:
#   make demo        the main job on the embedded default (HoliSafe-Mini)
#   make test        the whole test suite (what CI runs)
# and, for development:
#   make test-fast   the suite less the tests marked slow (the inner loop)
#   make lock        refresh requirements/lock.txt (run `make test-latest` first)
#   make test-latest the suite on the newest releases pyproject's ranges allow (not in CI)
#   make test-min    the core on the lowest versions pyproject allows (not in CI)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/lock.txt
# The core alone (no extras, so no torch), to check that it evaluates API models and reports.
LEAN := .venv-lean
LATEST := .venv-latest
MIN := .venv-min
TOOLS := .venv-tools
UV := $(TOOLS)/bin/uv
DEMO_OUT ?= runs/demo
# pytest-xdist spreads the tests over the cores; each worker's torch runs on one thread so that
# two workers do not queue for the same cores.
WORKERS ?= 2
PYTEST_ARGS := -q -n $(WORKERS) --dist loadfile --durations=25

.PHONY: install browser demo docs test test-fast test-latest test-min lint lean lock

install: $(VENV)/.installed

# The lock pins every distribution, torch 2.14.1 and torchvision 0.29.1 included: pip takes
# that pair from this machine's disk, so nothing multi-gigabyte is pulled from the registry.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[all,test,docs]"
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

$(LEAN)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(LEAN)
	$(LEAN)/bin/python -m pip install --quiet -c $(LOCK) -e .
	touch $@

lean: $(LEAN)/.installed
	$(LEAN)/bin/python .ci/lean_core_check.py

test: install browser lean docs
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports --no-cache
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_ARGS) -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports --no-cache

# The documentation site, built strictly: a broken link or anchor fails.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $$(mktemp -d)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet "uv==0.13.9"

# One lock for every platform (markers pick the wheels), within pyproject's ranges and the
# pins in requirements/pins.txt; every version is refreshed to the newest that fits.
lock: $(UV)
	$(UV) pip compile pyproject.toml --extra all --extra test --extra docs --universal --upgrade \
	  --constraint requirements/pins.txt -o $(LOCK)

# The newest releases the ranges allow, torch included: PIP_CONSTRAINT=/dev/null lifts a
# machine-wide pip cap such as this machine's, which holds torch to the builds on its disk.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	PIP_CONSTRAINT=/dev/null $(LATEST)/bin/python -m pip install --quiet --upgrade -e ".[all,test,docs]"
	$(LATEST)/bin/python -m pip list --format=freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/ruff check src tests benchmarks
	$(LATEST)/bin/lint-imports --no-cache
	OMP_NUM_THREADS=1 $(LATEST)/bin/python -m pytest $(PYTEST_ARGS)

# The lowest version of each of the core's own dependencies (and the test tools'), no torch:
# the lean-core check and every test that needs nothing more.
test-min: $(UV)
	rm -rf $(MIN)
	$(UV) venv --quiet --python $(PYTHON) $(MIN)
	$(UV) pip install --quiet --python $(MIN)/bin/python --resolution lowest-direct -e ".[test]"
	$(UV) pip freeze --python $(MIN)/bin/python > $(MIN)/versions.txt
	$(MIN)/bin/python .ci/lean_core_check.py
	HOLISAFE_CORE_TESTS=1 $(MIN)/bin/python -m pytest $(PYTEST_ARGS)
