//! Differential: our ES256 (src/crypto/p256_verify.rs, through `PublicKey::verify`)
//! against p256's `ecdsa::VerifyingKey::verify` (JOSE r ‖ s, SHA-256 of the message). Any
//! disagreement is a crash.
//!
//! Input: key mode, signature mode, message length, message, then parameters. Keys: the
//! public key of a secret scalar from the input (reduced mod n, zero skipped), a SEC1
//! encoding taken from the input, or a key made so that a signature's R has x(R) ≥ n
//! (r = x(R) - n). Signatures: p256's own (or the constructed one), then r or s set to
//! 0, 1, n - 1, n, n + 1, s → n - s (high s), r → r + n, a flipped bit, bytes of the
//! input, another length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::DecompressPoint;
use p256::elliptic_curve::subtle::Choice;
use p256::elliptic_curve::ff::{Field, PrimeField};
use p256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar};
use sha2::Digest;
use tokengate::crypto::alg::Alg;
use tokengate::crypto::{P256Key, PublicKey};

/// n, the group order, big-endian.
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `a + b` for 32-byte big-endian integers, and whether it overflowed 2^256.
fn add(a: [u8; 32], b: [u8; 32]) -> ([u8; 32], bool) {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in (0..32).rev() {
        let sum = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    (out, carry != 0)
}

/// `a + delta` (wrapping), big-endian.
fn add_small(a: [u8; 32], delta: i64) -> [u8; 32] {
    let mut out = a;
    let mut carry = i128::from(delta);
    for byte in out.iter_mut().rev() {
        let sum = i128::from(*byte) + carry;
        *byte = sum.rem_euclid(256) as u8;
        carry = sum.div_euclid(256);
    }
    out
}

fn reduce(bytes: [u8; 32]) -> Scalar {
    <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(bytes))
}

fn repr(scalar: &Scalar) -> [u8; 32] {
    scalar.to_repr().into()
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

fn oracle(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    Signature::from_slice(signature).is_ok_and(|signature| key.verify(message, &signature).is_ok())
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let key_mode = input.byte() % 3;
    let sig_mode = input.byte();
    let message_len = usize::from(input.byte());
    let message = input.take(message_len);

    // The key, and a signature to mutate: p256's own, or one with x(R) ≥ n.
    let (key, r, s, unreduced_x) = match key_mode {
        0 => {
            let secret = reduce(input.array());
            if bool::from(secret.is_zero()) {
                return;
            }
            let signer = SigningKey::from_bytes(&secret.to_repr()).unwrap();
            let signature: Signature = signer.sign(&message);
            let bytes = signature.to_bytes();
            let (r, s) = bytes.split_at(32);
            (*signer.verifying_key(), r.try_into().unwrap(), s.try_into().unwrap(), None)
        }
        1 => {
            // Any SEC1 encoding: both parse it with p256, so most are refused by both.
            let len = match input.byte() % 3 {
                0 => 33,
                1 => 65,
                _ => 1,
            };
            let encoding = input.take(len);
            let Ok(key) = VerifyingKey::from_sec1_bytes(&encoding) else {
                assert!(P256Key::from_sec1_bytes(&encoding).is_none());
                return;
            };
            let (r, s) = (input.array(), input.array());
            (key, r, s, None)
        }
        _ => {
            // A point P with x(P) = n + j (x < p): with Q = (s·P - z·G)/r and r = j,
            // u1·G + u2·Q = (z·G + r·Q)/s = P, so (r, s) verifies only if x(P) is reduced.
            let start = i64::from(input.byte());
            let sign = Choice::from(input.byte() & 1);
            let Some((x, point)) = (start..start + 64).find_map(|j| {
                let x = add_small(ORDER, j);
                Option::<AffinePoint>::from(AffinePoint::decompress(&x.into(), sign)).map(|p| (x, p))
            }) else {
                return;
            };
            let r = reduce(x);
            let s = reduce(input.array());
            if bool::from(r.is_zero()) || bool::from(s.is_zero()) {
                return;
            }
            let z = reduce(sha2::Sha256::digest(&message).into());
            let q = (ProjectivePoint::from(point) * s - ProjectivePoint::GENERATOR * z)
                * Option::<Scalar>::from(r.invert()).unwrap();
            let Ok(key) = VerifyingKey::from_affine(q.to_affine()) else {
                return;
            };
            (key, repr(&r), repr(&s), Some(x))
        }
    };

    let (mut r, mut s) = (r, s);
    let mut signature = None;
    match sig_mode % 20 {
        0 => {}
        1 => r = [0; 32],
        2 => s = [0; 32],
        3 => r = add_small([0; 32], 1),
        4 => s = add_small([0; 32], 1),
        5 => r = add_small(ORDER, -1),
        6 => s = add_small(ORDER, -1),
        7 => r = ORDER,
        8 => s = ORDER,
        9 => r = add_small(ORDER, 1),
        10 => s = add_small(ORDER, 1),
        // High s: n - s, valid too (p256 does not normalize for P-256).
        11 => s = repr(&-Option::<Scalar>::from(Scalar::from_repr(s.into())).unwrap_or(Scalar::ZERO)),
        12 => {
            let (sum, overflow) = add(r, ORDER);
            if !overflow {
                r = sum;
            }
        }
        13 => {
            let (sum, overflow) = add(s, ORDER);
            if !overflow {
                s = sum;
            }
        }
        14 => r = unreduced_x.unwrap_or(r),
        15 => r = input.array(),
        16 => s = input.array(),
        17 => {
            let bit = usize::from(input.byte()) % 512;
            if bit < 256 {
                r[bit / 8] ^= 1 << (bit % 8);
            } else {
                s[(bit - 256) / 8] ^= 1 << (bit % 8);
            }
        }
        18 => {
            let mut sig = [r, s].concat();
            if input.byte() & 1 == 0 {
                sig.pop();
            } else {
                sig.push(input.byte());
            }
            signature = Some(sig);
        }
        _ => {
            // r and s both from the input, small deltas from the valid ones.
            r = add_small(r, i64::from(input.byte() as i8));
            s = add_small(s, i64::from(input.byte() as i8));
        }
    }
    let signature = signature.unwrap_or_else(|| [r, s].concat());

    let ours = PublicKey::P256(P256Key::from_sec1_bytes(key.to_sec1_point(false).as_bytes()).unwrap())
        .verify(Alg::ES256, &message, &signature);
    let theirs = oracle(&key, &message, &signature);
    assert_eq!(
        ours,
        theirs,
        "key mode {key_mode}, signature mode {}: ours {ours}, p256 {theirs}; key {:02x?}, message {:02x?}, signature {:02x?}",
        sig_mode % 20,
        key.to_sec1_point(false).as_bytes(),
        message,
        signature
    );
});
