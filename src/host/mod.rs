//! The only code that talks to proxy-wasm: Envoy callbacks become core calls, core
//! decisions become host calls. Host calls go through `proxy_wasm::hostcalls`, whose
//! errors we handle, not the SDK's trait helpers, which unwrap.

mod central;
mod exchanges;
mod http;
mod keys;
mod login;
mod metrics;
mod revocation;
mod root;

pub use root::register;
