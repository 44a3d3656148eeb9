//! Sets `GURUCONNECT_COMMIT` and `GURUCONNECT_CHANNEL` for [`VERSION_LINE`]: the commit is
//! the environment variable of that name when set at build time, else
//! `git rev-parse --short=12 HEAD` in the workspace, else `unknown` (a build from a source
//! archive, or without git, e.g. some cross-builds); the channel is the environment
//! variable, else `dev`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=GURUCONNECT_COMMIT");
    println!("cargo:rerun-if-env-changed=GURUCONNECT_CHANNEL");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");

    let commit = match clean(std::env::var("GURUCONNECT_COMMIT").ok()) {
        Some(c) => c,
        None => {
            watch_head(&workspace);
            clean(git(&workspace, &["rev-parse", "--short=12", "HEAD"]))
                .unwrap_or_else(|| "unknown".to_owned())
        }
    };
    let channel =
        clean(std::env::var("GURUCONNECT_CHANNEL").ok()).unwrap_or_else(|| "dev".to_owned());
    println!("cargo:rustc-env=GURUCONNECT_COMMIT={commit}");
    println!("cargo:rustc-env=GURUCONNECT_CHANNEL={channel}");
}

/// Trimmed, non-empty, printable ASCII without spaces, at most 64 characters.
fn clean(value: Option<String>) -> Option<String> {
    let v = value?.trim().to_owned();
    (!v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_graphic())).then_some(v)
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `cargo:rerun-if-changed` on `.git/HEAD` and the ref it points to (or, for a packed
/// ref, `packed-refs` and the folder the loose ref would appear in). Only existing paths:
/// cargo reruns every time for a missing one.
fn watch_head(workspace: &Path) {
    let git_path = |p: &str| -> Option<PathBuf> {
        let path = PathBuf::from(git(workspace, &["rev-parse", "--git-path", p])?);
        Some(if path.is_absolute() {
            path
        } else {
            workspace.join(path)
        })
    };
    let watch = |p: &Path| {
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    };
    let Some(head) = git_path("HEAD") else {
        return;
    };
    watch(&head);
    let Ok(text) = std::fs::read_to_string(&head) else {
        return;
    };
    if let Some(reference) = text.trim().strip_prefix("ref: ")
        && let Some(file) = git_path(reference)
    {
        if file.exists() {
            watch(&file);
        } else {
            if let Some(dir) = file.parent() {
                watch(dir);
            }
            if let Some(packed) = git_path("packed-refs") {
                watch(&packed);
            }
        }
    }
}
