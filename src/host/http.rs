//! The HTTP context: read the request, ask the core, apply the decision.

use super::root::VmState;
use crate::extract::{HeaderEdit, Request};
use crate::flow::{decide, Outcome};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

pub struct Http {
    state: Rc<VmState>,
}

impl Http {
    pub fn new(state: Rc<VmState>) -> Http {
        Http { state }
    }

    fn read_request(&self) -> Request {
        let mut request = Request::default();
        for (name, value) in self.get_http_request_headers() {
            match name.as_str() {
                ":method" => request.method = value,
                ":path" => request.path = value,
                ":authority" => request.host = value,
                _ if name.starts_with(':') => {}
                _ => request.headers.push((name, value)),
            }
        }
        request
    }

    fn now(&self) -> u64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let request = self.read_request();
        let now = self.now();
        let decision = {
            let mut cache = self.state.cache.borrow_mut();
            decide(&self.state.config, &request, now, &mut cache)
        };
        for counter in &decision.counters {
            self.state.metrics.increment(*counter);
        }
        match decision.outcome {
            Outcome::Forward(edits) => {
                for edit in edits {
                    match edit {
                        HeaderEdit::Remove(name) => self.set_http_request_header(&name, None),
                        HeaderEdit::Set(name, value) => {
                            self.set_http_request_header(&name, Some(&value))
                        }
                    }
                }
                Action::Continue
            }
            Outcome::Deny(deny) => {
                if let Some(refusal) = decision.refusal {
                    log::debug!(
                        "tokengate: refused rule={} reason={}",
                        decision.rule.as_deref().unwrap_or("-"),
                        refusal.reason()
                    );
                }
                let mut headers = vec![("content-type", "application/json")];
                if let Some(challenge) = deny.www_authenticate.as_deref() {
                    headers.push(("www-authenticate", challenge));
                }
                self.send_http_response(deny.status, headers, Some(deny.body.as_bytes()));
                Action::Pause
            }
        }
    }
}
