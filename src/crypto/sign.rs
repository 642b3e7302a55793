//! Signing compact JWS tokens from a private JWK: development tokens (`tokengate
//! token`) and test vectors. Native only (the `cli` feature): the filter never signs yet;
//! the gateway's own minted tokens will need a wasm-side ES256/EdDSA signer. Verification
//! never goes through here.

use crate::crypto::alg::{Alg, Hash};
use crate::crypto::b64;
use serde_json::{json, Map, Value};
use sha2::Digest;

/// A private key from a JWK, with the algorithm it signs with.
pub struct SigningKey {
    pub kid: Option<String>,
    pub alg: Alg,
    secret: Secret,
}

enum Secret {
    Rsa(Box<rsa::RsaPrivateKey>),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Ed25519(ed25519_compact::KeyPair),
    Oct(Vec<u8>),
}

fn member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    jwk.get(name)
        .and_then(Value::as_str)
        .and_then(|s| b64::decode(s.as_bytes()))
        .ok_or_else(|| format!("\"{name}\" is missing or not base64url"))
}

fn big(jwk: &Map<String, Value>, name: &str) -> Result<rsa::BigUint, String> {
    member(jwk, name).map(|bytes| rsa::BigUint::from_bytes_be(&bytes))
}

impl SigningKey {
    /// Reads a private JWK. `alg` comes from the JWK, or the key type's usual one.
    pub fn from_jwk(jwk: &Value) -> Result<SigningKey, String> {
        let obj = jwk.as_object().ok_or("a JWK must be a JSON object")?;
        let text = |name: &str| obj.get(name).and_then(Value::as_str);
        let secret = match (text("kty"), text("crv")) {
            (Some("RSA"), _) => {
                let primes = match (big(obj, "p"), big(obj, "q")) {
                    (Ok(p), Ok(q)) => vec![p, q],
                    _ => Vec::new(),
                };
                let key = rsa::RsaPrivateKey::from_components(
                    big(obj, "n")?,
                    big(obj, "e")?,
                    big(obj, "d")?,
                    primes,
                )
                .map_err(|e| format!("invalid RSA key: {e}"))?;
                Secret::Rsa(Box::new(key))
            }
            (Some("EC"), Some("P-256")) => Secret::P256(
                p256::ecdsa::SigningKey::from_slice(&member(obj, "d")?)
                    .map_err(|_| "invalid P-256 \"d\"")?,
            ),
            (Some("EC"), Some("P-384")) => Secret::P384(
                p384::ecdsa::SigningKey::from_slice(&member(obj, "d")?)
                    .map_err(|_| "invalid P-384 \"d\"")?,
            ),
            (Some("OKP"), Some("Ed25519")) => {
                let seed = ed25519_compact::Seed::from_slice(&member(obj, "d")?)
                    .map_err(|_| "invalid Ed25519 \"d\"")?;
                Secret::Ed25519(ed25519_compact::KeyPair::from_seed(seed))
            }
            (Some("oct"), _) => Secret::Oct(member(obj, "k")?),
            _ => return Err("unsupported \"kty\"/\"crv\" for signing".into()),
        };
        let alg = match text("alg") {
            Some(name) => {
                Alg::from_name(name).ok_or_else(|| format!("unsupported \"alg\" {name:?}"))?
            }
            None => secret.default_alg(),
        };
        let key = SigningKey {
            kid: text("kid").map(str::to_owned),
            alg,
            secret,
        };
        if !key.public_fits(alg) {
            return Err(format!("\"alg\" {alg} does not fit this key"));
        }
        Ok(key)
    }

    fn public_fits(&self, alg: Alg) -> bool {
        match &self.secret {
            Secret::Rsa(_) => matches!(
                alg,
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
            ),
            Secret::Oct(k) => alg.is_symmetric() && k.len() >= 32,
            other => other.default_alg() == alg,
        }
    }

    /// The public half as a JWK (with `kid`, `alg` and `use: sig`).
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &self.secret {
            Secret::Rsa(key) => {
                use rsa::traits::PublicKeyParts;
                json!({"kty": "RSA", "n": b64::encode(&key.n().to_bytes_be()), "e": b64::encode(&key.e().to_bytes_be())})
            }
            Secret::P256(key) => {
                let point = key.verifying_key().to_sec1_point(false);
                json!({"kty": "EC", "crv": "P-256",
                       "x": b64::encode(point.x().map(|x| x.as_slice()).unwrap_or_default()),
                       "y": b64::encode(point.y().map(|y| y.as_slice()).unwrap_or_default())})
            }
            Secret::P384(key) => {
                let point = key.verifying_key().to_sec1_point(false);
                json!({"kty": "EC", "crv": "P-384",
                       "x": b64::encode(point.x().map(|x| x.as_slice()).unwrap_or_default()),
                       "y": b64::encode(point.y().map(|y| y.as_slice()).unwrap_or_default())})
            }
            Secret::Ed25519(pair) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64::encode(pair.pk.as_ref())})
            }
            Secret::Oct(k) => json!({"kty": "oct", "k": b64::encode(k)}),
        };
        if let Some(obj) = jwk.as_object_mut() {
            if let Some(kid) = &self.kid {
                obj.insert("kid".into(), json!(kid));
            }
            obj.insert("alg".into(), json!(self.alg.name()));
            obj.insert("use".into(), json!("sig"));
        }
        jwk
    }

    /// Signs `claims` with the usual header: `{"alg", "typ": "JWT", "kid"}`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut header = json!({"alg": self.alg.name(), "typ": "JWT"});
        if let (Some(kid), Some(obj)) = (&self.kid, header.as_object_mut()) {
            obj.insert("kid".into(), json!(kid));
        }
        self.sign_with_header(&header, claims)
    }

    /// Signs with an explicit header (tests use this to build hostile tokens).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, String> {
        let input = format!(
            "{}.{}",
            b64::encode(header.to_string().as_bytes()),
            b64::encode(claims.to_string().as_bytes())
        );
        let signature = self.sign_bytes(input.as_bytes())?;
        Ok(format!("{input}.{}", b64::encode(&signature)))
    }

    /// The raw signature over `message` with this key's algorithm.
    pub fn sign_bytes(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let alg = self.alg;
        match &self.secret {
            Secret::Rsa(key) => sign_rsa(key, alg, message),
            Secret::P256(key) => {
                use p256::ecdsa::signature::Signer;
                let sig: p256::ecdsa::Signature = key.sign(message);
                Ok(sig.to_bytes().to_vec())
            }
            Secret::P384(key) => {
                use p384::ecdsa::signature::Signer;
                let sig: p384::ecdsa::Signature = key.sign(message);
                Ok(sig.to_bytes().to_vec())
            }
            Secret::Ed25519(pair) => Ok(pair.sk.sign(message, None).to_vec()),
            Secret::Oct(k) => Ok(hmac(alg.hash(), k, message)),
        }
    }
}

impl Secret {
    fn default_alg(&self) -> Alg {
        match self {
            Secret::Rsa(_) => Alg::RS256,
            Secret::P256(_) => Alg::ES256,
            Secret::P384(_) => Alg::ES384,
            Secret::Ed25519(_) => Alg::EdDSA,
            Secret::Oct(_) => Alg::HS256,
        }
    }
}

/// Tests forge HS* tokens with this (e.g. keyed with an RSA public key).
pub use crate::crypto::hmac;

fn sign_rsa(key: &rsa::RsaPrivateKey, alg: Alg, message: &[u8]) -> Result<Vec<u8>, String> {
    let pss = matches!(alg, Alg::PS256 | Alg::PS384 | Alg::PS512);
    let (digest, pkcs1) = match alg.hash() {
        Hash::Sha256 => (
            sha2::Sha256::digest(message).to_vec(),
            rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
        ),
        Hash::Sha384 => (
            sha2::Sha384::digest(message).to_vec(),
            rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
        ),
        Hash::Sha512 => (
            sha2::Sha512::digest(message).to_vec(),
            rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
        ),
    };
    if !pss {
        return key.sign(pkcs1, &digest).map_err(|e| e.to_string());
    }
    sign_pss(key, alg.hash(), &digest)
}

fn sign_pss(key: &rsa::RsaPrivateKey, hash: Hash, digest: &[u8]) -> Result<Vec<u8>, String> {
    let mut rng = rand::rngs::OsRng;
    let scheme = match hash {
        Hash::Sha256 => rsa::Pss::new::<sha2::Sha256>(),
        Hash::Sha384 => rsa::Pss::new::<sha2::Sha384>(),
        Hash::Sha512 => rsa::Pss::new::<sha2::Sha512>(),
    };
    key.sign_with_rng(&mut rng, scheme, digest)
        .map_err(|e| e.to_string())
}

/// Generates a new private key as a JWK (development use: `tokengate keygen`).
pub fn generate_jwk(alg: Alg, kid: &str) -> Result<Value, String> {
    use rand::RngCore;
    let mut rng = rand::rngs::OsRng;
    let mut jwk = match alg {
        Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
            use rsa::traits::{PrivateKeyParts, PublicKeyParts};
            let key = rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| e.to_string())?;
            let primes = key.primes();
            let (Some(p), Some(q)) = (primes.first(), primes.get(1)) else {
                return Err("RSA key generation gave no primes".into());
            };
            json!({"kty": "RSA", "n": b64::encode(&key.n().to_bytes_be()), "e": b64::encode(&key.e().to_bytes_be()),
                   "d": b64::encode(&key.d().to_bytes_be()), "p": b64::encode(&p.to_bytes_be()), "q": b64::encode(&q.to_bytes_be())})
        }
        Alg::ES256 | Alg::ES384 => {
            let (len, crv) = if alg == Alg::ES256 {
                (32, "P-256")
            } else {
                (48, "P-384")
            };
            let mut d = vec![0u8; len];
            // A random scalar is out of range with negligible probability; retry if so.
            let mut tries = 0;
            loop {
                rng.fill_bytes(&mut d);
                let ok = if alg == Alg::ES256 {
                    p256::ecdsa::SigningKey::from_slice(&d).is_ok()
                } else {
                    p384::ecdsa::SigningKey::from_slice(&d).is_ok()
                };
                tries += 1;
                if ok {
                    break;
                }
                if tries > 16 {
                    return Err("could not draw an EC scalar".into());
                }
            }
            json!({"kty": "EC", "crv": crv, "d": b64::encode(&d)})
        }
        Alg::EdDSA => {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            json!({"kty": "OKP", "crv": "Ed25519", "d": b64::encode(&seed)})
        }
        Alg::HS256 | Alg::HS384 | Alg::HS512 => {
            let len = match alg.hash() {
                Hash::Sha256 => 32,
                Hash::Sha384 => 48,
                Hash::Sha512 => 64,
            };
            let mut k = vec![0u8; len];
            rng.fill_bytes(&mut k);
            json!({"kty": "oct", "k": b64::encode(&k)})
        }
    };
    if let Some(obj) = jwk.as_object_mut() {
        obj.insert("kid".into(), json!(kid));
        obj.insert("alg".into(), json!(alg.name()));
    }
    // Fill in the public members (x, y for EC and OKP) from the private key.
    let key = SigningKey::from_jwk(&jwk)?;
    let public = key.public_jwk();
    if let (Some(obj), Some(public)) = (jwk.as_object_mut(), public.as_object()) {
        for (name, value) in public {
            obj.entry(name.clone()).or_insert_with(|| value.clone());
        }
    }
    Ok(jwk)
}
