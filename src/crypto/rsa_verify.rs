//! RSA signature verification for RS256/384/512 (RSASSA-PKCS1-v1_5) and PS256/384/512
//! (RSASSA-PSS with MGF1 and a salt as long as the hash, RFC 7518 §3.5), on the
//! hand-written Montgomery arithmetic of [`crate::crypto::montgomery`].
//!
//! Why not the `rsa` crate: its num-bigint-dig digits are u64, and in wasm32 every
//! 64×64→128-bit product becomes a call, so one RS256 check cost 0.8–1.7 ms in Envoy's V8.
//! Why not crypto-bigint (used here before): it also promotes wasm32 to 64-bit limbs, so
//! every limb product is emulated; RS256 took ~165 µs in V8, and its three fixed widths
//! (2048, 3072, 4096 bits) cost ~70 KB of wasm code, which V8 in Envoy compiles with
//! TurboFan at start-up. The target is cold RS256 at half the speed of Envoy's native
//! jwt_authn or better, which on the benchmark machine means ≲ 80 µs per check inside V8.
//! [`crate::crypto::montgomery`] is a small Montgomery multiplication (CIOS) on 27–28-bit
//! limbs summed in 64-bit lanes, two products per wasm SIMD128 `extmul` (~2× faster in V8
//! than the u32 limbs it replaced; why, and what else was measured, is there), and one code
//! path serves every modulus from 2048 to 4096 bits: the number of limbs is the key's.
//!
//! The Montgomery constants are computed once, when the key is parsed, and `s^e mod n` is
//! square-and-multiply over the bits of the public exponent (16 squarings and one
//! multiplication for 65537). Everything here handles public data only, so nothing needs
//! constant time.
//!
//! The checks follow RFC 8017 to the letter, and are at least as strict as the `rsa`
//! crate's (the tests run both on every vector): the signature is exactly `k` bytes and
//! below `n`; PKCS#1 v1.5 rebuilds the whole expected encoding and compares it; PSS checks
//! the leading byte, the unused top bits, the `0xbc` trailer, the zero padding and the
//! `0x01` separator.

use crate::crypto::alg::Hash;
use crate::crypto::montgomery::Modulus;

/// The smallest modulus accepted, in bits.
pub const MIN_BITS: usize = 2048;
/// The largest modulus accepted, in bits (also the `rsa` crate's limit).
pub const MAX_BITS: usize = 4096;
/// The largest public exponent accepted: 2^33 - 1, the `rsa` crate's limit.
pub const MAX_EXPONENT: u64 = (1 << 33) - 1;

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
        let modulus = Modulus::new(n).ok_or(KeyError::BadModulus)?;
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
    fn public_op(&self, signature: &[u8]) -> Option<Vec<u8>> {
        if signature.len() != self.len {
            return None;
        }
        self.modulus.pow(signature, self.e)
    }
}

/// Whether `em`, the `k` bytes the public operation recovered, is exactly the PKCS#1 v1.5
/// encoding of `message`'s digest.
pub(crate) fn pkcs1v15_matches(hash: Hash, message: &[u8], em: &[u8]) -> bool {
    let digest = digest(hash, &[message]);
    pkcs1v15_encoding(hash, &digest, em.len())
        .is_some_and(|expected| crate::crypto::constant_time_eq(&expected, em))
}

/// Whether `em`, recovered with a modulus of `bits` bits, is a valid PSS encoding of
/// `message`'s digest.
pub(crate) fn pss_matches(hash: Hash, message: &[u8], em: &[u8], bits: usize) -> bool {
    let digest = digest(hash, &[message]);
    emsa_pss_verify(hash, &digest, em, bits - 1)
}

pub(crate) fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or_default()
}

/// The bit length of a big-endian number without leading zero bytes.
pub(crate) fn bit_length(bytes: &[u8]) -> usize {
    match bytes.first() {
        None => 0,
        Some(top) => (bytes.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

/// The public exponent, if it is odd, at least 3 and at most [`MAX_EXPONENT`].
pub(crate) fn exponent(bytes: &[u8]) -> Option<u64> {
    let bytes = strip_leading_zeros(bytes);
    if bytes.len() > 8 {
        return None;
    }
    let e = bytes.iter().fold(0u64, |e, b| (e << 8) | u64::from(*b));
    (e >= 3 && e & 1 == 1 && e <= MAX_EXPONENT).then_some(e)
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

#[cfg(test)]
mod tests {
    //! The old path (the `rsa` crate, exactly as crypto.rs called it) runs on every vector
    //! beside the new one, and they must agree; signatures are made by the `rsa` crate or,
    //! for malformed encodings, by the raw private operation `m^d mod n`.
    use super::*;
    use crate::crypto::alg::Alg;
    use crate::crypto::PublicKey;
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
    use std::sync::OnceLock;

    const RSA_ALGS: [Alg; 6] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
    ];
    const HASHES: [Hash; 3] = [Hash::Sha256, Hash::Sha384, Hash::Sha512];
    const MESSAGE: &[u8] = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";

    struct Pair {
        name: String,
        private: RsaPrivateKey,
        public: RsaPublicKey,
        ours: RsaKey,
    }

    impl Pair {
        fn new(name: &str, private: RsaPrivateKey) -> Pair {
            let ours = RsaKey::new(&private.n().to_bytes_be(), &private.e().to_bytes_be())
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            Pair {
                name: name.into(),
                public: private.to_public_key(),
                private,
                ours,
            }
        }

        fn k(&self) -> usize {
            self.public.size()
        }
    }

    fn fixture(name: &str) -> RsaPrivateKey {
        let jwk = crate::testutil::private_jwk(name);
        let big = |m: &str| {
            BigUint::from_bytes_be(
                &crate::crypto::b64::decode(jwk[m].as_str().unwrap().as_bytes()).unwrap(),
            )
        };
        RsaPrivateKey::from_components(big("n"), big("e"), big("d"), vec![big("p"), big("q")])
            .unwrap()
    }

    /// The fixture keys (2048 bits) and generated ones: 2049 bits (PSS's emLen is k - 1;
    /// the 3072-bit width), 3072 and 4096 bits. Generated once per test run.
    fn pairs() -> &'static [Pair] {
        static PAIRS: OnceLock<Vec<Pair>> = OnceLock::new();
        PAIRS.get_or_init(|| {
            let generate = |bits| {
                (
                    bits,
                    RsaPrivateKey::new(&mut rand::rngs::OsRng, bits).unwrap(),
                )
            };
            let sizes = [2049, 3072, 4096];
            // In parallel natively; one after another under WASI (no threads), where
            // these tests check the arithmetic with 32-bit usize (make test-wasm).
            let generated: Vec<(usize, RsaPrivateKey)> = if cfg!(target_family = "wasm") {
                sizes.into_iter().map(generate).collect()
            } else {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = sizes
                        .into_iter()
                        .map(|bits| scope.spawn(move || generate(bits)))
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).collect()
                })
            };
            let mut pairs = vec![
                Pair::new("rs256 fixture", fixture("rs256")),
                Pair::new("ps256 fixture", fixture("ps256")),
            ];
            for (bits, key) in generated {
                assert_eq!(key.n().bits(), bits);
                pairs.push(Pair::new(&format!("generated {bits}-bit"), key));
            }
            pairs
        })
    }

    fn pair(bits: usize) -> &'static Pair {
        pairs()
            .iter()
            .find(|p| p.public.n().bits() == bits)
            .unwrap()
    }

    /// The verification crypto.rs did before this module: the `rsa` crate.
    fn old_verify(key: &RsaPublicKey, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        use sha2::Digest;
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

    /// Both paths' verdict, which must be the same.
    fn both(pair: &Pair, alg: Alg, message: &[u8], signature: &[u8], case: &str) -> bool {
        let old = old_verify(&pair.public, alg, message, signature);
        let new = PublicKey::Rsa(pair.ours.clone()).verify(alg, message, signature);
        assert_eq!(
            old, new,
            "{}, {alg}, {case}: rsa crate {old}, ours {new}",
            pair.name
        );
        new
    }

    fn sign(pair: &Pair, alg: Alg, message: &[u8]) -> Vec<u8> {
        sign_with_salt(pair, alg, message, None)
    }

    /// Signs with the `rsa` crate; `salt` overrides PSS's salt length (the hash length).
    fn sign_with_salt(pair: &Pair, alg: Alg, message: &[u8], salt: Option<usize>) -> Vec<u8> {
        use rsa::{Pkcs1v15Sign, Pss};
        let digest = digest(alg.hash(), &[message]);
        let rng = &mut rand::rngs::OsRng;
        let pss = |len: usize| match alg.hash() {
            Hash::Sha256 => Pss::new_with_salt::<sha2::Sha256>(len),
            Hash::Sha384 => Pss::new_with_salt::<sha2::Sha384>(len),
            Hash::Sha512 => Pss::new_with_salt::<sha2::Sha512>(len),
        };
        let key = &pair.private;
        match alg {
            Alg::RS256 => key.sign(Pkcs1v15Sign::new::<sha2::Sha256>(), &digest),
            Alg::RS384 => key.sign(Pkcs1v15Sign::new::<sha2::Sha384>(), &digest),
            Alg::RS512 => key.sign(Pkcs1v15Sign::new::<sha2::Sha512>(), &digest),
            _ => key.sign_with_rng(rng, pss(salt.unwrap_or(hash_len(alg.hash()))), &digest),
        }
        .unwrap()
    }

    /// The raw private operation on an encoded message: `em^d mod n` as k bytes, or None if
    /// `em` is not below `n` (such an encoding can't be signed).
    fn raw_sign(pair: &Pair, em: &[u8]) -> Option<Vec<u8>> {
        let m = BigUint::from_bytes_be(em);
        if &m >= pair.private.n() {
            return None;
        }
        let s = m.modpow(pair.private.d(), pair.private.n()).to_bytes_be();
        let mut out = vec![0; pair.k() - s.len()];
        out.extend_from_slice(&s);
        Some(out)
    }

    #[test]
    fn every_key_size_and_algorithm_verifies_and_the_rsa_crate_agrees_on_tampering() {
        for pair in pairs() {
            let k = pair.k();
            for alg in RSA_ALGS {
                let sig = sign(pair, alg, MESSAGE);
                assert!(
                    both(pair, alg, MESSAGE, &sig, "valid"),
                    "{}: {alg}",
                    pair.name
                );
                for at in [0, 1, k / 2, k - 1] {
                    for bit in [0x01, 0x80] {
                        let mut flipped = sig.clone();
                        flipped[at] ^= bit;
                        assert!(!both(
                            pair,
                            alg,
                            MESSAGE,
                            &flipped,
                            &format!("bit {bit:#x} of byte {at}")
                        ));
                    }
                }
                for at in [0, MESSAGE.len() - 1] {
                    let mut message = MESSAGE.to_vec();
                    message[at] ^= 0x01;
                    assert!(!both(pair, alg, &message, &sig, "flipped message"));
                }
                assert!(!both(pair, alg, &MESSAGE[1..], &sig, "shorter message"));
                assert!(!both(
                    pair,
                    alg,
                    &sig[..k - 1],
                    &sig[..k - 1],
                    "message as signature"
                ));
                assert!(!both(pair, alg, MESSAGE, &sig[..k - 1], "truncated"));
                assert!(!both(pair, alg, MESSAGE, &sig[1..], "first byte cut"));
                assert!(!both(
                    pair,
                    alg,
                    MESSAGE,
                    &[&[0], &sig[..]].concat(),
                    "zero prepended"
                ));
                assert!(!both(
                    pair,
                    alg,
                    MESSAGE,
                    &[&sig[..], &[0]].concat(),
                    "zero appended"
                ));
                assert!(!both(pair, alg, MESSAGE, &[], "empty"));
                for other in RSA_ALGS.into_iter().filter(|other| *other != alg) {
                    assert!(!both(
                        pair,
                        other,
                        MESSAGE,
                        &sig,
                        &format!("{alg} signature as {other}")
                    ));
                }
            }
        }
    }

    #[test]
    fn signature_not_below_the_modulus_is_refused() {
        for pair in pairs() {
            let k = pair.k();
            let n = pair.public.n();
            let mut cases = vec![
                ("n", n.to_bytes_be()),
                ("n + 2", (n + 2u32).to_bytes_be()),
                ("all ones", vec![0xff; k]),
                ("zero", vec![0; k]),
                ("one", [vec![0; k - 1], vec![1]].concat()),
            ];
            // n - 1: below n, so the old path computes it too; (n-1)^e = -1, not an encoding.
            cases.push(("n - 1", (n - 1u32).to_bytes_be()));
            for (case, sig) in cases {
                assert_eq!(sig.len(), k, "{case}");
                for alg in RSA_ALGS {
                    assert!(!both(pair, alg, MESSAGE, &sig, case));
                }
            }
        }
    }

    #[test]
    fn pss_signature_at_or_above_the_modulus_is_refused_though_the_rsa_crate_accepts_it() {
        // RFC 8017 §8.1.2 step 1 (RSAVP1, §5.2.2): s must be below n. The rsa crate's PSS
        // verify checks only the length and reduces s mod n, so a valid s plus n verifies
        // there (found by the differential fuzz target diff_rsa).
        for pair in pairs() {
            let (k, n) = (pair.k(), pair.public.n());
            for alg in [Alg::PS256, Alg::PS384, Alg::PS512] {
                let valid = sign(pair, alg, MESSAGE);
                let shifted = (BigUint::from_bytes_be(&valid) + n).to_bytes_be();
                if shifted.len() != k {
                    continue; // s + n needs k + 1 bytes: refused by length alone
                }
                let ours = PublicKey::Rsa(pair.ours.clone()).verify(alg, MESSAGE, &shifted);
                assert!(!ours, "{}, {alg}: s + n accepted", pair.name);
            }
        }
    }

    /// Mutations of a correct EMSA-PKCS1-v1_5 encoding, each signed raw.
    fn bad_pkcs1v15_encodings(hash: Hash, digest: &[u8], k: usize) -> Vec<(&'static str, Vec<u8>)> {
        let good = pkcs1v15_encoding(hash, digest, k).unwrap();
        let prefix = digest_info_prefix(hash);
        let t_len = prefix.len() + digest.len();
        let separator = k - t_len - 1;
        let mut cases = Vec::new();
        let mut em = good.clone();
        em[1] = 0x02;
        cases.push(("block type 2", em));
        let mut em = good.clone();
        em[separator] = 0xff;
        cases.push(("no zero separator", em));
        let mut em = good.clone();
        em[5] = 0xfe;
        cases.push(("padding byte not 0xff", em));
        let mut em = good.clone();
        em[0] = 0x01;
        cases.push(("leading byte not zero", em));
        // Short padding, then the DigestInfo, then garbage (Bleichenbacher's 2006 forgery shape).
        let mut em = vec![0x00, 0x01];
        em.extend_from_slice(&[0xff; 8]);
        em.push(0x00);
        em.extend_from_slice(prefix);
        em.extend_from_slice(digest);
        em.resize(k, 0x5a);
        cases.push(("short padding and trailing garbage", em));
        // DigestInfo without the NULL parameters.
        let mut info = vec![0x30, prefix[1] - 2, 0x30, 0x0b];
        info.extend_from_slice(&prefix[4..15]);
        info.extend_from_slice(&[0x04, digest.len() as u8]);
        cases.push((
            "DigestInfo without NULL parameters",
            encode_with_info(&info, digest, k),
        ));
        // Another hash's OID over this digest.
        let mut info = prefix.to_vec();
        info[14] = if info[14] == 0x01 { 0x02 } else { 0x01 };
        cases.push(("another hash's OID", encode_with_info(&info, digest, k)));
        // The right shape over another message's digest.
        let other = crate::crypto::rsa_verify::digest(hash, &[b"another message"]);
        cases.push((
            "digest of another message",
            pkcs1v15_encoding(hash, &other, k).unwrap(),
        ));
        // The digest one byte short, the padding one byte longer.
        let mut info = prefix.to_vec();
        info[1] -= 1;
        info[18] -= 1;
        cases.push(("digest truncated", encode_with_info(&info, &digest[1..], k)));
        cases
    }

    fn encode_with_info(info: &[u8], digest: &[u8], k: usize) -> Vec<u8> {
        let mut em = vec![0x00, 0x01];
        em.resize(k - info.len() - digest.len() - 1, 0xff);
        em.push(0x00);
        em.extend_from_slice(info);
        em.extend_from_slice(digest);
        assert_eq!(em.len(), k);
        em
    }

    #[test]
    fn pkcs1v15_encodings_with_a_wrong_digest_info_or_padding_are_refused() {
        for pair in pairs() {
            for (alg, hash) in [Alg::RS256, Alg::RS384, Alg::RS512].into_iter().zip(HASHES) {
                let digest = digest(hash, &[MESSAGE]);
                let good = pkcs1v15_encoding(hash, &digest, pair.k()).unwrap();
                let sig = raw_sign(pair, &good).unwrap();
                assert!(both(
                    pair,
                    alg,
                    MESSAGE,
                    &sig,
                    "raw-signed correct encoding"
                ));
                assert_eq!(
                    sig,
                    sign(pair, alg, MESSAGE),
                    "PKCS#1 v1.5 is deterministic"
                );
                for (case, em) in bad_pkcs1v15_encodings(hash, &digest, pair.k()) {
                    assert_eq!(em.len(), pair.k(), "{case}");
                    let Some(sig) = raw_sign(pair, &em) else {
                        continue; // not below n: can't be a signature at all
                    };
                    assert!(!both(pair, alg, MESSAGE, &sig, case));
                }
            }
        }
    }

    #[test]
    fn pss_with_another_salt_length_is_refused() {
        for pair in pairs() {
            for alg in [Alg::PS256, Alg::PS384, Alg::PS512] {
                let h_len = hash_len(alg.hash());
                let sig = sign_with_salt(pair, alg, MESSAGE, Some(h_len));
                assert!(both(pair, alg, MESSAGE, &sig, "salt as long as the hash"));
                for salt in [0, 20, h_len - 1, h_len + 1, 2 * h_len] {
                    let sig = sign_with_salt(pair, alg, MESSAGE, Some(salt));
                    assert!(!both(
                        pair,
                        alg,
                        MESSAGE,
                        &sig,
                        &format!("salt of {salt} bytes")
                    ));
                }
            }
        }
    }

    /// One way to break EMSA-PSS-ENCODE (RFC 8017 §9.1.1).
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Break {
        Nothing,
        Trailer,
        TopBitSet,
        PaddingNotZero,
        SeparatorTwo,
        SeparatorZero,
        HashOfAnotherMessage,
        SaltOneShorter,
    }

    /// EMSA-PSS-ENCODE with `salt`, broken as asked; `em_bits` is modBits - 1. Returns
    /// EM as k bytes (with a leading zero when emLen = k - 1).
    fn pss_encode(
        hash: Hash,
        message: &[u8],
        salt: &[u8],
        em_bits: usize,
        k: usize,
        broken: Break,
    ) -> Vec<u8> {
        let h_len = hash_len(hash);
        let em_len = em_bits.div_ceil(8);
        let m_hash = digest(hash, &[message]);
        let salt = if broken == Break::SaltOneShorter {
            &salt[1..]
        } else {
            salt
        };
        let hashed = if broken == Break::HashOfAnotherMessage {
            digest(hash, &[b"another message"])
        } else {
            m_hash
        };
        let h = digest(hash, &[&[0u8; 8], &hashed, salt]);
        let ps_len = em_len - salt.len() - h_len - 2;
        let mut db = vec![0u8; ps_len];
        db.push(0x01);
        db.extend_from_slice(salt);
        match broken {
            Break::PaddingNotZero => db[1] = 0x01,
            Break::SeparatorTwo => db[ps_len] = 0x02,
            Break::SeparatorZero => db[ps_len] = 0x00,
            _ => {}
        }
        mgf1_xor(hash, &h, &mut db);
        let unused_bits = 8 * em_len - em_bits;
        db[0] &= 0xff >> unused_bits;
        if broken == Break::TopBitSet {
            db[0] |= 0x80;
        }
        let mut em = vec![0u8; k - em_len];
        em.extend_from_slice(&db);
        em.extend_from_slice(&h);
        em.push(if broken == Break::Trailer { 0xbb } else { 0xbc });
        em
    }

    #[test]
    fn pss_encodings_that_break_any_step_are_refused() {
        let breaks = [
            Break::Nothing,
            Break::Trailer,
            Break::TopBitSet,
            Break::PaddingNotZero,
            Break::SeparatorTwo,
            Break::SeparatorZero,
            Break::HashOfAnotherMessage,
            Break::SaltOneShorter,
        ];
        for pair in pairs() {
            let em_bits = pair.public.n().bits() - 1;
            for alg in [Alg::PS256, Alg::PS384, Alg::PS512] {
                for broken in breaks {
                    if broken == Break::TopBitSet && em_bits % 8 == 0 {
                        continue; // no unused bits: emLen = k - 1, covered by the leading byte
                    }
                    // A set top bit may put EM above n; another salt gives another EM.
                    let sig = (0..64u8)
                        .find_map(|seed| {
                            let salt = vec![seed; hash_len(alg.hash())];
                            let em =
                                pss_encode(alg.hash(), MESSAGE, &salt, em_bits, pair.k(), broken);
                            raw_sign(pair, &em)
                        })
                        .unwrap();
                    let valid = both(pair, alg, MESSAGE, &sig, &format!("{broken:?}"));
                    assert_eq!(
                        valid,
                        broken == Break::Nothing,
                        "{}: {alg}: {broken:?}",
                        pair.name
                    );
                }
            }
        }
    }

    #[test]
    fn pss_with_a_nonzero_byte_above_em_len_is_refused_though_the_rsa_crate_ignores_it() {
        // modBits = 2049: emLen = 256 = k - 1, so RFC 8017 §8.1.2 step 2c (I2OSP(m, emLen))
        // fails when the first of the k bytes is not zero. The rsa crate skips that byte.
        let pair = pair(2049);
        let em_bits = 2048;
        let mut refused = 0;
        for seed in 0u8..64 {
            let salt = vec![seed; 32];
            let mut em = pss_encode(
                Hash::Sha256,
                MESSAGE,
                &salt,
                em_bits,
                pair.k(),
                Break::Nothing,
            );
            assert_eq!(em[0], 0);
            em[0] = 0x01;
            let Some(sig) = raw_sign(pair, &em) else {
                continue; // 0x01 || EM not below n with this salt
            };
            assert!(old_verify(&pair.public, Alg::PS256, MESSAGE, &sig));
            assert!(!PublicKey::Rsa(pair.ours.clone()).verify(Alg::PS256, MESSAGE, &sig));
            refused += 1;
        }
        assert!(refused > 0, "no salt gave 0x01 || EM below n");
    }

    #[test]
    fn keys_are_refused_where_the_rsa_crate_refuses_them() {
        let fixture = &pairs()[0];
        let n = fixture.public.n().to_bytes_be();
        let exponents: [(&[u8], Option<KeyError>); 10] = [
            (&[1, 0, 1], None),
            (&[3], None),
            (&[0, 0, 1, 0, 1], None),
            (&[1, 0xff, 0xff, 0xff, 0xff], None),
            (&[1], Some(KeyError::BadExponent)),
            (&[2], Some(KeyError::BadExponent)),
            (&[1, 0, 0], Some(KeyError::BadExponent)),
            (&[2, 0, 0, 0, 1], Some(KeyError::BadExponent)),
            (&[0xff; 8], Some(KeyError::BadExponent)),
            (&[1; 9], Some(KeyError::BadExponent)),
        ];
        for (e, expected) in exponents {
            let ours = RsaKey::new(&n, e).err();
            assert_eq!(ours, expected, "e = {e:?}");
            let theirs = RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(e));
            assert_eq!(ours.is_none(), theirs.is_ok(), "e = {e:?}");
        }
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        assert_eq!(
            RsaKey::new(&even, &[1, 0, 1]).err(),
            Some(KeyError::BadModulus)
        );
        assert!(RsaPublicKey::new(BigUint::from_bytes_be(&even), 65537u32.into()).is_err());

        let padded = [&[0, 0][..], &n].concat();
        let key = RsaKey::new(&padded, &[1, 0, 1]).unwrap();
        assert_eq!((key.size(), key.bits()), (256, 2048));

        let small = [&[0x7f][..], &n[1..]].concat();
        assert_eq!(
            RsaKey::new(&small, &[1, 0, 1]).err(),
            Some(KeyError::TooSmall)
        );
        let large = [&[0x01][..], &n, &n].concat(); // 4097 bits, odd
        assert_eq!(
            RsaKey::new(&large, &[1, 0, 1]).err(),
            Some(KeyError::TooLarge)
        );
        assert!(RsaPublicKey::new(BigUint::from_bytes_be(&large), 65537u32.into()).is_err());
        assert_eq!(RsaKey::new(&[], &[1, 0, 1]).err(), Some(KeyError::TooSmall));
    }

    #[test]
    fn every_key_size_uses_as_many_limbs_as_its_modulus_needs() {
        for pair in pairs() {
            let bits = pair.public.n().bits();
            let modulus = &pair.ours.modulus;
            let limb_bits = modulus.limb_bits() as usize;
            assert_eq!(
                modulus.limbs(),
                (bits + 2).div_ceil(limb_bits).next_multiple_of(2),
                "{}",
                pair.name
            );
            assert_eq!(
                limb_bits,
                if bits <= 3072 { 28 } else { 27 },
                "{}",
                pair.name
            );
            assert_eq!(pair.ours.size(), pair.k());
        }
    }

    /// `base^e mod n` by the Montgomery arithmetic, as `k` bytes, checked against
    /// num-bigint-dig's `modpow`.
    fn check_pow(modulus: &Modulus, n: &BigUint, base: &BigUint, e: u64, case: &str) {
        let k = n.to_bytes_be().len();
        let base_bytes = base.to_bytes_be();
        let base_bytes = [vec![0; k - base_bytes.len()], base_bytes].concat();
        let ours = modulus.pow(&base_bytes, e).unwrap();
        let expected = base.modpow(&BigUint::from(e), n);
        assert_eq!(BigUint::from_bytes_be(&ours), expected, "{case}, e = {e}");
        assert_eq!(ours.len(), k, "{case}");
    }

    #[test]
    fn modular_powers_match_num_bigint_for_random_odd_moduli_and_edge_bases() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_2048);
        let exponents = [3, 65537, (1 << 32) + 0x2345_6789, MAX_EXPONENT];
        for bits in [2048usize, 2049, 3072, 4095, 4096] {
            for round in 0..6 {
                let mut n_bytes = vec![0u8; bits.div_ceil(8)];
                rng.fill(&mut n_bytes[..]);
                n_bytes[0] &= 0xff >> (8 * n_bytes.len() - bits);
                n_bytes[0] |= 0x80 >> (8 * n_bytes.len() - bits);
                *n_bytes.last_mut().unwrap() |= 1;
                let n = BigUint::from_bytes_be(&n_bytes);
                assert_eq!(n.bits(), bits);
                let modulus = Modulus::new(&n_bytes).unwrap();
                let limb_bits = modulus.limb_bits() as usize;
                assert_eq!(
                    modulus.limbs(),
                    (bits + 2).div_ceil(limb_bits).next_multiple_of(2)
                );
                let one = BigUint::from(1u32);
                let mut bases = vec![
                    ("0", BigUint::from(0u32)),
                    ("1", one.clone()),
                    ("2", BigUint::from(2u32)),
                    ("n - 1", &n - &one),
                    ("n - 2", &n - &one - &one),
                ];
                for _ in 0..3 {
                    let mut bytes = vec![0u8; n_bytes.len()];
                    rng.fill(&mut bytes[..]);
                    bases.push(("random", BigUint::from_bytes_be(&bytes) % &n));
                }
                // A base with the top limb set and the others zero, and one all ones below n.
                bases.push(("high", (&one << (bits - 1)) % &n));
                bases.push(("all ones below n", ((&one << bits) - &one) % &n));
                for (name, base) in &bases {
                    for e in exponents {
                        check_pow(
                            &modulus,
                            &n,
                            base,
                            e,
                            &format!("{bits} bits #{round}: {name}"),
                        );
                    }
                }
                check_pow(&modulus, &n, &bases[5].1, 1, "e = 1");
                check_pow(&modulus, &n, &bases[5].1, 0, "e = 0");
                for (name, not_below) in [("n", n.clone()), ("n + 1", &n + &one)] {
                    let bytes = not_below.to_bytes_be();
                    assert_eq!(modulus.pow(&bytes, 65537), None, "{bits} bits: {name}");
                }
            }
        }
    }

    #[test]
    fn moduli_at_the_limb_boundaries_and_with_extreme_limbs_match_num_bigint() {
        // n = 2^bits - 1 (every limb all ones), n = 2^(bits-1) + 1 (zero limbs between a
        // top bit and a bottom bit), and a small top limb over all-ones limbs.
        let one = BigUint::from(1u32);
        for bits in [2048usize, 2049, 3072, 4095, 4096] {
            let moduli = [
                (&one << bits) - &one,
                (&one << (bits - 1)) + &one,
                (&one << (bits - 1)) + (&one << (bits - 33)) - &one,
            ];
            for n in moduli {
                let n_bytes = n.to_bytes_be();
                let modulus = Modulus::new(&n_bytes).unwrap();
                for base in [&n - &one, &n >> 1, BigUint::from(0xffff_ffffu32)] {
                    for e in [3, 65537, MAX_EXPONENT] {
                        check_pow(&modulus, &n, &base, e, &format!("{bits} bits, n = {n:x}"));
                    }
                }
            }
        }
    }

    #[test]
    fn even_or_tiny_moduli_are_refused_by_the_arithmetic() {
        assert!(Modulus::new(&[]).is_none());
        assert!(Modulus::new(&[0, 0]).is_none());
        assert!(Modulus::new(&[1]).is_none());
        assert!(Modulus::new(&[0x01, 0x00]).is_none());
        assert!(Modulus::new(&[3]).is_some());
        // 65531 with a leading zero byte: 512^3 mod 65531 = 10240.
        let small = Modulus::new(&[0, 0xff, 0xfb]).unwrap();
        assert_eq!(small.pow(&[0, 2, 0], 3).unwrap(), vec![0x00, 0x28, 0x00]);
    }

    #[test]
    fn tokens_signed_with_larger_keys_verify_and_jwt_simple_agrees() {
        use crate::crypto::sign::SigningKey;
        use crate::testutil::{good_claims, ISSUER, NOW};
        use crate::token::jwks::KeySet;
        use crate::token::jwt::{verify, Policy};
        use jwt_simple::prelude::*;
        use serde_json::json;

        let policy = Policy {
            issuer: ISSUER.into(),
            audiences: vec!["orders".into()],
            algorithms: RSA_ALGS.to_vec(),
            token_types: None,
            clock_skew_secs: 60,
            require_exp: true,
            max_token_bytes: 8192,
        };
        let options = || {
            Some(VerificationOptions {
                time_tolerance: Some(Duration::from_hours(24)),
                artificial_time: Some(UnixTimeStamp::from_secs(NOW)),
                ..Default::default()
            })
        };
        let b64 = |x: &BigUint| crate::crypto::b64::encode(&x.to_bytes_be());
        for bits in [3072, 4096] {
            let pair = pair(bits);
            let key = &pair.private;
            let (n, e) = (key.n().to_bytes_be(), key.e().to_bytes_be());
            for alg in [Alg::RS384, Alg::PS512] {
                let jwk = json!({"kty": "RSA", "alg": alg.name(), "kid": "big",
                    "n": b64(key.n()), "e": b64(key.e()), "d": b64(key.d()),
                    "p": b64(&key.primes()[0]), "q": b64(&key.primes()[1])});
                let signer = SigningKey::from_jwk(&jwk).unwrap();
                let keys = KeySet::from_value(&json!({"keys": [signer.public_jwk()]}))
                    .unwrap()
                    .set;
                let token = signer.sign(&good_claims()).unwrap();
                let (input, sig) = token.rsplit_once('.').unwrap();
                let mut sig = crate::crypto::b64::decode(sig.as_bytes()).unwrap();
                sig[bits / 16] ^= 0x10;
                let tampered = format!("{input}.{}", crate::crypto::b64::encode(&sig));
                for (token, valid) in [(&token, true), (&tampered, false)] {
                    assert_eq!(
                        verify(token, &policy, &keys, NOW).is_ok(),
                        valid,
                        "{bits}: {alg}"
                    );
                    let oracle = match alg {
                        Alg::RS384 => RS384PublicKey::from_components(&n, &e)
                            .unwrap()
                            .verify_token::<NoCustomClaims>(token, options())
                            .is_ok(),
                        _ => PS512PublicKey::from_components(&n, &e)
                            .unwrap()
                            .verify_token::<NoCustomClaims>(token, options())
                            .is_ok(),
                    };
                    assert_eq!(oracle, valid, "jwt-simple on {bits}: {alg}");
                }
            }
        }
    }
}
