//! The per-request decision: a request and the time in, a [`Decision`] out (header
//! edits or a refusal, counters to move). No SDK types; the host applies the result.

use crate::config::{Config, KeySource, Provider};
use crate::deny::Deny;
use crate::error::{AuthnError, Refusal};
use crate::policy::rules::{first_match, AuthnRequirement, RuleAction};
use crate::stats::Counter;
use crate::token::cache::{Entry, Identity, TokenCache};
use crate::token::extract::{Found, HeaderEdit, Request};
use crate::token::jwks::KeySet;
use crate::token::jwt;
use std::rc::Rc;

/// What to do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send it upstream after applying these edits, in order.
    Forward(Vec<HeaderEdit>),
    /// Answer it here.
    Deny(Deny),
    /// Pause until these providers' keys change (first fetch, or a refetch for an
    /// unknown `kid`) or a bound passes, then decide again with `waited = true`.
    Wait(Vec<usize>),
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

/// Why one provider did not produce an identity.
enum NotVerified {
    Refused(AuthnError),
    /// Its keys may arrive soon.
    Wait,
}

/// The outcome plus what the host should count and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub counters: Vec<Counter>,
    /// The matched rule's index in `Config::rules`, for logs.
    pub rule: Option<usize>,
    pub refusal: Option<Refusal>,
}

/// Decides one request. `cache` is the VM's verified-token cache; `waited` is true when
/// the request already paused once for keys (it will not be asked to wait again).
pub fn decide(
    config: &Config,
    keyring: &dyn Keyring,
    request: &Request,
    now: u64,
    cache: &mut TokenCache,
    waited: bool,
) -> Decision {
    let mut counters = Vec::with_capacity(2);
    // Identity headers go first, on every route: a client can't spoof them.
    let mut edits: Vec<HeaderEdit> = config
        .identity_headers
        .iter()
        .filter(|name| request.header(name).is_some())
        .map(|name| HeaderEdit::Remove(name.clone()))
        .collect();

    let Some((rule_index, rule)) = first_match(&config.rules, request) else {
        return refuse(config, Refusal::NoRuleMatched, None, counters);
    };
    let rule_index = Some(rule_index);
    let (requirement, optional) = match &rule.action {
        RuleAction::Anonymous => {
            counters.push(Counter::Allowed);
            return Decision {
                outcome: Outcome::Forward(edits),
                counters,
                rule: rule_index,
                refusal: None,
            };
        }
        RuleAction::Authn {
            requirement,
            optional,
        } => (requirement, *optional),
    };

    let attempts: Vec<(usize, Found<'_>)> = requirement
        .providers()
        .iter()
        .filter_map(|&id| Some((id, find_token(config.providers.get(id)?, request)?)))
        .collect();
    if attempts.is_empty() {
        if optional {
            counters.push(Counter::Allowed);
            return Decision {
                outcome: Outcome::Forward(edits),
                counters,
                rule: rule_index,
                refusal: None,
            };
        }
        return refuse(
            config,
            Refusal::Authn(AuthnError::Missing),
            rule_index,
            counters,
        );
    }

    let mut verified: Vec<(Rc<Identity>, &Found<'_>)> = Vec::new();
    let mut worst: Option<AuthnError> = None;
    let mut waits: Vec<usize> = Vec::new();
    let context = Context {
        keyring,
        now,
        waited,
    };
    for (id, found) in &attempts {
        let Some(provider) = config.providers.get(*id) else {
            continue;
        };
        match authenticate(&context, *id, provider, &found.token, cache, &mut counters) {
            Ok(identity) => {
                verified.push((identity, found));
                if matches!(requirement, AuthnRequirement::Any(_)) {
                    break;
                }
            }
            Err(NotVerified::Wait) => waits.push(*id),
            Err(NotVerified::Refused(e)) => {
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
        AuthnRequirement::All(ids) => verified.len() == ids.len(),
    };
    if !satisfied {
        if !waits.is_empty() {
            return Decision {
                outcome: Outcome::Wait(waits),
                counters,
                rule: rule_index,
                refusal: None,
            };
        }
        let error = worst.unwrap_or(AuthnError::Missing);
        return refuse(config, Refusal::Authn(error), rule_index, counters);
    }

    for (identity, found) in &verified {
        let keep = config
            .providers
            .get(identity.provider)
            .is_some_and(|p| p.forward.keep_token);
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
    counters.push(Counter::Allowed);
    Decision {
        outcome: Outcome::Forward(edits),
        counters,
        rule: rule_index,
        refusal: None,
    }
}

/// The first present source of a provider (a present but invalid token is not skipped).
fn find_token<'r>(provider: &Provider, request: &'r Request) -> Option<Found<'r>> {
    provider
        .sources
        .iter()
        .find_map(|source| source.find(request))
}

/// What `authenticate` needs besides the token.
struct Context<'a> {
    keyring: &'a dyn Keyring,
    now: u64,
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
    let now = context.now;
    // Checked before the cache so an oversized token costs nothing, not even a hash.
    if token.len() > provider.policy.max_token_bytes {
        return Err(NotVerified::Refused(AuthnError::TooLong));
    }
    if let Some(entry) = cache.get(id, token) {
        counters.push(Counter::CacheHit);
        let identity = entry.identity.clone();
        return match jwt::check_lifetime(entry.lifetime, &provider.policy, now) {
            Ok(()) => Ok(identity),
            Err(e) => {
                cache.remove(id, token);
                Err(NotVerified::Refused(e))
            }
        };
    }
    let keys = match &provider.keys {
        KeySource::Inline(keys) => keys.clone(),
        KeySource::Remote(_) => match context.keyring.keys(id) {
            Keys::Ready(keys) => keys,
            Keys::Pending if !context.waited => return Err(NotVerified::Wait),
            Keys::Pending | Keys::Unavailable => {
                return Err(NotVerified::Refused(AuthnError::KeysUnavailable))
            }
        },
    };
    counters.push(Counter::CacheMiss);
    let verified = match jwt::verify(token, &provider.policy, &keys, now) {
        Ok(verified) => verified,
        Err(AuthnError::UnknownKid)
            if matches!(provider.keys, KeySource::Remote(_))
                && !context.waited
                && context.keyring.refetch_for_unknown_kid(id) =>
        {
            return Err(NotVerified::Wait);
        }
        Err(e) => return Err(NotVerified::Refused(e)),
    };
    let headers = provider
        .forward
        .identity_headers(&verified.claims, &verified.payload_segment);
    let identity = Rc::new(Identity {
        provider: id,
        headers,
        claims: Rc::new(verified.claims),
    });
    cache.insert(
        id,
        token,
        Entry {
            lifetime: verified.lifetime,
            identity: identity.clone(),
        },
    );
    Ok(identity)
}

fn refuse(
    config: &Config,
    refusal: Refusal,
    rule: Option<usize>,
    mut counters: Vec<Counter>,
) -> Decision {
    counters.push(Counter::Denied(refusal.reason()));
    Decision {
        outcome: Outcome::Deny(Deny::for_refusal(refusal, &config.realm)),
        counters,
        rule,
        refusal: Some(refusal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::token::cache::{DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES};
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

    fn cache(config: &Config) -> TokenCache {
        TokenCache::new(
            config.providers.len(),
            DEFAULT_MAX_ENTRIES,
            DEFAULT_MAX_BYTES,
        )
    }

    fn run(config: &Config, req: &Request) -> Decision {
        decide(config, &NoRemoteKeys, req, NOW, &mut cache(config), false)
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn refused_with(decision: &Decision) -> Option<Refusal> {
        match decision.outcome {
            Outcome::Deny(_) => decision.refusal,
            Outcome::Forward(_) | Outcome::Wait(_) => None,
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
                HeaderEdit::Remove("x-user-id".into()),
                HeaderEdit::Remove("authorization".into()),
                HeaderEdit::Set("x-jwt-payload".into(), payload),
                HeaderEdit::Set("x-user-roles".into(), "user,admin".into()),
                HeaderEdit::Set("x-user-id".into(), "alice".into()),
            ])
        );
        assert_eq!(
            decision.counters,
            vec![Counter::CacheMiss, Counter::Allowed]
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
                HeaderEdit::Remove("x-user-id".into())
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
        assert_eq!(decision.counters, vec![Counter::Denied("missing")]);
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
        assert!(matches!(decision.outcome, Outcome::Forward(ref e) if e.is_empty()));
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
        assert_eq!(
            decide(&config, &NoRemoteKeys, &req, NOW, &mut cache, false).counters,
            vec![Counter::CacheMiss, Counter::Allowed]
        );
        let again = decide(&config, &NoRemoteKeys, &req, NOW + 1, &mut cache, false);
        assert_eq!(again.counters, vec![Counter::CacheHit, Counter::Allowed]);
        assert_eq!(
            again.outcome,
            decide(&config, &NoRemoteKeys, &req, NOW, &mut cache, false).outcome
        );
        let later = decide(
            &config,
            &NoRemoteKeys,
            &req,
            NOW + 600 + 60,
            &mut cache,
            false,
        );
        assert_eq!(
            refused_with(&later),
            Some(Refusal::Authn(AuthnError::Expired))
        );
        assert!(cache.is_empty(), "an expired entry is dropped");
    }

    #[test]
    fn failures_are_not_cached() {
        let config = standard();
        let mut cache = cache(&config);
        let mut claims = good_claims();
        claims["aud"] = json!("billing");
        let auth = bearer(&token("es256", &claims));
        let req = request("/api", &[("authorization", &auth)]);
        decide(&config, &NoRemoteKeys, &req, NOW, &mut cache, false);
        assert!(cache.is_empty());
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
        assert_eq!(decision.counters, vec![Counter::Denied("too_long")]);
    }
}

#[cfg(test)]
mod remote_tests {
    use super::*;
    use crate::testutil::*;
    use crate::token::cache::{DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES};
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
        let mut cache = TokenCache::new(1, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES);
        let request = Request {
            method: "GET".into(),
            path: "/".into(),
            host: "svc".into(),
            headers: vec![("authorization".into(), format!("Bearer {token}"))],
        };
        decide(&config, ring, &request, NOW, &mut cache, waited)
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
            Outcome::Wait(vec![0])
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
            Outcome::Wait(vec![0])
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
