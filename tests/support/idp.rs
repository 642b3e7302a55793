//! A controllable identity provider on 127.0.0.1: an OIDC discovery document and a JWKS,
//! request counts per path, and failure modes switched at runtime (an error status, an
//! answer that never comes, garbage, a huge body, connections closed or refused).
//!
//! Every thread it starts ends on its own: connections idle out, a hanging answer holds
//! its connection at most [`MAX_HANG`], and dropping the `Idp` closes everything.

use super::server::{lock, Answer, Reply, Request, Server};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Where the JWKS is served unless [`Idp::start_with_certs_path`] says otherwise.
pub const CERTS_PATH: &str = "/certs";
/// The longest a hanging answer holds its connection.
pub const MAX_HANG: Duration = super::server::MAX_HANG;
/// The body size of [`Mode::Huge`].
pub const HUGE_BODY_BYTES: usize = 10 * 1024 * 1024;

/// How the IdP answers (every path alike), read when each request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The discovery document, the JWKS, 404 for anything else.
    Serve,
    /// This status with a short text body.
    Status(u16),
    /// Read the request and never answer: hold the connection until the peer closes it
    /// or [`MAX_HANG`] passes.
    Hang,
    /// 200, `content-type: application/json`, a body that is not JSON.
    Garbage,
    /// 200 with the current JWKS padded with whitespace to [`HUGE_BODY_BYTES`]: valid
    /// JSON, usable keys, only too big.
    Huge,
    /// Read the request, then close the connection without a word.
    Close,
}

/// Requests seen, by path (the query string ignored).
#[derive(Default)]
struct Counts {
    discovery: AtomicUsize,
    certs: AtomicUsize,
    other: AtomicUsize,
}

struct State {
    port: u16,
    certs_path: String,
    mode: Mutex<Mode>,
    jwks: Mutex<String>,
    issuer: Mutex<String>,
    cache_control: Mutex<Option<String>>,
    counts: Counts,
    /// When the JWKS was last asked for.
    last_certs: Mutex<Option<Instant>>,
}

pub struct Idp {
    server: Server<State>,
}

impl Idp {
    /// Starts serving `jwks` (and a discovery document naming `issuer`) on 127.0.0.1.
    pub fn start(issuer: &str, jwks: &Value) -> Idp {
        Idp::start_with_certs_path(issuer, jwks, CERTS_PATH)
    }

    /// [`Idp::start`] with the JWKS at another path (the discovery document names it).
    pub fn start_with_certs_path(issuer: &str, jwks: &Value, certs_path: &str) -> Idp {
        let state = |port| State {
            port,
            certs_path: certs_path.to_owned(),
            mode: Mutex::new(Mode::Serve),
            jwks: Mutex::new(jwks.to_string()),
            issuer: Mutex::new(issuer.to_owned()),
            cache_control: Mutex::new(None),
            counts: Counts::default(),
            last_certs: Mutex::new(None),
        };
        Idp {
            server: Server::start("idp", state, handle),
        }
    }

    fn state(&self) -> &State {
        self.server.state()
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The JWKS URI, as a provider's `jwks.uri` or the discovery document's `jwks_uri`.
    pub fn jwks_uri(&self) -> String {
        format!(
            "http://127.0.0.1:{}{}",
            self.port(),
            self.state().certs_path
        )
    }

    pub fn discovery_uri(&self) -> String {
        format!("http://127.0.0.1:{}{DISCOVERY_PATH}", self.port())
    }

    /// From now on, serve this key set.
    pub fn set_jwks(&self, jwks: &Value) {
        *lock(&self.state().jwks) = jwks.to_string();
    }

    /// The issuer the discovery document names.
    pub fn set_issuer(&self, issuer: &str) {
        *lock(&self.state().issuer) = issuer.to_owned();
    }

    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.state().mode) = mode;
    }

    /// A `Cache-Control` header on JWKS answers (`None`: no header).
    pub fn set_cache_control(&self, value: Option<&str>) {
        *lock(&self.state().cache_control) = value.map(str::to_owned);
    }

    /// Requests for the JWKS so far (whatever the answer was).
    pub fn certs_count(&self) -> usize {
        self.state().counts.certs.load(Ordering::SeqCst)
    }

    /// Requests for the discovery document so far.
    pub fn discovery_count(&self) -> usize {
        self.state().counts.discovery.load(Ordering::SeqCst)
    }

    /// Requests for any other path so far.
    pub fn other_count(&self) -> usize {
        self.state().counts.other.load(Ordering::SeqCst)
    }

    /// How long ago the JWKS was last asked for.
    pub fn since_last_certs(&self) -> Option<Duration> {
        lock(&self.state().last_certs).map(|t| t.elapsed())
    }

    /// Stops listening and closes every open connection: from now on connections to the
    /// port are refused. [`Idp::listen_again`] undoes it.
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
    // Counted before answering, so whoever sees the answer sees the count.
    if path == DISCOVERY_PATH {
        state.counts.discovery.fetch_add(1, Ordering::SeqCst);
    } else if path == state.certs_path {
        *lock(&state.last_certs) = Some(Instant::now());
        state.counts.certs.fetch_add(1, Ordering::SeqCst);
    } else {
        state.counts.other.fetch_add(1, Ordering::SeqCst);
    }

    let mode = *lock(&state.mode);
    match mode {
        Mode::Close => Reply::Close,
        Mode::Hang => Reply::Hang,
        Mode::Status(status) => Answer::new(status, "text/plain", "IdP failure\n").into(),
        Mode::Garbage => Answer::new(
            200,
            "application/json",
            "<html><body>Service temporarily unavailable</body></html>",
        )
        .into(),
        Mode::Huge => {
            let mut jwks = lock(&state.jwks).clone().into_bytes();
            if jwks.len() < HUGE_BODY_BYTES {
                jwks.resize(HUGE_BODY_BYTES, b' ');
            }
            Answer::new(200, "application/json", jwks).into()
        }
        Mode::Serve if path == DISCOVERY_PATH => {
            let document = json!({
                "issuer": *lock(&state.issuer),
                "jwks_uri": format!("http://127.0.0.1:{}{}", state.port, state.certs_path),
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            });
            Answer::json(200, &document).into()
        }
        Mode::Serve if path == state.certs_path => {
            let answer = Answer::new(200, "application/json", lock(&state.jwks).clone());
            match lock(&state.cache_control).as_deref() {
                Some(value) => answer.with_header("cache-control", value).into(),
                None => answer.into(),
            }
        }
        Mode::Serve => Answer::new(404, "text/plain", "not found\n").into(),
    }
}
