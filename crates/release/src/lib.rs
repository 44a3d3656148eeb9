//! GuruConnect releases: what a release is, how it is signed, and which version is newer.
//!
//! A release is a **manifest** (JSON: version, channel, notes, and per platform the
//! artifact's file name, size, SHA-256 and the oldest version that may update to it),
//! signed with Ed25519 by a key that never touches the server (SPEC §4.15). The signature
//! covers the manifest's exact bytes, which travel as text next to it ([`SignedRelease`]),
//! so nothing is re-serialized between signing and verifying. The server checks the
//! signature when a release is published; every agent checks it again, with the public key
//! it was installed with, before it downloads anything, and checks size and SHA-256 of the
//! download before it replaces itself.
//!
//! Keys are text: the private key is `gcrelsec1:` + base64 of the 32-byte seed (keep it
//! offline, owner-only), the public key `gcrelpub1:` + base64 of the 32-byte key.
//!
//! Versions are semantic versions; a beta is `X.Y.Z-beta.N` on the `beta` channel and a
//! prerelease never counts as newer than its final release ([`is_newer`]).

pub mod changelog;

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use semver::Version;

/// The commit this build was made from (12 hex digits, or `unknown`): the build-time
/// `GURUCONNECT_COMMIT` environment variable, else `git rev-parse` (see `build.rs`).
pub const COMMIT: &str = env!("GURUCONNECT_COMMIT");
/// The channel this build was made for: build-time `GURUCONNECT_CHANNEL`, default `dev`.
pub const BUILD_CHANNEL: &str = env!("GURUCONNECT_CHANNEL");
/// What `--version` prints after the program's name, on every binary:
/// `0.1.0 (commit abc123def456, channel dev)`.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("GURUCONNECT_COMMIT"),
    ", channel ",
    env!("GURUCONNECT_CHANNEL"),
    ")"
);

/// Prefix of a public key's text form.
pub const PUBLIC_KEY_PREFIX: &str = "gcrelpub1:";
/// Prefix of a private key's text form.
pub const PRIVATE_KEY_PREFIX: &str = "gcrelsec1:";
/// Longest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// What went wrong with a release, a key or a version, for the person publishing.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    /// A key's text form is wrong.
    #[error("not a GuruConnect release {0} key ({1}…)")]
    BadKey(&'static str, &'static str),
    /// The signature does not verify against the key.
    #[error("the manifest's signature does not verify against the release public key")]
    BadSignature,
    /// The manifest does not parse or breaks a rule.
    #[error("invalid manifest: {0}")]
    Invalid(String),
}

/// A release channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Final releases, `X.Y.Z`.
    Stable,
    /// Prereleases, `X.Y.Z-beta.N`.
    Beta,
}

impl Channel {
    /// `stable` or `beta`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Stable => "stable",
            Channel::Beta => "beta",
        }
    }

    /// Whether an agent on `self` takes a release of `release`: beta agents take both.
    pub fn accepts(self, release: Channel) -> bool {
        self == Channel::Beta || release == Channel::Stable
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = ReleaseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stable" => Ok(Channel::Stable),
            "beta" => Ok(Channel::Beta),
            other => Err(ReleaseError::Invalid(format!(
                "channel must be stable or beta, not {other:?}"
            ))),
        }
    }
}

/// One platform's file of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// `linux-x86_64`, `windows-x86_64`, … ([`current_platform`]).
    pub platform: String,
    /// File name, e.g. `guruconnect-agent` or `guruconnect-agent.exe`.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
    /// Agents older than this must not update to it directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    /// Where the server serves it: [`artifact_path`] of the release's version and this
    /// platform (the only value accepted; optional so hand-written manifests may omit it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The URL path under which a server serves a release's artifact for `platform`.
pub fn artifact_path(version: &str, platform: &str) -> String {
    format!("/api/releases/{version}/artifacts/{platform}")
}

/// What a release says about itself; the signed part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Semantic version.
    pub version: String,
    /// Channel.
    pub channel: Channel,
    /// Release notes (the changelog entry for stable releases).
    #[serde(default)]
    pub notes: String,
    /// The files, one per platform.
    pub artifacts: Vec<Artifact>,
}

impl Manifest {
    /// Parses and checks the rules: a semantic version that matches the channel (a beta is
    /// a prerelease, a stable release is not), at least one artifact, one per platform,
    /// plain file names, SHA-256 as 64 hex digits, valid minimum versions.
    pub fn parse(text: &str) -> Result<Manifest, ReleaseError> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(ReleaseError::Invalid(format!(
                "larger than {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        let m: Manifest =
            serde_json::from_str(text).map_err(|e| ReleaseError::Invalid(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    /// The version, parsed.
    pub fn semver(&self) -> Version {
        // `check` accepted it.
        Version::parse(&self.version).unwrap_or_else(|_| Version::new(0, 0, 0))
    }

    /// The artifact for `platform`.
    pub fn artifact(&self, platform: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.platform == platform)
    }

    fn check(&self) -> Result<(), ReleaseError> {
        let invalid = |s: String| Err(ReleaseError::Invalid(s));
        let version = match Version::parse(&self.version) {
            Ok(v) => v,
            Err(e) => return invalid(format!("version {:?}: {e}", self.version)),
        };
        match (self.channel, version.pre.is_empty()) {
            (Channel::Stable, false) => {
                return invalid(format!(
                    "{} is a prerelease: publish it on the beta channel",
                    self.version
                ));
            }
            (Channel::Beta, true) => {
                return invalid(format!(
                    "{} is a final version: a beta is X.Y.Z-beta.N",
                    self.version
                ));
            }
            _ => {}
        }
        if self.artifacts.is_empty() {
            return invalid("no artifacts".into());
        }
        for (i, a) in self.artifacts.iter().enumerate() {
            if self.artifacts[..i].iter().any(|b| b.platform == a.platform) {
                return invalid(format!("two artifacts for {}", a.platform));
            }
            if a.platform.is_empty()
                || !a
                    .platform
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return invalid(format!("platform {:?}", a.platform));
            }
            if a.file.is_empty()
                || a.file.len() > 128
                || a.file.starts_with('.')
                || !a
                    .file
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return invalid(format!("file name {:?}", a.file));
            }
            if a.sha256.len() != 64 || !a.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return invalid(format!("sha256 of {} is not 64 hex digits", a.platform));
            }
            if a.size == 0 {
                return invalid(format!("size of {} is 0", a.platform));
            }
            if let Some(min) = &a.min_version
                && Version::parse(min).is_err()
            {
                return invalid(format!("min_version {min:?}"));
            }
            if let Some(path) = &a.path
                && *path != artifact_path(&self.version, &a.platform)
            {
                return invalid(format!(
                    "path of {} must be {}",
                    a.platform,
                    artifact_path(&self.version, &a.platform)
                ));
            }
        }
        Ok(())
    }
}

/// A manifest as signed: its exact text and the Ed25519 signature over those bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRelease {
    /// The manifest's JSON text, byte for byte as signed.
    pub manifest: String,
    /// Base64 of the 64-byte signature.
    pub signature: String,
}

impl SignedRelease {
    /// Signs `manifest_text` (checked with [`Manifest::parse`] first).
    pub fn sign(manifest_text: &str, key: &SigningKey) -> Result<SignedRelease, ReleaseError> {
        Manifest::parse(manifest_text)?;
        let signature = key.sign(manifest_text.as_bytes());
        Ok(SignedRelease {
            manifest: manifest_text.to_owned(),
            signature: B64.encode(signature.to_bytes()),
        })
    }

    /// Verifies the signature with `key`, then parses the manifest. Nothing in an
    /// unverified manifest is looked at.
    pub fn verify(&self, key: &VerifyingKey) -> Result<Manifest, ReleaseError> {
        let bytes = B64
            .decode(self.signature.trim())
            .map_err(|_| ReleaseError::BadSignature)?;
        let bytes: [u8; 64] = bytes.try_into().map_err(|_| ReleaseError::BadSignature)?;
        key.verify_strict(self.manifest.as_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| ReleaseError::BadSignature)?;
        Manifest::parse(&self.manifest)
    }
}

/// A new key pair from the operating system's random source.
pub fn generate_key() -> SigningKey {
    let seed: [u8; 32] = rand::random();
    SigningKey::from_bytes(&seed)
}

/// The private key's text form.
pub fn private_key_text(key: &SigningKey) -> String {
    format!("{PRIVATE_KEY_PREFIX}{}", B64.encode(key.to_bytes()))
}

/// The public key's text form.
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("{PUBLIC_KEY_PREFIX}{}", B64.encode(key.to_bytes()))
}

/// Parses a private key's text form.
pub fn parse_private_key(text: &str) -> Result<SigningKey, ReleaseError> {
    let bad = ReleaseError::BadKey("private", PRIVATE_KEY_PREFIX);
    let b64 = text
        .trim()
        .strip_prefix(PRIVATE_KEY_PREFIX)
        .ok_or(bad.clone())?;
    let bytes: [u8; 32] = B64
        .decode(b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(bad)?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Parses a public key's text form.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, ReleaseError> {
    let bad = ReleaseError::BadKey("public", PUBLIC_KEY_PREFIX);
    let b64 = text
        .trim()
        .strip_prefix(PUBLIC_KEY_PREFIX)
        .ok_or(bad.clone())?;
    let bytes: [u8; 32] = B64
        .decode(b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(bad.clone())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad)
}

/// A short fingerprint of a public key (first 8 bytes of its SHA-256, hex), for logs and
/// the console.
pub fn key_fingerprint(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.to_bytes())[..8])
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `candidate` is newer than `current` by semantic-version precedence: a
/// prerelease is older than its final release (`1.2.0-beta.3 < 1.2.0`). Unparsable
/// versions are never newer, and nothing is newer than an unparsable current version
/// except a valid one.
pub fn is_newer(candidate: &str, current: &str) -> bool {
    match (Version::parse(candidate), Version::parse(current)) {
        (Ok(c), Ok(cur)) => c > cur,
        (Ok(_), Err(_)) => true,
        _ => false,
    }
}

/// This build's platform name as artifacts use it (`linux-x86_64`, `windows-x86_64`).
pub fn current_platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(version: &str, channel: &str) -> String {
        format!(
            r#"{{"version":"{version}","channel":"{channel}","notes":"n","artifacts":[{{"platform":"linux-x86_64","file":"guruconnect-agent","size":3,"sha256":"{}"}}]}}"#,
            sha256_hex(b"abc")
        )
    }

    #[test]
    fn a_signed_manifest_verifies_and_any_change_breaks_it() {
        let key = generate_key();
        let text = manifest("1.2.0", "stable");
        let signed = SignedRelease::sign(&text, &key).expect("sign");
        let m = signed.verify(&key.verifying_key()).expect("verify");
        assert_eq!(m.version, "1.2.0");
        assert_eq!(m.artifact("linux-x86_64").expect("artifact").size, 3);

        // One byte of the manifest, the signature, or another key: refused.
        let mut changed = signed.clone();
        changed.manifest = changed.manifest.replace("1.2.0", "1.3.0");
        assert_eq!(
            changed.verify(&key.verifying_key()),
            Err(ReleaseError::BadSignature)
        );
        let mut changed = signed.clone();
        let mut sig = B64.decode(&changed.signature).expect("b64");
        sig[0] ^= 1;
        changed.signature = B64.encode(sig);
        assert_eq!(
            changed.verify(&key.verifying_key()),
            Err(ReleaseError::BadSignature)
        );
        assert_eq!(
            signed.verify(&generate_key().verifying_key()),
            Err(ReleaseError::BadSignature)
        );
        let mut changed = signed;
        changed.signature = "not base64!".into();
        assert_eq!(
            changed.verify(&key.verifying_key()),
            Err(ReleaseError::BadSignature)
        );
    }

    #[test]
    fn keys_round_trip_through_their_text_forms() {
        let key = generate_key();
        let private = private_key_text(&key);
        let public = public_key_text(&key.verifying_key());
        assert!(private.starts_with(PRIVATE_KEY_PREFIX));
        assert_eq!(
            parse_private_key(&private).expect("private").to_bytes(),
            key.to_bytes()
        );
        assert_eq!(
            parse_public_key(&format!("{public}\n")).expect("public"),
            key.verifying_key()
        );
        assert!(parse_public_key(&private).is_err());
        assert!(parse_private_key(&public).is_err());
        assert!(parse_public_key("gcrelpub1:AAAA").is_err());
        assert_eq!(key_fingerprint(&key.verifying_key()).len(), 16);
    }

    #[test]
    fn manifests_that_break_a_rule_are_refused() {
        let key = generate_key();
        let sha = sha256_hex(b"abc");
        for (text, why) in [
            (manifest("1.2.0-beta.1", "stable"), "prerelease on stable"),
            (manifest("1.2.0", "beta"), "final on beta"),
            (manifest("1.2", "stable"), "not semver"),
            (manifest("1.2.0", "nightly"), "unknown channel"),
            (
                r#"{"version":"1.2.0","channel":"stable","artifacts":[]}"#.to_owned(),
                "no artifacts",
            ),
            (
                format!(
                    r#"{{"version":"1.2.0","channel":"stable","artifacts":[{{"platform":"linux-x86_64","file":"../x","size":3,"sha256":"{sha}"}}]}}"#
                ),
                "path in file name",
            ),
            (
                r#"{"version":"1.2.0","channel":"stable","artifacts":[{"platform":"linux-x86_64","file":"a","size":3,"sha256":"xyz"}]}"#.to_owned(),
                "bad sha",
            ),
            (
                format!(
                    r#"{{"version":"1.2.0","channel":"stable","artifacts":[{{"platform":"p","file":"a","size":3,"sha256":"{sha}"}},{{"platform":"p","file":"b","size":3,"sha256":"{sha}"}}]}}"#
                ),
                "two for one platform",
            ),
            (
                format!(
                    r#"{{"version":"1.2.0","channel":"stable","extra":1,"artifacts":[{{"platform":"p","file":"a","size":3,"sha256":"{sha}"}}]}}"#
                ),
                "unknown field",
            ),
        ] {
            assert!(
                matches!(SignedRelease::sign(&text, &key), Err(ReleaseError::Invalid(_))),
                "{why}"
            );
        }
        assert!(SignedRelease::sign(&manifest("1.3.0-beta.2", "beta"), &key).is_ok());
        let with_path = |path: &str| {
            format!(
                r#"{{"version":"1.2.0","channel":"stable","artifacts":[{{"platform":"linux-x86_64","file":"a","size":3,"sha256":"{sha}","path":"{path}"}}]}}"#
            )
        };
        assert!(
            SignedRelease::sign(
                &with_path("/api/releases/1.2.0/artifacts/linux-x86_64"),
                &key
            )
            .is_ok()
        );
        assert!(matches!(
            SignedRelease::sign(&with_path("https://elsewhere.example/agent"), &key),
            Err(ReleaseError::Invalid(_))
        ));
    }

    #[test]
    fn prereleases_are_older_than_their_final_release() {
        assert!(is_newer("1.2.0", "1.2.0-beta.3"));
        assert!(!is_newer("1.2.0-beta.3", "1.2.0"));
        assert!(is_newer("1.2.0-beta.10", "1.2.0-beta.9"));
        assert!(is_newer("1.10.0", "1.9.9"));
        assert!(!is_newer("1.2.0", "1.2.0"));
        assert!(!is_newer("garbage", "1.0.0"));
        assert!(is_newer("0.1.0", "dev"));
    }

    #[test]
    fn channels_accept_their_releases() {
        assert!(Channel::Stable.accepts(Channel::Stable));
        assert!(!Channel::Stable.accepts(Channel::Beta));
        assert!(Channel::Beta.accepts(Channel::Stable));
        assert!(Channel::Beta.accepts(Channel::Beta));
        assert_eq!("beta".parse::<Channel>(), Ok(Channel::Beta));
        assert!("nightly".parse::<Channel>().is_err());
    }
}
