//! End-to-end tests of revocable JWTs: the release `tokengate.wasm` in a real Envoy
//! (`--concurrency 2`) looking tokens up in Token Status Lists served by a controllable
//! issuer (`support::status_list`) through the `lists` cluster, and answering OpenID
//! Connect back-channel logout POSTs itself. Run with `make e2e`.
//!
//! Every wait is a poll with a deadline: a list is used for its `ttl` (2 s here) and
//! refreshed in the background before it runs out; a worker adopts a logout another
//! recorded at its next tick (1 s when idle).

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
use support::idp::Idp;
use support::status_list::{Mode, StatusLists};
use support::{now, Envoy, Response, Upstream};
use tokengate::crypto::alg::Alg;
use tokengate::crypto::sign::{generate_jwk, SigningKey};

const REALM: &str = "api";
const ISSUER: &str = "https://idp.example.com/realms/revocable";
const AUDIENCE: &str = "orders";
const LOGOUT_PATH: &str = "/oauth2/backchannel-logout";
const CLIENT_ID: &str = "gateway";
/// The lists' ttl, and the configured bound on it.
const TTL_SECS: u64 = 2;
const POLL: Duration = Duration::from_millis(50);
/// A change at the issuer is seen within the ttl; the margin is for two busy cores.
const WITHIN_TTL: Duration = Duration::from_secs(TTL_SECS + 3);
/// Every worker adopts a recorded logout at its next tick (1 s idle), plus margin.
const WITHIN_A_TICK: Duration = Duration::from_secs(3);
const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

// --- set-up ----------------------------------------------------------------------------

fn new_es256_key(prefix: &str) -> SigningKey {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let jwk = generate_jwk(Alg::ES256, &format!("{prefix}-{nanos:x}")).expect("generate ES256");
    SigningKey::from_jwk(&jwk).expect("load ES256")
}

/// The one provider, `corp`, trusting `key`, with status lists from `lists` (these
/// `status_list` fields merged in) and back-channel logout.
fn config(key: &SigningKey, lists: &StatusLists, status_list: Value) -> String {
    let jwks = json!({"inline": {"keys": [key.public_jwk()]}});
    config_with_jwks(jwks, lists, status_list)
}

/// [`config`] with these `jwks` settings.
fn config_with_jwks(jwks: Value, lists: &StatusLists, status_list: Value) -> String {
    let mut list = json!({
        "origins": {lists.origin(): "lists"},
        "max_ttl_secs": TTL_SECS,
        "timeout_ms": 500
    });
    for (name, value) in status_list.as_object().expect("an object") {
        list[name] = value.clone();
    }
    json!({
        "realm": REALM,
        "providers": {
            "corp": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "jwks": jwks,
                "forward": {"claims": {"sub": "x-user-id"}},
                "revocation": {
                    "status_list": list,
                    "backchannel_logout": {"path": LOGOUT_PATH, "client_id": CLIENT_ID,
                                           "max_token_lifetime_secs": 600}
                }
            }
        }
    })
    .to_string()
}

fn start(config: &str, lists: &StatusLists) -> (Upstream, Envoy) {
    if let Err(e) = tokengate::config::Config::from_json(config.as_bytes()) {
        panic!("the test configuration is invalid: {e}");
    }
    let upstream = Upstream::start();
    let envoy = Envoy::start_with_clusters(config, upstream.port(), &[("lists", lists.port())])
        .unwrap_or_else(|e| panic!("{e}"));
    (upstream, envoy)
}

// --- tokens ----------------------------------------------------------------------------

fn unique() -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// A valid access token for `sub`, issued at `iat`, with a status list reference.
fn token(key: &SigningKey, sub: &str, iat: i64, status: Option<(String, u64)>) -> String {
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "sid": format!("sid-{sub}"),
        "jti": unique(), "iat": iat, "exp": now() + 600
    });
    if let Some((uri, idx)) = status {
        claims["status"] = json!({"status_list": {"idx": idx, "uri": uri}});
    }
    key.sign(&claims).unwrap_or_else(|e| panic!("signing: {e}"))
}

/// A logout token for `sub` signed by `key`, with a fresh `jti`.
fn logout_token(key: &SigningKey, sub: &str) -> String {
    let claims = json!({
        "iss": ISSUER, "aud": CLIENT_ID, "iat": now(), "jti": unique(), "sub": sub,
        "events": {LOGOUT_EVENT: {}}
    });
    let header = json!({"alg": "ES256", "kid": key.kid.as_deref(), "typ": "logout+jwt"});
    key.sign_with_header(&header, &claims)
        .unwrap_or_else(|e| panic!("signing: {e}"))
}

fn post_logout(envoy: &Envoy, token: &str) -> Response {
    let body = format!("logout_token={token}");
    envoy.request(
        "POST",
        LOGOUT_PATH,
        &[("content-type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
}

// --- checks ----------------------------------------------------------------------------

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

fn seen(response: &Response) -> String {
    format!("{} {}", response.status, response.text())
}

fn assert_allowed(case: &str, response: &Response, sub: &str) {
    assert_eq!(response.status, 200, "{case}: {}", seen(response));
    assert_eq!(response.json()["headers"]["x-user-id"], sub, "{case}");
}

/// 401 invalid_token with this description, the challenge saying so.
fn is_invalid_token(response: &Response, description: &str) -> bool {
    let challenge = format!(
        "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{description}\""
    );
    response.status == 401
        && response.header("www-authenticate") == Some(challenge.as_str())
        && response.json()["error_description"] == description
}

/// Sends `n` requests, each on its own connection (so both workers answer some).
fn all_answer(
    envoy: &Envoy,
    token: &str,
    n: usize,
    ok: impl Fn(&Response) -> bool,
) -> Result<(), String> {
    for _ in 0..n {
        let response = envoy.get_with_token("/api", token);
        if !ok(&response) {
            return Err(seen(&response));
        }
    }
    Ok(())
}

// --- status lists ----------------------------------------------------------------------

#[test]
fn a_revoked_or_suspended_token_is_refused_within_the_ttl_and_accepted_again_once_valid() {
    let key = new_es256_key("lists");
    let lists = StatusLists::start();
    lists.publish(1, &key, 2, &[0, 0, 0, 0], TTL_SECS);
    let (_upstream, envoy) = start(&config(&key, &lists, json!({})), &lists);
    let alice = token(&key, "alice", now(), Some((lists.uri(1), 2)));
    let bob = token(&key, "bob", now(), Some((lists.uri(1), 3)));

    assert_allowed(
        "valid entry",
        &envoy.get_with_token("/api", &alice),
        "alice",
    );
    assert_eq!(
        lists.last_accept().as_deref(),
        Some("application/statuslist+jwt")
    );

    lists.publish(1, &key, 2, &[0, 0, 1, 0], TTL_SECS);
    let revoked_at = Instant::now();
    eventually("the revoked token to be refused", WITHIN_TTL, || {
        let r = envoy.get_with_token("/api", &alice);
        is_invalid_token(&r, "token revoked")
            .then_some(())
            .ok_or_else(|| seen(&r))
    });
    eprintln!(
        "revocation seen after {:?} (ttl {TTL_SECS} s)",
        revoked_at.elapsed()
    );
    // Both workers, cache hits included; the other entry is still valid.
    eventually("every worker to refuse it", WITHIN_TTL, || {
        all_answer(&envoy, &alice, 8, |r| is_invalid_token(r, "token revoked"))
    });
    assert_allowed("another entry", &envoy.get_with_token("/api", &bob), "bob");

    lists.publish(1, &key, 2, &[0, 0, 2, 0], TTL_SECS);
    eventually("the suspended token to be refused", WITHIN_TTL, || {
        let r = envoy.get_with_token("/api", &alice);
        is_invalid_token(&r, "token suspended")
            .then_some(())
            .ok_or_else(|| seen(&r))
    });

    lists.publish(1, &key, 2, &[0, 0, 0, 0], TTL_SECS);
    eventually("the token to be accepted again", WITHIN_TTL, || {
        all_answer(&envoy, &alice, 8, |r| r.status == 200)
    });

    assert!(envoy.counter("tokengate.revocation.status_list.revoked") >= 1);
    assert!(envoy.counter("tokengate.revocation.status_list.suspended") >= 1);
    assert!(envoy.counter("tokengate.revocation.status_list.fetch_success") >= 3);
    assert_eq!(
        envoy.counter("tokengate.revocation.status_list.fetch_failure"),
        0
    );
}

#[test]
fn an_unreachable_list_is_503_with_deny_and_let_through_and_counted_with_allow() {
    let key = new_es256_key("down");
    let lists = StatusLists::start();
    lists.set_mode(Mode::Status(503));
    let alice = token(&key, "alice", now(), Some((lists.uri(1), 0)));

    let (_upstream, envoy) = start(&config(&key, &lists, json!({})), &lists);
    let response = envoy.get_with_token("/api", &alice);
    assert_eq!(response.status, 503, "{}", seen(&response));
    assert_eq!(response.header("www-authenticate"), None);
    assert_eq!(
        response.json()["error_description"],
        "token status unavailable"
    );
    assert!(lists.requests() >= 1, "the list was asked for");
    assert!(envoy.counter("tokengate.revocation.status_list.fetch_failure") >= 1);
    drop(envoy);

    let allow = config(&key, &lists, json!({"on_unavailable": "allow"}));
    let (_upstream, envoy) = start(&allow, &lists);
    assert_allowed(
        "on_unavailable allow",
        &envoy.get_with_token("/api", &alice),
        "alice",
    );
    assert!(envoy.counter("tokengate.revocation.status_list.unavailable_allowed") >= 1);

    // A bad list (signed by a key the provider does not trust) is no list at all.
    let stranger = new_es256_key("stranger");
    lists.set_mode(Mode::Serve);
    lists.publish(1, &stranger, 1, &[1], TTL_SECS);
    assert_allowed(
        "forged list ignored",
        &envoy.get_with_token("/api", &alice),
        "alice",
    );
}

#[test]
fn a_token_naming_a_list_elsewhere_is_refused_without_a_callout() {
    let key = new_es256_key("elsewhere");
    let lists = StatusLists::start();
    lists.publish(1, &key, 1, &[0], TTL_SECS);
    // A long ttl: no refresh during the test, so every fetch is counted.
    let long = config(&key, &lists, json!({"max_ttl_secs": 60}));
    let (_upstream, envoy) = start(&long, &lists);
    let other_port = support::free_port();
    for uri in [
        format!("http://127.0.0.1:{other_port}/lists/1"),
        format!("http://localhost:{}/lists/1", lists.port()),
        "https://evil.example/lists/1".to_owned(),
    ] {
        let t = token(&key, "alice", now(), Some((uri.clone(), 0)));
        let r = envoy.get_with_token("/api", &t);
        assert!(
            is_invalid_token(&r, "status list not allowed"),
            "{uri}: {}",
            seen(&r)
        );
    }
    let malformed = {
        let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "a", "exp": now() + 600,
                            "status": {"status_list": {"idx": "one", "uri": lists.uri(1)}}});
        key.sign(&claims).unwrap()
    };
    assert!(is_invalid_token(
        &envoy.get_with_token("/api", &malformed),
        "token status invalid"
    ));
    assert_eq!(lists.requests(), 0, "no callout for any of them");

    // The allowed list: fetched once for both workers (a lease in shared data).
    lists.publish(1, &key, 1, &[0], 60);
    let listed = token(&key, "alice", now(), Some((lists.uri(1), 0)));
    all_answer(&envoy, &listed, 12, |r| r.status == 200).unwrap();
    assert_eq!(lists.requests(), 1, "one fetch shared by the workers");
}

#[test]
fn a_cold_request_waits_for_its_providers_keys_then_for_its_list() {
    let key = new_es256_key("cold");
    let idp = Idp::start(ISSUER, &json!({"keys": [key.public_jwk()]}));
    let lists = StatusLists::start();
    lists.publish(1, &key, 1, &[0, 1], TTL_SECS);
    let jwks = json!({"uri": idp.jwks_uri(), "cluster": "idp", "timeout_ms": 500});
    let config = config_with_jwks(jwks, &lists, json!({}));
    tokengate::config::Config::from_json(config.as_bytes()).unwrap();
    let upstream = Upstream::start();
    let clusters = [("lists", lists.port()), ("idp", idp.port())];
    let envoy = Envoy::start_with_clusters(&config, upstream.port(), &clusters)
        .unwrap_or_else(|e| panic!("{e}"));
    // The very first request: no keys, no list on either worker.
    let valid = token(&key, "alice", now(), Some((lists.uri(1), 0)));
    assert_allowed(
        "first request",
        &envoy.get_with_token("/api", &valid),
        "alice",
    );
    let revoked = token(&key, "bob", now(), Some((lists.uri(1), 1)));
    let r = envoy.get_with_token("/api", &revoked);
    assert!(is_invalid_token(&r, "token revoked"), "{}", seen(&r));
}

// --- back-channel logout ---------------------------------------------------------------

#[test]
fn a_backchannel_logout_refuses_that_subject_or_session_on_every_worker_and_later_tokens_pass() {
    let key = new_es256_key("bcl");
    let lists = StatusLists::start();
    let (_upstream, envoy) = start(&config(&key, &lists, json!({})), &lists);
    let before = token(&key, "alice", now() - 5, None);
    let bob = token(&key, "bob", now() - 5, None);
    // Cached on both workers before the logout.
    all_answer(&envoy, &before, 8, |r| r.status == 200).unwrap();

    let response = post_logout(&envoy, &logout_token(&key, "alice"));
    assert_eq!(response.status, 200, "{}", seen(&response));
    assert_eq!(response.header("cache-control"), Some("no-store"));

    eventually(
        "every worker to refuse the logged-out subject",
        WITHIN_A_TICK,
        || {
            all_answer(&envoy, &before, 10, |r| {
                is_invalid_token(r, "token revoked")
            })
        },
    );
    all_answer(&envoy, &bob, 4, |r| r.status == 200).unwrap();
    let after = token(&key, "alice", now() + 2, None);
    assert_allowed(
        "issued after the logout",
        &envoy.get_with_token("/api", &after),
        "alice",
    );

    // A session logout (sid only): bob's tokens of that session, not his others.
    let claims = json!({
        "iss": ISSUER, "aud": CLIENT_ID, "iat": now(), "jti": unique(), "sid": "sid-bob",
        "events": {LOGOUT_EVENT: {}}
    });
    let session_logout = key.sign(&claims).unwrap();
    assert_eq!(post_logout(&envoy, &session_logout).status, 200);
    let other_session = {
        let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "bob", "sid": "sid-other",
                            "iat": now() - 5, "exp": now() + 600});
        key.sign(&claims).unwrap()
    };
    eventually(
        "every worker to refuse the logged-out session",
        WITHIN_A_TICK,
        || all_answer(&envoy, &bob, 10, |r| is_invalid_token(r, "token revoked")),
    );
    all_answer(&envoy, &other_session, 4, |r| r.status == 200).unwrap();
    assert_eq!(
        envoy.counter("tokengate.revocation.backchannel.accepted"),
        2
    );
}

#[test]
fn a_forged_or_replayed_logout_token_is_400_and_records_nothing() {
    let key = new_es256_key("bcl-bad");
    let lists = StatusLists::start();
    let (_upstream, envoy) = start(&config(&key, &lists, json!({})), &lists);
    let alice = token(&key, "alice", now() - 5, None);
    let carol = token(&key, "carol", now() - 5, None);

    let forged = logout_token(&new_es256_key("bcl-bad"), "alice");
    let response = post_logout(&envoy, &forged);
    assert_eq!(response.status, 400, "{}", seen(&response));
    assert_eq!(response.json()["error"], "invalid_request");

    let no_token = envoy.request("POST", LOGOUT_PATH, &[], b"");
    assert_eq!(no_token.status, 400, "{}", seen(&no_token));
    assert_eq!(
        no_token.json()["error_description"],
        "logout_token parameter required"
    );
    let get = envoy.get(LOGOUT_PATH, &[]);
    assert_eq!(get.status, 405, "{}", seen(&get));

    let once = logout_token(&key, "carol");
    assert_eq!(post_logout(&envoy, &once).status, 200);
    let replayed = post_logout(&envoy, &once);
    assert_eq!(replayed.status, 400, "{}", seen(&replayed));
    assert_eq!(
        replayed.json()["error_description"],
        "logout token already used"
    );

    let huge = vec![b'a'; 70 * 1024];
    let too_big = envoy.request("POST", LOGOUT_PATH, &[], &huge);
    assert_eq!(too_big.status, 413, "{}", seen(&too_big));

    std::thread::sleep(WITHIN_A_TICK);
    all_answer(&envoy, &alice, 6, |r| r.status == 200).unwrap();
    all_answer(&envoy, &carol, 6, |r| is_invalid_token(r, "token revoked")).unwrap();
    assert_eq!(
        envoy.counter("tokengate.revocation.backchannel.accepted"),
        1
    );
    assert_eq!(
        envoy.counter("tokengate.revocation.backchannel.rejected"),
        4
    );
}

/// Kills the Envoy this file starts by hand, and removes its directory.
struct Child(std::process::Child, std::path::PathBuf);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// Removes `name` from every object in `value`.
fn remove_member(value: &mut Value, name: &str) {
    match value {
        Value::Object(map) => {
            map.remove(name);
            map.values_mut().for_each(|v| remove_member(v, name));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| remove_member(v, name)),
        _ => {}
    }
}

#[test]
fn without_allow_on_headers_stop_iteration_a_logout_post_is_503_not_a_hang() {
    // The harness's bootstrap without the knob, started by hand (the harness always sets it).
    let key = new_es256_key("no-knob");
    let lists = StatusLists::start();
    let upstream = Upstream::start();
    let [admin_port, port] = support::free_ports::<2>();
    let wasm = support::envoy::wasm_path().unwrap_or_else(|e| panic!("{e}"));
    let mut bootstrap = support::envoy::bootstrap_with_clusters(
        &config(&key, &lists, json!({})),
        &wasm,
        admin_port,
        port,
        upstream.port(),
        &[("lists", lists.port())],
    );
    remove_member(&mut bootstrap, "allow_on_headers_stop_iteration");
    let dir = std::env::temp_dir().join(format!("tokengate-e2e-no-knob-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("envoy.json");
    std::fs::write(&config_path, bootstrap.to_string()).unwrap();
    let (program, leading) = support::envoy::envoy_command().unwrap_or_else(|e| panic!("{e}"));
    let base_id = (std::process::id() % 100_000) * 1000 + 7;
    let child = std::process::Command::new(program)
        .args(&leading)
        .arg("-c")
        .arg(&config_path)
        .args([
            "--concurrency",
            "2",
            "--disable-hot-restart",
            "-l",
            "warning",
        ])
        .args(["--file-flush-interval-msec", "100"])
        .arg("--base-id")
        .arg(base_id.to_string())
        .arg("--log-path")
        .arg(dir.join("envoy.log"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting Envoy");
    let child = Child(child, dir.clone());
    eventually("Envoy to be ready", Duration::from_secs(30), || {
        let r = support::client::request(admin_port, "GET", "/ready", &[], b"")
            .map_err(|e| e.to_string())?;
        (r.status == 200).then_some(()).ok_or_else(|| seen(&r))
    });

    let started = Instant::now();
    let body = format!("logout_token={}", logout_token(&key, "alice"));
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let response = support::client::request(port, "POST", LOGOUT_PATH, &form, body.as_bytes())
        .unwrap_or_else(|e| panic!("the logout POST got no answer: {e}"));
    assert_eq!(response.status, 503, "{}", seen(&response));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let log = eventually("the cause in Envoy's log", Duration::from_secs(5), || {
        let log = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
        log.contains("allow_on_headers_stop_iteration")
            .then_some(log.clone())
            .ok_or_else(|| "not yet".to_owned())
    });
    assert!(log.contains("never got its body"), "{log}");
    drop(child);
}
