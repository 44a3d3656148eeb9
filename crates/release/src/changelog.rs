//! The next version and the changelog, from conventional commits.
//!
//! A commit counts when its subject is a [conventional commit]: `type(scope)!: text`, with a
//! lower-case `type` (`feat`, `fix`, `perf`, `refactor`, `docs`, `test`, `build`, `ci`,
//! `chore`, …), an optional scope, and `!` or a `BREAKING CHANGE:` (or `BREAKING-CHANGE:`)
//! footer in the body for a breaking change. Most of our history does **not** use
//! conventional commits (`Agent: the session indicator …`): such commits count as nothing
//! for the version and appear nowhere in the changelog. Only breaking changes, `feat`,
//! `fix` and `perf` do; the other types are kept out of the changelog too.
//!
//! Versions come from tags: the last stable release is the highest `vX.Y.Z` tag (no
//! prerelease) reachable from `HEAD`; with none, the current version is the workspace's.
//! The next stable version bumps it by what the commits since say (a breaking change:
//! major, or minor while the major is 0; a feature: minor; a fix or a performance change:
//! patch; nothing of these: no release). A beta is `X.Y.Z-beta.N`, where `X.Y.Z` is that
//! next stable version and `N` is one more than the highest `vX.Y.Z-beta.N` tag; betas never
//! move the stable line and get no changelog entry (their commits belong to the next stable
//! release).
//!
//! Everything here is a pure function over a [`History`] (commits newest first, with their
//! tags, as `git log` lists them) except [`History::from_git`], which runs `git`.
//!
//! [conventional commit]: https://www.conventionalcommits.org/en/v1.0.0/

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use semver::Version;
use serde::{Deserialize, Serialize};

/// One commit as `git log` gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commit {
    /// First line of the message.
    pub subject: String,
    /// The rest of the message.
    pub body: String,
    /// Tags pointing at this commit (`v1.2.3`, `v1.3.0-beta.1`, …).
    pub tags: Vec<String>,
    /// Commit date, `YYYY-MM-DD` (empty when unknown).
    pub date: String,
}

/// A repository's history as far as versions are concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Commits reachable from `HEAD`, newest first.
    pub commits: Vec<Commit>,
    /// Every tag of the repository, reachable or not (beta numbers must never be reused).
    pub all_tags: Vec<String>,
}

/// A parsed conventional commit subject (and footer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conventional {
    /// `feat`, `fix`, …
    pub kind: String,
    /// The scope in parentheses, if any.
    pub scope: Option<String>,
    /// `!` after the type/scope, or a `BREAKING CHANGE:` footer.
    pub breaking: bool,
    /// The text after `: `.
    pub description: String,
    /// The `BREAKING CHANGE:` footer's text, if any.
    pub breaking_note: Option<String>,
}

/// Parses a conventional commit; `None` for any other message.
pub fn parse_commit(subject: &str, body: &str) -> Option<Conventional> {
    let (head, description) = subject.trim().split_once(": ")?;
    let description = description.trim();
    if description.is_empty() {
        return None;
    }
    let (head, bang) = match head.strip_suffix('!') {
        Some(h) => (h, true),
        None => (head, false),
    };
    let (kind, scope) = match head.split_once('(') {
        Some((kind, rest)) => {
            let scope = rest.strip_suffix(')')?;
            if scope.is_empty() || scope.contains(['(', ')']) || scope.contains(char::is_whitespace)
            {
                return None;
            }
            (kind, Some(scope.to_owned()))
        }
        None => (head, None),
    };
    let mut chars = kind.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_lowercase())
        || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return None;
    }
    let breaking_note = breaking_footer(body);
    Some(Conventional {
        kind: kind.to_owned(),
        scope,
        breaking: bang || breaking_note.is_some(),
        description: description.to_owned(),
        breaking_note,
    })
}

/// The text of a `BREAKING CHANGE:` footer (with its continuation lines).
fn breaking_footer(body: &str) -> Option<String> {
    let mut lines = body.lines();
    while let Some(line) = lines.next() {
        let rest = line
            .strip_prefix("BREAKING CHANGE:")
            .or_else(|| line.strip_prefix("BREAKING-CHANGE:"));
        if let Some(rest) = rest {
            let mut text = rest.trim().to_owned();
            // Continuation: following non-empty lines that do not start another footer.
            for more in lines.by_ref() {
                if more.trim().is_empty() || is_footer_start(more) {
                    break;
                }
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(more.trim());
            }
            return Some(text);
        }
    }
    None
}

fn is_footer_start(line: &str) -> bool {
    let token = line.split_once(": ").or_else(|| line.split_once(" #"));
    token.is_some_and(|(t, _)| !t.is_empty() && t.chars().all(|c| c.is_alphanumeric() || c == '-'))
}

/// How much a set of commits moves the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bump {
    /// Nothing to release.
    None,
    /// Fixes or performance changes.
    Patch,
    /// Features.
    Minor,
    /// Breaking changes.
    Major,
}

impl Bump {
    /// What one commit asks for.
    pub fn of(commit: &Conventional) -> Bump {
        if commit.breaking {
            Bump::Major
        } else {
            match commit.kind.as_str() {
                "feat" => Bump::Minor,
                "fix" | "perf" => Bump::Patch,
                _ => Bump::None,
            }
        }
    }

    /// `current` bumped; `None` when there is nothing to release. A breaking change bumps
    /// the minor version while the major version is 0.
    pub fn apply(self, current: &Version) -> Option<Version> {
        let (major, minor, patch) = (current.major, current.minor, current.patch);
        let next = match self {
            Bump::None => return None,
            Bump::Major if major > 0 => Version::new(major + 1, 0, 0),
            Bump::Major | Bump::Minor => Version::new(major, minor + 1, 0),
            Bump::Patch => Version::new(major, minor, patch + 1),
        };
        Some(next)
    }
}

/// A `vX.Y.Z` or `vX.Y.Z-beta.N` tag's version; `None` for other tags.
pub fn tag_version(tag: &str) -> Option<Version> {
    let v = Version::parse(tag.strip_prefix('v')?).ok()?;
    if !v.build.is_empty() {
        return None;
    }
    (v.pre.is_empty() || beta_number(&v).is_some()).then_some(v)
}

/// `N` of `X.Y.Z-beta.N`.
fn beta_number(v: &Version) -> Option<u64> {
    let n = v.pre.as_str().strip_prefix("beta.")?;
    if n.starts_with('0') && n != "0" {
        return None;
    }
    n.parse().ok()
}

fn stable_tag(tag: &str) -> Option<Version> {
    tag_version(tag).filter(|v| v.pre.is_empty())
}

/// What the history says about the next release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextVersion {
    /// The current stable version: the last stable tag's, or the workspace's without one.
    pub current: Version,
    /// The last stable tag (`v1.2.3`), if any.
    pub last_tag: Option<String>,
    /// The bump the commits since ask for.
    pub bump: Bump,
    /// The next stable version; `None`: nothing to release.
    pub next: Option<Version>,
}

impl History {
    /// Index in `commits` of the commit carrying the highest stable tag, and that tag.
    fn last_stable(&self) -> Option<(usize, String, Version)> {
        self.commits
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                c.tags
                    .iter()
                    .filter_map(move |t| stable_tag(t).map(|v| (i, t.clone(), v)))
            })
            .max_by(|a, b| a.2.cmp(&b.2))
    }

    /// The next stable version. `untagged` is the current version when no stable tag is
    /// reachable (the workspace version).
    pub fn next_stable(&self, untagged: &Version) -> NextVersion {
        let (since, last_tag, current) = match self.last_stable() {
            Some((i, tag, v)) => (&self.commits[..i], Some(tag), v),
            None => (&self.commits[..], None, untagged.clone()),
        };
        let bump = since
            .iter()
            .filter_map(|c| parse_commit(&c.subject, &c.body))
            .map(|c| Bump::of(&c))
            .max()
            .unwrap_or(Bump::None);
        NextVersion {
            next: bump.apply(&current),
            current,
            last_tag,
            bump,
        }
    }

    /// The next beta, `X.Y.Z-beta.N`, of the next stable version `X.Y.Z`; `None` when
    /// there is nothing to release.
    pub fn next_beta(&self, untagged: &Version) -> Option<Version> {
        let stable = self.next_stable(untagged).next?;
        let n = self
            .all_tags
            .iter()
            .chain(self.commits.iter().flat_map(|c| &c.tags))
            .filter_map(|t| tag_version(t))
            .filter(|v| (v.major, v.minor, v.patch) == (stable.major, stable.minor, stable.patch))
            .filter_map(|v| beta_number(&v))
            .max()
            .map_or(1, |n| n + 1);
        let mut beta = stable;
        beta.pre = semver::Prerelease::new(&format!("beta.{n}")).ok()?;
        Some(beta)
    }

    /// The changelog: an entry per stable tag, newest first, preceded by `unreleased` when
    /// commits since the last stable tag have anything to say.
    pub fn changelog(&self) -> Changelog {
        let mut entries = Vec::new();
        let mut current = Entry {
            version: UNRELEASED.to_owned(),
            date: None,
            sections: Vec::new(),
        };
        let mut items: Vec<(Kind, Item)> = Vec::new();
        for commit in &self.commits {
            let mut stable: Vec<Version> =
                commit.tags.iter().filter_map(|t| stable_tag(t)).collect();
            stable.sort();
            if let Some(version) = stable.pop() {
                current.sections = sections(std::mem::take(&mut items));
                let done = std::mem::replace(
                    &mut current,
                    Entry {
                        version: version.to_string(),
                        date: (!commit.date.is_empty()).then(|| commit.date.clone()),
                        sections: Vec::new(),
                    },
                );
                if done.version != UNRELEASED || !done.sections.is_empty() {
                    entries.push(done);
                }
            }
            if let Some(c) = parse_commit(&commit.subject, &commit.body) {
                let item = Item {
                    scope: c.scope.clone(),
                    text: c.description.clone(),
                };
                if c.breaking {
                    let text = match &c.breaking_note {
                        Some(note) if !note.is_empty() => format!("{}: {note}", c.description),
                        _ => c.description.clone(),
                    };
                    items.push((
                        Kind::Breaking,
                        Item {
                            scope: c.scope.clone(),
                            text,
                        },
                    ));
                }
                match c.kind.as_str() {
                    "feat" => items.push((Kind::Features, item)),
                    "fix" => items.push((Kind::Fixes, item)),
                    "perf" => items.push((Kind::Performance, item)),
                    _ => {}
                }
            }
        }
        current.sections = sections(items);
        if current.version != UNRELEASED || !current.sections.is_empty() {
            entries.push(current);
        }
        Changelog { entries }
    }

    /// Reads the history of the repository at `repo_dir` with `git log` and `git tag`.
    pub fn from_git(repo_dir: &Path) -> Result<History, String> {
        let tags = git(
            repo_dir,
            &[
                "tag",
                "--list",
                "--format=%(refname:strip=2)%09%(objectname)%09%(*objectname)",
            ],
        )?;
        let mut all_tags = Vec::new();
        let mut by_commit: Vec<(String, String)> = Vec::new();
        for line in tags.lines() {
            let mut fields = line.split('\t');
            let (Some(name), Some(object)) = (fields.next(), fields.next()) else {
                continue;
            };
            let peeled = fields.next().filter(|p| !p.is_empty()).unwrap_or(object);
            all_tags.push(name.to_owned());
            by_commit.push((peeled.to_owned(), name.to_owned()));
        }
        // A repository without commits has no history (and `git log` would fail).
        if git(repo_dir, &["rev-parse", "--verify", "--quiet", "HEAD"]).is_err() {
            return Ok(History {
                commits: Vec::new(),
                all_tags,
            });
        }
        let log = git(
            repo_dir,
            &[
                "log",
                "-z",
                "--topo-order",
                "--format=%H%x1f%cs%x1f%s%x1f%b",
                "HEAD",
            ],
        )?;
        let mut commits = Vec::new();
        for record in log.split('\0').filter(|r| !r.trim().is_empty()) {
            let mut fields = record.splitn(4, '\x1f');
            let hash = fields.next().unwrap_or_default().trim();
            let date = fields.next().unwrap_or_default().to_owned();
            let subject = fields.next().unwrap_or_default().to_owned();
            let body = fields.next().unwrap_or_default().trim().to_owned();
            let tags = by_commit
                .iter()
                .filter(|(c, _)| c == hash)
                .map(|(_, t)| t.clone())
                .collect();
            commits.push(Commit {
                subject,
                body,
                tags,
                date,
            });
        }
        Ok(History { commits, all_tags })
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.lines().next().unwrap_or("").trim();
        return Err(format!("git {} failed: {err}", args[0]));
    }
    String::from_utf8(out.stdout).map_err(|_| format!("git {}: output is not UTF-8", args[0]))
}

/// The version name of the entry for commits not released yet.
pub const UNRELEASED: &str = "unreleased";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Breaking,
    Features,
    Fixes,
    Performance,
}

impl Kind {
    fn title(self) -> &'static str {
        match self {
            Kind::Breaking => "Breaking changes",
            Kind::Features => "Features",
            Kind::Fixes => "Fixes",
            Kind::Performance => "Performance",
        }
    }
}

fn sections(mut items: Vec<(Kind, Item)>) -> Vec<Section> {
    // Stable: within a section, items stay newest first.
    items.sort_by_key(|(k, _)| *k);
    let mut sections: Vec<Section> = Vec::new();
    let mut last = None;
    for (kind, item) in items {
        if last != Some(kind) {
            sections.push(Section {
                title: kind.title().to_owned(),
                items: Vec::new(),
            });
            last = Some(kind);
        }
        if let Some(s) = sections.last_mut() {
            s.items.push(item);
        }
    }
    sections
}

/// The whole changelog, newest entry first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changelog {
    /// One entry per stable release (and `unreleased`).
    pub entries: Vec<Entry>,
}

/// One release's changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `1.2.3`, or [`UNRELEASED`].
    pub version: String,
    /// Date of the tagged commit, `YYYY-MM-DD`; `None` for `unreleased`.
    pub date: Option<String>,
    /// Breaking changes, Features, Fixes, Performance: those with something in them, in
    /// that order.
    pub sections: Vec<Section>,
}

/// One kind of change in an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// `Breaking changes`, `Features`, `Fixes` or `Performance`.
    pub title: String,
    /// The changes, newest first.
    pub items: Vec<Item>,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The commit's scope, e.g. `agent`.
    pub scope: Option<String>,
    /// The commit's description.
    pub text: String,
}

impl Changelog {
    /// The entry for `version` (`1.2.3`, `v1.2.3` or `unreleased`).
    pub fn entry(&self, version: &str) -> Option<&Entry> {
        let version = version.strip_prefix('v').unwrap_or(version);
        self.entries.iter().find(|e| e.version == version)
    }

    /// Markdown: a `# Changelog` heading and a `##` heading per entry.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from("# Changelog\n");
        if self.entries.is_empty() {
            out.push_str("\nNo breaking change, feature, fix or performance commit yet.\n");
        }
        for entry in &self.entries {
            out.push('\n');
            out.push_str(&entry.to_markdown());
        }
        out
    }
}

impl Entry {
    /// Markdown: `## version (date)` and the sections.
    pub fn to_markdown(&self) -> String {
        let mut out = match &self.date {
            Some(date) => format!("## {} ({date})\n", self.version),
            None => format!("## {}\n", self.version),
        };
        out.push_str(&self.sections_markdown());
        out
    }

    /// Markdown of the sections only (`### Features` …), for release notes.
    pub fn sections_markdown(&self) -> String {
        let mut out = String::new();
        if self.sections.is_empty() {
            out.push_str("\nNo breaking change, feature, fix or performance change.\n");
        }
        for section in &self.sections {
            let _ = write!(out, "\n### {}\n\n", section.title);
            for item in &section.items {
                match &item.scope {
                    Some(scope) => {
                        let _ = writeln!(out, "- **{scope}:** {}", item.text);
                    }
                    None => {
                        let _ = writeln!(out, "- {}", item.text);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(subject: &str) -> Commit {
        Commit {
            subject: subject.to_owned(),
            ..Commit::default()
        }
    }

    fn tagged(subject: &str, tags: &[&str]) -> Commit {
        Commit {
            subject: subject.to_owned(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            date: "2025-01-02".to_owned(),
            ..Commit::default()
        }
    }

    fn history(commits: Vec<Commit>) -> History {
        History {
            commits,
            all_tags: Vec::new(),
        }
    }

    fn v(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    #[test]
    fn conventional_subjects_parse_and_others_do_not() {
        let c = parse_commit("feat(agent)!: new key store", "").expect("conventional");
        assert_eq!(c.kind, "feat");
        assert_eq!(c.scope.as_deref(), Some("agent"));
        assert!(c.breaking);
        assert_eq!(c.description, "new key store");

        let c = parse_commit("fix: a crash", "").expect("conventional");
        assert_eq!((c.kind.as_str(), c.scope, c.breaking), ("fix", None, false));

        let c = parse_commit(
            "refactor(store): split",
            "Why.\n\nBREAKING CHANGE: the schema\nchanged.\nRefs: #4",
        )
        .expect("conventional");
        assert!(c.breaking);
        assert_eq!(c.breaking_note.as_deref(), Some("the schema changed."));
        assert!(
            parse_commit("chore: x", "BREAKING-CHANGE: y")
                .expect("c")
                .breaking
        );

        for other in [
            "Agent: the session indicator on Windows",
            "Join page: Windows download",
            "Release crate: signed manifests (Ed25519)",
            "Fix: capitalised type",
            "feat:no space",
            "feat: ",
            "feat(): empty scope",
            "feat(a b): spaced scope",
            "Viewer toolbar wraps instead of scrolling",
            "",
        ] {
            assert_eq!(parse_commit(other, ""), None, "{other}");
        }
        // A footer alone does not make a commit conventional.
        assert_eq!(
            parse_commit("Store: new schema", "BREAKING CHANGE: x"),
            None
        );
    }

    #[test]
    fn the_next_stable_version_follows_the_commits_since_the_last_stable_tag() {
        let base = |newer: Vec<Commit>| {
            let mut commits = newer;
            commits.push(tagged("Old work", &["v1.2.3"]));
            commits.push(tagged("feat!: long ago", &["v1.0.0"]));
            history(commits)
        };
        let next = |h: &History| h.next_stable(&v("0.1.0")).next.map(|v| v.to_string());
        let h = base(vec![
            commit("fix: b"),
            commit("feat(x): a"),
            commit("Agent: c"),
        ]);
        assert_eq!(next(&h).as_deref(), Some("1.3.0"));
        assert_eq!(
            h.next_stable(&v("0.1.0")).last_tag.as_deref(),
            Some("v1.2.3")
        );
        assert_eq!(
            next(&base(vec![commit("perf: p"), commit("fix: f")])).as_deref(),
            Some("1.2.4")
        );
        assert_eq!(
            next(&base(vec![commit("fix!: f"), commit("feat: a")])).as_deref(),
            Some("2.0.0")
        );
        let footer = Commit {
            subject: "fix: f".into(),
            body: "BREAKING CHANGE: gone".into(),
            ..Commit::default()
        };
        assert_eq!(next(&base(vec![footer])).as_deref(), Some("2.0.0"));
        // Nothing conventional, or nothing that counts: no release.
        let h = base(vec![
            commit("Agent: x"),
            commit("docs: y"),
            commit("chore(ci): z"),
        ]);
        let n = h.next_stable(&v("0.1.0"));
        assert_eq!((n.bump, n.next), (Bump::None, None));
        assert_eq!(n.current, v("1.2.3"));
        // Betas never move the stable line.
        let h = base(vec![
            commit("fix: f"),
            tagged("feat: a", &["v1.3.0-beta.1"]),
        ]);
        assert_eq!(next(&h).as_deref(), Some("1.3.0"));
        // The highest stable tag counts, not a prerelease or another tag.
        let h = history(vec![
            commit("fix: f"),
            tagged("x", &["v2.0.0-beta.1", "release-9", "v1.9.0"]),
        ]);
        assert_eq!(next(&h).as_deref(), Some("1.9.1"));
    }

    #[test]
    fn without_a_tag_the_workspace_version_is_current_and_major_0_bumps_minor() {
        let h = history(vec![commit("feat!: everything"), commit("Initial import")]);
        let n = h.next_stable(&v("0.1.0"));
        assert_eq!((n.last_tag, n.current.clone()), (None, v("0.1.0")));
        assert_eq!(n.next, Some(v("0.2.0")));
        let h = history(vec![commit("fix: f")]);
        assert_eq!(h.next_stable(&v("0.1.0")).next, Some(v("0.1.1")));
        assert_eq!(history(vec![]).next_stable(&v("0.1.0")).next, None);
        assert_eq!(Bump::Major.apply(&v("0.4.2")), Some(v("0.5.0")));
        assert_eq!(Bump::Major.apply(&v("3.4.2")), Some(v("4.0.0")));
    }

    #[test]
    fn a_beta_numbers_after_the_highest_beta_of_the_same_version() {
        let mut h = history(vec![
            commit("feat: a"),
            tagged("fix: b", &["v1.3.0-beta.1"]),
            tagged("x", &["v1.2.3", "v1.2.3-beta.7"]),
        ]);
        assert_eq!(h.next_beta(&v("0.1.0")), Some(v("1.3.0-beta.2")));
        // An unreachable tag (another branch) still takes its number.
        h.all_tags = vec!["v1.3.0-beta.9".into(), "v1.4.0-beta.20".into()];
        assert_eq!(h.next_beta(&v("0.1.0")), Some(v("1.3.0-beta.10")));
        let h = history(vec![commit("fix: b"), tagged("x", &["v1.2.3"])]);
        assert_eq!(h.next_beta(&v("0.1.0")), Some(v("1.2.4-beta.1")));
        let h = history(vec![commit("docs: b"), tagged("x", &["v1.2.3"])]);
        assert_eq!(h.next_beta(&v("0.1.0")), None);
        assert_eq!(tag_version("v1.2.3-rc.1"), None);
        assert_eq!(tag_version("v1.2.3-beta.01"), None);
        assert_eq!(tag_version("1.2.3"), None);
    }

    #[test]
    fn the_changelog_has_an_entry_per_stable_tag_and_skips_other_commits() {
        let h = history(vec![
            commit("perf(codec): faster tiles"),
            commit("Agent: not conventional"),
            tagged("fix(server): a 500", &["v1.3.0"]),
            tagged("feat(agent)!: new hello", &["v1.3.0-beta.1"]),
            commit("feat: releases"),
            commit("docs: readme"),
            tagged("fix: first", &["v1.2.3"]),
            commit("chore: setup"),
        ]);
        let log = h.changelog();
        let versions: Vec<_> = log.entries.iter().map(|e| e.version.as_str()).collect();
        assert_eq!(versions, ["unreleased", "1.3.0", "1.2.3"]);
        assert_eq!(log.entries[0].date, None);
        assert_eq!(log.entries[1].date.as_deref(), Some("2025-01-02"));

        let titles = |e: &Entry| {
            e.sections
                .iter()
                .map(|s| s.title.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(titles(&log.entries[0]), ["Performance"]);
        assert_eq!(
            titles(&log.entries[1]),
            ["Breaking changes", "Features", "Fixes"]
        );
        let features = &log.entries[1].sections[1].items;
        assert_eq!(features.len(), 2);
        assert_eq!(features[0].scope.as_deref(), Some("agent"));
        assert_eq!(features[1].text, "releases");
        // The last stable release: only its own commits; the commit before it is in none.
        assert_eq!(titles(&log.entries[2]), ["Fixes"]);
        assert_eq!(log.entry("v1.2.3"), Some(&log.entries[2]));
        assert!(log.entry("1.3.0-beta.1").is_none());

        let md = log.to_markdown();
        assert!(
            md.starts_with(
                "# Changelog\n\n## unreleased\n\n### Performance\n\n- **codec:** faster tiles\n"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "## 1.3.0 (2025-01-02)\n\n### Breaking changes\n\n- **agent:** new hello\n"
            ),
            "{md}"
        );
        assert!(
            !md.contains("not conventional") && !md.contains("readme") && !md.contains("setup")
        );

        let json = serde_json::to_value(&log).expect("json");
        assert_eq!(json["entries"][1]["version"], "1.3.0");
        assert_eq!(json["entries"][1]["sections"][2]["title"], "Fixes");
        assert_eq!(
            json["entries"][1]["sections"][2]["items"][0]["text"],
            "a 500"
        );
    }

    #[test]
    fn a_history_without_conventional_commits_has_an_empty_changelog() {
        let h = history(vec![commit("Agent: x"), commit("Store: y")]);
        let log = h.changelog();
        assert!(log.entries.is_empty());
        assert!(log.to_markdown().contains("No breaking change"));
        // A stable tag gets its (empty) entry all the same.
        let h = history(vec![commit("Agent: x"), tagged("Store: y", &["v0.1.0"])]);
        let log = h.changelog();
        assert_eq!(log.entries.len(), 1);
        assert!(log.entries[0].sections.is_empty());
    }
}
