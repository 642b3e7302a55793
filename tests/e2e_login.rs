//! End-to-end tests of the browser login (OIDC authorization code flow with PKCE): the
//! release `tokengate.wasm` in a real Envoy (`--concurrency 2`) in front of an echoing
//! upstream, a test OpenID Provider on loopback (`support::oidc`) that approves at once,
//! and a small browser (`support::oidc::Browser`) that keeps cookies and follows
//! redirects between Envoy and the IdP. Run with
//!
//! ```text
//! TOKENGATE_WASM=$PWD/dist/tokengate.wasm ENVOY=... cargo test --test e2e_login -- --test-threads=2
//! ```
//!
//! Every wait is bounded: requests by the client's timeout, polls by a deadline. Each
//! test starts its own IdP, upstream and Envoy on free ports; dropping them stops them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::oidc::{
    query_of, resolve, set_cookies, Browser, Hop, IdTokenFault, IssParam, Issued, Oidc, SetCookie,
    TokenMode,
};
use support::server::MAX_HANG;
use support::{keys, now, Envoy, Response, Upstream};

const REALM: &str = "web";
const CLIENT_ID: &str = "web";
const CLIENT_SECRET: &str = "s3cret";
/// The access token's audience, the provider's `audiences`.
const AUDIENCE: &str = "orders";
const COOKIE: &str = "tg_session";
const LOGIN_COOKIE_PREFIX: &str = "tg_session.login.";
const AUX_COOKIE: &str = "tg_session.aux";
const REDIRECT_PATH: &str = "/oauth2/callback";
const LOGOUT_PATH: &str = "/oauth2/logout";
/// The login callouts' timeout (discovery, token endpoint).
const TIMEOUT_MS: u64 = 1000;
/// The user the IdP approves unless a test says otherwise.
const USER: &str = "alice";
const USER_NAME: &str = "Alice Liddell";
/// The largest `Set-Cookie` a browser surely keeps (RFC 6265 §6.1: at least 4096 bytes
/// of name, value and attributes).
const MAX_COOKIE_BYTES: usize = 4096;
const POLL: Duration = Duration::from_millis(100);
/// How long Envoy may take to have the IdP's endpoints (discovery by callout).
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a count may take to reach Envoy's stats (a worker's idle tick is 1 s).
const COUNTER_SETTLE: Duration = Duration::from_secs(4);

// --- set-up ----------------------------------------------------------------------------

/// A test IdP signing with the ES256 key, for client `web`, approving `alice`.
fn oidc() -> Oidc {
    let idp = Oidc::start(&keys().es256, &keys().stranger, CLIENT_ID, CLIENT_SECRET);
    idp.set_user(USER);
    idp.set_user_claims(&json!({"name": USER_NAME}));
    idp
}

/// A fixed cookie secret: 32 bytes, base64url.
fn cookie_secret() -> String {
    URL_SAFE_NO_PAD.encode(b"tokengate e2e login cookie key!!")
}

/// The `login` section against `idp` by discovery, with `changes` merged in (`null`
/// removes a member).
fn login_section(idp: &Oidc, changes: Value) -> Value {
    let mut login = json!({
        "discovery": idp.discovery_uri(),
        "cluster": "idp",
        "timeout_ms": TIMEOUT_MS,
        "client": {"id": CLIENT_ID, "secret": CLIENT_SECRET},
        "scopes": ["openid", "profile"],
        "redirect_path": REDIRECT_PATH,
        "logout_path": LOGOUT_PATH,
        "post_logout_redirect": "/",
        "session_token": "access_token",
        "cookie": {"name": COOKIE, "secure": false, "same_site": "Lax"},
        "cookie_secret": cookie_secret(),
        "refresh": false
    });
    for (name, value) in changes.as_object().expect("changes are an object") {
        if value.is_null() {
            login.as_object_mut().unwrap().remove(name);
        } else {
            login[name] = value.clone();
        }
    }
    login
}

/// One provider, `corp`, trusting the IdP's key (inline), with this `login`; `/app` and
/// `/api` need it, `/healthz` is anonymous.
fn config(idp: &Oidc, login: Value) -> Value {
    json!({
        "realm": REALM,
        "providers": {
            "corp": {
                "issuer": idp.issuer(),
                "audiences": [AUDIENCE],
                "jwks": {"inline": idp.jwks()},
                "clock_skew_secs": 1,
                "forward": {"claims": {"sub": "x-user-id", "name": "x-user-name"}},
                "login": login
            }
        },
        "rules": [
            {"name": "health", "match": {"path": {"prefix": "/healthz"}}, "allow": "anonymous"},
            {"name": "app", "match": {"path": {"prefix": "/app"}}, "authn": {"any": ["corp"]}},
            {"name": "api", "match": {"path": {"prefix": "/api"}}, "authn": {"any": ["corp"]}}
        ]
    })
}

/// The IdP, an upstream, and an Envoy in front of it whose `idp` cluster points at the
/// IdP, ready to send browsers to the IdP.
struct Setup {
    envoy: Envoy,
    upstream: Upstream,
    idp: Oidc,
}

impl Setup {
    /// `http://127.0.0.1:<envoy port><path>`.
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.envoy.port)
    }

    fn redirect_uri(&self) -> String {
        self.url(REDIRECT_PATH)
    }

    fn counter(&self, name: &str) -> u64 {
        self.envoy.counter(&format!("tokengate.login.{name}"))
    }

    /// Waits (bounded by [`COUNTER_SETTLE`]) until `tokengate.login.<name>` is `expected`;
    /// panics with every login counter otherwise. Counts reach Envoy when the worker that
    /// made them flushes: soon, but not at once.
    fn expect_counter(&self, name: &str, expected: u64) {
        let deadline = Instant::now() + COUNTER_SETTLE;
        loop {
            let counters = self.login_counters();
            let value = counters.get(name).copied().unwrap_or(0);
            if value == expected {
                return;
            }
            if value > expected || Instant::now() >= deadline {
                panic!("tokengate.login.{name} is {value}, expected {expected}; login counters {counters:?}");
            }
        }
    }

    /// The login counters at once (one stats read).
    fn login_counters(&self) -> BTreeMap<String, u64> {
        self.envoy
            .stats()
            .into_iter()
            .filter_map(|(name, value)| {
                let short = name.strip_prefix("wasmcustom.").unwrap_or(&name);
                short
                    .strip_prefix("tokengate.login.")
                    .map(|n| (n.to_owned(), value))
            })
            .collect()
    }
}

/// [`start_with_config`] with [`config`] and this `login` section's changes.
fn start(idp: Oidc, login_changes: Value) -> Setup {
    let document = config(&idp, login_section(&idp, login_changes));
    start_with_config(idp, &document)
}

/// Starts an upstream and Envoy with this whole configuration in front of `idp`, and
/// waits until it sends browsers to the IdP.
fn start_with_config(idp: Oidc, document: &Value) -> Setup {
    let setup = launch(idp, document);
    wait_until_redirecting(&setup);
    setup
}

/// [`start_with_config`] without the wait: Envoy is ready, the filter may not have the
/// IdP's endpoints yet (no worker has asked for the discovery document).
fn launch(idp: Oidc, document: &Value) -> Setup {
    let text = document.to_string();
    // A config mistake in the test itself should say so, not look like an Envoy failure.
    if let Err(e) = tokengate::config::Config::from_json(text.as_bytes()) {
        panic!("the test configuration is invalid: {e}");
    }
    let upstream = Upstream::start();
    let envoy = Envoy::start_with_clusters(&text, upstream.port(), &[("idp", idp.port())])
        .unwrap_or_else(|e| panic!("{e}"));
    let setup = Setup {
        envoy,
        upstream,
        idp,
    };
    setup.idp.allow_redirect_uri(&setup.redirect_uri());
    setup
}

/// Polls until a browser request is sent to the IdP (the endpoints are known: the
/// discovery callout, if any, is done).
fn wait_until_redirecting(setup: &Setup) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let response = Browser::new().get(&setup.url("/app/ready"));
        if response.status == 302 {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "Envoy did not send browsers to the IdP within {READY_TIMEOUT:?}: last answer {} {:?} {}; \
                 IdP discovery requests: {}; Envoy log tail:\n{}",
                response.status,
                response.header("location"),
                response.text(),
                setup.idp.discovery_count(),
                setup.envoy.log_tail()
            );
        }
        std::thread::sleep(POLL);
    }
}

// --- the flow, step by step --------------------------------------------------------------

/// The first step: a browser asks for a protected page and is sent to the IdP.
struct Begun {
    response: Response,
    /// Where the filter sent the browser.
    authorize_url: String,
    /// Its query, decoded.
    params: BTreeMap<String, String>,
    /// The login cookie the filter set.
    login_cookie: SetCookie,
}

/// A browser GET of `path`; asserts the 302 to the authorization endpoint and the login
/// cookie, and returns them.
fn begin(setup: &Setup, browser: &mut Browser, path: &str) -> Begun {
    let response = browser.get(&setup.url(path));
    assert_eq!(
        response.status,
        302,
        "GET {path} as a browser without a session: expected a redirect to the IdP; got {} {:?} {}",
        response.status,
        response.header("www-authenticate"),
        response.text()
    );
    let location = response
        .header("location")
        .expect("the redirect has a Location")
        .to_owned();
    let endpoint = setup.idp.authorization_endpoint();
    assert!(
        location.starts_with(&format!("{endpoint}?")),
        "the browser goes to the authorization endpoint {endpoint}: {location}"
    );
    let params = query_of(&location);
    let login_cookies: Vec<SetCookie> = set_cookies(&response)
        .into_iter()
        .filter(|c| c.name.starts_with(LOGIN_COOKIE_PREFIX))
        .collect();
    assert_eq!(
        login_cookies.len(),
        1,
        "one login cookie is set: {:?}",
        response.header_all("set-cookie")
    );
    Begun {
        authorize_url: location,
        params,
        login_cookie: login_cookies.into_iter().next().unwrap(),
        response,
    }
}

/// The IdP's step: follows the authorization URL, expects the redirect back to the
/// callback, and returns the callback URL.
fn authorize(setup: &Setup, browser: &mut Browser, authorize_url: &str) -> String {
    let response = browser.get(authorize_url);
    assert_eq!(
        response.status,
        302,
        "the IdP approves: {} {}; IdP refusals: {:?}",
        response.status,
        response.text(),
        setup.idp.refusals()
    );
    let location = response
        .header("location")
        .expect("IdP redirect")
        .to_owned();
    assert!(
        location.starts_with(&format!("{}?", setup.redirect_uri())),
        "the IdP sends the browser back to the callback: {location}"
    );
    location
}

/// A whole sign-in that must succeed, checked at every step.
struct SignedIn {
    begun: Begun,
    callback_url: String,
    /// The callback's answer (302 to the original URL, with the session cookie).
    callback: Response,
    /// The answer at the original URL (the upstream's echo).
    page: Response,
}

/// A browser opens `path`, signs in at the IdP, comes back to `path` and sees it.
fn sign_in(setup: &Setup, browser: &mut Browser, path: &str) -> SignedIn {
    let begun = begin(setup, browser, path);
    let callback_url = authorize(setup, browser, &begun.authorize_url);
    let callback = browser.get(&callback_url);
    assert_eq!(
        callback.status,
        302,
        "the callback redirects to the original URL: {} {}; IdP refusals: {:?}",
        callback.status,
        callback.text(),
        setup.idp.refusals()
    );
    let location = callback
        .header("location")
        .expect("callback Location")
        .to_owned();
    assert_eq!(
        location, path,
        "the callback sends the browser back to where it started (a relative URL)"
    );
    let page = browser.get(&resolve(&callback_url, &location));
    assert_eq!(
        page.status,
        200,
        "with the session the page is served: {} {:?} {}",
        page.status,
        page.header("www-authenticate"),
        page.text()
    );
    SignedIn {
        begun,
        callback_url,
        callback,
        page,
    }
}

// --- checks ----------------------------------------------------------------------------

/// What the upstream saw of a request (the echo's JSON).
fn seen(response: &Response) -> Value {
    response.json()
}

/// The upstream's view of the `cookie` header (empty if none).
fn upstream_cookies(response: &Response) -> String {
    seen(response)["headers"]["cookie"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The request reached the upstream as `sub`, without any of the filter's cookies.
fn assert_identity(case: &str, response: &Response, sub: &str) {
    assert_eq!(
        response.status,
        200,
        "{case}: {} {}",
        response.status,
        response.text()
    );
    let seen = seen(response);
    assert_eq!(
        seen["headers"]["x-user-id"], sub,
        "{case}: identity: {seen}"
    );
    let cookies = upstream_cookies(response);
    assert!(
        !cookies.contains(COOKIE),
        "{case}: no login or session cookie may reach the upstream: {cookies:?}"
    );
    assert!(
        seen["headers"].get("authorization").is_none(),
        "{case}: no token goes upstream: {seen}"
    );
}

/// A refusal: a 4xx or 5xx of the filter, not a redirect, no session cookie set, and
/// none of `secrets` in the page or its headers.
fn assert_refused(case: &str, response: &Response, statuses: &[u16], secrets: &[&str]) {
    assert!(
        statuses.contains(&response.status),
        "{case}: expected one of {statuses:?}; got {} {}",
        response.status,
        response.text()
    );
    assert!(
        response.header("location").is_none(),
        "{case}: a refusal redirects nowhere: {:?}",
        response.header("location")
    );
    for cookie in set_cookies(response) {
        let session = cookie.name == COOKIE || cookie.name.starts_with(&format!("{COOKIE}."));
        assert!(
            !session || cookie.clears() || cookie.name.starts_with(LOGIN_COOKIE_PREFIX),
            "{case}: a refusal sets no session cookie: {}",
            cookie.raw
        );
    }
    assert_no_secrets(case, response, secrets);
}

/// None of `secrets` (tokens, codes, the client secret) in the body or the headers.
fn assert_no_secrets(case: &str, response: &Response, secrets: &[&str]) {
    let text = response.text();
    for secret in secrets.iter().filter(|s| s.len() >= 6) {
        assert!(
            !text.contains(secret),
            "{case}: the page shows a secret ({}...): {text}",
            &secret[..6]
        );
        for (name, value) in &response.headers {
            if name == "set-cookie" {
                continue; // cookies are the filter's sealed state
            }
            assert!(
                !value.contains(secret),
                "{case}: header {name} shows a secret ({}...)",
                &secret[..6]
            );
        }
    }
}

/// The claims of a JWT (not verified: the IdP signed it, the test only reads it).
fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

/// The named cookie of a response's `Set-Cookie`s.
fn set_cookie<'a>(cookies: &'a [SetCookie], name: &str) -> Option<&'a SetCookie> {
    cookies.iter().find(|c| c.name == name)
}

/// The session cookie attributes every configuration of these tests asks for.
fn assert_session_attributes(case: &str, cookie: &SetCookie, secure: bool) {
    assert_eq!(cookie.path(), Some("/"), "{case}: Path=/: {}", cookie.raw);
    assert!(
        cookie.has_flag("httponly"),
        "{case}: HttpOnly: {}",
        cookie.raw
    );
    assert_eq!(
        cookie
            .attribute("samesite")
            .flatten()
            .map(str::to_ascii_lowercase),
        Some("lax".to_owned()),
        "{case}: SameSite=Lax: {}",
        cookie.raw
    );
    assert_eq!(
        cookie.has_flag("secure"),
        secure,
        "{case}: Secure: {}",
        cookie.raw
    );
    assert!(
        cookie.attribute("domain").is_none(),
        "{case}: no Domain (host-only): {}",
        cookie.raw
    );
}

/// The part of a URL's query named `name`, replaced by `value`.
fn replace_param(url: &str, name: &str, value: &str) -> String {
    let (base, query) = url.split_once('?').expect("a query");
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((n, _)) if n == name => format!("{n}={value}"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", parts.join("&"))
}

// --- the whole flow ----------------------------------------------------------------------

#[test]
fn browser_login_ends_at_the_original_url_with_the_identity() {
    let setup = start(oidc(), json!({}));
    let before = setup.login_counters();
    let mut browser = Browser::new();
    let path = "/app/orders?page=2&sort=desc";
    let flow = sign_in(&setup, &mut browser, path);

    // 1. The redirect to the IdP: the authorization request of OIDC with PKCE S256.
    let p = &flow.begun.params;
    assert_eq!(p.get("response_type").map(String::as_str), Some("code"));
    assert_eq!(p.get("client_id").map(String::as_str), Some(CLIENT_ID));
    assert_eq!(p.get("redirect_uri"), Some(&setup.redirect_uri()));
    assert_eq!(p.get("scope").map(String::as_str), Some("openid profile"));
    assert_eq!(
        p.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    let challenge = p.get("code_challenge").expect("code_challenge");
    assert_eq!(
        challenge.len(),
        43,
        "an S256 challenge is 43 base64url characters"
    );
    let state = p.get("state").expect("state");
    let nonce = p.get("nonce").expect("nonce");
    assert!(
        state.len() >= 16 && nonce.len() >= 16,
        "state and nonce are long random values: {p:?}"
    );
    assert_ne!(state, nonce);

    // The login cookie: named after the state, only for the callback, short-lived,
    // sealed (neither the state nor the nonce in clear).
    let login = &flow.begun.login_cookie;
    assert_eq!(login.name, format!("{LOGIN_COOKIE_PREFIX}{}", &state[..8]));
    assert_eq!(login.path(), Some(REDIRECT_PATH), "{}", login.raw);
    assert_eq!(login.max_age(), Some(600), "{}", login.raw);
    assert!(login.has_flag("httponly"), "{}", login.raw);
    assert!(!login.has_flag("secure"), "secure: false: {}", login.raw);
    assert_eq!(
        login
            .attribute("samesite")
            .flatten()
            .map(str::to_ascii_lowercase),
        Some("lax".to_owned()),
        "{}",
        login.raw
    );
    assert!(
        !login.value.contains(state.as_str()) && !login.value.contains(nonce.as_str()),
        "the login cookie is sealed: {}",
        login.raw
    );
    assert!(
        flow.begun.response.text().len() < 2048,
        "the redirect's page is small"
    );

    // 2. The code redemption: one token request, PKCE verifier and Basic client auth.
    let requests = setup.idp.token_requests();
    assert_eq!(requests.len(), 1, "one token request");
    let form = requests[0].form().expect("a form body");
    assert_eq!(
        form.get("grant_type").map(String::as_str),
        Some("authorization_code")
    );
    assert_eq!(form.get("redirect_uri"), Some(&setup.redirect_uri()));
    let callback_code = query_of(&flow.callback_url).remove("code").expect("code");
    assert_eq!(form.get("code"), Some(&callback_code));
    let verifier = form.get("code_verifier").expect("code_verifier");
    assert_eq!(
        &support::oidc::pkce_s256(verifier),
        challenge,
        "S256(verifier) = challenge"
    );
    assert_eq!(
        requests[0].basic_credentials(),
        Some((CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())),
        "client_secret_basic"
    );
    assert!(
        !form.contains_key("client_secret"),
        "the secret goes in the authorization header only"
    );
    assert!(
        requests[0]
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")),
        "a form post: {:?}",
        requests[0].headers
    );

    // 3. The callback's answer: the access token as the session cookie, the ID token
    //    sealed aside, the login cookie cleared.
    let issued = setup.idp.last_issued().expect("tokens issued");
    let cookies = set_cookies(&flow.callback);
    let session = set_cookie(&cookies, COOKIE).expect("the session cookie");
    assert_eq!(
        session.value, issued.access_token,
        "the session cookie holds the access token"
    );
    assert_session_attributes("session cookie", session, false);
    let aux = set_cookie(&cookies, AUX_COOKIE).expect("the aux cookie");
    assert_session_attributes("aux cookie", aux, false);
    assert!(
        !aux.value.contains(&issued.id_token) && !aux.value.contains(&issued.refresh_token),
        "the ID and refresh tokens are kept sealed: {}",
        aux.raw
    );
    let cleared = set_cookie(&cookies, &login.name).expect("the login cookie is cleared");
    assert!(cleared.clears(), "{}", cleared.raw);
    assert!(
        browser
            .cookie_names()
            .iter()
            .all(|n| !n.starts_with(LOGIN_COOKIE_PREFIX)),
        "no login cookie left: {:?}",
        browser.cookie_names()
    );
    assert_no_secrets(
        "callback",
        &flow.callback,
        &[
            &issued.id_token,
            &issued.refresh_token,
            CLIENT_SECRET,
            &callback_code,
        ],
    );

    // 4. The page: the identity, and no login or session cookie upstream.
    assert_identity("the original URL", &flow.page, USER);
    let seen = seen(&flow.page);
    assert_eq!(seen["headers"]["x-user-name"], USER_NAME);
    assert_eq!(seen["path"], path, "the query is kept");

    let base = |name: &str| before.get(name).copied().unwrap_or(0);
    setup.expect_counter("success", base("success") + 1);
    setup.expect_counter("redirect", base("redirect") + 1);
    for failure in [
        "state_mismatch",
        "id_token_invalid",
        "token_endpoint_failure",
    ] {
        setup.expect_counter(failure, base(failure));
    }
}

#[test]
fn session_cookie_serves_later_requests_without_the_idp_and_other_cookies_go_upstream() {
    let setup = start(oidc(), json!({}));
    let mut browser = Browser::new();
    sign_in(&setup, &mut browser, "/app/");
    let token_requests = setup.idp.token_count();
    browser.add_cookie("127.0.0.1", "theme", "dark", "/");
    browser.add_cookie("127.0.0.1", "lang", "en", "/");
    // Cookies named like the filter's own, sent to every path: never upstream either.
    browser.add_cookie("127.0.0.1", "tg_session.login.abcdefgh", "stray", "/");
    browser.add_cookie("127.0.0.1", "tg_session.7", "stray", "/");

    for path in ["/app/", "/app/settings", "/api/orders?x=1"] {
        let page = browser.get(&setup.url(path));
        assert_identity(path, &page, USER);
        let cookies = upstream_cookies(&page);
        assert!(
            cookies.contains("theme=dark") && cookies.contains("lang=en"),
            "{path}: the site's own cookies go upstream: {cookies:?}"
        );
        assert!(
            set_cookies(&page).is_empty(),
            "{path}: nothing to set: {:?}",
            page.header_all("set-cookie")
        );
    }
    // A non-browser client holding the session (fetch from the page) is let in too.
    browser.accept = "application/json".into();
    let api = browser.get(&setup.url("/api/orders"));
    assert_identity("JSON request with the session", &api, USER);
    let post = browser.request("POST", &setup.url("/api/orders"), &[], b"{}");
    assert_identity("POST with the session", &post, USER);

    assert_eq!(
        setup.idp.token_count(),
        token_requests,
        "a session needs the IdP no more"
    );
    assert_eq!(
        setup.upstream.count(),
        6,
        "the page after the sign-in, and five more"
    );
}

#[test]
fn non_browser_requests_get_401_and_no_redirect() {
    let setup = start(oidc(), json!({}));
    let redirects = setup.counter("redirect");
    let authorize = setup.idp.authorize_count();

    let cases: [(&str, &str, Option<&str>); 5] = [
        ("GET without Accept", "GET", None),
        ("GET asking for JSON", "GET", Some("application/json")),
        ("GET asking for anything", "GET", Some("*/*")),
        (
            "POST from a browser form",
            "POST",
            Some("text/html,*/*;q=0.8"),
        ),
        ("PUT asking for HTML", "PUT", Some("text/html")),
    ];
    for (case, method, accept) in cases {
        let mut headers = vec![];
        if let Some(accept) = accept {
            headers.push(("accept", accept));
        }
        let response = setup.envoy.request(method, "/app/orders", &headers, b"");
        assert_eq!(response.status, 401, "{case}: {}", response.text());
        assert_eq!(
            response.header("www-authenticate"),
            Some(format!("Bearer realm=\"{REALM}\"").as_str()),
            "{case}"
        );
        assert!(response.header("location").is_none(), "{case}: no redirect");
        assert!(
            response.header_all("set-cookie").is_empty(),
            "{case}: no login cookie: {:?}",
            response.header_all("set-cookie")
        );
    }
    // A browser on an anonymous route is not sent anywhere either.
    let health = Browser::new().get(&setup.url("/healthz"));
    assert_eq!(health.status, 200);
    assert!(health.header_all("set-cookie").is_empty());

    setup.expect_counter("redirect", redirects);
    assert_eq!(setup.idp.authorize_count(), authorize);
    assert_eq!(
        setup.upstream.count(),
        1,
        "only /healthz reached the upstream"
    );
}

// --- a callback that must not be believed -------------------------------------------------

#[test]
fn callback_with_a_wrong_state_or_no_login_cookie_is_refused() {
    let setup = start(oidc(), json!({}));
    let before = setup.counter("state_mismatch");

    // A state that is not the login cookie's (same 8-character prefix: the cookie is
    // found, its sealed state differs).
    let mut browser = Browser::new();
    let begun = begin(&setup, &mut browser, "/app/a");
    let callback_url = authorize(&setup, &mut browser, &begun.authorize_url);
    let state = &begun.params["state"];
    let forged = format!("{}{}", &state[..8], "A".repeat(state.len() - 8));
    let code = query_of(&callback_url)["code"].clone();
    let response = browser.get(&replace_param(&callback_url, "state", &forged));
    assert_refused("forged state", &response, &[400], &[&code, CLIENT_SECRET]);

    // No state at all.
    let mut browser = Browser::new();
    let begun = begin(&setup, &mut browser, "/app/b");
    let callback_url = authorize(&setup, &mut browser, &begun.authorize_url);
    let code_b = query_of(&callback_url)["code"].clone();
    let without_state = format!("{}?code={code_b}", setup.redirect_uri());
    let response = browser.get(&without_state);
    assert_refused("no state", &response, &[400], &[&code_b]);

    // The right URL in another browser (no login cookie): login CSRF.
    let mut other = Browser::new();
    let response = other.get(&callback_url);
    assert_refused("no login cookie", &response, &[400], &[&code_b]);

    // Another login's cookie and callback mixed: browser 1's cookie, browser 2's state.
    let mut one = Browser::new();
    let mut two = Browser::new();
    let begun_one = begin(&setup, &mut one, "/app/one");
    let begun_two = begin(&setup, &mut two, "/app/two");
    let callback_two = authorize(&setup, &mut two, &begun_two.authorize_url);
    let _ = begun_one;
    let response = one.get(&callback_two);
    assert_refused("someone else's callback", &response, &[400], &[]);

    // The right callback with its login cookie altered (one character of the sealed
    // value): it no longer opens.
    let mut browser = Browser::new();
    let begun = begin(&setup, &mut browser, "/app/c");
    let callback_url = authorize(&setup, &mut browser, &begun.authorize_url);
    let cookie = browser
        .jar
        .iter_mut()
        .find(|c| c.name == begun.login_cookie.name)
        .expect("the login cookie is in the jar");
    let middle = cookie.value.len() / 2;
    let flipped = if &cookie.value[middle..=middle] == "A" {
        "B"
    } else {
        "A"
    };
    cookie.value.replace_range(middle..=middle, flipped);
    let response = browser.get(&callback_url);
    assert_refused("altered login cookie", &response, &[400], &[]);

    assert_eq!(setup.idp.token_count(), 0, "no code was redeemed");
    setup.expect_counter("state_mismatch", before + 5);
    setup.expect_counter("success", 0);
    assert_eq!(setup.upstream.count(), 0);
}

#[test]
fn replayed_code_is_refused() {
    let setup = start(oidc(), json!({}));
    let mut browser = Browser::new();
    let begun = begin(&setup, &mut browser, "/app/replay");
    let callback_url = authorize(&setup, &mut browser, &begun.authorize_url);
    // An attacker who saw the callback URL and the login cookie (the worst case).
    let mut attacker = Browser::new();
    let (host, _, _) = support::oidc::split_url(&callback_url);
    attacker.add_cookie(
        &host,
        &begun.login_cookie.name,
        &begun.login_cookie.value,
        REDIRECT_PATH,
    );

    let first = browser.get(&callback_url);
    assert_eq!(
        first.status,
        302,
        "the first redemption works: {}",
        first.text()
    );
    let failures = setup.counter("token_endpoint_failure");

    let replay = attacker.get(&callback_url);
    let code = query_of(&callback_url)["code"].clone();
    assert_refused(
        "replayed code",
        &replay,
        &[400, 401, 403, 502, 503],
        &[&code, CLIENT_SECRET],
    );
    assert_eq!(
        setup.idp.token_count(),
        2,
        "the replay reached the IdP, which refused it"
    );
    assert!(
        setup
            .idp
            .refusals()
            .iter()
            .any(|r| r.contains("code already used")),
        "the IdP refused the replay: {:?}",
        setup.idp.refusals()
    );
    setup.expect_counter("token_endpoint_failure", failures + 1);
    assert!(
        attacker.cookie(COOKIE).is_none(),
        "the attacker has no session"
    );
}

#[test]
fn id_token_with_a_wrong_nonce_is_refused() {
    let setup = start(oidc(), json!({}));
    setup.idp.set_id_token_fault(IdTokenFault::WrongNonce);
    let mut browser = Browser::new();
    let begun = begin(&setup, &mut browser, "/app/nonce");
    let callback_url = authorize(&setup, &mut browser, &begun.authorize_url);
    let response = browser.get(&callback_url);
    let issued = setup.idp.last_issued().expect("tokens issued");
    assert_refused(
        "wrong nonce",
        &response,
        &[400, 401, 403],
        &[
            &issued.access_token,
            &issued.id_token,
            &issued.refresh_token,
        ],
    );
    assert!(browser.cookie(COOKIE).is_none());
    setup.expect_counter("id_token_invalid", 1);
    setup.expect_counter("success", 0);
    // Back to normal, the same browser signs in.
    setup.idp.set_id_token_fault(IdTokenFault::None);
    let flow = sign_in(&setup, &mut browser, "/app/nonce");
    assert_identity("after a good login", &flow.page, USER);
}

#[test]
fn id_tokens_failing_any_check_are_refused() {
    let setup = start(oidc(), json!({}));
    let faults = [
        IdTokenFault::NoNonce,
        IdTokenFault::WrongAudience,
        IdTokenFault::WrongAzp,
        IdTokenFault::WrongIssuer,
        IdTokenFault::BadSignature,
        IdTokenFault::Expired,
        IdTokenFault::IssuedInTheFuture,
    ];
    for fault in faults {
        setup.idp.set_id_token_fault(fault);
        let mut browser = Browser::new();
        let begun = begin(&setup, &mut browser, "/app/id");
        let callback_url = authorize(&setup, &mut browser, &begun.authorize_url);
        let response = browser.get(&callback_url);
        let issued = setup.idp.last_issued().expect("tokens issued");
        assert_refused(
            &format!("{fault:?}"),
            &response,
            &[400, 401, 403],
            &[&issued.access_token, &issued.id_token],
        );
        assert!(browser.cookie(COOKIE).is_none(), "{fault:?}: no session");
    }
    setup.expect_counter("id_token_invalid", faults.len() as u64);
    setup.expect_counter("success", 0);
    assert_eq!(setup.upstream.count(), 0);
}

#[test]
fn access_token_the_provider_would_refuse_makes_no_session() {
    let setup = start(oidc(), json!({}));
    setup.idp.set_access_audience(json!("another-api"));
    let mut browser = Browser::new();
    let begun = begin(&setup, &mut browser, "/app/aud");
    let callback_url = authorize(&setup, &mut browser, &begun.authorize_url);
    let response = browser.get(&callback_url);
    let issued = setup.idp.last_issued().expect("tokens issued");
    assert_refused(
        "access token for another audience",
        &response,
        &[400, 401, 403, 502],
        &[&issued.access_token, &issued.id_token],
    );
    assert!(browser.cookie(COOKIE).is_none());
    setup.expect_counter("success", 0);
}

#[test]
fn idp_error_on_the_callback_is_refused_without_a_token_request() {
    let setup = start(oidc(), json!({}));
    setup.idp.set_authorize_error(Some("access_denied"));
    let mut browser = Browser::new();
    let begun = begin(&setup, &mut browser, "/app/denied");
    let response = browser.get(&begun.authorize_url);
    let callback_url = resolve(
        &begun.authorize_url,
        response.header("location").expect("back"),
    );
    assert!(
        callback_url.contains("error=access_denied"),
        "{callback_url}"
    );
    let response = browser.get(&callback_url);
    assert_refused("IdP said access_denied", &response, &[400, 401, 403], &[]);
    assert_eq!(setup.idp.token_count(), 0);
    assert!(browser.cookie(COOKIE).is_none());
}

#[test]
fn mixed_up_issuer_parameter_is_refused_and_the_right_one_accepted() {
    let setup = start(oidc(), json!({}));
    // RFC 9207: an IdP that sends `iss` must send its own.
    setup
        .idp
        .set_iss_param(IssParam::Other("https://attacker.example".into()));
    let mut browser = Browser::new();
    let begun = begin(&setup, &mut browser, "/app/iss");
    let callback_url = authorize(&setup, &mut browser, &begun.authorize_url);
    assert!(callback_url.contains("iss="), "{callback_url}");
    let response = browser.get(&callback_url);
    assert_refused("iss of another IdP", &response, &[400, 401, 403], &[]);
    assert_eq!(
        setup.idp.token_count(),
        0,
        "the code never goes to the token endpoint"
    );

    setup.idp.set_iss_param(IssParam::Issuer);
    let flow = sign_in(&setup, &mut Browser::new(), "/app/iss");
    assert!(flow.callback_url.contains("iss="), "{}", flow.callback_url);
    assert_identity("with the right iss", &flow.page, USER);
}

// --- the token endpoint failing -----------------------------------------------------------

#[test]
fn token_endpoint_failures_are_refused_and_counted() {
    let setup = start(oidc(), json!({}));
    let modes = [
        TokenMode::Status(500),
        TokenMode::Status(503),
        TokenMode::Garbage,
        TokenMode::Close,
        TokenMode::Hang,
    ];
    for mode in modes {
        setup.idp.set_token_mode(mode);
        let mut browser = Browser::new();
        let begun = begin(&setup, &mut browser, "/app/t");
        let callback_url = authorize(&setup, &mut browser, &begun.authorize_url);
        let began = Instant::now();
        let response = browser.get(&callback_url);
        let took = began.elapsed();
        assert_refused(
            &format!("{mode:?}"),
            &response,
            &[400, 500, 502, 503, 504],
            &[CLIENT_SECRET],
        );
        assert!(
            took < Duration::from_millis(TIMEOUT_MS) + Duration::from_secs(3) && took < MAX_HANG,
            "{mode:?}: the callout's timeout bounds the wait: {took:?}"
        );
        assert!(browser.cookie(COOKIE).is_none(), "{mode:?}");
    }
    setup.expect_counter("token_endpoint_failure", modes.len() as u64);

    // Back to work: logins succeed again.
    setup.idp.set_token_mode(TokenMode::Serve);
    let flow = sign_in(&setup, &mut Browser::new(), "/app/t");
    assert_identity("after the IdP recovered", &flow.page, USER);
}

// --- big sessions, logout, many logins ---------------------------------------------------

#[test]
fn large_access_token_is_split_into_cookie_chunks_and_still_works() {
    let idp = oidc();
    let mut whole = config(&idp, login_section(&idp, json!({})));
    // Past the default 8 KB a token is refused before it is decoded.
    whole["providers"]["corp"]["max_token_bytes"] = json!(16384);
    let setup = start_with_config(idp, &whole);
    setup.idp.set_access_token_padding(7000);
    let mut browser = Browser::new();
    let flow = sign_in(&setup, &mut browser, "/app/big");
    let issued = setup.idp.last_issued().expect("tokens issued");
    assert!(
        issued.access_token.len() > 9000,
        "the token is large: {}",
        issued.access_token.len()
    );

    let cookies = set_cookies(&flow.callback);
    let mut chunks: Vec<&SetCookie> = Vec::new();
    for i in 0.. {
        match set_cookie(&cookies, &format!("{COOKIE}.{i}")) {
            Some(chunk) => chunks.push(chunk),
            None => break,
        }
    }
    assert!(
        chunks.len() >= 3,
        "a 9 KB token takes at least three chunks: {:?}",
        cookies
            .iter()
            .map(|c| (&c.name, c.raw.len()))
            .collect::<Vec<_>>()
    );
    assert!(
        set_cookie(&cookies, COOKIE).is_none_or(SetCookie::clears),
        "no unchunked session cookie besides the chunks"
    );
    for chunk in &chunks {
        assert!(
            chunk.raw.len() <= MAX_COOKIE_BYTES,
            "{}: {} bytes, more than a browser keeps",
            chunk.name,
            chunk.raw.len()
        );
        assert_session_attributes(&chunk.name, chunk, false);
    }
    let joined: String = chunks.iter().map(|c| c.value.as_str()).collect();
    assert_eq!(
        joined, issued.access_token,
        "the chunks, in order, are the token"
    );
    assert_identity("chunked session", &flow.page, USER);
    for path in ["/app/big", "/api/x"] {
        assert_identity(path, &browser.get(&setup.url(path)), USER);
    }

    // Logout clears every chunk.
    let logout = browser.get(&setup.url(LOGOUT_PATH));
    assert_eq!(logout.status, 302, "{}", logout.text());
    let cleared = set_cookies(&logout);
    for chunk in &chunks {
        assert!(
            set_cookie(&cleared, &chunk.name).is_some_and(SetCookie::clears),
            "logout clears {}: {:?}",
            chunk.name,
            logout.header_all("set-cookie")
        );
    }
    assert!(
        browser
            .cookie_names()
            .iter()
            .all(|n| !n.starts_with(COOKIE)),
        "nothing of the session is left: {:?}",
        browser.cookie_names()
    );
}

#[test]
fn logout_clears_the_session_and_ends_it_at_the_idp() {
    let setup = start(oidc(), json!({}));
    let mut browser = Browser::new();
    sign_in(&setup, &mut browser, "/app/");
    let issued = setup.idp.last_issued().expect("tokens issued");
    let logouts = setup.counter("logout");

    let hops: Vec<Hop> = browser.navigate(&setup.url(LOGOUT_PATH));
    let logout = &hops[0].response;
    assert_eq!(logout.status, 302, "{}", logout.text());
    let location = logout.header("location").expect("Location");
    assert!(
        location.starts_with(&format!("{}?", setup.idp.end_session_endpoint())),
        "to the end-session endpoint: {location}"
    );
    let params = query_of(location);
    assert_eq!(params.get("id_token_hint"), Some(&issued.id_token));
    assert_eq!(
        params.get("post_logout_redirect_uri"),
        Some(&setup.url("/"))
    );
    assert_eq!(params.get("client_id").map(String::as_str), Some(CLIENT_ID));
    let cookies = set_cookies(logout);
    for name in [COOKIE, AUX_COOKIE] {
        let cookie = set_cookie(&cookies, name).unwrap_or_else(|| {
            panic!(
                "logout clears {name}: {:?}",
                logout.header_all("set-cookie")
            )
        });
        assert!(cookie.clears(), "{}", cookie.raw);
        assert_eq!(cookie.path(), Some("/"), "{}", cookie.raw);
    }
    // The IdP's end-session endpoint got the hint.
    assert_eq!(
        hops.len(),
        2,
        "{:?}",
        hops.iter().map(|h| &h.url).collect::<Vec<_>>()
    );
    assert_eq!(hops[1].response.status, 200);
    let ended = setup.idp.end_session_queries();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].get("id_token_hint"), Some(&issued.id_token));
    setup.expect_counter("logout", logouts + 1);

    // Signed out: the next visit starts a new login.
    assert!(browser.cookie(COOKIE).is_none() && browser.cookie(AUX_COOKIE).is_none());
    let again = browser.get(&setup.url("/app/"));
    assert_eq!(again.status, 302, "signed out: {}", again.text());
    assert!(again
        .header("location")
        .is_some_and(|l| l.starts_with(&setup.idp.authorization_endpoint())));
    // The old access token as a cookie still verifies (JWTs are bearer tokens until they
    // expire); logout is about the browser and the IdP's session.
}

#[test]
fn logins_succeed_whichever_worker_takes_the_callback() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 6;
    let setup = start(oidc(), json!({}));
    let before = setup.counter("success");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let setup = &setup;
                scope.spawn(move || {
                    for i in 0..PER_THREAD {
                        // Each request on its own connection: the two workers take turns
                        // at random, so the callback often lands on the other worker.
                        let path = format!("/app/t{t}/n{i}?q={t}-{i}");
                        let mut browser = Browser::new();
                        let flow = sign_in(setup, &mut browser, &path);
                        assert_identity(&path, &flow.page, USER);
                        assert_eq!(seen(&flow.page)["path"], path.as_str());
                    }
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .expect("a login thread failed (see its panic above)");
        }
    });
    let total = (THREADS * PER_THREAD) as u64;
    assert_eq!(setup.idp.token_count() as u64, total);
    setup.expect_counter("success", before + total);
    setup.expect_counter("state_mismatch", 0);
}

#[test]
fn first_sign_in_after_start_works_whichever_worker_learns_the_endpoints() {
    // Right after Envoy starts, no worker has the discovery document. The first browser
    // request makes its worker fetch it; the callback may land on the other worker, which
    // must fetch it (or adopt it) too, then redeem the code and answer. A fresh Envoy per
    // round: which worker takes which request is chance, so a few rounds.
    const ROUNDS: usize = 4;
    for round in 0..ROUNDS {
        let idp = oidc();
        let document = config(&idp, login_section(&idp, json!({})));
        let setup = launch(idp, &document);
        let mut browser = Browser::new();
        let path = format!("/app/fresh/{round}");
        let flow = sign_in(&setup, &mut browser, &path);
        assert_identity(&format!("round {round}"), &flow.page, USER);
    }
}

// --- configuration variants ----------------------------------------------------------------

#[test]
fn endpoints_given_without_discovery_work_the_same() {
    let idp = oidc();
    let login = json!({
        "discovery": null,
        "authorization_endpoint": idp.authorization_endpoint(),
        "token_endpoint": idp.token_endpoint(),
        "end_session_endpoint": idp.end_session_endpoint(),
    });
    let setup = start(idp, login);
    let mut browser = Browser::new();
    let flow = sign_in(&setup, &mut browser, "/app/static");
    assert_identity("static endpoints", &flow.page, USER);
    assert_eq!(setup.idp.discovery_count(), 0, "no discovery asked for");
    let logout = browser.get(&setup.url(LOGOUT_PATH));
    assert!(logout
        .header("location")
        .is_some_and(|l| l.starts_with(&format!("{}?", setup.idp.end_session_endpoint()))));
}

#[test]
fn keys_and_endpoints_from_the_same_discovery_document() {
    let idp = oidc();
    let mut whole = config(&idp, login_section(&idp, json!({})));
    whole["providers"]["corp"]["jwks"] =
        json!({"discovery": idp.discovery_uri(), "cluster": "idp", "timeout_ms": TIMEOUT_MS});
    let setup = start_with_config(idp, &whole);
    let flow = sign_in(&setup, &mut Browser::new(), "/app/discovered");
    assert_identity("keys by discovery", &flow.page, USER);
    assert!(setup.idp.jwks_count() >= 1, "the keys came from the IdP");
}

#[test]
fn secure_cookies_when_configured() {
    let idp = oidc();
    let login = json!({"cookie": {"name": COOKIE, "secure": true, "same_site": "Lax"}});
    let setup = start(idp, login);
    let mut browser = Browser::new();
    // The test browser ignores Secure (as browsers do for localhost): the flow completes.
    let flow = sign_in(&setup, &mut browser, "/app/secure");
    assert!(
        flow.begun.login_cookie.has_flag("secure"),
        "{}",
        flow.begun.login_cookie.raw
    );
    let cookies = set_cookies(&flow.callback);
    assert_session_attributes(
        "secure session",
        set_cookie(&cookies, COOKIE).expect("session"),
        true,
    );
    assert_session_attributes(
        "secure aux",
        set_cookie(&cookies, AUX_COOKIE).expect("aux"),
        true,
    );
}

// --- expiry and refresh ------------------------------------------------------------------

/// Seconds the access tokens of the expiry tests live.
const SHORT_TTL_SECS: i64 = 3;

#[test]
fn expired_session_without_refresh_starts_a_new_login() {
    let setup = start(oidc(), json!({}));
    setup.idp.set_access_ttl(SHORT_TTL_SECS);
    let mut browser = Browser::new();
    sign_in(&setup, &mut browser, "/app/short");
    // Past exp and the provider's 1 s clock skew.
    std::thread::sleep(Duration::from_secs(SHORT_TTL_SECS as u64 + 2));
    let response = browser.get(&setup.url("/app/short"));
    assert_eq!(
        response.status,
        302,
        "expired session: back to the IdP: {}",
        response.text()
    );
    assert!(response
        .header("location")
        .is_some_and(|l| l.starts_with(&setup.idp.authorization_endpoint())));
    assert_eq!(setup.idp.refresh_count(), 0, "refresh is off");
    browser.accept = "application/json".into();
    let api = browser.get(&setup.url("/api/x"));
    assert_eq!(
        api.status, 401,
        "a non-browser request with an expired session: 401"
    );
}

/// How long before `exp` the filter refreshes a session (src/login: REFRESH_AHEAD_SECS).
const REFRESH_AHEAD_SECS: i64 = 30;

/// Signs in by hand (no page request after the callback, which could refresh already),
/// and returns the tokens of the sign-in.
fn sign_in_without_visiting(setup: &Setup, browser: &mut Browser, path: &str) -> Issued {
    let begun = begin(setup, browser, path);
    let callback_url = authorize(setup, browser, &begun.authorize_url);
    let callback = browser.get(&callback_url);
    assert_eq!(callback.status, 302, "callback: {}", callback.text());
    assert!(browser.cookie(COOKIE).is_some(), "signed in");
    setup.idp.last_issued().expect("issued")
}

/// The refresh after `first`: a `refresh_token` grant with its refresh token, answered
/// with a new access token that `response` sets as the session cookie.
fn assert_refreshed(setup: &Setup, response: &Response, first: &Issued) {
    assert_identity("refreshed session", response, USER);
    assert_eq!(
        setup.idp.refresh_count(),
        1,
        "one refresh: {:?}",
        setup.idp.refusals()
    );
    let requests = setup.idp.token_requests();
    let last = requests.last().unwrap();
    let form = last.form().unwrap();
    assert_eq!(
        form.get("grant_type").map(String::as_str),
        Some("refresh_token")
    );
    assert_eq!(form.get("refresh_token"), Some(&first.refresh_token));
    assert_eq!(
        last.basic_credentials(),
        Some((CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())),
        "the refresh authenticates the client too"
    );
    let renewed = setup.idp.last_issued().expect("issued");
    assert_eq!(renewed.grant_type, "refresh_token");
    let cookies = set_cookies(response);
    let session = set_cookie(&cookies, COOKIE).expect("a renewed session cookie");
    assert_eq!(session.value, renewed.access_token);
    assert_ne!(renewed.access_token, first.access_token);
    assert_session_attributes("renewed session", session, false);
    assert!(
        claims_of(&session.value)["exp"].as_i64().unwrap() > now(),
        "the renewed token is valid"
    );
    setup.expect_counter("refresh", 1);
}

#[test]
fn session_about_to_expire_is_refreshed_ahead() {
    let setup = start(oidc(), json!({"refresh": true}));
    // Outside the refresh window at first, inside it a few seconds later.
    setup.idp.set_access_ttl(REFRESH_AHEAD_SECS + 3);
    let mut browser = Browser::new();
    let first = sign_in(&setup, &mut browser, "/app/ahead");
    assert_identity("fresh session", &first.page, USER);
    assert_eq!(
        setup.idp.refresh_count(),
        0,
        "a fresh token is not refreshed"
    );
    let first = setup.idp.last_issued().expect("issued");
    std::thread::sleep(Duration::from_secs(5));

    let response = browser.get(&setup.url("/app/ahead"));
    assert_refreshed(&setup, &response, &first);
    // The renewed session serves on, without the IdP.
    let page = browser.get(&setup.url("/app/ahead"));
    assert_identity("after the refresh", &page, USER);
    assert_eq!(setup.idp.refresh_count(), 1);
}

#[test]
fn refresh_token_renews_an_expired_session() {
    let setup = start(oidc(), json!({"refresh": true}));
    setup.idp.set_access_ttl(SHORT_TTL_SECS);
    let mut browser = Browser::new();
    let first = sign_in_without_visiting(&setup, &mut browser, "/app/refresh");
    // New tokens live long: the one refresh is all this test sees.
    setup.idp.set_access_ttl(300);
    // Past exp and the provider's 1 s clock skew.
    std::thread::sleep(Duration::from_secs(SHORT_TTL_SECS as u64 + 2));

    let response = browser.get(&setup.url("/app/refresh"));
    assert_refreshed(&setup, &response, &first);
    let page = browser.get(&setup.url("/app/refresh"));
    assert_identity("after the refresh", &page, USER);
    assert_eq!(setup.idp.refresh_count(), 1);
}

#[test]
fn failed_refresh_of_an_expired_session_starts_a_new_login() {
    let setup = start(oidc(), json!({"refresh": true}));
    setup.idp.set_access_ttl(SHORT_TTL_SECS);
    let mut browser = Browser::new();
    sign_in_without_visiting(&setup, &mut browser, "/app/refresh");
    setup.idp.set_token_mode(TokenMode::Status(500));
    std::thread::sleep(Duration::from_secs(SHORT_TTL_SECS as u64 + 2));

    let response = browser.get(&setup.url("/app/refresh"));
    assert_eq!(
        response.status,
        302,
        "the refresh failed: sign in again: {}",
        response.text()
    );
    assert!(response
        .header("location")
        .is_some_and(|l| l.starts_with(&setup.idp.authorization_endpoint())));
    assert_eq!(setup.idp.refresh_count(), 1);
    setup.expect_counter("refresh_failure", 1);
    setup.expect_counter("refresh", 0);
    assert_eq!(
        setup.upstream.count(),
        0,
        "an expired session never reaches the upstream"
    );
}
