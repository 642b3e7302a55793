//! Verification micro-benchmark: the filter's `PublicKey::verify` beside the paths it
//! replaced, on fixed vectors (vectors.json), timed by a clock passed in: Envoy's host
//! clock inside V8, `Instant` natively.
//!
//! The filter's modules are compiled in with `#[path]` rather than through a dependency on
//! the `tokengate` crate: on wasm32 that crate defines the module's `_initialize` (its
//! `proxy_wasm::main!`), which would register the filter instead of this benchmark.

#[path = "../../../src/crypto/mod.rs"]
pub mod crypto;
/// The filter's repeated-member check, which its key set reader calls.
#[path = "../../../src/json.rs"]
pub mod json;
#[path = "../../../src/token/jwks.rs"]
#[doc(hidden)]
pub mod token_jwks;
/// The filter's `crate::token::jwks`, where its code looks for it.
pub mod token {
    pub use super::token_jwks as jwks;
}

pub mod candidates;
pub mod mont_variants;
pub mod old_montgomery;
pub mod old_rsa_verify;
pub mod simd_square;
pub mod suite;

#[cfg(target_arch = "wasm32")]
mod host;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    host::register();
}}
