//! A controllable authorization server on 127.0.0.1, for the filter's exchanges: RFC 7662
//! introspection (JSON, or RFC 9701 signed JWT answers), RFC 8693 token exchange, and a
//! session endpoint. It counts requests per endpoint, records the last request, and fails
//! on command (an error status, an answer that never comes, garbage, a huge body,
//! connections closed or refused), like [`super::idp`].
//!
//! Every thread it starts ends on its own: connections idle out, a hanging or delayed
//! answer holds its connection at most [`MAX_HANG`], and dropping the `Auth` closes
//! everything.

use super::server::{lock, Answer, Reply, Request, Server};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokengate::crypto::sign::SigningKey;

/// The longest a hanging or delayed answer holds its connection.
pub use super::server::MAX_HANG;

pub const INTROSPECT_PATH: &str = "/introspect";
pub const TOKEN_PATH: &str = "/token";
/// Session ids follow this prefix, percent-encoded, as one path segment.
pub const SESSIONS_PREFIX: &str = "/sessions/";
/// RFC 9701's media type, in `Accept` and in the answer's `content-type`.
pub const INTROSPECTION_JWT_MEDIA_TYPE: &str = "application/token-introspection+jwt";
/// RFC 9701's `typ` for a signed introspection answer.
pub const INTROSPECTION_JWT_TYP: &str = "token-introspection+jwt";
pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The body size of [`Mode::Huge`].
pub const HUGE_BODY_BYTES: usize = 10 * 1024 * 1024;
/// `expires_in` of token exchange answers, and the lifetime of issued JWTs whose token
/// has no `exp`.
pub const DEFAULT_EXPIRES_IN: i64 = 300;

/// How the server answers (every path alike), read when each request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The endpoints as documented; 404 for any other path.
    Serve,
    /// This status with a short text body.
    Status(u16),
    /// Read the request and never answer: hold the connection until the peer closes it
    /// or [`MAX_HANG`] passes.
    Hang,
    /// 200, `content-type: application/json`, a body that is not JSON.
    Garbage,
    /// The answer [`Mode::Serve`] would give, its body padded with trailing spaces to
    /// [`HUGE_BODY_BYTES`] (a JSON answer stays valid JSON: it is only too big).
    Huge,
    /// As [`Mode::Huge`], padded to this many bytes.
    Padded(usize),
    /// Read the request, then close the connection without a word.
    Close,
}

/// How `GET /sessions/{id}` answers for an active session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAnswer {
    /// 200, `content-type: application/jwt`, the signed JWT as the body.
    JwtBody,
    /// 200, `content-type: application/json`, the session's claims (with `iss`).
    JsonClaims,
    /// 200 with `authorization: Bearer <JWT>` and an empty body.
    BearerHeader,
}

/// What an authorization server reads in a request, besides what every server does.
impl Request {
    /// The body as an `application/x-www-form-urlencoded` form (the last value of a
    /// repeated name wins); `None` if it is not one.
    pub fn form(&self) -> Option<BTreeMap<String, String>> {
        let text = std::str::from_utf8(&self.body).ok()?;
        parse_form(text)
    }

    /// The (client id, client secret) of an HTTP Basic `authorization` header, each
    /// form-decoded as RFC 6749 §2.3.1 says; `None` without one or if it is malformed.
    pub fn basic_credentials(&self) -> Option<(String, String)> {
        parse_basic(self.header("authorization")?)
    }
}

#[derive(Debug, Clone)]
struct TokenEntry {
    claims: Map<String, Value>,
    revoked: bool,
}

#[derive(Default)]
struct Counts {
    introspect: AtomicUsize,
    token: AtomicUsize,
    sessions: AtomicUsize,
    other: AtomicUsize,
}

/// Faults of RFC 9701 answers: who signs, and what the header and `aud` say.
struct JwtAnswer {
    key: &'static SigningKey,
    typ: String,
    /// `None`: the client id of the request (the right one).
    aud: Option<String>,
    /// `None`: the server's issuer (the right one).
    iss: Option<String>,
    /// Added to the current time for `iat`.
    iat_offset_secs: i64,
}

struct State {
    mode: Mutex<Mode>,
    delay: Mutex<Duration>,
    client_id: Mutex<String>,
    client_secret: Mutex<String>,
    issuer: Mutex<String>,
    jwt_answer: Mutex<JwtAnswer>,
    tokens: Mutex<HashMap<String, TokenEntry>>,
    /// A token whose `exp` has passed is inactive (RFC 7662 §2.2) unless this is off.
    honor_exp: AtomicBool,
    session_answer: Mutex<SessionAnswer>,
    unknown_session_status: Mutex<u16>,
    counts: Counts,
    last: Mutex<Option<Request>>,
    /// Every token (introspected, exchanged, or session id) asked about, in order.
    asked: Mutex<Vec<String>>,
    /// The last JWT issued (token exchange, session, or a signed introspection answer).
    last_issued: Mutex<Option<String>>,
}

pub struct Auth {
    server: Server<State>,
}

impl Auth {
    /// Starts serving on 127.0.0.1: answers name `issuer`, JWTs are signed with `key`
    /// (its `kid` in the header), and requests must authenticate as this client.
    pub fn start(
        issuer: &str,
        key: &'static SigningKey,
        client_id: &str,
        client_secret: &str,
    ) -> Auth {
        let state = |_| State {
            mode: Mutex::new(Mode::Serve),
            delay: Mutex::new(Duration::ZERO),
            client_id: Mutex::new(client_id.to_owned()),
            client_secret: Mutex::new(client_secret.to_owned()),
            issuer: Mutex::new(issuer.to_owned()),
            jwt_answer: Mutex::new(JwtAnswer {
                key,
                typ: INTROSPECTION_JWT_TYP.to_owned(),
                aud: None,
                iss: None,
                iat_offset_secs: 0,
            }),
            tokens: Mutex::new(HashMap::new()),
            honor_exp: AtomicBool::new(true),
            session_answer: Mutex::new(SessionAnswer::JwtBody),
            unknown_session_status: Mutex::new(404),
            counts: Counts::default(),
            last: Mutex::new(None),
            asked: Mutex::new(Vec::new()),
            last_issued: Mutex::new(None),
        };
        Auth {
            server: Server::start("auth", state, handle),
        }
    }

    fn state(&self) -> &State {
        self.server.state()
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `http://127.0.0.1:<port><path>`, for an exchange's `endpoint.uri`.
    pub fn uri(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }

    // --- tokens --------------------------------------------------------------------------

    /// Makes `token` (an opaque token or a session id) active with these claims: the
    /// introspection answer's members, the claims of the JWTs issued for it.
    pub fn add_token(&self, token: &str, claims: &Value) {
        let claims = claims
            .as_object()
            .cloned()
            .expect("auth: token claims must be a JSON object");
        lock(&self.state().tokens).insert(
            token.to_owned(),
            TokenEntry {
                claims,
                revoked: false,
            },
        );
    }

    /// From now on `token` is inactive (introspection `active:false`, `invalid_grant`,
    /// unknown session).
    pub fn revoke(&self, token: &str) {
        if let Some(entry) = lock(&self.state().tokens).get_mut(token) {
            entry.revoked = true;
        }
    }

    /// Whether a token whose `exp` has passed is answered as inactive (the default, as
    /// RFC 7662 says) or still as active, with its past `exp` (a server that leaves the
    /// expiry check to the resource server).
    pub fn set_honor_exp(&self, honor: bool) {
        self.state().honor_exp.store(honor, Ordering::SeqCst);
    }

    // --- behaviour -----------------------------------------------------------------------

    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.state().mode) = mode;
    }

    /// Every answer waits this long first (at most [`MAX_HANG`]): keeps callouts in
    /// flight so that concurrent requests overlap.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state().delay) = delay.min(MAX_HANG);
    }

    /// The client credentials requests must carry from now on.
    pub fn set_client(&self, id: &str, secret: &str) {
        *lock(&self.state().client_id) = id.to_owned();
        *lock(&self.state().client_secret) = secret.to_owned();
    }

    /// Sign issued JWTs and RFC 9701 answers with this key from now on (a key the
    /// gateway doesn't trust makes a forged answer).
    pub fn set_signing_key(&self, key: &'static SigningKey) {
        lock(&self.state().jwt_answer).key = key;
    }

    /// The `typ` of RFC 9701 answers (default [`INTROSPECTION_JWT_TYP`]).
    pub fn set_introspection_typ(&self, typ: &str) {
        lock(&self.state().jwt_answer).typ = typ.to_owned();
    }

    /// The `aud` of RFC 9701 answers; `None` (the default): the requesting client's id.
    pub fn set_introspection_aud(&self, aud: Option<&str>) {
        lock(&self.state().jwt_answer).aud = aud.map(str::to_owned);
    }

    /// The `iss` of RFC 9701 answers; `None` (the default): the server's issuer.
    pub fn set_introspection_iss(&self, iss: Option<&str>) {
        lock(&self.state().jwt_answer).iss = iss.map(str::to_owned);
    }

    /// RFC 9701 answers carry `iat` = now + this (default 0): a stale or future answer.
    pub fn set_introspection_iat_offset(&self, secs: i64) {
        lock(&self.state().jwt_answer).iat_offset_secs = secs;
    }

    pub fn set_session_answer(&self, answer: SessionAnswer) {
        *lock(&self.state().session_answer) = answer;
    }

    /// The status for an unknown or revoked session: 404 (the default) or 401.
    pub fn set_unknown_session_status(&self, status: u16) {
        *lock(&self.state().unknown_session_status) = status;
    }

    // --- what it saw ---------------------------------------------------------------------

    /// `POST /introspect` requests so far (whatever the answer was).
    pub fn introspect_count(&self) -> usize {
        self.state().counts.introspect.load(Ordering::SeqCst)
    }

    /// `POST /token` requests so far.
    pub fn token_count(&self) -> usize {
        self.state().counts.token.load(Ordering::SeqCst)
    }

    /// `GET /sessions/...` requests so far.
    pub fn sessions_count(&self) -> usize {
        self.state().counts.sessions.load(Ordering::SeqCst)
    }

    /// Requests for any other path so far.
    pub fn other_count(&self) -> usize {
        self.state().counts.other.load(Ordering::SeqCst)
    }

    /// Requests on every endpoint so far.
    pub fn total_count(&self) -> usize {
        self.introspect_count() + self.token_count() + self.sessions_count() + self.other_count()
    }

    /// The last request received (any path).
    pub fn last_request(&self) -> Option<Request> {
        lock(&self.state().last).clone()
    }

    /// The form of the last request (empty if there was none, or it had no form body).
    pub fn last_form(&self) -> BTreeMap<String, String> {
        self.last_request()
            .and_then(|r| r.form())
            .unwrap_or_default()
    }

    /// The `authorization` header of the last request.
    pub fn last_authorization(&self) -> Option<String> {
        self.last_request()
            .and_then(|r| r.header("authorization").map(str::to_owned))
    }

    /// How many times `token` was asked about (as `token`, `subject_token` or session id).
    pub fn times_asked(&self, token: &str) -> usize {
        lock(&self.state().asked)
            .iter()
            .filter(|t| *t == token)
            .count()
    }

    /// Every token asked about, in order.
    pub fn asked(&self) -> Vec<String> {
        lock(&self.state().asked).clone()
    }

    /// The last JWT this server signed (token exchange, session, RFC 9701 answer).
    pub fn last_issued(&self) -> Option<String> {
        lock(&self.state().last_issued).clone()
    }

    // --- listening -----------------------------------------------------------------------

    /// Stops listening and closes every open connection: from now on connections to the
    /// port are refused. [`Auth::listen_again`] undoes it.
    pub fn stop_listening(&self) {
        self.server.stop_listening();
    }

    /// Listens on the same port again. Panics if someone else took the port meanwhile.
    pub fn listen_again(&self) {
        self.server.listen_again();
    }
}

/// Answers one request as the mode says.
fn handle(state: &State, request: &Request) -> Reply {
    let path = request.path();
    // Counted and recorded before answering, so whoever sees the answer sees them.
    let counter = if path == INTROSPECT_PATH {
        &state.counts.introspect
    } else if path == TOKEN_PATH {
        &state.counts.token
    } else if path.starts_with(SESSIONS_PREFIX) {
        &state.counts.sessions
    } else {
        &state.counts.other
    };
    *lock(&state.last) = Some(request.clone());
    counter.fetch_add(1, Ordering::SeqCst);

    let mode = *lock(&state.mode);
    match mode {
        Mode::Close => return Reply::Close,
        Mode::Hang => return Reply::Hang,
        _ => {}
    }
    let delay = *lock(&state.delay);
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    let mut reply = match mode {
        Mode::Status(status) => Answer::new(status, "text/plain", "auth service failure\n"),
        Mode::Garbage => Answer::new(
            200,
            "application/json",
            "<html><body>Service temporarily unavailable</body></html>",
        ),
        Mode::Huge => padded(answer(state, request, path), HUGE_BODY_BYTES),
        Mode::Padded(size) => padded(answer(state, request, path), size),
        _ => answer(state, request, path),
    };
    // Every answer, faults included, says `cache-control: no-store`.
    reply
        .headers
        .insert(0, ("cache-control".into(), "no-store".into()));
    reply.into()
}

fn padded(mut answer: Answer, size: usize) -> Answer {
    if answer.body.len() < size {
        answer.body.resize(size, b' ');
    }
    answer
}

/// What [`Mode::Serve`] answers.
fn answer(state: &State, request: &Request, path: &str) -> Answer {
    if path == INTROSPECT_PATH && request.method == "POST" {
        introspect(state, request)
    } else if path == TOKEN_PATH && request.method == "POST" {
        token_exchange(state, request)
    } else if let (Some(raw), "GET") = (path.strip_prefix(SESSIONS_PREFIX), &*request.method) {
        session(state, raw)
    } else {
        Answer::new(404, "text/plain", "not found\n")
    }
}

/// The request's client, if its Basic credentials are the configured ones.
fn authenticated_client(state: &State, request: &Request) -> Option<String> {
    let (id, secret) = request.basic_credentials()?;
    let ok = id == *lock(&state.client_id) && secret == *lock(&state.client_secret);
    ok.then_some(id)
}

fn invalid_client() -> Answer {
    Answer::json(401, &json!({"error": "invalid_client"}))
        .with_header("www-authenticate", "Basic realm=\"auth\"")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The claims of `token` if it is active now.
fn active_claims(state: &State, token: &str) -> Option<Map<String, Value>> {
    lock(&state.asked).push(token.to_owned());
    let tokens = lock(&state.tokens);
    let entry = tokens.get(token)?;
    if entry.revoked {
        return None;
    }
    let expired = entry
        .claims
        .get("exp")
        .and_then(Value::as_i64)
        .is_some_and(|exp| exp <= now());
    if expired && state.honor_exp.load(Ordering::SeqCst) {
        return None;
    }
    Some(entry.claims.clone())
}

/// `claims` with `iss` filled in (unless the test set one).
fn with_issuer(state: &State, claims: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("iss".into(), json!(*lock(&state.issuer)));
    for (name, value) in claims {
        out.insert(name.clone(), value.clone());
    }
    out
}

/// Signs `claims` with the current key and `typ`, and remembers the result.
fn sign(state: &State, typ: &str, claims: &Value) -> String {
    let key = lock(&state.jwt_answer).key;
    let mut header = json!({"alg": key.alg.name(), "typ": typ});
    if let Some(kid) = &key.kid {
        header["kid"] = json!(kid);
    }
    let jwt = key
        .sign_with_header(&header, claims)
        .unwrap_or_else(|e| panic!("auth: signing: {e}"));
    *lock(&state.last_issued) = Some(jwt.clone());
    jwt
}

/// The claims of a JWT issued for a token: its claims, `iss`, `iat`, and an `exp`.
fn issued_claims(state: &State, claims: &Map<String, Value>) -> Map<String, Value> {
    let mut out = with_issuer(state, claims);
    let now = now();
    out.insert("iat".into(), json!(now));
    out.entry("exp")
        .or_insert_with(|| json!(now + DEFAULT_EXPIRES_IN));
    out
}

/// RFC 7662, with RFC 9701 answers when asked for.
fn introspect(state: &State, request: &Request) -> Answer {
    let Some(client) = authenticated_client(state, request) else {
        return invalid_client();
    };
    let Some(token) = request.form().and_then(|mut f| f.remove("token")) else {
        return Answer::json(400, &json!({"error": "invalid_request"}));
    };
    let introspection = match active_claims(state, &token) {
        Some(claims) => {
            let mut answer = Map::new();
            answer.insert("active".into(), json!(true));
            answer.extend(with_issuer(state, &claims));
            Value::Object(answer)
        }
        None => json!({"active": false}),
    };
    let wants_jwt = request.header("accept").is_some_and(|a| {
        a.to_ascii_lowercase()
            .contains(INTROSPECTION_JWT_MEDIA_TYPE)
    });
    if !wants_jwt {
        return Answer::json(200, &introspection);
    }
    let (typ, aud, iss, iat_offset) = {
        let jwt_answer = lock(&state.jwt_answer);
        (
            jwt_answer.typ.clone(),
            jwt_answer.aud.clone().unwrap_or(client),
            jwt_answer
                .iss
                .clone()
                .unwrap_or_else(|| lock(&state.issuer).clone()),
            jwt_answer.iat_offset_secs,
        )
    };
    let claims = json!({
        "iss": iss,
        "aud": aud,
        "iat": now() + iat_offset,
        "token_introspection": introspection,
    });
    Answer::new(
        200,
        INTROSPECTION_JWT_MEDIA_TYPE,
        sign(state, &typ, &claims),
    )
}

/// RFC 8693.
fn token_exchange(state: &State, request: &Request) -> Answer {
    if authenticated_client(state, request).is_none() {
        return invalid_client();
    }
    let Some(form) = request.form() else {
        return Answer::json(400, &json!({"error": "invalid_request"}));
    };
    let field = |name: &str| form.get(name).map(String::as_str);
    if field("grant_type") != Some(GRANT_TYPE_TOKEN_EXCHANGE) {
        return Answer::json(400, &json!({"error": "unsupported_grant_type"}));
    }
    if field("subject_token_type") != Some(TOKEN_TYPE_ACCESS_TOKEN) {
        return Answer::json(400, &json!({"error": "invalid_request"}));
    }
    if field("requested_token_type").is_some_and(|t| t != TOKEN_TYPE_JWT) {
        return Answer::json(400, &json!({"error": "invalid_request"}));
    }
    let Some(subject) = field("subject_token") else {
        return Answer::json(400, &json!({"error": "invalid_request"}));
    };
    let Some(claims) = active_claims(state, subject) else {
        return Answer::json(400, &json!({"error": "invalid_grant"}));
    };
    let mut claims = issued_claims(state, &claims);
    // The requested audience, when there is one, is the issued token's audience.
    if let Some(audience) = field("audience") {
        claims.insert("aud".into(), json!(audience));
    }
    let expires_in = claims
        .get("exp")
        .and_then(Value::as_i64)
        .map(|exp| exp - now())
        .unwrap_or(DEFAULT_EXPIRES_IN);
    let jwt = sign(state, "JWT", &Value::Object(claims));
    Answer::json(
        200,
        &json!({
            "access_token": jwt,
            "issued_token_type": TOKEN_TYPE_JWT,
            "token_type": "N_A",
            "expires_in": expires_in,
        }),
    )
}

/// The session pattern: `GET /sessions/{id}`, the id one percent-encoded path segment.
fn session(state: &State, raw: &str) -> Answer {
    let unknown = || {
        let status = *lock(&state.unknown_session_status);
        Answer::json(status, &json!({"error": "unknown session"}))
    };
    // A '/' in the id that was not encoded makes the path two segments: not a session.
    if raw.is_empty() || raw.contains('/') {
        return unknown();
    }
    let Some(id) = percent_decode(raw, false) else {
        return unknown();
    };
    let Some(claims) = active_claims(state, &id) else {
        return unknown();
    };
    let answer = *lock(&state.session_answer);
    match answer {
        SessionAnswer::JsonClaims => Answer::json(200, &Value::Object(with_issuer(state, &claims))),
        SessionAnswer::JwtBody | SessionAnswer::BearerHeader => {
            let jwt = sign(state, "JWT", &Value::Object(issued_claims(state, &claims)));
            if answer == SessionAnswer::JwtBody {
                Answer::new(200, "application/jwt", jwt)
            } else {
                Answer::new(200, "text/plain", Vec::new())
                    .with_header("authorization", &format!("Bearer {jwt}"))
            }
        }
    }
}

// --- encodings -------------------------------------------------------------------------

/// Percent-decoding; `plus_is_space` for form fields. `None` on a bad escape or bytes
/// that are not UTF-8.
pub fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 Appendix B):
/// unreserved characters as they are, space as `+`, every other byte `%XX`.
pub fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A form body into name → value (the last of a repeated name wins); `None` on a bad
/// escape.
pub fn parse_form(text: &str) -> Option<BTreeMap<String, String>> {
    let mut form = BTreeMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        form.insert(percent_decode(name, true)?, percent_decode(value, true)?);
    }
    Some(form)
}

/// `Basic base64(urlenc(id):urlenc(secret))` into (id, secret), decoded.
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((percent_decode(id, true)?, percent_decode(secret, true)?))
}

/// The `authorization` value a correct client sends.
pub fn basic_header(id: &str, secret: &str) -> String {
    let pair = format!("{}:{}", form_encode(id), form_encode(secret));
    format!("Basic {}", STANDARD.encode(pair))
}
