//! Signature verification: one public key type per JWK family and one function that
//! checks a signature for an algorithm. Which algorithm may use which key is decided
//! here too, so the pinning can't be bypassed by a caller.
//!
//! The fast paths (measured in Envoy's V8 with bench/verify): RSA on crypto-bigint
//! Montgomery arithmetic ([`crate::crypto::rsa_verify`]), Ed25519 on curve25519-dalek's arithmetic
//! with per-key tables and ed25519-dalek's strict rules ([`crate::crypto::ed25519_verify`]), ES256
//! on p256's arithmetic with per-key tables ([`crate::crypto::p256_verify`]), ES384 on p384.

pub mod alg;
pub mod b64;
pub mod ed25519_verify;
pub mod mint_key;
pub mod montgomery;
pub mod p256_verify;
pub mod rsa_verify;
/// Signing needs the `cli` feature: the filter only verifies, so none of it ships in
/// the .wasm.
#[cfg(feature = "cli")]
pub mod sign;

use crate::crypto::alg::{Alg, Hash};
pub use crate::crypto::ed25519_verify::Ed25519Key;
pub use crate::crypto::p256_verify::P256Key;
pub use crate::crypto::rsa_verify::RsaKey;

/// Verification key material, already validated (curve point checked, RSA size checked).
#[derive(Clone)]
pub enum PublicKey {
    Rsa(RsaKey),
    P256(P256Key),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(Ed25519Key),
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
            PublicKey::P256(key) => key.verify(message, signature),
            PublicKey::P384(key) => {
                // Hashed here with hmac-sha512's SHA-384 (as HS384/RS384 are), so that
                // p384's verify does not link a second SHA-512 core (sha2's).
                use p384::ecdsa::signature::hazmat::PrehashVerifier;
                let Ok(sig) = p384::ecdsa::Signature::from_slice(signature) else {
                    return false;
                };
                let digest = hmac_sha512::sha384::Hash::hash(message);
                signature.len() == 96 && key.verify_prehash(&digest, &sig).is_ok()
            }
            PublicKey::Ed25519(key) => key.verify(message, signature),
            PublicKey::Oct(secret) => {
                let expected = hmac(alg.hash(), secret, message);
                constant_time_eq(&expected, signature)
            }
        }
    }
}

fn verify_rsa(key: &RsaKey, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
    match alg {
        Alg::RS256 | Alg::RS384 | Alg::RS512 => key.verify_pkcs1v15(alg.hash(), message, signature),
        Alg::PS256 | Alg::PS384 | Alg::PS512 => key.verify_pss(alg.hash(), message, signature),
        _ => false,
    }
}

/// HMAC of `message` under `secret` (verification here; signing and tests reuse it).
pub fn hmac(hash: Hash, secret: &[u8], message: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha256 => hmac_sha256::HMAC::mac(message, secret).to_vec(),
        Hash::Sha384 => hmac_sha512::sha384::HMAC::mac(message, secret).to_vec(),
        Hash::Sha512 => hmac_sha512::HMAC::mac(message, secret).to_vec(),
    }
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

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The old path (ed25519-compact, as jwt-simple uses it) and the new one on one vector.
    fn ed25519_both(key: &[u8], message: &[u8], signature: &[u8]) -> (bool, bool) {
        let old = ed25519_compact::PublicKey::from_slice(key).is_ok_and(|key| {
            ed25519_compact::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(message, &sig).is_ok())
        });
        let new = Ed25519Key::from_bytes(key)
            .is_some_and(|key| PublicKey::Ed25519(key).verify(Alg::EdDSA, message, signature));
        (old, new)
    }

    /// The twelve edge cases of "Taming the many EdDSAs" (Chalkias, Garillot, Nikolaenko,
    /// SSR 2020; github.com/novifinancial/ed25519-speccheck cases.txt): small-order and
    /// mixed-order keys and R, cofactored-only equations, S ≥ L, non-canonical R and A.
    const SPECCHECK: [(&str, &str, &str); 12] = [
        ("8c93255d71dcab10e8f379c26200f3c7bd5f09d9bc3068d3ef4edeb4853022b6", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a0000000000000000000000000000000000000000000000000000000000000000"),
        ("9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
        ("aebf3f2601a0c8c5d39cc7d8911642f740b78168218da8471772b35f9d35b9ab", "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa8c4bd45aecaca5b24fb97bc10ac27ac8751a7dfe1baff8b953ec9f5833ca260e"),
        ("9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79", "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d", "9046a64750444938de19f227bb80485e92b83fdb4b6506c160484c016cc1852f87909e14428a7a1d62e9f22f3d3ad7802db02eb2e688b6c52fcd6648a98bd009"),
        ("e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c", "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d", "160a1cb0dc9c0258cd0a7d23e94d8fa878bcb1925f2c64246b2dee1796bed5125ec6bc982a269b723e0668e540911a9a6a58921d6925e434ab10aa7940551a09"),
        ("e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c", "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d", "21122a84e0b5fca4052f5b1235c80a537878b38f3142356b2c2384ebad4668b7e40bc836dac0f71076f9abe3a53f9c03c1ceeeddb658d0030494ace586687405"),
        ("85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40", "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623", "e96f66be976d82e60150baecff9906684aebb1ef181f67a7189ac78ea23b6c0e547f7690a0e2ddcd04d87dbc3490dc19b3b3052f7ff0538cb68afb369ba3a514"),
        ("85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40", "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623", "8ce5b96c8f26d0ab6c47958c9e68b937104cd36e13c33566acd2fe8d38aa19427e71f98a473474f2f13f06f97c20d58cc3f54b8bd0d272f42b695dd7e89a8c22"),
        ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41", "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff03be9678ac102edcd92b0210bb34d7428d12ffc5df5f37e359941266a4e35f0f"),
        ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41", "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffca8c5b64cd208982aa38d4936621a4775aa233aa0505711d8fdcfdaa943d4908"),
        ("e96b7021eb39c1a163b6da4e3093dcd3f21387da4cc4572be588fafae23c155b", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dca5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
        ("39a591f5321bbe07fd5a23dc2f39d025d74526615746727ceefd6e82ae65c06f", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dca5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ];

    #[test]
    fn ed25519_edge_cases_are_refused_unless_valid_under_every_rule_and_never_looser() {
        for (i, (message, key, signature)) in SPECCHECK.iter().enumerate() {
            let (old, new) = ed25519_both(&hex(key), &hex(message), &hex(signature));
            assert!(
                !new || old,
                "case {i}: accepted here, refused by ed25519-compact"
            );
            // Only case 3 (mixed-order A and R, both equations hold) is valid for strict
            // verifiers; 4 and 5 hold only cofactored, which ed25519-compact accepts.
            assert_eq!(new, i == 3, "case {i}");
        }
    }

    #[test]
    fn ed25519_small_order_or_non_canonical_keys_are_refused() {
        let weak = [
            "0100000000000000000000000000000000000000000000000000000000000000", // identity
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // order 2
            "0000000000000000000000000000000000000000000000000000000000000000", // order 4
            "0000000000000000000000000000000000000000000000000000000000000080",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", // order 8
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
            "0100000000000000000000000000000000000000000000000000000000000080", // -0
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = p + 1
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = p
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", // -1, sign bit
        ];
        for key in weak {
            assert!(Ed25519Key::from_bytes(&hex(key)).is_none(), "{key}");
            let old = ed25519_compact::PublicKey::from_slice(&hex(key)).unwrap();
            assert!(old.validate().is_err(), "ed25519-compact accepts {key}");
        }
        // Not on the curve (y = 2 has no x), and the wrong lengths.
        let off_curve = hex("0200000000000000000000000000000000000000000000000000000000000000");
        assert!(Ed25519Key::from_bytes(&off_curve).is_none());
        assert!(Ed25519Key::from_bytes(&[9; 31]).is_none());
        assert!(Ed25519Key::from_bytes(&[9; 33]).is_none());
        // A JWKS with such a key skips it as an invalid point.
        let x = crate::crypto::b64::encode(&hex(weak[4]));
        let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x}]});
        assert_eq!(
            crate::token::jwks::KeySet::from_value(&jwks).unwrap_err(),
            crate::token::jwks::JwksError::NoUsableKey
        );
    }

    #[test]
    fn ed25519_keys_with_y_at_or_above_p_are_refused_though_dalek_would_decode_some() {
        let mut dalek_decodes = 0;
        for i in 0u8..19 {
            for sign in [0u8, 0x80] {
                let mut key = [0xffu8; 32];
                key[0] = 0xed + i; // y = p + i
                key[31] = 0x7f | sign;
                let dalek = ed25519_dalek::VerifyingKey::from_bytes(&key);
                dalek_decodes += usize::from(dalek.is_ok_and(|k| !k.is_weak()));
                assert!(Ed25519Key::from_bytes(&key).is_none(), "y = p + {i}");
                let old = ed25519_compact::PublicKey::from_slice(&key).unwrap();
                assert!(
                    old.validate().is_err(),
                    "ed25519-compact accepts y = p + {i}"
                );
            }
        }
        assert!(dalek_decodes > 0, "the canonical check would be redundant");
    }

    #[test]
    fn ed25519_tampered_or_non_canonical_s_signatures_are_refused_like_ed25519_compact() {
        let jwk = crate::testutil::private_jwk("eddsa");
        let seed = crate::crypto::b64::decode(jwk["d"].as_str().unwrap().as_bytes()).unwrap();
        let pair =
            ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::from_slice(&seed).unwrap());
        let message = b"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9";
        let signature = pair.sk.sign(message, None).to_vec();
        assert_eq!(
            ed25519_both(&pair.pk[..], message, &signature),
            (true, true)
        );

        let mut cases: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
        for at in [0, 31, 32, 63] {
            for bit in [0x01, 0x80] {
                let mut flipped = signature.clone();
                flipped[at] ^= bit;
                cases.push((
                    format!("bit {bit:#x} of byte {at}"),
                    message.to_vec(),
                    flipped,
                ));
            }
        }
        let mut other = message.to_vec();
        other[0] ^= 1;
        cases.push(("message".into(), other, signature.clone()));
        // S + L: the same scalar mod L, not canonical.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut s_plus_l = signature.clone();
        let mut carry = 0u16;
        for (byte, l) in s_plus_l[32..].iter_mut().zip(L) {
            let sum = u16::from(*byte) + u16::from(l) + carry;
            *byte = sum as u8;
            carry = sum >> 8;
        }
        cases.push(("S + L".into(), message.to_vec(), s_plus_l));
        cases.push((
            "truncated".into(),
            message.to_vec(),
            signature[..63].to_vec(),
        ));
        cases.push((
            "extended".into(),
            message.to_vec(),
            [&signature[..], &[0]].concat(),
        ));
        for (case, message, signature) in cases {
            assert_eq!(
                ed25519_both(&pair.pk[..], &message, &signature),
                (false, false),
                "{case}"
            );
        }
    }

    #[test]
    fn ed25519_rfc8032_test_vectors_verify() {
        // RFC 8032 §7.1, TEST 1 (empty message) and TEST 2.
        let vectors = [
            ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
             "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
            ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
             "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
        ];
        for (key, message, signature) in vectors {
            assert_eq!(
                ed25519_both(&hex(key), &hex(message), &hex(signature)),
                (true, true)
            );
        }
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
