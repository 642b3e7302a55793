//! End-to-end tests: the release `tokengate.wasm` in a real Envoy, in front of a loopback
//! upstream that echoes what it received. Run with `make e2e` (builds the wasm, finds
//! Envoy). Each test starts its own Envoy and groups related checks; every refusal also
//! checks that the upstream never saw the request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use serde_json::{json, Value};
use support::keys::{KID_HS256, KID_PS256, KID_RS256};
use support::{keys, now, Envoy, Response, Upstream};
use tokengate::crypto::alg::{Alg, Hash};
use tokengate::crypto::sign::{hmac, SigningKey};

const REALM: &str = "api";
const ISSUER: &str = "https://idp.example.com/realms/demo";
const AUDIENCE: &str = "orders";
const KEEP_ISSUER: &str = "https://keep.example.com";
const WEB_ISSUER: &str = "https://web.example.com";
const HS_ISSUER: &str = "https://hs.example.com";
/// The main provider's `max_token_bytes`.
const MAX_TOKEN_BYTES: usize = 2048;

/// A named request: (case, path, headers).
type RequestCase<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

/// Every header any provider forwards: none may come from the client.
const IDENTITY_HEADERS: [&str; 9] = [
    "x-jwt-payload",
    "x-user-id",
    "x-user-scope",
    "x-user-roles",
    "x-user-level",
    "x-user-verified",
    "x-user-email",
    "x-keep-user",
    "x-web-user",
];

/// The configuration most tests run with: four providers, a rule per route family, and
/// nothing for paths outside them (403).
fn config() -> String {
    let k = keys();
    let jwks = k.public_jwks();
    json!({
        "realm": REALM,
        "providers": {
            "corp": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "jwks": {"inline": jwks},
                "max_token_bytes": MAX_TOKEN_BYTES,
                "forward": {
                    "keep_token": false,
                    "payload_header": "x-jwt-payload",
                    "claims": {
                        "sub": "x-user-id",
                        "scope": "x-user-scope",
                        "realm_access.roles": "x-user-roles",
                        "level": "x-user-level",
                        "email_verified": "x-user-verified",
                        "email": "x-user-email"
                    }
                }
            },
            "keep": {
                "issuer": KEEP_ISSUER,
                "jwks": {"inline": jwks},
                "forward": {"keep_token": true, "claims": {"sub": "x-keep-user"}}
            },
            "web": {
                "issuer": WEB_ISSUER,
                "jwks": {"inline": jwks},
                "sources": [{"cookie": "access_token"}, {"query": "access_token"}],
                "forward": {"claims": {"sub": "x-web-user"}}
            },
            "hs": {
                "issuer": HS_ISSUER,
                "jwks": {"inline": k.hs_jwks()},
                "algorithms": ["HS256"],
                "forward": {"claims": {"sub": "x-hs-user"}}
            }
        },
        "rules": [
            {"name": "health", "match": {"path": {"prefix": "/healthz"}}, "allow": "anonymous"},
            {"name": "optional", "match": {"path": {"prefix": "/optional"}}, "authn": {"any": ["corp"], "optional": true}},
            {"name": "keep", "match": {"path": {"prefix": "/keep"}}, "authn": {"any": ["keep"]}},
            {"name": "web", "match": {"path": {"prefix": "/web"}}, "authn": {"any": ["web"]}},
            {"name": "hs", "match": {"path": {"prefix": "/hs"}}, "authn": {"any": ["hs"]}},
            {"name": "api", "match": {"path": {"prefix": "/api"}}, "authn": {"any": ["corp"]}}
        ]
    })
    .to_string()
}

/// An upstream and an Envoy with [`config`] in front of it.
fn start() -> (Upstream, Envoy) {
    let config = config();
    // A config mistake in the test itself should say so, not look like an Envoy failure.
    if let Err(e) = tokengate::config::Config::from_json(config.as_bytes()) {
        panic!("the test configuration is invalid: {e}");
    }
    let upstream = Upstream::start();
    let envoy = Envoy::start(&config, upstream.port()).unwrap_or_else(|e| panic!("{e}"));
    (upstream, envoy)
}

/// Claims the main provider accepts.
fn corp_claims(sub: &str) -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "aud": [AUDIENCE, "billing"],
        "sub": sub,
        "scope": "orders:read orders:write",
        "realm_access": {"roles": ["a", "b"]},
        "level": 7,
        "email_verified": true,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 600
    })
}

/// `claims` with some members replaced (`null` removes one).
fn with(mut claims: Value, changes: Value) -> Value {
    for (name, value) in changes.as_object().expect("changes are an object") {
        let obj = claims.as_object_mut().expect("claims are an object");
        if value.is_null() {
            obj.remove(name);
        } else {
            obj.insert(name.clone(), value.clone());
        }
    }
    claims
}

fn sign(key: &SigningKey, claims: &Value) -> String {
    key.sign(claims).unwrap_or_else(|e| panic!("signing: {e}"))
}

fn sign_with_header(key: &SigningKey, header: &Value, claims: &Value) -> String {
    key.sign_with_header(header, claims)
        .unwrap_or_else(|e| panic!("signing: {e}"))
}

/// A compact JWS with any header and signature bytes.
fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        tokengate::crypto::b64::encode(header.to_string().as_bytes()),
        tokengate::crypto::b64::encode(claims.to_string().as_bytes()),
        tokengate::crypto::b64::encode(signature)
    )
}

/// An HS256 token whose HMAC secret is `secret` (for key-confusion attacks).
fn hs256_token(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        tokengate::crypto::b64::encode(header.to_string().as_bytes()),
        tokengate::crypto::b64::encode(claims.to_string().as_bytes())
    );
    let mac = hmac(Hash::Sha256, secret, input.as_bytes());
    format!("{input}.{}", tokengate::crypto::b64::encode(&mac))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
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

fn assert_json_error_body(case: &str, response: &Response) -> Value {
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
    assert!(
        body["error_description"].is_string(),
        "{case}: body needs \"error_description\": {body}"
    );
    body
}

/// A 401 `invalid_token` refusal with exactly this description, which leaks nothing
/// of the token, and which the upstream never saw.
fn assert_invalid_token(
    case: &str,
    upstream: &Upstream,
    before: usize,
    response: &Response,
    token: &str,
    description: &str,
) {
    assert_eq!(
        response.status,
        401,
        "{case}: status; body {}",
        response.text()
    );
    let expected = format!(
        "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{description}\""
    );
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![expected.as_str()],
        "{case}: WWW-Authenticate"
    );
    let body = assert_json_error_body(case, response);
    assert_eq!(body["error"], "invalid_token", "{case}: body {body}");
    assert_eq!(
        body["error_description"], description,
        "{case}: body {body}"
    );
    assert_no_token_leak(case, response, token);
    assert_eq!(
        upstream.count(),
        before,
        "{case}: the upstream must never see a refused request"
    );
}

/// Neither the body nor any header of a refusal contains the token or a part of it.
fn assert_no_token_leak(case: &str, response: &Response, token: &str) {
    let mut everything = response.text();
    for (name, value) in &response.headers {
        everything.push_str(&format!("\n{name}: {value}"));
    }
    if !token.is_empty() {
        assert!(
            !everything.contains(token),
            "{case}: the response contains the token"
        );
    }
    for part in token.split('.').filter(|p| p.len() >= 16) {
        assert!(
            !everything.contains(part),
            "{case}: the response contains part of the token ({part})"
        );
    }
}

/// A 401 with the bare challenge (no token was presented).
fn assert_missing_token(case: &str, upstream: &Upstream, before: usize, response: &Response) {
    assert_eq!(
        response.status,
        401,
        "{case}: status; body {}",
        response.text()
    );
    let expected = format!("Bearer realm=\"{REALM}\"");
    assert_eq!(
        response.header_all("www-authenticate"),
        vec![expected.as_str()],
        "{case}: WWW-Authenticate"
    );
    let body = assert_json_error_body(case, response);
    assert_ne!(
        body["error"], "invalid_token",
        "{case}: no token is not an invalid token: {body}"
    );
    assert_eq!(
        upstream.count(),
        before,
        "{case}: the upstream must never see a refused request"
    );
}

fn payload_segment(token: &str) -> &str {
    token
        .split('.')
        .nth(1)
        .expect("a compact JWS has a payload segment")
}

#[test]
fn valid_rs256_token_reaches_upstream_with_identity_headers_and_without_the_token() {
    let (upstream, envoy) = start();
    let k = keys();
    let claims = corp_claims("user-42");
    let token = sign(&k.rs256, &claims);

    let before = upstream.count();
    let response = envoy.get(
        "/api/orders?page=2",
        &[
            ("authorization", &bearer(&token)),
            ("x-request-note", "kept"),
        ],
    );
    let seen = forwarded("valid RS256 token", &response);
    assert_eq!(upstream.count(), before + 1);
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/api/orders?page=2");
    assert_eq!(
        seen_header(&seen, "x-user-id"),
        Some("user-42"),
        "sub as is"
    );
    assert_eq!(
        seen_header(&seen, "x-user-scope"),
        Some("orders:read orders:write"),
        "a scope string stays as is"
    );
    assert_eq!(
        seen_header(&seen, "x-user-roles"),
        Some("a,b"),
        "nested array of strings joined with ','"
    );
    assert_eq!(
        seen_header(&seen, "x-user-level"),
        Some("7"),
        "numbers as JSON"
    );
    assert_eq!(
        seen_header(&seen, "x-user-verified"),
        Some("true"),
        "booleans as JSON"
    );
    assert_eq!(
        seen_header(&seen, "x-user-email"),
        None,
        "a missing claim sets no header"
    );
    assert_eq!(
        seen_header(&seen, "x-request-note"),
        Some("kept"),
        "other headers pass through"
    );
    assert_eq!(
        seen_header(&seen, "authorization"),
        None,
        "keep_token false: the token is removed"
    );
    assert!(
        !seen.to_string().contains(&token),
        "the token must not reach the upstream: {seen}"
    );

    let payload = seen_header(&seen, "x-jwt-payload").expect("payload_header is set");
    assert_eq!(
        payload,
        payload_segment(&token),
        "payload_header is the token's payload segment"
    );
    assert!(!payload.contains('='), "base64url without padding");
    let decoded = tokengate::crypto::b64::decode(payload.as_bytes())
        .expect("payload header is strict base64url");
    let decoded: Value = serde_json::from_slice(&decoded).expect("payload header is JSON");
    assert_eq!(
        decoded, claims,
        "payload header carries the verified claims"
    );

    // The same token again (possibly from the cache) gives the same identity.
    let again = forwarded(
        "same token again",
        &envoy.get("/api/orders", &[("authorization", &bearer(&token))]),
    );
    assert_eq!(seen_header(&again, "x-user-id"), Some("user-42"));
    assert_eq!(
        seen_header(&again, "x-jwt-payload"),
        Some(payload_segment(&token))
    );

    // The Bearer scheme is case-insensitive; an `exp` 30 s ago is within the 60 s skew.
    let late = sign(
        &k.rs256,
        &with(corp_claims("user-late"), json!({"exp": now() - 30})),
    );
    let seen = forwarded(
        "lowercase scheme, exp within skew",
        &envoy.get("/api/x", &[("authorization", &format!("bearer {late}"))]),
    );
    assert_eq!(seen_header(&seen, "x-user-id"), Some("user-late"));
    assert_eq!(seen_header(&seen, "authorization"), None);

    // `aud` as a plain string naming the configured audience.
    let single_aud = sign(
        &k.rs256,
        &with(corp_claims("user-aud"), json!({"aud": AUDIENCE})),
    );
    let seen = forwarded(
        "aud as a string",
        &envoy.get_with_token("/api/x", &single_aud),
    );
    assert_eq!(seen_header(&seen, "x-user-id"), Some("user-aud"));

    // A request body goes through untouched.
    let response = envoy.request(
        "POST",
        "/api/orders",
        &[
            ("authorization", &bearer(&token)),
            ("content-type", "application/json"),
        ],
        b"{\"item\":1}",
    );
    let seen = forwarded("POST with a body", &response);
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["body"], "{\"item\":1}");
    assert_eq!(seen_header(&seen, "x-user-id"), Some("user-42"));
}

#[test]
fn cached_token_is_refused_once_it_expires() {
    let (upstream, envoy) = start();
    // Valid for about 5 more seconds: `exp` 55 s ago, with the 60 s clock skew.
    let token = sign(
        &keys().rs256,
        &with(corp_claims("user-short"), json!({"exp": now() - 55})),
    );
    // Requests go to either worker; a few of them put the token in both caches.
    for i in 0..4 {
        let seen = forwarded(
            &format!("short-lived token, request {i}"),
            &envoy.get_with_token("/api/x", &token),
        );
        assert_eq!(seen_header(&seen, "x-user-id"), Some("user-short"));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let refused = loop {
        let before = upstream.count();
        let response = envoy.get_with_token("/api/x", &token);
        if response.status != 200 {
            break (before, response);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a cached token must stop working once it expires (exp + skew passed long ago)"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let (before, response) = refused;
    assert_invalid_token(
        "cached token after expiry",
        &upstream,
        before,
        &response,
        &token,
        "token expired",
    );
    assert!(
        envoy.counter("tokengate.cache.hit") >= 1,
        "the token was served from the cache before it expired"
    );
}

#[test]
fn client_identity_headers_are_stripped_on_authenticated_and_anonymous_routes() {
    let (upstream, envoy) = start();
    let k = keys();
    let mut spoofed: Vec<(&str, &str)> = IDENTITY_HEADERS.iter().map(|h| (*h, "spoofed")).collect();
    spoofed.push(("X-User-Id", "spoofed-again"));
    spoofed.push(("X-HS-User", "spoofed"));
    spoofed.push(("x-custom", "stays"));

    // Anonymous route: nothing is authenticated, every identity header is removed.
    let seen = forwarded("anonymous route", &envoy.get("/healthz", &spoofed));
    for header in IDENTITY_HEADERS.iter().chain(&["x-hs-user"]) {
        assert_eq!(
            seen_header(&seen, header),
            None,
            "anonymous route: client-sent {header} must be removed: {seen}"
        );
    }
    assert_eq!(seen_header(&seen, "x-custom"), Some("stays"));
    assert_eq!(seen["path"], "/healthz");

    // Optional authentication without a token: anonymous, identity headers removed.
    let seen = forwarded(
        "optional route, no token",
        &envoy.get("/optional/x", &spoofed),
    );
    for header in IDENTITY_HEADERS.iter().chain(&["x-hs-user"]) {
        assert_eq!(
            seen_header(&seen, header),
            None,
            "optional route: client-sent {header} must be removed: {seen}"
        );
    }

    // Authenticated route: the filter's values replace the client's; headers of claims the
    // token lacks (email) and of other providers are removed, not passed through.
    let token = sign(&k.rs256, &corp_claims("user-real"));
    let auth = bearer(&token);
    let mut headers = spoofed.clone();
    headers.push(("authorization", &auth));
    let seen = forwarded("authenticated route", &envoy.get("/api/me", &headers));
    assert_eq!(
        seen_header(&seen, "x-user-id"),
        Some("user-real"),
        "replaced, not appended: {seen}"
    );
    assert_eq!(
        seen_header(&seen, "x-user-scope"),
        Some("orders:read orders:write")
    );
    assert_eq!(seen_header(&seen, "x-user-roles"), Some("a,b"));
    assert_eq!(
        seen_header(&seen, "x-jwt-payload"),
        Some(payload_segment(&token))
    );
    for header in ["x-user-email", "x-keep-user", "x-web-user", "x-hs-user"] {
        assert_eq!(
            seen_header(&seen, header),
            None,
            "authenticated route: client-sent {header} must be removed: {seen}"
        );
    }
    assert_eq!(seen_header(&seen, "x-custom"), Some("stays"));
    assert!(
        !seen.to_string().contains("spoofed"),
        "no spoofed value may reach the upstream: {seen}"
    );
    assert_eq!(upstream.count(), 3, "all three requests were forwarded");
}

#[test]
fn header_values_that_are_not_utf8_neither_break_the_filter_nor_pass_as_tokens() {
    let (upstream, envoy) = start();
    let k = keys();
    let token = sign(&k.rs256, &corp_claims("user-bytes"));
    let raw = |headers: &[u8]| {
        let mut bytes = b"GET /api/me HTTP/1.1\r\nhost: tokengate.test\r\n".to_vec();
        bytes.extend_from_slice(headers);
        bytes.extend_from_slice(b"connection: close\r\n\r\n");
        envoy.send_raw(&bytes)
    };

    // obs-text (RFC 9110 §5.5) in an identity header: stripped like any spoofed value.
    let mut headers = format!("authorization: Bearer {token}\r\n").into_bytes();
    headers.extend_from_slice(b"x-user-id: caf\xe9 \xff\r\nx-user-email: \xfe\r\n");
    let seen = forwarded("obs-text identity headers", &raw(&headers));
    assert_eq!(
        seen_header(&seen, "x-user-id"),
        Some("user-bytes"),
        "{seen}"
    );
    assert_eq!(seen_header(&seen, "x-user-email"), None, "{seen}");

    // obs-text inside the token: refused, never forwarded.
    let (head, tail) = token.split_at(40);
    let mut headers = format!("authorization: Bearer {head}").into_bytes();
    headers.extend_from_slice(b"\xff");
    headers.extend_from_slice(tail.as_bytes());
    headers.extend_from_slice(b"\r\n");
    let before = upstream.count();
    let response = raw(&headers);
    assert_eq!(response.status, 401, "{}", response.text());
    assert_eq!(
        upstream.count(),
        before,
        "a broken token never reaches upstream"
    );

    // The filter still answers normally on every worker afterwards.
    for i in 0..8 {
        forwarded(
            &format!("valid request {i} afterwards"),
            &envoy.get_with_token("/api/me", &token),
        );
    }
}

#[test]
fn keep_token_provider_forwards_the_token_upstream() {
    let (upstream, envoy) = start();
    let k = keys();
    let token = sign(
        &k.rs256,
        &with(corp_claims("user-keep"), json!({"iss": KEEP_ISSUER})),
    );
    let before = upstream.count();
    let seen = forwarded("keep_token", &envoy.get_with_token("/keep/it", &token));
    assert_eq!(upstream.count(), before + 1);
    assert_eq!(
        seen_header(&seen, "authorization"),
        Some(bearer(&token).as_str()),
        "keep_token: true keeps the token"
    );
    assert_eq!(seen_header(&seen, "x-keep-user"), Some("user-keep"));

    // The header twice, the same valid token in each copy: Envoy hands the filter the
    // values joined by a comma, which is no token. Refused, never guessed or forwarded.
    let corp_token = sign(&k.rs256, &corp_claims("user-twice"));
    for (case, path, token) in [
        ("keep_token route, header twice", "/keep/it", &token),
        ("token-removing route, header twice", "/api/me", &corp_token),
    ] {
        let auth = bearer(token);
        let before = upstream.count();
        let response = envoy.get(path, &[("authorization", &auth), ("authorization", &auth)]);
        assert_invalid_token(case, &upstream, before, &response, token, "malformed token");
    }

    // The same route refuses a token of another issuer.
    let corp = sign(&k.rs256, &corp_claims("user-corp"));
    let before = upstream.count();
    let response = envoy.get_with_token("/keep/it", &corp);
    assert_invalid_token(
        "corp token on the keep route",
        &upstream,
        before,
        &response,
        &corp,
        "issuer not allowed",
    );
}

#[test]
fn missing_token_is_refused_with_a_bare_bearer_challenge() {
    let (upstream, envoy) = start();
    let basic = ("authorization", "Basic dXNlcjpwYXNz");
    let cases: [RequestCase; 6] = [
        ("no authorization header", "/api/orders", vec![]),
        (
            "Basic credentials are not a bearer token",
            "/api/orders",
            vec![basic],
        ),
        (
            "token in a header the provider does not read",
            "/api/orders",
            vec![("x-token", "a.b.c")],
        ),
        ("keep route", "/keep/x", vec![]),
        ("hs route", "/hs/x", vec![]),
        (
            "web route only reads cookie and query",
            "/web/x",
            vec![("authorization", "Bearer a.b.c"), ("cookie", "other=1")],
        ),
    ];
    for (case, path, headers) in &cases {
        let before = upstream.count();
        let response = envoy.get(path, headers);
        assert_missing_token(case, &upstream, before, &response);
    }
    // POST with a body: refused before the body matters.
    let before = upstream.count();
    let response = envoy.request(
        "POST",
        "/api/orders",
        &[("content-type", "application/json")],
        b"{\"a\":1}",
    );
    assert_missing_token("POST without a token", &upstream, before, &response);
}

#[test]
fn invalid_tokens_are_refused_with_invalid_token_and_never_reach_upstream() {
    let (upstream, envoy) = start();
    let k = keys();
    let now = now();
    let good = corp_claims("user-1");
    let rsa_public = k.rs256.public_jwk();

    let valid = sign(&k.rs256, &good);
    let mut parts: Vec<&str> = valid.split('.').collect();
    let forged_payload = tokengate::crypto::b64::encode(
        with(good.clone(), json!({"sub": "admin"}))
            .to_string()
            .as_bytes(),
    );
    parts[1] = &forged_payload;
    let tampered = parts.join(".");

    // A validly signed token just over 4 KiB: refused for its size alone.
    let padded_token = |pad: usize| {
        sign(
            &k.rs256,
            &with(good.clone(), json!({"pad": "x".repeat(pad)})),
        )
    };
    let mut pad = (4096 - padded_token(0).len()) * 3 / 4;
    let too_long = loop {
        let token = padded_token(pad);
        if token.len() >= 4096 {
            break token;
        }
        pad += 1;
    };
    assert!(
        (4096..4100).contains(&too_long.len()),
        "too-long token is {} bytes",
        too_long.len()
    );

    let n_bytes =
        tokengate::crypto::b64::decode(rsa_public["n"].as_str().unwrap().as_bytes()).unwrap();
    let hs_rsa_header = json!({"alg": "HS256", "typ": "JWT", "kid": KID_RS256});
    let hs_no_kid = json!({"alg": "HS256", "typ": "JWT"});
    let hs_good = with(good.clone(), json!({"iss": HS_ISSUER}));
    let padded = {
        let header = tokengate::crypto::b64::encode(br#"{"alg":"RS256","kid":"rsa-1"}"#);
        format!("{header}=.{}", valid.split_once('.').unwrap().1)
    };

    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "expired",
            "/api/x",
            sign(
                &k.rs256,
                &with(
                    good.clone(),
                    json!({"exp": now - 3600, "iat": now - 7200, "nbf": now - 7200}),
                ),
            ),
            "token expired",
        ),
        (
            "expired just beyond the skew",
            "/api/x",
            sign(&k.rs256, &with(good.clone(), json!({"exp": now - 120}))),
            "token expired",
        ),
        (
            "not yet valid",
            "/api/x",
            sign(&k.rs256, &with(good.clone(), json!({"nbf": now + 3600}))),
            "token not yet valid",
        ),
        (
            "nbf beyond the 60 s skew",
            "/api/x",
            sign(&k.rs256, &with(good.clone(), json!({"nbf": now + 300}))),
            "token not yet valid",
        ),
        (
            "no exp (require_exp)",
            "/api/x",
            sign(&k.rs256, &with(good.clone(), json!({"exp": null}))),
            "token has no expiry",
        ),
        (
            "signed by another key with the same kid",
            "/api/x",
            sign(&k.impostor, &good),
            "invalid signature",
        ),
        (
            "payload changed after signing",
            "/api/x",
            tampered,
            "invalid signature",
        ),
        (
            "wrong issuer",
            "/api/x",
            sign(
                &k.rs256,
                &with(good.clone(), json!({"iss": "https://evil.example.com"})),
            ),
            "issuer not allowed",
        ),
        (
            "no issuer",
            "/api/x",
            sign(&k.rs256, &with(good.clone(), json!({"iss": null}))),
            "issuer not allowed",
        ),
        (
            "wrong audience",
            "/api/x",
            sign(&k.rs256, &with(good.clone(), json!({"aud": ["billing"]}))),
            "audience not allowed",
        ),
        (
            "no audience",
            "/api/x",
            sign(&k.rs256, &with(good.clone(), json!({"aud": null}))),
            "audience not allowed",
        ),
        (
            "unknown kid",
            "/api/x",
            sign(&k.stranger, &good),
            "unknown signing key",
        ),
        (
            "embedded jwk header is never trusted",
            "/api/x",
            sign_with_header(
                &k.stranger,
                &json!({"alg": "ES256", "kid": "stranger", "jwk": k.stranger.public_jwk()}),
                &good,
            ),
            "unknown signing key",
        ),
        (
            "jku header is never followed",
            "/api/x",
            sign_with_header(
                &k.stranger,
                &json!({"alg": "ES256", "kid": "stranger", "jku": "http://127.0.0.1:9/jwks"}),
                &good,
            ),
            "unknown signing key",
        ),
        (
            "alg none, empty signature",
            "/api/x",
            raw_token(&json!({"alg": "none", "typ": "JWT"}), &good, b""),
            "algorithm not allowed",
        ),
        (
            "alg none with a known kid",
            "/api/x",
            raw_token(&json!({"alg": "none", "kid": KID_RS256}), &good, b""),
            "algorithm not allowed",
        ),
        (
            "alg NONE",
            "/api/x",
            raw_token(&json!({"alg": "NONE"}), &good, b""),
            "algorithm not allowed",
        ),
        (
            "HS256 keyed with the RSA public JWK",
            "/api/x",
            hs256_token(&hs_rsa_header, &good, rsa_public.to_string().as_bytes()),
            "algorithm not allowed",
        ),
        (
            "HS256 keyed with the RSA modulus",
            "/api/x",
            hs256_token(&hs_rsa_header, &good, &n_bytes),
            "algorithm not allowed",
        ),
        (
            "HS256 keyed with the RSA public JWK, no kid",
            "/api/x",
            hs256_token(&hs_no_kid, &good, rsa_public.to_string().as_bytes()),
            "algorithm not allowed",
        ),
        (
            "HS256 with the RSA kid where HS256 is allowed",
            "/hs/x",
            hs256_token(&hs_rsa_header, &hs_good, rsa_public.to_string().as_bytes()),
            "unknown signing key",
        ),
        (
            "HS256 keyed with the RSA public JWK where HS256 is allowed",
            "/hs/x",
            hs256_token(&hs_no_kid, &hs_good, rsa_public.to_string().as_bytes()),
            "invalid signature",
        ),
        (
            "RS256 under a key pinned to PS256",
            "/api/x",
            sign_with_header(
                &k.impostor,
                &json!({"alg": "RS256", "kid": KID_PS256}),
                &good,
            ),
            "algorithm not allowed",
        ),
        (
            "ES384 under a P-256 key's kid",
            "/api/x",
            sign_with_header(
                &k.es384,
                &json!({"alg": "ES384", "kid": support::keys::KID_ES256}),
                &good,
            ),
            "algorithm not allowed",
        ),
        (
            "crit header",
            "/api/x",
            sign_with_header(
                &k.rs256,
                &json!({"alg": "RS256", "typ": "JWT", "kid": KID_RS256, "crit": ["exp"]}),
                &good,
            ),
            "critical header not supported",
        ),
        (
            "longer than max_token_bytes",
            "/api/x",
            too_long,
            "token too long",
        ),
        (
            "not a JWT",
            "/api/x",
            "not-a-jwt".to_owned(),
            "malformed token",
        ),
        (
            "two parts",
            "/api/x",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0".to_owned(),
            "malformed token",
        ),
        ("padded base64url", "/api/x", padded, "malformed token"),
        (
            "corp token on the hs route",
            "/hs/x",
            valid.clone(),
            "algorithm not allowed",
        ),
    ];
    for (case, path, token, description) in &cases {
        let before = upstream.count();
        let response = envoy.get_with_token(path, token);
        assert_invalid_token(case, &upstream, before, &response, token, description);
    }

    // Two bearer tokens, each valid on its own: ambiguous, so neither is taken.
    let other = sign(&k.es256, &corp_claims("user-2"));
    let before = upstream.count();
    let response = envoy.get(
        "/api/x",
        &[
            ("authorization", &bearer(&valid)),
            ("authorization", &bearer(&other)),
        ],
    );
    assert_invalid_token(
        "two authorization headers",
        &upstream,
        before,
        &response,
        &valid,
        "malformed token",
    );
    assert_no_token_leak("two authorization headers", &response, &other);

    // Control: the untouched token passes, so the refusals above are about their defect.
    let seen = forwarded("control", &envoy.get_with_token("/api/x", &valid));
    assert_eq!(seen_header(&seen, "x-user-id"), Some("user-1"));
}

#[test]
fn tokens_from_cookie_and_query_sources_are_verified_and_removed() {
    let (upstream, envoy) = start();
    let k = keys();
    let claims = with(corp_claims("user-web"), json!({"iss": WEB_ISSUER}));
    let token = sign(&k.es256, &claims);

    let cookie = format!("theme=dark; access_token={token}; lang=en");
    let seen = forwarded(
        "cookie among others",
        &envoy.get("/web/page", &[("cookie", &cookie)]),
    );
    assert_eq!(seen_header(&seen, "x-web-user"), Some("user-web"));
    assert_eq!(
        seen_header(&seen, "cookie"),
        Some("theme=dark; lang=en"),
        "other cookies stay"
    );
    assert!(
        !seen.to_string().contains(&token),
        "the token cookie must be removed: {seen}"
    );

    let only = format!("access_token={token}");
    let seen = forwarded(
        "cookie alone",
        &envoy.get("/web/page", &[("cookie", &only)]),
    );
    assert_eq!(seen_header(&seen, "x-web-user"), Some("user-web"));
    assert_eq!(
        seen_header(&seen, "cookie"),
        None,
        "an emptied cookie header is removed"
    );

    let path = format!("/web/page?a=1&access_token={token}&b=two");
    let seen = forwarded("query among others", &envoy.get(&path, &[]));
    assert_eq!(seen_header(&seen, "x-web-user"), Some("user-web"));
    assert_eq!(seen["path"], "/web/page?a=1&b=two", "other parameters stay");

    let path = format!("/web/page?access_token={token}");
    let seen = forwarded("query alone", &envoy.get(&path, &[]));
    assert_eq!(seen["path"], "/web/page");

    let encoded = token.replace('.', "%2E");
    let path = format!("/web/page?access_token={encoded}&z=9");
    let seen = forwarded("percent-encoded query token", &envoy.get(&path, &[]));
    assert_eq!(seen_header(&seen, "x-web-user"), Some("user-web"));
    assert_eq!(seen["path"], "/web/page?z=9");

    // Invalid tokens from either source are refused, not skipped.
    let expired = sign(
        &k.es256,
        &with(claims.clone(), json!({"exp": now() - 3600})),
    );
    let before = upstream.count();
    let cookie = format!("theme=dark; access_token={expired}");
    let response = envoy.get("/web/page", &[("cookie", &cookie)]);
    assert_invalid_token(
        "expired cookie token",
        &upstream,
        before,
        &response,
        &expired,
        "token expired",
    );
    let before = upstream.count();
    let response = envoy.get(&format!("/web/page?access_token={expired}"), &[]);
    assert_invalid_token(
        "expired query token",
        &upstream,
        before,
        &response,
        &expired,
        "token expired",
    );
    let before = upstream.count();
    let response = envoy.get("/web/page", &[("cookie", "access_token=garbage")]);
    assert_invalid_token(
        "garbage cookie token",
        &upstream,
        before,
        &response,
        "garbage",
        "malformed token",
    );
    // The same cookie or parameter twice, each a valid token: ambiguous, never guessed.
    let other = sign(
        &k.eddsa,
        &with(corp_claims("user-other"), json!({"iss": WEB_ISSUER})),
    );
    let before = upstream.count();
    let response = envoy.get(
        "/web/page",
        &[(
            "cookie",
            &format!("access_token={token}; access_token={other}"),
        )],
    );
    assert_invalid_token(
        "cookie twice",
        &upstream,
        before,
        &response,
        &token,
        "malformed token",
    );
    assert_no_token_leak("cookie twice", &response, &other);
    let before = upstream.count();
    let response = envoy.get(
        &format!("/web/page?access_token={token}&access_token={other}"),
        &[],
    );
    assert_invalid_token(
        "query parameter twice",
        &upstream,
        before,
        &response,
        &token,
        "malformed token",
    );
    assert_no_token_leak("query parameter twice", &response, &other);

    // The cookie source comes first: a bad cookie is not rescued by a good query token.
    let before = upstream.count();
    let response = envoy.get(
        &format!("/web/page?access_token={token}"),
        &[("cookie", &format!("access_token={expired}"))],
    );
    assert_invalid_token(
        "bad cookie, good query",
        &upstream,
        before,
        &response,
        &expired,
        "token expired",
    );
}

#[test]
fn every_algorithm_family_verifies_end_to_end() {
    use jwt_simple::prelude::{Claims, ECDSAP256KeyPairLike};
    let (upstream, envoy) = start();
    let k = keys();
    let cases: [(&str, &SigningKey, &str, &str, &str); 6] = [
        ("RS256", &k.rs256, "/api/alg", ISSUER, "x-user-id"),
        ("PS256", &k.ps256, "/api/alg", ISSUER, "x-user-id"),
        ("ES256", &k.es256, "/api/alg", ISSUER, "x-user-id"),
        ("ES384", &k.es384, "/api/alg", ISSUER, "x-user-id"),
        ("EdDSA", &k.eddsa, "/api/alg", ISSUER, "x-user-id"),
        ("HS256", &k.hs256, "/hs/alg", HS_ISSUER, "x-hs-user"),
    ];
    for (alg, key, path, issuer, header) in cases {
        assert_eq!(key.alg, Alg::from_name(alg).unwrap(), "{alg}: test key");
        let sub = format!("user-{alg}");
        let token = sign(key, &with(corp_claims(&sub), json!({"iss": issuer})));
        let token_header: Value = serde_json::from_slice(
            &tokengate::crypto::b64::decode(token.split('.').next().unwrap().as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(token_header["alg"], alg);
        let before = upstream.count();
        let seen = forwarded(alg, &envoy.get_with_token(path, &token));
        assert_eq!(upstream.count(), before + 1, "{alg}");
        assert_eq!(
            seen_header(&seen, header),
            Some(sub.as_str()),
            "{alg}: identity from the token"
        );
        assert_eq!(
            seen_header(&seen, "authorization"),
            None,
            "{alg}: token removed"
        );
    }
    assert_eq!(k.hs256.kid.as_deref(), Some(KID_HS256));

    // A token from an independent implementation (jwt-simple, ES256).
    let claims = Claims::create(jwt_simple::prelude::Duration::from_secs(600))
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .with_subject("user-jwt-simple");
    let token = k.jwt_simple.sign(claims).expect("jwt-simple signs");
    let seen = forwarded(
        "jwt-simple ES256",
        &envoy.get_with_token("/api/alg", &token),
    );
    assert_eq!(seen_header(&seen, "x-user-id"), Some("user-jwt-simple"));
}

#[test]
fn optional_authn_admits_anonymous_requests_but_refuses_invalid_tokens() {
    let (upstream, envoy) = start();
    let k = keys();

    let before = upstream.count();
    let seen = forwarded(
        "no token",
        &envoy.get("/optional/page", &[("x-user-id", "spoofed")]),
    );
    assert_eq!(upstream.count(), before + 1);
    for header in IDENTITY_HEADERS {
        assert_eq!(
            seen_header(&seen, header),
            None,
            "no token: no identity header {header}: {seen}"
        );
    }

    let token = sign(&k.rs256, &corp_claims("user-opt"));
    let seen = forwarded(
        "valid token",
        &envoy.get_with_token("/optional/page", &token),
    );
    assert_eq!(seen_header(&seen, "x-user-id"), Some("user-opt"));
    assert_eq!(seen_header(&seen, "authorization"), None);

    let expired = sign(
        &k.rs256,
        &with(corp_claims("user-opt"), json!({"exp": now() - 3600})),
    );
    let before = upstream.count();
    let response = envoy.get_with_token("/optional/page", &expired);
    assert_invalid_token(
        "expired token on an optional route",
        &upstream,
        before,
        &response,
        &expired,
        "token expired",
    );

    let before = upstream.count();
    let response = envoy.get_with_token("/optional/page", "junk");
    assert_invalid_token(
        "junk token on an optional route",
        &upstream,
        before,
        &response,
        "junk",
        "malformed token",
    );

    let wrong = sign(&k.stranger, &corp_claims("user-opt"));
    let before = upstream.count();
    let response = envoy.get_with_token("/optional/page", &wrong);
    assert_invalid_token(
        "unknown key on an optional route",
        &upstream,
        before,
        &response,
        &wrong,
        "unknown signing key",
    );
}

#[test]
fn request_matching_no_rule_is_forbidden() {
    let (upstream, envoy) = start();
    let token = sign(&keys().rs256, &corp_claims("user-1"));
    let auth = bearer(&token);
    let cases: [RequestCase; 4] = [
        ("no token", "/other", vec![]),
        (
            "valid token",
            "/other/thing",
            vec![("authorization", auth.as_str())],
        ),
        ("root", "/", vec![]),
        (
            "dot segments normalized out of /api",
            "/api/../other",
            vec![("authorization", auth.as_str())],
        ),
    ];
    for (case, path, headers) in &cases {
        let before = upstream.count();
        let response = envoy.get(path, headers);
        assert_eq!(
            response.status,
            403,
            "{case}: status; body {}",
            response.text()
        );
        assert_eq!(
            response.header("www-authenticate"),
            None,
            "{case}: no challenge for 403 without a rule"
        );
        assert_json_error_body(case, &response);
        assert_no_token_leak(case, &response, &token);
        assert_eq!(
            upstream.count(),
            before,
            "{case}: the upstream must never see a refused request"
        );
    }

    // Envoy normalizes the path before the filter: no way around a rule via the path.
    for path in ["/healthz/../api/x", "//api//x", "/healthz/%2E%2E/api/x"] {
        let before = upstream.count();
        let response = envoy.get(path, &[]);
        assert_missing_token(&format!("{path} is /api/x"), &upstream, before, &response);
    }
}

#[test]
fn counters_move_for_allowed_denied_and_cached_requests() {
    let (upstream, envoy) = start();
    let k = keys();
    assert_eq!(
        envoy.counter("tokengate.allowed"),
        0,
        "a fresh Envoy has counted nothing"
    );

    let token = sign(&k.rs256, &corp_claims("user-stats"));
    for i in 0..10 {
        forwarded(
            &format!("valid request {i}"),
            &envoy.get_with_token("/api/stats", &token),
        );
    }
    let expired = sign(
        &k.rs256,
        &with(corp_claims("user-stats"), json!({"exp": now() - 3600})),
    );
    for _ in 0..3 {
        assert_eq!(envoy.get_with_token("/api/stats", &expired).status, 401);
    }
    for _ in 0..2 {
        assert_eq!(envoy.get("/api/stats", &[]).status, 401);
    }
    assert_eq!(envoy.get("/nowhere", &[]).status, 403);
    forwarded("anonymous", &envoy.get("/healthz", &[]));
    assert_eq!(upstream.count(), 11);

    let stats = envoy.stats();
    assert!(
        stats.contains_key("wasmcustom.tokengate.allowed"),
        "Envoy shows the filter's metrics as wasmcustom.*: {stats:?}"
    );
    let counter = |name: &str| envoy.counter(name);
    assert_eq!(
        counter("tokengate.allowed"),
        11,
        "10 verified + 1 anonymous: {stats:?}"
    );
    assert_eq!(counter("tokengate.denied.expired"), 3, "{stats:?}");
    assert_eq!(counter("tokengate.denied.missing"), 2, "{stats:?}");
    assert_eq!(counter("tokengate.denied.no_rule"), 1, "{stats:?}");
    let (hit, miss) = (
        counter("tokengate.cache.hit"),
        counter("tokengate.cache.miss"),
    );
    // Each worker (--concurrency 2) has its own cache: the valid token misses at most
    // once per worker; the expired one is never cached.
    assert!(
        hit >= 1,
        "10 identical tokens must hit the cache at least once: hit={hit} miss={miss}"
    );
    assert!(
        miss >= 1,
        "the first sight of a token is a miss: hit={hit} miss={miss}"
    );
    assert!(
        hit + miss >= 10,
        "every verified request consults the cache: hit={hit} miss={miss}"
    );
}

#[test]
fn bad_config_makes_envoy_refuse_to_start_and_names_the_field() {
    let k = keys();
    let cases = [
        (
            "unknown field",
            json!({"providers": {"x": {"issuer": ISSUER, "jwks": {"inline": k.public_jwks(), "bogus": 1}}}}),
            "providers.x.jwks.bogus",
        ),
        (
            "rule naming an unknown provider",
            json!({
                "providers": {"corp": {"issuer": ISSUER, "jwks": {"inline": k.public_jwks()}}},
                "rules": [{"match": {}, "authn": {"any": ["nobody"]}}]
            }),
            "rules[0].authn.any[0]",
        ),
    ];
    for (case, config, field) in cases {
        let config = config.to_string();
        let offline = tokengate::config::Config::from_json(config.as_bytes())
            .err()
            .unwrap_or_else(|| panic!("{case}: the CLI check should refuse this config too"));
        assert_eq!(offline.path, field, "{case}: offline error {offline}");

        let rejection =
            Envoy::start_expecting_rejection(&config).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(
            !rejection.status.success(),
            "{case}: Envoy must exit with an error, got {}; log:\n{}",
            rejection.status,
            rejection.log
        );
        let line = rejection
            .log
            .lines()
            .find(|l| l.contains("configuration rejected"))
            .unwrap_or_else(|| {
                panic!(
                    "{case}: no 'configuration rejected' line in the log:\n{}",
                    rejection.log
                )
            });
        assert!(
            line.contains(&format!("{field}:")),
            "{case}: the log line must name {field}: {line}"
        );
        assert!(
            rejection.elapsed < support::envoy::START_TIMEOUT,
            "{case}: took {:?}",
            rejection.elapsed
        );
    }
}

/// A token the trusted key signed whose claims name `sub` twice (first "alice", then
/// "admin"): serde_json would read admin, another parser alice. Refused whole, at any
/// depth, before anything reaches the upstream.
#[test]
fn a_signed_token_naming_a_claim_twice_is_refused_as_malformed() {
    let (upstream, envoy) = start();
    let k = keys();
    let header = json!({"alg": "ES256", "kid": k.es256.kid});
    let header = tokengate::crypto::b64::encode(header.to_string().as_bytes());
    let claims = corp_claims("alice").to_string();
    for (case, payload) in [
        ("sub twice", claims.replacen('{', r#"{"sub":"admin","#, 1)),
        (
            "a nested member twice",
            claims.replacen(
                r#""roles":["a","b"]"#,
                r#""roles":["a"],"roles":["admin"]"#,
                1,
            ),
        ),
    ] {
        assert_ne!(payload, claims, "{case}: the payload was changed");
        let input = format!(
            "{header}.{}",
            tokengate::crypto::b64::encode(payload.as_bytes())
        );
        let signature = k.es256.sign_bytes(input.as_bytes()).unwrap();
        let token = format!("{input}.{}", tokengate::crypto::b64::encode(&signature));
        let before = upstream.count();
        let response = envoy.get_with_token("/api/orders", &token);
        assert_invalid_token(
            case,
            &upstream,
            before,
            &response,
            &token,
            "malformed token",
        );
    }
}
