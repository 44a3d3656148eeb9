//! The `guruconnect-release` binary end to end: key pair, signing, verifying, and the next
//! version and changelog of a throwaway git repository.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_guruconnect-release");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run guruconnect-release")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit status 0, else the test fails showing stderr.
fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

/// A non-zero exit with one line on stderr (the tool never panics); returns the line.
fn fails(out: Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("guruconnect-release: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn a_signed_release_verifies_and_any_change_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let keygen = ok(run(d, &["keygen", "--out", "keys"]));
    let public = std::fs::read_to_string(d.join("keys/release.pub")).expect("release.pub");
    assert!(public.starts_with("gcrelpub1:"), "{public}");
    assert!(keygen.contains(public.trim()), "{keygen}");
    let fingerprint = guruconnect_release::key_fingerprint(
        &guruconnect_release::parse_public_key(&public).expect("public key"),
    );
    assert!(keygen.contains(&fingerprint), "{keygen}");
    let private = std::fs::read_to_string(d.join("keys/release.key")).expect("release.key");
    assert!(private.starts_with("gcrelsec1:"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(d.join("keys/release.key"))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // keygen never replaces a key.
    let err = fails(run(d, &["keygen", "--out", "keys"]), 1);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read_to_string(d.join("keys/release.key")).expect("release.key"),
        private
    );

    std::fs::create_dir(d.join("dist")).expect("dist");
    std::fs::write(d.join("dist/guruconnect-agent"), b"linux agent bytes").expect("write");
    std::fs::write(d.join("dist/guruconnect-agent.exe"), b"windows agent").expect("write");
    std::fs::write(d.join("notes.md"), "- better things\n").expect("write");
    ok(run(
        d,
        &[
            "sign",
            "--key",
            "keys/release.key",
            "--version",
            "1.3.0",
            "--channel",
            "stable",
            "--artifact",
            "linux-x86_64=dist/guruconnect-agent",
            "--artifact",
            "windows-x86_64=dist/guruconnect-agent.exe",
            "--min-version",
            "1.0.0",
            "--notes-file",
            "notes.md",
            "--out",
            "release.json",
        ],
    ));
    let signed: guruconnect_release::SignedRelease =
        serde_json::from_str(&std::fs::read_to_string(d.join("release.json")).expect("read"))
            .expect("signed release json");
    let manifest = guruconnect_release::Manifest::parse(&signed.manifest).expect("manifest");
    assert_eq!(manifest.version, "1.3.0");
    assert_eq!(manifest.notes, "- better things");
    let linux = manifest.artifact("linux-x86_64").expect("linux artifact");
    assert_eq!(linux.file, "guruconnect-agent");
    assert_eq!(linux.size, 17);
    assert_eq!(
        linux.sha256,
        guruconnect_release::sha256_hex(b"linux agent bytes")
    );
    assert_eq!(linux.min_version.as_deref(), Some("1.0.0"));
    assert_eq!(
        manifest.artifact("windows-x86_64").expect("windows").file,
        "guruconnect-agent.exe"
    );
    // Pretty and in the struct's key order.
    assert!(
        signed
            .manifest
            .starts_with("{\n  \"version\": \"1.3.0\",\n  \"channel\": \"stable\""),
        "{}",
        signed.manifest
    );

    let verify = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--public-key",
            "keys/release.pub",
            "release.json",
            "--artifact",
            "linux-x86_64=dist/guruconnect-agent",
            "--artifact",
            "windows-x86_64=dist/guruconnect-agent.exe",
        ];
        args.extend_from_slice(extra);
        run(d, &args)
    };
    let summary = ok(verify(&[]));
    assert!(
        summary.contains("1.3.0") && summary.contains(&fingerprint),
        "{summary}"
    );

    // One byte changed in an artifact: refused, naming it.
    std::fs::write(d.join("dist/guruconnect-agent.exe"), b"windows agenT").expect("write");
    let err = fails(verify(&[]), 1);
    assert!(
        err.contains("windows-x86_64") && err.contains("SHA-256"),
        "{err}"
    );
    std::fs::write(d.join("dist/guruconnect-agent.exe"), b"windows agent!").expect("write");
    let err = fails(verify(&[]), 1);
    assert!(
        err.contains("windows-x86_64") && err.contains("bytes"),
        "{err}"
    );
    std::fs::write(d.join("dist/guruconnect-agent.exe"), b"windows agent").expect("write");
    ok(verify(&[]));
    let err = fails(verify(&["--artifact", "macos-aarch64=notes.md"]), 1);
    assert!(err.contains("macos-aarch64"), "{err}");

    // A changed manifest: the signature no longer verifies.
    let mut changed = signed.clone();
    changed.manifest = changed.manifest.replace("\"size\": 17", "\"size\": 18");
    assert_ne!(changed.manifest, signed.manifest);
    std::fs::write(
        d.join("release.json"),
        serde_json::to_string(&changed).expect("json"),
    )
    .expect("write");
    let err = fails(verify(&[]), 1);
    assert!(err.contains("signature"), "{err}");

    // Another key: refused too.
    std::fs::write(
        d.join("release.json"),
        serde_json::to_string(&signed).expect("json"),
    )
    .expect("write");
    ok(run(d, &["keygen", "--out", "other"]));
    let err = fails(
        run(
            d,
            &[
                "verify",
                "--public-key",
                "other/release.pub",
                "release.json",
            ],
        ),
        1,
    );
    assert!(err.contains("signature"), "{err}");

    // Bad input: a clear line and a non-zero exit, never a panic.
    for (key, version, artifact, says) in [
        (
            "keys/release.pub",
            "1.3.0",
            "dist/guruconnect-agent",
            "private",
        ),
        (
            "keys/release.key",
            "1.3.0-beta.1",
            "dist/guruconnect-agent",
            "beta",
        ),
        ("keys/release.key", "1.3.0", "dist/missing", "dist/missing"),
    ] {
        let artifact = format!("linux-x86_64={artifact}");
        let err = fails(
            run(
                d,
                &[
                    "sign",
                    "--key",
                    key,
                    "--version",
                    version,
                    "--channel",
                    "stable",
                    "--artifact",
                    &artifact,
                    "--out",
                    "x.json",
                ],
            ),
            1,
        );
        assert!(err.contains(says), "{key} {version} {artifact}: {err}");
    }
    fails(
        run(
            d,
            &["verify", "--public-key", "keys/release.pub", "notes.md"],
        ),
        1,
    );
    fails(run(d, &["verify", "release.json"]), 2);
    fails(run(d, &["sign", "--channel", "nightly"]), 2);
}

/// A throwaway git repository.
struct Repo(tempfile::TempDir);

impl Repo {
    fn new() -> Repo {
        let repo = Repo(tempfile::tempdir().expect("tempdir"));
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    fn git(&self, args: &[&str]) {
        let out = Command::new("git")
            .args(args)
            .current_dir(self.0.path())
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    }

    fn commit(&self, message: &str) -> &Self {
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self
    }

    fn tag(&self, tag: &str) -> &Self {
        self.git(&["tag", tag]);
        self
    }

    fn release(&self, args: &[&str]) -> Output {
        run(self.0.path(), args)
    }

    fn next(&self, beta: bool) -> String {
        let args: &[&str] = if beta {
            &["next-version", "--beta"]
        } else {
            &["next-version"]
        };
        ok(self.release(args)).trim().to_owned()
    }
}

/// A repository at `v1.2.3` with some history before it.
fn tagged_repo() -> Repo {
    let repo = Repo::new();
    repo.commit("Initial import")
        .commit("feat: the beginning")
        .tag("v1.0.0")
        .commit("fix(agent): a crash")
        .git(&["tag", "-a", "v1.2.3", "-m", "1.2.3"]);
    repo
}

#[test]
fn the_next_version_comes_from_conventional_commits_since_the_last_stable_tag() {
    let repo = tagged_repo();
    // Nothing since the tag: nothing to release (exit 3).
    let err = fails(repo.release(&["next-version"]), 3);
    assert!(
        err.contains("nothing to release") && err.contains("v1.2.3"),
        "{err}"
    );
    repo.commit("Agent: not a conventional commit")
        .commit("docs: readme");
    fails(repo.release(&["next-version"]), 3);

    repo.commit("fix(server): a 500");
    assert_eq!(repo.next(false), "1.2.4");
    repo.commit("perf: faster");
    assert_eq!(repo.next(false), "1.2.4");
    repo.commit("feat(agent): self-update");
    assert_eq!(repo.next(false), "1.3.0");
    assert_eq!(repo.next(true), "1.3.0-beta.1");
    // A beta tag: the next beta counts on, the stable line stays.
    repo.tag("v1.3.0-beta.1");
    assert_eq!(repo.next(true), "1.3.0-beta.2");
    assert_eq!(repo.next(false), "1.3.0");
    repo.commit("fix: after the beta").tag("v1.3.0-beta.2");
    assert_eq!(repo.next(true), "1.3.0-beta.3");

    let breaking = tagged_repo();
    breaking.commit("refactor(store)!: new schema");
    assert_eq!(breaking.next(false), "2.0.0");
    let footer = tagged_repo();
    footer.commit("fix: keys\n\nBREAKING CHANGE: old keys no longer load");
    assert_eq!(footer.next(false), "2.0.0");

    // No tag: the workspace version is the current one.
    let untagged = Repo::new();
    untagged.commit("Initial import").commit("fix: a bug");
    let workspace = guruconnect_release::Version::parse(env!("CARGO_PKG_VERSION")).expect("v");
    assert_eq!(
        untagged.next(false),
        format!(
            "{}.{}.{}",
            workspace.major,
            workspace.minor,
            workspace.patch + 1
        )
    );
}

#[test]
fn the_changelog_lists_stable_releases_and_signs_into_notes() {
    let repo = tagged_repo();
    repo.commit("Agent: not conventional")
        .commit("feat(agent): self-update")
        .tag("v1.3.0-beta.1")
        .commit("fix(server)!: the API moved")
        .commit("chore: tidy");

    let md = ok(repo.release(&["changelog"]));
    assert!(md.starts_with("# Changelog\n\n## unreleased\n"), "{md}");
    assert!(
        md.contains("### Breaking changes\n\n- **server:** the API moved"),
        "{md}"
    );
    assert!(
        md.contains("### Features\n\n- **agent:** self-update"),
        "{md}"
    );
    assert!(
        md.contains("## 1.2.3 (") && md.contains("- **agent:** a crash"),
        "{md}"
    );
    assert!(md.contains("## 1.0.0 ("), "{md}");
    assert!(!md.contains("beta") && !md.contains("not conventional") && !md.contains("tidy"));

    let json: serde_json::Value =
        serde_json::from_str(&ok(repo.release(&["changelog", "--format", "json"]))).expect("json");
    let versions: Vec<&str> = json["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["version"].as_str().expect("version"))
        .collect();
    assert_eq!(versions, ["unreleased", "1.2.3", "1.0.0"]);
    assert_eq!(json["entries"][1]["sections"][0]["title"], "Fixes");
    assert!(json["entries"][1]["date"].is_string());

    // --notes-from-git: the unreleased entry for the next version, a tag's entry for it.
    assert_eq!(repo.next(false), "2.0.0");
    std::fs::write(repo.0.path().join("agent"), b"bytes").expect("write");
    ok(repo.release(&["keygen", "--out", "keys"]));
    let sign = |version: &str, channel: &str| {
        repo.release(&[
            "sign",
            "--key",
            "keys/release.key",
            "--version",
            version,
            "--channel",
            channel,
            "--artifact",
            "linux-x86_64=agent",
            "--notes-from-git",
            "--out",
            "release.json",
        ])
    };
    let notes = || {
        let signed: guruconnect_release::SignedRelease = serde_json::from_str(
            &std::fs::read_to_string(repo.0.path().join("release.json")).expect("read"),
        )
        .expect("json");
        guruconnect_release::Manifest::parse(&signed.manifest)
            .expect("manifest")
            .notes
    };
    ok(sign("2.0.0", "stable"));
    let n = notes();
    assert!(n.starts_with("### Breaking changes"), "{n}");
    assert!(n.contains("self-update"), "{n}");
    ok(sign("2.0.0-beta.1", "beta"));
    assert_eq!(notes(), n);
    ok(sign("1.2.3", "stable"));
    assert!(notes().contains("a crash"));
    let err = fails(sign("1.9.0", "stable"), 1);
    assert!(err.contains("no changelog entry for 1.9.0"), "{err}");

    // Outside a repository: a clear error.
    let plain = tempfile::tempdir().expect("tempdir");
    let err = fails(run(plain.path(), &["changelog"]), 1);
    assert!(err.contains("git"), "{err}");
}

#[test]
fn version_prints_version_commit_and_channel() {
    let out = ok(run(Path::new("."), &["--version"]));
    assert_eq!(
        out.trim(),
        format!("guruconnect-release {}", guruconnect_release::VERSION_LINE)
    );
    assert!(
        out.starts_with(&format!(
            "guruconnect-release {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{out}"
    );
    assert!(out.contains(", channel "), "{out}");
}
