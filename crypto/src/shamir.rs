//! Shamir t-of-n secret sharing of 32-byte [`Seed`]s over GF(2^8) (the AES field, polynomial
//! x^8 + x^4 + x^3 + x + 1), byte by byte, as in Shamir (1979). Any `t` shares rebuild the
//! seed; any `t - 1` shares are consistent with every possible seed, so they reveal nothing.
//! Field arithmetic is branch-free and table-free, so its timing does not depend on secrets.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Seed;

/// Most shares a seed can be split into (share x-coordinates are 1..=255).
pub const MAX_SHARES: usize = 255;

/// Errors of splitting and combining.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShamirError {
    #[error("threshold {t} of {n} shares is not possible (need 1 <= t <= n <= 255)")]
    BadParameters { t: usize, n: usize },
    #[error("{got} distinct shares given, {t} needed")]
    NotEnoughShares { got: usize, t: usize },
    #[error("share index 0 is invalid")]
    ZeroIndex,
}

/// One share of a seed: the point `(x, f(x))` of a random degree `t - 1` polynomial per byte
/// whose constant term is the seed byte. Secret: zeroized on drop, not shown by `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Share {
    x: u8,
    y: [u8; 32],
}

impl Share {
    /// Rebuilds a share from its parts (e.g. after opening a sealed share).
    pub fn from_parts(x: u8, y: [u8; 32]) -> Result<Self, ShamirError> {
        if x == 0 {
            return Err(ShamirError::ZeroIndex);
        }
        Ok(Self { x, y })
    }

    /// The share's index (its holder's position, 1-based).
    pub fn index(&self) -> u8 {
        self.x
    }

    /// The secret share value, for sealing.
    pub fn expose(&self) -> &[u8; 32] {
        &self.y
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("x", &self.x)
            .finish_non_exhaustive()
    }
}

/// Multiplication in GF(2^8), constant time.
fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    for _ in 0..8 {
        p ^= (b & 1).wrapping_neg() & a;
        let carry = (a >> 7).wrapping_neg();
        a = (a << 1) ^ (carry & 0x1b);
        b >>= 1;
    }
    p
}

/// Inverse in GF(2^8) as a^254 (a^-1 for a != 0), constant time.
fn inv(a: u8) -> u8 {
    let a2 = mul(a, a);
    let a4 = mul(a2, a2);
    let a8 = mul(a4, a4);
    let a16 = mul(a8, a8);
    let a32 = mul(a16, a16);
    let a64 = mul(a32, a32);
    let a128 = mul(a64, a64);
    // 254 = 128 + 64 + 32 + 16 + 8 + 4 + 2
    mul(mul(mul(a128, a64), mul(a32, a16)), mul(mul(a8, a4), a2))
}

/// Splits `secret` into `n` shares (indices 1..=n), any `t` of which rebuild it.
pub fn split(secret: &Seed, t: usize, n: usize) -> Result<Vec<Share>, ShamirError> {
    if t == 0 || t > n || n > MAX_SHARES {
        return Err(ShamirError::BadParameters { t, n });
    }
    // coefficients[k][byte]: coefficient of x^k for each byte's polynomial; k = 0 is the secret.
    let mut coefficients = vec![[0u8; 32]; t];
    coefficients[0] = *secret.expose();
    for c in coefficients.iter_mut().skip(1) {
        *c = crate::random_bytes();
    }
    let shares = (1..=n as u8)
        .map(|x| {
            let mut y = [0u8; 32];
            for (byte, out) in y.iter_mut().enumerate() {
                // Horner: ((c_{t-1} x + c_{t-2}) x + ...) x + c_0
                *out = coefficients
                    .iter()
                    .rev()
                    .fold(0u8, |acc, c| mul(acc, x) ^ c[byte]);
            }
            Share { x, y }
        })
        .collect();
    coefficients.zeroize();
    Ok(shares)
}

/// Rebuilds the secret from at least `t` shares with distinct indices (Lagrange interpolation
/// at 0 over the first `t` distinct ones).
pub fn combine(shares: &[Share], t: usize) -> Result<Seed, ShamirError> {
    if t == 0 || t > MAX_SHARES {
        return Err(ShamirError::BadParameters { t, n: shares.len() });
    }
    let mut chosen: Vec<&Share> = Vec::with_capacity(t);
    for s in shares {
        if s.x == 0 {
            return Err(ShamirError::ZeroIndex);
        }
        if chosen.len() < t && !chosen.iter().any(|c| c.x == s.x) {
            chosen.push(s);
        }
    }
    if chosen.len() < t {
        return Err(ShamirError::NotEnoughShares {
            got: chosen.len(),
            t,
        });
    }
    let mut secret = [0u8; 32];
    for (i, si) in chosen.iter().enumerate() {
        // Lagrange basis at 0: prod_{j != i} x_j / (x_j - x_i); subtraction is xor.
        let mut num = 1u8;
        let mut den = 1u8;
        for (j, sj) in chosen.iter().enumerate() {
            if i != j {
                num = mul(num, sj.x);
                den = mul(den, sj.x ^ si.x);
            }
        }
        let basis = mul(num, inv(den));
        for (out, y) in secret.iter_mut().zip(&si.y) {
            *out ^= mul(basis, *y);
        }
    }
    let seed = Seed::from_bytes(secret);
    secret.zeroize();
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn field_known_answers() {
        // FIPS 197, section 4.2: {57} • {83} = {c1}, {57} • {13} = {fe}.
        assert_eq!(mul(0x57, 0x83), 0xc1);
        assert_eq!(mul(0x57, 0x13), 0xfe);
        // FIPS 197, section 5.1.1: the multiplicative inverse of {53} is {ca}.
        assert_eq!(inv(0x53), 0xca);
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "{a}");
        }
    }

    #[test]
    fn refuses_bad_parameters_and_too_few_shares() {
        let s = Seed::random();
        assert!(split(&s, 0, 3).is_err());
        assert!(split(&s, 4, 3).is_err());
        assert!(split(&s, 2, 256).is_err());
        let shares = split(&s, 3, 5).unwrap();
        assert_eq!(
            combine(&shares[..2], 3).unwrap_err(),
            ShamirError::NotEnoughShares { got: 2, t: 3 }
        );
        // Duplicates do not count twice.
        let dup = vec![shares[0].clone(), shares[0].clone(), shares[1].clone()];
        assert!(combine(&dup, 3).is_err());
        assert!(Share::from_parts(0, [0; 32]).is_err());
        assert!(!format!("{:?}", shares[0]).contains(&format!("{:?}", shares[0].y)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any t of the n shares, in any order, rebuild the secret.
        #[test]
        fn any_t_shares_rebuild(secret in any::<[u8; 32]>(), n in 1usize..12, t_frac in 0.0f64..1.0, pick in any::<u64>()) {
            let t = 1 + ((n - 1) as f64 * t_frac) as usize;
            let seed = Seed::from_bytes(secret);
            let mut shares = split(&seed, t, n).unwrap();
            // A pseudo-random subset of size t in a pseudo-random order.
            let mut state = pick;
            for i in (1..shares.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                shares.swap(i, (state >> 33) as usize % (i + 1));
            }
            prop_assert!(combine(&shares[..t], t).unwrap() == seed);
        }

        /// t - 1 shares are consistent with every secret: for any other secret there is a
        /// polynomial of degree t - 1 through those shares and that secret, so the shares
        /// carry no information about which secret it was.
        #[test]
        fn fewer_than_t_shares_fit_any_secret(secret in any::<[u8; 32]>(), other in any::<[u8; 32]>(), n in 2usize..10, t_frac in 0.0f64..1.0) {
            let t = 2 + ((n - 2) as f64 * t_frac) as usize;
            let shares = split(&Seed::from_bytes(secret), t, n).unwrap();
            let mut known: Vec<Share> = shares[..t - 1].to_vec();
            // Add the point (x = 255, whatever) chosen so that the result is `other`: build it
            // by interpolating the t - 1 shares plus (0, other) and evaluating at 255.
            let mut with_other = known.clone();
            with_other.push(Share { x: 255, y: [0; 32] });
            let fake = lagrange_eval(&known, &other, 255);
            with_other.last_mut().unwrap().y = fake;
            prop_assert!(combine(&with_other, t).unwrap() == Seed::from_bytes(other));
            known.push(Share { x: 255, y: fake });
            prop_assert_eq!(known.len(), t);
        }
    }

    /// Evaluates at `x` the polynomial through `points` and (0, secret).
    fn lagrange_eval(points: &[Share], secret: &[u8; 32], x: u8) -> [u8; 32] {
        let mut all: Vec<(u8, [u8; 32])> = points.iter().map(|s| (s.x, s.y)).collect();
        all.push((0, *secret));
        let mut out = [0u8; 32];
        for (i, (xi, yi)) in all.iter().enumerate() {
            let mut num = 1u8;
            let mut den = 1u8;
            for (j, (xj, _)) in all.iter().enumerate() {
                if i != j {
                    num = mul(num, x ^ xj);
                    den = mul(den, xi ^ xj);
                }
            }
            let basis = mul(num, inv(den));
            for (o, y) in out.iter_mut().zip(yi) {
                *o ^= mul(basis, *y);
            }
        }
        out
    }
}
