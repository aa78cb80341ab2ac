# posflow — the two commands that matter: `make demo` and `make test`. Both work on a fresh
# machine: they install and start the local stack (deploy/local/stack.sh) as needed.

SHELL := /bin/bash
STACK := deploy/local/stack.sh
CARGO ?= cargo
# Local stack: one broker, so replication 1.
PROVISION = ./target/debug/posflow-admin provision $$($(STACK) replication)
# Chart tooling, installed once through the registries: helm from the Go module proxy, the
# Kubernetes schemas (kubernetes-validate) from PyPI, promtool out of Debian's prometheus package
# (unpacked, not installed: no Prometheus service is set up).
TOOLS := $(HOME)/.cache/posflow/tools
HELM := $(TOOLS)/bin/helm
PROMTOOL := $(TOOLS)/bin/promtool
HELM_VERSION := v4.3.1
PEER := $(TOOLS)/bin/benthos-peer

.PHONY: help up down status provision build demo test test-unit schema-check schema-release asyncapi-check connect-proof analyst-tools test-e2e test-backlog test-cluster test-hivemq chaos test-chaos chaos-proof chart-test bench bench-smoke flamegraphs fmt lint fuzz clean

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

demo: up analyst-tools ## The whole pipeline on the local stack: 20 terminals x 50 transactions, with a summary
	deploy/local/demo.sh

test: up ## Unit, chart, integration and end-to-end tests against the real local stack, and a short chaos run on a three-node one
	$(MAKE) test-unit
	$(MAKE) schema-check
	$(MAKE) asyncapi-check
	$(MAKE) chart-test
	$(MAKE) test-e2e
	$(MAKE) test-chaos
	$(MAKE) bench-smoke

test-unit: ## Tests that need no running component
	$(CARGO) test --workspace --exclude posflow-e2e

chart-test: build $(TOOLS)/venv/bin/python ## Helm chart: lint, every scenario rendered and validated against Kubernetes' schema, checks over the output; alert rules unit-tested (promtool)
	@test -x $(HELM) || { echo "installing helm $(HELM_VERSION) (go install, once)"; GOBIN=$(TOOLS)/bin go install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION); }
	@$(TOOLS)/venv/bin/python -c 'import kubernetes_validate, yaml' 2>/dev/null || $(TOOLS)/venv/bin/pip install -q kubernetes-validate pyyaml
	@test -x $(PROMTOOL) || { echo "unpacking promtool from Debian's prometheus package (once)"; \
	  d=$$(mktemp -d) && (cd $$d && { apt-get download prometheus >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get download prometheus >/dev/null; }; }) && dpkg -x $$d/prometheus_*.deb $$d/x && \
	  mkdir -p $(TOOLS)/bin && cp $$d/x/usr/bin/promtool $(PROMTOOL) && rm -rf $$d; }
	$(TOOLS)/venv/bin/python tests/chart/check_chart.py $(HELM) $(PROMTOOL) target/debug
	$(PROMTOOL) test rules tests/alerts/alerts_test.yaml

ASYNCAPI := $(TOOLS)/asyncapi
asyncapi-check: build ## docs/asyncapi.json validated by the AsyncAPI parser (Avro payloads too), its channels exactly the catalogue's topics (npm packages installed once)
	@test -d $(ASYNCAPI)/node_modules/@asyncapi/avro-schema-parser || { mkdir -p $(ASYNCAPI) && cd $(ASYNCAPI) && \
	  echo '{"private":true}' > package.json && npm install --silent --no-audit --no-fund @asyncapi/parser@3.6.6 @asyncapi/avro-schema-parser@3.1.0; }
	@# ES modules resolve packages from the script's own directory: run a copy placed beside them.
	cp tests/asyncapi/validate.mjs $(ASYNCAPI)/validate.mjs
	node $(ASYNCAPI)/validate.mjs docs/asyncapi.json $$(env -u POSFLOW_TOPIC_PREFIX ./target/debug/posflow-admin topics | awk 'NR > 1 { print $$1 }')

connect-proof: up ## By hand (after make demo): Kafka Connect with Apicurio's Avro converter sinks every topic to a file; counts and ids must equal posflow-admin tail's (docs/topics.md)
	tests/analysts/connect_proof.sh

schema-check: up ## The schema gate: every schema's released versions, then the working copy, registered in order at FULL_TRANSITIVE in the local registry (docs/schemas.md)
	eval "$$($(STACK) env)" && ./target/debug/posflow-admin schema-check

schema-release: build ## Record each schema changed since its last release as its next version under schemas/history/ (after make schema-check)
	./target/debug/posflow-admin schema-release

# The tools' Python (chart checks, and the stock analyst tools the e2e tests read topics with).
$(TOOLS)/venv/bin/python:
	python3 -m venv $(TOOLS)/venv

analyst-tools: $(TOOLS)/venv/bin/python ## confluent-kafka with its Avro deserializer, and DuckDB (the e2e tests read every topic and the lake with them; docs/topics.md, docs/lake.md)
	@$(TOOLS)/venv/bin/python -c 'import confluent_kafka.schema_registry.avro, duckdb' 2>/dev/null || \
	  $(TOOLS)/venv/bin/pip install -q "confluent-kafka[avro,schemaregistry]==2.*" "duckdb==1.*"

test-e2e: analyst-tools ## End-to-end tests (one at a time: they share the broker's terminal topics)
	eval "$$($(STACK) env)" && $(CARGO) test -p posflow-e2e --test e2e -- --test-threads=1

# A second local stack for test-cluster and the chaos runs, beside the default one: its own
# directory and ports (below 32768: Linux hands out ephemeral ports above, and a client's
# ephemeral port once took a Kafka node's listener from under it).
CLUSTER_STACK := POSFLOW_STACK=$(CURDIR)/.stack-cluster POSFLOW_KAFKA_NODES=3 \
  POSFLOW_KAFKA_PORT=19092 POSFLOW_KAFKA_CONTROLLER_PORT=19093 POSFLOW_REGISTRY_PORT=18081 \
  POSFLOW_REGISTRY_MGMT_PORT=18082 POSFLOW_REGISTRY_TLS_PORT=18083 POSFLOW_MQTT_PORT=11883 \
  POSFLOW_MQTT_TLS_PORT=11884 POSFLOW_PG_PORT=15432 POSFLOW_SMTP_PORT=12525

test-cluster: build ## By hand: a three-node Kafka stack beside the default one (.stack-cluster), the busiest raw-partition leader SIGKILLed, then another run with it hung 25 s; stopped afterwards
	$(CLUSTER_STACK) $(STACK) up
	export $(CLUSTER_STACK) && eval "$$($(STACK) env)" && $(PROVISION) && \
	  $(CARGO) test -p posflow-e2e --test e2e -- --test-threads=1 --ignored --nocapture cluster::; \
	  status=$$?; $(STACK) down; exit $$status

# A stack with HiveMQ CE for the MQTT broker, beside the default one: its own directory and ports.
HIVEMQ_STACK := POSFLOW_STACK=$(CURDIR)/.stack-hive POSFLOW_MQTT_BROKER=hivemq \
  POSFLOW_KAFKA_PORT=26092 POSFLOW_KAFKA_CONTROLLER_PORT=26093 POSFLOW_REGISTRY_PORT=26081 \
  POSFLOW_REGISTRY_MGMT_PORT=26082 POSFLOW_REGISTRY_TLS_PORT=26083 POSFLOW_MQTT_PORT=26883 \
  POSFLOW_MQTT_TLS_PORT=26884 POSFLOW_PG_PORT=26432 POSFLOW_SMTP_PORT=26525
# The e2e tests of the bridge and what it answers terminals.
BRIDGE_TIER := bridge bad_input corpus terminal_registry

test-hivemq: build ## By hand: the bridge's e2e tier against HiveMQ CE (.stack-hive, beside the default stack; 20,000-message backlogs); stopped afterwards. A chaos run on it: POSFLOW_MQTT_BROKER=hivemq make test-chaos
	$(HIVEMQ_STACK) $(STACK) up
	export $(HIVEMQ_STACK) && eval "$$($(STACK) env)" && $(PROVISION) && \
	  POSFLOW_E2E_BACKLOG=20000 $(CARGO) test -p posflow-e2e --test e2e -- --test-threads=1 $(BRIDGE_TIER); \
	  status=$$?; $(STACK) down; exit $$status

# A chaos run on the cluster stack (brought up, and down afterwards whatever the outcome).
define chaos_run
	$(CLUSTER_STACK) $(STACK) up
	export $(CLUSTER_STACK) && eval "$$($(STACK) env)" && $(PROVISION) && \
	  ./target/debug/posflow-chaos $(1); status=$$?; $(STACK) down; exit $$status
endef

chaos: build ## By hand: CHAOS_SECONDS (600) of overlapping faults on a three-node cluster stack beside the default one; report in docs/chaos/ (docs/chaos/hivemq/ with POSFLOW_MQTT_BROKER=hivemq; CHAOS_SEED for a given schedule; docs/chaos.md)
	$(call chaos_run,--seconds $(or $(CHAOS_SECONDS),600) --out docs/chaos$(if $(filter hivemq,$(POSFLOW_MQTT_BROKER)),/hivemq) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED)))

test-chaos: build ## The short chaos run of make test: 150 s, seed 1, every kind of fault, on the cluster stack; report in target/chaos
	$(call chaos_run,--seconds 150 --seed 1 --out target/chaos)

chaos-proof: build ## By hand: a chaos run with bridges that answer before Kafka has the transaction (a test-only defect); succeeds only if the checker finds transactions missing
	$(call chaos_run,--seconds 150 --seed 2 --prove-checker --out target/chaos-proof)

test-backlog: up ## By hand (not in make test): the bridge resuming a 300,000-message backlog, release builds (BACKLOG=N to change)
	$(CARGO) build --release --bins
	eval "$$($(STACK) env)" && POSFLOW_BIN_DIR=$(CURDIR)/target/release POSFLOW_E2E_BACKLOG=$(or $(BACKLOG),300000) \
	  $(CARGO) test -p posflow-e2e --test e2e -- --test-threads=1 --nocapture bridge_backlog::a_

bench: up $(PEER) ## posflow against its ceilings and Benthos, one run, table + bench/results/*.json; a full run regenerates BENCHMARKS.md's and README.md's tables and chart (release; ONLY=storage,e2e for some)
	$(CARGO) build --release --bins
	eval "$$($(STACK) env)" && POSFLOW_BIN_DIR=$(CURDIR)/target/release \
	  ./target/release/posflow-bench --peer $(PEER) $(if $(ONLY),--only $(ONLY),--update-docs)

flamegraphs: up ## By hand: a flame graph (SVG) of each stage under its benchmark into bench/flamegraphs/ (perf + inferno)
	$(CARGO) build --release --bins
	test -x $(TOOLS)/bin/inferno-flamegraph || $(CARGO) install inferno --version 0.12.8 --root $(TOOLS)
	eval "$$($(STACK) env)" && for s in bridge:posflow-bridge validator:posflow-validator storage:posflow-storage lake:posflow-lake \
	  fraud:posflow-fraud notifier:posflow-notifier; do \
	  bench/flamegraph.sh $${s%%:*} $${s##*:} bench/flamegraphs/$${s%%:*}.svg || exit 1; done

bench-smoke: up build $(PEER) ## Every benchmark scenario with a few hundred records: keeps the harness working (make test runs it)
	eval "$$($(STACK) env)" && ./target/debug/posflow-bench --smoke --peer $(PEER) --results-dir target/bench-smoke

# The benchmark's peer, Benthos v4, from the Go module proxy (a wrapper module: see its main.go).
$(PEER): bench/peer/benthos/go.mod bench/peer/benthos/go.sum bench/peer/benthos/main.go
	@echo "building the Benthos peer (go build, once)"
	cd bench/peer/benthos && go build -o $(PEER) .

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## Formatting, clippy and the supply-chain policy (deny.toml), as CI would
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	command -v cargo-deny >/dev/null || $(CARGO) install cargo-deny --locked --version 0.20.2
	$(CARGO) deny --log-level error check licenses bans sources

fuzz: ## Coverage-guided fuzzing of the bridge's input (nightly + cargo-fuzz), FUZZ_SECONDS=60
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	mkdir -p fuzz/corpus/bridge_input && cp tests/corpus/bridge/*.bin fuzz/corpus/bridge_input/
	cd fuzz && $(CARGO) +nightly fuzz run bridge_input corpus/bridge_input -- -max_total_time=$${FUZZ_SECONDS:-60}

clean: down ## Stop the stack and delete its data (downloads stay cached)
	rm -rf .stack .stack-cluster .stack-hive
