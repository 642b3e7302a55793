//! A test OpenID Provider on 127.0.0.1, for the filter's browser login (the OIDC
//! authorization code flow with PKCE): discovery, a JWKS, an authorization endpoint that
//! approves at once as a chosen user (no form: that is the demo IdP's), a token endpoint
//! (`authorization_code` with PKCE `S256`, single-use codes, `refresh_token`), and an
//! end-session endpoint that records what it was sent.
//!
//! Knobs for the tests: the user, an error instead of a code, the RFC 9207 `iss`
//! parameter, faults in the ID token (nonce, audience, `azp`, issuer, signature,
//! expiry), token endpoint failures (a status, an answer that never comes, garbage, a
//! closed connection), a padded access token (so the session cookie is chunked), token
//! lifetimes. It counts requests per endpoint and remembers what it issued and why it
//! refused.
//!
//! Every thread it starts ends on its own (see [`super::server`]): dropping the `Oidc`
//! closes everything.

use super::auth::{form_encode, parse_form};
use super::server::{lock, Answer, Reply, Request, Server};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use tokengate::crypto::sign::SigningKey;

pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/jwks";
pub const AUTHORIZE_PATH: &str = "/authorize";
pub const TOKEN_PATH: &str = "/token";
pub const END_SESSION_PATH: &str = "/logout";

/// Lifetimes unless a test sets others.
pub const DEFAULT_ACCESS_TTL_SECS: i64 = 300;
pub const DEFAULT_ID_TTL_SECS: i64 = 300;
pub const DEFAULT_CODE_TTL_SECS: i64 = 60;
/// The claim that pads a large access token.
pub const PADDING_CLAIM: &str = "padding";

/// How the token endpoint answers, read when each request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// As OAuth 2.0 and OIDC say.
    Serve,
    /// This status with `{"error": "server_error"}` (`temporarily_unavailable` for 503).
    Status(u16),
    /// Read the request and never answer (the connection is held at most
    /// [`super::server::MAX_HANG`]).
    Hang,
    /// 200, `content-type: application/json`, a body that is not JSON.
    Garbage,
    /// Read the request, then close the connection without a word.
    Close,
}

/// What is wrong with the ID tokens the token endpoint issues (the access token is
/// unaffected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenFault {
    /// Nothing: as OIDC Core §2 says.
    None,
    /// `nonce` is not the one of the authorization request.
    WrongNonce,
    /// No `nonce` at all.
    NoNonce,
    /// `aud` is another client.
    WrongAudience,
    /// `aud` holds the client and another, and `azp` names the other.
    WrongAzp,
    /// `iss` is another issuer.
    WrongIssuer,
    /// Signed by a key not in the JWKS, under the published `kid`.
    BadSignature,
    /// `exp` an hour ago.
    Expired,
    /// `iat` an hour ahead (and `exp` after it).
    IssuedInTheFuture,
}

/// The RFC 9207 `iss` parameter of the authorization response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssParam {
    /// Not sent (as most IdPs still do).
    Omit,
    /// The issuer (the discovery document then says
    /// `authorization_response_iss_parameter_supported: true`).
    Issuer,
    /// Another value: a mix-up attack.
    Other(String),
}

/// What one successful token request issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub grant_type: String,
    pub access_token: String,
    pub id_token: String,
    pub refresh_token: String,
}

/// An authorization code, as issued.
#[derive(Debug, Clone)]
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    scope: String,
    sub: String,
    issued_at: i64,
    used: bool,
}

/// A refresh token, as issued.
#[derive(Debug, Clone)]
struct Refresh {
    client_id: String,
    scope: String,
    sub: String,
    auth_time: i64,
}

#[derive(Default)]
struct Counts {
    discovery: AtomicUsize,
    jwks: AtomicUsize,
    authorize: AtomicUsize,
    token: AtomicUsize,
    end_session: AtomicUsize,
    other: AtomicUsize,
}

struct State {
    port: u16,
    key: &'static SigningKey,
    /// Signs ID tokens under [`IdTokenFault::BadSignature`] (its `kid` is replaced).
    stranger: &'static SigningKey,
    issuer: Mutex<String>,
    client_id: String,
    client_secret: String,
    redirect_uris: Mutex<Vec<String>>,
    /// The user the authorization endpoint approves.
    user: Mutex<String>,
    /// Claims of that user in both tokens (`name`, `email`, ...).
    user_claims: Mutex<Map<String, Value>>,
    authorize_error: Mutex<Option<String>>,
    iss_param: Mutex<IssParam>,
    token_mode: Mutex<TokenMode>,
    id_token_fault: Mutex<IdTokenFault>,
    access_audience: Mutex<Value>,
    access_ttl: AtomicI64,
    id_ttl: AtomicI64,
    code_ttl: AtomicI64,
    padding: AtomicUsize,
    /// Whether refresh tokens are single-use (rotated).
    rotate_refresh: AtomicBool,
    codes: Mutex<HashMap<String, Code>>,
    refresh_tokens: Mutex<HashMap<String, Refresh>>,
    counts: Counts,
    refresh_count: AtomicUsize,
    authorize_queries: Mutex<Vec<BTreeMap<String, String>>>,
    token_requests: Mutex<Vec<Request>>,
    end_session_queries: Mutex<Vec<BTreeMap<String, String>>>,
    issued: Mutex<Vec<Issued>>,
    /// Why the token or authorization endpoint refused, in order (for failure messages).
    refusals: Mutex<Vec<String>>,
    seq: AtomicU64,
}

pub struct Oidc {
    server: Server<State>,
}

impl Oidc {
    /// Starts an OpenID Provider on 127.0.0.1 whose issuer is `http://127.0.0.1:<port>`,
    /// signing with `key` (its `kid` in the header; `stranger` forges signatures), for
    /// one confidential client. It approves `alice` until told otherwise.
    pub fn start(
        key: &'static SigningKey,
        stranger: &'static SigningKey,
        client_id: &str,
        client_secret: &str,
    ) -> Oidc {
        let state = |port| State {
            port,
            key,
            stranger,
            issuer: Mutex::new(format!("http://127.0.0.1:{port}")),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            redirect_uris: Mutex::new(Vec::new()),
            user: Mutex::new("alice".to_owned()),
            user_claims: Mutex::new(Map::new()),
            authorize_error: Mutex::new(None),
            iss_param: Mutex::new(IssParam::Omit),
            token_mode: Mutex::new(TokenMode::Serve),
            id_token_fault: Mutex::new(IdTokenFault::None),
            access_audience: Mutex::new(json!("orders")),
            access_ttl: AtomicI64::new(DEFAULT_ACCESS_TTL_SECS),
            id_ttl: AtomicI64::new(DEFAULT_ID_TTL_SECS),
            code_ttl: AtomicI64::new(DEFAULT_CODE_TTL_SECS),
            padding: AtomicUsize::new(0),
            rotate_refresh: AtomicBool::new(false),
            codes: Mutex::new(HashMap::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            counts: Counts::default(),
            refresh_count: AtomicUsize::new(0),
            authorize_queries: Mutex::new(Vec::new()),
            token_requests: Mutex::new(Vec::new()),
            end_session_queries: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
            refusals: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
        };
        Oidc {
            server: Server::start("oidc", state, handle),
        }
    }

    fn state(&self) -> &State {
        self.server.state()
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn uri(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }

    pub fn issuer(&self) -> String {
        lock(&self.state().issuer).clone()
    }

    pub fn discovery_uri(&self) -> String {
        self.uri(DISCOVERY_PATH)
    }

    pub fn jwks_uri(&self) -> String {
        self.uri(JWKS_PATH)
    }

    pub fn authorization_endpoint(&self) -> String {
        self.uri(AUTHORIZE_PATH)
    }

    pub fn token_endpoint(&self) -> String {
        self.uri(TOKEN_PATH)
    }

    pub fn end_session_endpoint(&self) -> String {
        self.uri(END_SESSION_PATH)
    }

    /// The JWKS it serves: the public half of its signing key.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.state().key.public_jwk()]})
    }

    // --- knobs ---------------------------------------------------------------------------

    /// Accepts this `redirect_uri` (exact match) at the authorization and token endpoints.
    pub fn allow_redirect_uri(&self, uri: &str) {
        lock(&self.state().redirect_uris).push(uri.to_owned());
    }

    /// From now on the authorization endpoint approves this user (`sub`).
    pub fn set_user(&self, sub: &str) {
        *lock(&self.state().user) = sub.to_owned();
    }

    /// Claims of the user in both tokens, besides `sub` (a JSON object).
    pub fn set_user_claims(&self, claims: &Value) {
        *lock(&self.state().user_claims) = claims
            .as_object()
            .cloned()
            .expect("oidc: user claims must be a JSON object");
    }

    /// `Some(error)`: the authorization endpoint redirects back with `error=<error>` (and
    /// the state) instead of a code, as when the user says no.
    pub fn set_authorize_error(&self, error: Option<&str>) {
        *lock(&self.state().authorize_error) = error.map(str::to_owned);
    }

    pub fn set_iss_param(&self, param: IssParam) {
        *lock(&self.state().iss_param) = param;
    }

    pub fn set_token_mode(&self, mode: TokenMode) {
        *lock(&self.state().token_mode) = mode;
    }

    pub fn set_id_token_fault(&self, fault: IdTokenFault) {
        *lock(&self.state().id_token_fault) = fault;
    }

    /// The access token's `aud` (default `"orders"`).
    pub fn set_access_audience(&self, aud: Value) {
        *lock(&self.state().access_audience) = aud;
    }

    pub fn set_access_ttl(&self, secs: i64) {
        self.state().access_ttl.store(secs, Ordering::SeqCst);
    }

    pub fn set_id_ttl(&self, secs: i64) {
        self.state().id_ttl.store(secs, Ordering::SeqCst);
    }

    /// How long a code may wait before it is redeemed (default 60 s).
    pub fn set_code_ttl(&self, secs: i64) {
        self.state().code_ttl.store(secs, Ordering::SeqCst);
    }

    /// Pads access tokens with a claim of this many characters (0: none).
    pub fn set_access_token_padding(&self, bytes: usize) {
        self.state().padding.store(bytes, Ordering::SeqCst);
    }

    /// Refresh tokens become single-use: each refresh answers with a new one.
    pub fn set_rotate_refresh(&self, rotate: bool) {
        self.state().rotate_refresh.store(rotate, Ordering::SeqCst);
    }

    // --- what it saw ---------------------------------------------------------------------

    pub fn discovery_count(&self) -> usize {
        self.state().counts.discovery.load(Ordering::SeqCst)
    }

    pub fn jwks_count(&self) -> usize {
        self.state().counts.jwks.load(Ordering::SeqCst)
    }

    pub fn authorize_count(&self) -> usize {
        self.state().counts.authorize.load(Ordering::SeqCst)
    }

    /// Requests to the token endpoint (any grant, any answer).
    pub fn token_count(&self) -> usize {
        self.state().counts.token.load(Ordering::SeqCst)
    }

    /// Token requests with `grant_type=refresh_token` (any answer).
    pub fn refresh_count(&self) -> usize {
        self.state().refresh_count.load(Ordering::SeqCst)
    }

    pub fn end_session_count(&self) -> usize {
        self.state().counts.end_session.load(Ordering::SeqCst)
    }

    pub fn other_count(&self) -> usize {
        self.state().counts.other.load(Ordering::SeqCst)
    }

    /// The query of every authorization request, decoded, in order.
    pub fn authorize_queries(&self) -> Vec<BTreeMap<String, String>> {
        lock(&self.state().authorize_queries).clone()
    }

    /// Every token request, in order.
    pub fn token_requests(&self) -> Vec<Request> {
        lock(&self.state().token_requests).clone()
    }

    /// The query of every end-session request, decoded, in order.
    pub fn end_session_queries(&self) -> Vec<BTreeMap<String, String>> {
        lock(&self.state().end_session_queries).clone()
    }

    /// What the token endpoint issued, in order.
    pub fn issued(&self) -> Vec<Issued> {
        lock(&self.state().issued).clone()
    }

    pub fn last_issued(&self) -> Option<Issued> {
        lock(&self.state().issued).last().cloned()
    }

    /// Why requests were refused, in order (`"token: PKCE verifier mismatch"`, ...).
    pub fn refusals(&self) -> Vec<String> {
        lock(&self.state().refusals).clone()
    }

    // --- listening -----------------------------------------------------------------------

    /// Stops listening and closes every open connection. [`Oidc::listen_again`] undoes it.
    pub fn stop_listening(&self) {
        self.server.stop_listening();
    }

    pub fn listen_again(&self) {
        self.server.listen_again();
    }
}

// --- answers -------------------------------------------------------------------------------

fn handle(state: &State, request: &Request) -> Reply {
    let path = request.path();
    // Counted before answering, so whoever sees the answer sees the count.
    let counter = match path {
        DISCOVERY_PATH => &state.counts.discovery,
        JWKS_PATH => &state.counts.jwks,
        AUTHORIZE_PATH => &state.counts.authorize,
        TOKEN_PATH => &state.counts.token,
        END_SESSION_PATH => &state.counts.end_session,
        _ => &state.counts.other,
    };
    counter.fetch_add(1, Ordering::SeqCst);
    match (request.method.as_str(), path) {
        ("GET", DISCOVERY_PATH) => discovery(state).into(),
        ("GET", JWKS_PATH) => Answer::json(200, &json!({"keys": [state.key.public_jwk()]}))
            .with_header("cache-control", "max-age=300")
            .into(),
        ("GET", AUTHORIZE_PATH) => authorize(state, request).into(),
        ("POST", TOKEN_PATH) => token(state, request),
        ("GET", END_SESSION_PATH) => end_session(state, request).into(),
        _ => Answer::new(404, "text/plain", "not found\n").into(),
    }
}

fn discovery(state: &State) -> Answer {
    let base = format!("http://127.0.0.1:{}", state.port);
    let iss_supported = *lock(&state.iss_param) != IssParam::Omit;
    let document = json!({
        "issuer": *lock(&state.issuer),
        "authorization_endpoint": format!("{base}{AUTHORIZE_PATH}"),
        "token_endpoint": format!("{base}{TOKEN_PATH}"),
        "end_session_endpoint": format!("{base}{END_SESSION_PATH}"),
        "jwks_uri": format!("{base}{JWKS_PATH}"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [state.key.alg.name()],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "authorization_response_iss_parameter_supported": iss_supported,
    });
    Answer::json(200, &document)
}

fn refuse(state: &State, what: String) {
    lock(&state.refusals).push(what);
}

/// The query string of a request target, decoded (the last of a repeated name wins).
pub fn query_of(target: &str) -> BTreeMap<String, String> {
    target
        .split_once('?')
        .and_then(|(_, query)| parse_form(query))
        .unwrap_or_default()
}

/// `base?name=value&...`, each value form-encoded.
pub fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let query: Vec<String> = params
        .iter()
        .map(|(name, value)| format!("{}={}", form_encode(name), form_encode(value)))
        .collect();
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}{}", query.join("&"))
}

fn redirect(location: &str) -> Answer {
    Answer::new(302, "text/plain", "redirecting\n")
        .with_header("location", location)
        .with_header("cache-control", "no-store")
}

/// `GET /authorize`: checks the request, then approves at once (302 to the client's
/// `redirect_uri` with `code`, `state` and, when switched on, `iss`).
fn authorize(state: &State, request: &Request) -> Answer {
    let query = query_of(&request.target);
    lock(&state.authorize_queries).push(query.clone());
    let get = |name: &str| query.get(name).map(String::as_str);

    // Without a known client and one of its redirect URIs, never redirect (RFC 6749 §4.1.2.1).
    if get("client_id") != Some(state.client_id.as_str()) {
        refuse(
            state,
            format!("authorize: unknown client_id {:?}", get("client_id")),
        );
        return Answer::new(400, "text/plain", "unknown client\n");
    }
    let Some(redirect_uri) = get("redirect_uri") else {
        refuse(state, "authorize: no redirect_uri".into());
        return Answer::new(400, "text/plain", "no redirect_uri\n");
    };
    if !lock(&state.redirect_uris).iter().any(|u| u == redirect_uri) {
        refuse(
            state,
            format!("authorize: redirect_uri {redirect_uri} not registered"),
        );
        return Answer::new(400, "text/plain", "redirect_uri not registered\n");
    }
    let state_param = get("state").unwrap_or_default().to_owned();
    let mut answer_params: Vec<(&str, String)> = Vec::new();
    let problem = if get("response_type") != Some("code") {
        Some(("unsupported_response_type", "response_type must be code"))
    } else if get("code_challenge_method") != Some("S256") {
        Some(("invalid_request", "code_challenge_method must be S256"))
    } else if !get("code_challenge").is_some_and(is_pkce_challenge) {
        Some(("invalid_request", "code_challenge missing or malformed"))
    } else if !get("scope").is_some_and(|s| s.split(' ').any(|s| s == "openid")) {
        Some(("invalid_scope", "scope must contain openid"))
    } else if state_param.is_empty() {
        Some(("invalid_request", "state missing"))
    } else {
        None
    };
    if let Some((error, description)) = problem {
        refuse(state, format!("authorize: {error}: {description}"));
        answer_params.push(("error", error.into()));
        answer_params.push(("error_description", description.into()));
    } else if let Some(error) = lock(&state.authorize_error).clone() {
        answer_params.push(("error", error));
    } else {
        let code = random_token(state, "code");
        let sub = lock(&state.user).clone();
        lock(&state.codes).insert(
            code.clone(),
            Code {
                client_id: state.client_id.clone(),
                redirect_uri: redirect_uri.to_owned(),
                challenge: get("code_challenge").unwrap_or_default().to_owned(),
                nonce: get("nonce").map(str::to_owned),
                scope: get("scope").unwrap_or_default().to_owned(),
                sub,
                issued_at: now(),
                used: false,
            },
        );
        answer_params.push(("code", code));
    }
    if !state_param.is_empty() {
        answer_params.push(("state", state_param));
    }
    match &*lock(&state.iss_param) {
        IssParam::Omit => {}
        IssParam::Issuer => answer_params.push(("iss", lock(&state.issuer).clone())),
        IssParam::Other(other) => answer_params.push(("iss", other.clone())),
    }
    let params: Vec<(&str, &str)> = answer_params
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    redirect(&with_query(redirect_uri, &params))
}

/// RFC 7636 §4.2: 43 to 128 characters of base64url (S256 gives exactly 43).
fn is_pkce_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters.
fn is_pkce_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// BASE64URL(SHA256(verifier)).
pub fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn token_error(status: u16, error: &str, description: &str) -> Answer {
    Answer::json(
        status,
        &json!({"error": error, "error_description": description}),
    )
    .with_header("cache-control", "no-store")
}

/// `POST /token`.
fn token(state: &State, request: &Request) -> Reply {
    lock(&state.token_requests).push(request.clone());
    let form = request.form().unwrap_or_default();
    if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
        state.refresh_count.fetch_add(1, Ordering::SeqCst);
    }
    let mode = *lock(&state.token_mode);
    match mode {
        TokenMode::Serve => {}
        TokenMode::Hang => return Reply::Hang,
        TokenMode::Close => return Reply::Close,
        TokenMode::Garbage => {
            return Answer::new(
                200,
                "application/json",
                "<html><body>Service temporarily unavailable</body></html>",
            )
            .into()
        }
        TokenMode::Status(status) => {
            let error = if status == 503 {
                "temporarily_unavailable"
            } else {
                "server_error"
            };
            return token_error(status, error, "the test IdP was told to fail").into();
        }
    }
    match request.basic_credentials() {
        Some((id, secret)) if id == state.client_id && secret == state.client_secret => {}
        other => {
            refuse(
                state,
                format!(
                    "token: client authentication failed ({:?})",
                    other.map(|c| c.0)
                ),
            );
            return token_error(401, "invalid_client", "client authentication failed")
                .with_header("www-authenticate", "Basic realm=\"oidc\"")
                .into();
        }
    }
    let answer = match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => authorization_code(state, &form),
        Some("refresh_token") => refresh(state, &form),
        other => {
            refuse(state, format!("token: unsupported grant_type {other:?}"));
            Err(token_error(
                400,
                "unsupported_grant_type",
                "unsupported grant_type",
            ))
        }
    };
    answer.unwrap_or_else(|refusal| refusal).into()
}

fn invalid_grant(state: &State, why: &str) -> Answer {
    refuse(state, format!("token: invalid_grant: {why}"));
    token_error(400, "invalid_grant", why)
}

fn authorization_code(state: &State, form: &BTreeMap<String, String>) -> Result<Answer, Answer> {
    let get = |name: &str| form.get(name).map(String::as_str);
    let Some(code_value) = get("code") else {
        refuse(state, "token: no code".into());
        return Err(token_error(400, "invalid_request", "code missing"));
    };
    // Taken as used whatever happens next: a code is good for one try (RFC 6749 §4.1.2).
    let code = {
        let mut codes = lock(&state.codes);
        let Some(code) = codes.get_mut(code_value) else {
            return Err(invalid_grant(state, "unknown code"));
        };
        if code.used {
            return Err(invalid_grant(state, "code already used"));
        }
        code.used = true;
        code.clone()
    };
    if now() - code.issued_at > state.code_ttl.load(Ordering::SeqCst) {
        return Err(invalid_grant(state, "code expired"));
    }
    if code.client_id != state.client_id {
        return Err(invalid_grant(state, "code issued to another client"));
    }
    if get("redirect_uri") != Some(code.redirect_uri.as_str()) {
        return Err(invalid_grant(
            state,
            "redirect_uri differs from the authorization request's",
        ));
    }
    let Some(verifier) = get("code_verifier") else {
        return Err(invalid_grant(state, "code_verifier missing"));
    };
    if !is_pkce_verifier(verifier) {
        refuse(state, "token: code_verifier malformed".into());
        return Err(token_error(
            400,
            "invalid_request",
            "code_verifier malformed",
        ));
    }
    if pkce_s256(verifier) != code.challenge {
        return Err(invalid_grant(state, "PKCE verifier mismatch"));
    }
    let refresh_token = random_token(state, "rt");
    let auth_time = now();
    lock(&state.refresh_tokens).insert(
        refresh_token.clone(),
        Refresh {
            client_id: code.client_id.clone(),
            scope: code.scope.clone(),
            sub: code.sub.clone(),
            auth_time,
        },
    );
    Ok(issue(
        state,
        "authorization_code",
        &code.sub,
        &code.scope,
        code.nonce.as_deref(),
        auth_time,
        refresh_token,
    ))
}

fn refresh(state: &State, form: &BTreeMap<String, String>) -> Result<Answer, Answer> {
    let Some(value) = form.get("refresh_token") else {
        refuse(state, "token: no refresh_token".into());
        return Err(token_error(400, "invalid_request", "refresh_token missing"));
    };
    let rotate = state.rotate_refresh.load(Ordering::SeqCst);
    let grant = {
        let mut tokens = lock(&state.refresh_tokens);
        let grant = if rotate {
            tokens.remove(value)
        } else {
            tokens.get(value).cloned()
        };
        let Some(grant) = grant else {
            return Err(invalid_grant(state, "unknown refresh token"));
        };
        grant
    };
    if grant.client_id != state.client_id {
        return Err(invalid_grant(
            state,
            "refresh token issued to another client",
        ));
    }
    let refresh_token = if rotate {
        let fresh = random_token(state, "rt");
        lock(&state.refresh_tokens).insert(fresh.clone(), grant.clone());
        fresh
    } else {
        value.clone()
    };
    // OIDC Core §12.2: a refreshed ID token has no nonce.
    Ok(issue(
        state,
        "refresh_token",
        &grant.sub,
        &grant.scope,
        None,
        grant.auth_time,
        refresh_token,
    ))
}

/// Signs an access token and an ID token for `sub`, remembers them, and answers with
/// both and `refresh_token`.
fn issue(
    state: &State,
    grant_type: &str,
    sub: &str,
    scope: &str,
    nonce: Option<&str>,
    auth_time: i64,
    refresh_token: String,
) -> Answer {
    let now = now();
    let issuer = lock(&state.issuer).clone();
    let user_claims = lock(&state.user_claims).clone();
    let access_ttl = state.access_ttl.load(Ordering::SeqCst);
    let sid = format!("sid-{}", sub_digest(sub, auth_time));

    let mut access = user_claims.clone();
    access.extend(
        json!({
            "iss": issuer,
            "sub": sub,
            "aud": *lock(&state.access_audience),
            "azp": state.client_id,
            "client_id": state.client_id,
            "scope": scope,
            "sid": sid,
            "jti": random_token(state, "at"),
            "iat": now,
            "nbf": now - 5,
            "exp": now + access_ttl,
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
    );
    let padding = state.padding.load(Ordering::SeqCst);
    if padding > 0 {
        access.insert(PADDING_CLAIM.into(), json!("p".repeat(padding)));
    }
    let access_token = sign(state.key, None, &Value::Object(access));

    let fault = *lock(&state.id_token_fault);
    let id_ttl = state.id_ttl.load(Ordering::SeqCst);
    let mut id = user_claims;
    id.extend(
        json!({
            "iss": issuer,
            "sub": sub,
            "aud": state.client_id,
            "azp": state.client_id,
            "iat": now,
            "exp": now + id_ttl,
            "auth_time": auth_time,
            "sid": sid,
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
    );
    if let Some(nonce) = nonce {
        id.insert("nonce".into(), json!(nonce));
    }
    match fault {
        IdTokenFault::None | IdTokenFault::BadSignature => {}
        IdTokenFault::WrongNonce => {
            id.insert(
                "nonce".into(),
                json!(format!("{}-not", nonce.unwrap_or("x"))),
            );
        }
        IdTokenFault::NoNonce => {
            id.remove("nonce");
        }
        IdTokenFault::WrongAudience => {
            id.insert("aud".into(), json!("another-client"));
            id.insert("azp".into(), json!("another-client"));
        }
        IdTokenFault::WrongAzp => {
            id.insert("aud".into(), json!([state.client_id, "another-client"]));
            id.insert("azp".into(), json!("another-client"));
        }
        IdTokenFault::WrongIssuer => {
            id.insert("iss".into(), json!("https://evil.example"));
        }
        IdTokenFault::Expired => {
            id.insert("iat".into(), json!(now - 7200));
            id.insert("exp".into(), json!(now - 3600));
        }
        IdTokenFault::IssuedInTheFuture => {
            id.insert("iat".into(), json!(now + 3600));
            id.insert("exp".into(), json!(now + 3600 + id_ttl));
        }
    }
    let forger = (fault == IdTokenFault::BadSignature).then_some(state.stranger);
    let id_token = sign(state.key, forger, &Value::Object(id));

    lock(&state.issued).push(Issued {
        grant_type: grant_type.to_owned(),
        access_token: access_token.clone(),
        id_token: id_token.clone(),
        refresh_token: refresh_token.clone(),
    });
    Answer::json(
        200,
        &json!({
            "access_token": access_token,
            "id_token": id_token,
            "token_type": "Bearer",
            "expires_in": access_ttl,
            "refresh_token": refresh_token,
            "scope": scope,
        }),
    )
    .with_header("cache-control", "no-store")
    .with_header("pragma", "no-cache")
}

/// A JWT with `key`'s header (`alg`, `typ`, `kid`), signed by `forger` when given.
fn sign(key: &SigningKey, forger: Option<&SigningKey>, claims: &Value) -> String {
    let mut header = json!({"alg": key.alg.name(), "typ": "JWT"});
    if let Some(kid) = &key.kid {
        header["kid"] = json!(kid);
    }
    forger
        .unwrap_or(key)
        .sign_with_header(&header, claims)
        .unwrap_or_else(|e| panic!("oidc: signing: {e}"))
}

/// `GET /logout` (RP-initiated logout): records the query, answers 200.
fn end_session(state: &State, request: &Request) -> Answer {
    let query = query_of(&request.target);
    lock(&state.end_session_queries).push(query);
    Answer::new(
        200,
        "text/html; charset=utf-8",
        "<!doctype html><title>Signed out</title><p>You are signed out.</p>\n",
    )
    .with_header("cache-control", "no-store")
}

// --- helpers -----------------------------------------------------------------------------

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A value nobody guesses in a test: 128 random bits (std only), base64url, prefixed.
fn random_token(state: &State, prefix: &str) -> String {
    let seq = state.seq.fetch_add(1, Ordering::SeqCst);
    let mut bytes = Vec::with_capacity(16);
    for half in 0..2u64 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(seq);
        hasher.write_u64(half);
        hasher.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        bytes.extend_from_slice(&hasher.finish().to_le_bytes());
    }
    format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn sub_digest(sub: &str, auth_time: i64) -> String {
    let digest = Sha256::digest(format!("{sub}/{auth_time}").as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..9])
}

// --- a browser -------------------------------------------------------------------------------

/// One `Set-Cookie` header, parsed.
#[derive(Debug, Clone)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    /// Attribute names lowercase, values as sent (`None` for flags such as `HttpOnly`).
    pub attributes: Vec<(String, Option<String>)>,
    /// The header as received.
    pub raw: String,
}

impl SetCookie {
    pub fn parse(header: &str) -> Option<SetCookie> {
        let mut parts = header.split(';');
        let (name, value) = parts.next()?.split_once('=')?;
        let attributes = parts
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| match a.split_once('=') {
                Some((n, v)) => (n.trim().to_ascii_lowercase(), Some(v.trim().to_owned())),
                None => (a.to_ascii_lowercase(), None),
            })
            .collect();
        Some(SetCookie {
            name: name.trim().to_owned(),
            value: value.trim().to_owned(),
            attributes,
            raw: header.to_owned(),
        })
    }

    /// `Some(value)` if the attribute is there (`Some(None)` for a flag).
    pub fn attribute(&self, name: &str) -> Option<Option<&str>> {
        let name = name.to_ascii_lowercase();
        self.attributes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_deref())
    }

    pub fn has_flag(&self, name: &str) -> bool {
        self.attribute(name).is_some()
    }

    pub fn path(&self) -> Option<&str> {
        self.attribute("path").flatten()
    }

    pub fn max_age(&self) -> Option<i64> {
        self.attribute("max-age")
            .flatten()
            .and_then(|v| v.parse().ok())
    }

    /// Whether it removes the cookie: `Max-Age` of zero or less, or an `Expires` in 1970.
    pub fn clears(&self) -> bool {
        self.max_age().is_some_and(|a| a <= 0)
            || self
                .attribute("expires")
                .flatten()
                .is_some_and(|e| e.contains("1970"))
    }
}

/// Every `Set-Cookie` of a response, parsed (unparsable ones panic: the filter wrote them).
pub fn set_cookies(response: &super::Response) -> Vec<SetCookie> {
    response
        .header_all("set-cookie")
        .into_iter()
        .map(|h| SetCookie::parse(h).unwrap_or_else(|| panic!("unparsable set-cookie {h:?}")))
        .collect()
}

/// A cookie in the jar. As in browsers, cookies belong to a host, not a port (RFC 6265
/// §8.5): Envoy's cookies are sent to the IdP on 127.0.0.1 too.
#[derive(Debug, Clone)]
pub struct Cookie {
    pub host: String,
    pub name: String,
    pub value: String,
    pub path: String,
}

/// A URL split for the client: host (as written), port, request target.
pub fn split_url(url: &str) -> (String, u16, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http:// URL: {url:?}"));
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let target = if target.starts_with('?') {
        format!("/{target}")
    } else {
        target
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse().unwrap_or_else(|_| panic!("bad port in {url:?}")),
        ),
        None => (authority, 80),
    };
    (host.to_owned(), port, target)
}

/// One step of a navigation: the URL asked for, and the answer.
#[derive(Debug, Clone)]
pub struct Hop {
    pub url: String,
    pub response: super::Response,
}

/// A minimal browser: keeps cookies (by host and path, `Max-Age`/`Expires` removal) and
/// follows redirects across origins on 127.0.0.1. Sends `Accept: text/html` as browsers
/// do when they navigate. One connection per request (`connection: close`), so Envoy's
/// workers take turns.
pub struct Browser {
    pub jar: Vec<Cookie>,
    pub accept: String,
    /// Every URL asked for, in order.
    pub visited: Vec<String>,
}

pub const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
/// Redirects followed at most in one navigation.
pub const MAX_HOPS: usize = 10;

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            jar: Vec::new(),
            accept: BROWSER_ACCEPT.to_owned(),
            visited: Vec::new(),
        }
    }

    /// The `cookie` header for a request to `host` at `target`, longest paths first.
    pub fn cookie_header(&self, host: &str, target: &str) -> Option<String> {
        let path = target.split('?').next().unwrap_or("/");
        let mut matching: Vec<&Cookie> = self
            .jar
            .iter()
            .filter(|c| c.host == host && path_matches(&c.path, path))
            .collect();
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        (!matching.is_empty()).then(|| {
            matching
                .iter()
                .map(|c| format!("{}={}", c.name, c.value))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// Sends one request (no redirect followed) with the jar's cookies and stores the
    /// answer's. `extra` headers are added after `accept` and `cookie`.
    pub fn request(
        &mut self,
        method: &str,
        url: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> super::Response {
        let (host, port, target) = split_url(url);
        self.visited.push(url.to_owned());
        let host_header = format!("{host}:{port}");
        let cookie = self.cookie_header(&host, &target);
        let mut headers: Vec<(&str, &str)> = vec![("host", &host_header), ("accept", &self.accept)];
        if let Some(cookie) = &cookie {
            headers.push(("cookie", cookie));
        }
        headers.extend_from_slice(extra);
        let response = super::client::request(port, method, &target, &headers, body)
            .unwrap_or_else(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => panic!(
                    "{method} {url}: no answer within {:?} ({e})",
                    super::client::TIMEOUT
                ),
                _ => panic!("{method} {url} failed: {e}"),
            });
        self.store(&host, &target, &response);
        response
    }

    pub fn get(&mut self, url: &str) -> super::Response {
        self.request("GET", url, &[], b"")
    }

    /// Stores the `Set-Cookie`s of an answer from `host` for `target`.
    pub fn store(&mut self, host: &str, target: &str, response: &super::Response) {
        for set in set_cookies(response) {
            let path = match set.path() {
                Some(p) if p.starts_with('/') => p.to_owned(),
                _ => default_path(target),
            };
            self.jar
                .retain(|c| !(c.host == host && c.name == set.name && c.path == path));
            if !set.clears() {
                self.jar.push(Cookie {
                    host: host.to_owned(),
                    name: set.name.clone(),
                    value: set.value.clone(),
                    path,
                });
            }
        }
    }

    /// Navigates: GETs `url`, then follows redirects (at most [`MAX_HOPS`]); every hop,
    /// the final answer last.
    pub fn navigate(&mut self, url: &str) -> Vec<Hop> {
        let mut hops = Vec::new();
        let mut url = url.to_owned();
        for _ in 0..=MAX_HOPS {
            let response = self.get(&url);
            let next = match response.status {
                301 | 302 | 303 | 307 | 308 => {
                    response.header("location").map(|l| resolve(&url, l))
                }
                _ => None,
            };
            hops.push(Hop {
                url: url.clone(),
                response,
            });
            match next {
                Some(next) => url = next,
                None => return hops,
            }
        }
        panic!(
            "more than {MAX_HOPS} redirects: {:?}",
            hops.iter().map(|h| &h.url).collect::<Vec<_>>()
        );
    }

    /// The value of a cookie in the jar (any host, any path).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.jar
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value.as_str())
    }

    pub fn cookie_names(&self) -> Vec<String> {
        self.jar.iter().map(|c| c.name.clone()).collect()
    }

    /// Adds a cookie of the site's own (as a page's script would).
    pub fn add_cookie(&mut self, host: &str, name: &str, value: &str, path: &str) {
        self.jar.push(Cookie {
            host: host.to_owned(),
            name: name.to_owned(),
            value: value.to_owned(),
            path: path.to_owned(),
        });
    }
}

/// RFC 6265 §5.1.4 path-match.
fn path_matches(cookie_path: &str, request_path: &str) -> bool {
    request_path == cookie_path
        || (request_path.starts_with(cookie_path)
            && (cookie_path.ends_with('/')
                || request_path.as_bytes().get(cookie_path.len()) == Some(&b'/')))
}

/// RFC 6265 §5.1.4 default-path.
fn default_path(target: &str) -> String {
    let path = target.split('?').next().unwrap_or("/");
    match path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => path[..i].to_owned(),
    }
}

/// A `Location` against the URL it came from: absolute `http://` URLs as they are,
/// paths on the same origin. Anything else (protocol-relative, other schemes, relative
/// paths) panics: the filter and the IdP never send those.
pub fn resolve(from: &str, location: &str) -> String {
    if location.starts_with("http://") {
        return location.to_owned();
    }
    if location.starts_with('/') && !location.starts_with("//") {
        let (host, port, _) = split_url(from);
        return format!("http://{host}:{port}{location}");
    }
    panic!("unexpected Location {location:?} (from {from})");
}
