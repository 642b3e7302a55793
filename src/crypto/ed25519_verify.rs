//! EdDSA (Ed25519) verification on precomputed tables.
//!
//! ed25519-dalek's `verify_strict` computes `[S]B - [k]A` with curve25519-dalek's
//! `vartime_double_scalar_mul_basepoint`: ~253 doublings per call. Keys are reused for many
//! tokens, so here each key, and the basepoint once, gets a fixed-base table of its
//! multiples `d·2^(w·i)·P`, as in [`crate::crypto::p256_verify`]: a 253-bit multiplication is then
//! one addition per w-bit window and (almost) no doubling. Only curve25519-dalek's public
//! API is used: `EdwardsPoint` in extended coordinates and its `Add`/`Sub` (mixed
//! addition and doubling are private to the crate, so every step is a full addition, ~9
//! field multiplications). Everything is public (key, signature, message), so variable
//! time is fine.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use std::sync::{Arc, OnceLock};

/// Window width of a key's table, and the passes its windows are split into (see
/// [`FixedBaseTable`]): 6 bits in two passes, 113 KB, built in ~0.44 ms in V8 at the
/// key's first check. Measured in V8 (bench/verify, per verify against 5 bits in two
/// passes, 66.5 KB): ~8% faster; one pass of 5 bits (133 KB) ~4%, 4 bits (41 KB) ~5%
/// slower. Cold EdDSA is judged against native jwt_authn, and memory is cheaper here than
/// code (opt-level 3 for curve25519-dalek gained ~19% for 13 KB more of module that V8
/// compiles at start-up); a JWKS holds at most 64 keys.
pub const KEY_WINDOW_BITS: u32 = 6;
pub const KEY_PASSES: u32 = 2;
/// The basepoint's table, one per VM, built at the first EdDSA check: 7-bit windows,
/// 379 KB, ~1.3 ms in V8; ~3% faster than 6 bits (220 KB, ~0.7 ms); 8 bits (655 KB,
/// ~2.2 ms) ~8%.
pub const BASEPOINT_WINDOW_BITS: u32 = 7;
pub const BASEPOINT_PASSES: u32 = 1;

/// Bits of a reduced scalar: every `Scalar` is below L < 2^253.
const SCALAR_BITS: u32 = 253;
/// Windows of the narrowest table (2 bits): the size of the digit array.
const MAX_WINDOWS: usize = SCALAR_BITS.div_ceil(2) as usize;

/// The multiples `d·2^(w·t·j)·P` for `d` in `1..=2^(w-1)` and every window `j`, where `t` is
/// the number of passes. A scalar's signed w-bit digit `i = t·j + r` selects a point of
/// window `j` (or its negation) in pass `r`; between passes, the sum is multiplied by 2^w
/// (w additions of the sum to itself). One pass: no doubling at all and the largest
/// table; `t` passes: a table `t` times smaller for `(t - 1)·w` more additions.
pub struct FixedBaseTable {
    window_bits: u32,
    passes: u32,
    /// Window `j`'s points at `j * 2^(w-1) ..`, `d·2^(w·t·j)·P` at offset `d - 1`.
    points: Vec<EdwardsPoint>,
}

impl FixedBaseTable {
    /// Tables for windows of 2 to 8 bits and 1 to 4 passes. Within 2 to 8, 253 is never a
    /// multiple of w, so the top window holds fewer than w bits and its digit, with the
    /// carry from below, is at most 2^(w-1): it needs no window above it.
    pub fn new(base: &EdwardsPoint, window_bits: u32, passes: u32) -> FixedBaseTable {
        let window_bits = window_bits.clamp(2, 8);
        let passes = passes.clamp(1, 4);
        let per_window = 1usize << (window_bits - 1);
        let windows = digit_count(window_bits).div_ceil(passes as usize);
        let mut points = Vec::with_capacity(windows * per_window);
        let mut window_base = *base;
        for window in 0..windows {
            let mut multiple = window_base;
            points.push(multiple);
            for _ in 1..per_window {
                multiple += window_base;
                points.push(multiple);
            }
            if window + 1 < windows {
                // From 2^(w-1)·base to the next window's base, 2^(w·t)·base.
                window_base = multiple;
                for _ in 0..(window_bits * passes - window_bits + 1) {
                    window_base = window_base + window_base;
                }
            }
        }
        FixedBaseTable {
            window_bits,
            passes,
            points,
        }
    }

    /// Bytes the table's points take.
    pub fn size_bytes(&self) -> usize {
        self.points.len() * std::mem::size_of::<EdwardsPoint>()
    }

    /// `k·P`.
    pub fn mul(&self, k: &Scalar) -> EdwardsPoint {
        self.walk(None, k).unwrap_or_else(EdwardsPoint::identity)
    }

    /// `accumulator + k·P`.
    pub fn mul_add(&self, accumulator: EdwardsPoint, k: &Scalar) -> EdwardsPoint {
        self.walk(Some(accumulator), k)
            .unwrap_or_else(EdwardsPoint::identity)
    }

    /// The table walk. The running sum is `None` while it is the identity, so that neither
    /// the first addition nor the doublings of an empty sum cost anything; the
    /// accumulator joins in the last pass, after the doublings.
    fn walk(&self, accumulator: Option<EdwardsPoint>, k: &Scalar) -> Option<EdwardsPoint> {
        let per_window = 1usize << (self.window_bits - 1);
        let (digits, count) = signed_digits(k, self.window_bits);
        let mut sum: Option<EdwardsPoint> = None;
        for pass in (0..self.passes as usize).rev() {
            if let Some(doubled) = sum.as_mut() {
                for _ in 0..self.window_bits {
                    *doubled = *doubled + *doubled;
                }
            }
            if pass == 0 {
                sum = add(sum, accumulator.as_ref(), false);
            }
            let pass_digits = digits.iter().take(count).skip(pass);
            let windows = self.points.chunks_exact(per_window);
            for (digit, window) in pass_digits.step_by(self.passes as usize).zip(windows) {
                let magnitude = usize::from(digit.unsigned_abs());
                let point = magnitude.checked_sub(1).and_then(|at| window.get(at));
                sum = add(sum, point, *digit < 0);
            }
        }
        sum
    }
}

/// `sum ± point`, with `None` for the identity on either side.
fn add(
    sum: Option<EdwardsPoint>,
    point: Option<&EdwardsPoint>,
    negate: bool,
) -> Option<EdwardsPoint> {
    match (sum, point) {
        (sum, None) => sum,
        (None, Some(point)) if negate => Some(-point),
        (None, Some(point)) => Some(*point),
        (Some(sum), Some(point)) if negate => Some(sum - point),
        (Some(sum), Some(point)) => Some(sum + point),
    }
}

/// Digits of a 253-bit scalar in radix 2^w.
fn digit_count(window_bits: u32) -> usize {
    SCALAR_BITS.div_ceil(window_bits) as usize
}

/// The digits of `k` in radix 2^w, least significant first, and how many there are: each
/// in `[-2^(w-1), 2^(w-1))` (a window's value at or above half the radix becomes negative
/// and carries one into the next), except the top one, which stays positive (at most
/// 2^(w-1), see [`FixedBaseTable::new`]).
fn signed_digits(k: &Scalar, window_bits: u32) -> ([i16; MAX_WINDOWS], usize) {
    let bytes = k.as_bytes();
    let byte = |at: usize| i32::from(bytes.get(at).copied().unwrap_or(0));
    let count = digit_count(window_bits);
    let radix = 1i32 << window_bits;
    let mut digits = [0i16; MAX_WINDOWS];
    let mut carry = 0;
    for (window, digit) in digits.iter_mut().take(count).enumerate() {
        let bit = window * window_bits as usize;
        let pair = byte(bit / 8) | (byte(bit / 8 + 1) << 8);
        let value = ((pair >> (bit % 8)) & (radix - 1)) + carry;
        let top = window + 1 == count;
        let signed = if value >= radix / 2 && !top {
            carry = 1;
            value - radix
        } else {
            carry = 0;
            value
        };
        // |signed| ≤ 2^(w-1) ≤ 128.
        *digit = signed as i16;
    }
    (digits, count)
}

/// The basepoint's table, built once per VM at first use.
pub fn basepoint_table() -> &'static FixedBaseTable {
    static TABLE: OnceLock<FixedBaseTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        FixedBaseTable::new(
            &ED25519_BASEPOINT_POINT,
            BASEPOINT_WINDOW_BITS,
            BASEPOINT_PASSES,
        )
    })
}

/// An Ed25519 public key that is a canonical encoding of a point on the curve that is not
/// of small order (the only way to build one is [`Ed25519Key::from_bytes`]), and the table
/// of its negation, built at its first check.
///
/// Lazily rather than when the JWKS is parsed, as for [`crate::crypto::p256_verify::P256Key`]: a
/// set holds up to 64 keys, each VM parses its own copy at start-up and at every refetch,
/// and most keys of a set may never sign anything this filter sees.
#[derive(Clone)]
pub struct Ed25519Key(Arc<KeyTable>);

struct KeyTable {
    /// The encoding as given (canonical), hashed into every challenge.
    bytes: [u8; 32],
    /// -A: the verification equation subtracts `[k]A`.
    minus_point: EdwardsPoint,
    table: OnceLock<FixedBaseTable>,
}

impl std::fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Ed25519Key").field(&self.0.bytes).finish()
    }
}

impl Ed25519Key {
    /// Parses the 32-byte encoding (RFC 8032 §5.1.3), refusing what ed25519-compact
    /// (jwt-simple's Ed25519) refuses: a non-canonical `y` (≥ p), a point not on the curve,
    /// a point of small order.
    pub fn from_bytes(bytes: &[u8]) -> Option<Ed25519Key> {
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        if !is_canonical_field_element(&bytes) {
            return None;
        }
        let point = CompressedEdwardsY(bytes).decompress()?;
        if point.is_small_order() {
            return None;
        }
        Some(Ed25519Key(Arc::new(KeyTable {
            bytes,
            minus_point: -point,
            table: OnceLock::new(),
        })))
    }

    /// The table of `-A`, built on first use.
    pub fn table(&self) -> &FixedBaseTable {
        self.0
            .table
            .get_or_init(|| FixedBaseTable::new(&self.0.minus_point, KEY_WINDOW_BITS, KEY_PASSES))
    }

    /// RFC 8032 verification with the strict rules of ed25519-dalek's `verify_strict`:
    /// `S < L`, `R` canonical and not of small order, and the cofactorless equation
    /// `[S]B = R + [k]A` (stricter than the cofactored one ed25519-compact checks; every
    /// signature this accepts, it accepts too).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        verify_with_tables(
            basepoint_table(),
            self.table(),
            &self.0.bytes,
            message,
            signature,
        )
    }
}

/// Ed25519 verification of `signature` (`R ‖ S`) over `message` for the key encoded as
/// `key_bytes`, with the tables of the basepoint and of the key's negation.
///
/// `verify_strict` decompresses R, refuses it if of small order, and compares the
/// compression of `R' = [S]B - [k]A` with R's bytes. Here only the comparison is made,
/// then R' is checked for small order: the bytes are equal only if R's encoding is the
/// canonical one of R', which decompresses to R' itself, so the verdicts agree and R's
/// square root (a second field exponentiation besides the compression's inversion) is
/// never computed.
pub fn verify_with_tables(
    basepoint: &FixedBaseTable,
    minus_key: &FixedBaseTable,
    key_bytes: &[u8; 32],
    message: &[u8],
    signature: &[u8],
) -> bool {
    let Ok(signature) = <&[u8; 64]>::try_from(signature) else {
        return false;
    };
    let (Some(r_bytes), Some(s_bytes)) =
        (signature.first_chunk::<32>(), signature.last_chunk::<32>())
    else {
        return false;
    };
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(*s_bytes)) else {
        return false;
    };
    // hmac-sha512's SHA-512, which HS512 and RS512 use too: one SHA-512 in the module.
    let mut hash = hmac_sha512::Hash::new();
    hash.update(r_bytes);
    hash.update(key_bytes);
    hash.update(message);
    let k = Scalar::from_bytes_mod_order_wide(&hash.finalize());
    let r = minus_key.mul_add(basepoint.mul(&s), &k);
    r.compress().as_bytes() == r_bytes && !r.is_small_order()
}

/// Whether the low 255 bits of `bytes`, little-endian, are below p = 2^255 - 19.
fn is_canonical_field_element(bytes: &[u8; 32]) -> bool {
    let (low, rest) = bytes.split_at(1);
    let (middle, high) = rest.split_at(30);
    // ≥ p only for ed..ff ff..ff 7f/ff: the top 254 bits all ones and the low byte ≥ 0xed.
    !(low.iter().all(|b| *b >= 0xed)
        && middle.iter().all(|b| *b == 0xff)
        && high.iter().all(|b| b & 0x7f == 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;
    use sha2_11::{Digest, Sha512};

    /// L, the order of the basepoint, little-endian.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    /// p = 2^255 - 19, little-endian.
    const P: [u8; 32] = {
        let mut p = [0xff; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        p
    };

    /// `a + delta` for a 32-byte little-endian `a` (wrapping).
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

    /// A deterministic scalar per label.
    fn scalar(label: &str) -> Scalar {
        Scalar::from_bytes_mod_order_wide(&Sha512::digest(label.as_bytes()).into())
    }

    fn signing_key(seed: u32) -> ed25519_dalek::SigningKey {
        let secret: [u8; 32] = hmac_sha256::Hash::hash(format!("ed25519 key {seed}").as_bytes());
        ed25519_dalek::SigningKey::from_bytes(&secret)
    }

    /// ed25519-dalek's `verify_strict`, the oracle (None: it refuses the key).
    fn oracle(key: &[u8; 32], message: &[u8], signature: &[u8]) -> Option<bool> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(key).ok()?;
        Some(
            ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify_strict(message, &signature).is_ok()),
        )
    }

    /// Both paths on one vector: they must agree; returns the verdict.
    fn both(key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
        let new = Ed25519Key::from_bytes(key)
            .unwrap()
            .verify(message, signature);
        assert_eq!(
            Some(new),
            oracle(key, message, signature),
            "{signature:02x?}"
        );
        new
    }

    /// `R ‖ S` with `S = r + k·a`, `k` hashed over `r_bytes`: a signature for the key `a·B`,
    /// or for whatever key `key_bytes` encodes, with R given by its encoding.
    fn sign_raw(
        r: &Scalar,
        r_bytes: &[u8; 32],
        a: &Scalar,
        key_bytes: &[u8; 32],
        m: &[u8],
    ) -> Vec<u8> {
        let mut hash = Sha512::new();
        hash.update(r_bytes);
        hash.update(key_bytes);
        hash.update(m);
        let k = Scalar::from_bytes_mod_order_wide(&hash.finalize().into());
        let s = r + k * a;
        [&r_bytes[..], s.as_bytes()].concat()
    }

    #[test]
    fn table_multiplication_matches_dalek_for_every_window_width_and_pass_count() {
        let mut scalars = vec![
            Scalar::ZERO,
            Scalar::ONE,
            Scalar::from(2u8),
            -Scalar::ONE,
            -Scalar::from(2u8),
            Scalar::from_bytes_mod_order([0x7f; 32]),
            Scalar::from_bytes_mod_order([0x88; 32]),
            Scalar::from(u64::MAX),
        ];
        for i in 0..6 {
            scalars.push(scalar(&format!("k {i}")));
        }
        let point = EdwardsPoint::mul_base(&scalar("base"));
        // A point with a torsion component: the digits must rebuild k exactly, not mod L.
        let mixed = point + CompressedEdwardsY(EIGHT_TORSION_1).decompress().unwrap();
        let start = EdwardsPoint::mul_base(&scalar("start"));
        for base in [point, mixed] {
            for width in 2..=8 {
                for passes in 1..=4 {
                    let table = FixedBaseTable::new(&base, width, passes);
                    for k in &scalars {
                        let expected = base * k;
                        assert_eq!(table.mul(k), expected, "w {width} x{passes}, k {k:?}");
                        assert_eq!(table.mul_add(start, k), start + expected);
                    }
                }
            }
        }
    }

    /// The encoding of a point of order 8 (c7176a70…).
    const EIGHT_TORSION_1: [u8; 32] = [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ];

    #[test]
    fn signed_digits_rebuild_the_scalar_and_stay_in_range() {
        for width in 2..=8u32 {
            for k in [Scalar::ZERO, -Scalar::ONE, scalar("digits")] {
                let (digits, count) = signed_digits(&k, width);
                assert_eq!(count, 253usize.div_ceil(width as usize));
                let half = 1i32 << (width - 1);
                let mut value = Scalar::ZERO;
                let radix = Scalar::from(1u64 << width);
                for (i, digit) in digits.iter().take(count).enumerate().rev() {
                    let digit = i32::from(*digit);
                    let top = i + 1 == count;
                    assert!(digit >= -half && (digit < half || (top && digit == half)));
                    let magnitude = Scalar::from(digit.unsigned_abs());
                    value = value * radix + if digit < 0 { -magnitude } else { magnitude };
                }
                assert_eq!(value, k, "w {width}");
                assert!(digits.iter().skip(count).all(|d| *d == 0));
            }
        }
    }

    #[test]
    fn valid_signatures_of_many_keys_verify_and_every_tampered_byte_fails_like_dalek() {
        for seed in 0..12 {
            let signer = signing_key(seed);
            let key = signer.verifying_key().to_bytes();
            let other = signing_key(seed + 1000).verifying_key().to_bytes();
            for m in 0..4 {
                let message = format!("eyJhbGciOiJFZERTQSJ9.{seed}.{m}").repeat(m * 40 + 1);
                let signature = signer.sign(message.as_bytes()).to_bytes().to_vec();
                assert!(both(&key, message.as_bytes(), &signature));
                assert!(!both(&other, message.as_bytes(), &signature), "wrong key");
                let mut altered = message.clone().into_bytes();
                altered[0] ^= 1;
                assert!(!both(&key, &altered, &signature), "other message");
                if seed < 3 {
                    for at in 0..64 {
                        for bit in [0x01, 0x10, 0x80] {
                            let mut tampered = signature.clone();
                            tampered[at] ^= bit;
                            assert!(!both(&key, message.as_bytes(), &tampered), "byte {at}");
                        }
                    }
                }
            }
        }
        // The empty message, and only exactly 64 bytes.
        let signer = signing_key(77);
        let key = signer.verifying_key().to_bytes();
        let signature = signer.sign(b"").to_bytes().to_vec();
        assert!(both(&key, b"", &signature));
        assert!(!both(&key, b"", &signature[..63]));
        assert!(!both(&key, b"", &[&signature[..], &[0]].concat()));
        assert!(!both(&key, b"", &[]));
    }

    #[test]
    fn s_at_or_above_l_is_refused_like_dalek() {
        let signer = signing_key(5);
        let key = signer.verifying_key().to_bytes();
        let message = b"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9";
        let signature = signer.sign(message).to_bytes().to_vec();
        let r: [u8; 32] = signature[..32].try_into().unwrap();
        let s: [u8; 32] = signature[32..].try_into().unwrap();
        assert!(both(&key, message, &signature));
        let s_plus_l = {
            let mut out = s;
            let mut carry = 0u16;
            for (byte, l) in out.iter_mut().zip(L) {
                let sum = u16::from(*byte) + u16::from(l) + carry;
                *byte = sum as u8;
                carry = sum >> 8;
            }
            out
        };
        let mut top_bit = s;
        top_bit[31] |= 0x80;
        for bad in [
            L,
            add_small(L, 1),
            add_small(L, 1 << 40),
            s_plus_l,
            top_bit,
            [0xff; 32],
            add_small([0; 32], -1),
        ] {
            assert!(!both(&key, message, &[r, bad].concat()), "S = {bad:02x?}");
        }
        // In range: wrong, not malformed.
        for wrong in [add_small(L, -1), [0; 32], add_small([0; 32], 1)] {
            assert!(!both(&key, message, &[r, wrong].concat()));
        }
    }

    /// With a known secret `a`, `S = k·a` makes `[S]B - [k]A` the identity: an R encoding
    /// the identity satisfies the equation, and only the small-order rule refuses it (here
    /// checked on the recomputed point, in dalek on the decompressed R).
    #[test]
    fn r_at_the_identity_or_of_small_order_is_refused_like_dalek() {
        let a = scalar("secret a");
        let key = EdwardsPoint::mul_base(&a).compress().to_bytes();
        let message = b"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJib2IifQ";
        let identity = add_small([0; 32], 1);
        let signature = sign_raw(&Scalar::ZERO, &identity, &a, &key, message);
        // Only the small-order rule stands between this and acceptance.
        let s: [u8; 32] = signature[32..].try_into().unwrap();
        let recomputed = Ed25519Key::from_bytes(&key).unwrap().table().mul_add(
            basepoint_table().mul(&Scalar::from_canonical_bytes(s).unwrap()),
            &{
                let mut hash = Sha512::new();
                hash.update(identity);
                hash.update(key);
                hash.update(message);
                Scalar::from_bytes_mod_order_wide(&hash.finalize().into())
            },
        );
        assert_eq!(recomputed.compress().to_bytes(), identity);
        assert!(!both(&key, message, &signature));

        // Every small-order R, canonical or not, with S computed as if R were [0]B.
        let mut small_order = vec![identity, EIGHT_TORSION_1];
        let mut minus_zero = identity;
        minus_zero[31] |= 0x80;
        small_order.push(minus_zero);
        small_order.push(add_small(P, 1)); // y = p + 1: the identity again
        let torsion = CompressedEdwardsY(EIGHT_TORSION_1).decompress().unwrap();
        for multiple in 2..8u8 {
            small_order.push((torsion * Scalar::from(multiple)).compress().to_bytes());
        }
        for r in small_order {
            assert!(CompressedEdwardsY(r).decompress().unwrap().is_small_order());
            let signature = sign_raw(&Scalar::ZERO, &r, &a, &key, message);
            assert!(!both(&key, message, &signature), "R = {r:02x?}");
        }
    }

    /// R encodings with y = p + i (below 2^255 only for i < 19) and "negative zero" x: the
    /// byte comparison refuses them whatever the point, as dalek's.
    #[test]
    fn non_canonical_r_is_refused_like_dalek() {
        let signer = signing_key(9);
        let key = signer.verifying_key().to_bytes();
        let message = b"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJjYXJvbCJ9";
        let signature = signer.sign(message).to_bytes().to_vec();
        let s: [u8; 32] = signature[32..].try_into().unwrap();
        let mut decoded = 0;
        for i in 0..19 {
            for sign in [0u8, 0x80] {
                let mut r = add_small(P, i);
                r[31] |= sign;
                decoded += usize::from(CompressedEdwardsY(r).decompress().is_some());
                assert!(!both(&key, message, &[r, s].concat()), "y = p + {i}");
            }
        }
        assert!(decoded > 0);
        // The signature's own R with the sign bit flipped: the other point with that y.
        let mut flipped = signature.clone();
        flipped[31] ^= 0x80;
        assert!(!both(&key, message, &flipped));
    }

    /// A mixed-order key (a point of order 8 added): the cofactorless equation holds for a
    /// signature made with the prime-order secret only when `[k]` kills the torsion
    /// (k ≡ 0 mod 8): the table must compute [k](-A) on the whole point, as dalek does.
    #[test]
    fn mixed_order_keys_verify_exactly_when_dalek_does() {
        let a = scalar("mixed a");
        let torsion = CompressedEdwardsY(EIGHT_TORSION_1).decompress().unwrap();
        let key = (EdwardsPoint::mul_base(&a) + torsion).compress().to_bytes();
        let (mut accepted, mut refused) = (0, 0);
        for m in 0..64 {
            let message = format!("eyJhbGciOiJFZERTQSJ9.{m}");
            let r = scalar(&format!("nonce {m}"));
            let r_bytes = EdwardsPoint::mul_base(&r).compress().to_bytes();
            let signature = sign_raw(&r, &r_bytes, &a, &key, message.as_bytes());
            if both(&key, message.as_bytes(), &signature) {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn the_fixture_key_verifies_jwt_simple_tokens() {
        use jwt_simple::prelude::*;
        let jwk = crate::testutil::private_jwk("eddsa");
        let seed = crate::crypto::b64::decode(jwk["d"].as_str().unwrap().as_bytes()).unwrap();
        let x = crate::crypto::b64::decode(jwk["x"].as_str().unwrap().as_bytes()).unwrap();
        let pair = Ed25519KeyPair::from_bytes(&[&seed[..], &x[..]].concat()).unwrap();
        let key = Ed25519Key::from_bytes(&x).unwrap();
        let x: [u8; 32] = x.try_into().unwrap();
        for subject in ["alice", "bob", "a much longer subject than the others"] {
            let token = pair
                .sign(Claims::create(Duration::from_mins(5)).with_subject(subject))
                .unwrap();
            let (signed, signature) = token.rsplit_once('.').unwrap();
            let signature = crate::crypto::b64::decode(signature.as_bytes()).unwrap();
            assert!(key.verify(signed.as_bytes(), &signature));
            assert!(both(&x, signed.as_bytes(), &signature));
            assert!(!key.verify(&signed.as_bytes()[1..], &signature));
        }
        // The sizes the constants' docs give: 160-byte points (four field elements of
        // 40 bytes, 10 × u32 on wasm32, 5 × u64 here).
        assert_eq!(std::mem::size_of::<EdwardsPoint>(), 160);
        assert_eq!(basepoint_table().size_bytes(), 37 * 64 * 160);
        // The table is built at the first check, then kept; clones share it.
        let windows = 253usize
            .div_ceil(KEY_WINDOW_BITS as usize)
            .div_ceil(KEY_PASSES as usize);
        assert_eq!(
            key.table().size_bytes(),
            windows * (1 << (KEY_WINDOW_BITS - 1)) * std::mem::size_of::<EdwardsPoint>()
        );
        assert!(std::ptr::eq(key.table(), key.clone().table()));
    }
}
