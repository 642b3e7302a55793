//! End-to-end tests of remote key sets: the release `tokengate.wasm` in a real Envoy
//! (`--concurrency 2`) fetching its keys by HTTP callout through the `idp` cluster from
//! a controllable identity provider (`support::idp`) that counts what it is asked and
//! fails on command. Run with `make e2e`.
//!
//! Every wait is a poll with a deadline. The few sleeps wait for behaviour that is
//! itself timed (a worker adopting keys another fetched at its next tick).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::idp::{Idp, Mode};
use support::keepalive::Connection;
use support::{keys, now, Envoy, Response, Upstream};
use tokengate::crypto::alg::Alg;
use tokengate::crypto::sign::{generate_jwk, SigningKey};

const REALM: &str = "api";
const ISSUER: &str = "https://idp.example.com/realms/remote";
const AUDIENCE: &str = "orders";
/// The callout timeout every test configures.
const TIMEOUT_MS: u64 = 500;
const POLL: Duration = Duration::from_millis(50);
/// A worker picks up a key set another worker fetched at its next tick: 50 ms while it
/// has no keys, 1 s once it has some. Waited for only where a test needs every worker
/// to hold the same keys before it acts.
const ADOPT_FIRST_KEYS: Duration = Duration::from_millis(500);

// --- set-up ----------------------------------------------------------------------------

/// The one provider, `corp`, with these `jwks` settings; `sub` is forwarded.
fn config(jwks: Value) -> String {
    json!({
        "realm": REALM,
        "providers": {
            "corp": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "jwks": jwks,
                "forward": {"claims": {"sub": "x-user-id"}}
            }
        }
    })
    .to_string()
}

/// `jwks` settings fetching `idp`'s key set directly, with `extra` fields merged in.
fn jwks_uri(idp: &Idp, extra: Value) -> Value {
    let mut jwks = json!({"uri": idp.jwks_uri(), "cluster": "idp", "timeout_ms": TIMEOUT_MS});
    for (name, value) in extra.as_object().expect("extra is an object") {
        jwks[name] = value.clone();
    }
    jwks
}

/// An upstream, and an Envoy in front of it whose `idp` cluster points at `idp`.
fn start(idp: &Idp, jwks: Value) -> (Upstream, Envoy) {
    let config = config(jwks);
    if let Err(e) = tokengate::config::Config::from_json(config.as_bytes()) {
        panic!("the test configuration is invalid: {e}");
    }
    let upstream = Upstream::start();
    let envoy = Envoy::start_with_clusters(&config, upstream.port(), &[("idp", idp.port())])
        .unwrap_or_else(|e| panic!("{e}"));
    (upstream, envoy)
}

/// A JWKS with the public halves of these keys.
fn jwks_of(signers: &[&SigningKey]) -> Value {
    json!({"keys": signers.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()})
}

/// A fresh ES256 key with a kid no other test uses.
fn new_es256_key(prefix: &str) -> SigningKey {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let jwk = generate_jwk(Alg::ES256, &format!("{prefix}-{nanos:x}")).expect("generate ES256");
    SigningKey::from_jwk(&jwk).expect("load ES256")
}

// --- tokens ----------------------------------------------------------------------------

/// Valid claims; every call gives a different token (`jti`), so no request is answered
/// from a worker's verified-token cache.
fn claims(sub: &str) -> Value {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let now = now();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "jti": format!("{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst)),
        "iat": now,
        "nbf": now - 5,
        "exp": now + 600
    })
}

fn token(key: &SigningKey, sub: &str) -> String {
    key.sign(&claims(sub))
        .unwrap_or_else(|e| panic!("signing: {e}"))
}

/// A token signed by `key` but naming `kid`.
fn token_with_kid(key: &SigningKey, kid: &str, sub: &str) -> String {
    let header = json!({"alg": key.alg.name(), "typ": "JWT", "kid": kid});
    key.sign_with_header(&header, &claims(sub))
        .unwrap_or_else(|e| panic!("signing: {e}"))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
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

/// The request went through to the upstream as `sub`.
fn assert_allowed(case: &str, response: &Response, sub: &str) {
    assert_eq!(
        response.status,
        200,
        "{case}: expected the request to reach the upstream; got {} {:?} {}",
        response.status,
        response.header("www-authenticate"),
        response.text()
    );
    let seen = response.json();
    assert_eq!(
        seen["headers"]["x-user-id"], sub,
        "{case}: the upstream should see the verified subject: {seen}"
    );
    assert!(
        seen["headers"].get("authorization").is_none(),
        "{case}: the token must not go upstream: {seen}"
    );
}

fn assert_json_error(case: &str, response: &Response, error: &str, description: &str) {
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{case}: refusals are JSON"
    );
    let body = response.json();
    assert_eq!(body["error"], error, "{case}: body {body}");
    assert_eq!(
        body["error_description"], description,
        "{case}: body {body}"
    );
}

/// 401 invalid_token with this description.
fn assert_invalid_token(case: &str, response: &Response, description: &str) {
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
    assert_json_error(case, response, "invalid_token", description);
}

/// 503 "keys unavailable": no challenge (the client did nothing wrong), a JSON body.
fn assert_keys_unavailable(case: &str, response: &Response) {
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
    assert_json_error(
        case,
        response,
        "temporarily_unavailable",
        "signing keys unavailable",
    );
}

/// The tokengate stats that matter here, for failure messages.
fn jwks_stats(envoy: &Envoy) -> String {
    envoy
        .stats()
        .into_iter()
        .filter(|(name, _)| name.contains("jwks") || name.contains("denied"))
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn idp_counts(idp: &Idp) -> String {
    format!(
        "idp: discovery={} certs={} other={}",
        idp.discovery_count(),
        idp.certs_count(),
        idp.other_count()
    )
}

const FETCH_SUCCESS: &str = "tokengate.jwks.fetch.success";
const FETCH_FAILURE: &str = "tokengate.jwks.fetch.failure";
const REFETCH_UNKNOWN_KID: &str = "tokengate.jwks.refetch_unknown_kid";
const STALE_SERVED: &str = "tokengate.jwks.stale_served";
const ISSUER_MISMATCH: &str = "tokengate.jwks.discovery_issuer_mismatch";
const AGE_GAUGE: &str = "tokengate.jwks.corp.age_secs";

/// Waits until the first key set has been fetched and every worker has had time to
/// adopt it.
fn wait_for_first_keys(envoy: &Envoy, idp: &Idp) {
    eventually("the first key set", Duration::from_secs(15), || {
        if envoy.counter(FETCH_SUCCESS) >= 1 {
            Ok(())
        } else {
            Err(format!("{} {}", jwks_stats(envoy), idp_counts(idp)))
        }
    });
    std::thread::sleep(ADOPT_FIRST_KEYS);
}

// --- 1. one fetch for all workers ------------------------------------------------------

#[test]
fn remote_keys_are_fetched_once_for_all_workers() {
    let k = keys();
    let idp = Idp::start(ISSUER, &jwks_of(&[&k.es256, &k.rs256]));
    let (upstream, envoy) = start(&idp, jwks_uri(&idp, json!({"cache_secs": 600})));

    // Each request on its own connection: the kernel spreads them over both workers.
    // The first ones may arrive before the keys do: they wait, then pass.
    for i in 0..20 {
        let signer = if i % 2 == 0 { &k.es256 } else { &k.rs256 };
        let sub = format!("user-{i}");
        let response = envoy.get_with_token("/orders", &token(signer, &sub));
        assert_allowed(&format!("request {i}"), &response, &sub);
    }
    assert_eq!(upstream.count(), 20);
    assert_eq!(
        idp.certs_count(),
        1,
        "one fetch for every worker; {} {}",
        idp_counts(&idp),
        jwks_stats(&envoy)
    );
    assert_eq!(idp.discovery_count(), 0, "no discovery was configured");
    assert_eq!(envoy.counter(FETCH_SUCCESS), 1, "{}", jwks_stats(&envoy));
    assert_eq!(envoy.counter(FETCH_FAILURE), 0, "{}", jwks_stats(&envoy));
    assert_eq!(
        envoy.counter(REFETCH_UNKNOWN_KID),
        0,
        "{}",
        jwks_stats(&envoy)
    );
    assert_eq!(envoy.counter(STALE_SERVED), 0, "{}", jwks_stats(&envoy));
    assert!(
        envoy
            .stats()
            .contains_key(&format!("wasmcustom.{AGE_GAUGE}")),
        "the key age gauge is published: {}",
        jwks_stats(&envoy)
    );
}

// --- 2. rotation -----------------------------------------------------------------------

#[test]
fn rotated_key_is_fetched_on_first_sight_and_removed_key_is_refused_after_refresh() {
    const CACHE_SECS: u64 = 8;
    let old = &keys().es256;
    let idp = Idp::start(ISSUER, &jwks_of(&[old]));
    let (upstream, envoy) = start(
        &idp,
        jwks_uri(
            &idp,
            // The rate limit outlasts the test: old-kid tokens later must not refetch.
            json!({"cache_secs": CACHE_SECS, "unknown_kid_refetch_secs": 120}),
        ),
    );
    let mut forwarded = 0;
    assert_allowed(
        "old key before rotation",
        &envoy.get_with_token("/orders", &token(old, "old-1")),
        "old-1",
    );
    forwarded += 1;
    wait_for_first_keys(&envoy, &idp);

    // A refresh (every 0.8 × 8 s) landing between the rotation and the first new-kid
    // request would fetch the new key itself: rotate early in a refresh period.
    if idp.since_last_certs().unwrap_or_default() > Duration::from_secs(3) {
        let seen = idp.certs_count();
        eventually("a refresh", Duration::from_secs(15), || {
            let (count, success) = (idp.certs_count(), envoy.counter(FETCH_SUCCESS));
            if count > seen && success as usize >= count {
                Ok(())
            } else {
                Err(format!("{} {}", idp_counts(&idp), jwks_stats(&envoy)))
            }
        });
    }
    let before = idp.certs_count();
    assert_eq!(envoy.counter(REFETCH_UNKNOWN_KID), 0);

    let new = new_es256_key("rotated");
    idp.set_jwks(&jwks_of(&[old, &new]));
    let response = envoy.get_with_token("/orders", &token(&new, "new-1"));
    assert_allowed("first request with the new kid", &response, "new-1");
    forwarded += 1;
    assert_eq!(
        idp.certs_count(),
        before + 1,
        "exactly one refetch for the new kid; {} {}",
        idp_counts(&idp),
        jwks_stats(&envoy)
    );
    assert_eq!(
        envoy.counter(REFETCH_UNKNOWN_KID),
        1,
        "{}",
        jwks_stats(&envoy)
    );
    // Every worker now knows both keys (one fetched them, the other adopts them or
    // waits for them).
    for i in 0..10 {
        let sub = format!("new-{}", i + 2);
        assert_allowed(
            &format!("new kid, request {i}"),
            &envoy.get_with_token("/orders", &token(&new, &sub)),
            &sub,
        );
        assert_allowed(
            &format!("old kid during the overlap, request {i}"),
            &envoy.get_with_token("/orders", &token(old, "old-2")),
            "old-2",
        );
        forwarded += 2;
    }
    assert_eq!(
        envoy.counter(REFETCH_UNKNOWN_KID),
        1,
        "known kids never refetch: {}",
        jwks_stats(&envoy)
    );

    // The IdP retires the old key; the next scheduled refresh brings the news.
    idp.set_jwks(&jwks_of(&[&new]));
    let seen = idp.certs_count();
    eventually(
        "the refresh after the old key was removed",
        Duration::from_secs(15),
        || {
            let (count, success) = (idp.certs_count(), envoy.counter(FETCH_SUCCESS));
            if count > seen && success as usize >= count {
                Ok(())
            } else {
                Err(format!("{} {}", idp_counts(&idp), jwks_stats(&envoy)))
            }
        },
    );
    // The worker that did not fetch adopts the new set within its 1 s tick: until then
    // it may still accept the old key. 20 refusals in a row on new connections means
    // both workers refuse.
    let mut refused = None;
    eventually(
        "old-key tokens refused on every worker",
        Duration::from_secs(10),
        || {
            let mut streak = 0;
            while streak < 20 {
                let response = envoy.get_with_token("/orders", &token(old, "old-3"));
                match response.status {
                    401 => {
                        streak += 1;
                        refused = Some(response);
                    }
                    200 => {
                        forwarded += 1;
                        return Err(format!("200 after {streak} refusals"));
                    }
                    other => panic!(
                        "old key after removal: unexpected {other} {}",
                        response.text()
                    ),
                }
            }
            Ok(())
        },
    );
    assert_invalid_token(
        "old key after removal",
        refused.as_ref().expect("a refusal"),
        "unknown signing key",
    );
    assert_allowed(
        "new key after the old one was removed",
        &envoy.get_with_token("/orders", &token(&new, "new-last")),
        "new-last",
    );
    forwarded += 1;
    assert_eq!(
        upstream.count(),
        forwarded,
        "refused requests never reach upstream"
    );
    assert_eq!(
        envoy.counter(REFETCH_UNKNOWN_KID),
        1,
        "an old kid inside the rate limit is refused without a fetch: {}",
        jwks_stats(&envoy)
    );
    assert_eq!(envoy.counter(FETCH_FAILURE), 0, "{}", jwks_stats(&envoy));
}

// --- 3. stale on error -----------------------------------------------------------------

/// Keys fetched once, then every refresh fails in `mode`: tokens signed with the last
/// good keys keep passing, failures are counted, and once the set is past its time to
/// live the requests it verifies are counted as stale. The log gives `reason`.
fn last_good_keys_keep_serving(mode: Mode, reason: &str) {
    const CACHE_SECS: u64 = 2;
    let k = keys();
    let idp = Idp::start(ISSUER, &jwks_of(&[&k.es256, &k.rs256]));
    let (upstream, envoy) = start(&idp, jwks_uri(&idp, json!({"cache_secs": CACHE_SECS})));
    let mut forwarded = 0;
    assert_allowed(
        "before the failure",
        &envoy.get_with_token("/orders", &token(&k.es256, "u-0")),
        "u-0",
    );
    forwarded += 1;
    wait_for_first_keys(&envoy, &idp);
    idp.set_mode(mode);
    let certs_at_failure = idp.certs_count();

    // Refresh at 1.6 s fails, retries back off; the set goes stale at 2 s.
    let mut i = 0;
    eventually(
        "failed refreshes and stale keys served",
        Duration::from_secs(20),
        || {
            i += 1;
            let sub = format!("u-{i}");
            let signer = if i % 2 == 0 { &k.es256 } else { &k.rs256 };
            let response = envoy.get_with_token("/orders", &token(signer, &sub));
            assert_allowed(&format!("{mode:?}: request {i}"), &response, &sub);
            forwarded += 1;
            let stats = envoy.stats();
            let get = |name: &str| {
                stats
                    .get(&format!("wasmcustom.{name}"))
                    .copied()
                    .unwrap_or(0)
            };
            if get(FETCH_FAILURE) >= 1 && get(STALE_SERVED) >= 1 && get(AGE_GAUGE) >= CACHE_SECS {
                Ok(())
            } else {
                Err(format!("{} {}", jwks_stats(&envoy), idp_counts(&idp)))
            }
        },
    );
    assert!(
        idp.certs_count() > certs_at_failure,
        "{mode:?}: the refresh reached the IdP: {}",
        idp_counts(&idp)
    );
    // It failed for the reason this mode is about.
    let expected = format!("key refresh failed ({reason}); serving the last good keys");
    eventually(
        &format!("{expected:?} in Envoy's log"),
        Duration::from_secs(10),
        || {
            let log = envoy.log();
            if log.contains(&expected) {
                Ok(())
            } else {
                let failures: Vec<&str> = log.lines().filter(|l| l.contains("failed")).collect();
                Err(format!("failure lines: {failures:?}"))
            }
        },
    );
    // Still serving after the failures, on both workers.
    for j in 0..6 {
        let sub = format!("after-{j}");
        assert_allowed(
            &format!("{mode:?}: after the failures, request {j}"),
            &envoy.get_with_token("/orders", &token(&k.rs256, &sub)),
            &sub,
        );
        forwarded += 1;
    }
    assert_eq!(upstream.count(), forwarded);
}

#[test]
fn last_good_keys_keep_serving_when_the_jwks_endpoint_returns_500() {
    last_good_keys_keep_serving(Mode::Status(500), "HTTP status 500");
}

#[test]
fn last_good_keys_keep_serving_when_the_jwks_endpoint_hangs_past_the_timeout() {
    // Envoy answers a callout that timed out with a 504 of its own.
    last_good_keys_keep_serving(Mode::Hang, "HTTP status 504");
}

#[test]
fn last_good_keys_keep_serving_when_the_jwks_endpoint_returns_garbage() {
    last_good_keys_keep_serving(Mode::Garbage, "JWKS is not valid JSON");
}

#[test]
fn last_good_keys_keep_serving_when_the_jwks_endpoint_returns_10_mib() {
    // A valid JWKS padded to 10 MiB: refused for its size alone.
    last_good_keys_keep_serving(Mode::Huge, "response larger than the size cap");
}

// --- 4. cold start with the IdP down ---------------------------------------------------

/// No keys ever fetched: a valid token gets 503 (not 401, not a pass-through); once the
/// IdP is back, the filter recovers on its own.
fn cold_start_recovers(down: impl Fn(&Idp), up: impl Fn(&Idp), what: &str) {
    let k = keys();
    let idp = Idp::start(ISSUER, &jwks_of(&[&k.es256]));
    down(&idp);
    let (upstream, envoy) = start(&idp, jwks_uri(&idp, json!({})));
    eventually("a failed first fetch", Duration::from_secs(15), || {
        if envoy.counter(FETCH_FAILURE) >= 1 {
            Ok(())
        } else {
            Err(format!("{} {}", jwks_stats(&envoy), idp_counts(&idp)))
        }
    });
    for i in 0..3 {
        let response = envoy.get_with_token("/orders", &token(&k.es256, "cold"));
        assert_keys_unavailable(&format!("{what}: request {i}"), &response);
    }
    assert_eq!(upstream.count(), 0, "{what}: nothing reaches the upstream");
    assert_eq!(envoy.counter(FETCH_SUCCESS), 0);
    assert_eq!(envoy.counter("tokengate.denied.keys_unavailable"), 3);

    up(&idp);
    // Cold retries back off up to 10 s.
    let response = eventually(
        &format!("{what}: recovery"),
        Duration::from_secs(25),
        || {
            let response = envoy.get_with_token("/orders", &token(&k.es256, "warm"));
            match response.status {
                200 => Ok(response),
                503 => {
                    assert_keys_unavailable(&format!("{what}: while down"), &response);
                    Err(format!("{} {}", jwks_stats(&envoy), idp_counts(&idp)))
                }
                other => panic!("{what}: unexpected {other} {}", response.text()),
            }
        },
    );
    assert_allowed(&format!("{what}: after recovery"), &response, "warm");
    assert_eq!(envoy.counter(FETCH_SUCCESS), 1, "{}", jwks_stats(&envoy));
    assert_eq!(upstream.count(), 1);
    for i in 0..4 {
        let sub = format!("warm-{i}");
        assert_allowed(
            &format!("{what}: request {i} after recovery"),
            &envoy.get_with_token("/orders", &token(&k.es256, &sub)),
            &sub,
        );
    }
}

#[test]
fn cold_start_with_the_idp_refusing_connections_is_503_until_it_comes_back() {
    cold_start_recovers(
        |idp| idp.stop_listening(),
        |idp| idp.listen_again(),
        "connection refused",
    );
}

#[test]
fn cold_start_with_the_idp_failing_is_503_until_it_comes_back() {
    cold_start_recovers(
        |idp| idp.set_mode(Mode::Status(500)),
        |idp| {
            assert!(idp.certs_count() >= 1, "the IdP saw the failed fetches");
            idp.set_mode(Mode::Serve)
        },
        "HTTP 500",
    );
}

// --- 5. a flood of unknown kids --------------------------------------------------------

#[test]
fn a_flood_of_random_kids_is_refused_without_a_flood_of_fetches() {
    const TOKENS: usize = 1000;
    const THREADS: usize = 4;
    let k = keys();
    let idp = Idp::start(ISSUER, &jwks_of(&[&k.es256, &k.rs256]));
    // Default refetch rate limit (30 s) and cache time.
    let (upstream, envoy) = start(&idp, jwks_uri(&idp, json!({})));
    assert_allowed(
        "valid token",
        &envoy.get_with_token("/orders", &token(&k.es256, "ok")),
        "ok",
    );
    wait_for_first_keys(&envoy, &idp);

    let begun = Instant::now();
    let port = envoy.port;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let signer = &keys().es256;
                let mut connection = Connection::new(port);
                let mut refused = Vec::new();
                for i in 0..TOKENS / THREADS {
                    // Valid claims, a real signature, a kid nobody published.
                    let kid = format!("{:016x}{t}{i}", rand_u64());
                    let token = token_with_kid(signer, &kid, "flood");
                    let response = connection
                        .get("/orders", &[("authorization", &bearer(&token))])
                        .unwrap_or_else(|e| panic!("flood request {t}/{i}: {e}"));
                    refused.push(response);
                }
                (refused, connection.opened)
            })
        })
        .collect();
    let mut responses = Vec::new();
    let mut connections = 0;
    for thread in threads {
        let (refused, opened) = thread.join().expect("flood thread");
        responses.extend(refused);
        connections += opened;
    }
    let elapsed = begun.elapsed();
    assert_eq!(responses.len(), TOKENS);
    for (i, response) in responses.iter().enumerate() {
        assert_invalid_token(&format!("random kid {i}"), response, "unknown signing key");
    }
    assert_eq!(
        upstream.count(),
        1,
        "no random-kid request reached the upstream"
    );
    assert!(
        idp.certs_count() <= 3,
        "{TOKENS} unknown kids must not mean {TOKENS} fetches: {} {}",
        idp_counts(&idp),
        jwks_stats(&envoy)
    );
    assert!(
        envoy.counter(REFETCH_UNKNOWN_KID) <= 2,
        "{}",
        jwks_stats(&envoy)
    );
    assert_eq!(
        envoy.counter("tokengate.denied.unknown_kid"),
        TOKENS as u64,
        "{}",
        jwks_stats(&envoy)
    );
    assert!(
        elapsed < Duration::from_secs(90),
        "{TOKENS} refusals took {elapsed:?} over {connections} connection(s)"
    );
    eprintln!("{TOKENS} random-kid refusals in {elapsed:?} over {connections} connection(s)");
    // The provider still works.
    assert_allowed(
        "valid token after the flood",
        &envoy.get_with_token("/orders", &token(&k.rs256, "still-ok")),
        "still-ok",
    );
}

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

// --- 6. discovery ----------------------------------------------------------------------

#[test]
fn discovery_document_gives_the_jwks_uri() {
    let k = keys();
    // A path nobody would guess: only the document can point there.
    let idp = Idp::start_with_certs_path(
        ISSUER,
        &jwks_of(&[&k.es256]),
        "/realms/remote/protocol/openid-connect/certs",
    );
    let (upstream, envoy) = start(
        &idp,
        json!({"discovery": idp.discovery_uri(), "cluster": "idp", "timeout_ms": TIMEOUT_MS}),
    );
    for i in 0..10 {
        let sub = format!("d-{i}");
        assert_allowed(
            &format!("request {i}"),
            &envoy.get_with_token("/orders", &token(&k.es256, &sub)),
            &sub,
        );
    }
    assert_eq!(upstream.count(), 10);
    assert_eq!(idp.discovery_count(), 1, "{}", idp_counts(&idp));
    assert_eq!(idp.certs_count(), 1, "{}", idp_counts(&idp));
    assert_eq!(idp.other_count(), 0, "{}", idp_counts(&idp));
    assert_eq!(envoy.counter(FETCH_SUCCESS), 1, "{}", jwks_stats(&envoy));
    assert_eq!(envoy.counter(ISSUER_MISMATCH), 0, "{}", jwks_stats(&envoy));
}

#[test]
fn discovery_document_naming_another_issuer_is_refused() {
    let k = keys();
    let idp = Idp::start(
        "https://evil.example.com/realms/remote",
        &jwks_of(&[&k.es256]),
    );
    let (upstream, envoy) = start(
        &idp,
        json!({"discovery": idp.discovery_uri(), "cluster": "idp", "timeout_ms": TIMEOUT_MS}),
    );
    // Two refused documents: the retry after the first refusal doesn't fetch keys either.
    eventually(
        "two refused discovery documents",
        Duration::from_secs(20),
        || {
            if envoy.counter(ISSUER_MISMATCH) >= 2 && idp.discovery_count() >= 2 {
                Ok(())
            } else {
                Err(format!("{} {}", jwks_stats(&envoy), idp_counts(&idp)))
            }
        },
    );
    let response = envoy.get_with_token("/orders", &token(&k.es256, "d"));
    assert_keys_unavailable("valid token, refused discovery document", &response);
    assert_eq!(upstream.count(), 0);
    eventually(
        "the refusal in Envoy's log",
        Duration::from_secs(20),
        || {
            let log = envoy.log();
            match log
                .lines()
                .find(|l| l.contains("REFUSED discovery document"))
            {
                Some(line) if line.contains(ISSUER) => Ok(()),
                Some(line) => Err(format!("the line does not name the issuer: {line}")),
                None => Err("no REFUSED line yet".into()),
            }
        },
    );
    assert_eq!(
        idp.certs_count(),
        0,
        "keys are never fetched: {}",
        idp_counts(&idp)
    );
    assert_eq!(idp.other_count(), 0, "{}", idp_counts(&idp));
    assert_eq!(envoy.counter(FETCH_SUCCESS), 0, "{}", jwks_stats(&envoy));
    assert!(envoy.counter(FETCH_FAILURE) >= 2, "{}", jwks_stats(&envoy));
}
