//! The central policy service on the host side: the VM's decision cache, the callouts
//! and their answers. The input and the reading of answers are in
//! `crate::policy::central`. Decisions are per VM: they are cheap to ask again and
//! short-lived, unlike exchange answers.

use super::root::{now_ms, VmState};
use crate::clock::Clock;
use crate::flow::{Ask, PolicyService};
use crate::policy::central::{read_decision, AuthzService, Decision, MAX_DECISION_BYTES};
use proxy_wasm::hostcalls;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// How long past the callout timeout a just-answered decision waits for its waiters.
const ANSWER_SLACK_MS: u64 = 1000;

struct Flight {
    key: [u8; 32],
    context_id: u32,
    started_ms: u64,
}

/// A decision just answered (`None`: the call failed), and until when (ms) waiters may
/// take it.
type Answered = (Option<Rc<Decision>>, u64);

/// Callouts in flight and answers that just came, for the requests waiting on them.
#[derive(Default)]
pub struct PolicyCalls {
    flights: RefCell<HashMap<u32, Flight>>,
    /// By input key. A decision is also in the decision cache for `cache_secs` (maybe 0).
    answered: RefCell<HashMap<[u8; 32], Answered>>,
}

impl PolicyCalls {
    pub fn is_empty(&self) -> bool {
        self.flights.borrow().is_empty()
    }

    fn asking(&self, key: &[u8; 32]) -> bool {
        self.flights.borrow().values().any(|f| f.key == *key)
    }
}

/// Whether a request waiting for this input's decision can go on.
pub fn answered(state: &VmState, key: &[u8; 32]) -> bool {
    state.policy.answered.borrow().contains_key(key) || !state.policy.asking(key)
}

pub fn wait_ms(service: &AuthzService) -> u64 {
    service.timeout_ms.saturating_add(ANSWER_SLACK_MS)
}

/// The flow's view of the policy service.
pub struct HostPolicy<'a> {
    pub state: &'a VmState,
    pub context_id: u32,
    pub clock: &'a Clock<'a>,
    /// The request waited for a decision.
    pub resumed: bool,
}

impl PolicyService for HostPolicy<'_> {
    fn ask(&self, key: [u8; 32], input: &dyn Fn() -> String, may_start: bool) -> Ask {
        let state = self.state;
        let Some(service) = &state.config.authz_service else {
            return Ask::Failed;
        };
        // A request that waited takes the answer of the callout it waited for (not a
        // cache hit, and a failure is final); a new request never sees a failure.
        if self.resumed {
            if let Some((answer, until_ms)) = state.policy.answered.borrow().get(&key) {
                if *until_ms > self.clock.now_ms() {
                    return match answer {
                        Some(decision) => Ask::Decided {
                            decision: decision.clone(),
                            cached: false,
                        },
                        None => Ask::Failed,
                    };
                }
            }
        }
        if let Some(decision) = state.decisions.borrow_mut().get(&key, self.clock) {
            return Ask::Decided {
                decision,
                cached: true,
            };
        }
        if state.policy.asking(&key) {
            return Ask::Pending;
        }
        if !may_start {
            return Ask::Failed;
        }
        let headers = vec![
            (":method", "POST"),
            (":path", service.uri.path.as_str()),
            (":authority", service.uri.authority.as_str()),
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ];
        match hostcalls::dispatch_http_call(
            &service.cluster,
            headers,
            Some(input().as_bytes()),
            vec![],
            Duration::from_millis(service.timeout_ms),
        ) {
            Ok(token) => {
                state.policy.flights.borrow_mut().insert(
                    token,
                    Flight {
                        key,
                        context_id: self.context_id,
                        started_ms: self.clock.now_ms(),
                    },
                );
                Ask::Pending
            }
            Err(status) => {
                log::error!(
                    "tokengate: authz_service: callout to cluster {:?} failed: {status:?}",
                    service.cluster
                );
                Ask::Failed
            }
        }
    }
}

/// A policy callout answered (in the context that made it). Returns whether it was one.
pub fn on_response(state: &VmState, token_id: u32, body_size: usize) -> bool {
    let Some(flight) = state.policy.flights.borrow_mut().remove(&token_id) else {
        return false;
    };
    let Some(service) = &state.config.authz_service else {
        return true;
    };
    let now_ms = now_ms();
    let status = super::exchanges::callout_status();
    let body = super::exchanges::callout_body(body_size, MAX_DECISION_BYTES);
    let answer = match read_decision(status, body_size, &body) {
        Ok(decision) => {
            let decision = Rc::new(decision);
            let now = now_ms / 1000;
            state.decisions.borrow_mut().insert(
                flight.key,
                now.saturating_add(service.cache_secs),
                decision.clone(),
                now,
            );
            Some(decision)
        }
        Err(e) => {
            log::error!("tokengate: authz_service: {}", e.describe());
            None
        }
    };
    state.metrics.record_histogram(
        "tokengate.authz_service.callout_ms",
        now_ms.saturating_sub(flight.started_ms),
    );
    let mut answered = state.policy.answered.borrow_mut();
    answered.retain(|_, (_, until_ms)| *until_ms > now_ms);
    answered.insert(
        flight.key,
        (answer, now_ms.saturating_add(wait_ms(service))),
    );
    true
}

/// The stream `context_id` ended: Envoy cancelled its callouts. Requests waiting for
/// the same decision ask again when they wake.
pub fn forget_context(state: &VmState, context_id: u32) {
    state
        .policy
        .flights
        .borrow_mut()
        .retain(|_, flight| flight.context_id != context_id);
}
