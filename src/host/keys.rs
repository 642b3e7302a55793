//! Remote key sets on the host side: shared data (the key set and the fetch lease, so N
//! workers fetch once), HTTP callouts, and the per-VM parsed copy. The decisions (what
//! to fetch, when, how to read the answer) are in `crate::remote`.

use super::metrics::Metrics;
use crate::config::{Config, KeySource};
use crate::flow::{Keyring, Keys};
use crate::remote::{
    backoff_ms, fetch_due, fetch_request, read_discovery, read_jwks, ttl_secs, FetchError,
    FetchReason, Lease, Location, RemoteSpec, SharedKeys, Uri, MAX_DISCOVERY_BYTES,
};
use crate::stats::Counter;
use crate::token::jwks::{KeySet, MAX_JWKS_BYTES};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// Which request of a fetch is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Discovery,
    Jwks,
}

struct InFlight {
    token: u32,
    stage: Stage,
}

/// One remote provider's keys as this VM knows them.
pub struct Remote {
    pub provider: usize,
    pub name: String,
    spec: RemoteSpec,
    keys: Option<Rc<KeySet>>,
    /// The shared generation `keys` came from.
    pub generation: u64,
    fetched_at_ms: u64,
    ttl_secs: u64,
    in_flight: Option<InFlight>,
    /// A request claimed an unknown-kid refetch; the next tick fetches.
    unknown_kid_wanted: bool,
    /// Fetches this VM finished (success or not): waiters wake when it moves.
    pub attempts: u64,
}

/// Every remote provider of this VM.
pub struct KeyStore {
    pub remotes: Vec<Remote>,
    /// Identifies this VM as a lease holder.
    nonce: u64,
    /// The clock, read once per callback by the host.
    pub now_ms: Cell<u64>,
}

impl KeyStore {
    pub fn new(config: &Config, nonce: u64) -> KeyStore {
        let remotes = config
            .providers
            .iter()
            .enumerate()
            .filter_map(|(provider, p)| match &p.keys {
                KeySource::Remote(spec) => Some(Remote {
                    provider,
                    name: p.name.clone(),
                    spec: spec.clone(),
                    keys: None,
                    generation: 0,
                    fetched_at_ms: 0,
                    ttl_secs: 0,
                    in_flight: None,
                    unknown_kid_wanted: false,
                    attempts: 0,
                }),
                KeySource::Inline(_) => None,
            })
            .collect::<Vec<Remote>>();
        // Create the leases now, at configuration, not at the first tick: proxy-wasm has
        // no create-if-absent, so a lease created while another VM already holds one
        // could overwrite it; at configuration time no VM has fetched yet.
        for remote in &remotes {
            let _ = read_lease(&remote.spec);
        }
        KeyStore {
            remotes,
            nonce,
            now_ms: Cell::new(0),
        }
    }

    /// The provider's current keys on this VM, if any.
    pub fn current(&self, provider: usize) -> Option<Rc<KeySet>> {
        self.remote(provider)?.keys.clone()
    }

    pub fn remote(&self, provider: usize) -> Option<&Remote> {
        self.remotes.iter().find(|r| r.provider == provider)
    }

    /// How long a request may wait for these providers' keys: one whole fetch.
    pub fn wait_bound_ms(&self, providers: &[usize]) -> u64 {
        providers
            .iter()
            .filter_map(|p| self.remote(*p))
            .map(|r| Lease::duration_ms(&r.spec))
            .max()
            .unwrap_or(0)
    }

    /// True while something is pending: the root ticks fast then.
    pub fn busy(&self) -> bool {
        self.remotes
            .iter()
            .any(|r| r.keys.is_none() || r.in_flight.is_some() || r.unknown_kid_wanted)
    }

    /// Picks up a key set another worker fetched. Returns the providers whose keys changed.
    pub fn sync_from_shared(&mut self, metrics: &Metrics) -> Vec<usize> {
        let now_ms = self.now_ms.get();
        let mut changed = Vec::new();
        for remote in &mut self.remotes {
            if let Some(shared) = read_shared_keys(&remote.spec) {
                if shared.generation != remote.generation && remote.install(&shared) {
                    changed.push(remote.provider);
                }
            }
            if remote.keys.is_some() {
                let age = now_ms.saturating_sub(remote.fetched_at_ms) / 1000;
                metrics.set_gauge(&crate::stats::key_age_gauge(&remote.name), age);
            }
        }
        changed
    }

    /// Starts the fetches that are due and whose lease this VM wins.
    pub fn start_due_fetches(&mut self, metrics: &Metrics) {
        let now_ms = self.now_ms.get();
        let nonce = self.nonce;
        for remote in &mut self.remotes {
            if remote.in_flight.is_some() {
                continue;
            }
            // The lease before the keys: a fetch writes its keys before releasing the
            // lease, so a free lease read first means the keys read next are current.
            let Some((lease, cas)) = read_lease(&remote.spec) else {
                continue;
            };
            let shared = read_shared_keys(&remote.spec);
            let Some(reason) =
                fetch_due(shared.as_ref(), &lease, remote.unknown_kid_wanted, now_ms)
            else {
                continue;
            };
            let taken = Lease {
                holder: nonce,
                until_ms: now_ms + Lease::duration_ms(&remote.spec),
                ..lease
            };
            if hostcalls::set_shared_data(
                &lease_key(&remote.spec),
                Some(&taken.encode()),
                Some(cas),
            )
            .is_err()
            {
                continue; // another worker won the lease
            }
            remote.unknown_kid_wanted = false;
            if reason == FetchReason::UnknownKid {
                metrics.increment(Counter::JwksRefetchUnknownKid);
            }
            let (stage, uri) = match &remote.spec.location {
                Location::Jwks(uri) => (Stage::Jwks, uri.clone()),
                Location::Discovery(uri) => (Stage::Discovery, uri.clone()),
            };
            if let Err(e) = remote.dispatch(stage, &uri) {
                remote.finish(Err(e), now_ms, nonce, metrics);
            }
        }
    }

    /// A callout answered. Returns the provider whose fetch finished, if this ended one.
    pub fn on_response(
        &mut self,
        token: u32,
        body_size: usize,
        metrics: &Metrics,
    ) -> Option<usize> {
        let now_ms = self.now_ms.get();
        let nonce = self.nonce;
        let remote = self
            .remotes
            .iter_mut()
            .find(|r| r.in_flight.as_ref().is_some_and(|f| f.token == token))?;
        let stage = remote.in_flight.take().map(|f| f.stage)?;
        let status = super::exchanges::callout_status();
        let cap = if stage == Stage::Jwks {
            MAX_JWKS_BYTES
        } else {
            MAX_DISCOVERY_BYTES
        };
        let body = || -> Vec<u8> {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let result = match status {
            None => Err(FetchError::Transport),
            Some(_) if body_size > cap => Err(FetchError::TooLarge),
            Some(status) => match stage {
                Stage::Discovery => match read_discovery(status, &body(), &remote.spec.issuer) {
                    Ok(jwks_uri) => match remote.dispatch(Stage::Jwks, &jwks_uri) {
                        Ok(()) => return None, // still fetching
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                },
                Stage::Jwks => {
                    let cache_control =
                        hostcalls::get_map_value(MapType::HttpCallResponseHeaders, "cache-control")
                            .ok()
                            .flatten();
                    let bytes = body();
                    read_jwks(status, &bytes).map(|parsed| {
                        for skipped in &parsed.skipped {
                            log::warn!(
                                "tokengate: provider {}: JWKS key #{} skipped: {}",
                                remote.name,
                                skipped.index,
                                skipped.reason.describe()
                            );
                        }
                        (
                            String::from_utf8_lossy(&bytes).into_owned(),
                            ttl_secs(cache_control.as_deref(), remote.spec.cache_secs),
                        )
                    })
                }
            },
        };
        remote.finish(result, now_ms, nonce, metrics);
        Some(remote.provider)
    }

    /// Drops an in-flight fetch that outlived its lease (its answer never came).
    pub fn expire_stuck(&mut self, metrics: &Metrics) -> Vec<usize> {
        let now_ms = self.now_ms.get();
        let nonce = self.nonce;
        let mut expired = Vec::new();
        for remote in &mut self.remotes {
            if remote.in_flight.is_some() {
                let lease = read_lease(&remote.spec).map(|(l, _)| l).unwrap_or_default();
                if lease.holder != nonce || !lease.is_held(now_ms) {
                    remote.in_flight = None;
                    remote.finish(Err(FetchError::Transport), now_ms, nonce, metrics);
                    expired.push(remote.provider);
                }
            }
        }
        expired
    }
}

impl Remote {
    fn dispatch(&mut self, stage: Stage, uri: &Uri) -> Result<(), FetchError> {
        let request = fetch_request(&self.spec, uri);
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        match hostcalls::dispatch_http_call(
            &request.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(request.timeout_ms),
        ) {
            Ok(token) => {
                self.in_flight = Some(InFlight { token, stage });
                Ok(())
            }
            Err(status) => {
                log::warn!(
                    "tokengate: provider {}: callout to cluster {:?} failed: {status:?}",
                    self.name,
                    request.cluster
                );
                Err(FetchError::Transport)
            }
        }
    }

    /// Records the end of a fetch: the new key set in shared data, or the failure and
    /// backoff in the lease. Either way the lease is released.
    fn finish(
        &mut self,
        result: Result<(String, u64), FetchError>,
        now_ms: u64,
        nonce: u64,
        metrics: &Metrics,
    ) {
        self.attempts += 1;
        let success = match result {
            Ok((jwks, ttl)) => {
                let previous = read_shared_keys(&self.spec).map_or(0, |k| k.generation);
                let shared = SharedKeys {
                    generation: previous.max(self.generation) + 1,
                    fetched_at_ms: now_ms,
                    ttl_secs: ttl,
                    jwks,
                };
                let _ =
                    hostcalls::set_shared_data(&keys_key(&self.spec), Some(&shared.encode()), None);
                self.install(&shared);
                metrics.increment(Counter::JwksFetchSuccess);
                log::info!(
                    "tokengate: provider {}: fetched {} key(s), next refresh in {} s",
                    self.name,
                    self.keys.as_ref().map_or(0, |k| k.len()),
                    ttl * 8 / 10
                );
                true
            }
            Err(e) => {
                metrics.increment(Counter::JwksFetchFailure);
                if e == FetchError::DiscoveryIssuerMismatch {
                    metrics.increment(Counter::JwksDiscoveryIssuerMismatch);
                    log::error!(
                        "tokengate: provider {}: REFUSED discovery document: it does not name issuer {:?}; the provider gets no keys from it",
                        self.name,
                        self.spec.issuer
                    );
                } else if self.keys.is_some() {
                    log::warn!("tokengate: provider {}: key refresh failed ({}); serving the last good keys", self.name, e.describe());
                } else {
                    log::warn!(
                        "tokengate: provider {}: key fetch failed ({}); no keys yet",
                        self.name,
                        e.describe()
                    );
                }
                false
            }
        };
        release_lease(
            &lease_key(&self.spec),
            nonce,
            success,
            self.keys.is_some(),
            now_ms,
        );
    }

    /// Parses and installs a shared key set. False if it doesn't parse (then the
    /// current keys stay).
    fn install(&mut self, shared: &SharedKeys) -> bool {
        match KeySet::parse(shared.jwks.as_bytes()) {
            Ok(parsed) => {
                self.keys = Some(Rc::new(parsed.set));
                self.generation = shared.generation;
                self.fetched_at_ms = shared.fetched_at_ms;
                self.ttl_secs = shared.ttl_secs;
                true
            }
            Err(_) => false,
        }
    }

    fn is_stale(&self, now_ms: u64) -> bool {
        crate::remote::is_stale(self.fetched_at_ms, self.ttl_secs, now_ms)
    }
}

/// The keyring the flow sees: this VM's keys, and the shared lease for decisions.
pub struct HostKeyring<'a> {
    pub store: &'a RefCell<KeyStore>,
    pub metrics: &'a Metrics,
}

impl Keyring for HostKeyring<'_> {
    fn keys(&self, provider: usize) -> Keys {
        let store = self.store.borrow();
        let now_ms = store.now_ms.get();
        let Some(remote) = store.remote(provider) else {
            return Keys::Unavailable;
        };
        if let Some(keys) = &remote.keys {
            if remote.is_stale(now_ms) {
                self.metrics.increment(Counter::JwksStaleServed);
            }
            return Keys::Ready(keys.clone());
        }
        // No keys yet: worth waiting only if a fetch is under way or about to start.
        let lease = read_lease(&remote.spec).map(|(l, _)| l).unwrap_or_default();
        if remote.in_flight.is_some() || lease.is_held(now_ms) || now_ms >= lease.retry_at_ms {
            Keys::Pending
        } else {
            Keys::Unavailable
        }
    }

    fn refetch_for_unknown_kid(&self, provider: usize) -> bool {
        let mut store = self.store.borrow_mut();
        let now_ms = store.now_ms.get();
        let Some(remote) = store.remotes.iter_mut().find(|r| r.provider == provider) else {
            return false;
        };
        let Some((lease, cas)) = read_lease(&remote.spec) else {
            return false;
        };
        if lease.is_held(now_ms) || remote.unknown_kid_wanted {
            return true; // a fetch is under way: its answer may have the kid
        }
        if read_shared_keys(&remote.spec).is_some_and(|k| k.generation != remote.generation) {
            return true; // another worker fetched newer keys; the next tick installs them
        }
        if !lease.unknown_kid_refetch_allowed(&remote.spec, now_ms) {
            return false;
        }
        let claimed = Lease {
            unknown_kid_at_ms: now_ms,
            ..lease
        };
        match hostcalls::set_shared_data(
            &lease_key(&remote.spec),
            Some(&claimed.encode()),
            Some(cas),
        ) {
            Ok(()) => {
                remote.unknown_kid_wanted = true;
                true
            }
            // Someone changed the lease just now: most likely the same claim.
            Err(_) => true,
        }
    }
}

fn keys_key(spec: &RemoteSpec) -> String {
    format!("{}#keys", spec.shared_key)
}

fn lease_key(spec: &RemoteSpec) -> String {
    format!("{}#lease", spec.shared_key)
}

fn read_shared_keys(spec: &RemoteSpec) -> Option<SharedKeys> {
    let (bytes, _) = hostcalls::get_shared_data(&keys_key(spec)).ok()?;
    SharedKeys::decode(&bytes?)
}

/// Reads the lease and its CAS, creating a free lease the first time (normally at
/// configuration, see `KeyStore::new`).
fn read_lease(spec: &RemoteSpec) -> Option<(Lease, u32)> {
    read_lease_at(&lease_key(spec))
}

/// Reads the fetch lease stored under `key` and its CAS, creating a free one the first
/// time (proxy-wasm has no create-if-absent: create leases before any VM fetches).
pub(super) fn read_lease_at(key: &str) -> Option<(Lease, u32)> {
    for _ in 0..2 {
        match hostcalls::get_shared_data(key).ok()? {
            (Some(bytes), Some(cas)) => {
                return Some((Lease::decode(&bytes).unwrap_or_default(), cas))
            }
            _ => {
                // Every worker that gets here writes the same free lease; harmless.
                hostcalls::set_shared_data(key, Some(&Lease::default().encode()), None).ok()?;
            }
        }
    }
    None
}

/// Releases the lease under `key` after a fetch this VM (`nonce`) made: failures and
/// the backoff recorded, or cleared on success. Compare-and-swap, retried if a claim
/// raced with us; a lease someone else holds now is left alone.
pub(super) fn release_lease(key: &str, nonce: u64, success: bool, have_data: bool, now_ms: u64) {
    for _ in 0..3 {
        let Some((lease, cas)) = read_lease_at(key) else {
            return;
        };
        if lease.holder != nonce {
            return;
        }
        let failures = if success {
            0
        } else {
            lease.failures.saturating_add(1)
        };
        let retry_at_ms = if success {
            0
        } else {
            now_ms + backoff_ms(failures, have_data, jitter(nonce, now_ms))
        };
        let released = Lease {
            holder: 0,
            until_ms: 0,
            failures,
            retry_at_ms,
            ..lease
        };
        if hostcalls::set_shared_data(key, Some(&released.encode()), Some(cas)).is_ok() {
            return;
        }
    }
}

/// A number in [0, 1) that differs between workers and over time, for backoff jitter.
pub(super) fn jitter(nonce: u64, now_ms: u64) -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(nonce ^ now_ms);
    (hasher.finish() % 1_000_000) as f64 / 1_000_000.0
}
