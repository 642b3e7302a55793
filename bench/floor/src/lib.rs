//! The floor filter for `make bench`: a root context and an HTTP context that reads the
//! `authorization` request header and continues. Whatever tokengate costs on top of this
//! is its own work; what this costs is Envoy's Wasm plumbing.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor;

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        // Read it (one host call and a copy into the VM), use it trivially, go on.
        let _present = self.get_http_request_header("authorization").is_some();
        Action::Continue
    }
}
