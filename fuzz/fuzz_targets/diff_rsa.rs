//! Differential: our RSA verification (src/crypto/rsa_verify.rs, through
//! `PublicKey::verify`) against the `rsa` crate's, for RS256/384/512 and PS256/384/512.
//! Any disagreement is a crash.
//!
//! Keys are read once per process (the same keys in every run, so a crash reproduces):
//! 2048 and 3072 bits, and 2049 bits, where PSS's emLen is k - 1.
//! Input: key, algorithm, mode, message length, message, then the mode's parameters. The
//! signature is either bytes of the input or a signature of the `rsa` crate mutated at the
//! edges (0, 1, n - 1, n, n + 1, s + n, a flipped bit, a byte short or long, bytes
//! overwritten), or a raw signature of an encoded message taken from the input or mutated
//! from a valid one (so the padding checks themselves are fuzzed).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPrivateKey};
use sha2::Digest;
use tokengate::crypto::alg::{Alg, Hash};
use tokengate::crypto::{PublicKey, RsaKey};

const ALGS: [Alg; 6] = [Alg::RS256, Alg::RS384, Alg::RS512, Alg::PS256, Alg::PS384, Alg::PS512];

struct Pair {
    private: RsaPrivateKey,
    ours: PublicKey,
}

/// The keys, read once per process: the 2048-bit fixture, and 3072 and 2049 bits from
/// fuzz/keys/ (generating them here took minutes under the fuzzer's instrumentation).
fn pairs() -> &'static [Pair] {
    static PAIRS: OnceLock<Vec<Pair>> = OnceLock::new();
    PAIRS.get_or_init(|| {
        let dir = env!("CARGO_MANIFEST_DIR");
        [
            (format!("{dir}/../tests/fixtures/keys/rs256.jwk"), 2048),
            (format!("{dir}/keys/rsa3072.jwk"), 3072),
            (format!("{dir}/keys/rsa2049.jwk"), 2049),
        ]
        .into_iter()
        .map(|(path, bits)| {
            let jwk: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            let big = |member: &str| {
                BigUint::from_bytes_be(
                    &tokengate::crypto::b64::decode(jwk[member].as_str().unwrap().as_bytes()).unwrap(),
                )
            };
            let private =
                RsaPrivateKey::from_components(big("n"), big("e"), big("d"), vec![big("p"), big("q")])
                    .unwrap();
            assert_eq!(private.n().bits(), bits);
            let ours = PublicKey::Rsa(
                RsaKey::new(&private.n().to_bytes_be(), &private.e().to_bytes_be()).unwrap(),
            );
            Pair { private, ours }
        })
        .collect()
    })
}

fn is_pss(alg: Alg) -> bool {
    matches!(alg, Alg::PS256 | Alg::PS384 | Alg::PS512)
}

fn digest(hash: Hash, message: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha256 => sha2::Sha256::digest(message).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(message).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(message).to_vec(),
    }
}

/// The oracle: the `rsa` crate's verify of the prehashed message, nothing added.
fn oracle(key: &RsaPrivateKey, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
    let key = key.to_public_key();
    let hashed = digest(alg.hash(), message);
    let result = match alg {
        Alg::RS256 => key.verify(Pkcs1v15Sign::new::<sha2::Sha256>(), &hashed, signature),
        Alg::RS384 => key.verify(Pkcs1v15Sign::new::<sha2::Sha384>(), &hashed, signature),
        Alg::RS512 => key.verify(Pkcs1v15Sign::new::<sha2::Sha512>(), &hashed, signature),
        Alg::PS256 => key.verify(Pss::new::<sha2::Sha256>(), &hashed, signature),
        Alg::PS384 => key.verify(Pss::new::<sha2::Sha384>(), &hashed, signature),
        Alg::PS512 => key.verify(Pss::new::<sha2::Sha512>(), &hashed, signature),
        _ => unreachable!(),
    };
    result.is_ok()
}

/// A valid signature by the `rsa` crate (PSS's salt from a seed of the input).
fn sign(key: &RsaPrivateKey, alg: Alg, message: &[u8], seed: u64) -> Vec<u8> {
    let hashed = digest(alg.hash(), message);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    match alg {
        Alg::RS256 => key.sign(Pkcs1v15Sign::new::<sha2::Sha256>(), &hashed),
        Alg::RS384 => key.sign(Pkcs1v15Sign::new::<sha2::Sha384>(), &hashed),
        Alg::RS512 => key.sign(Pkcs1v15Sign::new::<sha2::Sha512>(), &hashed),
        Alg::PS256 => key.sign_with_rng(&mut rng, Pss::new::<sha2::Sha256>(), &hashed),
        Alg::PS384 => key.sign_with_rng(&mut rng, Pss::new::<sha2::Sha384>(), &hashed),
        Alg::PS512 => key.sign_with_rng(&mut rng, Pss::new::<sha2::Sha512>(), &hashed),
        _ => unreachable!(),
    }
    .unwrap()
}

/// `value` as exactly `k` big-endian bytes, or its own length if longer.
fn be(value: &BigUint, k: usize) -> Vec<u8> {
    let bytes = value.to_bytes_be();
    let mut out = vec![0; k.saturating_sub(bytes.len())];
    out.extend_from_slice(&bytes);
    out
}

/// `em^d mod n` (em reduced mod n first) as `k` bytes: whatever `em` is, the public
/// operation on the result recovers `em mod n`.
fn raw_sign(key: &RsaPrivateKey, em: &[u8]) -> Vec<u8> {
    let m = BigUint::from_bytes_be(em) % key.n();
    let s = rsa::hazmat::rsa_decrypt::<rand::rngs::StdRng>(None, key, &m).unwrap();
    be(&s, key.size())
}

/// `s^e mod n` as `k` bytes (for s < n: the encoded message the verifier recovers).
fn public_op(key: &RsaPrivateKey, signature: &[u8]) -> Vec<u8> {
    let s = BigUint::from_bytes_be(signature);
    be(&s.modpow(key.e(), key.n()), key.size())
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        first
    }
    fn u16(&mut self) -> usize {
        usize::from(self.byte()) << 8 | usize::from(self.byte())
    }
    fn take(&mut self, len: usize) -> Vec<u8> {
        let (head, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        head.to_vec()
    }
    /// Exactly `len` bytes: the input's, zero-padded.
    fn take_padded(&mut self, len: usize) -> Vec<u8> {
        let mut out = self.take(len);
        out.resize(len, 0);
        out
    }
}

fuzz_target!(|data: &[u8]| {
    let seed = u64::from_le_bytes(sha2::Sha256::digest(data)[..8].try_into().unwrap());
    let mut input = Input(data);
    let pairs = pairs();
    let pair = &pairs[usize::from(input.byte()) % pairs.len()];
    let alg = ALGS[usize::from(input.byte()) % ALGS.len()];
    let mode = input.byte();
    let message_len = usize::from(input.byte());
    let message = input.take(message_len);
    let key = &pair.private;
    let k = key.size();
    let n = key.n();
    let valid = || sign(key, alg, &message, seed);
    let signature = match mode % 16 {
        0 => input.take_padded(k),
        1 => valid(),
        2 => vec![0; k],
        3 => be(&BigUint::from(1u8), k),
        4 => be(&(n - 1u8), k),
        5 => be(n, k),
        6 => be(&(n + 1u8), k),
        // s + n: k bytes when it fits, k + 1 otherwise.
        7 => be(&(BigUint::from_bytes_be(&valid()) + n), k),
        8 => {
            let mut sig = valid();
            let bit = input.u16() % (8 * k);
            sig[bit / 8] ^= 1 << (bit % 8);
            sig
        }
        9 => {
            let sig = valid();
            if input.byte() & 1 == 0 { sig[1..].to_vec() } else { sig[..k - 1].to_vec() }
        }
        10 => {
            let mut sig = valid();
            let (how, value) = (input.byte(), input.byte());
            if how & 1 == 0 {
                sig.insert(0, value);
            } else {
                sig.push(value);
            }
            sig
        }
        11 => {
            let mut sig = valid();
            let at = input.u16() % k;
            let bytes = input.take(k - at);
            sig[at..at + bytes.len()].copy_from_slice(&bytes);
            sig
        }
        // An encoded message from the input, signed raw.
        12 => raw_sign(key, &input.take_padded(k)),
        // The valid encoded message with bytes set by the input, signed raw.
        13 => {
            let mut em = public_op(key, &valid());
            for _ in 0..input.byte() % 8 + 1 {
                let at = input.u16() % k;
                em[at] = input.byte();
            }
            raw_sign(key, &em)
        }
        // Signed with another algorithm.
        14 => sign(key, ALGS[usize::from(input.byte()) % ALGS.len()], &message, seed),
        // The signature of another message (the rest of the input).
        _ => sign(key, alg, input.0, seed),
    };

    let ours = pair.ours.verify(alg, &message, &signature);
    let theirs = oracle(key, alg, &message, &signature);

    // The second documented difference (rsa_verify.rs,
    // pss_signature_at_or_above_the_modulus_is_refused_though_the_rsa_crate_accepts_it):
    // RFC 8017 §8.1.2 step 1 / §5.2.2 refuses a signature s ≥ n; the rsa crate's PSS
    // verify only checks its length and reduces s mod n, so s + n verifies there. Only
    // our refusal is checked.
    if is_pss(alg) && signature.len() == k && BigUint::from_bytes_be(&signature) >= *n {
        assert!(!ours, "PSS signature not below the modulus accepted: {alg}, {} bits", n.bits());
        return;
    }

    // The documented difference (rsa_verify.rs,
    // pss_with_a_nonzero_byte_above_em_len_is_refused_though_the_rsa_crate_ignores_it):
    // when modBits - 1 is a multiple of 8, emLen = k - 1 and RFC 8017 §8.1.2 step 2c
    // refuses a recovered integer with a nonzero byte above emLen; the rsa crate skips that
    // byte. There only our refusal is checked.
    if is_pss(alg)
        && (key.n().bits() - 1) % 8 == 0
        && signature.len() == k
        && BigUint::from_bytes_be(&signature) < *n
        && public_op(key, &signature)[0] != 0
    {
        assert!(!ours, "PSS with a nonzero byte above emLen accepted: {alg}, {} bits", n.bits());
        return;
    }

    assert_eq!(
        ours,
        theirs,
        "{alg}, {} bits, mode {}: ours {ours}, rsa crate {theirs}; message {:02x?}, signature {:02x?}",
        n.bits(),
        mode % 16,
        message,
        signature
    );
});
