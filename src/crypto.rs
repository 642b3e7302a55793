//! Signature verification: one public key type per JWK family and one function that
//! checks a signature for an algorithm. Which algorithm may use which key is decided
//! here too, so the pinning can't be bypassed by a caller.

use crate::alg::{Alg, Hash};
use rsa::traits::PublicKeyParts;
use sha2::Digest;

/// Verification key material, already validated (curve point checked, RSA size checked).
#[derive(Clone)]
pub enum PublicKey {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_compact::PublicKey),
    /// A shared HMAC secret (inline `oct` keys only).
    Oct(Vec<u8>),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secret material.
        f.write_str(match self {
            PublicKey::Rsa(_) => "Rsa",
            PublicKey::P256(_) => "P256",
            PublicKey::P384(_) => "P384",
            PublicKey::Ed25519(_) => "Ed25519",
            PublicKey::Oct(_) => "Oct",
        })
    }
}

impl PublicKey {
    /// Whether `alg` may be used with this key at all (kty and curve pinning).
    pub fn fits(&self, alg: Alg) -> bool {
        match self {
            PublicKey::Rsa(_) => matches!(
                alg,
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
            ),
            PublicKey::P256(_) => alg == Alg::ES256,
            PublicKey::P384(_) => alg == Alg::ES384,
            PublicKey::Ed25519(_) => alg == Alg::EdDSA,
            PublicKey::Oct(secret) => match alg {
                // RFC 7518 §3.2: the key must be at least as long as the hash output.
                Alg::HS256 => secret.len() >= 32,
                Alg::HS384 => secret.len() >= 48,
                Alg::HS512 => secret.len() >= 64,
                _ => false,
            },
        }
    }

    /// Checks `signature` over `message`. False for any mismatch, including a key that
    /// doesn't fit `alg`.
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        if !self.fits(alg) {
            return false;
        }
        match self {
            PublicKey::Rsa(key) => verify_rsa(key, alg, message, signature),
            PublicKey::P256(key) => {
                use p256::ecdsa::signature::Verifier;
                let Ok(sig) = p256::ecdsa::Signature::from_slice(signature) else {
                    return false;
                };
                signature.len() == 64 && key.verify(message, &sig).is_ok()
            }
            PublicKey::P384(key) => {
                use p384::ecdsa::signature::Verifier;
                let Ok(sig) = p384::ecdsa::Signature::from_slice(signature) else {
                    return false;
                };
                signature.len() == 96 && key.verify(message, &sig).is_ok()
            }
            PublicKey::Ed25519(key) => {
                let Ok(sig) = ed25519_compact::Signature::from_slice(signature) else {
                    return false;
                };
                key.verify(message, &sig).is_ok()
            }
            PublicKey::Oct(secret) => {
                let expected: Vec<u8> = match alg.hash() {
                    Hash::Sha256 => hmac_sha256::HMAC::mac(message, secret).to_vec(),
                    Hash::Sha384 => hmac_sha512::sha384::HMAC::mac(message, secret).to_vec(),
                    Hash::Sha512 => hmac_sha512::HMAC::mac(message, secret).to_vec(),
                };
                constant_time_eq(&expected, signature)
            }
        }
    }
}

fn verify_rsa(key: &rsa::RsaPublicKey, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
    // The signature must be exactly the modulus length (RFC 8017 §8.2.2 step 1).
    if signature.len() != key.size() {
        return false;
    }
    let pss = matches!(alg, Alg::PS256 | Alg::PS384 | Alg::PS512);
    let result = match alg.hash() {
        Hash::Sha256 => {
            let digest = sha2::Sha256::digest(message);
            if pss {
                key.verify(rsa::Pss::new::<sha2::Sha256>(), &digest, signature)
            } else {
                key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, signature)
            }
        }
        Hash::Sha384 => {
            let digest = sha2::Sha384::digest(message);
            if pss {
                key.verify(rsa::Pss::new::<sha2::Sha384>(), &digest, signature)
            } else {
                key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha384>(), &digest, signature)
            }
        }
        Hash::Sha512 => {
            let digest = sha2::Sha512::digest(message);
            if pss {
                key.verify(rsa::Pss::new::<sha2::Sha512>(), &digest, signature)
            } else {
                key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha512>(), &digest, signature)
            }
        }
    };
    result.is_ok()
}

/// Compares two byte strings without an early exit on the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn short_hmac_secret_fits_no_algorithm() {
        let key = PublicKey::Oct(vec![7; 31]);
        assert!(!key.fits(Alg::HS256));
        let key = PublicKey::Oct(vec![7; 48]);
        assert!(key.fits(Alg::HS384));
        assert!(!key.fits(Alg::HS512));
        assert!(!key.fits(Alg::RS256));
    }
}
