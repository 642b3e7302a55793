//! The configuration document (shared/CONTRACT.md): `Raw*` serde types that mirror the
//! JSON exactly (unknown fields are errors), then `compile` into the validated [`Config`]
//! the filter runs on. Every error names the field path it is about.

use crate::alg::Alg;
use crate::claims::{ClaimPath, Forward};
use crate::extract::{Reads, Source};
use crate::jwks::KeySet;
use crate::jwt::{normalize_token_type, Policy};
use crate::remote::{self, Location, RemoteSpec, Uri};
use crate::rules::{AuthnRequirement, HeaderMatch, Matcher, PathMatch, Rule, RuleAction};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::rc::Rc;

/// A configuration error: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub realm: Option<String>,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub exchanges: BTreeMap<String, Value>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    #[serde(default)]
    pub authz_service: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub issuer: String,
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    pub jwks: RawJwks,
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub sources: Option<Vec<RawSource>>,
    #[serde(default)]
    pub token_types: Option<Vec<String>>,
    #[serde(default)]
    pub clock_skew_secs: Option<u64>,
    #[serde(default)]
    pub require_exp: Option<bool>,
    #[serde(default)]
    pub max_token_bytes: Option<usize>,
    #[serde(default)]
    pub forward: RawForward,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwks {
    #[serde(default)]
    pub inline: Option<Value>,
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub discovery: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub cache_secs: Option<u64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub unknown_kid_refetch_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    #[serde(default)]
    pub keep_token: bool,
    #[serde(default)]
    pub payload_header: Option<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    #[serde(default)]
    pub allow: Option<String>,
    #[serde(default)]
    pub authn: Option<RawAuthn>,
    #[serde(default)]
    pub authz: Option<Value>,
    #[serde(default)]
    pub central: Option<bool>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub path: Option<RawPathMatch>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, RawHeaderMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPathMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    #[serde(default)]
    pub present: Option<bool>,
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthn {
    #[serde(default)]
    pub any: Option<Vec<String>>,
    #[serde(default)]
    pub all: Option<Vec<String>>,
    #[serde(default)]
    pub optional: bool,
}

/// Where a provider's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    Inline(Rc<KeySet>),
    /// Fetched by HTTP callout; the host keeps the current set.
    Remote(RemoteSpec),
}

/// A validated JWT provider.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub policy: Policy,
    pub keys: KeySource,
    pub sources: Vec<Source>,
    pub forward: Forward,
}

/// The validated configuration the filter runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub realm: String,
    pub providers: Vec<Provider>,
    pub rules: Vec<Rule>,
    /// Every identity header (forwarded claims, payload headers), lowercase. Removed
    /// from every request, on every route, before the filter sets its own.
    pub identity_headers: Vec<String>,
    /// What the filter reads of each request; nothing else is copied into the VM.
    pub reads: Reads,
}

pub const DEFAULT_REALM: &str = "tokengate";
const DEFAULT_CLOCK_SKEW_SECS: u64 = 60;
const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
/// Larger tokens than this are refused whatever the provider says; a cap on the cap.
const MAX_MAX_TOKEN_BYTES: usize = 64 * 1024;

impl Config {
    /// Parses and compiles a configuration document.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        compile(parse(bytes)?)
    }
}

/// First phase: JSON into the raw document, with the path of any error.
pub fn parse(bytes: &[u8]) -> Result<RawConfig, ConfigError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let offset = offset_of(bytes, e.line(), e.column());
        ConfigError::new(path_at(bytes, offset), e.to_string())
    })
}

/// The byte offset of serde_json's 1-based line and column (bytes since the line's
/// start): where the parser stood when it gave up.
fn offset_of(bytes: &[u8], line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line - 2)
            .map_or(bytes.len(), |(i, _)| i + 1)
    };
    line_start.saturating_add(column).min(bytes.len())
}

/// One open JSON container while scanning for a path.
enum Frame {
    Object { key: Option<String> },
    Array { index: usize },
}

/// The field path (`providers.corp.jwks.inline.keys[2]`) of the value the parser was in
/// at `offset`. Rebuilding the path from the error's position, after the fact, costs a
/// few lines here instead of wrapping every serde visitor (serde_path_to_error doubled
/// the config parser's code, and V8 compiles all of it before Envoy opens a listener).
/// Where the parser stopped right after closing a container (a missing field is
/// reported when `}` is read), the path is the container's own.
fn path_at(bytes: &[u8], offset: usize) -> String {
    let mut stack: Vec<Frame> = Vec::new();
    let mut expecting_key = false;
    let mut closed_here = false;
    let mut i = 0;
    while i < offset {
        let Some(&byte) = bytes.get(i) else { break };
        match byte {
            b'"' => {
                let end = string_end(bytes, i);
                if expecting_key {
                    if let Some(Frame::Object { key }) = stack.last_mut() {
                        *key = bytes
                            .get(i..end)
                            .and_then(|quoted| serde_json::from_slice(quoted).ok());
                    }
                    expecting_key = false;
                }
                i = end;
                continue;
            }
            b'{' => {
                stack.push(Frame::Object { key: None });
                expecting_key = true;
            }
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                if i + 1 >= offset {
                    closed_here = true;
                    break;
                }
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { .. }) => expecting_key = true,
                None => {}
            },
            _ => {}
        }
        i += 1;
    }
    if closed_here {
        // The closed container is the subject, named by its parent's key or index.
        stack.pop();
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(key) } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Object { key: None } => {}
            Frame::Array { index } => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
        }
    }
    path
}

/// The index just past the JSON string starting at `start` (its opening quote), or the
/// end of the input if it never closes.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Second phase: validate and compile the raw document.
pub fn compile(raw: RawConfig) -> Result<Config, ConfigError> {
    let realm = raw.realm.unwrap_or_else(|| DEFAULT_REALM.to_owned());
    if realm.is_empty()
        || !realm
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err(ConfigError::new(
            "realm",
            "must be non-empty printable ASCII without quotes or backslashes",
        ));
    }
    if !raw.exchanges.is_empty() {
        return Err(ConfigError::new(
            "exchanges",
            "not supported by this version of tokengate",
        ));
    }
    if raw.authz_service.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ConfigError::new(
            "authz_service",
            "not supported by this version of tokengate",
        ));
    }
    let mut providers = Vec::new();
    for (name, raw_provider) in raw.providers {
        providers.push(compile_provider(&name, raw_provider)?);
    }
    let rules = if raw.rules.is_empty() {
        if providers.is_empty() {
            return Err(ConfigError::new(
                "providers",
                "at least one provider is needed when no rules are given",
            ));
        }
        vec![Rule {
            name: "default".into(),
            matcher: Matcher::default(),
            action: RuleAction::Authn {
                requirement: AuthnRequirement::Any((0..providers.len()).collect()),
                optional: false,
            },
        }]
    } else {
        raw.rules
            .into_iter()
            .enumerate()
            .map(|(index, rule)| compile_rule(index, rule, &providers))
            .collect::<Result<_, _>>()?
    };
    let mut identity_headers: Vec<String> = providers
        .iter()
        .flat_map(|p| p.forward.headers().map(str::to_owned))
        .collect();
    identity_headers.sort();
    identity_headers.dedup();
    let mut reads = Reads::default();
    for provider in &providers {
        for source in &provider.sources {
            reads.add_source(source);
        }
    }
    for rule in &rules {
        rule.matcher.add_reads(&mut reads);
    }
    for name in &identity_headers {
        reads.add_header(name);
    }
    Ok(Config {
        realm,
        providers,
        rules,
        identity_headers,
        reads,
    })
}

fn compile_provider(name: &str, raw: RawProvider) -> Result<Provider, ConfigError> {
    let at = |field: &str| format!("providers.{name}.{field}");
    if name.is_empty() {
        return Err(ConfigError::new(
            "providers",
            "provider names must be non-empty",
        ));
    }
    if raw.issuer.is_empty() {
        return Err(ConfigError::new(at("issuer"), "must be non-empty"));
    }
    let audiences = raw.audiences.unwrap_or_default();
    if audiences.iter().any(String::is_empty) {
        return Err(ConfigError::new(
            at("audiences"),
            "audiences must be non-empty strings",
        ));
    }

    let keys = compile_jwks(name, &at("jwks"), raw.jwks, &raw.issuer)?;

    let algorithms = match raw.algorithms {
        Some(names) => {
            if names.is_empty() {
                return Err(ConfigError::new(
                    at("algorithms"),
                    "must list at least one algorithm",
                ));
            }
            let mut algorithms = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let alg = Alg::from_name(name).ok_or_else(|| {
                    ConfigError::new(
                        format!("{}[{i}]", at("algorithms")),
                        format!("unsupported algorithm {name:?}"),
                    )
                })?;
                let inline_key_fits = match &keys {
                    KeySource::Inline(set) => set.any_allows(alg),
                    KeySource::Remote(_) => false,
                };
                if alg.is_symmetric() && !inline_key_fits {
                    return Err(ConfigError::new(
                        format!("{}[{i}]", at("algorithms")),
                        format!("{name} needs an inline \"oct\" key of at least the hash size"),
                    ));
                }
                algorithms.push(alg);
            }
            algorithms
        }
        // Default: the asymmetric algorithms; each key still pins its own.
        None => Alg::ALL.into_iter().filter(|a| !a.is_symmetric()).collect(),
    };

    let token_types = match raw.token_types {
        Some(types) if types.is_empty() => {
            return Err(ConfigError::new(
                at("token_types"),
                "must list at least one type when set",
            ))
        }
        Some(types) => Some(types.iter().map(|t| normalize_token_type(t)).collect()),
        None => None,
    };

    let max_token_bytes = raw.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    if max_token_bytes == 0 || max_token_bytes > MAX_MAX_TOKEN_BYTES {
        return Err(ConfigError::new(
            at("max_token_bytes"),
            format!("must be between 1 and {MAX_MAX_TOKEN_BYTES}"),
        ));
    }

    let sources = match raw.sources {
        None => vec![Source::default_bearer()],
        Some(raw_sources) if raw_sources.is_empty() => {
            return Err(ConfigError::new(
                at("sources"),
                "must list at least one source when set",
            ))
        }
        Some(raw_sources) => raw_sources
            .into_iter()
            .enumerate()
            .map(|(i, s)| compile_source(&format!("{}[{i}]", at("sources")), s))
            .collect::<Result<_, _>>()?,
    };

    let forward = compile_forward(&at("forward"), raw.forward)?;

    Ok(Provider {
        name: name.to_owned(),
        policy: Policy {
            issuer: raw.issuer,
            audiences,
            algorithms,
            token_types,
            clock_skew_secs: raw.clock_skew_secs.unwrap_or(DEFAULT_CLOCK_SKEW_SECS),
            require_exp: raw.require_exp.unwrap_or(true),
            max_token_bytes,
        },
        keys,
        sources,
        forward,
    })
}

fn compile_jwks(
    provider: &str,
    at: &str,
    raw: RawJwks,
    issuer: &str,
) -> Result<KeySource, ConfigError> {
    let chosen = [
        raw.inline.is_some(),
        raw.uri.is_some(),
        raw.discovery.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if chosen != 1 {
        return Err(ConfigError::new(
            at,
            "exactly one of \"inline\", \"uri\" or \"discovery\" is required",
        ));
    }
    if let Some(inline) = raw.inline {
        if raw.cluster.is_some()
            || raw.cache_secs.is_some()
            || raw.timeout_ms.is_some()
            || raw.unknown_kid_refetch_secs.is_some()
        {
            return Err(ConfigError::new(
                at,
                "\"cluster\", \"cache_secs\", \"timeout_ms\" and \"unknown_kid_refetch_secs\" are for remote key sets",
            ));
        }
        let parsed = KeySet::from_value(&inline)
            .map_err(|e| ConfigError::new(format!("{at}.inline"), e.to_string()))?;
        // An inline set is written by the operator: a key we would skip is a mistake
        // worth refusing, except keys that are simply not for signatures.
        if let Some(bad) = parsed.skipped.iter().find(|s| !s.reason.is_benign()) {
            return Err(ConfigError::new(
                format!("{at}.inline.keys[{}]", bad.index),
                bad.reason.describe(),
            ));
        }
        return Ok(KeySource::Inline(Rc::new(parsed.set)));
    }
    let (field, text) = match (raw.uri, raw.discovery) {
        (Some(uri), _) => ("uri", uri),
        (None, Some(discovery)) => ("discovery", discovery),
        (None, None) => {
            return Err(ConfigError::new(
                at,
                "exactly one of \"inline\", \"uri\" or \"discovery\" is required",
            ))
        }
    };
    let uri = Uri::parse(&text).ok_or_else(|| {
        ConfigError::new(
            format!("{at}.{field}"),
            "must be an http:// or https:// URI with a host",
        )
    })?;
    let cluster = raw.cluster.filter(|c| !c.is_empty()).ok_or_else(|| {
        ConfigError::new(
            format!("{at}.cluster"),
            "the Envoy cluster to fetch through is required",
        )
    })?;
    let cache_secs = raw.cache_secs.unwrap_or(remote::DEFAULT_CACHE_SECS);
    if !(1..=7 * 86400).contains(&cache_secs) {
        return Err(ConfigError::new(
            format!("{at}.cache_secs"),
            "must be between 1 and 604800",
        ));
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(remote::DEFAULT_TIMEOUT_MS);
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(ConfigError::new(
            format!("{at}.timeout_ms"),
            "must be between 1 and 60000",
        ));
    }
    let unknown_kid_refetch_secs = raw
        .unknown_kid_refetch_secs
        .unwrap_or(remote::DEFAULT_UNKNOWN_KID_REFETCH_SECS);
    let location = if field == "uri" {
        Location::Jwks(uri)
    } else {
        Location::Discovery(uri)
    };
    Ok(KeySource::Remote(RemoteSpec {
        location,
        cluster,
        cache_secs,
        timeout_ms,
        unknown_kid_refetch_secs,
        issuer: issuer.to_owned(),
        shared_key: format!("tokengate.jwks.{provider}.{text}"),
    }))
}

fn compile_source(at: &str, raw: RawSource) -> Result<Source, ConfigError> {
    if raw.prefix.is_some() && raw.header.is_none() {
        return Err(ConfigError::new(
            format!("{at}.prefix"),
            "only a \"header\" source takes a prefix",
        ));
    }
    match (raw.header, raw.cookie, raw.query) {
        (Some(header), None, None) => {
            let name = header_name(&format!("{at}.header"), &header)?;
            if raw.prefix.as_deref() == Some("") {
                return Err(ConfigError::new(
                    format!("{at}.prefix"),
                    "must be non-empty when set",
                ));
            }
            Ok(Source::Header {
                name,
                prefix: raw.prefix,
            })
        }
        (None, Some(cookie), None) => {
            if cookie.is_empty() || !cookie.bytes().all(is_tchar) {
                return Err(ConfigError::new(
                    format!("{at}.cookie"),
                    "not a valid cookie name",
                ));
            }
            Ok(Source::Cookie(cookie))
        }
        (None, None, Some(query)) => {
            if query.is_empty() {
                return Err(ConfigError::new(format!("{at}.query"), "must be non-empty"));
            }
            Ok(Source::Query(query))
        }
        _ => Err(ConfigError::new(
            at,
            "exactly one of \"header\", \"cookie\" or \"query\" is required",
        )),
    }
}

/// Headers a claim may never be forwarded into: routing, framing and hop-by-hop ones.
const RESERVED_HEADERS: [&str; 7] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "keep-alive",
];

fn compile_forward(at: &str, raw: RawForward) -> Result<Forward, ConfigError> {
    let payload_header = raw
        .payload_header
        .map(|h| identity_header(&format!("{at}.payload_header"), &h))
        .transpose()?;
    let mut claims = Vec::new();
    for (path, header) in raw.claims {
        let field = format!("{at}.claims.{path}");
        let claim = ClaimPath::parse(&path).ok_or_else(|| {
            ConfigError::new(&field, "claim path must be dot-separated non-empty names")
        })?;
        claims.push((claim, identity_header(&field, &header)?));
    }
    Ok(Forward {
        keep_token: raw.keep_token,
        payload_header,
        claims,
    })
}

fn identity_header(at: &str, name: &str) -> Result<String, ConfigError> {
    let name = header_name(at, name)?;
    if RESERVED_HEADERS.contains(&name.as_str()) {
        return Err(ConfigError::new(
            at,
            format!("{name:?} can't carry identity"),
        ));
    }
    Ok(name)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A header name: an RFC 9110 token, returned lowercase (Envoy's form).
fn header_name(at: &str, name: &str) -> Result<String, ConfigError> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(ConfigError::new(
            at,
            format!("{name:?} is not a valid header name"),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

fn compile_rule(index: usize, raw: RawRule, providers: &[Provider]) -> Result<Rule, ConfigError> {
    let at = |field: &str| format!("rules[{index}].{field}");
    let name = raw.name.unwrap_or_else(|| format!("rules[{index}]"));
    for (set, field) in [
        (raw.authz.is_some(), "authz"),
        (raw.central.is_some(), "central"),
        (raw.dry_run.is_some(), "dry_run"),
    ] {
        if set {
            return Err(ConfigError::new(
                at(field),
                "not supported by this version of tokengate",
            ));
        }
    }
    let matcher = compile_match(&at("match"), raw.matcher)?;
    let action = match (raw.allow, raw.authn) {
        (Some(allow), None) if allow == "anonymous" => RuleAction::Anonymous,
        (Some(_), None) => {
            return Err(ConfigError::new(
                at("allow"),
                "the only value is \"anonymous\"",
            ))
        }
        (None, Some(authn)) => {
            let lookup = |field: String, names: Vec<String>| -> Result<Vec<usize>, ConfigError> {
                if names.is_empty() {
                    return Err(ConfigError::new(field, "must name at least one provider"));
                }
                names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        providers.iter().position(|p| &p.name == n).ok_or_else(|| {
                            ConfigError::new(
                                format!("{field}[{i}]"),
                                format!("unknown provider {n:?}"),
                            )
                        })
                    })
                    .collect()
            };
            let requirement = match (authn.any, authn.all) {
                (Some(any), None) => AuthnRequirement::Any(lookup(at("authn.any"), any)?),
                (None, Some(all)) => AuthnRequirement::All(lookup(at("authn.all"), all)?),
                _ => {
                    return Err(ConfigError::new(
                        at("authn"),
                        "exactly one of \"any\" or \"all\" is required",
                    ))
                }
            };
            RuleAction::Authn {
                requirement,
                optional: authn.optional,
            }
        }
        _ => {
            return Err(ConfigError::new(
                format!("rules[{index}]"),
                "exactly one of \"allow\" or \"authn\" is required",
            ))
        }
    };
    Ok(Rule {
        name,
        matcher,
        action,
    })
}

fn compile_match(at: &str, raw: RawMatch) -> Result<Matcher, ConfigError> {
    let path = match raw.path {
        None => None,
        Some(p) => Some(match (p.exact, p.prefix, p.template) {
            (Some(exact), None, None) if exact.starts_with('/') => PathMatch::Exact(exact),
            (None, Some(prefix), None) if prefix.starts_with('/') => PathMatch::Prefix(prefix),
            (None, None, Some(template)) => PathMatch::template(&template).ok_or_else(|| {
                ConfigError::new(
                    format!("{at}.path.template"),
                    "must look like /users/{id}/orders",
                )
            })?,
            (None, None, None)
            | (Some(_), Some(_), _)
            | (Some(_), _, Some(_))
            | (_, Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    format!("{at}.path"),
                    "exactly one of \"exact\", \"prefix\" or \"template\" is required",
                ))
            }
            _ => {
                return Err(ConfigError::new(
                    format!("{at}.path"),
                    "paths must start with '/'",
                ))
            }
        }),
    };
    let methods = raw
        .methods
        .map(|methods| {
            methods
                .into_iter()
                .enumerate()
                .map(|(i, m)| {
                    if m.is_empty() || !m.bytes().all(is_tchar) {
                        Err(ConfigError::new(
                            format!("{at}.methods[{i}]"),
                            "not a valid method",
                        ))
                    } else {
                        Ok(m.to_ascii_uppercase())
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let mut headers = Vec::new();
    for (name, m) in raw.headers {
        let field = format!("{at}.headers.{name}");
        let name = header_name(&field, &name)?;
        let header_match = match (m.present, m.equals, m.prefix) {
            (Some(present), None, None) => HeaderMatch::Present(present),
            (None, Some(value), None) => HeaderMatch::Equals(value),
            (None, None, Some(prefix)) => HeaderMatch::Prefix(prefix),
            _ => {
                return Err(ConfigError::new(
                    field,
                    "exactly one of \"present\", \"equals\" or \"prefix\" is required",
                ))
            }
        };
        headers.push((name, header_match));
    }
    Ok(Matcher {
        path,
        methods,
        host: raw.host.map(|h| h.to_ascii_lowercase()),
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "realm": "api",
            "providers": {
                "corp": {
                    "issuer": ISSUER,
                    "audiences": ["orders"],
                    "jwks": { "inline": public_jwks() },
                    "forward": { "claims": { "sub": "X-User-Id" }, "payload_header": "x-jwt-payload" }
                }
            }
        })
    }

    fn error_of(doc: &Value) -> ConfigError {
        Config::from_json(doc.to_string().as_bytes()).unwrap_err()
    }

    fn with(change: impl FnOnce(&mut Value)) -> Value {
        let mut doc = base();
        change(&mut doc);
        doc
    }

    #[test]
    fn minimal_config_compiles_with_the_implicit_rule_and_defaults() {
        let config = Config::from_json(base().to_string().as_bytes()).unwrap();
        assert_eq!(config.rules.len(), 1);
        assert_eq!(
            config.rules[0].action,
            RuleAction::Authn {
                requirement: AuthnRequirement::Any(vec![0]),
                optional: false
            }
        );
        let provider = &config.providers[0];
        assert_eq!(provider.sources, vec![Source::default_bearer()]);
        assert_eq!(provider.policy.clock_skew_secs, 60);
        assert!(provider.policy.require_exp);
        assert_eq!(provider.policy.max_token_bytes, 8192);
        assert!(
            !provider.policy.algorithms.iter().any(|a| a.is_symmetric()),
            "HS* only when listed"
        );
        assert_eq!(
            config.identity_headers,
            vec!["x-jwt-payload".to_string(), "x-user-id".to_string()]
        );
    }

    #[test]
    fn the_filter_reads_only_what_sources_rules_and_identity_headers_need() {
        let config = Config::from_json(base().to_string().as_bytes()).unwrap();
        assert_eq!(
            config.reads,
            Reads {
                method: false,
                path: false,
                host: false,
                headers: vec![
                    "authorization".into(),
                    "x-jwt-payload".into(),
                    "x-user-id".into()
                ],
            }
        );
        let doc = with(|d| {
            d["providers"]["corp"]["sources"] = json!([{"cookie": "session"}, {"query": "t"}]);
            d["rules"] = json!([
                {"match": {"path": {"prefix": "/a"}, "methods": ["GET"]}, "allow": "anonymous"},
                {"match": {"headers": {"X-Tenant": {"equals": "t1"}}}, "authn": {"any": ["corp"]}}
            ]);
        });
        let reads = Config::from_json(doc.to_string().as_bytes()).unwrap().reads;
        assert!(reads.path && reads.method && !reads.host, "{reads:?}");
        assert_eq!(
            reads.headers,
            vec!["cookie", "x-tenant", "x-jwt-payload", "x-user-id"]
        );
    }

    #[test]
    fn unknown_field_is_an_error_naming_its_path() {
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["jwks"]["bogus"] = json!(1)
        }));
        assert_eq!(e.path, "providers.corp.jwks.bogus");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = error_of(&with(|d| d["surprise"] = json!(true)));
        assert!(e.message.contains("surprise"), "{e}");
    }

    #[test]
    fn error_paths_count_array_elements_and_decode_escaped_keys() {
        let e = error_of(&with(|d| {
            d["rules"] = json!([
                {"match": {}, "allow": "anonymous"},
                {"match": {"bogus": 1}, "allow": "anonymous"}
            ])
        }));
        assert_eq!(e.path, "rules[1].match.bogus");
        let e = error_of(&with(|d| {
            let corp = d["providers"]["corp"].clone();
            d["providers"]["co\"rp"] = corp;
            d["providers"]["co\"rp"]["clock_skew_secs"] = json!([1]);
        }));
        assert_eq!(e.path, "providers.co\"rp.clock_skew_secs");
    }

    #[test]
    fn error_paths_of_broken_documents_point_where_parsing_stopped() {
        for (doc, path) in [
            ("", ""),
            ("{", ""),
            ("{\"realm\": ", "realm"),
            (
                "{\"rules\": [{}, {\"match\": {\"path\": {\"prefix\": \"/\"",
                "rules[1].match.path.prefix",
            ),
            ("[1, 2]", "[0]"),
            ("{\"providers\": {\"a\\\"", "providers"),
        ] {
            let e = Config::from_json(doc.as_bytes()).unwrap_err();
            assert_eq!(e.path, path, "{doc:?}: {e}");
        }
    }

    #[test]
    fn wrong_type_is_an_error_naming_its_path() {
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["clock_skew_secs"] = json!("60")
        }));
        assert_eq!(e.path, "providers.corp.clock_skew_secs");
    }

    #[test]
    fn missing_issuer_names_the_provider() {
        let e = error_of(&with(|d| {
            d["providers"]["corp"]
                .as_object_mut()
                .unwrap()
                .remove("issuer");
        }));
        assert_eq!(e.path, "providers.corp");
        assert!(e.message.contains("issuer"), "{e}");
    }

    #[test]
    fn jwks_needs_exactly_one_source() {
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["jwks"]["uri"] = json!("http://idp/certs")
        }));
        assert_eq!(e.path, "providers.corp.jwks");
    }

    #[test]
    fn weak_inline_key_is_refused_with_its_index() {
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["jwks"]["inline"]["keys"][2]["x"] = json!("AAAA");
        }));
        assert_eq!(e.path, "providers.corp.jwks.inline.keys[2]");
    }

    #[test]
    fn hs256_needs_an_inline_secret_and_must_be_listed() {
        let ok = with(|d| d["providers"]["corp"]["algorithms"] = json!(["RS256", "HS256"]));
        let config = Config::from_json(ok.to_string().as_bytes()).unwrap();
        assert!(config.providers[0].policy.algorithms.contains(&Alg::HS256));
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["algorithms"] = json!(["HS512"]);
        }));
        assert_eq!(e.path, "providers.corp.algorithms[0]");
    }

    #[test]
    fn unknown_algorithm_and_none_are_refused() {
        for name in ["none", "ES512", "rs256"] {
            let e = error_of(&with(|d| {
                d["providers"]["corp"]["algorithms"] = json!(["RS256", name])
            }));
            assert_eq!(e.path, "providers.corp.algorithms[1]", "{name}");
        }
    }

    #[test]
    fn sources_are_validated() {
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["sources"] = json!([{"cookie": "a", "query": "b"}])
        }));
        assert_eq!(e.path, "providers.corp.sources[0]");
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["sources"] = json!([{"cookie": "a", "prefix": "Bearer "}])
        }));
        assert_eq!(e.path, "providers.corp.sources[0].prefix");
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["sources"] = json!([{"header": "bad header"}])
        }));
        assert_eq!(e.path, "providers.corp.sources[0].header");
    }

    #[test]
    fn identity_header_must_be_a_usable_header_name() {
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["forward"]["claims"] = json!({"sub": "host"})
        }));
        assert_eq!(e.path, "providers.corp.forward.claims.sub");
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["forward"]["claims"] = json!({"a..b": "x-a"})
        }));
        assert_eq!(e.path, "providers.corp.forward.claims.a..b");
    }

    #[test]
    fn rules_name_unknown_providers() {
        let e = error_of(&with(|d| {
            d["rules"] = json!([{"match": {}, "authn": {"any": ["corp", "other"]}}])
        }));
        assert_eq!(e.path, "rules[0].authn.any[1]");
        assert!(e.message.contains("other"));
    }

    #[test]
    fn rule_needs_exactly_one_action() {
        let e = error_of(&with(|d| d["rules"] = json!([{"match": {}}])));
        assert_eq!(e.path, "rules[0]");
        let e = error_of(&with(|d| {
            d["rules"] = json!([{"match": {}, "allow": "everyone"}])
        }));
        assert_eq!(e.path, "rules[0].allow");
    }

    #[test]
    fn rule_match_is_validated() {
        let e = error_of(&with(
            |d| {
                d["rules"] = json!([{"match": {"path": {"prefix": "/a", "exact": "/b"}}, "allow": "anonymous"}])
            },
        ));
        assert_eq!(e.path, "rules[0].match.path");
        let e =
            error_of(&with(
                |d| {
                    d["rules"] =
                        json!([{"match": {"path": {"template": "/a/{"}}, "allow": "anonymous"}])
                },
            ));
        assert_eq!(e.path, "rules[0].match.path.template");
        let e =
            error_of(&with(
                |d| {
                    d["rules"] = json!([{"match": {"path": {"prefix": "a"}}, "allow": "anonymous"}])
                },
            ));
        assert_eq!(e.path, "rules[0].match.path");
    }

    #[test]
    fn features_of_later_versions_are_refused_not_ignored() {
        let e = error_of(&with(|d| d["exchanges"] = json!({"opaque": {}})));
        assert_eq!(e.path, "exchanges");
        let e = error_of(&with(|d| d["authz_service"] = json!({"uri": "http://opa"})));
        assert_eq!(e.path, "authz_service");
        let e =
            error_of(&with(
                |d| {
                    d["rules"] =
                        json!([{"match": {}, "authn": {"any": ["corp"]}, "authz": {"all": []}}])
                },
            ));
        assert_eq!(e.path, "rules[0].authz");
        // A null authz_service is the contract's way of saying "none".
        assert!(Config::from_json(
            with(|d| d["authz_service"] = json!(null))
                .to_string()
                .as_bytes()
        )
        .is_ok());
    }

    #[test]
    fn realm_with_a_quote_is_refused() {
        let e = error_of(&with(|d| d["realm"] = json!("a\"b")));
        assert_eq!(e.path, "realm");
    }

    #[test]
    fn max_token_bytes_is_bounded() {
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["max_token_bytes"] = json!(0)
        }));
        assert_eq!(e.path, "providers.corp.max_token_bytes");
    }

    #[test]
    fn no_providers_and_no_rules_is_an_error() {
        let e = error_of(&json!({"providers": {}}));
        assert_eq!(e.path, "providers");
    }

    #[test]
    fn error_display_leads_with_the_path() {
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["jwks"]["bogus"] = json!(1)
        }));
        assert!(
            e.to_string()
                .starts_with("providers.corp.jwks.bogus: unknown field"),
            "{e}"
        );
    }
}
