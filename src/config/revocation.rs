//! A provider's `revocation` section: read (field tables) and compiled into a
//! [`Revocation`] (status lists, back-channel logout).

use super::{field_path, optional, required, ConfigError, Field, Kind, Reader, Shape, Slots};
use crate::revocation::{origin_of, Backchannel, Revocation, StatusListPolicy};
use serde_json::Value;

pub(super) const REVOCATION_FIELDS: &[Field] = &[
    optional(
        "status_list",
        Kind::Object,
        "Token Status List (draft-ietf-oauth-status-list): a verified token's status.status_list entry is looked up in its list, fetched from an allowed origin and verified with this provider's keys; an entry other than VALID is refused with 401.",
    )
    .nested(Shape::Object(STATUS_LIST_FIELDS)),
    optional(
        "backchannel_logout",
        Kind::Object,
        "OpenID Connect Back-Channel Logout 1.0: the filter answers POST <path> (form logout_token) itself; tokens of a logged-out sub/sid issued before the logout are refused.",
    )
    .nested(Shape::Object(BACKCHANNEL_FIELDS)),
];
const STATUS_LIST_FIELDS: &[Field] = &[
    required(
        "origins",
        Kind::StringMap,
        "Allowed list origins (scheme://host[:port]) to the Envoy cluster each is fetched through; a token naming a list elsewhere is refused, never fetched.",
    ),
    optional(
        "max_ttl_secs",
        Kind::U64,
        "The longest a list is used before it is fetched again, whatever its ttl says (default 300, 1-86400).",
    ),
    optional(
        "timeout_ms",
        Kind::U64,
        "List fetch timeout in milliseconds (default 1000, 1-60000).",
    ),
    optional(
        "max_list_bytes",
        Kind::Usize,
        "A list bigger than this once decompressed is a failed fetch (default 1048576, 1-16777216).",
    ),
    optional(
        "on_unavailable",
        Kind::String,
        "When a token's list can't be fetched or verified: deny (503, default) or allow (counted).",
    )
    .nested(Shape::OneOf(&["deny", "allow"])),
    optional(
        "require_status",
        Kind::Bool,
        "Refuse tokens without a status.status_list claim (default false).",
    ),
];
const BACKCHANNEL_FIELDS: &[Field] = &[
    required(
        "path",
        Kind::String,
        "The path (starting with /) where the filter answers the identity provider's POST, before any rule runs.",
    ),
    required(
        "client_id",
        Kind::String,
        "The logout token's aud must contain this client id.",
    ),
    optional(
        "max_token_lifetime_secs",
        Kind::U64,
        "How long a logout is remembered: the provider's longest token lifetime (default 3600, 1-2592000).",
    ),
];

pub const DEFAULT_MAX_TTL_SECS: u64 = 300;
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
pub const DEFAULT_MAX_LIST_BYTES: u64 = 1024 * 1024;
/// A list token may be twice this (plus 16 KB) before decoding: bounded so that one
/// fetch can't ask for more than 32 MB of a worker's memory.
const MAX_MAX_LIST_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_MAX_TOKEN_LIFETIME_SECS: u64 = 3600;

/// A provider's `revocation`, each nested object read with its own table.
#[derive(Debug)]
pub struct RawRevocation {
    pub status_list: Option<Slots>,
    pub backchannel: Option<Slots>,
}

impl Reader {
    pub(super) fn revocation(&self, value: Value, at: &str) -> Result<RawRevocation, ConfigError> {
        let mut fields = self.read(value, at, REVOCATION_FIELDS)?;
        let mut nested = |name: &str, table: &'static [Field]| {
            fields
                .value(name)
                .map(|value| self.read(value, &field_path(at, name), table))
                .transpose()
        };
        Ok(RawRevocation {
            status_list: nested("status_list", STATUS_LIST_FIELDS)?,
            backchannel: nested("backchannel_logout", BACKCHANNEL_FIELDS)?,
        })
    }
}

/// Compiles `providers.<name>.revocation` (`at`).
pub(super) fn compile_revocation(at: &str, raw: RawRevocation) -> Result<Revocation, ConfigError> {
    let status_list = raw
        .status_list
        .map(|fields| compile_status_list(&field_path(at, "status_list"), fields))
        .transpose()?;
    let backchannel = raw
        .backchannel
        .map(|fields| compile_backchannel(&field_path(at, "backchannel_logout"), fields))
        .transpose()?;
    Ok(Revocation {
        status_list,
        backchannel,
    })
}

fn compile_status_list(at: &str, mut fields: Slots) -> Result<StatusListPolicy, ConfigError> {
    let origins_at = field_path(at, "origins");
    let mut origins = Vec::new();
    if let Some(Value::Object(map)) = fields.value("origins") {
        for (origin, cluster) in map {
            let entry_at = field_path(&origins_at, &origin);
            let normalized = origin.strip_suffix('/').unwrap_or(&origin);
            match origin_of(normalized) {
                Some((parsed, uri)) if uri.path == "/" && !normalized.ends_with('?') => {
                    let cluster = cluster.as_str().unwrap_or_default().to_owned();
                    if cluster.is_empty() {
                        return Err(ConfigError::new(entry_at, "the cluster must be non-empty"));
                    }
                    origins.push((parsed, cluster));
                }
                _ => return Err(ConfigError::new(
                    entry_at,
                    "must be an origin: http:// or https://, a host and an optional port, no path",
                )),
            }
        }
    }
    if origins.is_empty() {
        return Err(ConfigError::new(
            origins_at,
            "must allow at least one origin",
        ));
    }
    let max_ttl_secs = super::exchange::bounded(
        field_path(at, "max_ttl_secs"),
        fields.u64("max_ttl_secs"),
        DEFAULT_MAX_TTL_SECS,
        1,
        86_400,
    )?;
    let timeout_ms = super::exchange::bounded(
        field_path(at, "timeout_ms"),
        fields.u64("timeout_ms"),
        DEFAULT_TIMEOUT_MS,
        1,
        60_000,
    )?;
    let max_list_bytes = super::exchange::bounded(
        field_path(at, "max_list_bytes"),
        fields.u64("max_list_bytes"),
        DEFAULT_MAX_LIST_BYTES,
        1,
        MAX_MAX_LIST_BYTES,
    )?;
    let allow_unavailable = match fields.string("on_unavailable").as_deref() {
        None | Some("deny") => false,
        Some("allow") => true,
        Some(_) => {
            return Err(ConfigError::new(
                field_path(at, "on_unavailable"),
                "must be \"deny\" or \"allow\"",
            ))
        }
    };
    Ok(StatusListPolicy {
        origins,
        max_ttl_secs,
        timeout_ms,
        max_list_bytes: usize::try_from(max_list_bytes).unwrap_or(usize::MAX),
        allow_unavailable,
        require_status: fields.bool("require_status").unwrap_or(false),
    })
}

fn compile_backchannel(at: &str, mut fields: Slots) -> Result<Backchannel, ConfigError> {
    let path = fields.string("path").unwrap_or_default();
    if !path.starts_with('/') || path.contains(['?', '#']) || path.bytes().any(|b| b <= b' ') {
        return Err(ConfigError::new(
            field_path(at, "path"),
            "must be a path starting with / without a query",
        ));
    }
    let client_id = fields.string("client_id").unwrap_or_default();
    if client_id.is_empty() {
        return Err(ConfigError::new(
            field_path(at, "client_id"),
            "must be non-empty",
        ));
    }
    let max_token_lifetime_secs = super::exchange::bounded(
        field_path(at, "max_token_lifetime_secs"),
        fields.u64("max_token_lifetime_secs"),
        DEFAULT_MAX_TOKEN_LIFETIME_SECS,
        1,
        2_592_000,
    )?;
    Ok(Backchannel {
        path,
        client_id,
        max_token_lifetime_secs,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use crate::testutil::*;
    use serde_json::{json, Value};

    fn compile(revocation: Value) -> Result<Config, ConfigError> {
        let doc = json!({
            "providers": { "corp": { "issuer": ISSUER, "jwks": { "inline": public_jwks() },
                                     "revocation": revocation } }
        });
        Config::from_json(doc.to_string().as_bytes())
    }

    fn error_for(revocation: Value) -> (String, String) {
        let e = compile(revocation).unwrap_err();
        (e.path, e.message)
    }

    #[test]
    fn the_contracts_example_compiles_with_its_defaults() {
        let config = compile(json!({
            "status_list": { "origins": { "https://IdP.example.com/": "idp" } },
            "backchannel_logout": { "path": "/oauth2/backchannel-logout", "client_id": "gateway" }
        }))
        .unwrap();
        let revocation = config.providers[0].revocation.clone().unwrap();
        let list = revocation.status_list.unwrap();
        assert_eq!(
            list.origins,
            vec![("https://idp.example.com".to_owned(), "idp".to_owned())]
        );
        assert_eq!(
            (list.max_ttl_secs, list.timeout_ms, list.max_list_bytes),
            (300, 1000, 1 << 20)
        );
        assert!(!list.allow_unavailable && !list.require_status);
        let backchannel = revocation.backchannel.unwrap();
        assert_eq!(backchannel.max_token_lifetime_secs, 3600);
        assert_eq!(
            config.backchannel_paths,
            vec![("/oauth2/backchannel-logout".to_owned(), 0)]
        );
        assert!(config.reads.path && config.reads.method);
    }

    #[test]
    fn an_origin_with_a_path_or_another_scheme_is_refused_at_its_path() {
        for origin in ["https://idp/lists", "ftp://idp", "idp.example.com"] {
            let (path, _) = error_for(json!({"status_list": {"origins": {origin: "idp"}}}));
            assert_eq!(
                path,
                format!("providers.corp.revocation.status_list.origins.{origin}")
            );
        }
        let (path, _) = error_for(json!({"status_list": {"origins": {}}}));
        assert_eq!(path, "providers.corp.revocation.status_list.origins");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (
                json!({"status_list": {"origins": {"https://i": "c"}, "on_unavailable": "maybe"}}),
                "providers.corp.revocation.status_list.on_unavailable",
            ),
            (
                json!({"status_list": {"origins": {"https://i": "c"}, "max_ttl_secs": 0}}),
                "providers.corp.revocation.status_list.max_ttl_secs",
            ),
            (
                json!({"status_list": {"origins": {"https://i": "c"}, "surprise": 1}}),
                "providers.corp.revocation.status_list.surprise",
            ),
            (
                json!({"backchannel_logout": {"path": "logout", "client_id": "g"}}),
                "providers.corp.revocation.backchannel_logout.path",
            ),
            (
                json!({"backchannel_logout": {"path": "/l", "client_id": ""}}),
                "providers.corp.revocation.backchannel_logout.client_id",
            ),
            (
                json!({"backchannel_logout": {"path": "/l"}}),
                "providers.corp.revocation.backchannel_logout",
            ),
        ];
        for (revocation, at) in cases {
            assert_eq!(error_for(revocation.clone()).0, at, "{revocation}");
        }
    }
}
