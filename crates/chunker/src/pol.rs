//! Polynomials over GF(2) packed in a `u64` (bit i = coefficient of x^i).

use std::fmt;
use std::str::FromStr;

/// A polynomial over GF(2) of degree < 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Pol(pub u64);

/// The text is not a hex polynomial.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid chunker polynomial {0:?}: expected up to 16 hex digits")]
pub struct ParsePolError(pub String);

impl Pol {
    /// Degree (highest set bit); -1 for the zero polynomial.
    pub fn deg(self) -> i32 {
        63 - self.0.leading_zeros() as i32
    }

    /// Remainder of `self` divided by `d` (`d` must not be zero).
    pub fn modulo(self, d: Pol) -> Pol {
        let dd = d.deg();
        let mut x = self.0;
        if dd < 0 {
            return Pol(x);
        }
        while Pol(x).deg() >= dd {
            x ^= d.0 << (Pol(x).deg() - dd);
        }
        Pol(x)
    }

    /// `self * b mod m`, without overflow for degrees up to 63.
    pub fn mul_mod(self, b: Pol, m: Pol) -> Pol {
        let mut a = self.modulo(m).0;
        let mut b = b.0;
        let mut res = 0u64;
        let dm = m.deg();
        while b != 0 {
            if b & 1 == 1 {
                res ^= a;
            }
            b >>= 1;
            // a = a * x mod m; a has degree < deg(m), so one subtraction suffices.
            a <<= 1;
            if Pol(a).deg() >= dm {
                a ^= m.0;
            }
        }
        Pol(res).modulo(m)
    }

    /// Greatest common divisor.
    pub fn gcd(self, other: Pol) -> Pol {
        let (mut a, mut b) = (self, other);
        while b.0 != 0 {
            let r = a.modulo(b);
            a = b;
            b = r;
        }
        a
    }

    /// Whether the polynomial is irreducible (Ben-Or: gcd(x^(2^i) - x mod f, f) = 1 for every
    /// i up to deg/2).
    pub fn irreducible(self) -> bool {
        let d = self.deg();
        if d < 1 {
            return false;
        }
        let x = Pol(2);
        let mut q = x;
        for _ in 1..=d / 2 {
            q = q.mul_mod(q, self); // x^(2^i) mod f
            let g = self.gcd(Pol(q.0 ^ x.0));
            if g.0 != 1 {
                return false;
            }
        }
        true
    }

    /// A random irreducible polynomial of degree 53, as restic picks for a new repository.
    pub fn random<R: rand::Rng + ?Sized>(rng: &mut R) -> Pol {
        loop {
            // Degree exactly 53 (bit 53 set, higher bits clear) and a constant term, without
            // which the polynomial would be divisible by x.
            let p = Pol((rng.gen::<u64>() & ((1 << 54) - 1)) | (1 << 53) | 1);
            if p.irreducible() {
                return p;
            }
        }
    }
}

impl fmt::Display for Pol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl FromStr for Pol {
    type Err = ParsePolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16)
            .map(Pol)
            .map_err(|_| ParsePolError(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_polynomial_is_irreducible_and_products_are_not() {
        let p = Pol(0x3DA3358B4DC173);
        assert_eq!(p.deg(), 53);
        assert!(p.irreducible());
        // (x^2 + x + 1)(x^3 + x + 1) = x^5 + x^4 + 1
        assert!(!Pol(0b110001).irreducible());
        assert!(Pol(0b111).irreducible());
        assert!(Pol(0b1011).irreducible());
        assert!(!Pol(0b101).irreducible()); // (x+1)^2
    }

    #[test]
    fn modulo_and_parse() {
        assert_eq!(Pol(0b110001).modulo(Pol(0b111)), Pol(0));
        assert_eq!(Pol(0b1000).modulo(Pol(0b1011)), Pol(0b011));
        assert_eq!(
            "3da3358b4dc173".parse::<Pol>().unwrap(),
            Pol(0x3DA3358B4DC173)
        );
        assert_eq!(Pol(0x3DA3358B4DC173).to_string(), "3da3358b4dc173");
        assert!("xyz".parse::<Pol>().is_err());
    }

    #[test]
    fn random_polynomials_have_degree_53_and_are_irreducible() {
        let mut rng = rand::thread_rng();
        for _ in 0..5 {
            let p = Pol::random(&mut rng);
            assert_eq!(p.deg(), 53);
            assert!(p.irreducible());
        }
    }
}
