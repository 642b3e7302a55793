#!/usr/bin/env bash
# Renders the tokengate demo into a directory: development keys, the tokengate document,
# and the Envoy configuration. Shared by envoy/demo/run.sh (`make run`) and
# envoy/validate.sh (`make validate`), so both use exactly the same files.
#
# Sourced:   source envoy/demo/render.sh; demo_render DIR
# Executed:  envoy/demo/render.sh DIR
#
# Writes into DIR:
#   demo-rs256.jwk, demo-eddsa.jwk   private development keys (generated once, kept); the
#                                    demo IdP also signs its own JWTs with demo-rs256
#   jwks.json                        their public halves, served by envoy/demo/idp.py
#   login-cookie.secret              32 random bytes, base64url: the key sealing the browser
#                                    login's cookies (generated once, kept, like the keys)
#   gateway/demo-gateway.jwk         the gateway's own ES256 key (exchange "minted" signs
#                                    with it; its public half is in gateway/jwks.json and
#                                    the filter serves it at DEMO_MINT_JWKS_PATH)
#   tokengate.json                   the filter's configuration: the keys come from the
#                                    demo IdP by OIDC discovery (cluster demo_idp); opaque
#                                    tokens and sessions are exchanged at the same IdP
#                                    (cluster auth); rules with local authorization, and
#                                    central decisions from the demo policy service
#                                    (envoy/demo/policy.py, cluster opa); the browser
#                                    login (OIDC code flow) of provider demo, at the same
#                                    IdP (cluster demo_idp), for the browser route /web/
#   envoy.yaml                       envoy/demo/envoy.yaml.tmpl with the placeholders filled
#
# Environment (all optional):
#   LISTEN_PORT (8080), ADMIN_PORT (9901), UPSTREAM_PORT (8000), IDP_PORT (9000),
#   POLICY_PORT (8181)
#   TOKENGATE_CLI   the CLI binary      (default: target/release/tokengate)
#   TOKENGATE_WASM  the filter          (default: dist/tokengate.wasm)

DEMO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEMO_ROOT="$(cd "$DEMO_DIR/../.." && pwd)"

# The demo issuer is the demo IdP's (envoy/demo/idp.py on 127.0.0.1:$IDP_PORT): its
# discovery document names exactly this issuer, and tokengate refuses the document
# otherwise. Tokens minted by run.sh use it too. demo_issuer_for PORT prints it.
demo_issuer_for() { echo "http://127.0.0.1:$1/demo"; }
DEMO_ISSUER="$(demo_issuer_for "${IDP_PORT:-9000}")"
DEMO_AUDIENCE="demo-api"
DEMO_KIDS="demo-rs256:RS256 demo-eddsa:EdDSA"
# The gateway's client at the demo IdP (introspection, token exchange): run.sh gives the
# IdP the same pair. Development values, like the keys.
DEMO_CLIENT_ID="gateway"
DEMO_CLIENT_SECRET="s3cret"
# How long an exchange's answer is cached: short, so that a revoked opaque token or a
# logged-out session is refused within seconds in the demo (run.sh waits this long).
DEMO_EXCHANGE_CACHE_SECS=5
DEMO_MINT_KID="demo-gateway"
DEMO_MINT_ISSUER="https://gateway.internal"
DEMO_MINT_JWKS_PATH="/.well-known/tokengate/jwks.json"
# The demo policy service (envoy/demo/policy.py): OPA's data API, document demo/authz.
DEMO_POLICY_PATH="/v1/data/demo/authz"
# The browser login (provider demo's "login"): the filter's client at the demo IdP (run.sh
# registers it, and the redirect URIs on localhost and 127.0.0.1), its own paths, and the
# browser route. Development values, like the keys.
DEMO_LOGIN_CLIENT_ID="web"
DEMO_LOGIN_CLIENT_SECRET="s3cret"
DEMO_LOGIN_REDIRECT_PATH="/oauth2/callback"
DEMO_LOGIN_LOGOUT_PATH="/oauth2/logout"
DEMO_WEB_PATH="/web/"

demo_cli() { echo "${TOKENGATE_CLI:-$DEMO_ROOT/target/release/tokengate}"; }

# demo_keys DIR — generates the development keys unless all of them are already there.
demo_keys() {
    local dir="$1" cli entry kid alg missing=0
    cli="$(demo_cli)"
    for entry in $DEMO_KIDS; do
        [[ -f "$dir/${entry%%:*}.jwk" ]] || missing=1
        # A key whose public half is not in jwks.json is as good as missing.
        grep -q "\"${entry%%:*}\"" "$dir/jwks.json" 2>/dev/null || missing=1
    done
    if [[ $missing == 1 ]]; then
        mkdir -p "$dir"
        rm -f "$dir/jwks.json"
        for entry in $DEMO_KIDS; do
            kid="${entry%%:*}" alg="${entry##*:}"
            "$cli" keygen --alg "$alg" --kid "$kid" --out "$dir" >/dev/null \
                || { echo "render.sh: tokengate keygen --alg $alg failed" >&2; return 1; }
        done
        echo "render.sh: generated development keys in $dir (demo-rs256, demo-eddsa)" >&2
    fi
    # The browser login's cookie key (what "cookie_secret" holds): every replica of a
    # gateway shares it; here one file, kept between runs so sessions survive a restart.
    if [[ ! -s "$dir/login-cookie.secret" ]]; then
        (umask 077 && python3 -c 'import base64, secrets; print(base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode())' \
            >"$dir/login-cookie.secret") \
            || { echo "render.sh: generating the login cookie secret failed" >&2; return 1; }
    fi
    # The gateway's minting key: apart from the IdP's, whose JWKS must not list it.
    if [[ ! -f "$dir/gateway/$DEMO_MINT_KID.jwk" ]]; then
        "$cli" keygen --alg ES256 --kid "$DEMO_MINT_KID" --out "$dir/gateway" >/dev/null \
            || { echo "render.sh: tokengate keygen --alg ES256 failed" >&2; return 1; }
        echo "render.sh: generated the gateway's minting key in $dir/gateway ($DEMO_MINT_KID)" >&2
    fi
}

# demo_config DIR — writes DIR/tokengate.json: the demo provider, whose keys come from
# the demo IdP by OIDC discovery (DIR/jwks.json is what the IdP serves), and one exchange
# per mode, each at the same IdP (cluster auth):
#
#   rule (path)     exchange  mode               the upstream gets, besides the claims
#                                                  as headers (x-user-id, ...)
#   /api/ (default) opaque    introspection      -
#   /signed/        signed    jwt_introspection  -
#   /exchanged/     sts       token_exchange     the IdP's JWT (aud demo-api, scope read)
#   /internal/      minted    introspection      a JWT the gateway signs (iss gateway.internal)
#   /app/           session   session (cookie)   the IdP's JWT for the session
#
# The browser login (the SSO pattern): provider demo has a "login" section, so a browser
# (GET, Accept: text/html) without a session on a route that needs demo -- /web/, and the
# catch-all -- is sent to the demo IdP's sign-in form; after it, the filter keeps the IdP's
# access token in the tg_session cookie (HttpOnly, SameSite=Lax; not Secure: the demo is
# plain http on localhost) and verifies it like any other token. /oauth2/logout signs out.
# Other clients (curl) still get 401.
#
# The JWTs go upstream in authorization: Bearer (each exchange's "upstream").
# /api/ (the catch-all rule) takes a JWT (provider demo) or an opaque token (exchange
# opaque): a token that looks like a JWT goes to the provider, any other to the exchange.
#
# Authorization (README "Authorization"), before the catch-all rule:
#
#   rule     match                        authorization
#   admin    /admin...                    local: scope contains admin
#   orders   /users/{id}/orders           local: path parameter id equals claim sub
#   beta     /beta/...                    local: scope contains beta, dry run (counted,
#                                         never refused)
#   reports  /reports/...                 hybrid: local scope contains read, then central:
#                                         the demo policy service (authz_service, cluster opa)
demo_config() {
    local dir="$1" issuer
    issuer="$(demo_issuer_for "${IDP_PORT:-9000}")"
    python3 - "$dir/jwks.json" "$dir/tokengate.json" "$issuer" "$DEMO_AUDIENCE" \
        "$DEMO_CLIENT_ID" "$DEMO_CLIENT_SECRET" "$DEMO_EXCHANGE_CACHE_SECS" \
        "$dir/gateway/$DEMO_MINT_KID.jwk" "$DEMO_MINT_ISSUER" "$DEMO_MINT_JWKS_PATH" \
        "http://127.0.0.1:${POLICY_PORT:-8181}$DEMO_POLICY_PATH" \
        "$dir/login-cookie.secret" "$DEMO_LOGIN_CLIENT_ID" "$DEMO_LOGIN_CLIENT_SECRET" \
        "$DEMO_LOGIN_REDIRECT_PATH" "$DEMO_LOGIN_LOGOUT_PATH" "$DEMO_WEB_PATH" <<'PY'
import json, os, sys
(jwks_path, out_path, issuer, audience, client_id, client_secret, cache_secs, mint_key_path,
 mint_issuer, mint_jwks_path, policy_uri) = sys.argv[1:12]
(login_secret_path, login_client_id, login_client_secret, login_redirect_path,
 login_logout_path, web_path) = sys.argv[12:18]
with open(jwks_path) as f:
    json.load(f)  # the IdP serves this file: it must be a JSON document
with open(mint_key_path) as f:
    mint_key = json.load(f)
with open(login_secret_path) as f:
    login_cookie_secret = f.read().strip()


# The browser login: the OIDC authorization code flow with PKCE at the demo IdP, whose
# endpoints come from the same discovery document as the keys.
LOGIN = {
    "discovery": issuer + "/.well-known/openid-configuration",
    "cluster": "demo_idp",
    "timeout_ms": 2000,
    "client": {"id": login_client_id, "secret": login_client_secret},
    "scopes": ["openid", "profile"],
    "redirect_path": login_redirect_path,
    "logout_path": login_logout_path,
    "post_logout_redirect": web_path,
    "session_token": "access_token",
    # The demo is plain http: a Secure cookie is kept only where the browser makes an
    # exception for loopback (Chromium and Firefox do for localhost), so none is asked for.
    "cookie": {"name": "tg_session", "secure": False, "same_site": "Lax"},
    "cookie_secret": login_cookie_secret,
    # The IdP's access tokens live --jwt-ttl (300 s): then the sealed refresh token renews
    # the session without a new sign-in.
    "refresh": True,
}


UPSTREAM = {"header": "authorization", "prefix": "Bearer "}


def exchange(mode, path, **fields):
    """An exchange at the demo IdP, verified with provider demo; fields=None drops one."""
    doc = {
        "sources": [{"header": "authorization", "prefix": "Bearer "}],
        "mode": mode,
        "endpoint": {"uri": issuer + path, "cluster": "auth", "timeout_ms": 500},
        "client": {"id": client_id, "secret": client_secret},
        "provider": "demo",
        "audiences": [audience],
        "cache": {"max_secs": int(cache_secs), "negative_secs": 2, "max_entries": 10000},
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


def rule(name, prefix, *authn):
    return {"name": name, "match": {"path": {"prefix": prefix}}, "authn": {"any": list(authn)}}


config = {
    "realm": "demo",
    "providers": {
        "demo": {
            "issuer": issuer,
            "audiences": [audience],
            "jwks": {
                "discovery": issuer + "/.well-known/openid-configuration",
                "cluster": "demo_idp",
                "timeout_ms": 2000,
            },
            "algorithms": ["RS256", "EdDSA"],
            "sources": [
                {"header": "authorization", "prefix": "Bearer "},
                {"cookie": "access_token"},
                {"query": "access_token"},
            ],
            "forward": {
                "keep_token": False,
                "payload_header": "x-jwt-payload",
                "claims": {
                    "sub": "x-user-id",
                    "scope": "x-user-scope",
                    "realm_access.roles": "x-user-roles",
                },
            },
            "login": LOGIN,
        }
    },
    "exchanges": {
        # Gateway-centric pattern: the opaque token is looked up on every cache miss.
        "opaque": exchange("introspection", "/introspect"),
        "signed": exchange("jwt_introspection", "/introspect"),
        "sts": exchange("token_exchange", "/token", upstream=UPSTREAM,
                        token_exchange={"audience": audience, "scope": "read"}),
        "minted": exchange("introspection", "/introspect", upstream=UPSTREAM, mint={
            "issuer": mint_issuer,
            "alg": "ES256",
            "key": mint_key,
            "ttl_secs": 300,
            "audience": "internal",
            "jwks_path": mint_jwks_path,
        }),
        # Session pattern: the session id in a cookie, looked up at /sessions/{id}.
        "session": exchange("session", "/sessions/{token}", client=None, upstream=UPSTREAM,
                            sources=[{"cookie": "session"}]),
    },
    "rules": [
        {"name": "health", "match": {"path": {"prefix": "/healthz"}}, "allow": "anonymous"},
        rule("signed", "/signed/", "signed"),
        rule("exchanged", "/exchanged/", "sts"),
        rule("internal", "/internal/", "minted"),
        rule("app", "/app/", "session"),
        # The browser route: a browser without a session is sent to the IdP's sign-in form.
        rule("web", web_path, "demo"),
        # Decentralized authorization: local rules, decided in this sidecar.
        {"name": "admin", "match": {"path": {"prefix": "/admin"}}, "authn": {"any": ["demo"]},
         "authz": {"claim": "scope", "contains": "admin"}},
        # Ownership: /users/<id>/orders only for the user whose sub is <id>.
        {"name": "orders", "match": {"path": {"template": "/users/{id}/orders"}},
         "authn": {"any": ["demo"]},
         "authz": {"path_param": "id", "equals_claim": "sub"}},
        # A policy being tried out: decided, logged and counted, never enforced.
        {"name": "beta", "match": {"path": {"prefix": "/beta/"}}, "authn": {"any": ["demo"]},
         "authz": {"claim": "scope", "contains": "beta"}, "dry_run": True},
        # Hybrid: a cheap local check first, then the central policy service.
        {"name": "reports", "match": {"path": {"prefix": "/reports/"}},
         "authn": {"any": ["demo", "opaque"]},
         "authz": {"claim": "scope", "contains": "read"}, "central": True},
        {"name": "default", "match": {}, "authn": {"any": ["demo", "opaque"]}},
    ],
    # Centralized authorization: OPA's data API (here envoy/demo/policy.py) through the
    # Envoy cluster opa. Only x-tenant of the request's headers reaches the policy.
    "authz_service": {
        "uri": policy_uri,
        "cluster": "opa",
        "timeout_ms": 500,
        "cache_secs": 5,
        "on_error": "deny",
        "include_headers": ["x-tenant"],
    },
}
# --- Revocable JWTs (issue 14) ------------------------------------------------------------
# Token Status List: tokens the IdP issues at /status-tokens name its list
# (/demo/statuslists/1, fetched through the demo_idp cluster, used at most 5 s);
# back-channel logout: the IdP POSTs logout tokens (aud gateway) to the filter.
idp_origin = issuer[: -len("/demo")] if issuer.endswith("/demo") else issuer
config["providers"]["demo"]["revocation"] = {
    "status_list": {"origins": {idp_origin: "demo_idp"}, "max_ttl_secs": 5,
                    "timeout_ms": 1000, "on_unavailable": "deny"},
    "backchannel_logout": {"path": "/oauth2/backchannel-logout", "client_id": client_id,
                           "max_token_lifetime_secs": 3600},
}
# --- end of revocable JWTs ----------------------------------------------------------------
# It holds the gateway's private minting key and client secret: readable by its owner only.
with open(os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    os.fchmod(f.fileno(), 0o600)
    json.dump(config, f, indent=2)
    f.write("\n")
PY
}

# demo_envoy_yaml DIR — renders the template into DIR/envoy.yaml (uses DIR/tokengate.json).
demo_envoy_yaml() {
    local dir="$1"
    python3 - "$DEMO_DIR/envoy.yaml.tmpl" "$dir/envoy.yaml" "$dir/tokengate.json" \
        "${TOKENGATE_WASM:-$DEMO_ROOT/dist/tokengate.wasm}" "$dir/access.log" \
        "${LISTEN_PORT:-8080}" "${ADMIN_PORT:-9901}" "${UPSTREAM_PORT:-8000}" "${IDP_PORT:-9000}" \
        "${POLICY_PORT:-8181}" <<'PY'
import json, os, re, sys
tmpl, out, config_path, wasm, access_log, listen, admin, upstream, idp, policy = sys.argv[1:11]
values = {}
for name, port in (("LISTEN_PORT", listen), ("ADMIN_PORT", admin), ("UPSTREAM_PORT", upstream),
                   ("IDP_PORT", idp), ("POLICY_PORT", policy)):
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        sys.exit(f"render.sh: {name}={port!r} is not a port number")
    values[name] = str(int(port))
with open(config_path) as f:
    config = json.load(f)
# JSON strings are valid YAML double-quoted scalars: no quoting problems whatever they hold.
values["CONFIG_JSON"] = json.dumps(json.dumps(config, separators=(",", ":")))
values["WASM"] = json.dumps(os.path.abspath(wasm))
values["ACCESS_LOG"] = json.dumps(os.path.abspath(access_log))
with open(tmpl) as f:
    text = f.read()
def fill(match):
    name = match.group(1)
    if name not in values:
        sys.exit(f"render.sh: unknown placeholder @{name}@ in {tmpl}")
    return values[name]
text = re.sub(r"@([A-Z_]+)@", fill, text)
# The tokengate document inside holds secrets: readable by its owner only.
with open(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    os.fchmod(f.fileno(), 0o600)
    f.write(text)
PY
}

# demo_render DIR — all of the above.
demo_render() {
    local dir="${1:?usage: demo_render DIR}"
    mkdir -p "$dir"
    demo_keys "$dir" && demo_config "$dir" && demo_envoy_yaml "$dir"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    demo_render "${1:?usage: envoy/demo/render.sh DIR}"
    echo "rendered $1/envoy.yaml and $1/tokengate.json"
fi
