//! Any string as a token: verification must return, never panic.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tokengate::config::{Config, KeySource};

thread_local! {
    // The config holds Rc (the filter is single-threaded per VM); libFuzzer runs on one thread.
    static CONFIG: Config = common::config();
}

fuzz_target!(|data: &[u8]| {
    CONFIG.with(|config| run(config, data));
});

fn run(config: &Config, data: &[u8]) {
    let Some(provider) = config.providers.first() else { return };
    let KeySource::Inline(keys) = &provider.keys else { return };
    let token = String::from_utf8_lossy(data);
    let _ = tokengate::token::jwt::verify(&token, &provider.policy, keys, common::NOW);
    let _ = tokengate::token::jwt::looks_like_jwt(&token);
}
