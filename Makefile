# Reflow: the two commands that matter are `make run` and `make test`.
CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080

.PHONY: run test e2e conformance bench crds lint fmt build images fuzz soak chaos

# One build for `make run` and `make test`: the very cargo invocation `make test` runs, without
# running. Cargo unifies dependency features over the packages and targets it builds (tests bring
# dev-dependencies: kube's `cel`, tokio's `test-util`, ...), so building only the two binaries
# here would compile the workspace a second time with other features after `make test`, and again
# the other way round. Built this way, whichever runs second finds everything up to date.
TEST_CARGO_ARGS = --workspace --all-targets

## run: the gateway on the embedded default (standalone, config/local manifests, fixture upstream, dev token)
run:
	$(CARGO) test -q $(TEST_CARGO_ARGS) --no-run
	./scripts/run-local.sh $(LISTEN)

## test: every test in the workspace (unit, golden, drift, integration, real SDK peers)
# Tests that run the real binaries use the ones this very build produced.
BIN_DIR ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/debug

test:
	REFLOW_DATAPLANE_BIN=$(BIN_DIR)/reflow-dataplane REFLOW_FIXTURE_BIN=$(BIN_DIR)/reflow-fixture \
	  REFLOW_CONTROLLER_BIN=$(BIN_DIR)/reflow-controller \
	  $(CARGO) test $(TEST_CARGO_ARGS) --no-fail-fast

## e2e: only the whole-system tests (real SDK clients and upstream servers)
e2e:
	$(CARGO) test -p reflow-e2e --no-fail-fast

## conformance: the official MCP conformance suite (Node 22, cached under target/e2e) against the
## fixture directly and through the gateway's single-target endpoint, printed side by side: 0.1.16
## (every server scenario, stateful eras), then 0.2.0-alpha.12 --requirements 2026-07-28 (stateless)
conformance:
	$(CARGO) build -q -p reflow-dataplane -p reflow-e2e --bins
	$(CARGO) run -q -p reflow-e2e --bin reflow-conformance

## bench: criterion benchmarks and the gateway load run, with figures against DESIGN.md §7
bench:
	$(CARGO) bench -p reflow-crds --bench compile
	$(CARGO) bench -p reflow-e2e --bench gateway
	# The allocator profile (issue #24): the same run on mimalloc, gateway paths only.
	REFLOW_BENCH_PATHS=direct,byte-relay,gateway,gw-percore,gw-percore-h1 $(CARGO) bench -p reflow-e2e --features mimalloc --bench gateway
	$(CARGO) bench -p reflow-e2e --bench sandbox
	$(CARGO) build --release -p reflow-dataplane --bin reflow-dataplane
	REFLOW_DATAPLANE_BIN=$(CURDIR)/target/release/reflow-dataplane $(CARGO) bench -p reflow-e2e --bench replicas

## crds: regenerate crds/yaml from the Rust types, and the copies the Helm chart and the kustomize
## base ship (tests fail when any of them drift)
crds:
	$(CARGO) run -q -p reflow-crds --bin crdgen -- crds/yaml
	cp crds/yaml/*.yaml chart/crds/
	cp crds/yaml/*.yaml kustomize/base/crds/

## images: the controller image and both dataplane variants with docker, podman or buildah (REGISTRY,
## TAG, BUILDER override), then how to push them and the Helm values that select them
images:
	./scripts/images.sh

## lint: formatting and clippy, warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

build:
	$(CARGO) build --workspace --all-targets

## fuzz: the fuzz targets' bodies on stable over fuzz/corpus with seeded mutations, FUZZ_SECS per
## target (make test runs them for 10 s each). Coverage-guided: cargo +nightly fuzz run <target>
FUZZ_SECS ?= 60
fuzz:
	FUZZ_SECS=$(FUZZ_SECS) $(CARGO) test -p reflow-e2e --test fuzz_corpus -- --nocapture

## soak: SOAK_SESSIONS (10000) sessions, SOAK_ACTIVE (1000) of them calling once per SOAK_INTERVAL_MS,
## for SOAK_SECS (600) through the real gateway binary; memory per idle session, RSS over time,
## p99, errors (not part of make test)
soak:
	$(CARGO) build --workspace --bins
	REFLOW_DATAPLANE_BIN=$(BIN_DIR)/reflow-dataplane REFLOW_FIXTURE_BIN=$(BIN_DIR)/reflow-fixture \
	  $(BIN_DIR)/reflow-soak

## chaos: steady load while the upstream, Postgres and the controller are killed and restarted;
## failed requests per fault, audit events lost, time to recover (not part of make test)
chaos:
	$(CARGO) build --workspace --bins
	REFLOW_DATAPLANE_BIN=$(BIN_DIR)/reflow-dataplane REFLOW_FIXTURE_BIN=$(BIN_DIR)/reflow-fixture \
	  REFLOW_CONTROLLER_BIN=$(BIN_DIR)/reflow-controller $(BIN_DIR)/reflow-chaos
