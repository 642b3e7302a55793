//! Verification micro-benchmark: the filter's `PublicKey::verify` beside the paths it
//! replaced, on fixed vectors (vectors.json), timed by a clock passed in: Envoy's host
//! clock inside V8, `Instant` natively.
//!
//! The filter's modules are compiled in with `#[path]` rather than through a dependency on
//! the `tokengate` crate: on wasm32 that crate defines the module's `_initialize` (its
//! `proxy_wasm::main!`), which would register the filter instead of this benchmark.

#[path = "../../../src/alg.rs"]
pub mod alg;
#[path = "../../../src/b64.rs"]
pub mod b64;
#[path = "../../../src/crypto.rs"]
pub mod crypto;
#[path = "../../../src/ed25519_verify.rs"]
pub mod ed25519_verify;
#[path = "../../../src/jwks.rs"]
pub mod jwks;
#[path = "../../../src/montgomery.rs"]
pub mod montgomery;
#[path = "../../../src/p256_verify.rs"]
pub mod p256_verify;
#[path = "../../../src/rsa_verify.rs"]
pub mod rsa_verify;

pub mod candidates;
pub mod mont_variants;
pub mod old_rsa_verify;
pub mod suite;

#[cfg(target_arch = "wasm32")]
mod host;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    host::register();
}}
