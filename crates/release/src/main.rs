//! `guruconnect-release`: the offline release tool. It makes the release key pair, signs a
//! release (a manifest of the artifacts' sizes and SHA-256) with the private key, verifies a
//! signed release and its artifacts, and derives the next version and the changelog from
//! the conventional commits of the repository it runs in.
//!
//! Exit status: 0 done, 1 an error (one line on stderr), 2 a usage error, 3 `next-version`
//! found nothing to release.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use guruconnect_release::changelog::{Entry, History, UNRELEASED};
use guruconnect_release::{
    Artifact, Channel, Manifest, SignedRelease, Version, key_fingerprint, parse_private_key,
    parse_public_key, private_key_text, public_key_text,
};
use sha2::{Digest as _, Sha256};

/// Largest release file `verify` reads.
const MAX_RELEASE_FILE: u64 = 1024 * 1024;
/// Largest notes file `sign` reads.
const MAX_NOTES_FILE: u64 = 32 * 1024;

/// GuruConnect release tool: key pair, signing and verifying releases, next version and
/// changelog from conventional commits. Keep the private key offline.
#[derive(Debug, Parser)]
#[command(name = "guruconnect-release", version = guruconnect_release::VERSION_LINE, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Makes a key pair: DIR/release.key (private, mode 0600) and DIR/release.pub.
    Keygen {
        /// Folder for the two files (made when missing); existing keys are never replaced.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Signs a release: the manifest of the artifacts (size, SHA-256) with the private key.
    Sign {
        /// The private key file (from `keygen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The release's version: X.Y.Z on stable, X.Y.Z-beta.N on beta.
        #[arg(long, value_name = "V")]
        version: String,
        /// The channel.
        #[arg(long, value_parser = parse_channel, value_name = "stable|beta")]
        channel: Channel,
        /// An artifact, PLATFORM=PATH (e.g. linux-x86_64=target/release/guruconnect-agent);
        /// repeat for each platform.
        #[arg(long = "artifact", value_parser = parse_artifact, value_name = "PLATFORM=PATH", required = true)]
        artifacts: Vec<(String, PathBuf)>,
        /// Agents older than this must not update to this release directly.
        #[arg(long, value_name = "V")]
        min_version: Option<String>,
        /// Release notes from this file.
        #[arg(long, value_name = "F", conflicts_with = "notes_from_git")]
        notes_file: Option<PathBuf>,
        /// Release notes from the changelog entry for --version (git history of the current
        /// directory).
        #[arg(long)]
        notes_from_git: bool,
        /// Where to write the signed release (JSON).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Verifies a signed release against the public key, and each given artifact's size and
    /// SHA-256 against the manifest.
    Verify {
        /// The public key file (from `keygen`).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// The signed release (from `sign`).
        release: PathBuf,
        /// An artifact to check, PLATFORM=PATH; repeatable.
        #[arg(long = "artifact", value_parser = parse_artifact, value_name = "PLATFORM=PATH")]
        artifacts: Vec<(String, PathBuf)>,
    },
    /// Prints the next version from the conventional commits since the last stable tag
    /// (exit status 3 when there is nothing to release).
    NextVersion {
        /// The next beta, X.Y.Z-beta.N, instead.
        #[arg(long)]
        beta: bool,
    },
    /// Prints the changelog from the conventional commits, an entry per stable tag.
    Changelog {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Markdown)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Markdown,
    Json,
}

/// What ends a command early: a one-line message and an exit status.
struct Failure(String, u8);

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure(message, 1)
    }
}

type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // clap's message, up to its usage part, on one line.
            let text = e.to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("guruconnect-release: {message} (see --help)");
            return ExitCode::from(2);
        }
    };
    let outcome = match cli.command {
        Cmd::Keygen { out } => keygen(&out),
        Cmd::Sign {
            key,
            version,
            channel,
            artifacts,
            min_version,
            notes_file,
            notes_from_git,
            out,
        } => sign(SignArgs {
            key,
            version,
            channel,
            artifacts,
            min_version,
            notes_file,
            notes_from_git,
            out,
        }),
        Cmd::Verify {
            public_key,
            release,
            artifacts,
        } => verify(&public_key, &release, &artifacts),
        Cmd::NextVersion { beta } => next_version(beta),
        Cmd::Changelog { format } => changelog(format),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message, code)) => {
            eprintln!("guruconnect-release: {message}");
            ExitCode::from(code)
        }
    }
}

fn parse_channel(s: &str) -> Result<Channel, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not stable or beta"))
}

fn parse_artifact(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((platform, path)) if !platform.is_empty() && !path.is_empty() => {
            Ok((platform.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!("{s:?} is not PLATFORM=PATH")),
    }
}

fn keygen(dir: &Path) -> Outcome {
    let private = dir.join("release.key");
    let public = dir.join("release.pub");
    for path in [&private, &public] {
        if path.exists() {
            return Err(format!(
                "{} already exists: not replacing a release key (move it away first)",
                path.display()
            )
            .into());
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let key = guruconnect_release::generate_key();
    let public_text = public_key_text(&key.verifying_key());
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&private).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} already exists: not replacing a release key",
                private.display()
            )
        } else {
            format!("cannot create {}: {e}", private.display())
        }
    })?;
    file.write_all(format!("{}\n", private_key_text(&key)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", private.display()))?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&public)
        .and_then(|mut f| f.write_all(format!("{public_text}\n").as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", public.display()))?;
    println!("public key:  {public_text}");
    println!("fingerprint: {}", key_fingerprint(&key.verifying_key()));
    println!(
        "wrote {} (private: keep it offline, owner-only) and {}",
        private.display(),
        public.display()
    );
    Ok(())
}

struct SignArgs {
    key: PathBuf,
    version: String,
    channel: Channel,
    artifacts: Vec<(String, PathBuf)>,
    min_version: Option<String>,
    notes_file: Option<PathBuf>,
    notes_from_git: bool,
    out: PathBuf,
}

fn sign(args: SignArgs) -> Outcome {
    let key_text = read_text(&args.key, "private key", 4096)?;
    let key = parse_private_key(&key_text).map_err(|e| format!("{}: {e}", args.key.display()))?;
    warn_if_shared(&args.key);
    let version = Version::parse(&args.version)
        .map_err(|e| format!("version {:?} is not a semantic version: {e}", args.version))?;
    if let Some(min) = &args.min_version {
        Version::parse(min)
            .map_err(|e| format!("--min-version {min:?} is not a semantic version: {e}"))?;
    }
    let notes = if let Some(file) = &args.notes_file {
        read_text(file, "notes file", MAX_NOTES_FILE)?
            .trim_end()
            .to_owned()
    } else if args.notes_from_git {
        notes_from_git(&version)?
    } else {
        String::new()
    };
    let mut artifacts = Vec::new();
    for (platform, path) in &args.artifacts {
        let (size, sha256) = measure(path)?;
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{} has no usable file name", path.display()))?
            .to_owned();
        artifacts.push(Artifact {
            platform: platform.clone(),
            file,
            size,
            sha256,
            min_version: args.min_version.clone(),
            path: Some(guruconnect_release::artifact_path(
                &version.to_string(),
                platform,
            )),
        });
    }
    let manifest = Manifest {
        version: version.to_string(),
        channel: args.channel,
        notes,
        artifacts,
    };
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| format!("cannot write the manifest: {e}"))?;
    let signed = SignedRelease::sign(&text, &key).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&signed)
        .map_err(|e| format!("cannot write the signed release: {e}"))?;
    std::fs::write(&args.out, format!("{json}\n"))
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    println!(
        "signed {} ({}) with key {}: {} artifact(s) → {}",
        manifest.version,
        manifest.channel,
        key_fingerprint(&key.verifying_key()),
        manifest.artifacts.len(),
        args.out.display()
    );
    Ok(())
}

/// The release notes for `version` from the changelog: the entry of its tag, or the
/// unreleased changes when `version` (a beta: its final version) is the next one.
fn notes_from_git(version: &Version) -> Result<String, String> {
    let history = History::from_git(Path::new("."))?;
    let log = history.changelog();
    let final_version = Version::new(version.major, version.minor, version.patch);
    let entry: Option<&Entry> = if version.pre.is_empty() {
        log.entry(&version.to_string())
    } else {
        None
    }
    .or_else(|| {
        let next = history.next_stable(&workspace_version()).next?;
        (next == final_version)
            .then(|| log.entry(UNRELEASED))
            .flatten()
    });
    let entry = entry.ok_or_else(|| {
        format!(
            "no changelog entry for {version} in the git history (neither a tag v{final_version} nor the next version's commits); use --notes-file"
        )
    })?;
    Ok(entry.sections_markdown().trim().to_owned())
}

fn verify(public_key: &Path, release: &Path, artifacts: &[(String, PathBuf)]) -> Outcome {
    let key_text = read_text(public_key, "public key", 4096)?;
    let key = parse_public_key(&key_text).map_err(|e| format!("{}: {e}", public_key.display()))?;
    let text = read_text(release, "release", MAX_RELEASE_FILE)?;
    let signed: SignedRelease = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a signed release: {e}", release.display()))?;
    let manifest = signed
        .verify(&key)
        .map_err(|e| format!("{}: {e}", release.display()))?;
    for (platform, path) in artifacts {
        let Some(expected) = manifest.artifact(platform) else {
            return Err(format!(
                "artifact {platform}: the release has no artifact for this platform"
            )
            .into());
        };
        let (size, sha256) = measure(path)?;
        if size != expected.size {
            return Err(format!(
                "artifact {platform} ({}): {size} bytes, the manifest says {}",
                path.display(),
                expected.size
            )
            .into());
        }
        if !sha256.eq_ignore_ascii_case(&expected.sha256) {
            return Err(format!(
                "artifact {platform} ({}): SHA-256 {sha256} does not match the manifest's {}",
                path.display(),
                expected.sha256
            )
            .into());
        }
    }
    println!(
        "OK: {} ({}) signed by key {}",
        manifest.version,
        manifest.channel,
        key_fingerprint(&key)
    );
    for a in &manifest.artifacts {
        let checked = if artifacts.iter().any(|(p, _)| *p == a.platform) {
            "file verified"
        } else {
            "file not checked"
        };
        println!(
            "  {}  {}  {} bytes  sha256 {}  ({checked})",
            a.platform, a.file, a.size, a.sha256
        );
    }
    Ok(())
}

fn workspace_version() -> Version {
    Version::parse(env!("CARGO_PKG_VERSION")).unwrap_or_else(|_| Version::new(0, 0, 0))
}

fn next_version(beta: bool) -> Outcome {
    let history = History::from_git(Path::new("."))?;
    let untagged = workspace_version();
    let next = if beta {
        history.next_beta(&untagged)
    } else {
        history.next_stable(&untagged).next
    };
    match next {
        Some(v) => {
            println!("{v}");
            Ok(())
        }
        None => {
            let stable = history.next_stable(&untagged);
            let since = match &stable.last_tag {
                Some(tag) => format!("since {tag}"),
                None => format!("in the history (no stable tag; current version {untagged})"),
            };
            Err(Failure(
                format!("nothing to release: no breaking change, feat, fix or perf commit {since}"),
                3,
            ))
        }
    }
}

fn changelog(format: Format) -> Outcome {
    let log = History::from_git(Path::new("."))?.changelog();
    match format {
        Format::Markdown => print!("{}", log.to_markdown()),
        Format::Json => {
            let json = serde_json::to_string_pretty(&log)
                .map_err(|e| format!("cannot write the changelog: {e}"))?;
            println!("{json}");
        }
    }
    Ok(())
}

/// Reads a text file of at most `max` bytes.
fn read_text(path: &Path, what: &str, max: u64) -> Result<String, String> {
    let file =
        File::open(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    if text.len() as u64 > max {
        return Err(format!(
            "{what} {} is larger than {max} bytes",
            path.display()
        ));
    }
    Ok(text)
}

/// Size and SHA-256 (lower-case hex) of a file, read in chunks.
fn measure(path: &Path) -> Result<(u64, String), String> {
    let mut file =
        File::open(path).map_err(|e| format!("cannot read artifact {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot read artifact {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// A warning (not an error) when the private key file is readable by others.
fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "guruconnect-release: warning: {} is readable by others (chmod 600 it)",
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}
