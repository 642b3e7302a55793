//! A central policy service on 127.0.0.1 that answers OPA's data API by evaluating real
//! Rego with `regorus` (Microsoft's Rego interpreter): `POST /v1/data/<path>` with
//! `{"input": ...}` → `{"result": <the value of data.<path>>}`, or `{}` when it is
//! undefined, as OPA answers. It keeps every request it was asked (counted before it
//! answers), answers late or fails on command: an error status, an answer that never
//! comes, garbage, a closed connection, or connections refused ([`Opa::stop_listening`]).
//!
//! Every thread it starts ends on its own (see `server`): dropping the `Opa` closes
//! everything.

use super::server::{lock, Answer, Reply, Request, Server};
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::Duration;

/// Where OPA serves its data API.
pub const DATA_PREFIX: &str = "/v1/data/";
/// The longest a hanging answer holds its connection.
pub const MAX_HANG: Duration = super::server::MAX_HANG;

/// How the service answers, read when each request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Evaluate the policy, as OPA does.
    Serve,
    /// Evaluate the policy, but answer only after this long (at most [`MAX_HANG`]).
    Slow(Duration),
    /// This status with an OPA-style error body.
    Status(u16),
    /// Read the request and never answer (until the peer closes or [`MAX_HANG`]).
    Hang,
    /// 200, `content-type: application/json`, a body that is not JSON.
    Garbage,
    /// Read the request, then close the connection without a word.
    Close,
}

struct State {
    /// The loaded policies (a fresh engine per [`Opa::set_policy`]).
    engine: Mutex<regorus::Engine>,
    mode: Mutex<Mode>,
    /// Every request received, in order.
    requests: Mutex<Vec<Request>>,
}

pub struct Opa {
    server: Server<State>,
}

/// An engine holding one Rego module; panics (naming the error) if it does not compile.
fn engine(rego: &str) -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy("policy.rego".to_owned(), rego.to_owned())
        .unwrap_or_else(|e| panic!("the test policy does not compile: {e}\n{rego}"));
    engine
}

impl Opa {
    /// Starts serving the Rego module `rego` on 127.0.0.1.
    pub fn start(rego: &str) -> Opa {
        let engine = engine(rego);
        let state = |_| State {
            engine: Mutex::new(engine),
            mode: Mutex::new(Mode::Serve),
            requests: Mutex::new(Vec::new()),
        };
        Opa {
            server: Server::start("opa", state, handle),
        }
    }

    fn state(&self) -> &State {
        self.server.state()
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The data API URI of `path` (`http/authz/allow`), for `authz_service.uri`.
    pub fn uri(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{DATA_PREFIX}{path}", self.port())
    }

    /// From now on, evaluate this module instead.
    pub fn set_policy(&self, rego: &str) {
        *lock(&self.state().engine) = engine(rego);
    }

    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.state().mode) = mode;
    }

    /// Requests received so far (whatever the answer was).
    pub fn count(&self) -> usize {
        lock(&self.state().requests).len()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state().requests).clone()
    }

    /// The `input` of the last request (`None` before any, or if it had none).
    pub fn last_input(&self) -> Option<Value> {
        let requests = lock(&self.state().requests);
        let body: Value = serde_json::from_slice(&requests.last()?.body).ok()?;
        body.get("input").cloned()
    }

    /// Evaluates `data.<path>` (slash-separated) for `input` as a request would, without
    /// HTTP: what the service would answer now in [`Mode::Serve`].
    pub fn evaluate(&self, path: &str, input: &Value) -> Value {
        evaluate(
            &self.state().engine,
            path,
            &json!({ "input": input }).to_string(),
        )
        .1
    }

    /// Stops listening and closes every open connection: from now on connections to the
    /// port are refused. [`Opa::listen_again`] undoes it.
    pub fn stop_listening(&self) {
        self.server.stop_listening();
    }

    /// Listens on the same port again. Panics if someone else took the port meanwhile.
    pub fn listen_again(&self) {
        self.server.listen_again();
    }
}

fn handle(state: &State, request: &Request) -> Reply {
    // Kept before answering, so whoever sees the answer sees the request.
    lock(&state.requests).push(request.clone());
    let mode = *lock(&state.mode);
    match mode {
        Mode::Close => Reply::Close,
        Mode::Hang => Reply::Hang,
        Mode::Status(status) => Answer::json(
            status,
            &json!({"code": "internal_error", "message": "injected failure"}),
        )
        .into(),
        Mode::Garbage => Answer::new(
            200,
            "application/json",
            "<html><body>Service temporarily unavailable</body></html>",
        )
        .into(),
        Mode::Slow(delay) => {
            std::thread::sleep(delay.min(MAX_HANG));
            serve(state, request)
        }
        Mode::Serve => serve(state, request),
    }
}

/// Answers as OPA does.
fn serve(state: &State, request: &Request) -> Reply {
    let Some(path) = request.path().strip_prefix(DATA_PREFIX) else {
        return Answer::json(404, &json!({"code": "resource_not_found"})).into();
    };
    if request.method != "POST" {
        return Answer::json(405, &json!({"code": "method_not_allowed"})).into();
    }
    let body = String::from_utf8_lossy(&request.body);
    let (status, document) = evaluate(&state.engine, path, &body);
    Answer::json(status, &document).into()
}

/// OPA's answer to `POST /v1/data/<path>` with `body`: (status, document).
fn evaluate(engine: &Mutex<regorus::Engine>, path: &str, body: &str) -> (u16, Value) {
    let error = |status: u16, code: &str, message: String| {
        (status, json!({"code": code, "message": message}))
    };
    let is_name = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.is_empty() || !segments.iter().all(|s| is_name(s)) {
        return error(400, "invalid_parameter", format!("bad data path {path:?}"));
    }
    let query = format!("data.{}", segments.join("."));
    let input = if body.trim().is_empty() {
        regorus::Value::Undefined
    } else {
        match serde_json::from_str::<Value>(body) {
            Ok(Value::Object(mut document)) => match document.remove("input") {
                Some(input) => match regorus::Value::from_json_str(&input.to_string()) {
                    Ok(input) => input,
                    Err(e) => return error(400, "invalid_parameter", e.to_string()),
                },
                None => regorus::Value::Undefined,
            },
            _ => {
                return error(
                    400,
                    "invalid_parameter",
                    "body must be a JSON object".into(),
                )
            }
        }
    };
    let mut engine = lock(engine);
    engine.set_input(input);
    let results = match engine.eval_query(query, false) {
        Ok(results) => results,
        Err(e) => return error(500, "internal_error", e.to_string()),
    };
    let value = results
        .result
        .first()
        .and_then(|r| r.expressions.first())
        .map(|e| e.value.clone())
        .filter(|v| *v != regorus::Value::Undefined);
    match value {
        // Undefined: OPA answers an empty document.
        None => (200, json!({})),
        Some(value) => match serde_json::to_value(&value) {
            Ok(result) => (200, json!({ "result": result })),
            Err(e) => error(500, "internal_error", e.to_string()),
        },
    }
}
