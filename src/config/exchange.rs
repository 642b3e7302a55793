//! The `exchanges` section: read (field tables) and compiled into [`Exchange`]s.

use super::{
    compile_sources, field_path, identity_header, item_path, optional, required, ConfigError,
    Field, Kind, Provider, Reader, Shape, Slots, DEFAULT_MAX_TOKEN_BYTES,
};
use crate::crypto::alg::Alg;
use crate::crypto::mint_key::MintKey;
use crate::exchange::callout::basic_authorization;
use crate::exchange::{
    CachePolicy, Client, Endpoint, Exchange, ExchangeParams, Mint, Mode, Upstream,
};
use crate::remote::Uri;
use serde_json::{json, Value};

pub(super) const EXCHANGE_FIELDS: &[Field] = &[
    optional(
        "sources",
        Kind::Array,
        "Where the token is, tried in order as for providers (default the authorization header with the prefix \"Bearer \"); the token never reaches the upstream.",
    )
    .nested(Shape::Items(super::SOURCE_FIELDS)),
    required(
        "mode",
        Kind::String,
        "introspection (RFC 7662), jwt_introspection (RFC 9701: a signed answer), token_exchange (RFC 8693) or session (GET the endpoint with the session id).",
    )
    .nested(Shape::OneOf(&[
        "introspection",
        "jwt_introspection",
        "token_exchange",
        "session",
    ])),
    required(
        "endpoint",
        Kind::Object,
        "The auth service's endpoint.",
    )
    .nested(Shape::Object(ENDPOINT_FIELDS)),
    optional(
        "client",
        Kind::Object,
        "The gateway's client credentials at the auth service, sent as HTTP Basic (id and secret form-urlencoded first); required except for session.",
    )
    .nested(Shape::Object(CLIENT_FIELDS)),
    required(
        "provider",
        Kind::String,
        "A provider's name: its issuer must equal the identity's iss when present, its keys verify signed answers and JWTs, its forward makes the identity's headers.",
    ),
    optional(
        "audiences",
        Kind::Strings,
        "When set, the identity's aud must hold one of these; when absent, aud is not checked.",
    ),
    optional(
        "cache",
        Kind::Object,
        "How long answers are kept, in shared data for all workers; keyed by a hash of the token.",
    )
    .nested(Shape::Object(CACHE_FIELDS)),
    optional(
        "upstream",
        Kind::Object,
        "Where the exchange's JWT (token exchange, session, minted) goes upstream. An identity header: removed from every incoming request.",
    )
    .nested(Shape::Object(UPSTREAM_FIELDS)),
    optional(
        "token_exchange",
        Kind::Object,
        "Mode token_exchange only: parameters sent with the exchange.",
    )
    .nested(Shape::Object(TOKEN_EXCHANGE_FIELDS)),
    optional(
        "mint",
        Kind::Object,
        "The gateway signs its own JWT from the identity's claims (never longer-lived than the identity) and sends that upstream; needs upstream.",
    )
    .nested(Shape::Object(MINT_FIELDS)),
    optional(
        "max_token_bytes",
        Kind::Usize,
        "Longer opaque tokens are refused unread (default 8192, at most 65536).",
    ),
];
const ENDPOINT_FIELDS: &[Field] = &[
    required(
        "uri",
        Kind::String,
        "An http:// or https:// URI; its host is the :authority. For session, {token} in the path or query (required) is replaced by the percent-encoded session id.",
    ),
    required(
        "cluster",
        Kind::String,
        "The Envoy cluster the callout goes through.",
    ),
    optional(
        "timeout_ms",
        Kind::U64,
        "Callout timeout in milliseconds (default 500, 1-60000).",
    ),
];
const CLIENT_FIELDS: &[Field] = &[
    required("id", Kind::String, "The gateway's client id."),
    required("secret", Kind::String, "The gateway's client secret."),
];
const CACHE_FIELDS: &[Field] = &[
    optional(
        "max_secs",
        Kind::U64,
        "An identity's life in seconds, never past its exp (default 300, 1-86400).",
    ),
    optional(
        "negative_secs",
        Kind::U64,
        "How long a refusal (inactive token, unknown session) is kept, in seconds (default 5, 0-3600).",
    ),
    optional(
        "max_entries",
        Kind::U64,
        "Shared-data slots for all workers (default 10000, at most 1000000).",
    ),
];
const UPSTREAM_FIELDS: &[Field] = &[
    required("header", Kind::String, "The header the JWT goes in."),
    optional(
        "prefix",
        Kind::String,
        "Written before the JWT, e.g. \"Bearer \" (default none).",
    ),
];
const TOKEN_EXCHANGE_FIELDS: &[Field] = &[
    optional("audience", Kind::String, "RFC 8693 audience parameter."),
    optional("resource", Kind::String, "RFC 8693 resource parameter."),
    optional("scope", Kind::String, "RFC 8693 scope parameter."),
];
const MINT_FIELDS: &[Field] = &[
    required(
        "issuer",
        Kind::String,
        "The iss of minted tokens.",
    ),
    required(
        "alg",
        Kind::String,
        "The signature algorithm of minted tokens.",
    )
    .nested(Shape::OneOf(&["ES256", "EdDSA"])),
    required(
        "key",
        Kind::Any,
        "The private JWK to sign with (EC P-256 for ES256, OKP Ed25519 for EdDSA).",
    )
    .nested(Shape::AnyObject),
    optional(
        "ttl_secs",
        Kind::U64,
        "Lifetime of a minted token in seconds (default 300, 1-86400), never past the identity's.",
    ),
    optional(
        "audience",
        Kind::String,
        "The aud of minted tokens.",
    ),
    optional(
        "jwks_path",
        Kind::String,
        "A path (starting with /) where the filter answers GET with the public JWKS of the minting key, before any rule runs.",
    ),
];

pub const DEFAULT_TIMEOUT_MS: u64 = 500;
pub const DEFAULT_MAX_SECS: u64 = 300;
pub const DEFAULT_NEGATIVE_SECS: u64 = 5;
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;
/// Slots in shared data are never freed: a cap on what one exchange may take.
const MAX_MAX_ENTRIES: u64 = 1_000_000;
const DEFAULT_MINT_TTL_SECS: u64 = 300;

/// An exchange as written: each nested object read with its own field table.
pub struct RawExchange {
    pub sources: Option<Vec<super::RawSource>>,
    pub mode: String,
    pub endpoint: Slots,
    pub client: Option<Slots>,
    pub provider: String,
    pub audiences: Option<Vec<String>>,
    pub cache: Option<Slots>,
    pub upstream: Option<Slots>,
    pub token_exchange: Option<Slots>,
    pub mint: Option<Slots>,
    pub max_token_bytes: Option<usize>,
}

impl Reader {
    pub(super) fn exchange(&self, value: Value, at: &str) -> Result<RawExchange, ConfigError> {
        let mut fields = self.read(value, at, EXCHANGE_FIELDS)?;
        let nested = |fields: &mut Slots, name: &str, table: &'static [Field]| {
            fields
                .value(name)
                .map(|value| self.read(value, &field_path(at, name), table))
                .transpose()
        };
        let sources = match fields.value("sources") {
            None => None,
            Some(Value::Array(items)) => {
                let sources_at = field_path(at, "sources");
                let mut sources = Vec::new();
                for (index, value) in items.into_iter().enumerate() {
                    sources.push(self.source(value, &item_path(&sources_at, index))?);
                }
                Some(sources)
            }
            Some(_) => None,
        };
        Ok(RawExchange {
            sources,
            mode: fields.string("mode").unwrap_or_default(),
            endpoint: nested(&mut fields, "endpoint", ENDPOINT_FIELDS)?
                .ok_or_else(|| ConfigError::new(at, "missing field `endpoint`"))?,
            client: nested(&mut fields, "client", CLIENT_FIELDS)?,
            provider: fields.string("provider").unwrap_or_default(),
            audiences: fields.strings("audiences"),
            cache: nested(&mut fields, "cache", CACHE_FIELDS)?,
            upstream: nested(&mut fields, "upstream", UPSTREAM_FIELDS)?,
            token_exchange: nested(&mut fields, "token_exchange", TOKEN_EXCHANGE_FIELDS)?,
            mint: nested(&mut fields, "mint", MINT_FIELDS)?,
            max_token_bytes: fields
                .u64("max_token_bytes")
                .and_then(|n| usize::try_from(n).ok()),
        })
    }
}

pub(super) fn bounded(
    at: String,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let value = value.unwrap_or(default);
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(
            at,
            format!("must be between {min} and {max}"),
        ))
    }
}

/// Where a callout goes: `uri`, `cluster` and `timeout_ms` of the object at `at` (an
/// exchange's endpoint, the authz service). Returns the URI as written too.
pub(super) fn callout_target(
    at: &str,
    fields: &mut Slots,
    default_timeout_ms: u64,
) -> Result<(String, Uri, String, u64), ConfigError> {
    let text = fields.string("uri").unwrap_or_default();
    let uri = Uri::parse(&text).ok_or_else(|| {
        ConfigError::new(
            field_path(at, "uri"),
            "must be an http:// or https:// URI with a host",
        )
    })?;
    let (cluster, timeout_ms) = callout_target_parts(at, fields, default_timeout_ms)?;
    Ok((text, uri, cluster, timeout_ms))
}

/// `cluster` and `timeout_ms` of the object at `at`: what every callout needs besides
/// its URI.
pub(super) fn callout_target_parts(
    at: &str,
    fields: &mut Slots,
    default_timeout_ms: u64,
) -> Result<(String, u64), ConfigError> {
    let cluster = fields.string("cluster").unwrap_or_default();
    if cluster.is_empty() {
        return Err(ConfigError::new(
            field_path(at, "cluster"),
            "must be non-empty",
        ));
    }
    let timeout_ms = bounded(
        field_path(at, "timeout_ms"),
        fields.u64("timeout_ms"),
        default_timeout_ms,
        1,
        60_000,
    )?;
    Ok((cluster, timeout_ms))
}

pub fn compile_exchange(
    name: &str,
    raw: RawExchange,
    providers: &[Provider],
) -> Result<Exchange, ConfigError> {
    let at = |field: &str| format!("exchanges.{name}.{field}");
    if name.is_empty() {
        return Err(ConfigError::new(
            "exchanges",
            "exchange names must be non-empty",
        ));
    }
    if providers.iter().any(|p| p.name == name) {
        return Err(ConfigError::new(
            format!("exchanges.{name}"),
            "a provider has the same name: rules could not tell them apart",
        ));
    }
    let mode = Mode::from_name(&raw.mode).ok_or_else(|| {
        ConfigError::new(
            at("mode"),
            "must be one of \"introspection\", \"jwt_introspection\", \"token_exchange\", \"session\"",
        )
    })?;
    let provider = providers
        .iter()
        .position(|p| p.name == raw.provider)
        .ok_or_else(|| {
            ConfigError::new(
                at("provider"),
                format!("unknown provider {:?}", raw.provider),
            )
        })?;

    let mut endpoint = raw.endpoint;
    let (uri_text, uri, cluster, timeout_ms) =
        callout_target(&at("endpoint"), &mut endpoint, DEFAULT_TIMEOUT_MS)?;
    if mode == Mode::Session && !uri.path.contains("{token}") {
        return Err(ConfigError::new(
            at("endpoint.uri"),
            "a session endpoint must hold {token} in its path or query",
        ));
    }

    let client = raw.client.map(|mut client| {
        let id = client.string("id").unwrap_or_default();
        let secret = client.string("secret").unwrap_or_default();
        let basic = basic_authorization(&id, &secret);
        Client { id, secret, basic }
    });
    match &client {
        None if mode != Mode::Session => {
            return Err(ConfigError::new(
                at("client"),
                "the gateway's client credentials are required for this mode",
            ))
        }
        Some(c) if c.id.is_empty() => {
            return Err(ConfigError::new(at("client.id"), "must be non-empty"))
        }
        _ => {}
    }

    let audiences = raw.audiences.unwrap_or_default();
    if audiences.iter().any(String::is_empty) {
        return Err(ConfigError::new(
            at("audiences"),
            "audiences must be non-empty strings",
        ));
    }

    let (max_secs, negative_secs, max_entries) = match raw.cache {
        None => (DEFAULT_MAX_SECS, DEFAULT_NEGATIVE_SECS, DEFAULT_MAX_ENTRIES),
        Some(mut cache) => (
            bounded(
                at("cache.max_secs"),
                cache.u64("max_secs"),
                DEFAULT_MAX_SECS,
                1,
                86_400,
            )?,
            bounded(
                at("cache.negative_secs"),
                cache.u64("negative_secs"),
                DEFAULT_NEGATIVE_SECS,
                0,
                3600,
            )?,
            bounded(
                at("cache.max_entries"),
                cache.u64("max_entries"),
                DEFAULT_MAX_ENTRIES,
                1,
                MAX_MAX_ENTRIES,
            )?,
        ),
    };

    let upstream = raw
        .upstream
        .map(|mut upstream| -> Result<Upstream, ConfigError> {
            let header = identity_header(
                &at("upstream.header"),
                &upstream.string("header").unwrap_or_default(),
            )?;
            Ok(Upstream {
                header,
                prefix: upstream.string("prefix").unwrap_or_default(),
            })
        })
        .transpose()?;

    let params = match raw.token_exchange {
        None => ExchangeParams::default(),
        Some(_) if mode != Mode::TokenExchange => {
            return Err(ConfigError::new(
                at("token_exchange"),
                "only for mode \"token_exchange\"",
            ))
        }
        Some(mut params) => ExchangeParams {
            audience: params.string("audience"),
            resource: params.string("resource"),
            scope: params.string("scope"),
        },
    };

    let mint = raw.mint.map(|m| compile_mint(&at("mint"), m)).transpose()?;
    if mint.is_some() && upstream.is_none() {
        return Err(ConfigError::new(
            at("upstream"),
            "a minted token needs an upstream header to go in",
        ));
    }

    let sources = compile_sources(&at("sources"), raw.sources)?;
    let max_token_bytes = raw.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    if max_token_bytes == 0 || max_token_bytes > super::MAX_MAX_TOKEN_BYTES {
        return Err(ConfigError::new(
            at("max_token_bytes"),
            format!("must be between 1 and {}", super::MAX_MAX_TOKEN_BYTES),
        ));
    }

    let forwarded_claims = providers
        .get(provider)
        .map(|p| {
            p.forward
                .claims
                .iter()
                .map(|(path, _)| path.first().to_owned())
                .collect()
        })
        .unwrap_or_default();

    // Every worker derives the same hash key from everything that shapes what the
    // exchange stores about a token — the auth service, the gateway's credentials, the
    // provider that checks answers (its rules and keys), the exchange's own checks, what
    // is minted — so that two configurations (two listeners, or one before and after an
    // update) never read each other's answers, and tokens are never kept as themselves.
    let checker = providers
        .get(provider)
        .map(|p| format!("{}\n{:?}\n{:?}", p.name, p.policy, p.keys))
        .unwrap_or_default();
    let minting = mint
        .as_ref()
        .map(|m| {
            format!(
                "{}\n{:?}\n{}\n{}",
                m.issuer, m.audience, m.ttl_secs, m.public_jwks
            )
        })
        .unwrap_or_default();
    let identity = format!(
        "{name}\n{}\n{uri_text}\n{cluster}\n{:?}\n{checker}\n{audiences:?}\n{max_secs} {negative_secs} {max_entries}\n{upstream:?}\n{params:?}\n{minting}\n{forwarded_claims:?}",
        mode.name(),
        client.as_ref().map(|c| (&c.id, &c.secret)),
    );
    let hash_key = hmac_sha256::HMAC::mac(identity.as_bytes(), b"tokengate exchange cache v1");
    let config_id = hmac_sha256::HMAC::mac(b"shared data", hash_key);
    let shared_prefix = format!(
        "tokengate.x.{name}.{}",
        config_id
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );

    Ok(Exchange {
        name: name.to_owned(),
        sources,
        mode,
        endpoint: Endpoint {
            uri,
            cluster,
            timeout_ms,
        },
        client,
        provider,
        audiences,
        cache: CachePolicy {
            max_secs,
            negative_secs,
            max_entries,
        },
        upstream,
        params,
        mint,
        max_token_bytes,
        hash_key,
        shared_prefix,
        forwarded_claims,
    })
}

fn compile_mint(at: &str, mut raw: Slots) -> Result<Mint, ConfigError> {
    let issuer = raw.string("issuer").unwrap_or_default();
    if issuer.is_empty() {
        return Err(ConfigError::new(
            format!("{at}.issuer"),
            "must be non-empty",
        ));
    }
    let alg = match raw.string("alg").as_deref() {
        Some("ES256") => Alg::ES256,
        Some("EdDSA") => Alg::EdDSA,
        _ => {
            return Err(ConfigError::new(
                format!("{at}.alg"),
                "must be \"ES256\" or \"EdDSA\"",
            ))
        }
    };
    // The message never repeats the key: it names what is wrong with it.
    let key = MintKey::from_jwk(&raw.value("key").unwrap_or_default(), alg)
        .map_err(|e| ConfigError::new(format!("{at}.key"), e.describe()))?;
    let ttl_secs = bounded(
        format!("{at}.ttl_secs"),
        raw.u64("ttl_secs"),
        DEFAULT_MINT_TTL_SECS,
        1,
        86_400,
    )?;
    let jwks_path = raw.string("jwks_path");
    if jwks_path
        .as_ref()
        .is_some_and(|p| !p.starts_with('/') || p.contains(['?', '#']))
    {
        return Err(ConfigError::new(
            format!("{at}.jwks_path"),
            "must be a path starting with '/'",
        ));
    }
    let public_jwks = json!({"keys": [key.public_jwk()]}).to_string();
    Ok(Mint {
        issuer,
        key,
        ttl_secs,
        audience: raw.string("audience"),
        jwks_path,
        public_jwks,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::exchange::tests_support::exchange_json;
    use crate::testutil::*;
    use serde_json::{json, Value};

    fn error_for(exchange: Value) -> (String, String) {
        let doc = json!({
            "providers": { "corp": { "issuer": ISSUER, "jwks": { "inline": public_jwks() } } },
            "exchanges": { "opaque": exchange }
        });
        let e = Config::from_json(doc.to_string().as_bytes()).unwrap_err();
        (e.path, e.message)
    }

    fn with(mode: &str, change: impl FnOnce(&mut Value)) -> Value {
        let mut exchange = exchange_json(mode);
        change(&mut exchange);
        exchange
    }

    #[test]
    fn every_field_is_checked_with_its_path() {
        let cases = [
            (
                with("introspection", |e| e["mode"] = json!("magic")),
                "exchanges.opaque.mode",
            ),
            (
                with("introspection", |e| e["provider"] = json!("nobody")),
                "exchanges.opaque.provider",
            ),
            (
                with("introspection", |e| e["endpoint"]["uri"] = json!("ftp://x")),
                "exchanges.opaque.endpoint.uri",
            ),
            (
                with("introspection", |e| e["endpoint"]["bogus"] = json!(1)),
                "exchanges.opaque.endpoint.bogus",
            ),
            (
                with("introspection", |e| {
                    e.as_object_mut().unwrap().remove("client");
                }),
                "exchanges.opaque.client",
            ),
            (
                with("introspection", |e| e["cache"]["max_entries"] = json!(0)),
                "exchanges.opaque.cache.max_entries",
            ),
            (
                with("introspection", |e| e["upstream"]["header"] = json!("host")),
                "exchanges.opaque.upstream.header",
            ),
            (
                with("introspection", |e| {
                    e["token_exchange"] = json!({"scope": "x"})
                }),
                "exchanges.opaque.token_exchange",
            ),
            (
                with("session", |e| {
                    e["endpoint"]["uri"] = json!("http://s/sessions")
                }),
                "exchanges.opaque.endpoint.uri",
            ),
        ];
        for (exchange, path) in cases {
            assert_eq!(error_for(exchange).0, path);
        }
    }

    #[test]
    fn a_mint_key_that_is_public_only_or_of_another_type_is_refused_without_echoing_it() {
        let mut public = private_jwk("es256");
        public.as_object_mut().unwrap().remove("d");
        let mint = |key: Value, alg: &str| {
            with("introspection", |e| {
                e["mint"] = json!({"issuer": "https://gw", "alg": alg, "key": key})
            })
        };
        let (path, message) = error_for(mint(public, "ES256"));
        assert_eq!(path, "exchanges.opaque.mint.key");
        assert!(message.contains("public key"), "{message}");
        let rsa = private_jwk("rs256");
        let (path, message) = error_for(mint(rsa.clone(), "ES256"));
        assert_eq!(path, "exchanges.opaque.mint.key");
        assert!(!message.contains(rsa["d"].as_str().unwrap()));
        assert_eq!(
            error_for(mint(private_jwk("eddsa"), "RS256")).0,
            "exchanges.opaque.mint.alg"
        );
    }

    #[test]
    fn an_exchange_may_not_share_a_providers_name_and_rules_can_name_it() {
        let doc = json!({
            "providers": { "corp": { "issuer": ISSUER, "jwks": { "inline": public_jwks() } } },
            "exchanges": { "corp": exchange_json("introspection") }
        });
        assert_eq!(
            Config::from_json(doc.to_string().as_bytes())
                .unwrap_err()
                .path,
            "exchanges.corp"
        );
        let doc = json!({
            "providers": { "corp": { "issuer": ISSUER, "jwks": { "inline": public_jwks() } } },
            "exchanges": { "opaque": exchange_json("introspection") },
            "rules": [{ "match": {}, "authn": { "any": ["opaque", "corp"] } }]
        });
        let config = Config::from_json(doc.to_string().as_bytes()).unwrap();
        // The upstream header is an identity header: stripped from every request.
        assert!(config.identity_headers.contains(&"authorization".into()));
    }
}
