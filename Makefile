# Two commands on a fresh machine: `make test` and `make demo`. Each creates .venv when missing
# and installs everything (torch pinned to the local CPU build, see pyproject.toml).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install browser test test-unit demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,data]'
	touch $(STAMP)

install: $(STAMP) browser

# A real headless Chromium and its WebDriver for the report test (tests/browser.py), from Debian's
# packages when either is missing (as root here; through sudo elsewhere).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ($(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium chromium-driver)

test: install
	$(PY) -m pytest tests

test-unit: install
	$(PY) -m pytest tests -m "not integration and not e2e"

# The quickstart: tune MiniLM + LoRA on real tweets, serve the winner, score held-out tweets
# through HTTP beside a TF-IDF baseline, then exit (drop --exit to keep serving). --resume
# makes a second `make demo` reuse the finished sweep instead of refusing to overwrite it.
demo: install
	$(VENV)/bin/zerotune validate examples/quickstart.yaml
	$(VENV)/bin/zerotune run examples/quickstart.yaml --resume --exit

lint: install
	$(VENV)/bin/ruff check cluster trainers tuning serving tests bench

clean:
	rm -rf $(VENV) .pytest_cache
