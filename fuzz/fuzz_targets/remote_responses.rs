//! Any callout answer: JWKS and discovery bodies, Cache-Control values, URIs, records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::remote::{read_discovery, read_jwks, ttl_secs, Lease, SharedKeys, Uri};

fuzz_target!(|data: &[u8]| {
    let status = data.first().map_or(200, |b| if b % 4 == 0 { 500 } else { 200 });
    let _ = read_jwks(status, data);
    let _ = read_discovery(status, data, "https://idp.test");
    let text = String::from_utf8_lossy(data);
    let _ = ttl_secs(Some(&text), 600);
    let _ = Uri::parse(&text);
    let _ = Lease::decode(data);
    let _ = SharedKeys::decode(data);
});
