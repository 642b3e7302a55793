//! End-to-end tests of authorization: the release `tokengate.wasm` in a real Envoy
//! (`--concurrency 2`) in front of a loopback upstream that echoes what it received.
//! Local rules (`authz` trees over claims, headers, path parameters and methods, dry
//! runs, path refusal) and the central policy service: a loopback server answering OPA's
//! data API by evaluating real Rego (`support::opa`, on `regorus`), reached through the
//! `opa` cluster. Run with `make e2e`.
//!
//! Each test starts its own Envoy (and policy service), so counters start at zero; every
//! wait is bounded. Every refusal also checks that the upstream never saw the request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use serde_json::{json, Value};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use support::keepalive::Connection;
use support::opa::{self, Opa};
use support::{client, keys, now, Envoy, Response, Upstream};
use tokengate::crypto::sign::SigningKey;

const REALM: &str = "api";
const ISSUER: &str = "https://idp.example.com/realms/authz";
const AUDIENCE: &str = "orders";
/// The policy service's callout timeout in every central test.
const TIMEOUT_MS: u64 = 500;
/// How long a counter may take to show in Envoy's stats (the filter flushes on a tick).
const COUNTER_WAIT: Duration = Duration::from_secs(10);

// --- keys and tokens --------------------------------------------------------------------

/// The provider's signing key (the shared ES256 one).
fn key() -> &'static SigningKey {
    &keys().es256
}

/// A token for `sub`, valid ten minutes, with these claims besides.
fn token(sub: &str, extra: Value) -> String {
    let now = now();
    let mut claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 600
    });
    for (name, value) in extra.as_object().expect("extra claims are an object") {
        claims[name] = value.clone();
    }
    key()
        .sign(&claims)
        .unwrap_or_else(|e| panic!("signing: {e}"))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// --- configuration ----------------------------------------------------------------------

/// The one provider: inline key, the token in the bearer header or the `access_token`
/// query parameter, `sub` forwarded as `x-user-id`.
fn providers() -> Value {
    json!({
        "corp": {
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": {"inline": {"keys": [key().public_jwk()]}},
            "sources": [{"header": "authorization", "prefix": "Bearer "},
                        {"query": "access_token"}],
            "forward": {"claims": {"sub": "x-user-id"}}
        }
    })
}

/// Decentralized: a rule per route family, each with its own `authz`; nothing for
/// other paths (403).
fn local_rules() -> Value {
    let corp = json!({"any": ["corp"]});
    json!([
        {"name": "public", "match": {"path": {"prefix": "/public"}}, "allow": "anonymous"},
        {"name": "reports", "match": {"path": {"prefix": "/reports"}}, "authn": corp,
         "authz": {"any": [{"claim": "scope", "contains": "reports:read"},
                           {"claim": "scp", "contains": "reports:read"}]}},
        {"name": "orders", "match": {"path": {"template": "/users/{id}/orders"}}, "authn": corp,
         "authz": {"all": [{"path_param": "id", "equals_claim": "sub"}]}},
        {"name": "tenants", "match": {"path": {"prefix": "/tenants"}}, "authn": corp,
         "authz": {"all": [{"header": "x-tenant", "equals_claim": "tenant"}]}},
        {"name": "items", "match": {"path": {"prefix": "/items"}}, "authn": corp,
         "authz": {"any": [
             {"method": ["GET", "HEAD"]},
             {"all": [
                 {"claim": "scope", "contains": "items:write"},
                 {"not": {"claim": "realm_access.roles", "contains": "suspended"}}
             ]}
         ]}},
        {"name": "staff", "match": {"path": {"prefix": "/staff"}}, "authn": corp,
         "authz": {"all": [
             {"claim": "department", "in": ["eng", "ops"]},
             {"claim": "client_id", "prefix": "svc-"},
             {"claim": "level", "equals": 3},
             {"header": "x-env", "equals": "prod"},
             {"header": "x-debug", "present": false}
         ]}},
        {"name": "beta", "match": {"path": {"prefix": "/beta"}}, "authn": corp,
         "authz": {"all": [{"claim": "scope", "contains": "beta"}]}, "dry_run": true},
        {"name": "admin", "match": {"path": {"prefix": "/admin"}}, "authn": corp,
         "authz": {"all": [{"claim": "scope", "contains": "admin"}]}}
    ])
}

fn local_config() -> Value {
    json!({"realm": REALM, "providers": providers(), "rules": local_rules()})
}

/// Centralized and hybrid: `/central` asks the service only, `/hybrid` checks a scope
/// locally first, `/trial` asks but only reports (dry run), `/local` never asks.
fn central_config(opa: &Opa, data_path: &str, service: Value) -> Value {
    let corp = json!({"any": ["corp"]});
    let mut authz_service = json!({
        "uri": opa.uri(data_path),
        "cluster": "opa",
        "timeout_ms": TIMEOUT_MS,
        "cache_secs": 5,
        "on_error": "deny",
        "include_headers": ["x-tenant"]
    });
    for (name, value) in service.as_object().expect("service changes are an object") {
        authz_service[name] = value.clone();
    }
    json!({
        "realm": REALM,
        "providers": providers(),
        "rules": [
            {"name": "central", "match": {"path": {"prefix": "/central"}}, "authn": corp,
             "central": true},
            {"name": "hybrid", "match": {"path": {"prefix": "/hybrid"}}, "authn": corp,
             "authz": {"all": [{"claim": "scope", "contains": "hybrid"}]}, "central": true},
            {"name": "trial", "match": {"path": {"prefix": "/trial"}}, "authn": corp,
             "central": true, "dry_run": true},
            {"name": "local", "match": {"path": {"prefix": "/local"}}, "authn": corp}
        ],
        "authz_service": authz_service
    })
}

/// An upstream and an Envoy with `config` in front of it (and the `opa` cluster when
/// there is a policy service).
fn start(config: &Value, opa: Option<&Opa>) -> (Upstream, Envoy) {
    let config = config.to_string();
    // A config mistake in the test itself should say so, not look like an Envoy failure.
    if let Err(e) = tokengate::config::Config::from_json(config.as_bytes()) {
        panic!("the test configuration is invalid: {e}");
    }
    let upstream = Upstream::start();
    let clusters: Vec<(&str, u16)> = opa.map(|o| ("opa", o.port())).into_iter().collect();
    let envoy = Envoy::start_with_clusters(&config, upstream.port(), &clusters)
        .unwrap_or_else(|e| panic!("{e}"));
    (upstream, envoy)
}

// --- policies -----------------------------------------------------------------------------

/// `data.http.authz`: `allow` (a boolean) and `decision` (`{"allow", "headers",
/// "status"}`), and `maybe`, undefined unless the query says `flag=on`.
const HTTP_AUTHZ: &str = r#"
package http.authz

import rego.v1

default allow := false

scopes := split(input.identity.claims.scope, " ")

allow if {
	input.identity.provider == "corp"
	input.attributes.request.http.method == "GET"
	"orders:read" in scopes
}

allow if {
	input.attributes.request.http.method == "POST"
	"orders:write" in scopes
	input.attributes.request.http.headers["x-tenant"] == input.identity.claims.tenant
}

decision := {
	"allow": true,
	"headers": {"x-policy": "orders-v1", "x-policy-subject": input.identity.claims.sub},
} if allow

decision := {"allow": false, "status": 403} if not allow

maybe if input.parsed_query.flag[0] == "on"
"#;

/// OPA-Envoy's `envoy.authz` with decision objects: `eu` passes with a header added, one
/// removed and one for the client, `blocked` gets a plain denial, anything else a 451
/// with the policy's own body and headers.
const ENVOY_AUTHZ: &str = r#"
package envoy.authz

import rego.v1

region := input.attributes.request.http.headers["x-region"]

default allow := {
	"allowed": false,
	"http_status": 451,
	"body": "{\"reason\":\"region not served\"}",
	"headers": {"content-type": "application/json", "x-policy-reason": "region"},
	"response_headers_to_add": {"x-deny-id": "geo-1"},
}

allow := {
	"allowed": true,
	"headers": {"x-ext-authz": "allowed"},
	"request_headers_to_remove": ["x-debug"],
	"response_headers_to_add": {"x-policy-version": "7"},
} if region == "eu"

allow := {"allowed": false} if region == "blocked"
"#;

// --- checks -----------------------------------------------------------------------------

/// The request as the upstream saw it (asserting the filter let it through).
fn forwarded(case: &str, response: &Response) -> Value {
    assert_eq!(
        response.status,
        200,
        "{case}: expected the request to reach the upstream; got {} {:?} {}",
        response.status,
        response.header("www-authenticate"),
        response.text()
    );
    let seen = response.json();
    assert!(
        seen["headers"].is_object(),
        "{case}: not an upstream echo: {seen}"
    );
    seen
}

/// A header as the upstream saw it.
fn seen_header<'a>(seen: &'a Value, name: &str) -> Option<&'a str> {
    seen["headers"].get(name).and_then(Value::as_str)
}

/// The whole response as text: status, headers, body.
fn everything(response: &Response) -> String {
    let mut text = format!("{}\n", response.status);
    for (name, value) in &response.headers {
        text.push_str(&format!("{name}: {value}\n"));
    }
    text.push_str(&response.text());
    text
}

/// A 403 `insufficient_scope` from the filter: the challenge and the JSON body name
/// `description`; nothing of `secrets` (claim values, the token) is in the answer; the
/// upstream never saw the request.
fn assert_insufficient_scope(
    case: &str,
    upstream: &Upstream,
    before: usize,
    response: &Response,
    description: &str,
    secrets: &[&str],
) {
    assert_eq!(
        response.status,
        403,
        "{case}: expected 403; got {}",
        everything(response)
    );
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![format!(
            "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{description}\""
        )],
        "{case}: the challenge"
    );
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{case}: refusals are JSON"
    );
    assert_eq!(
        response.json(),
        json!({"error": "insufficient_scope", "error_description": description}),
        "{case}: the body"
    );
    let text = everything(response);
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{case}: the refusal holds {secret:?}: {text}"
        );
    }
    assert_eq!(
        upstream.count(),
        before,
        "{case}: a refused request reached the upstream"
    );
}

/// A local rule's 403.
fn assert_rule_denies(
    case: &str,
    upstream: &Upstream,
    before: usize,
    response: &Response,
    rule: &str,
    secrets: &[&str],
) {
    let description = format!("rule {rule} denies this request");
    assert_insufficient_scope(case, upstream, before, response, &description, secrets);
}

/// 503 because the policy service could not decide (`on_error: deny`).
fn assert_unavailable(case: &str, upstream: &Upstream, before: usize, response: &Response) {
    assert_eq!(
        response.status,
        503,
        "{case}: expected 503; got {}",
        everything(response)
    );
    assert_eq!(
        response.header("www-authenticate"),
        None,
        "{case}: an outage is no challenge"
    );
    assert_eq!(
        response.json(),
        json!({"error": "temporarily_unavailable",
               "error_description": "authorization service unavailable"}),
        "{case}: the body"
    );
    assert_eq!(
        upstream.count(),
        before,
        "{case}: a refused request reached the upstream"
    );
}

/// Waits until every counter has its expected value (they reach Envoy on the filter's
/// tick); panics with what was seen when one does not within [`COUNTER_WAIT`].
fn expect_counters(envoy: &Envoy, expected: &[(&str, u64)]) {
    let deadline = Instant::now() + COUNTER_WAIT;
    loop {
        let stats = envoy.stats();
        let value = |name: &str| {
            stats
                .get(&format!("wasmcustom.{name}"))
                .or_else(|| stats.get(name))
                .copied()
                .unwrap_or(0)
        };
        let seen: Vec<(&str, u64)> = expected.iter().map(|(n, _)| (*n, value(n))).collect();
        if seen == expected {
            return;
        }
        // Counters only grow: one past its value will not come back.
        let overshot = seen.iter().zip(expected).any(|((_, s), (_, e))| s > e);
        if overshot || Instant::now() >= deadline {
            panic!("counters: expected {expected:?}, saw {seen:?}; all tokengate stats: {stats:?}");
        }
    }
}

/// Request headers, as the client takes them.
type Headers<'a> = Vec<(&'a str, &'a str)>;
/// A named case: a token and the headers sent with it.
type Case<'a> = (&'a str, String, Headers<'a>);

/// GET with a bearer token and more headers.
fn get(envoy: &Envoy, path: &str, token: &str, more: &[(&str, &str)]) -> Response {
    let auth = bearer(token);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(more);
    envoy.get(path, &headers)
}

// --- the policy service itself ------------------------------------------------------------

/// The test's policy service answers like OPA: a rule's value as `result`, `{}` for an
/// undefined one, errors as statuses; so what the filter is tested against is OPA's API.
#[test]
fn the_test_policy_service_answers_the_opa_data_api_with_real_rego() {
    let opa = Opa::start(HTTP_AUTHZ);
    let input = |method: &str, scope: &str| {
        json!({"input": {
            "attributes": {"request": {"http": {"method": method, "path": "/x", "host": "h",
                                                "headers": {"x-tenant": "acme"}}}},
            "parsed_path": ["x"], "parsed_query": {},
            "identity": {"provider": "corp",
                         "claims": {"sub": "ann", "scope": scope, "tenant": "acme"}}
        }})
    };
    let post = |path: &str, body: &Value| {
        client::request(
            opa.port(),
            "POST",
            &format!("{}{path}", opa::DATA_PREFIX),
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
        .expect("POST to the policy service")
    };
    let read = post("http/authz/allow", &input("GET", "orders:read"));
    assert_eq!((read.status, read.json()), (200, json!({"result": true})));
    let denied = post("http/authz/allow", &input("GET", "other"));
    assert_eq!(
        (denied.status, denied.json()),
        (200, json!({"result": false}))
    );
    let write = post("http/authz/allow", &input("POST", "orders:write"));
    assert_eq!(write.json(), json!({"result": true}));
    let decision = post("http/authz/decision", &input("GET", "orders:read"));
    assert_eq!(
        decision.json(),
        json!({"result": {"allow": true,
                          "headers": {"x-policy": "orders-v1", "x-policy-subject": "ann"}}})
    );
    let undefined = post("http/authz/maybe", &input("GET", "orders:read"));
    assert_eq!((undefined.status, undefined.json()), (200, json!({})));
    assert_eq!(post("no/such/rule", &input("GET", "x")).json(), json!({}));
    assert_eq!(post("bad-name", &input("GET", "x")).status, 400);
    assert_eq!(opa.count(), 7);
    assert_eq!(opa.last_input(), Some(input("GET", "x")["input"].clone()));

    opa.set_policy(ENVOY_AUTHZ);
    let mut eu = input("GET", "x");
    eu["input"]["attributes"]["request"]["http"]["headers"] = json!({"x-region": "eu"});
    assert_eq!(
        post("envoy/authz/allow", &eu).json()["result"]["allowed"],
        json!(true)
    );
    assert_eq!(
        opa.evaluate("envoy/authz/allow", &input("GET", "x")["input"])["result"]["http_status"],
        json!(451)
    );

    opa.set_mode(opa::Mode::Status(500));
    assert_eq!(post("envoy/authz/allow", &eu).status, 500);
    opa.set_mode(opa::Mode::Garbage);
    let garbage = post("envoy/authz/allow", &eu);
    assert!(serde_json::from_slice::<Value>(&garbage.body).is_err());
    opa.stop_listening();
    assert!(client::request(opa.port(), "POST", "/v1/data/x", &[], b"{}").is_err());
    opa.listen_again();
    opa.set_mode(opa::Mode::Serve);
    assert_eq!(post("envoy/authz/allow", &eu).status, 200);
}

// --- local rules ----------------------------------------------------------------------------

#[test]
fn an_anonymous_route_needs_no_token_and_still_strips_spoofed_identity_headers() {
    let (upstream, envoy) = start(&local_config(), None);
    let seen = forwarded(
        "anonymous with a spoofed identity header",
        &envoy.get("/public/info", &[("x-user-id", "admin")]),
    );
    assert_eq!(seen["path"], "/public/info");
    assert_eq!(
        seen_header(&seen, "x-user-id"),
        None,
        "spoof removed: {seen}"
    );
    forwarded(
        "anonymous with a token nobody checks",
        &get(&envoy, "/public/info", "not-a-token", &[]),
    );
    assert_eq!(upstream.count(), 2);
    expect_counters(
        &envoy,
        &[
            ("tokengate.rule.public.allowed", 2),
            ("tokengate.rule.public.denied", 0),
        ],
    );
}

#[test]
fn a_scope_protected_route_allows_the_scope_and_refuses_others_with_insufficient_scope() {
    let (upstream, envoy) = start(&local_config(), None);
    let reader = token("ann", json!({"scope": "profile reports:read"}));
    let seen = forwarded(
        "scope string holding the scope",
        &get(&envoy, "/reports/q3", &reader, &[]),
    );
    assert_eq!(seen_header(&seen, "x-user-id"), Some("ann"));
    assert_eq!(
        seen_header(&seen, "authorization"),
        None,
        "the token is not kept"
    );
    forwarded(
        "scp array holding the scope",
        &get(
            &envoy,
            "/reports/q3",
            &token("ben", json!({"scp": ["profile", "reports:read"]})),
            &[],
        ),
    );

    let cases = [
        (
            "a scope that only starts like it",
            json!({"scope": "reports:reader reports"}),
        ),
        (
            "a scope that is only a substring",
            json!({"scope": "xreports:read"}),
        ),
        ("an scp array without it", json!({"scp": ["reports:write"]})),
        ("no scope at all", json!({"email": "carl@example.com"})),
        ("a scope of the wrong type", json!({"scope": 7})),
    ];
    for (case, claims) in &cases {
        let before = upstream.count();
        let token = token("carl-the-user", claims.clone());
        let response = get(&envoy, "/reports/q3", &token, &[]);
        assert_rule_denies(
            case,
            &upstream,
            before,
            &response,
            "reports",
            &[
                "carl-the-user",
                "reports:reader",
                "xreports",
                "carl@example.com",
                &token,
            ],
        );
    }

    // Without a token the route asks for one.
    let before = upstream.count();
    let missing = envoy.get("/reports/q3", &[]);
    assert_eq!(missing.status, 401, "{}", everything(&missing));
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"api\"")
    );
    assert_eq!(upstream.count(), before);
    expect_counters(
        &envoy,
        &[
            ("tokengate.rule.reports.allowed", 2),
            // Every refusal under the rule, the 401 included.
            ("tokengate.rule.reports.denied", cases.len() as u64 + 1),
            ("tokengate.rule.reports.dry_run_denied", 0),
            ("tokengate.denied.forbidden", cases.len() as u64),
        ],
    );
}

#[test]
fn a_path_template_lets_users_read_only_their_own_orders() {
    let (upstream, envoy) = start(&local_config(), None);
    let ann = token("ann", json!({}));
    let seen = forwarded("ann's orders", &get(&envoy, "/users/ann/orders", &ann, &[]));
    assert_eq!(seen["path"], "/users/ann/orders");
    forwarded(
        "ann's orders with a query",
        &get(&envoy, "/users/ann/orders?page=2", &ann, &[]),
    );

    for (case, path) in [
        ("someone else's orders", "/users/ben/orders"),
        ("a prefix of the subject", "/users/an/orders"),
        ("the subject with a suffix", "/users/anna/orders"),
    ] {
        let before = upstream.count();
        let response = get(&envoy, path, &ann, &[]);
        assert_rule_denies(case, &upstream, before, &response, "orders", &["ann"]);
    }
    // Other shapes are not this rule's: no rule matches them.
    for path in ["/users/ann/orders/7", "/users/ann", "/users//orders"] {
        let before = upstream.count();
        let response = get(&envoy, path, &ann, &[]);
        assert!(
            response.status == 403 || response.status == 400,
            "{path}: {}",
            everything(&response)
        );
        assert_eq!(upstream.count(), before, "{path} reached the upstream");
    }
    expect_counters(
        &envoy,
        &[
            ("tokengate.rule.orders.allowed", 2),
            ("tokengate.rule.orders.denied", 3),
        ],
    );
}

#[test]
fn a_tenant_header_must_equal_the_tenant_claim() {
    let (upstream, envoy) = start(&local_config(), None);
    let acme = token("ann", json!({"tenant": "acme"}));
    forwarded(
        "own tenant",
        &get(&envoy, "/tenants/data", &acme, &[("x-tenant", "acme")]),
    );
    for (case, token, headers) in [
        ("another tenant", acme.clone(), vec![("x-tenant", "globex")]),
        (
            "the tenant in another case",
            acme.clone(),
            vec![("x-tenant", "ACME")],
        ),
        ("no tenant header", acme.clone(), vec![]),
        (
            "a token without a tenant claim",
            token("ben", json!({})),
            vec![("x-tenant", "acme")],
        ),
    ] {
        let before = upstream.count();
        let response = get(&envoy, "/tenants/data", &token, &headers);
        assert_rule_denies(case, &upstream, before, &response, "tenants", &["acme"]);
    }
    expect_counters(
        &envoy,
        &[
            ("tokengate.rule.tenants.allowed", 1),
            ("tokengate.rule.tenants.denied", 4),
        ],
    );
}

#[test]
fn a_method_restriction_lets_reads_through_and_writes_only_with_the_write_scope() {
    let (upstream, envoy) = start(&local_config(), None);
    let reader = token("ann", json!({"scope": "items:read"}));
    let writer = token("ben", json!({"scope": "items:write"}));
    let suspended = token(
        "carl",
        json!({"scope": "items:write", "realm_access": {"roles": ["user", "suspended"]}}),
    );
    let send = |method: &str, token: &str| {
        let auth = bearer(token);
        let body: &[u8] = if matches!(method, "GET" | "HEAD") {
            b""
        } else {
            b"{}"
        };
        envoy.request(method, "/items/7", &[("authorization", &auth)], body)
    };
    let seen = forwarded("a reader reads", &send("GET", &reader));
    assert_eq!(seen["method"], "GET");
    let head = send("HEAD", &reader);
    assert_eq!(head.status, 200, "a reader asks for the head");
    let seen = forwarded("a writer writes", &send("POST", &writer));
    assert_eq!(
        (seen["method"].as_str(), seen["body"].as_str()),
        (Some("POST"), Some("{}"))
    );
    forwarded("a writer deletes", &send("DELETE", &writer));
    for (case, method, token) in [
        ("a reader writes", "POST", &reader),
        ("a reader deletes", "DELETE", &reader),
        ("a suspended writer writes", "PUT", &suspended),
    ] {
        let before = upstream.count();
        let response = send(method, token);
        assert_rule_denies(case, &upstream, before, &response, "items", &["suspended"]);
    }
    forwarded("a suspended writer still reads", &send("GET", &suspended));
    expect_counters(
        &envoy,
        &[
            ("tokengate.rule.items.allowed", 5),
            ("tokengate.rule.items.denied", 3),
        ],
    );
}

#[test]
fn in_prefix_equals_and_header_conditions_must_all_hold() {
    let (upstream, envoy) = start(&local_config(), None);
    let good = json!({"department": "ops", "client_id": "svc-billing", "level": 3});
    let prod = [("x-env", "prod")];
    forwarded(
        "everything holds",
        &get(&envoy, "/staff", &token("ann", good.clone()), &prod),
    );
    let with = |changes: Value| {
        let mut claims = good.clone();
        for (name, value) in changes.as_object().unwrap() {
            claims[name] = value.clone();
        }
        token("ann", claims)
    };
    let cases: Vec<Case> = vec![
        (
            "department not listed",
            with(json!({"department": "sales"})),
            prod.to_vec(),
        ),
        (
            "department of another case",
            with(json!({"department": "Ops"})),
            prod.to_vec(),
        ),
        (
            "client without the prefix",
            with(json!({"client_id": "web-svc-1"})),
            prod.to_vec(),
        ),
        (
            "level as a string",
            with(json!({"level": "3"})),
            prod.to_vec(),
        ),
        ("another level", with(json!({"level": 4})), prod.to_vec()),
        (
            "another environment",
            with(json!({})),
            vec![("x-env", "dev")],
        ),
        ("no environment header", with(json!({})), vec![]),
        (
            "a debug header that must be absent",
            with(json!({})),
            vec![("x-env", "prod"), ("x-debug", "1")],
        ),
    ];
    for (case, token, headers) in &cases {
        let before = upstream.count();
        let response = get(&envoy, "/staff", token, headers);
        assert_rule_denies(
            case,
            &upstream,
            before,
            &response,
            "staff",
            &["svc-", "sales"],
        );
    }
    expect_counters(
        &envoy,
        &[
            ("tokengate.rule.staff.allowed", 1),
            ("tokengate.rule.staff.denied", cases.len() as u64),
        ],
    );
}

#[test]
fn a_request_no_rule_matches_is_refused_403_without_a_challenge() {
    let (upstream, envoy) = start(&local_config(), None);
    let admin = token("root", json!({"scope": "admin"}));
    // (`/publicity` would match the `/public` prefix: prefixes are plain strings.)
    for path in ["/", "/elsewhere", "/Admin", "/adm"] {
        let response = get(&envoy, path, &admin, &[]);
        assert_eq!(response.status, 403, "{path}: {}", everything(&response));
        assert_eq!(response.header("www-authenticate"), None, "{path}");
        assert_eq!(
            response.json(),
            json!({"error": "forbidden", "error_description": "no rule matches this request"}),
            "{path}"
        );
    }
    assert_eq!(upstream.count(), 0);
    expect_counters(&envoy, &[("tokengate.denied.no_rule", 4)]);
}

#[test]
fn a_dry_run_rule_lets_what_its_authz_would_deny_through_as_if_allowed_and_counts_it() {
    let (upstream, envoy) = start(&local_config(), None);
    let tester = token("ann", json!({"scope": "beta"}));
    let seen = forwarded("the rule allows", &get(&envoy, "/beta/x", &tester, &[]));
    assert_eq!(seen_header(&seen, "x-user-id"), Some("ann"));

    let outsider = token("ben", json!({"scope": "orders:read"}));
    let response = get(&envoy, "/beta/x", &outsider, &[("x-user-id", "spoofed")]);
    let seen = forwarded("the rule would deny", &response);
    // As if allowed: the identity forwarded, the spoof and the token removed.
    assert_eq!(seen_header(&seen, "x-user-id"), Some("ben"), "{seen}");
    assert_eq!(
        seen_header(&seen, "authorization"),
        None,
        "the token reached the upstream (keep_token false): {seen}"
    );
    assert_eq!(upstream.count(), 2);

    // Authentication is enforced: only the rule's authorization is on trial.
    let missing = envoy.get("/beta/x", &[("x-user-id", "spoofed")]);
    assert_eq!(missing.status, 401, "no token: {}", everything(&missing));
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"api\"")
    );
    let forged = get(&envoy, "/beta/x", &format!("{tester}x"), &[]);
    assert_eq!(
        forged.status,
        401,
        "a forged token: {}",
        everything(&forged)
    );
    assert_eq!(
        upstream.count(),
        2,
        "a dry run let an unauthenticated request through"
    );
    expect_counters(
        &envoy,
        &[
            ("tokengate.rule.beta.allowed", 1),
            ("tokengate.rule.beta.dry_run_denied", 1),
            ("tokengate.rule.beta.denied", 2),
            ("tokengate.denied.forbidden", 0),
        ],
    );
}

/// Every spelling of `/public/../admin` a client may try: none reaches the upstream.
/// Envoy's `normalize_path` / `merge_slashes` (on in the test bootstrap) resolve
/// dot-segments, `%2E`, `\` and `..;params` first, so the request is the admin route's
/// (401 without a token); the encoded separators Envoy passes on unchanged (`%2F`,
/// `%5C`) the filter refuses itself, 400, whatever the token.
#[test]
fn paths_that_could_mean_another_path_upstream_never_get_past_the_admin_rule() {
    let (upstream, envoy) = start(&local_config(), None);
    forwarded("the control", &envoy.get("/public/ok", &[]));
    let before = upstream.count();
    // The filter's own refusals, as a client sees them.
    let refused_by_filter = [
        "/public/..%2Fadmin",
        "/public/..%2fadmin",
        "/public%2F..%2Fadmin",
        "/public/%2e%2e%2fadmin",
        "/public/x%2F..%2F..%2Fadmin",
        "/public/..%5Cadmin",
        "/public/..%5cadmin",
        "/public/%5C..%5Cadmin",
    ];
    // What Envoy resolves to /admin before the filter sees it.
    let resolved_by_envoy = [
        "/public/../admin",
        "/public/./../admin",
        "/public/x/../../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "/public/..\\admin",
        "/public\\..\\admin",
        "/public/..;x/admin",
        "/public/..;/admin",
    ];
    let mut seen = Vec::new();
    for path in refused_by_filter.iter().chain(&resolved_by_envoy) {
        let response = envoy.get(path, &[]);
        seen.push(format!("{path} -> {}", response.status));
        assert!(
            matches!(response.status, 400 | 401),
            "{path}: {}",
            everything(&response)
        );
        assert_eq!(upstream.count(), before, "{path} reached the upstream");
    }
    eprintln!("path refusal, as a client sees it:\n{}", seen.join("\n"));

    let user = token("ann", json!({"scope": "orders:read"}));
    let admin = token("root", json!({"scope": "admin"}));
    for path in refused_by_filter {
        for (who, token) in [
            ("no token", None),
            ("a user", Some(&user)),
            ("an admin", Some(&admin)),
        ] {
            let response = match token {
                Some(token) => get(&envoy, path, token, &[]),
                None => envoy.get(path, &[]),
            };
            assert_eq!(
                response.status,
                400,
                "{path}, {who}: {}",
                everything(&response)
            );
            assert_eq!(response.header("www-authenticate"), None, "{path}");
            assert_eq!(
                response.json(),
                json!({"error": "invalid_request",
                       "error_description": "path holds an encoded slash, backslash or dot"}),
                "{path}, {who}"
            );
        }
    }
    // Resolved by Envoy, the request is the admin route's, under its rule.
    for path in resolved_by_envoy {
        let before = upstream.count();
        let response = envoy.get(path, &[]);
        assert_eq!(response.status, 401, "{path}: {}", everything(&response));
        let response = get(&envoy, path, &user, &[]);
        assert_rule_denies(path, &upstream, before, &response, "admin", &[]);
        let seen = forwarded(path, &get(&envoy, path, &admin, &[]));
        assert_eq!(seen["path"], "/admin", "{path}");
    }
    assert_eq!(upstream.count(), before + resolved_by_envoy.len());
    let admins = resolved_by_envoy.len() as u64;
    expect_counters(
        &envoy,
        &[
            ("tokengate.rule.public.allowed", 1),
            ("tokengate.rule.admin.allowed", admins),
            // Every refusal under the rule: the 401s and the 403s.
            ("tokengate.rule.admin.denied", 3 * admins),
            ("tokengate.denied.missing", 2 * admins),
            ("tokengate.denied.forbidden", admins),
            (
                "tokengate.denied.bad_path",
                4 * refused_by_filter.len() as u64,
            ),
        ],
    );
}

#[test]
fn allow_encoded_slashes_lets_percent_2f_through_matched_literally() {
    let mut config = local_config();
    config["paths"] = json!({"allow_encoded_slashes": true});
    config["rules"] = json!([
        {"name": "file", "match": {"path": {"exact": "/files/a%2Fb"}}, "allow": "anonymous"},
        {"name": "public", "match": {"path": {"prefix": "/public"}}, "allow": "anonymous"},
        {"name": "admin", "match": {"path": {"prefix": "/admin"}}, "authn": {"any": ["corp"]}}
    ]);
    let (upstream, envoy) = start(&config, None);
    let seen = forwarded(
        "an encoded slash in a segment",
        &envoy.get("/files/a%2Fb", &[]),
    );
    assert_eq!(seen["path"], "/files/a%2Fb", "the upstream sees it as sent");
    forwarded("lowercase hex", &envoy.get("/files/a%2fb", &[]));
    // Matched literally: not as /files/a/b.
    let literal = envoy.get("/files/a/b", &[]);
    assert_eq!(literal.status, 403, "{}", everything(&literal));
    let before = upstream.count();
    for path in ["/public/..%2Fadmin", "/public%2F..%2Fadmin"] {
        let response = envoy.get(path, &[]);
        // Matched as one literal segment under /public: anonymous, reaches the upstream
        // with the path as sent (an upstream that decodes %2F is what the option is not
        // for).
        let seen = forwarded(path, &response);
        assert_eq!(seen["path"], path);
    }
    assert_eq!(upstream.count(), before + 2);
    // Encoded backslashes and broken escapes are still refused. (Envoy's normalize_path
    // decodes `%2E` before the filter sees it.)
    for path in ["/public/..%5Cadmin", "/public/a%5cb", "/public/a%2Fb%ZZ"] {
        let before = upstream.count();
        let response = envoy.get(path, &[]);
        assert_eq!(response.status, 400, "{path}: {}", everything(&response));
        assert_eq!(upstream.count(), before, "{path}");
    }
}

// --- the central policy service ---------------------------------------------------------------

#[test]
fn a_central_rego_policy_allows_and_denies() {
    let opa = Opa::start(HTTP_AUTHZ);
    let config = central_config(&opa, "http/authz/allow", json!({}));
    let (upstream, envoy) = start(&config, Some(&opa));
    let reader = token("ann", json!({"scope": "orders:read", "tenant": "acme"}));
    let writer = token("ben", json!({"scope": "orders:write", "tenant": "acme"}));

    let seen = forwarded(
        "the policy allows a read",
        &get(&envoy, "/central/orders", &reader, &[]),
    );
    assert_eq!(seen_header(&seen, "x-user-id"), Some("ann"));
    assert_eq!(opa.count(), 1);
    let auth = bearer(&writer);
    let write = envoy.request(
        "POST",
        "/central/orders",
        &[("authorization", &auth), ("x-tenant", "acme")],
        b"{}",
    );
    forwarded("the policy allows a write for the own tenant", &write);

    let denials: [(&str, &str, &String, Headers); 3] = [
        (
            "a write with the read scope",
            "POST",
            &reader,
            vec![("x-tenant", "acme")],
        ),
        ("a read with the write scope", "GET", &writer, vec![]),
        (
            "a write for another tenant",
            "POST",
            &writer,
            vec![("x-tenant", "globex")],
        ),
    ];
    for (case, method, token, more) in &denials {
        let before = upstream.count();
        let auth = bearer(token);
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(more);
        let response = envoy.request(method, "/central/orders", &headers, b"{}");
        assert_insufficient_scope(
            case,
            &upstream,
            before,
            &response,
            "the policy denies this request",
            &["acme", "ann", "ben", "orders:"],
        );
    }
    assert_eq!(opa.count(), 5, "one callout per distinct request");

    // A rule without `central` never asks.
    forwarded("a local-only rule", &get(&envoy, "/local/x", &writer, &[]));
    assert_eq!(opa.count(), 5, "a rule without central: true called out");
    expect_counters(
        &envoy,
        &[
            ("tokengate.authz_service.allowed", 2),
            ("tokengate.authz_service.denied", 3),
            ("tokengate.authz_service.failure", 0),
            ("tokengate.rule.central.allowed", 2),
            ("tokengate.rule.central.denied", 3),
            ("tokengate.rule.local.allowed", 1),
        ],
    );
}

#[test]
fn central_decision_headers_reach_the_upstream_and_replace_what_the_client_sent() {
    let opa = Opa::start(HTTP_AUTHZ);
    let config = central_config(&opa, "http/authz/decision", json!({}));
    let (upstream, envoy) = start(&config, Some(&opa));
    let reader = token("ann", json!({"scope": "orders:read"}));
    let response = get(
        &envoy,
        "/central/orders",
        &reader,
        &[("x-policy", "forged"), ("x-policy-subject", "root")],
    );
    let seen = forwarded("the decision allows with headers", &response);
    assert_eq!(seen_header(&seen, "x-policy"), Some("orders-v1"), "{seen}");
    assert_eq!(
        seen_header(&seen, "x-policy-subject"),
        Some("ann"),
        "{seen}"
    );
    assert_eq!(seen_header(&seen, "x-user-id"), Some("ann"), "{seen}");
    assert!(
        response.header("x-policy").is_none(),
        "decision headers of an allow go upstream, not to the client"
    );

    // `{"allow": false, "status": 403}`: the default challenge.
    let before = upstream.count();
    let response = get(
        &envoy,
        "/central/orders",
        &token("ben", json!({"scope": "x"})),
        &[],
    );
    assert_insufficient_scope(
        "the decision denies",
        &upstream,
        before,
        &response,
        "the policy denies this request",
        &["ben"],
    );
    expect_counters(
        &envoy,
        &[
            ("tokengate.authz_service.allowed", 1),
            ("tokengate.authz_service.denied", 1),
        ],
    );
}

#[test]
fn an_opa_envoy_decision_object_shapes_the_denial_and_edits_the_allowed_request() {
    let opa = Opa::start(ENVOY_AUTHZ);
    let config = central_config(
        &opa,
        "envoy/authz/allow",
        json!({"include_headers": ["x-region"]}),
    );
    let (upstream, envoy) = start(&config, Some(&opa));
    let user = token("ann", json!({}));

    let response = get(
        &envoy,
        "/central/x",
        &user,
        &[("x-region", "eu"), ("x-debug", "1")],
    );
    let seen = forwarded("allowed", &response);
    assert_eq!(seen_header(&seen, "x-ext-authz"), Some("allowed"), "{seen}");
    assert_eq!(
        seen_header(&seen, "x-debug"),
        None,
        "request_headers_to_remove: {seen}"
    );
    assert_eq!(seen_header(&seen, "x-region"), Some("eu"));
    assert_eq!(
        response.header("x-policy-version"),
        Some("7"),
        "response_headers_to_add of an allow reach the client"
    );
    assert_eq!(
        seen_header(&seen, "x-policy-version"),
        None,
        "not the upstream"
    );

    // The policy's own status, body and headers; no challenge.
    let before = upstream.count();
    let response = get(&envoy, "/central/x", &user, &[("x-region", "us")]);
    assert_eq!(response.status, 451, "{}", everything(&response));
    assert_eq!(response.text(), r#"{"reason":"region not served"}"#);
    assert_eq!(response.header("x-policy-reason"), Some("region"));
    assert_eq!(response.header("x-deny-id"), Some("geo-1"));
    assert_eq!(
        response.header_all("content-type"),
        vec!["application/json"],
        "the policy's content-type, once"
    );
    assert_eq!(response.header("www-authenticate"), None);
    assert_eq!(upstream.count(), before);

    // A denial with neither status nor body: 403 with the challenge.
    let response = get(&envoy, "/central/x", &user, &[("x-region", "blocked")]);
    assert_insufficient_scope(
        "a bare denial",
        &upstream,
        before,
        &response,
        "the policy denies this request",
        &["ann"],
    );
    expect_counters(
        &envoy,
        &[
            ("tokengate.authz_service.allowed", 1),
            ("tokengate.authz_service.denied", 2),
            ("tokengate.rule.central.denied", 2),
        ],
    );
}

#[test]
fn a_central_service_outage_is_503_with_on_error_deny_and_passes_once_it_recovers() {
    let opa = Opa::start(HTTP_AUTHZ);
    let config = central_config(&opa, "http/authz/allow", json!({"on_error": "deny"}));
    let (upstream, envoy) = start(&config, Some(&opa));
    let reader = token("ann", json!({"scope": "orders:read"}));
    // A new query per step: each is a new input, never a cached decision.
    let mut step = 0;
    let mut next = || {
        step += 1;
        format!("/central/orders?step={step}")
    };
    forwarded("healthy", &get(&envoy, &next(), &reader, &[]));

    // `allow` without a default, false for every request here: OPA answers `{}`.
    let undefined = "package http.authz\n\nimport rego.v1\n\n\
                     allow if input.attributes.request.http.method == \"NEVER\"\n";
    let mut failures = 0;
    for (case, fault) in [
        ("connections refused", "down"),
        ("HTTP 500", "500"),
        ("an answer that never comes", "hang"),
        ("garbage", "garbage"),
        ("connection closed", "close"),
        ("an undefined decision ({})", "undefined"),
    ] {
        match fault {
            "down" => opa.stop_listening(),
            "500" => opa.set_mode(opa::Mode::Status(500)),
            "hang" => opa.set_mode(opa::Mode::Hang),
            "garbage" => opa.set_mode(opa::Mode::Garbage),
            "close" => opa.set_mode(opa::Mode::Close),
            _ => opa.set_policy(undefined),
        }
        let before = upstream.count();
        let begun = Instant::now();
        let response = get(&envoy, &next(), &reader, &[]);
        let took = begun.elapsed();
        assert_unavailable(case, &upstream, before, &response);
        failures += 1;
        if fault == "hang" {
            assert!(
                took >= Duration::from_millis(TIMEOUT_MS - 100),
                "{case}: answered in {took:?}, before the callout timeout"
            );
        }
        assert!(
            took < Duration::from_secs(8),
            "{case}: took {took:?}: the callout timeout is {TIMEOUT_MS} ms"
        );

        // Recovered: the failure was not remembered.
        match fault {
            "down" => opa.listen_again(),
            "undefined" => opa.set_policy(HTTP_AUTHZ),
            _ => opa.set_mode(opa::Mode::Serve),
        }
        forwarded(
            &format!("after {case}"),
            &get(&envoy, &next(), &reader, &[]),
        );
    }
    expect_counters(
        &envoy,
        &[
            ("tokengate.authz_service.failure", failures),
            ("tokengate.authz_service.allowed", failures + 1),
            ("tokengate.denied.authz_unavailable", failures),
        ],
    );
}

#[test]
fn on_error_allow_lets_requests_through_while_the_service_is_down_and_counts_failures() {
    let opa = Opa::start(HTTP_AUTHZ);
    let config = central_config(&opa, "http/authz/decision", json!({"on_error": "allow"}));
    let (upstream, envoy) = start(&config, Some(&opa));
    opa.stop_listening();
    let outsider = token("ben", json!({"scope": "nothing"}));
    let seen = forwarded(
        "service down, on_error allow",
        &get(&envoy, "/central/a", &outsider, &[]),
    );
    assert_eq!(seen_header(&seen, "x-user-id"), Some("ben"));
    assert_eq!(
        seen_header(&seen, "x-policy"),
        None,
        "no decision, no headers"
    );
    opa.listen_again();
    opa.set_mode(opa::Mode::Status(500));
    forwarded(
        "service failing, on_error allow",
        &get(&envoy, "/central/b", &outsider, &[]),
    );
    // Once it answers, its denial stands.
    opa.set_mode(opa::Mode::Serve);
    let before = upstream.count();
    let response = get(&envoy, "/central/c", &outsider, &[]);
    assert_insufficient_scope(
        "service back",
        &upstream,
        before,
        &response,
        "the policy denies this request",
        &[],
    );
    expect_counters(
        &envoy,
        &[
            ("tokengate.authz_service.failure", 2),
            ("tokengate.authz_service.denied", 1),
            ("tokengate.rule.central.allowed", 2),
        ],
    );
}

#[test]
fn decisions_are_cached_per_input_so_repeats_do_not_call_out_again() {
    let opa = Opa::start(HTTP_AUTHZ);
    // Long enough that no repeat here outlives it, even on a busy machine.
    let config = central_config(&opa, "http/authz/allow", json!({"cache_secs": 60}));
    let (upstream, envoy) = start(&config, Some(&opa));
    let ann = token("ann", json!({"scope": "orders:read", "tenant": "acme"}));
    let ben = token("ben", json!({"scope": "orders:read", "tenant": "acme"}));
    let carl = token("carl", json!({"scope": "none"}));
    // One kept-alive connection: one Envoy worker, whose VM holds the cache.
    let mut conn = Connection::new(envoy.port);
    let mut send = |token: &str, more: &[(&str, &str)]| {
        let auth = bearer(token);
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(more);
        conn.get("/central/orders", &headers)
            .unwrap_or_else(|e| panic!("GET via Envoy: {e}"))
    };
    let acme = [("x-tenant", "acme")];

    forwarded("first", &send(&ann, &acme));
    assert_eq!(opa.count(), 1);
    forwarded("a repeat", &send(&ann, &acme));
    forwarded("another repeat", &send(&ann, &acme));
    assert_eq!(
        opa.count(),
        1,
        "a repeat within cache_secs called out again"
    );
    forwarded(
        "a repeat with a volatile header",
        &send(
            &ann,
            &[
                ("x-tenant", "acme"),
                ("x-request-id", "r-1"),
                ("x-trace", "t"),
            ],
        ),
    );
    assert_eq!(
        opa.count(),
        1,
        "a header the input does not hold defeated the cache"
    );

    forwarded("another identity", &send(&ben, &acme));
    assert_eq!(opa.count(), 2, "two identities shared a decision");
    forwarded(
        "the same identity, another tenant header",
        &send(&ann, &[("x-tenant", "globex")]),
    );
    assert_eq!(opa.count(), 3, "the input's headers are part of the key");

    // Denials are cached too.
    let before = upstream.count();
    let denied = send(&carl, &[]);
    assert_eq!(denied.status, 403, "{}", everything(&denied));
    let again = send(&carl, &[]);
    assert_eq!(again.status, 403, "{}", everything(&again));
    assert_eq!(opa.count(), 4, "a cached denial called out again");
    assert_eq!(upstream.count(), before);
    assert_eq!(
        conn.opened, 1,
        "the connection was reopened (another worker may have answered)"
    );
    expect_counters(
        &envoy,
        &[
            ("tokengate.authz_service.allowed", 6),
            ("tokengate.authz_service.denied", 2),
        ],
    );

    // On new connections, requests spread over the workers: each VM asks once.
    let dave = token("dave", json!({"scope": "orders:read"}));
    let before = opa.count();
    for i in 0..8 {
        forwarded(
            &format!("dave {i}"),
            &get(&envoy, "/central/orders", &dave, &[]),
        );
    }
    let asked = opa.count() - before;
    assert!(
        (1..=2).contains(&asked),
        "8 requests of one input on new connections asked {asked} times; at most once per worker (2)"
    );
    // Every request but those that called out was answered from the cache.
    let total = 8 + 8;
    let callouts = opa.count() as u64;
    expect_counters(
        &envoy,
        &[("tokengate.authz_service.cache_hit", total - callouts)],
    );
}

#[test]
fn a_cached_decision_expires_after_cache_secs() {
    let opa = Opa::start(HTTP_AUTHZ);
    let config = central_config(&opa, "http/authz/allow", json!({"cache_secs": 1}));
    let (_upstream, envoy) = start(&config, Some(&opa));
    let ann = token("ann", json!({"scope": "orders:read"}));
    let auth = bearer(&ann);
    let mut conn = Connection::new(envoy.port);
    let mut send = || {
        conn.get("/central/orders", &[("authorization", &auth)])
            .unwrap_or_else(|e| panic!("GET via Envoy: {e}"))
    };
    forwarded("first", &send());
    assert_eq!(opa.count(), 1);
    // Cached for at most 1 s (whole seconds): 2.2 s later it is gone.
    std::thread::sleep(Duration::from_millis(2200));
    forwarded("after cache_secs", &send());
    assert_eq!(opa.count(), 2, "an expired decision was used");
    assert_eq!(conn.opened, 1, "the connection was reopened");
}

#[test]
fn cache_secs_zero_asks_the_service_for_every_request() {
    let opa = Opa::start(HTTP_AUTHZ);
    let config = central_config(&opa, "http/authz/allow", json!({"cache_secs": 0}));
    let (_upstream, envoy) = start(&config, Some(&opa));
    let auth = bearer(&token("ann", json!({"scope": "orders:read"})));
    let mut conn = Connection::new(envoy.port);
    for i in 1..=3 {
        let response = conn
            .get("/central/orders", &[("authorization", &auth)])
            .unwrap_or_else(|e| panic!("GET via Envoy: {e}"));
        forwarded(&format!("request {i}"), &response);
        assert_eq!(
            opa.count(),
            i,
            "request {i} with cache_secs 0 was answered without asking the service"
        );
    }
    assert_eq!(conn.opened, 1, "the connection was reopened");
    expect_counters(
        &envoy,
        &[
            ("tokengate.authz_service.allowed", 3),
            ("tokengate.authz_service.cache_hit", 0),
        ],
    );
}

#[test]
fn a_failed_callout_is_not_remembered_once_the_service_answers_again() {
    let opa = Opa::start(HTTP_AUTHZ);
    let config = central_config(&opa, "http/authz/allow", json!({}));
    let (upstream, envoy) = start(&config, Some(&opa));
    let auth = bearer(&token("ann", json!({"scope": "orders:read"})));
    // One kept-alive connection: one worker, whose VM would remember.
    let mut conn = Connection::new(envoy.port);
    let mut send = || {
        conn.get("/central/orders", &[("authorization", &auth)])
            .unwrap_or_else(|e| panic!("GET via Envoy: {e}"))
    };
    opa.set_mode(opa::Mode::Status(500));
    assert_unavailable("the service fails", &upstream, 0, &send());
    assert_eq!(opa.count(), 1);
    opa.set_mode(opa::Mode::Serve);
    // The same input right away: a failure is no decision, so it asks again.
    let response = send();
    assert_eq!(
        opa.count(),
        2,
        "the request after a failure was answered without asking the service (status {})",
        response.status
    );
    forwarded("the service answers again", &response);
    assert_eq!(conn.opened, 1, "the connection was reopened");
}

#[test]
fn concurrent_requests_for_one_input_share_one_callout_per_worker() {
    let opa = Opa::start(HTTP_AUTHZ);
    let config = central_config(
        &opa,
        "http/authz/allow",
        json!({"timeout_ms": 3000, "cache_secs": 60}),
    );
    let (upstream, envoy) = start(&config, Some(&opa));
    // Slow enough that the requests arrive while the first callout is under way.
    opa.set_mode(opa::Mode::Slow(Duration::from_millis(400)));
    const N: usize = 8;
    let auth = bearer(&token("ann", json!({"scope": "orders:read"})));
    let barrier = Arc::new(Barrier::new(N));
    let port = envoy.port;
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let (barrier, auth) = (barrier.clone(), auth.clone());
            std::thread::spawn(move || {
                barrier.wait();
                client::request(
                    port,
                    "GET",
                    "/central/orders",
                    &[("authorization", &auth)],
                    b"",
                )
            })
        })
        .collect();
    for thread in threads {
        let response = thread
            .join()
            .expect("request thread")
            .unwrap_or_else(|e| panic!("GET via Envoy: {e}"));
        forwarded("concurrent", &response);
    }
    assert_eq!(upstream.count(), N);
    let asked = opa.count();
    assert!(
        (1..=2).contains(&asked),
        "{N} concurrent requests of one input asked {asked} times; at most once per worker (2)"
    );
}

#[test]
fn a_hybrid_route_denies_locally_without_asking_the_service() {
    let opa = Opa::start(HTTP_AUTHZ);
    let config = central_config(&opa, "http/authz/allow", json!({}));
    let (upstream, envoy) = start(&config, Some(&opa));

    let local_only = token("ann", json!({"scope": "orders:read"}));
    for i in 0..3 {
        let before = upstream.count();
        let response = get(&envoy, &format!("/hybrid/x?i={i}"), &local_only, &[]);
        assert_rule_denies(
            "local deny",
            &upstream,
            before,
            &response,
            "hybrid",
            &["orders:read"],
        );
    }
    assert_eq!(opa.count(), 0, "a local denial called the policy service");

    // Local pass, central deny.
    let before = upstream.count();
    let response = get(
        &envoy,
        "/hybrid/x",
        &token("ben", json!({"scope": "hybrid"})),
        &[],
    );
    assert_insufficient_scope(
        "central deny",
        &upstream,
        before,
        &response,
        "the policy denies this request",
        &["hybrid"],
    );
    assert_eq!(opa.count(), 1);
    // Both pass.
    let both = token("carl", json!({"scope": "hybrid orders:read"}));
    forwarded("both allow", &get(&envoy, "/hybrid/x", &both, &[]));
    assert_eq!(opa.count(), 2);
    expect_counters(
        &envoy,
        &[
            ("tokengate.rule.hybrid.denied", 4),
            ("tokengate.rule.hybrid.allowed", 1),
            ("tokengate.authz_service.denied", 1),
            ("tokengate.authz_service.allowed", 1),
        ],
    );
}

#[test]
fn a_dry_run_central_rule_lets_policy_denials_and_outages_through_and_counts_them() {
    let opa = Opa::start(HTTP_AUTHZ);
    let config = central_config(&opa, "http/authz/allow", json!({"on_error": "deny"}));
    let (upstream, envoy) = start(&config, Some(&opa));
    let reader = token("ann", json!({"scope": "orders:read"}));
    let outsider = token("ben", json!({"scope": "nothing"}));
    forwarded("the policy allows", &get(&envoy, "/trial/a", &reader, &[]));
    let seen = forwarded(
        "the policy denies",
        &get(&envoy, "/trial/a", &outsider, &[]),
    );
    assert_eq!(seen_header(&seen, "x-user-id"), Some("ben"));
    assert_eq!(seen_header(&seen, "authorization"), None);
    opa.stop_listening();
    forwarded(
        "the service is down",
        &get(&envoy, "/trial/b", &reader, &[]),
    );
    opa.listen_again();
    assert_eq!(opa.count(), 2);
    let missing = envoy.get("/trial/a", &[]);
    assert_eq!(missing.status, 401, "authentication is enforced");
    assert_eq!(upstream.count(), 3);
    expect_counters(
        &envoy,
        &[
            ("tokengate.rule.trial.allowed", 1),
            ("tokengate.rule.trial.dry_run_denied", 2),
            ("tokengate.authz_service.allowed", 1),
            ("tokengate.authz_service.denied", 1),
            ("tokengate.authz_service.failure", 1),
            ("tokengate.denied.central_denied", 0),
        ],
    );
}

#[test]
fn a_token_in_the_query_never_reaches_the_policy_or_the_upstream() {
    let opa = Opa::start(HTTP_AUTHZ);
    let config = central_config(&opa, "http/authz/allow", json!({}));
    let (_upstream, envoy) = start(&config, Some(&opa));
    let ann = token("ann", json!({"scope": "orders:read"}));
    let path = format!("/central/orders?page=2&access_token={ann}&x=1");
    let seen = forwarded("a query token", &envoy.get(&path, &[]));
    assert_eq!(seen_header(&seen, "x-user-id"), Some("ann"));
    assert!(
        !seen.to_string().contains(&ann),
        "the token reached the upstream: {seen}"
    );
    assert_eq!(opa.count(), 1);
    let asked = opa.requests().pop().expect("one callout");
    let text = String::from_utf8_lossy(&asked.body).into_owned();
    assert!(!text.contains(&ann), "the token reached the policy: {text}");
    let input = opa.last_input().expect("an input");
    assert_eq!(
        input["attributes"]["request"]["http"]["path"],
        "/central/orders?page=2&x=1"
    );
    assert_eq!(input["parsed_query"], json!({"page": ["2"], "x": ["1"]}));
    assert_eq!(input["identity"]["claims"]["sub"], "ann");
}

#[test]
fn the_policy_never_sees_a_spoofed_identity_header() {
    let opa = Opa::start(HTTP_AUTHZ);
    // A policy that reads the identity header the upstream will see.
    let config = central_config(
        &opa,
        "http/authz/allow",
        json!({"include_headers": ["x-tenant", "x-user-id"]}),
    );
    let (_upstream, envoy) = start(&config, Some(&opa));
    let ann = token("ann", json!({"scope": "orders:read"}));
    let response = get(&envoy, "/central/orders", &ann, &[("x-user-id", "root")]);
    let seen = forwarded("allowed", &response);
    assert_eq!(seen_header(&seen, "x-user-id"), Some("ann"), "the upstream");
    let input = opa.last_input().expect("an input");
    let header = &input["attributes"]["request"]["http"]["headers"]["x-user-id"];
    assert!(
        header.is_null() || header == "ann",
        "the policy input holds the client's x-user-id {header} (the upstream gets \"ann\"): \
         identity headers are removed from every incoming request, so the policy should \
         see none or the filter's own"
    );
}

#[test]
fn the_policy_input_holds_the_request_and_identity_but_only_the_included_headers() {
    let opa = Opa::start(HTTP_AUTHZ);
    let config = central_config(&opa, "http/authz/allow", json!({}));
    let (_upstream, envoy) = start(&config, Some(&opa));
    let ann = token(
        "ann",
        json!({"scope": "orders:read", "tenant": "acme", "realm_access": {"roles": ["a"]}}),
    );
    let path = "/central/orders/42?expand=items&expand=lines&q=a%20b";
    let response = get(
        &envoy,
        path,
        &ann,
        &[
            ("x-tenant", "acme"),
            ("x-request-id", "req-1"),
            ("cookie", "session=cookie-secret"),
            ("x-api-key", "api-key-secret"),
        ],
    );
    forwarded("allowed", &response);
    assert_eq!(opa.count(), 1);

    let asked = opa.requests().pop().expect("one callout");
    assert_eq!(asked.method, "POST");
    assert_eq!(asked.path(), "/v1/data/http/authz/allow");
    assert_eq!(asked.header("content-type"), Some("application/json"));
    let text = String::from_utf8_lossy(&asked.body).into_owned();
    for secret in [ann.as_str(), "cookie-secret", "api-key-secret", "req-1"] {
        assert!(
            !text.contains(secret),
            "the policy input holds {secret:?}: {text}"
        );
    }
    let input = opa.last_input().expect("an input");
    let http = &input["attributes"]["request"]["http"];
    assert_eq!(http["method"], "GET");
    assert_eq!(http["path"], path);
    assert_eq!(http["host"], format!("127.0.0.1:{}", envoy.port));
    assert_eq!(http["headers"], json!({"x-tenant": "acme"}));
    assert_eq!(input["parsed_path"], json!(["central", "orders", "42"]));
    assert_eq!(
        input["parsed_query"],
        json!({"expand": ["items", "lines"], "q": ["a b"]})
    );
    assert_eq!(input["identity"]["provider"], "corp");
    let claims = &input["identity"]["claims"];
    assert_eq!(claims["sub"], "ann");
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["realm_access"], json!({"roles": ["a"]}));
}
