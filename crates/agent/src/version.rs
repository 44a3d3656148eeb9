//! The agent's version, kept in a byte slot of the binary that a release step (or a test)
//! may patch without recompiling.
//!
//! The slot is [`SLOT_LEN`] bytes: [`SLOT_MARKER`] (`GCVERSION1:`), the version, then NUL
//! bytes. It is read through [`std::hint::black_box`], so the compiler cannot fold the
//! build's version into the code that reads it: whatever the file holds at that place is
//! what [`agent_version`] returns. The hello, the inventory, enrollment and the update
//! logic all report this version; the tests make "a real build of version B" out of the
//! one built binary with [`patch`].

/// The slot's first bytes.
pub const SLOT_MARKER: &[u8; 11] = b"GCVERSION1:";
/// The slot's whole length.
pub const SLOT_LEN: usize = 64;
/// Longest version that fits in the slot.
pub const MAX_VERSION_LEN: usize = SLOT_LEN - SLOT_MARKER.len();

/// The slot as built: the marker, this crate's version, NUL padding.
const fn build_slot(version: &str) -> [u8; SLOT_LEN] {
    let mut slot = [0u8; SLOT_LEN];
    let mut i = 0;
    while i < SLOT_MARKER.len() {
        slot[i] = SLOT_MARKER[i];
        i += 1;
    }
    let v = version.as_bytes();
    assert!(
        v.len() <= MAX_VERSION_LEN,
        "the version does not fit the slot"
    );
    let mut j = 0;
    while j < v.len() {
        slot[SLOT_MARKER.len() + j] = v[j];
        j += 1;
    }
    slot
}

#[used]
static VERSION_SLOT: [u8; SLOT_LEN] = build_slot(env!("CARGO_PKG_VERSION"));

/// The version stored in a slot: the bytes after the marker up to the first NUL, when they
/// are non-empty printable ASCII.
pub fn parse_slot(slot: &[u8]) -> Option<&str> {
    let rest = slot.strip_prefix(SLOT_MARKER.as_slice())?;
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let version = &rest[..end];
    if version.is_empty() || !version.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    std::str::from_utf8(version).ok()
}

/// This agent's version: the slot's content (the build's version unless the binary was
/// patched).
pub fn agent_version() -> &'static str {
    let slot: &'static [u8; SLOT_LEN] = std::hint::black_box(&VERSION_SLOT);
    parse_slot(slot).unwrap_or(env!("CARGO_PKG_VERSION"))
}

/// The slot a binary of `version` holds.
pub fn slot_for(version: &str) -> Result<[u8; SLOT_LEN], String> {
    if version.is_empty()
        || version.len() > MAX_VERSION_LEN
        || !version.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!("{version:?} cannot be stored in the version slot"));
    }
    let mut slot = [0u8; SLOT_LEN];
    slot[..SLOT_MARKER.len()].copy_from_slice(SLOT_MARKER);
    slot[SLOT_MARKER.len()..SLOT_MARKER.len() + version.len()].copy_from_slice(version.as_bytes());
    Ok(slot)
}

/// Rewrites the version slot of a binary's bytes from `from` to `to`. The whole slot of
/// `from` (marker, version, padding) must occur exactly once.
pub fn patch(binary: &mut [u8], from: &str, to: &str) -> Result<(), String> {
    let old = slot_for(from)?;
    let new = slot_for(to)?;
    let mut found = binary
        .windows(SLOT_LEN)
        .enumerate()
        .filter(|(_, w)| *w == old.as_slice())
        .map(|(i, _)| i);
    let Some(at) = found.next() else {
        return Err(format!("no version slot holding {from:?}"));
    };
    if found.next().is_some() {
        return Err(format!("more than one version slot holding {from:?}"));
    }
    binary[at..at + SLOT_LEN].copy_from_slice(&new);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_slot_holds_the_crate_version() {
        assert_eq!(agent_version(), env!("CARGO_PKG_VERSION"));
        assert_eq!(slot_for(env!("CARGO_PKG_VERSION")), Ok(VERSION_SLOT));
    }

    #[test]
    fn a_patched_slot_reads_back_and_bad_slots_are_refused() {
        let mut file = b"prefix".to_vec();
        file.extend_from_slice(&slot_for("1.0.0").expect("slot"));
        file.extend_from_slice(b"suffix GCVERSION1: not a slot");
        patch(&mut file, "1.0.0", "1.2.0-beta.3").expect("patch");
        assert_eq!(parse_slot(&file[6..6 + SLOT_LEN]), Some("1.2.0-beta.3"));
        assert!(patch(&mut file, "1.0.0", "2.0.0").is_err(), "no slot left");
        // Two slots: ambiguous.
        let mut twice = [slot_for("1.0.0").expect("slot"); 2].concat();
        assert!(patch(&mut twice, "1.0.0", "2.0.0").is_err());
        assert!(slot_for("").is_err());
        assert!(slot_for(&"9".repeat(MAX_VERSION_LEN + 1)).is_err());
        assert!(slot_for("1.0 0").is_err());
        assert_eq!(parse_slot(b"GCVERSION1:\0\0"), None);
        assert_eq!(parse_slot(b"GCVERSION2:1.0.0"), None);
    }
}
