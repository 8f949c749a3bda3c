VENV ?= .venv

.PHONY: setup test test-all

setup:  ## venv + CPU install + offline data packages + WordNet layout (idempotent)
	bash scripts/setup.sh

test:  ## fast tests (tiny models and data, offline)
	$(VENV)/bin/python -m pytest -q

test-all:  ## include the slow tests
	$(VENV)/bin/python -m pytest -q -m ""
