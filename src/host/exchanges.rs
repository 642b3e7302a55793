//! Exchanges on the host side: the shared-data slots every worker reads (one record per
//! slot, a fixed number of slots per exchange, so shared data stays bounded although it
//! never evicts), the single-flight lease taken by compare-and-swap, the callouts and
//! their answers. What to send and how to read answers is in `crate::exchange`.

use super::root::{now_ms, VmState};
use crate::clock::Clock;
use crate::config::KeySource;
use crate::error::AuthnError;
use crate::exchange::answer::{self, Answer, Resolved, MAX_ANSWER_BYTES};
use crate::exchange::callout::callout;
use crate::exchange::record::{resolved_record, Record, State};
use crate::exchange::{Exchange, TokenKey};
use crate::flow::{ExchangeStore, Keyring, Keys, Lookup};
use crate::stats::{Counter, ExchangeEvent};
use crate::token::jwks::KeySet;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// How long past its callout timeout a lease is held: a worker that dies mid-callout
/// blocks its token no longer than this.
const LEASE_SLACK_MS: u64 = 1000;

/// A callout this VM started.
struct Flight {
    exchange: usize,
    key: TokenKey,
    /// The HTTP context that made it: Envoy cancels the callout if that stream ends.
    context_id: u32,
    started_ms: u64,
}

/// This VM's callouts in flight, by callout token.
#[derive(Default)]
pub struct Flights {
    flights: RefCell<HashMap<u32, Flight>>,
}

impl Flights {
    pub fn is_empty(&self) -> bool {
        self.flights.borrow().is_empty()
    }

    /// Whether this VM has a callout in flight for this token.
    fn asking(&self, exchange: usize, key: TokenKey) -> bool {
        self.flights
            .borrow()
            .values()
            .any(|f| f.exchange == exchange && f.key == key)
    }
}

/// The lease bound of an exchange's callout.
pub fn lease_ms(exchange: &Exchange) -> u64 {
    exchange.endpoint.timeout_ms.saturating_add(LEASE_SLACK_MS)
}

fn slot_key(exchange: &Exchange, key: TokenKey) -> String {
    format!(
        "{}.{}",
        exchange.shared_prefix,
        key.slot(exchange.cache.max_entries)
    )
}

fn read_slot(exchange: &Exchange, key: TokenKey) -> (Option<Record>, Option<u32>) {
    match hostcalls::get_shared_data(&slot_key(exchange, key)) {
        Ok((Some(bytes), cas)) => (Record::decode(&bytes), cas),
        _ => (None, None),
    }
}

fn write_slot(exchange: &Exchange, record: &Record, cas: Option<u32>) -> bool {
    hostcalls::set_shared_data(&slot_key(exchange, record.key), Some(&record.encode()), cas).is_ok()
}

/// Whether a waiter for this token should be decided again: its answer (or a failure)
/// is in shared data, its lease ran out, or the slot went to another token (whose answer
/// may have replaced ours, or whose callout kept ours from being made) while no callout
/// for it is in flight here.
pub fn answered(state: &VmState, exchange: usize, key: TokenKey, now_ms: u64) -> bool {
    let Some(config) = state.config.exchanges.get(exchange) else {
        return true;
    };
    match read_slot(config, key).0 {
        Some(Record {
            key: held,
            state: State::Pending { until_ms, .. },
        }) if held == key => until_ms <= now_ms,
        Some(record) if record.key == key => true,
        _ => !state.flights.asking(exchange, key),
    }
}

/// The flow's view: shared answers, and callouts started on a miss.
pub struct HostExchanges<'a> {
    pub state: &'a VmState,
    pub context_id: u32,
    pub clock: &'a Clock<'a>,
    /// The request waited for this token's answer: a failure in the slot is that answer
    /// (503), not a reason to ask again.
    pub resumed: bool,
}

impl ExchangeStore for HostExchanges<'_> {
    fn lookup(&self, id: usize, key: TokenKey, token: &str, may_start: bool) -> Lookup {
        let Some(exchange) = self.state.config.exchanges.get(id) else {
            return Lookup::Unavailable;
        };
        let (record, cas) = read_slot(exchange, key);
        let now_ms = self.clock.now_ms();
        let other_pending = matches!(
            &record,
            Some(Record { key: held, state: State::Pending { until_ms, .. } })
                if *held != key && *until_ms > now_ms
        );
        match record {
            Some(Record { key: held, state }) if held == key => match state {
                State::Active { .. } | State::Refused { .. } => {
                    // The flow checks the bound; an expired answer is asked again.
                    if !may_start || is_live(&state, now_ms) {
                        return Lookup::Answer(state);
                    }
                }
                State::Pending { until_ms, .. } if until_ms > now_ms => return Lookup::Pending,
                State::Failed if self.resumed => return Lookup::Unavailable,
                State::Pending { .. } | State::Failed => {}
            },
            _ => {}
        }
        if !may_start {
            return Lookup::Unavailable;
        }
        if self.state.flights.asking(id, key) {
            return Lookup::Pending;
        }
        // Take the slot's lease, unless another token's callout holds it: then ask
        // without it (no single flight for the two, but neither waits on the other).
        if !other_pending {
            let pending = Record {
                key,
                state: State::Pending {
                    holder: self.state.nonce,
                    until_ms: now_ms.saturating_add(lease_ms(exchange)),
                },
            };
            if !write_slot(exchange, &pending, cas) {
                // Another worker took the slot first: for this token, wait for its answer.
                let (now_held, _) = read_slot(exchange, key);
                if now_held.is_some_and(|r| r.key == key) {
                    return Lookup::Pending;
                }
            }
        }
        self.dispatch(id, exchange, key, token)
    }
}

impl HostExchanges<'_> {
    fn dispatch(&self, id: usize, exchange: &Exchange, key: TokenKey, token: &str) -> Lookup {
        let request = callout(exchange, token);
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let metrics = &self.state.metrics;
        metrics.increment(Counter::Exchange(id, ExchangeEvent::Miss));
        match hostcalls::dispatch_http_call(
            &request.cluster,
            headers,
            (!request.body.is_empty()).then_some(request.body.as_slice()),
            vec![],
            Duration::from_millis(request.timeout_ms),
        ) {
            Ok(token_id) => {
                self.state.flights.flights.borrow_mut().insert(
                    token_id,
                    Flight {
                        exchange: id,
                        key,
                        context_id: self.context_id,
                        started_ms: self.clock.now_ms(),
                    },
                );
                Lookup::Pending
            }
            Err(status) => {
                log::error!(
                    "tokengate: exchange {}: callout to cluster {:?} failed: {status:?}",
                    exchange.name,
                    request.cluster
                );
                metrics.increment(Counter::Exchange(id, ExchangeEvent::CalloutFailure));
                release(self.state, exchange, key);
                Lookup::Unavailable
            }
        }
    }
}

fn is_live(state: &State, now_ms: u64) -> bool {
    match state {
        State::Active { until, .. } | State::Refused { until, .. } => now_ms / 1000 < *until,
        State::Pending { until_ms, .. } => now_ms < *until_ms,
        State::Failed => false,
    }
}

/// The provider's keys for checking a signed answer, if it has any now.
fn provider_keys(state: &VmState, provider: usize) -> Option<Rc<KeySet>> {
    match &state.config.providers.get(provider)?.keys {
        KeySource::Inline(keys) => Some(keys.clone()),
        KeySource::Remote(_) => {
            let keyring = super::keys::HostKeyring {
                store: &state.keys,
                metrics: &state.metrics,
            };
            match keyring.keys(provider) {
                Keys::Ready(keys) => Some(keys),
                Keys::Pending | Keys::Unavailable => None,
            }
        }
    }
}

/// A callout answered (in the context that made it). Writes the answer, or the
/// failure, for all workers. Returns whether it was one of ours.
pub fn on_response(state: &VmState, token_id: u32, body_size: usize) -> bool {
    let Some(flight) = state.flights.flights.borrow_mut().remove(&token_id) else {
        return false;
    };
    let Some(exchange) = state.config.exchanges.get(flight.exchange) else {
        return true;
    };
    let now_ms = now_ms();
    let header = |name: &str| {
        hostcalls::get_map_value(MapType::HttpCallResponseHeaders, name)
            .ok()
            .flatten()
    };
    let status = header(":status").and_then(|s| s.parse::<u32>().ok());
    let content_type = header("content-type");
    let authorization = header("authorization");
    let body = callout_body(body_size, MAX_ANSWER_BYTES);
    let answer = Answer {
        status,
        content_type: content_type.as_deref(),
        authorization: authorization.as_deref(),
        body: &body,
        body_size,
    };
    let keys = provider_keys(state, exchange.provider);
    let metrics = &state.metrics;
    let now = now_ms / 1000;
    let record = match state.config.providers.get(exchange.provider) {
        Some(provider) => match answer::read(exchange, provider, keys.as_deref(), &answer, now) {
            Ok(resolved) => {
                // `inactive` is the auth service's word; the exchange's own refusals
                // (issuer, audience, exp) are counted by their reason.
                if resolved == Resolved::Refused(AuthnError::Inactive) {
                    metrics.increment(Counter::Exchange(flight.exchange, ExchangeEvent::Inactive));
                }
                resolved_record(exchange, flight.key, resolved, now)
            }
            Err(e) => {
                log::error!("tokengate: exchange {}: {}", exchange.name, e.describe());
                metrics.increment(Counter::Exchange(
                    flight.exchange,
                    ExchangeEvent::CalloutFailure,
                ));
                Record {
                    key: flight.key,
                    state: State::Failed,
                }
            }
        },
        None => Record {
            key: flight.key,
            state: State::Failed,
        },
    };
    metrics.record_histogram(
        &crate::stats::exchange_latency_histogram(&exchange.name),
        now_ms.saturating_sub(flight.started_ms),
    );
    write_slot(exchange, &record, None);
    true
}

/// A callout answer's `:status`; `None` when there is none (a reset, a local failure).
pub fn callout_status() -> Option<u32> {
    hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| s.parse::<u32>().ok())
}

/// A callout's answer body, read only when it is within `cap`: an oversized answer is
/// never copied into the VM (its size alone refuses it).
pub fn callout_body(body_size: usize, cap: usize) -> Vec<u8> {
    if body_size > cap {
        return Vec::new();
    }
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The stream `context_id` ended: its callouts were cancelled with it. Releases their
/// leases so other requests for those tokens ask again at once.
pub fn forget_context(state: &VmState, context_id: u32) {
    let mut flights = state.flights.flights.borrow_mut();
    let gone: Vec<u32> = flights
        .iter()
        .filter(|(_, f)| f.context_id == context_id)
        .map(|(token, _)| *token)
        .collect();
    for token in gone {
        let Some(flight) = flights.remove(&token) else {
            continue;
        };
        let Some(exchange) = state.config.exchanges.get(flight.exchange) else {
            continue;
        };
        release(state, exchange, flight.key);
    }
}

/// Marks the token's callout failed, if the slot still holds this VM's lease for it:
/// the next request asks again at once, and waiters get their answer (503) now.
fn release(state: &VmState, exchange: &Exchange, key: TokenKey) {
    if let (Some(record), cas) = read_slot(exchange, key) {
        let ours = matches!(record.state, State::Pending { holder, .. } if holder == state.nonce);
        if record.key == key && ours {
            let failed = Record {
                key,
                state: State::Failed,
            };
            write_slot(exchange, &failed, cas);
        }
    }
}
