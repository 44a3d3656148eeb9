//! Status and inventory (`AgentStatus`): host name, OS from `/etc/os-release`, CPU and
//! memory, serial, private addresses with MACs, logged-on user, idle time, time zone and
//! uptime. Every probe is best effort: a value that cannot be read is left empty.

use crate::platform::net::is_private;
use std::path::Path;

use guruconnect_proto::{AgentStatus, NetworkInterface};

/// `NAME`/`VERSION_ID`/`PRETTY_NAME` style fields of an os-release file.
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').trim_matches('\'').to_owned())
    })
}

/// OS description: `PRETTY_NAME` (or `NAME VERSION_ID`) from `/etc/os-release`.
pub fn os_version() -> String {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    os_release_field(&text, "PRETTY_NAME")
        .or_else(|| {
            let name = os_release_field(&text, "NAME")?;
            Some(match os_release_field(&text, "VERSION_ID") {
                Some(v) => format!("{name} {v}"),
                None => name,
            })
        })
        .unwrap_or_else(|| "Linux".to_owned())
}

/// This machine's host name.
pub fn hostname() -> String {
    sysinfo::System::host_name()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default()
}

fn time_zone() -> String {
    if let Ok(tz) = std::fs::read_to_string("/etc/timezone") {
        let tz = tz.trim();
        if !tz.is_empty() {
            return tz.to_owned();
        }
    }
    if let Ok(target) = std::fs::read_link("/etc/localtime") {
        let target = target.to_string_lossy();
        if let Some((_, zone)) = target.split_once("zoneinfo/") {
            return zone.to_owned();
        }
    }
    std::env::var("TZ").unwrap_or_else(|_| "UTC".to_owned())
}

fn logged_on_user() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_default()
}

fn serial() -> String {
    ["product_serial", "board_serial", "chassis_serial"]
        .iter()
        .find_map(|f| {
            std::fs::read_to_string(Path::new("/sys/class/dmi/id").join(f))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_default()
}

fn interfaces() -> Vec<NetworkInterface> {
    let networks = sysinfo::Networks::new_with_refreshed_list();
    let mut out: Vec<NetworkInterface> = networks
        .iter()
        .filter_map(|(name, data)| {
            let addresses: Vec<String> = data
                .ip_networks()
                .iter()
                .filter(|n| is_private(&n.addr))
                .map(|n| n.addr.to_string())
                .collect();
            (!addresses.is_empty()).then(|| NetworkInterface {
                name: name.clone(),
                mac: data.mac_address().to_string(),
                addresses,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Collects the inventory; `idle_seconds` comes from the desktop session.
pub fn collect(idle_seconds: u64) -> AgentStatus {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    let cpus = system.cpus();
    AgentStatus {
        hostname: hostname(),
        os: "linux".to_owned(),
        os_version: os_version(),
        agent_version: crate::version::agent_version().to_owned(),
        cpu_model: cpus
            .first()
            .map(|c| c.brand().trim().to_owned())
            .unwrap_or_default(),
        cpu_count: u32::try_from(cpus.len()).unwrap_or(u32::MAX),
        ram_bytes: system.total_memory(),
        serial: serial(),
        interfaces: interfaces(),
        logged_on_user: logged_on_user(),
        idle_seconds,
        time_zone: time_zone(),
        uptime_seconds: sysinfo::System::uptime(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_os_release() {
        let text = "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(os_release_field(text, "VERSION_ID").as_deref(), Some("12"));
        assert_eq!(
            os_release_field(text, "PRETTY_NAME").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(os_release_field(text, "ID"), None);
    }

    #[test]
    fn collects_something() {
        let status = collect(3);
        assert_eq!(status.os, "linux");
        assert!(status.cpu_count >= 1);
        assert!(status.ram_bytes > 0);
        assert_eq!(status.idle_seconds, 3);
    }
}
