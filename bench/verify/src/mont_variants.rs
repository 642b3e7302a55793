//! Other ways to do the arithmetic of src/montgomery.rs (u32 limbs, a run-time length),
//! measured beside it in the `pow` rows (`s^e mod n` alone, no padding check):
//!
//! - `fips`: product scanning like src/montgomery.rs, squaring as a multiplication;
//! - `fips carry`: product scanning with the 3-word accumulator (u64 plus a carry word,
//!   the carry detected per addition) instead of summing the products' halves apart;
//! - `fips forward`: product scanning with every operand read forwards (`b`, `n` and, to
//!   square, `a` reversed into copies first): `zip` with a reversed iterator is not inlined
//!   at opt-level "z", a forward zip of two slices is;
//! - `cios`: operand scanning, the multiplication and the reduction fused in one inner
//!   loop over the running total (what a straightforward u32 Montgomery does), with
//!   indexing; `cios unrolled 2`: the same with two limbs per inner iteration.
//!
//! `R² mod n` is computed here by plain doubling (slow, but key setup is not measured).

#[derive(Clone, Copy, Debug)]
pub enum Variant {
    Fips,
    FipsCarry,
    FipsForward,
    Cios,
    CiosUnrolled,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::Fips,
        Variant::FipsCarry,
        Variant::FipsForward,
        Variant::Cios,
        Variant::CiosUnrolled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Fips => "pow: fips, no dedicated square",
            Variant::FipsCarry => "pow: fips carry, square",
            Variant::FipsForward => "pow: fips forward, square",
            Variant::Cios => "pow: cios",
            Variant::CiosUnrolled => "pow: cios unrolled 2",
        }
    }
}

pub struct Params {
    n: Vec<u32>,
    n_rev: Vec<u32>,
    n0: u32,
    rr: Vec<u32>,
}

impl Params {
    pub fn new(n_be: &[u8]) -> Option<Params> {
        let n = from_be(n_be, n_be.len().div_ceil(4))?;
        let low = *n.first()?;
        if low & 1 == 0 || n.last() == Some(&0) {
            return None;
        }
        let inv = (0..5).fold(1u32, |inv, _| {
            inv.wrapping_mul(2u32.wrapping_sub(low.wrapping_mul(inv)))
        });
        let len = n.len();
        let mut x = vec![0u32; len];
        x[0] = 1;
        for _ in 0..64 * len {
            let mut carry = 0;
            for limb in x.iter_mut() {
                let next = *limb >> 31;
                *limb = (*limb << 1) | carry;
                carry = next;
            }
            if carry == 1 || !less(&x, &n) {
                sub(&mut x, &n);
            }
        }
        Some(Params {
            n_rev: n.iter().rev().copied().collect(),
            n,
            n0: inv.wrapping_neg(),
            rr: x,
        })
    }

    pub fn pow(&self, variant: Variant, base: &[u8], e: u64) -> Option<Vec<u8>> {
        match variant {
            Variant::Fips => self.pow_with(
                base,
                e,
                |a, b, out| fips_mul::<Split>(self, a, b, out),
                |a, out| fips_mul::<Split>(self, a, a, out),
            ),
            Variant::FipsCarry => self.pow_with(
                base,
                e,
                |a, b, out| fips_mul::<Carry>(self, a, b, out),
                |a, out| fips_square::<Carry>(self, a, out),
            ),
            Variant::FipsForward => self.pow_with(
                base,
                e,
                |a, b, out| fwd_mul(self, a, b, out),
                |a, out| fwd_square(self, a, out),
            ),
            Variant::CiosUnrolled => self.pow_with(
                base,
                e,
                |a, b, out| cios2_mul(self, a, b, out),
                |a, out| cios2_mul(self, a, a, out),
            ),
            Variant::Cios => self.pow_with(
                base,
                e,
                |a, b, out| cios_mul(self, a, b, out),
                |a, out| cios_mul(self, a, a, out),
            ),
        }
    }

    fn pow_with(
        &self,
        base: &[u8],
        e: u64,
        mul: impl Fn(&[u32], &[u32], &mut [u32]),
        square: impl Fn(&[u32], &mut [u32]),
    ) -> Option<Vec<u8>> {
        let len = self.n.len();
        let x = from_be(base, len)?;
        if !less(&x, &self.n) {
            return None;
        }
        let mut base_m = vec![0u32; len];
        mul(&x, &self.rr, &mut base_m);
        let mut power = base_m.clone();
        let mut product = vec![0u32; len];
        let top = e.checked_ilog2()?;
        for bit in (0..top).rev() {
            square(&power, &mut product);
            std::mem::swap(&mut power, &mut product);
            if (e >> bit) & 1 == 1 {
                mul(&power, &base_m, &mut product);
                std::mem::swap(&mut power, &mut product);
            }
        }
        let mut one = vec![0u32; len];
        one[0] = 1;
        mul(&power, &one, &mut product);
        let mut out = vec![0u8; base.len()];
        for (chunk, limb) in out.rchunks_mut(4).zip(&product) {
            for (slot, byte) in chunk.iter_mut().rev().zip(limb.to_le_bytes()) {
                *slot = byte;
            }
        }
        Some(out)
    }
}

/// A column accumulator.
trait Acc: Default {
    fn add(&mut self, x: u32, y: u32);
    fn add_twice(&mut self, other: &Self);
    fn low(&self) -> u32;
    fn shift(&mut self);
    #[inline(always)]
    fn add_products(&mut self, xs: &[u32], ys: &[u32]) {
        for (x, y) in xs.iter().zip(ys.iter().rev()) {
            self.add(*x, *y);
        }
    }
}

/// The products' halves summed apart (src/montgomery.rs's `Column`).
#[derive(Default)]
struct Split {
    low: u64,
    high: u64,
}

impl Acc for Split {
    #[inline(always)]
    fn add(&mut self, x: u32, y: u32) {
        let p = u64::from(x) * u64::from(y);
        self.low += p & 0xffff_ffff;
        self.high += p >> 32;
    }
    fn add_twice(&mut self, other: &Self) {
        self.low += other.low << 1;
        self.high += other.high << 1;
    }
    fn low(&self) -> u32 {
        self.low as u32
    }
    fn shift(&mut self) {
        self.low = (self.low >> 32) + self.high;
        self.high = 0;
    }
}

/// A 3-word accumulator: 64 bits and a carry word.
#[derive(Default)]
struct Carry {
    low: u64,
    carry: u64,
}

impl Acc for Carry {
    #[inline(always)]
    fn add(&mut self, x: u32, y: u32) {
        let p = u64::from(x) * u64::from(y);
        let (sum, overflow) = self.low.overflowing_add(p);
        self.low = sum;
        self.carry += u64::from(overflow);
    }
    fn add_twice(&mut self, other: &Self) {
        let carry = (other.carry << 1) | (other.low >> 63);
        let (sum, overflow) = self.low.overflowing_add(other.low << 1);
        self.low = sum;
        self.carry += carry + u64::from(overflow);
    }
    fn low(&self) -> u32 {
        self.low as u32
    }
    fn shift(&mut self) {
        self.low = (self.low >> 32) | (self.carry << 32);
        self.carry = 0;
    }
}

fn column_operands<'a>(a: &'a [u32], b: &'a [u32], column: usize) -> (&'a [u32], &'a [u32]) {
    let first = column.saturating_sub(a.len() - 1);
    let last = column.min(a.len() - 1);
    (
        a.get(first..=last).unwrap_or_default(),
        b.get(column - last..=column - first).unwrap_or_default(),
    )
}

fn fips_mul<A: Acc>(p: &Params, a: &[u32], b: &[u32], out: &mut [u32]) {
    reduce_columns::<A>(p, out, |column, sum| {
        let (a, b) = column_operands(a, b, column);
        sum.add_products(a, b);
    });
}

fn fips_square<A: Acc>(p: &Params, a: &[u32], out: &mut [u32]) {
    reduce_columns::<A>(p, out, |column, sum| {
        let first = column.saturating_sub(a.len() - 1);
        let low = a.get(first..column.div_ceil(2)).unwrap_or_default();
        let high = a.get(column / 2 + 1..=column - first).unwrap_or_default();
        let mut twice = A::default();
        twice.add_products(low, high);
        sum.add_twice(&twice);
        if column % 2 == 0 {
            if let Some(middle) = a.get(column / 2) {
                sum.add(*middle, *middle);
            }
        }
    });
}

fn reduce_columns<A: Acc>(p: &Params, out: &mut [u32], add_column: impl Fn(usize, &mut A)) {
    let n = &p.n;
    let len = n.len();
    let mut sum = A::default();
    for column in 0..len {
        add_column(column, &mut sum);
        sum.add_products(
            out.get(..column).unwrap_or_default(),
            n.get(1..=column).unwrap_or_default(),
        );
        let m = sum.low().wrapping_mul(p.n0);
        sum.add(m, n[0]);
        out[column] = m;
        sum.shift();
    }
    for column in len..2 * len {
        let first = column + 1 - len;
        add_column(column, &mut sum);
        sum.add_products(
            out.get(first..).unwrap_or_default(),
            n.get(first..).unwrap_or_default(),
        );
        out[column - len] = sum.low();
        sum.shift();
    }
    if sum.low() != 0 || !less(out, n) {
        sub(out, n);
    }
}

/// Operand scanning, multiplication and reduction fused: for each limb of `a`,
/// `t = (t + a[i]·b + m·n) / 2^32` in one pass over `t`.
fn cios_mul(p: &Params, a: &[u32], b: &[u32], out: &mut [u32]) {
    let n = &p.n[..];
    let len = n.len();
    assert!(a.len() == len && b.len() == len && out.len() == len);
    out.fill(0);
    let mut top = 0u64;
    for &ai in a {
        let ai = u64::from(ai);
        let first = u64::from(out[0]) + ai * u64::from(b[0]);
        let m = u64::from((first as u32).wrapping_mul(p.n0));
        let mut c1 = first >> 32;
        let mut c2 = (u64::from(first as u32) + m * u64::from(n[0])) >> 32;
        for j in 1..len {
            let x = u64::from(out[j]) + ai * u64::from(b[j]) + c1;
            c1 = x >> 32;
            let y = u64::from(x as u32) + m * u64::from(n[j]) + c2;
            c2 = y >> 32;
            out[j - 1] = y as u32;
        }
        let s = top + c1 + c2;
        out[len - 1] = s as u32;
        top = s >> 32;
    }
    if top != 0 || !less(out, n) {
        sub(out, n);
    }
}

fn less(a: &[u32], b: &[u32]) -> bool {
    a.iter().rev().cmp(b.iter().rev()).is_lt()
}

fn sub(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0u64;
    for (x, y) in a.iter_mut().zip(b) {
        let d = u64::from(*x)
            .wrapping_sub(u64::from(*y))
            .wrapping_sub(borrow);
        *x = d as u32;
        borrow = (d >> 63) & 1;
    }
}

fn from_be(bytes: &[u8], len: usize) -> Option<Vec<u32>> {
    let mut limbs = vec![0u32; len];
    let mut chunks = bytes.rchunks(4);
    for limb in limbs.iter_mut() {
        if let Some(chunk) = chunks.next() {
            *limb = chunk.iter().fold(0, |l, b| (l << 8) | u32::from(*b));
        }
    }
    chunks.all(|c| c.iter().all(|b| *b == 0)).then_some(limbs)
}

/// Product scanning where every inner loop is a forward zip of two slices: `rev[k]` is
/// `x[len - 1 - k]`, so `x[i - j]` for rising `j` is `rev[len - 1 - i + j]`, rising too.
#[inline(always)]
fn fwd_products(sum: &mut Split, xs: &[u32], ys: &[u32]) {
    for (x, y) in xs.iter().zip(ys) {
        sum.add(*x, *y);
    }
}

fn fwd_mul(p: &Params, a: &[u32], b: &[u32], out: &mut [u32]) {
    let len = a.len();
    let b_rev: Vec<u32> = b.iter().rev().copied().collect();
    fwd_reduce(p, out, |column, sum| {
        let first = column.saturating_sub(len - 1);
        let last = column.min(len - 1);
        let start = len - 1 - column + first;
        fwd_products(
            sum,
            a.get(first..=last).unwrap_or_default(),
            b_rev.get(start..).unwrap_or_default(),
        );
    });
}

fn fwd_square(p: &Params, a: &[u32], out: &mut [u32]) {
    let len = a.len();
    let a_rev: Vec<u32> = a.iter().rev().copied().collect();
    fwd_reduce(p, out, |column, sum| {
        let first = column.saturating_sub(len - 1);
        let low = a.get(first..column.div_ceil(2)).unwrap_or_default();
        let start = len - 1 - column + first;
        let mut twice = Split::default();
        fwd_products(&mut twice, low, a_rev.get(start..).unwrap_or_default());
        sum.add_twice(&twice);
        if column % 2 == 0 {
            if let Some(middle) = a.get(column / 2) {
                sum.add(*middle, *middle);
            }
        }
    });
}

fn fwd_reduce(p: &Params, out: &mut [u32], add_column: impl Fn(usize, &mut Split)) {
    let n = &p.n;
    let len = n.len();
    let mut sum = Split::default();
    for column in 0..len {
        add_column(column, &mut sum);
        // m[j]·n[column - j] for j < column: n_rev[len - 1 - column + j].
        fwd_products(
            &mut sum,
            out.get(..column).unwrap_or_default(),
            p.n_rev.get(len - 1 - column..).unwrap_or_default(),
        );
        let m = sum.low().wrapping_mul(p.n0);
        sum.add(m, n[0]);
        out[column] = m;
        sum.shift();
    }
    for column in len..2 * len {
        let first = column + 1 - len;
        add_column(column, &mut sum);
        fwd_products(&mut sum, out.get(first..).unwrap_or_default(), &p.n_rev);
        out[column - len] = sum.low();
        sum.shift();
    }
    if sum.low() != 0 || !less(out, n) {
        sub(out, n);
    }
}

fn cios2_mul(p: &Params, a: &[u32], b: &[u32], out: &mut [u32]) {
    let n = &p.n[..];
    let len = n.len();
    assert!(a.len() == len && b.len() == len && out.len() == len);
    out.fill(0);
    let mut top = 0u64;
    for &ai in a {
        let ai = u64::from(ai);
        let first = u64::from(out[0]) + ai * u64::from(b[0]);
        let m = u64::from((first as u32).wrapping_mul(p.n0));
        let mut c1 = first >> 32;
        let mut c2 = (u64::from(first as u32) + m * u64::from(n[0])) >> 32;
        let mut j = 1;
        while j + 1 < len {
            let x = u64::from(out[j]) + ai * u64::from(b[j]) + c1;
            let y = u64::from(x as u32) + m * u64::from(n[j]) + c2;
            out[j - 1] = y as u32;
            let x2 = u64::from(out[j + 1]) + ai * u64::from(b[j + 1]) + (x >> 32);
            let y2 = u64::from(x2 as u32) + m * u64::from(n[j + 1]) + (y >> 32);
            out[j] = y2 as u32;
            c1 = x2 >> 32;
            c2 = y2 >> 32;
            j += 2;
        }
        if j < len {
            let x = u64::from(out[j]) + ai * u64::from(b[j]) + c1;
            c1 = x >> 32;
            let y = u64::from(x as u32) + m * u64::from(n[j]) + c2;
            c2 = y >> 32;
            out[j - 1] = y as u32;
        }
        let s = top + c1 + c2;
        out[len - 1] = s as u32;
        top = s >> 32;
    }
    if top != 0 || !less(out, n) {
        sub(out, n);
    }
}
