//! The gateway's own signing key, in the .wasm: exchanges with `mint` sign a short JWT
//! from an identity so that the services behind the gateway verify one kind of token.
//!
//! ES256 is p256's constant-time ECDSA (ecdsa's `sign_prehashed`) with the RFC 6979
//! §3.2 deterministic nonce computed over the module's HMAC-SHA-256, so the signatures
//! are byte for byte those of p256's own signer (the tests check it). EdDSA is
//! RFC 8032 §5.1.6 over curve25519-dalek's constant-time arithmetic (its scalar-by-
//! basepoint product and scalar field; never the verifier's variable-time tables) with
//! the module's one SHA-512 (hmac-sha512). Both are checked against independent signers
//! in the tests. The secret never leaves this type: `Debug` prints only the kid.

use crate::crypto::alg::Alg;
use crate::crypto::b64;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use serde_json::{json, Map, Value};

pub struct MintKey {
    pub kid: Option<String>,
    secret: Secret,
}

enum Secret {
    P256(p256::ecdsa::SigningKey),
    Ed25519 {
        /// The clamped secret scalar, reduced mod ℓ.
        scalar: Scalar,
        /// The second half of SHA-512(seed): the nonce key.
        prefix: [u8; 32],
        public: [u8; 32],
    },
}

impl std::fmt::Debug for MintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MintKey({:?}, {:?})", self.alg(), self.kid)
    }
}

/// Why a JWK can't be a mint key. Never holds key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintKeyError {
    NotAnObject,
    /// Only `EC` P-256 (ES256) and `OKP` Ed25519 (EdDSA) keys sign here.
    UnsupportedType,
    /// No private part (`d`): a public key can't sign.
    PublicOnly,
    /// `d` is not base64url of the right length, or not a valid scalar.
    InvalidPrivate,
    /// The public members (`x`, `y`) are not those of `d`.
    PublicMismatch,
    /// The key's `alg`, when present, names another algorithm.
    AlgMismatch,
}

impl MintKeyError {
    pub fn describe(self) -> &'static str {
        match self {
            MintKeyError::NotAnObject => "must be a JWK object",
            MintKeyError::UnsupportedType => {
                "must be an EC P-256 key (ES256) or an OKP Ed25519 key (EdDSA)"
            }
            MintKeyError::PublicOnly => "has no private part \"d\": a public key can't sign",
            MintKeyError::InvalidPrivate => "has an invalid private part \"d\"",
            MintKeyError::PublicMismatch => "public members do not match the private part",
            MintKeyError::AlgMismatch => "its \"alg\" names another algorithm",
        }
    }
}

fn member(jwk: &Map<String, Value>, name: &str) -> Option<Vec<u8>> {
    jwk.get(name)
        .and_then(Value::as_str)
        .and_then(|s| b64::decode(s.as_bytes()))
}

impl MintKey {
    /// Reads a private JWK for `alg` (ES256 or EdDSA).
    pub fn from_jwk(jwk: &Value, alg: Alg) -> Result<MintKey, MintKeyError> {
        let obj = jwk.as_object().ok_or(MintKeyError::NotAnObject)?;
        let text = |name: &str| obj.get(name).and_then(Value::as_str);
        if text("alg").is_some_and(|a| a != alg.name()) {
            return Err(MintKeyError::AlgMismatch);
        }
        let secret = match (alg, text("kty"), text("crv")) {
            (Alg::ES256, Some("EC"), Some("P-256")) => {
                if !obj.contains_key("d") {
                    return Err(MintKeyError::PublicOnly);
                }
                let d = member(obj, "d").ok_or(MintKeyError::InvalidPrivate)?;
                let key = p256::ecdsa::SigningKey::from_slice(&d)
                    .map_err(|_| MintKeyError::InvalidPrivate)?;
                let point = key.verifying_key().to_sec1_point(false);
                let bytes = point.as_bytes();
                let (x, y) = (bytes.get(1..33), bytes.get(33..65));
                if member(obj, "x").as_deref() != x || member(obj, "y").as_deref() != y {
                    return Err(MintKeyError::PublicMismatch);
                }
                Secret::P256(key)
            }
            (Alg::EdDSA, Some("OKP"), Some("Ed25519")) => {
                if !obj.contains_key("d") {
                    return Err(MintKeyError::PublicOnly);
                }
                let seed: [u8; 32] = member(obj, "d")
                    .and_then(|d| d.try_into().ok())
                    .ok_or(MintKeyError::InvalidPrivate)?;
                let secret = ed25519_from_seed(&seed);
                if let Secret::Ed25519 { public, .. } = &secret {
                    if member(obj, "x").as_deref() != Some(public.as_slice()) {
                        return Err(MintKeyError::PublicMismatch);
                    }
                }
                secret
            }
            _ => return Err(MintKeyError::UnsupportedType),
        };
        Ok(MintKey {
            kid: text("kid").map(str::to_owned),
            secret,
        })
    }

    pub fn alg(&self) -> Alg {
        match self.secret {
            Secret::P256(_) => Alg::ES256,
            Secret::Ed25519 { .. } => Alg::EdDSA,
        }
    }

    /// The public half as a JWK, for the JWKS the filter serves.
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &self.secret {
            Secret::P256(key) => {
                let point = key.verifying_key().to_sec1_point(false);
                let bytes = point.as_bytes();
                json!({
                    "kty": "EC", "crv": "P-256",
                    "x": b64::encode(bytes.get(1..33).unwrap_or_default()),
                    "y": b64::encode(bytes.get(33..65).unwrap_or_default()),
                })
            }
            Secret::Ed25519 { public, .. } => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64::encode(public)})
            }
        };
        if let Some(obj) = jwk.as_object_mut() {
            obj.insert("alg".into(), json!(self.alg().name()));
            obj.insert("use".into(), json!("sig"));
            if let Some(kid) = &self.kid {
                obj.insert("kid".into(), json!(kid));
            }
        }
        jwk
    }

    /// A compact JWS of `claims` with the header `{"alg", "typ": "JWT", "kid"}`.
    pub fn sign_jwt(&self, claims: &Map<String, Value>) -> String {
        let mut header = Map::new();
        header.insert("alg".into(), json!(self.alg().name()));
        header.insert("typ".into(), json!("JWT"));
        if let Some(kid) = &self.kid {
            header.insert("kid".into(), json!(kid));
        }
        let input = format!(
            "{}.{}",
            b64::encode(Value::Object(header).to_string().as_bytes()),
            b64::encode(Value::Object(claims.clone()).to_string().as_bytes())
        );
        let signature = self.sign(input.as_bytes());
        format!("{input}.{}", b64::encode(&signature))
    }

    /// The raw JWS signature over `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.secret {
            Secret::P256(key) => es256_sign(key, message),
            Secret::Ed25519 {
                scalar,
                prefix,
                public,
            } => {
                let r = Scalar::from_bytes_mod_order_wide(&sha512(&[prefix, message]));
                let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();
                let k = Scalar::from_bytes_mod_order_wide(&sha512(&[&big_r, public, message]));
                let s = r + k * scalar;
                let mut signature = big_r.to_vec();
                signature.extend_from_slice(&s.to_bytes());
                signature
            }
        }
    }
}

/// ECDSA P-256 over SHA-256 with the RFC 6979 §3.2 nonce.
fn es256_sign(key: &p256::ecdsa::SigningKey, message: &[u8]) -> Vec<u8> {
    use p256::elliptic_curve::ops::Reduce;
    use p256::elliptic_curve::PrimeField;
    use p256::{FieldBytes, NonZeroScalar, Scalar};

    let h1 = hmac_sha256::Hash::hash(message);
    let d: &NonZeroScalar = key.as_nonzero_scalar();
    let x = d.to_repr();
    // bits2octets(h1): qlen = hlen = 256, so the hash reduced mod q.
    let h1_reduced = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(h1)).to_repr();
    let hmac = |k: &[u8; 32], parts: &[&[u8]]| {
        let mut mac = hmac_sha256::HMAC::new(k);
        for part in parts {
            mac.update(part);
        }
        mac.finalize()
    };
    let mut v = [1u8; 32];
    let mut k = [0u8; 32];
    k = hmac(&k, &[&v, &[0], &x, &h1_reduced]);
    v = hmac(&k, &[&v]);
    k = hmac(&k, &[&v, &[1], &x, &h1_reduced]);
    v = hmac(&k, &[&v]);
    // Each round yields a candidate in [1, q) with probability ≈ 1 − 2⁻³²: the bound is
    // never reached in practice, and an empty signature fails closed at the verifier.
    for _ in 0..64 {
        v = hmac(&k, &[&v]);
        let candidate = NonZeroScalar::from_repr(FieldBytes::from(v)).into_option();
        if let Some(nonce) = candidate {
            if let Ok((signature, _)) = ecdsa::hazmat::sign_prehashed(d, &nonce, &h1) {
                let signature: p256::ecdsa::Signature = signature;
                return signature.to_bytes().to_vec();
            }
        }
        k = hmac(&k, &[&v, &[0]]);
        v = hmac(&k, &[&v]);
    }
    Vec::new()
}

/// RFC 8032 §5.1.5: the secret scalar, nonce prefix and public key of a seed.
fn ed25519_from_seed(seed: &[u8; 32]) -> Secret {
    let h = sha512(&[seed]);
    let mut scalar_bytes = [0u8; 32];
    let mut prefix = [0u8; 32];
    for (i, byte) in h.iter().enumerate() {
        if let Some(slot) = scalar_bytes.get_mut(i) {
            *slot = *byte;
        } else if let Some(slot) = prefix.get_mut(i - 32) {
            *slot = *byte;
        }
    }
    scalar_bytes[0] &= 248;
    scalar_bytes[31] &= 127;
    scalar_bytes[31] |= 64;
    // The clamped value times the basepoint equals its reduction mod ℓ times it (ℓ is
    // the basepoint's order), and S is computed mod ℓ anyway.
    let scalar = Scalar::from_bytes_mod_order(scalar_bytes);
    let public = EdwardsPoint::mul_base(&scalar).compress().to_bytes();
    Secret::Ed25519 {
        scalar,
        prefix,
        public,
    }
}

fn sha512(parts: &[&[u8]]) -> [u8; 64] {
    let mut hash = hmac_sha512::Hash::new();
    for part in parts {
        hash.update(part);
    }
    hash.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::private_jwk;

    #[test]
    fn ed25519_signatures_equal_ed25519_compact_ones() {
        let jwk = private_jwk("eddsa");
        let key = MintKey::from_jwk(&jwk, Alg::EdDSA).unwrap();
        let seed = b64::decode(jwk["d"].as_str().unwrap().as_bytes()).unwrap();
        let oracle =
            ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::from_slice(&seed).unwrap());
        for message in [&b""[..], b"abc", &[0xffu8; 1000]] {
            assert_eq!(key.sign(message), oracle.sk.sign(message, None).to_vec());
        }
        assert_eq!(key.public_jwk()["x"], jwk["x"]);
    }

    #[test]
    fn es256_signatures_equal_p256s_rfc_6979_ones() {
        use p256::ecdsa::signature::Signer;
        let jwk = private_jwk("es256");
        let key = MintKey::from_jwk(&jwk, Alg::ES256).unwrap();
        let d = b64::decode(jwk["d"].as_str().unwrap().as_bytes()).unwrap();
        let oracle = p256::ecdsa::SigningKey::from_slice(&d).unwrap();
        for message in [&b""[..], b"sample", b"test", &[0x5au8; 777]] {
            let expected: p256::ecdsa::Signature = oracle.sign(message);
            assert_eq!(key.sign(message), expected.to_bytes().to_vec());
        }
    }

    #[test]
    fn es256_signatures_verify_with_the_filters_verifier() {
        let jwk = private_jwk("es256");
        let key = MintKey::from_jwk(&jwk, Alg::ES256).unwrap();
        let set = crate::token::jwks::KeySet::from_value(&json!({"keys": [key.public_jwk()]}))
            .unwrap()
            .set;
        let verifier = &set.keys()[0].key;
        let signature = key.sign(b"message");
        assert!(verifier.verify(Alg::ES256, b"message", &signature));
        assert!(!verifier.verify(Alg::ES256, b"massage", &signature));
    }

    #[test]
    fn public_only_and_mismatched_keys_are_refused() {
        let mut public = private_jwk("es256");
        public.as_object_mut().unwrap().remove("d");
        assert_eq!(
            MintKey::from_jwk(&public, Alg::ES256).unwrap_err(),
            MintKeyError::PublicOnly
        );
        assert_eq!(
            MintKey::from_jwk(&private_jwk("es256"), Alg::EdDSA).unwrap_err(),
            MintKeyError::AlgMismatch
        );
        let mut rsa = private_jwk("rs256");
        rsa.as_object_mut().unwrap().remove("alg");
        assert_eq!(
            MintKey::from_jwk(&rsa, Alg::ES256).unwrap_err(),
            MintKeyError::UnsupportedType
        );
        let mut swapped = private_jwk("eddsa");
        swapped["x"] = json!(b64::encode(&[9u8; 32]));
        assert_eq!(
            MintKey::from_jwk(&swapped, Alg::EdDSA).unwrap_err(),
            MintKeyError::PublicMismatch
        );
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let jwk = private_jwk("eddsa");
        let key = MintKey::from_jwk(&jwk, Alg::EdDSA).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains(jwk["d"].as_str().unwrap()));
    }
}
