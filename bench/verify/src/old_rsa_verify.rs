//! The filter's RSA verification before src/montgomery.rs replaced its arithmetic: src/rsa_verify.rs
//! of commit 96c640c (crypto-bigint's fixed widths), measured beside the new one: verbatim, but
//! without its tests and with `RsaKey::public_op` public (the `pow` rows time it alone).
//!
//! RSA signature verification for RS256/384/512 (RSASSA-PKCS1-v1_5) and PS256/384/512
//! (RSASSA-PSS with MGF1 and a salt as long as the hash, RFC 7518 §3.5), on
//! crypto-bigint's Montgomery arithmetic.
//!
//! Why not the `rsa` crate: its num-bigint-dig digits are u64, and in wasm32 every
//! 64×64→128-bit product becomes a call, so one RS256 check cost 0.8–1.7 ms in Envoy's V8
//! (about 0.16 ms here; bench/verify measures both). Here the Montgomery parameters are
//! computed once, when the key is parsed, and `s^e mod n` is square-and-multiply over the
//! bits of the public exponent (16 squarings and one multiplication for 65537). The
//! integers have fixed widths (2048, 3072 or 4096 bits, the smallest that holds `n`):
//! crypto-bigint's heap-allocated `BoxedUint` measured up to 14% slower in V8 for 2 KB less
//! module. Everything here handles public data only, so nothing needs constant time.
//!
//! The checks follow RFC 8017 to the letter, and are at least as strict as the `rsa`
//! crate's (the tests run both on every vector): the signature is exactly `k` bytes and
//! below `n`; PKCS#1 v1.5 rebuilds the whole expected encoding and compares it; PSS checks
//! the leading byte, the unused top bits, the `0xbc` trailer, the zero padding and the
//! `0x01` separator.

use crate::alg::Hash;
use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{Odd, Uint, Word, U2048, U3072, U4096};

/// The smallest modulus accepted, in bits.
pub const MIN_BITS: usize = 2048;
/// The largest modulus accepted, in bits (also the `rsa` crate's limit).
pub const MAX_BITS: usize = 4096;
/// The largest public exponent accepted: 2^33 - 1, the `rsa` crate's limit.
pub const MAX_EXPONENT: u64 = (1 << 33) - 1;

const WORD_BYTES: usize = Word::BITS as usize / 8;

/// Why an RSA public key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The modulus is under [`MIN_BITS`].
    TooSmall,
    /// The modulus is over [`MAX_BITS`].
    TooLarge,
    /// `e` is even, below 3, over [`MAX_EXPONENT`], or not below `n`.
    BadExponent,
    /// The modulus is even.
    BadModulus,
}

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
        let Some(em) = self.public_op(signature) else {
            return false;
        };
        let digest = digest(hash, &[message]);
        pkcs1v15_encoding(hash, &digest, self.len)
            .is_some_and(|expected| crate::crypto::constant_time_eq(&expected, &em))
    }

    /// RSASSA-PSS (RFC 8017 §8.1.2) with `hash`, MGF1 with `hash`, and a salt as long as
    /// the hash output (RFC 7518 §3.5).
    pub fn verify_pss(&self, hash: Hash, message: &[u8], signature: &[u8]) -> bool {
        let Some(em) = self.public_op(signature) else {
            return false;
        };
        let digest = digest(hash, &[message]);
        emsa_pss_verify(hash, &digest, &em, self.bits - 1)
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

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or_default()
}

/// The bit length of a big-endian number without leading zero bytes.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.first() {
        None => 0,
        Some(top) => (bytes.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

/// The public exponent, if it is odd, at least 3 and at most [`MAX_EXPONENT`].
fn exponent(bytes: &[u8]) -> Option<u64> {
    let bytes = strip_leading_zeros(bytes);
    if bytes.len() > 8 {
        return None;
    }
    let e = bytes.iter().fold(0u64, |e, b| (e << 8) | u64::from(*b));
    (e >= 3 && e & 1 == 1 && e <= MAX_EXPONENT).then_some(e)
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

fn hash_len(hash: Hash) -> usize {
    match hash {
        Hash::Sha256 => 32,
        Hash::Sha384 => 48,
        Hash::Sha512 => 64,
    }
}

/// The hash of the concatenation of `parts`. The small SHA-2 implementations the HMAC
/// algorithms already use: no second copy of SHA-2 in the module for RSA.
fn digest(hash: Hash, parts: &[&[u8]]) -> Vec<u8> {
    match hash {
        Hash::Sha256 => {
            let mut hasher = hmac_sha256::Hash::new();
            parts.iter().for_each(|part| hasher.update(part));
            hasher.finalize().to_vec()
        }
        Hash::Sha384 => {
            let mut hasher = hmac_sha512::sha384::Hash::new();
            parts.iter().for_each(|part| hasher.update(part));
            hasher.finalize().to_vec()
        }
        Hash::Sha512 => {
            let mut hasher = hmac_sha512::Hash::new();
            parts.iter().for_each(|part| hasher.update(part));
            hasher.finalize().to_vec()
        }
    }
}

/// The DER DigestInfo prefix (RFC 8017 §9.2 note 1), with the NULL parameters.
fn digest_info_prefix(hash: Hash) -> &'static [u8] {
    match hash {
        Hash::Sha256 => &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ],
        Hash::Sha384 => &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ],
        Hash::Sha512 => &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ],
    }
}

/// EMSA-PKCS1-v1_5-ENCODE (RFC 8017 §9.2): `0x00 0x01 FF..FF 0x00 DigestInfo`, `k` bytes
/// long, or `None` if `k` leaves fewer than 8 bytes of padding.
fn pkcs1v15_encoding(hash: Hash, digest: &[u8], k: usize) -> Option<Vec<u8>> {
    let prefix = digest_info_prefix(hash);
    let padding = k.checked_sub(prefix.len() + digest.len() + 3)?;
    if padding < 8 {
        return None;
    }
    let mut em = Vec::with_capacity(k);
    em.extend_from_slice(&[0x00, 0x01]);
    em.resize(2 + padding, 0xff);
    em.push(0x00);
    em.extend_from_slice(prefix);
    em.extend_from_slice(digest);
    Some(em)
}

/// XORs MGF1(`seed`) (RFC 8017 §B.2.1) into `out`.
fn mgf1_xor(hash: Hash, seed: &[u8], out: &mut [u8]) {
    for (counter, chunk) in (0u32..).zip(out.chunks_mut(hash_len(hash))) {
        let mask = digest(hash, &[seed, &counter.to_be_bytes()]);
        for (byte, m) in chunk.iter_mut().zip(mask) {
            *byte ^= m;
        }
    }
}

/// EMSA-PSS-VERIFY (RFC 8017 §9.1.2) with sLen = hLen. `k_bytes` is the output of
/// RSAVP1 as `k` bytes; `em_bits` is modBits - 1.
fn emsa_pss_verify(hash: Hash, m_hash: &[u8], k_bytes: &[u8], em_bits: usize) -> bool {
    let h_len = hash_len(hash);
    let s_len = h_len;
    let em_len = em_bits.div_ceil(8);
    // §8.1.2 step 2c: EM = I2OSP(m, emLen); m must fit in emLen bytes (k - emLen is 0 or 1).
    let Some((high, em)) = k_bytes.split_at_checked(k_bytes.len().saturating_sub(em_len)) else {
        return false;
    };
    if em.len() != em_len || high.iter().any(|b| *b != 0) {
        return false;
    }
    // Step 3.
    if m_hash.len() != h_len || em_len < h_len + s_len + 2 {
        return false;
    }
    // Step 4: the trailer.
    let Some((&0xbc, rest)) = em.split_last() else {
        return false;
    };
    // Step 5: maskedDB || H.
    let Some((masked_db, h)) = rest.split_at_checked(em_len - h_len - 1) else {
        return false;
    };
    // Step 6: the 8·emLen - emBits leftmost bits of maskedDB are zero.
    let unused_bits = 8 * em_len - em_bits;
    let top_mask = 0xffu8 >> unused_bits;
    if masked_db.first().is_none_or(|top| top & !top_mask != 0) {
        return false;
    }
    // Steps 7–9: DB = maskedDB ⊕ MGF(H), leftmost bits cleared.
    let mut db = masked_db.to_vec();
    mgf1_xor(hash, h, &mut db);
    if let Some(top) = db.first_mut() {
        *top &= top_mask;
    }
    // Step 10: emLen - hLen - sLen - 2 zero bytes, then 0x01.
    let Some((zeros, separator_and_salt)) = db.split_at_checked(em_len - h_len - s_len - 2) else {
        return false;
    };
    let Some((&0x01, salt)) = separator_and_salt.split_first() else {
        return false;
    };
    if zeros.iter().any(|b| *b != 0) || salt.len() != s_len {
        return false;
    }
    // Steps 12–14: H' = Hash(0x00 × 8 || mHash || salt), and H' = H.
    let h_prime = digest(hash, &[&[0u8; 8], m_hash, salt]);
    crate::crypto::constant_time_eq(&h_prime, h)
}
