//! The per-request decision: a request and the time in, a [`Decision`] out (header
//! edits or a refusal, counters to move). No SDK types; the host applies the result.

use crate::cache::{Entry, Identity, TokenCache};
use crate::config::{Config, KeySource, Provider};
use crate::deny::Deny;
use crate::error::{AuthnError, Refusal};
use crate::extract::{Found, HeaderEdit, Request};
use crate::jwt;
use crate::rules::{first_match, AuthnRequirement, RuleAction};
use crate::stats::Counter;
use std::rc::Rc;

/// What to do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send it upstream after applying these edits, in order.
    Forward(Vec<HeaderEdit>),
    /// Answer it here.
    Deny(Deny),
}

/// The outcome plus what the host should count and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub counters: Vec<Counter>,
    /// The matched rule's name, for logs.
    pub rule: Option<String>,
    pub refusal: Option<Refusal>,
}

/// Decides one request. `cache` is the VM's verified-token cache.
pub fn decide(config: &Config, request: &Request, now: u64, cache: &mut TokenCache) -> Decision {
    let mut counters = Vec::with_capacity(2);
    // Identity headers go first, on every route: a client can't spoof them.
    let mut edits: Vec<HeaderEdit> = config
        .identity_headers
        .iter()
        .filter(|name| request.header(name).is_some())
        .map(|name| HeaderEdit::Remove(name.clone()))
        .collect();

    let Some(rule) = first_match(&config.rules, request) else {
        return refuse(config, Refusal::NoRuleMatched, None, counters);
    };
    let rule_name = Some(rule.name.clone());
    let (requirement, optional) = match &rule.action {
        RuleAction::Anonymous => {
            counters.push(Counter::Allowed);
            return Decision { outcome: Outcome::Forward(edits), counters, rule: rule_name, refusal: None };
        }
        RuleAction::Authn { requirement, optional } => (requirement, *optional),
    };

    let attempts: Vec<(usize, Found)> = requirement
        .providers()
        .iter()
        .filter_map(|&id| Some((id, find_token(config.providers.get(id)?, request)?)))
        .collect();
    if attempts.is_empty() {
        if optional {
            counters.push(Counter::Allowed);
            return Decision { outcome: Outcome::Forward(edits), counters, rule: rule_name, refusal: None };
        }
        return refuse(config, Refusal::Authn(AuthnError::Missing), rule_name, counters);
    }

    let mut verified: Vec<(Rc<Identity>, &Found)> = Vec::new();
    let mut worst: Option<AuthnError> = None;
    for (id, found) in &attempts {
        let Some(provider) = config.providers.get(*id) else { continue };
        match authenticate(*id, provider, &found.token, now, cache, &mut counters) {
            Ok(identity) => {
                verified.push((identity, found));
                if matches!(requirement, AuthnRequirement::Any(_)) {
                    break;
                }
            }
            Err(e) => {
                if matches!(requirement, AuthnRequirement::All(_)) {
                    return refuse(config, Refusal::Authn(e), rule_name, counters);
                }
                if worst.is_none_or(|w| e.specificity() > w.specificity()) {
                    worst = Some(e);
                }
            }
        }
    }
    let satisfied = match requirement {
        AuthnRequirement::Any(_) => !verified.is_empty(),
        AuthnRequirement::All(ids) => verified.len() == ids.len(),
    };
    if !satisfied {
        let error = worst.unwrap_or(AuthnError::Missing);
        return refuse(config, Refusal::Authn(error), rule_name, counters);
    }

    for (identity, found) in &verified {
        let keep = config.providers.get(identity.provider).is_some_and(|p| p.forward.keep_token);
        if !keep {
            edits.push(found.location.removal(request));
        }
    }
    for (identity, _) in &verified {
        edits.extend(identity.headers.iter().map(|(n, v)| HeaderEdit::Set(n.clone(), v.clone())));
    }
    counters.push(Counter::Allowed);
    Decision { outcome: Outcome::Forward(edits), counters, rule: rule_name, refusal: None }
}

/// The first present source of a provider (a present but invalid token is not skipped).
fn find_token(provider: &Provider, request: &Request) -> Option<Found> {
    provider.sources.iter().find_map(|source| source.find(request))
}

fn authenticate(
    id: usize,
    provider: &Provider,
    token: &str,
    now: u64,
    cache: &mut TokenCache,
    counters: &mut Vec<Counter>,
) -> Result<Rc<Identity>, AuthnError> {
    // Checked before the cache so an oversized token costs nothing, not even a hash.
    if token.len() > provider.policy.max_token_bytes {
        return Err(AuthnError::TooLong);
    }
    if let Some(entry) = cache.get(id, token) {
        counters.push(Counter::CacheHit);
        let identity = entry.identity.clone();
        return match jwt::check_lifetime(entry.lifetime, &provider.policy, now) {
            Ok(()) => Ok(identity),
            Err(e) => {
                cache.remove(id, token);
                Err(e)
            }
        };
    }
    counters.push(Counter::CacheMiss);
    let KeySource::Inline(keys) = &provider.keys;
    let verified = jwt::verify(token, &provider.policy, keys, now)?;
    let headers = provider.forward.identity_headers(&verified.claims, &verified.payload_segment);
    let identity = Rc::new(Identity { provider: id, headers, claims: Rc::new(verified.claims) });
    let now_signed = i64::try_from(now).unwrap_or(i64::MAX);
    cache.insert(id, token, Entry { lifetime: verified.lifetime, identity: identity.clone() }, now_signed);
    Ok(identity)
}

fn refuse(config: &Config, refusal: Refusal, rule: Option<String>, mut counters: Vec<Counter>) -> Decision {
    counters.push(Counter::Denied(refusal.reason()));
    Decision {
        outcome: Outcome::Deny(Deny::for_refusal(refusal, &config.realm)),
        counters,
        rule,
        refusal: Some(refusal),
    }
}
