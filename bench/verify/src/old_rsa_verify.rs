//! The filter's RSA arithmetic before src/montgomery.rs replaced it (commit 96c640c:
//! crypto-bigint's Montgomery form at three fixed widths, 2048/3072/4096 bits), measured
//! beside the new one. Only the arithmetic is kept here (with `RsaKey::public_op` public:
//! the `pow` rows time it alone); key checks and the PKCS#1 v1.5 / PSS encodings are the
//! filter's own, from src/rsa_verify.rs.

use crate::crypto::alg::Hash;
use crate::crypto::rsa_verify::{
    bit_length, exponent, pkcs1v15_matches, pss_matches, strip_leading_zeros, KeyError, MAX_BITS,
    MIN_BITS,
};
use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{Odd, Uint, Word, U2048, U3072, U4096};

const WORD_BYTES: usize = Word::BITS as usize / 8;

/// An RSA public key, ready to verify: its Montgomery parameters are already computed.
#[derive(Clone)]
pub struct RsaKey {
    /// `k`: the modulus length in bytes, which every signature must have.
    len: usize,
    bits: usize,
    e: u64,
    modulus: Modulus,
}

/// The parameters at the smallest width that holds the modulus (boxed: they are up to
/// 1.5 KB and the key enums stay small).
#[derive(Clone)]
enum Modulus {
    W2048(Box<FixedMontyParams<{ U2048::LIMBS }>>),
    W3072(Box<FixedMontyParams<{ U3072::LIMBS }>>),
    W4096(Box<FixedMontyParams<{ U4096::LIMBS }>>),
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaKey")
            .field("bits", &self.bits)
            .field("e", &self.e)
            .finish_non_exhaustive()
    }
}

impl RsaKey {
    /// Builds a key from the big-endian bytes of `n` and `e` (leading zeros allowed), as
    /// in a JWK. Checked in this order: modulus size, exponent, modulus parity.
    pub fn new(n: &[u8], e: &[u8]) -> Result<RsaKey, KeyError> {
        let n = strip_leading_zeros(n);
        let bits = bit_length(n);
        if bits < MIN_BITS {
            return Err(KeyError::TooSmall);
        }
        if bits > MAX_BITS {
            return Err(KeyError::TooLarge);
        }
        let e = exponent(e).ok_or(KeyError::BadExponent)?;
        // e < 2^33 <= n: `e < n` always holds once the sizes are checked.
        if n.last().is_none_or(|low| low & 1 == 0) {
            return Err(KeyError::BadModulus);
        }
        let modulus = if bits <= 2048 {
            Modulus::W2048(Box::new(params(n)?))
        } else if bits <= 3072 {
            Modulus::W3072(Box::new(params(n)?))
        } else {
            Modulus::W4096(Box::new(params(n)?))
        };
        Ok(RsaKey {
            len: n.len(),
            bits,
            e,
            modulus,
        })
    }

    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// `k`, the modulus size in bytes: the length of every signature.
    pub fn size(&self) -> usize {
        self.len
    }

    /// RSASSA-PKCS1-v1_5 (RFC 8017 §8.2.2) with `hash` over `message`.
    pub fn verify_pkcs1v15(&self, hash: Hash, message: &[u8], signature: &[u8]) -> bool {
        self.public_op(signature)
            .is_some_and(|em| pkcs1v15_matches(hash, message, &em))
    }

    /// RSASSA-PSS (RFC 8017 §8.1.2) with `hash`, MGF1 with `hash`, and a salt as long as
    /// the hash output (RFC 7518 §3.5).
    pub fn verify_pss(&self, hash: Hash, message: &[u8], signature: &[u8]) -> bool {
        self.public_op(signature)
            .is_some_and(|em| pss_matches(hash, message, &em, self.bits))
    }

    /// RSAVP1 (RFC 8017 §5.2.2) and I2OSP: `signature^e mod n` as `k` bytes, or `None` if
    /// the signature is not exactly `k` bytes or not below `n`.
    pub fn public_op(&self, signature: &[u8]) -> Option<Vec<u8>> {
        if signature.len() != self.len {
            return None;
        }
        match &self.modulus {
            Modulus::W2048(params) => public_op(params, self.e, signature),
            Modulus::W3072(params) => public_op(params, self.e, signature),
            Modulus::W4096(params) => public_op(params, self.e, signature),
        }
    }
}

fn params<const LIMBS: usize>(n: &[u8]) -> Result<FixedMontyParams<LIMBS>, KeyError> {
    let n = uint_from_be::<LIMBS>(n).ok_or(KeyError::TooLarge)?;
    let n = Option::<Odd<Uint<LIMBS>>>::from(Odd::new(n)).ok_or(KeyError::BadModulus)?;
    // Variable time is fine: the modulus is public.
    Ok(FixedMontyParams::new_vartime(n))
}

fn public_op<const LIMBS: usize>(
    params: &FixedMontyParams<LIMBS>,
    e: u64,
    signature: &[u8],
) -> Option<Vec<u8>> {
    let s = uint_from_be::<LIMBS>(signature)?;
    if &s >= params.modulus().as_ref() {
        return None;
    }
    let base = FixedMontyForm::new(&s, params);
    let mut power = base;
    // Left to right over the bits of e below the top one (e >= 3 has at least two bits).
    let top = u64::BITS - 1 - e.leading_zeros();
    for bit in (0..top).rev() {
        power = power.square();
        if (e >> bit) & 1 == 1 {
            power = power.mul(&base);
        }
    }
    let mut em = vec![0; signature.len()];
    uint_to_be(&power.retrieve(), &mut em).then_some(em)
}

/// A big-endian byte string as a `Uint`, or `None` if it doesn't fit.
fn uint_from_be<const LIMBS: usize>(bytes: &[u8]) -> Option<Uint<LIMBS>> {
    let mut words: [Word; LIMBS] = [0; LIMBS];
    for (i, byte) in bytes.iter().rev().enumerate() {
        if *byte != 0 {
            let word = words.get_mut(i / WORD_BYTES)?;
            *word |= Word::from(*byte) << (8 * (i % WORD_BYTES));
        }
    }
    Some(Uint::from_words(words))
}

/// Writes `x` big-endian into all of `out`; false if it doesn't fit.
fn uint_to_be<const LIMBS: usize>(x: &Uint<LIMBS>, out: &mut [u8]) -> bool {
    let words = x.as_words();
    let byte = |i: usize| {
        words
            .get(i / WORD_BYTES)
            .map_or(0, |word| (word >> (8 * (i % WORD_BYTES))) as u8)
    };
    for (i, slot) in out.iter_mut().rev().enumerate() {
        *slot = byte(i);
    }
    (out.len()..LIMBS * WORD_BYTES).all(|i| byte(i) == 0)
}
