//! tokengate: JWT authentication and authorization for Envoy, as a proxy-wasm filter.
//!
//! Everything except [`host`] is a pure core: it takes inputs (headers, time, key
//! sets) and returns decisions. Only [`host`] talks to proxy-wasm. See ARCHITECTURE.md.

pub mod alg;
pub mod b64;
pub mod cache;
pub mod claims;
pub mod config;
pub mod crypto;
pub mod deny;
pub mod ed25519_verify;
pub mod error;
pub mod extract;
pub mod flow;
pub mod host;
pub mod jwks;
pub mod jwt;
mod montgomery;
pub mod p256_verify;
pub mod remote;
pub mod rsa_verify;
pub mod rules;
/// Signing needs the `cli` feature: the filter only verifies, so none of it ships in
/// the .wasm.
#[cfg(feature = "cli")]
pub mod sign;
pub mod stats;
#[cfg(test)]
mod testutil;

/// The crate version, logged by the filter at VM start.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    host::register();
}}
