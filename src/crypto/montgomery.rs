//! Modular exponentiation `x^e mod n` for RSA's public operation: Montgomery arithmetic on
//! limbs of 27–28 bits in 64-bit sums, two sums per wasm SIMD instruction, with the number
//! of limbs taken from the modulus at run time (one code path for every key size).
//!
//! Why this shape: in wasm32 the exact product of two words is `i64.mul` of two u32s, and
//! SIMD128's `i64x2.extmul_{low,high}_i32x4_u` computes two such products in one
//! instruction (nothing gives a 64×64→128-bit product). Products of full u32 limbs need
//! their carries propagated one by one, which two lanes cannot do; products of 28-bit limbs
//! are below 2^56, so a 64-bit sum takes a whole multiplication's worth of them (`2·limbs`,
//! see [`Modulus::new`]) and carries are propagated once per multiplication. Measured in
//! Envoy's V8 (bench/verify, `pow` rows, `s^65537 mod n` at 2048 bits, same runs): ~2× faster
//! than CIOS on u32 limbs, which had been the fastest of the scalar shapes (see the
//! bench's README).
//!
//! The multiplication is operand scanning with the reduction fused in (CIOS), two limbs of
//! `a` per pass over the sums: each pass adds `a[i]·b + m_i·n` and `a[i+1]·b + m_{i+1}·n`
//! one limb higher, where the multiples `m` of `n` clear the two lowest sums, which are then
//! dropped (a division by `2^(2w)`). Two limbs per pass make the drop a shift by one whole
//! pair of lanes, and the second limb's products land on the same lane pairs through copies
//! of `b` and `n` shifted up by one limb.
//!
//! Squarings use the same multiplication. A dedicated squaring (each product of two
//! different limbs once, doubled; the lane pairs below a pass's first product taking only
//! the multiples of `n`) does a quarter fewer products, but measured 86–87 µs per `pow`
//! against 58–59: its three loops per pass and their set-up cost more than the products
//! saved, the loop being bound by loads and stores rather than by the extmuls.
//!
//! Outside wasm32 (tests, the CLI), [`lanes`] is plain arrays and the same code runs
//! scalar: native tests check the algorithm, `make test-wasm` the SIMD lanes.
//!
//! Everything here handles public data (keys, signatures), so nothing is constant time.

use lanes::{add, lanes, mul_high, mul_low, pair, quad, splat, Pair, Quad};

/// An odd modulus with its Montgomery constants, for `R = 2^(limb_bits·limbs)`.
#[derive(Clone)]
pub struct Modulus {
    /// Bits per limb, `w`: the widest for which no 64-bit sum can overflow.
    limb_bits: u32,
    /// Limbs of `R`: `R ≥ 4n`, so that products of numbers below `2n` reduce to below `2n`
    /// without a final subtraction. Even: a pass takes two limbs of `a`.
    limbs: usize,
    /// `n` as limbs, little-endian, zero-padded to a whole number of quads: the length of
    /// every number here, room for a pass to add one limb above `limbs`.
    n: Box<[u32]>,
    /// `n` by quads, and `n` one limb higher (`[0, n[0], n[1], ...]`).
    n_quads: Box<[Quad]>,
    n_shifted: Box<[Quad]>,
    /// `-n^-1 mod 2^w`: gives the multiple of `n` that clears the lowest sum.
    n_neg_inv: u32,
    /// `R² mod n`: a Montgomery multiplication by it converts into Montgomery form.
    r_squared: Box<[u32]>,
}

/// The buffers of one multiplication, allocated once per exponentiation.
struct Scratch {
    /// `b` by quads, and one limb higher.
    b_quads: Vec<Quad>,
    b_shifted: Vec<Quad>,
    /// The running sums, a pair of limb positions each.
    sums: Vec<Pair>,
}

impl Modulus {
    /// The modulus with the big-endian bytes `n` (leading zeros allowed), or `None` if it
    /// is even or below 3.
    pub fn new(n: &[u8]) -> Option<Modulus> {
        let leading_zeros = n.iter().take_while(|b| **b == 0).count();
        let bits = n.get(leading_zeros).map_or(0, |top| {
            (n.len() - leading_zeros) * 8 - top.leading_zeros() as usize
        });
        let low = n.last().copied().unwrap_or(0);
        if low & 1 == 0 || (bits <= 2 && low < 3) {
            return None;
        }
        // The widest limbs for which a sum cannot overflow: a sum receives at most
        // `2·limbs` products below 2^(2w), plus a carry below 2^(64-w) from below, plus
        // one more such carry when the result is normalized.
        let (limb_bits, limbs) = (8..=31).rev().find_map(|w: u32| {
            let limbs = (bits + 2).div_ceil(w as usize).next_multiple_of(2);
            let max_limb = (1u64 << w) - 1;
            let products = u64::try_from(2 * limbs)
                .ok()?
                .checked_mul(max_limb * max_limb)?;
            products.checked_add(1 << (65 - w))?;
            Some((w, limbs))
        })?;
        let len = (limbs + 1).next_multiple_of(4);
        let n_limbs = from_be_bytes(n, limb_bits, len)?;
        // Newton's iteration for the inverse modulo 2^32: each step doubles the number of
        // correct low bits, and 1 is the inverse of any odd number modulo 2.
        let low = n_limbs.first().copied().unwrap_or(1);
        let inverse = (0..5).fold(1u32, |inv, _| {
            inv.wrapping_mul(2u32.wrapping_sub(low.wrapping_mul(inv)))
        });
        let (n_quads, n_shifted) = quads(&n_limbs);
        let mut modulus = Modulus {
            limb_bits,
            limbs,
            n_quads,
            n_shifted,
            n: n_limbs.into_boxed_slice(),
            n_neg_inv: inverse.wrapping_neg() & mask(limb_bits),
            r_squared: Box::default(),
        };
        modulus.r_squared = modulus.compute_r_squared(bits).into_boxed_slice();
        Some(modulus)
    }

    /// The number of limbs of `R`.
    pub fn limbs(&self) -> usize {
        self.limbs
    }

    /// Bits per limb.
    pub fn limb_bits(&self) -> u32 {
        self.limb_bits
    }

    /// `base^exponent mod n` as big-endian bytes, as many as `base` has; `None` if `base`
    /// (big-endian) is not below `n` or the result doesn't fit in that many bytes.
    pub fn pow(&self, base: &[u8], exponent: u64) -> Option<Vec<u8>> {
        let len = self.n.len();
        let x = from_be_bytes(base, self.limb_bits, len)?;
        if !less_than(&x, &self.n) {
            return None;
        }
        let mut out = vec![0; base.len()];
        let Some(top) = exponent.checked_ilog2() else {
            // x^0 = 1 (n is at least 3).
            return to_be_bytes(&one(len), self.limb_bits, &mut out).then_some(out);
        };
        let mut scratch = self.scratch();
        // The base in Montgomery form, and where each product goes before it swaps with
        // the running power: allocated once per exponentiation, not per product.
        let mut base_m = vec![0u32; len];
        self.mul(&x, &self.r_squared, &mut base_m, &mut scratch);
        let mut power = base_m.clone();
        let mut product = vec![0u32; len];
        // Left to right over the bits below the top one.
        for bit in (0..top).rev() {
            self.mul(&power, &power, &mut product, &mut scratch);
            std::mem::swap(&mut power, &mut product);
            if (exponent >> bit) & 1 == 1 {
                self.mul(&power, &base_m, &mut product, &mut scratch);
                std::mem::swap(&mut power, &mut product);
            }
        }
        // Out of Montgomery form: multiplying by 1 divides by R. The result is at most n,
        // and n only if `power` was n, the Montgomery form of 0 not reduced.
        self.mul(&power, &one(len), &mut product, &mut scratch);
        if !less_than(&product, &self.n) {
            subtract(&mut product, &self.n, self.limb_bits);
        }
        to_be_bytes(&product, self.limb_bits, &mut out).then_some(out)
    }

    fn scratch(&self) -> Scratch {
        let quads = self.n_quads.len();
        Scratch {
            b_quads: vec![quad([0; 4]); quads],
            b_shifted: vec![quad([0; 4]); quads],
            sums: vec![pair(0, 0); 2 * quads],
        }
    }

    /// `out = a·b/R mod n` or that plus `n`, for `a`, `b` below `2n`; all three as long as
    /// `self.n`, `out` neither `a` nor `b`.
    ///
    /// For each two limbs `a[i]`, `a[i+1]`, one pass over the sums `t` (limb positions,
    /// two per lane pair) computes `(t + a[i]·b + m·n + 2^w·(a[i+1]·b + m'·n)) / 2^(2w)`,
    /// where `m` and `m'` are computed first, in scalar arithmetic on the two lowest sums.
    /// The sums are not normalized between passes: see [`Modulus::new`] for why they
    /// cannot overflow. Compiled with SIMD128 whatever the module's flags: every wasm
    /// runtime the filter targets has it (V8 since 9.1, 2021).
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
    fn mul(&self, a: &[u32], b: &[u32], out: &mut [u32], scratch: &mut Scratch) {
        let Scratch {
            b_quads,
            b_shifted,
            sums,
        } = scratch;
        fill_quads(b, b_quads, b_shifted);
        sums.fill(pair(0, 0));
        let w = self.limb_bits;
        let limb = |limbs: &[u32], i: usize| u64::from(limbs.get(i).copied().unwrap_or(0));
        let (b_0, b_1, n_0, n_1) = (limb(b, 0), limb(b, 1), limb(&self.n, 0), limb(&self.n, 1));
        for a_pair in a.chunks_exact(2).take(self.limbs / 2) {
            let &[a_0, a_1] = a_pair else {
                return;
            };
            let (a_0, a_1) = (u64::from(a_0), u64::from(a_1));
            let Some(lowest) = sums.first() else {
                return;
            };
            let [t_0, t_1] = lanes(*lowest);
            // The two lowest positions, where the multiples of n are chosen: each ends
            // with w zero bits, and what is above them carries into the next position.
            let x_0 = t_0 + a_0 * b_0;
            let m_0 = self.clearing(x_0);
            let x_1 = t_1 + a_0 * b_1 + m_0 * n_1 + a_1 * b_0 + ((x_0 + m_0 * n_0) >> w);
            let m_1 = self.clearing(x_1);
            let carry = (x_1 + m_1 * n_0) >> w;

            // Every lane pair takes the products landing on it and moves one pair down:
            // the lowest pair (the two positions just cleared) is dropped.
            // Hidden from the optimizer, here and in every iteration below: LLVM would
            // otherwise extend the splats to 64-bit lanes once, out of the loop, and the
            // extmuls would become `i64x2.mul`s, which V8 on x86-64 emulates with three
            // multiplications (bench/verify: 98 µs per `pow` at 2048 bits instead of 60).
            let splats = [splat(a_0), splat(m_0), splat(a_1), splat(m_1)];
            let [a_0, m_0, a_1, m_1] = core::hint::black_box(splats);
            let mut quads = b_quads
                .iter()
                .zip(b_shifted.iter())
                .zip(self.n_quads.iter().zip(self.n_shifted.iter()));
            let mut pairs = sums.chunks_exact_mut(2);
            let (Some(((b, b_up), (n, n_up))), Some([first, second])) =
                (quads.next(), pairs.next())
            else {
                return;
            };
            let high = sum_of_products!(mul_high, a_0 * b, m_0 * n, a_1 * b_up, m_1 * n_up);
            *first = add(add(*second, high), pair(carry, 0));
            let mut below = second;
            for (((b, b_up), (n, n_up)), two_pairs) in quads.zip(pairs) {
                let [low, high] = two_pairs else {
                    return;
                };
                let [a_0, m_0, a_1, m_1] = core::hint::black_box([a_0, m_0, a_1, m_1]);
                let low_products =
                    sum_of_products!(mul_low, a_0 * b, m_0 * n, a_1 * b_up, m_1 * n_up);
                let high_products =
                    sum_of_products!(mul_high, a_0 * b, m_0 * n, a_1 * b_up, m_1 * n_up);
                *below = add(*low, low_products);
                *low = add(*high, high_products);
                below = high;
            }
            *below = pair(0, 0);
        }
        // Normalize: the sum is below 2n < R, so every carry lands inside `out`.
        let mut carry = 0;
        for (limbs, sum) in out.chunks_exact_mut(2).zip(sums.iter()) {
            let [low, high] = limbs else {
                return;
            };
            let [sum_low, sum_high] = lanes(*sum);
            (*low, carry) = split(sum_low + carry, w);
            (*high, carry) = split(sum_high + carry, w);
        }
    }

    /// The multiple of `n` below `2^w` that clears the low `w` bits of `sum`.
    #[inline(always)]
    fn clearing(&self, sum: u64) -> u64 {
        u64::from((sum as u32).wrapping_mul(self.n_neg_inv) & mask(self.limb_bits))
    }

    /// `R² mod n`: `R mod n` (the Montgomery form of 1) by doubling `2^(bits(n) - 1)`
    /// (below `n`) modulo `n` up to `2^(w·limbs)`; with `w·limbs = 32q + r`, `q` more
    /// doublings give the Montgomery form of `2^q`, five squarings that of `2^(32q)`, and
    /// `r` doublings that of `2^(w·limbs) = R`, which is `R² mod n`. Once per key.
    fn compute_r_squared(&self, bits: usize) -> Vec<u32> {
        let len = self.n.len();
        let w = self.limb_bits as usize;
        let mut x = vec![0u32; len];
        if let Some(limb) = x.get_mut((bits - 1) / w) {
            *limb = 1 << ((bits - 1) % w);
        }
        let r_bits = w * self.limbs;
        let double = |x: &mut Vec<u32>, times: usize| {
            for _ in 0..times {
                shift_left_one(x, self.limb_bits);
                if !less_than(x, &self.n) {
                    subtract(x, &self.n, self.limb_bits);
                }
            }
        };
        double(&mut x, r_bits + 1 - bits + r_bits / 32);
        let mut scratch = self.scratch();
        let mut squared = vec![0u32; len];
        for _ in 0..5 {
            self.mul(&x, &x, &mut squared, &mut scratch);
            std::mem::swap(&mut x, &mut squared);
        }
        if !less_than(&x, &self.n) {
            subtract(&mut x, &self.n, self.limb_bits);
        }
        double(&mut x, r_bits % 32);
        x
    }
}

/// `x·y + ...` for four pairs of a splat `x` and a quad `y`, on the two limbs `$half`
/// takes (`mul_low` or `mul_high`). A macro, not a function or closure: at the module's
/// opt-level "z" those were not inlined, a call per lane pair.
macro_rules! sum_of_products {
    ($half:ident, $($x:ident * $y:ident),+) => {
        sum_of_products!(@add $($half($x, *$y)),+)
    };
    (@add $first:expr, $second:expr, $third:expr, $fourth:expr) => {
        add(add($first, $second), add($third, $fourth))
    };
}
use sum_of_products;

/// The low `w` bits of `sum` as a limb, and what is above them.
#[inline(always)]
fn split(sum: u64, w: u32) -> (u32, u64) {
    ((sum as u32) & mask(w), sum >> w)
}

/// Two u64 sums and four u32 limbs: SIMD128 vectors in wasm32, arrays elsewhere.
#[cfg(target_arch = "wasm32")]
mod lanes {
    use core::arch::wasm32::{
        i64x2_add, u32x4, u32x4_splat, u64x2, u64x2_extmul_high_u32x4, u64x2_extmul_low_u32x4,
        u64x2_extract_lane, v128,
    };

    pub type Quad = v128;
    pub type Pair = v128;

    #[inline]
    #[target_feature(enable = "simd128")]
    pub fn quad([a, b, c, d]: [u32; 4]) -> Quad {
        u32x4(a, b, c, d)
    }

    /// Four copies of `x`.
    #[inline]
    #[target_feature(enable = "simd128")]
    pub fn splat(x: u64) -> Quad {
        u32x4_splat(x as u32)
    }

    #[inline]
    #[target_feature(enable = "simd128")]
    pub fn pair(low: u64, high: u64) -> Pair {
        u64x2(low, high)
    }

    #[inline]
    #[target_feature(enable = "simd128")]
    pub fn lanes(x: Pair) -> [u64; 2] {
        [u64x2_extract_lane::<0>(x), u64x2_extract_lane::<1>(x)]
    }

    /// The products of the two low limbs.
    #[inline]
    #[target_feature(enable = "simd128")]
    pub fn mul_low(x: Quad, y: Quad) -> Pair {
        u64x2_extmul_low_u32x4(x, y)
    }

    /// The products of the two high limbs.
    #[inline]
    #[target_feature(enable = "simd128")]
    pub fn mul_high(x: Quad, y: Quad) -> Pair {
        u64x2_extmul_high_u32x4(x, y)
    }

    #[inline]
    #[target_feature(enable = "simd128")]
    pub fn add(x: Pair, y: Pair) -> Pair {
        i64x2_add(x, y)
    }
}

/// Two u64 sums and four u32 limbs: SIMD128 vectors in wasm32, arrays elsewhere.
#[cfg(not(target_arch = "wasm32"))]
mod lanes {
    pub type Quad = [u32; 4];
    pub type Pair = [u64; 2];

    pub fn quad(limbs: [u32; 4]) -> Quad {
        limbs
    }

    pub fn splat(x: u64) -> Quad {
        [x as u32; 4]
    }

    pub fn pair(low: u64, high: u64) -> Pair {
        [low, high]
    }

    pub fn lanes(x: Pair) -> [u64; 2] {
        x
    }

    /// The products of the two low limbs.
    pub fn mul_low([x, y, ..]: Quad, [u, v, ..]: Quad) -> Pair {
        [u64::from(x) * u64::from(u), u64::from(y) * u64::from(v)]
    }

    /// The products of the two high limbs.
    pub fn mul_high([.., x, y]: Quad, [.., u, v]: Quad) -> Pair {
        [u64::from(x) * u64::from(u), u64::from(y) * u64::from(v)]
    }

    pub fn add([x, y]: Pair, [u, v]: Pair) -> Pair {
        [x.wrapping_add(u), y.wrapping_add(v)]
    }
}

/// The low `bits` bits set.
fn mask(bits: u32) -> u32 {
    u32::MAX >> (u32::BITS - bits)
}

/// `limbs` by quads (`len` a multiple of 4), and one limb higher: `[0, limbs[0], ...]`.
fn quads(limbs: &[u32]) -> (Box<[Quad]>, Box<[Quad]>) {
    let mut quads = vec![quad([0; 4]); limbs.len() / 4];
    let mut shifted = quads.clone();
    fill_quads(limbs, &mut quads, &mut shifted);
    (quads.into_boxed_slice(), shifted.into_boxed_slice())
}

/// Fills `quads` with `limbs` and `shifted` with them one limb higher (the top limb of
/// `limbs` is dropped from `shifted`: it is zero).
#[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
fn fill_quads(limbs: &[u32], quads: &mut [Quad], shifted: &mut [Quad]) {
    let mut below = 0;
    for ((chunk, quad_slot), shifted_slot) in limbs.chunks_exact(4).zip(quads).zip(shifted) {
        let &[x, y, z, t] = chunk else {
            return;
        };
        *quad_slot = quad([x, y, z, t]);
        *shifted_slot = quad([below, x, y, z]);
        below = t;
    }
}

/// 1 as `len` limbs.
fn one(len: usize) -> Vec<u32> {
    let mut one = vec![0; len];
    if let Some(low) = one.first_mut() {
        *low = 1;
    }
    one
}

/// `a < b`, both normalized and of the same length.
fn less_than(a: &[u32], b: &[u32]) -> bool {
    a.iter().rev().cmp(b.iter().rev()).is_lt()
}

/// `a -= b` modulo 2^(bits·len), both normalized limbs of `bits` bits.
fn subtract(a: &mut [u32], b: &[u32], bits: u32) {
    let mut borrow = 0;
    for (x, y) in a.iter_mut().zip(b) {
        let difference = x.wrapping_sub(*y).wrapping_sub(borrow);
        *x = difference & mask(bits);
        borrow = difference >> (u32::BITS - 1);
    }
}

/// `x <<= 1`, limbs of `bits` bits; the bit shifted out of the top limb is dropped.
fn shift_left_one(x: &mut [u32], bits: u32) {
    let mut carry = 0;
    for limb in x.iter_mut() {
        let next = *limb >> (bits - 1);
        *limb = ((*limb << 1) | carry) & mask(bits);
        carry = next;
    }
}

/// Big-endian bytes as `len` little-endian limbs of `bits` bits, or `None` if they don't
/// fit.
fn from_be_bytes(bytes: &[u8], bits: u32, len: usize) -> Option<Vec<u32>> {
    let mut limbs = vec![0u32; len];
    let mut bytes = bytes.iter().rev();
    // Bits read but not yet stored, the lowest first.
    let (mut pending, mut pending_bits) = (0u64, 0);
    for limb in limbs.iter_mut() {
        while pending_bits < bits {
            let Some(byte) = bytes.next() else { break };
            pending |= u64::from(*byte) << pending_bits;
            pending_bits += 8;
        }
        *limb = (pending as u32) & mask(bits);
        pending >>= bits;
        pending_bits = pending_bits.saturating_sub(bits);
    }
    (pending == 0 && bytes.all(|b| *b == 0)).then_some(limbs)
}

/// Writes `limbs` of `bits` bits big-endian into all of `out`; false if it doesn't fit.
fn to_be_bytes(limbs: &[u32], bits: u32, out: &mut [u8]) -> bool {
    let mut limbs = limbs.iter();
    let (mut pending, mut pending_bits) = (0u64, 0);
    for slot in out.iter_mut().rev() {
        while pending_bits < 8 {
            let Some(limb) = limbs.next() else { break };
            pending |= u64::from(*limb) << pending_bits;
            pending_bits += bits;
        }
        *slot = pending as u8;
        pending >>= 8;
        pending_bits = pending_bits.saturating_sub(8);
    }
    pending == 0 && limbs.all(|limb| *limb == 0)
}
