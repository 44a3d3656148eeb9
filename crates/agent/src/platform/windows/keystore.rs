//! Secrets at rest on Windows: the per-agent key (`agent.key`) and the pending enrollment
//! key (`enroll.key`), DPAPI-protected with machine scope, in a directory only SYSTEM and
//! Administrators may open.
//!
//! # Format
//!
//! A protected file is [`MAGIC`] (`GCDPAPI1`, 8 bytes), the SHA-256 of the blob (32 bytes),
//! then the blob `CryptProtectData` returns for the secret's UTF-8 bytes, made with
//! `CRYPTPROTECT_LOCAL_MACHINE | CRYPTPROTECT_UI_FORBIDDEN` and the [`ENTROPY`] constant.
//! The checksum makes any changed byte an error before DPAPI is asked (Wine's DPAPI does not
//! authenticate every byte of its blob; Windows' does, and it also refuses a blob made on
//! another machine or with other entropy). Any
//! process on this machine that can *read* the file could unprotect it (machine scope is
//! what a LocalSystem service and an elevated installer both need), so the ACL is what
//! keeps other users out: each file is written with the protected DACL [`PRIVATE_SDDL`]
//! (SYSTEM and Administrators, full control, nothing inherited), and the data directory
//! `%ProgramData%\GuruConnect` gets the same DACL, inherited by what is created in it.
//!
//! A file without the magic header is the old plain-text format (`cak_…\n`, written by
//! agents before this module). [`crate::config::read_key`] accepts it once and rewrites it
//! protected (logged at info, without the key); a plain file that is not a plausible key is
//! refused as before. A protected file that DPAPI refuses (a changed byte, a blob made on
//! another machine) is refused with [`SecretError::Damaged`], which says to delete it and
//! enroll again.
//!
//! Secrets never go to the registry or a log; on Windows the enrollment key is not written
//! into `agent.toml` (`guruconnect-agent configure` writes `enroll.key` instead), and it is
//! deleted once the relay has accepted the per-agent key.
//!
//! # What Wine verifies, and what it does not
//!
//! `scripts/windows/test.sh` runs the tests below under Wine 8: the round trip, that the
//! file does not hold the key's bytes, that a changed byte is refused, the migration of a
//! plain file and the SDDL parsing and `SetNamedSecurityInfoW` calls succeeding. Wine's
//! DPAPI is its own implementation (it does not bind blobs to a real machine key the way
//! Windows does), and Wine does not enforce file ACLs, so that another user really cannot
//! open the files is UNVERIFIED (real Windows only).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use windows_sys::Win32::Foundation::{ERROR_SUCCESS, HLOCAL, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1, SE_FILE_OBJECT,
    SetNamedSecurityInfoW,
};
use windows_sys::Win32::Security::Cryptography::{
    CRYPT_INTEGER_BLOB, CRYPTPROTECT_LOCAL_MACHINE, CRYPTPROTECT_UI_FORBIDDEN, CryptProtectData,
    CryptUnprotectData,
};
use windows_sys::Win32::Security::{
    ACL, DACL_SECURITY_INFORMATION, GetSecurityDescriptorDacl, PROTECTED_DACL_SECURITY_INFORMATION,
    PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES,
};
use windows_sys::Win32::Storage::FileSystem::CreateDirectoryW;

use super::{last_error, wide};

/// The first bytes of a protected secret file.
pub const MAGIC: &[u8; 8] = b"GCDPAPI1";

/// Optional entropy mixed into every blob: a blob made by another program with machine
/// scope cannot be passed off as one of ours, nor ours unprotected without it.
pub const ENTROPY: &[u8] = b"GuruConnect agent secret store v1";

/// The DACL of the data directory and of each secret file: protected (nothing inherited
/// from `C:\ProgramData`), full control for SYSTEM and Administrators only, inherited by
/// files and subdirectories.
pub const PRIVATE_SDDL: &str = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)";

/// `%ProgramData%\GuruConnect`. The ProgramData folder is read from the registry
/// (`ProfileList\ProgramData`, the same for every account and session), then from the
/// environment, else `C:\ProgramData`: a service's environment may differ from the
/// installer's (under Wine it says `C:\users\Public`).
pub fn data_dir() -> PathBuf {
    static PROGRAM_DATA: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PROGRAM_DATA
        .get_or_init(|| {
            super::hklm_string(
                r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList",
                "ProgramData",
            )
            .filter(|p| !p.contains('%'))
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("ProgramData")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
        })
        .join("GuruConnect")
}

/// Why a secret file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file has the protected format but DPAPI refused it.
    #[error(
        "it cannot be decrypted ({reason}): it was changed, or protected on another \
         machine; delete it and enroll this machine again"
    )]
    Damaged {
        /// DPAPI's error.
        reason: String,
    },
    /// The protected content is not UTF-8 text.
    #[error("its decrypted content is not text")]
    NotText,
}

/// What a secret file held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// DPAPI-protected (the current format).
    Protected(String),
    /// Plain text (the old format); the caller decides whether to accept and rewrite it.
    Plain(String),
}

/// Frees a `LocalAlloc`ed pointer on drop.
struct LocalBox(*mut core::ffi::c_void);

impl Drop for LocalBox {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from an API that allocates with LocalAlloc and is
            // freed once, here.
            unsafe { LocalFree(self.0 as HLOCAL) };
        }
    }
}

fn blob(data: &[u8]) -> std::io::Result<CRYPT_INTEGER_BLOB> {
    Ok(CRYPT_INTEGER_BLOB {
        cbData: u32::try_from(data.len())
            .map_err(|_| std::io::Error::other("the secret is too large"))?,
        pbData: data.as_ptr().cast_mut(),
    })
}

/// Protects `plain` with machine-scope DPAPI: [`MAGIC`] followed by the blob.
pub fn protect(plain: &[u8]) -> std::io::Result<Vec<u8>> {
    let input = blob(plain)?;
    let entropy = blob(ENTROPY)?;
    let mut output = CRYPT_INTEGER_BLOB {
        cbData: 0,
        pbData: std::ptr::null_mut(),
    };
    // SAFETY: the input and entropy blobs point at live slices that DPAPI only reads;
    // `output` receives a LocalAlloc'ed buffer, freed by `LocalBox` below.
    let ok = unsafe {
        CryptProtectData(
            &input,
            wide("GuruConnect agent secret").as_ptr(),
            &entropy,
            std::ptr::null(),
            std::ptr::null(),
            CRYPTPROTECT_LOCAL_MACHINE | CRYPTPROTECT_UI_FORBIDDEN,
            &mut output,
        )
    };
    if ok == 0 {
        return Err(std::io::Error::other(format!(
            "CryptProtectData failed: {}",
            last_error()
        )));
    }
    let _free = LocalBox(output.pbData.cast());
    // SAFETY: on success DPAPI returned `cbData` readable bytes at `pbData`.
    let data = unsafe { std::slice::from_raw_parts(output.pbData, output.cbData as usize) };
    let mut file = Vec::with_capacity(MAGIC.len() + CHECKSUM_LEN + data.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&checksum(data));
    file.extend_from_slice(data);
    Ok(file)
}

/// Length of the blob's SHA-256 after [`MAGIC`].
const CHECKSUM_LEN: usize = 32;

fn checksum(data: &[u8]) -> [u8; CHECKSUM_LEN] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

/// Reverses [`protect`]: `file` must start with [`MAGIC`].
pub fn unprotect(file: &[u8]) -> Result<Vec<u8>, SecretError> {
    let Some(rest) = file.strip_prefix(MAGIC.as_slice()) else {
        return Err(SecretError::Damaged {
            reason: "no GuruConnect header".into(),
        });
    };
    if rest.len() <= CHECKSUM_LEN {
        return Err(SecretError::Damaged {
            reason: "the file is truncated".into(),
        });
    }
    let (sum, data) = rest.split_at(CHECKSUM_LEN);
    if sum != checksum(data).as_slice() {
        return Err(SecretError::Damaged {
            reason: "its checksum does not match".into(),
        });
    }
    let input = blob(data)?;
    let entropy = blob(ENTROPY)?;
    let mut output = CRYPT_INTEGER_BLOB {
        cbData: 0,
        pbData: std::ptr::null_mut(),
    };
    // SAFETY: as in `protect`; the description out pointer is not asked for.
    let ok = unsafe {
        CryptUnprotectData(
            &input,
            std::ptr::null_mut(),
            &entropy,
            std::ptr::null(),
            std::ptr::null(),
            CRYPTPROTECT_UI_FORBIDDEN,
            &mut output,
        )
    };
    if ok == 0 {
        return Err(SecretError::Damaged {
            reason: format!("CryptUnprotectData failed: {}", last_error()),
        });
    }
    let _free = LocalBox(output.pbData.cast());
    // SAFETY: on success DPAPI returned `cbData` readable bytes at `pbData`.
    let plain = unsafe { std::slice::from_raw_parts(output.pbData, output.cbData as usize) };
    Ok(plain.to_vec())
}

/// A security descriptor parsed from SDDL (LocalAlloc'ed, freed on drop).
pub(crate) struct Descriptor(LocalBox);

impl Descriptor {
    pub(crate) fn from_sddl(sddl: &str) -> std::io::Result<Self> {
        let text = wide(sddl);
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: NUL-terminated SDDL; `sd` receives a LocalAlloc'ed descriptor.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                text.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(std::io::Error::other(format!(
                "cannot parse the security descriptor {sddl}: {}",
                last_error()
            )));
        }
        Ok(Self(LocalBox(sd)))
    }

    fn dacl(&self) -> std::io::Result<*mut ACL> {
        let mut present = 0;
        let mut defaulted = 0;
        let mut dacl: *mut ACL = std::ptr::null_mut();
        // SAFETY: `self.0` is a valid descriptor; the DACL pointer points into it and
        // lives as long as `self`.
        let ok =
            unsafe { GetSecurityDescriptorDacl(self.0.0, &mut present, &mut dacl, &mut defaulted) };
        if ok == 0 || present == 0 || dacl.is_null() {
            return Err(std::io::Error::other("the security descriptor has no DACL"));
        }
        Ok(dacl)
    }

    pub(crate) fn attributes(&self) -> SECURITY_ATTRIBUTES {
        SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: self.0.0,
            bInheritHandle: 0,
        }
    }
}

/// Sets the protected DACL [`PRIVATE_SDDL`] on a file or directory (replacing what it
/// inherited).
pub fn restrict(path: &Path) -> std::io::Result<()> {
    let descriptor = Descriptor::from_sddl(PRIVATE_SDDL)?;
    let dacl = descriptor.dacl()?;
    let name = wide(&path.to_string_lossy());
    // SAFETY: NUL-terminated path; the DACL lives in `descriptor` for the call.
    let status = unsafe {
        SetNamedSecurityInfoW(
            name.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            dacl,
            std::ptr::null(),
        )
    };
    if status != ERROR_SUCCESS {
        return Err(std::io::Error::other(format!(
            "cannot restrict the permissions of {} to SYSTEM and Administrators: {}",
            path.display(),
            std::io::Error::from_raw_os_error(status as i32)
        )));
    }
    Ok(())
}

/// Creates `dir` (and its parents) when missing, the last level with the private DACL;
/// an existing directory is restricted too.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return restrict(dir);
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let descriptor = Descriptor::from_sddl(PRIVATE_SDDL)?;
    let attributes = descriptor.attributes();
    let name = wide(&dir.to_string_lossy());
    // SAFETY: NUL-terminated path; the attributes point at the live descriptor.
    let ok = unsafe { CreateDirectoryW(name.as_ptr(), &attributes) };
    if ok == 0 && !dir.is_dir() {
        return Err(std::io::Error::other(format!(
            "cannot create {}: {}",
            dir.display(),
            last_error()
        )));
    }
    Ok(())
}

/// Writes `secret` DPAPI-protected to `path`, atomically (a temporary file beside it, then
/// a rename), with the private DACL. A missing directory is created private; an existing
/// one is left as it is (the file's own DACL protects it).
pub fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    let protected = protect(secret.as_bytes())?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        ensure_private_dir(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    restrict(&tmp)?;
    file.write_all(&protected)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Reads a secret file: [`Secret::Protected`] when it has the header, [`Secret::Plain`]
/// (trimmed) when it does not.
pub fn read_secret(path: &Path) -> Result<Secret, SecretError> {
    let bytes = std::fs::read(path)?;
    if bytes.starts_with(MAGIC) {
        let plain = unprotect(&bytes)?;
        let text = String::from_utf8(plain).map_err(|_| SecretError::NotText)?;
        return Ok(Secret::Protected(text));
    }
    let text = String::from_utf8(bytes).map_err(|_| SecretError::NotText)?;
    Ok(Secret::Plain(text.trim().to_owned()))
}

/// True when `path` starts with the protected header.
pub fn is_protected(path: &Path) -> std::io::Result<bool> {
    use std::io::Read as _;
    let mut head = [0u8; MAGIC.len()];
    let mut file = std::fs::File::open(path)?;
    let mut filled = 0;
    while filled < head.len() {
        let n = file.read(&mut head[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled == head.len() && &head == MAGIC)
}

/// Removes a secret file; a missing one is fine.
pub fn remove_secret(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "cak_0123456789abcdef0123456789abcdef";

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn a_stored_secret_round_trips_and_is_not_in_plain_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("GuruConnect").join("agent.key");
        write_secret(&path, KEY).expect("store");
        let bytes = std::fs::read(&path).expect("read");
        assert!(bytes.starts_with(MAGIC));
        assert!(
            !contains(&bytes, KEY.as_bytes()),
            "the key is in plain text"
        );
        assert!(!contains(&bytes, b"0123456789abcdef"));
        assert!(is_protected(&path).expect("head"));
        assert_eq!(
            read_secret(&path).expect("read"),
            Secret::Protected(KEY.into())
        );
        // Replacing works, and leaves no temporary file behind.
        write_secret(&path, "cak_second").expect("replace");
        assert_eq!(
            read_secret(&path).expect("read"),
            Secret::Protected("cak_second".into())
        );
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["agent.key"]);
    }

    #[test]
    fn a_changed_byte_is_refused_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.key");
        write_secret(&path, KEY).expect("store");
        let good = std::fs::read(&path).expect("read");
        // A byte of the checksum, of the blob's middle, and the last one.
        for at in [
            MAGIC.len() + 3,
            MAGIC.len() + CHECKSUM_LEN + (good.len() - MAGIC.len() - CHECKSUM_LEN) / 2,
            good.len() - 1,
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0x5a;
            std::fs::write(&path, &bad).expect("write");
            let err = read_secret(&path).expect_err("a changed file must be refused");
            assert!(
                matches!(err, SecretError::Damaged { .. }),
                "byte {at}: {err}"
            );
            let text = err.to_string();
            assert!(text.contains("cannot be decrypted"), "{text}");
            assert!(text.contains("enroll this machine again"), "{text}");
        }
        // A truncated file too.
        std::fs::write(&path, &good[..MAGIC.len() + 4]).expect("write");
        assert!(matches!(
            read_secret(&path),
            Err(SecretError::Damaged { .. })
        ));
    }

    #[test]
    fn other_entropy_or_no_header_does_not_unprotect() {
        let protected = protect(KEY.as_bytes()).expect("protect");
        assert_eq!(unprotect(&protected).expect("unprotect"), KEY.as_bytes());
        assert!(unprotect(&protected[MAGIC.len()..]).is_err());
    }

    #[test]
    fn a_plain_file_is_reported_as_plain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.key");
        std::fs::write(&path, format!("{KEY}\r\n")).expect("write");
        assert!(!is_protected(&path).expect("head"));
        assert_eq!(read_secret(&path).expect("read"), Secret::Plain(KEY.into()));
    }

    #[test]
    fn the_private_dacl_parses_and_applies() {
        let descriptor = Descriptor::from_sddl(PRIVATE_SDDL).expect("sddl");
        descriptor.dacl().expect("dacl");
        let dir = tempfile::tempdir().expect("tempdir");
        let private = dir.path().join("a").join("GuruConnect");
        ensure_private_dir(&private).expect("create");
        assert!(private.is_dir());
        ensure_private_dir(&private).expect("again");
        assert!(Descriptor::from_sddl("D:(nonsense").is_err());
    }

    #[test]
    fn missing_files_are_io_errors_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("enroll.key");
        assert!(matches!(read_secret(&path), Err(SecretError::Io(_))));
        remove_secret(&path).expect("missing is fine");
        write_secret(&path, "gce_x").expect("store");
        remove_secret(&path).expect("remove");
        assert!(!path.exists());
    }

    #[test]
    fn the_data_dir_is_under_program_data() {
        assert!(
            data_dir().ends_with("GuruConnect"),
            "{}",
            data_dir().display()
        );
    }
}
