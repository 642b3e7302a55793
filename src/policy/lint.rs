//! `tokengate check`'s warnings: parts of a configuration that load but can never do
//! anything. Only what is certain is reported — a rule that no request can reach, an
//! authentication no request can pass, an authorization no request can meet — so that a
//! warning is always worth fixing. CLI builds only.

use crate::config::Config;
use crate::policy::authz::{Condition, HeaderTest};
use crate::policy::rules::{
    host_matches, Authenticator, AuthnRequirement, HeaderMatch, Matcher, PathMatch, RuleAction,
    Segment,
};

/// A part of the configuration that can never take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Warning {
    /// Rule `rule` can never match: every request it matches, the earlier rule `by`
    /// matches first.
    Shadowed { rule: usize, by: usize },
    /// The rule's `authn.all` names two authenticators that can never both verify one
    /// request: it refuses every request with a token.
    AllUnsatisfiable {
        rule: usize,
        first: String,
        second: String,
        why: &'static str,
    },
    /// An anonymous rule's `authz` tests claims, which an anonymous request never has:
    /// the rule refuses every request.
    AuthzNeedsIdentity { rule: usize },
}

impl Warning {
    /// The rule the warning is about.
    pub fn rule(&self) -> usize {
        match self {
            Warning::Shadowed { rule, .. }
            | Warning::AllUnsatisfiable { rule, .. }
            | Warning::AuthzNeedsIdentity { rule } => *rule,
        }
    }

    /// One line for `tokengate check`, naming the rules by index and name.
    pub fn describe(&self, config: &Config) -> String {
        let rule = rule_label(config, self.rule());
        match self {
            Warning::Shadowed { by, .. } => format!(
                "{rule} can never match: {} matches every request it does, and comes first",
                rule_label(config, *by)
            ),
            Warning::AllUnsatisfiable {
                first, second, why, ..
            } => format!(
                "{rule}: authn.all names {first:?} and {second:?}, which can never both verify \
                 one request ({why}): every request with a token is refused"
            ),
            Warning::AuthzNeedsIdentity { .. } => format!(
                "{rule} allows anonymous requests but its authz tests claims, which they never \
                 have: every request is refused (403); use authn with \"optional\": true to let \
                 tokenless requests reach the claims test"
            ),
        }
    }
}

/// `rules[2] "admin"`, or just `rules[2]` for an unnamed rule.
fn rule_label(config: &Config, index: usize) -> String {
    let position = format!("rules[{index}]");
    match config.rules.get(index) {
        Some(rule) if rule.name != position => format!("{position} {:?}", rule.name),
        _ => position,
    }
}

/// Every warning for a compiled configuration, in rule order.
pub fn lint(config: &Config) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for (index, rule) in config.rules.iter().enumerate() {
        let earlier = config.rules.iter().take(index);
        if let Some(by) = earlier
            .enumerate()
            .find(|(_, e)| covers(&e.matcher, &rule.matcher))
            .map(|(by, _)| by)
        {
            warnings.push(Warning::Shadowed { rule: index, by });
        }
        match &rule.action {
            RuleAction::Authn {
                requirement: AuthnRequirement::All(all),
                ..
            } => {
                if let Some(warning) = unsatisfiable_pair(config, index, all) {
                    warnings.push(warning);
                }
            }
            RuleAction::Anonymous => {
                if rule.authz.as_ref().is_some_and(needs_identity) {
                    warnings.push(Warning::AuthzNeedsIdentity { rule: index });
                }
            }
            RuleAction::Authn { .. } => {}
        }
    }
    warnings
}

/// Whether every request `later` matches, `earlier` matches too. False when unsure.
pub fn covers(earlier: &Matcher, later: &Matcher) -> bool {
    path_covers(earlier.path.as_ref(), later.path.as_ref())
        && methods_cover(earlier.methods.as_deref(), later.methods.as_deref())
        && host_covers(earlier.host.as_deref(), later.host.as_deref())
        && earlier.headers.iter().all(|(name, wanted)| {
            later
                .headers
                .iter()
                .any(|(other, had)| other == name && implies(had, wanted))
        })
}

fn path_covers(earlier: Option<&PathMatch>, later: Option<&PathMatch>) -> bool {
    let (earlier, later) = match (earlier, later) {
        (None, _) => return true,
        (Some(_), None) => return false,
        (Some(earlier), Some(later)) => (earlier, later),
    };
    match (earlier, later) {
        (PathMatch::Prefix(prefix), PathMatch::Prefix(longer)) => longer.starts_with(prefix),
        (PathMatch::Prefix(prefix), PathMatch::Exact(path)) => path.starts_with(prefix),
        (PathMatch::Prefix(prefix), PathMatch::Template(segments)) => {
            fixed_start(segments).starts_with(prefix)
        }
        (PathMatch::Exact(path), PathMatch::Exact(other)) => path == other,
        (PathMatch::Exact(path), PathMatch::Template(segments)) => {
            literal(segments).as_deref() == Some(path.as_str())
        }
        (PathMatch::Template(_), PathMatch::Exact(path)) => earlier.matches(path),
        (PathMatch::Template(wide), PathMatch::Template(narrow)) => {
            wide.len() == narrow.len()
                && wide.iter().zip(narrow).all(|pair| match pair {
                    (Segment::Param(_), Segment::Param(_)) => true,
                    // A parameter matches any non-empty segment.
                    (Segment::Param(_), Segment::Literal(text)) => !text.is_empty(),
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (Segment::Literal(_), Segment::Param(_)) => false,
                })
        }
        // A prefix matches paths of any length: no exact path or template holds them all.
        (PathMatch::Exact(_) | PathMatch::Template(_), PathMatch::Prefix(_)) => false,
    }
}

/// What every path a template matches starts with: its literal segments up to the first
/// parameter, with the slash before that parameter.
fn fixed_start(segments: &[Segment]) -> String {
    let mut start = String::new();
    for segment in segments {
        start.push('/');
        match segment {
            Segment::Literal(text) => start.push_str(text),
            Segment::Param(_) => break,
        }
    }
    start
}

/// The one path a template without parameters matches.
fn literal(segments: &[Segment]) -> Option<String> {
    let mut path = String::new();
    for segment in segments {
        let Segment::Literal(text) = segment else {
            return None;
        };
        path.push('/');
        path.push_str(text);
    }
    Some(path)
}

fn methods_cover(earlier: Option<&[String]>, later: Option<&[String]>) -> bool {
    match (earlier, later) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(wide), Some(narrow)) => narrow.iter().all(|m| wide.contains(m)),
    }
}

fn host_covers(earlier: Option<&str>, later: Option<&str>) -> bool {
    match (earlier, later) {
        (None, _) => true,
        (Some(_), None) => false,
        // A host with a port matches only itself; one without also matches itself with
        // any port, which `earlier` matches only if it is the same host without a port.
        (Some(wide), Some(narrow)) if narrow.contains(':') => host_matches(wide, narrow),
        (Some(wide), Some(narrow)) => wide.eq_ignore_ascii_case(narrow),
    }
}

/// Whether a header that passes `had` always passes `wanted`.
fn implies(had: &HeaderMatch, wanted: &HeaderMatch) -> bool {
    match (wanted, had) {
        (
            HeaderMatch::Present(true),
            HeaderMatch::Present(true) | HeaderMatch::Equals(_) | HeaderMatch::Prefix(_),
        ) => true,
        (HeaderMatch::Present(false), HeaderMatch::Present(false)) => true,
        (HeaderMatch::Equals(value), HeaderMatch::Equals(other)) => value == other,
        (HeaderMatch::Prefix(prefix), HeaderMatch::Equals(value)) => value.starts_with(prefix),
        (HeaderMatch::Prefix(prefix), HeaderMatch::Prefix(longer)) => longer.starts_with(prefix),
        _ => false,
    }
}

/// Two of an `all` list's authenticators that read the same token and could never
/// both accept it.
fn unsatisfiable_pair(config: &Config, rule: usize, all: &[Authenticator]) -> Option<Warning> {
    for (i, first) in all.iter().enumerate() {
        for second in all.iter().skip(i + 1) {
            if let Some(why) = exclusive(config, *first, *second) {
                return Some(Warning::AllUnsatisfiable {
                    rule,
                    first: name(config, *first),
                    second: name(config, *second),
                    why,
                });
            }
        }
    }
    None
}

/// Why two authenticators can never both verify the same request, if they can't.
fn exclusive(config: &Config, a: Authenticator, b: Authenticator) -> Option<&'static str> {
    use Authenticator::{Exchange, Provider};
    let sources = |x: Authenticator| match x {
        Provider(i) => config.providers.get(i).map(|p| &p.sources),
        Exchange(i) => config.exchanges.get(i).map(|e| &e.sources),
    };
    // The same sources: every request hands both the same token (the first present).
    if sources(a)? != sources(b)? {
        return None;
    }
    match (a, b) {
        (Provider(i), Provider(j)) => {
            let issuer = |k: usize| config.providers.get(k).map(|p| &p.policy.issuer);
            (issuer(i)? != issuer(j)?)
                .then_some("they read the token from the same sources, and one token has one issuer")
        }
        (Provider(_), Exchange(_)) | (Exchange(_), Provider(_)) => Some(
            "they read the token from the same sources, and a JWT goes to providers only, any other token to exchanges only",
        ),
        // Two auth services may both know one opaque token.
        (Exchange(_), Exchange(_)) => None,
    }
}

fn name(config: &Config, authenticator: Authenticator) -> String {
    match authenticator {
        Authenticator::Provider(i) => config.providers.get(i).map(|p| p.name.clone()),
        Authenticator::Exchange(i) => config.exchanges.get(i).map(|e| e.name.clone()),
    }
    .unwrap_or_default()
}

/// Whether a condition fails whenever there is no identity (no claims): it tests a
/// claim in every way it could hold.
pub fn needs_identity(condition: &Condition) -> bool {
    match condition {
        Condition::Claim { .. } | Condition::PathParam { .. } => true,
        Condition::Header { test, .. } => matches!(test, HeaderTest::EqualsClaim(_)),
        Condition::All(items) => items.iter().any(needs_identity),
        Condition::Any(items) => items.iter().all(needs_identity),
        // `not` of a failing test holds.
        Condition::Not(_) | Condition::Method(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use serde_json::{json, Value};

    fn config(rules: Value) -> Config {
        let doc = json!({
            "providers": {
                "corp": { "issuer": ISSUER, "jwks": { "inline": public_jwks() } },
                "partner": { "issuer": "https://partner", "jwks": { "inline": public_jwks() } },
                "mirror": { "issuer": ISSUER, "jwks": { "inline": public_jwks() } },
                "cookie": { "issuer": "https://cookie", "jwks": { "inline": public_jwks() },
                            "sources": [ { "cookie": "at" } ] }
            },
            "exchanges": { "opaque": {
                "mode": "introspection",
                "endpoint": { "uri": "http://auth/introspect", "cluster": "auth" },
                "client": { "id": "gateway", "secret": "s3cret" },
                "provider": "corp"
            } },
            "rules": rules
        });
        Config::from_json(doc.to_string().as_bytes()).unwrap()
    }

    fn shadowed(earlier: Value, later: Value) -> bool {
        let config = config(json!([
            { "match": earlier, "allow": "anonymous" },
            { "match": later, "allow": "anonymous" }
        ]));
        lint(&config) == vec![Warning::Shadowed { rule: 1, by: 0 }]
    }

    #[test]
    fn a_rule_after_an_empty_match_is_shadowed() {
        assert!(shadowed(json!({}), json!({"path": {"prefix": "/a"}})));
        assert!(shadowed(json!({}), json!({})));
        assert!(!shadowed(json!({"methods": ["GET"]}), json!({})));
    }

    #[test]
    fn a_longer_prefix_or_an_exact_path_under_a_prefix_is_shadowed() {
        let prefix = json!({"path": {"prefix": "/api"}});
        assert!(shadowed(
            prefix.clone(),
            json!({"path": {"prefix": "/api"}})
        ));
        assert!(shadowed(
            prefix.clone(),
            json!({"path": {"prefix": "/api/v1"}})
        ));
        assert!(shadowed(
            prefix.clone(),
            json!({"path": {"exact": "/api/x"}})
        ));
        assert!(shadowed(
            prefix.clone(),
            json!({"path": {"template": "/api/{id}"}})
        ));
        assert!(shadowed(
            json!({"path": {"prefix": "/api/"}}),
            json!({"path": {"template": "/api/{id}"}})
        ));
        assert!(!shadowed(
            prefix.clone(),
            json!({"path": {"prefix": "/ap"}})
        ));
        assert!(!shadowed(
            prefix.clone(),
            json!({"path": {"template": "/{v}/api"}})
        ));
        assert!(!shadowed(
            json!({"path": {"prefix": "/api/x"}}),
            json!({"path": {"template": "/api/{id}"}})
        ));
        assert!(!shadowed(
            json!({"path": {"exact": "/api"}}),
            json!({"path": {"prefix": "/api"}})
        ));
    }

    #[test]
    fn templates_cover_exact_paths_and_narrower_templates() {
        let template = json!({"path": {"template": "/users/{id}/orders"}});
        assert!(shadowed(
            template.clone(),
            json!({"path": {"exact": "/users/42/orders"}})
        ));
        assert!(shadowed(
            template.clone(),
            json!({"path": {"template": "/users/{uid}/orders"}})
        ));
        assert!(shadowed(
            json!({"path": {"template": "/users/{id}/{what}"}}),
            template.clone()
        ));
        assert!(!shadowed(
            template.clone(),
            json!({"path": {"exact": "/users//orders"}})
        ));
        assert!(!shadowed(
            template.clone(),
            json!({"path": {"template": "/users/{id}/orders/{n}"}})
        ));
        assert!(!shadowed(
            json!({"path": {"template": "/users/me/orders"}}),
            template.clone()
        ));
        assert!(shadowed(
            json!({"path": {"exact": "/users/me"}}),
            json!({"path": {"template": "/users/me"}})
        ));
    }

    #[test]
    fn methods_hosts_and_headers_must_be_at_least_as_broad() {
        assert!(shadowed(
            json!({"methods": ["GET", "POST"]}),
            json!({"methods": ["get"], "path": {"prefix": "/x"}})
        ));
        assert!(!shadowed(
            json!({"methods": ["GET"]}),
            json!({"methods": ["GET", "POST"]})
        ));
        assert!(shadowed(json!({"host": "API"}), json!({"host": "api"})));
        assert!(shadowed(
            json!({"host": "api"}),
            json!({"host": "api:8443"})
        ));
        assert!(!shadowed(
            json!({"host": "api:8443"}),
            json!({"host": "api"})
        ));
        assert!(!shadowed(json!({"host": "api"}), json!({})));
        let tenant = json!({"headers": {"x-tenant": {"present": true}}});
        assert!(shadowed(
            tenant.clone(),
            json!({"headers": {"x-tenant": {"equals": "acme"}, "x-other": {"present": false}}})
        ));
        assert!(shadowed(
            json!({"headers": {"x-tenant": {"prefix": "ac"}}}),
            json!({"headers": {"x-tenant": {"equals": "acme"}}})
        ));
        assert!(!shadowed(tenant.clone(), json!({})));
        assert!(!shadowed(
            tenant.clone(),
            json!({"headers": {"x-tenant": {"present": false}}})
        ));
        assert!(!shadowed(
            json!({"headers": {"x-tenant": {"equals": "acme"}}}),
            json!({"headers": {"x-tenant": {"prefix": "acme"}}})
        ));
    }

    #[test]
    fn only_the_first_covering_rule_is_named_and_the_message_says_which() {
        let config = config(json!([
            { "name": "api", "match": {"path": {"prefix": "/api"}}, "allow": "anonymous" },
            { "match": {}, "allow": "anonymous" },
            { "name": "admin", "match": {"path": {"prefix": "/api/admin"}}, "authn": {"any": ["corp"]} }
        ]));
        let warnings = lint(&config);
        assert_eq!(warnings, vec![Warning::Shadowed { rule: 2, by: 0 }]);
        assert_eq!(
            warnings[0].describe(&config),
            "rules[2] \"admin\" can never match: rules[0] \"api\" matches every request it does, and comes first"
        );
    }

    #[test]
    fn all_of_two_issuers_reading_one_token_can_never_pass() {
        let all = |names: Value| config(json!([{ "match": {}, "authn": {"all": names} }]));
        let config_ = all(json!(["corp", "partner"]));
        let warnings = lint(&config_);
        assert!(
            matches!(&warnings[..], [Warning::AllUnsatisfiable { rule: 0, first, second, .. }]
                     if first == "corp" && second == "partner"),
            "{warnings:?}"
        );
        assert!(warnings[0]
            .describe(&config_)
            .contains("one token has one issuer"));
        assert!(matches!(
            &lint(&all(json!(["corp", "opaque"])))[..],
            [Warning::AllUnsatisfiable { .. }]
        ));
        // The same issuer (two audiences, say), or different sources: possible.
        assert!(lint(&all(json!(["corp", "mirror"]))).is_empty());
        assert!(lint(&all(json!(["corp", "cookie"]))).is_empty());
        assert!(lint(&all(json!(["corp"]))).is_empty());
        let any = config(json!([{ "match": {}, "authn": {"any": ["corp", "partner", "opaque"]} }]));
        assert!(lint(&any).is_empty());
    }

    #[test]
    fn an_anonymous_rule_testing_claims_refuses_everything() {
        let anonymous = |authz: Value| {
            lint(&config(
                json!([{ "match": {}, "allow": "anonymous", "authz": authz }]),
            ))
        };
        let refuses = vec![Warning::AuthzNeedsIdentity { rule: 0 }];
        assert_eq!(
            anonymous(json!({"claim": "scope", "contains": "a"})),
            refuses
        );
        assert_eq!(
            anonymous(
                json!({"all": [{"method": ["GET"]}, {"header": "x-t", "equals_claim": "t"}]})
            ),
            refuses
        );
        assert_eq!(
            anonymous(json!({"any": [{"claim": "a", "equals": 1}, {"claim": "b", "equals": 2}]})),
            refuses
        );
        assert!(anonymous(json!({"not": {"claim": "a", "equals": 1}})).is_empty());
        assert!(
            anonymous(json!({"any": [{"claim": "a", "equals": 1}, {"method": ["GET"]}]}))
                .is_empty()
        );
        assert!(anonymous(json!({"header": "x-debug", "present": false})).is_empty());
        // With authn, a tokenless request is asked for a token (401): nothing to warn.
        let optional = config(
            json!([{ "match": {}, "authn": {"any": ["corp"], "optional": true},
                                       "authz": {"claim": "scope", "contains": "a"} }]),
        );
        assert!(lint(&optional).is_empty());
    }
}
