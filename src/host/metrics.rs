//! Metric ids, defined on first use. Envoy merges same-named metrics across VMs.
//!
//! Counters of the request path are tallied in the VM and flushed at most every
//! [`FLUSH_MS`] (by the next request or the tick): two `increment_metric` host calls per
//! request were a measurable part of a cached request. Counters of the key machinery
//! (rare) go to Envoy at once.

use crate::stats::{Counter, MetricNames};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// The longest a tallied count waits before Envoy sees it, under traffic. When traffic
/// stops, the tick flushes what is left (it runs every `BUSY_TICK_MS` while counts wait).
pub const FLUSH_MS: u64 = 100;

#[derive(Default)]
pub struct Metrics {
    /// Exchange and rule names by index, for the names of their counters.
    names: MetricNames,
    counters: RefCell<HashMap<Counter, u32>>,
    /// Gauges and histograms, by name.
    gauges: RefCell<HashMap<String, u32>>,
    /// Counts not yet given to Envoy; a handful of distinct counters at most.
    pending: RefCell<Vec<(Counter, u64)>>,
    last_flush_ms: Cell<u64>,
}

impl Metrics {
    pub fn new(names: MetricNames) -> Metrics {
        Metrics {
            names,
            ..Metrics::default()
        }
    }

    /// Counts one event now.
    pub fn increment(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Counts one event at the next flush.
    pub fn tally(&self, counter: Counter) {
        let mut pending = self.pending.borrow_mut();
        match pending.iter_mut().find(|(c, _)| *c == counter) {
            Some((_, count)) => *count += 1,
            None => pending.push((counter, 1)),
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.borrow().is_empty()
    }

    /// Flushes the tallies if the last flush is [`FLUSH_MS`] old.
    pub fn flush_if_due(&self, now_ms: u64) {
        if now_ms.saturating_sub(self.last_flush_ms.get()) >= FLUSH_MS {
            self.flush(now_ms);
        }
    }

    /// Gives every tallied count to Envoy.
    pub fn flush(&self, now_ms: u64) {
        self.last_flush_ms.set(now_ms);
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for (counter, count) in pending {
            self.add(counter, count);
        }
    }

    fn add(&self, counter: Counter, count: u64) {
        let mut ids = self.counters.borrow_mut();
        let id = match ids.get(&counter) {
            Some(id) => *id,
            None => match hostcalls::define_metric(MetricType::Counter, &counter.name(&self.names))
            {
                Ok(id) => *ids.entry(counter).or_insert(id),
                Err(_) => return,
            },
        };
        let _ = hostcalls::increment_metric(id, i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn set_gauge(&self, name: &str, value: u64) {
        self.record(MetricType::Gauge, name, value);
    }

    /// Records one value of a histogram (Envoy keeps the buckets).
    pub fn record_histogram(&self, name: &str, value: u64) {
        self.record(MetricType::Histogram, name, value);
    }

    fn record(&self, kind: MetricType, name: &str, value: u64) {
        let mut ids = self.gauges.borrow_mut();
        let id = match ids.get(name) {
            Some(id) => *id,
            None => match hostcalls::define_metric(kind, name) {
                Ok(id) => *ids.entry(name.to_owned()).or_insert(id),
                Err(_) => return,
            },
        };
        let _ = hostcalls::record_metric(id, value);
    }
}
