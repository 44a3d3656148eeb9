//! Fleet search benchmark.
//!
//! ```text
//! cargo run --release -p guruconnect-store --example search_bench \
//!     [-- [--postgres URL [--keep-schema]] [--machines N]]
//! ```
//!
//! Inserts N (default 10,000) machines with varied, realistic attributes (hostnames,
//! OS versions, labels, tags, inventory with users, serials, CPUs, interfaces) into a
//! fresh SQLite file in a temporary directory and, with `--postgres URL`, into a fresh
//! schema of that database (dropped afterwards). Then runs a fixed, seeded mix of 200
//! queries with `limit 50` (bare terms of 2–8 characters, field-scoped terms, 2–3 term
//! combinations; ~30% of machines passed as online) and prints p50 / p95 / max latency
//! per backend and per query kind.

use std::time::{Duration, Instant};

use guruconnect_store::{MachineLabels, MachineSearch, MachineStatus, NewMachine, Store};
use serde_json::json;
use sqlx::Connection;

/// Any error, boxed (the example has no error crate).
type BenchResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const HOST_PREFIXES: &[&str] = &[
    "WS", "DESKTOP", "LAPTOP", "SRV", "DC", "SQL", "FS", "RDS", "KIOSK", "POS", "MAC", "NB", "PC",
    "VM", "HV", "WEB", "APP", "PRN", "LAB", "REC",
];
const HOST_WORDS: &[&str] = &[
    "ACCT", "SALES", "HR", "IT", "FRONT", "BACK", "WH", "CLINIC", "DENTAL", "LAW", "ADMIN", "CEO",
    "CFO", "OPS", "DEV", "QA", "MKT", "SUPPORT", "LOBBY", "SHOP",
];
const OSES: &[(&str, &[&str])] = &[
    (
        "windows",
        &[
            "10 Pro 22H2 (19045.4529)",
            "11 Pro 23H2 (22631.3737)",
            "11 Enterprise 24H2 (26100.1150)",
            "Server 2019 Standard (17763.5936)",
            "Server 2022 Datacenter (20348.2527)",
            "10 LTSC 2021 (19044.4529)",
        ],
    ),
    (
        "linux",
        &[
            "Ubuntu 22.04.4 LTS",
            "Ubuntu 24.04 LTS",
            "Debian 12 (bookworm)",
            "Rocky Linux 9.4",
            "Fedora 40",
        ],
    ),
    ("macos", &["14.5 Sonoma", "13.6.7 Ventura", "15.0 Sequoia"]),
];
const VERSIONS: &[&str] = &[
    "0.9.4",
    "0.9.5",
    "1.0.0",
    "1.0.1",
    "1.1.0",
    "1.2.0-beta.2",
    "1.2.0",
];
const COMPANY_A: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Wonka",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Hooli",
    "Vandelay",
    "Pied Piper",
    "Dunder Mifflin",
    "Oceanic",
    "Massive Dynamic",
    "Gringotts",
    "Monarch",
    "Aperture",
    "Black Mesa",
];
const COMPANY_B: &[&str] = &[
    "Corp",
    "LLC",
    "Dental",
    "Law Group",
    "Clinic",
    "Industries",
    "Partners",
    "GmbH",
];
const CITIES: &[&str] = &[
    "New York",
    "Boston",
    "Chicago",
    "Denver",
    "Austin",
    "Seattle",
    "Miami",
    "Atlanta",
    "Berlin",
    "München",
    "London",
    "Paris",
    "Madrid",
    "São Paulo",
    "Toronto",
    "Sydney",
    "Remote",
    "HQ",
];
const DEPTS: &[&str] = &[
    "Finance",
    "IT",
    "Sales",
    "HR",
    "Front Desk",
    "Operations",
    "Legal",
    "Engineering",
];
const TYPES: &[&str] = &[
    "laptop",
    "desktop",
    "server",
    "vm",
    "kiosk",
    "pos",
    "workstation",
];
const TAGS: &[&str] = &[
    "vip",
    "eu",
    "us",
    "kiosk",
    "legacy",
    "patch-me",
    "hipaa",
    "pci",
    "byod",
    "win10-eol",
    "backup-ok",
    "backup-fail",
    "no-av",
    "bitlocker",
    "new-hire",
    "loaner",
    "test",
    "prod",
];
const FIRST: &[&str] = &[
    "james",
    "mary",
    "john",
    "patricia",
    "robert",
    "jennifer",
    "michael",
    "linda",
    "david",
    "elizabeth",
    "william",
    "susan",
    "joseph",
    "jessica",
    "thomas",
    "sarah",
    "chen",
    "ana",
    "jürgen",
    "olga",
];
const LAST: &[&str] = &[
    "smith",
    "johnson",
    "williams",
    "brown",
    "jones",
    "garcia",
    "miller",
    "davis",
    "rodriguez",
    "martinez",
    "hernandez",
    "lopez",
    "wilson",
    "anderson",
    "taylor",
    "moore",
    "nguyen",
    "müller",
];
const CPUS: &[&str] = &[
    "Intel(R) Core(TM) i5-8500 CPU @ 3.00GHz",
    "Intel(R) Core(TM) i7-1185G7 @ 3.00GHz",
    "Intel(R) Core(TM) i7-12700 @ 2.10GHz",
    "Intel(R) Xeon(R) Silver 4214R CPU @ 2.40GHz",
    "AMD Ryzen 7 5800X 8-Core Processor",
    "AMD EPYC 7302P 16-Core Processor",
    "Apple M2",
    "Apple M1 Pro",
];
const TZS: &[&str] = &[
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "Europe/Berlin",
    "Europe/London",
    "America/Sao_Paulo",
    "Australia/Sydney",
    "UTC",
];

fn hex(rng: &mut Rng, n: usize) -> String {
    (0..n).map(|_| format!("{:x}", rng.below(16))).collect()
}

/// One generated machine and its inventory.
fn generate(rng: &mut Rng, i: usize) -> (NewMachine, serde_json::Value) {
    let (os, versions) = OSES[rng.below(OSES.len())];
    let first = rng.pick(FIRST);
    let last = rng.pick(LAST);
    let user = match rng.below(3) {
        0 => format!("CORP\\{}{}", &first[..1], last),
        1 => format!("{first}.{last}"),
        _ => format!("{first}.{last}@example.com"),
    };
    let ifaces: Vec<_> = (0..1 + rng.below(3))
        .map(|k| {
            let mut addrs = vec![format!("10.{}.{}.{}", rng.below(50), rng.below(256), 1 + rng.below(254))];
            if rng.chance(50) {
                addrs.push(format!("fe80::{}:{}", hex(rng, 4), hex(rng, 4)));
            }
            if rng.chance(20) {
                addrs.push(format!("192.168.{}.{}", rng.below(10), 1 + rng.below(254)));
            }
            json!({
                "name": rng.pick(&["Ethernet", "Wi-Fi", "eth0", "wlan0", "en0"]),
                "mac": format!("{}:{}:{}:{}:{}:{}", hex(rng, 2), hex(rng, 2), hex(rng, 2), hex(rng, 2), hex(rng, 2), k),
                "addresses": addrs,
            })
        })
        .collect();
    let inventory = json!({
        "cpu_model": rng.pick(CPUS),
        "cpu_count": 4 + rng.below(28),
        "ram_bytes": (8u64 << 30) * (1 + rng.below(8) as u64),
        "serial": format!("{}{:07}", ["SN", "PF", "C02", "5CG", "MXL"][rng.below(5)], rng.below(10_000_000)),
        "interfaces": ifaces,
        "logged_on_user": if rng.chance(85) { json!(user) } else { json!("") },
        "idle_seconds": rng.below(10_000),
        "time_zone": rng.pick(TZS),
        "uptime_seconds": rng.below(5_000_000),
    });
    let company = format!("{} {}", rng.pick(COMPANY_A), rng.pick(COMPANY_B));
    let m = NewMachine {
        agent_id: format!(
            "{}-{}-4{}-{}-{}",
            hex(rng, 8),
            hex(rng, 4),
            hex(rng, 3),
            hex(rng, 4),
            hex(rng, 12)
        ),
        tenant_id: "default".to_owned(),
        machine_uid: Some(hex(rng, 32)),
        hostname: format!(
            "{}-{}-{:03}",
            rng.pick(HOST_PREFIXES),
            rng.pick(HOST_WORDS),
            i % 1000
        ),
        os: os.to_owned(),
        os_version: rng.pick(versions).to_owned(),
        agent_version: rng.pick(VERSIONS).to_owned(),
        external_ip: Some(format!(
            "{}.{}.{}.{}",
            [203, 198, 100, 73, 24][rng.below(5)],
            rng.below(256),
            rng.below(256),
            1 + rng.below(254)
        )),
        status: if rng.chance(2) {
            MachineStatus::Pending
        } else {
            MachineStatus::Active
        },
        company: rng.chance(90).then_some(company),
        site: rng.chance(80).then(|| rng.pick(CITIES).to_owned()),
        department: rng.chance(60).then(|| rng.pick(DEPTS).to_owned()),
        device_type: rng.chance(70).then(|| rng.pick(TYPES).to_owned()),
        tags: (0..rng.below(4))
            .map(|_| rng.pick(TAGS).to_owned())
            .collect(),
        last_seen: Some(1_700_000_000_000),
        created_at: 1_690_000_000_000 + i as i64,
        ..NewMachine::default()
    };
    (m, inventory)
}

/// A random substring (on char boundaries) of `s`, `min..=max` characters long.
fn substring(rng: &mut Rng, s: &str, min: usize, max: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= min {
        return s.to_owned();
    }
    let len = (min + rng.below(max - min + 1)).min(chars.len());
    let start = rng.below(chars.len() - len + 1);
    chars[start..start + len].iter().collect()
}

fn quote(v: &str) -> String {
    if v.contains(' ') {
        format!("\"{v}\"")
    } else {
        v.to_owned()
    }
}

/// An attribute value of a generated machine, for bare terms that hit.
fn some_value(rng: &mut Rng, m: &NewMachine, inv: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    match rng.below(10) {
        0 | 1 => m.hostname.clone(),
        2 => m.os_version.clone(),
        3 => m.company.clone().unwrap_or_else(|| "acme".into()),
        4 => m.site.clone().unwrap_or_else(|| "york".into()),
        5 => s(&inv["logged_on_user"]),
        6 => s(&inv["serial"]),
        7 => s(&inv["cpu_model"]),
        8 => s(&inv["interfaces"][0]["addresses"][0]),
        _ => m.agent_id.clone(),
    }
}

/// One query of the fixed mix and its kind.
fn make_query(rng: &mut Rng, fleet: &[(NewMachine, serde_json::Value)]) -> (&'static str, String) {
    let (m, inv) = &fleet[rng.below(fleet.len())];
    let bare = |rng: &mut Rng| {
        let v = some_value(rng, m, inv);
        quote(&substring(rng, &v, 2, 8))
    };
    let field = |rng: &mut Rng| -> String {
        match rng.below(9) {
            0 => format!("os:{}", quote(&substring(rng, &m.os_version, 2, 8))),
            1 => format!("user:{}", rng.pick(LAST)),
            2 => format!(
                "ip:{}",
                substring(
                    rng,
                    inv["interfaces"][0]["addresses"][0]
                        .as_str()
                        .unwrap_or("10."),
                    3,
                    7
                )
            ),
            3 => format!("site:{}", quote(rng.pick(CITIES))),
            4 => format!("tag:{}", rng.pick(TAGS)),
            5 => format!("company:{}", quote(rng.pick(COMPANY_A))),
            6 => format!("version:{}", rng.pick(VERSIONS)),
            7 => format!("host:{}", rng.pick(HOST_WORDS).to_lowercase()),
            _ => format!("status:{}", rng.pick(&["online", "offline", "pending"])),
        }
    };
    match rng.below(10) {
        0..=2 => {
            let v = bare(rng);
            (
                if v.chars().count() < 3 {
                    "bare<3"
                } else {
                    "bare>=3"
                },
                v,
            )
        }
        3 => {
            let len = 1 + rng.below(5);
            ("bare-miss", format!("zq{}", hex(rng, len)))
        }
        4..=5 => ("field", field(rng)),
        _ => {
            let n = 2 + rng.below(2);
            let terms: Vec<String> = (0..n)
                .map(|_| {
                    if rng.chance(50) {
                        bare(rng)
                    } else {
                        field(rng)
                    }
                })
                .collect();
            ("combo", terms.join(" "))
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

fn summary(label: &str, times: &mut [Duration]) -> String {
    times.sort();
    format!(
        "{label:<10} n={:<4} p50={:>7.2} ms  p95={:>7.2} ms  max={:>7.2} ms",
        times.len(),
        percentile(times, 0.5),
        percentile(times, 0.95),
        times
            .last()
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    )
}

/// `analyze`: a PostgreSQL connection and the statement that refreshes the planner's
/// statistics after the load, as autovacuum does on a live server (without it the
/// planner sees an "empty" table and picks bitmap scans over 10,000 rows).
async fn run(
    name: &str,
    store: &Store,
    fleet: &[(NewMachine, serde_json::Value)],
    analyze: Option<(&mut sqlx::postgres::PgConnection, String)>,
) -> BenchResult {
    let started = Instant::now();
    let concurrency = 8;
    let chunks: Vec<Vec<(NewMachine, serde_json::Value)>> = fleet
        .chunks(fleet.len().div_ceil(concurrency))
        .map(<[_]>::to_vec)
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for (m, inv) in chunk {
                store.create_machine(&m).await?;
                store
                    .set_machine_inventory(&m.agent_id, &inv, 1_700_000_000_000)
                    .await?;
            }
            Ok::<_, guruconnect_store::StoreError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    // A label update on a tenth of the fleet, as an operator would do.
    for (m, _) in fleet.iter().step_by(10) {
        store
            .update_machine_labels(
                &m.agent_id,
                &MachineLabels {
                    department: Some(Some("Operations".into())),
                    ..MachineLabels::default()
                },
                1_700_000_000_001,
                None,
            )
            .await?;
    }
    if let Some((conn, statement)) = analyze {
        sqlx::raw_sql(&statement).execute(conn).await?;
    }
    println!(
        "[{name}] inserted {} machines in {:.1} s",
        store.count_machines("default").await?,
        started.elapsed().as_secs_f64()
    );

    let mut rng = Rng(0x00BE_7C45_EA2C);
    let queries: Vec<(&str, String)> = (0..200).map(|_| make_query(&mut rng, fleet)).collect();
    let online: Vec<String> = fleet
        .iter()
        .filter(|_| rng.chance(30))
        .map(|(m, _)| m.agent_id.clone())
        .collect();
    let search = |q: &str| MachineSearch {
        tenant_id: "default".into(),
        query: q.to_owned(),
        limit: 50,
        offset: 0,
        online_ids: Some(online.clone()),
    };
    // Warm-up: the first 20 queries once (connections, statement caches, page cache).
    for (_, q) in queries.iter().take(20) {
        store.search_machines(&search(q)).await?;
    }
    let mut all = Vec::new();
    let mut by_kind: std::collections::BTreeMap<&str, Vec<Duration>> = Default::default();
    let mut slowest: Vec<(Duration, String, i64)> = Vec::new();
    let mut hits = 0;
    for (kind, q) in &queries {
        let t = Instant::now();
        let (_, total) = store.search_machines(&search(q)).await?;
        let d = t.elapsed();
        hits += usize::from(total > 0);
        all.push(d);
        by_kind.entry(kind).or_default().push(d);
        slowest.push((d, q.clone(), total));
    }
    slowest.sort_by_key(|s| std::cmp::Reverse(s.0));
    println!(
        "[{name}] {} queries, {hits} with matches, limit 50",
        queries.len()
    );
    println!("[{name}] {}", summary("all", &mut all));
    for (kind, times) in &mut by_kind {
        println!("[{name}]   {}", summary(kind, times));
    }
    for (d, q, total) in slowest.iter().take(3) {
        println!(
            "[{name}]   slow: {:.2} ms  total={total:<5} {q:?}",
            d.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> BenchResult {
    let args: Vec<String> = std::env::args().collect();
    let mut pg_url = None;
    let mut n = 10_000;
    let mut keep = false;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--postgres" => {
                pg_url = args.get(i + 1).cloned();
                i += 1;
            }
            "--machines" => {
                n = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .ok_or("--machines N")?;
                i += 1;
            }
            "--keep-schema" => keep = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
        i += 1;
    }
    let mut rng = Rng(0x000F_1EE7_5EED);
    let fleet: Vec<_> = (0..n).map(|i| generate(&mut rng, i)).collect();

    let dir = tempfile::tempdir()?;
    let store = Store::open_sqlite_in(dir.path()).await?;
    run("sqlite", &store, &fleet, None).await?;
    store.close().await;

    if let Some(base) = pg_url {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let schema = format!("bench_{}_{nanos}", std::process::id());
        let mut conn = sqlx::postgres::PgConnection::connect(&base).await?;
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let result = async {
            let store = Store::connect(&url).await?;
            let analyze = format!("VACUUM ANALYZE {schema}.machines");
            run("postgres", &store, &fleet, Some((&mut conn, analyze))).await?;
            store.close().await;
            BenchResult::Ok(())
        }
        .await;
        if keep {
            println!("[postgres] kept schema {schema}");
        } else {
            sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut conn)
                .await?;
        }
        result?;
    }
    Ok(())
}
