# Two entry points for newcomers (see README): `make demo` and `make test`.
# Both create .venv and install livecap into it; nothing else is assumed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,base

.PHONY: setup demo test lint system-deps bench

$(BIN)/livecap: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

setup: $(BIN)/livecap

# Debian's Chromium for the browser tests (Playwright drives it; no browser download),
# promtool (package prometheus) to check the scrape config and the /metrics output, and
# sox + espeak-ng, with which ../shared/cases/make_cases.sh builds the failing-case inputs, and
# OBS Studio (with obs-websocket), Xvfb, Mesa's software GL and ffmpeg for the OBS output's tests:
# a real OBS streams to an RTMP receiver on loopback and its CEA-608 captions are read back
# (installed with their recommended packages, as tested: Mesa's drivers come that way), and
# redis-server for the scale-out tests (each starts its own on a free loopback port).
system-deps:
	@command -v chromium >/dev/null && command -v promtool >/dev/null && command -v sox >/dev/null && \
	  command -v espeak-ng >/dev/null && command -v obs >/dev/null && command -v Xvfb >/dev/null && \
	  command -v ffmpeg >/dev/null && command -v redis-server >/dev/null || { apt-get update -qq && \
	  export DEBIAN_FRONTEND=noninteractive && \
	  apt-get install -y -qq --no-install-recommends chromium prometheus sox espeak-ng redis-server >/dev/null && \
	  apt-get install -y -qq obs-studio xvfb ffmpeg >/dev/null; }

demo: setup
	$(BIN)/livecap serve --demo

lint: setup
	$(BIN)/ruff check livecap models benchmarks tests
	$(BIN)/mypy

test: lint system-deps
	$(BIN)/python -m pytest -ra --durations=20

bench: setup
	$(BIN)/python -m benchmarks.offline
