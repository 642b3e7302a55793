#!/usr/bin/env bash
# End-to-end test of the OCI images and deploy/ (`make oci-test`, part of `make test`).
#
#   1. dist/oci-compat and dist/oci-oci: exactly the layers and media types Istio and Envoy
#      Gateway read, every blob matching its digest, annotations, reproducible tar.gz.
#   2. deploy/: the tokengate document in every manifest passes `tokengate check` and is
#      deploy/tokengate.json; the plain Envoy configurations pass `envoy --mode validate`.
#   3. A real registry: Debian's docker-registry on 127.0.0.1 (temporary storage), `make
#      push` of both variants, pulled back by digest with skopeo and over the registry API
#      (as Istio's fetcher does); the module bytes must equal the built .wasm.
#   4. Envoy loading tokengate from the registry's blob URL (deploy/envoy/envoy-http.yaml:
#      vm_config.code.remote with the module's sha256 = digest of the oci variant's layer
#      1): the module logs its version and revision, a request with a token passes with
#      the identity headers, one without is refused. A wrong sha256: Envoy refuses the
#      module (fail closed, 503), nothing reaches the upstream.
#   5. Envoy loading plugin.wasm taken from the pulled compat image from a file
#      (deploy/envoy/envoy-file.yaml): a request with a token passes.
#   6. Reproducibility: wasm-opt and the layout builder give identical bytes again, and
#      a second build from a copy of the source at another path, with its own target
#      directory, gives the same module and the same manifest digests.
#
# Needs (fails, does not skip, without them): docker-registry, skopeo, wasm-opt (binaryen),
# python3, curl, Envoy, the CLI, dist/ from `make oci`. Run through `make oci-test`, which
# builds all that and passes VERSION, REVISION, ENVOY, TOKENGATE_CLI, MAKE.
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
START=$SECONDS

MAKE="${MAKE:-make}"
ENVOY="${ENVOY:-$ROOT/.venv/bin/envoy}"
TOKENGATE_CLI="${TOKENGATE_CLI:-$ROOT/target/release/tokengate}"
WASM_OPT="${WASM_OPT:-wasm-opt}"
VERSION="${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)}"
REVISION="${REVISION:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
HELPER="$ROOT/deploy/oci/ocitest.py"
WAIT_SECS="${WAIT_SECS:-45}"   # bound on every wait for a process to come up
ISSUER="https://idp.example.com/realms/corp"
AUDIENCE="orders"
read -r -a ENVOY_CMD <<<"$ENVOY"
read -r -a WASM_OPT_FLAGS_ARR <<<"${WASM_OPT_FLAGS:--Oz --strip-debug --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int --enable-mutable-globals --enable-multivalue --enable-reference-types --enable-extended-const}"

PASSED=0
FAILED=0
pass() { printf 'ok    %s\n' "$1"; PASSED=$((PASSED + 1)); }
fail() {
    printf 'FAIL  %s\n' "$1"
    [[ -z ${2:-} || ! -f ${2:-} ]] || sed 's/^/      /' "$2" | tail -n 25
    FAILED=$((FAILED + 1))
}
die() {
    echo "oci-test: $*" >&2
    FAILED=$((FAILED + 1))
    exit 1
}

# --- tools: missing means failure ---------------------------------------------------------
missing=()
for tool in docker-registry skopeo "$WASM_OPT" python3 curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[[ ${#ENVOY_CMD[@]} -gt 0 ]] && command -v "${ENVOY_CMD[0]}" >/dev/null 2>&1 || missing+=("envoy ($ENVOY)")
[[ -x $TOKENGATE_CLI ]] || missing+=("$TOKENGATE_CLI (make cli)")
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "oci-test: missing: ${missing[*]}" >&2
    echo "oci-test: apt-get install docker-registry skopeo binaryen curl; make cli envoy (.ci/run does all this)" >&2
    echo "oci-test: 0 passed, 1 failed"
    exit 1
fi
for f in dist/tokengate.wasm dist/tokengate.opt.wasm dist/oci.json dist/oci-compat/index.json dist/oci-oci/index.json; do
    [[ -f $f ]] || { echo "oci-test: $f missing: run 'make oci'" >&2; echo "oci-test: 0 passed, 1 failed"; exit 1; }
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/tokengate-oci-test.XXXXXX")"
PIDS=()

# stop PID: TERM, then KILL after 10 s; always reaped.
stop() {
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$? pid left=()
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do stop "$pid"; done
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
    # Anything still running from this test's directory (configs, storage) would be ours.
    if pgrep -f "$TMP" >/dev/null 2>&1; then left+=($(pgrep -f "$TMP")); fi
    if [[ ${#left[@]} -gt 0 ]]; then
        echo "oci-test: processes left running: ${left[*]}" >&2
        rc=1
    fi
    if [[ $FAILED == 0 && $rc == 0 ]]; then
        rm -rf "$TMP"
    else
        echo "oci-test: files kept in $TMP" >&2
    fi
    echo "oci-test: $((SECONDS - START)) s"
    echo "oci-test: $PASSED passed, $FAILED failed"
    [[ $FAILED == 0 && $rc == 0 ]] || exit 1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
PY
}

# wait_for SECS CMD... — until CMD succeeds; fails after SECS.
wait_for() {
    local secs="$1" deadline
    shift
    deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}
envoy_ready() { [[ "$(curl -s --max-time 2 "http://127.0.0.1:$1/ready")" == LIVE ]]; }
json_field() { python3 -c 'import json, sys; d = json.load(open(sys.argv[1]))
for k in sys.argv[2:]: d = d[k]
print(d)' "$@"; }

MODULE="$ROOT/dist/tokengate.opt.wasm"
MODULE_SHA="$(json_field dist/oci.json module sha256)"
DIGEST_OCI="$(json_field dist/oci.json variants oci manifest_digest)"
DIGEST_COMPAT="$(json_field dist/oci.json variants compat manifest_digest)"
echo "oci-test: module sha256:$MODULE_SHA; oci $DIGEST_OCI; compat $DIGEST_COMPAT"

# --- 1. the layouts ------------------------------------------------------------------------
for variant in compat oci; do
    if python3 "$HELPER" check-layout "dist/oci-$variant" "$variant" "$MODULE" dist/oci.json \
        "$(json_field dist/oci.json variants "$variant" manifest_digest)" >"$TMP/out" 2>&1; then
        pass "layout dist/oci-$variant: layers, media types, digests, annotations"
    else
        fail "layout dist/oci-$variant" "$TMP/out"
    fi
done

# --- 2. deploy/ manifests ------------------------------------------------------------------
if "$TOKENGATE_CLI" check deploy/tokengate.json >"$TMP/out" 2>&1; then
    pass "tokengate check deploy/tokengate.json"
else
    fail "tokengate check deploy/tokengate.json" "$TMP/out"
fi
manifests=(deploy/istio/wasmplugin.yaml deploy/envoy-gateway/tokengate.yaml
    deploy/envoy/envoy-file.yaml deploy/envoy/envoy-http.yaml)
for f in "${manifests[@]}"; do
    dir="$TMP/embedded/${f//\//_}"
    mkdir -p "$dir"
    if ! python3 "$HELPER" embedded "$f" "$dir" >"$TMP/list" 2>"$TMP/out"; then
        fail "tokengate document in $f" "$TMP/out"
        continue
    fi
    while read -r n line; do
        if ! "$TOKENGATE_CLI" check "$dir/$n.json" >"$TMP/out" 2>&1; then
            fail "tokengate check $f:$line" "$TMP/out"
        elif ! python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1])) != json.load(open(sys.argv[2])))' \
            "$dir/$n.json" deploy/tokengate.json; then
            fail "$f:$line differs from deploy/tokengate.json"
        else
            pass "tokengate check $f:$line (= deploy/tokengate.json)"
        fi
    done <"$TMP/list"
done
if grep -qE '^kind: WasmPlugin$' deploy/istio/wasmplugin.yaml &&
    grep -qE '^  url: oci://' deploy/istio/wasmplugin.yaml &&
    grep -qE '^kind: EnvoyExtensionPolicy$' deploy/envoy-gateway/tokengate.yaml &&
    grep -qE '^      type: Image$' deploy/envoy-gateway/tokengate.yaml &&
    grep -qE '^kind: (Gateway|HTTPRoute)$' deploy/envoy-gateway/tokengate.yaml; then
    pass "deploy/istio and deploy/envoy-gateway pull the module as an OCI image"
else
    fail "deploy/istio or deploy/envoy-gateway: WasmPlugin url oci://, EnvoyExtensionPolicy code.type Image, Gateway, HTTPRoute expected"
fi
for f in deploy/envoy/envoy-file.yaml deploy/envoy/envoy-http.yaml; do
    if timeout 120 "${ENVOY_CMD[@]}" --mode validate -c "$f" -l warning --disable-hot-restart >"$TMP/out" 2>&1; then
        pass "envoy --mode validate $f"
    else
        fail "envoy --mode validate $f" "$TMP/out"
    fi
done

# --- 3. registry: push, pull back by digest ------------------------------------------------
read -r REG_PORT LISTEN_PORT ADMIN_PORT UPSTREAM_PORT < <(free_ports 4)
REGISTRY="127.0.0.1:$REG_PORT"
mkdir -p "$TMP/registry/storage"
cat >"$TMP/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $TMP/registry/storage
http:
  addr: $REGISTRY
EOF
docker-registry serve "$TMP/registry/config.yml" >"$TMP/registry/log" 2>&1 &
PIDS+=($!)
wait_for "$WAIT_SECS" curl -sf --max-time 2 "http://$REGISTRY/v2/" \
    || { fail "docker-registry on $REGISTRY did not come up in ${WAIT_SECS}s" "$TMP/registry/log"; exit 1; }
pass "docker-registry serving on $REGISTRY"

declare -A PUSHED=([oci]="tokengate:$VERSION" [compat]="tokengate:$VERSION-compat")
declare -A DIGEST=([oci]="$DIGEST_OCI" [compat]="$DIGEST_COMPAT")
for variant in oci compat; do
    image="$REGISTRY/${PUSHED[$variant]}"
    # -o oci: push the layouts checked above; make must not rebuild them mid-test.
    if "$MAKE" --no-print-directory -o oci push IMAGE="$image" VARIANT="$variant" INSECURE=1 >"$TMP/out" 2>&1 &&
        grep -qx "pushed $REGISTRY/tokengate@${DIGEST[$variant]}" "$TMP/out"; then
        pass "make push IMAGE=$image VARIANT=$variant: ${DIGEST[$variant]}"
    else
        fail "make push IMAGE=$image VARIANT=$variant" "$TMP/out"
    fi
    # By digest, with a standard tool, into a fresh layout; then as Istio fetches it.
    if skopeo copy --src-tls-verify=false --preserve-digests \
        "docker://$REGISTRY/tokengate@${DIGEST[$variant]}" "oci:$TMP/pulled-$variant:pulled" >"$TMP/out" 2>&1 &&
        python3 "$HELPER" check-layout "$TMP/pulled-$variant" "$variant" "$MODULE" dist/oci.json \
            "${DIGEST[$variant]}" >>"$TMP/out" 2>&1; then
        pass "skopeo pull tokengate@${DIGEST[$variant]}: $variant layers and media types, module bytes = built .wasm"
    else
        fail "skopeo pull tokengate@${DIGEST[$variant]} ($variant)" "$TMP/out"
    fi
    if python3 "$HELPER" fetch "$REGISTRY" tokengate "${DIGEST[$variant]}" "$variant" "$MODULE" \
        dist/oci.json >"$TMP/out" 2>&1; then
        pass "registry API fetch by digest as Istio/Envoy Gateway do ($variant): module bytes = built .wasm"
    else
        fail "registry API fetch by digest ($variant)" "$TMP/out"
    fi
done
BLOB_URL="http://$REGISTRY/v2/tokengate/blobs/sha256:$MODULE_SHA"
if curl -sf --max-time 10 -o "$TMP/blob.wasm" "$BLOB_URL" && cmp -s "$TMP/blob.wasm" "$MODULE"; then
    pass "blob URL of the oci variant's layer 1 serves the module"
else
    fail "blob URL $BLOB_URL does not serve the module"
fi

# --- 4, 5. Envoy ---------------------------------------------------------------------------
"$TOKENGATE_CLI" keygen --alg ES256 --kid oci-test --out "$TMP/keys" >/dev/null
TOKEN="$("$TOKENGATE_CLI" token --key "$TMP/keys/oci-test.jwk" --iss "$ISSUER" --sub alice --aud "$AUDIENCE")"
python3 "$HELPER" echo "$UPSTREAM_PORT" "$TMP/upstream.log" >"$TMP/upstream.out" 2>&1 &
PIDS+=($!)
wait_for "$WAIT_SECS" curl -sf --max-time 2 "http://127.0.0.1:$UPSTREAM_PORT/ready-probe" \
    || { fail "echo upstream did not come up" "$TMP/upstream.out"; exit 1; }

ENVOY_PID=""
# start_envoy NAME CONFIG — starts Envoy, waits until ready (or gone); 0 if ready.
start_envoy() {
    local name="$1" config="$2"
    "${ENVOY_CMD[@]}" -c "$config" -l info --disable-hot-restart --concurrency 2 \
        >"$TMP/$name.log" 2>&1 &
    ENVOY_PID=$!
    PIDS+=("$ENVOY_PID")
    local deadline=$((SECONDS + WAIT_SECS))
    while ((SECONDS < deadline)); do
        envoy_ready "$ADMIN_PORT" && return 0
        kill -0 "$ENVOY_PID" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}
# request NAME [CURL ARGS...] — status code to stdout, body in $TMP/NAME.body
request() {
    local name="$1"
    shift
    curl -s --max-time 10 -o "$TMP/$name.body" -w '%{http_code}' "$@" || true
}
render() {  # render SRC OUT extra KEY=VALUE...
    local src="$1" out="$2"
    shift 2
    python3 "$HELPER" render-envoy "$src" "$out" \
        "port_value: 9901 }=port_value: $ADMIN_PORT }" \
        "port_value: 8080 }=port_value: $LISTEN_PORT }" \
        "port_value: 8000 }=port_value: $UPSTREAM_PORT }" \
        "jwks=$TMP/keys/jwks.json" "$@"
}
ZEROS=0000000000000000000000000000000000000000000000000000000000000000
render_http() {  # render_http OUT SHA256
    render deploy/envoy/envoy-http.yaml "$1" \
        "port_value: 5000 }=port_value: $REG_PORT }" \
        "http://127.0.0.1:5000/v2/tokengate/blobs/sha256:$ZEROS=$BLOB_URL" \
        "sha256: \"$ZEROS\"=sha256: \"$2\""
}

# 4a. the module from the registry, right sha256
render_http "$TMP/envoy-http.yaml" "$MODULE_SHA"
if start_envoy envoy-http "$TMP/envoy-http.yaml"; then
    pass "Envoy ready with tokengate fetched from $BLOB_URL (sha256 $MODULE_SHA)"
    if grep -qF "tokengate $VERSION (revision $REVISION) starting" "$TMP/envoy-http.log"; then
        pass "Envoy log: tokengate $VERSION (revision $REVISION) starting"
    else
        fail "Envoy log lacks 'tokengate $VERSION (revision $REVISION) starting'" "$TMP/envoy-http.log"
    fi
    code="$(request ok -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$LISTEN_PORT/orders/1")"
    if [[ $code == 200 ]] && python3 -c 'import json, sys
h = json.load(open(sys.argv[1]))["headers"]
sys.exit(not (h.get("x-user-id") == "alice" and "authorization" not in h))' "$TMP/ok.body"; then
        pass "authenticated request through Envoy: 200, upstream sees x-user-id: alice, no token"
    else
        fail "authenticated request: status $code" "$TMP/ok.body"
    fi
    code="$(request anon "http://127.0.0.1:$LISTEN_PORT/orders/1")"
    if [[ $code == 401 ]]; then pass "request without a token: 401"; else fail "request without a token: status $code" "$TMP/anon.body"; fi
else
    fail "Envoy with tokengate from the registry did not become ready" "$TMP/envoy-http.log"
fi
stop "$ENVOY_PID"

# 4b. wrong sha256: Envoy refuses the module
WRONG_SHA="$(echo "$MODULE_SHA" | tr '0-9a-f' '1-9a-f0')"
render_http "$TMP/envoy-wrong-sha.yaml" "$WRONG_SHA"
start_envoy envoy-wrong-sha "$TMP/envoy-wrong-sha.yaml" || true
refused_in_log() { grep -q "Plugin tokengate failed to load" "$TMP/envoy-wrong-sha.log"; }
wait_for "$WAIT_SECS" refused_in_log || true
code="$(request wrong-sha -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$LISTEN_PORT/wrong-sha-probe")"
if refused_in_log && [[ $code != 200 ]] && ! grep -q wrong-sha-probe "$TMP/upstream.log" 2>/dev/null; then
    pass "wrong sha256: Envoy refuses the module (Plugin tokengate failed to load; request $code, upstream not reached)"
else
    fail "wrong sha256: expected 'Plugin tokengate failed to load' and no request through (status $code)" "$TMP/envoy-wrong-sha.log"
fi
stop "$ENVOY_PID"

# 5. the module taken from the pulled compat image, from a file
if python3 "$HELPER" extract "$TMP/pulled-compat" "$TMP/plugin.wasm" >"$TMP/out" 2>&1; then
    render deploy/envoy/envoy-file.yaml "$TMP/envoy-file.yaml" "filename: dist/tokengate.wasm=filename: $TMP/plugin.wasm"
    if start_envoy envoy-file "$TMP/envoy-file.yaml"; then
        code="$(request file -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$LISTEN_PORT/orders/2")"
        code2="$(request file-anon "http://127.0.0.1:$LISTEN_PORT/orders/2")"
        if [[ $code == 200 && $code2 == 401 ]]; then
            pass "Envoy with plugin.wasm from the pulled compat image (local file): 200 with a token, 401 without"
        else
            fail "Envoy with plugin.wasm from a file: $code with a token, $code2 without" "$TMP/envoy-file.log"
        fi
    else
        fail "Envoy with plugin.wasm from a file did not become ready" "$TMP/envoy-file.log"
    fi
    stop "$ENVOY_PID"
else
    fail "extract plugin.wasm from the pulled compat image" "$TMP/out"
fi

# --- 6. reproducibility --------------------------------------------------------------------
if "$WASM_OPT" "${WASM_OPT_FLAGS_ARR[@]}" dist/tokengate.wasm -o "$TMP/again.opt.wasm" >"$TMP/out" 2>&1 &&
    cmp -s "$TMP/again.opt.wasm" "$MODULE"; then
    pass "wasm-opt again: identical module"
else
    fail "wasm-opt again gives different bytes" "$TMP/out"
fi
if python3 deploy/oci/build.py --wasm "$MODULE" --out "$TMP/again" --tag "$(json_field dist/oci.json tag)" \
    --version "$VERSION" --revision "$REVISION" >"$TMP/out" 2>&1 &&
    python3 "$HELPER" same-tree dist/oci-compat "$TMP/again/oci-compat" >>"$TMP/out" 2>&1 &&
    python3 "$HELPER" same-tree dist/oci-oci "$TMP/again/oci-oci" >>"$TMP/out" 2>&1; then
    pass "layout builder again: identical layouts"
else
    fail "layout builder again gives different layouts" "$TMP/out"
fi
# A second build from scratch: the source copied to another path, its own target directory.
COPY="$TMP/source-copy"
mkdir -p "$COPY"
for entry in Cargo.toml Cargo.lock Makefile build.rs rust-toolchain rust-toolchain.toml .cargo .ci src deploy/oci; do
    [[ -e $entry ]] || continue
    mkdir -p "$COPY/$(dirname "$entry")"
    cp -a "$entry" "$COPY/$entry"
done
echo "oci-test: second build from scratch in $COPY (takes a minute)"
if env -u CARGO_TARGET_DIR "$MAKE" --no-print-directory -C "$COPY" oci REVISION="$REVISION" >"$TMP/rebuild.log" 2>&1; then
    if cmp -s "$COPY/dist/tokengate.wasm" dist/tokengate.wasm && cmp -s "$COPY/dist/tokengate.opt.wasm" "$MODULE"; then
        pass "second build at another path: identical module (sha256:$MODULE_SHA)"
    else
        fail "second build at another path: the module differs" "$TMP/rebuild.log"
    fi
    d_oci="$(json_field "$COPY/dist/oci.json" variants oci manifest_digest)"
    d_compat="$(json_field "$COPY/dist/oci.json" variants compat manifest_digest)"
    if [[ $d_oci == "$DIGEST_OCI" && $d_compat == "$DIGEST_COMPAT" ]] &&
        python3 "$HELPER" same-tree dist/oci-oci "$COPY/dist/oci-oci" >"$TMP/out" 2>&1 &&
        python3 "$HELPER" same-tree dist/oci-compat "$COPY/dist/oci-compat" >>"$TMP/out" 2>&1; then
        pass "second build: identical manifest digests (oci $d_oci, compat $d_compat)"
    else
        fail "second build: digests oci $d_oci compat $d_compat, expected $DIGEST_OCI $DIGEST_COMPAT" "$TMP/out"
    fi
else
    fail "second build (make -C $COPY oci)" "$TMP/rebuild.log"
fi
