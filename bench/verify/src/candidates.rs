//! The paths the filter used before (the `rsa` crate, ed25519-compact) and other
//! candidates, to measure beside the filter's own `PublicKey::verify`.

use crate::crypto::alg::{Alg, Hash};
use sha2::Digest;

/// RS*/PS* with the `rsa` crate (num-bigint-dig, u64 digits), as src/crypto.rs did before.
pub fn rsa_crate_key(n: &[u8], e: &[u8]) -> Option<rsa::RsaPublicKey> {
    rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(n),
        rsa::BigUint::from_bytes_be(e),
    )
    .ok()
}

pub fn rsa_crate_verify(
    key: &rsa::RsaPublicKey,
    alg: Alg,
    message: &[u8],
    signature: &[u8],
) -> bool {
    use rsa::traits::PublicKeyParts;
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

/// Ed25519 with ed25519-compact (jwt-simple's), as src/crypto.rs did before.
pub fn ed25519_compact_verify(
    key: &ed25519_compact::PublicKey,
    message: &[u8],
    signature: &[u8],
) -> bool {
    ed25519_compact::Signature::from_slice(signature)
        .is_ok_and(|sig| key.verify(message, &sig).is_ok())
}

/// Ed25519 with the other major version of ed25519-dalek than the filter's.
pub fn ed25519_dalek_alt_key(x: &[u8]) -> Option<ed25519_dalek_2::VerifyingKey> {
    let bytes: &[u8; 32] = x.try_into().ok()?;
    ed25519_dalek_2::VerifyingKey::from_bytes(bytes).ok()
}

pub fn ed25519_dalek_alt_verify(
    key: &ed25519_dalek_2::VerifyingKey,
    message: &[u8],
    signature: &[u8],
) -> bool {
    ed25519_dalek_2::Signature::from_slice(signature)
        .is_ok_and(|sig| key.verify_strict(message, &sig).is_ok())
}

/// RSA PKCS#1 v1.5 on crypto-bigint's heap-allocated `BoxedMontyForm`: one code path for
/// every modulus size (smaller module) instead of the fixed widths.
pub struct BoxedRsa {
    params: crypto_bigint::modular::BoxedMontyParams,
    e: u64,
    len: usize,
}

impl BoxedRsa {
    pub fn new(n: &[u8], e: u64) -> Option<BoxedRsa> {
        use crypto_bigint::{BoxedUint, Odd};
        let len = n.len();
        let bits = u32::try_from(len * 8).ok()?;
        let n = BoxedUint::from_be_slice(n, bits).ok()?;
        let n = Option::<Odd<BoxedUint>>::from(Odd::new(n))?;
        Some(BoxedRsa {
            params: crypto_bigint::modular::BoxedMontyParams::new_vartime(n),
            e,
            len,
        })
    }

    /// `signature^e mod n` as k bytes.
    pub fn public_op(&self, signature: &[u8]) -> Option<Vec<u8>> {
        use crypto_bigint::modular::BoxedMontyForm;
        use crypto_bigint::BoxedUint;
        if signature.len() != self.len {
            return None;
        }
        let s = BoxedUint::from_be_slice(signature, self.params.bits_precision()).ok()?;
        if s >= *self.params.modulus().as_ref() {
            return None;
        }
        let base = BoxedMontyForm::new(s, &self.params);
        let mut power = base.clone();
        let top = u64::BITS - 1 - self.e.leading_zeros();
        for bit in (0..top).rev() {
            power = power.square();
            if (self.e >> bit) & 1 == 1 {
                power = power.mul(&base);
            }
        }
        let bytes = power.retrieve().to_be_bytes();
        let skip = bytes.len().checked_sub(self.len)?;
        bytes.get(skip..).map(<[u8]>::to_vec)
    }

    /// RS256 only (enough to compare the arithmetic).
    pub fn verify_rs256(&self, message: &[u8], signature: &[u8]) -> bool {
        const PREFIX: [u8; 19] = [
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ];
        let Some(em) = self.public_op(signature) else {
            return false;
        };
        let mut expected = vec![0x00, 0x01];
        expected.resize(self.len - PREFIX.len() - 32 - 1, 0xff);
        expected.push(0);
        expected.extend_from_slice(&PREFIX);
        expected.extend_from_slice(&hmac_sha256::Hash::hash(message));
        expected == em
    }
}

/// The name of the other ed25519-dalek major version measured.
pub const DALEK_ALT: &str = "ed25519-dalek 2";

/// ES256 with p256's own `VerifyingKey::verify` (wNAF `u1·G + u2·Q`, no per-key state),
/// as src/crypto.rs did before src/p256_verify.rs.
pub fn p256_crate_key(x: &[u8], y: &[u8]) -> Option<p256::ecdsa::VerifyingKey> {
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&[&[4u8][..], x, y].concat()).ok()
}

pub fn p256_crate_verify(
    key: &p256::ecdsa::VerifyingKey,
    message: &[u8],
    signature: &[u8],
) -> bool {
    use p256::ecdsa::signature::Verifier;
    p256::ecdsa::Signature::from_slice(signature)
        .is_ok_and(|sig| signature.len() == 64 && key.verify(message, &sig).is_ok())
}

/// ES256 with libcrux-ecdsa (HACL* P-256): the public key as x || y.
pub fn libcrux_es256_key(x: &[u8], y: &[u8]) -> Option<libcrux_ecdsa::p256::PublicKey> {
    libcrux_ecdsa::p256::PublicKey::try_from(&[x, y].concat()[..]).ok()
}

pub fn libcrux_es256_verify(
    key: &libcrux_ecdsa::p256::PublicKey,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let Ok(signature) = <[u8; 64]>::try_from(signature) else {
        return false;
    };
    let signature = libcrux_ecdsa::p256::Signature::from_bytes(signature);
    libcrux_ecdsa::p256::verify(
        libcrux_ecdsa::DigestAlgorithm::Sha256,
        message,
        &signature,
        key,
    )
    .is_ok()
}

/// Ed25519 with ed25519-dalek 3's `verify_strict`, as src/crypto.rs did before
/// src/ed25519_verify.rs (the key checks of `Ed25519Key::from_bytes` aside).
pub fn ed25519_dalek_key(x: &[u8]) -> Option<ed25519_dalek::VerifyingKey> {
    let bytes: &[u8; 32] = x.try_into().ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(bytes)
        .ok()
        .filter(|key| !key.is_weak())
}

pub fn ed25519_dalek_verify(
    key: &ed25519_dalek::VerifyingKey,
    message: &[u8],
    signature: &[u8],
) -> bool {
    ed25519_dalek::Signature::from_slice(signature)
        .is_ok_and(|sig| key.verify_strict(message, &sig).is_ok())
}

/// Ed25519 with the strict rules, `[S]B - [k]A` computed by `combine(s, k)`: to compare
/// ways of multiplying on the same checks and hash.
pub fn ed25519_verify_with(
    key_bytes: &[u8; 32],
    message: &[u8],
    signature: &[u8],
    combine: &dyn Fn(
        &curve25519_dalek::Scalar,
        &curve25519_dalek::Scalar,
    ) -> curve25519_dalek::EdwardsPoint,
) -> bool {
    use sha2_11::{Digest, Sha512};
    let Ok(signature) = <&[u8; 64]>::try_from(signature) else {
        return false;
    };
    let (Some(r_bytes), Some(s_bytes)) =
        (signature.first_chunk::<32>(), signature.last_chunk::<32>())
    else {
        return false;
    };
    let Some(s) = Option::<curve25519_dalek::Scalar>::from(
        curve25519_dalek::Scalar::from_canonical_bytes(*s_bytes),
    ) else {
        return false;
    };
    let mut hash = Sha512::new();
    hash.update(r_bytes);
    hash.update(key_bytes);
    hash.update(message);
    let k = curve25519_dalek::Scalar::from_bytes_mod_order_wide(&hash.finalize().into());
    let r = combine(&s, &k);
    r.compress().as_bytes() == r_bytes && !r.is_small_order()
}

/// curve25519-dalek's own fixed-base tables (radix 16, constant-time lookups): the
/// static one of the basepoint and one built per key for -A.
pub fn dalek_basepoint_table(
    minus_key: &curve25519_dalek::EdwardsPoint,
) -> curve25519_dalek::edwards::EdwardsBasepointTable {
    use curve25519_dalek::traits::BasepointTable;
    curve25519_dalek::edwards::EdwardsBasepointTable::create(minus_key)
}

/// curve25519-dalek's precomputed Straus (wNAF tables of B and -A, shared doublings).
pub fn dalek_precomputation(
    minus_key: &curve25519_dalek::EdwardsPoint,
) -> curve25519_dalek::edwards::VartimeEdwardsPrecomputation {
    use curve25519_dalek::traits::VartimePrecomputedMultiscalarMul;
    curve25519_dalek::edwards::VartimeEdwardsPrecomputation::new([
        curve25519_dalek::constants::ED25519_BASEPOINT_POINT,
        *minus_key,
    ])
}
