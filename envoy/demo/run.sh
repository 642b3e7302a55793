#!/usr/bin/env bash
# tokengate demo (`make run`): Envoy with the tokengate filter in front of a small echo
# service, with development keys and ready-made tokens. The filter gets its keys from a
# small demo identity provider (envoy/demo/idp.py) by OIDC discovery, through the Envoy
# cluster demo_idp. Everything listens on 127.0.0.1.
#
#   make run                        build, then run this script
#   envoy/demo/run.sh               the same, once dist/tokengate.wasm and the CLI exist
#   DEMO_SMOKE=1 envoy/demo/run.sh  run the example requests as checks, print PASS/FAIL,
#                                   stop, and exit non-zero on failure (`make validate`)
#
# Environment:
#   LISTEN_PORT (8080)  Envoy listener        ADMIN_PORT (9901)  Envoy admin
#   UPSTREAM_PORT (8000) echo service         IDP_PORT (9000)    demo IdP (the issuer is
#                                             http://127.0.0.1:$IDP_PORT/demo)
#   RUN_DIR (.run)      keys, configs, logs
#   ENVOY      command prefix for Envoy, word-split ("func-e run" works);
#              default .venv/bin/envoy
#   TOKENGATE_CLI, TOKENGATE_WASM  default target/release/tokengate, dist/tokengate.wasm
#   READY_TIMEOUT (30)  seconds to wait for the IdP, then for Envoy, to become ready
#
# Files in RUN_DIR: demo-rs256.jwk, demo-eddsa.jwk (private dev keys, kept between runs),
# jwks.json (served by the IdP, re-read on every request: rewrite it to rotate keys),
# tokengate.json, envoy.yaml, tokens.env, envoy.log, envoy.out, access.log, echo.log,
# idp.log.
set -euo pipefail

DEMO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DEMO_DIR/../.." && pwd)"
cd "$ROOT"
# shellcheck source=envoy/demo/render.sh
source "$DEMO_DIR/render.sh"

LISTEN_PORT="${LISTEN_PORT:-8080}"
ADMIN_PORT="${ADMIN_PORT:-9901}"
UPSTREAM_PORT="${UPSTREAM_PORT:-8000}"
IDP_PORT="${IDP_PORT:-9000}"
RUN_DIR="${RUN_DIR:-$ROOT/.run}"
ENVOY="${ENVOY:-$ROOT/.venv/bin/envoy}"
TOKENGATE_CLI="${TOKENGATE_CLI:-$ROOT/target/release/tokengate}"
TOKENGATE_WASM="${TOKENGATE_WASM:-$ROOT/dist/tokengate.wasm}"
READY_TIMEOUT="${READY_TIMEOUT:-30}"
DEMO_SMOKE="${DEMO_SMOKE:-0}"
export LISTEN_PORT ADMIN_PORT UPSTREAM_PORT IDP_PORT TOKENGATE_CLI TOKENGATE_WASM

die() { echo "run.sh: $*" >&2; exit 1; }
say() { echo "run.sh: $*" >&2; }

# --- pre-flight ------------------------------------------------------------------------
for tool in python3 curl; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
[[ -x "$TOKENGATE_CLI" ]] || die "$TOKENGATE_CLI not found: run 'make cli' (or 'make run')"
[[ -f "$TOKENGATE_WASM" ]] || die "$TOKENGATE_WASM not found: run 'make build' (or 'make run')"
read -r -a ENVOY_CMD <<<"$ENVOY"
[[ ${#ENVOY_CMD[@]} -gt 0 ]] && command -v "${ENVOY_CMD[0]}" >/dev/null \
    || die "Envoy not found (ENVOY='$ENVOY'): run 'make envoy', or set ENVOY"

PORT_NAMES="LISTEN_PORT ADMIN_PORT UPSTREAM_PORT IDP_PORT"
for name in $PORT_NAMES; do
    [[ "${!name}" =~ ^[0-9]+$ ]] && ((${!name} > 0 && ${!name} < 65536)) \
        || die "$name=${!name} is not a port number"
done
if [[ $(printf '%d\n' "$LISTEN_PORT" "$ADMIN_PORT" "$UPSTREAM_PORT" "$IDP_PORT" | sort -u | wc -l) != 4 ]]; then
    die "LISTEN_PORT, ADMIN_PORT, UPSTREAM_PORT and IDP_PORT must differ ($LISTEN_PORT, $ADMIN_PORT, $UPSTREAM_PORT, $IDP_PORT)"
fi
# The issuer is the demo IdP's: tokens, tokengate.json and the discovery document agree.
DEMO_ISSUER="$(demo_issuer_for "$IDP_PORT")"
IDP="$DEMO_ISSUER"

# port_free PORT — can we listen on 127.0.0.1:PORT? (SO_REUSEADDR, as Envoy and echo.py do.)
port_free() {
    python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen()
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}
for name in $PORT_NAMES; do
    port_free "${!name}" || die "port ${!name} on 127.0.0.1 is busy (another demo, Envoy or server?); choose another with $name=..."
done

# --- processes and cleanup -------------------------------------------------------------
PIDS=()
# start_bg LOGFILE CMD... — in its own process group when possible (so that a wrapper
# such as "func-e run" is stopped together with the Envoy it starts).
start_bg() {
    local log="$1"
    shift
    if command -v setsid >/dev/null; then
        setsid "$@" </dev/null >"$log" 2>&1 &
    else
        "$@" </dev/null >"$log" 2>&1 &
    fi
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

alive() { kill -0 "$1" 2>/dev/null; }

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    for ((i = 0; i < 50; i++)); do # up to 5 s for a clean shutdown
        local any=0
        for pid in ${PIDS[@]+"${PIDS[@]}"}; do alive "$pid" && any=1; done
        [[ $any == 0 ]] && break
        sleep 0.1
    done
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        if alive "$pid"; then
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    [[ ${#PIDS[@]} -gt 0 && $DEMO_SMOKE != 1 ]] && say "stopped Envoy, the echo service and the demo IdP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# show_logs — the end of every log, after a failure.
show_logs() {
    local f shown=0
    for f in envoy.out envoy.log echo.log idp.log; do
        [[ -s "$RUN_DIR/$f" ]] || continue
        echo "---- $RUN_DIR/$f (last 20 lines)" >&2
        tail -n 20 "$RUN_DIR/$f" >&2
        shown=1
    done
    [[ $shown == 1 ]] || echo "---- (Envoy, echo.py and idp.py wrote no log output to $RUN_DIR)" >&2
}

# --- keys, configuration ---------------------------------------------------------------
mkdir -p "$RUN_DIR"
demo_render "$RUN_DIR" || die "rendering the demo configuration failed"
"$TOKENGATE_CLI" check "$RUN_DIR/tokengate.json" >/dev/null \
    || die "tokengate check rejected $RUN_DIR/tokengate.json"
rm -f "$RUN_DIR/envoy.log" "$RUN_DIR/access.log"

# --- start ---------------------------------------------------------------------------
start_bg "$RUN_DIR/echo.log" python3 "$DEMO_DIR/echo.py" --port "$UPSTREAM_PORT"
ECHO_PID=$LAST_PID

# The IdP first: the filter's first key fetch starts as soon as Envoy is up. Its readiness
# probe is /demo/stats, which the IdP does not count.
start_bg "$RUN_DIR/idp.log" python3 "$DEMO_DIR/idp.py" --port "$IDP_PORT" "$RUN_DIR/jwks.json"
IDP_PID=$LAST_PID
deadline=$((SECONDS + READY_TIMEOUT))
until [[ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "$IDP/stats" 2>/dev/null)" == 200 ]]; do
    alive "$IDP_PID" || { show_logs; die "idp.py exited during startup (logs above)"; }
    ((SECONDS < deadline)) || { show_logs; die "idp.py not answering after ${READY_TIMEOUT}s (logs above)"; }
    sleep 0.2
done

# --disable-hot-restart: otherwise a second Envoy on this machine (another demo, the e2e
# tests) fails with "unable to bind domain socket with base_id=0".
start_bg "$RUN_DIR/envoy.out" "${ENVOY_CMD[@]}" -c "$RUN_DIR/envoy.yaml" --concurrency 2 \
    -l warning --log-path "$RUN_DIR/envoy.log" --disable-hot-restart
ENVOY_PID=$LAST_PID

BASE="http://127.0.0.1:$LISTEN_PORT"
ADMIN="http://127.0.0.1:$ADMIN_PORT"
deadline=$((SECONDS + READY_TIMEOUT))
until [[ "$(curl -s --max-time 2 "$ADMIN/ready" 2>/dev/null)" == LIVE* ]]; do
    alive "$ENVOY_PID" || { show_logs; die "Envoy exited during startup (logs above)"; }
    alive "$ECHO_PID" || { show_logs; die "echo.py exited during startup (logs above)"; }
    alive "$IDP_PID" || { show_logs; die "idp.py exited during startup (logs above)"; }
    ((SECONDS < deadline)) || { show_logs; die "Envoy not ready after ${READY_TIMEOUT}s (logs above)"; }
    sleep 0.2
done
until curl -s --max-time 2 -o /dev/null "http://127.0.0.1:$UPSTREAM_PORT/"; do
    alive "$ECHO_PID" || { show_logs; die "echo.py exited during startup (logs above)"; }
    ((SECONDS < deadline)) || { show_logs; die "echo.py not answering after ${READY_TIMEOUT}s"; }
    sleep 0.2
done

# --- tokens ----------------------------------------------------------------------------
mint() { "$TOKENGATE_CLI" token --iss "$DEMO_ISSUER" --aud "$DEMO_AUDIENCE" "$@"; }
VALID="$(mint --key "$RUN_DIR/demo-rs256.jwk" --sub demo-user --exp-in 1h \
    --claim 'scope=read write' --claim 'realm_access.roles=["user","admin"]')"
EXPIRED="$(mint --key "$RUN_DIR/demo-rs256.jwk" --sub demo-user --exp-in -1h --claim 'scope=read write')"
EDDSA="$(mint --key "$RUN_DIR/demo-eddsa.jwk" --sub demo-eddsa-user --exp-in 1h --claim 'scope=read')"
# A forgery: right issuer, audience and kid, signed with a key that is not in the JWKS.
ROGUE_DIR="$RUN_DIR/rogue"
[[ -f "$ROGUE_DIR/demo-rs256.jwk" ]] \
    || "$TOKENGATE_CLI" keygen --alg RS256 --kid demo-rs256 --out "$ROGUE_DIR" >/dev/null
FORGED="$(mint --key "$ROGUE_DIR/demo-rs256.jwk" --sub demo-user --exp-in 1h --claim 'scope=admin')"
(
    umask 077
    printf 'VALID=%s\nEXPIRED=%s\nEDDSA=%s\nFORGED=%s\n' "$VALID" "$EXPIRED" "$EDDSA" "$FORGED" >"$RUN_DIR/tokens.env"
)

# --- example requests (printed for the user; run as checks with DEMO_SMOKE=1) ----------
# Each: description | expected status | curl arguments (shell words; $VALID etc. are the
# tokens) | optional Python assertion over `body` (the echo's JSON, or None) and `headers`
# (response headers, lower-case names).
C_DESC=() C_STATUS=() C_ARGS=() C_ASSERT=()
example() { C_DESC+=("$1") C_STATUS+=("$2") C_ARGS+=("$3") C_ASSERT+=("${4:-}"); }

example "valid RS256 token: 200, the upstream sees the identity headers and no token" 200 \
    "-H \"Authorization: Bearer \$VALID\" $BASE/api/orders" \
    "body['identity']['x-user-id'] == 'demo-user' and body['identity']['x-user-scope'] == 'read write' and body['identity']['x-user-roles'] == 'user,admin' and body['identity']['x-jwt-payload-decoded']['sub'] == 'demo-user' and 'authorization' not in body['headers']"
example "no token: 401, WWW-Authenticate: Bearer realm=\"demo\"" 401 \
    "$BASE/api/orders" \
    "headers.get('www-authenticate', '').startswith('Bearer realm=\"demo\"')"
example "expired token: 401 invalid_token" 401 \
    "-H \"Authorization: Bearer \$EXPIRED\" $BASE/api/orders" \
    "'error=\"invalid_token\"' in headers.get('www-authenticate', '')"
example "token signed with a key that is not in the JWKS (same kid): 401 invalid_token" 401 \
    "-H \"Authorization: Bearer \$FORGED\" $BASE/api/orders" \
    "'error=\"invalid_token\"' in headers.get('www-authenticate', '')"
example "EdDSA (Ed25519) token: 200" 200 \
    "-H \"Authorization: Bearer \$EDDSA\" $BASE/api/orders" \
    "body['identity']['x-user-id'] == 'demo-eddsa-user'"
example "token in the access_token cookie: 200, the cookie is removed" 200 \
    "--cookie \"access_token=\$VALID\" $BASE/api/orders" \
    "body['identity']['x-user-id'] == 'demo-user' and 'access_token' not in body['headers'].get('cookie', '')"
example "token in the access_token query parameter: 200, only that parameter is removed" 200 \
    "\"$BASE/api/orders?page=2&access_token=\$VALID\"" \
    "body['identity']['x-user-id'] == 'demo-user' and 'access_token' not in body['path'] and 'page=2' in body['path']"
example "/healthz is anonymous: 200 without a token" 200 \
    "$BASE/healthz" \
    "body['identity']['x-user-id'] is None"
example "spoofed x-user-id on an anonymous route: stripped" 200 \
    "-H 'x-user-id: admin' -H 'x-user-roles: admin' $BASE/healthz" \
    "body['identity']['x-user-id'] is None and body['identity']['x-user-roles'] is None"
example "spoofed x-user-id with a valid token: replaced by the token's sub" 200 \
    "-H 'x-user-id: admin' -H \"Authorization: Bearer \$VALID\" $BASE/api/orders" \
    "body['identity']['x-user-id'] == 'demo-user'"
example "/healthz/../api/orders is normalized to /api/orders: 401, not anonymous" 401 \
    "--path-as-is $BASE/healthz/../api/orders"
example "/healthz%2F..%2Fapi%2Forders: Envoy redirects to the decoded path /api/orders" 307 \
    "--path-as-is $BASE/healthz%2F..%2Fapi%2Forders" \
    "headers.get('location') == '/api/orders'"
example "//api//orders: slashes merged, the upstream sees /api/orders" 200 \
    "--path-as-is -H \"Authorization: Bearer \$VALID\" $BASE//api//orders" \
    "body['path'] == '/api/orders'"

# shown — a path relative to the repository root when it is inside it.
shown() { [[ $1 == "$ROOT"/* ]] && echo "${1#"$ROOT"/}" || echo "$1"; }

print_examples() {
    local i
    cat <<EOF

tokengate demo is running (Ctrl-C stops it)
  listener  $BASE   Envoy + tokengate
  upstream  http://127.0.0.1:$UPSTREAM_PORT   envoy/demo/echo.py (echoes what reaches it)
  admin     $ADMIN
  keys      from the demo IdP by OIDC discovery (envoy/demo/idp.py, Envoy cluster demo_idp):
            discovery $IDP/.well-known/openid-configuration
            jwks      $IDP/jwks.json   (= $(shown "$RUN_DIR")/jwks.json, re-read on every request)
  files     $(shown "$RUN_DIR")   (keys, tokengate.json, envoy.yaml, envoy.log, access.log)

Tokens (RS256 and EdDSA valid for 1 hour; iss $DEMO_ISSUER, aud $DEMO_AUDIENCE).
Paste these lines into your shell, or run: source $(shown "$RUN_DIR")/tokens.env

VALID='$VALID'
EXPIRED='$EXPIRED'
EDDSA='$EDDSA'
FORGED='$FORGED'

Then try:
EOF
    for i in "${!C_DESC[@]}"; do
        printf '\n# %s\ncurl -i %s\n' "${C_DESC[$i]}" "${C_ARGS[$i]}"
    done
    cat <<EOF

# tokengate's counters (allowed, denied by reason, key fetches: jwks.fetch.success ...)
curl -s '$ADMIN/stats?filter=tokengate'

# the demo IdP: the discovery document tokengate reads, the keys, and how often each was fetched
curl -s $IDP/.well-known/openid-configuration
curl -s $IDP/jwks.json
curl -s $IDP/stats

# more tokens
$(shown "$TOKENGATE_CLI") token --key $(shown "$RUN_DIR")/demo-rs256.jwk --iss $DEMO_ISSUER --aud $DEMO_AUDIENCE --sub alice --claim scope=admin
EOF
}

# run_examples — DEMO_SMOKE: every example as a check. Returns non-zero on any failure.
run_examples() {
    local i status failed=0 tmp="$RUN_DIR/smoke"
    mkdir -p "$tmp"
    for i in "${!C_DESC[@]}"; do
        status="$(eval "curl -sS --max-time 5 -o \"\$tmp/body\" -D \"\$tmp/headers\" -w '%{http_code}' ${C_ARGS[$i]}" 2>"$tmp/err")" || true
        local problem=""
        if [[ $status != "${C_STATUS[$i]}" ]]; then
            problem="expected ${C_STATUS[$i]}, got ${status:-no answer} $(head -c 300 "$tmp/err")"
        elif [[ -n ${C_ASSERT[$i]} ]]; then
            problem="$(python3 - "$tmp/body" "$tmp/headers" "${C_ASSERT[$i]}" <<'PY'
import json, sys
body_path, headers_path, expr = sys.argv[1:4]
try:
    body = json.load(open(body_path))
except ValueError:
    body = None
headers = {}
for line in open(headers_path, encoding="latin-1"):
    name, sep, value = line.partition(":")
    if sep:
        headers[name.strip().lower()] = value.strip()
try:
    ok = eval(expr, {}, {"body": body, "headers": headers})
except Exception as e:
    ok = False
    expr = f"{expr} raised {e!r}"
if not ok:
    print(f"assertion failed: {expr}; body: {json.dumps(body)[:600]}")
PY
)" || problem="assertion could not be evaluated: $problem"
        fi
        if [[ -z $problem ]]; then
            echo "PASS  ${C_DESC[$i]}"
        else
            echo "FAIL  ${C_DESC[$i]}: $problem"
            failed=1
        fi
    done
    # The admin interface answers and lists the filter's counters (request counters
    # reach Envoy on the filter's 50 ms tick).
    sleep 0.3
    status="$(curl -s --max-time 5 -o "$tmp/body" -w '%{http_code}' "$ADMIN/stats?filter=tokengate")" || true
    if [[ $status == 200 ]] && grep -qE 'tokengate\.(allowed|denied)' "$tmp/body"; then
        echo "PASS  stats at $ADMIN/stats?filter=tokengate list tokengate counters"
    else
        echo "FAIL  stats at $ADMIN/stats?filter=tokengate: status ${status:-none}, no tokengate counters"
        failed=1
    fi
    # The keys came from the IdP by discovery, in one fetch shared by all of Envoy's workers
    # (--concurrency 2): one discovery document and one jwks.json request, one success.
    problem="$(python3 - "$IDP/stats" "$ADMIN/stats?filter=tokengate\.jwks\." <<'PY'
import json, sys, urllib.request
idp_url, admin_url = sys.argv[1:3]
try:
    with urllib.request.urlopen(idp_url, timeout=5) as r:
        counts = json.load(r).get("requests", {})
    with urllib.request.urlopen(admin_url, timeout=5) as r:
        text = r.read().decode()
except Exception as e:
    print(f"could not read the counters: {e}")
    sys.exit()
stats = {}
for line in text.splitlines():
    name, sep, value = line.partition(": ")
    if sep:
        stats[name.strip()] = value.strip()
problems = []
for path in ("/demo/.well-known/openid-configuration", "/demo/jwks.json"):
    if counts.get(path, 0) != 1:
        problems.append(f"IdP served {path} {counts.get(path, 0)} times, expected 1")
success = stats.get("wasmcustom.tokengate.jwks.fetch.success")
if success != "1":
    problems.append(f"wasmcustom.tokengate.jwks.fetch.success is {success}, expected 1")
if problems:
    print("; ".join(problems) + f" (IdP requests: {json.dumps(counts)}; Envoy: {json.dumps(stats)})")
PY
)" || problem="the check could not run: $problem"
    if [[ -z $problem ]]; then
        echo "PASS  keys from the demo IdP by discovery: 1 discovery + 1 jwks.json request, jwks.fetch.success 1"
    else
        echo "FAIL  keys from the demo IdP by discovery: $problem"
        failed=1
    fi
    rm -rf "$tmp"
    return "$failed"
}

if [[ $DEMO_SMOKE == 1 ]]; then
    echo "demo smoke: Envoy on 127.0.0.1:$LISTEN_PORT, admin $ADMIN_PORT, upstream $UPSTREAM_PORT, IdP $IDP_PORT"
    if run_examples; then
        echo "demo smoke: PASS"
        exit 0
    fi
    show_logs
    echo "demo smoke: FAIL"
    exit 1
fi

print_examples
# Wait until Ctrl-C (the trap stops every process), or until one of them dies.
while alive "$ENVOY_PID" && alive "$ECHO_PID" && alive "$IDP_PID"; do
    sleep 1 &
    wait $! || true
done
show_logs
if ! alive "$ENVOY_PID"; then
    die "Envoy exited unexpectedly (logs above)"
elif ! alive "$ECHO_PID"; then
    die "echo.py exited unexpectedly (logs above)"
fi
die "idp.py exited unexpectedly (logs above)"
