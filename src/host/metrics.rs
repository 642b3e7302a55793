//! Metric ids, defined on first use. Envoy merges same-named metrics across VMs.

use crate::stats::Counter;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Default)]
pub struct Metrics {
    counters: RefCell<HashMap<Counter, u32>>,
    gauges: RefCell<HashMap<String, u32>>,
}

impl Metrics {
    pub fn increment(&self, counter: Counter) {
        let mut ids = self.counters.borrow_mut();
        let id = match ids.get(&counter) {
            Some(id) => *id,
            None => match hostcalls::define_metric(MetricType::Counter, &counter.name()) {
                Ok(id) => *ids.entry(counter).or_insert(id),
                Err(_) => return,
            },
        };
        let _ = hostcalls::increment_metric(id, 1);
    }

    pub fn set_gauge(&self, name: &str, value: u64) {
        let mut ids = self.gauges.borrow_mut();
        let id = match ids.get(name) {
            Some(id) => *id,
            None => match hostcalls::define_metric(MetricType::Gauge, name) {
                Ok(id) => *ids.entry(name.to_owned()).or_insert(id),
                Err(_) => return,
            },
        };
        let _ = hostcalls::record_metric(id, value);
    }
}
