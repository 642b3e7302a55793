//! Authorization in the document: a rule's `authz` tree, `authz_service`, `paths`.

use super::{
    field_path, header_name, item_path, optional, required, ConfigError, Field, Kind, Reader,
    Shape, Slots,
};
use crate::policy::authz::{ClaimTest, Condition, HeaderTest};
use crate::policy::central::AuthzService;
use crate::policy::rules::PathMatch;
use crate::token::claims::ClaimPath;
use serde_json::Value;

const ALL_FIELDS: &[Field] =
    &[required("all", Kind::Array, "Every condition must hold.").nested(Shape::Conditions)];
const ANY_FIELDS: &[Field] =
    &[required("any", Kind::Array, "At least one condition must hold.").nested(Shape::Conditions)];
const NOT_FIELDS: &[Field] =
    &[
        required("not", Kind::Object, "The condition or tree must not hold.")
            .nested(Shape::Condition),
    ];
const CLAIM_FIELDS: &[Field] = &[
    required(
        "claim",
        Kind::String,
        "A claim path (dot-separated) of the verified identity. Without an identity, every claim test fails. Exactly one of equals, contains, in or prefix.",
    ),
    optional(
        "equals",
        Kind::Any,
        "The claim is this string, number or boolean.",
    )
    .nested(Shape::Scalar),
    optional(
        "contains",
        Kind::String,
        "An array claim (scp) holds this string, or a space-separated string claim (scope) has it as one of its words.",
    ),
    optional(
        "in",
        Kind::Array,
        "The claim (or, for an array claim, one of its elements) is one of these.",
    )
    .nested(Shape::Scalars),
    optional(
        "prefix",
        Kind::String,
        "A string claim starts with this.",
    ),
];
const HEADER_FIELDS: &[Field] = &[
    required(
        "header",
        Kind::String,
        "A request header name. Exactly one of equals, present or equals_claim.",
    ),
    optional(
        "equals",
        Kind::String,
        "The header's value is exactly this.",
    ),
    optional(
        "present",
        Kind::Bool,
        "true: the header is present; false: absent.",
    ),
    optional(
        "equals_claim",
        Kind::String,
        "The header's value equals this claim path's value (strings as they are, numbers and booleans as JSON): a tenant header against a tenant claim.",
    ),
];
const PATH_PARAM_FIELDS: &[Field] = &[
    required(
        "path_param",
        Kind::String,
        "A {name} of the rule's path template.",
    ),
    required(
        "equals_claim",
        Kind::String,
        "The claim path whose value the parameter's segment must equal (a user may read /users/{id} only where id is their sub).",
    ),
];
const METHOD_FIELDS: &[Field] = &[required(
    "method",
    Kind::Strings,
    "The request's method is one of these (non-empty).",
)];
/// The key that says which kind of condition an object is, with its fields.
pub(super) const CONDITION_KINDS: &[(&str, &[Field])] = &[
    ("all", ALL_FIELDS),
    ("any", ANY_FIELDS),
    ("not", NOT_FIELDS),
    ("claim", CLAIM_FIELDS),
    ("header", HEADER_FIELDS),
    ("path_param", PATH_PARAM_FIELDS),
    ("method", METHOD_FIELDS),
];
/// Trees deeper than this are refused: evaluation recurses.
const MAX_DEPTH: usize = 16;

pub const AUTHZ_SERVICE_FIELDS: &[Field] = &[
    required(
        "uri",
        Kind::String,
        "The policy's http:// or https:// URL (OPA: /v1/data/<path>). The OPA-Envoy input plus input.identity is POSTed to it.",
    ),
    required(
        "cluster",
        Kind::String,
        "The Envoy cluster the callout goes through.",
    ),
    optional(
        "timeout_ms",
        Kind::U64,
        "Callout timeout in milliseconds (default 200, 1-60000).",
    ),
    optional(
        "cache_secs",
        Kind::U64,
        "How long a decision is kept, keyed by the whole input, identity included (default 5, 0-3600).",
    ),
    optional(
        "on_error",
        Kind::String,
        "When the service can't decide (down, slow, garbage): deny (503, the default) or allow (counted as tokengate.authz_service.failure).",
    )
    .nested(Shape::OneOf(&["deny", "allow"])),
    optional(
        "include_headers",
        Kind::Strings,
        "Request headers copied into the input (default none): no credential reaches the policy by accident, and volatile headers don't defeat the cache.",
    ),
];
pub const PATHS_FIELDS: &[Field] = &[optional(
    "allow_encoded_slashes",
    Kind::Bool,
    "Let %2F through in a path, matched as the literal %2F (default false: refused with 400).",
)];

const DEFAULT_AUTHZ_TIMEOUT_MS: u64 = 200;
const DEFAULT_AUTHZ_CACHE_SECS: u64 = 5;

/// An `authz` tree as written, every node with its path for errors.
pub struct RawCondition {
    at: String,
    kind: &'static str,
    fields: Slots,
    children: Vec<RawCondition>,
}

impl Reader {
    /// Reads a condition or tree at `at`.
    pub(super) fn condition(
        &self,
        value: Value,
        at: &str,
        depth: usize,
    ) -> Result<RawCondition, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(ConfigError::new(
                at,
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let Some((kind, table)) = CONDITION_KINDS
            .iter()
            .find(|(key, _)| value.get(key).is_some())
            .copied()
        else {
            return Err(ConfigError::new(
                at,
                "a condition needs one of `all`, `any`, `not`, `claim`, `header`, `path_param`, `method`",
            ));
        };
        let mut fields = self.read(value, at, table)?;
        let mut children = Vec::new();
        match kind {
            "all" | "any" => {
                let list_at = field_path(at, kind);
                if let Some(Value::Array(items)) = fields.value(kind) {
                    if items.is_empty() {
                        return Err(ConfigError::new(
                            list_at,
                            "must list at least one condition",
                        ));
                    }
                    for (index, item) in items.into_iter().enumerate() {
                        children.push(self.condition(
                            item,
                            &item_path(&list_at, index),
                            depth + 1,
                        )?);
                    }
                }
            }
            "not" => {
                if let Some(inner) = fields.value("not") {
                    children.push(self.condition(inner, &field_path(at, "not"), depth + 1)?);
                }
            }
            _ => {}
        }
        Ok(RawCondition {
            at: at.to_owned(),
            kind,
            fields,
            children,
        })
    }
}

fn claim_path(at: String, text: &str) -> Result<ClaimPath, ConfigError> {
    ClaimPath::parse(text)
        .ok_or_else(|| ConfigError::new(at, "claim path must be dot-separated non-empty names"))
}

/// Compiles a tree; `template` is the rule's path match, for `path_param`.
pub fn compile_condition(
    raw: RawCondition,
    template: Option<&PathMatch>,
) -> Result<Condition, ConfigError> {
    let RawCondition {
        at,
        kind,
        mut fields,
        children,
    } = raw;
    let compile_all = |children: Vec<RawCondition>| {
        children
            .into_iter()
            .map(|c| compile_condition(c, template))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match kind {
        "all" => Condition::All(compile_all(children)?),
        "any" => Condition::Any(compile_all(children)?),
        "not" => {
            let inner = children
                .into_iter()
                .next()
                .ok_or_else(|| ConfigError::new(&at, "`not` needs a condition"))?;
            Condition::Not(Box::new(compile_condition(inner, template)?))
        }
        "claim" => {
            let path = claim_path(
                field_path(&at, "claim"),
                &fields.string("claim").unwrap_or_default(),
            )?;
            let tests = [
                fields
                    .value("equals")
                    .map(|v| -> Result<ClaimTest, ConfigError> {
                        if v.is_array() || v.is_object() || v.is_null() {
                            return Err(ConfigError::new(
                                field_path(&at, "equals"),
                                "must be a string, number or boolean",
                            ));
                        }
                        Ok(ClaimTest::Equals(v))
                    }),
                fields
                    .string("contains")
                    .map(|s| Ok(ClaimTest::Contains(s))),
                fields.value("in").map(|v| match v {
                    Value::Array(items)
                        if !items.is_empty()
                            && items
                                .iter()
                                .all(|i| i.is_string() || i.is_number() || i.is_boolean()) =>
                    {
                        Ok(ClaimTest::In(items))
                    }
                    _ => Err(ConfigError::new(
                        field_path(&at, "in"),
                        "must list strings, numbers or booleans",
                    )),
                }),
                fields.string("prefix").map(|s| Ok(ClaimTest::Prefix(s))),
            ];
            let mut chosen = tests.into_iter().flatten();
            let (Some(test), None) = (chosen.next(), chosen.next()) else {
                return Err(ConfigError::new(
                    at,
                    "exactly one of `equals`, `contains`, `in` or `prefix` is required",
                ));
            };
            Condition::Claim { path, test: test? }
        }
        "header" => {
            let name = header_name(
                &field_path(&at, "header"),
                &fields.string("header").unwrap_or_default(),
            )?;
            let test = match (
                fields.string("equals"),
                fields.bool("present"),
                fields.string("equals_claim"),
            ) {
                (Some(value), None, None) => HeaderTest::Equals(value),
                (None, Some(present), None) => HeaderTest::Present(present),
                (None, None, Some(claim)) => {
                    HeaderTest::EqualsClaim(claim_path(field_path(&at, "equals_claim"), &claim)?)
                }
                _ => {
                    return Err(ConfigError::new(
                        at,
                        "exactly one of `equals`, `present` or `equals_claim` is required",
                    ))
                }
            };
            Condition::Header { name, test }
        }
        "path_param" => {
            let name = fields.string("path_param").unwrap_or_default();
            let segment = template
                .and_then(|t| t.param_segment(&name))
                .ok_or_else(|| {
                    ConfigError::new(
                        field_path(&at, "path_param"),
                        format!("the rule's path template has no {{{name}}}"),
                    )
                })?;
            let equals_claim = claim_path(
                field_path(&at, "equals_claim"),
                &fields.string("equals_claim").unwrap_or_default(),
            )?;
            Condition::PathParam {
                name,
                segment,
                equals_claim,
            }
        }
        _ => {
            let methods = fields.strings("method").unwrap_or_default();
            if methods.is_empty() {
                return Err(ConfigError::new(
                    field_path(&at, "method"),
                    "must list at least one method",
                ));
            }
            Condition::Method(methods.iter().map(|m| m.to_ascii_uppercase()).collect())
        }
    })
}

pub fn compile_authz_service(mut fields: Slots) -> Result<AuthzService, ConfigError> {
    let at = |field: &str| format!("authz_service.{field}");
    let (_, uri, cluster, timeout_ms) =
        super::exchange::callout_target("authz_service", &mut fields, DEFAULT_AUTHZ_TIMEOUT_MS)?;
    let cache_secs = fields.u64("cache_secs").unwrap_or(DEFAULT_AUTHZ_CACHE_SECS);
    if cache_secs > 3600 {
        return Err(ConfigError::new(
            at("cache_secs"),
            "must be between 0 and 3600",
        ));
    }
    let allow_on_error = match fields.string("on_error").as_deref() {
        None | Some("deny") => false,
        Some("allow") => true,
        Some(_) => {
            return Err(ConfigError::new(
                at("on_error"),
                "must be \"deny\" or \"allow\"",
            ))
        }
    };
    let mut include_headers = Vec::new();
    for (i, name) in fields
        .strings("include_headers")
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        include_headers.push(header_name(
            &format!("{}[{i}]", at("include_headers")),
            name,
        )?);
    }
    Ok(AuthzService {
        uri,
        cluster,
        timeout_ms,
        cache_secs,
        allow_on_error,
        include_headers,
    })
}
