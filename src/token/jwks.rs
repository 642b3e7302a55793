//! Key sets: parse a JWKS with hygiene, index by `kid`. Never fetches: where the bytes
//! come from (inline config, an HTTP callout) is someone else's business.

use crate::crypto::alg::Alg;
use crate::crypto::b64;
use crate::crypto::rsa_verify::{KeyError, RsaKey};
use crate::crypto::{Ed25519Key, P256Key, PublicKey};
use serde_json::Value;

/// The most bytes of JWKS JSON we parse; checked before parsing.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The most keys a set keeps; later ones are skipped.
pub const MAX_KEYS: usize = 64;
const MIN_RSA_BITS: usize = crate::crypto::rsa_verify::MIN_BITS;

/// One usable verification key.
#[derive(Debug, Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// The key's own `alg`, when the JWK names one: then only that algorithm may use it.
    pub alg: Option<Alg>,
    pub key: PublicKey,
}

impl Key {
    pub fn allows(&self, alg: Alg) -> bool {
        self.alg.is_none_or(|own| own == alg) && self.key.fits(alg)
    }
}

/// A parsed key set.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// Why a JWK in a set was not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    NotAnObject,
    /// `use` is not `sig` (an encryption key).
    NotForSignatures,
    /// `key_ops` present without `verify`.
    NoVerifyOperation,
    UnknownKeyType,
    UnknownCurve,
    /// A member is missing or not strict base64url of the right length.
    BadMember(&'static str),
    RsaTooSmall,
    RsaTooLarge,
    /// `e` is even or below 3.
    RsaBadExponent,
    /// The EC point is not on the curve (or is the identity).
    InvalidPoint,
    /// HMAC secret shorter than 32 bytes.
    SecretTooShort,
    /// `alg` is unknown or doesn't fit the key type.
    AlgMismatch,
    /// A key with the same `kid` came earlier in the set; the first one wins.
    DuplicateKid,
    TooManyKeys,
}

impl SkipReason {
    pub fn describe(&self) -> String {
        match self {
            SkipReason::NotAnObject => "not a JSON object".into(),
            SkipReason::NotForSignatures => "\"use\" is not \"sig\"".into(),
            SkipReason::NoVerifyOperation => "\"key_ops\" lacks \"verify\"".into(),
            SkipReason::UnknownKeyType => "unsupported \"kty\"".into(),
            SkipReason::UnknownCurve => "unsupported \"crv\"".into(),
            SkipReason::BadMember(name) => format!("\"{name}\" is missing or not valid base64url"),
            SkipReason::RsaTooSmall => format!("RSA modulus under {MIN_RSA_BITS} bits"),
            SkipReason::RsaTooLarge => "RSA modulus over 4096 bits".into(),
            SkipReason::RsaBadExponent => "RSA exponent is even or below 3".into(),
            SkipReason::InvalidPoint => "EC point is not on the curve".into(),
            SkipReason::SecretTooShort => "oct secret shorter than 32 bytes".into(),
            SkipReason::AlgMismatch => "\"alg\" is unknown or does not fit the key".into(),
            SkipReason::DuplicateKid => "duplicate \"kid\" (first key kept)".into(),
            SkipReason::TooManyKeys => format!("more than {MAX_KEYS} keys"),
        }
    }

    /// Keys that are legitimately in a set but not for us (e.g. encryption keys).
    pub fn is_benign(&self) -> bool {
        matches!(
            self,
            SkipReason::NotForSignatures | SkipReason::NoVerifyOperation
        )
    }
}

/// A key that was left out, with its position in `keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub index: usize,
    pub reason: SkipReason,
}

/// Why a whole key set was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    TooLarge,
    NotJson,
    /// No `keys` array.
    NoKeys,
    /// Parsed, but not one key is usable.
    NoUsableKey,
    /// An object names a member twice: read one way here, maybe another elsewhere.
    RepeatedMember,
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JwksError::TooLarge => "JWKS larger than the size cap",
            JwksError::NotJson => "JWKS is not valid JSON",
            JwksError::RepeatedMember => "JWKS names a member twice in one object",
            JwksError::NoKeys => "JWKS has no \"keys\" array",
            JwksError::NoUsableKey => "JWKS has no usable signing key",
        })
    }
}

/// A parsed set and what was left out of it.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub set: KeySet,
    pub skipped: Vec<Skipped>,
}

impl KeySet {
    /// Parses JWKS bytes, capping the size before decoding anything.
    pub fn parse(bytes: &[u8]) -> Result<Parsed, JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|_| JwksError::NotJson)?;
        if crate::json::has_repeated_member(bytes) {
            return Err(JwksError::RepeatedMember);
        }
        KeySet::from_value(&value)
    }

    /// Builds a set from an already parsed JWKS object.
    pub fn from_value(value: &Value) -> Result<Parsed, JwksError> {
        let entries = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NoKeys)?;
        let mut keys: Vec<Key> = Vec::new();
        let mut skipped = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let outcome = if keys.len() >= MAX_KEYS {
                Err(SkipReason::TooManyKeys)
            } else {
                parse_key(entry)
            };
            match outcome {
                Ok(key) if key.kid.is_some() && keys.iter().any(|k| k.kid == key.kid) => skipped
                    .push(Skipped {
                        index,
                        reason: SkipReason::DuplicateKid,
                    }),
                Ok(key) => keys.push(key),
                Err(reason) => skipped.push(Skipped { index, reason }),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(Parsed {
            set: KeySet { keys },
            skipped,
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The keys with this `kid` (at most one: duplicates are dropped when parsing), or,
    /// for a token without `kid`, every key that allows `alg`.
    pub fn with_kid<'a>(&'a self, kid: Option<&'a str>, alg: Alg) -> impl Iterator<Item = &'a Key> {
        self.keys.iter().filter(move |key| match kid {
            Some(kid) => key.kid.as_deref() == Some(kid),
            None => key.allows(alg),
        })
    }

    /// Whether any key could verify this algorithm (used for the default allow-list).
    pub fn any_allows(&self, alg: Alg) -> bool {
        self.keys.iter().any(|key| key.allows(alg))
    }
}

fn parse_key(entry: &Value) -> Result<Key, SkipReason> {
    let obj = entry.as_object().ok_or(SkipReason::NotAnObject)?;
    let text = |name: &str| obj.get(name).and_then(Value::as_str);
    if let Some(usage) = obj.get("use") {
        if usage.as_str() != Some("sig") {
            return Err(SkipReason::NotForSignatures);
        }
    }
    if let Some(ops) = obj.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err(SkipReason::NoVerifyOperation);
        }
    }
    let key = match text("kty") {
        Some("RSA") => rsa_key(obj)?,
        Some("EC") => match text("crv") {
            Some("P-256") => {
                let point = ec_point(obj, 32)?;
                PublicKey::P256(P256Key::from_sec1_bytes(&point).ok_or(SkipReason::InvalidPoint)?)
            }
            Some("P-384") => {
                let point = ec_point(obj, 48)?;
                PublicKey::P384(
                    p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                        .map_err(|_| SkipReason::InvalidPoint)?,
                )
            }
            _ => return Err(SkipReason::UnknownCurve),
        },
        Some("OKP") => match text("crv") {
            Some("Ed25519") => {
                let x = member(obj, "x", Some(32))?;
                PublicKey::Ed25519(Ed25519Key::from_bytes(&x).ok_or(SkipReason::InvalidPoint)?)
            }
            _ => return Err(SkipReason::UnknownCurve),
        },
        Some("oct") => {
            let secret = member(obj, "k", None)?;
            if secret.len() < 32 {
                return Err(SkipReason::SecretTooShort);
            }
            PublicKey::Oct(secret)
        }
        _ => return Err(SkipReason::UnknownKeyType),
    };
    let alg = match obj.get("alg") {
        None => None,
        Some(name) => {
            let alg = name
                .as_str()
                .and_then(Alg::from_name)
                .ok_or(SkipReason::AlgMismatch)?;
            if !key.fits(alg) {
                return Err(SkipReason::AlgMismatch);
            }
            Some(alg)
        }
    };
    Ok(Key {
        kid: text("kid").map(str::to_owned),
        alg,
        key,
    })
}

fn member(
    obj: &serde_json::Map<String, Value>,
    name: &'static str,
    len: Option<usize>,
) -> Result<Vec<u8>, SkipReason> {
    let bytes = obj
        .get(name)
        .and_then(Value::as_str)
        .and_then(|s| b64::decode(s.as_bytes()))
        .ok_or(SkipReason::BadMember(name))?;
    match len {
        Some(len) if bytes.len() != len => Err(SkipReason::BadMember(name)),
        _ => Ok(bytes),
    }
}

fn ec_point(
    obj: &serde_json::Map<String, Value>,
    coordinate_len: usize,
) -> Result<Vec<u8>, SkipReason> {
    let x = member(obj, "x", Some(coordinate_len))?;
    let y = member(obj, "y", Some(coordinate_len))?;
    let mut point = Vec::with_capacity(1 + 2 * coordinate_len);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok(point)
}

fn rsa_key(obj: &serde_json::Map<String, Value>) -> Result<PublicKey, SkipReason> {
    let n = member(obj, "n", None)?;
    let e = member(obj, "e", None)?;
    // Montgomery parameters are computed here, once per key, not per token.
    RsaKey::new(&n, &e)
        .map(PublicKey::Rsa)
        .map_err(|error| match error {
            KeyError::TooSmall => SkipReason::RsaTooSmall,
            KeyError::TooLarge => SkipReason::RsaTooLarge,
            _ => SkipReason::RsaBadExponent,
        })
}
