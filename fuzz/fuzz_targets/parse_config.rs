//! Any bytes as a configuration document: an error with a path, or a config.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = tokengate::config::Config::from_json(data) {
        let _ = e.to_string();
    }
});
