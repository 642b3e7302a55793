//! Inside Envoy: a root context that runs the suite when configured and logs one line per
//! row (`bench|...`), then `bench|ENGINE|done`. Envoy configures a singleton wasm service
//! twice at startup, in two fresh VMs (one to validate the configuration): two runs. The plugin configuration may be
//! `{"engine": "v8", "rounds": 7, "round_ms": 20}` (`engine` labels the lines).

use crate::suite::{self, Settings};
use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::LogLevel;
use std::time::UNIX_EPOCH;

pub fn register() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Bench));
}

struct Bench;

impl Context for Bench {}

fn now_ns() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl RootContext for Bench {
    fn on_configure(&mut self, _: usize) -> bool {
        let config: serde_json::Value = self
            .get_plugin_configuration()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let number =
            |name: &str, default: u64| config.get(name).and_then(|v| v.as_u64()).unwrap_or(default);
        let settings = Settings {
            rounds: usize::try_from(number("rounds", 7)).unwrap_or(7),
            round_ns: number("round_ms", 20) * 1_000_000,
            vectors: config
                .get("vectors")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
        };
        let engine = config
            .get("engine")
            .and_then(|v| v.as_str())
            .unwrap_or("v8");
        log::info!("bench|{engine}|start");
        let result = suite::run(None, &now_ns, settings, &mut |row| {
            log::info!("{}", row.line(engine))
        });
        match result {
            Ok(()) => log::info!("bench|{engine}|done"),
            Err(e) => log::error!("bench|{engine}|error|{e}"),
        }
        true
    }
}
