//! The HTTP context: read the request, ask the core, apply the decision; park the
//! request when the core says to wait for keys or an exchange answer.

use super::central::{self, HostPolicy};
use super::exchanges::{self, lease_ms, HostExchanges};
use super::keys::{HostKeyring, KeyStore};
use super::login::{self, HostLogin};
use super::revocation::{provider_keys, HostRevocations, RevocationStore};
use super::root::{now_ms, VmState, BUSY_TICK_MS, CLOCK_LAG_MS};
use crate::clock::Clock;
use crate::deny::Deny;
use crate::error::{AuthnError, Refusal};
use crate::exchange::TokenKey;
use crate::flow::{
    backchannel_endpoint, backchannel_logout, decide, Decision, LoginFinish, Outcome, Reply,
    Services, Waits,
};
use crate::revocation::logout::{LogoutError, MAX_BODY_BYTES};
use crate::stats::{Counter, RevocationEvent};
use crate::token::extract::{HeaderEdit, Reads, Request};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::cell::Cell;
use std::rc::Rc;

pub struct Http {
    state: Rc<VmState>,
    context_id: u32,
    /// A back-channel logout POST for this provider: decided on its body.
    logout: Option<usize>,
}

/// A request paused until its providers' keys move, an exchange answer for its token
/// arrives, or its deadline passes.
pub struct Waiter {
    pub context_id: u32,
    request: Request,
    /// (provider, generation seen, fetch attempts seen) when it started waiting.
    seen: Vec<(usize, u64, u64)>,
    /// (exchange, token key) whose answer it waits for.
    exchanges: Vec<(usize, TokenKey)>,
    /// The central decision it waits for.
    central: Option<[u8; 32]>,
    /// The providers whose login endpoints it waits for.
    logins: Vec<usize>,
    /// (provider, list URI, generation seen, attempts seen) of the lists it waits for.
    lists: Vec<(usize, Rc<str>, u64, u64)>,
    pub deadline_ms: u64,
}

impl Waiter {
    fn keys_moved(&self, keys: &KeyStore) -> bool {
        self.seen.iter().any(|(provider, generation, attempts)| {
            keys.remote(*provider)
                .is_some_and(|r| r.generation != *generation || r.attempts != *attempts)
        })
    }

    fn lists_moved(&self, store: &RevocationStore) -> bool {
        self.lists
            .iter()
            .any(|(provider, uri, generation, attempts)| {
                store
                    .progress(*provider, uri)
                    .is_none_or(|seen| seen != (*generation, *attempts))
            })
    }

    fn ready(&self, state: &VmState, keys: &KeyStore, now_ms: u64) -> bool {
        self.deadline_ms <= now_ms
            || self.keys_moved(keys)
            || self.lists_moved(&state.revocation.borrow())
            || self
                .exchanges
                .iter()
                .any(|(exchange, key)| exchanges::answered(state, *exchange, *key, now_ms))
            || self
                .central
                .as_ref()
                .is_some_and(|key| central::answered(state, key))
            || self.logins.iter().any(|p| {
                !matches!(
                    state.logins.endpoints(*p),
                    crate::flow::LoginEndpoints::Pending
                )
            })
    }
}

/// Resumes every waiter whose keys moved, whose answer came, or whose time is up.
pub fn wake(state: &VmState) {
    let now = now_ms();
    let ready: Vec<Waiter> = {
        let keys = state.keys.borrow();
        let mut waiters = state.waiters.borrow_mut();
        let (ready, waiting): (Vec<Waiter>, Vec<Waiter>) =
            waiters.drain(..).partition(|w| w.ready(state, &keys, now));
        *waiters = waiting;
        ready
    };
    for waiter in ready {
        resume_waiter(state, waiter);
    }
}

impl Http {
    pub fn new(state: Rc<VmState>, context_id: u32) -> Http {
        Http {
            state,
            context_id,
            logout: None,
        }
    }

    /// A back-channel logout POST's body: verified, recorded in the shared denylist,
    /// answered 200 (or 400 with an OIDC error body).
    fn answer_logout(&self, provider: usize, body: &[u8]) {
        let state = &self.state;
        let now_ms = now_ms();
        let keys = provider_keys(&state.config, &state.keys.borrow(), provider);
        let result = backchannel_logout(
            &state.config,
            provider,
            body,
            keys.as_deref(),
            now_ms / 1000,
        )
        .and_then(|logout| {
            state.revocation.borrow_mut().record_logout(
                &state.config,
                provider,
                &logout,
                now_ms / 1000,
            )
        });
        answer_logout_result(state, result);
    }

    /// Reads what the configuration looks at, one host call per item: copying the whole
    /// header map into the VM (and a String per header) cost more than the rest of a
    /// cached request. Values that are not UTF-8 (obs-text) are read lossily: such a
    /// token fails verification, such an identity header is still stripped.
    fn read_request(reads: &Reads) -> Request {
        let read = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
                .ok()
                .flatten()
                .map(|bytes| match String::from_utf8(bytes) {
                    Ok(text) => text,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                })
        };
        let mut request = Request::default();
        if reads.method {
            request.method = read(":method").unwrap_or_default();
        }
        if reads.path {
            request.path = read(":path").unwrap_or_default();
        }
        if reads.host {
            request.host = read(":authority").unwrap_or_default();
        }
        for name in &reads.headers {
            if let Some(value) = read(name) {
                request.headers.push((name.clone(), value));
            }
        }
        request
    }
}

/// Which decision of a request this is.
#[derive(Clone, Copy)]
struct Attempt {
    /// It was parked before: the answers it waited for are final.
    resumed: bool,
    /// It may not wait (again): its deadline passed, or its keys moved.
    waited: bool,
    /// It may (still) wait for a status list: it has not waited for one, and its
    /// deadline has not passed. A request that waited for keys may wait for its list.
    list_wait: bool,
}

impl Attempt {
    const FIRST: Attempt = Attempt {
        resumed: false,
        waited: false,
        list_wait: true,
    };

    /// A decision after a login step's callout: nothing more to wait for.
    const FINAL: Attempt = Attempt {
        resumed: true,
        waited: true,
        list_wait: false,
    };
}

/// How long a logout POST may wait for its body. Envoy without the Wasm filter's
/// `allow_on_headers_stop_iteration: true` never gives a paused request its body; such a
/// POST is answered 503 (and the cause logged) instead of hanging.
const LOGOUT_BODY_WAIT_MS: u64 = 2000;

/// Answers the logout POSTs whose body never came.
pub fn expire_logouts(state: &VmState, now_ms: u64) {
    let expired: Vec<u32> = {
        let mut logouts = state.logouts.borrow_mut();
        let overdue = |since: u64| now_ms.saturating_sub(since) >= LOGOUT_BODY_WAIT_MS;
        let expired = logouts
            .iter()
            .filter(|(_, since)| overdue(*since))
            .map(|(id, _)| *id)
            .collect();
        logouts.retain(|(_, since)| !overdue(*since));
        expired
    };
    for context_id in expired {
        if hostcalls::set_effective_context(context_id).is_err() {
            continue;
        }
        log::error!(
            "tokengate: a back-channel logout POST never got its body to the filter: set \"allow_on_headers_stop_iteration\": true in the Wasm filter's config (Envoy 1.35 or later)"
        );
        answer_logout_result(state, Err(LogoutError::Busy));
    }
}

/// Sends the answer of a back-channel logout and counts it.
fn answer_logout_result(state: &VmState, result: Result<(), LogoutError>) {
    match result {
        Ok(()) => {
            state
                .metrics
                .increment(Counter::Revocation(RevocationEvent::BackchannelAccepted));
            log::info!("tokengate: back-channel logout recorded");
            let headers = vec![("cache-control", "no-store")];
            let _ = hostcalls::send_http_response(200, headers, None);
        }
        Err(e) => {
            state
                .metrics
                .increment(Counter::Revocation(RevocationEvent::BackchannelRejected));
            log::info!(
                "tokengate: back-channel logout refused: {}",
                e.description()
            );
            send(&Deny::logout_refused(e));
        }
    }
}

/// Runs the core on a request. The clock is read only when the decision depends on it
/// (a token, an answer or a list within seconds of its end; a callout to start): the
/// present is known to be within [`CLOCK_LAG_MS`] of the last reading, and time checks
/// settled across that window are decided without a host call. Not simply the tick's
/// clock: each worker's would be up to a second behind in its own way, and a token would
/// flap between accepted and refused across workers around its exp.
fn run(state: &VmState, context_id: u32, request: &Request, attempt: Attempt) -> Decision {
    let known_ms = state.clock_ms.get();
    let read = || {
        let now = now_ms();
        state.clock_ms.set(now.max(state.clock_ms.get()));
        now
    };
    let clock = Clock::within(known_ms, known_ms.saturating_add(CLOCK_LAG_MS), &read);
    let keyring = HostKeyring {
        store: &state.keys,
        metrics: &state.metrics,
    };
    let exchanges = HostExchanges {
        state,
        context_id,
        clock: &clock,
        resumed: attempt.resumed,
    };
    let policy = HostPolicy {
        state,
        context_id,
        clock: &clock,
        resumed: attempt.resumed,
    };
    let login = HostLogin { state };
    let asked = Cell::new(false);
    let revocations = HostRevocations {
        config: &state.config,
        store: &state.revocation,
        keys: &state.keys,
        clock: &clock,
        asked: &asked,
        may_wait: attempt.list_wait,
    };
    let services = Services {
        keyring: &keyring,
        exchanges: &exchanges,
        policy: &policy,
        login: &login,
        revocations: &revocations,
    };
    let mut caches = state.caches.borrow_mut();
    let decision = decide(
        &state.config,
        services,
        request,
        &clock,
        &mut caches,
        attempt.waited,
    );
    if asked.get() {
        state.set_tick(BUSY_TICK_MS); // the tick starts the list fetch
    }
    decision
}

/// Applies a decision to the current (effective) HTTP context. Returns whether the
/// request should continue upstream.
fn apply(state: &VmState, context_id: u32, request: &Request, decision: Decision) -> bool {
    tally(state, &decision);
    if let Some(refusal) = decision.dry_run {
        // The rule is on trial: what it would refuse is logged (name and reason only).
        log::info!(
            "tokengate: dry run: rule={} would refuse, reason={}",
            rule_name(state, decision.rule),
            refusal.reason()
        );
    }
    match decision.outcome {
        Outcome::Forward(edits) => {
            for edit in edits {
                let _ = match edit {
                    HeaderEdit::Remove(name) => {
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, &name, None)
                    }
                    HeaderEdit::Set(name, value) => {
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, &name, Some(&value))
                    }
                    HeaderEdit::AddToResponse(name, value) => {
                        state
                            .response_headers
                            .borrow_mut()
                            .push((context_id, name, value));
                        Ok(())
                    }
                };
            }
            true
        }
        Outcome::Deny(deny) => {
            if let Some(refusal) = decision.refusal {
                log::debug!(
                    "tokengate: refused rule={} reason={}",
                    rule_name(state, decision.rule),
                    refusal.reason()
                );
            }
            send(&deny);
            false
        }
        Outcome::Reply(reply) => {
            send_reply(&reply);
            false
        }
        Outcome::Call(call) => {
            // The token endpoint's answer comes to this context (`on_http_call_response`).
            let redeem = matches!(call.step, crate::flow::LoginStep::Redeem(_));
            if !state.logins.call(context_id, call, request.clone()) {
                let error = crate::login::LoginError::TokenEndpointFailure;
                let counters = vec![crate::stats::Counter::Login(error.event())];
                let finish = if redeem {
                    LoginFinish::Reply(Reply::login_failure(error), counters)
                } else {
                    LoginFinish::Unrefreshed(counters)
                };
                apply_login_finish(state, context_id, request, finish);
            }
            false
        }
        Outcome::Wait(_) => {
            // Only asked of a first attempt; a resumed request never waits twice, but
            // if it did, the answer is the one for keys that never came.
            let deny = Deny::for_refusal(
                Refusal::Authn(AuthnError::KeysUnavailable),
                &state.config.realm,
            );
            send(&deny);
            false
        }
    }
}

/// Sends one of the filter's own responses.
pub fn send_reply(reply: &Reply) {
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(1 + reply.headers.len());
    headers.push(("content-type", reply.content_type));
    headers.extend(reply.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let _ = hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
}

/// Ends a paused request whose login step the token endpoint answered: a page or
/// redirect for the browser, or (a refresh) the request decided again, with the new
/// session cookies on its response.
pub fn apply_login_finish(
    state: &VmState,
    context_id: u32,
    request: &Request,
    finish: LoginFinish,
) {
    let (request, counters) = match finish {
        LoginFinish::Reply(reply, counters) => {
            tally_counters(state, &counters);
            send_reply(&reply);
            return;
        }
        LoginFinish::Retry {
            request,
            set_cookies,
            counters,
        } => {
            let mut pending = state.response_headers.borrow_mut();
            pending.extend(
                set_cookies
                    .into_iter()
                    .map(|cookie| (context_id, "set-cookie".to_owned(), cookie)),
            );
            (request, counters)
        }
        LoginFinish::Unrefreshed(counters) => (request.clone(), counters),
    };
    tally_counters(state, &counters);
    let decision = run(state, context_id, &request, Attempt::FINAL);
    if apply(state, context_id, &request, decision) {
        let _ = hostcalls::resume_http_request();
    }
}

/// Counts a decision's counters, flushing them to Envoy when due; while counts wait,
/// the tick runs fast so they reach Envoy soon after traffic stops.
fn tally(state: &VmState, decision: &Decision) {
    tally_counters(state, &decision.counters);
}

fn tally_counters(state: &VmState, counters: &[crate::stats::Counter]) {
    for counter in counters {
        state.metrics.tally(*counter);
    }
    state.metrics.flush_if_due(state.clock_ms.get());
    if state.metrics.has_pending() {
        state.set_tick(BUSY_TICK_MS);
    }
}

fn rule_name(state: &VmState, rule: Option<usize>) -> &str {
    rule.and_then(|i| state.config.rules.get(i))
        .map_or("-", |rule| rule.name.as_str())
}

/// Answers the request with a refusal.
fn send(deny: &Deny) {
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(2 + deny.headers.len());
    if !deny.headers.iter().any(|(name, _)| name == "content-type") {
        headers.push(("content-type", "application/json"));
    }
    if let Some(challenge) = deny.www_authenticate.as_deref() {
        headers.push(("www-authenticate", challenge));
    }
    headers.extend(deny.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let _ = hostcalls::send_http_response(deny.status, headers, Some(deny.body.as_bytes()));
}

/// Decides a paused request again (its keys moved, or its time is up) and lets it go.
pub fn resume_waiter(state: &VmState, waiter: Waiter) {
    if hostcalls::set_effective_context(waiter.context_id).is_err() {
        return; // the stream is gone
    }
    // Keys that moved get one more decision and no second wait (a refetch for an unknown
    // kid is not repeated). An exchange waiter may wait again until its deadline: when its
    // token's slot went to another token, its own callout may still have to be made.
    let expired = waiter.deadline_ms <= now_ms();
    let attempt = Attempt {
        resumed: true,
        waited: expired || !waiter.seen.is_empty(),
        list_wait: !expired && waiter.lists.is_empty(),
    };
    let decision = run(state, waiter.context_id, &waiter.request, attempt);
    if let Outcome::Wait(waits) = &decision.outcome {
        tally(state, &decision);
        // Its first wait for a status list (after keys, say) gets a whole fetch's time;
        // any other wait again keeps the deadline it had.
        let deadline = if waiter.lists.is_empty() && !waits.status_lists.is_empty() {
            None
        } else {
            Some(waiter.deadline_ms)
        };
        let again = park(state, waiter.context_id, waiter.request, waits, deadline);
        state.waiters.borrow_mut().push(again);
        return;
    }
    if apply(state, waiter.context_id, &waiter.request, decision) {
        let _ = hostcalls::resume_http_request();
    }
}

/// A waiter for what the decision waits on: keys as they are now, exchange answers; its
/// deadline one whole fetch or two callouts away, or the one it already had.
fn park(
    state: &VmState,
    context_id: u32,
    request: Request,
    waits: &Waits,
    deadline_ms: Option<u64>,
) -> Waiter {
    let keys = state.keys.borrow();
    let seen: Vec<(usize, u64, u64)> = waits
        .providers
        .iter()
        .filter_map(|p| keys.remote(*p).map(|r| (*p, r.generation, r.attempts)))
        .collect();
    let exchange_ms = waits
        .exchanges
        .iter()
        .filter_map(|(e, _)| state.config.exchanges.get(*e).map(lease_ms))
        .max()
        .unwrap_or(0);
    let central_ms = match (&waits.central, &state.config.authz_service) {
        (Some(_), Some(service)) => central::wait_ms(service).saturating_mul(2),
        _ => 0,
    };
    // A login waits for its discovery document: one fetch, plus a tick to start it.
    let login_ms = waits
        .logins
        .iter()
        .filter_map(|p| state.config.providers.get(*p)?.login.as_ref())
        .map(|login| login.timeout_ms.saturating_add(BUSY_TICK_MS))
        .max()
        .unwrap_or(0);
    let revocation = state.revocation.borrow();
    let lists: Vec<(usize, Rc<str>, u64, u64)> = waits
        .status_lists
        .iter()
        .map(|(p, uri)| {
            let (generation, attempts) = revocation.progress(*p, uri).unwrap_or_default();
            (*p, uri.clone(), generation, attempts)
        })
        .collect();
    // A list is fetched at the next tick, then takes up to its timeout.
    let list_ms = revocation
        .wait_bound_ms(&state.config, &waits.status_lists)
        .saturating_add(if lists.is_empty() {
            0
        } else {
            BUSY_TICK_MS * 2
        });
    let wait_ms = keys
        .wait_bound_ms(&waits.providers)
        .max(exchange_ms.saturating_mul(2))
        .max(central_ms)
        .max(login_ms)
        .max(list_ms);
    Waiter {
        context_id,
        request,
        seen,
        exchanges: waits.exchanges.clone(),
        central: waits.central,
        logins: waits.logins.clone(),
        lists,
        deadline_ms: deadline_ms.unwrap_or_else(|| now_ms() + wait_ms),
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        if login::on_response(&self.state, token_id, body_size) {
            return;
        }
        if exchanges::on_response(&self.state, token_id, body_size)
            || central::on_response(&self.state, token_id, body_size)
        {
            wake(&self.state);
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let request = Self::read_request(&self.state.config.reads);
        if request.method == "POST" {
            if let Some(provider) = backchannel_endpoint(&self.state.config, &request) {
                if end_of_stream {
                    self.answer_logout(provider, &[]);
                } else {
                    self.logout = Some(provider); // decided on the body
                    self.state
                        .logouts
                        .borrow_mut()
                        .push((self.context_id, now_ms()));
                    self.state.set_tick(BUSY_TICK_MS);
                }
                return Action::Pause;
            }
        }
        let decision = run(&self.state, self.context_id, &request, Attempt::FIRST);
        if let Outcome::Wait(waits) = &decision.outcome {
            tally(&self.state, &decision);
            let waiter = park(&self.state, self.context_id, request, waits, None);
            self.state.waiters.borrow_mut().push(waiter);
            self.state.set_tick(BUSY_TICK_MS);
            return Action::Pause;
        }
        if apply(&self.state, self.context_id, &request, decision) {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(provider) = self.logout else {
            // With `allow_on_headers_stop_iteration`, a request paused in its headers
            // (waiting for keys, a list, an answer) gets its body here: continuing would
            // send it upstream undecided. It is buffered until the decision resumes it.
            let parked = self
                .state
                .waiters
                .borrow()
                .iter()
                .any(|w| w.context_id == self.context_id);
            return if parked {
                Action::Pause
            } else {
                Action::Continue
            };
        };
        let context_id = self.context_id;
        self.state
            .logouts
            .borrow_mut()
            .retain(|(id, _)| *id != context_id);
        if body_size > MAX_BODY_BYTES {
            self.logout = None;
            answer_logout_result(&self.state, Err(LogoutError::BodyTooLarge));
            return Action::Pause;
        }
        if !end_of_stream {
            return Action::Pause; // buffered until the whole body is there
        }
        self.logout = None;
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.answer_logout(provider, &body);
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        // Headers a central policy adds to the client's response on allow.
        let mut pending = self.state.response_headers.borrow_mut();
        if pending.iter().any(|(id, _, _)| *id == self.context_id) {
            let context_id = self.context_id;
            pending.retain(|(id, name, value)| {
                if *id != context_id {
                    return true;
                }
                let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
                false
            });
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // The stream ended (possibly while paused): forget it.
        self.state
            .waiters
            .borrow_mut()
            .retain(|w| w.context_id != self.context_id);
        exchanges::forget_context(&self.state, self.context_id);
        central::forget_context(&self.state, self.context_id);
        self.state.logins.forget_context(self.context_id);
        self.state
            .logouts
            .borrow_mut()
            .retain(|(id, _)| *id != self.context_id);
        self.state
            .response_headers
            .borrow_mut()
            .retain(|(id, _, _)| *id != self.context_id);
    }
}
