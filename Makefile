# Two commands on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# parallel workers (pytest-xdist); the suite mostly waits on brokers and agents, so 4 on 2 cores
PYTEST_ARGS ?= -n 4

.PHONY: demo test mosquitto browser install clean docs

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer is required (set PYTHON=python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,sim]'
	@touch $(STAMP)

install: $(STAMP)

## Run the demo: embedded broker, sample store, simulated shoppers (Ctrl-C stops).
demo: $(STAMP)
	$(BIN)/edge-agent demo $(DEMO_ARGS)

## Run the test suite against a real Mosquitto (installed here when missing and possible).
test: $(STAMP) mosquitto browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing mosquitto (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	elif command -v brew >/dev/null 2>&1; then \
		brew install mosquitto; \
	else \
		echo "Mosquitto is required for the tests: install it (sudo apt-get install -y mosquitto, or brew install mosquitto) and run make test again."; \
		exit 1; \
	fi

# The associates' page is tested in headless Chromium (Debian's package), driven by Playwright for Python
# (launched with executable_path: `playwright install` is not needed).
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "Chromium is required for the associates' page test: install it (sudo apt-get install -y chromium) and run make test again."; \
		exit 1; \
	fi

## Regenerate the CLI reference (docs/cli.md) from --help.
docs: $(STAMP)
	$(BIN)/python scripts/gen_cli_docs.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
