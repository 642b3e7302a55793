//! Rules: which requests need which authentication. First match wins.

use crate::policy::authz::Condition;
use crate::token::extract::{Reads, Request};

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    /// The name as it can stand in a metric name (`tokengate.rule.<stat_name>.…`).
    pub stat_name: String,
    pub matcher: Matcher,
    pub action: RuleAction,
    /// Local authorization, checked after authentication.
    pub authz: Option<Condition>,
    /// Ask `authz_service` after the local checks pass.
    pub central: bool,
    /// Decide, log and count, but let the request through.
    pub dry_run: bool,
}

impl Rule {
    /// A rule with no authorization of its own (the implicit rule, tests).
    pub fn plain(name: &str, matcher: Matcher, action: RuleAction) -> Rule {
        Rule {
            name: name.to_owned(),
            stat_name: stat_name(name),
            matcher,
            action,
            authz: None,
            central: false,
            dry_run: false,
        }
    }
}

/// A rule name made safe for a metric name: anything but letters, digits, `_` and `-`
/// becomes `_`.
pub fn stat_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleAction {
    /// No authentication; identity headers are still stripped.
    Anonymous,
    /// Authenticate with providers and exchanges.
    Authn {
        requirement: AuthnRequirement,
        optional: bool,
    },
}

/// What a rule's `authn` names: a JWT provider or an exchange (indexes into
/// `Config::providers` / `Config::exchanges`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticator {
    Provider(usize),
    Exchange(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthnRequirement {
    Any(Vec<Authenticator>),
    All(Vec<Authenticator>),
}

impl AuthnRequirement {
    pub fn authenticators(&self) -> &[Authenticator] {
        match self {
            AuthnRequirement::Any(a) | AuthnRequirement::All(a) => a,
        }
    }
}

/// An empty matcher matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matcher {
    pub path: Option<PathMatch>,
    /// Uppercase.
    pub methods: Option<Vec<String>>,
    /// Lowercase.
    pub host: Option<String>,
    pub headers: Vec<(String, HeaderMatch)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// A plain string prefix, as in Envoy's route match.
    Prefix(String),
    Template(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{name}`: one non-empty path segment.
    Param(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderMatch {
    Present(bool),
    Equals(String),
    Prefix(String),
}

impl PathMatch {
    /// Parses `/users/{id}/orders`.
    pub fn template(template: &str) -> Option<PathMatch> {
        let rest = template.strip_prefix('/')?;
        let segments = rest
            .split('/')
            .map(
                |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name)
                        if !name.is_empty()
                            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                    {
                        Some(Segment::Param(name.to_owned()))
                    }
                    Some(_) => None,
                    None if segment.contains(['{', '}']) => None,
                    None => Some(Segment::Literal(segment.to_owned())),
                },
            )
            .collect::<Option<Vec<_>>>()?;
        Some(PathMatch::Template(segments))
    }

    /// The segment position of a template variable.
    pub fn param_segment(&self, name: &str) -> Option<usize> {
        match self {
            PathMatch::Template(segments) => segments
                .iter()
                .position(|s| matches!(s, Segment::Param(p) if p == name)),
            _ => None,
        }
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                segments
                    .iter()
                    .all(|segment| match (segment, parts.next()) {
                        (Segment::Literal(lit), Some(part)) => part == lit,
                        (Segment::Param(_), Some(part)) => !part.is_empty(),
                        (_, None) => false,
                    })
                    && parts.next().is_none()
            }
        }
    }
}

impl Matcher {
    /// Notes the parts of a request this matcher looks at.
    pub fn add_reads(&self, reads: &mut Reads) {
        reads.path |= self.path.is_some();
        reads.method |= self.methods.is_some();
        reads.host |= self.host.is_some();
        for (name, _) in &self.headers {
            reads.add_header(name);
        }
    }

    /// Whether the request matches; `path` is the normalized path (no query).
    pub fn matches(&self, request: &Request, path: &str) -> bool {
        if let Some(path_match) = &self.path {
            if !path_match.matches(path) {
                return false;
            }
        }
        if let Some(methods) = &self.methods {
            if !methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(&request.method))
            {
                return false;
            }
        }
        if let Some(host) = &self.host {
            if !host_matches(host, &request.host) {
                return false;
            }
        }
        self.headers.iter().all(|(name, m)| {
            let value = request.header(name);
            match m {
                HeaderMatch::Present(want) => value.is_some() == *want,
                HeaderMatch::Equals(expected) => value == Some(expected.as_str()),
                HeaderMatch::Prefix(prefix) => {
                    value.is_some_and(|v| v.starts_with(prefix.as_str()))
                }
            }
        })
    }

    /// What of this matcher the request fails — `path`, `method`, `host` or
    /// `header <name>` — or `None` when it matches; for `tokengate explain`.
    #[cfg(feature = "cli")]
    pub fn mismatch(&self, request: &Request, path: &str) -> Option<String> {
        if self.path.as_ref().is_some_and(|p| !p.matches(path)) {
            return Some("path".into());
        }
        if self.methods.as_ref().is_some_and(|methods| {
            !methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(&request.method))
        }) {
            return Some("method".into());
        }
        if self
            .host
            .as_ref()
            .is_some_and(|host| !host_matches(host, &request.host))
        {
            return Some("host".into());
        }
        self.headers
            .iter()
            .find(|(name, m)| !m.accepts(request.header(name)))
            .map(|(name, _)| format!("header {name}"))
    }
}

#[cfg(feature = "cli")]
impl HeaderMatch {
    /// Whether a header's (first) value passes; `None` when the header is absent. The
    /// same test as in [`Matcher::matches`] (kept inline there: the filter's hot path),
    /// which `a_mismatch_names_the_first_part_that_fails_and_only_when_matches_fails`
    /// holds them to.
    fn accepts(&self, value: Option<&str>) -> bool {
        match self {
            HeaderMatch::Present(want) => value.is_some() == *want,
            HeaderMatch::Equals(expected) => value == Some(expected.as_str()),
            HeaderMatch::Prefix(prefix) => value.is_some_and(|v| v.starts_with(prefix.as_str())),
        }
    }
}

/// Hosts compare case-insensitively; a rule without a port ignores the request's port.
pub(crate) fn host_matches(rule: &str, authority: &str) -> bool {
    if authority.eq_ignore_ascii_case(rule) {
        return true;
    }
    !rule.contains(':')
        && authority.rsplit_once(':').is_some_and(|(host, port)| {
            port.bytes().all(|b| b.is_ascii_digit()) && host.eq_ignore_ascii_case(rule)
        })
}

/// The first rule that matches, with its index; `path` is the normalized path.
pub fn first_match<'a>(
    rules: &'a [Rule],
    request: &Request,
    path: &str,
) -> Option<(usize, &'a Rule)> {
    rules
        .iter()
        .enumerate()
        .find(|(_, rule)| rule.matcher.matches(request, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(matcher: &Matcher, request: &Request) -> bool {
        matcher.matches(request, request.path_only())
    }

    fn request(method: &str, path: &str, host: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            host: host.into(),
            headers: vec![("x-tenant".into(), "acme".into())],
        }
    }

    #[test]
    fn empty_matcher_matches_everything() {
        assert!(hit(
            &Matcher::default(),
            &request("DELETE", "/anything?x=1", "h")
        ));
    }

    #[test]
    fn prefix_ignores_the_query_string() {
        let m = Matcher {
            path: Some(PathMatch::Prefix("/healthz".into())),
            ..Matcher::default()
        };
        assert!(hit(&m, &request("GET", "/healthz?verbose=1", "h")));
        assert!(!hit(&m, &request("GET", "/api?next=/healthz", "h")));
    }

    #[test]
    fn exact_path_must_be_whole() {
        let m = Matcher {
            path: Some(PathMatch::Exact("/a".into())),
            ..Matcher::default()
        };
        assert!(hit(&m, &request("GET", "/a?q", "h")));
        assert!(!hit(&m, &request("GET", "/a/", "h")));
    }

    #[test]
    fn template_matches_one_segment_per_parameter() {
        let m = Matcher {
            path: PathMatch::template("/users/{id}/orders"),
            ..Matcher::default()
        };
        assert!(hit(&m, &request("GET", "/users/42/orders", "h")));
        assert!(!hit(&m, &request("GET", "/users//orders", "h")));
        assert!(!hit(&m, &request("GET", "/users/42/orders/7", "h")));
        assert!(!hit(&m, &request("GET", "/users/42", "h")));
    }

    #[test]
    fn malformed_templates_are_refused() {
        assert!(PathMatch::template("users/{id}").is_none());
        assert!(PathMatch::template("/users/{}").is_none());
        assert!(PathMatch::template("/users/x{id}").is_none());
    }

    #[test]
    fn methods_and_host_and_headers_must_all_match() {
        let m = Matcher {
            path: None,
            methods: Some(vec!["GET".into()]),
            host: Some("api.example.com".into()),
            headers: vec![("x-tenant".into(), HeaderMatch::Equals("acme".into()))],
        };
        assert!(hit(&m, &request("GET", "/", "API.example.com:8443")));
        assert!(!hit(&m, &request("POST", "/", "api.example.com")));
        assert!(!hit(&m, &request("GET", "/", "other.example.com")));
        let absent = Matcher {
            headers: vec![("x-other".into(), HeaderMatch::Present(false))],
            ..Matcher::default()
        };
        assert!(hit(&absent, &request("GET", "/", "h")));
    }

    #[cfg(feature = "cli")]
    #[test]
    fn a_mismatch_names_the_first_part_that_fails_and_only_when_matches_fails() {
        let m = Matcher {
            path: Some(PathMatch::Prefix("/api".into())),
            methods: Some(vec!["GET".into()]),
            host: Some("api".into()),
            headers: vec![("x-tenant".into(), HeaderMatch::Equals("acme".into()))],
        };
        for (request, part) in [
            (request("GET", "/api/x", "api"), None),
            (request("GET", "/other", "api"), Some("path")),
            (request("POST", "/api", "api"), Some("method")),
            (request("GET", "/api", "other"), Some("host")),
            (
                Request {
                    headers: vec![],
                    ..request("GET", "/api", "api:80")
                },
                Some("header x-tenant"),
            ),
        ] {
            let path = request.path_only().to_owned();
            assert_eq!(m.mismatch(&request, &path).as_deref(), part);
            assert_eq!(m.matches(&request, &path), part.is_none());
        }
    }
}
