//! The machine uid's derivation, the same on every platform: `hex(SHA-256(
//! "guruconnect-machine-uid-v1" ‖ 0 ‖ os_id ‖ 0 ‖ hw_1 ‖ 0 ‖ hw_2 …))`, where `os_id` is the
//! OS installation's id (`/etc/machine-id` on Linux, `MachineGuid` on Windows) and the `hw_*`
//! are stable hardware identifiers that keep clones of one image apart.

use sha2::{Digest, Sha256};

const DOMAIN: &[u8] = b"guruconnect-machine-uid-v1";

/// The uid of an OS installation id salted with hardware identifiers.
pub fn derive(os_id: &str, hardware: &[String]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    hasher.update([0]);
    hasher.update(os_id.as_bytes());
    for value in hardware {
        hasher.update([0]);
        hasher.update(value.as_bytes());
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salted_by_hardware_and_stable() {
        let a = derive("id", &["uuid-1".into()]);
        assert_eq!(a, derive("id", &["uuid-1".into()]));
        assert_ne!(a, derive("id", &["uuid-2".into()]));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
