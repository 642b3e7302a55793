//! The upstream service: an HTTP/1.1 server on 127.0.0.1 that answers every request
//! with 200 and a JSON echo of what it received, and counts the requests it got.

use super::server::{Answer, Reply, Request, Server};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Upstream {
    /// Its state: the requests answered so far.
    server: Server<AtomicUsize>,
}

impl Upstream {
    /// Binds 127.0.0.1:0 and starts serving on a background thread.
    pub fn start() -> Upstream {
        Upstream {
            server: Server::start("upstream", |_| AtomicUsize::new(0), echo),
        }
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// How many requests the upstream has answered so far.
    pub fn count(&self) -> usize {
        self.server.state().load(Ordering::SeqCst)
    }
}

/// 200 with the method, target, headers (repeated ones joined) and body as JSON.
fn echo(count: &AtomicUsize, request: &Request) -> Reply {
    let mut echoed = Map::new();
    for (name, value) in &request.headers {
        match echoed.get_mut(name) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(value);
            }
            _ => {
                echoed.insert(name.clone(), Value::String(value.clone()));
            }
        }
    }
    let reply = json!({
        "method": request.method,
        "path": request.target,
        "headers": echoed,
        "body": String::from_utf8_lossy(&request.body),
    });
    // Counted before answering, so a client that got the answer sees the count.
    count.fetch_add(1, Ordering::SeqCst);
    let answer = Answer::json(200, &reply);
    if request.asks_to_close() {
        answer.with_header("connection", "close").into()
    } else {
        answer.into()
    }
}
