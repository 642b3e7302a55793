//! A rule's `authz`: `all` / `any` / `not` trees over conditions on the verified claims,
//! the request's headers and method, and the path's template variables. Compiled once
//! (claim paths split, path parameters turned into segment positions); evaluating reads
//! and compares, and allocates nothing.

use crate::token::claims::ClaimPath;
use crate::token::extract::Request;
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Claim {
        path: ClaimPath,
        test: ClaimTest,
    },
    Header {
        name: String,
        test: HeaderTest,
    },
    /// The template variable at this segment of the path equals the claim.
    PathParam {
        name: String,
        segment: usize,
        equals_claim: ClaimPath,
    },
    /// Uppercase.
    Method(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimTest {
    /// The claim is this JSON value (a string, number or boolean).
    Equals(Value),
    /// An array claim holds the string, or a space-separated string claim (`scope`)
    /// has it as one of its words.
    Contains(String),
    /// The claim (or, for an array claim, one of its elements) is one of these.
    In(Vec<Value>),
    /// A string claim starts with this.
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum HeaderTest {
    Equals(String),
    Present(bool),
    /// The header's value equals the claim (a string, or a number or boolean as JSON).
    EqualsClaim(ClaimPath),
}

/// What a condition is evaluated against.
pub struct Facts<'a> {
    pub request: &'a Request,
    /// The rule-matching path (normalized, no query).
    pub path: &'a str,
    /// The verified claims; `None` without an identity (every claim test fails).
    pub claims: Option<&'a Map<String, Value>>,
}

impl Condition {
    pub fn holds(&self, facts: &Facts<'_>) -> bool {
        self.evaluate(facts, &mut |_, _| {})
    }

    /// Evaluates, telling `trace` every condition's result (depth, text, result) in
    /// order, for `tokengate explain`. Short-circuits like `holds`.
    pub fn evaluate(&self, facts: &Facts<'_>, trace: &mut dyn FnMut(&Condition, bool)) -> bool {
        let result = match self {
            Condition::All(items) => items.iter().all(|c| c.evaluate(facts, trace)),
            Condition::Any(items) => items.iter().any(|c| c.evaluate(facts, trace)),
            Condition::Not(inner) => !inner.evaluate(facts, trace),
            Condition::Claim { path, test } => {
                let value = facts.claims.and_then(|claims| path.lookup(claims));
                value.is_some_and(|value| test.holds(value))
            }
            Condition::Header { name, test } => {
                let value = facts.request.header(name);
                match test {
                    HeaderTest::Present(present) => value.is_some() == *present,
                    HeaderTest::Equals(expected) => value == Some(expected.as_str()),
                    HeaderTest::EqualsClaim(path) => {
                        let claim = facts.claims.and_then(|claims| path.lookup(claims));
                        matches!((value, claim), (Some(value), Some(claim)) if same_text(claim, value))
                    }
                }
            }
            Condition::PathParam {
                segment,
                equals_claim,
                ..
            } => {
                let value = facts
                    .path
                    .strip_prefix('/')
                    .and_then(|rest| rest.split('/').nth(*segment));
                let claim = facts.claims.and_then(|claims| equals_claim.lookup(claims));
                matches!((value, claim), (Some(value), Some(claim)) if !value.is_empty() && same_text(claim, value))
            }
            Condition::Method(methods) => methods.contains(&facts.request.method),
        };
        trace(self, result);
        result
    }

    /// A short description for logs and `explain`: what is tested, never a claim value
    /// from a request.
    pub fn describe(&self) -> String {
        match self {
            Condition::All(items) => format!("all of {} condition(s)", items.len()),
            Condition::Any(items) => format!("any of {} condition(s)", items.len()),
            Condition::Not(_) => "not".into(),
            Condition::Claim { path, test } => match test {
                ClaimTest::Equals(v) => format!("claim {path} equals {v}"),
                ClaimTest::Contains(s) => format!("claim {path} contains {s:?}"),
                ClaimTest::In(vs) => format!("claim {path} in {}", Value::Array(vs.clone())),
                ClaimTest::Prefix(p) => format!("claim {path} starts with {p:?}"),
            },
            Condition::Header { name, test } => match test {
                HeaderTest::Equals(v) => format!("header {name} equals {v:?}"),
                HeaderTest::Present(true) => format!("header {name} present"),
                HeaderTest::Present(false) => format!("header {name} absent"),
                HeaderTest::EqualsClaim(path) => format!("header {name} equals claim {path}"),
            },
            Condition::PathParam {
                name, equals_claim, ..
            } => format!("path parameter {{{name}}} equals claim {equals_claim}"),
            Condition::Method(methods) => format!("method in {}", methods.join(",")),
        }
    }

    /// Every header a condition reads (for what the host reads of a request).
    pub fn headers(&self, out: &mut Vec<String>) {
        match self {
            Condition::All(items) | Condition::Any(items) => {
                items.iter().for_each(|c| c.headers(out))
            }
            Condition::Not(inner) => inner.headers(out),
            Condition::Header { name, .. } => out.push(name.clone()),
            _ => {}
        }
    }

    /// Whether any condition reads the method, or the path.
    pub fn reads_method_or_path(&self) -> (bool, bool) {
        match self {
            Condition::All(items) | Condition::Any(items) => items
                .iter()
                .map(Condition::reads_method_or_path)
                .fold((false, false), |a, b| (a.0 || b.0, a.1 || b.1)),
            Condition::Not(inner) => inner.reads_method_or_path(),
            Condition::Method(_) => (true, false),
            Condition::PathParam { .. } => (false, true),
            _ => (false, false),
        }
    }
}

impl ClaimTest {
    fn holds(&self, claim: &Value) -> bool {
        match self {
            ClaimTest::Equals(expected) => claim == expected,
            ClaimTest::Contains(wanted) => match claim {
                Value::Array(items) => items.iter().any(|item| item.as_str() == Some(wanted)),
                Value::String(words) => words.split_ascii_whitespace().any(|w| w == wanted),
                _ => false,
            },
            ClaimTest::In(allowed) => match claim {
                Value::Array(items) => items.iter().any(|item| allowed.contains(item)),
                scalar => allowed.contains(scalar),
            },
            ClaimTest::Prefix(prefix) => claim.as_str().is_some_and(|s| s.starts_with(prefix)),
        }
    }
}

/// A claim compared with text from the request: strings as they are, numbers and
/// booleans as JSON (`42` matches the path segment `42`).
fn same_text(claim: &Value, text: &str) -> bool {
    match claim {
        Value::String(s) => s == text,
        Value::Number(n) => n.to_string() == text,
        Value::Bool(b) => (if *b { "true" } else { "false" }) == text,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims() -> Map<String, Value> {
        json!({
            "sub": "alice", "uid": 42, "tenant": "acme",
            "scope": "orders:read orders:write", "scp": ["admin", "ops"],
            "realm_access": {"roles": ["user"]}, "email": "alice@example.com"
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            path: "/users/42/orders".into(),
            host: "svc".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn claim(path: &str, test: ClaimTest) -> Condition {
        Condition::Claim {
            path: ClaimPath::parse(path).unwrap(),
            test,
        }
    }

    fn holds(
        condition: &Condition,
        request: &Request,
        claims: Option<&Map<String, Value>>,
    ) -> bool {
        condition.holds(&Facts {
            request,
            path: "/users/42/orders",
            claims,
        })
    }

    #[test]
    fn contains_works_for_a_scope_string_and_an_scp_array() {
        let c = claims();
        let r = request("GET", &[]);
        assert!(holds(
            &claim("scope", ClaimTest::Contains("orders:write".into())),
            &r,
            Some(&c)
        ));
        assert!(!holds(
            &claim("scope", ClaimTest::Contains("orders".into())),
            &r,
            Some(&c)
        ));
        assert!(holds(
            &claim("scp", ClaimTest::Contains("admin".into())),
            &r,
            Some(&c)
        ));
        assert!(holds(
            &claim("realm_access.roles", ClaimTest::Contains("user".into())),
            &r,
            Some(&c)
        ));
        assert!(!holds(
            &claim("missing", ClaimTest::Contains("x".into())),
            &r,
            Some(&c)
        ));
    }

    #[test]
    fn equals_in_and_prefix_compare_json_values() {
        let c = claims();
        let r = request("GET", &[]);
        assert!(holds(
            &claim("uid", ClaimTest::Equals(json!(42))),
            &r,
            Some(&c)
        ));
        assert!(!holds(
            &claim("uid", ClaimTest::Equals(json!("42"))),
            &r,
            Some(&c)
        ));
        assert!(holds(
            &claim("tenant", ClaimTest::In(vec![json!("x"), json!("acme")])),
            &r,
            Some(&c)
        ));
        assert!(holds(
            &claim("scp", ClaimTest::In(vec![json!("ops")])),
            &r,
            Some(&c)
        ));
        assert!(holds(
            &claim("email", ClaimTest::Prefix("alice@".into())),
            &r,
            Some(&c)
        ));
        assert!(!holds(
            &claim("uid", ClaimTest::Prefix("4".into())),
            &r,
            Some(&c)
        ));
    }

    #[test]
    fn header_conditions_and_header_versus_claim() {
        let c = claims();
        let r = request("GET", &[("x-tenant", "acme")]);
        let tenant = Condition::Header {
            name: "x-tenant".into(),
            test: HeaderTest::EqualsClaim(ClaimPath::parse("tenant").unwrap()),
        };
        assert!(holds(&tenant, &r, Some(&c)));
        assert!(!holds(
            &tenant,
            &request("GET", &[("x-tenant", "evil")]),
            Some(&c)
        ));
        assert!(!holds(&tenant, &request("GET", &[]), Some(&c)));
        let absent = Condition::Header {
            name: "x-debug".into(),
            test: HeaderTest::Present(false),
        };
        assert!(holds(&absent, &r, None));
    }

    #[test]
    fn a_path_parameter_must_equal_the_claim() {
        let c = claims();
        let owner = Condition::PathParam {
            name: "id".into(),
            segment: 1,
            equals_claim: ClaimPath::parse("uid").unwrap(),
        };
        let r = request("GET", &[]);
        assert!(owner.holds(&Facts {
            request: &r,
            path: "/users/42/orders",
            claims: Some(&c)
        }));
        assert!(!owner.holds(&Facts {
            request: &r,
            path: "/users/43/orders",
            claims: Some(&c)
        }));
    }

    #[test]
    fn trees_combine_and_without_identity_claims_fail() {
        let c = claims();
        let r = request("DELETE", &[]);
        let tree = Condition::All(vec![
            claim("scp", ClaimTest::Contains("admin".into())),
            Condition::Not(Box::new(Condition::Method(vec!["DELETE".into()]))),
        ]);
        assert!(!holds(&tree, &r, Some(&c)));
        assert!(holds(&tree, &request("GET", &[]), Some(&c)));
        assert!(!holds(&tree, &request("GET", &[]), None));
        let any = Condition::Any(vec![
            Condition::Method(vec!["GET".into()]),
            claim("sub", ClaimTest::Equals(json!("alice"))),
        ]);
        assert!(holds(&any, &r, Some(&c)));
    }

    #[test]
    fn evaluation_can_be_traced_condition_by_condition() {
        let c = claims();
        let tree = Condition::All(vec![
            claim("sub", ClaimTest::Equals(json!("alice"))),
            Condition::Method(vec!["POST".into()]),
        ]);
        let mut seen = Vec::new();
        let result = tree.evaluate(
            &Facts {
                request: &request("GET", &[]),
                path: "/",
                claims: Some(&c),
            },
            &mut |condition, result| seen.push((condition.describe(), result)),
        );
        assert!(!result);
        assert_eq!(
            seen,
            vec![
                ("claim sub equals \"alice\"".to_owned(), true),
                ("method in POST".to_owned(), false),
                ("all of 2 condition(s)".to_owned(), false)
            ]
        );
    }
}
