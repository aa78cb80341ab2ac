# posflow — the two commands that matter: `make demo` and `make test`. Both work on a fresh
# machine: they install and start the local stack (deploy/local/stack.sh) as needed.

SHELL := /bin/bash
STACK := deploy/local/stack.sh
CARGO ?= cargo
# Local stack: one broker, so replication 1.
PROVISION := ./target/debug/posflow-admin provision --replication-factor 1 --min-insync-replicas 1
# Chart tooling, installed once through the registries: helm from the Go module proxy, the
# Kubernetes schemas (kubernetes-validate) from PyPI.
TOOLS := $(HOME)/.cache/posflow/tools
HELM := $(TOOLS)/bin/helm
HELM_VERSION := v4.3.1

.PHONY: help up down status provision build demo test test-unit test-e2e chart-test bench-bridge bench-validator bench-storage bench-fraud bench-notifier fmt lint fuzz clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

up: build ## Install (once) and start Kafka, schema registry, Mosquitto, PostgreSQL, SMTP; create topics and schemas
	$(STACK) up
	eval "$$($(STACK) env)" && $(PROVISION)

down: ## Stop everything `make up` started
	$(STACK) down

status: ## What runs where
	$(STACK) status

build: ## Build every binary (debug profile; dependencies optimised)
	$(CARGO) build --workspace --bins

demo: up ## The whole pipeline on the local stack: 20 terminals x 50 transactions, with a summary
	deploy/local/demo.sh

test: up ## Unit, chart, integration and end-to-end tests against the real local stack
	$(MAKE) test-unit
	$(MAKE) chart-test
	$(MAKE) test-e2e

test-unit: ## Tests that need no running component
	$(CARGO) test --workspace --exclude posflow-e2e

chart-test: build ## Helm chart: lint, every scenario rendered and validated against Kubernetes' schema, checks over the output
	@test -x $(HELM) || { echo "installing helm $(HELM_VERSION) (go install, once)"; GOBIN=$(TOOLS)/bin go install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION); }
	@test -x $(TOOLS)/venv/bin/python || { python3 -m venv $(TOOLS)/venv && $(TOOLS)/venv/bin/pip install -q kubernetes-validate pyyaml; }
	$(TOOLS)/venv/bin/python tests/chart/check_chart.py $(HELM) target/debug

test-e2e: ## End-to-end tests (one at a time: they share the broker's terminal topics)
	eval "$$($(STACK) env)" && $(CARGO) test -p posflow-e2e --test e2e -- --test-threads=1

bench-bridge: up ## Bridge throughput and latency next to the broker's ceiling (release build)
	$(CARGO) build --release --bins
	mkdir -p bench/results
	eval "$$($(STACK) env)" && POSFLOW_BIN_DIR=$(CURDIR)/target/release \
	  $(CARGO) run --release -q -p posflow-bench -- bridge --json bench/results/bridge-$$(date +%Y%m%dT%H%M%S).json

bench-validator: up ## Validator messages/s next to a consume->produce passthrough (release build)
	$(CARGO) build --release --bins
	mkdir -p bench/results
	eval "$$($(STACK) env)" && POSFLOW_BIN_DIR=$(CURDIR)/target/release \
	  $(CARGO) run --release -q -p posflow-bench -- validator --json bench/results/validator-$$(date +%Y%m%dT%H%M%S).json

bench-storage: up ## Storage rows/s next to a plain PostgreSQL COPY of the same rows (release build)
	$(CARGO) build --release --bins
	mkdir -p bench/results
	eval "$$($(STACK) env)" && POSFLOW_BIN_DIR=$(CURDIR)/target/release \
	  $(CARGO) run --release -q -p posflow-bench -- storage --json bench/results/storage-$$(date +%Y%m%dT%H%M%S).json

bench-fraud: up ## Fraud messages/s next to a passthrough, alert latency, memory under 1M cards (release build)
	$(CARGO) build --release --bins
	mkdir -p bench/results
	eval "$$($(STACK) env)" && POSFLOW_BIN_DIR=$(CURDIR)/target/release \
	  $(CARGO) run --release -q -p posflow-bench -- fraud --json bench/results/fraud-$$(date +%Y%m%dT%H%M%S).json

bench-notifier: up ## Webhook deliveries/s next to the HTTPS receiver's own ceiling (release build)
	$(CARGO) build --release --bins
	mkdir -p bench/results
	eval "$$($(STACK) env)" && POSFLOW_BIN_DIR=$(CURDIR)/target/release \
	  $(CARGO) run --release -q -p posflow-bench -- notifier --json bench/results/notifier-$$(date +%Y%m%dT%H%M%S).json

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## Formatting and clippy, as CI would
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fuzz: ## Coverage-guided fuzzing of the bridge's input (nightly + cargo-fuzz), FUZZ_SECONDS=60
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	mkdir -p fuzz/corpus/bridge_input && cp tests/corpus/bridge/*.bin fuzz/corpus/bridge_input/
	cd fuzz && $(CARGO) +nightly fuzz run bridge_input corpus/bridge_input -- -max_total_time=$${FUZZ_SECONDS:-60}

clean: down ## Stop the stack and delete its data (downloads stay cached)
	rm -rf .stack
