//! Differential: our EdDSA (src/crypto/ed25519_verify.rs, through `PublicKey::verify`)
//! against ed25519-dalek's `verify_strict`, whose rules ours keeps. Any disagreement is a
//! crash. A key ed25519-dalek refuses to parse counts as its refusal.
//!
//! Input: key mode, signature mode, message length, message, then parameters. Keys: from a
//! 32-byte seed (signed by dalek), raw 32 bytes of the input or a small-order /
//! non-canonical encoding, or `a·B + T` for a secret scalar `a` of the input and a torsion
//! point `T` (mixed order), signed here with a nonce `r·B`, optionally plus torsion too.
//! Signatures are then mutated: S + L, S = L, S's top bit, S from the input, R's sign bit,
//! R non-canonical (y = p + i), R of small order with S = k·a (the equation then holds),
//! zero, a flipped bit, another length, R from the input.
#![no_main]

use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::Signer;
use libfuzzer_sys::fuzz_target;
use sha2::Digest;
use tokengate::crypto::alg::Alg;
use tokengate::crypto::{Ed25519Key, PublicKey};

/// L, the order of the basepoint, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// p = 2^255 - 19, little-endian.
const P: [u8; 32] = {
    let mut p = [0xff; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

/// `a + b` for 32-byte little-endian integers, and whether it overflowed 2^256.
fn add(a: [u8; 32], b: [u8; 32]) -> ([u8; 32], bool) {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    (out, carry != 0)
}

/// `a + delta` (wrapping), little-endian.
fn add_small(a: [u8; 32], delta: i64) -> [u8; 32] {
    let mut out = a;
    let mut carry = i128::from(delta);
    for byte in out.iter_mut() {
        let sum = i128::from(*byte) + carry;
        *byte = sum.rem_euclid(256) as u8;
        carry = sum.div_euclid(256);
    }
    out
}

/// The challenge `k = SHA-512(R ‖ A ‖ M) mod L`.
fn challenge(r_bytes: &[u8], key: &[u8; 32], message: &[u8]) -> Scalar {
    let mut hash = sha2::Sha512::new();
    hash.update(r_bytes);
    hash.update(key);
    hash.update(message);
    Scalar::from_bytes_mod_order_wide(&hash.finalize().into())
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        first
    }
    fn take(&mut self, len: usize) -> Vec<u8> {
        let (head, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        head.to_vec()
    }
    fn array(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let bytes = self.take(32);
        out[..bytes.len()].copy_from_slice(&bytes);
        out
    }
}

/// ed25519-dalek's verdict; a key it refuses to parse is a refusal.
fn oracle(key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    ed25519_dalek::VerifyingKey::from_bytes(key).is_ok_and(|key| {
        ed25519_dalek::Signature::from_slice(signature)
            .is_ok_and(|signature| key.verify_strict(message, &signature).is_ok())
    })
}

fn ours(key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    Ed25519Key::from_bytes(key)
        .is_some_and(|key| PublicKey::Ed25519(key).verify(Alg::EdDSA, message, signature))
}

/// A small-order or non-canonical encoding chosen by `pick`.
fn special_encoding(pick: u8, sign: bool) -> [u8; 32] {
    let mut out = if pick < 8 {
        EIGHT_TORSION[usize::from(pick)].compress().to_bytes()
    } else {
        add_small(P, i64::from(pick % 19)) // y = p + i: y ≥ p, non-canonical
    };
    if sign {
        out[31] ^= 0x80;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let key_mode = input.byte() % 4;
    let sig_mode = input.byte();
    let message_len = usize::from(input.byte());
    let message = input.take(message_len);

    // The key's encoding, a signature, and the secret scalar when known (to re-sign).
    let (key, signature, secret): ([u8; 32], Vec<u8>, Option<Scalar>) = match key_mode {
        0 => {
            let signer = ed25519_dalek::SigningKey::from_bytes(&input.array());
            let signature = signer.sign(&message).to_bytes().to_vec();
            (signer.verifying_key().to_bytes(), signature, None)
        }
        1 => {
            let key = input.array();
            let signature = input.take(64);
            (key, signature, None)
        }
        2 => {
            let pick = input.byte();
            let key = special_encoding(pick % 27, pick & 0x80 != 0);
            let signature = input.take(64);
            (key, signature, None)
        }
        _ => {
            let a = Scalar::from_bytes_mod_order(input.array());
            let torsion = input.byte();
            let point = EdwardsPoint::mul_base(&a) + EIGHT_TORSION[usize::from(torsion % 8)];
            let key = point.compress().to_bytes();
            let r = Scalar::from_bytes_mod_order(input.array());
            let big_r = EdwardsPoint::mul_base(&r) + EIGHT_TORSION[usize::from(torsion / 8 % 8)];
            let r_bytes = big_r.compress().to_bytes();
            let s = r + challenge(&r_bytes, &key, &message) * a;
            (key, [r_bytes, s.to_bytes()].concat(), Some(a))
        }
    };

    let mut signature = signature;
    if signature.len() == 64 {
        let mut r: [u8; 32] = signature[..32].try_into().unwrap();
        let mut s: [u8; 32] = signature[32..].try_into().unwrap();
        let mut whole = None;
        match sig_mode % 16 {
            0 => {}
            1 => {
                let (sum, overflow) = add(s, L);
                if !overflow {
                    s = sum;
                }
            }
            2 => s = L,
            3 => s = add_small(L, i64::from(input.byte() as i8)),
            4 => s[31] |= 0x80,
            5 => s = input.array(),
            6 => r[31] ^= 0x80,
            7 => {
                let pick = input.byte();
                r = special_encoding(8 + pick % 19, pick & 0x80 != 0);
            }
            8 => {
                // R of small order (or its non-canonical encodings); with a known secret,
                // S = k·a makes [S]B - [k]A = -[k]T for the key's torsion T, and exactly
                // the identity when the key has none: only the small-order rule refuses.
                let pick = input.byte();
                r = special_encoding(pick % 27, pick & 0x80 != 0);
                if let Some(a) = secret {
                    s = (challenge(&r, &key, &message) * a).to_bytes();
                }
            }
            9 => whole = Some(vec![0; 64]),
            10 => {
                let bit = usize::from(input.byte()) | usize::from(input.byte() & 1) << 8;
                if bit < 256 {
                    r[bit / 8] ^= 1 << (bit % 8);
                } else {
                    s[(bit - 256) / 8] ^= 1 << (bit % 8);
                }
            }
            11 => {
                let mut sig = [r, s].concat();
                if input.byte() & 1 == 0 {
                    sig.pop();
                } else {
                    sig.push(input.byte());
                }
                whole = Some(sig);
            }
            12 => r = input.array(),
            13 => s = add_small(s, i64::from(input.byte() as i8)),
            // With a known secret: R from the input, S computed for it.
            14 => {
                r = input.array();
                if let Some(a) = secret {
                    s = (challenge(&r, &key, &message) * a).to_bytes();
                }
            }
            _ => {
                // Another message.
                whole = Some([r, s].concat());
                let _ = input.byte();
            }
        }
        signature = whole.unwrap_or_else(|| [r, s].concat());
    }

    let (message, signature) = (message.as_slice(), signature.as_slice());
    let message = if key_mode == 0 && sig_mode % 16 == 15 { input.0 } else { message };
    let ours = ours(&key, message, signature);
    let theirs = oracle(&key, message, signature);
    assert_eq!(
        ours,
        theirs,
        "key mode {key_mode}, signature mode {}: ours {ours}, ed25519-dalek {theirs}; key {:02x?}, message {:02x?}, signature {:02x?}",
        sig_mode % 16,
        key,
        message,
        signature
    );
});
