//! A platform-independent `exp` for the sampler's softmax.
//!
//! `f64::exp` calls the platform's libm, whose last-bit rounding differs
//! between C libraries and CPUs; the draw compares a uniform against a
//! running sum of these weights, so a one-ulp difference could pick a
//! different token on another machine. This version uses only IEEE-754
//! `+ - * /` and `round` (all correctly rounded, and Rust never fuses them
//! into FMAs on its own), so it gives the same bits everywhere.
//!
//! Method (the textbook one, e.g. Muller, "Elementary Functions", ch. 11):
//! write x = k·ln2 + r with k = round(x/ln2) and |r| ≤ ln2/2, evaluate e^r
//! by its Taylor series to degree 13 (remainder < 1e-17 relative), then
//! scale by 2^k by building the exponent bits directly.

/// ln 2 split in two: `LN2_HI` has its low 32 bits zero, so `k * LN2_HI` is
/// exact for every |k| < 2^20 and the reduction loses no precision
/// (Cody–Waite; the constants are fdlibm's published split).
/// Given as bit patterns so that no decimal-to-binary rounding is involved:
/// `LN2_HI` = 6.93147180369123816490e-01, `LN2_LO` = 1.90821492927058770002e-10.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);

/// Degree of the Taylor polynomial for e^r on |r| ≤ ln2/2:
/// 0.347^14 / 14! ≈ 4e-18.
const DEGREE: usize = 13;

/// 1/n! is not needed, only 1/n for the nested Horner form
/// e^r = 1 + r(1 + r/2(1 + r/3(…))). Computed at compile time.
const INV: [f64; DEGREE + 1] = {
    let mut t = [0.0; DEGREE + 1];
    let mut n = 1;
    while n <= DEGREE {
        t[n] = 1.0 / n as f64;
        n += 1;
    }
    t
};

/// e^x with ≈1e-15 relative error and identical bits on every platform.
///
/// Results below 2^-1022 (x < −708) flush to 0: the sampler only ever calls
/// this with x = logit − max ≤ 0, where the largest weight is 1 and such a
/// token could never be drawn anyway.
pub fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x < -708.0 {
        return 0.0;
    }
    if x > 709.0 {
        return f64::INFINITY;
    }
    let k = (x * std::f64::consts::LOG2_E).round();
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut acc = 1.0;
    let mut n = DEGREE;
    while n >= 1 {
        acc = 1.0 + r * acc * INV[n];
        n -= 1;
    }
    // k is in [-1022, 1023] given the range checks above, so 2^k is a
    // normal f64 whose biased exponent is k + 1023.
    let scale = f64::from_bits(((k as i64 + 1023) as u64) << 52);
    acc * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_std_exp_closely() {
        let mut x: f64 = -700.0;
        while x <= 50.0 {
            let want = x.exp();
            let got = exp(x);
            let rel = ((got - want) / want).abs();
            assert!(rel < 1e-14, "exp({x}) = {got}, std says {want}");
            x += 0.013_7;
        }
    }

    #[test]
    fn edge_values() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f64::INFINITY), f64::INFINITY);
        assert!(exp(f64::NAN).is_nan());
    }

    #[test]
    fn is_monotone_on_a_fine_grid() {
        // The sampler's min-p cut compares weights; a non-monotone exp would
        // keep a smaller logit while dropping a larger one.
        let mut prev = 0.0;
        let mut x = -30.0;
        while x <= 0.0 {
            let y = exp(x);
            assert!(y >= prev, "exp not monotone at {x}");
            prev = y;
            x += 1e-4;
        }
    }
}
