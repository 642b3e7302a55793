//! Browser login on the host: the identity provider's endpoints (each VM reads the
//! discovery document on its tick), randomness from WASI, and the token endpoint
//! callouts of login steps (made from, and answered in, the request's own context).

use super::http::apply_login_finish;
use super::keys::jitter;
use super::root::{now_ms, VmState};
use crate::flow::{self, LoginCall, LoginEndpoints, LoginService, Services};
use crate::login::{self, EndpointSource, Endpoints, MAX_TOKEN_RESPONSE_BYTES};
use crate::remote::backoff_ms;
use crate::token::extract::Request;
use proxy_wasm::hostcalls;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// A discovery document is read again this often (its endpoints rarely move).
const REFRESH_MS: u64 = 3600 * 1000;

/// One login's discovery, on this VM.
#[derive(Debug, Default)]
struct Discovery {
    endpoints: Option<Rc<Endpoints>>,
    /// The fetch under way.
    fetching: Option<u32>,
    failures: u32,
    next_fetch_ms: u64,
}

/// Every login's discovery and this VM's token endpoint callouts.
#[derive(Default)]
pub struct Logins {
    /// By provider index; `None` for providers without a discovered login.
    discovery: RefCell<Vec<Option<Discovery>>>,
    /// Token endpoint callouts by token id: the stream, the step, its request.
    calls: RefCell<HashMap<u32, (u32, LoginCall, Request)>>,
}

impl Logins {
    pub fn new(config: &crate::config::Config) -> Logins {
        let discovery = config
            .providers
            .iter()
            .map(|p| match p.login.as_deref().map(|l| &l.endpoints) {
                Some(EndpointSource::Discovery(_)) => Some(Discovery::default()),
                _ => None,
            })
            .collect();
        Logins {
            discovery: RefCell::new(discovery),
            calls: RefCell::new(HashMap::new()),
        }
    }

    pub fn needs_discovery(&self) -> bool {
        self.discovery.borrow().iter().any(Option::is_some)
    }

    /// Whether a fetch is under way or a first one is still to come.
    pub fn busy(&self) -> bool {
        self.discovery
            .borrow()
            .iter()
            .flatten()
            .any(|d| d.fetching.is_some() || (d.endpoints.is_none() && d.failures == 0))
            || !self.calls.borrow().is_empty()
    }

    pub fn endpoints(&self, provider: usize) -> LoginEndpoints {
        let discovery = self.discovery.borrow();
        match discovery.get(provider).and_then(Option::as_ref) {
            Some(Discovery {
                endpoints: Some(endpoints),
                ..
            }) => LoginEndpoints::Ready(endpoints.clone()),
            Some(d) if d.fetching.is_some() || d.failures == 0 => LoginEndpoints::Pending,
            _ => LoginEndpoints::Unavailable,
        }
    }

    /// Starts the discovery fetches that are due (from the root context).
    pub fn start_due_fetches(&self, state: &VmState, now_ms: u64) {
        let mut all = self.discovery.borrow_mut();
        for (provider, discovery) in all.iter_mut().enumerate() {
            let Some(discovery) = discovery else { continue };
            if discovery.fetching.is_some() || now_ms < discovery.next_fetch_ms {
                continue;
            }
            let Some(login) = state
                .config
                .providers
                .get(provider)
                .and_then(|p| p.login.as_deref())
            else {
                continue;
            };
            let EndpointSource::Discovery(uri) = &login.endpoints else {
                continue;
            };
            let headers = vec![
                (":method", "GET"),
                (":path", uri.path.as_str()),
                (":authority", uri.authority.as_str()),
                ("accept", "application/json"),
            ];
            match hostcalls::dispatch_http_call(
                &login.cluster,
                headers,
                None,
                vec![],
                Duration::from_millis(login.timeout_ms),
            ) {
                Ok(token) => discovery.fetching = Some(token),
                Err(status) => {
                    log::error!(
                        "tokengate: login discovery: callout to cluster {:?} failed: {status:?}",
                        login.cluster
                    );
                    failed(discovery, now_ms, state.nonce);
                }
            }
        }
    }

    /// A discovery answer (in the root context). Returns whether it was one.
    pub fn on_discovery_response(&self, state: &VmState, token_id: u32, body_size: usize) -> bool {
        let now = now_ms();
        let mut all = self.discovery.borrow_mut();
        let Some((provider, discovery)) = all.iter_mut().enumerate().find_map(|(i, d)| {
            d.as_mut()
                .filter(|d| d.fetching == Some(token_id))
                .map(|d| (i, d))
        }) else {
            return false;
        };
        discovery.fetching = None;
        let issuer = state
            .config
            .providers
            .get(provider)
            .map_or("", |p| p.policy.issuer.as_str());
        let (status, body) = response(body_size);
        match login::read_discovery(status, &body, issuer) {
            Some(endpoints) => {
                discovery.endpoints = Some(Rc::new(endpoints));
                discovery.failures = 0;
                discovery.next_fetch_ms = now.saturating_add(REFRESH_MS);
            }
            None => {
                log::error!(
                    "tokengate: login discovery for provider {:?}: no usable document (status {status})",
                    state.config.providers.get(provider).map_or("", |p| p.name.as_str())
                );
                failed(discovery, now, state.nonce);
            }
        }
        true
    }

    /// Makes a login step's token endpoint callout from the request's context. False
    /// when it could not be made.
    pub fn call(&self, context_id: u32, call: LoginCall, request: Request) -> bool {
        let callout = &call.callout;
        let headers: Vec<(&str, &str)> = callout
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        match hostcalls::dispatch_http_call(
            &callout.cluster,
            headers,
            Some(&callout.body),
            vec![],
            Duration::from_millis(callout.timeout_ms),
        ) {
            Ok(token) => {
                self.calls
                    .borrow_mut()
                    .insert(token, (context_id, call, request));
                true
            }
            Err(status) => {
                log::error!(
                    "tokengate: login: token endpoint callout to cluster {:?} failed: {status:?}",
                    callout.cluster
                );
                false
            }
        }
    }

    /// The stream ended: its callouts were cancelled.
    pub fn forget_context(&self, context_id: u32) {
        self.calls
            .borrow_mut()
            .retain(|_, (context, _, _)| *context != context_id);
    }
}

/// After a failed fetch, the next one waits as a failed key fetch does (doubling from
/// 1 s, jittered, capped lower while no endpoints are known).
fn failed(discovery: &mut Discovery, now_ms: u64, nonce: u64) {
    discovery.failures = discovery.failures.saturating_add(1);
    let backoff = backoff_ms(
        discovery.failures,
        discovery.endpoints.is_some(),
        jitter(nonce, now_ms),
    );
    discovery.next_fetch_ms = now_ms.saturating_add(backoff);
}

/// The callout answer's status (0 when none: a reset or a local failure) and body, capped.
fn response(body_size: usize) -> (u32, Vec<u8>) {
    (
        super::exchanges::callout_status().unwrap_or(0),
        super::exchanges::callout_body(body_size, MAX_TOKEN_RESPONSE_BYTES),
    )
}

/// A token endpoint answer (in the request's context). Returns whether it was one.
pub fn on_response(state: &VmState, token_id: u32, body_size: usize) -> bool {
    let Some((context_id, call, request)) = state.logins.calls.borrow_mut().remove(&token_id)
    else {
        return false;
    };
    let (status, body) = response(body_size);
    if status != 200 {
        log::warn!("tokengate: login: token endpoint answered status {status}");
    }
    let finish = {
        let login_service = HostLogin { state };
        let keyring = super::keys::HostKeyring {
            store: &state.keys,
            metrics: &state.metrics,
        };
        let services = Services {
            keyring: &keyring,
            exchanges: &crate::flow::NoExchanges,
            policy: &crate::flow::NoPolicy,
            login: &login_service,
            revocations: &crate::flow::NoRevocations,
        };
        flow::finish_login(
            &state.config,
            services,
            &call,
            &request,
            status,
            &body,
            now_ms() / 1000,
        )
    };
    if hostcalls::set_effective_context(context_id).is_err() {
        return true;
    }
    apply_login_finish(state, context_id, &request, finish);
    true
}

/// The flow's view of logins on this VM.
pub struct HostLogin<'a> {
    pub state: &'a VmState,
}

impl LoginService for HostLogin<'_> {
    fn endpoints(&self, provider: usize) -> LoginEndpoints {
        self.state.logins.endpoints(provider)
    }

    fn random(&self, out: &mut [u8]) -> bool {
        getrandom::getrandom(out).is_ok()
    }
}
