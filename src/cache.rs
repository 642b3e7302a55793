//! The verified-token cache, one per VM (per Envoy worker). Keyed by provider and the
//! whole token, so a different token can never hit; the lifetime is re-checked on every
//! hit by the caller; only successes are stored.

use crate::jwt::Lifetime;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::rc::Rc;

/// What a verified token means for the request, computed once and reused on hits.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub provider: usize,
    /// Header values to set upstream, precomputed from the claims.
    pub headers: Vec<(String, String)>,
    pub claims: Rc<Map<String, Value>>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub lifetime: Lifetime,
    pub identity: Rc<Identity>,
}

/// A bounded map from (provider, token) to the verified identity.
#[derive(Debug)]
pub struct TokenCache {
    per_provider: Vec<HashMap<String, Entry>>,
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
            per_provider: (0..providers).map(|_| HashMap::new()).collect(),
            entries: 0,
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    pub fn get(&self, provider: usize, token: &str) -> Option<&Entry> {
        self.per_provider.get(provider)?.get(token)
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn remove(&mut self, provider: usize, token: &str) {
        if let Some(map) = self.per_provider.get_mut(provider) {
            if map.remove(token).is_some() {
                self.entries -= 1;
                self.bytes -= token.len();
            }
        }
    }

    /// Stores an entry, evicting when full. `now` lets expired entries go first.
    pub fn insert(&mut self, provider: usize, token: &str, entry: Entry, now: i64) {
        if token.len() > self.max_bytes || self.max_entries == 0 {
            return;
        }
        self.remove(provider, token);
        while self.entries >= self.max_entries || self.bytes + token.len() > self.max_bytes {
            if !self.evict_one(now) {
                return;
            }
        }
        if let Some(map) = self.per_provider.get_mut(provider) {
            map.insert(token.to_owned(), entry);
            self.entries += 1;
            self.bytes += token.len();
        }
    }

    /// Drops an expired entry if one is at hand, else an arbitrary one. The hash map's
    /// order is random per process, so an attacker can't pick what stays.
    fn evict_one(&mut self, now: i64) -> bool {
        for map in &mut self.per_provider {
            let victim = map
                .iter()
                .take(8)
                .find(|(_, e)| e.lifetime.exp.is_some_and(|exp| exp <= now))
                .or_else(|| map.iter().next())
                .map(|(k, _)| k.clone());
            if let Some(victim) = victim {
                map.remove(&victim);
                self.entries -= 1;
                self.bytes -= victim.len();
                return true;
            }
        }
        false
    }

    /// Forgets everything a provider verified: its keys changed.
    pub fn clear_provider(&mut self, provider: usize) {
        if let Some(map) = self.per_provider.get_mut(provider) {
            self.entries -= map.len();
            self.bytes -= map.keys().map(String::len).sum::<usize>();
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
            identity: Rc::new(Identity {
                provider: 0,
                headers: vec![],
                claims: Rc::new(Map::new()),
            }),
        }
    }

    #[test]
    fn a_different_token_never_hits() {
        let mut cache = TokenCache::new(2, 10, 1000);
        cache.insert(0, "a.b.c", entry(100), 0);
        assert!(cache.get(0, "a.b.c").is_some());
        assert!(cache.get(0, "a.b.d").is_none());
        assert!(
            cache.get(1, "a.b.c").is_none(),
            "another provider's verification does not count"
        );
    }

    #[test]
    fn entry_count_stays_bounded() {
        let mut cache = TokenCache::new(1, 3, 1000);
        for i in 0..50 {
            cache.insert(0, &format!("token-{i}"), entry(100), 0);
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(0, "token-49").is_some());
    }

    #[test]
    fn byte_budget_stays_bounded() {
        let mut cache = TokenCache::new(1, 100, 25);
        for i in 0..20 {
            cache.insert(0, &format!("token-{i:04}"), entry(100), 0);
        }
        assert!(cache.bytes <= 25);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn clearing_a_provider_forgets_its_tokens_only() {
        let mut cache = TokenCache::new(2, 10, 1000);
        cache.insert(0, "a", entry(100), 0);
        cache.insert(1, "b", entry(100), 0);
        cache.clear_provider(0);
        assert!(cache.get(0, "a").is_none());
        assert!(cache.get(1, "b").is_some());
        assert_eq!(cache.len(), 1);
    }
}
