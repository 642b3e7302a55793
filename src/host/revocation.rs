//! Revocation on the host side: status lists (callouts from the root tick, the list
//! token shared by all workers in shared data, a single-flight lease taken by CAS, the
//! per-VM verified copy, refreshes before the ttl ends) and the back-channel logout
//! denylist (updated by CAS on a logout POST, adopted by the other workers at their tick
//! through a small version key). What to check and decide is in `crate::revocation`.

use super::keys::{read_lease_at, release_lease, KeyStore};
use super::metrics::Metrics;
use crate::clock::Clock;
use crate::config::{Config, KeySource, Provider};
use crate::flow::{ListState, Revocations};
use crate::remote::{Lease, Uri};
use crate::revocation::denylist::Denylist;
use crate::revocation::logout::{Logout, LogoutError};
use crate::revocation::status_list::{
    self, fetch_due, verify_list_token, ListCheck, ListError, StatusList,
};
use crate::revocation::{Signer, StatusListPolicy};
use crate::stats::{Counter, RevocationEvent};
use crate::token::jwks::KeySet;
use proxy_wasm::hostcalls;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Lists one provider keeps (per VM and in shared data). A token naming yet another list
/// takes the place of the one used least recently.
pub const MAX_LISTS_PER_PROVIDER: usize = 64;
/// How long past its timeout a fetch holds the lease.
const LEASE_SLACK_MS: u64 = 1000;

/// A list token as all workers share it: each worker verifies and decodes it itself.
/// Stored as `<generation> <fetched_at_ms> <expires_at_ms> <token>` (a compact JWS has no
/// spaces): read by hand, no serde code for it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SharedList {
    generation: u64,
    fetched_at_ms: u64,
    /// When the fetching worker stopped trusting it (its ttl, bounded, and `exp`).
    expires_at_ms: u64,
    token: String,
}

impl SharedList {
    fn encode(&self) -> Vec<u8> {
        format!(
            "{} {} {} {}",
            self.generation, self.fetched_at_ms, self.expires_at_ms, self.token
        )
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<SharedList> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(4, ' ');
        Some(SharedList {
            generation: parts.next()?.parse().ok()?,
            fetched_at_ms: parts.next()?.parse().ok()?,
            expires_at_ms: parts.next()?.parse().ok()?,
            token: parts.next()?.to_owned(),
        })
    }
}

/// One status list as this VM knows it.
struct ListSlot {
    provider: usize,
    uri: Rc<str>,
    /// Shared-data key prefix.
    key: String,
    cluster: String,
    target: Uri,
    timeout_ms: u64,
    list: Option<Rc<StatusList>>,
    fetched_at_ms: u64,
    generation: u64,
    /// Fetches this VM finished or saw fail: waiters wake when it moves.
    attempts: u64,
    in_flight: Option<u32>,
    /// A request found no usable list: the next tick fetches.
    wanted: bool,
    used_at_ms: u64,
}

impl ListSlot {
    fn lease_key(&self) -> String {
        format!("{}#lease", self.key)
    }

    fn list_key(&self) -> String {
        format!("{}#list", self.key)
    }

    fn usable(&self, now_ms: u64) -> Option<&Rc<StatusList>> {
        self.usable_at(&Clock::exact(now_ms))
    }

    /// The list while it is fresh: judged without reading the clock unless it goes
    /// stale within the clock's window.
    fn usable_at(&self, clock: &Clock<'_>) -> Option<&Rc<StatusList>> {
        self.list
            .as_ref()
            .filter(|list| clock.judge(|now| list.is_fresh(now)))
    }

    fn read_shared(&self) -> Option<SharedList> {
        let (bytes, _) = hostcalls::get_shared_data(&self.list_key()).ok()?;
        SharedList::decode(&bytes?)
    }
}

/// One provider's back-channel logout denylist as this VM knows it.
struct DenySlot {
    provider: usize,
    key: String,
    /// The version key's value when the list was last read.
    seen: u64,
    list: Option<Rc<Denylist>>,
}

impl DenySlot {
    fn version_key(&self) -> String {
        format!("{}#version", self.key)
    }

    fn adopt(&mut self) {
        let Ok((Some(bytes), _)) = hostcalls::get_shared_data(&self.key) else {
            return;
        };
        if let Some(list) = Denylist::decode(&bytes) {
            self.list = (!list.is_empty()).then(|| Rc::new(list));
        }
    }
}

/// Status lists and denylists of this VM.
pub struct RevocationStore {
    lists: HashMap<(usize, Rc<str>), ListSlot>,
    denylists: Vec<DenySlot>,
    nonce: u64,
}

fn shared_prefix(provider: &Provider) -> String {
    format!("tokengate.revocation.{}", provider.name)
}

impl RevocationStore {
    pub fn new(config: &Config, nonce: u64) -> RevocationStore {
        let denylists = config
            .providers
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.revocation
                    .as_ref()
                    .is_some_and(|r| r.backchannel.is_some())
            })
            .map(|(provider, p)| {
                let key = format!("{}#denylist", shared_prefix(p));
                // Created at configuration (no create-if-absent in proxy-wasm): the CAS of
                // a logout POST then always has a value to compare with.
                if !matches!(hostcalls::get_shared_data(&key), Ok((Some(_), _))) {
                    let _ =
                        hostcalls::set_shared_data(&key, Some(&Denylist::default().encode()), None);
                }
                let mut slot = DenySlot {
                    provider,
                    key,
                    seen: 0,
                    list: None,
                };
                slot.seen = read_version(&slot.version_key());
                slot.adopt();
                slot
            })
            .collect();
        RevocationStore {
            lists: HashMap::new(),
            denylists,
            nonce,
        }
    }

    /// True while a list is wanted or being fetched: the root ticks fast then.
    pub fn busy(&self) -> bool {
        self.lists
            .values()
            .any(|s| s.wanted || s.in_flight.is_some())
    }

    /// (generation, attempts) of a list, for waiters.
    pub fn progress(&self, provider: usize, uri: &Rc<str>) -> Option<(u64, u64)> {
        self.lists
            .get(&(provider, uri.clone()))
            .map(|s| (s.generation, s.attempts))
    }

    /// How long a request may wait for a list: one fetch.
    pub fn wait_bound_ms(&self, config: &Config, lists: &[(usize, Rc<str>)]) -> u64 {
        lists
            .iter()
            .filter_map(|(p, _)| list_policy(config, *p))
            .map(|policy| policy.timeout_ms.saturating_add(LEASE_SLACK_MS))
            .max()
            .unwrap_or(0)
    }

    /// Adopts what other workers fetched or recorded. Returns whether a waited-for list
    /// moved (its waiters can go on).
    pub fn sync_from_shared(&mut self, config: &Config, keys: &KeyStore, now_ms: u64) -> bool {
        let mut moved = false;
        for slot in self.lists.values_mut() {
            if let Some(shared) = slot.read_shared() {
                if shared.generation != slot.generation {
                    moved |= install(config, keys, slot, &shared, now_ms);
                }
            }
        }
        for slot in &mut self.denylists {
            let version = read_version(&slot.version_key());
            if version != slot.seen {
                slot.seen = version;
                slot.adopt();
            }
        }
        moved
    }

    /// Starts the list fetches that are due and whose lease this VM wins.
    pub fn start_due_fetches(&mut self, metrics: &Metrics, now_ms: u64) {
        let nonce = self.nonce;
        for slot in self.lists.values_mut() {
            if slot.in_flight.is_some() {
                continue;
            }
            let Some((lease, cas)) = read_lease_at(&slot.lease_key()) else {
                continue;
            };
            let shared = slot
                .read_shared()
                .map(|s| (s.fetched_at_ms, s.expires_at_ms));
            if fetch_due(shared, &lease, slot.wanted, slot.used_at_ms, now_ms).is_none() {
                if !lease.is_held(now_ms) && now_ms < lease.retry_at_ms && slot.wanted {
                    // Backing off: the requests that wanted it are told it is unavailable.
                    slot.wanted = false;
                    slot.attempts += 1;
                }
                continue;
            }
            let taken = Lease {
                holder: nonce,
                until_ms: now_ms + slot.timeout_ms + LEASE_SLACK_MS,
                ..lease
            };
            if hostcalls::set_shared_data(&slot.lease_key(), Some(&taken.encode()), Some(cas))
                .is_err()
            {
                continue; // another worker fetches it
            }
            slot.wanted = false;
            let path = slot.target.path.clone();
            let authority = slot.target.authority.clone();
            let user_agent = format!("tokengate/{}", crate::VERSION);
            let headers = vec![
                (":method", "GET"),
                (":path", path.as_str()),
                (":authority", authority.as_str()),
                ("accept", status_list::ACCEPT),
                ("user-agent", user_agent.as_str()),
            ];
            match hostcalls::dispatch_http_call(
                &slot.cluster,
                headers,
                None,
                vec![],
                Duration::from_millis(slot.timeout_ms),
            ) {
                Ok(token) => slot.in_flight = Some(token),
                Err(status) => {
                    log::warn!(
                        "tokengate: status list callout to cluster {:?} failed: {status:?}",
                        slot.cluster
                    );
                    fetch_failed(slot, nonce, metrics, now_ms);
                }
            }
        }
    }

    /// A callout answered: true if it was a list fetch of this VM.
    pub fn on_response(
        &mut self,
        config: &Config,
        keys: &KeyStore,
        token: u32,
        body_size: usize,
        metrics: &Metrics,
        now_ms: u64,
    ) -> bool {
        let nonce = self.nonce;
        let Some(slot) = self.lists.values_mut().find(|s| s.in_flight == Some(token)) else {
            return false;
        };
        slot.in_flight = None;
        let Some(policy) = list_policy(config, slot.provider) else {
            return true;
        };
        let result = match super::exchanges::callout_status() {
            None => Err("callout failed".to_owned()),
            Some(200) if body_size <= policy.max_token_bytes() => {
                let body = super::exchanges::callout_body(body_size, policy.max_token_bytes());
                let text = String::from_utf8(body).unwrap_or_default();
                let token = text.trim().to_owned();
                check_list(config, keys, slot, &token, now_ms)
                    .map(|list| (token, list))
                    .map_err(|e| e.describe().to_owned())
            }
            Some(200) => Err(ListError::TooLarge.describe().to_owned()),
            Some(other) => Err(format!("HTTP status {other}")),
        };
        match result {
            Ok((token, list)) => {
                let previous = slot.read_shared().map_or(0, |s| s.generation);
                let shared = SharedList {
                    generation: previous.max(slot.generation) + 1,
                    fetched_at_ms: now_ms,
                    expires_at_ms: list.expires_at.saturating_mul(1000),
                    token,
                };
                let _ = hostcalls::set_shared_data(&slot.list_key(), Some(&shared.encode()), None);
                slot.list = Some(Rc::new(list));
                slot.generation = shared.generation;
                slot.fetched_at_ms = now_ms;
                slot.attempts += 1;
                metrics.increment(Counter::Revocation(RevocationEvent::ListFetchSuccess));
                release_lease(&slot.lease_key(), nonce, true, true, now_ms);
            }
            Err(reason) => {
                log::warn!(
                    "tokengate: provider {}: status list fetch failed: {reason}",
                    provider_name(config, slot.provider)
                );
                fetch_failed(slot, nonce, metrics, now_ms);
            }
        }
        true
    }

    /// Drops a fetch whose lease ran out before its answer came.
    pub fn expire_stuck(&mut self, metrics: &Metrics, now_ms: u64) {
        let nonce = self.nonce;
        for slot in self.lists.values_mut() {
            if slot.in_flight.is_some() {
                let lease = read_lease_at(&slot.lease_key())
                    .map(|(l, _)| l)
                    .unwrap_or_default();
                if lease.holder != nonce || !lease.is_held(now_ms) {
                    slot.in_flight = None;
                    fetch_failed(slot, nonce, metrics, now_ms);
                }
            }
        }
    }

    /// Records a verified logout in the provider's shared denylist (CAS, retried) and
    /// adopts it here; a replayed `jti` changes nothing.
    pub fn record_logout(
        &mut self,
        config: &Config,
        provider: usize,
        logout: &Logout,
        now: u64,
    ) -> Result<(), LogoutError> {
        let Some(p) = config.providers.get(provider) else {
            return Err(LogoutError::MissingToken);
        };
        let lifetime = p
            .revocation
            .as_ref()
            .and_then(|r| r.backchannel.as_ref())
            .map_or(0, |b| b.max_token_lifetime_secs);
        let Some(slot) = self.denylists.iter_mut().find(|d| d.provider == provider) else {
            return Err(LogoutError::MissingToken);
        };
        for _ in 0..8 {
            let (bytes, cas) = match hostcalls::get_shared_data(&slot.key) {
                Ok((bytes, cas)) => (bytes, cas),
                Err(_) => return Err(LogoutError::Busy),
            };
            let mut list = bytes
                .as_deref()
                .and_then(Denylist::decode)
                .unwrap_or_default();
            list.record(logout, now, lifetime, p.policy.clock_skew_secs)?;
            if hostcalls::set_shared_data(&slot.key, Some(&list.encode()), cas).is_ok() {
                bump_version(&slot.version_key());
                slot.seen = read_version(&slot.version_key());
                slot.list = Some(Rc::new(list));
                return Ok(());
            }
        }
        Err(LogoutError::Busy)
    }
}

/// The VM's current keys of a provider (inline, or the remote set).
pub fn provider_keys(config: &Config, keys: &KeyStore, provider: usize) -> Option<Rc<KeySet>> {
    match &config.providers.get(provider)?.keys {
        KeySource::Inline(set) => Some(set.clone()),
        KeySource::Remote(_) => keys.current(provider),
    }
}

fn list_policy(config: &Config, provider: usize) -> Option<&StatusListPolicy> {
    config
        .providers
        .get(provider)?
        .revocation
        .as_ref()?
        .status_list
        .as_ref()
}

fn provider_name(config: &Config, provider: usize) -> &str {
    config
        .providers
        .get(provider)
        .map_or("-", |p| p.name.as_str())
}

/// Verifies a list token for a slot with its provider's keys.
fn check_list(
    config: &Config,
    keys: &KeyStore,
    slot: &ListSlot,
    token: &str,
    now_ms: u64,
) -> Result<StatusList, ListError> {
    let (Some(provider), Some(policy)) = (
        config.providers.get(slot.provider),
        list_policy(config, slot.provider),
    ) else {
        return Err(ListError::Shape);
    };
    let set = provider_keys(config, keys, slot.provider)
        .ok_or(ListError::Token(crate::error::AuthnError::KeysUnavailable))?;
    let check = ListCheck {
        uri: &slot.uri,
        signer: Signer::of(&provider.policy, &set),
        policy,
    };
    verify_list_token(token, &check, now_ms / 1000)
}

/// Installs a list another worker fetched, if it verifies here. True if it did.
fn install(
    config: &Config,
    keys: &KeyStore,
    slot: &mut ListSlot,
    shared: &SharedList,
    now_ms: u64,
) -> bool {
    match check_list(config, keys, slot, &shared.token, now_ms) {
        Ok(mut list) => {
            // Its life counts from the fetch, not from this adoption.
            list.expires_at = list.expires_at.min(shared.expires_at_ms / 1000);
            slot.list = Some(Rc::new(list));
            slot.generation = shared.generation;
            slot.fetched_at_ms = shared.fetched_at_ms;
            // Another worker's fetch answered what this one wanted.
            slot.wanted = false;
            true
        }
        Err(e) => {
            log::warn!(
                "tokengate: provider {}: shared status list not adopted: {}",
                provider_name(config, slot.provider),
                e.describe()
            );
            slot.generation = shared.generation;
            false
        }
    }
}

fn fetch_failed(slot: &mut ListSlot, nonce: u64, metrics: &Metrics, now_ms: u64) {
    slot.attempts += 1;
    metrics.increment(Counter::Revocation(RevocationEvent::ListFetchFailure));
    release_lease(&slot.lease_key(), nonce, false, slot.list.is_some(), now_ms);
}

fn read_version(key: &str) -> u64 {
    match hostcalls::get_shared_data(key) {
        Ok((Some(bytes), _)) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// Moves the version key on (CAS, retried): other workers re-read the denylist.
fn bump_version(key: &str) {
    for _ in 0..8 {
        let (current, cas) = match hostcalls::get_shared_data(key) {
            Ok((Some(bytes), cas)) => (
                std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok())
                    .unwrap_or(0),
                cas,
            ),
            _ => (0, None),
        };
        let next = current.wrapping_add(1).to_string();
        if hostcalls::set_shared_data(key, Some(next.as_bytes()), cas).is_ok() {
            return;
        }
    }
}

/// What the flow sees: this VM's lists and denylists.
pub struct HostRevocations<'a> {
    pub config: &'a Config,
    pub store: &'a RefCell<RevocationStore>,
    pub keys: &'a RefCell<KeyStore>,
    pub clock: &'a Clock<'a>,
    /// Set when a request asked for a fetch: the root should tick fast.
    pub asked: &'a Cell<bool>,
    /// This request may still wait for a list: it has not waited for one yet, and its
    /// deadline (if it waited for something else) has not passed.
    pub may_wait: bool,
}

impl Revocations for HostRevocations<'_> {
    fn status_list(&self, provider: usize, uri: &Rc<str>) -> ListState {
        let mut store = self.store.borrow_mut();
        let key = (provider, uri.clone());
        if let Some(slot) = store.lists.get_mut(&key) {
            if let Some(list) = slot.usable_at(self.clock).cloned() {
                // For eviction only: a second's staleness doesn't matter.
                slot.used_at_ms = self.clock.earliest_ms();
                return ListState::Ready(list);
            }
        }
        let now_ms = self.clock.now_ms();
        // Nothing usable here: another worker may have fetched it.
        if !store.lists.contains_key(&key) {
            let Some(slot) = new_slot(self.config, provider, uri) else {
                return ListState::Unavailable;
            };
            evict_for(&mut store.lists, provider);
            store.lists.insert(key.clone(), slot);
        }
        let Some(slot) = store.lists.get_mut(&key) else {
            return ListState::Unavailable;
        };
        slot.used_at_ms = now_ms;
        if let Some(shared) = slot.read_shared() {
            if shared.generation != slot.generation {
                install(self.config, &self.keys.borrow(), slot, &shared, now_ms);
                if let Some(list) = slot.usable(now_ms) {
                    return ListState::Ready(list.clone());
                }
            }
        }
        let pending = if self.may_wait {
            ListState::Pending
        } else {
            ListState::Unavailable
        };
        if slot.in_flight.is_some() || slot.wanted {
            return pending;
        }
        let lease = read_lease_at(&slot.lease_key())
            .map(|(l, _)| l)
            .unwrap_or_default();
        if lease.is_held(now_ms) {
            return pending;
        }
        if now_ms < lease.retry_at_ms {
            return ListState::Unavailable;
        }
        // Fetched at the next tick, for this request if it may wait, else for the next.
        slot.wanted = true;
        self.asked.set(true);
        pending
    }

    fn denylist(&self, provider: usize) -> Option<Rc<Denylist>> {
        let store = self.store.borrow();
        store
            .denylists
            .iter()
            .find(|d| d.provider == provider)?
            .list
            .clone()
    }
}

fn new_slot(config: &Config, provider: usize, uri: &Rc<str>) -> Option<ListSlot> {
    let p = config.providers.get(provider)?;
    let policy = list_policy(config, provider)?;
    let (cluster, target) = status_list::target(uri, policy)?;
    let key = format!("{}.statuslist.{}", shared_prefix(p), uri);
    // The lease exists before anyone claims it (see `read_lease_at`).
    let _ = read_lease_at(&format!("{key}#lease"));
    Some(ListSlot {
        provider,
        uri: uri.clone(),
        key,
        cluster: cluster.to_owned(),
        target,
        timeout_ms: policy.timeout_ms,
        list: None,
        fetched_at_ms: 0,
        generation: 0,
        attempts: 0,
        in_flight: None,
        wanted: false,
        used_at_ms: 0,
    })
}

/// Makes room for one more list of `provider`: the one used least recently (and not
/// being fetched) goes.
fn evict_for(lists: &mut HashMap<(usize, Rc<str>), ListSlot>, provider: usize) {
    let count = lists.keys().filter(|(p, _)| *p == provider).count();
    if count < MAX_LISTS_PER_PROVIDER {
        return;
    }
    let oldest = lists
        .iter()
        .filter(|((p, _), slot)| *p == provider && slot.in_flight.is_none())
        .min_by_key(|(_, slot)| slot.used_at_ms)
        .map(|(key, _)| key.clone());
    if let Some(key) = oldest {
        lists.remove(&key);
    }
}
