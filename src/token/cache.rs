//! The verified-token cache, one per VM (per Envoy worker). Keyed by provider and the
//! whole token, so a different token can never hit; the lifetime is re-checked on every
//! hit by the caller; only successes are stored.

use crate::policy::rules::Authenticator;
use crate::revocation::Revocable;
use crate::token::jwt::Lifetime;
use serde_json::{Map, Value};
use std::cell::OnceCell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// Hashes a token by its length and its last 32 bytes: the end of the signature, which
/// the issuer's key makes unpredictable. SipHash over all of an ~800-byte token was a
/// visible part of a cached request in V8. Only verified tokens are ever stored, so no
/// client can fill a bucket with colliding keys, and a lookup still compares the whole
/// token.
pub fn token_hash(token: &str) -> u64 {
    let bytes = token.as_bytes();
    let tail = bytes
        .get(bytes.len().saturating_sub(TAIL_BYTES)..)
        .unwrap_or_default();
    let mut hash = (bytes.len() as u64).wrapping_mul(MIX);
    let mix = |hash: u64, word: u64| (hash.rotate_left(23) ^ word).wrapping_mul(MIX);
    let mut words = tail.chunks_exact(8);
    for word in &mut words {
        hash = mix(
            hash,
            u64::from_le_bytes(word.try_into().unwrap_or_default()),
        );
    }
    let mut last = [0u8; 8];
    for (to, from) in last.iter_mut().zip(words.remainder()) {
        *to = *from;
    }
    hash = mix(hash, u64::from_le_bytes(last));
    // The bucket comes from the low bits and the tag from the top 7: mix both ways.
    let hash = hash ^ (hash >> 29);
    hash.wrapping_mul(MIX) ^ (hash >> 32)
}

/// Whether two tokens are the same, eight bytes at a time: V8 runs the byte-wise
/// `memcmp` a string comparison compiles to at a third of the speed.
fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    a.len() == b.len()
        && a_words.remainder() == b_words.remainder()
        && a_words.zip(b_words).all(|(x, y)| {
            u64::from_le_bytes(x.try_into().unwrap_or_default())
                == u64::from_le_bytes(y.try_into().unwrap_or_default())
        })
}

const TAIL_BYTES: usize = 32;
const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// Keys of the token map are [`token_hash`]es, already mixed: used as they are.
#[derive(Default)]
pub struct HashIsKey(u64);

impl Hasher for HashIsKey {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; anything else still spreads.
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(MIX);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Tokens by [`token_hash`]; tokens with the same hash share a bucket.
type TokenMap = HashMap<u64, Vec<(Rc<str>, Entry)>, BuildHasherDefault<HashIsKey>>;

/// What a verified token means for the request, computed once and reused on hits.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// Who vouched for it: a provider (a verified JWT) or an exchange.
    pub authenticator: Authenticator,
    /// Header values to set upstream, precomputed from the claims.
    pub headers: Vec<(Rc<str>, Rc<str>)>,
    pub claims: Rc<Map<String, Value>>,
    /// SHA-256 of the claims JSON, computed at the first central decision and kept with
    /// the cached identity: the decision cache's key holds it instead of the claims.
    pub claims_digest: OnceCell<[u8; 32]>,
    /// What revocation checks look at (status reference, sub/sid/iat), read once at
    /// verification for providers with `revocation`: cache hits check it without parsing.
    pub revocable: Option<Revocable>,
}

impl Identity {
    pub fn new(
        authenticator: Authenticator,
        headers: Vec<(Rc<str>, Rc<str>)>,
        claims: Rc<Map<String, Value>>,
    ) -> Identity {
        Identity {
            authenticator,
            headers,
            claims,
            claims_digest: OnceCell::new(),
            revocable: None,
        }
    }

    pub fn claims_digest(&self) -> &[u8; 32] {
        self.claims_digest.get_or_init(|| {
            let json = serde_json::to_vec(self.claims.as_ref()).unwrap_or_default();
            hmac_sha256::Hash::hash(&json)
        })
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub lifetime: Lifetime,
    pub identity: Rc<Identity>,
}

/// A bounded map from (provider, token) to the verified identity, evicting the oldest
/// insertion first. (Evicting "any" entry of a hash map is not random: under churn it
/// keeps evicting the same buckets, so a fixed subset stays and the rest always misses.)
#[derive(Debug)]
pub struct TokenCache {
    per_provider: Vec<TokenMap>,
    /// Insertion order. May hold keys already gone (removed, expired, cleared); those
    /// are skipped when evicting and dropped when the queue is compacted.
    order: VecDeque<(usize, Rc<str>)>,
    entries: usize,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

pub const DEFAULT_MAX_ENTRIES: usize = 4096;
/// Tokens are kept whole; this bounds the memory they take (plus per-entry overhead).
pub const DEFAULT_MAX_BYTES: usize = 8 * 1024 * 1024;

impl TokenCache {
    pub fn new(providers: usize, max_entries: usize, max_bytes: usize) -> TokenCache {
        TokenCache {
            per_provider: (0..providers).map(|_| TokenMap::default()).collect(),
            order: VecDeque::new(),
            entries: 0,
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    pub fn get(&self, provider: usize, token: &str) -> Option<&Entry> {
        let bucket = self.per_provider.get(provider)?.get(&token_hash(token))?;
        bucket
            .iter()
            .find(|(key, _)| same_token(key, token))
            .map(|(_, entry)| entry)
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn remove(&mut self, provider: usize, token: &str) {
        let Some(map) = self.per_provider.get_mut(provider) else {
            return;
        };
        let hash = token_hash(token);
        let Some(bucket) = map.get_mut(&hash) else {
            return;
        };
        let before = bucket.len();
        bucket.retain(|(key, _)| !same_token(key, token));
        if bucket.len() < before {
            self.entries -= 1;
            self.bytes -= token.len();
        }
        if bucket.is_empty() {
            map.remove(&hash);
        }
    }

    /// Stores an entry, evicting the oldest entries when full.
    pub fn insert(&mut self, provider: usize, token: &str, entry: Entry) {
        if token.len() > self.max_bytes
            || self.max_entries == 0
            || provider >= self.per_provider.len()
        {
            return;
        }
        self.remove(provider, token);
        while self.entries >= self.max_entries || self.bytes + token.len() > self.max_bytes {
            if !self.evict_oldest() {
                return;
            }
        }
        let key: Rc<str> = Rc::from(token);
        if let Some(map) = self.per_provider.get_mut(provider) {
            let bucket = map.entry(token_hash(token)).or_default();
            bucket.push((key.clone(), entry));
            self.entries += 1;
            self.bytes += token.len();
            self.order.push_back((provider, key));
        }
        if self.order.len() > 2 * self.max_entries + 64 {
            self.compact_order();
        }
    }

    /// Whether a queued key is still the live one (not removed, nor removed and
    /// inserted again later, which queued a newer copy).
    fn is_live(&self, provider: usize, key: &Rc<str>) -> bool {
        self.per_provider
            .get(provider)
            .and_then(|map| map.get(&token_hash(key)))
            .is_some_and(|bucket| bucket.iter().any(|(live, _)| Rc::ptr_eq(live, key)))
    }

    fn evict_oldest(&mut self) -> bool {
        while let Some((provider, key)) = self.order.pop_front() {
            if self.is_live(provider, &key) {
                self.remove(provider, &key);
                return true;
            }
        }
        false
    }

    fn compact_order(&mut self) {
        let order = std::mem::take(&mut self.order);
        self.order = order
            .into_iter()
            .filter(|(p, k)| self.is_live(*p, k))
            .collect();
    }

    /// Forgets everything a provider verified: its keys changed.
    pub fn clear_provider(&mut self, provider: usize) {
        if let Some(map) = self.per_provider.get_mut(provider) {
            for (key, _) in map.values().flatten() {
                self.entries -= 1;
                self.bytes -= key.len();
            }
            map.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(exp: i64) -> Entry {
        Entry {
            lifetime: Lifetime {
                exp: Some(exp),
                nbf: None,
            },
            identity: Rc::new(Identity::new(
                Authenticator::Provider(0),
                vec![],
                Rc::new(Map::new()),
            )),
        }
    }

    #[test]
    fn a_different_token_never_hits() {
        let mut cache = TokenCache::new(2, 10, 1000);
        cache.insert(0, "a.b.c", entry(100));
        assert!(cache.get(0, "a.b.c").is_some());
        assert!(cache.get(0, "a.b.d").is_none());
        assert!(
            cache.get(1, "a.b.c").is_none(),
            "another provider's verification does not count"
        );
    }

    #[test]
    fn tokens_that_differ_only_before_the_hashed_tail_are_told_apart() {
        let tail = "s".repeat(64);
        let (first, second) = (format!("head-one.{tail}"), format!("head-two.{tail}"));
        let mut cache = TokenCache::new(1, 10, 10_000);
        cache.insert(0, &first, entry(100));
        assert!(cache.get(0, &first).is_some());
        assert!(
            cache.get(0, &second).is_none(),
            "same hash, different token"
        );
        cache.insert(0, &second, entry(200));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(0, &first).unwrap().lifetime.exp, Some(100));
        assert_eq!(cache.get(0, &second).unwrap().lifetime.exp, Some(200));
    }

    #[test]
    fn token_hash_spreads_signature_tails_over_buckets_and_tags() {
        let hashes: Vec<u64> = (0..4096u32)
            .map(|i| token_hash(&format!("header.payload.sig{i:08}")))
            .collect();
        let distinct = |f: &dyn Fn(u64) -> u64| {
            hashes
                .iter()
                .map(|h| f(*h))
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        assert_eq!(distinct(&|h| h), 4096);
        assert!(
            distinct(&|h| h & 0xfff) > 2400,
            "low bits choose the bucket"
        );
        assert_eq!(distinct(&|h| h >> 57), 128, "top 7 bits are the tag");
    }

    #[test]
    fn entry_count_stays_bounded() {
        let mut cache = TokenCache::new(1, 3, 1000);
        for i in 0..50 {
            cache.insert(0, &format!("token-{i}"), entry(100));
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(0, "token-49").is_some());
    }

    #[test]
    fn byte_budget_stays_bounded() {
        let mut cache = TokenCache::new(1, 100, 25);
        for i in 0..20 {
            cache.insert(0, &format!("token-{i:04}"), entry(100));
        }
        assert!(cache.bytes <= 25);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn oldest_entries_are_evicted_first() {
        let mut cache = TokenCache::new(1, 3, 1000);
        for i in 0..10 {
            cache.insert(0, &format!("token-{i}"), entry(100));
            assert!(cache.get(0, &format!("token-{i}")).is_some());
        }
        let kept: Vec<bool> = (0..10)
            .map(|i| cache.get(0, &format!("token-{i}")).is_some())
            .collect();
        assert_eq!(
            kept,
            [false, false, false, false, false, false, false, true, true, true]
        );
    }

    #[test]
    fn reinserted_token_is_not_evicted_by_its_old_queue_slot() {
        let mut cache = TokenCache::new(1, 2, 1000);
        cache.insert(0, "a", entry(100));
        cache.insert(0, "b", entry(100));
        cache.remove(0, "a");
        cache.insert(0, "a", entry(100));
        cache.insert(0, "c", entry(100)); // evicts b, the oldest live entry
        assert!(cache.get(0, "a").is_some());
        assert!(cache.get(0, "b").is_none());
        assert!(cache.get(0, "c").is_some());
    }

    #[test]
    fn insertion_order_queue_stays_bounded_under_churn() {
        let mut cache = TokenCache::new(1, 4, 1000);
        for i in 0..1000 {
            let token = format!("t{i}");
            cache.insert(0, &token, entry(100));
            cache.remove(0, &token);
        }
        assert!(cache.order.len() <= 2 * 4 + 64);
        assert!(cache.is_empty());
    }

    #[test]
    fn clearing_a_provider_forgets_its_tokens_only() {
        let mut cache = TokenCache::new(2, 10, 1000);
        cache.insert(0, "a", entry(100));
        cache.insert(1, "b", entry(100));
        cache.clear_provider(0);
        assert!(cache.get(0, "a").is_none());
        assert!(cache.get(1, "b").is_some());
        assert_eq!(cache.len(), 1);
    }
}
