//! The per-request decision: a request and the time in, a [`Decision`] out (header
//! edits or a refusal, counters to move). No SDK types; the host applies the result.

use crate::clock::Clock;
use crate::config::{Config, KeySource, Provider};
use crate::crypto::b64;
use crate::deny::Deny;
use crate::error::{AuthnError, Refusal};
use crate::exchange::cache::{Cached, ExchangeCache};
use crate::exchange::callout::Callout;
use crate::exchange::record::State;
use crate::exchange::{Exchange, TokenKey};
use crate::login::{self, Endpoints, LoginError, LoginEvent, Redeem, Redirect, START_RANDOM_BYTES};
use crate::policy::authz::Facts;
use crate::policy::central::{self, Decision as PolicyDecision};
use crate::policy::paths;
use crate::policy::rules::{first_match, Authenticator, AuthnRequirement, Rule, RuleAction};
use crate::revocation::denylist::Denylist;
use crate::revocation::logout::{self, Logout, LogoutCheck, LogoutError};
use crate::revocation::status_list::StatusList;
use crate::revocation::Revocable;
use crate::stats::{AuthzEvent, Counter, ExchangeEvent, RevocationEvent, RuleEvent};
use crate::token::cache::{Entry, Identity, TokenCache, DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES};
use crate::token::extract::Source;
use crate::token::extract::{Found, HeaderEdit, Location, Request};
use crate::token::jwks::KeySet;
use crate::token::jwt;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::rc::Rc;

/// What to do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send it upstream after applying these edits, in order.
    Forward(Vec<HeaderEdit>),
    /// Answer it here.
    Deny(Deny),
    /// One of the filter's own endpoints (a minted-token JWKS, a login step) answers it.
    Reply(Reply),
    /// A login step needs the identity provider's token endpoint: make this callout,
    /// then finish with [`finish_login`].
    Call(LoginCall),
    /// Pause until these providers' keys change (first fetch, or a refetch for an
    /// unknown `kid`), these exchange answers arrive, or a bound passes; then decide
    /// again with `waited = true`.
    Wait(Waits),
}

/// A response of the filter's own, not a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub content_type: &'static str,
    pub body: String,
    /// More headers: a redirect's `location`, `set-cookie`s, `cache-control`.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// A 302 that nobody caches.
    fn redirect(redirect: Redirect) -> Reply {
        let mut headers = Vec::with_capacity(2 + redirect.set_cookies.len());
        headers.push(("location".to_owned(), redirect.location));
        headers.push(("cache-control".to_owned(), "no-store".to_owned()));
        headers.extend(
            redirect
                .set_cookies
                .into_iter()
                .map(|c| ("set-cookie".to_owned(), c)),
        );
        Reply {
            status: 302,
            content_type: "text/plain",
            body: String::new(),
            headers,
        }
    }

    /// A login failure as a short page: a fixed description, never a token or secret.
    pub fn login_failure(error: LoginError) -> Reply {
        Reply {
            status: error.status(),
            content_type: "text/html; charset=utf-8",
            body: format!(
                "<!doctype html><title>Sign-in failed</title><h1>Sign-in failed</h1><p>{}</p>",
                error.description()
            ),
            headers: vec![("cache-control".to_owned(), "no-store".to_owned())],
        }
    }
}

/// A login step waiting on the token endpoint.
#[derive(Debug, Clone)]
pub struct LoginCall {
    pub provider: usize,
    pub callout: Callout,
    pub step: LoginStep,
}

impl PartialEq for LoginCall {
    fn eq(&self, other: &Self) -> bool {
        self.provider == other.provider && self.callout == other.callout
    }
}
impl Eq for LoginCall {}

/// Which login step a token endpoint callout is for.
#[derive(Debug, Clone)]
pub enum LoginStep {
    /// The callback's code is being redeemed.
    Redeem(Rc<Redeem>),
    /// The session's refresh token is being used for this request (decided again with
    /// the new token once it comes).
    Refresh,
}

/// What a paused request waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waits {
    pub providers: Vec<usize>,
    /// (exchange, token key): an answer all workers will see in shared data.
    pub exchanges: Vec<(usize, TokenKey)>,
    /// The central policy's decision for this input key.
    pub central: Option<[u8; 32]>,
    /// These providers' login endpoints (discovery).
    pub logins: Vec<usize>,
    /// (provider, list URI): a status list being fetched.
    pub status_lists: Vec<(usize, Rc<str>)>,
}

/// What the host knows about a remote provider's keys right now.
#[derive(Debug, Clone)]
pub enum Keys {
    Ready(Rc<KeySet>),
    /// None yet, and a fetch is expected: worth waiting for.
    Pending,
    /// None, and nothing to wait for (fetches failing, backing off).
    Unavailable,
}

/// The host's view of remote key sets. Inline keys never go through here.
pub trait Keyring {
    fn keys(&self, provider: usize) -> Keys;
    /// A token's `kid` is not in the provider's set: true if a refetch is under way or
    /// was just started for it (rate-limited), so the request should wait for it.
    fn refetch_for_unknown_kid(&self, provider: usize) -> bool;
}

/// A keyring for configurations with only inline keys (and for tests).
pub struct NoRemoteKeys;

impl Keyring for NoRemoteKeys {
    fn keys(&self, _: usize) -> Keys {
        Keys::Unavailable
    }
    fn refetch_for_unknown_kid(&self, _: usize) -> bool {
        false
    }
}

/// What all workers know about an opaque token (shared data, in the host).
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// An answer: `State::Active` or `State::Refused`.
    Answer(State),
    /// A callout for it is under way (this worker's or another's); or was just started.
    Pending,
    /// No answer and none coming (the callout could not be made, or failed).
    Unavailable,
}

/// The host's side of exchanges: shared answers, single-flight callouts.
pub trait ExchangeStore {
    /// The shared answer for `key`; when there is none and `may_start`, claims the
    /// token's lease and starts the callout (then `Pending`).
    fn lookup(&self, exchange: usize, key: TokenKey, token: &str, may_start: bool) -> Lookup;
}

/// An exchange store for configurations without exchanges (and for tests).
pub struct NoExchanges;

impl ExchangeStore for NoExchanges {
    fn lookup(&self, _: usize, _: TokenKey, _: &str, _: bool) -> Lookup {
        Lookup::Unavailable
    }
}

/// The central policy service's answer for an input, as the host knows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    /// `cached`: from the decision cache rather than a callout just answered.
    Decided {
        decision: Rc<PolicyDecision>,
        cached: bool,
    },
    /// A callout for this input is under way (or was just started).
    Pending,
    /// No decision and none coming: `on_error` applies.
    Failed,
}

/// The host's side of central authorization: the decision cache and the callouts.
pub trait PolicyService {
    /// The decision for `input` (keyed by `key`); when there is none and `may_start`,
    /// starts the callout (then `Pending`).
    /// `input` builds the input document; called only when the service is asked.
    fn ask(&self, key: [u8; 32], input: &dyn Fn() -> String, may_start: bool) -> Ask;
}

/// For configurations without `authz_service` (and for tests).
pub struct NoPolicy;

impl PolicyService for NoPolicy {
    fn ask(&self, _: [u8; 32], _: &dyn Fn() -> String, _: bool) -> Ask {
        Ask::Failed
    }
}

/// What the host knows of a login's identity provider endpoints.
#[derive(Debug, Clone)]
pub enum LoginEndpoints {
    Ready(Rc<Endpoints>),
    /// The discovery document is being fetched.
    Pending,
    Unavailable,
}

/// The host's side of browser login: the identity provider's endpoints, randomness.
pub trait LoginService {
    fn endpoints(&self, provider: usize) -> LoginEndpoints;
    /// Fills `out` with random bytes (WASI `random_get` in the filter); false when
    /// there are none to be had (then no login starts).
    fn random(&self, out: &mut [u8]) -> bool;
}

/// For configurations without login (and for tests): static endpoints only.
pub struct NoLoginService;

impl LoginService for NoLoginService {
    fn endpoints(&self, _: usize) -> LoginEndpoints {
        LoginEndpoints::Unavailable
    }
    fn random(&self, _: &mut [u8]) -> bool {
        false
    }
}

/// What the host knows about a status list right now.
#[derive(Debug, Clone)]
pub enum ListState {
    /// This VM's verified copy, within its ttl.
    Ready(Rc<StatusList>),
    /// None usable, and a fetch is under way or was just asked for: worth waiting for.
    Pending,
    /// None usable, and none coming soon (fetches failing, backing off).
    Unavailable,
}

/// The host's side of revocation: status lists (fetched, shared, refreshed) and the
/// back-channel logout denylist, both per provider.
pub trait Revocations {
    /// The list at `uri` for `provider`; when none is usable, asks for a fetch. `Pending`
    /// only while this request may wait for it (the host bounds that: once per request,
    /// within its deadline), so the flow waits whenever it hears `Pending`: a request
    /// that first waited for its provider's keys may then wait for its list.
    fn status_list(&self, provider: usize, uri: &Rc<str>) -> ListState;
    /// The provider's denylist, when it has one with entries.
    fn denylist(&self, provider: usize) -> Option<Rc<Denylist>>;
}

/// For configurations without revocation (and for tests).
pub struct NoRevocations;

impl Revocations for NoRevocations {
    fn status_list(&self, _: usize, _: &Rc<str>) -> ListState {
        ListState::Unavailable
    }
    fn denylist(&self, _: usize) -> Option<Rc<Denylist>> {
        None
    }
}

/// The host services the flow consults.
#[derive(Clone, Copy)]
pub struct Services<'a> {
    pub keyring: &'a dyn Keyring,
    pub exchanges: &'a dyn ExchangeStore,
    pub policy: &'a dyn PolicyService,
    pub login: &'a dyn LoginService,
    pub revocations: &'a dyn Revocations,
}

impl Services<'static> {
    /// Inline keys only, no exchanges, no central policy.
    pub fn local() -> Services<'static> {
        Services {
            keyring: &NoRemoteKeys,
            exchanges: &NoExchanges,
            policy: &NoPolicy,
            login: &NoLoginService,
            revocations: &NoRevocations,
        }
    }
}

/// The VM's caches: verified JWTs, and exchange answers.
#[derive(Debug)]
pub struct Caches {
    pub tokens: TokenCache,
    pub exchanges: ExchangeCache,
}

impl Caches {
    pub fn for_config(config: &Config) -> Caches {
        let per_vm = u64::try_from(DEFAULT_MAX_ENTRIES).unwrap_or(u64::MAX);
        Caches {
            tokens: TokenCache::new(
                config.providers.len(),
                DEFAULT_MAX_ENTRIES,
                DEFAULT_MAX_BYTES,
            ),
            exchanges: ExchangeCache::new(
                config
                    .exchanges
                    .iter()
                    .map(|e| e.cache.max_entries.min(per_vm)),
            ),
        }
    }
}

/// Why one authenticator did not produce an identity.
enum NotVerified {
    Refused(AuthnError),
    /// Its provider's keys may arrive soon.
    WaitKeys(usize),
    /// The auth service's answer for this token is on its way.
    WaitExchange(usize, TokenKey),
    /// The token's status list is being fetched.
    WaitStatusList(usize, Rc<str>),
}

/// The outcome plus what the host should count and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub counters: Vec<Counter>,
    /// The matched rule's index in `Config::rules`, for logs.
    pub rule: Option<usize>,
    pub refusal: Option<Refusal>,
    /// What a dry-run rule would have refused (the request went through).
    pub dry_run: Option<Refusal>,
}

/// Decides one request. `caches` are the VM's; `waited` is true when the request
/// already paused once (it will not be asked to wait again).
pub fn decide(
    config: &Config,
    services: Services<'_>,
    request: &Request,
    clock: &Clock<'_>,
    caches: &mut Caches,
    waited: bool,
) -> Decision {
    if let Some(decision) = own_endpoint(config, services, request, clock, waited) {
        return decision;
    }
    let edits: Vec<HeaderEdit> = Vec::with_capacity(config.identity_headers.len() + 2);
    // Rules see the normalized path; one that could mean another path upstream is
    // refused before any rule runs. (Read only when something looks at the path.)
    let path = if config.reads.path {
        match paths::normalize(&request.path, config.allow_encoded_slashes) {
            Ok(path) => path,
            Err(e) => return refuse(config, Refusal::BadPath(e), None, Vec::new()),
        }
    } else {
        Cow::Borrowed("")
    };
    let Some((index, rule)) = first_match(&config.rules, request, &path) else {
        return refuse(config, Refusal::NoRuleMatched, None, Vec::new());
    };
    let step = Step {
        config,
        services,
        request,
        path: &path,
        index,
        rule,
        clock,
        waited,
    };
    let mut decision = step.decide(caches, edits);
    if let Outcome::Forward(edits) = &mut decision.outcome {
        strip_identity_headers(config, edits);
        strip_login_cookies(config, request, edits);
    }
    decision
}

/// Every identity header the filter does not set is removed, on every route: a client
/// can't spoof one. Blindly, without reading the request: the removal of an absent
/// header costs the host what reading it would, and a header the filter sets is
/// replaced in one call, never read, removed and added.
fn strip_identity_headers(config: &Config, edits: &mut Vec<HeaderEdit>) {
    let unset: Vec<HeaderEdit> = config
        .identity_headers
        .iter()
        .filter(|name| {
            !edits.iter().any(|edit| match edit {
                HeaderEdit::Set(set, _) | HeaderEdit::Remove(set) => set == *name,
                HeaderEdit::AddToResponse(..) => false,
            })
        })
        .map(|name| HeaderEdit::Remove(name.clone()))
        .collect();
    if !unset.is_empty() {
        edits.splice(0..0, unset);
    }
}

/// No login cookie (session, its chunks, sealed secrets, login state) reaches the
/// upstream: the cookie edits so far are applied to the request's cookies, those are
/// removed, and one edit says what is left.
fn strip_login_cookies(config: &Config, request: &Request, edits: &mut Vec<HeaderEdit>) {
    if !config.providers.iter().any(|p| p.login.is_some()) {
        return;
    }
    let mut cookie: Option<String> = request.header("cookie").map(str::to_owned);
    let mut touched = false;
    edits.retain(|edit| match edit {
        HeaderEdit::Remove(name) if &**name == "cookie" => {
            cookie = None;
            touched = true;
            false
        }
        HeaderEdit::Set(name, value) if &**name == "cookie" => {
            cookie = Some(value.to_string());
            touched = true;
            false
        }
        _ => true,
    });
    let Some(current) = cookie else {
        if touched {
            edits.push(HeaderEdit::Remove("cookie".into()));
        }
        return;
    };
    let names = config
        .providers
        .iter()
        .filter_map(|p| p.login.as_ref().map(|l| l.cookie_name.as_str()));
    match login::strip_cookies(&current, names) {
        Some(kept) if kept == current && !touched => {}
        Some(kept) => edits.push(HeaderEdit::Set("cookie".into(), kept.into())),
        None => edits.push(HeaderEdit::Remove("cookie".into())),
    }
}

/// One request under its matched rule.
struct Step<'a> {
    config: &'a Config,
    services: Services<'a>,
    request: &'a Request,
    /// The normalized path.
    path: &'a str,
    index: usize,
    rule: &'a Rule,
    clock: &'a Clock<'a>,
    waited: bool,
}

impl Step<'_> {
    fn decide(&self, caches: &mut Caches, mut edits: Vec<HeaderEdit>) -> Decision {
        let (config, request, rule_index) = (self.config, self.request, Some(self.index));
        let mut counters = Vec::with_capacity(3);
        let (requirement, optional) = match &self.rule.action {
            RuleAction::Anonymous => return self.authorize(None, edits, counters),
            RuleAction::Authn {
                requirement,
                optional,
            } => (requirement, *optional),
        };

        let (attempts, jwt_for_exchange) = attempts(config, requirement, request);
        if attempts.is_empty() {
            if jwt_for_exchange {
                let refusal = Refusal::Authn(AuthnError::UnexpectedJwt);
                return refuse(config, refusal, rule_index, counters);
            }
            if optional {
                return self.authorize(None, edits, counters);
            }
            return self.refuse_authn(AuthnError::Missing, None, counters);
        }

        let mut verified: Vec<(Rc<Identity>, &Found<'_>)> = Vec::new();
        let mut worst: Option<AuthnError> = None;
        // A login session whose token was refused (expired): refreshed or signed in again.
        let mut session_refused: Option<(usize, AuthnError)> = None;
        let mut waits = Waits::default();
        let context = Context {
            services: self.services,
            clock: self.clock,
            waited: self.waited,
        };
        for (authenticator, found) in &attempts {
            let result = match *authenticator {
                Authenticator::Provider(id) => match config.providers.get(id) {
                    Some(provider) => authenticate(
                        &context,
                        id,
                        provider,
                        &found.token,
                        &mut caches.tokens,
                        &mut counters,
                    ),
                    None => continue,
                },
                Authenticator::Exchange(id) => match config.exchanges.get(id) {
                    Some(exchange) => exchange_identity(
                        config,
                        &context,
                        id,
                        exchange,
                        &found.token,
                        &mut caches.exchanges,
                        &mut counters,
                    ),
                    None => continue,
                },
            };
            match result {
                Ok(identity) => {
                    verified.push((identity, found));
                    if matches!(requirement, AuthnRequirement::Any(_)) {
                        break;
                    }
                }
                Err(NotVerified::WaitKeys(id)) => waits.providers.push(id),
                Err(NotVerified::WaitExchange(id, key)) => waits.exchanges.push((id, key)),
                Err(NotVerified::WaitStatusList(id, uri)) => waits.status_lists.push((id, uri)),
                Err(NotVerified::Refused(e)) => {
                    if let Location::Cookie(name) = &found.location {
                        let login = login_provider(config, *authenticator);
                        let from_session = login
                            .and_then(|id| config.providers.get(id)?.login.as_ref())
                            .is_some_and(|l| l.cookie_name == *name);
                        if let (true, Some(id)) = (from_session, login) {
                            session_refused = Some((id, e));
                        }
                    }
                    if matches!(requirement, AuthnRequirement::All(_)) {
                        return refuse(config, Refusal::Authn(e), rule_index, counters);
                    }
                    if worst.is_none_or(|w| e.specificity() > w.specificity()) {
                        worst = Some(e);
                    }
                }
            }
        }
        let satisfied = match requirement {
            AuthnRequirement::Any(_) => !verified.is_empty(),
            AuthnRequirement::All(all) => verified.len() == all.len(),
        };
        if !satisfied {
            if waits != Waits::default() {
                return wait(waits, counters, rule_index);
            }
            // A JWT that only an exchange's source held is the reason only when no
            // provider had anything more specific to say about what it tried.
            let error = worst
                .or(jwt_for_exchange.then_some(AuthnError::UnexpectedJwt))
                .unwrap_or(AuthnError::Missing);
            return self.refuse_authn(error, session_refused, counters);
        }
        if let Some(call) = self.refresh_ahead(&verified) {
            return Decision {
                outcome: Outcome::Call(call),
                counters,
                rule: rule_index,
                refusal: None,
                dry_run: None,
            };
        }

        for (identity, found) in &verified {
            // An exchange's token (opaque, or a session id) never goes upstream.
            let keep = match identity.authenticator {
                Authenticator::Provider(id) => config
                    .providers
                    .get(id)
                    .is_some_and(|p| p.forward.keep_token),
                Authenticator::Exchange(_) => false,
            };
            if !keep {
                edits.push(found.location.removal(request));
            }
        }
        for (identity, _) in &verified {
            edits.extend(
                identity
                    .headers
                    .iter()
                    .map(|(n, v)| HeaderEdit::Set(n.clone(), v.clone())),
            );
        }
        let identity = verified.first().map(|(identity, _)| identity.as_ref());
        self.authorize(identity, edits, counters)
    }

    /// Authorization once authentication is settled: the rule's local conditions, then
    /// (hybrid) the central policy service. Local denials never cost a callout.
    fn authorize(
        &self,
        identity: Option<&Identity>,
        mut edits: Vec<HeaderEdit>,
        mut counters: Vec<Counter>,
    ) -> Decision {
        let (config, rule, rule_index) = (self.config, self.rule, Some(self.index));
        // A dry-run rule tries its authorization on live traffic: what it would refuse is
        // reported, and the request goes on as allowed. Authentication is enforced.
        let mut tried: Option<Refusal> = None;
        if let Some(authz) = &rule.authz {
            let facts = Facts {
                request: self.request,
                path: self.path,
                claims: identity.map(|i| i.claims.as_ref()),
            };
            if !authz.holds(&facts) {
                // Without a token, a route that could have had one asks for it.
                if identity.is_none() && matches!(rule.action, RuleAction::Authn { .. }) {
                    let refusal = Refusal::Authn(AuthnError::Missing);
                    return refuse(config, refusal, rule_index, counters);
                }
                if !rule.dry_run {
                    counters.push(Counter::Rule(self.index, RuleEvent::Denied));
                    counters.push(Counter::Denied(Refusal::Forbidden.reason()));
                    let deny = Deny::insufficient_scope(&config.realm, Some(&rule.name));
                    return Decision {
                        outcome: Outcome::Deny(deny),
                        counters,
                        rule: rule_index,
                        refusal: Some(Refusal::Forbidden),
                        dry_run: None,
                    };
                }
                tried = Some(Refusal::Forbidden);
            }
        }
        if let (true, Some(service)) = (rule.central, &config.authz_service) {
            let named = identity.map(|i| (self.authenticator_name(i.authenticator), i));
            // Included headers as the upstream gets them: an identity header carries
            // the filter's value (or none), never what the client sent.
            let headers: Vec<(&str, &str)> = service
                .include_headers
                .iter()
                .filter_map(|name| {
                    let value = if config.identity_headers.iter().any(|h| **h == **name) {
                        edits.iter().rev().find_map(|edit| match edit {
                            HeaderEdit::Set(set, value) if **set == **name => Some(&**value),
                            _ => None,
                        })
                    } else {
                        self.request.header(name)
                    };
                    Some((name.as_str(), value?))
                })
                .collect();
            let asked = central::Asked::new(
                self.request,
                self.path,
                headers,
                &config.query_sources,
                named,
            );
            let key = asked.key();
            match self
                .services
                .policy
                .ask(key, &|| asked.input(), !self.waited)
            {
                Ask::Decided { decision, cached } => {
                    if cached {
                        counters.push(Counter::AuthzService(AuthzEvent::CacheHit));
                    }
                    if decision.allow {
                        counters.push(Counter::AuthzService(AuthzEvent::Allowed));
                        edits.extend(
                            decision
                                .remove_headers
                                .iter()
                                .map(|n| HeaderEdit::Remove(n.as_str().into())),
                        );
                        edits.extend(
                            decision.upstream_headers.iter().map(|(n, v)| {
                                HeaderEdit::Set(n.as_str().into(), v.as_str().into())
                            }),
                        );
                        edits.extend(
                            decision
                                .response_headers
                                .iter()
                                .map(|(n, v)| HeaderEdit::AddToResponse(n.clone(), v.clone())),
                        );
                    } else {
                        counters.push(Counter::AuthzService(AuthzEvent::Denied));
                        if !rule.dry_run {
                            counters.push(Counter::Rule(self.index, RuleEvent::Denied));
                            counters.push(Counter::Denied(Refusal::CentralDenied.reason()));
                            return Decision {
                                outcome: Outcome::Deny(Deny::central(&decision, &config.realm)),
                                counters,
                                rule: rule_index,
                                refusal: Some(Refusal::CentralDenied),
                                dry_run: None,
                            };
                        }
                        tried = tried.or(Some(Refusal::CentralDenied));
                    }
                }
                Ask::Pending if !self.waited => {
                    let waits = Waits {
                        central: Some(key),
                        ..Waits::default()
                    };
                    return wait(waits, counters, rule_index);
                }
                Ask::Pending | Ask::Failed => {
                    counters.push(Counter::AuthzService(AuthzEvent::Failure));
                    if !service.allow_on_error {
                        if !rule.dry_run {
                            let refusal = Refusal::AuthzUnavailable;
                            return refuse(config, refusal, rule_index, counters);
                        }
                        tried = tried.or(Some(Refusal::AuthzUnavailable));
                    }
                }
            }
        }
        let verdict = match tried {
            Some(_) => RuleEvent::DryRunDenied,
            None => RuleEvent::Allowed,
        };
        counters.push(Counter::Rule(self.index, verdict));
        counters.push(Counter::Allowed);
        Decision {
            outcome: Outcome::Forward(edits),
            counters,
            rule: rule_index,
            refusal: None,
            dry_run: tried,
        }
    }

    /// An authentication failure: a browser asking for a page is sent to sign in (or
    /// its expired session refreshed) when the rule's providers have a login; anything
    /// else is refused.
    fn refuse_authn(
        &self,
        error: AuthnError,
        session_refused: Option<(usize, AuthnError)>,
        mut counters: Vec<Counter>,
    ) -> Decision {
        let rule_index = Some(self.index);
        let provider = match session_refused {
            Some((id, _)) => Some(id),
            None if error == AuthnError::Missing => {
                let listed = match &self.rule.action {
                    RuleAction::Authn { requirement, .. } => requirement.authenticators(),
                    RuleAction::Anonymous => &[],
                };
                listed.iter().find_map(|a| login_provider(self.config, *a))
            }
            None => None,
        };
        let login = provider.and_then(|id| {
            let login = self.config.providers.get(id)?.login.as_ref()?;
            Some((id, login))
        });
        let Some((id, login)) = login else {
            return refuse(self.config, Refusal::Authn(error), rule_index, counters);
        };
        let refreshable = login.refresh
            && matches!(session_refused, Some((_, AuthnError::Expired)))
            && !self.waited;
        let browser = login::is_browser_page_request(self.request);
        if !refreshable && !browser {
            return refuse(self.config, Refusal::Authn(error), rule_index, counters);
        }
        let endpoints = match login_endpoints(self.services, id, login) {
            LoginEndpoints::Ready(endpoints) => endpoints,
            LoginEndpoints::Pending if !self.waited => {
                let waits = Waits {
                    logins: vec![id],
                    ..Waits::default()
                };
                return wait(waits, counters, rule_index);
            }
            LoginEndpoints::Pending | LoginEndpoints::Unavailable => {
                if browser {
                    counters.push(Counter::Login(LoginEvent::Unavailable));
                    return reply_decision(Reply::login_failure(LoginError::Unavailable), counters);
                }
                return refuse(self.config, Refusal::Authn(error), rule_index, counters);
            }
        };
        if refreshable {
            if let Some(callout) =
                login::refresh_callout(login, &endpoints, self.request, self.clock.now())
            {
                let call = LoginCall {
                    provider: id,
                    callout,
                    step: LoginStep::Refresh,
                };
                return Decision {
                    outcome: Outcome::Call(call),
                    counters,
                    rule: rule_index,
                    refusal: None,
                    dry_run: None,
                };
            }
        }
        if !browser {
            return refuse(self.config, Refusal::Authn(error), rule_index, counters);
        }
        let mut random = [0u8; START_RANDOM_BYTES];
        if !self.services.login.random(&mut random) {
            counters.push(Counter::Login(LoginEvent::Unavailable));
            return reply_decision(Reply::login_failure(LoginError::Unavailable), counters);
        }
        let name = self
            .config
            .providers
            .get(id)
            .map_or("", |p| p.name.as_str());
        let redirect = login::start(
            login,
            name,
            &endpoints,
            self.request,
            &random,
            self.clock.now(),
        );
        counters.push(Counter::Login(LoginEvent::Redirect));
        reply_decision(Reply::redirect(redirect), counters)
    }

    /// A session token about to expire, with a refresh token sealed beside it: refreshed
    /// now, while the request waits, rather than refused a minute later.
    fn refresh_ahead(&self, verified: &[(Rc<Identity>, &Found<'_>)]) -> Option<LoginCall> {
        if self.waited {
            return None;
        }
        verified.iter().find_map(|(identity, found)| {
            let Authenticator::Provider(id) = identity.authenticator else {
                return None;
            };
            let login = self.config.providers.get(id)?.login.as_ref()?;
            if !login.refresh || found.location != Location::Cookie(login.cookie_name.clone()) {
                return None;
            }
            let exp = identity.claims.get("exp").and_then(Value::as_u64)?;
            if exp > self.clock.now().saturating_add(login::REFRESH_AHEAD_SECS) {
                return None;
            }
            let LoginEndpoints::Ready(endpoints) = login_endpoints(self.services, id, login) else {
                return None;
            };
            let callout =
                login::refresh_callout(login, &endpoints, self.request, self.clock.now())?;
            Some(LoginCall {
                provider: id,
                callout,
                step: LoginStep::Refresh,
            })
        })
    }

    fn authenticator_name(&self, authenticator: Authenticator) -> &str {
        match authenticator {
            Authenticator::Provider(i) => self.config.providers.get(i).map(|p| p.name.as_str()),
            Authenticator::Exchange(i) => self.config.exchanges.get(i).map(|e| e.name.as_str()),
        }
        .unwrap_or_default()
    }
}

/// The provider whose login signs a browser in for this authenticator: the provider
/// itself, or an exchange's provider (a session holding an opaque token the exchange
/// looks up).
fn login_provider(config: &Config, authenticator: Authenticator) -> Option<usize> {
    let id = match authenticator {
        Authenticator::Provider(id) => id,
        Authenticator::Exchange(id) => config.exchanges.get(id)?.provider,
    };
    config.providers.get(id)?.login.as_ref().map(|_| id)
}

fn wait(waits: Waits, counters: Vec<Counter>, rule: Option<usize>) -> Decision {
    Decision {
        outcome: Outcome::Wait(waits),
        counters,
        rule,
        refusal: None,
        dry_run: None,
    }
}

/// The filter's own endpoints, answered before any rule: `GET <mint.jwks_path>`, and a
/// login's callback and logout paths.
fn own_endpoint(
    config: &Config,
    services: Services<'_>,
    request: &Request,
    clock: &Clock<'_>,
    waited: bool,
) -> Option<Decision> {
    // A back-channel logout POST is decided on its body (the host reads it first and
    // calls `backchannel_logout`); here it is one without a body, or another method.
    if backchannel_endpoint(config, request).is_some() {
        let deny = match request.method.as_str() {
            "POST" => Deny::logout_refused(LogoutError::MissingToken),
            _ => Deny::method_not_allowed(),
        };
        let mut headers = deny.headers;
        headers.push(("cache-control".to_owned(), "no-store".to_owned()));
        let reply = Reply {
            status: deny.status,
            content_type: "application/json",
            body: deny.body,
            headers,
        };
        return Some(reply_decision(reply, Vec::new()));
    }
    let path = request.path_only();
    if matches!(request.method.as_str(), "GET" | "HEAD") {
        if let Some((_, jwks)) = config.jwks_paths.iter().find(|(served, _)| served == path) {
            let reply = Reply {
                status: 200,
                content_type: "application/json",
                body: jwks.clone(),
                headers: vec![("cache-control".to_owned(), "max-age=300".to_owned())],
            };
            return Some(reply_decision(reply, Vec::new()));
        }
    }
    let (id, login) = config.providers.iter().enumerate().find_map(|(id, p)| {
        let login = p.login.as_ref()?;
        let own = login.redirect_path == path || login.logout_path.as_deref() == Some(path);
        own.then_some((id, login))
    })?;
    let endpoints = match login_endpoints(services, id, login) {
        LoginEndpoints::Ready(endpoints) => Some(endpoints),
        LoginEndpoints::Pending if !waited => {
            let waits = Waits {
                logins: vec![id],
                ..Waits::default()
            };
            return Some(wait(waits, Vec::new(), None));
        }
        LoginEndpoints::Pending | LoginEndpoints::Unavailable => None,
    };
    if login.logout_path.as_deref() == Some(path) {
        let redirect = login::logout(login, endpoints.as_deref(), request, clock.now());
        let counters = vec![Counter::Login(LoginEvent::Logout)];
        return Some(reply_decision(Reply::redirect(redirect), counters));
    }
    let Some(endpoints) = endpoints else {
        let counters = vec![Counter::Login(LoginEvent::Unavailable)];
        return Some(reply_decision(
            Reply::login_failure(LoginError::Unavailable),
            counters,
        ));
    };
    // The ID token is checked with the provider's keys: a worker that has none yet
    // waits for them before the code is redeemed (a code can be redeemed only once).
    let keys_pending = matches!(
        config.providers.get(id).map(|p| &p.keys),
        Some(KeySource::Remote(_))
    ) && matches!(services.keyring.keys(id), Keys::Pending);
    if keys_pending && !waited {
        let waits = Waits {
            providers: vec![id],
            ..Waits::default()
        };
        return Some(wait(waits, Vec::new(), None));
    }
    match login::callback(login, &endpoints, request, clock.now()) {
        Ok(redeem) => Some(Decision {
            outcome: Outcome::Call(LoginCall {
                provider: id,
                callout: redeem.callout.clone(),
                step: LoginStep::Redeem(Rc::new(redeem)),
            }),
            counters: Vec::new(),
            rule: None,
            refusal: None,
            dry_run: None,
        }),
        Err(error) => Some(reply_decision(
            Reply::login_failure(error),
            vec![Counter::Login(error.event())],
        )),
    }
}

fn reply_decision(reply: Reply, counters: Vec<Counter>) -> Decision {
    Decision {
        outcome: Outcome::Reply(reply),
        counters,
        rule: None,
        refusal: None,
        dry_run: None,
    }
}

/// A login's endpoints: as configured, or as the host read them from discovery.
fn login_endpoints(services: Services<'_>, id: usize, login: &login::Login) -> LoginEndpoints {
    match &login.endpoints {
        login::EndpointSource::Static(endpoints) => {
            LoginEndpoints::Ready(Rc::new(endpoints.clone()))
        }
        login::EndpointSource::Discovery(_) => services.login.endpoints(id),
    }
}

/// The provider's keys as they are now, for checking a login's tokens.
fn current_keys(config: &Config, services: Services<'_>, id: usize) -> Option<Rc<KeySet>> {
    match &config.providers.get(id)?.keys {
        KeySource::Inline(keys) => Some(keys.clone()),
        KeySource::Remote(_) => match services.keyring.keys(id) {
            Keys::Ready(keys) => Some(keys),
            Keys::Pending | Keys::Unavailable => None,
        },
    }
}

/// What the token endpoint answered for a login step.
#[derive(Debug)]
pub enum LoginFinish {
    /// Answer the browser with this.
    Reply(Reply, Vec<Counter>),
    /// A refreshed session: decide `request` (carrying the new token) again and add
    /// these `set-cookie`s to its response.
    Retry {
        request: Request,
        set_cookies: Vec<String>,
        counters: Vec<Counter>,
    },
    /// The refresh failed: decide the request as it was, without refreshing again.
    Unrefreshed(Vec<Counter>),
}

/// Finishes a login step with the token endpoint's answer (`status` 0: no answer).
pub fn finish_login(
    config: &Config,
    services: Services<'_>,
    call: &LoginCall,
    request: &Request,
    status: u32,
    body: &[u8],
    now: u64,
) -> LoginFinish {
    let Some(provider) = config.providers.get(call.provider) else {
        return LoginFinish::Unrefreshed(Vec::new());
    };
    let Some(login) = provider.login.as_ref() else {
        return LoginFinish::Unrefreshed(Vec::new());
    };
    let keys = current_keys(config, services, call.provider);
    let mut nonce = [0u8; 24];
    let keys = keys.filter(|_| services.login.random(&mut nonce));
    match &call.step {
        LoginStep::Redeem(redeem) => {
            let result = match &keys {
                Some(keys) => login::redeemed(
                    login::Trust {
                        login,
                        policy: &provider.policy,
                        keys,
                    },
                    redeem,
                    status,
                    body,
                    now,
                    nonce,
                ),
                None => Err(LoginError::Unavailable),
            };
            match result {
                Ok(redirect) => LoginFinish::Reply(
                    Reply::redirect(redirect),
                    vec![Counter::Login(LoginEvent::Success)],
                ),
                Err(error) => LoginFinish::Reply(
                    Reply::login_failure(error),
                    vec![Counter::Login(error.event())],
                ),
            }
        }
        LoginStep::Refresh => {
            let result = keys.ok_or(LoginError::Unavailable).and_then(|keys| {
                login::refreshed(
                    login::Trust {
                        login,
                        policy: &provider.policy,
                        keys: &keys,
                    },
                    request,
                    status,
                    body,
                    now,
                    nonce,
                )
            });
            match result {
                Ok((token, set_cookies)) => LoginFinish::Retry {
                    request: with_session_token(request, &login.cookie_name, &token),
                    set_cookies,
                    counters: vec![Counter::Login(LoginEvent::Refresh)],
                },
                Err(_) => {
                    LoginFinish::Unrefreshed(vec![Counter::Login(LoginEvent::RefreshFailure)])
                }
            }
        }
    }
}

/// The request with its session cookie (and chunks) replaced by `token`.
fn with_session_token(request: &Request, session: &str, token: &str) -> Request {
    let mut request = request.clone();
    let kept = request
        .header("cookie")
        .and_then(|c| {
            crate::login::cookies::strip(c, |name| {
                crate::login::cookies::is_session_cookie(session, name)
            })
        })
        .unwrap_or_default();
    let cookie = if kept.is_empty() {
        format!("{session}={token}")
    } else {
        format!("{kept}; {session}={token}")
    };
    request.headers.retain(|(n, _)| n != "cookie");
    request.headers.push(("cookie".to_owned(), cookie));
    request
}

/// The provider whose back-channel logout endpoint this request is for (any method).
pub fn backchannel_endpoint(config: &Config, request: &Request) -> Option<usize> {
    if config.backchannel_paths.is_empty() {
        return None;
    }
    let path = request.path_only();
    config
        .backchannel_paths
        .iter()
        .find(|(served, _)| served == path)
        .map(|(_, provider)| *provider)
}

/// A back-channel logout POST's body (form `logout_token`) checked for `provider` with
/// its keys (`None`: none yet). Recording it (and the replay check) is the denylist's.
pub fn backchannel_logout(
    config: &Config,
    provider: usize,
    body: &[u8],
    keys: Option<&KeySet>,
    now: u64,
) -> Result<Logout, LogoutError> {
    if body.len() > logout::MAX_BODY_BYTES {
        return Err(LogoutError::BodyTooLarge);
    }
    let provider = config
        .providers
        .get(provider)
        .ok_or(LogoutError::MissingToken)?;
    let backchannel = provider
        .revocation
        .as_ref()
        .and_then(|r| r.backchannel.as_ref())
        .ok_or(LogoutError::MissingToken)?;
    let token =
        crate::token::extract::form_value(body, "logout_token").ok_or(LogoutError::MissingToken)?;
    let keys = match (&provider.keys, keys) {
        (KeySource::Inline(keys), _) => keys.as_ref(),
        (KeySource::Remote(_), Some(keys)) => keys,
        (KeySource::Remote(_), None) => {
            return Err(LogoutError::Signature(AuthnError::KeysUnavailable))
        }
    };
    let check = LogoutCheck {
        signer: crate::revocation::Signer::of(&provider.policy, keys),
        client_id: &backchannel.client_id,
    };
    logout::verify(&token, &check, now)
}

/// The tokens to try, in the rule's order, and whether an exchange's source held a JWT
/// (which goes to providers only). A token that looks like a JWT is for the rule's
/// providers; any other token goes to the first exchange listed whose source holds one
/// (every exchange's, for `all`), and then no provider tries it.
fn attempts<'r>(
    config: &Config,
    requirement: &AuthnRequirement,
    request: &'r Request,
) -> (Vec<(Authenticator, Found<'r>)>, bool) {
    let listed = requirement.authenticators();
    let only_first = matches!(requirement, AuthnRequirement::Any(_));
    let mut exchange_attempts: Vec<(Authenticator, Found<'r>)> = Vec::new();
    let mut jwt_for_exchange = false;
    for authenticator in listed {
        let Authenticator::Exchange(id) = *authenticator else {
            continue;
        };
        let Some(found) = config
            .exchanges
            .get(id)
            .and_then(|e| first_present(&e.sources, request))
        else {
            continue;
        };
        if jwt::looks_like_jwt(&found.token) {
            jwt_for_exchange = true;
            continue;
        }
        exchange_attempts.push((*authenticator, found));
        if only_first {
            break;
        }
    }
    let opaque_taken = !exchange_attempts.is_empty();
    let mut attempts = Vec::with_capacity(listed.len());
    for authenticator in listed {
        match *authenticator {
            Authenticator::Provider(id) => {
                let Some(found) = config
                    .providers
                    .get(id)
                    .and_then(|p| first_present(&p.sources, request))
                else {
                    continue;
                };
                if opaque_taken && !jwt::looks_like_jwt(&found.token) {
                    continue;
                }
                attempts.push((*authenticator, found));
            }
            Authenticator::Exchange(_) => {
                if let Some(at) = exchange_attempts
                    .iter()
                    .position(|(a, _)| a == authenticator)
                {
                    attempts.push(exchange_attempts.swap_remove(at));
                }
            }
        }
    }
    (attempts, jwt_for_exchange)
}

/// The first present source (a present but invalid token is not skipped).
fn first_present<'r>(sources: &[Source], request: &'r Request) -> Option<Found<'r>> {
    sources.iter().find_map(|source| source.find(request))
}

/// What authentication needs besides the token.
struct Context<'a> {
    services: Services<'a>,
    clock: &'a Clock<'a>,
    waited: bool,
}

fn authenticate(
    context: &Context<'_>,
    id: usize,
    provider: &Provider,
    token: &str,
    cache: &mut TokenCache,
    counters: &mut Vec<Counter>,
) -> Result<Rc<Identity>, NotVerified> {
    // Checked before the cache so an oversized token costs nothing, not even a hash.
    if token.len() > provider.policy.max_token_bytes {
        return Err(NotVerified::Refused(AuthnError::TooLong));
    }
    if let Some(entry) = cache.get(id, token) {
        counters.push(Counter::CacheHit);
        let identity = entry.identity.clone();
        // Judged without reading the clock unless the token is within seconds of a limit.
        let lifetime = context
            .clock
            .judge(|now| jwt::check_lifetime(entry.lifetime, &provider.policy, now));
        return match lifetime {
            Ok(()) => {
                check_revocation(context, id, provider, &identity, counters)?;
                Ok(identity)
            }
            Err(e) => {
                cache.remove(id, token);
                Err(NotVerified::Refused(e))
            }
        };
    }
    let keyring = context.services.keyring;
    let keys = match &provider.keys {
        KeySource::Inline(keys) => keys.clone(),
        KeySource::Remote(_) => match keyring.keys(id) {
            Keys::Ready(keys) => keys,
            Keys::Pending if !context.waited => return Err(NotVerified::WaitKeys(id)),
            Keys::Pending | Keys::Unavailable => {
                return Err(NotVerified::Refused(AuthnError::KeysUnavailable))
            }
        },
    };
    counters.push(Counter::CacheMiss);
    let verified = match jwt::verify(token, &provider.policy, &keys, context.clock.now()) {
        Ok(verified) => verified,
        Err(AuthnError::UnknownKid)
            if matches!(provider.keys, KeySource::Remote(_))
                && !context.waited
                && keyring.refetch_for_unknown_kid(id) =>
        {
            return Err(NotVerified::WaitKeys(id));
        }
        Err(e) => return Err(NotVerified::Refused(e)),
    };
    // Read once here, kept with the cached identity; a malformed or unlisted status
    // reference refuses the token (and it is not cached).
    let revocable = match &provider.revocation {
        Some(revocation) => {
            Some(Revocable::read(&verified.claims, revocation).map_err(NotVerified::Refused)?)
        }
        None => None,
    };
    let headers = provider
        .forward
        .identity_headers(&verified.claims, &verified.payload_segment);
    let mut identity = Identity::new(
        Authenticator::Provider(id),
        headers,
        Rc::new(verified.claims),
    );
    identity.revocable = revocable;
    let identity = Rc::new(identity);
    cache.insert(
        id,
        token,
        Entry {
            lifetime: verified.lifetime,
            identity: identity.clone(),
        },
    );
    check_revocation(context, id, provider, &identity, counters)?;
    Ok(identity)
}

/// A verified token's revocation checks, on every request (cache hits included): the
/// back-channel logout denylist, then its status list entry. Lookups only, when the
/// list is fresh.
fn check_revocation(
    context: &Context<'_>,
    id: usize,
    provider: &Provider,
    identity: &Identity,
    counters: &mut Vec<Counter>,
) -> Result<(), NotVerified> {
    let (Some(revocation), Some(revocable)) = (&provider.revocation, &identity.revocable) else {
        return Ok(());
    };
    let revocations = context.services.revocations;
    if revocation.backchannel.is_some() {
        if let Some(denylist) = revocations.denylist(id) {
            if denylist.revokes(&revocable.subject, context.clock.now()) {
                return Err(NotVerified::Refused(AuthnError::Revoked));
            }
        }
    }
    let Some(policy) = &revocation.status_list else {
        return Ok(());
    };
    let Some(status) = &revocable.status else {
        return match policy.require_status {
            true => Err(NotVerified::Refused(AuthnError::StatusMissing)),
            false => Ok(()),
        };
    };
    match revocations.status_list(id, &status.uri) {
        ListState::Ready(list) => list.check(status.idx).map_err(|e| {
            match e {
                AuthnError::Revoked => {
                    counters.push(Counter::Revocation(RevocationEvent::ListRevoked))
                }
                AuthnError::Suspended => {
                    counters.push(Counter::Revocation(RevocationEvent::ListSuspended))
                }
                _ => {}
            }
            NotVerified::Refused(e)
        }),
        ListState::Pending => Err(NotVerified::WaitStatusList(id, status.uri.clone())),
        ListState::Unavailable if policy.allow_unavailable => {
            counters.push(Counter::Revocation(RevocationEvent::ListUnavailableAllowed));
            Ok(())
        }
        ListState::Unavailable => Err(NotVerified::Refused(AuthnError::StatusUnavailable)),
    }
}

/// An opaque token's identity: the VM's copy, else what all workers know, else wait for
/// the auth service's answer (the host asks it, once for all workers).
fn exchange_identity(
    config: &Config,
    context: &Context<'_>,
    id: usize,
    exchange: &Exchange,
    token: &str,
    cache: &mut ExchangeCache,
    counters: &mut Vec<Counter>,
) -> Result<Rc<Identity>, NotVerified> {
    if token.len() > exchange.max_token_bytes {
        return Err(NotVerified::Refused(AuthnError::TooLong));
    }
    let key = TokenKey::of(exchange, token);
    match cache.get(id, key, context.clock) {
        Some(Cached::Active(identity)) => {
            counters.push(Counter::Exchange(id, ExchangeEvent::Hit));
            return Ok(identity);
        }
        Some(Cached::Refused(e)) => {
            counters.push(Counter::Exchange(id, ExchangeEvent::NegativeHit));
            return Err(NotVerified::Refused(e));
        }
        None => {}
    }
    let lookup = context
        .services
        .exchanges
        .lookup(id, key, token, !context.waited);
    let now = context.clock.now();
    match lookup {
        Lookup::Answer(State::Active { until, claims, jwt }) if now < until => {
            if !context.waited {
                counters.push(Counter::Exchange(id, ExchangeEvent::Hit));
            }
            let identity = identity_of(config, id, exchange, claims, jwt);
            cache.insert(id, key, until, Cached::Active(identity.clone()), now);
            Ok(identity)
        }
        Lookup::Answer(State::Refused { until, reason }) if now < until => {
            counters.push(Counter::Exchange(id, ExchangeEvent::NegativeHit));
            cache.insert(id, key, until, Cached::Refused(reason), now);
            Err(NotVerified::Refused(reason))
        }
        // A refusal cached for no time at all (negative_secs 0) is still this answer.
        Lookup::Answer(State::Refused { reason, .. }) if context.waited => {
            Err(NotVerified::Refused(reason))
        }
        Lookup::Pending if !context.waited => Err(NotVerified::WaitExchange(id, key)),
        _ => Err(NotVerified::Refused(AuthnError::ExchangeUnavailable)),
    }
}

/// An exchange's identity as the provider forwards it, plus the JWT for upstream.
fn identity_of(
    config: &Config,
    id: usize,
    exchange: &Exchange,
    claims: Map<String, Value>,
    jwt: Option<String>,
) -> Rc<Identity> {
    let mut headers = match config.providers.get(exchange.provider) {
        Some(provider) => {
            let payload = if provider.forward.payload_header.is_some() {
                b64::encode(Value::Object(claims.clone()).to_string().as_bytes())
            } else {
                String::new()
            };
            provider.forward.identity_headers(&claims, &payload)
        }
        None => Vec::new(),
    };
    if let (Some(upstream), Some(jwt)) = (&exchange.upstream, jwt) {
        let value = format!("{}{jwt}", upstream.prefix);
        headers.push((upstream.header.as_str().into(), value.into()));
    }
    Rc::new(Identity::new(
        Authenticator::Exchange(id),
        headers,
        Rc::new(claims),
    ))
}

fn refuse(
    config: &Config,
    refusal: Refusal,
    rule: Option<usize>,
    mut counters: Vec<Counter>,
) -> Decision {
    if let Some(index) = rule {
        counters.push(Counter::Rule(index, RuleEvent::Denied));
    }
    counters.push(Counter::Denied(refusal.reason()));
    Decision {
        outcome: Outcome::Deny(Deny::for_refusal(refusal, &config.realm)),
        counters,
        rule,
        refusal: Some(refusal),
        dry_run: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use serde_json::{json, Value};

    fn config(doc: Value) -> Config {
        Config::from_json(doc.to_string().as_bytes()).unwrap()
    }

    fn provider(extra: Value) -> Value {
        let mut p = json!({
            "issuer": ISSUER,
            "audiences": ["orders"],
            "jwks": { "inline": public_jwks() },
            "forward": {
                "claims": { "sub": "x-user-id", "realm_access.roles": "x-user-roles" },
                "payload_header": "x-jwt-payload"
            }
        });
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    }

    fn standard() -> Config {
        config(json!({
            "realm": "api",
            "providers": { "corp": provider(json!({})) },
            "rules": [
                { "name": "health", "match": { "path": { "prefix": "/healthz" } }, "allow": "anonymous" },
                { "name": "maybe", "match": { "path": { "prefix": "/public" } }, "authn": { "any": ["corp"], "optional": true } },
                { "name": "api", "match": { "path": { "prefix": "/api" } }, "authn": { "any": ["corp"] } }
            ]
        }))
    }

    fn request(path: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            host: "svc".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn cache(config: &Config) -> Caches {
        Caches::for_config(config)
    }

    fn run(config: &Config, req: &Request) -> Decision {
        decide(
            config,
            Services::local(),
            req,
            &Clock::at_secs(NOW),
            &mut cache(config),
            false,
        )
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn refused_with(decision: &Decision) -> Option<Refusal> {
        match decision.outcome {
            Outcome::Deny(_) => decision.refusal,
            _ => None,
        }
    }

    #[test]
    fn valid_token_forwards_identity_headers_and_removes_the_token() {
        let config = standard();
        let token = token("rs256", &good_claims());
        let auth = bearer(&token);
        let decision = run(
            &config,
            &request(
                "/api/orders",
                &[("authorization", &auth), ("x-user-id", "spoofed")],
            ),
        );
        let payload = token.split('.').nth(1).unwrap().to_owned();
        assert_eq!(
            decision.outcome,
            Outcome::Forward(vec![
                HeaderEdit::Remove("authorization".into()),
                HeaderEdit::Set("x-jwt-payload".into(), payload.into()),
                HeaderEdit::Set("x-user-roles".into(), "user,admin".into()),
                HeaderEdit::Set("x-user-id".into(), "alice".into()),
            ])
        );
        assert_eq!(
            decision.counters,
            vec![
                Counter::CacheMiss,
                Counter::Rule(2, RuleEvent::Allowed),
                Counter::Allowed
            ]
        );
    }

    #[test]
    fn anonymous_route_still_strips_identity_headers() {
        let decision = run(
            &standard(),
            &request(
                "/healthz",
                &[("x-user-id", "admin"), ("x-jwt-payload", "e30")],
            ),
        );
        assert_eq!(
            decision.outcome,
            Outcome::Forward(vec![
                HeaderEdit::Remove("x-jwt-payload".into()),
                HeaderEdit::Remove("x-user-id".into()),
                HeaderEdit::Remove("x-user-roles".into())
            ])
        );
    }

    #[test]
    fn missing_token_is_refused_with_a_bare_challenge() {
        let decision = run(&standard(), &request("/api", &[]));
        assert_eq!(
            refused_with(&decision),
            Some(Refusal::Authn(AuthnError::Missing))
        );
        let Outcome::Deny(deny) = decision.outcome else {
            panic!()
        };
        assert_eq!(deny.status, 401);
        assert_eq!(
            deny.www_authenticate.as_deref(),
            Some("Bearer realm=\"api\"")
        );
        assert_eq!(
            decision.counters,
            vec![
                Counter::Rule(2, RuleEvent::Denied),
                Counter::Denied("missing")
            ]
        );
    }

    #[test]
    fn expired_token_is_refused_with_invalid_token() {
        let mut claims = good_claims();
        claims["exp"] = json!(NOW - 3600);
        let auth = bearer(&token("es256", &claims));
        let decision = run(&standard(), &request("/api", &[("authorization", &auth)]));
        let Outcome::Deny(deny) = &decision.outcome else {
            panic!()
        };
        assert_eq!(
            deny.www_authenticate.as_deref(),
            Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"token expired\"")
        );
        assert!(!deny.body.contains(&auth[7..20]));
    }

    #[test]
    fn optional_authn_lets_anonymous_through_but_not_invalid_tokens() {
        let config = standard();
        let decision = run(&config, &request("/public", &[]));
        let Outcome::Forward(edits) = &decision.outcome else {
            panic!("{:?}", decision.outcome)
        };
        assert!(edits.iter().all(|e| matches!(e, HeaderEdit::Remove(_))));
        let decision = run(
            &config,
            &request("/public", &[("authorization", "Bearer not.a.jwt")]),
        );
        assert_eq!(
            refused_with(&decision),
            Some(Refusal::Authn(AuthnError::Malformed))
        );
    }

    #[test]
    fn request_matching_no_rule_is_forbidden() {
        let decision = run(&standard(), &request("/elsewhere", &[]));
        assert_eq!(refused_with(&decision), Some(Refusal::NoRuleMatched));
        let Outcome::Deny(deny) = decision.outcome else {
            panic!()
        };
        assert_eq!(deny.status, 403);
    }

    #[test]
    fn second_request_with_the_same_token_hits_the_cache_and_rechecks_exp() {
        let config = standard();
        let mut cache = cache(&config);
        let auth = bearer(&token("eddsa", &good_claims()));
        let req = request("/api", &[("authorization", &auth)]);
        let mut decide_at = |now: u64| {
            let clock = Clock::at_secs(now);
            decide(&config, Services::local(), &req, &clock, &mut cache, false)
        };
        assert_eq!(
            decide_at(NOW).counters,
            vec![
                Counter::CacheMiss,
                Counter::Rule(2, RuleEvent::Allowed),
                Counter::Allowed
            ]
        );
        let again = decide_at(NOW + 1);
        assert_eq!(
            again.counters,
            vec![
                Counter::CacheHit,
                Counter::Rule(2, RuleEvent::Allowed),
                Counter::Allowed
            ]
        );
        assert_eq!(again.outcome, decide_at(NOW).outcome);
        let later = decide_at(NOW + 600 + 60);
        assert_eq!(
            refused_with(&later),
            Some(Refusal::Authn(AuthnError::Expired))
        );
        assert!(cache.tokens.is_empty(), "an expired entry is dropped");
    }

    #[test]
    fn a_cached_token_reads_the_clock_only_when_its_exp_is_within_the_window() {
        let config = standard();
        let mut cache = cache(&config);
        let auth = bearer(&token("eddsa", &good_claims()));
        let req = request("/api", &[("authorization", &auth)]);
        let reads = std::cell::Cell::new(0);
        // The window [from, to] (seconds) holds the present, which is `at`.
        let mut decide_in = |from: u64, to: u64, at: u64| {
            let read = || {
                reads.set(reads.get() + 1);
                at * 1000
            };
            let clock = Clock::within(from * 1000, to * 1000, &read);
            decide(&config, Services::local(), &req, &clock, &mut cache, false)
        };
        assert!(matches!(
            decide_in(NOW, NOW, NOW).outcome,
            Outcome::Forward(_)
        ));
        assert_eq!(reads.get(), 1, "a token verified now reads the clock");
        // exp + skew = NOW + 660. A window well before it: no reading, accepted.
        let hit = decide_in(NOW, NOW + 3, NOW + 1);
        assert!(matches!(hit.outcome, Outcome::Forward(_)));
        assert_eq!(
            reads.get(),
            1,
            "a token far from its limits costs no reading"
        );
        // A window across exp + skew: the exact time decides, on either side of it.
        let before = decide_in(NOW + 658, NOW + 661, NOW + 659);
        assert!(matches!(before.outcome, Outcome::Forward(_)));
        let after = decide_in(NOW + 658, NOW + 661, NOW + 660);
        assert_eq!(
            refused_with(&after),
            Some(Refusal::Authn(AuthnError::Expired))
        );
        assert_eq!(reads.get(), 3);
    }

    #[test]
    fn failures_are_not_cached() {
        let config = standard();
        let mut cache = cache(&config);
        let mut claims = good_claims();
        claims["aud"] = json!("billing");
        let auth = bearer(&token("es256", &claims));
        let req = request("/api", &[("authorization", &auth)]);
        decide(
            &config,
            Services::local(),
            &req,
            &Clock::at_secs(NOW),
            &mut cache,
            false,
        );
        assert!(cache.tokens.is_empty());
    }

    #[test]
    fn keep_token_leaves_the_token_in_place() {
        let config = config(
            json!({ "providers": { "corp": provider(json!({"forward": {"keep_token": true}})) } }),
        );
        let auth = bearer(&token("es256", &good_claims()));
        let decision = run(&config, &request("/x", &[("authorization", &auth)]));
        assert_eq!(decision.outcome, Outcome::Forward(vec![]));
    }

    #[test]
    fn token_in_a_cookie_is_removed_and_other_cookies_stay() {
        let config = config(
            json!({ "providers": { "corp": provider(json!({"sources": [{"cookie": "access_token"}]})) } }),
        );
        let cookie = format!(
            "theme=dark; access_token={}",
            token("es256", &good_claims())
        );
        let decision = run(&config, &request("/x", &[("cookie", &cookie)]));
        let Outcome::Forward(edits) = decision.outcome else {
            panic!("{decision:?}")
        };
        assert!(edits.contains(&HeaderEdit::Set("cookie".into(), "theme=dark".into())));
    }

    #[test]
    fn first_present_source_wins_even_if_its_token_is_invalid() {
        let config = config(json!({ "providers": { "corp": provider(json!({
            "sources": [{"header": "authorization", "prefix": "Bearer "}, {"query": "access_token"}]
        })) } }));
        let path = format!("/x?access_token={}", token("es256", &good_claims()));
        let decision = run(
            &config,
            &request(&path, &[("authorization", "Bearer garbage")]),
        );
        assert_eq!(
            refused_with(&decision),
            Some(Refusal::Authn(AuthnError::Malformed))
        );
    }

    fn two_providers(requirement: &str) -> Config {
        let mut other = provider(
            json!({"issuer": "https://other.test", "sources": [{"header": "x-other-token"}]}),
        );
        other["forward"] = json!({"claims": {"sub": "x-other-sub"}});
        config(json!({
            "providers": { "corp": provider(json!({})), "other": other },
            "rules": [{ "match": {}, "authn": { requirement: ["corp", "other"] } }]
        }))
    }

    #[test]
    fn any_accepts_the_provider_whose_token_verifies() {
        let config = two_providers("any");
        let mut claims = good_claims();
        claims["iss"] = json!("https://other.test");
        let decision = run(
            &config,
            &request(
                "/x",
                &[
                    ("authorization", "Bearer bad.bad.bad"),
                    ("x-other-token", &token("es256", &claims)),
                ],
            ),
        );
        let Outcome::Forward(edits) = decision.outcome else {
            panic!("{decision:?}")
        };
        assert!(edits.contains(&HeaderEdit::Set("x-other-sub".into(), "alice".into())));
    }

    #[test]
    fn any_reports_the_most_specific_failure() {
        let config = two_providers("any");
        // The token is corp's (issuer matches corp) but expired; "other" refuses it on issuer.
        let mut claims = good_claims();
        claims["exp"] = json!(NOW - 3600);
        let t = token("es256", &claims);
        let auth = bearer(&t);
        let decision = run(
            &config,
            &request("/x", &[("authorization", &auth), ("x-other-token", &t)]),
        );
        assert_eq!(
            refused_with(&decision),
            Some(Refusal::Authn(AuthnError::Expired))
        );
    }

    #[test]
    fn all_needs_every_provider() {
        let config = two_providers("all");
        let auth = bearer(&token("es256", &good_claims()));
        let decision = run(&config, &request("/x", &[("authorization", &auth)]));
        assert_eq!(
            refused_with(&decision),
            Some(Refusal::Authn(AuthnError::Missing))
        );
        let mut claims = good_claims();
        claims["iss"] = json!("https://other.test");
        let decision = run(
            &config,
            &request(
                "/x",
                &[
                    ("authorization", &auth),
                    ("x-other-token", &token("es256", &claims)),
                ],
            ),
        );
        assert!(
            matches!(decision.outcome, Outcome::Forward(_)),
            "{decision:?}"
        );
    }

    #[test]
    fn oversized_token_is_refused_without_touching_the_cache() {
        let config =
            config(json!({ "providers": { "corp": provider(json!({"max_token_bytes": 100})) } }));
        let auth = bearer(&"a".repeat(200));
        let decision = run(&config, &request("/x", &[("authorization", &auth)]));
        assert_eq!(
            refused_with(&decision),
            Some(Refusal::Authn(AuthnError::TooLong))
        );
        assert_eq!(
            decision.counters,
            vec![
                Counter::Rule(0, RuleEvent::Denied),
                Counter::Denied("too_long")
            ]
        );
    }
}

#[cfg(test)]
mod remote_tests {
    use super::*;
    use crate::testutil::*;
    use serde_json::json;
    use std::cell::Cell;

    /// A keyring whose state the test sets, counting refetch requests.
    struct FakeKeyring {
        keys: Keys,
        allow_refetch: bool,
        refetches: Cell<usize>,
    }

    impl Keyring for FakeKeyring {
        fn keys(&self, _: usize) -> Keys {
            self.keys.clone()
        }
        fn refetch_for_unknown_kid(&self, _: usize) -> bool {
            self.refetches.set(self.refetches.get() + 1);
            self.allow_refetch
        }
    }

    fn remote_config() -> Config {
        let doc = json!({
            "providers": { "corp": {
                "issuer": ISSUER,
                "jwks": { "uri": "http://idp:8080/certs", "cluster": "idp" }
            } }
        });
        Config::from_json(doc.to_string().as_bytes()).unwrap()
    }

    fn ring(keys: Keys, allow_refetch: bool) -> FakeKeyring {
        FakeKeyring {
            keys,
            allow_refetch,
            refetches: Cell::new(0),
        }
    }

    fn decide_with(ring: &FakeKeyring, token: &str, waited: bool) -> Decision {
        let config = remote_config();
        let mut cache = Caches::for_config(&config);
        let request = Request {
            method: "GET".into(),
            path: "/".into(),
            host: "svc".into(),
            headers: vec![("authorization".into(), format!("Bearer {token}"))],
        };
        let services = Services {
            keyring: ring,
            exchanges: &NoExchanges,
            policy: &NoPolicy,
            login: &NoLoginService,
            revocations: &NoRevocations,
        };
        decide(
            &config,
            services,
            &request,
            &Clock::at_secs(NOW),
            &mut cache,
            waited,
        )
    }

    fn status(decision: &Decision) -> Option<u32> {
        match &decision.outcome {
            Outcome::Deny(deny) => Some(deny.status),
            _ => None,
        }
    }

    #[test]
    fn request_waits_for_the_first_fetch_then_gets_503() {
        let pending = ring(Keys::Pending, false);
        let t = token("rs256", &good_claims());
        assert_eq!(
            decide_with(&pending, &t, false).outcome,
            Outcome::Wait(Waits {
                providers: vec![0],
                exchanges: vec![],
                central: None,
                logins: Vec::new(),
                status_lists: vec![],
            })
        );
        let after = decide_with(&pending, &t, true);
        assert_eq!(
            after.refusal,
            Some(Refusal::Authn(AuthnError::KeysUnavailable))
        );
        assert_eq!(status(&after), Some(503));
    }

    #[test]
    fn keys_unavailable_without_a_fetch_coming_is_503_at_once() {
        let down = ring(Keys::Unavailable, false);
        assert_eq!(
            status(&decide_with(&down, &token("rs256", &good_claims()), false)),
            Some(503)
        );
    }

    #[test]
    fn remote_keys_verify_like_inline_ones() {
        let ready = ring(Keys::Ready(Rc::new(keyset())), false);
        assert!(matches!(
            decide_with(&ready, &token("es256", &good_claims()), false).outcome,
            Outcome::Forward(_)
        ));
    }

    #[test]
    fn unknown_kid_waits_for_a_refetch_once_then_is_invalid_token() {
        let ready = ring(Keys::Ready(Rc::new(keyset())), true);
        let t = token_with_header(
            "es256",
            &json!({"alg": "ES256", "kid": "rotated"}),
            &good_claims(),
        );
        assert_eq!(
            decide_with(&ready, &t, false).outcome,
            Outcome::Wait(Waits {
                providers: vec![0],
                exchanges: vec![],
                central: None,
                logins: Vec::new(),
                status_lists: vec![],
            })
        );
        let after = decide_with(&ready, &t, true);
        assert_eq!(after.refusal, Some(Refusal::Authn(AuthnError::UnknownKid)));
        assert_eq!(status(&after), Some(401));
        assert_eq!(ready.refetches.get(), 1, "no second refetch after waiting");
    }

    #[test]
    fn unknown_kid_is_refused_at_once_when_refetch_is_rate_limited() {
        let limited = ring(Keys::Ready(Rc::new(keyset())), false);
        let t = token_with_header(
            "es256",
            &json!({"alg": "ES256", "kid": "random"}),
            &good_claims(),
        );
        assert_eq!(
            decide_with(&limited, &t, false).refusal,
            Some(Refusal::Authn(AuthnError::UnknownKid))
        );
    }

    #[test]
    fn expired_token_with_unknown_kid_never_asks_for_a_refetch() {
        let ready = ring(Keys::Ready(Rc::new(keyset())), true);
        let mut claims = good_claims();
        claims["exp"] = json!(NOW - 3600);
        let t = token_with_header("es256", &json!({"alg": "ES256", "kid": "random"}), &claims);
        assert_eq!(
            decide_with(&ready, &t, false).refusal,
            Some(Refusal::Authn(AuthnError::Expired))
        );
        assert_eq!(ready.refetches.get(), 0);
    }
}

#[cfg(test)]
mod exchange_tests {
    use super::*;
    use crate::testutil::*;
    use serde_json::json;
    use std::cell::RefCell;

    /// A store whose shared answer the test sets, recording every lookup.
    struct FakeStore {
        answer: RefCell<Lookup>,
        lookups: RefCell<Vec<(TokenKey, String, bool)>>,
    }

    impl ExchangeStore for FakeStore {
        fn lookup(&self, _: usize, key: TokenKey, token: &str, may_start: bool) -> Lookup {
            self.lookups
                .borrow_mut()
                .push((key, token.to_owned(), may_start));
            self.answer.borrow().clone()
        }
    }

    fn store(answer: Lookup) -> FakeStore {
        FakeStore {
            answer: RefCell::new(answer),
            lookups: RefCell::new(Vec::new()),
        }
    }

    fn config() -> Config {
        let doc = json!({
            "realm": "api",
            "providers": { "corp": {
                "issuer": ISSUER,
                "jwks": { "inline": public_jwks() },
                "forward": { "claims": { "sub": "x-user-id" } }
            } },
            "exchanges": { "opaque": {
                "sources": [{"header": "authorization", "prefix": "Bearer "}],
                "mode": "token_exchange",
                "endpoint": { "uri": "http://auth/token", "cluster": "auth" },
                "client": { "id": "gateway", "secret": "s3cret" },
                "provider": "corp",
                "upstream": { "header": "authorization", "prefix": "Bearer " }
            } },
            "rules": [{ "match": {}, "authn": { "any": ["corp", "opaque"] } }]
        });
        Config::from_json(doc.to_string().as_bytes()).unwrap()
    }

    fn request(auth: &str) -> Request {
        Request {
            method: "GET".into(),
            path: "/".into(),
            host: "svc".into(),
            headers: vec![
                ("authorization".into(), auth.into()),
                ("x-user-id".into(), "spoofed".into()),
            ],
        }
    }

    fn active(jwt: &str) -> Lookup {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("alice"));
        Lookup::Answer(State::Active {
            until: NOW + 60,
            claims,
            jwt: Some(jwt.into()),
        })
    }

    fn run(
        config: &Config,
        store: &FakeStore,
        caches: &mut Caches,
        auth: &str,
        waited: bool,
    ) -> Decision {
        let services = Services {
            keyring: &NoRemoteKeys,
            exchanges: store,
            policy: &NoPolicy,
            login: &NoLoginService,
            revocations: &NoRevocations,
        };
        decide(
            config,
            services,
            &request(auth),
            &Clock::at_secs(NOW),
            caches,
            waited,
        )
    }

    #[test]
    fn an_active_opaque_token_sends_the_exchanged_jwt_upstream_never_the_token() {
        let config = config();
        let store = store(active("exchanged.jwt.value"));
        let mut caches = Caches::for_config(&config);
        let decision = run(&config, &store, &mut caches, "Bearer opaque-123", false);
        assert_eq!(
            decision.outcome,
            Outcome::Forward(vec![
                HeaderEdit::Remove("authorization".into()),
                HeaderEdit::Set("x-user-id".into(), "alice".into()),
                HeaderEdit::Set("authorization".into(), "Bearer exchanged.jwt.value".into()),
            ])
        );
        let lookups = store.lookups.borrow();
        assert_eq!(lookups.len(), 1);
        assert_eq!(lookups[0].1, "opaque-123");
        assert_ne!(format!("{:?}", lookups[0].0), "opaque-123");
    }

    #[test]
    fn the_second_request_is_answered_by_the_vm_cache_without_a_lookup() {
        let config = config();
        let store = store(active("a.b.c"));
        let mut caches = Caches::for_config(&config);
        run(&config, &store, &mut caches, "Bearer opaque-123", false);
        let again = run(&config, &store, &mut caches, "Bearer opaque-123", false);
        assert!(matches!(again.outcome, Outcome::Forward(_)));
        assert_eq!(store.lookups.borrow().len(), 1);
        assert_eq!(
            again.counters,
            vec![
                Counter::Exchange(0, ExchangeEvent::Hit),
                Counter::Rule(0, RuleEvent::Allowed),
                Counter::Allowed
            ]
        );
    }

    #[test]
    fn an_unknown_token_waits_once_for_the_callout_then_gets_503() {
        let config = config();
        let store = store(Lookup::Pending);
        let mut caches = Caches::for_config(&config);
        let first = run(&config, &store, &mut caches, "Bearer opaque-123", false);
        let Outcome::Wait(waits) = &first.outcome else {
            panic!("{first:?}")
        };
        assert_eq!(waits.exchanges.len(), 1);
        assert!(
            store.lookups.borrow()[0].2,
            "the first try may start a callout"
        );
        let later = run(&config, &store, &mut caches, "Bearer opaque-123", true);
        assert_eq!(
            later.refusal,
            Some(Refusal::Authn(AuthnError::ExchangeUnavailable))
        );
        assert!(
            !store.lookups.borrow()[1].2,
            "a resumed request starts no callout"
        );
        let Outcome::Deny(deny) = later.outcome else {
            panic!()
        };
        assert_eq!(deny.status, 503);
    }

    #[test]
    fn an_inactive_token_is_invalid_token_and_the_refusal_is_cached() {
        let config = config();
        let store = store(Lookup::Answer(State::Refused {
            until: NOW + 5,
            reason: AuthnError::Inactive,
        }));
        let mut caches = Caches::for_config(&config);
        let decision = run(&config, &store, &mut caches, "Bearer revoked", false);
        assert_eq!(decision.refusal, Some(Refusal::Authn(AuthnError::Inactive)));
        run(&config, &store, &mut caches, "Bearer revoked", false);
        assert_eq!(store.lookups.borrow().len(), 1);
    }

    #[test]
    fn an_expired_shared_answer_is_not_used() {
        let config = config();
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("alice"));
        let store = store(Lookup::Answer(State::Active {
            until: NOW,
            claims,
            jwt: None,
        }));
        let mut caches = Caches::for_config(&config);
        let decision = run(&config, &store, &mut caches, "Bearer opaque", true);
        assert_eq!(
            decision.refusal,
            Some(Refusal::Authn(AuthnError::ExchangeUnavailable))
        );
    }

    #[test]
    fn a_jwt_goes_to_the_providers_only_and_an_opaque_token_to_the_exchange_only() {
        let config = config();
        let store = store(Lookup::Unavailable);
        let mut caches = Caches::for_config(&config);
        let jwt = format!("Bearer {}", token("es256", &good_claims()));
        let decision = run(&config, &store, &mut caches, &jwt, false);
        assert!(
            matches!(decision.outcome, Outcome::Forward(_)),
            "{decision:?}"
        );
        assert!(store.lookups.borrow().is_empty());
        let opaque = run(&config, &store, &mut caches, "Bearer not-a-jwt", false);
        // The exchange's failure, not the provider's "malformed".
        assert_eq!(
            opaque.refusal,
            Some(Refusal::Authn(AuthnError::ExchangeUnavailable))
        );
    }

    #[test]
    fn an_expired_jwt_on_a_rule_with_an_exchange_is_refused_as_expired() {
        let config = config();
        let store = store(Lookup::Unavailable);
        let mut claims = good_claims();
        claims["exp"] = json!(NOW - 3600);
        let auth = format!("Bearer {}", token("es256", &claims));
        let decision = run(
            &config,
            &store,
            &mut Caches::for_config(&config),
            &auth,
            false,
        );
        assert_eq!(decision.refusal, Some(Refusal::Authn(AuthnError::Expired)));
        assert!(store.lookups.borrow().is_empty());
    }

    #[test]
    fn a_jwt_where_only_an_exchange_applies_is_refused_as_such() {
        let mut config = config();
        config.rules[0].action = RuleAction::Authn {
            requirement: AuthnRequirement::Any(vec![Authenticator::Exchange(0)]),
            optional: false,
        };
        let store = store(active("a.b.c"));
        let mut caches = Caches::for_config(&config);
        let jwt = format!("Bearer {}", token("es256", &good_claims()));
        let decision = run(&config, &store, &mut caches, &jwt, false);
        assert_eq!(
            decision.refusal,
            Some(Refusal::Authn(AuthnError::UnexpectedJwt))
        );
        assert!(store.lookups.borrow().is_empty());
    }

    #[test]
    fn the_minted_jwks_is_served_before_any_rule() {
        let doc = json!({
            "providers": { "corp": { "issuer": ISSUER, "jwks": { "inline": public_jwks() } } },
            "exchanges": { "opaque": {
                "mode": "introspection",
                "endpoint": { "uri": "http://auth/introspect", "cluster": "auth" },
                "client": { "id": "gateway", "secret": "s3cret" },
                "provider": "corp",
                "upstream": { "header": "authorization", "prefix": "Bearer " },
                "mint": { "issuer": "https://gw", "alg": "EdDSA", "key": private_jwk("eddsa"),
                          "jwks_path": "/.well-known/tokengate/jwks.json" }
            } }
        });
        let config = Config::from_json(doc.to_string().as_bytes()).unwrap();
        let request = Request {
            method: "GET".into(),
            path: "/.well-known/tokengate/jwks.json".into(),
            ..Request::default()
        };
        let decision = decide(
            &config,
            Services::local(),
            &request,
            &Clock::at_secs(NOW),
            &mut Caches::for_config(&config),
            false,
        );
        let Outcome::Reply(reply) = decision.outcome else {
            panic!("{decision:?}")
        };
        let jwks: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(jwks["keys"][0]["x"], private_jwk("eddsa")["x"]);
        assert!(jwks["keys"][0].get("d").is_none(), "never the private part");
    }
}

#[cfg(test)]
mod authz_tests {
    use super::*;
    use crate::testutil::*;
    use serde_json::json;
    use std::cell::RefCell;

    /// A policy service answering what the test sets, recording every input.
    struct FakePolicy {
        answer: Ask,
        inputs: RefCell<Vec<(String, bool)>>,
    }

    impl PolicyService for FakePolicy {
        fn ask(&self, _: [u8; 32], input: &dyn Fn() -> String, may_start: bool) -> Ask {
            self.inputs.borrow_mut().push((input(), may_start));
            self.answer.clone()
        }
    }

    fn policy(answer: Ask) -> FakePolicy {
        FakePolicy {
            answer,
            inputs: RefCell::new(Vec::new()),
        }
    }

    fn decided(decision: PolicyDecision) -> Ask {
        Ask::Decided {
            decision: Rc::new(decision),
            cached: false,
        }
    }

    fn config(on_error: &str) -> Config {
        let doc = json!({
            "realm": "api",
            "providers": { "corp": {
                "issuer": ISSUER, "jwks": { "inline": public_jwks() },
                "forward": { "claims": { "sub": "x-user-id" } }
            } },
            "authz_service": { "uri": "http://opa:8181/v1/data/http/authz", "cluster": "opa",
                               "on_error": on_error, "include_headers": ["x-tenant"] },
            "rules": [
                { "name": "public", "match": { "path": { "prefix": "/public" } }, "allow": "anonymous" },
                { "name": "owner", "match": { "path": { "template": "/users/{id}/orders" } },
                  "authn": { "any": ["corp"] },
                  "authz": { "all": [ { "path_param": "id", "equals_claim": "sub" },
                                      { "claim": "scope", "contains": "orders:read" } ] } },
                { "name": "trial", "match": { "path": { "prefix": "/trial" } }, "authn": { "any": ["corp"] },
                  "authz": { "claim": "scope", "contains": "never" }, "dry_run": true },
                { "name": "hybrid", "match": { "path": { "prefix": "/hybrid" } }, "authn": { "any": ["corp"] },
                  "authz": { "header": "x-tenant", "equals_claim": "tenant" }, "central": true }
            ]
        });
        Config::from_json(doc.to_string().as_bytes()).unwrap()
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut claims = good_claims();
        claims["scope"] = json!("orders:read profile");
        claims["tenant"] = json!("acme");
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    }

    fn run(
        config: &Config,
        policy: &FakePolicy,
        path: &str,
        headers: &[(&str, &str)],
        waited: bool,
    ) -> Decision {
        let request = Request {
            method: "GET".into(),
            path: path.into(),
            host: "api".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        };
        let services = Services {
            keyring: &NoRemoteKeys,
            exchanges: &NoExchanges,
            policy,
            login: &NoLoginService,
            revocations: &NoRevocations,
        };
        decide(
            config,
            services,
            &request,
            &Clock::at_secs(NOW),
            &mut Caches::for_config(config),
            waited,
        )
    }

    fn bearer(claims: &serde_json::Value) -> String {
        format!("Bearer {}", token("es256", claims))
    }

    fn status(decision: &Decision) -> u32 {
        match &decision.outcome {
            Outcome::Deny(deny) => deny.status,
            Outcome::Forward(_) => 200,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_user_reads_only_their_own_orders() {
        let config = config("deny");
        let never = policy(Ask::Failed);
        let auth = bearer(&claims(json!({"sub": "42"})));
        assert_eq!(
            status(&run(
                &config,
                &never,
                "/users/42/orders",
                &[("authorization", &auth)],
                false
            )),
            200
        );
        let other = run(
            &config,
            &never,
            "/users/43/orders",
            &[("authorization", &auth)],
            false,
        );
        assert_eq!(other.refusal, Some(Refusal::Forbidden));
        let Outcome::Deny(deny) = &other.outcome else {
            panic!()
        };
        assert_eq!(deny.status, 403);
        assert_eq!(
            deny.www_authenticate.as_deref(),
            Some("Bearer realm=\"api\", error=\"insufficient_scope\", error_description=\"rule owner denies this request\"")
        );
        assert!(!deny.body.contains("42"), "no claim values in the answer");
        assert!(other
            .counters
            .contains(&Counter::Rule(1, RuleEvent::Denied)));
        assert!(
            never.inputs.borrow().is_empty(),
            "no central callout for a local rule"
        );
    }

    #[test]
    fn a_missing_scope_is_403_and_a_missing_token_still_401() {
        let config = config("deny");
        let never = policy(Ask::Failed);
        let auth = bearer(&claims(json!({"sub": "42", "scope": "profile"})));
        assert_eq!(
            status(&run(
                &config,
                &never,
                "/users/42/orders",
                &[("authorization", &auth)],
                false
            )),
            403
        );
        assert_eq!(
            status(&run(&config, &never, "/users/42/orders", &[], false)),
            401
        );
    }

    #[test]
    fn a_dry_run_rule_lets_through_what_its_authz_would_refuse_as_if_allowed() {
        let config = config("deny");
        let never = policy(Ask::Failed);
        let auth = bearer(&claims(json!({})));
        let decision = run(
            &config,
            &never,
            "/trial/x",
            &[("authorization", &auth), ("x-user-id", "spoof")],
            false,
        );
        assert_eq!(
            decision.outcome,
            Outcome::Forward(vec![
                HeaderEdit::Remove("authorization".into()),
                HeaderEdit::Set("x-user-id".into(), "alice".into()),
            ])
        );
        assert_eq!(decision.dry_run, Some(Refusal::Forbidden));
        assert!(decision
            .counters
            .contains(&Counter::Rule(2, RuleEvent::DryRunDenied)));
    }

    #[test]
    fn a_dry_run_rule_still_enforces_authentication() {
        let config = config("deny");
        let never = policy(Ask::Failed);
        assert_eq!(status(&run(&config, &never, "/trial/x", &[], false)), 401);
        let mut expired = claims(json!({}));
        expired["exp"] = json!(NOW - 3600);
        let auth = bearer(&expired);
        assert_eq!(
            status(&run(
                &config,
                &never,
                "/trial/x",
                &[("authorization", &auth)],
                false
            )),
            401
        );
    }

    #[test]
    fn paths_that_could_mean_another_path_upstream_are_refused_before_any_rule() {
        let config = config("deny");
        let never = policy(Ask::Failed);
        for path in [
            "/public/../users/42/orders",
            "/public/%2e%2e/admin",
            "//users/42/orders",
            "/public/..;/x",
        ] {
            let decision = run(&config, &never, path, &[], false);
            assert_eq!(status(&decision), 400, "{path}");
            assert!(matches!(decision.refusal, Some(Refusal::BadPath(_))));
        }
        // An unreserved escape is decoded before matching.
        assert_eq!(
            status(&run(&config, &never, "/%70ublic/x", &[], false)),
            200
        );
    }

    #[test]
    fn hybrid_local_deny_never_asks_the_central_service() {
        let config = config("deny");
        let allow = policy(decided(PolicyDecision {
            allow: true,
            ..PolicyDecision::default()
        }));
        let auth = bearer(&claims(json!({})));
        let decision = run(
            &config,
            &allow,
            "/hybrid",
            &[("authorization", &auth), ("x-tenant", "evil")],
            false,
        );
        assert_eq!(status(&decision), 403);
        assert!(allow.inputs.borrow().is_empty());
    }

    #[test]
    fn the_central_service_gets_the_opa_envoy_input_with_the_identity() {
        let config = config("deny");
        let allow = policy(decided(PolicyDecision {
            allow: true,
            upstream_headers: vec![("x-policy".into(), "v1".into())],
            ..PolicyDecision::default()
        }));
        let auth = bearer(&claims(json!({})));
        let decision = run(
            &config,
            &allow,
            "/hybrid/a?x=1",
            &[("authorization", &auth), ("x-tenant", "acme")],
            false,
        );
        let Outcome::Forward(edits) = &decision.outcome else {
            panic!("{decision:?}")
        };
        assert!(edits.contains(&HeaderEdit::Set("x-policy".into(), "v1".into())));
        assert!(decision
            .counters
            .contains(&Counter::AuthzService(AuthzEvent::Allowed)));
        let inputs = allow.inputs.borrow();
        let input: Value = serde_json::from_str(&inputs[0].0).unwrap();
        assert_eq!(input["input"]["identity"]["provider"], "corp");
        assert_eq!(input["input"]["identity"]["claims"]["tenant"], "acme");
        assert_eq!(input["input"]["parsed_path"], json!(["hybrid", "a"]));
        assert_eq!(
            input["input"]["attributes"]["request"]["http"]["headers"],
            json!({"x-tenant": "acme"})
        );
        assert!(
            !inputs[0].0.contains(&auth[7..]),
            "the token never reaches the policy"
        );
    }

    #[test]
    fn the_policy_sees_the_filters_identity_headers_never_the_clients() {
        let mut config = config("deny");
        if let Some(service) = config.authz_service.as_mut() {
            service.include_headers = vec!["x-user-id".into(), "x-tenant".into()];
        }
        let allow = policy(decided(PolicyDecision {
            allow: true,
            ..PolicyDecision::default()
        }));
        let auth = bearer(&claims(json!({})));
        let headers = [
            ("authorization", auth.as_str()),
            ("x-tenant", "acme"),
            ("x-user-id", "root"),
        ];
        run(&config, &allow, "/hybrid", &headers, false);
        let input: Value = serde_json::from_str(&allow.inputs.borrow()[0].0).unwrap();
        assert_eq!(
            input["input"]["attributes"]["request"]["http"]["headers"],
            json!({"x-user-id": "alice", "x-tenant": "acme"})
        );
    }

    #[test]
    fn a_central_deny_shapes_the_answer() {
        let config = config("deny");
        let deny = policy(decided(PolicyDecision {
            allow: false,
            status: Some(451),
            body: Some("blocked".into()),
            response_headers: vec![("x-reason".into(), "geo".into())],
            ..PolicyDecision::default()
        }));
        let auth = bearer(&claims(json!({})));
        let decision = run(
            &config,
            &deny,
            "/hybrid",
            &[("authorization", &auth), ("x-tenant", "acme")],
            false,
        );
        let Outcome::Deny(answer) = &decision.outcome else {
            panic!()
        };
        assert_eq!((answer.status, answer.body.as_str()), (451, "blocked"));
        assert_eq!(answer.headers, vec![("x-reason".into(), "geo".into())]);
        assert_eq!(decision.refusal, Some(Refusal::CentralDenied));
        let plain = policy(decided(PolicyDecision::default()));
        let decision = run(
            &config,
            &plain,
            "/hybrid",
            &[("authorization", &auth), ("x-tenant", "acme")],
            false,
        );
        let Outcome::Deny(answer) = &decision.outcome else {
            panic!()
        };
        assert_eq!(answer.status, 403);
        assert!(answer
            .www_authenticate
            .as_deref()
            .unwrap()
            .contains("insufficient_scope"));
    }

    #[test]
    fn a_pending_decision_waits_once_then_on_error_decides() {
        let auth = bearer(&claims(json!({})));
        let headers = [("authorization", auth.as_str()), ("x-tenant", "acme")];
        let pending = policy(Ask::Pending);
        let deny_on_error = config("deny");
        let first = run(&deny_on_error, &pending, "/hybrid", &headers, false);
        assert!(matches!(&first.outcome, Outcome::Wait(w) if w.central.is_some()));
        let later = run(&deny_on_error, &pending, "/hybrid", &headers, true);
        assert_eq!(
            (status(&later), later.refusal),
            (503, Some(Refusal::AuthzUnavailable))
        );
        let allow_on_error = config("allow");
        let later = run(
            &allow_on_error,
            &policy(Ask::Failed),
            "/hybrid",
            &headers,
            false,
        );
        assert_eq!(status(&later), 200);
        assert!(later
            .counters
            .contains(&Counter::AuthzService(AuthzEvent::Failure)));
    }
}

#[cfg(test)]
mod login_tests {
    use super::*;
    use crate::login::pkce::challenge_s256;
    use crate::testutil::{good_claims, public_jwks, token, ISSUER, NOW};
    use serde_json::json;
    use std::cell::Cell;

    /// Randomness that differs on every call, and is known.
    struct FakeLogin(Cell<u8>);

    impl LoginService for FakeLogin {
        fn endpoints(&self, _: usize) -> LoginEndpoints {
            LoginEndpoints::Unavailable
        }
        fn random(&self, out: &mut [u8]) -> bool {
            let seed = self.0.get().wrapping_add(1);
            self.0.set(seed);
            out.iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = seed.wrapping_mul(31).wrapping_add(i as u8));
            true
        }
    }

    fn config() -> Config {
        Config::from_json(config_json().as_bytes()).unwrap()
    }

    fn config_json() -> String {
        let doc = json!({
            "providers": {"corp": {
                "issuer": ISSUER,
                "audiences": ["orders"],
                "jwks": {"inline": public_jwks()},
                "forward": {"claims": {"sub": "x-user"}},
                "login": {
                    "authorization_endpoint": "https://idp.test/authorize",
                    "token_endpoint": "http://idp.test/token",
                    "end_session_endpoint": "https://idp.test/logout",
                    "cluster": "idp",
                    "client": {"id": "web", "secret": "s3cret"},
                    "scopes": ["openid", "profile"],
                    "logout_path": "/oauth2/logout",
                    "cookie_secret": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"
                }
            }}
        });
        doc.to_string()
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut all = vec![
            (":scheme".to_owned(), "https".to_owned()),
            (
                "accept".to_owned(),
                "text/html,application/xhtml+xml".to_owned(),
            ),
        ];
        all.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        Request {
            method: method.into(),
            path: path.into(),
            host: "gw.test".into(),
            headers: all,
        }
    }

    fn run(config: &Config, login: &FakeLogin, request: &Request) -> Decision {
        let services = Services {
            login,
            ..Services::local()
        };
        let mut caches = Caches::for_config(config);
        decide(
            config,
            services,
            request,
            &Clock::at_secs(NOW),
            &mut caches,
            false,
        )
    }

    fn header<'a>(reply: &'a Reply, name: &str) -> Vec<&'a str> {
        reply
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn query_value(url: &str, name: &str) -> String {
        let (_, query) = url.split_once('?').unwrap();
        let raw = query
            .split('&')
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .unwrap();
        crate::token::extract::percent_decode(&raw.replace('+', " ")).unwrap()
    }

    /// `name=value` of a Set-Cookie line.
    fn cookie_pair(set_cookie: &str) -> &str {
        set_cookie.split(';').next().unwrap()
    }

    fn id_token(nonce: &str) -> String {
        token(
            "rs256",
            &json!({"iss": ISSUER, "aud": "web", "sub": "alice", "nonce": nonce,
                    "iat": NOW - 1, "exp": NOW + 300, "sid": "s-1"}),
        )
    }

    /// Signs in: the redirect, the callback, the token endpoint's answer. Returns the
    /// callback's call, the redirect's state cookie and the final reply.
    fn sign_in(
        config: &Config,
        login: &FakeLogin,
        answer: impl Fn(&str) -> (u32, String),
    ) -> (Reply, Vec<Counter>) {
        let start = run(config, login, &request("GET", "/orders/7?x=1", &[]));
        let Outcome::Reply(redirect) = start.outcome else {
            panic!("{:?}", start.outcome)
        };
        let location = header(&redirect, "location")[0].to_owned();
        let state = query_value(&location, "state");
        let nonce = query_value(&location, "nonce");
        let state_cookie = cookie_pair(header(&redirect, "set-cookie")[0]).to_owned();
        let callback = request(
            "GET",
            &format!("/oauth2/callback?code=c0de&state={state}"),
            &[("cookie", &state_cookie)],
        );
        let decision = run(config, login, &callback);
        let Outcome::Call(call) = decision.outcome else {
            panic!("{:?}", decision.outcome)
        };
        let (status, body) = answer(&nonce);
        match finish_login(
            config,
            Services {
                login,
                ..Services::local()
            },
            &call,
            &callback,
            status,
            body.as_bytes(),
            NOW,
        ) {
            LoginFinish::Reply(reply, counters) => (reply, counters),
            other => panic!("{other:?}"),
        }
    }

    fn good_answer(nonce: &str) -> (u32, String) {
        let body = json!({"access_token": token("rs256", &good_claims()),
                          "id_token": id_token(nonce), "token_type": "Bearer",
                          "expires_in": 600});
        (200, body.to_string())
    }

    #[test]
    fn a_browser_without_a_session_is_sent_to_sign_in_with_pkce_and_a_sealed_state() {
        let config = config();
        let decision = run(
            &config,
            &FakeLogin(Cell::new(0)),
            &request("GET", "/orders", &[]),
        );
        let Outcome::Reply(reply) = decision.outcome else {
            panic!("{:?}", decision.outcome)
        };
        assert_eq!(reply.status, 302);
        let location = header(&reply, "location")[0];
        assert!(location.starts_with("https://idp.test/authorize?response_type=code&client_id=web&redirect_uri=https%3A%2F%2Fgw.test%2Foauth2%2Fcallback&scope=openid%20profile&state="), "{location}");
        assert!(
            location.ends_with("&code_challenge_method=S256"),
            "{location}"
        );
        let state = query_value(location, "state");
        let cookie = header(&reply, "set-cookie")[0];
        assert!(
            cookie.starts_with(&format!("tg_session.login.{}=", &state[..8])),
            "{cookie}"
        );
        assert!(cookie.contains("HttpOnly") && cookie.contains("Path=/oauth2/callback"));
        assert!(decision
            .counters
            .contains(&Counter::Login(LoginEvent::Redirect)));
    }

    #[test]
    fn an_api_call_or_a_post_without_a_session_still_gets_401() {
        let config = config();
        let login = FakeLogin(Cell::new(0));
        let mut api = request("GET", "/orders", &[]);
        api.headers.retain(|(n, _)| n != "accept");
        api.headers
            .push(("accept".into(), "application/json".into()));
        let post = request("POST", "/orders", &[]);
        for request in [api, post] {
            let Outcome::Deny(deny) = run(&config, &login, &request).outcome else {
                panic!()
            };
            assert_eq!(deny.status, 401);
        }
    }

    #[test]
    fn the_whole_flow_sets_the_session_cookie_and_goes_back_to_the_page() {
        let config = config();
        let login = FakeLogin(Cell::new(0));
        let (reply, counters) = sign_in(&config, &login, good_answer);
        assert_eq!(reply.status, 302, "{}", reply.body);
        assert_eq!(header(&reply, "location"), vec!["/orders/7?x=1"]);
        assert!(counters.contains(&Counter::Login(LoginEvent::Success)));
        let cookies = header(&reply, "set-cookie");
        let session = cookies
            .iter()
            .find(|c| c.starts_with("tg_session="))
            .unwrap();
        assert_eq!(
            cookie_pair(session),
            format!("tg_session={}", token("rs256", &good_claims()))
        );
        assert!(session.contains("HttpOnly") && session.contains("Secure"));
        assert!(cookies.iter().any(|c| c.starts_with("tg_session.aux=")));
        assert!(cookies
            .iter()
            .any(|c| c.starts_with("tg_session.login.") && c.contains("Max-Age=0")));

        // The session cookie now authenticates; no login cookie goes upstream.
        let aux = cookie_pair(
            cookies
                .iter()
                .find(|c| c.starts_with("tg_session.aux="))
                .unwrap(),
        );
        let jar = format!("theme=dark; {}; {aux}", cookie_pair(session));
        let decision = run(
            &config,
            &login,
            &request("GET", "/orders/7", &[("cookie", &jar)]),
        );
        let Outcome::Forward(edits) = decision.outcome else {
            panic!("{:?}", decision.outcome)
        };
        assert!(edits.contains(&HeaderEdit::Set("x-user".into(), "alice".into())));
        assert!(edits.contains(&HeaderEdit::Set("cookie".into(), "theme=dark".into())));
        assert_eq!(
            edits
                .iter()
                .filter(
                    |e| matches!(e, HeaderEdit::Set(n, _) | HeaderEdit::Remove(n) if &**n == "cookie")
                )
                .count(),
            1
        );

        // Logout clears the cookies and hands the ID token to the end-session endpoint.
        let decision = run(
            &config,
            &login,
            &request("GET", "/oauth2/logout", &[("cookie", &jar)]),
        );
        let Outcome::Reply(reply) = decision.outcome else {
            panic!()
        };
        let location = header(&reply, "location")[0];
        assert!(
            location.starts_with("https://idp.test/logout?id_token_hint=ey"),
            "{location}"
        );
        assert!(location.contains("post_logout_redirect_uri=https%3A%2F%2Fgw.test%2F"));
        let cleared = header(&reply, "set-cookie");
        assert!(cleared
            .iter()
            .any(|c| c.starts_with("tg_session=;") && c.contains("Max-Age=0")));
        assert!(cleared.iter().any(|c| c.starts_with("tg_session.aux=;")));
    }

    #[test]
    fn the_code_is_redeemed_with_the_verifier_of_the_challenge_and_basic_auth() {
        let config = config();
        let login = FakeLogin(Cell::new(0));
        let start = run(&config, &login, &request("GET", "/", &[]));
        let Outcome::Reply(redirect) = start.outcome else {
            panic!()
        };
        let location = header(&redirect, "location")[0];
        let state = query_value(location, "state");
        let challenge = query_value(location, "code_challenge");
        let cookie = cookie_pair(header(&redirect, "set-cookie")[0]).to_owned();
        let callback = request(
            "GET",
            &format!(
                "/oauth2/callback?code=c0de&state={state}&iss={}",
                crate::exchange::callout::percent_encode(ISSUER)
            ),
            &[("cookie", &cookie)],
        );
        let Outcome::Call(call) = run(&config, &login, &callback).outcome else {
            panic!()
        };
        let body = String::from_utf8(call.callout.body.clone()).unwrap();
        let verifier = body
            .split('&')
            .find_map(|p| p.strip_prefix("code_verifier="))
            .unwrap();
        assert_eq!(challenge_s256(verifier), challenge);
        assert!(body.starts_with("grant_type=authorization_code&code=c0de&redirect_uri="));
        assert!(call
            .callout
            .headers
            .iter()
            .any(|(n, v)| n == "authorization" && v.starts_with("Basic ")));
        assert_eq!(call.callout.cluster, "idp");
    }

    #[test]
    fn a_callback_with_another_state_a_foreign_issuer_or_no_cookie_is_refused() {
        let config = config();
        let login = FakeLogin(Cell::new(0));
        let start = run(&config, &login, &request("GET", "/", &[]));
        let Outcome::Reply(redirect) = start.outcome else {
            panic!()
        };
        let state = query_value(header(&redirect, "location")[0], "state");
        let cookie = cookie_pair(header(&redirect, "set-cookie")[0]).to_owned();
        let mut forged = state.clone();
        forged.replace_range(20..21, if &state[20..21] == "A" { "B" } else { "A" });
        let cases = [
            format!("/oauth2/callback?code=c&state={forged}"),
            format!("/oauth2/callback?code=c&state={state}&iss=https%3A%2F%2Fevil.test"),
            "/oauth2/callback?code=c".to_owned(),
        ];
        for path in cases {
            let decision = run(
                &config,
                &login,
                &request("GET", &path, &[("cookie", &cookie)]),
            );
            let Outcome::Reply(reply) = decision.outcome else {
                panic!("{path}")
            };
            assert_eq!(reply.status, 400, "{path}");
            assert!(!reply.body.contains(&state));
            assert!(decision
                .counters
                .contains(&Counter::Login(LoginEvent::StateMismatch)));
        }
        let no_cookie = request(
            "GET",
            &format!("/oauth2/callback?code=c&state={state}"),
            &[],
        );
        let Outcome::Reply(reply) = run(&config, &login, &no_cookie).outcome else {
            panic!()
        };
        assert_eq!(reply.status, 400);
    }

    #[test]
    fn an_id_token_with_another_nonce_audience_or_signer_is_refused() {
        let config = config();
        let login = FakeLogin(Cell::new(0));
        type Answer = fn(&str) -> (u32, String);
        let bad_answers: [Answer; 3] = [
            |_| good_answer("another-nonce"),
            |nonce| {
                let id = token(
                    "rs256",
                    &json!({"iss": ISSUER, "aud": "other", "sub": "a", "nonce": nonce, "iat": NOW, "exp": NOW + 60}),
                );
                (
                    200,
                    json!({"access_token": token("rs256", &good_claims()), "id_token": id})
                        .to_string(),
                )
            },
            |nonce| {
                let id = token(
                    "rs256-other",
                    &json!({"iss": ISSUER, "aud": "web", "sub": "a", "nonce": nonce, "iat": NOW, "exp": NOW + 60}),
                );
                (
                    200,
                    json!({"access_token": token("rs256", &good_claims()), "id_token": id})
                        .to_string(),
                )
            },
        ];
        for answer in bad_answers {
            let (reply, counters) = sign_in(&config, &login, answer);
            assert_eq!(reply.status, 401, "{}", reply.body);
            assert!(counters.contains(&Counter::Login(LoginEvent::IdTokenInvalid)));
            assert!(reply.headers.iter().all(|(n, _)| n != "set-cookie"));
        }
    }

    #[test]
    fn a_refused_code_or_a_failing_token_endpoint_is_a_clear_page() {
        let config = config();
        let login = FakeLogin(Cell::new(0));
        let (reply, counters) = sign_in(&config, &login, |_| {
            (400, json!({"error": "invalid_grant"}).to_string())
        });
        assert_eq!(reply.status, 400);
        assert!(counters.contains(&Counter::Login(LoginEvent::TokenEndpointFailure)));
        let (reply, _) = sign_in(&config, &login, |_| (0, String::new()));
        assert_eq!(reply.status, 503);
        assert!(reply.content_type.starts_with("text/html"));
    }

    #[test]
    fn a_session_about_to_expire_is_refreshed_and_the_request_goes_on_with_the_new_token() {
        let mut doc: Value = serde_json::from_str(&config_json()).unwrap();
        doc["providers"]["corp"]["login"]["refresh"] = json!(true);
        let config = Config::from_json(doc.to_string().as_bytes()).unwrap();
        let login = FakeLogin(Cell::new(0));
        let mut short = good_claims();
        short["exp"] = json!(NOW + 10);
        let short_token = token("rs256", &short);
        let (reply, _) = sign_in(&config, &login, |nonce| {
            let body = json!({"access_token": token("rs256", &short), "id_token": id_token(nonce),
                              "refresh_token": "r-1", "token_type": "Bearer"});
            (200, body.to_string())
        });
        let jar: Vec<&str> = header(&reply, "set-cookie")
            .into_iter()
            .filter(|c| !c.contains("Max-Age=0"))
            .map(cookie_pair)
            .collect();
        let jar = jar.join("; ");
        assert!(jar.contains(&short_token) && jar.contains("tg_session.aux="));
        let page = request("GET", "/orders", &[("cookie", &jar)]);
        let decision = run(&config, &login, &page);
        let Outcome::Call(call) = decision.outcome else {
            panic!("{:?}", decision.outcome)
        };
        assert!(matches!(call.step, LoginStep::Refresh));
        let body = String::from_utf8(call.callout.body.clone()).unwrap();
        assert_eq!(body, "grant_type=refresh_token&refresh_token=r-1");

        let fresh = token("rs256", &good_claims());
        let answer = json!({"access_token": fresh, "token_type": "Bearer"}).to_string();
        let services = Services {
            login: &login,
            ..Services::local()
        };
        let finish = finish_login(&config, services, &call, &page, 200, answer.as_bytes(), NOW);
        let LoginFinish::Retry {
            request: retried,
            set_cookies,
            counters,
        } = finish
        else {
            panic!("{finish:?}")
        };
        assert!(counters.contains(&Counter::Login(LoginEvent::Refresh)));
        assert!(set_cookies
            .iter()
            .any(|c| c.starts_with(&format!("tg_session={fresh};"))));
        // The refresh token the answer left out is kept (sealed) for the next refresh.
        assert!(set_cookies.iter().any(|c| c.starts_with("tg_session.aux=")));
        assert!(retried.header("cookie").unwrap().contains(&fresh));
        let mut caches = Caches::for_config(&config);
        // Decided again after the refresh step, as the host does: waited.
        let mut decide_again = |request: &Request| {
            let clock = Clock::at_secs(NOW);
            decide(&config, services, request, &clock, &mut caches, true)
        };
        let again = decide_again(&retried);
        assert!(
            matches!(again.outcome, Outcome::Forward(_)),
            "{:?}",
            again.outcome
        );

        // A refused refresh lets the still-valid token through (decided again, waited).
        let refused = finish_login(
            &config,
            services,
            &call,
            &page,
            400,
            b"{\"error\":\"invalid_grant\"}",
            NOW,
        );
        assert!(matches!(refused, LoginFinish::Unrefreshed(_)));
        let again = decide_again(&page);
        assert!(
            matches!(again.outcome, Outcome::Forward(_)),
            "{:?}",
            again.outcome
        );
    }

    #[test]
    fn an_opaque_access_token_becomes_a_session_an_exchange_reads() {
        let mut doc: Value = serde_json::from_str(&config_json()).unwrap();
        doc["exchanges"] = json!({"opaque": {
            "sources": [{"cookie": "tg_session"}],
            "mode": "introspection",
            "endpoint": {"uri": "http://idp.test/introspect", "cluster": "idp"},
            "client": {"id": "gateway", "secret": "s"},
            "provider": "corp"
        }});
        doc["rules"] = json!([{"name": "app", "match": {}, "authn": {"any": ["opaque"]}}]);
        let config = Config::from_json(doc.to_string().as_bytes()).unwrap();
        let login = FakeLogin(Cell::new(0));
        // No session: a browser is sent to sign in, through the exchange's provider.
        let decision = run(&config, &login, &request("GET", "/app", &[]));
        let Outcome::Reply(reply) = decision.outcome else {
            panic!("{:?}", decision.outcome)
        };
        assert_eq!(reply.status, 302);
        let (reply, _) = sign_in(&config, &login, |nonce| {
            let body = json!({"access_token": "opaque-0123456789", "id_token": id_token(nonce),
                              "token_type": "Bearer", "expires_in": 900});
            (200, body.to_string())
        });
        assert_eq!(reply.status, 302, "{}", reply.body);
        let session = header(&reply, "set-cookie")
            .into_iter()
            .find(|c| c.starts_with("tg_session="))
            .unwrap();
        assert!(session.starts_with("tg_session=opaque-0123456789;"));
        assert!(session.contains("Max-Age=900"), "{session}");
    }

    #[test]
    fn an_access_token_the_provider_would_refuse_never_becomes_a_session() {
        let config = config();
        let login = FakeLogin(Cell::new(0));
        let (reply, _) = sign_in(&config, &login, |nonce| {
            let wrong_audience = token(
                "rs256",
                &json!({"iss": ISSUER, "aud": "billing", "sub": "a", "exp": NOW + 60}),
            );
            (
                200,
                json!({"access_token": wrong_audience, "id_token": id_token(nonce)}).to_string(),
            )
        });
        assert_eq!(reply.status, 502);
        assert!(reply.headers.iter().all(|(n, _)| n != "set-cookie"));
    }
}

#[cfg(test)]
mod revocation_tests {
    use super::*;
    use crate::testutil::*;
    use miniz_oxide::deflate::compress_to_vec_zlib;
    use serde_json::{json, Value};
    use std::cell::{Cell, RefCell};

    const LIST: &str = "https://idp.test/lists/1";

    /// A host whose lists and denylist the test sets.
    #[derive(Default)]
    struct FakeHost {
        list: RefCell<Option<ListState>>,
        denylist: RefCell<Option<Rc<Denylist>>>,
        asked: Cell<u32>,
    }

    impl Revocations for FakeHost {
        fn status_list(&self, _: usize, uri: &Rc<str>) -> ListState {
            assert_eq!(&**uri, LIST);
            self.asked.set(self.asked.get() + 1);
            self.list.borrow().clone().unwrap_or(ListState::Unavailable)
        }
        fn denylist(&self, _: usize) -> Option<Rc<Denylist>> {
            self.denylist.borrow().clone()
        }
    }

    fn config(revocation: Value) -> Config {
        let doc = json!({
            "providers": { "corp": { "issuer": ISSUER, "audiences": ["orders"],
                "jwks": { "inline": public_jwks() }, "revocation": revocation } }
        });
        Config::from_json(doc.to_string().as_bytes()).unwrap()
    }

    fn lists(extra: Value) -> Value {
        let mut list = json!({"origins": {"https://idp.test": "idp"}});
        for (k, v) in extra.as_object().unwrap() {
            list[k] = v.clone();
        }
        json!({"status_list": list, "backchannel_logout": {"path": "/bcl", "client_id": "gateway"}})
    }

    fn list_of(statuses: &[u8]) -> ListState {
        let lst = b64::encode(&compress_to_vec_zlib(statuses, 6));
        let mut list = StatusList::decode(8, &lst, 1024).unwrap();
        list.expires_at = NOW + 60;
        ListState::Ready(Rc::new(list))
    }

    fn with_status(idx: u64) -> String {
        let mut claims = good_claims();
        claims["status"] = json!({"status_list": {"idx": idx, "uri": LIST}});
        claims["iat"] = json!(NOW - 100);
        claims["sid"] = json!("s-1");
        token("es256", &claims)
    }

    fn request(token: &str) -> Request {
        Request {
            method: "GET".into(),
            path: "/api".into(),
            host: "svc".into(),
            headers: vec![("authorization".into(), format!("Bearer {token}"))],
        }
    }

    fn decide_with(
        config: &Config,
        host: &FakeHost,
        caches: &mut Caches,
        token: &str,
        waited: bool,
    ) -> Decision {
        let services = Services {
            revocations: host,
            ..Services::local()
        };
        decide(
            config,
            services,
            &request(token),
            &Clock::at_secs(NOW),
            caches,
            waited,
        )
    }

    fn refusal(decision: &Decision) -> Option<Refusal> {
        decision.refusal
    }

    #[test]
    fn a_valid_entry_forwards_and_revoked_or_suspended_entries_are_refused() {
        let config = config(lists(json!({})));
        let host = FakeHost::default();
        *host.list.borrow_mut() = Some(list_of(&[0, 1, 2, 3]));
        let mut caches = Caches::for_config(&config);
        let ok = decide_with(&config, &host, &mut caches, &with_status(0), false);
        assert!(matches!(ok.outcome, Outcome::Forward(_)), "{ok:?}");
        let cases = [
            (1, AuthnError::Revoked),
            (2, AuthnError::Suspended),
            (3, AuthnError::StatusInvalid),
            (9, AuthnError::StatusInvalid),
        ];
        for (idx, error) in cases {
            let d = decide_with(&config, &host, &mut caches, &with_status(idx), false);
            assert_eq!(refusal(&d), Some(Refusal::Authn(error)), "idx {idx}");
        }
        let d = decide_with(&config, &host, &mut caches, &with_status(1), false);
        assert!(d
            .counters
            .contains(&Counter::Revocation(RevocationEvent::ListRevoked)));
    }

    #[test]
    fn a_cached_token_is_refused_once_its_entry_turns_revoked_and_accepted_again_after() {
        let config = config(lists(json!({})));
        let host = FakeHost::default();
        let mut caches = Caches::for_config(&config);
        let token = with_status(1);
        *host.list.borrow_mut() = Some(list_of(&[0, 0]));
        assert!(matches!(
            decide_with(&config, &host, &mut caches, &token, false).outcome,
            Outcome::Forward(_)
        ));
        *host.list.borrow_mut() = Some(list_of(&[0, 1]));
        let d = decide_with(&config, &host, &mut caches, &token, false);
        assert!(d.counters.contains(&Counter::CacheHit), "a cache hit");
        assert_eq!(refusal(&d), Some(Refusal::Authn(AuthnError::Revoked)));
        *host.list.borrow_mut() = Some(list_of(&[0, 0]));
        let d = decide_with(&config, &host, &mut caches, &token, false);
        assert!(matches!(d.outcome, Outcome::Forward(_)));
        assert_eq!(host.asked.get(), 3, "every request looks its entry up");
    }

    #[test]
    fn a_pending_list_waits_then_follows_on_unavailable() {
        let deny = config(lists(json!({})));
        let host = FakeHost::default();
        *host.list.borrow_mut() = Some(ListState::Pending);
        let mut caches = Caches::for_config(&deny);
        let d = decide_with(&deny, &host, &mut caches, &with_status(0), false);
        match d.outcome {
            Outcome::Wait(waits) => assert_eq!(waits.status_lists, vec![(0, Rc::from(LIST))]),
            other => panic!("{other:?}"),
        }
        // Pending is the host's word that this request may wait, even after it waited
        // for something else (its provider's keys).
        let d = decide_with(&deny, &host, &mut caches, &with_status(0), true);
        assert!(matches!(d.outcome, Outcome::Wait(_)), "{d:?}");
        *host.list.borrow_mut() = Some(ListState::Unavailable);
        let d = decide_with(&deny, &host, &mut caches, &with_status(0), true);
        assert_eq!(
            refusal(&d),
            Some(Refusal::Authn(AuthnError::StatusUnavailable))
        );
        match d.outcome {
            Outcome::Deny(deny) => assert_eq!(deny.status, 503),
            other => panic!("{other:?}"),
        }
        let allow = config(lists(json!({"on_unavailable": "allow"})));
        *host.list.borrow_mut() = Some(ListState::Unavailable);
        let mut caches = Caches::for_config(&allow);
        let d = decide_with(&allow, &host, &mut caches, &with_status(0), false);
        assert!(matches!(d.outcome, Outcome::Forward(_)));
        assert!(d.counters.contains(&Counter::Revocation(
            RevocationEvent::ListUnavailableAllowed
        )));
    }

    #[test]
    fn a_token_without_status_passes_unless_status_is_required() {
        let host = FakeHost::default();
        let plain = token("es256", &good_claims());
        let optional = config(lists(json!({})));
        let d = decide_with(
            &optional,
            &host,
            &mut Caches::for_config(&optional),
            &plain,
            false,
        );
        assert!(matches!(d.outcome, Outcome::Forward(_)));
        assert_eq!(host.asked.get(), 0);
        let required = config(lists(json!({"require_status": true})));
        let d = decide_with(
            &required,
            &host,
            &mut Caches::for_config(&required),
            &plain,
            false,
        );
        assert_eq!(refusal(&d), Some(Refusal::Authn(AuthnError::StatusMissing)));
    }

    #[test]
    fn a_list_on_another_origin_is_refused_without_asking_the_host() {
        let config = config(lists(json!({})));
        let host = FakeHost::default();
        let mut claims = good_claims();
        claims["status"] = json!({"status_list": {"idx": 0, "uri": "https://evil.test/list"}});
        let d = decide_with(
            &config,
            &host,
            &mut Caches::for_config(&config),
            &token("es256", &claims),
            false,
        );
        assert_eq!(
            refusal(&d),
            Some(Refusal::Authn(AuthnError::StatusUriNotAllowed))
        );
        assert_eq!(host.asked.get(), 0, "no fetch for it");
    }

    #[test]
    fn a_logged_out_subject_is_refused_cached_or_not_and_a_later_token_accepted() {
        let config =
            config(json!({"backchannel_logout": {"path": "/bcl", "client_id": "gateway"}}));
        let host = FakeHost::default();
        let mut caches = Caches::for_config(&config);
        let mut claims = good_claims();
        claims["iat"] = json!(NOW - 100);
        let before = token("es256", &claims);
        assert!(matches!(
            decide_with(&config, &host, &mut caches, &before, false).outcome,
            Outcome::Forward(_)
        ));
        let mut denylist = Denylist::default();
        let logout = Logout {
            sub: Some("alice".into()),
            sid: None,
            jti: "j".into(),
            iat: NOW - 50,
        };
        denylist.record(&logout, NOW - 50, 3600, 60).unwrap();
        *host.denylist.borrow_mut() = Some(Rc::new(denylist));
        let d = decide_with(&config, &host, &mut caches, &before, false);
        assert!(d.counters.contains(&Counter::CacheHit));
        assert_eq!(refusal(&d), Some(Refusal::Authn(AuthnError::Revoked)));
        claims["iat"] = json!(NOW - 10);
        let after = token("es256", &claims);
        assert!(matches!(
            decide_with(&config, &host, &mut caches, &after, false).outcome,
            Outcome::Forward(_)
        ));
    }

    #[test]
    fn the_backchannel_path_is_the_filters_own_and_reads_a_logout_token() {
        let config =
            config(json!({"backchannel_logout": {"path": "/bcl", "client_id": "gateway"}}));
        let mut get = request("x");
        get.path = "/bcl".into();
        assert_eq!(backchannel_endpoint(&config, &get), Some(0));
        let d = decide(
            &config,
            Services::local(),
            &get,
            &Clock::at_secs(NOW),
            &mut Caches::for_config(&config),
            false,
        );
        assert!(
            matches!(d.outcome, Outcome::Reply(Reply { status: 405, .. })),
            "{d:?}"
        );
        let claims = json!({"iss": ISSUER, "aud": "gateway", "iat": NOW, "jti": "j", "sub": "alice",
                            "events": {logout::EVENT: {}}});
        let body = format!("logout_token={}", token("es256", &claims));
        let logout = backchannel_logout(&config, 0, body.as_bytes(), None, NOW).unwrap();
        assert_eq!(logout.sub.as_deref(), Some("alice"));
        assert_eq!(
            backchannel_logout(&config, 0, b"token=x", None, NOW),
            Err(LogoutError::MissingToken)
        );
        let huge = vec![b'a'; logout::MAX_BODY_BYTES + 1];
        assert_eq!(
            backchannel_logout(&config, 0, &huge, None, NOW),
            Err(LogoutError::BodyTooLarge)
        );
    }
}

/// Times a cached request's pieces: `cargo test --release --lib cached_path_pieces --
/// --ignored --nocapture` natively; inside V8, the same test binary built for wasm32-wasip1
/// under Node (`make probe`). Numbers only, never a verdict: README, Performance.
#[cfg(test)]
mod perf_probe {
    use super::*;
    use crate::testutil::*;
    use serde_json::json;

    fn time(label: &str, iters: u32, mut f: impl FnMut()) {
        for _ in 0..iters / 10 {
            f();
        }
        let start = std::time::Instant::now();
        for _ in 0..iters {
            f();
        }
        let ns = start.elapsed().as_nanos() / u128::from(iters);
        let place = if cfg!(target_arch = "wasm32") {
            "wasm32"
        } else {
            "native"
        };
        println!("PROBE {place} {label}: {ns} ns");
    }

    #[test]
    #[ignore]
    fn cached_path_pieces() {
        for fwd in [false, true] {
            let mut p = json!({
                "issuer": ISSUER,
                "audiences": ["orders"],
                "jwks": { "inline": public_jwks() },
            });
            if fwd {
                p["forward"] = json!({
                    "claims": { "sub": "x-user-id", "scope": "x-user-scope", "realm_access.roles": "x-user-roles" },
                    "payload_header": "x-jwt-payload"
                });
            }
            let config = Config::from_json(
                json!({"providers": {"corp": p}, "rules": [{"name": "all", "match": {}, "authn": {"any": ["corp"]}}]})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
            let token = token("eddsa", &good_claims());
            let auth = format!("Bearer {token}");
            let request = Request {
                method: "GET".into(),
                path: "/api".into(),
                host: "svc".into(),
                headers: vec![("authorization".into(), auth.clone())],
            };
            let mut caches = Caches::for_config(&config);
            let clock = Clock::at_secs(NOW);
            let mut cached = || {
                decide(
                    &config,
                    Services::local(),
                    &request,
                    &clock,
                    &mut caches,
                    false,
                )
            };
            let d = cached();
            assert!(matches!(d.outcome, Outcome::Forward(_)), "{d:?}");
            let label = if fwd { "fwd" } else { "plain" };
            time(&format!("{label} decide"), 200_000, || {
                std::hint::black_box(cached());
            });
            time(&format!("{label} cache get"), 200_000, || {
                std::hint::black_box(caches.tokens.get(0, &token));
            });
            time(&format!("{label} token hash"), 200_000, || {
                std::hint::black_box(crate::token::cache::token_hash(std::hint::black_box(
                    &token,
                )));
            });
            time(&format!("{label} request build"), 200_000, || {
                let r = Request {
                    method: String::from("GET"),
                    path: String::from("/api"),
                    headers: vec![("authorization".to_owned(), auth.clone())],
                    ..Request::default()
                };
                std::hint::black_box(r);
            });
        }
    }
}
