//! `tokengate explain`: what the filter would do with one request, and why, without
//! Envoy. The decision is the filter's own — [`flow::decide`] on the compiled
//! configuration, with inline keys, keys from a JWKS file for remote providers, and a
//! central policy service that records its input and answers as told. The rest of the
//! [`Explanation`] (the rules skipped, each condition's result, the identity) is read
//! around that decision with the same matchers and conditions. CLI builds only.

use crate::clock::Clock;
use crate::config::{Config, KeySource};
use crate::error::{AuthnError, Refusal};
use crate::flow::{
    self, Ask, Caches, Decision, Keyring, Keys, NoExchanges, Outcome, PolicyService, Services,
};
use crate::policy::authz::{Condition, Facts};
use crate::policy::central::Decision as PolicyDecision;
use crate::policy::paths::{self, PathError};
use crate::policy::rules::{first_match, Authenticator, RuleAction};
use crate::stats::MetricNames;
use crate::token::extract::{Request, Source};
use crate::token::jwks::KeySet;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::rc::Rc;

/// Everything `explain` found out about one request.
#[derive(Debug)]
pub struct Explanation {
    /// The request as decided (with `--token` placed in its source).
    pub request: Request,
    pub path: PathView,
    /// Rules tried before the one that applies (all of them when none does), each
    /// with the part of its match the request fails.
    pub skipped: Vec<(usize, String)>,
    /// The rule that applies.
    pub rule: Option<usize>,
    pub authn: AuthnView,
    /// The rule's `authz` tree, in order, each condition with its result (`None`: not
    /// evaluated, the tree was decided before it). Empty when authorization was not
    /// reached.
    pub conditions: Vec<ConditionLine>,
    /// The input the central policy service would be asked with.
    pub central_input: Option<String>,
    /// The filter's decision.
    pub decision: Decision,
    /// Metric names of the decision's counters.
    pub counters: Vec<String>,
}

/// The path the rules see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathView {
    /// Normalized: no query, unreserved escapes decoded.
    Checked(String),
    /// Refused with 400 before any rule runs.
    Refused(PathError),
    /// No rule looks at the path, so it is not read.
    NotRead,
}

/// What authentication came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthnView {
    /// No rule was reached (a refused path, no rule matching, the filter's own endpoint).
    NotReached,
    /// An anonymous rule.
    NotNeeded,
    /// A provider (or exchange) verified a token.
    Verified { by: String },
    /// No token, and `optional`: the request goes on as anonymous.
    Anonymous,
    /// Refused (including "no token" on a rule that needs one).
    Refused(AuthnError),
}

/// One condition of an `authz` tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionLine {
    pub depth: usize,
    pub text: String,
    pub result: Option<bool>,
}

/// What the central policy service is assumed to answer (nothing is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CentralAnswer {
    #[default]
    Allow,
    Deny,
    /// No answer: `on_error` applies.
    Unavailable,
}

/// Remote providers' keys from files: each provider's set, if one was given.
pub struct KeyFiles {
    sets: Vec<Option<Rc<KeySet>>>,
}

impl KeyFiles {
    /// `sets[i]`: the key set for provider `i`.
    pub fn new(sets: Vec<Option<KeySet>>) -> KeyFiles {
        KeyFiles {
            sets: sets.into_iter().map(|s| s.map(Rc::new)).collect(),
        }
    }
}

impl Keyring for KeyFiles {
    fn keys(&self, provider: usize) -> Keys {
        match self.sets.get(provider) {
            Some(Some(set)) => Keys::Ready(set.clone()),
            _ => Keys::Unavailable,
        }
    }
    fn refetch_for_unknown_kid(&self, _: usize) -> bool {
        false
    }
}

/// A policy service that keeps the input and answers as assumed.
struct Recorder {
    answer: CentralAnswer,
    input: RefCell<Option<String>>,
}

impl PolicyService for Recorder {
    fn ask(&self, _: [u8; 32], input: &dyn Fn() -> String, _: bool) -> Ask {
        *self.input.borrow_mut() = Some(input());
        let allow = match self.answer {
            CentralAnswer::Allow => true,
            CentralAnswer::Deny => false,
            CentralAnswer::Unavailable => return Ask::Failed,
        };
        Ask::Decided {
            decision: Rc::new(PolicyDecision {
                allow,
                ..PolicyDecision::default()
            }),
            cached: false,
        }
    }
}

/// The request with `token` where the filter would look for it: the first source of
/// the first provider or exchange of the rule the request matches (of the first
/// provider when that rule needs none), else `authorization: Bearer`. A header source
/// replaces that header; a cookie is added to the cookies; a query parameter is added
/// to the query.
pub fn place_token(config: &Config, mut request: Request, token: &str) -> Request {
    let path = paths::normalize(&request.path, config.allow_encoded_slashes)
        .map(|p| p.into_owned())
        .unwrap_or_default();
    let rule_source = first_match(&config.rules, &request, &path).and_then(|(_, rule)| {
        let RuleAction::Authn { requirement, .. } = &rule.action else {
            return None;
        };
        match requirement.authenticators().first()? {
            Authenticator::Provider(i) => config.providers.get(*i)?.sources.first(),
            Authenticator::Exchange(i) => config.exchanges.get(*i)?.sources.first(),
        }
    });
    let source = rule_source
        .or_else(|| config.providers.first().and_then(|p| p.sources.first()))
        .cloned()
        .unwrap_or_else(Source::default_bearer);
    match source {
        Source::Header { name, prefix } => {
            request.headers.retain(|(n, _)| **n != *name);
            let value = format!("{}{token}", prefix.unwrap_or_default());
            request.headers.push((name.to_string(), value));
        }
        Source::Cookie(name) | Source::SessionCookie(name) => {
            let pair = format!("{name}={token}");
            match request.headers.iter_mut().find(|(n, _)| n == "cookie") {
                Some((_, cookies)) => {
                    cookies.push_str("; ");
                    cookies.push_str(&pair);
                }
                None => request.headers.push(("cookie".into(), pair)),
            }
        }
        Source::Query(name) => {
            let separator = if request.path.contains('?') { '&' } else { '?' };
            request.path = format!("{}{separator}{name}={token}", request.path);
        }
    }
    request
}

/// Decides `request` as the filter would at time `now` (seconds), and explains it.
pub fn explain(
    config: &Config,
    keyring: &dyn Keyring,
    request: Request,
    now: u64,
    central: CentralAnswer,
) -> Explanation {
    let recorder = Recorder {
        answer: central,
        input: RefCell::new(None),
    };
    let services = Services {
        keyring,
        exchanges: &NoExchanges,
        policy: &recorder,
        login: &crate::flow::NoLoginService,
        revocations: &crate::flow::NoRevocations,
    };
    let mut caches = Caches::for_config(config);
    let clock = Clock::at_secs(now);
    let mut decision = flow::decide(config, services, &request, &clock, &mut caches, false);
    if matches!(decision.outcome, Outcome::Wait(_)) {
        // Nothing here is ever pending; as a request that waited once would be decided.
        decision = flow::decide(config, services, &request, &clock, &mut caches, true);
    }

    let path = if !config.reads.path {
        PathView::NotRead
    } else {
        match paths::normalize(&request.path, config.allow_encoded_slashes) {
            Ok(path) => PathView::Checked(path.into_owned()),
            Err(e) => PathView::Refused(e),
        }
    };
    let rules_path = match &path {
        PathView::Checked(path) => Some(path.as_str()),
        PathView::NotRead => Some(""),
        PathView::Refused(_) => None,
    };
    let (skipped, rule) = match rules_path {
        // Own endpoints are answered before rules.
        Some(_) if matches!(decision.outcome, Outcome::Reply(_)) => (Vec::new(), None),
        Some(rules_path) => {
            let rule = first_match(&config.rules, &request, rules_path).map(|(i, _)| i);
            let skipped = config
                .rules
                .iter()
                .enumerate()
                .take(rule.unwrap_or(config.rules.len()))
                .filter_map(|(i, r)| Some((i, r.matcher.mismatch(&request, rules_path)?)))
                .collect();
            (skipped, rule)
        }
        None => (Vec::new(), None),
    };

    let (authn, claims) = authentication(config, &request, rule, &decision, &caches);
    let conditions = match (rule.and_then(|i| config.rules.get(i)), &authn) {
        (Some(rule), AuthnView::NotNeeded | AuthnView::Verified { .. } | AuthnView::Anonymous) => {
            match &rule.authz {
                Some(authz) => trace(
                    authz,
                    &Facts {
                        request: &request,
                        path: rules_path.unwrap_or_default(),
                        claims: claims.as_deref(),
                    },
                ),
                None => Vec::new(),
            }
        }
        _ => Vec::new(),
    };

    let names = MetricNames {
        exchanges: config.exchanges.iter().map(|e| e.name.clone()).collect(),
        rules: config.rules.iter().map(|r| r.stat_name.clone()).collect(),
    };
    let counters = decision.counters.iter().map(|c| c.name(&names)).collect();
    Explanation {
        request,
        path,
        skipped,
        rule,
        authn,
        conditions,
        central_input: recorder.input.into_inner(),
        decision,
        counters,
    }
}

/// What authentication came to, and the identity's claims: the first of the rule's
/// authenticators (in its order, as the filter takes them) that verified the token
/// from its source — the one the VM's cache now holds.
fn authentication(
    config: &Config,
    request: &Request,
    rule: Option<usize>,
    decision: &Decision,
    caches: &Caches,
) -> (AuthnView, Option<Rc<Map<String, Value>>>) {
    let Some(rule) = rule.and_then(|i| config.rules.get(i)) else {
        return (AuthnView::NotReached, None);
    };
    let RuleAction::Authn { requirement, .. } = &rule.action else {
        return (AuthnView::NotNeeded, None);
    };
    for authenticator in requirement.authenticators() {
        let Authenticator::Provider(id) = *authenticator else {
            continue;
        };
        let Some(provider) = config.providers.get(id) else {
            continue;
        };
        let token = provider.sources.iter().find_map(|s| s.find(request));
        if let Some(entry) = token.and_then(|found| caches.tokens.get(id, &found.token)) {
            let view = AuthnView::Verified {
                by: provider.name.clone(),
            };
            return (view, Some(entry.identity.claims.clone()));
        }
    }
    match decision.refusal.or(decision.dry_run) {
        Some(Refusal::Authn(e)) => (AuthnView::Refused(e), None),
        _ => (AuthnView::Anonymous, None),
    }
}

/// The tree's conditions in order (each before its children), with their results as
/// the filter's own evaluation reports them.
fn trace(authz: &Condition, facts: &Facts<'_>) -> Vec<ConditionLine> {
    let mut results: Vec<(*const Condition, bool)> = Vec::new();
    authz.evaluate(facts, &mut |condition, result| {
        results.push((condition as *const Condition, result))
    });
    let mut lines = Vec::new();
    walk(authz, 0, &results, &mut lines);
    lines
}

fn walk(
    condition: &Condition,
    depth: usize,
    results: &[(*const Condition, bool)],
    out: &mut Vec<ConditionLine>,
) {
    let result = results
        .iter()
        .find(|(seen, _)| std::ptr::eq(*seen, condition))
        .map(|(_, result)| *result);
    out.push(ConditionLine {
        depth,
        text: condition.describe(),
        result,
    });
    match condition {
        Condition::All(items) | Condition::Any(items) => items
            .iter()
            .for_each(|item| walk(item, depth + 1, results, out)),
        Condition::Not(inner) => walk(inner, depth + 1, results, out),
        _ => {}
    }
}

/// Whether a provider's keys are fetched (and so need a JWKS file offline).
pub fn is_remote(config: &Config, provider: usize) -> bool {
    config
        .providers
        .get(provider)
        .is_some_and(|p| matches!(p.keys, KeySource::Remote(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::NoRemoteKeys;
    use crate::testutil::*;
    use crate::token::extract::HeaderEdit;
    use serde_json::json;

    fn config() -> Config {
        let doc = json!({
            "realm": "api",
            "providers": {
                "corp": { "issuer": ISSUER, "jwks": { "inline": public_jwks() },
                          "forward": { "claims": { "sub": "x-user-id" } } },
                "remote": { "issuer": "https://remote", "jwks": { "uri": "http://idp/certs", "cluster": "idp" },
                            "sources": [ { "cookie": "rt" } ] }
            },
            "authz_service": { "uri": "http://opa:8181/v1/data/http/authz", "cluster": "opa",
                               "include_headers": ["x-tenant"] },
            "rules": [
                { "name": "health", "match": { "path": { "prefix": "/healthz" } }, "allow": "anonymous" },
                { "name": "owner", "match": { "path": { "template": "/users/{id}" }, "methods": ["GET"] },
                  "authn": { "any": ["corp"] },
                  "authz": { "all": [ { "path_param": "id", "equals_claim": "sub" },
                                      { "any": [ { "claim": "scope", "contains": "admin" },
                                                 { "claim": "scope", "contains": "read" } ] },
                                      { "not": { "header": "x-debug", "present": true } } ] } },
                { "name": "trial", "match": { "path": { "prefix": "/trial" } }, "authn": { "any": ["corp"] },
                  "authz": { "claim": "scope", "contains": "never" }, "dry_run": true },
                { "name": "hybrid", "match": { "path": { "prefix": "/hybrid" } }, "authn": { "any": ["corp"] },
                  "central": true },
                { "name": "partner", "match": { "path": { "prefix": "/partner" } }, "authn": { "any": ["remote"] } }
            ]
        });
        Config::from_json(doc.to_string().as_bytes()).unwrap()
    }

    fn request(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            host: "api".into(),
            headers: Vec::new(),
        }
    }

    fn alice() -> String {
        token(
            "es256",
            &json!({"iss": ISSUER, "sub": "42", "scope": "read", "exp": NOW + 60}),
        )
    }

    fn run(request: Request, central: CentralAnswer) -> Explanation {
        let config = config();
        explain(&config, &NoRemoteKeys, request, NOW, central)
    }

    fn status(e: &Explanation) -> u32 {
        match &e.decision.outcome {
            Outcome::Forward(_) => 200,
            Outcome::Deny(deny) => deny.status,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_allowed_request_shows_its_rule_identity_conditions_and_header_edits() {
        let config = config();
        let request = place_token(&config, request("GET", "/users/42"), &alice());
        let e = explain(&config, &NoRemoteKeys, request, NOW, CentralAnswer::Allow);
        assert_eq!(e.path, PathView::Checked("/users/42".into()));
        assert_eq!(e.skipped, vec![(0, "path".to_owned())]);
        assert_eq!(e.rule, Some(1));
        assert_eq!(e.authn, AuthnView::Verified { by: "corp".into() });
        let lines: Vec<(usize, &str, Option<bool>)> = e
            .conditions
            .iter()
            .map(|l| (l.depth, l.text.as_str(), l.result))
            .collect();
        assert_eq!(
            lines,
            vec![
                (0, "all of 3 condition(s)", Some(true)),
                (1, "path parameter {id} equals claim sub", Some(true)),
                (1, "any of 2 condition(s)", Some(true)),
                (2, "claim scope contains \"admin\"", Some(false)),
                (2, "claim scope contains \"read\"", Some(true)),
                (1, "not", Some(true)),
                (2, "header x-debug present", Some(false)),
            ]
        );
        let Outcome::Forward(edits) = &e.decision.outcome else {
            panic!()
        };
        assert!(edits.contains(&HeaderEdit::Remove("authorization".into())));
        assert!(edits.contains(&HeaderEdit::Set("x-user-id".into(), "42".into())));
        assert!(e
            .counters
            .contains(&"tokengate.rule.owner.allowed".to_owned()));
        assert_eq!(e.central_input, None);
    }

    #[test]
    fn a_denied_condition_is_403_and_later_conditions_are_not_evaluated() {
        let config = config();
        let request = place_token(&config, request("GET", "/users/7"), &alice());
        let e = explain(&config, &NoRemoteKeys, request, NOW, CentralAnswer::Allow);
        assert_eq!(status(&e), 403);
        assert_eq!(e.decision.refusal, Some(Refusal::Forbidden));
        assert_eq!(e.conditions[1].result, Some(false));
        assert_eq!(
            e.conditions[2].result, None,
            "all stops at the first failure"
        );
    }

    #[test]
    fn a_path_that_could_mean_another_is_refused_before_any_rule() {
        let e = run(request("GET", "/healthz/../users/42"), CentralAnswer::Allow);
        assert_eq!(e.path, PathView::Refused(PathError::DotSegment));
        assert_eq!((e.rule, status(&e)), (None, 400));
        assert_eq!(e.authn, AuthnView::NotReached);
        assert!(e.skipped.is_empty());
    }

    #[test]
    fn no_token_where_one_is_needed_is_401_and_no_rule_is_403() {
        let e = run(request("GET", "/users/42"), CentralAnswer::Allow);
        assert_eq!(e.authn, AuthnView::Refused(AuthnError::Missing));
        assert_eq!(status(&e), 401);
        assert!(e.conditions.is_empty());
        let e = run(request("POST", "/users/42"), CentralAnswer::Allow);
        assert_eq!((e.rule, status(&e)), (None, 403));
        assert_eq!(e.skipped.len(), 5);
        assert_eq!(e.skipped[1], (1, "method".to_owned()));
    }

    #[test]
    fn a_central_rule_shows_the_input_it_would_send() {
        let config = config();
        let mut req = place_token(&config, request("GET", "/hybrid/a?x=1"), &alice());
        req.headers.push(("x-tenant".into(), "acme".into()));
        let allowed = explain(
            &config,
            &NoRemoteKeys,
            req.clone(),
            NOW,
            CentralAnswer::Allow,
        );
        assert_eq!(status(&allowed), 200);
        let input: Value = serde_json::from_str(allowed.central_input.as_deref().unwrap()).unwrap();
        assert_eq!(input["input"]["identity"]["provider"], "corp");
        assert_eq!(input["input"]["parsed_query"], json!({"x": ["1"]}));
        assert_eq!(
            input["input"]["attributes"]["request"]["http"]["headers"],
            json!({"x-tenant": "acme"})
        );
        let denied = explain(
            &config,
            &NoRemoteKeys,
            req.clone(),
            NOW,
            CentralAnswer::Deny,
        );
        assert_eq!(status(&denied), 403);
        assert_eq!(denied.decision.refusal, Some(Refusal::CentralDenied));
        let down = explain(&config, &NoRemoteKeys, req, NOW, CentralAnswer::Unavailable);
        assert_eq!(status(&down), 503);
    }

    #[test]
    fn a_dry_run_passes_and_says_what_it_would_have_refused() {
        let config = config();
        let request = place_token(&config, request("GET", "/trial"), &alice());
        let e = explain(&config, &NoRemoteKeys, request, NOW, CentralAnswer::Allow);
        assert_eq!(status(&e), 200);
        assert_eq!(e.decision.dry_run, Some(Refusal::Forbidden));
        assert_eq!(e.conditions[0].result, Some(false));
        assert!(e
            .counters
            .contains(&"tokengate.rule.trial.dry_run_denied".to_owned()));
    }

    #[test]
    fn remote_keys_come_from_the_files_given() {
        let config = config();
        let partner = token(
            "es256",
            &json!({"iss": "https://remote", "sub": "p", "exp": NOW + 60}),
        );
        let request = place_token(&config, request("GET", "/partner"), &partner);
        assert_eq!(
            request.header("cookie"),
            Some(format!("rt={partner}").as_str())
        );
        assert!(is_remote(&config, 1) && !is_remote(&config, 0));
        let without = explain(
            &config,
            &NoRemoteKeys,
            request.clone(),
            NOW,
            CentralAnswer::Allow,
        );
        assert_eq!(
            without.authn,
            AuthnView::Refused(AuthnError::KeysUnavailable)
        );
        assert_eq!(status(&without), 503);
        let files = KeyFiles::new(vec![None, Some(keyset())]);
        let with = explain(&config, &files, request, NOW, CentralAnswer::Allow);
        assert_eq!(
            with.authn,
            AuthnView::Verified {
                by: "remote".into()
            }
        );
        assert_eq!(status(&with), 200);
    }

    #[test]
    fn a_token_goes_where_the_matched_rule_reads_it() {
        let config = config();
        let r = place_token(&config, request("GET", "/users/1"), "t");
        assert_eq!(r.header("authorization"), Some("Bearer t"));
        let mut with_cookie = request("GET", "/partner");
        with_cookie.headers.push(("cookie".into(), "a=b".into()));
        let r = place_token(&config, with_cookie, "t");
        assert_eq!(r.header("cookie"), Some("a=b; rt=t"));
        // An anonymous rule: the first provider's first source.
        let r = place_token(&config, request("GET", "/healthz"), "t");
        assert_eq!(r.header("authorization"), Some("Bearer t"));
    }
}
