//! The only code that talks to proxy-wasm: Envoy callbacks become core calls, core
//! decisions become host calls.

mod http;
mod root;

pub use root::register;
