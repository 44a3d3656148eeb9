//! The Windows support download's file name, which carries the server and the support
//! code: `GuruConnect-Support_<CODE>_<host>[+<port>][_http].exe`.
//!
//! The customer double-clicks the file with no flags, so the agent reads its own name
//! ([`parse`]); the server names the download ([`file_name`]). The bytes stay those of the
//! signed build (an Authenticode signature covers the content, not the name), which is why
//! the settings live in the name rather than in an appended trailer. `https` is the
//! default; `_http` marks a plain-HTTP server. A browser's " (1)" suffix for a repeated
//! download is ignored.

/// Prefix of every support file name.
pub const PREFIX: &str = "GuruConnect-Support_";

/// Why a server URL cannot be carried in a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unnameable(pub &'static str);

impl std::fmt::Display for Unnameable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Unnameable {}

/// The file name for `server` (`http[s]://host[:port]`, no path) and `code`.
pub fn file_name(server: &str, code: &str) -> Result<String, Unnameable> {
    let (secure, authority) = if let Some(rest) = server.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = server.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(Unnameable(
            "the server URL must start with http:// or https://",
        ));
    };
    let authority = authority.trim_end_matches('/');
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if !valid_host(host) {
        return Err(Unnameable(
            "the server's public URL must be a host name or IPv4 address with no path \
             (set public_url)",
        ));
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(Unnameable("the server URL has an invalid port"));
    }
    if !valid_code(code) {
        return Err(Unnameable("not a support code"));
    }
    let mut name = format!("{PREFIX}{code}_{host}");
    if let Some(port) = port {
        name.push('+');
        name.push_str(port);
    }
    if !secure {
        name.push_str("_http");
    }
    name.push_str(".exe");
    Ok(name)
}

/// The server URL and support code a file name carries, if it is a support file name.
pub fn parse(file_name: &str) -> Option<(String, String)> {
    let stem = strip_suffix_ignore_case(file_name.trim(), ".exe")?;
    let stem = strip_copy_number(stem);
    let rest = strip_prefix_ignore_case(stem, PREFIX)?;
    let mut parts = rest.split('_');
    let code = parts.next()?;
    let authority = parts.next()?;
    let scheme = match parts.next() {
        None => "https",
        Some(flag) if flag.eq_ignore_ascii_case("http") => "http",
        Some(_) => return None,
    };
    if parts.next().is_some() || !valid_code(code) {
        return None;
    }
    let (host, port) = match authority.split_once('+') {
        Some((host, port)) => (host, Some(port.parse::<u16>().ok()?)),
        None => (authority, None),
    };
    if !valid_host(host) {
        return None;
    }
    let server = match port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    };
    Some((server, code.to_ascii_uppercase()))
}

/// `XXX-XXX-XXX` over letters and digits (the server checks the code itself).
fn valid_code(code: &str) -> bool {
    let groups: Vec<&str> = code.split('-').collect();
    groups.len() == 3
        && groups
            .iter()
            .all(|g| g.len() == 3 && g.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// A DNS name or IPv4 address: letters, digits, dots and hyphens.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['.', '-'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

/// Drops a browser's " (1)" / "(12)" duplicate-download suffix.
fn strip_copy_number(stem: &str) -> &str {
    let Some(inner) = stem.strip_suffix(')') else {
        return stem;
    };
    match inner.rsplit_once('(') {
        Some((before, digits))
            if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) =>
        {
            before.trim_end()
        }
        _ => stem,
    }
}

fn strip_suffix_ignore_case<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let split = s.len().checked_sub(suffix.len())?;
    (s.is_char_boundary(split) && s[split..].eq_ignore_ascii_case(suffix)).then(|| &s[..split])
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix))
    .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (server, code, name) in [
            (
                "https://support.example.com",
                "ABC-DEF-234",
                "GuruConnect-Support_ABC-DEF-234_support.example.com.exe",
            ),
            (
                "https://support.example.com:8443/",
                "ABC-DEF-234",
                "GuruConnect-Support_ABC-DEF-234_support.example.com+8443.exe",
            ),
            (
                "http://127.0.0.1:3002",
                "XYZ-987-654",
                "GuruConnect-Support_XYZ-987-654_127.0.0.1+3002_http.exe",
            ),
        ] {
            assert_eq!(file_name(server, code).as_deref(), Ok(name));
            let (parsed_server, parsed_code) = parse(name).expect(name);
            assert_eq!(parsed_server, server.trim_end_matches('/'));
            assert_eq!(parsed_code, code);
        }
    }

    #[test]
    fn browser_renames_and_case_are_tolerated() {
        let want = Some(("http://10.0.0.5:3002".to_owned(), "ABC-DEF-234".to_owned()));
        for name in [
            "GuruConnect-Support_ABC-DEF-234_10.0.0.5+3002_http (1).exe",
            "GuruConnect-Support_ABC-DEF-234_10.0.0.5+3002_http(12).exe",
            "guruconnect-support_abc-def-234_10.0.0.5+3002_HTTP.EXE",
        ] {
            assert_eq!(parse(name), want, "{name}");
        }
    }

    #[test]
    fn other_names_are_not_support_files() {
        for name in [
            "guruconnect-agent.exe",
            "GuruConnect-Support_.exe",
            "GuruConnect-Support_ABC-DEF-234.exe",
            "GuruConnect-Support_ABC-DEF-23_host.exe",
            "GuruConnect-Support_ABC-DEF-234_host+99999.exe",
            "GuruConnect-Support_ABC-DEF-234_host_ftp.exe",
            "GuruConnect-Support_ABC-DEF-234_ho st.exe",
            "GuruConnect-Support_ABC-DEF-234_host_http_x.exe",
            "GuruConnect-Support_ABC-DEF-234_host",
            "GuruConnect-Support_ABC-DEF-234_-host.exe",
        ] {
            assert_eq!(parse(name), None, "{name}");
        }
    }

    #[test]
    fn unnameable_servers_are_refused() {
        for server in [
            "support.example.com",
            "https://example.com/gc",
            "http://[::1]:3002",
            "https://host:port",
            "https://",
        ] {
            assert!(file_name(server, "ABC-DEF-234").is_err(), "{server}");
        }
        assert!(file_name("https://host", "nope").is_err());
    }
}
