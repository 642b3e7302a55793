//! The filter's src/crypto/montgomery.rs before the SIMD lanes (issue 12), kept to measure
//! beside it (`u32 CIOS (old)` rows).
//!
//! Modular exponentiation `x^e mod n` for RSA's public operation: Montgomery arithmetic on
//! u32 limbs, with the number of limbs taken from the modulus at run time (one code path
//! for every key size).
//!
//! Why u32 limbs: the module runs as wasm32, where `i64.mul` gives the exact 32×32→64-bit
//! product and nothing gives a 64×64→128-bit one (u128 arithmetic becomes calls to
//! `__multi3`). So every product here is `u64::from(x) * u64::from(y)`, and no u128.
//!
//! Multiplication is operand scanning with the reduction fused in (CIOS, see `mul`), also
//! for squaring. Measured in Envoy's V8 at the module's opt-level "z" (bench/verify, `pow`
//! rows, `s^65537 mod n` at 2048 bits, best rounds on a busy machine): CIOS 89–108 µs,
//! crypto-bigint before it 117–122 µs; a separate squaring (each symmetric product once,
//! then a reduction) ~105 µs, since it loads and stores the intermediate once per product
//! instead of once per two; product scanning (FIPS) 102–150 µs with every operand read
//! forwards, and ~360 µs as first written, because a `zip` with a reversed iterator is not
//! inlined at opt-level "z" (one call per product).
//!
//! Everything here handles public data (keys, signatures), so nothing is constant time.

/// Where the high half of a 64-bit product starts.
const LIMB_BITS: u32 = u32::BITS;

/// An odd modulus with its Montgomery constants, for `R = 2^(32·limbs)`.
#[derive(Clone)]
pub struct Modulus {
    /// `n`, little-endian limbs; the top limb is not zero.
    n: Box<[u32]>,
    /// `-n^-1 mod 2^32`: gives the multiple of `n` that clears the running total's low limb.
    n_neg_inv: u32,
    /// `R² mod n`: a Montgomery multiplication by it converts into Montgomery form.
    r_squared: Box<[u32]>,
}

impl Modulus {
    /// The modulus with the big-endian bytes `n` (leading zeros allowed), or `None` if it
    /// is even or below 3.
    pub fn new(n: &[u8]) -> Option<Modulus> {
        let mut limbs = from_be_bytes(n, n.len().div_ceil(4))?;
        while limbs.last() == Some(&0) {
            limbs.pop();
        }
        let low = *limbs.first()?;
        if low & 1 == 0 || (limbs.len() == 1 && low < 3) {
            return None;
        }
        // Newton's iteration for the inverse modulo 2^32: each step doubles the number of
        // correct low bits, and 1 is the inverse of any odd number modulo 2.
        let inverse = (0..5).fold(1u32, |inv, _| {
            inv.wrapping_mul(2u32.wrapping_sub(low.wrapping_mul(inv)))
        });
        let mut modulus = Modulus {
            r_squared: vec![0; limbs.len()].into_boxed_slice(),
            n: limbs.into_boxed_slice(),
            n_neg_inv: inverse.wrapping_neg(),
        };
        modulus.r_squared = modulus.compute_r_squared().into_boxed_slice();
        Some(modulus)
    }

    /// The number of limbs of `n`.
    pub fn limbs(&self) -> usize {
        self.n.len()
    }

    /// `base^exponent mod n` as big-endian bytes, as many as `base` has; `None` if `base`
    /// (big-endian) is not below `n` or the result doesn't fit in that many bytes.
    pub fn pow(&self, base: &[u8], exponent: u64) -> Option<Vec<u8>> {
        let len = self.limbs();
        let x = from_be_bytes(base, len)?;
        if !less_than(&x, &self.n) {
            return None;
        }
        let mut out = vec![0; base.len()];
        let Some(top) = exponent.checked_ilog2() else {
            // x^0 = 1 (n is at least 3).
            return to_be_bytes(&one(len), &mut out).then_some(out);
        };
        // Allocated once per exponentiation, not per product: the base in Montgomery
        // form, and where each product goes before it swaps with the running power.
        let mut base_m = vec![0u32; len];
        self.mul(&x, &self.r_squared, &mut base_m);
        let mut power = base_m.clone();
        let mut product = vec![0u32; len];
        // Left to right over the bits below the top one.
        for bit in (0..top).rev() {
            self.mul(&power, &power, &mut product);
            std::mem::swap(&mut power, &mut product);
            if (exponent >> bit) & 1 == 1 {
                self.mul(&power, &base_m, &mut product);
                std::mem::swap(&mut power, &mut product);
            }
        }
        // Out of Montgomery form: multiplying by 1 divides by R.
        self.mul(&power, &one(len), &mut product);
        to_be_bytes(&product, &mut out).then_some(out)
    }

    /// `out = a·b/R mod n`, fully reduced, for `a`, `b` below `n`; all three `limbs()`
    /// long, `out` neither `a` nor `b`.
    ///
    /// Operand scanning with the reduction fused in (CIOS): for each limb `a[i]`, one pass
    /// over the running total `t` (kept in `out`) computes `(t + a[i]·b + m·n) / 2^32`,
    /// where the multiple `m` of `n` clears the low limb. Each pass loads and stores `t`
    /// once for two products; that is what made it faster in V8 than product scanning and
    /// than a separate squaring and reduction (bench/verify).
    fn mul(&self, a: &[u32], b: &[u32], out: &mut [u32]) {
        out.fill(0);
        let (Some((b_0, b_rest)), Some((n_0, n_rest))) = (b.split_first(), self.n.split_first())
        else {
            return;
        };
        // The bit carried out of the top limb of `t`.
        let mut top = 0;
        for a_i in a {
            let a_i = u64::from(*a_i);
            let Some((t_0, t_rest)) = out.split_first_mut() else {
                return;
            };
            let x = u64::from(*t_0) + a_i * u64::from(*b_0);
            let m = u64::from((x as u32).wrapping_mul(self.n_neg_inv));
            // The low limb of `y` is zero: it is shifted out.
            let y = u64::from(x as u32) + m * u64::from(*n_0);
            let (mut carry_ab, mut carry_mn) = (x >> LIMB_BITS, y >> LIMB_BITS);
            let mut shifted = t_0;
            for (t_j, (b_j, n_j)) in t_rest.iter_mut().zip(b_rest.iter().zip(n_rest)) {
                let x = u64::from(*t_j) + a_i * u64::from(*b_j) + carry_ab;
                let y = u64::from(x as u32) + m * u64::from(*n_j) + carry_mn;
                *shifted = y as u32;
                shifted = t_j;
                (carry_ab, carry_mn) = (x >> LIMB_BITS, y >> LIMB_BITS);
            }
            let sum = carry_ab + carry_mn + top;
            *shifted = sum as u32;
            top = sum >> LIMB_BITS;
        }
        // The result is below 2n: one subtraction at most.
        if top != 0 || !less_than(out, &self.n) {
            subtract(out, &self.n);
        }
    }

    /// `R² mod n`. `R mod n` by doubling `2^(bits(n) - 1)` (below `n`) modulo `n` up to
    /// `2^(32·len)`, then `len` more doublings give `R·2^len`, the Montgomery form of
    /// `2^len`, and five Montgomery squarings turn it into the form of
    /// `2^(32·len) = R`, which is `R² mod n`. Once per key.
    fn compute_r_squared(&self) -> Vec<u32> {
        let len = self.limbs();
        let top_bits = self
            .n
            .last()
            .map_or(0, |top| LIMB_BITS - top.leading_zeros());
        let bits = (len - 1) * LIMB_BITS as usize + top_bits as usize;
        let mut x = vec![0u32; len];
        if let Some(limb) = x.get_mut((bits - 1) / LIMB_BITS as usize) {
            *limb = 1 << ((bits - 1) % LIMB_BITS as usize);
        }
        for _ in bits - 1..LIMB_BITS as usize * len + len {
            let carry = shift_left_one(&mut x);
            if carry || !less_than(&x, &self.n) {
                subtract(&mut x, &self.n);
            }
        }
        let mut squared = vec![0u32; len];
        for _ in 0..5 {
            self.mul(&x, &x, &mut squared);
            std::mem::swap(&mut x, &mut squared);
        }
        x
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

/// `a < b`, both of the same length.
fn less_than(a: &[u32], b: &[u32]) -> bool {
    a.iter().rev().cmp(b.iter().rev()).is_lt()
}

/// `a -= b` modulo 2^(32·len).
fn subtract(a: &mut [u32], b: &[u32]) {
    let mut borrow = false;
    for (x, y) in a.iter_mut().zip(b) {
        let (difference, borrow_1) = x.overflowing_sub(*y);
        let (difference, borrow_2) = difference.overflowing_sub(u32::from(borrow));
        *x = difference;
        borrow = borrow_1 || borrow_2;
    }
}

/// `x <<= 1`; returns the bit shifted out.
fn shift_left_one(x: &mut [u32]) -> bool {
    let mut carry = 0;
    for limb in x.iter_mut() {
        let next = *limb >> (LIMB_BITS - 1);
        *limb = (*limb << 1) | carry;
        carry = next;
    }
    carry == 1
}

/// Big-endian bytes as `len` little-endian limbs, or `None` if they don't fit.
fn from_be_bytes(bytes: &[u8], len: usize) -> Option<Vec<u32>> {
    let mut limbs = vec![0u32; len];
    let mut chunks = bytes.rchunks(4);
    for limb in limbs.iter_mut() {
        if let Some(chunk) = chunks.next() {
            *limb = chunk.iter().fold(0, |limb, b| (limb << 8) | u32::from(*b));
        }
    }
    chunks
        .all(|chunk| chunk.iter().all(|b| *b == 0))
        .then_some(limbs)
}

/// Writes `limbs` big-endian into all of `out`; false if it doesn't fit.
fn to_be_bytes(limbs: &[u32], out: &mut [u8]) -> bool {
    let mut limbs = limbs.iter();
    for chunk in out.rchunks_mut(4) {
        let bytes = limbs.next().map_or([0; 4], |limb| limb.to_le_bytes());
        if bytes.iter().skip(chunk.len()).any(|b| *b != 0) {
            return false;
        }
        for (slot, byte) in chunk.iter_mut().rev().zip(bytes) {
            *slot = byte;
        }
    }
    limbs.all(|limb| *limb == 0)
}
