//! Verifying a compact JWS: size cap, strict parse, header checks, claim checks, key
//! selection, signature. `now` is passed in; nothing here reads a clock.
//!
//! Order matters for cost and for key refetches: everything cheap and local (header,
//! issuer, audience, time) is checked before a key is looked up, so a token that would
//! be refused anyway never costs a signature check or a JWKS refetch.

use crate::alg::Alg;
use crate::b64;
use crate::error::AuthnError;
use crate::jwks::KeySet;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Tokens without `kid` are tried against at most this many keys.
const MAX_KEYLESS_CANDIDATES: usize = 8;

/// What a provider accepts, independent of where its keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub issuer: String,
    /// Empty: `aud` is not checked.
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    /// Normalized (lowercase, no `application/`); `None`: `typ` is not checked.
    pub token_types: Option<Vec<String>>,
    pub clock_skew_secs: u64,
    pub require_exp: bool,
    pub max_token_bytes: usize,
}

/// The token's validity window, kept with cache entries so every hit re-checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
}

/// A token whose signature and claims passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub claims: Map<String, Value>,
    /// The payload segment as it was in the token (base64url of the claims JSON).
    pub payload_segment: String,
    pub lifetime: Lifetime,
    pub alg: Alg,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    // Present with any value at all (even null) means the token is refused.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// Normalizes a `typ` value or a configured token type for comparison (RFC 7515 §4.1.9).
pub fn normalize_token_type(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => lower,
    }
}

/// Verifies `token` against `policy` and `keys` at time `now` (seconds since the epoch).
pub fn verify(token: &str, policy: &Policy, keys: &KeySet, now: u64) -> Result<Verified, AuthnError> {
    if token.len() > policy.max_token_bytes {
        return Err(AuthnError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthnError::Malformed);
    };
    let header_json = b64::decode(header_b64.as_bytes()).ok_or(AuthnError::Malformed)?;
    let header: Header = serde_json::from_slice(&header_json).map_err(|_| AuthnError::Malformed)?;
    let alg = Alg::from_name(&header.alg).ok_or(AuthnError::AlgNotAllowed)?;
    if !policy.algorithms.contains(&alg) {
        return Err(AuthnError::AlgNotAllowed);
    }
    if header.crit {
        return Err(AuthnError::CritUnsupported);
    }
    if let Some(allowed) = &policy.token_types {
        let typ = header.typ.as_deref().map(normalize_token_type);
        if !typ.is_some_and(|typ| allowed.contains(&typ)) {
            return Err(AuthnError::TokenTypeNotAllowed);
        }
    }
    let payload_json = b64::decode(payload_b64.as_bytes()).ok_or(AuthnError::Malformed)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload_json).map_err(|_| AuthnError::Malformed)?;
    let signature = b64::decode(signature_b64.as_bytes()).ok_or(AuthnError::Malformed)?;

    if claims.get("iss").and_then(Value::as_str) != Some(policy.issuer.as_str()) {
        return Err(AuthnError::IssuerNotAllowed);
    }
    if !policy.audiences.is_empty() && !audience_matches(claims.get("aud"), &policy.audiences) {
        return Err(AuthnError::AudienceNotAllowed);
    }
    let lifetime = Lifetime {
        exp: numeric_date(claims.get("exp"))?,
        nbf: numeric_date(claims.get("nbf"))?,
    };
    check_lifetime(lifetime, policy, now)?;

    let signing_input_len = header_b64.len() + 1 + payload_b64.len();
    let signing_input = token.as_bytes().get(..signing_input_len).ok_or(AuthnError::Malformed)?;
    let mut candidates = keys.with_kid(header.kid.as_deref(), alg).take(MAX_KEYLESS_CANDIDATES).peekable();
    if candidates.peek().is_none() {
        return Err(AuthnError::UnknownKid);
    }
    let mut fitting = candidates.filter(|key| key.allows(alg)).peekable();
    if fitting.peek().is_none() {
        // The kid exists but is a different kind of key (e.g. HS256 naming an RSA key).
        return Err(AuthnError::AlgNotAllowed);
    }
    if !fitting.any(|key| key.key.verify(alg, signing_input, &signature)) {
        return Err(AuthnError::BadSignature);
    }
    Ok(Verified { claims, payload_segment: payload_b64.to_owned(), lifetime, alg })
}

/// Checks `exp` and `nbf` with the provider's clock skew. Called on every cache hit too.
pub fn check_lifetime(lifetime: Lifetime, policy: &Policy, now: u64) -> Result<(), AuthnError> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let skew = i64::try_from(policy.clock_skew_secs).unwrap_or(i64::MAX);
    match lifetime.exp {
        Some(exp) if now >= exp.saturating_add(skew) => return Err(AuthnError::Expired),
        None if policy.require_exp => return Err(AuthnError::MissingExp),
        _ => {}
    }
    match lifetime.nbf {
        Some(nbf) if now.saturating_add(skew) < nbf => Err(AuthnError::NotYetValid),
        _ => Ok(()),
    }
}

fn audience_matches(aud: Option<&Value>, allowed: &[String]) -> bool {
    match aud {
        Some(Value::String(one)) => allowed.iter().any(|a| a == one),
        Some(Value::Array(many)) => many
            .iter()
            .filter_map(Value::as_str)
            .any(|one| allowed.iter().any(|a| a == one)),
        _ => false,
    }
}

/// A NumericDate (RFC 7519 §2): a JSON number, possibly fractional. Anything else
/// where a date must be is a malformed token.
fn numeric_date(value: Option<&Value>) -> Result<Option<i64>, AuthnError> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                // Saturating float-to-int conversion; fractions round down.
                Ok(Some(f.floor() as i64))
            } else {
                Err(AuthnError::Malformed)
            }
        }
        Some(_) => Err(AuthnError::Malformed),
    }
}

/// True if the string has the shape of a compact JWS (three base64url-alphabet parts).
/// Used to decide whether a token is tried against providers before exchanges.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        parts += 1;
        if part.is_empty() && parts < 3 {
            return false;
        }
        if !part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return false;
        }
    }
    parts == 3
}
