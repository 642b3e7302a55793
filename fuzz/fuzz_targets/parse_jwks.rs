//! Any bytes as a JWKS response.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = tokengate::token::jwks::KeySet::parse(data) {
        for skipped in &parsed.skipped {
            let _ = skipped.reason.describe();
        }
    }
});
