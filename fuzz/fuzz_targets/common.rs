// Shared fixtures for the fuzz targets: a configuration with every key family inline.
#![allow(dead_code)]

use tokengate::config::Config;

pub const NOW: u64 = 1_800_000_000;

pub fn public_jwks() -> serde_json::Value {
    let keys: Vec<serde_json::Value> = ["rs256", "ps256", "es256", "es384", "eddsa", "hs256"]
        .iter()
        .map(|name| {
            let path = format!("{}/../tests/fixtures/keys/{name}.jwk", env!("CARGO_MANIFEST_DIR"));
            let jwk: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            tokengate::crypto::sign::SigningKey::from_jwk(&jwk).unwrap().public_jwk()
        })
        .collect();
    serde_json::json!({ "keys": keys })
}

pub fn config() -> Config {
    let doc = serde_json::json!({
        "realm": "fuzz",
        "providers": {
            "corp": {
                "issuer": "https://idp.test/realms/demo",
                "audiences": ["orders"],
                "jwks": { "inline": public_jwks() },
                "algorithms": ["RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256"],
                "sources": [{"header": "authorization", "prefix": "Bearer "}, {"cookie": "access_token"}, {"query": "access_token"}],
                "forward": { "payload_header": "x-jwt-payload", "claims": { "sub": "x-user-id", "realm_access.roles": "x-roles" } }
            }
        },
        "rules": [
            { "match": { "path": { "prefix": "/healthz" } }, "allow": "anonymous" },
            { "match": { "path": { "template": "/users/{id}/orders" }, "methods": ["GET"] }, "authn": { "any": ["corp"], "optional": true } },
            { "match": {}, "authn": { "any": ["corp"] } }
        ]
    });
    Config::from_json(doc.to_string().as_bytes()).unwrap()
}

/// A configuration with one exchange of this mode, through the `corp` provider.
pub fn exchange_config(mode: &str) -> Config {
    let uri = if mode == "session" { "http://auth/sessions/{token}" } else { "http://auth/introspect" };
    let doc = serde_json::json!({
        "providers": { "corp": {
            "issuer": "https://idp.test/realms/demo",
            "jwks": { "inline": public_jwks() },
            "forward": { "claims": { "sub": "x-user-id" } }
        } },
        "exchanges": { "opaque": {
            "mode": mode,
            "endpoint": { "uri": uri, "cluster": "auth" },
            "client": { "id": "gateway", "secret": "s3cret" },
            "provider": "corp",
            "audiences": ["orders"]
        } }
    });
    Config::from_json(doc.to_string().as_bytes()).unwrap()
}
