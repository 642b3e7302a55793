//! Centralized authorization: the OPA-Envoy input sent to `authz_service`, the answer
//! read back, and the per-VM decision cache. No I/O.
//!
//! The input is the shape OPA-Envoy policies read (`input.attributes.request.http`,
//! `input.parsed_path`, `input.parsed_query`) plus `input.identity` (the provider's or
//! exchange's name and the verified claims). Its headers are only those the
//! configuration names: no credential reaches the policy by accident, and the decision
//! cache, keyed by the whole input, can hit on repeats.

use crate::clock::Clock;
use crate::remote::Uri;
use crate::token::cache::Identity;
use crate::token::extract::{percent_decode, Request};
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// Answers larger than this are refused unread.
pub const MAX_DECISION_BYTES: usize = 64 * 1024;

/// `authz_service`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzService {
    pub uri: Uri,
    pub cluster: String,
    pub timeout_ms: u64,
    pub cache_secs: u64,
    /// `on_error: "allow"`: a failed call lets the request through (counted).
    pub allow_on_error: bool,
    /// Lowercase header names copied into the input.
    pub include_headers: Vec<String>,
}

/// What the service decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub allow: bool,
    /// On allow: headers set on the request upstream.
    pub upstream_headers: Vec<(String, String)>,
    /// On allow: headers removed from the request upstream.
    pub remove_headers: Vec<String>,
    /// On deny: the status (default 403), headers and body of the answer.
    pub status: Option<u32>,
    pub response_headers: Vec<(String, String)>,
    pub body: Option<String>,
}

/// Why an answer could not be used: the request gets `on_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionError {
    Transport,
    Status(u32),
    TooLarge,
    /// Not JSON, no `result`, or a `result` of no known shape (OPA answers `{}` for an
    /// undefined rule: that is an error here, never an allow).
    Garbage,
}

impl DecisionError {
    pub fn describe(self) -> String {
        match self {
            DecisionError::Transport => "callout failed".into(),
            DecisionError::Status(status) => format!("unexpected HTTP status {status}"),
            DecisionError::TooLarge => "answer larger than the size cap".into(),
            DecisionError::Garbage => "answer has no usable \"result\"".into(),
        }
    }
}

/// What of a request the policy sees, gathered once. The decision cache's key is
/// computed from it on every request; the input document only when the service is
/// asked (building it, claims included, cost more than the rest of a cached request).
pub struct Asked<'a> {
    method: &'a str,
    host: &'a str,
    /// `:path` less the query parameters that carry tokens.
    shown_path: Cow<'a, str>,
    /// The normalized path, for `parsed_path`.
    path: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    identity: Option<(&'a str, &'a Identity)>,
}

impl<'a> Asked<'a> {
    /// `headers` are the included headers' values as the upstream will see them (an
    /// identity header with the filter's value, never the client's). `hidden` names query
    /// parameters that carry tokens: they are left out of both the path and
    /// `parsed_query`, so a token in the query never reaches the policy. `identity` is
    /// the provider's or exchange's name and the identity it vouched for.
    pub fn new(
        request: &'a Request,
        path: &'a str,
        headers: Vec<(&'a str, &'a str)>,
        hidden: &[String],
        identity: Option<(&'a str, &'a Identity)>,
    ) -> Asked<'a> {
        let shown_path = match request.path.split_once('?') {
            Some((raw_path, query)) if query_has(query, hidden) => {
                let mut shown = raw_path.to_owned();
                let mut first = true;
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let name = param_name(pair);
                    if !hidden.contains(&name) {
                        shown.push(if first { '?' } else { '&' });
                        shown.push_str(pair);
                        first = false;
                    }
                }
                Cow::Owned(shown)
            }
            _ => Cow::Borrowed(request.path.as_str()),
        };
        Asked {
            method: &request.method,
            host: &request.host,
            shown_path,
            path,
            headers,
            identity,
        }
    }

    /// The decision cache's key: SHA-256 over every part of the input (the claims by
    /// their digest), each with its length, so two inputs (and so two identities)
    /// never share a decision.
    pub fn key(&self) -> [u8; 32] {
        let mut hash = hmac_sha256::Hash::new();
        let mut part = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        part(self.method.as_bytes());
        part(self.host.as_bytes());
        part(self.shown_path.as_bytes());
        for (name, value) in &self.headers {
            part(name.as_bytes());
            part(value.as_bytes());
        }
        match self.identity {
            Some((provider, identity)) => {
                part(provider.as_bytes());
                part(identity.claims_digest());
            }
            None => part(b"\0anonymous"),
        }
        hash.finalize()
    }

    /// The input document, as JSON text.
    pub fn input(&self) -> String {
        let headers: Map<String, Value> = self
            .headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), json!(value)))
            .collect();
        let query = self.shown_path.split_once('?').map_or("", |(_, q)| q);
        let mut parsed_query: Map<String, Value> = Map::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let value = pair.split_once('=').map_or("", |(_, v)| v);
            let value = percent_decode(value).unwrap_or_else(|| value.to_owned());
            let entry = parsed_query
                .entry(param_name(pair))
                .or_insert_with(|| json!([]));
            if let Value::Array(values) = entry {
                values.push(json!(value));
            }
        }
        let parsed_path: Vec<&str> = super::paths::segments(self.path);
        let identity = match self.identity {
            Some((provider, identity)) => {
                json!({"provider": provider, "claims": identity.claims.as_ref()})
            }
            None => Value::Null,
        };
        json!({"input": {
            "attributes": {"request": {"http": {
                "method": self.method,
                "path": self.shown_path,
                "host": self.host,
                "headers": headers,
            }}},
            "parsed_path": parsed_path,
            "parsed_query": parsed_query,
            "identity": identity,
        }})
        .to_string()
    }
}

/// A query parameter's name, percent-decoded (as it was written if it can't be).
fn param_name(pair: &str) -> String {
    let name = pair.split_once('=').map_or(pair, |(name, _)| name);
    percent_decode(name).unwrap_or_else(|| name.to_owned())
}

fn query_has(query: &str, names: &[String]) -> bool {
    !names.is_empty()
        && query.split('&').any(|pair| {
            let name = param_name(pair);
            names.contains(&name)
        })
}

/// Reads the service's answer: `{"result": true|false}`, `{"result": {"allow": …,
/// "headers": …, "status": …}}`, or OPA-Envoy's decision object (`allowed`, `headers`,
/// `request_headers_to_remove`, `response_headers_to_add`, `http_status`, `body`).
pub fn read_decision(
    status: Option<u32>,
    body_size: usize,
    body: &[u8],
) -> Result<Decision, DecisionError> {
    let status = status.ok_or(DecisionError::Transport)?;
    if status != 200 {
        return Err(DecisionError::Status(status));
    }
    if body_size > MAX_DECISION_BYTES || body.len() > MAX_DECISION_BYTES {
        return Err(DecisionError::TooLarge);
    }
    let document: Value = serde_json::from_slice(body).map_err(|_| DecisionError::Garbage)?;
    if crate::json::has_repeated_member(body) {
        return Err(DecisionError::Garbage);
    }
    match document.get("result") {
        Some(Value::Bool(allow)) => Ok(Decision {
            allow: *allow,
            ..Decision::default()
        }),
        Some(Value::Object(result)) => {
            let allow = match (result.get("allow"), result.get("allowed")) {
                (Some(Value::Bool(allow)), None) | (None, Some(Value::Bool(allow))) => *allow,
                _ => return Err(DecisionError::Garbage),
            };
            let headers = string_pairs(result.get("headers"))?;
            let status = match result.get("status").or_else(|| result.get("http_status")) {
                None => None,
                Some(value) => Some(
                    value
                        .as_u64()
                        .filter(|s| (200..=599).contains(s))
                        .and_then(|s| u32::try_from(s).ok())
                        .ok_or(DecisionError::Garbage)?,
                ),
            };
            let body = match result.get("body") {
                None | Some(Value::Null) => None,
                Some(Value::String(text)) => Some(text.clone()),
                Some(other) => Some(other.to_string()),
            };
            let remove_headers = match result.get("request_headers_to_remove") {
                None => Vec::new(),
                Some(Value::Array(names)) => names
                    .iter()
                    .map(|n| {
                        n.as_str()
                            .map(str::to_ascii_lowercase)
                            .ok_or(DecisionError::Garbage)
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(DecisionError::Garbage),
            };
            let mut decision = Decision {
                allow,
                remove_headers,
                status,
                body,
                response_headers: string_pairs(result.get("response_headers_to_add"))?,
                ..Decision::default()
            };
            // `headers` go upstream on allow, to the client on deny (OPA-Envoy's rule).
            if allow {
                decision.upstream_headers = headers;
            } else {
                decision.response_headers.extend(headers);
            }
            Ok(decision)
        }
        _ => Err(DecisionError::Garbage),
    }
}

/// A JSON object of header name → string value, names lowercased and checked.
fn string_pairs(value: Option<&Value>) -> Result<Vec<(String, String)>, DecisionError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let Value::Object(map) = value else {
        return Err(DecisionError::Garbage);
    };
    let mut pairs = Vec::with_capacity(map.len());
    for (name, value) in map {
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            _ => return Err(DecisionError::Garbage),
        };
        let valid_name = !name.is_empty()
            && !name.starts_with(':')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let valid_value = value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if !valid_name || !valid_value {
            return Err(DecisionError::Garbage);
        }
        pairs.push((name.to_ascii_lowercase(), value));
    }
    Ok(pairs)
}

/// The VM's decisions, by input key, each for `cache_secs`; bounded, oldest evicted.
#[derive(Debug, Default)]
pub struct DecisionCache {
    entries: HashMap<[u8; 32], (u64, Rc<Decision>)>,
    order: VecDeque<[u8; 32]>,
    max_entries: usize,
}

pub const DEFAULT_MAX_DECISIONS: usize = 4096;

impl DecisionCache {
    pub fn new(max_entries: usize) -> DecisionCache {
        DecisionCache {
            max_entries,
            ..DecisionCache::default()
        }
    }

    /// The live decision for this input (`now` in seconds).
    /// The decision kept for `key`, while it lasts (judged without reading the clock
    /// unless it ends within the clock's window).
    pub fn get(&mut self, key: &[u8; 32], clock: &Clock<'_>) -> Option<Rc<Decision>> {
        match self.entries.get(key) {
            Some((until, decision)) if clock.judge(|now| now < *until) => Some(decision.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&mut self, key: [u8; 32], until: u64, decision: Rc<Decision>, now: u64) {
        if self.max_entries == 0 || until <= now {
            return;
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            self.entries.retain(|_, (until, _)| now < *until);
            while self.entries.len() >= self.max_entries {
                let Some(oldest) = self.order.pop_front() else {
                    break;
                };
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (until, decision));
        self.order.push_back(key);
        if self.order.len() > 2 * self.max_entries + 64 {
            let entries = &self.entries;
            self.order.retain(|key| entries.contains_key(key));
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rules::Authenticator;

    fn identity(claims: Value) -> Identity {
        let claims = claims.as_object().cloned().unwrap_or_default();
        Identity::new(Authenticator::Provider(0), vec![], Rc::new(claims))
    }

    #[test]
    fn the_input_has_the_opa_envoy_shape_and_only_the_named_headers() {
        let request = Request {
            method: "GET".into(),
            path: "/users/42?expand=orders&expand=items&q=a%20b".into(),
            host: "api".into(),
            headers: vec![
                ("x-tenant".into(), "acme".into()),
                ("authorization".into(), "Bearer secret".into()),
            ],
        };
        let alice = identity(json!({"sub": "alice"}));
        let included = vec![("x-tenant", "acme")];
        let text = Asked::new(&request, "/users/42", included, &[], Some(("corp", &alice))).input();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let http = &doc["input"]["attributes"]["request"]["http"];
        assert_eq!(http["method"], "GET");
        assert_eq!(http["path"], "/users/42?expand=orders&expand=items&q=a%20b");
        assert_eq!(http["host"], "api");
        assert_eq!(http["headers"], json!({"x-tenant": "acme"}));
        assert!(!text.contains("secret"));
        assert_eq!(doc["input"]["parsed_path"], json!(["users", "42"]));
        assert_eq!(
            doc["input"]["parsed_query"],
            json!({"expand": ["orders", "items"], "q": ["a b"]})
        );
        assert_eq!(
            doc["input"]["identity"],
            json!({"provider": "corp", "claims": {"sub": "alice"}})
        );
    }

    #[test]
    fn a_token_in_the_query_never_reaches_the_policy() {
        let request = Request {
            method: "GET".into(),
            path: "/r?page=2&access_token=secret.jwt.value&x=1".into(),
            ..Request::default()
        };
        let asked = Asked::new(&request, "/r", vec![], &["access_token".to_owned()], None);
        let text = asked.input();
        assert!(!text.contains("secret"), "{text}");
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            doc["input"]["attributes"]["request"]["http"]["path"],
            "/r?page=2&x=1"
        );
        assert_eq!(
            doc["input"]["parsed_query"],
            json!({"page": ["2"], "x": ["1"]})
        );
    }

    #[test]
    fn inputs_of_two_identities_have_two_keys() {
        let request = Request {
            method: "GET".into(),
            path: "/".into(),
            ..Request::default()
        };
        let (alice, bob) = (
            identity(json!({"sub": "alice"})),
            identity(json!({"sub": "bob"})),
        );
        let key = |who| Asked::new(&request, "/", vec![], &[], Some(("corp", who))).key();
        assert_ne!(key(&alice), key(&bob));
        let alice_again = identity(json!({"sub": "alice"}));
        assert_eq!(key(&alice), key(&alice_again));
        assert_ne!(
            key(&alice),
            Asked::new(&request, "/", vec![], &[], None).key()
        );
        let with_header = Asked::new(
            &request,
            "/",
            vec![("x-tenant", "a")],
            &[],
            Some(("corp", &alice)),
        );
        assert_ne!(key(&alice), with_header.key());
    }

    #[test]
    fn decisions_of_every_shape_are_read() {
        let read = |body: Value| read_decision(Some(200), 0, body.to_string().as_bytes());
        assert!(read(json!({"result": true})).unwrap().allow);
        assert!(!read(json!({"result": false})).unwrap().allow);
        let simple =
            read(json!({"result": {"allow": true, "headers": {"X-Policy": "v1"}}})).unwrap();
        assert_eq!(
            simple.upstream_headers,
            vec![("x-policy".into(), "v1".into())]
        );
        let envoy = read(json!({"result": {
            "allowed": false, "http_status": 451, "body": "blocked",
            "headers": {"x-reason": "geo"}, "response_headers_to_add": {"x-extra": "1"}
        }}))
        .unwrap();
        assert!(!envoy.allow);
        assert_eq!(envoy.status, Some(451));
        assert_eq!(envoy.body.as_deref(), Some("blocked"));
        assert!(envoy
            .response_headers
            .contains(&("x-reason".into(), "geo".into())));
        let removing =
            read(json!({"result": {"allowed": true, "request_headers_to_remove": ["X-Debug"]}}))
                .unwrap();
        assert_eq!(removing.remove_headers, vec!["x-debug".to_owned()]);
    }

    #[test]
    fn a_decision_naming_a_member_twice_is_an_error() {
        let body = br#"{"result": {"allowed": false, "allowed": true}}"#;
        assert_eq!(
            read_decision(Some(200), body.len(), body),
            Err(DecisionError::Garbage)
        );
    }

    #[test]
    fn anything_unclear_is_an_error_never_an_allow() {
        let read = |body: &str| read_decision(Some(200), body.len(), body.as_bytes());
        for body in [
            "{}",
            "[]",
            "garbage",
            r#"{"result": "yes"}"#,
            r#"{"result": {"headers": {}}}"#,
            r#"{"result": {"allow": true, "headers": {"bad name": "x"}}}"#,
            r#"{"result": {"allow": false, "status": 42}}"#,
        ] {
            assert!(read(body).is_err(), "{body}");
        }
        assert_eq!(
            read_decision(Some(500), 0, b""),
            Err(DecisionError::Status(500))
        );
        assert_eq!(read_decision(None, 0, b""), Err(DecisionError::Transport));
        assert_eq!(
            read_decision(Some(200), 1 << 20, b"{}"),
            Err(DecisionError::TooLarge)
        );
    }

    #[test]
    fn the_decision_cache_expires_and_stays_bounded() {
        let mut cache = DecisionCache::new(4);
        let decision = Rc::new(Decision {
            allow: true,
            ..Decision::default()
        });
        for i in 0..100u8 {
            cache.insert([i; 32], 110, decision.clone(), 100);
        }
        assert_eq!(cache.len(), 4);
        assert!(cache.get(&[99; 32], &Clock::at_secs(109)).is_some());
        assert!(cache.get(&[99; 32], &Clock::at_secs(110)).is_none());
    }
}
