//! Polynomials over GF(2) packed in a `u64` (bit i = coefficient of x^i).
//!
//! Addition is XOR; multiplication is carry-less. restic stores the chunker's polynomial in
//! the repository config as lowercase hex without a prefix (`"chunker_polynomial":
//! "3da3358b4dc173"`), which is what [`Pol`]'s `Display` and `FromStr` read and write.

use std::fmt;
use std::ops::Add;
use std::str::FromStr;

/// A polynomial over GF(2) of degree < 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Pol(pub u64);

/// Why a `chunker_polynomial` string is not a polynomial.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ParsePolError {
    /// The string is empty.
    #[error("empty chunker polynomial")]
    Empty,
    /// A character is not a hex digit (signs and `0x` prefixes are refused too, as restic does).
    #[error("invalid chunker polynomial {0:?}: not a hex number")]
    InvalidDigit(String),
    /// The value does not fit in 64 bits.
    #[error("invalid chunker polynomial {0:?}: more than 64 bits")]
    Overflow(String),
}

/// Degree of the polynomials restic generates for new repositories.
pub const RANDOM_POL_DEGREE: i32 = 53;

impl Pol {
    /// Degree (index of the highest set bit); -1 for the zero polynomial.
    pub const fn deg(self) -> i32 {
        63 - self.0.leading_zeros() as i32
    }

    /// Carry-less product, or `None` when it has degree 64 or more.
    pub fn checked_mul(self, other: Pol) -> Option<Pol> {
        if self.0 == 0 || other.0 == 0 {
            return Some(Pol(0));
        }
        if self.deg() + other.deg() > 63 {
            return None;
        }
        let mut res = 0u64;
        let (a, mut b) = (self.0, other.0);
        let mut shift = 0;
        while b != 0 {
            if b & 1 == 1 {
                res ^= a << shift;
            }
            b >>= 1;
            shift += 1;
        }
        Some(Pol(res))
    }

    /// Quotient and remainder of `self / d`; `None` when `d` is zero.
    pub fn div_mod(self, d: Pol) -> Option<(Pol, Pol)> {
        let dd = d.deg();
        if dd < 0 {
            return None;
        }
        let (mut q, mut r) = (0u64, self.0);
        while Pol(r).deg() >= dd {
            let s = Pol(r).deg() - dd;
            q |= 1 << s;
            r ^= d.0 << s;
        }
        Some((Pol(q), Pol(r)))
    }

    /// Remainder of `self / d`; `self` unchanged when `d` is zero (there is nothing to reduce by).
    pub fn modulo(self, d: Pol) -> Pol {
        self.div_mod(d).map_or(self, |(_, r)| r)
    }

    /// `self * b mod m` without overflow for any degrees (`m` zero: `self * b` truncated to 64
    /// bits, which callers never want; pass a nonzero modulus).
    pub fn mul_mod(self, b: Pol, m: Pol) -> Pol {
        let dm = m.deg();
        let mut a = self.modulo(m).0;
        let mut b = b.0;
        let mut res = 0u64;
        while b != 0 {
            if b & 1 == 1 {
                res ^= a;
            }
            b >>= 1;
            // a = a * x mod m. a has degree < deg(m) <= 63, so the shift loses no bit and one
            // subtraction of m reduces it again.
            a <<= 1;
            if dm >= 0 && Pol(a).deg() >= dm {
                a ^= m.0;
            }
        }
        Pol(res)
    }

    /// Greatest common divisor (monic, as every nonzero polynomial over GF(2) is).
    pub fn gcd(self, other: Pol) -> Pol {
        let (mut a, mut b) = (self, other);
        while b.0 != 0 {
            let r = a.modulo(b);
            a = b;
            b = r;
        }
        a
    }

    /// Whether the polynomial is irreducible, by Ben-Or's test: `f` of degree `n` is
    /// irreducible iff `gcd(f, x^(2^i) - x mod f) = 1` for every `1 <= i <= n/2`.
    /// Constants (degree < 1) are not irreducible.
    pub fn irreducible(self) -> bool {
        let d = self.deg();
        if d < 1 {
            return false;
        }
        const X: Pol = Pol(2);
        let mut q = X.modulo(self);
        for _ in 1..=d / 2 {
            q = q.mul_mod(q, self); // now x^(2^i) mod f
            if self.gcd(q + X).0 != 1 {
                return false;
            }
        }
        true
    }

    /// A random irreducible polynomial of degree 53, drawn as restic draws one for a new
    /// repository: 8 bytes read little-endian, bits above 53 cleared, bits 53 and 0 set (degree
    /// exactly 53, not divisible by x), kept if irreducible, else drawn again. About one draw in
    /// 27 succeeds, so this returns quickly for any working random source (a source that never
    /// yields an irreducible candidate would keep it looping).
    pub fn random<R: rand::RngCore + ?Sized>(rng: &mut R) -> Pol {
        loop {
            let mut bytes = [0u8; 8];
            rng.fill_bytes(&mut bytes);
            let p = Pol(
                (u64::from_le_bytes(bytes) & ((1 << (RANDOM_POL_DEGREE + 1)) - 1))
                    | (1 << RANDOM_POL_DEGREE)
                    | 1,
            );
            if p.irreducible() {
                return p;
            }
        }
    }
}

impl Add for Pol {
    type Output = Pol;

    /// Sum over GF(2), which is XOR (and equal to the difference).
    #[allow(clippy::suspicious_arithmetic_impl)] // XOR is addition here
    fn add(self, other: Pol) -> Pol {
        Pol(self.0 ^ other.0)
    }
}

impl fmt::Display for Pol {
    /// Lowercase hex without prefix, the form of restic's config `chunker_polynomial`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl fmt::LowerHex for Pol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl FromStr for Pol {
    type Err = ParsePolError;

    /// Parses hex digits (either case, no sign, no prefix) as restic's config does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ParsePolError::Empty);
        }
        // `from_str_radix` would accept a leading '+'; restic's parser does not.
        if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParsePolError::InvalidDigit(s.to_string()));
        }
        u64::from_str_radix(s, 16)
            .map(Pol)
            .map_err(|_| ParsePolError::Overflow(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const RESTIC_TEST_POL: Pol = Pol(0x3DA3358B4DC173);

    /// Irreducibility by trial division, slow but obviously right.
    fn irreducible_naive(p: Pol) -> bool {
        let d = p.deg();
        // Every q of degree 1..=d/2.
        d >= 1 && (2u64..1 << (d / 2 + 1)).all(|q| p.modulo(Pol(q)).0 != 0)
    }

    #[test]
    fn degree() {
        assert_eq!(Pol(0).deg(), -1);
        assert_eq!(Pol(1).deg(), 0);
        assert_eq!(Pol(0b1011).deg(), 3);
        assert_eq!(RESTIC_TEST_POL.deg(), 53);
        assert_eq!(Pol(u64::MAX).deg(), 63);
    }

    #[test]
    fn add_mul_div_on_known_values() {
        assert_eq!(Pol(0b1011) + Pol(0b0110), Pol(0b1101));
        assert_eq!(Pol(0x1234) + Pol(0x1234), Pol(0));
        // (x + 1)^2 = x^2 + 1
        assert_eq!(Pol(0b11).checked_mul(Pol(0b11)), Some(Pol(0b101)));
        // (x^2 + x + 1)(x^3 + x + 1) = x^5 + x^4 + 1
        assert_eq!(Pol(0b111).checked_mul(Pol(0b1011)), Some(Pol(0b110001)));
        assert_eq!(Pol(0).checked_mul(Pol(u64::MAX)), Some(Pol(0)));
        assert_eq!(Pol(1 << 32).checked_mul(Pol(1 << 31)), Some(Pol(1 << 63)));
        assert_eq!(Pol(1 << 32).checked_mul(Pol(1 << 32)), None);
        assert_eq!(
            Pol(0b110001).div_mod(Pol(0b111)),
            Some((Pol(0b1011), Pol(0)))
        );
        // x^3 = 1 * (x^3 + x + 1) + (x + 1)
        assert_eq!(Pol(0b1000).div_mod(Pol(0b1011)), Some((Pol(1), Pol(0b11))));
        assert_eq!(Pol(0b1000).modulo(Pol(0b1011)), Pol(0b11));
        assert_eq!(Pol(5).div_mod(Pol(0)), None);
        assert_eq!(Pol(5).modulo(Pol(0)), Pol(5));
        assert_eq!(Pol(0b110001).gcd(Pol(0b1011)), Pol(0b1011));
        assert_eq!(Pol(0b111).gcd(Pol(0b1011)), Pol(1));
    }

    #[test]
    fn arithmetic_identities_on_random_values() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..2000 {
            let a = Pol(rng.gen::<u64>() >> rng.gen_range(0..64));
            let d = Pol(rng.gen::<u64>() >> rng.gen_range(0..64));
            let Some((q, r)) = a.div_mod(d) else {
                assert_eq!(d, Pol(0));
                continue;
            };
            assert!(r.deg() < d.deg());
            assert_eq!(q.checked_mul(d).map(|p| p + r), Some(a));
            // mul_mod agrees with multiply-then-reduce where the product fits.
            let (x, y) = (Pol(rng.gen::<u32>().into()), Pol(rng.gen::<u32>().into()));
            let m = Pol(rng.gen::<u64>() | 1);
            assert_eq!(
                x.mul_mod(y, m),
                x.checked_mul(y).map(|p| p.modulo(m)).unwrap()
            );
        }
    }

    #[test]
    fn known_polynomial_is_irreducible_and_products_are_not() {
        assert!(RESTIC_TEST_POL.irreducible());
        assert!(Pol(0b111).irreducible());
        assert!(Pol(0b1011).irreducible());
        assert!(!Pol(0b110001).irreducible()); // (x^2 + x + 1)(x^3 + x + 1)
        assert!(!Pol(0b101).irreducible()); // (x + 1)^2
        assert!(!Pol(1).irreducible());
        assert!(!Pol(0).irreducible());
        assert!(!RESTIC_TEST_POL
            .checked_mul(Pol(0b111))
            .unwrap()
            .irreducible());
        // Products of two random irreducible polynomials of degree up to 31.
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut irreducible = || loop {
            let p = Pol(rng.gen::<u32>().into());
            if p.deg() >= 1 && p.irreducible() {
                return p;
            }
        };
        for _ in 0..50 {
            let (a, b) = (irreducible(), irreducible());
            assert!(!a.checked_mul(b).unwrap().irreducible(), "{a:x} * {b:x}");
        }
    }

    #[test]
    fn ben_or_agrees_with_trial_division_up_to_degree_12() {
        // Number of irreducible polynomials over GF(2) per degree (OEIS A001037).
        let expected = [0, 2, 1, 2, 3, 6, 9, 18, 30, 56, 99, 186, 335];
        let mut counts = [0; 13];
        for p in 0u64..1 << 13 {
            let ben_or = Pol(p).irreducible();
            assert_eq!(ben_or, irreducible_naive(Pol(p)), "{p:b}");
            if ben_or {
                counts[Pol(p).deg() as usize] += 1;
            }
        }
        assert_eq!(counts, expected);
    }

    #[test]
    fn parse_and_format_like_restic_config() {
        assert_eq!("3da3358b4dc173".parse::<Pol>(), Ok(RESTIC_TEST_POL));
        assert_eq!("3DA3358B4DC173".parse::<Pol>(), Ok(RESTIC_TEST_POL));
        assert_eq!(RESTIC_TEST_POL.to_string(), "3da3358b4dc173");
        assert_eq!(format!("{RESTIC_TEST_POL:#x}"), "0x3da3358b4dc173");
        assert_eq!("ffffffffffffffff".parse::<Pol>(), Ok(Pol(u64::MAX)));
        assert_eq!("".parse::<Pol>(), Err(ParsePolError::Empty));
        for bad in ["xyz", "+3da", "-1", "0x3da", " 3da", "3da\n"] {
            assert_eq!(
                bad.parse::<Pol>(),
                Err(ParsePolError::InvalidDigit(bad.into()))
            );
        }
        assert_eq!(
            "10000000000000000".parse::<Pol>(),
            Err(ParsePolError::Overflow("10000000000000000".into()))
        );
    }

    #[test]
    fn random_polynomials_have_degree_53_and_are_irreducible() {
        let mut rng = rand::thread_rng();
        for _ in 0..10 {
            let p = Pol::random(&mut rng);
            assert_eq!(p.deg(), 53);
            assert_eq!(p.0 & 1, 1);
            assert!(p.irreducible());
            assert_eq!(p.to_string().parse::<Pol>(), Ok(p));
        }
        // A seeded source gives the same polynomial every time.
        let seeded = |seed| Pol::random(&mut rand::rngs::StdRng::seed_from_u64(seed));
        assert_eq!(seeded(7), seeded(7));
    }

    #[test]
    fn random_reads_the_source_as_little_endian_bytes() {
        // A source replaying fixed bytes: the first candidate (x^53 + 1 after masking) is
        // divisible by x + 1, the second is restic's well-known test polynomial.
        struct Replay(Vec<u8>);
        impl rand::RngCore for Replay {
            fn next_u32(&mut self) -> u32 {
                unreachable!("random must read bytes")
            }
            fn next_u64(&mut self) -> u64 {
                unreachable!("random must read bytes")
            }
            fn fill_bytes(&mut self, dest: &mut [u8]) {
                let rest = self.0.split_off(dest.len());
                dest.copy_from_slice(&self.0);
                self.0 = rest;
            }
            fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
                self.fill_bytes(dest);
                Ok(())
            }
        }
        let mut bytes = vec![0, 0, 0, 0, 0, 0, 0, 0xc0]; // bits above 53 are masked off
        bytes.extend(0x3DA3358B4DC173u64.to_le_bytes());
        let mut source = Replay(bytes);
        assert_eq!(Pol::random(&mut source), RESTIC_TEST_POL);
        assert!(source.0.is_empty());
    }
}
