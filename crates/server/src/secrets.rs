//! Randomness and hashing for credentials: every secret comes from the OS CSPRNG.

use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

/// `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS RNG failing is unrecoverable: no credential may be minted without it.
    #[allow(clippy::expect_used)]
    OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator failed");
    bytes
}

/// A uniformly random index below `bound` (rejection sampling, no modulo bias).
pub fn random_below(bound: u8) -> u8 {
    let zone = u8::MAX - (u8::MAX % bound) - 1;
    loop {
        let [b] = random_bytes::<1>();
        if b <= zone {
            return b % bound;
        }
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_below_stays_in_range_and_covers_it() {
        let mut seen = [false; 31];
        for _ in 0..5000 {
            let v = random_below(31);
            assert!(v < 31);
            seen[usize::from(v)] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
