//! Fleet search: the store-maintained `search_*` columns of a machine and the parser
//! that turns a query (SPEC §7) into SQL conditions over them.
//!
//! Every column is derived here, in Rust, so both backends hold byte-identical text and
//! case folding is Unicode-aware on both (SQLite's `lower()` only folds ASCII). Values
//! are lowercased, control characters become spaces, and several values in one column
//! are joined with `'\n'`; query values get the same normalisation, so they never
//! contain `'\n'` and cannot match across two values.

use serde_json::Value;

use crate::{Backend, Machine, MachineStatus};

/// Separator between values inside one search column.
const SEP: char = '\n';

/// The derived search columns of one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SearchColumns {
    /// Every attribute (bare terms).
    pub text: String,
    /// Hostname (`host:`).
    pub host: String,
    /// OS and OS version (`os:`).
    pub os: String,
    /// Inventory logged-on user (`user:`).
    pub user: String,
    /// External IP and interface addresses (`ip:`).
    pub ip: String,
    /// Site label (`site:`).
    pub site: String,
    /// Tags (`tag:`).
    pub tags: String,
    /// Company label (`company:`).
    pub company: String,
    /// Agent version (`version:`).
    pub version: String,
}

/// Lowercases and replaces control characters (including `'\n'`) with spaces.
pub(crate) fn normalize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .to_lowercase()
}

/// Joins the non-empty normalised values with [`SEP`].
fn join<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for v in values {
        if v.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(SEP);
        }
        out.push_str(&normalize(v));
    }
    out
}

/// A scalar JSON value as text (strings as-is, numbers and booleans printed).
fn scalar(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Strings of a JSON value that is either a scalar or an array of scalars.
fn scalars(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(|i| scalar(Some(i))).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

/// Interface addresses and MACs from the inventory's `interfaces` array (objects with
/// `addresses` (array or string), `mac` (string) and/or `macs` (array)).
fn interfaces(inventory: &Value) -> (Vec<String>, Vec<String>) {
    let mut addrs = Vec::new();
    let mut macs = Vec::new();
    if let Some(Value::Array(list)) = inventory.get("interfaces") {
        for iface in list {
            addrs.extend(scalars(iface.get("addresses")));
            macs.extend(scalars(iface.get("mac")));
            macs.extend(scalars(iface.get("macs")));
        }
    }
    (addrs, macs)
}

impl SearchColumns {
    /// Derives the search columns from a machine's stored attributes.
    pub(crate) fn of(m: &Machine) -> SearchColumns {
        let inv = &m.inventory;
        let user = scalar(inv.get("logged_on_user")).unwrap_or_default();
        let serial = scalar(inv.get("serial")).unwrap_or_default();
        let cpu = scalar(inv.get("cpu_model")).unwrap_or_default();
        let tz = scalar(inv.get("time_zone")).unwrap_or_default();
        let (addrs, macs) = interfaces(inv);

        let mut all: Vec<&str> = vec![
            &m.agent_id,
            opt(&m.machine_uid),
            opt(&m.claimed_machine_uid),
            &m.hostname,
            &m.os,
            &m.os_version,
            &m.agent_version,
            opt(&m.company),
            opt(&m.site),
            opt(&m.department),
            opt(&m.device_type),
        ];
        all.extend(m.tags.iter().map(String::as_str));
        all.push(opt(&m.external_ip));
        all.extend([user.as_str(), serial.as_str(), cpu.as_str(), tz.as_str()]);
        all.extend(addrs.iter().map(String::as_str));
        all.extend(macs.iter().map(String::as_str));

        let mut ips: Vec<&str> = vec![opt(&m.external_ip)];
        ips.extend(addrs.iter().map(String::as_str));

        SearchColumns {
            text: join(all),
            host: join([m.hostname.as_str()]),
            os: join([m.os.as_str(), m.os_version.as_str()]),
            user: join([user.as_str()]),
            ip: join(ips),
            site: join([opt(&m.site)]),
            tags: join(m.tags.iter().map(String::as_str)),
            company: join([opt(&m.company)]),
            version: join([m.agent_version.as_str()]),
        }
    }
}

/// The text of an optional value ("" for `None`).
fn opt(o: &Option<String>) -> &str {
    o.as_deref().unwrap_or_default()
}

/// One parsed query term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Term {
    /// Substring of the named search column (normalised value).
    Like(&'static str, String),
    /// `status:online`.
    Online,
    /// `status:offline`.
    Offline,
    /// `status:pending` / `status:active`: equality on the status column.
    Status(MachineStatus),
    /// A `status:` value that is none of the above: matches nothing.
    Nothing,
}

/// The search column a field prefix restricts to; `None` for an unknown field.
fn field_column(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "host" => "search_host",
        "os" => "search_os",
        "user" => "search_user",
        "ip" => "search_ip",
        "site" => "search_site",
        "tag" => "search_tags",
        "company" => "search_company",
        "version" => "search_version",
        "status" => "status",
        _ => return None,
    })
}

/// Parses a query into terms (see [`crate::MachineSearch`] for the syntax).
pub(crate) fn parse_query(query: &str) -> Vec<Term> {
    let chars: Vec<char> = query.chars().collect();
    let mut terms = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        // An optional `field:` prefix: ASCII letters immediately followed by ':'.
        let mut j = i;
        while j < chars.len() && chars[j].is_ascii_alphabetic() {
            j += 1;
        }
        let mut column = None;
        let mut value = String::new();
        if j > i && j < chars.len() && chars[j] == ':' {
            let name: String = chars[i..j].iter().collect();
            column = field_column(&name);
            if column.is_none() {
                // Unknown field: the whole term is a bare value.
                value.push_str(&name);
                value.push(':');
            }
            i = j + 1;
        }
        // The value: up to the next whitespace outside double quotes.
        let mut quoted = false;
        while i < chars.len() && (quoted || !chars[i].is_whitespace()) {
            if chars[i] == '"' {
                quoted = !quoted;
            } else {
                value.push(chars[i]);
            }
            i += 1;
        }
        let value = normalize(&value);
        if value.is_empty() {
            continue;
        }
        terms.push(match column {
            None => Term::Like("search_text", value),
            Some("status") => match value.as_str() {
                "online" => Term::Online,
                "offline" => Term::Offline,
                other => MachineStatus::parse(other).map_or(Term::Nothing, Term::Status),
            },
            Some(c) => Term::Like(c, value),
        });
    }
    terms
}

/// `%value%` with LIKE's `%`, `_` and the escape character `\` escaped.
pub(crate) fn like_contains(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('%');
    for c in value.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// Builds the search conditions (to be AND-ed after the tenant/deleted conditions),
/// numbering placeholders from `first`. Returns the SQL fragment (starting with
/// `" AND "` for each condition, empty for no condition) and the text arguments in
/// order.
pub(crate) fn where_clause(
    backend: Backend,
    terms: &[Term],
    online_ids: Option<&[String]>,
    first: usize,
) -> (String, Vec<String>) {
    let mut sql = String::new();
    let mut args = Vec::new();
    let online_json = online_ids.filter(|ids| !ids.is_empty()).map(id_set_json);
    for term in terms {
        let n = first + args.len();
        match term {
            Term::Like(column, value) => {
                sql.push_str(&format!(" AND {column} LIKE ${n} ESCAPE '\\'"));
                args.push(like_contains(value));
            }
            Term::Status(s) => sql.push_str(&format!(" AND status = '{}'", s.as_str())),
            Term::Nothing => sql.push_str(" AND 1 = 0"),
            Term::Online | Term::Offline => {
                let negate = matches!(term, Term::Offline);
                match &online_json {
                    None if negate => {}
                    None => sql.push_str(" AND 1 = 0"),
                    Some(json) => {
                        sql.push_str(" AND ");
                        sql.push_str(&in_id_set(backend, "agent_id", n, negate));
                        args.push(json.clone());
                    }
                }
            }
        }
    }
    (sql, args)
}

/// The JSON object `{"id": 1, …}` whose keys are `ids`: the set bound for
/// [`in_id_set`].
pub(crate) fn id_set_json(ids: &[String]) -> String {
    let set: serde_json::Map<String, Value> =
        ids.iter().map(|id| (id.clone(), Value::from(1))).collect();
    Value::Object(set).to_string()
}

/// A condition "`column` is (not) a key of the JSON object bound at `$n`".
///
/// PostgreSQL: `jsonb ? text`, with the cast in an uncorrelated sub-select so it is an
/// InitPlan evaluated once per execution (also under a generic plan); `?` on an object
/// is a binary search over its sorted keys, so the cost is O(rows · log ids) whatever
/// the planner's row estimates (an `IN (SELECT jsonb_array_elements_text(…))` was
/// planned as a nested loop re-expanding the array per row without statistics:
/// ~400 ms at 10,000 machines). SQLite: `IN (SELECT key FROM json_each($n))`, which
/// SQLite answers through a transient index.
pub(crate) fn in_id_set(backend: Backend, column: &str, n: usize, negate: bool) -> String {
    match (backend, negate) {
        (Backend::Sqlite, false) => format!("{column} IN (SELECT key FROM json_each(${n}))"),
        (Backend::Sqlite, true) => format!("{column} NOT IN (SELECT key FROM json_each(${n}))"),
        (Backend::Postgres, false) => format!("(SELECT CAST(${n} AS jsonb)) ? {column}"),
        (Backend::Postgres, true) => format!("NOT ((SELECT CAST(${n} AS jsonb)) ? {column})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(c: &'static str, v: &str) -> Term {
        Term::Like(c, v.to_owned())
    }

    #[test]
    fn parses_terms() {
        assert_eq!(parse_query("   "), vec![]);
        assert_eq!(
            parse_query("Foo  os:Win site:\"New York\" tag:a\"b c\"d"),
            vec![
                like("search_text", "foo"),
                like("search_os", "win"),
                like("search_site", "new york"),
                like("search_tags", "ab cd"),
            ]
        );
        assert_eq!(
            parse_query("weird:x c:\\temp 10:30 \"os:quoted\""),
            vec![
                like("search_text", "weird:x"),
                like("search_text", "c:\\temp"),
                like("search_text", "10:30"),
                like("search_text", "os:quoted"),
            ]
        );
        assert_eq!(
            parse_query("STATUS:Online status:offline status:pending status:active status:x"),
            vec![
                Term::Online,
                Term::Offline,
                Term::Status(MachineStatus::Pending),
                Term::Status(MachineStatus::Active),
                Term::Nothing
            ]
        );
        assert_eq!(
            parse_query("os: \"\" host:\"unterminated"),
            vec![like("search_host", "unterminated")]
        );
        assert_eq!(parse_query("\"a\nb\""), vec![like("search_text", "a b")]);
    }

    #[test]
    fn id_set() {
        let ids = ["b".to_owned(), "a\"x".to_owned(), "b".to_owned()];
        let v: Value = serde_json::from_str(&id_set_json(&ids)).expect("json");
        assert_eq!(v, serde_json::json!({"a\"x": 1, "b": 1}));
    }

    #[test]
    fn escapes_like() {
        assert_eq!(like_contains("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }

    #[test]
    fn columns_of_machine() {
        let m = Machine {
            agent_id: "A-1".into(),
            tenant_id: "t".into(),
            machine_uid: None,
            hostname: "Host\nOne".into(),
            os: "Linux".into(),
            os_version: "6.1".into(),
            agent_version: "0.1.0".into(),
            company: Some("ACME".into()),
            site: None,
            department: None,
            device_type: None,
            tags: vec!["X".into(), "".into(), "y".into()],
            inventory: serde_json::json!({
                "logged_on_user": "Bob",
                "serial": 1234,
                "interfaces": [{"mac": "AA:BB", "addresses": ["10.0.0.1", "fe80::1"]},
                               {"macs": ["CC"], "addresses": "192.168.1.2"}],
            }),
            external_ip: Some("203.0.113.9".into()),
            status: MachineStatus::Active,
            pending_reason: None,
            claimed_machine_uid: Some("UID".into()),
            notes: None,
            update_channel: None,
            update_status: None,
            site_id: None,
            last_seen: None,
            created_at: 0,
        };
        let c = SearchColumns::of(&m);
        assert_eq!(
            c.text,
            "a-1\nuid\nhost one\nlinux\n6.1\n0.1.0\nacme\nx\ny\n203.0.113.9\nbob\n1234\n\
             10.0.0.1\nfe80::1\n192.168.1.2\naa:bb\ncc"
        );
        assert_eq!(c.host, "host one");
        assert_eq!(c.os, "linux\n6.1");
        assert_eq!(c.ip, "203.0.113.9\n10.0.0.1\nfe80::1\n192.168.1.2");
        assert_eq!(c.tags, "x\ny");
        assert_eq!(c.user, "bob");
        assert_eq!(c.site, "");
    }
}
