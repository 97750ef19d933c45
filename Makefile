# Every target is idempotent: run any of them again and it does only what is missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIPELINE := $(VENV)/bin/pipeline
# The broker `make test` and `make demo` start, kept apart from one you may run yourself on 9092.
TEST_PORT ?= 39092
TEST_DATA ?= .cache/kafka-test
DEMO_PORT ?= 9092
DEMO_DATA ?= .cache/kafka-demo
PYTEST_ARGS ?=
# `make check` runs tests/unit in this many pytest-xdist processes (one per core here).
CHECK_WORKERS ?= 2
# `make test` runs the broker tests not marked `alone` in this many processes: they mostly
# wait on a broker, a rebalance or a worker, so more processes than cores pay (tests/conftest.py).
TEST_WORKERS ?= 4
# `make bench BENCH_ARGS=--publish` also updates docs/bench.md and docs/bench-latency.png.
BENCH_ARGS ?=
# The front-door benchmark takes BENCH_ARGS' --quick and --publish (docs/bench-doors.md and
# docs/bench-doors.png); DOORS_ARGS for its own flags (python -m pipeline.dev.bench.doors -h).
DOORS_ARGS ?=
BENCH_QUIX ?= .cache/bench-quix
# prints pyproject.toml's dependencies but confluent-kafka, for the Quix peer's venv
export QUIX_DEPS = import tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print(" ".join(d for d in deps if not d.startswith("confluent-kafka")))
# tritonclient, the standard Open Inference Protocol client the door tests talk to the server with.
TRITON ?= .cache/tritonclient

.PHONY: help install demo demo-avro check test lint bench soak models protos picture clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-8s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv and install the project with its test, dev, import and faust extras

# The package and its own dependencies: all `make demo` needs (about 0.4 GB; the extras
# below add TensorFlow, XGBoost and LightGBM for `pipeline models import`, about 2 GB).
$(VENV)/.core: pyproject.toml
	@echo "make: installing the package into $(VENV) (the first time: a minute or two) ..."
	@start=$$(date +%s); set -e; \
	$(PYTHON) -m venv $(VENV); \
	$(VENV)/bin/pip install -q --upgrade pip; \
	$(VENV)/bin/pip install -q -e .; \
	echo "make: installed in $$(( $$(date +%s) - start )) s"
	@touch $@

$(VENV)/.installed: $(VENV)/.core
	@echo "make: installing the test, dev, import and faust extras into $(VENV) (the first time: a few minutes) ..."
	@start=$$(date +%s); set -e; \
	$(VENV)/bin/pip install -q -e '.[test,dev,import,faust]'; \
	echo "make: installed in $$(( $$(date +%s) - start )) s"
	@touch $@

demo: $(VENV)/.core ## run the main job on the embedded local broker: events in, predictions out
	$(PY) -m pipeline.dev.demo --port $(DEMO_PORT) --data-dir $(DEMO_DATA)

demo-avro: $(VENV)/.core ## the demo with Avro events and predictions and a Schema Registry of its own
	$(PY) -m pipeline.dev.demo --avro --port $(DEMO_PORT) --data-dir $(DEMO_DATA)

check: lint ## the fast tier: lint, types and every test that needs no broker, no JVM and no server (tests/unit)
	$(PY) -m pytest tests/unit -n $(CHECK_WORKERS) $(PYTEST_ARGS)

test: install $(TRITON)/.installed ## start the local broker unless KAFKA_BOOTSTRAP_SERVERS is set, run every test, stop it
	@set -uo pipefail; \
	if [ -z "$${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then \
		if ! $(PIPELINE) kafka status --data-dir $(TEST_DATA) >/dev/null; then \
			rm -rf $(TEST_DATA); \
			$(PIPELINE) kafka start --port $(TEST_PORT) --data-dir $(TEST_DATA) || exit $$?; \
			trap '$(PIPELINE) kafka stop --data-dir $(TEST_DATA)' EXIT; \
		fi; \
		export KAFKA_BOOTSTRAP_SERVERS=$$($(PIPELINE) kafka status --data-dir $(TEST_DATA) | sed -E 's/^running at ([^ ]+).*/\1/'); \
	fi; \
	if [ -n "$(PYTEST_ARGS)" ]; then $(PY) -m pytest $(PYTEST_ARGS); exit $$?; fi; \
	env -u KAFKA_BOOTSTRAP_SERVERS $(PY) -m pytest tests/unit -n $(CHECK_WORKERS); unit=$$?; \
	$(PY) -m pytest --ignore=tests/unit -m 'not alone' -n $(TEST_WORKERS) --durations=15; spread=$$?; \
	$(PY) -m pytest --ignore=tests/unit -m alone --durations=5; alone=$$?; \
	worst=$$(( unit > spread ? unit : spread )); exit $$(( worst > alone ? worst : alone ))

lint: install ## ruff and mypy --strict on pipeline/
	$(VENV)/bin/ruff check pipeline tests scripts examples
	$(VENV)/bin/ruff format --check pipeline tests scripts examples
	$(VENV)/bin/mypy --strict pipeline

bench: install $(BENCH_QUIX)/.installed ## micro-benchmarks, the side-by-side Kafka benchmark and the front doors' (not part of make test)
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) -m pipeline.dev.bench.micro
	$(PY) -m pipeline.dev.bench $(BENCH_ARGS)
	$(PY) -m pipeline.dev.bench.doors $(filter --quick --publish,$(BENCH_ARGS)) $(DOORS_ARGS)

# Quix Streams pins confluent-kafka below the worker's version, so its peer gets a venv of its own.
# The peer imports the `pipeline` package (its codec and model store), so the venv gets the
# project's dependencies as pyproject.toml lists them, but confluent-kafka (Quix's pin), and onnx.
$(BENCH_QUIX)/.installed: Makefile pyproject.toml
	$(PYTHON) -m venv $(BENCH_QUIX)
	$(BENCH_QUIX)/bin/pip install -q --upgrade pip
	$(BENCH_QUIX)/bin/pip install -q quixstreams onnx $$($(PYTHON) -c "$$QUIX_DEPS")
	touch $@

# tritonclient needs protobuf<7 (the project needs >=7.35) and its `inference` protos collide
# with ours in one process, so the tests run it from a venv of its own (tests/doors/triton_client.py).
$(TRITON)/.installed:
	$(PYTHON) -m venv $(TRITON)
	$(TRITON)/bin/pip install -q --disable-pip-version-check 'tritonclient[http,grpc]' numpy
	touch $@

soak: install ## the full fault-injection suite (minutes to hours); figures in bench-results/reliability.jsonl
	@mkdir -p bench-results
	@set -uo pipefail; \
	started=0; \
	if [ -z "$${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then \
		if ! $(PIPELINE) kafka status --data-dir $(TEST_DATA) >/dev/null; then \
			rm -rf $(TEST_DATA); \
			$(PIPELINE) kafka start --port $(TEST_PORT) --data-dir $(TEST_DATA) || exit $$?; \
			trap '$(PIPELINE) kafka stop --data-dir $(TEST_DATA)' EXIT; \
		fi; \
		export KAFKA_BOOTSTRAP_SERVERS=$$($(PIPELINE) kafka status --data-dir $(TEST_DATA) | sed -E 's/^running at ([^ ]+).*/\1/'); \
	fi; \
	PIPELINE_SOAK=1 PIPELINE_RELIABILITY_REPORT=bench-results/reliability.jsonl $(PY) -m pytest tests/reliability -s $(PYTEST_ARGS)

picture: install ## docs/monitoring.png: a real run on the local broker, seen by a real Prometheus, shot by Chromium
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) -m pipeline.dev.monitorshot --out docs/monitoring.png

protos: install ## regenerate pipeline/serve/_proto from schemas/*.proto (a test checks they match)
	$(PY) -m pipeline.dev.protos

models: install ## regenerate the example models in models/ (deterministic)
	$(PY) scripts/make_models.py

clean: ## stop the test and demo brokers and remove .cache/
	-$(PIPELINE) kafka stop --data-dir $(TEST_DATA)
	-$(PIPELINE) kafka stop --data-dir $(DEMO_DATA)
	rm -rf .cache
