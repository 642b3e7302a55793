//! Any request (method, path, headers split from the input) through the whole flow.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tokengate::clock::Clock;
use tokengate::config::Config;
use tokengate::flow::{decide, Caches, Services};
use tokengate::token::extract::Request;

thread_local! {
    // The config holds Rc (the filter is single-threaded per VM); libFuzzer runs on one thread.
    static CONFIG: Config = common::config();
}

fuzz_target!(|data: &[u8]| {
    CONFIG.with(|config| run(config, data));
});

fn run(config: &Config, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or_default().to_owned();
    let path = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
        .collect();
    let request = Request { method, path, host: "fuzz".into(), headers };
    let mut caches = Caches::for_config(config);
    let clock = Clock::at_secs(common::NOW);
    for waited in [false, true] {
        let _ = decide(config, Services::local(), &request, &clock, &mut caches, waited);
    }
}
