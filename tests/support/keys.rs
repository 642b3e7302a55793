//! Signing keys shared by every test of the binary (RSA key generation is slow, so it
//! happens once, on two threads), and token helpers.

use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};
use tokengate::crypto::alg::Alg;
use tokengate::crypto::sign::{generate_jwk, SigningKey};

/// Key ids as they appear in the configured JWKS.
pub const KID_RS256: &str = "rsa-1";
pub const KID_PS256: &str = "rsa-ps";
pub const KID_ES256: &str = "ec-256";
pub const KID_ES384: &str = "ec-384";
pub const KID_EDDSA: &str = "ed-1";
pub const KID_HS256: &str = "hs-1";
/// A key that signs with jwt-simple (an independent implementation).
pub const KID_JWT_SIMPLE: &str = "ec-js";

pub struct Keys {
    /// RS256, published under [`KID_RS256`].
    pub rs256: SigningKey,
    /// A second RSA key, published for PS256 under [`KID_PS256`].
    pub ps256: SigningKey,
    /// The PS256 key's private half signing RS256 under [`KID_RS256`]: a signature by
    /// another key with a kid that exists.
    pub impostor: SigningKey,
    pub es256: SigningKey,
    pub es384: SigningKey,
    pub eddsa: SigningKey,
    /// An HS256 secret, published (inline, `oct`) under [`KID_HS256`].
    pub hs256: SigningKey,
    /// A key never published anywhere.
    pub stranger: SigningKey,
    /// jwt-simple's ES256 key pair, published under [`KID_JWT_SIMPLE`].
    pub jwt_simple: jwt_simple::algorithms::ES256KeyPair,
}

impl Keys {
    /// The public JWKS of every asymmetric key (what the main provider trusts).
    pub fn public_jwks(&self) -> Value {
        let js: Value = serde_json::from_str(&self.jwt_simple.public_key().to_jwk())
            .expect("jwt-simple JWK is JSON");
        json!({"keys": [
            self.rs256.public_jwk(),
            self.ps256.public_jwk(),
            self.es256.public_jwk(),
            self.es384.public_jwk(),
            self.eddsa.public_jwk(),
            js,
        ]})
    }

    /// The inline JWKS with the HS256 secret.
    pub fn hs_jwks(&self) -> Value {
        json!({"keys": [self.hs256.public_jwk()]})
    }
}

fn key(alg: Alg, kid: &str) -> SigningKey {
    let jwk = generate_jwk(alg, kid).unwrap_or_else(|e| panic!("generate {alg} key: {e}"));
    SigningKey::from_jwk(&jwk).unwrap_or_else(|e| panic!("load {alg} key: {e}"))
}

/// The keys, generated on first use.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        // Two RSA keys in parallel: each takes a while in a debug build.
        let second =
            std::thread::spawn(|| generate_jwk(Alg::PS256, KID_PS256).expect("generate PS256 key"));
        let rs256 = key(Alg::RS256, KID_RS256);
        let ps256_jwk = second.join().expect("RSA key generation thread");
        let ps256 = SigningKey::from_jwk(&ps256_jwk).expect("load PS256 key");
        let mut impostor_jwk = ps256_jwk.clone();
        impostor_jwk["kid"] = json!(KID_RS256);
        impostor_jwk["alg"] = json!("RS256");
        let impostor = SigningKey::from_jwk(&impostor_jwk).expect("load impostor key");
        let jwt_simple =
            jwt_simple::algorithms::ES256KeyPair::generate().with_key_id(KID_JWT_SIMPLE);
        Keys {
            rs256,
            ps256,
            impostor,
            es256: key(Alg::ES256, KID_ES256),
            es384: key(Alg::ES384, KID_ES384),
            eddsa: key(Alg::EdDSA, KID_EDDSA),
            hs256: key(Alg::HS256, KID_HS256),
            stranger: key(Alg::ES256, "stranger"),
            jwt_simple,
        }
    })
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
