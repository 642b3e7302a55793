//! tokengate: JWT authentication and authorization for Envoy, as a proxy-wasm filter.
//!
//! Everything except [`host`] is a pure core: it takes inputs (headers, time, key
//! sets) and returns decisions. Only [`host`] talks to proxy-wasm. See ARCHITECTURE.md.

pub mod clock;
pub mod config;
pub mod crypto;
pub mod deny;
pub mod error;
pub mod exchange;
pub mod flow;
pub mod host;
pub mod json;
pub mod login;
pub mod policy;
pub mod remote;
pub mod revocation;
pub mod stats;
#[cfg(test)]
mod testutil;
pub mod token;

/// The crate version, logged by the filter at VM start.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

// Not in the unit-test binary, which runs under a WASI runtime (make test-wasm) and has
// its own entry point.
#[cfg(all(target_arch = "wasm32", not(test)))]
proxy_wasm::main! {{
    host::register();
}}
