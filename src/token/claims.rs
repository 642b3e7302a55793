//! Forwarding verified claims upstream as headers (the contract's encoding rules).

use serde_json::{Map, Value};
use std::rc::Rc;

/// A dot-separated claim path such as `realm_access.roles`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(Vec<String>);

impl ClaimPath {
    pub fn parse(path: &str) -> Option<ClaimPath> {
        let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
        if parts.iter().any(String::is_empty) {
            return None;
        }
        Some(ClaimPath(parts))
    }

    /// The top-level member the path starts in.
    pub fn first(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    /// The value at this path, if every step is an object member.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.0.split_first()?;
        rest.iter().try_fold(claims.get(first)?, |value, step| {
            value.as_object()?.get(step)
        })
    }
}

impl std::fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// What a provider sends upstream about a verified token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forward {
    pub keep_token: bool,
    pub payload_header: Option<String>,
    pub claims: Vec<(ClaimPath, String)>,
}

impl Forward {
    /// Every header this provider sets: all of them are stripped from incoming requests.
    pub fn headers(&self) -> impl Iterator<Item = &str> {
        self.payload_header
            .as_deref()
            .into_iter()
            .chain(self.claims.iter().map(|(_, h)| h.as_str()))
    }

    /// The identity headers for a verified token, computed once per verification.
    pub fn identity_headers(
        &self,
        claims: &Map<String, Value>,
        payload_segment: &str,
    ) -> Vec<(Rc<str>, Rc<str>)> {
        let mut headers = Vec::with_capacity(self.claims.len() + 1);
        if let Some(name) = &self.payload_header {
            headers.push((name.as_str().into(), payload_segment.into()));
        }
        for (path, name) in &self.claims {
            if let Some(value) = path.lookup(claims).and_then(encode_claim) {
                headers.push((name.as_str().into(), value.into()));
            }
        }
        headers
    }
}

/// Encodes a claim as a header value: strings as they are (a space-separated `scope`
/// included), numbers and booleans as JSON, arrays of strings joined with `,`, anything
/// else as compact JSON. `null` and values that can't be a header value give `None`.
pub fn encode_claim(value: &Value) -> Option<String> {
    let encoded = match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    is_header_value(&encoded).then_some(encoded)
}

/// RFC 9110 §5.5: no control characters other than horizontal tab.
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims() -> Map<String, Value> {
        json!({
            "sub": "alice",
            "scope": "read write",
            "n": 42,
            "admin": true,
            "roles": ["a", "b"],
            "mixed": ["a", 1],
            "obj": {"k": "v", "n": [1, 2]},
            "realm_access": {"roles": ["user", "admin"]},
            "nothing": null,
            "evil": "x\r\nx-injected: 1"
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    fn encoded(path: &str) -> Option<String> {
        ClaimPath::parse(path)
            .unwrap()
            .lookup(&claims())
            .and_then(encode_claim)
    }

    #[test]
    fn strings_are_forwarded_as_they_are() {
        assert_eq!(encoded("sub").as_deref(), Some("alice"));
        assert_eq!(encoded("scope").as_deref(), Some("read write"));
    }

    #[test]
    fn numbers_and_booleans_are_json() {
        assert_eq!(encoded("n").as_deref(), Some("42"));
        assert_eq!(encoded("admin").as_deref(), Some("true"));
    }

    #[test]
    fn arrays_of_strings_are_joined_with_commas() {
        assert_eq!(encoded("roles").as_deref(), Some("a,b"));
        assert_eq!(encoded("realm_access.roles").as_deref(), Some("user,admin"));
    }

    #[test]
    fn objects_and_mixed_arrays_are_compact_json() {
        assert_eq!(encoded("obj").as_deref(), Some(r#"{"k":"v","n":[1,2]}"#));
        assert_eq!(encoded("mixed").as_deref(), Some(r#"["a",1]"#));
    }

    #[test]
    fn missing_and_null_claims_set_no_header() {
        assert_eq!(encoded("absent"), None);
        assert_eq!(encoded("sub.deeper"), None);
        assert_eq!(encoded("nothing"), None);
    }

    #[test]
    fn claim_with_line_breaks_is_not_forwarded() {
        assert_eq!(encoded("evil"), None);
    }

    #[test]
    fn claim_paths_refuse_empty_steps() {
        assert!(ClaimPath::parse("a..b").is_none());
        assert!(ClaimPath::parse("").is_none());
        assert!(ClaimPath::parse(".a").is_none());
    }

    #[test]
    fn identity_headers_include_the_payload_segment() {
        let forward = Forward {
            keep_token: false,
            payload_header: Some("x-jwt-payload".into()),
            claims: vec![(ClaimPath::parse("sub").unwrap(), "x-user".into())],
        };
        let headers = forward.identity_headers(&claims(), "eyJzdWIiOiJhbGljZSJ9");
        assert_eq!(
            headers,
            vec![
                ("x-jwt-payload".into(), "eyJzdWIiOiJhbGljZSJ9".into()),
                ("x-user".into(), "alice".into())
            ]
        );
    }
}
