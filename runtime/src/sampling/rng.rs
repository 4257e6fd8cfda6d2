//! The sampler's seeded random number generator: xoshiro256** seeded through
//! splitmix64, and the fixed bits-to-uniform mapping the draw uses.
//!
//! Both generators are pure integer arithmetic (wrapping adds, multiplies,
//! shifts, rotations), so a seed gives the same stream on every platform.
//! The uniform in [0, 1) is built from the top 53 bits by one exact
//! multiplication, so it is bit-identical everywhere too.
//!
//! Algorithms: D. Blackman and S. Vigna, "Scrambled Linear Pseudorandom
//! Number Generators" (ACM TOMS 2021), for xoshiro256**; splitmix64 is
//! Steele, Lea and Flood's SplittableRandom mixer, which the xoshiro authors
//! recommend for expanding a 64-bit seed into the 256-bit state.

/// One step of splitmix64: advance `state` by the golden-ratio increment and
/// return the mixed value.
///
/// The mixer is a bijection of the counter, so four consecutive outputs are
/// never all zero and the xoshiro state it seeds is always valid.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xoshiro256**: a small, fast generator with a 2^256 − 1 period whose
/// output passes BigCrush; more than enough for token sampling, and not
/// cryptographic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Rng { s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        // The "**" scrambler: rotl(s1 * 5, 7) * 9.
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform draw from [0, 1) on the grid k·2⁻⁵³.
    ///
    /// The top 53 bits (xoshiro's strongest) become the integer k, which an
    /// f64 holds exactly; scaling by 2⁻⁵³ is exact too, so the value depends
    /// on nothing but the bits.
    pub fn next_f64(&mut self) -> f64 {
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        (self.next_u64() >> 11) as f64 * SCALE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_stream() {
        // First outputs of the reference splitmix64.c for seed 1234567.
        let mut s = 1234567u64;
        let got: Vec<u64> = (0..3).map(|_| splitmix64(&mut s)).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423
            ]
        );
    }

    #[test]
    fn xoshiro_matches_the_reference_stream() {
        // Reference xoshiro256starstar.c from state {1, 2, 3, 4}.
        let mut r = Rng { s: [1, 2, 3, 4] };
        let got: Vec<u64> = (0..6).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                11520,
                0,
                1509978240,
                1215971899390074240,
                1216172134540287360,
                607988272756665600
            ]
        );
    }

    #[test]
    fn uniform_is_in_range_and_roughly_uniform() {
        let mut r = Rng::new(7);
        let mut mean = 0.0;
        for _ in 0..10_000 {
            let u = r.next_f64();
            assert!((0.0..1.0).contains(&u));
            mean += u;
        }
        mean /= 10_000.0;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }
}
