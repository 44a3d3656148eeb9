//! Builds the web console (`dashboard/` → `dashboard/dist`) when it has not been built yet
//! and Node.js is available, so `cargo run -p guruconnect-server` serves it on a fresh
//! clone. Without npm the server still builds and serves a page explaining the step.

use std::path::Path;
use std::process::Command;

fn main() {
    let dashboard = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboard");
    let dist = dashboard.join("dist");
    println!(
        "cargo:rerun-if-changed={}",
        dist.join("index.html").display()
    );
    println!("cargo:rerun-if-changed={}", dist.display());
    if dist.join("index.html").exists() || !dashboard.join("package.json").exists() {
        return;
    }
    if std::env::var_os("GURUCONNECT_SKIP_CONSOLE_BUILD").is_some() {
        return;
    }
    let npm_ok = Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !npm_ok {
        println!("cargo:warning=npm not found: the web console is not built into this binary");
        return;
    }
    // Install only on a fresh checkout; an existing node_modules belongs to a developer.
    let install: &[&str] = if dashboard.join("node_modules").exists() {
        &[]
    } else {
        &["ci", "--no-audit", "--no-fund"]
    };
    for args in [install, &["run", "build"][..]] {
        if args.is_empty() {
            continue;
        }
        let status = Command::new("npm")
            .args(args)
            .current_dir(&dashboard)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            println!(
                "cargo:warning=building the web console failed (npm {}); serving a placeholder",
                args.join(" ")
            );
            return;
        }
    }
}
