//! ES256 verification (ECDSA over P-256 with SHA-256) on precomputed tables.
//!
//! p256's own `VerifyingKey::verify` computes `u1·G + u2·Q` with wNAF: 256 doublings and
//! its small tables rebuilt on every call. Keys are reused for many tokens, so here each
//! key, and the generator once, gets a fixed-base table of its multiples `d·2^(w·i)·P`
//! in affine form: a 256-bit multiplication is then one mixed addition per w-bit window
//! and no doubling at all. The field and group arithmetic is p256's; only the ECDSA
//! equation and the table walk are written here. Everything is public (key, signature,
//! message), so variable time is fine.

use p256::elliptic_curve::ff::{Field, PrimeField};
use p256::elliptic_curve::group::Group;
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::BatchNormalize;
use p256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar};
use std::sync::{Arc, OnceLock};

/// Window width of a key's table: 52 windows of 16 points (60 KB), 52 mixed additions per
/// multiplication. Measured in V8 (bench/verify, widths 4 to 6): 4 verifies ~20% slower
/// for a table built in ~1.0 ms instead of ~1.7 ms; 6 was no faster (bigger tables, ~3 ms).
pub const KEY_WINDOW_BITS: u32 = 5;
/// Window width of the generator's table (one per VM, built at the first ES256 check,
/// ~1.7 ms in V8).
pub const GENERATOR_WINDOW_BITS: u32 = 5;

/// The multiples `d·2^(w·i)·P` for every window `i` and `d` in `1..=2^(w-1)`: with digits
/// recoded into `[-2^(w-1), 2^(w-1))`, every window of a scalar is one table point or its
/// negation (negating an affine point is free).
pub struct FixedBaseTable {
    window_bits: u32,
    /// Window `i`'s points at `i * 2^(w-1) ..`, `d·2^(w·i)·P` at offset `d - 1`.
    points: Vec<AffinePoint>,
}

impl FixedBaseTable {
    /// Tables for windows of 2 to 8 bits: digits of one bit could only be -1 or 0, and the
    /// digit recoding reads at most two bytes.
    pub fn new(base: ProjectivePoint, window_bits: u32) -> FixedBaseTable {
        let window_bits = window_bits.clamp(2, 8);
        let per_window = 1usize << (window_bits - 1);
        let windows = window_count(window_bits);
        let mut projective = Vec::with_capacity(windows * per_window);
        let mut window_base = base;
        for _ in 0..windows {
            let mut multiple = window_base;
            projective.push(multiple);
            for _ in 1..per_window {
                multiple += window_base;
                projective.push(multiple);
            }
            // The largest multiple is 2^(w-1)·B; doubling it gives the next window's base.
            window_base = multiple.double();
        }
        // One field inversion for the whole table (Montgomery's trick).
        let points = ProjectivePoint::batch_normalize(projective.as_slice());
        FixedBaseTable {
            window_bits,
            points,
        }
    }

    /// Bytes the table's points take.
    pub fn size_bytes(&self) -> usize {
        self.points.len() * std::mem::size_of::<AffinePoint>()
    }

    /// `accumulator + k·P`.
    pub fn mul_add(&self, mut accumulator: ProjectivePoint, k: &Scalar) -> ProjectivePoint {
        let per_window = 1usize << (self.window_bits - 1);
        let digits = SignedDigits::new(k, self.window_bits);
        let windows = self.points.chunks_exact(per_window);
        for (digit, window) in digits.zip(windows) {
            let magnitude = digit.unsigned_abs() as usize;
            let Some(point) = magnitude.checked_sub(1).and_then(|at| window.get(at)) else {
                continue; // digit 0
            };
            if digit > 0 {
                accumulator += point;
            } else {
                accumulator += -*point;
            }
        }
        accumulator
    }
}

/// Windows needed for a scalar below 2^256 with signed digits: the carry out of the top
/// window needs one more when w divides 256, and fits in the top window otherwise.
fn window_count(window_bits: u32) -> usize {
    (256 / window_bits as usize) + 1
}

/// The digits of a scalar in radix 2^w, each in `[-2^(w-1), 2^(w-1))`, least significant
/// first: a window's value at or above half the radix becomes negative and carries one
/// into the next.
struct SignedDigits {
    /// The scalar, little-endian, with a zero byte of room for reading across the top.
    bytes: [u8; 33],
    window_bits: u32,
    window: usize,
    windows: usize,
    carry: i32,
}

impl SignedDigits {
    fn new(k: &Scalar, window_bits: u32) -> SignedDigits {
        let mut bytes = [0u8; 33];
        for (to, from) in bytes.iter_mut().zip(k.to_repr().iter().rev()) {
            *to = *from;
        }
        SignedDigits {
            bytes,
            window_bits,
            window: 0,
            windows: window_count(window_bits),
            carry: 0,
        }
    }
}

impl Iterator for SignedDigits {
    type Item = i32;

    fn next(&mut self) -> Option<i32> {
        if self.window >= self.windows {
            return None;
        }
        let bit = self.window * self.window_bits as usize;
        self.window += 1;
        let byte = |at: usize| i32::from(self.bytes.get(at).copied().unwrap_or(0));
        let pair = byte(bit / 8) | (byte(bit / 8 + 1) << 8);
        let radix = 1i32 << self.window_bits;
        let value = ((pair >> (bit % 8)) & (radix - 1)) + self.carry;
        if value >= radix / 2 {
            self.carry = 1;
            Some(value - radix)
        } else {
            self.carry = 0;
            Some(value)
        }
    }
}

/// The generator's table, built once per VM at first use.
pub fn generator_table() -> &'static FixedBaseTable {
    static TABLE: OnceLock<FixedBaseTable> = OnceLock::new();
    TABLE.get_or_init(|| FixedBaseTable::new(ProjectivePoint::GENERATOR, GENERATOR_WINDOW_BITS))
}

/// A P-256 public key: a point on the curve that is not the identity (the only way to
/// build one is [`P256Key::from_sec1_bytes`]), and its table, built at its first check.
///
/// Lazily rather than when the JWKS is parsed: a set holds up to 64 keys, each VM parses
/// its own copy at start-up and at every refetch, and most keys of a set may never sign
/// anything this filter sees; a table costs about ten verifications.
#[derive(Clone)]
pub struct P256Key(Arc<KeyTable>);

struct KeyTable {
    point: AffinePoint,
    table: OnceLock<FixedBaseTable>,
}

impl P256Key {
    /// The key of the SEC1 encoding `bytes` (p256's checks: on the curve, not the identity,
    /// coordinates below p).
    pub fn from_sec1_bytes(bytes: &[u8]) -> Option<P256Key> {
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).ok()?;
        Some(P256Key(Arc::new(KeyTable {
            point: *key.as_affine(),
            table: OnceLock::new(),
        })))
    }

    /// The key's table, built on first use.
    pub fn table(&self) -> &FixedBaseTable {
        self.0.table.get_or_init(|| {
            FixedBaseTable::new(ProjectivePoint::from(self.0.point), KEY_WINDOW_BITS)
        })
    }

    /// ES256 over `message`: `signature` is JOSE's `r ‖ s`, 32 bytes each.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.verify_digest(&hmac_sha256::Hash::hash(message), signature)
    }

    /// ECDSA verification of a SHA-256 `digest`.
    pub fn verify_digest(&self, digest: &[u8; 32], signature: &[u8]) -> bool {
        verify_with_tables(generator_table(), self.table(), digest, signature)
    }
}

/// ECDSA verification (SEC 1 §4.1.4) of a 256-bit `digest` and a JOSE `signature`, with
/// the tables of the generator and of the key.
pub fn verify_with_tables(
    generator: &FixedBaseTable,
    key: &FixedBaseTable,
    digest: &[u8; 32],
    signature: &[u8],
) -> bool {
    let Ok(signature) = <&[u8; 64]>::try_from(signature) else {
        return false;
    };
    let (r, s) = signature.split_at(32);
    let (Some(r), Some(s)) = (signature_scalar(r), signature_scalar(s)) else {
        return false;
    };
    // bits2field of a 256-bit digest is the digest itself; below 2n, one conditional
    // subtraction reduces it.
    let z = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(*digest));
    let Some(s_inverse) = Option::<Scalar>::from(s.invert_vartime()) else {
        return false;
    };
    let u1 = z * s_inverse;
    let u2 = r * s_inverse;
    let point = key.mul_add(generator.mul_add(ProjectivePoint::IDENTITY, &u1), &u2);
    if bool::from(point.is_identity()) {
        return false;
    }
    // x(R) is below p < 2n: reduced mod n by one conditional subtraction as well.
    let x = point.to_affine().x();
    <Scalar as Reduce<FieldBytes>>::reduce(&x) == r
}

/// `r` or `s`: 32 big-endian bytes of an integer in `[1, n)`.
fn signature_scalar(bytes: &[u8]) -> Option<Scalar> {
    let bytes = FieldBytes::try_from(bytes).ok()?;
    let scalar = Option::<Scalar>::from(Scalar::from_repr(bytes))?;
    (!bool::from(scalar.is_zero())).then_some(scalar)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
    use p256::ecdsa::signature::{Signer, Verifier};
    use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
    use p256::elliptic_curve::point::DecompressPoint;
    use p256::elliptic_curve::subtle::Choice;

    /// n, the group order, big-endian.
    const ORDER: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];

    /// `a + delta` for a 32-byte big-endian `a` (wrapping).
    fn add_small(a: [u8; 32], delta: i64) -> [u8; 32] {
        let mut out = a;
        let mut carry = delta as i128;
        for byte in out.iter_mut().rev() {
            let sum = i128::from(*byte) + carry;
            *byte = sum.rem_euclid(256) as u8;
            carry = sum.div_euclid(256);
        }
        out
    }

    fn scalar(bytes: [u8; 32]) -> Scalar {
        Scalar::from_repr(bytes.into()).unwrap()
    }

    /// A deterministic signing key per seed.
    fn signing_key(seed: u32) -> SigningKey {
        let secret = hmac_sha256::Hash::hash(format!("p256 key {seed}").as_bytes());
        SigningKey::from_bytes(&secret.into()).unwrap()
    }

    fn ours(key: &VerifyingKey) -> P256Key {
        P256Key::from_sec1_bytes(key.to_sec1_point(false).as_bytes()).unwrap()
    }

    /// p256's own verification of the JOSE bytes, the oracle.
    fn oracle(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
        Signature::from_slice(signature)
            .is_ok_and(|signature| key.verify(message, &signature).is_ok())
    }

    fn oracle_digest(key: &VerifyingKey, digest: &[u8; 32], signature: &[u8]) -> bool {
        Signature::from_slice(signature)
            .is_ok_and(|signature| key.verify_prehash(digest, &signature).is_ok())
    }

    /// Both paths on one vector: they must agree; returns the verdict.
    fn both(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
        let new = ours(key).verify(message, signature);
        assert_eq!(new, oracle(key, message, signature), "{signature:02x?}");
        new
    }

    fn both_digest(key: &VerifyingKey, digest: &[u8; 32], signature: &[u8]) -> bool {
        let new = ours(key).verify_digest(digest, signature);
        assert_eq!(
            new,
            oracle_digest(key, digest, signature),
            "{digest:02x?} {signature:02x?}"
        );
        new
    }

    fn jose(r: [u8; 32], s: [u8; 32]) -> Vec<u8> {
        [r, s].concat()
    }

    fn split(signature: &Signature) -> ([u8; 32], [u8; 32]) {
        let bytes = signature.to_bytes();
        let mut r = [0u8; 32];
        let mut s = [0u8; 32];
        r.copy_from_slice(&bytes[..32]);
        s.copy_from_slice(&bytes[32..]);
        (r, s)
    }

    #[test]
    fn table_multiplication_matches_p256_for_every_window_width() {
        let mut scalars = vec![
            Scalar::ZERO,
            Scalar::ONE,
            -Scalar::ONE,
            scalar(add_small(ORDER, -2)),
            scalar([0x80; 32]),
            scalar([0x88; 32]),
            scalar([0x7f; 32]),
            Scalar::from(0xffff_ffffu64),
        ];
        for i in 0..8u32 {
            let bytes = hmac_sha256::Hash::hash(&i.to_le_bytes());
            scalars.push(<Scalar as Reduce<FieldBytes>>::reduce(&bytes.into()));
        }
        let base = ProjectivePoint::GENERATOR * scalar(hmac_sha256::Hash::hash(b"base"));
        for width in 2..=8 {
            let table = FixedBaseTable::new(base, width);
            for k in &scalars {
                assert_eq!(
                    table.mul_add(ProjectivePoint::IDENTITY, k),
                    base * k,
                    "width {width}, k {k:?}"
                );
            }
        }
    }

    #[test]
    fn valid_signatures_of_many_keys_verify_and_every_tampered_byte_fails_like_p256() {
        for seed in 0..12 {
            let signer = signing_key(seed);
            let key = *signer.verifying_key();
            let other = *signing_key(seed + 1000).verifying_key();
            for m in 0..4 {
                let message = format!("eyJhbGciOiJFUzI1NiJ9.{seed}.{m}").repeat(m + 1);
                let signature: Signature = signer.sign(message.as_bytes());
                let signature = signature.to_bytes().to_vec();
                assert!(both(&key, message.as_bytes(), &signature));
                assert!(!both(&other, message.as_bytes(), &signature), "wrong key");
                let mut altered = message.clone().into_bytes();
                altered[0] ^= 1;
                assert!(!both(&key, &altered, &signature), "other message");
                if seed < 3 {
                    for at in 0..64 {
                        for bit in [0x01, 0x80] {
                            let mut tampered = signature.clone();
                            tampered[at] ^= bit;
                            assert!(!both(&key, message.as_bytes(), &tampered), "byte {at}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn high_s_is_accepted_like_p256_and_out_of_range_r_or_s_is_refused() {
        let signer = signing_key(7);
        let key = *signer.verifying_key();
        let message = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";
        let signature: Signature = signer.sign(message);
        let (r, s) = split(&signature);
        // s and n - s are both valid ECDSA signatures; p256 does not normalize for P-256.
        let minus_s = (-scalar(s)).to_repr().into();
        assert!(both(&key, message, &jose(r, s)));
        assert!(both(&key, message, &jose(r, minus_s)));

        let zero = [0u8; 32];
        let out_of_range = [
            zero,
            ORDER,
            add_small(ORDER, 1),
            [0xff; 32],
            add_small(ORDER, i64::from(u32::MAX)),
        ];
        for bad in out_of_range {
            assert!(!both(&key, message, &jose(bad, s)), "r = {bad:02x?}");
            assert!(!both(&key, message, &jose(r, bad)), "s = {bad:02x?}");
            // r + n has the same residue: refused all the same.
        }
        let r_plus_n = add_small(r, 0);
        let (sum, overflow) = {
            let mut out = [0u8; 32];
            let mut carry = 0u16;
            for ((o, a), b) in out
                .iter_mut()
                .rev()
                .zip(r_plus_n.iter().rev())
                .zip(ORDER.iter().rev())
            {
                let total = u16::from(*a) + u16::from(*b) + carry;
                *o = total as u8;
                carry = total >> 8;
            }
            (out, carry)
        };
        if overflow == 0 {
            assert!(!both(&key, message, &jose(sum, s)));
        }
        // n - 1 is in range: a wrong, not malformed, signature.
        let n_minus_1 = add_small(ORDER, -1);
        assert!(!both(&key, message, &jose(n_minus_1, s)));
        assert!(!both(&key, message, &jose(r, n_minus_1)));
        assert!(!both(
            &key,
            message,
            &jose(add_small(zero, 1), add_small(zero, 1))
        ));
        // Only exactly 64 bytes.
        let good = jose(r, s);
        assert!(!ours(&key).verify(message, &good[..63]));
        assert!(!ours(&key).verify(message, &[&good[..], &[0]].concat()));
        assert!(!ours(&key).verify(message, &[]));
    }

    #[test]
    fn digests_at_and_above_the_order_are_reduced_like_p256() {
        let signer = signing_key(3);
        let key = *signer.verifying_key();
        let digests = [
            [0u8; 32],
            add_small([0u8; 32], 1),
            add_small(ORDER, -1),
            ORDER,
            add_small(ORDER, 1),
            add_small(ORDER, 12345),
            [0xff; 32],
        ];
        for digest in digests {
            let signature: Signature = signer.sign_prehash(&digest).unwrap();
            let signature = signature.to_bytes().to_vec();
            assert!(both_digest(&key, &digest, &signature), "{digest:02x?}");
            // The same residue mod n is the same message to ECDSA, in both paths.
            let mut flipped = digest;
            flipped[31] ^= 1;
            assert!(!both_digest(&key, &flipped, &signature));
        }
        // n and 0 reduce to the same scalar: a signature of one verifies for the other.
        let signature: Signature = signer.sign_prehash(&[0u8; 32]).unwrap();
        assert!(both_digest(&key, &ORDER, &signature.to_bytes()));
    }

    /// With a zero digest, `R = (r/s)·Q`: for a point P and any s, the key `(s/r)·P` and
    /// the signature `(x(P) mod n, s)` verify. That reaches a P with `x(P) ≥ n`, which
    /// random signatures essentially never do.
    #[test]
    fn x_of_r_above_the_order_is_reduced_before_comparing_like_p256() {
        let mut found = 0;
        for k in 1..40i64 {
            let x = add_small(ORDER, k);
            let Some(point) =
                Option::<AffinePoint>::from(AffinePoint::decompress(&x.into(), Choice::from(0)))
            else {
                continue;
            };
            found += 1;
            let r = <Scalar as Reduce<FieldBytes>>::reduce(&x.into());
            assert_eq!(r, Scalar::from(k as u64));
            for s in [r, Scalar::from(77u64), -Scalar::from(5u64)] {
                let q = (ProjectivePoint::from(point) * (s * r.invert().unwrap())).to_affine();
                let key = VerifyingKey::from_affine(q).unwrap();
                let signature = jose(r.to_repr().into(), s.to_repr().into());
                assert!(both_digest(&key, &[0u8; 32], &signature), "k = {k}");
                assert!(both_digest(&key, &ORDER, &signature), "k = {k}");
                // The unreduced x is not a valid r.
                let unreduced = jose(x, s.to_repr().into());
                assert!(!both_digest(&key, &[0u8; 32], &unreduced));
                let other = jose((r + Scalar::ONE).to_repr().into(), s.to_repr().into());
                assert!(!both_digest(&key, &[0u8; 32], &other));
            }
        }
        assert!(found > 5, "too few points with x ≥ n to test: {found}");
    }

    /// With the key `d = -z/r`, `u1·G + u2·Q = (z + r·d)/s · G` is the identity.
    #[test]
    fn r_at_the_identity_is_refused_like_p256() {
        for seed in 0..4u32 {
            let digest = hmac_sha256::Hash::hash(&seed.to_le_bytes());
            let z = <Scalar as Reduce<FieldBytes>>::reduce(&digest.into());
            let r = Scalar::from(u64::from(seed) + 2);
            let d = -(z * r.invert().unwrap());
            let key =
                VerifyingKey::from_affine((ProjectivePoint::GENERATOR * d).to_affine()).unwrap();
            for s in [Scalar::ONE, Scalar::from(99u64)] {
                let s_inverse = s.invert().unwrap();
                let point = ours(&key).table().mul_add(
                    generator_table().mul_add(ProjectivePoint::IDENTITY, &(z * s_inverse)),
                    &(r * s_inverse),
                );
                assert!(bool::from(point.is_identity()));
                // x of the identity would encode as 0; r = 0 is refused before.
                let signature = jose(r.to_repr().into(), s.to_repr().into());
                assert!(!both_digest(&key, &digest, &signature));
                let zero_r = jose([0u8; 32], s.to_repr().into());
                assert!(!both_digest(&key, &digest, &zero_r));
            }
        }
    }

    #[test]
    fn keys_off_the_curve_or_at_the_identity_are_refused() {
        let key = *signing_key(1).verifying_key();
        let mut point = key.to_sec1_point(false).as_bytes().to_vec();
        assert!(P256Key::from_sec1_bytes(&point).is_some());
        point[64] ^= 1;
        assert!(P256Key::from_sec1_bytes(&point).is_none(), "off the curve");
        assert!(P256Key::from_sec1_bytes(&[0]).is_none(), "identity");
        let mut zeros = vec![0x04];
        zeros.extend_from_slice(&[0; 64]);
        assert!(P256Key::from_sec1_bytes(&zeros).is_none(), "(0, 0)");
        // x = p: not a field element.
        let p = add_small(ORDER, 0);
        let mut at_p = vec![0x04];
        at_p.extend_from_slice(&[
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        at_p.extend_from_slice(&p);
        assert!(P256Key::from_sec1_bytes(&at_p).is_none(), "x = p");
    }

    #[test]
    fn the_fixture_key_verifies_jwt_simple_tokens() {
        use jwt_simple::prelude::*;
        let jwk = crate::testutil::private_jwk("es256");
        let d = crate::crypto::b64::decode(jwk["d"].as_str().unwrap().as_bytes()).unwrap();
        let pair = ES256KeyPair::from_bytes(&d).unwrap();
        let token = pair
            .sign(Claims::create(Duration::from_mins(5)).with_subject("alice"))
            .unwrap();
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let signature = crate::crypto::b64::decode(signature.as_bytes()).unwrap();
        let x = crate::crypto::b64::decode(jwk["x"].as_str().unwrap().as_bytes()).unwrap();
        let y = crate::crypto::b64::decode(jwk["y"].as_str().unwrap().as_bytes()).unwrap();
        let point = [&[4u8][..], &x, &y].concat();
        let key = P256Key::from_sec1_bytes(&point).unwrap();
        assert!(key.verify(signed.as_bytes(), &signature));
        let oracle_key = VerifyingKey::from_sec1_bytes(&point).unwrap();
        assert!(both(&oracle_key, signed.as_bytes(), &signature));
        // The table is built at the first check, then kept.
        assert_eq!(
            key.table().size_bytes(),
            window_count(KEY_WINDOW_BITS)
                * (1 << (KEY_WINDOW_BITS - 1))
                * std::mem::size_of::<AffinePoint>()
        );
        assert!(std::ptr::eq(key.table(), key.table()));
    }
}
