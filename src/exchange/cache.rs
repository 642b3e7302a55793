//! The per-VM copy of exchange answers, in front of shared data: a cached request reads
//! no shared data at all. Entries keep the shared record's bound (`until`), so a VM never
//! serves an identity longer than the shared record allows.

use super::TokenKey;
use crate::clock::Clock;
use crate::error::AuthnError;
use crate::token::cache::Identity;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

#[derive(Debug, Clone, PartialEq)]
pub enum Cached {
    Active(Rc<Identity>),
    Refused(AuthnError),
}

#[derive(Debug)]
struct Entry {
    /// Valid while `now < until` (seconds).
    until: u64,
    value: Cached,
}

#[derive(Debug, Default)]
struct PerExchange {
    entries: HashMap<TokenKey, Entry>,
    /// Insertion order, for eviction; may hold keys already replaced or gone.
    order: VecDeque<TokenKey>,
    max_entries: usize,
}

#[derive(Debug, Default)]
pub struct ExchangeCache {
    exchanges: Vec<PerExchange>,
}

impl ExchangeCache {
    /// One map per exchange, each bounded by its `max_entries`.
    pub fn new(max_entries: impl IntoIterator<Item = u64>) -> ExchangeCache {
        ExchangeCache {
            exchanges: max_entries
                .into_iter()
                .map(|max| PerExchange {
                    max_entries: usize::try_from(max).unwrap_or(usize::MAX),
                    ..PerExchange::default()
                })
                .collect(),
        }
    }

    /// The live entry for a token; an expired one is dropped.
    /// The answer kept for `key`, while it lasts (judged without reading the clock
    /// unless it ends within the clock's window).
    pub fn get(&mut self, exchange: usize, key: TokenKey, clock: &Clock<'_>) -> Option<Cached> {
        let per = self.exchanges.get_mut(exchange)?;
        match per.entries.get(&key) {
            Some(entry) if clock.judge(|now| now < entry.until) => Some(entry.value.clone()),
            Some(_) => {
                per.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&mut self, exchange: usize, key: TokenKey, until: u64, value: Cached, now: u64) {
        let Some(per) = self.exchanges.get_mut(exchange) else {
            return;
        };
        if per.max_entries == 0 || until <= now {
            return;
        }
        if !per.entries.contains_key(&key) && per.entries.len() >= per.max_entries {
            per.entries.retain(|_, entry| now < entry.until);
            while per.entries.len() >= per.max_entries {
                let Some(oldest) = per.order.pop_front() else {
                    break;
                };
                per.entries.remove(&oldest);
            }
        }
        per.entries.insert(key, Entry { until, value });
        per.order.push_back(key);
        if per.order.len() > 2 * per.max_entries + 64 {
            let entries = &per.entries;
            per.order.retain(|key| entries.contains_key(key));
        }
    }

    pub fn len(&self) -> usize {
        self.exchanges.iter().map(|per| per.entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Cached {
        Cached::Refused(AuthnError::Inactive)
    }

    #[test]
    fn entries_expire_at_their_bound() {
        let mut cache = ExchangeCache::new([10]);
        cache.insert(0, TokenKey(1), 105, refused(), 100);
        assert_eq!(
            cache.get(0, TokenKey(1), &Clock::at_secs(104)),
            Some(refused())
        );
        assert_eq!(cache.get(0, TokenKey(1), &Clock::at_secs(105)), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_stays_within_max_entries() {
        let mut cache = ExchangeCache::new([16, 4]);
        for i in 0..1000 {
            cache.insert(0, TokenKey(i), 200, refused(), 100);
            cache.insert(1, TokenKey(i), 200, refused(), 100);
        }
        assert_eq!(cache.len(), 20);
        assert_eq!(
            cache.get(0, TokenKey(999), &Clock::at_secs(100)),
            Some(refused())
        );
        assert_eq!(cache.get(0, TokenKey(0), &Clock::at_secs(100)), None);
    }

    #[test]
    fn an_already_expired_answer_is_not_stored() {
        let mut cache = ExchangeCache::new([10]);
        cache.insert(0, TokenKey(1), 100, refused(), 100);
        assert!(cache.is_empty());
    }
}
