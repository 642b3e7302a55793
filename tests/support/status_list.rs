//! A controllable status list issuer on 127.0.0.1 (draft-ietf-oauth-status-list): serves
//! the Status List Token it was last told to publish at `/lists/<n>`, counts what it is
//! asked (and the `Accept` it was asked with), fails on command.
//!
//! Every thread it starts ends on its own (see `server`): dropping it closes everything.

use super::server::{lock, Answer, Reply, Request, Server};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tokengate::crypto::b64;
use tokengate::crypto::sign::SigningKey;

/// How the issuer answers, read when each request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The published list token (404 for a list never published).
    Serve,
    /// This status with a short text body.
    Status(u16),
}

struct State {
    mode: Mutex<Mode>,
    /// (path, list token).
    tokens: Mutex<Vec<(String, String)>>,
    requests: AtomicUsize,
    accept: Mutex<Option<String>>,
}

pub struct StatusLists {
    server: Server<State>,
}

/// Packs one status per entry, `bits` wide, least significant bits first (as the draft).
pub fn pack(bits: u8, statuses: &[u8]) -> Vec<u8> {
    let per_byte = 8 / usize::from(bits);
    let mut bytes = vec![0u8; statuses.len().div_ceil(per_byte)];
    for (i, status) in statuses.iter().enumerate() {
        bytes[i / per_byte] |= status << ((i % per_byte) * usize::from(bits));
    }
    bytes
}

impl StatusLists {
    pub fn start() -> StatusLists {
        let state = |_| State {
            mode: Mutex::new(Mode::Serve),
            tokens: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            accept: Mutex::new(None),
        };
        StatusLists {
            server: Server::start("status-lists", state, handle),
        }
    }

    fn state(&self) -> &State {
        self.server.state()
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The origin lists are served from (the `origins` key of the configuration).
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// The URI of list `n`.
    pub fn uri(&self, n: u32) -> String {
        format!("{}/lists/{n}", self.origin())
    }

    /// Publishes list `n`: `statuses` packed `bits` wide, zlib-compressed, in a list token
    /// signed by `key` (`typ` statuslist+jwt, `sub` its URI, `iat` now, `ttl`).
    pub fn publish(&self, n: u32, key: &SigningKey, bits: u8, statuses: &[u8], ttl: u64) {
        let now = super::now();
        let lst = b64::encode(&miniz_oxide::deflate::compress_to_vec_zlib(
            &pack(bits, statuses),
            9,
        ));
        let claims = json!({
            "sub": self.uri(n), "iat": now, "exp": now + 3600, "ttl": ttl,
            "status_list": {"bits": bits, "lst": lst}
        });
        let header =
            json!({"alg": key.alg.name(), "kid": key.kid.as_deref(), "typ": "statuslist+jwt"});
        let token = key
            .sign_with_header(&header, &claims)
            .unwrap_or_else(|e| panic!("signing a list token: {e}"));
        self.publish_token(n, &token);
    }

    /// Serves `token` (anything) as list `n`.
    pub fn publish_token(&self, n: u32, token: &str) {
        let path = format!("/lists/{n}");
        let mut tokens = lock(&self.state().tokens);
        tokens.retain(|(p, _)| *p != path);
        tokens.push((path, token.to_owned()));
    }

    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.state().mode) = mode;
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.state().requests.load(Ordering::SeqCst)
    }

    /// The `Accept` header of the last request.
    pub fn last_accept(&self) -> Option<String> {
        lock(&self.state().accept).clone()
    }
}

fn handle(state: &State, request: &Request) -> Reply {
    state.requests.fetch_add(1, Ordering::SeqCst);
    *lock(&state.accept) = request.header("accept").map(str::to_owned);
    match *lock(&state.mode) {
        Mode::Status(status) => Answer::new(status, "text/plain", "failing on purpose").into(),
        Mode::Serve => {
            let tokens = lock(&state.tokens);
            match tokens.iter().find(|(path, _)| path == request.path()) {
                Some((_, token)) => {
                    Answer::new(200, "application/statuslist+jwt", token.clone()).into()
                }
                None => Answer::new(404, "text/plain", "no such list").into(),
            }
        }
    }
}
