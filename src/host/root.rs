//! The root context: configuration, per-VM state, metrics.

use super::http::Http;
use crate::cache::{TokenCache, DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES};
use crate::config::Config;
use crate::stats::Counter;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MetricType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The source revision, set by the Makefile at build time.
pub const REVISION: &str = match option_env!("TOKENGATE_REVISION") {
    Some(rev) => rev,
    None => "unknown",
};

pub fn register() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { state: None }));
}

/// What every HTTP context of this VM shares (one VM per Envoy worker thread).
pub struct VmState {
    pub config: Config,
    pub cache: RefCell<TokenCache>,
    pub metrics: Metrics,
}

/// Metric ids, defined on first use. Envoy merges same-named metrics across VMs.
#[derive(Default)]
pub struct Metrics {
    ids: RefCell<HashMap<Counter, u32>>,
}

impl Metrics {
    pub fn increment(&self, counter: Counter) {
        let id = {
            let mut ids = self.ids.borrow_mut();
            match ids.get(&counter) {
                Some(id) => Some(*id),
                None => match hostcalls::define_metric(MetricType::Counter, &counter.name()) {
                    Ok(id) => {
                        ids.insert(counter, id);
                        Some(id)
                    }
                    Err(_) => None,
                },
            }
        };
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

struct Root {
    state: Option<Rc<VmState>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        log::info!(
            "tokengate {} (revision {REVISION}) starting",
            crate::VERSION
        );
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::from_json(&bytes) {
            Ok(config) => {
                let cache = TokenCache::new(
                    config.providers.len(),
                    DEFAULT_MAX_ENTRIES,
                    DEFAULT_MAX_BYTES,
                );
                log::info!(
                    "tokengate: configured {} provider(s), {} rule(s)",
                    config.providers.len(),
                    config.rules.len()
                );
                self.state = Some(Rc::new(VmState {
                    config,
                    cache: RefCell::new(cache),
                    metrics: Metrics::default(),
                }));
                true
            }
            Err(e) => {
                log::error!("tokengate: configuration rejected: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        Some(Box::new(Http::new(state)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
