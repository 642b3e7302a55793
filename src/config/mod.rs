//! The configuration document (shared/CONTRACT.md): `Raw*` types that mirror the JSON
//! exactly (unknown fields are errors), read by hand out of a parsed [`Value`], then
//! `compile` into the validated [`Config`] the filter runs on. Every error names the
//! field path it is about.

use crate::crypto::alg::Alg;
use crate::exchange::Exchange;
use crate::login::Login;
use crate::policy::central::AuthzService;
use crate::policy::rules::{
    Authenticator, AuthnRequirement, HeaderMatch, Matcher, PathMatch, Rule, RuleAction,
};
use crate::remote::{self, Location, RemoteSpec, Uri};
use crate::token::claims::{ClaimPath, Forward};
use crate::token::extract::{Reads, Source};
use crate::token::jwks::KeySet;
use crate::token::jwt::{normalize_token_type, Policy};
use serde_json::Value;
use std::collections::BTreeMap;
use std::rc::Rc;

mod exchange;
mod login;
mod policy;
mod revocation;
#[cfg(feature = "cli")]
pub mod schema;
use exchange::{compile_exchange, RawExchange};
use policy::{compile_authz_service, compile_condition, RawCondition};
use revocation::{compile_revocation, RawRevocation};

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

pub struct RawConfig {
    pub realm: Option<String>,
    pub providers: BTreeMap<String, RawProvider>,
    pub exchanges: BTreeMap<String, RawExchange>,
    pub rules: Vec<RawRule>,
    pub authz_service: Option<Slots>,
    pub allow_encoded_slashes: bool,
}

#[derive(Debug)]
pub struct RawProvider {
    pub issuer: String,
    pub audiences: Option<Vec<String>>,
    pub jwks: RawJwks,
    pub algorithms: Option<Vec<String>>,
    pub sources: Option<Vec<RawSource>>,
    pub token_types: Option<Vec<String>>,
    pub clock_skew_secs: Option<u64>,
    pub require_exp: Option<bool>,
    pub max_token_bytes: Option<usize>,
    pub forward: RawForward,
    pub login: Option<login::RawLogin>,
    pub revocation: Option<RawRevocation>,
}

#[derive(Debug)]
pub struct RawJwks {
    pub inline: Option<Value>,
    pub uri: Option<String>,
    pub discovery: Option<String>,
    pub cluster: Option<String>,
    pub cache_secs: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub unknown_kid_refetch_secs: Option<u64>,
}

#[derive(Debug)]
pub struct RawSource {
    pub header: Option<String>,
    pub prefix: Option<String>,
    pub cookie: Option<String>,
    pub query: Option<String>,
}

#[derive(Debug, Default)]
pub struct RawForward {
    pub keep_token: bool,
    pub payload_header: Option<String>,
    pub claims: BTreeMap<String, String>,
}

pub struct RawRule {
    pub name: Option<String>,
    /// `match` in the document.
    pub matcher: RawMatch,
    pub allow: Option<String>,
    pub authn: Option<RawAuthn>,
    pub authz: Option<RawCondition>,
    pub central: Option<bool>,
    pub dry_run: Option<bool>,
}

#[derive(Debug, Default)]
pub struct RawMatch {
    pub path: Option<RawPathMatch>,
    pub methods: Option<Vec<String>>,
    pub host: Option<String>,
    pub headers: BTreeMap<String, RawHeaderMatch>,
}

#[derive(Debug)]
pub struct RawPathMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub template: Option<String>,
}

#[derive(Debug)]
pub struct RawHeaderMatch {
    pub present: Option<bool>,
    pub equals: Option<String>,
    pub prefix: Option<String>,
}

#[derive(Debug)]
pub struct RawAuthn {
    pub any: Option<Vec<String>>,
    pub all: Option<Vec<String>>,
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
    /// Browser sign-in; its session cookie is the last of `sources`.
    pub login: Option<Rc<Login>>,
    /// Status lists and back-channel logout, when configured.
    pub revocation: Option<crate::revocation::Revocation>,
}

/// The validated configuration the filter runs on.
#[derive(Debug)]
pub struct Config {
    pub realm: String,
    pub providers: Vec<Provider>,
    pub exchanges: Vec<Exchange>,
    pub rules: Vec<Rule>,
    /// Every identity header (forwarded claims, payload headers), lowercase. Removed
    /// from every request, on every route, before the filter sets its own.
    pub identity_headers: Vec<Rc<str>>,
    /// What the filter reads of each request; nothing else is copied into the VM.
    pub reads: Reads,
    /// (path, JWKS document) of every minting exchange's `jwks_path`.
    pub jwks_paths: Vec<(String, String)>,
    /// The central policy service, for rules with `central: true`.
    pub authz_service: Option<AuthzService>,
    /// `paths.allow_encoded_slashes`: `%2F` in a path is let through, matched literally.
    pub allow_encoded_slashes: bool,
    /// Query parameters that are token sources: never shown to the central policy.
    pub query_sources: Vec<String>,
    /// (path, provider) of every `revocation.backchannel_logout.path`.
    pub backchannel_paths: Vec<(String, usize)>,
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
///
/// The document is parsed into a [`Value`] and the `Raw*` types are read out of it by
/// one table-driven reader: serde-derived deserializers are monomorphized per type
/// inside serde_json (tens of KB for these types), and V8 compiles all of a module's
/// code before Envoy opens a listener. The `Value` parser is in the module anyway, for
/// key sets.
pub fn parse(bytes: &[u8]) -> Result<RawConfig, ConfigError> {
    let document: Value = serde_json::from_slice(bytes).map_err(|e| {
        let offset = offset_of(bytes, e.line(), e.column());
        ConfigError::new(scan(bytes, offset).path, e.to_string())
    })?;
    // A `Value` keeps only the last of a repeated key: the scan finds the repeats, so
    // that a field written twice stays an error.
    let reader = Reader {
        repeated: scan(bytes, bytes.len()).repeated,
    };
    reader.config(document)
}

/// What a field must hold; checked for every field by [`Reader::read`], so that the
/// per-type code below only moves checked values into place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    U64,
    /// A u64 that also fits a usize.
    Usize,
    Bool,
    /// An array of strings.
    Strings,
    /// Anything, kept as it is.
    Any,
    /// An object: a nested type or a map, read by the caller.
    Object,
    /// An object whose values are all strings.
    StringMap,
    /// An array, read by the caller.
    Array,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::String => "a string",
            Kind::U64 => "u64",
            Kind::Usize => "usize",
            Kind::Bool => "a boolean",
            Kind::Strings | Kind::Array => "an array",
            Kind::Object | Kind::StringMap => "an object",
            // Never reported: every value is one.
            Kind::Any => "any value",
        }
    }
}

/// Whether a field may be left out, and what `null` means: serde's rules for the
/// field types the `Raw*` structs had.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// An `Option`: `null` is the same as absent.
    Optional,
    /// A field with a default (a map, a list, a flag, a nested object): `null` is the
    /// wrong type.
    Defaulted,
    Required,
}

struct Field {
    name: &'static str,
    kind: Kind,
    presence: Presence,
    /// What the field means, for `tokengate schema`. CLI builds only: the filter never
    /// shows it, so the .wasm does not carry it (the const fns below drop it).
    #[cfg(feature = "cli")]
    description: &'static str,
    /// What an object, map or array field holds, for `tokengate schema` (CLI only).
    #[cfg(feature = "cli")]
    shape: Option<Shape>,
}

/// What a field holds beyond its [`Kind`]: the schema's nesting. Written next to the
/// field so that the reader's tables stay the one description of the document; only
/// CLI builds keep it.
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
enum Shape {
    /// An object of these fields.
    Object(&'static [Field]),
    /// An object of names (chosen by the user) to objects of these fields.
    Map(&'static [Field]),
    /// An array of objects of these fields.
    Items(&'static [Field]),
    /// An `authz` condition or tree.
    Condition,
    /// A non-empty array of `authz` conditions.
    Conditions,
    /// One of these strings (for [`Kind::Strings`]: each element one of these).
    OneOf(&'static [&'static str]),
    /// Signature algorithm names, each element one of [`Alg::ALL`].
    Algorithms,
    /// A string, number or boolean.
    Scalar,
    /// A non-empty array of strings, numbers or booleans.
    Scalars,
    /// A JSON object of no fixed fields (a JWKS, a JWK).
    AnyObject,
}

#[cfg_attr(not(feature = "cli"), allow(unused_variables))]
const fn field(
    name: &'static str,
    kind: Kind,
    presence: Presence,
    description: &'static str,
) -> Field {
    Field {
        name,
        kind,
        presence,
        #[cfg(feature = "cli")]
        description,
        #[cfg(feature = "cli")]
        shape: None,
    }
}

const fn optional(name: &'static str, kind: Kind, description: &'static str) -> Field {
    field(name, kind, Presence::Optional, description)
}

const fn defaulted(name: &'static str, kind: Kind, description: &'static str) -> Field {
    field(name, kind, Presence::Defaulted, description)
}

const fn required(name: &'static str, kind: Kind, description: &'static str) -> Field {
    field(name, kind, Presence::Required, description)
}

impl Field {
    /// The field with what it holds (kept by CLI builds only).
    #[cfg_attr(not(feature = "cli"), allow(unused_variables, unused_mut))]
    const fn nested(mut self, shape: Shape) -> Field {
        #[cfg(feature = "cli")]
        {
            self.shape = Some(shape);
        }
        self
    }
}

const CONFIG_FIELDS: &[Field] = &[
    optional(
        "realm",
        Kind::String,
        "The realm of WWW-Authenticate challenges (default \"tokengate\"): printable ASCII without quotes or backslashes.",
    ),
    defaulted(
        "providers",
        Kind::Object,
        "JWT providers by name: the issuers whose tokens are verified, and how. Names are used in rules' authn and in stats.",
    )
    .nested(Shape::Map(PROVIDER_FIELDS)),
    defaulted(
        "exchanges",
        Kind::Object,
        "Exchanges by name: an opaque token or session id turned into an identity by an auth service. A name can't be a provider's.",
    )
    .nested(Shape::Map(exchange::EXCHANGE_FIELDS)),
    defaulted(
        "rules",
        Kind::Array,
        "Rules, first match wins; no match is refused with 403. Absent or empty: one implicit rule, every request needs a token from any provider or exchange.",
    )
    .nested(Shape::Items(RULE_FIELDS)),
    optional(
        "authz_service",
        Kind::Object,
        "The central policy service (OPA-compatible) that rules with \"central\": true ask after their local checks pass; null for none.",
    )
    .nested(Shape::Object(policy::AUTHZ_SERVICE_FIELDS)),
    optional(
        "paths",
        Kind::Object,
        "How request paths are checked before any rule runs. A path with dot-segments, //, \\ or an encoded /, \\ or . is refused with 400.",
    )
    .nested(Shape::Object(policy::PATHS_FIELDS)),
];
const PROVIDER_FIELDS: &[Field] = &[
    required(
        "issuer",
        Kind::String,
        "Exact match on the token's iss.",
    ),
    optional(
        "audiences",
        Kind::Strings,
        "If set, the token's aud (a string or an array) must contain one of these.",
    ),
    required(
        "jwks",
        Kind::Object,
        "Where the verification keys come from: exactly one of inline, uri or discovery.",
    )
    .nested(Shape::Object(JWKS_FIELDS)),
    optional(
        "algorithms",
        Kind::Strings,
        "Allowed signature algorithms. Default: every asymmetric one, each key still pinned to its own type, curve and alg. HS256/384/512 only when listed and only with inline oct keys; none never.",
    )
    .nested(Shape::Algorithms),
    optional(
        "sources",
        Kind::Array,
        "Where the token is, tried in order: the first present source is the token (an invalid token there is refused, not skipped). Default: the authorization header with the prefix \"Bearer \".",
    )
    .nested(Shape::Items(SOURCE_FIELDS)),
    optional(
        "token_types",
        Kind::Strings,
        "Allowed values of the token header's typ (case-insensitive, an application/ prefix ignored), e.g. [\"at+jwt\"]; when set, a token without a listed typ is refused.",
    ),
    optional(
        "clock_skew_secs",
        Kind::U64,
        "Leeway for exp and nbf, in seconds (default 60).",
    ),
    optional(
        "require_exp",
        Kind::Bool,
        "Refuse tokens without exp (default true).",
    ),
    optional(
        "max_token_bytes",
        Kind::Usize,
        "Longer tokens are refused before anything is decoded (default 8192, at most 65536).",
    ),
    defaulted(
        "forward",
        Kind::Object,
        "What a verified token sends upstream.",
    )
    .nested(Shape::Object(FORWARD_FIELDS)),
    optional(
        "login",
        Kind::Object,
        "Browser sign-in (OIDC authorization code flow with PKCE): a browser GET without a valid session is sent to the identity provider; the session cookie is then one of this provider's sources.",
    )
    .nested(Shape::Object(login::LOGIN_FIELDS)),
    optional(
        "revocation",
        Kind::Object,
        "Revocable JWTs: Token Status List lookups and OpenID Connect back-channel logout, checked on every request of this provider (cached tokens included).",
    )
    .nested(Shape::Object(revocation::REVOCATION_FIELDS)),
];
const JWKS_FIELDS: &[Field] = &[
    optional(
        "inline",
        Kind::Any,
        "A JWKS document ({\"keys\": [...]}), checked when the configuration loads: RSA of at least 2048 bits, EC points on their curve, Ed25519, oct of at least 32 bytes.",
    )
    .nested(Shape::AnyObject),
    optional(
        "uri",
        Kind::String,
        "A JWKS URL (http:// or https://) fetched by HTTP callout through cluster; its host is the :authority.",
    ),
    optional(
        "discovery",
        Kind::String,
        "An OpenID Connect discovery document URL: its issuer must equal the provider's issuer, and its jwks_uri is fetched as for uri.",
    ),
    optional(
        "cluster",
        Kind::String,
        "The Envoy cluster remote keys are fetched through; required with uri or discovery.",
    ),
    optional(
        "cache_secs",
        Kind::U64,
        "How long fetched keys are used, in seconds (default 600, 1-604800); a shorter Cache-Control max-age from the server wins.",
    ),
    optional(
        "timeout_ms",
        Kind::U64,
        "Timeout of a key fetch, in milliseconds (default 2000, 1-60000).",
    ),
    optional(
        "unknown_kid_refetch_secs",
        Kind::U64,
        "At most one refetch for tokens with an unknown kid per this many seconds, across all workers (default 30).",
    ),
];
const SOURCE_FIELDS: &[Field] = &[
    optional(
        "header",
        Kind::String,
        "A request header holding the token.",
    ),
    optional(
        "prefix",
        Kind::String,
        "With header: the scheme before the token, matched case-insensitively (e.g. \"Bearer \"); a header without it holds no token.",
    ),
    optional(
        "cookie",
        Kind::String,
        "A cookie holding the token.",
    ),
    optional(
        "query",
        Kind::String,
        "A query parameter holding the token.",
    ),
];
const FORWARD_FIELDS: &[Field] = &[
    defaulted(
        "keep_token",
        Kind::Bool,
        "Keep the token in the request upstream. Default false: it is removed from where it was found (header, cookie or query parameter).",
    ),
    optional(
        "payload_header",
        Kind::String,
        "A header set upstream to the token's payload segment: base64url (no padding) of the verified claims JSON. An identity header: removed from every incoming request.",
    ),
    defaulted(
        "claims",
        Kind::StringMap,
        "Claim path (dot-separated) to the header set upstream. Strings as they are, numbers and booleans as JSON, arrays of strings joined with \",\", other values as compact JSON; a missing claim sets no header. Identity headers: removed from every incoming request.",
    ),
];
const RULE_FIELDS: &[Field] = &[
    optional(
        "name",
        Kind::String,
        "The rule's name in logs, stats (tokengate.rule.<name>.*) and 403 descriptions (default rules[<index>]).",
    ),
    defaulted(
        "match",
        Kind::Object,
        "Which requests the rule applies to; empty (or absent) matches every request.",
    )
    .nested(Shape::Object(MATCH_FIELDS)),
    optional(
        "allow",
        Kind::String,
        "\"anonymous\": no authentication (identity headers are still stripped). Exactly one of allow or authn.",
    )
    .nested(Shape::OneOf(&["anonymous"])),
    optional(
        "authn",
        Kind::Object,
        "The providers or exchanges that authenticate the request. Exactly one of allow or authn.",
    )
    .nested(Shape::Object(AUTHN_FIELDS)),
    optional(
        "authz",
        Kind::Object,
        "Local authorization, checked after authentication: a condition on the verified claims, headers, method or path parameters, or an all / any / not tree of them. Failing: 403 insufficient_scope naming the rule.",
    )
    .nested(Shape::Condition),
    optional(
        "central",
        Kind::Bool,
        "After authentication and authz pass, ask the top-level authz_service (which must be set).",
    ),
    optional(
        "dry_run",
        Kind::Bool,
        "Decide, log and count (tokengate.rule.<name>.dry_run_denied), but let the request through as if allowed.",
    ),
];
const MATCH_FIELDS: &[Field] = &[
    optional(
        "path",
        Kind::Object,
        "Exactly one of exact, prefix or template, matched against the path without its query (unreserved percent-escapes decoded).",
    )
    .nested(Shape::Object(PATH_MATCH_FIELDS)),
    optional(
        "methods",
        Kind::Strings,
        "The request's method must be one of these.",
    ),
    optional(
        "host",
        Kind::String,
        "The request's :authority, case-insensitive; a host without a port ignores the request's port.",
    ),
    defaulted(
        "headers",
        Kind::Object,
        "Header name to a test; every test must hold.",
    )
    .nested(Shape::Map(HEADER_MATCH_FIELDS)),
];
const PATH_MATCH_FIELDS: &[Field] = &[
    optional(
        "exact",
        Kind::String,
        "The whole path, starting with /.",
    ),
    optional(
        "prefix",
        Kind::String,
        "A plain string prefix of the path, starting with / (as in Envoy's route match).",
    ),
    optional(
        "template",
        Kind::String,
        "A template such as /users/{id}/orders: each {name} is one non-empty segment, usable in authz path_param conditions.",
    ),
];
const HEADER_MATCH_FIELDS: &[Field] = &[
    optional(
        "present",
        Kind::Bool,
        "true: the header must be present; false: absent. Exactly one of present, equals or prefix.",
    ),
    optional(
        "equals",
        Kind::String,
        "The header's value must be exactly this.",
    ),
    optional(
        "prefix",
        Kind::String,
        "The header's value must start with this.",
    ),
];
const AUTHN_FIELDS: &[Field] = &[
    optional(
        "any",
        Kind::Strings,
        "Provider or exchange names: one of them must authenticate the request. A JWT goes to the providers only; any other token to the first listed exchange whose source holds one. Exactly one of any or all.",
    ),
    optional(
        "all",
        Kind::Strings,
        "Provider or exchange names: every one of them must authenticate the request.",
    ),
    defaulted(
        "optional",
        Kind::Bool,
        "Let a request without any token through as anonymous (an invalid token is still refused). Default false.",
    ),
];

/// The `Raw*` types read out of a parsed document.
struct Reader {
    /// (object path, key) of every key written more than once in one object.
    repeated: Vec<(String, String)>,
}

impl Reader {
    /// The fields of the object at `at`, checked against `fields`: each key one of them
    /// and written once, each value of its kind, each required one present.
    fn read(&self, value: Value, at: &str, fields: &'static [Field]) -> Result<Slots, ConfigError> {
        let map = match value {
            Value::Object(map) => map,
            other => return Err(ConfigError::new(at, invalid_type(&other, "an object"))),
        };
        if let Some((_, key)) = self.repeated.iter().find(|(object, _)| object == at) {
            return Err(ConfigError::new(
                field_path(at, key),
                format!("duplicate field `{key}`"),
            ));
        }
        let mut slots: Vec<Slot> = fields.iter().map(|_| Slot::Absent).collect();
        for (key, value) in map {
            let path = field_path(at, &key);
            let Some((field, slot)) = fields
                .iter()
                .zip(slots.iter_mut())
                .find(|(field, _)| field.name == key)
            else {
                let mut message = format!("unknown field `{key}`, expected one of ");
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        message.push_str(", ");
                    }
                    message.push('`');
                    message.push_str(field.name);
                    message.push('`');
                }
                return Err(ConfigError::new(path, message));
            };
            *slot = read_field(field, value, path)?;
        }
        let missing = fields.iter().zip(&slots).find(|(field, slot)| {
            field.presence == Presence::Required && matches!(slot, Slot::Absent)
        });
        if let Some((field, _)) = missing {
            return Err(ConfigError::new(
                at,
                format!("missing field `{}`", field.name),
            ));
        }
        Ok(Slots { fields, slots })
    }

    fn config(&self, value: Value) -> Result<RawConfig, ConfigError> {
        let mut fields = self.read(value, "", CONFIG_FIELDS)?;
        let mut providers = BTreeMap::new();
        for (name, value) in entries(fields.value("providers")) {
            let provider = self.provider(value, &field_path("providers", &name))?;
            providers.insert(name, provider);
        }
        let mut exchanges = BTreeMap::new();
        for (name, value) in entries(fields.value("exchanges")) {
            let exchange = self.exchange(value, &field_path("exchanges", &name))?;
            exchanges.insert(name, exchange);
        }
        let mut rules = Vec::new();
        for (index, value) in elements(fields.value("rules")).into_iter().enumerate() {
            rules.push(self.rule(value, &item_path("rules", index))?);
        }
        let authz_service = fields
            .value("authz_service")
            .map(|value| self.read(value, "authz_service", policy::AUTHZ_SERVICE_FIELDS))
            .transpose()?;
        let allow_encoded_slashes = match fields.value("paths") {
            None => false,
            Some(value) => self
                .read(value, "paths", policy::PATHS_FIELDS)?
                .bool("allow_encoded_slashes")
                .unwrap_or(false),
        };
        Ok(RawConfig {
            realm: fields.string("realm"),
            providers,
            exchanges,
            rules,
            authz_service,
            allow_encoded_slashes,
        })
    }

    fn provider(&self, value: Value, at: &str) -> Result<RawProvider, ConfigError> {
        let mut fields = self.read(value, at, PROVIDER_FIELDS)?;
        // Required: `read` made sure it is there.
        let jwks = fields.value("jwks").unwrap_or_default();
        let jwks = self.jwks(jwks, &field_path(at, "jwks"))?;
        let sources = match fields.value("sources") {
            None => None,
            Some(value) => {
                let sources_at = field_path(at, "sources");
                let mut sources = Vec::new();
                for (index, value) in elements(Some(value)).into_iter().enumerate() {
                    sources.push(self.source(value, &item_path(&sources_at, index))?);
                }
                Some(sources)
            }
        };
        let forward = match fields.value("forward") {
            None => RawForward::default(),
            Some(value) => self.forward(value, &field_path(at, "forward"))?,
        };
        let login = fields
            .value("login")
            .map(|value| self.login(value, &field_path(at, "login")))
            .transpose()?;
        let revocation = fields
            .value("revocation")
            .map(|value| self.revocation(value, &field_path(at, "revocation")))
            .transpose()?;
        Ok(RawProvider {
            issuer: fields.string("issuer").unwrap_or_default(),
            audiences: fields.strings("audiences"),
            jwks,
            algorithms: fields.strings("algorithms"),
            sources,
            token_types: fields.strings("token_types"),
            clock_skew_secs: fields.u64("clock_skew_secs"),
            require_exp: fields.bool("require_exp"),
            // `read` checked that it fits.
            max_token_bytes: fields
                .u64("max_token_bytes")
                .and_then(|n| usize::try_from(n).ok()),
            forward,
            login,
            revocation,
        })
    }

    fn jwks(&self, value: Value, at: &str) -> Result<RawJwks, ConfigError> {
        let mut fields = self.read(value, at, JWKS_FIELDS)?;
        Ok(RawJwks {
            inline: fields.value("inline"),
            uri: fields.string("uri"),
            discovery: fields.string("discovery"),
            cluster: fields.string("cluster"),
            cache_secs: fields.u64("cache_secs"),
            timeout_ms: fields.u64("timeout_ms"),
            unknown_kid_refetch_secs: fields.u64("unknown_kid_refetch_secs"),
        })
    }

    fn source(&self, value: Value, at: &str) -> Result<RawSource, ConfigError> {
        let mut fields = self.read(value, at, SOURCE_FIELDS)?;
        Ok(RawSource {
            header: fields.string("header"),
            prefix: fields.string("prefix"),
            cookie: fields.string("cookie"),
            query: fields.string("query"),
        })
    }

    fn forward(&self, value: Value, at: &str) -> Result<RawForward, ConfigError> {
        let mut fields = self.read(value, at, FORWARD_FIELDS)?;
        let mut claims = BTreeMap::new();
        for (path, header) in entries(fields.value("claims")) {
            // `read` checked that every value is a string.
            if let Value::String(header) = header {
                claims.insert(path, header);
            }
        }
        Ok(RawForward {
            keep_token: fields.bool("keep_token").unwrap_or(false),
            payload_header: fields.string("payload_header"),
            claims,
        })
    }

    fn rule(&self, value: Value, at: &str) -> Result<RawRule, ConfigError> {
        let mut fields = self.read(value, at, RULE_FIELDS)?;
        let matcher = match fields.value("match") {
            None => RawMatch::default(),
            Some(value) => self.matcher(value, &field_path(at, "match"))?,
        };
        let authn = match fields.value("authn") {
            None => None,
            Some(value) => {
                let mut authn = self.read(value, &field_path(at, "authn"), AUTHN_FIELDS)?;
                Some(RawAuthn {
                    any: authn.strings("any"),
                    all: authn.strings("all"),
                    optional: authn.bool("optional").unwrap_or(false),
                })
            }
        };
        let authz = fields
            .value("authz")
            .map(|value| self.condition(value, &field_path(at, "authz"), 0))
            .transpose()?;
        Ok(RawRule {
            name: fields.string("name"),
            matcher,
            allow: fields.string("allow"),
            authn,
            authz,
            central: fields.bool("central"),
            dry_run: fields.bool("dry_run"),
        })
    }

    fn matcher(&self, value: Value, at: &str) -> Result<RawMatch, ConfigError> {
        let mut fields = self.read(value, at, MATCH_FIELDS)?;
        let path = match fields.value("path") {
            None => None,
            Some(value) => {
                let mut path = self.read(value, &field_path(at, "path"), PATH_MATCH_FIELDS)?;
                Some(RawPathMatch {
                    exact: path.string("exact"),
                    prefix: path.string("prefix"),
                    template: path.string("template"),
                })
            }
        };
        let headers_at = field_path(at, "headers");
        let mut headers = BTreeMap::new();
        for (name, value) in entries(fields.value("headers")) {
            let mut header =
                self.read(value, &field_path(&headers_at, &name), HEADER_MATCH_FIELDS)?;
            let header_match = RawHeaderMatch {
                present: header.bool("present"),
                equals: header.string("equals"),
                prefix: header.string("prefix"),
            };
            headers.insert(name, header_match);
        }
        Ok(RawMatch {
            path,
            methods: fields.strings("methods"),
            host: fields.string("host"),
            headers,
        })
    }
}

/// One field's value, checked against its [`Kind`].
enum Slot {
    Absent,
    String(String),
    U64(u64),
    Bool(bool),
    Strings(Vec<String>),
    Value(Value),
}

/// A field's value checked against its kind; `at` is the field's path.
fn read_field(field: &Field, value: Value, at: String) -> Result<Slot, ConfigError> {
    if value.is_null() && field.presence == Presence::Optional {
        return Ok(Slot::Absent);
    }
    let slot = match (field.kind, value) {
        (Kind::String, Value::String(string)) => Slot::String(string),
        (Kind::Bool, Value::Bool(b)) => Slot::Bool(b),
        // A fraction, or an integer too large for u64 (which the JSON parser turns into
        // a float), falls through to "invalid type"; a negative one is an invalid value.
        (kind @ (Kind::U64 | Kind::Usize), Value::Number(n)) if !n.is_f64() => match n.as_u64() {
            Some(n) if kind == Kind::U64 || usize::try_from(n).is_ok() => Slot::U64(n),
            _ => {
                return Err(ConfigError::new(
                    at,
                    format!("invalid value: integer `{n}`, expected {}", kind.expected()),
                ))
            }
        },
        (Kind::Strings, Value::Array(items)) => {
            let mut strings = Vec::new();
            for (index, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(string) => strings.push(string),
                    other => {
                        return Err(ConfigError::new(
                            item_path(&at, index),
                            invalid_type(&other, "a string"),
                        ))
                    }
                }
            }
            Slot::Strings(strings)
        }
        (Kind::StringMap, Value::Object(map)) => {
            if let Some((key, other)) = map.iter().find(|(_, value)| !value.is_string()) {
                return Err(ConfigError::new(
                    field_path(&at, key),
                    invalid_type(other, "a string"),
                ));
            }
            Slot::Value(Value::Object(map))
        }
        (Kind::Any, value)
        | (Kind::Object, value @ Value::Object(_))
        | (Kind::Array, value @ Value::Array(_)) => Slot::Value(value),
        (kind, other) => return Err(ConfigError::new(at, invalid_type(&other, kind.expected()))),
    };
    Ok(slot)
}

/// The checked fields of one object, taken out by name.
pub struct Slots {
    fields: &'static [Field],
    slots: Vec<Slot>,
}

impl std::fmt::Debug for Slots {
    // Values may be secrets (a client secret, a private key): never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slots({} fields)", self.fields.len())
    }
}

impl Slots {
    fn take(&mut self, name: &str) -> Slot {
        self.fields
            .iter()
            .zip(self.slots.iter_mut())
            .find(|(field, _)| field.name == name)
            .map_or(Slot::Absent, |(_, slot)| {
                std::mem::replace(slot, Slot::Absent)
            })
    }

    fn string(&mut self, name: &str) -> Option<String> {
        match self.take(name) {
            Slot::String(string) => Some(string),
            _ => None,
        }
    }

    fn u64(&mut self, name: &str) -> Option<u64> {
        match self.take(name) {
            Slot::U64(n) => Some(n),
            _ => None,
        }
    }

    fn bool(&mut self, name: &str) -> Option<bool> {
        match self.take(name) {
            Slot::Bool(b) => Some(b),
            _ => None,
        }
    }

    fn strings(&mut self, name: &str) -> Option<Vec<String>> {
        match self.take(name) {
            Slot::Strings(strings) => Some(strings),
            _ => None,
        }
    }

    fn value(&mut self, name: &str) -> Option<Value> {
        match self.take(name) {
            Slot::Value(value) => Some(value),
            _ => None,
        }
    }
}

/// The entries of a checked object field; none when it was absent.
fn entries(value: Option<Value>) -> serde_json::Map<String, Value> {
    match value {
        Some(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

/// The elements of a checked array field; none when it was absent.
fn elements(value: Option<Value>) -> Vec<Value> {
    match value {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

/// serde's wording: "invalid type: string \"60\", expected u64".
fn invalid_type(value: &Value, expected: &str) -> String {
    let found = match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) if n.is_f64() => format!("floating point `{n}`"),
        Value::Number(n) => format!("integer `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "array".to_owned(),
        Value::Object(_) => "object".to_owned(),
    };
    format!("invalid type: {found}, expected {expected}")
}

fn field_path(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    }
}

fn item_path(at: &str, index: usize) -> String {
    format!("{at}[{index}]")
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

/// One open JSON container while scanning.
enum Frame {
    /// `key`: the key being read; `keys`: every key read so far.
    Object {
        key: Option<String>,
        keys: Vec<String>,
    },
    Array {
        index: usize,
    },
}

/// What a scan of the document's bytes up to an offset found.
struct Scan {
    /// The field path (`providers.corp.jwks.inline.keys[2]`) of the value the scan
    /// stopped in.
    path: String,
    /// (object path, key) of every key repeated in an object closed before the offset.
    repeated: Vec<(String, String)>,
}

/// Scans the document's bytes up to `offset`. The path of a syntax error is rebuilt from
/// the error's position, after the fact: a few lines here instead of wrapping every
/// visitor (serde_path_to_error doubled the config parser's code, and V8 compiles all of
/// it before Envoy opens a listener). Where the scan stops right after closing a
/// container, the path is the container's own.
fn scan(bytes: &[u8], offset: usize) -> Scan {
    let mut stack: Vec<Frame> = Vec::new();
    let mut repeated = Vec::new();
    let mut expecting_key = false;
    let mut closed_here = false;
    let mut i = 0;
    while i < offset {
        let Some(&byte) = bytes.get(i) else { break };
        match byte {
            b'"' => {
                let end = crate::json::string_end(bytes, i);
                if expecting_key {
                    if let Some(Frame::Object { key, keys }) = stack.last_mut() {
                        *key = bytes
                            .get(i..end)
                            .and_then(|quoted| serde_json::from_slice(quoted).ok());
                        keys.extend(key.clone());
                    }
                    expecting_key = false;
                }
                i = end;
                continue;
            }
            b'{' => {
                stack.push(Frame::Object {
                    key: None,
                    keys: Vec::new(),
                });
                expecting_key = true;
            }
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                if i + 1 >= offset {
                    closed_here = true;
                    break;
                }
                close(&mut stack, &mut repeated);
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
        close(&mut stack, &mut repeated);
    }
    Scan {
        path: path_of(&stack),
        repeated,
    }
}

/// Pops the innermost container; an object's repeated key is noted with its path.
fn close(stack: &mut Vec<Frame>, repeated: &mut Vec<(String, String)>) {
    if let Some(Frame::Object { mut keys, .. }) = stack.pop() {
        keys.sort();
        let twice = keys.iter().zip(keys.iter().skip(1)).find(|(a, b)| a == b);
        if let Some((key, _)) = twice {
            repeated.push((path_of(stack), key.clone()));
        }
    }
}

/// The path the open containers spell: each object by its current key, each array by
/// its current index.
fn path_of(stack: &[Frame]) -> String {
    stack.iter().fold(String::new(), |path, frame| match frame {
        Frame::Object { key: Some(key), .. } => field_path(&path, key),
        Frame::Object { key: None, .. } => path,
        Frame::Array { index } => item_path(&path, *index),
    })
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
    let authz_service = raw.authz_service.map(compile_authz_service).transpose()?;
    let mut providers = Vec::new();
    for (name, raw_provider) in raw.providers {
        providers.push(compile_provider(&name, raw_provider)?);
    }
    let mut exchanges = Vec::new();
    for (name, raw_exchange) in raw.exchanges {
        exchanges.push(compile_exchange(&name, raw_exchange, &providers)?);
    }
    let rules = if raw.rules.is_empty() {
        if providers.is_empty() {
            return Err(ConfigError::new(
                "providers",
                "at least one provider is needed when no rules are given",
            ));
        }
        let every = (0..providers.len())
            .map(Authenticator::Provider)
            .chain((0..exchanges.len()).map(Authenticator::Exchange))
            .collect();
        vec![Rule::plain(
            "default",
            Matcher::default(),
            RuleAction::Authn {
                requirement: AuthnRequirement::Any(every),
                optional: false,
            },
        )]
    } else {
        raw.rules
            .into_iter()
            .enumerate()
            .map(|(index, rule)| {
                compile_rule(index, rule, &providers, &exchanges, authz_service.is_some())
            })
            .collect::<Result<_, _>>()?
    };
    let mut identity_headers: Vec<String> = providers
        .iter()
        .flat_map(|p| p.forward.headers().map(str::to_owned))
        .chain(
            exchanges
                .iter()
                .filter_map(|e| e.upstream.as_ref().map(|u| u.header.clone())),
        )
        .collect();
    identity_headers.sort();
    identity_headers.dedup();
    let identity_headers: Vec<Rc<str>> = identity_headers.into_iter().map(Rc::from).collect();
    let mut reads = Reads::default();
    for source in providers
        .iter()
        .flat_map(|p| &p.sources)
        .chain(exchanges.iter().flat_map(|e| &e.sources))
    {
        reads.add_source(source);
    }
    for rule in &rules {
        rule.matcher.add_reads(&mut reads);
        if let Some(authz) = &rule.authz {
            let mut headers = Vec::new();
            authz.headers(&mut headers);
            headers.iter().for_each(|name| reads.add_header(name));
            let (method, path) = authz.reads_method_or_path();
            reads.method |= method;
            reads.path |= path;
        }
    }
    if let Some(service) = authz_service
        .as_ref()
        .filter(|_| rules.iter().any(|r| r.central))
    {
        reads.method = true;
        reads.path = true;
        reads.host = true;
        service
            .include_headers
            .iter()
            .for_each(|name| reads.add_header(name));
    }
    if providers.iter().any(|p| p.login.is_some()) {
        // The login's own endpoints, the browser test (GET, Accept: text/html), the
        // redirect URI (scheme and host) and the cookies removed on every route.
        reads.method = true;
        reads.path = true;
        reads.host = true;
        reads.add_header(":scheme");
        reads.add_header("accept");
        reads.add_header("cookie");
    }
    let query_sources: Vec<String> = providers
        .iter()
        .flat_map(|p| &p.sources)
        .chain(exchanges.iter().flat_map(|e| &e.sources))
        .filter_map(|source| match source {
            Source::Query(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    let jwks_paths: Vec<(String, String)> = exchanges
        .iter()
        .filter_map(|e| e.mint.as_ref())
        .filter_map(|m| Some((m.jwks_path.clone()?, m.public_jwks.clone())))
        .collect();
    let mut backchannel_paths: Vec<(String, usize)> = Vec::new();
    for (index, provider) in providers.iter().enumerate() {
        let Some(backchannel) = provider
            .revocation
            .as_ref()
            .and_then(|r| r.backchannel.as_ref())
        else {
            continue;
        };
        let taken = backchannel_paths
            .iter()
            .any(|(p, _)| *p == backchannel.path)
            || jwks_paths.iter().any(|(p, _)| *p == backchannel.path);
        if taken {
            return Err(ConfigError::new(
                format!(
                    "providers.{}.revocation.backchannel_logout.path",
                    provider.name
                ),
                "another endpoint of the filter has this path",
            ));
        }
        backchannel_paths.push((backchannel.path.clone(), index));
    }
    if !jwks_paths.is_empty() || !backchannel_paths.is_empty() {
        reads.path = true;
        reads.method = true;
    }
    Ok(Config {
        realm,
        providers,
        exchanges,
        rules,
        identity_headers,
        reads,
        jwks_paths,
        authz_service,
        allow_encoded_slashes: raw.allow_encoded_slashes,
        query_sources,
        backchannel_paths,
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

    let mut sources = compile_sources(&at("sources"), raw.sources)?;

    let forward = compile_forward(&at("forward"), raw.forward)?;

    let login = raw
        .login
        .map(|l| login::compile_login(&at("login"), l, &raw.issuer))
        .transpose()?;
    if let Some(login) = &login {
        // The session cookie is a source like any other, tried last.
        sources.push(Source::SessionCookie(login.cookie_name.clone()));
    }
    let revocation = raw
        .revocation
        .map(|r| compile_revocation(&at("revocation"), r))
        .transpose()?;

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
        login: login.map(Rc::new),
        revocation,
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

/// A provider's or exchange's `sources`; absent means `Authorization: Bearer`.
fn compile_sources(at: &str, raw: Option<Vec<RawSource>>) -> Result<Vec<Source>, ConfigError> {
    match raw {
        None => Ok(vec![Source::default_bearer()]),
        Some(raw_sources) if raw_sources.is_empty() => Err(ConfigError::new(
            at,
            "must list at least one source when set",
        )),
        Some(raw_sources) => raw_sources
            .into_iter()
            .enumerate()
            .map(|(i, s)| compile_source(&format!("{at}[{i}]"), s))
            .collect(),
    }
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
                name: name.into(),
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

fn compile_rule(
    index: usize,
    raw: RawRule,
    providers: &[Provider],
    exchanges: &[Exchange],
    has_authz_service: bool,
) -> Result<Rule, ConfigError> {
    let at = |field: &str| format!("rules[{index}].{field}");
    let name = raw.name.unwrap_or_else(|| format!("rules[{index}]"));
    let central = raw.central.unwrap_or(false);
    if central && !has_authz_service {
        return Err(ConfigError::new(
            at("central"),
            "needs a top-level \"authz_service\" to ask",
        ));
    }
    let matcher = compile_match(&at("match"), raw.matcher)?;
    let authz = raw
        .authz
        .map(|raw| compile_condition(raw, matcher.path.as_ref()))
        .transpose()?;
    let action = match (raw.allow, raw.authn) {
        (Some(allow), None) if allow == "anonymous" => RuleAction::Anonymous,
        (Some(_), None) => {
            return Err(ConfigError::new(
                at("allow"),
                "the only value is \"anonymous\"",
            ))
        }
        (None, Some(authn)) => {
            let lookup =
                |field: String, names: Vec<String>| -> Result<Vec<Authenticator>, ConfigError> {
                    if names.is_empty() {
                        return Err(ConfigError::new(field, "must name at least one provider"));
                    }
                    names
                        .iter()
                        .enumerate()
                        .map(|(i, n)| {
                            let provider = providers.iter().position(|p| &p.name == n);
                            let exchange = exchanges.iter().position(|e| &e.name == n);
                            provider
                                .map(Authenticator::Provider)
                                .or(exchange.map(Authenticator::Exchange))
                                .ok_or_else(|| {
                                    ConfigError::new(
                                        format!("{field}[{i}]"),
                                        format!("unknown provider or exchange {n:?}"),
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
        stat_name: crate::policy::rules::stat_name(&name),
        name,
        matcher,
        action,
        authz,
        central,
        dry_run: raw.dry_run.unwrap_or(false),
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
                requirement: AuthnRequirement::Any(vec![Authenticator::Provider(0)]),
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
            vec![Rc::from("x-jwt-payload"), Rc::from("x-user-id")]
        );
    }

    #[test]
    fn the_filter_reads_only_what_sources_and_rules_need_never_identity_headers() {
        // Identity headers are removed (or replaced) blindly, never read.
        let config = Config::from_json(base().to_string().as_bytes()).unwrap();
        assert_eq!(
            config.reads,
            Reads {
                method: false,
                path: false,
                host: false,
                headers: vec!["authorization".into()],
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
        assert_eq!(reads.headers, vec!["cookie", "x-tenant"]);
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
            ("[1, 2", "[1]"),
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
    fn authorization_sections_are_checked_with_their_paths() {
        let e = error_of(&with(|d| d["authz_service"] = json!({"uri": "http://opa"})));
        assert_eq!(e.path, "authz_service");
        let rule = |authz: Value| {
            with(
                |d| d["rules"] = json!([{"match": {"path": {"template": "/users/{id}"}}, "authn": {"any": ["corp"]}, "authz": authz}]),
            )
        };
        assert_eq!(
            error_of(&rule(json!({"all": []}))).path,
            "rules[0].authz.all"
        );
        assert_eq!(
            error_of(&rule(json!({"all": [{"claim": "scope"}]}))).path,
            "rules[0].authz.all[0]"
        );
        assert_eq!(
            error_of(&rule(json!({"any": [{"bogus": 1}]}))).path,
            "rules[0].authz.any[0]"
        );
        assert_eq!(
            error_of(&rule(
                json!({"not": {"path_param": "tenant", "equals_claim": "t"}})
            ))
            .path,
            "rules[0].authz.not.path_param"
        );
        assert_eq!(
            error_of(&rule(json!({"header": "x-t", "equals": "a", "extra": 1}))).path,
            "rules[0].authz.extra"
        );
        let e =
            error_of(&with(
                |d| {
                    d["rules"] = json!([{"match": {}, "authn": {"any": ["corp"]}, "central": true}])
                },
            ));
        assert_eq!(e.path, "rules[0].central");
        let config = Config::from_json(
            rule(json!({"all": [
                {"claim": "scope", "contains": "admin"},
                {"path_param": "id", "equals_claim": "sub"},
                {"header": "x-tenant", "equals_claim": "tenant"},
                {"not": {"method": ["DELETE"]}}
            ]}))
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert!(config.reads.headers.contains(&"x-tenant".to_owned()));
        assert!(config.reads.method && config.reads.path);
        // A null authz_service is the contract's way of saying "none".
        assert!(Config::from_json(
            with(|d| d["authz_service"] = json!(null))
                .to_string()
                .as_bytes()
        )
        .is_ok());
    }

    #[test]
    fn an_authz_service_is_read_with_its_defaults() {
        let config = Config::from_json(
            with(|d| {
                d["authz_service"] = json!({"uri": "http://opa:8181/v1/data/http/authz", "cluster": "opa",
                                            "on_error": "allow", "include_headers": ["X-Tenant"]});
                d["rules"] = json!([{"match": {}, "authn": {"any": ["corp"]}, "central": true}]);
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let service = config.authz_service.as_ref().unwrap();
        assert!(service.allow_on_error);
        assert_eq!(service.include_headers, vec!["x-tenant".to_owned()]);
        assert_eq!((service.timeout_ms, service.cache_secs), (200, 5));
        assert!(config.rules[0].central);
        assert!(config.reads.headers.contains(&"x-tenant".to_owned()));
        let e =
            error_of(&with(
                |d| {
                    d["authz_service"] =
                        json!({"uri": "http://opa", "cluster": "opa", "on_error": "maybe"})
                },
            ));
        assert_eq!(e.path, "authz_service.on_error");
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

    fn error_of_text(text: &str) -> ConfigError {
        Config::from_json(text.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_document_that_is_not_an_object_is_refused() {
        for doc in ["[1, 2]", "null", "1", "\"realm\""] {
            let e = error_of_text(doc);
            assert_eq!(e.path, "", "{doc}: {e}");
            assert!(e.message.contains("expected an object"), "{doc}: {e}");
        }
    }

    #[test]
    fn u64_fields_take_only_non_negative_integers() {
        for (value, wording) in [
            ("-1", "invalid value: integer `-1`, expected u64"),
            ("1.5", "invalid type: floating point `1.5`, expected u64"),
            ("60.0", "invalid type: floating point"),
            // Past u64::MAX: the JSON parser reads it as a float.
            ("18446744073709551616", "invalid type: floating point"),
            ("\"60\"", "invalid type: string \"60\", expected u64"),
            ("true", "invalid type: boolean `true`, expected u64"),
        ] {
            let text = base().to_string().replace(
                "\"issuer\":",
                &format!("\"clock_skew_secs\":{value},\"issuer\":"),
            );
            let e = error_of_text(&text);
            assert_eq!(e.path, "providers.corp.clock_skew_secs", "{value}: {e}");
            assert!(e.message.contains(wording), "{value}: {e}");
        }
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["jwks"] =
                json!({"uri": "http://idp/certs", "cluster": "idp", "timeout_ms": -5});
        }));
        assert_eq!(e.path, "providers.corp.jwks.timeout_ms");
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["max_token_bytes"] = json!(-1)
        }));
        assert_eq!(e.path, "providers.corp.max_token_bytes");
        assert!(e.message.contains("invalid value"), "{e}");
        let config = Config::from_json(
            with(|d| d["providers"]["corp"]["clock_skew_secs"] = json!(0))
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(config.providers[0].policy.clock_skew_secs, 0);
    }

    #[test]
    fn bool_fields_take_only_booleans() {
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["require_exp"] = json!("false")
        }));
        assert_eq!(e.path, "providers.corp.require_exp");
        assert!(
            e.message
                .contains("invalid type: string \"false\", expected a boolean"),
            "{e}"
        );
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["forward"]["keep_token"] = json!(1)
        }));
        assert_eq!(e.path, "providers.corp.forward.keep_token");
        // A flag with a default is not an `Option`: null is the wrong type there.
        let e = error_of(&with(|d| {
            d["rules"] = json!([{"authn": {"any": ["corp"], "optional": null}}])
        }));
        assert_eq!(e.path, "rules[0].authn.optional");
        assert!(e.message.contains("invalid type: null"), "{e}");
        let e = error_of(&with(
            |d| {
                d["rules"] = json!([{"match": {"headers": {"x-a": {"present": "yes"}}}, "allow": "anonymous"}])
            },
        ));
        assert_eq!(e.path, "rules[0].match.headers.x-a.present");
    }

    #[test]
    fn null_is_an_absent_option_but_not_an_object() {
        let ok = with(|d| {
            d["realm"] = json!(null);
            d["providers"]["corp"]["audiences"] = json!(null);
            d["providers"]["corp"]["algorithms"] = json!(null);
            d["providers"]["corp"]["sources"] = json!(null);
            d["providers"]["corp"]["clock_skew_secs"] = json!(null);
            d["rules"] = json!([{"match": {"path": null}, "authn": {"any": ["corp"]}, "authz": null, "dry_run": null}]);
        });
        let config = Config::from_json(ok.to_string().as_bytes()).unwrap();
        assert_eq!(config.realm, DEFAULT_REALM);
        assert_eq!(config.providers[0].policy.clock_skew_secs, 60);
        for (change, path) in [
            (
                (|d: &mut Value| d["providers"]["corp"]["jwks"] = json!(null)) as fn(&mut Value),
                "providers.corp.jwks",
            ),
            (
                |d| d["providers"]["corp"]["forward"] = json!(null),
                "providers.corp.forward",
            ),
            (
                |d| d["providers"]["corp"]["forward"]["claims"] = json!(null),
                "providers.corp.forward.claims",
            ),
            (|d| d["providers"]["corp"] = json!(null), "providers.corp"),
            (|d| d["providers"] = json!(null), "providers"),
            (|d| d["exchanges"] = json!(null), "exchanges"),
            (|d| d["rules"] = json!(null), "rules"),
            (|d| d["rules"] = json!([null]), "rules[0]"),
            (
                |d| d["rules"] = json!([{"match": null, "allow": "anonymous"}]),
                "rules[0].match",
            ),
            (
                |d| {
                    d["rules"] =
                        json!([{"match": {"headers": {"x-a": null}}, "allow": "anonymous"}])
                },
                "rules[0].match.headers.x-a",
            ),
            (
                |d| d["providers"]["corp"]["sources"] = json!([null]),
                "providers.corp.sources[0]",
            ),
            (
                |d| d["providers"]["corp"]["issuer"] = json!(null),
                "providers.corp.issuer",
            ),
        ] {
            let e = error_of(&with(change));
            assert_eq!(e.path, path, "{e}");
            assert!(e.message.contains("invalid type: null"), "{e}");
        }
    }

    #[test]
    fn unknown_fields_are_refused_in_every_kind_of_object() {
        let full = with(|d| {
            d["providers"]["corp"]["sources"] = json!([{"header": "authorization"}]);
            d["rules"] = json!([{
                "match": {"path": {"prefix": "/"}, "headers": {"x-a": {"present": true}}},
                "authn": {"any": ["corp"]}
            }]);
        });
        Config::from_json(full.to_string().as_bytes()).unwrap();
        for object in [
            "",
            "providers.corp",
            "providers.corp.jwks",
            "providers.corp.sources.0",
            "providers.corp.forward",
            "rules.0",
            "rules.0.match",
            "rules.0.match.path",
            "rules.0.match.headers.x-a",
            "rules.0.authn",
        ] {
            let mut doc = full.clone();
            let mut target = &mut doc;
            for step in object.split('.').filter(|s| !s.is_empty()) {
                target = match step.parse::<usize>() {
                    Ok(index) => &mut target[index],
                    Err(_) => &mut target[step],
                };
            }
            target["bogus"] = json!(1);
            let e = error_of(&doc);
            let path = object.replace(".0", "[0]");
            let path = if path.is_empty() {
                "bogus".to_owned()
            } else {
                format!("{path}.bogus")
            };
            assert_eq!(e.path, path, "{e}");
            assert!(
                e.message
                    .contains("unknown field `bogus`, expected one of `"),
                "{e}"
            );
        }
    }

    #[test]
    fn missing_fields_and_wrong_elements_name_their_paths() {
        let e = error_of(&with(|d| {
            d["providers"]["corp"]
                .as_object_mut()
                .unwrap()
                .remove("jwks");
        }));
        assert_eq!(e.path, "providers.corp");
        assert!(e.message.contains("missing field `jwks`"), "{e}");
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["audiences"] = json!(["orders", 7])
        }));
        assert_eq!(e.path, "providers.corp.audiences[1]");
        assert!(e.message.contains("expected a string"), "{e}");
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["audiences"] = json!("orders")
        }));
        assert_eq!(e.path, "providers.corp.audiences");
        assert!(e.message.contains("expected an array"), "{e}");
        let e = error_of(&with(|d| {
            d["providers"]["corp"]["forward"]["claims"] = json!({"sub": ["x-user"]})
        }));
        assert_eq!(e.path, "providers.corp.forward.claims.sub");
        let e =
            error_of(&with(
                |d| {
                    d["rules"] =
                        json!([{"match": {"methods": ["GET", null]}, "allow": "anonymous"}])
                },
            ));
        assert_eq!(e.path, "rules[0].match.methods[1]");
    }

    #[test]
    fn a_field_written_twice_is_refused_but_a_repeated_map_key_keeps_the_last() {
        let text = base()
            .to_string()
            .replace("\"issuer\":", "\"issuer\":\"https://other\",\"issuer\":");
        let e = error_of_text(&text);
        assert_eq!(e.path, "providers.corp.issuer");
        assert!(e.message.contains("duplicate field `issuer`"), "{e}");
        let text = base()
            .to_string()
            .replace("\"realm\":", "\"realm\":\"a\",\"realm\":");
        assert_eq!(error_of_text(&text).path, "realm");
        // Maps are not structs: as with serde's BTreeMap, the last of a repeated key wins.
        let text = base().to_string().replace(
            "\"claims\":{\"sub\":\"X-User-Id\"}",
            "\"claims\":{\"sub\":\"host\",\"sub\":\"X-User-Id\"}",
        );
        assert_ne!(text, base().to_string());
        let config = Config::from_json(text.as_bytes()).unwrap();
        assert_eq!(config.providers[0].forward.claims[0].1, "x-user-id");
    }

    #[test]
    fn an_array_is_not_an_object() {
        // serde's derive also read a struct from a JSON array of its fields in order; the
        // contract has objects only.
        let e = error_of(&with(|d| d["rules"] = json!([[null, {}, "anonymous"]])));
        assert_eq!(e.path, "rules[0]");
        assert!(
            e.message
                .contains("invalid type: array, expected an object"),
            "{e}"
        );
    }
}
