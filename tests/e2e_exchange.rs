//! End-to-end tests of exchanges (opaque token or session → identity): the release
//! `tokengate.wasm` in a real Envoy (`--concurrency 2`) calling out through the `auth`
//! cluster to a controllable authorization server (`support::auth`) that introspects
//! (RFC 7662, RFC 9701), exchanges (RFC 8693) and looks up sessions, counts what it is
//! asked and fails on command. Run with `make e2e`.
//!
//! Every wait is a poll with a deadline. Each test starts its own auth server and Envoy;
//! every opaque token is unique to its test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::auth::{
    self, Auth, Mode, SessionAnswer, GRANT_TYPE_TOKEN_EXCHANGE, INTROSPECTION_JWT_MEDIA_TYPE,
    INTROSPECT_PATH, SESSIONS_PREFIX, TOKEN_PATH, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT,
};
use support::keepalive::Connection;
use support::keys::KID_ES256;
use support::{client, keys, now, Envoy, Response, Upstream};
use tokengate::crypto::alg::Alg;
use tokengate::crypto::b64;
use tokengate::crypto::sign::{generate_jwk, SigningKey};
use tokengate::token::jwks::KeySet;
use tokengate::token::jwt::{self, Policy};

const REALM: &str = "api";
/// The provider's issuer, and the auth server's.
const ISSUER: &str = "https://auth.example.com/realms/exchange";
const AUDIENCE: &str = "orders";
const CLIENT_ID: &str = "gateway";
const CLIENT_SECRET: &str = "s3cret";
/// The exchange every test configures.
const EXCHANGE: &str = "opaque";
const SESSION_COOKIE: &str = "session";
/// The callout timeout every test configures.
const TIMEOUT_MS: u64 = 500;
const MINT_ISSUER: &str = "https://gateway.internal";
const MINT_AUDIENCE: &str = "internal";
const JWKS_PATH: &str = "/.well-known/tokengate/jwks.json";
const POLL: Duration = Duration::from_millis(50);

// --- set-up ----------------------------------------------------------------------------

/// An auth server signing with the key the provider trusts, expecting the gateway's
/// client credentials.
fn auth_server() -> Auth {
    Auth::start(ISSUER, &keys().es256, CLIENT_ID, CLIENT_SECRET)
}

/// The exchange settings for `mode` against `auth`: the default source (bearer header),
/// the `corp` provider, a 300 s cache, the resulting JWT (if any) as the upstream's
/// bearer token. Session mode reads the `session` cookie and sends no client.
fn exchange(auth: &Auth, mode: &str) -> Value {
    let path = match mode {
        "introspection" | "jwt_introspection" => INTROSPECT_PATH.to_owned(),
        "token_exchange" => TOKEN_PATH.to_owned(),
        "session" => format!("{SESSIONS_PREFIX}{{token}}"),
        other => panic!("no such mode in these tests: {other}"),
    };
    let mut exchange = json!({
        "mode": mode,
        "endpoint": {"uri": auth.uri(&path), "cluster": "auth", "timeout_ms": TIMEOUT_MS},
        "client": {"id": CLIENT_ID, "secret": CLIENT_SECRET},
        "provider": "corp",
        "cache": {"max_secs": 300, "negative_secs": 5, "max_entries": 10000},
        "upstream": {"header": "authorization", "prefix": "Bearer "}
    });
    if mode == "session" {
        exchange["sources"] = json!([{"cookie": SESSION_COOKIE}]);
        exchange.as_object_mut().expect("object").remove("client");
    }
    exchange
}

/// `base` with some members replaced (`null` removes one).
fn with(mut base: Value, changes: Value) -> Value {
    for (name, value) in changes.as_object().expect("changes are an object") {
        let obj = base.as_object_mut().expect("base is an object");
        if value.is_null() {
            obj.remove(name);
        } else {
            obj.insert(name.clone(), value.clone());
        }
    }
    base
}

/// The provider's clock skew in most tests: small, but a signed answer whose `iat` is
/// a second behind the gateway's clock still passes.
const CLOCK_SKEW_SECS: u64 = 5;

/// The document: the `corp` provider (trusting the auth server's key, a small clock
/// skew, forwarding `sub`, `scope`, `client_id` and the payload) and this one exchange;
/// no rules, so one implicit rule takes both.
fn config(exchange: Value) -> Value {
    config_with_skew(exchange, CLOCK_SKEW_SECS)
}

/// [`config`] with the provider's `clock_skew_secs`.
fn config_with_skew(exchange: Value, clock_skew_secs: u64) -> Value {
    json!({
        "realm": REALM,
        "providers": {
            "corp": {
                "issuer": ISSUER,
                "jwks": {"inline": {"keys": [keys().es256.public_jwk()]}},
                "clock_skew_secs": clock_skew_secs,
                "forward": {
                    "payload_header": "x-jwt-payload",
                    "claims": {"sub": "x-user-id", "scope": "x-user-scope", "client_id": "x-client-id"}
                }
            }
        },
        "exchanges": {EXCHANGE: exchange}
    })
}

/// An upstream, and an Envoy in front of it whose `auth` cluster points at `auth`.
fn start(auth: &Auth, config: &Value) -> (Upstream, Envoy) {
    let config = config.to_string();
    // A config mistake in the test itself should say so, not look like an Envoy failure.
    if let Err(e) = tokengate::config::Config::from_json(config.as_bytes()) {
        panic!("the test configuration is invalid: {e}");
    }
    let upstream = Upstream::start();
    let envoy = Envoy::start_with_clusters(&config, upstream.port(), &[("auth", auth.port())])
        .unwrap_or_else(|e| panic!("{e}"));
    (upstream, envoy)
}

// --- tokens ----------------------------------------------------------------------------

/// A random number (std only).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

/// A fresh opaque token (no dots: it never looks like a JWT).
fn opaque(label: &str) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{label}_{:x}_{}_{:016x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst),
        rand_u64()
    )
}

/// The claims the auth server holds for an active token of `sub`, valid 10 minutes.
fn identity(sub: &str) -> Value {
    let now = now();
    json!({
        "sub": sub,
        "scope": "orders:read orders:write",
        "aud": AUDIENCE,
        "client_id": "web-app",
        "iat": now,
        "exp": now + 600
    })
}

/// A fresh token, active at `auth` for `sub`.
fn active_token(auth: &Auth, sub: &str) -> String {
    let token = opaque(sub);
    auth.add_token(&token, &identity(sub));
    token
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The claims of a compact JWS, unverified (for inspection only).
fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = b64::decode(payload.as_bytes()).expect("the payload is base64url");
    serde_json::from_slice(&bytes).expect("the payload is JSON")
}

/// The header of a compact JWS, unverified.
fn jwt_header(token: &str) -> Value {
    let header = token.split('.').next().expect("a JWT has a header");
    let bytes = b64::decode(header.as_bytes()).expect("the header is base64url");
    serde_json::from_slice(&bytes).expect("the header is JSON")
}

/// An ES256 key that is not the auth server's but claims its `kid`: a forged signature
/// under a known key id.
fn impostor_es256() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let jwk = generate_jwk(Alg::ES256, KID_ES256).expect("generate ES256");
        SigningKey::from_jwk(&jwk).expect("load ES256")
    })
}

// --- checks ----------------------------------------------------------------------------

/// Polls `check` until it gives `Ok` or `timeout` passes; then panics with its last
/// `Err` (which should say what was seen).
fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

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

/// The bearer token the upstream received, if any.
fn upstream_bearer(seen: &Value) -> Option<String> {
    seen_header(seen, "authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

/// Nothing the upstream saw (path, headers, body) contains `secret`.
fn assert_not_forwarded(case: &str, seen: &Value, secret: &str) {
    assert!(
        !seen.to_string().contains(secret),
        "{case}: the opaque token / session id reached the upstream: {seen}"
    );
}

/// The request passed as `sub`, with the provider's identity headers, and the
/// credential the client sent never reached the upstream.
fn assert_identity(case: &str, response: &Response, sub: &str, credential: &str) -> Value {
    let seen = forwarded(case, response);
    assert_eq!(
        seen_header(&seen, "x-user-id"),
        Some(sub),
        "{case}: the upstream sees the exchanged subject: {seen}"
    );
    assert_not_forwarded(case, &seen, credential);
    seen
}

fn assert_json_error(case: &str, response: &Response) -> Value {
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{case}: refusals are JSON"
    );
    let body = response.json();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{case}: body needs a non-empty \"error\": {body}"
    );
    body
}

/// Neither the body nor any header of a refusal contains the credential.
fn assert_no_leak(case: &str, response: &Response, credential: &str) {
    let mut everything = response.text();
    for (name, value) in &response.headers {
        everything.push_str(&format!("\n{name}: {value}"));
    }
    assert!(
        !everything.contains(credential),
        "{case}: the refusal contains the credential"
    );
}

/// 401 `invalid_token`: the challenge names the realm and the error, the body is JSON,
/// nothing leaks, and the upstream never saw the request.
fn assert_invalid_token(
    case: &str,
    upstream: &Upstream,
    before: usize,
    response: &Response,
    credential: &str,
) {
    assert_eq!(
        response.status,
        401,
        "{case}: status; headers {:?} body {}",
        response.headers,
        response.text()
    );
    let challenges = response.header_all("www-authenticate");
    let prefix = format!("Bearer realm=\"{REALM}\", error=\"invalid_token\"");
    assert!(
        challenges.len() == 1 && challenges[0].starts_with(&prefix),
        "{case}: WWW-Authenticate should start with {prefix:?}: {challenges:?}"
    );
    let body = assert_json_error(case, response);
    assert_eq!(body["error"], "invalid_token", "{case}: body {body}");
    assert_no_leak(case, response, credential);
    assert_eq!(
        upstream.count(),
        before,
        "{case}: the upstream must never see a refused request"
    );
}

/// 503: no challenge (the client did nothing wrong), a JSON body, nothing leaks, and
/// the upstream never saw the request.
fn assert_unavailable(
    case: &str,
    upstream: &Upstream,
    before: usize,
    response: &Response,
    credential: &str,
) {
    assert_eq!(
        response.status,
        503,
        "{case}: status; headers {:?} body {}",
        response.headers,
        response.text()
    );
    assert_eq!(
        response.header("www-authenticate"),
        None,
        "{case}: a 503 carries no challenge"
    );
    assert_json_error(case, response);
    assert_no_leak(case, response, credential);
    assert_eq!(
        upstream.count(),
        before,
        "{case}: the upstream must never see a refused request"
    );
}

/// `tokengate.exchange.opaque.<name>`.
fn stat(name: &str) -> String {
    format!("tokengate.exchange.{EXCHANGE}.{name}")
}

/// A counter from a stats snapshot (0 if never incremented).
fn counter_in(stats: &std::collections::BTreeMap<String, u64>, name: &str) -> u64 {
    stats
        .get(&format!("wasmcustom.{name}"))
        .or_else(|| stats.get(name))
        .copied()
        .unwrap_or(0)
}

/// The exchange and denial stats, for failure messages.
fn exchange_stats(envoy: &Envoy) -> String {
    envoy
        .stats()
        .into_iter()
        .filter(|(name, _)| name.contains("exchange") || name.contains("denied"))
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn auth_counts(auth: &Auth) -> String {
    format!(
        "auth: introspect={} token={} sessions={} other={}",
        auth.introspect_count(),
        auth.token_count(),
        auth.sessions_count(),
        auth.other_count()
    )
}

/// GET /orders with this bearer token.
fn get_bearer(envoy: &Envoy, token: &str) -> Response {
    envoy.get("/orders", &[("authorization", &bearer(token))])
}

/// GET /orders with this session cookie among others.
fn get_session(envoy: &Envoy, session: &str) -> Response {
    let cookie = format!("theme=dark; {SESSION_COOKIE}={session}; lang=en");
    envoy.get("/orders", &[("cookie", &cookie)])
}

// --- 1. the four modes -----------------------------------------------------------------

#[test]
fn introspection_turns_an_active_opaque_token_into_identity_headers_and_never_forwards_it() {
    let auth = auth_server();
    let mut exchange = exchange(&auth, "introspection");
    exchange["audiences"] = json!([AUDIENCE]);
    let config = with(
        config(exchange),
        json!({"rules": [
            {"name": "corp-only", "match": {"path": {"prefix": "/corp-only"}}, "authn": {"any": ["corp"]}},
            {"name": "api", "match": {}, "authn": {"any": ["corp", EXCHANGE]}}
        ]}),
    );
    let (upstream, envoy) = start(&auth, &config);

    // An active token, with identity headers the client tried to set itself.
    let token = active_token(&auth, "user-1");
    let response = envoy.get(
        "/orders?page=2",
        &[
            ("authorization", &bearer(&token)),
            ("x-user-id", "mallory"),
            ("x-jwt-payload", "forged"),
        ],
    );
    let seen = assert_identity("active token", &response, "user-1", &token);
    assert_eq!(seen["path"], "/orders?page=2");
    assert_eq!(
        seen_header(&seen, "x-user-scope"),
        Some("orders:read orders:write")
    );
    assert_eq!(seen_header(&seen, "x-client-id"), Some("web-app"));
    let payload = seen_header(&seen, "x-jwt-payload").expect("payload header");
    let payload: Value = serde_json::from_slice(
        &b64::decode(payload.as_bytes()).expect("x-jwt-payload is base64url"),
    )
    .expect("x-jwt-payload is JSON");
    assert_eq!(
        payload["sub"], "user-1",
        "the payload header holds the identity: {payload}"
    );

    // What the auth server was asked: one RFC 7662 POST with the gateway's credentials.
    assert_eq!(auth.introspect_count(), 1, "{}", auth_counts(&auth));
    let request = auth.last_request().expect("a request");
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, INTROSPECT_PATH);
    assert!(
        request
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded")),
        "form content type: {:?}",
        request.headers
    );
    let form = request.form().expect("a form body");
    assert_eq!(form.get("token"), Some(&token), "form {form:?}");
    assert_eq!(
        form.get("token_type_hint").map(String::as_str),
        Some("access_token"),
        "form {form:?}"
    );
    assert_eq!(
        request.basic_credentials(),
        Some((CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())),
        "HTTP Basic client authentication: {:?}",
        request.header("authorization")
    );
    assert!(
        !request
            .header("accept")
            .is_some_and(|a| a.contains(INTROSPECTION_JWT_MEDIA_TYPE)),
        "plain introspection does not ask for a signed answer"
    );

    // Inactive, unknown, another audience, another issuer: 401, never upstream.
    let revoked = active_token(&auth, "user-revoked");
    auth.revoke(&revoked);
    let unknown = opaque("unknown");
    let other_aud = opaque("other-aud");
    auth.add_token(
        &other_aud,
        &with(identity("user-aud"), json!({"aud": "billing"})),
    );
    let other_iss = opaque("other-iss");
    auth.add_token(
        &other_iss,
        &with(
            identity("user-iss"),
            json!({"iss": "https://evil.example.com"}),
        ),
    );
    for (case, credential) in [
        ("revoked token", &revoked),
        ("unknown token", &unknown),
        ("identity for another audience", &other_aud),
        ("identity from another issuer", &other_iss),
    ] {
        let before = upstream.count();
        let response = get_bearer(&envoy, credential);
        assert_invalid_token(case, &upstream, before, &response, credential);
        assert_eq!(auth.times_asked(credential), 1, "{case}: one introspection");
    }

    // A token shaped like a JWT goes to the providers only, even one the auth server
    // would call active.
    let jwt_shaped = "abc.def.ghi";
    auth.add_token(jwt_shaped, &identity("user-shaped"));
    let before = upstream.count();
    let response = get_bearer(&envoy, jwt_shaped);
    assert_invalid_token("JWT-shaped token", &upstream, before, &response, jwt_shaped);
    let now = now();
    let provider_jwt = keys()
        .es256
        .sign(&json!({"iss": ISSUER, "sub": "jwt-user", "iat": now, "exp": now + 600}))
        .expect("signing");
    assert_identity(
        "a provider JWT on the same route",
        &get_bearer(&envoy, &provider_jwt),
        "jwt-user",
        &provider_jwt,
    );
    assert_eq!(auth.times_asked(jwt_shaped), 0, "JWT-shaped: no callout");
    assert_eq!(
        auth.times_asked(&provider_jwt),
        0,
        "provider JWT: no callout"
    );

    // A rule without the exchange doesn't exchange.
    let before = upstream.count();
    let asked = auth.total_count();
    let response = envoy.get("/corp-only/x", &[("authorization", &bearer(&token))]);
    assert_invalid_token(
        "opaque token on a providers-only rule",
        &upstream,
        before,
        &response,
        &token,
    );
    assert_eq!(auth.total_count(), asked, "{}", auth_counts(&auth));

    let stats = envoy.stats();
    assert!(
        counter_in(&stats, &stat("miss")) >= 1,
        "{}",
        exchange_stats(&envoy)
    );
    assert!(
        counter_in(&stats, &stat("inactive")) >= 2,
        "revoked and unknown are inactive: {}",
        exchange_stats(&envoy)
    );
    assert_eq!(
        counter_in(&stats, &stat("callout_failure")),
        0,
        "{}",
        exchange_stats(&envoy)
    );
}

#[test]
fn jwt_introspection_answer_is_verified_with_the_provider_and_its_claims_forwarded() {
    let auth = auth_server();
    let (upstream, envoy) = start(&auth, &config(exchange(&auth, "jwt_introspection")));

    let token = active_token(&auth, "user-9701");
    assert_identity(
        "active token, signed answer",
        &get_bearer(&envoy, &token),
        "user-9701",
        &token,
    );
    let request = auth.last_request().expect("a request");
    assert_eq!(request.target, INTROSPECT_PATH);
    assert!(
        request
            .header("accept")
            .is_some_and(|a| a.contains(INTROSPECTION_JWT_MEDIA_TYPE)),
        "RFC 9701 asks with Accept: {INTROSPECTION_JWT_MEDIA_TYPE}: {:?}",
        request.headers
    );
    assert_eq!(
        request.form().and_then(|mut f| f.remove("token")),
        Some(token.clone())
    );
    assert_eq!(
        request.basic_credentials(),
        Some((CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned()))
    );
    let answer = auth.last_issued().expect("a signed answer");
    assert_eq!(
        jwt_header(&answer)["typ"],
        "token-introspection+jwt",
        "the server really answered RFC 9701"
    );

    let revoked = active_token(&auth, "user-9701-revoked");
    auth.revoke(&revoked);
    let before = upstream.count();
    let response = get_bearer(&envoy, &revoked);
    assert_invalid_token(
        "signed active:false",
        &upstream,
        before,
        &response,
        &revoked,
    );
}

#[test]
fn jwt_introspection_answer_failing_rfc_9701_checks_is_never_accepted() {
    let k = keys();
    let auth = auth_server();
    let (upstream, envoy) = start(&auth, &config(exchange(&auth, "jwt_introspection")));
    let token = active_token(&auth, "baseline");
    assert_identity("baseline", &get_bearer(&envoy, &token), "baseline", &token);

    type Fault = fn(&Auth);
    let faults: [(&str, Fault); 8] = [
        ("signed by a key the provider doesn't have", |a| {
            a.set_signing_key(&keys().stranger)
        }),
        ("signed by another key under the provider's kid", |a| {
            a.set_signing_key(impostor_es256())
        }),
        ("typ JWT", |a| a.set_introspection_typ("JWT")),
        ("typ at+jwt", |a| a.set_introspection_typ("at+jwt")),
        ("aud another client", |a| {
            a.set_introspection_aud(Some("someone-else"))
        }),
        ("iss another issuer", |a| {
            a.set_introspection_iss(Some("https://evil.example.com"))
        }),
        ("iat an hour old", |a| a.set_introspection_iat_offset(-3600)),
        ("iat an hour ahead", |a| {
            a.set_introspection_iat_offset(3600)
        }),
    ];
    for (case, fault) in faults {
        fault(&auth);
        let token = active_token(&auth, "forged");
        let before = upstream.count();
        let asked = auth.introspect_count();
        let response = get_bearer(&envoy, &token);
        assert!(
            response.status == 503 || response.status == 401,
            "{case}: a signed answer failing RFC 9701's checks must be refused (the contract \
             says 503); got {} {}",
            response.status,
            response.text()
        );
        if response.status == 503 {
            assert_unavailable(case, &upstream, before, &response, &token);
        } else {
            eprintln!("{case}: refused with 401 (the contract says 503)");
            assert_invalid_token(case, &upstream, before, &response, &token);
        }
        assert!(
            auth.introspect_count() > asked,
            "{case}: the answer was asked for: {}",
            auth_counts(&auth)
        );
        // Undo the fault: a fresh token passes again.
        auth.set_signing_key(&k.es256);
        auth.set_introspection_typ(auth::INTROSPECTION_JWT_TYP);
        auth.set_introspection_aud(None);
        auth.set_introspection_iss(None);
        auth.set_introspection_iat_offset(0);
        let good = active_token(&auth, "after-fault");
        assert_identity(
            &format!("after {case}"),
            &get_bearer(&envoy, &good),
            "after-fault",
            &good,
        );
    }
}

#[test]
fn token_exchange_forwards_the_exchanged_jwt_and_asks_for_the_configured_audience_resource_and_scope(
) {
    let auth = auth_server();
    let resource = "https://orders.internal/api";
    let exchange = with(
        exchange(&auth, "token_exchange"),
        json!({"token_exchange": {"audience": AUDIENCE, "resource": resource, "scope": "read"}}),
    );
    let (_upstream, envoy) = start(&auth, &config(exchange));

    let token = active_token(&auth, "user-8693");
    let seen = assert_identity(
        "active token",
        &get_bearer(&envoy, &token),
        "user-8693",
        &token,
    );
    let issued = auth.last_issued().expect("the server issued a JWT");
    assert_eq!(
        upstream_bearer(&seen).as_deref(),
        Some(issued.as_str()),
        "the upstream gets the exchanged JWT as its bearer token: {seen}"
    );
    assert_eq!(jwt_claims(&issued)["aud"], AUDIENCE);

    assert_eq!(auth.token_count(), 1, "{}", auth_counts(&auth));
    let request = auth.last_request().expect("a request");
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, TOKEN_PATH);
    assert_eq!(
        request.basic_credentials(),
        Some((CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned()))
    );
    let form = auth.last_form();
    let field = |name: &str| form.get(name).map(String::as_str);
    assert_eq!(
        field("grant_type"),
        Some(GRANT_TYPE_TOKEN_EXCHANGE),
        "{form:?}"
    );
    assert_eq!(field("subject_token"), Some(token.as_str()), "{form:?}");
    assert_eq!(
        field("subject_token_type"),
        Some(TOKEN_TYPE_ACCESS_TOKEN),
        "{form:?}"
    );
    assert_eq!(
        field("requested_token_type"),
        Some(TOKEN_TYPE_JWT),
        "{form:?}"
    );
    assert_eq!(field("audience"), Some(AUDIENCE), "{form:?}");
    assert_eq!(field("resource"), Some(resource), "{form:?}");
    assert_eq!(field("scope"), Some("read"), "{form:?}");

    // Again: the cached exchange, the same JWT, no second callout.
    let seen = assert_identity(
        "the same token again",
        &get_bearer(&envoy, &token),
        "user-8693",
        &token,
    );
    assert_eq!(upstream_bearer(&seen).as_deref(), Some(issued.as_str()));
    assert_eq!(auth.token_count(), 1, "{}", auth_counts(&auth));
}

#[test]
fn token_exchange_invalid_grant_is_401_invalid_token() {
    let auth = auth_server();
    let (upstream, envoy) = start(&auth, &config(exchange(&auth, "token_exchange")));
    let revoked = active_token(&auth, "user-gone");
    auth.revoke(&revoked);
    for (case, credential) in [
        ("unknown token", opaque("unknown")),
        ("revoked token", revoked),
    ] {
        let before = upstream.count();
        let asked = auth.token_count();
        let response = get_bearer(&envoy, &credential);
        assert_invalid_token(case, &upstream, before, &response, &credential);
        assert_eq!(
            auth.token_count(),
            asked + 1,
            "{case}: {}",
            auth_counts(&auth)
        );
    }
    let token = active_token(&auth, "user-fine");
    assert_identity(
        "active token",
        &get_bearer(&envoy, &token),
        "user-fine",
        &token,
    );
}

#[test]
fn session_cookie_is_exchanged_whether_the_answer_is_a_jwt_body_a_bearer_header_or_json_claims() {
    let auth = auth_server();
    let (_upstream, envoy) = start(&auth, &config(exchange(&auth, "session")));

    let shapes = [
        SessionAnswer::JwtBody,
        SessionAnswer::BearerHeader,
        SessionAnswer::JsonClaims,
    ];
    for (i, shape) in shapes.into_iter().enumerate() {
        auth.set_session_answer(shape);
        // Cookie-safe characters that must be percent-encoded in a path segment ('/'),
        // or that mean something in a form ('+', '=').
        let session = format!("s/{:016x}+{i}==", rand_u64());
        let sub = format!("sess-user-{i}");
        auth.add_token(&session, &identity(&sub));
        let case = format!("{shape:?}");
        let asked = auth.sessions_count();
        let seen = assert_identity(&case, &get_session(&envoy, &session), &sub, &session);
        assert_eq!(
            seen_header(&seen, "cookie"),
            Some("theme=dark; lang=en"),
            "{case}: the session cookie is removed, the others stay"
        );
        assert_eq!(
            auth.sessions_count(),
            asked + 1,
            "{case}: {}",
            auth_counts(&auth)
        );
        let request = auth.last_request().expect("a request");
        assert_eq!(request.method, "GET", "{case}");
        // The server decodes one path segment: a '/' left raw would split it.
        let segment = request
            .target
            .strip_prefix(SESSIONS_PREFIX)
            .unwrap_or_else(|| panic!("{case}: target {}", request.target));
        assert_eq!(
            auth::percent_decode(segment, false).as_deref(),
            Some(session.as_str()),
            "{case}: the session id percent-encoded as one path segment: {}",
            request.target
        );
        assert_eq!(
            auth.times_asked(&session),
            1,
            "{case}: the server found the session"
        );
        if shape != SessionAnswer::JsonClaims {
            let issued = auth.last_issued().expect("a session JWT");
            assert_eq!(
                upstream_bearer(&seen).as_deref(),
                Some(issued.as_str()),
                "{case}: the session's JWT goes upstream: {seen}"
            );
        }
    }
}

#[test]
fn unknown_session_is_401_whether_the_session_endpoint_says_404_or_401() {
    let auth = auth_server();
    let (upstream, envoy) = start(&auth, &config(exchange(&auth, "session")));

    for status in [404, 401] {
        auth.set_unknown_session_status(status);
        let unknown = opaque("nosession");
        let before = upstream.count();
        let response = get_session(&envoy, &unknown);
        let case = format!("unknown session, endpoint says {status}");
        assert_invalid_token(&case, &upstream, before, &response, &unknown);
        assert_eq!(auth.times_asked(&unknown), 1, "{case}");

        let revoked = opaque("revoked");
        auth.add_token(&revoked, &identity("gone"));
        auth.revoke(&revoked);
        let before = upstream.count();
        let response = get_session(&envoy, &revoked);
        let case = format!("revoked session, endpoint says {status}");
        assert_invalid_token(&case, &upstream, before, &response, &revoked);
    }

    // No cookie at all: the bare challenge, nothing asked.
    let asked = auth.total_count();
    let before = upstream.count();
    let response = envoy.get("/orders", &[("cookie", "theme=dark")]);
    assert_eq!(response.status, 401, "no session: {}", response.text());
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![format!("Bearer realm=\"{REALM}\"").as_str()],
        "no session: a bare challenge"
    );
    assert_eq!(upstream.count(), before);
    assert_eq!(auth.total_count(), asked, "{}", auth_counts(&auth));
}

#[test]
fn identity_and_upstream_headers_sent_by_the_client_never_reach_the_upstream() {
    const JWT_HEADER: &str = "x-internal-jwt";
    let auth = auth_server();
    let exchange = with(
        exchange(&auth, "token_exchange"),
        json!({"upstream": {"header": JWT_HEADER}}),
    );
    let config = with(
        config(exchange),
        json!({"rules": [
            {"name": "public", "match": {"path": {"prefix": "/public"}}, "allow": "anonymous"},
            {"name": "api", "match": {}, "authn": {"any": [EXCHANGE]}}
        ]}),
    );
    let (_upstream, envoy) = start(&auth, &config);
    let spoofed = [
        (JWT_HEADER, "forged-jwt"),
        ("x-user-id", "mallory"),
        ("x-jwt-payload", "forged-payload"),
    ];

    let seen = forwarded("anonymous route", &envoy.get("/public/page", &spoofed));
    for (name, _) in spoofed {
        assert_eq!(
            seen_header(&seen, name),
            None,
            "anonymous route: {name} from the client must be stripped: {seen}"
        );
    }

    let token = active_token(&auth, "user-spoof");
    let mut headers = spoofed.to_vec();
    let authorization = bearer(&token);
    headers.push(("authorization", &authorization));
    let seen = assert_identity(
        "authenticated route",
        &envoy.get("/orders", &headers),
        "user-spoof",
        &token,
    );
    let issued = auth.last_issued().expect("an exchanged JWT");
    assert_eq!(
        seen_header(&seen, JWT_HEADER),
        Some(issued.as_str()),
        "the exchanged JWT, without a prefix, replaces the client's value: {seen}"
    );
    assert!(
        !seen.to_string().contains("forged"),
        "nothing the client forged reaches the upstream: {seen}"
    );
}

// --- 2. minted tokens ------------------------------------------------------------------

/// A private JWK for `mint.key`.
fn mint_key(alg: Alg, kid: &str) -> Value {
    generate_jwk(alg, kid).unwrap_or_else(|e| panic!("generate {alg} key: {e}"))
}

fn mint(alg: Alg, key: &Value, ttl_secs: u64) -> Value {
    json!({
        "issuer": MINT_ISSUER,
        "alg": alg.name(),
        "key": key,
        "ttl_secs": ttl_secs,
        "audience": MINT_AUDIENCE,
        "jwks_path": JWKS_PATH
    })
}

/// GETs the filter's JWKS (no token: the filter answers it before any rule), checks it
/// holds only public keys, and returns it with the key of `kid`.
fn served_jwks(envoy: &Envoy, upstream: &Upstream, kid: &str) -> (Value, Value) {
    let before = upstream.count();
    let response = envoy.get(JWKS_PATH, &[]);
    assert_eq!(
        response.status,
        200,
        "GET {JWKS_PATH}: {:?} {}",
        response.headers,
        response.text()
    );
    assert!(
        response.header("content-type").is_some_and(
            |t| t.starts_with("application/json") || t.starts_with("application/jwk-set+json")
        ),
        "JWKS content type: {:?}",
        response.header("content-type")
    );
    assert_eq!(
        upstream.count(),
        before,
        "the filter answers its JWKS itself"
    );
    let jwks = response.json();
    let list = jwks["keys"].as_array().expect("a \"keys\" array");
    for key in list {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(
                key.get(private).is_none(),
                "the served JWKS must hold public keys only: {key}"
            );
        }
    }
    let key = list
        .iter()
        .find(|key| key["kid"] == kid)
        .unwrap_or_else(|| panic!("no key {kid} in the served JWKS: {jwks}"))
        .clone();
    (jwks, key)
}

/// Verifies a minted token with tokengate's verifier against the served JWKS and
/// returns its claims.
fn verify_with_tokengate(token: &str, jwks: &Value, alg: Alg) -> Value {
    let set = KeySet::from_value(jwks)
        .unwrap_or_else(|e| panic!("the served JWKS does not parse: {e}: {jwks}"))
        .set;
    let policy = Policy {
        issuer: MINT_ISSUER.to_owned(),
        audiences: vec![MINT_AUDIENCE.to_owned()],
        algorithms: vec![alg],
        token_types: None,
        clock_skew_secs: 5,
        require_exp: true,
        max_token_bytes: 16 * 1024,
    };
    let now = u64::try_from(now()).expect("time after the epoch");
    let verified = jwt::verify(token, &policy, &set, now)
        .unwrap_or_else(|e| panic!("tokengate refuses the minted token: {e:?}"));
    Value::Object(verified.claims)
}

fn jwt_simple_options() -> jwt_simple::prelude::VerificationOptions {
    jwt_simple::prelude::VerificationOptions {
        allowed_issuers: Some(HashSet::from([MINT_ISSUER.to_owned()])),
        allowed_audiences: Some(HashSet::from([MINT_AUDIENCE.to_owned()])),
        time_tolerance: Some(jwt_simple::prelude::Duration::from_secs(5)),
        ..Default::default()
    }
}

/// The minted token's claims: issuer, audience, subject, and an expiry within both the
/// identity's `exp` and the mint's `ttl_secs` (counted from `after`, a time taken once
/// the response was in).
fn assert_minted_claims(
    case: &str,
    claims: &Value,
    sub: &str,
    identity_exp: i64,
    ttl: i64,
    after: i64,
) {
    assert_eq!(claims["iss"], MINT_ISSUER, "{case}: {claims}");
    let aud_ok = claims["aud"] == MINT_AUDIENCE
        || claims["aud"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == MINT_AUDIENCE));
    assert!(aud_ok, "{case}: aud {MINT_AUDIENCE}: {claims}");
    assert_eq!(claims["sub"], sub, "{case}: {claims}");
    let exp = claims["exp"].as_i64().expect("a numeric exp");
    assert!(
        exp <= identity_exp,
        "{case}: the minted token outlives the identity: exp {exp} > {identity_exp}"
    );
    assert!(
        exp <= after + ttl,
        "{case}: the minted token outlives ttl_secs {ttl}: exp {exp} > now {after} + {ttl}"
    );
    assert!(exp > after - 5, "{case}: minted already expired: {claims}");
}

#[test]
fn minted_es256_token_verifies_against_the_jwks_the_filter_serves() {
    use jwt_simple::prelude::{ECDSAP256PublicKeyLike, ES256PublicKey, NoCustomClaims};
    const TTL: i64 = 60;
    let auth = auth_server();
    let kid = format!("mint-es256-{:x}", rand_u64());
    let key = mint_key(Alg::ES256, &kid);
    let exchange = with(
        exchange(&auth, "introspection"),
        json!({"mint": mint(Alg::ES256, &key, TTL as u64)}),
    );
    let (upstream, envoy) = start(&auth, &config(exchange));
    let (jwks, public) = served_jwks(&envoy, &upstream, &kid);

    // The identity outlives the ttl: the ttl bounds the minted token.
    let token = opaque("mint");
    let identity_exp = now() + 600;
    auth.add_token(
        &token,
        &with(identity("user-mint"), json!({"exp": identity_exp})),
    );
    let seen = assert_identity(
        "long-lived identity",
        &get_bearer(&envoy, &token),
        "user-mint",
        &token,
    );
    let after = now();
    let minted = upstream_bearer(&seen).expect("a minted bearer token upstream");
    let header = jwt_header(&minted);
    assert_eq!(header["alg"], "ES256", "{header}");
    assert_eq!(header["kid"], kid.as_str(), "{header}");
    let claims = verify_with_tokengate(&minted, &jwks, Alg::ES256);
    assert_minted_claims(
        "long-lived identity",
        &claims,
        "user-mint",
        identity_exp,
        TTL,
        after,
    );
    let pk = ES256PublicKey::from_jwk(&public.to_string())
        .unwrap_or_else(|e| panic!("jwt-simple refuses the served key: {e}: {public}"));
    let checked = pk
        .verify_token::<NoCustomClaims>(&minted, Some(jwt_simple_options()))
        .unwrap_or_else(|e| panic!("jwt-simple refuses the minted token: {e}"));
    assert_eq!(checked.subject.as_deref(), Some("user-mint"));

    // The identity expires before the ttl: the identity bounds the minted token.
    let short = opaque("short");
    let short_exp = now() + 20;
    auth.add_token(
        &short,
        &with(identity("user-short"), json!({"exp": short_exp})),
    );
    let seen = assert_identity(
        "short-lived identity",
        &get_bearer(&envoy, &short),
        "user-short",
        &short,
    );
    let after = now();
    let minted = upstream_bearer(&seen).expect("a minted bearer token upstream");
    let claims = verify_with_tokengate(&minted, &jwks, Alg::ES256);
    assert_minted_claims(
        "short-lived identity",
        &claims,
        "user-short",
        short_exp,
        TTL,
        after,
    );
    pk.verify_token::<NoCustomClaims>(&minted, Some(jwt_simple_options()))
        .unwrap_or_else(|e| panic!("jwt-simple refuses the short minted token: {e}"));

    // A key that isn't the mint's doesn't verify it: the check means something.
    let stranger = keys().stranger.public_jwk();
    let stranger_set = json!({"keys": [with(stranger, json!({"kid": kid}))]});
    let set = KeySet::from_value(&stranger_set).expect("parse").set;
    let policy = Policy {
        issuer: MINT_ISSUER.to_owned(),
        audiences: vec![],
        algorithms: vec![Alg::ES256],
        token_types: None,
        clock_skew_secs: 5,
        require_exp: true,
        max_token_bytes: 16 * 1024,
    };
    assert!(jwt::verify(&minted, &policy, &set, now() as u64).is_err());
}

#[test]
fn minted_eddsa_token_from_a_session_verifies_against_the_jwks_the_filter_serves() {
    use jwt_simple::prelude::{Ed25519PublicKey, EdDSAPublicKeyLike, NoCustomClaims};
    const TTL: i64 = 300;
    let auth = auth_server();
    let kid = format!("mint-ed-{:x}", rand_u64());
    let key = mint_key(Alg::EdDSA, &kid);
    let exchange = with(
        exchange(&auth, "session"),
        json!({"mint": mint(Alg::EdDSA, &key, TTL as u64)}),
    );
    let (upstream, envoy) = start(&auth, &config(exchange));
    let (jwks, public) = served_jwks(&envoy, &upstream, &kid);

    let session = opaque("sess");
    let identity_exp = now() + 120;
    auth.add_token(
        &session,
        &with(identity("user-ed"), json!({"exp": identity_exp})),
    );
    let seen = assert_identity(
        "session",
        &get_session(&envoy, &session),
        "user-ed",
        &session,
    );
    let after = now();
    let minted = upstream_bearer(&seen).expect("a minted bearer token upstream");
    assert_ne!(
        Some(&minted),
        auth.last_issued().as_ref(),
        "the gateway's own token goes upstream, not the session JWT"
    );
    assert_eq!(jwt_header(&minted)["alg"], "EdDSA");
    let claims = verify_with_tokengate(&minted, &jwks, Alg::EdDSA);
    assert_minted_claims("session", &claims, "user-ed", identity_exp, TTL, after);
    let pk = Ed25519PublicKey::from_jwk(&public.to_string())
        .unwrap_or_else(|e| panic!("jwt-simple refuses the served key: {e}: {public}"));
    let checked = pk
        .verify_token::<NoCustomClaims>(&minted, Some(jwt_simple_options()))
        .unwrap_or_else(|e| panic!("jwt-simple refuses the minted token: {e}"));
    assert_eq!(checked.subject.as_deref(), Some("user-ed"));
}

// --- 3. cache --------------------------------------------------------------------------

/// The introspection exchange with these cache settings.
fn cached_config(auth: &Auth, cache: Value) -> Value {
    config(with(
        exchange(auth, "introspection"),
        json!({"cache": cache}),
    ))
}

#[test]
fn one_opaque_token_costs_one_callout_for_100_sequential_requests() {
    let auth = auth_server();
    let (upstream, envoy) = start(&auth, &config(exchange(&auth, "introspection")));
    let token = active_token(&auth, "user-100");
    // Each request on its own connection: the kernel spreads them over both workers.
    for i in 0..100 {
        assert_identity(
            &format!("request {i}"),
            &get_bearer(&envoy, &token),
            "user-100",
            &token,
        );
    }
    assert_eq!(upstream.count(), 100);
    assert_eq!(
        auth.introspect_count(),
        1,
        "one callout for every worker; {} {}",
        auth_counts(&auth),
        exchange_stats(&envoy)
    );
    let stats = envoy.stats();
    let (hit, miss) = (
        counter_in(&stats, &stat("hit")),
        counter_in(&stats, &stat("miss")),
    );
    assert!(
        (1..=2).contains(&miss) && hit >= 98,
        "100 requests, one token: hit={hit} miss={miss}"
    );
}

#[test]
fn fifty_concurrent_first_requests_with_one_token_share_at_most_two_callouts() {
    const REQUESTS: usize = 50;
    let auth = auth_server();
    // Slow answers keep the first callout in flight while the others arrive.
    auth.set_delay(Duration::from_millis(250));
    let (upstream, envoy) = start(&auth, &config(exchange(&auth, "introspection")));
    let token = active_token(&auth, "user-50");
    let barrier = Arc::new(Barrier::new(REQUESTS));
    let port = envoy.port;
    let threads: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let barrier = barrier.clone();
            let header = bearer(&token);
            std::thread::spawn(move || {
                barrier.wait();
                client::request(port, "GET", "/orders", &[("authorization", &header)], b"")
            })
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        let response = thread
            .join()
            .expect("request thread")
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_identity(&format!("request {i}"), &response, "user-50", &token);
    }
    assert_eq!(upstream.count(), REQUESTS);
    assert!(
        auth.introspect_count() <= 2,
        "{REQUESTS} concurrent requests with one token share callouts; {} {}",
        auth_counts(&auth),
        exchange_stats(&envoy)
    );
}

#[test]
fn cached_identity_is_refused_once_its_exp_passes_despite_a_300_s_cache() {
    let auth = auth_server();
    // The server keeps calling the token active: only the gateway can notice the expiry.
    auth.set_honor_exp(false);
    // No clock skew: the identity is refused the second its exp passes.
    let exchange = with(
        exchange(&auth, "introspection"),
        json!({"cache": {"max_secs": 300, "negative_secs": 5}}),
    );
    let (upstream, envoy) = start(&auth, &config_with_skew(exchange, 0));
    let token = opaque("short");
    let exp = now() + 3;
    auth.add_token(&token, &with(identity("user-exp"), json!({"exp": exp})));
    assert_identity(
        "before exp",
        &get_bearer(&envoy, &token),
        "user-exp",
        &token,
    );
    let refused = eventually(
        "a refusal after the identity's exp",
        Duration::from_secs(8),
        || {
            let before = upstream.count();
            let sent = now();
            let response = get_bearer(&envoy, &token);
            match response.status {
                200 if sent < exp => Err(format!("200 at {sent}, before exp {exp}")),
                200 => Err(format!(
                    "still 200 at {sent}, exp {exp} passed ({} callouts)",
                    auth.introspect_count()
                )),
                401 => {
                    assert!(
                        sent + 1 >= exp,
                        "refused at {sent}, before exp {exp}: {}",
                        response.text()
                    );
                    Ok((response, before))
                }
                other => panic!("unexpected {other} {}", response.text()),
            }
        },
    );
    let (response, before) = refused;
    assert_invalid_token("after exp", &upstream, before, &response, &token);
    assert!(now() <= exp + 3, "refused only at {}, exp was {exp}", now());
    for i in 0..5 {
        let before = upstream.count();
        let response = get_bearer(&envoy, &token);
        assert_invalid_token(
            &format!("after exp, request {i}"),
            &upstream,
            before,
            &response,
            &token,
        );
    }
    eprintln!(
        "exp test: {} introspection(s) in all",
        auth.introspect_count()
    );
}

#[test]
fn revoked_token_is_refused_once_its_cache_entry_expires() {
    const MAX_SECS: u64 = 2;
    let auth = auth_server();
    let (upstream, envoy) = start(
        &auth,
        &cached_config(&auth, json!({"max_secs": MAX_SECS, "negative_secs": 5})),
    );
    let token = active_token(&auth, "user-rev");
    assert_identity(
        "before revocation",
        &get_bearer(&envoy, &token),
        "user-rev",
        &token,
    );
    auth.revoke(&token);
    let revoked_at = Instant::now();
    let (response, before) = eventually(
        "a refusal after revocation",
        Duration::from_secs(MAX_SECS + 6),
        || {
            let before = upstream.count();
            let response = get_bearer(&envoy, &token);
            match response.status {
                200 => Err(format!(
                    "still 200 after {:?} ({} introspections)",
                    revoked_at.elapsed(),
                    auth.introspect_count()
                )),
                401 => Ok((response, before)),
                other => panic!("unexpected {other} {}", response.text()),
            }
        },
    );
    let took = revoked_at.elapsed();
    assert_invalid_token("after revocation", &upstream, before, &response, &token);
    assert!(
        took <= Duration::from_secs(MAX_SECS) + Duration::from_millis(1500),
        "the revoked token passed for {took:?}, max_secs is {MAX_SECS}"
    );
    // The refusal is cached: no callout per request.
    let asked = auth.times_asked(&token);
    for i in 0..5 {
        let before = upstream.count();
        let response = get_bearer(&envoy, &token);
        assert_invalid_token(
            &format!("revoked, request {i}"),
            &upstream,
            before,
            &response,
            &token,
        );
    }
    assert!(
        auth.times_asked(&token) <= asked + 1,
        "negative answers are cached: {} introspections of the token",
        auth.times_asked(&token)
    );
    assert!(
        envoy.counter(&stat("inactive")) >= 1,
        "{}",
        exchange_stats(&envoy)
    );
}

#[test]
fn unknown_token_is_cached_negatively_for_negative_secs() {
    const NEGATIVE_SECS: u64 = 2;
    let auth = auth_server();
    let (upstream, envoy) = start(
        &auth,
        &cached_config(
            &auth,
            json!({"max_secs": 300, "negative_secs": NEGATIVE_SECS}),
        ),
    );
    let token = opaque("late");
    let first = Instant::now();
    for i in 0..5 {
        let before = upstream.count();
        let response = get_bearer(&envoy, &token);
        assert_invalid_token(
            &format!("unknown, request {i}"),
            &upstream,
            before,
            &response,
            &token,
        );
    }
    assert_eq!(
        auth.times_asked(&token),
        1,
        "one introspection for five requests; {}",
        auth_counts(&auth)
    );
    // The token becomes valid at the server; the negative entry holds until it expires.
    auth.add_token(&token, &identity("user-late"));
    if first.elapsed() < Duration::from_millis(1500) {
        let before = upstream.count();
        let response = get_bearer(&envoy, &token);
        assert_invalid_token(
            "still negatively cached",
            &upstream,
            before,
            &response,
            &token,
        );
    }
    let response = eventually(
        "the token accepted once the negative entry expired",
        Duration::from_secs(NEGATIVE_SECS + 5),
        || {
            let response = get_bearer(&envoy, &token);
            match response.status {
                200 => Ok(response),
                401 => Err(format!("401 after {:?}", first.elapsed())),
                other => panic!("unexpected {other} {}", response.text()),
            }
        },
    );
    assert_identity("after negative_secs", &response, "user-late", &token);
    assert!(
        // Whole seconds: an entry stored late in a second may go up to 1 s early.
        first.elapsed() >= Duration::from_secs(NEGATIVE_SECS - 1),
        "the negative entry lasted only {:?}",
        first.elapsed()
    );
    let stats = envoy.stats();
    assert!(
        counter_in(&stats, &stat("negative_hit")) >= 3,
        "repeats of an unknown token are negative hits: {}",
        exchange_stats(&envoy)
    );
    assert!(counter_in(&stats, &stat("inactive")) >= 1);
}

#[test]
fn distinct_tokens_in_flight_together_are_each_answered_even_when_they_share_cache_slots() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 15;
    let auth = Arc::new(auth_server());
    // A little latency keeps several callouts in flight at once.
    auth.set_delay(Duration::from_millis(20));
    // Two entries for eight tokens at a time: answers must not depend on their slot.
    let (upstream, envoy) = start(
        &auth,
        &cached_config(
            &auth,
            json!({"max_secs": 300, "negative_secs": 5, "max_entries": 2}),
        ),
    );
    let barrier = Arc::new(Barrier::new(THREADS));
    let port = envoy.port;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let auth = auth.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut connection = Connection::new(port);
                let mut results = Vec::new();
                for i in 0..PER_THREAD {
                    let sub = format!("user-{t}-{i}");
                    let token = active_token(&auth, &sub);
                    let response = connection
                        .get("/orders", &[("authorization", &bearer(&token))])
                        .unwrap_or_else(|e| panic!("request {t}/{i}: {e}"));
                    results.push((sub, token, response));
                }
                results
            })
        })
        .collect();
    let mut results = Vec::new();
    for thread in threads {
        results.extend(thread.join().expect("request thread"));
    }
    let mut statuses = std::collections::BTreeMap::new();
    for (_, _, response) in &results {
        *statuses.entry(response.status).or_insert(0usize) += 1;
    }
    let odd = results.iter().find(|(_, _, r)| r.status != 200);
    assert!(
        odd.is_none(),
        "every active token is let through while the auth service is healthy; statuses \
         {statuses:?}; first other: {:?}; {} {}",
        odd.map(|(_, _, r)| r.text()),
        auth_counts(&auth),
        exchange_stats(&envoy)
    );
    for (sub, token, response) in &results {
        assert_identity(sub, response, sub, token);
    }
    assert_eq!(upstream.count(), THREADS * PER_THREAD);
}

/// The admin's `/memory` `allocated` bytes (informational).
fn allocated(envoy: &Envoy) -> Option<u64> {
    let response = client::request(envoy.admin_port, "GET", "/memory", &[], b"").ok()?;
    let body: Value = serde_json::from_slice(&response.body).ok()?;
    body["allocated"].as_str()?.parse().ok()
}

#[test]
fn a_thousand_distinct_unknown_tokens_leave_the_cache_bounded_and_the_filter_answering() {
    const TOKENS: usize = 1000;
    const THREADS: usize = 4;
    const MAX_ENTRIES: usize = 16;
    let auth = auth_server();
    // Negative entries outlive the test: only max_entries can make one go.
    let (upstream, envoy) = start(
        &auth,
        &cached_config(
            &auth,
            json!({"max_secs": 300, "negative_secs": 300, "max_entries": MAX_ENTRIES}),
        ),
    );
    let valid = active_token(&auth, "user-flood");
    assert_identity("before", &get_bearer(&envoy, &valid), "user-flood", &valid);
    let memory_before = allocated(&envoy);

    let begun = Instant::now();
    let port = envoy.port;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut connection = Connection::new(port);
                let mut results = Vec::new();
                for i in 0..TOKENS / THREADS {
                    let token = opaque(&format!("flood{t}x{i}"));
                    let response = connection
                        .get("/orders", &[("authorization", &bearer(&token))])
                        .unwrap_or_else(|e| panic!("flood request {t}/{i}: {e}"));
                    results.push((token, response));
                }
                results
            })
        })
        .collect();
    let mut flood = Vec::new();
    for thread in threads {
        flood.extend(thread.join().expect("flood thread"));
    }
    let elapsed = begun.elapsed();
    assert_eq!(flood.len(), TOKENS);
    let mut statuses = std::collections::BTreeMap::new();
    for (_, response) in &flood {
        *statuses.entry(response.status).or_insert(0usize) += 1;
    }
    let odd = flood.iter().position(|(_, r)| r.status != 401);
    assert!(
        odd.is_none(),
        "every unknown token gets 401; statuses {statuses:?}, first other (#{odd:?}): {:?}; {} {}",
        odd.map(|i| flood[i].1.text()),
        auth_counts(&auth),
        exchange_stats(&envoy)
    );
    for (i, (token, response)) in flood.iter().enumerate() {
        assert_invalid_token(&format!("unknown token {i}"), &upstream, 1, response, token);
    }
    let asked: HashSet<String> = auth.asked().into_iter().collect();
    let missing = flood.iter().filter(|(t, _)| !asked.contains(t)).count();
    assert_eq!(missing, 0, "every unknown token is asked about");
    assert!(
        elapsed < Duration::from_secs(120),
        "{TOKENS} refusals took {elapsed:?}"
    );

    // Ask again for every 10th: at most MAX_ENTRIES can still be cached, per layer
    // (shared data, and each of the two workers if they keep their own).
    let introspections = auth.introspect_count();
    let sample: Vec<&String> = flood.iter().step_by(10).map(|(t, _)| t).collect();
    for token in &sample {
        let before = upstream.count();
        let response = get_bearer(&envoy, token);
        assert_invalid_token("unknown token again", &upstream, before, &response, token);
    }
    let again = auth.introspect_count() - introspections;
    let bound = sample.len() - 3 * MAX_ENTRIES;
    assert!(
        again >= bound,
        "{} of {} re-sent unknown tokens were answered from the cache: more than \
         max_entries {MAX_ENTRIES} holds ({again} callouts)",
        sample.len() - again,
        sample.len()
    );

    // Still working.
    assert_identity("after", &get_bearer(&envoy, &valid), "user-flood", &valid);
    let fresh = opaque("fresh");
    let before = upstream.count();
    let response = get_bearer(&envoy, &fresh);
    assert_invalid_token("fresh unknown after", &upstream, before, &response, &fresh);
    let stats = envoy.stats();
    assert!(
        counter_in(&stats, &stat("inactive")) >= TOKENS as u64,
        "{}",
        exchange_stats(&envoy)
    );
    eprintln!(
        "{TOKENS} unknown tokens in {elapsed:?}; {again}/{} re-sent ones called out again; \
         Envoy allocated {memory_before:?} -> {:?} bytes",
        sample.len(),
        allocated(&envoy)
    );
}

// --- 4. faults -------------------------------------------------------------------------

/// With the auth server failing as `fault` makes it: a fresh token gets 503 (the client
/// did nothing wrong) within the callout timeout, failures are counted, an identity
/// already cached keeps working, and once `restore` runs the fresh token passes without
/// restarting Envoy.
fn auth_fault_is_503_and_recovers(case: &str, fault: impl Fn(&Auth), restore: impl Fn(&Auth)) {
    let auth = auth_server();
    let (upstream, envoy) = start(
        &auth,
        &cached_config(&auth, json!({"max_secs": 300, "negative_secs": 1})),
    );
    let cached = active_token(&auth, "cached");
    assert_identity(
        &format!("{case}: before the fault"),
        &get_bearer(&envoy, &cached),
        "cached",
        &cached,
    );

    fault(&auth);
    let fresh = active_token(&auth, "fresh");
    for i in 0..3 {
        let before = upstream.count();
        let begun = Instant::now();
        let response = get_bearer(&envoy, &fresh);
        let took = begun.elapsed();
        assert_unavailable(
            &format!("{case}: request {i}"),
            &upstream,
            before,
            &response,
            &fresh,
        );
        assert!(
            took < Duration::from_millis(TIMEOUT_MS) + Duration::from_secs(4),
            "{case}: the refusal took {took:?} (timeout_ms {TIMEOUT_MS})"
        );
    }
    assert_identity(
        &format!("{case}: cached identity during the fault"),
        &get_bearer(&envoy, &cached),
        "cached",
        &cached,
    );
    assert!(
        envoy.counter(&stat("callout_failure")) >= 1,
        "{case}: {} {}",
        exchange_stats(&envoy),
        auth_counts(&auth)
    );

    restore(&auth);
    let response = eventually(
        &format!("{case}: recovery"),
        Duration::from_secs(15),
        || {
            let before = upstream.count();
            let response = get_bearer(&envoy, &fresh);
            match response.status {
                200 => Ok(response),
                503 => {
                    assert_unavailable(
                        &format!("{case}: while recovering"),
                        &upstream,
                        before,
                        &response,
                        &fresh,
                    );
                    Err(format!("{} {}", exchange_stats(&envoy), auth_counts(&auth)))
                }
                other => panic!("{case}: unexpected {other} {}", response.text()),
            }
        },
    );
    assert_identity(
        &format!("{case}: after recovery"),
        &response,
        "fresh",
        &fresh,
    );
}

#[test]
fn auth_service_refusing_connections_is_503_until_it_listens_again() {
    auth_fault_is_503_and_recovers(
        "down",
        |auth| auth.stop_listening(),
        |auth| auth.listen_again(),
    );
}

#[test]
fn auth_service_hanging_past_the_timeout_is_503_and_recovers() {
    auth_fault_is_503_and_recovers(
        "hang",
        |auth| auth.set_mode(Mode::Hang),
        |auth| auth.set_mode(Mode::Serve),
    );
}

#[test]
fn auth_service_answering_500_is_503_and_recovers() {
    auth_fault_is_503_and_recovers(
        "500",
        |auth| auth.set_mode(Mode::Status(500)),
        |auth| {
            assert!(auth.introspect_count() >= 2, "{}", auth_counts(auth));
            auth.set_mode(Mode::Serve)
        },
    );
}

#[test]
fn auth_service_answering_garbage_is_503_and_recovers() {
    auth_fault_is_503_and_recovers(
        "garbage",
        |auth| auth.set_mode(Mode::Garbage),
        |auth| auth.set_mode(Mode::Serve),
    );
}

#[test]
fn auth_service_answering_10_mib_is_503_and_recovers() {
    auth_fault_is_503_and_recovers(
        "10 MiB",
        |auth| auth.set_mode(Mode::Huge),
        |auth| auth.set_mode(Mode::Serve),
    );
}

#[test]
fn auth_service_answer_just_over_64_kib_is_503_and_recovers() {
    // A valid, active answer padded with whitespace: refused for its size alone.
    auth_fault_is_503_and_recovers(
        "over 64 KiB",
        |auth| auth.set_mode(Mode::Padded(64 * 1024 + 1024)),
        |auth| auth.set_mode(Mode::Serve),
    );
}

#[test]
fn auth_service_closing_the_connection_is_503_and_recovers() {
    auth_fault_is_503_and_recovers(
        "close",
        |auth| auth.set_mode(Mode::Close),
        |auth| auth.set_mode(Mode::Serve),
    );
}

// --- 5. the gateway's client credentials -----------------------------------------------

#[test]
fn gateway_client_refused_by_the_auth_service_is_503_not_401() {
    for mode in ["introspection", "token_exchange"] {
        let auth = auth_server();
        let exchange = with(
            exchange(&auth, mode),
            json!({"client": {"id": CLIENT_ID, "secret": "not-the-secret"}}),
        );
        let (upstream, envoy) = start(&auth, &config(exchange));
        let token = active_token(&auth, "user-client");
        let before = upstream.count();
        let response = get_bearer(&envoy, &token);
        assert_unavailable(
            &format!("{mode}: invalid_client"),
            &upstream,
            before,
            &response,
            &token,
        );
        assert_eq!(
            auth.last_request().and_then(|r| r.basic_credentials()),
            Some((CLIENT_ID.to_owned(), "not-the-secret".to_owned())),
            "{mode}: the configured (wrong) credentials were sent"
        );
        assert!(auth.total_count() >= 1, "{mode}: {}", auth_counts(&auth));
    }
}

#[test]
fn client_credentials_are_form_encoded_before_basic_authentication() {
    // RFC 6749 §2.3.1: id and secret are form-urlencoded, then joined with ':'.
    const SECRET: &str = "s3+cr%t:x/ y";
    const ID: &str = "gate way:1";
    let auth = auth_server();
    auth.set_client(ID, SECRET);
    let exchange = with(
        exchange(&auth, "introspection"),
        json!({"client": {"id": ID, "secret": SECRET}}),
    );
    let (_upstream, envoy) = start(&auth, &config(exchange));
    let token = active_token(&auth, "user-encoded");
    let response = get_bearer(&envoy, &token);
    let sent = auth.last_authorization();
    assert_eq!(
        response.status,
        200,
        "the server accepts only RFC 6749 encoding; the gateway sent {sent:?} (expected \
         {:?}); body {}",
        auth::basic_header(ID, SECRET),
        response.text()
    );
    assert_identity("encoded credentials", &response, "user-encoded", &token);
}
