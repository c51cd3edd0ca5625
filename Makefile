# Two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
DATA ?= ../shared/data
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint format bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,llm,video]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python tools/demo.py --data $(DATA) --out demo-output

lint: $(STAMP)
	$(BIN)/ruff check parttok tests tools
	$(BIN)/ruff format --check parttok tests tools

test: lint
	PARTTOK_DATA=$(DATA) $(BIN)/pytest -q --timeout=900

test-all: lint
	PARTTOK_DATA=$(DATA) $(BIN)/pytest -q -m "" --timeout=3600

format: $(STAMP)
	$(BIN)/ruff format parttok tests tools
	$(BIN)/ruff check --fix parttok tests tools

clean:
	rm -rf $(VENV) demo-output .pytest_cache
