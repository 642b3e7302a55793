//! The root context: configuration, per-VM state, the tick that drives key fetches and
//! wakes paused requests, and the callouts' answers.

use super::central::PolicyCalls;
use super::exchanges::Flights;
use super::http::{wake, Http, Waiter};
use super::keys::KeyStore;
use super::login::Logins;
use super::metrics::Metrics;
use super::revocation::RevocationStore;
use crate::config::Config;
use crate::flow::Caches;
use crate::policy::central::{DecisionCache, DEFAULT_MAX_DECISIONS};
use crate::stats::MetricNames;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// The source revision, set by the Makefile at build time.
pub const REVISION: &str = match option_env!("TOKENGATE_REVISION") {
    Some(rev) => rev,
    None => "unknown",
};

/// Tick periods: fast while keys are pending or requests wait, slow otherwise.
pub const BUSY_TICK_MS: u64 = 50;
const IDLE_TICK_MS: u64 = 1000;

pub fn register() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { state: None }));
}

/// What every HTTP context of this VM shares (one VM per Envoy worker thread).
pub struct VmState {
    pub config: Config,
    pub caches: RefCell<Caches>,
    pub metrics: Metrics,
    /// Identifies this VM as a lease holder in shared data.
    pub nonce: u64,
    /// Exchange callouts this VM started.
    pub flights: Flights,
    /// Central policy decisions of this VM, by input key.
    pub decisions: RefCell<DecisionCache>,
    /// Central policy callouts this VM started, and their fresh answers.
    pub policy: PolicyCalls,
    /// (context, name, value): headers to add to a stream's response.
    pub response_headers: RefCell<Vec<(u32, String, String)>>,
    pub keys: RefCell<KeyStore>,
    /// Login endpoints (discovery) and token endpoint callouts.
    pub logins: Logins,
    /// Status lists and back-channel logout denylists.
    pub revocation: RefCell<RevocationStore>,
    pub waiters: RefCell<Vec<Waiter>>,
    /// (context, paused at ms): back-channel logout POSTs waiting for their body.
    pub logouts: RefCell<Vec<(u32, u64)>>,
    /// The tick period last asked for, so it is changed only when it must.
    pub tick_ms: Cell<u64>,
    /// The host's clock as last read (by the tick, at least once a second, or by a
    /// request that needed it), milliseconds since the epoch.
    pub clock_ms: Cell<u64>,
}

impl VmState {
    pub fn set_tick(&self, ms: u64) {
        if self.tick_ms.get() != ms && hostcalls::set_tick_period(Duration::from_millis(ms)).is_ok()
        {
            self.tick_ms.set(ms);
        }
    }
}

/// How far the present can be past [`VmState::clock_ms`]: the idle tick's period, plus
/// a margin for a tick that fires late on a busy worker.
pub const CLOCK_LAG_MS: u64 = IDLE_TICK_MS + 2000;

/// The host's clock in milliseconds since the epoch.
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct Root {
    state: Option<Rc<VmState>>,
}

impl Root {
    /// One step of the key machinery: adopt what other workers fetched, start what is
    /// due, then wake the requests that can go on.
    fn drive(&self, state: &VmState) {
        let now = now_ms();
        state.clock_ms.set(now);
        let changed = {
            let mut keys = state.keys.borrow_mut();
            keys.now_ms.set(now);
            let mut changed = keys.sync_from_shared(&state.metrics);
            changed.extend(keys.expire_stuck(&state.metrics));
            keys.start_due_fetches(&state.metrics);
            changed
        };
        state.logins.start_due_fetches(state, now);
        self.keys_changed(state, &changed);
        {
            let mut revocation = state.revocation.borrow_mut();
            revocation.sync_from_shared(&state.config, &state.keys.borrow(), now);
            revocation.expire_stuck(&state.metrics, now);
            revocation.start_due_fetches(&state.metrics, now);
        }
        wake(state);
        super::http::expire_logouts(state, now);
        state.metrics.flush(now);
        let busy = state.keys.borrow().busy()
            || state.logins.busy()
            || !state.logouts.borrow().is_empty()
            || state.revocation.borrow().busy()
            || !state.waiters.borrow().is_empty()
            || !state.flights.is_empty()
            || !state.policy.is_empty();
        state.set_tick(if busy { BUSY_TICK_MS } else { IDLE_TICK_MS });
    }

    fn keys_changed(&self, state: &VmState, providers: &[usize]) {
        let mut caches = state.caches.borrow_mut();
        for provider in providers {
            caches.tokens.clear_provider(*provider);
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        let Some(state) = self.state.clone() else {
            return;
        };
        if state
            .logins
            .on_discovery_response(&state, token_id, body_size)
        {
            wake(&state);
            return;
        }
        // A token endpoint callout made for a request resumed from this context's
        // callback (the SDK routes an answer to the context whose callback made it).
        if super::login::on_response(&state, token_id, body_size) {
            return;
        }
        let now = now_ms();
        let list_answered = state.revocation.borrow_mut().on_response(
            &state.config,
            &state.keys.borrow(),
            token_id,
            body_size,
            &state.metrics,
            now,
        );
        if list_answered {
            wake(&state);
            return;
        }
        let finished = {
            let mut keys = state.keys.borrow_mut();
            keys.now_ms.set(now);
            keys.on_response(token_id, body_size, &state.metrics)
        };
        if let Some(provider) = finished {
            self.keys_changed(&state, &[provider]);
        }
        wake(&state);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        log::info!(
            "tokengate {} (revision {REVISION}) starting",
            crate::VERSION
        );
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        match Config::from_json(&bytes) {
            Ok(config) => {
                let caches = Caches::for_config(&config);
                let nonce = vm_nonce();
                let keys = KeyStore::new(&config, nonce);
                let logins = Logins::new(&config);
                let revocation = RevocationStore::new(&config, nonce);
                let remote = !keys.remotes.is_empty()
                    || logins.needs_discovery()
                    || config.providers.iter().any(|p| p.revocation.is_some());
                log::info!(
                    "tokengate: configured {} provider(s), {} exchange(s), {} rule(s)",
                    config.providers.len(),
                    config.exchanges.len(),
                    config.rules.len()
                );
                let names = MetricNames {
                    exchanges: config.exchanges.iter().map(|e| e.name.clone()).collect(),
                    rules: config.rules.iter().map(|r| r.stat_name.clone()).collect(),
                };
                let state = Rc::new(VmState {
                    config,
                    caches: RefCell::new(caches),
                    metrics: Metrics::new(names),
                    nonce,
                    flights: Flights::default(),
                    decisions: RefCell::new(DecisionCache::new(DEFAULT_MAX_DECISIONS)),
                    policy: PolicyCalls::default(),
                    response_headers: RefCell::new(Vec::new()),
                    keys: RefCell::new(keys),
                    logins,
                    revocation: RefCell::new(revocation),
                    waiters: RefCell::new(Vec::new()),
                    logouts: RefCell::new(Vec::new()),
                    tick_ms: Cell::new(0),
                    clock_ms: Cell::new(now_ms()),
                });
                if remote {
                    // The first tick starts the first fetch (clusters are ready by then).
                    state.set_tick(BUSY_TICK_MS);
                }
                self.state = Some(state);
                true
            }
            Err(e) => {
                log::error!("tokengate: configuration rejected: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(state) = self.state.clone() {
            self.drive(&state);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        Some(Box::new(Http::new(state, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A per-VM random number identifying this VM as a lease holder.
fn vm_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_ms());
    hasher.finish() | 1
}
