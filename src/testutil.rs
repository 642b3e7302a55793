//! Shared test fixtures: the keys in tests/fixtures/keys and token builders.

use crate::crypto::sign::SigningKey;
use crate::token::jwks::KeySet;
use serde_json::{json, Value};

pub const NOW: u64 = 1_800_000_000;
pub const ISSUER: &str = "https://idp.test/realms/demo";

pub fn private_jwk(name: &str) -> Value {
    let text = match name {
        "rs256" => include_str!("../tests/fixtures/keys/rs256.jwk"),
        "rs256-other" => include_str!("../tests/fixtures/keys/rs256-other.jwk"),
        "ps256" => include_str!("../tests/fixtures/keys/ps256.jwk"),
        "es256" => include_str!("../tests/fixtures/keys/es256.jwk"),
        "es384" => include_str!("../tests/fixtures/keys/es384.jwk"),
        "eddsa" => include_str!("../tests/fixtures/keys/eddsa.jwk"),
        "hs256" => include_str!("../tests/fixtures/keys/hs256.jwk"),
        other => panic!("no fixture key {other}"),
    };
    serde_json::from_str(text).unwrap()
}

pub fn signing_key(name: &str) -> SigningKey {
    SigningKey::from_jwk(&private_jwk(name)).unwrap()
}

/// The public JWKS of every fixture key except `rs256-other` (the attacker's key).
pub fn public_jwks() -> Value {
    let keys: Vec<Value> = ["rs256", "ps256", "es256", "es384", "eddsa", "hs256"]
        .iter()
        .map(|name| signing_key(name).public_jwk())
        .collect();
    json!({ "keys": keys })
}

pub fn keyset() -> KeySet {
    KeySet::from_value(&public_jwks()).unwrap().set
}

/// Claims valid at NOW for ISSUER and audience "orders".
pub fn good_claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": "orders",
        "sub": "alice",
        "scope": "read write",
        "exp": NOW + 600,
        "nbf": NOW - 10,
        "realm_access": {"roles": ["user", "admin"]}
    })
}

pub fn token(key: &str, claims: &Value) -> String {
    signing_key(key).sign(claims).unwrap()
}

pub fn token_with_header(key: &str, header: &Value, claims: &Value) -> String {
    signing_key(key).sign_with_header(header, claims).unwrap()
}
