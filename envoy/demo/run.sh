#!/usr/bin/env bash
# tokengate demo (`make run`): Envoy with the tokengate filter in front of a small echo
# service, with development keys and ready-made tokens. The filter gets its keys from a
# small demo identity provider (envoy/demo/idp.py) by OIDC discovery, through the Envoy
# cluster demo_idp. The same IdP issues opaque tokens and sessions, which the filter's
# exchanges introspect, exchange for JWTs or look up (cluster auth): the gateway-centric and
# session patterns, revocation included. Rules authorize locally (scope, ownership by path
# template, a dry run) and centrally: a small demo policy service (envoy/demo/policy.py,
# OPA's data API, cluster opa) decides for rules with "central": true. A browser opening
# http://localhost:$LISTEN_PORT/web/ is sent through the demo IdP's sign-in form and back
# (the filter's browser login, OIDC code flow with PKCE). Everything listens on 127.0.0.1.
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
#   POLICY_PORT (8181)  demo policy service; with DEMO_SMOKE=1 and POLICY_PORT unset, a
#                       free port
#   RUN_DIR (.run)      keys, configs, logs
#   ENVOY      command prefix for Envoy, word-split ("func-e run" works);
#              default .venv/bin/envoy
#   TOKENGATE_CLI, TOKENGATE_WASM  default target/release/tokengate, dist/tokengate.wasm
#   READY_TIMEOUT (30)  seconds to wait for the IdP, then for Envoy, to become ready
#
# Files in RUN_DIR: demo-rs256.jwk, demo-eddsa.jwk (private dev keys, kept between runs),
# jwks.json (served by the IdP, re-read on every request: rewrite it to rotate keys),
# gateway/demo-gateway.jwk (the key the filter mints its own JWTs with), tokengate.json,
# envoy.yaml, tokens.env, envoy.log, envoy.out, access.log, echo.log, idp.log, policy.log.
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
POLICY_PORT="${POLICY_PORT:-}"
RUN_DIR="${RUN_DIR:-$ROOT/.run}"
ENVOY="${ENVOY:-$ROOT/.venv/bin/envoy}"
TOKENGATE_CLI="${TOKENGATE_CLI:-$ROOT/target/release/tokengate}"
TOKENGATE_WASM="${TOKENGATE_WASM:-$ROOT/dist/tokengate.wasm}"
READY_TIMEOUT="${READY_TIMEOUT:-30}"
DEMO_SMOKE="${DEMO_SMOKE:-0}"
if [[ -z $POLICY_PORT && $DEMO_SMOKE == 1 ]]; then
    # The smoke check (envoy/validate.sh) picks the other four ports: a free fifth one.
    POLICY_PORT="$(python3 - "$LISTEN_PORT" "$ADMIN_PORT" "$UPSTREAM_PORT" "$IDP_PORT" <<'PY'
import socket, sys
taken = set(sys.argv[1:])
for _ in range(20):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
    s.close()
    if port not in taken:
        print(port)
        break
PY
)"
fi
POLICY_PORT="${POLICY_PORT:-8181}"
export LISTEN_PORT ADMIN_PORT UPSTREAM_PORT IDP_PORT POLICY_PORT TOKENGATE_CLI TOKENGATE_WASM

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

PORT_NAMES="LISTEN_PORT ADMIN_PORT UPSTREAM_PORT IDP_PORT POLICY_PORT"
for name in $PORT_NAMES; do
    [[ "${!name}" =~ ^[0-9]+$ ]] && ((${!name} > 0 && ${!name} < 65536)) \
        || die "$name=${!name} is not a port number"
done
if [[ $(printf '%d\n' "$LISTEN_PORT" "$ADMIN_PORT" "$UPSTREAM_PORT" "$IDP_PORT" "$POLICY_PORT" | sort -u | wc -l) != 5 ]]; then
    die "LISTEN_PORT, ADMIN_PORT, UPSTREAM_PORT, IDP_PORT and POLICY_PORT must differ ($LISTEN_PORT, $ADMIN_PORT, $UPSTREAM_PORT, $IDP_PORT, $POLICY_PORT)"
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
    [[ ${#PIDS[@]} -gt 0 && $DEMO_SMOKE != 1 ]] && say "stopped Envoy, the echo service, the demo IdP and the demo policy service"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# show_logs — the end of every log, after a failure.
show_logs() {
    local f shown=0
    for f in envoy.out envoy.log echo.log idp.log policy.log; do
        [[ -s "$RUN_DIR/$f" ]] || continue
        echo "---- $RUN_DIR/$f (last 20 lines)" >&2
        tail -n 20 "$RUN_DIR/$f" >&2
        shown=1
    done
    [[ $shown == 1 ]] || echo "---- (Envoy, echo.py, idp.py and policy.py wrote no log output to $RUN_DIR)" >&2
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
# It signs its own JWTs (signed introspection answers, exchanged tokens, session tokens,
# the browser login's access and ID tokens) with demo-rs256, so the demo provider's keys
# verify them; the gateway's clients (exchanges, browser login) are the ones in
# tokengate.json, and the login's redirect URIs are this listener's callback, by either
# name of the loopback host.
start_bg "$RUN_DIR/idp.log" python3 "$DEMO_DIR/idp.py" --port "$IDP_PORT" \
    --signing-key "$RUN_DIR/demo-rs256.jwk" --audience "$DEMO_AUDIENCE" \
    --client "$DEMO_CLIENT_ID:$DEMO_CLIENT_SECRET" --logout-audience "$DEMO_CLIENT_ID" \
    --client "$DEMO_LOGIN_CLIENT_ID:$DEMO_LOGIN_CLIENT_SECRET" \
    --redirect-uri "http://localhost:$LISTEN_PORT$DEMO_LOGIN_REDIRECT_PATH" \
    --redirect-uri "http://127.0.0.1:$LISTEN_PORT$DEMO_LOGIN_REDIRECT_PATH" \
    "$RUN_DIR/jwks.json"
IDP_PID=$LAST_PID
deadline=$((SECONDS + READY_TIMEOUT))
until [[ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "$IDP/stats" 2>/dev/null)" == 200 ]]; do
    alive "$IDP_PID" || { show_logs; die "idp.py exited during startup (logs above)"; }
    ((SECONDS < deadline)) || { show_logs; die "idp.py not answering after ${READY_TIMEOUT}s (logs above)"; }
    sleep 0.2
done

# The central policy service (OPA's data API with one fixed policy), asked through the
# Envoy cluster opa by rules with "central": true.
start_bg "$RUN_DIR/policy.log" python3 "$DEMO_DIR/policy.py" --port "$POLICY_PORT"
POLICY_PID=$LAST_PID
POLICY="http://127.0.0.1:$POLICY_PORT"
until [[ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "$POLICY/health" 2>/dev/null)" == 200 ]]; do
    alive "$POLICY_PID" || { show_logs; die "policy.py exited during startup (logs above)"; }
    ((SECONDS < deadline)) || { show_logs; die "policy.py not answering after ${READY_TIMEOUT}s (logs above)"; }
    sleep 0.2
done

# --disable-hot-restart: otherwise a second Envoy on this machine (another demo, the e2e
# tests) fails with "unable to bind domain socket with base_id=0". The filter's own log
# at info (wasm:info): its start, key fetches, and what a dry-run rule would refuse.
start_bg "$RUN_DIR/envoy.out" "${ENVOY_CMD[@]}" -c "$RUN_DIR/envoy.yaml" --concurrency 2 \
    -l warning --component-log-level wasm:info --log-path "$RUN_DIR/envoy.log" --disable-hot-restart
ENVOY_PID=$LAST_PID

BASE="http://127.0.0.1:$LISTEN_PORT"
ADMIN="http://127.0.0.1:$ADMIN_PORT"
deadline=$((SECONDS + READY_TIMEOUT))
until [[ "$(curl -s --max-time 2 "$ADMIN/ready" 2>/dev/null)" == LIVE* ]]; do
    alive "$ENVOY_PID" || { show_logs; die "Envoy exited during startup (logs above)"; }
    alive "$ECHO_PID" || { show_logs; die "echo.py exited during startup (logs above)"; }
    alive "$IDP_PID" || { show_logs; die "idp.py exited during startup (logs above)"; }
    alive "$POLICY_PID" || { show_logs; die "policy.py exited during startup (logs above)"; }
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
# An administrator: scope admin (and not read).
ADMIN_TOKEN="$(mint --key "$RUN_DIR/demo-rs256.jwk" --sub demo-admin --exp-in 1h --claim 'scope=admin')"
# A forgery: right issuer, audience and kid, signed with a key that is not in the JWKS.
ROGUE_DIR="$RUN_DIR/rogue"
[[ -f "$ROGUE_DIR/demo-rs256.jwk" ]] \
    || "$TOKENGATE_CLI" keygen --alg RS256 --kid demo-rs256 --out "$ROGUE_DIR" >/dev/null
FORGED="$(mint --key "$ROGUE_DIR/demo-rs256.jwk" --sub demo-user --exp-in 1h --claim 'scope=admin')"
# An opaque access token and a session, issued by the demo IdP (in memory: new ones each
# run). idp_issue PATH FIELD FORM-ARGS... prints FIELD of the IdP's JSON answer.
idp_issue() {
    local path="$1" field="$2"
    shift 2
    curl -sS --fail --max-time 5 "$@" "$IDP$path" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$field"
}
OPAQUE="$(idp_issue /opaque access_token -d sub=demo-user -d 'scope=read write')" \
    || { show_logs; die "the demo IdP did not issue an opaque token"; }
SESSION="$(idp_issue /sessions session -d sub=demo-session-user -d scope=read)" \
    || { show_logs; die "the demo IdP did not start a session"; }
(
    umask 077
    printf 'VALID=%s\nEXPIRED=%s\nEDDSA=%s\nADMIN_TOKEN=%s\nFORGED=%s\nOPAQUE=%s\nSESSION=%s\n' \
        "$VALID" "$EXPIRED" "$EDDSA" "$ADMIN_TOKEN" "$FORGED" "$OPAQUE" "$SESSION" >"$RUN_DIR/tokens.env"
)
# --- revocable JWTs (issue 14) ----------------------------------------------------------
# A JWT naming its entry in the IdP's status list, and a JWT of a user the IdP will log
# out by back-channel.
STATUS_JSON="$(curl -sS --fail --max-time 5 -d sub=demo-status-user -d scope=read "$IDP/status-tokens")" \
    || { show_logs; die "the demo IdP did not issue a JWT with a status"; }
STATUS_TOKEN="$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["access_token"])' "$STATUS_JSON")"
STATUS_IDX="$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["idx"])' "$STATUS_JSON")"
LOGOUT_USER_TOKEN="$(mint --key "$RUN_DIR/demo-rs256.jwk" --sub demo-logout-user --exp-in 1h --claim 'scope=read')"
printf 'STATUS_TOKEN=%s\nSTATUS_IDX=%s\nLOGOUT_USER_TOKEN=%s\n' \
    "$STATUS_TOKEN" "$STATUS_IDX" "$LOGOUT_USER_TOKEN" >>"$RUN_DIR/tokens.env"
# --- end of revocable JWTs ----------------------------------------------------------------

# --- example requests (printed for the user; run as checks with DEMO_SMOKE=1) ----------
# Each: description | expected status | curl arguments (shell words; $VALID etc. are the
# tokens) | optional Python assertion over `body` (the echo's JSON, or None) and `headers`
# (response headers, lower-case names).
C_DESC=() C_STATUS=() C_ARGS=() C_ASSERT=()
example() { C_DESC+=("$1") C_STATUS+=("$2") C_ARGS+=("$3") C_ASSERT+=("${4:-}"); }
# pause SECONDS DESCRIPTION — a wait between two examples (printed as `sleep`).
pause() { C_DESC+=("$2") C_STATUS+=(pause) C_ARGS+=("$1") C_ASSERT+=(""); }

example "valid RS256 token: 200, the upstream sees the identity headers and no token" 200 \
    "-H \"Authorization: Bearer \$VALID\" $BASE/api/orders" \
    "body['identity']['x-user-id'] == 'demo-user' and body['identity']['x-user-scope'] == 'read write' and body['identity']['x-user-roles'] == 'user,admin' and body['identity']['x-jwt-payload-decoded']['sub'] == 'demo-user' and 'authorization' not in body['headers']"
example "no token: 401, WWW-Authenticate: Bearer realm=\"demo\"" 401 \
    "$BASE/api/orders" \
    "headers.get('www-authenticate', '').startswith('Bearer realm=\"demo\"')"
example "expired token: 401 invalid_token" 401 \
    "-H \"Authorization: Bearer \$EXPIRED\" $BASE/api/orders" \
    "'error=\"invalid_token\"' in headers.get('www-authenticate', '') and body['error_description'] == 'token expired'"
example "token signed with a key that is not in the JWKS (same kid): 401 invalid_token" 401 \
    "-H \"Authorization: Bearer \$FORGED\" $BASE/api/orders" \
    "'error=\"invalid_token\"' in headers.get('www-authenticate', '') and body['error_description'] == 'invalid signature'"
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

# Gateway-centric and session patterns (exchanges; see render.sh for the rule per path).
# Assertions on the JWT the upstream received use the echo's "bearer-jwt-decoded".
UPSTREAM_JWT="body['identity']['bearer-jwt-decoded']"
example "opaque token: introspected at the IdP (exchange opaque), 200; the upstream sees the identity, never the opaque token" 200 \
    "-H \"Authorization: Bearer \$OPAQUE\" $BASE/api/orders" \
    "body['identity']['x-user-id'] == 'demo-user' and body['identity']['x-user-scope'] == 'read write' and '$OPAQUE' not in str(body)"
example "the same opaque token again: 200 from the cache (no second introspection for cache.max_secs = ${DEMO_EXCHANGE_CACHE_SECS}s)" 200 \
    "-H \"Authorization: Bearer \$OPAQUE\" $BASE/api/orders" \
    "body['identity']['x-user-id'] == 'demo-user'"
example "an opaque token the IdP never issued: 401 invalid_token (introspection says active:false)" 401 \
    "-H 'Authorization: Bearer not-a-token-the-idp-issued' $BASE/api/orders" \
    "'error=\"invalid_token\"' in headers.get('www-authenticate', '')"
example "signed introspection (RFC 9701, exchange signed): the IdP's answer is a JWT the filter verifies with the demo provider's keys" 200 \
    "-H \"Authorization: Bearer \$OPAQUE\" $BASE/signed/orders" \
    "body['identity']['x-user-id'] == 'demo-user' and '$OPAQUE' not in str(body)"
example "token exchange (RFC 8693, exchange sts): the upstream gets the IdP's JWT for audience $DEMO_AUDIENCE, scope narrowed to read" 200 \
    "-H \"Authorization: Bearer \$OPAQUE\" $BASE/exchanged/orders" \
    "$UPSTREAM_JWT['claims']['sub'] == 'demo-user' and $UPSTREAM_JWT['claims']['scope'] == 'read' and $UPSTREAM_JWT['claims']['iss'] == '$DEMO_ISSUER'"
example "minted (exchange minted): introspection, then the gateway signs its own ES256 JWT (iss $DEMO_MINT_ISSUER, aud internal)" 200 \
    "-H \"Authorization: Bearer \$OPAQUE\" $BASE/internal/orders" \
    "$UPSTREAM_JWT['header']['alg'] == 'ES256' and $UPSTREAM_JWT['header'].get('kid') == '$DEMO_MINT_KID' and $UPSTREAM_JWT['claims']['iss'] == '$DEMO_MINT_ISSUER' and $UPSTREAM_JWT['claims']['aud'] in ('internal', ['internal']) and $UPSTREAM_JWT['claims']['sub'] == 'demo-user'"
example "the public key for the gateway's JWTs, served by the filter itself at mint.jwks_path" 200 \
    "$BASE$DEMO_MINT_JWKS_PATH" \
    "[k['kid'] for k in body['keys']] == ['$DEMO_MINT_KID'] and all('d' not in k for k in body['keys'])"
example "session cookie (exchange session): looked up at the IdP; the upstream gets the session's JWT, not the cookie" 200 \
    "--cookie \"session=\$SESSION\" $BASE/app/profile" \
    "$UPSTREAM_JWT['claims']['sub'] == 'demo-session-user' and '$SESSION' not in str(body)"
example "an unknown session: 401 invalid_token (the IdP answers 404)" 401 \
    "--cookie 'session=no-such-session' $BASE/app/profile" \
    "'error=\"invalid_token\"' in headers.get('www-authenticate', '')"

# Authorization (see render.sh for the rules): local rules decide in the filter; /reports/
# checks a scope locally, then asks the demo policy service (hybrid).
INSUFFICIENT_SCOPE="'error=\"insufficient_scope\"' in headers.get('www-authenticate', '') and body['error'] == 'insufficient_scope'"
example "scope rule (admin: scope must contain admin) with a token of scope 'read write': 403 insufficient_scope, naming the rule" 403 \
    "-H \"Authorization: Bearer \$VALID\" $BASE/admin/users" \
    "$INSUFFICIENT_SCOPE and body['error_description'] == 'rule admin denies this request'"
example "the same route with a token of scope 'admin': 200" 200 \
    "-H \"Authorization: Bearer \$ADMIN_TOKEN\" $BASE/admin/users" \
    "body['identity']['x-user-id'] == 'demo-admin' and body['identity']['x-user-scope'] == 'admin'"
example "ownership (orders: template /users/{id}/orders, id must equal sub): your own orders, 200" 200 \
    "-H \"Authorization: Bearer \$VALID\" $BASE/users/demo-user/orders" \
    "body['identity']['x-user-id'] == 'demo-user' and body['path'] == '/users/demo-user/orders'"
example "ownership: someone else's orders, 403 insufficient_scope" 403 \
    "-H \"Authorization: Bearer \$VALID\" $BASE/users/demo-admin/orders" \
    "$INSUFFICIENT_SCOPE"
example "dry run (beta: scope must contain beta, which this token lacks): 200 all the same, logged and counted as tokengate.rule.beta.dry_run_denied" 200 \
    "-H \"Authorization: Bearer \$VALID\" $BASE/beta/features" \
    "body['path'] == '/beta/features'"
example "central allow (reports: scope read locally, then the policy service): 200, the upstream sees the policy's x-policy header" 200 \
    "-H \"Authorization: Bearer \$VALID\" -H 'x-tenant: acme' $BASE/reports/q3" \
    "body['headers'].get('x-policy', '').startswith('demo/authz: allow') and body['identity']['x-user-id'] == 'demo-user'"
example "what the policy service was asked: the OPA-Envoy input plus the verified identity; of the headers only x-tenant (include_headers), never the token" 200 \
    "$POLICY/v1/last" \
    "body['input']['attributes']['request']['http']['method'] == 'GET' and body['input']['attributes']['request']['http']['path'] == '/reports/q3' and body['input']['parsed_path'] == ['reports', 'q3'] and body['input']['attributes']['request']['http']['headers'] == {'x-tenant': 'acme'} and body['input']['identity']['provider'] == 'demo' and body['input']['identity']['claims']['sub'] == 'demo-user'"
example "the same request twice on one connection (so one Envoy worker): the second decision comes from the filter's cache (authz_service.cache_secs 5), no callout" 200200 \
    "-H \"Authorization: Bearer \$VALID\" -H 'x-tenant: acme' -o /dev/null $BASE/reports/q3 $BASE/reports/q3" \
    "body['headers'].get('x-policy', '').startswith('demo/authz: allow')"
example "central deny (the policy never allows DELETE): 403 insufficient_scope, the policy's x-policy header goes to the client" 403 \
    "-X DELETE -H \"Authorization: Bearer \$VALID\" $BASE/reports/q3" \
    "$INSUFFICIENT_SCOPE and headers.get('x-policy', '').startswith('demo/authz: deny')"
example "hybrid: a token without scope read is refused by the local check, 403; the policy service is not asked" 403 \
    "-H \"Authorization: Bearer \$ADMIN_TOKEN\" $BASE/reports/q3" \
    "$INSUFFICIENT_SCOPE and body['error_description'] == 'rule reports denies this request' and 'x-policy' not in headers"
# Paths: Envoy's normalize_path, merge_slashes and path_with_escaped_slashes_action (above)
# take care of most tricks; what they leave, the filter refuses before any rule runs.
example "a broken percent-escape, which Envoy passes on: 400 from the filter, before any rule" 400 \
    "$BASE/healthz/%zz" \
    "body['error'] == 'invalid_request' and body['error_description'] == 'path holds a broken percent-escape'"
example "/healthz/%2E%2E;/api/orders: Envoy decodes %2E but leaves the '..;' segment (a servlet container's '..'): 400 from the filter" 400 \
    "--path-as-is '$BASE/healthz/%2E%2E;/api/orders'" \
    "body['error'] == 'invalid_request' and body['error_description'] == 'path holds a dot-segment'"

# Revocation: the IdP forgets the token and the session; cached answers last at most
# cache.max_secs, then the filter asks again and refuses.
example "revoke the opaque token at the IdP (RFC 7009)" 200 \
    "-d \"token=\$OPAQUE\" $IDP/revoke"
example "log out: end the session at the IdP" 200 \
    "-d \"token=\$SESSION\" $IDP/revoke"
pause "$((DEMO_EXCHANGE_CACHE_SECS + 1))" "let the cached answers expire (cache.max_secs = ${DEMO_EXCHANGE_CACHE_SECS}s)"
example "the revoked opaque token: 401 invalid_token" 401 \
    "-H \"Authorization: Bearer \$OPAQUE\" $BASE/api/orders" \
    "'error=\"invalid_token\"' in headers.get('www-authenticate', '')"
example "the revoked token, once more: 401 from the negative cache (cache.negative_secs)" 401 \
    "-H \"Authorization: Bearer \$OPAQUE\" $BASE/api/orders"
example "the revoked token at the token exchange: 401 invalid_token (the IdP answers invalid_grant)" 401 \
    "-H \"Authorization: Bearer \$OPAQUE\" $BASE/exchanged/orders" \
    "'error=\"invalid_token\"' in headers.get('www-authenticate', '')"
example "the ended session: 401 invalid_token" 401 \
    "--cookie \"session=\$SESSION\" $BASE/app/profile" \
    "'error=\"invalid_token\"' in headers.get('www-authenticate', '')"

# The browser login: a browser (GET, Accept: text/html) without a session is sent to the
# IdP; any other client still gets 401. The whole sign-in, form included, is checked with
# DEMO_SMOKE=1 after these examples (run_examples: login_check).
example "browser login: a browser without a session on $DEMO_WEB_PATH is sent to the IdP's sign-in form (302), with a sealed login cookie" 302 \
    "-H 'Accept: text/html' $BASE$DEMO_WEB_PATH" \
    "headers.get('location', '').startswith('$IDP/authorize?response_type=code&client_id=$DEMO_LOGIN_CLIENT_ID&') and 'code_challenge_method=S256' in headers['location'] and headers.get('set-cookie', '').startswith('tg_session.login.') and 'HttpOnly' in headers['set-cookie']"
example "browser login: the same page asked for by curl (no Accept: text/html): 401, no redirect" 401 \
    "$BASE$DEMO_WEB_PATH" \
    "'location' not in headers"
# --- revocable JWTs (issue 14) ----------------------------------------------------------
# A JWT stays a JWT (verified locally, cached), yet it can be revoked: its status list
# entry at the IdP (used for the list's ttl, 5 s here), or a back-channel logout.
example "a JWT with a status list entry (status.status_list in its claims): 200" 200 \
    "-H \"Authorization: Bearer \$STATUS_TOKEN\" $BASE/api/orders" \
    "body['identity']['x-user-id'] == 'demo-status-user'"
example "revoke it at the IdP: its entry in the status list becomes INVALID" 200 \
    "-d idx=\$STATUS_IDX -d status=1 $IDP/statuslists/1"
pause 6 "the filter uses a status list for its ttl (5 s), then fetches it again"
example "the revoked JWT: 401 invalid_token (token revoked)" 401 \
    "-H \"Authorization: Bearer \$STATUS_TOKEN\" $BASE/api/orders" \
    "body['error_description'] == 'token revoked'"
example "a JWT of demo-logout-user: 200" 200 \
    "-H \"Authorization: Bearer \$LOGOUT_USER_TOKEN\" $BASE/api/orders" \
    "body['identity']['x-user-id'] == 'demo-logout-user'"
example "the IdP logs demo-logout-user out: a back-channel logout POST to the filter" 200 \
    "-d sub=demo-logout-user -d target=$BASE/oauth2/backchannel-logout $IDP/backchannel-logout" \
    "body['gateway_status'] == 200"
pause 2 "every Envoy worker adopts the logout at its next tick (1 s)"
example "the logged-out user's JWT: 401 invalid_token (token revoked)" 401 \
    "-H \"Authorization: Bearer \$LOGOUT_USER_TOKEN\" $BASE/api/orders" \
    "body['error_description'] == 'token revoked'"
# --- end of revocable JWTs ----------------------------------------------------------------

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
  exchanges at the same IdP (Envoy cluster auth), answers cached ${DEMO_EXCHANGE_CACHE_SECS}s; by path:
            /api/       JWT (provider demo) or opaque token (introspection)
            /signed/    opaque token, signed introspection (RFC 9701)
            /exchanged/ opaque token, token exchange (RFC 8693)
            /internal/  opaque token, introspection + a JWT the gateway signs
            /app/       session cookie, looked up at $IDP/sessions/{id}
  authz     local rules in the filter, and a central policy service (Envoy cluster opa):
            /admin      scope must contain admin                       (rule admin)
            /users/{id}/orders   id must equal the token's sub         (rule orders)
            /beta/      scope must contain beta, dry run: never refused (rule beta)
            /reports/   scope must contain read, then the policy service decides (rule reports)
  login     browsers without a session on $DEMO_WEB_PATH (and on every route of provider demo) are
            sent to the IdP's sign-in form ($IDP/authorize; any user name, password demo);
            the session is the tg_session cookie; sign out at $DEMO_LOGIN_LOGOUT_PATH
  policy    $POLICY$DEMO_POLICY_PATH   envoy/demo/policy.py, OPA's data API:
            GET/HEAD for any subject, POST/PUT/PATCH with scope write, never DELETE
  files     $(shown "$RUN_DIR")   (keys, tokengate.json, envoy.yaml, envoy.log, access.log)

Tokens (RS256 and EdDSA valid for 1 hour; iss $DEMO_ISSUER, aud $DEMO_AUDIENCE;
VALID has scope 'read write', ADMIN_TOKEN scope 'admin'), an opaque access token and a
session id from the demo IdP (1 hour; revoked below).
Paste these lines into your shell, or run: source $(shown "$RUN_DIR")/tokens.env

VALID='$VALID'
EXPIRED='$EXPIRED'
EDDSA='$EDDSA'
ADMIN_TOKEN='$ADMIN_TOKEN'
FORGED='$FORGED'
OPAQUE='$OPAQUE'
SESSION='$SESSION'
STATUS_TOKEN='$STATUS_TOKEN'
STATUS_IDX=$STATUS_IDX
LOGOUT_USER_TOKEN='$LOGOUT_USER_TOKEN'

Then try:
EOF
    for i in "${!C_DESC[@]}"; do
        if [[ ${C_STATUS[$i]} == pause ]]; then
            printf '\n# %s\nsleep %s\n' "${C_DESC[$i]}" "${C_ARGS[$i]}"
        else
            printf '\n# %s\ncurl -i %s\n' "${C_DESC[$i]}" "${C_ARGS[$i]}"
        fi
    done
    cat <<EOF

# tokengate's counters (allowed, denied by reason, key fetches: jwks.fetch.success ...,
# exchanges: exchange.<name>.hit, .miss, .negative_hit, .inactive, .callout_failure;
# rules: rule.<name>.allowed, .denied, .dry_run_denied; authz_service.allowed, .denied,
# .cache_hit, .failure)
curl -s '$ADMIN/stats?filter=tokengate'
# what the dry-run rule would have refused (rule name and reason, never the token)
grep 'dry run' $(shown "$RUN_DIR")/envoy.log

# the demo policy service: the last input tokengate sent, how many decisions, and a
# decision asked by hand (the same call tokengate makes)
curl -s $POLICY/v1/last
curl -s $POLICY/v1/stats
curl -s -d '{"input": {"attributes": {"request": {"http": {"method": "DELETE", "path": "/reports/q3"}}}, "identity": {"provider": "demo", "claims": {"sub": "alice"}}}}' $POLICY$DEMO_POLICY_PATH

# the demo IdP: the discovery document tokengate reads, the keys, and how often each was fetched
curl -s $IDP/.well-known/openid-configuration
curl -s $IDP/jwks.json
curl -s $IDP/stats

# more tokens: a JWT, an opaque token, a session (the IdP's are revoked with $IDP/revoke)
$(shown "$TOKENGATE_CLI") token --key $(shown "$RUN_DIR")/demo-rs256.jwk --iss $DEMO_ISSUER --aud $DEMO_AUDIENCE --sub alice --claim 'scope=read beta admin'
OPAQUE=\$(curl -s -d sub=alice -d 'scope=read write' $IDP/opaque | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
SESSION=\$(curl -s -d sub=alice -d scope=read $IDP/sessions | python3 -c 'import json,sys; print(json.load(sys.stdin)["session"])')

# what the gateway asks the IdP (client $DEMO_CLIENT_ID:$DEMO_CLIENT_SECRET), by hand
curl -s -u $DEMO_CLIENT_ID:$DEMO_CLIENT_SECRET -d "token=\$OPAQUE" $IDP/introspect
curl -s -u $DEMO_CLIENT_ID:$DEMO_CLIENT_SECRET -H 'Accept: application/token-introspection+jwt' -d "token=\$OPAQUE" $IDP/introspect
curl -s -u $DEMO_CLIENT_ID:$DEMO_CLIENT_SECRET -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange -d "subject_token=\$OPAQUE" -d subject_token_type=urn:ietf:params:oauth:token-type:access_token -d audience=$DEMO_AUDIENCE $IDP/token
curl -s $IDP/sessions/\$SESSION

# the browser login, step by step with curl (a browser does all of this by itself)
curl -si -H 'Accept: text/html' $BASE$DEMO_WEB_PATH      # 302 to the IdP's form, login cookie
curl -s $IDP/stats                                 # /demo/authorize, POST /demo/token counts
curl -s '$ADMIN/stats?filter=tokengate\.login\.'    # redirect, success, refresh, logout, ...

Browser login: open http://localhost:$LISTEN_PORT$DEMO_WEB_PATH in a browser (any user name,
password demo): the page shows the echoed identity. Sign out: http://localhost:$LISTEN_PORT$DEMO_LOGIN_LOGOUT_PATH
EOF
}

# run_examples — DEMO_SMOKE: every example as a check. Returns non-zero on any failure.
run_examples() {
    local i status failed=0 tmp="$RUN_DIR/smoke"
    mkdir -p "$tmp"
    for i in "${!C_DESC[@]}"; do
        if [[ ${C_STATUS[$i]} == pause ]]; then
            echo "wait  ${C_ARGS[$i]}s: ${C_DESC[$i]}"
            sleep "${C_ARGS[$i]}"
            continue
        fi
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
    # (--concurrency 2): one jwks.json request, one success. The discovery document is
    # read for the keys and for the browser login's endpoints: at least once.
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
if counts.get("/demo/jwks.json", 0) != 1:
    problems.append(f"IdP served /demo/jwks.json {counts.get('/demo/jwks.json', 0)} times, expected 1")
if counts.get("/demo/.well-known/openid-configuration", 0) < 1:
    problems.append("IdP never served its discovery document")
success = stats.get("wasmcustom.tokengate.jwks.fetch.success")
if success != "1":
    problems.append(f"wasmcustom.tokengate.jwks.fetch.success is {success}, expected 1")
if problems:
    print("; ".join(problems) + f" (IdP requests: {json.dumps(counts)}; Envoy: {json.dumps(stats)})")
PY
)" || problem="the check could not run: $problem"
    if [[ -z $problem ]]; then
        echo "PASS  keys from the demo IdP by discovery: 1 jwks.json request, jwks.fetch.success 1"
    else
        echo "FAIL  keys from the demo IdP by discovery: $problem"
        failed=1
    fi
    # The exchanges' counters agree with the examples: the opaque token was introspected,
    # then served from the cache; the unknown and revoked tokens were inactive, the second
    # revoked request a negative hit; the unknown and ended sessions inactive; no callout
    # failed.
    problem="$(python3 - "$ADMIN/stats?filter=tokengate\.exchange\." <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        text = r.read().decode()
except Exception as e:
    print(f"could not read the counters: {e}")
    sys.exit()
stats = {}
for line in text.splitlines():
    name, sep, value = line.partition(": ")
    if sep and value.strip().isdigit():
        stats[name.strip().removeprefix("wasmcustom.")] = int(value)
def count(exchange, what):
    return stats.get(f"tokengate.exchange.{exchange}.{what}", 0)
problems = []
for exchange, what in (("opaque", "miss"), ("opaque", "hit"), ("opaque", "inactive"),
                       ("opaque", "negative_hit"), ("signed", "miss"), ("sts", "miss"),
                       ("sts", "inactive"), ("minted", "miss"), ("session", "miss"),
                       ("session", "inactive")):
    if count(exchange, what) < 1:
        problems.append(f"tokengate.exchange.{exchange}.{what} is {count(exchange, what)}, expected at least 1")
for exchange in ("opaque", "signed", "sts", "minted", "session"):
    if count(exchange, "callout_failure"):
        problems.append(f"tokengate.exchange.{exchange}.callout_failure is {count(exchange, 'callout_failure')}, expected 0")
if problems:
    print("; ".join(problems) + f" (Envoy: {stats})")
PY
)" || problem="the check could not run: $problem"
    if [[ -z $problem ]]; then
        echo "PASS  exchange counters: misses, cache hits, inactive tokens and sessions, a negative hit, no callout failure"
    else
        echo "FAIL  exchange counters: $problem"
        failed=1
    fi
    # Authorization: per-rule counters, the central service's counters and its own count
    # of decisions. Three allowed GETs of one input, the last two on one connection: at
    # most two callouts (one per Envoy worker), the pair's second always from the cache.
    # The DELETE was asked once; the hybrid rule's local denial never.
    problem="$(python3 - "$ADMIN/stats?filter=tokengate\." "$POLICY/v1/stats" "$RUN_DIR/envoy.log" <<'PY'
import json, sys, urllib.request
admin_url, policy_url, envoy_log = sys.argv[1:4]
try:
    with urllib.request.urlopen(admin_url, timeout=5) as r:
        text = r.read().decode()
    with urllib.request.urlopen(policy_url, timeout=5) as r:
        policy = json.load(r)["decisions"]
    with open(envoy_log, errors="replace") as f:
        log = f.read()
except Exception as e:
    print(f"could not read the counters: {e}")
    sys.exit()
stats = {}
for line in text.splitlines():
    name, sep, value = line.partition(": ")
    if sep and value.strip().isdigit():
        stats[name.strip().removeprefix("wasmcustom.tokengate.")] = int(value)
checks = [
    ("rule.admin.denied", lambda n: n >= 1), ("rule.admin.allowed", lambda n: n >= 1),
    ("rule.orders.denied", lambda n: n >= 1), ("rule.orders.allowed", lambda n: n >= 1),
    ("rule.beta.dry_run_denied", lambda n: n >= 1), ("rule.beta.denied", lambda n: n == 0),
    ("rule.reports.allowed", lambda n: n == 3), ("rule.reports.denied", lambda n: n == 2),
    ("authz_service.allowed", lambda n: n == 3), ("authz_service.denied", lambda n: n == 1),
    ("authz_service.cache_hit", lambda n: n >= 1), ("authz_service.failure", lambda n: n == 0),
    ("denied.forbidden", lambda n: n >= 3), ("denied.central_denied", lambda n: n == 1),
    ("denied.bad_path", lambda n: n == 2),
]
problems = [f"tokengate.{name} is {stats.get(name, 0)}" for name, ok in checks
            if not ok(stats.get(name, 0))]
if not 1 <= policy.get("allow", 0) <= 2 or policy.get("deny", 0) != 1:
    problems.append(f"the policy service decided {policy}, expected 1 or 2 allows and 1 deny")
if "dry run: rule=beta would refuse, reason=forbidden" not in log:
    problems.append("no 'dry run: rule=beta would refuse' line in envoy.log")
if problems:
    print("; ".join(problems) + f" (Envoy: {stats})")
PY
)" || problem="the check could not run: $problem"
    if [[ -z $problem ]]; then
        echo "PASS  authorization counters: per rule, dry run (and its log line), central allows, a cache hit, one central deny, path refusals"
    else
        echo "FAIL  authorization counters: $problem"
        failed=1
    fi
    # The browser login, the whole way, as a browser goes it (cookies kept, the IdP's
    # form read and submitted), then logout.
    problem="$(login_check)" || problem="the check could not run: $problem"
    if [[ -z $problem ]]; then
        echo "PASS  browser login: redirect, the IdP's form, callback, session cookie, identity upstream without the cookie, logout"
    else
        echo "FAIL  browser login: $problem"
        failed=1
    fi
    rm -rf "$tmp"
    return "$failed"
}

# login_check — signs in at $BASE$DEMO_WEB_PATH as a browser would (Python's cookie jar, the
# IdP's form parsed and posted), checks every step, signs out. Prints what went wrong, if
# anything. Every request is bounded (5 s).
login_check() {
    python3 - "$BASE" "$IDP" "$DEMO_WEB_PATH" "$DEMO_LOGIN_LOGOUT_PATH" "$DEMO_LOGIN_REDIRECT_PATH" \
        "$ADMIN/stats?filter=tokengate\.login\." <<'PY'
import http.cookiejar, json, sys, time, urllib.error, urllib.parse, urllib.request
from html.parser import HTMLParser

base, idp, web_path, logout_path, redirect_path, admin_url = sys.argv[1:7]
USER = "demo-browser-user"
jar = http.cookiejar.CookieJar()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # every hop is checked by hand


opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)


def go(url, form=None):
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, headers={"Accept": "text/html"})
    try:
        with opener.open(request, timeout=5) as r:
            return r.status, r.headers, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode("utf-8", "replace")


class Form(HTMLParser):
    def __init__(self):
        super().__init__()
        self.action, self.fields = None, {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.action = attrs.get("action")
        elif tag == "input" and attrs.get("type") == "hidden":
            self.fields[attrs.get("name")] = attrs.get("value", "")


def fail(message):
    print(message)
    sys.exit(0)


def session_cookies():
    return sorted(c.name for c in jar if c.name.startswith("tg_session"))


try:
    status, headers, _ = go(base + web_path)
    location = headers.get("location", "")
    if status != 302 or not location.startswith(idp + "/authorize?"):
        fail(f"GET {web_path} as a browser: {status} {location!r}, expected 302 to {idp}/authorize")
    status, _, page = go(location)
    form = Form()
    form.feed(page)
    if status != 200 or not form.action or "state" not in form.fields:
        fail(f"the IdP's sign-in page: {status}, form action {form.action!r}")
    fields = dict(form.fields, username=USER, password="demo")
    origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(idp))
    status, headers, _ = go(origin + form.action, fields)
    callback = headers.get("location", "")
    if status != 302 or not callback.startswith(base + redirect_path + "?"):
        fail(f"submitting the form: {status} {callback!r}, expected 302 to {base}{redirect_path}")
    status, headers, body = go(callback)
    if status != 302 or headers.get("location") != web_path:
        fail(f"the callback: {status} {headers.get('location')!r} {body[:200]!r}, expected 302 to {web_path}")
    if "tg_session" not in session_cookies() or any(".login." in n for n in session_cookies()):
        fail(f"after the callback the cookies are {session_cookies()}, expected the session, no login cookie")
    status, _, body = go(base + web_path)
    echo = json.loads(body) if status == 200 else {}
    if status != 200 or echo.get("identity", {}).get("x-user-id") != USER:
        fail(f"GET {web_path} signed in: {status} {body[:300]!r}, expected the identity {USER}")
    if "tg_session" in echo.get("headers", {}).get("cookie", ""):
        fail("the session cookie reached the upstream")
    status, headers, _ = go(base + logout_path)
    location = headers.get("location", "")
    if status != 302 or not location.startswith(idp + "/logout?") or "id_token_hint=" not in location:
        fail(f"logout: {status} {location!r}, expected 302 to {idp}/logout with id_token_hint")
    if session_cookies():
        fail(f"after logout the cookies are {session_cookies()}")
    status, _, page = go(location)
    if status != 200 or USER not in page:
        fail(f"the IdP's end-session page: {status}, expected it to name {USER}")
    status, headers, _ = go(base + web_path)
    if status != 302:
        fail(f"GET {web_path} after logout: {status}, expected 302 to the IdP again")
    # Each worker hands its counts to Envoy on its own tick: wait for them (up to 3 s).
    deadline = time.monotonic() + 3
    while True:
        with urllib.request.urlopen(admin_url, timeout=5) as r:
            stats = {}
            for line in r.read().decode().splitlines():
                name, sep, value = line.partition(": ")
                if sep and value.strip().isdigit():
                    stats[name.strip().removeprefix("wasmcustom.tokengate.login.")] = int(value)
        missing = [n for n in ("redirect", "success", "logout") if stats.get(n, 0) < 1]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if missing or stats.get("state_mismatch", 0) or stats.get("token_endpoint_failure", 0):
        fail(f"login counters {stats}: expected redirect, success, logout, no failures")
except (OSError, ValueError) as e:
    fail(f"{type(e).__name__}: {e}")
PY
}

if [[ $DEMO_SMOKE == 1 ]]; then
    echo "demo smoke: Envoy on 127.0.0.1:$LISTEN_PORT, admin $ADMIN_PORT, upstream $UPSTREAM_PORT, IdP $IDP_PORT, policy $POLICY_PORT"
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
while alive "$ENVOY_PID" && alive "$ECHO_PID" && alive "$IDP_PID" && alive "$POLICY_PID"; do
    sleep 1 &
    wait $! || true
done
show_logs
if ! alive "$ENVOY_PID"; then
    die "Envoy exited unexpectedly (logs above)"
elif ! alive "$ECHO_PID"; then
    die "echo.py exited unexpectedly (logs above)"
elif ! alive "$POLICY_PID"; then
    die "policy.py exited unexpectedly (logs above)"
fi
die "idp.py exited unexpectedly (logs above)"
