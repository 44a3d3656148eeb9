//! The stable machine identifier.
//!
//! `machine_uid = hex(SHA-256("guruconnect-machine-uid-v1" ‖ 0 ‖ machine-id ‖ 0 ‖
//! product_uuid ‖ 0 ‖ board_serial ‖ 0 ‖ product_serial))`, where
//!
//! - `machine-id` is `/etc/machine-id` (or `/var/lib/dbus/machine-id`), trimmed: it
//!   survives reinstalling the agent but is regenerated when the OS is reinstalled or a
//!   cloned image is re-personalised;
//! - the three DMI identifiers from `/sys/class/dmi/id/` salt it with the hardware, so two
//!   machines cloned from one image (same `machine-id`) still get different ids. They are
//!   often readable by root only; a value that cannot be read counts as empty, so the id is
//!   stable for a given account, and the service (root) always sees the same set.
//!
//! A machine with neither `machine-id` file falls back to the host name (logged), which is
//! weaker but still stable.

use std::path::Path;

pub use crate::platform::uid::derive;

const DMI_FILES: &[&str] = &[
    "sys/class/dmi/id/product_uuid",
    "sys/class/dmi/id/board_serial",
    "sys/class/dmi/id/product_serial",
];

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The machine uid from the files under `root` (`/` on a real system).
pub fn machine_uid_at(root: &Path) -> String {
    let machine_id = ["etc/machine-id", "var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| read_trimmed(&root.join(p)))
        .unwrap_or_else(|| {
            tracing::warn!("no /etc/machine-id; deriving the machine uid from the host name");
            format!(
                "hostname:{}",
                sysinfo::System::host_name().unwrap_or_default()
            )
        });
    let dmi: Vec<String> = DMI_FILES
        .iter()
        .map(|p| read_trimmed(&root.join(p)).unwrap_or_default())
        .collect();
    derive(&machine_id, &dmi)
}

/// This machine's uid.
pub fn machine_uid() -> String {
    machine_uid_at(Path::new("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(machine_id: &str, uuid: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("etc");
        std::fs::write(dir.path().join("etc/machine-id"), format!("{machine_id}\n"))
            .expect("write");
        if let Some(uuid) = uuid {
            std::fs::create_dir_all(dir.path().join("sys/class/dmi/id")).expect("dmi");
            std::fs::write(dir.path().join("sys/class/dmi/id/product_uuid"), uuid).expect("write");
        }
        dir
    }

    #[test]
    fn stable_for_the_same_machine() {
        let a = fake_root("0123456789abcdef0123456789abcdef", Some("UUID-1"));
        let first = machine_uid_at(a.path());
        assert_eq!(first, machine_uid_at(a.path()));
        assert_eq!(first.len(), 64);
        // The real machine too.
        assert_eq!(machine_uid(), machine_uid());
    }

    #[test]
    fn distinct_machines_differ() {
        let a = fake_root("0123456789abcdef0123456789abcdef", Some("UUID-1"));
        let clone = fake_root("0123456789abcdef0123456789abcdef", Some("UUID-2"));
        let other = fake_root("ffffffffffffffffffffffffffffffff", Some("UUID-1"));
        let ua = machine_uid_at(a.path());
        assert_ne!(ua, machine_uid_at(clone.path()));
        assert_ne!(ua, machine_uid_at(other.path()));
        // Field boundaries matter: moving bytes between fields changes the id.
        assert_ne!(derive("ab", &["c".into()]), derive("a", &["bc".into()]));
    }

    #[test]
    fn the_raw_machine_id_is_not_exposed() {
        let a = fake_root("0123456789abcdef0123456789abcdef", None);
        assert!(!machine_uid_at(a.path()).contains("0123456789abcdef"));
    }
}
