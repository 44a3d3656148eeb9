//! Status and inventory (`AgentStatus`) on Windows: host name (`GetComputerNameExW`), OS
//! name, version and build from `HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion`, CPU and
//! memory (`sysinfo`), SMBIOS serial, private addresses with MACs (`GetAdaptersAddresses`),
//! the console session's user (WTS), idle time
//! (`GetLastInputInfo`), time zone (`GetDynamicTimeZoneInformation`) and uptime
//! (`GetTickCount64`). Every probe is best effort: a value that cannot be read is empty.

use std::net::IpAddr;

use crate::platform::net::is_private;

use guruconnect_proto::{AgentStatus, NetworkInterface};
use windows_sys::Win32::System::RemoteDesktop::{
    WTS_CURRENT_SERVER_HANDLE, WTSFreeMemory, WTSGetActiveConsoleSessionId,
    WTSQuerySessionInformationW, WTSUserName,
};
use windows_sys::Win32::System::SystemInformation::{
    ComputerNameDnsHostname, GetComputerNameExW, GetTickCount, GetTickCount64,
};
use windows_sys::Win32::System::Time::{
    DYNAMIC_TIME_ZONE_INFORMATION, GetDynamicTimeZoneInformation,
};
use windows_sys::Win32::System::WindowsProgramming::GetUserNameW;
use windows_sys::Win32::UI::Input::KeyboardAndMouse::{GetLastInputInfo, LASTINPUTINFO};

use super::from_wide;

const CURRENT_VERSION: &str = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion";

/// This machine's DNS host name (the NetBIOS name's DNS form).
pub fn hostname() -> String {
    let mut buf = [0u16; 256];
    let mut len = buf.len() as u32;
    // SAFETY: `buf` holds `len` UTF-16 units.
    let ok = unsafe { GetComputerNameExW(ComputerNameDnsHostname, buf.as_mut_ptr(), &mut len) };
    if ok != 0 {
        return from_wide(&buf[..(len as usize).min(buf.len())]);
    }
    sysinfo::System::host_name()
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default()
}

/// "Windows 10 Pro 22H2 (build 19045)" from the registry values (a missing one is left out).
/// Windows 11 still calls itself "Windows 10" in `ProductName`; builds from 22000 on are
/// named "Windows 11".
pub fn describe_os(product: Option<&str>, display: Option<&str>, build: Option<&str>) -> String {
    // Older releases (and Wine) say "Microsoft Windows 10".
    let mut product = product
        .map(|p| p.trim().trim_start_matches("Microsoft ").trim())
        .filter(|p| !p.is_empty())
        .unwrap_or("Windows")
        .to_owned();
    let build_number = build.and_then(|b| b.trim().parse::<u32>().ok());
    if build_number.is_some_and(|b| b >= 22000) && product.starts_with("Windows 10") {
        product = product.replacen("Windows 10", "Windows 11", 1);
    }
    let mut text = product;
    if let Some(display) = display.map(str::trim).filter(|d| !d.is_empty()) {
        text.push(' ');
        text.push_str(display);
    }
    if let Some(build) = build.map(str::trim).filter(|b| !b.is_empty()) {
        text.push_str(&format!(" (build {build})"));
    }
    text
}

/// The OS description from the registry (what Wine reports under Wine).
pub fn os_version() -> String {
    let value = |name: &str| super::hklm_string(CURRENT_VERSION, name);
    let product = value("ProductName");
    let display = value("DisplayVersion").or_else(|| value("ReleaseId"));
    let build = value("CurrentBuildNumber").or_else(|| value("CurrentBuild"));
    describe_os(product.as_deref(), display.as_deref(), build.as_deref())
}

/// The account this process runs as (`GetUserNameW`).
fn process_user() -> Option<String> {
    let mut buf = [0u16; 257];
    let mut len = buf.len() as u32;
    // SAFETY: `buf` holds `len` UTF-16 units.
    let ok = unsafe { GetUserNameW(buf.as_mut_ptr(), &mut len) };
    (ok != 0).then(|| from_wide(&buf)).filter(|u| !u.is_empty())
}

/// The user of the console session (WTS), e.g. when the agent runs as a service.
fn console_user() -> Option<String> {
    // SAFETY: plain call.
    let session = unsafe { WTSGetActiveConsoleSessionId() };
    if session == u32::MAX {
        return None;
    }
    let mut buffer: *mut u16 = std::ptr::null_mut();
    let mut bytes = 0u32;
    // SAFETY: out pointers for a WTS-allocated string, freed below.
    let ok = unsafe {
        WTSQuerySessionInformationW(
            WTS_CURRENT_SERVER_HANDLE,
            session,
            WTSUserName,
            &mut buffer,
            &mut bytes,
        )
    };
    if ok == 0 || buffer.is_null() {
        return None;
    }
    let units = (bytes as usize) / 2;
    // SAFETY: WTS returned `bytes` bytes of UTF-16 at `buffer`, freed right after the copy.
    let name = unsafe {
        let name = from_wide(std::slice::from_raw_parts(buffer, units));
        WTSFreeMemory(buffer.cast());
        name
    };
    (!name.is_empty()).then_some(name)
}

/// The logged-on (console) user, else the process's user.
pub fn logged_on_user() -> String {
    console_user()
        .or_else(process_user)
        .or_else(|| std::env::var("USERNAME").ok())
        .unwrap_or_default()
}

/// The name the person at the machine chats under: `USERNAME`, else the process's user.
pub fn local_user() -> String {
    std::env::var("USERNAME")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .or_else(process_user)
        .unwrap_or_else(|| "User".to_owned())
}

/// Seconds since the last keyboard or mouse input of this session.
pub fn idle_seconds() -> u64 {
    let mut info = LASTINPUTINFO {
        cbSize: std::mem::size_of::<LASTINPUTINFO>() as u32,
        dwTime: 0,
    };
    // SAFETY: `info` has cbSize set; GetTickCount takes nothing.
    unsafe {
        if GetLastInputInfo(&mut info) == 0 {
            return 0;
        }
        // Both are 32-bit millisecond tick counts; the difference survives a wrap.
        u64::from(GetTickCount().wrapping_sub(info.dwTime)) / 1000
    }
}

/// The Windows time zone key ("W. Europe Standard Time").
pub fn time_zone() -> String {
    let mut info = DYNAMIC_TIME_ZONE_INFORMATION::default();
    // SAFETY: `info` is a valid out struct.
    let result = unsafe { GetDynamicTimeZoneInformation(&mut info) };
    if result == u32::MAX {
        return String::new();
    }
    let key = from_wide(&info.TimeZoneKeyName);
    if key.is_empty() {
        from_wide(&info.StandardName)
    } else {
        key
    }
}

/// `AF_INET` and `AF_INET6` as they appear in a `SOCKADDR`.
const AF_INET: u16 = 2;
const AF_INET6: u16 = 23;

/// The IP address of a raw `SOCKADDR_IN`/`SOCKADDR_IN6`.
pub fn sockaddr_ip(raw: &[u8]) -> Option<IpAddr> {
    let family = u16::from_le_bytes([*raw.first()?, *raw.get(1)?]);
    match family {
        AF_INET => {
            let octets: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
            Some(IpAddr::from(octets))
        }
        AF_INET6 => {
            let octets: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
            Some(IpAddr::from(octets))
        }
        _ => None,
    }
}

/// `aa:bb:cc:dd:ee:ff` (the Linux inventory's format).
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A NUL-terminated UTF-16 string from a Win32 structure.
///
/// # Safety
/// `p` must be null or point at a NUL-terminated UTF-16 string.
unsafe fn pwstr(p: *const u16) -> String {
    if p.is_null() {
        return String::new();
    }
    let mut len = 0usize;
    // SAFETY: per the contract the string is NUL-terminated; bounded for robustness.
    unsafe {
        while len < 1024 && *p.add(len) != 0 {
            len += 1;
        }
        String::from_utf16_lossy(std::slice::from_raw_parts(p, len))
    }
}

/// Adapters with private unicast addresses, from `GetAdaptersAddresses`.
fn interfaces() -> Vec<NetworkInterface> {
    use windows_sys::Win32::Foundation::ERROR_BUFFER_OVERFLOW;
    use windows_sys::Win32::NetworkManagement::IpHelper::{
        GAA_FLAG_SKIP_ANYCAST, GAA_FLAG_SKIP_DNS_SERVER, GAA_FLAG_SKIP_MULTICAST,
        GetAdaptersAddresses, IP_ADAPTER_ADDRESSES_LH,
    };
    let flags = GAA_FLAG_SKIP_ANYCAST | GAA_FLAG_SKIP_MULTICAST | GAA_FLAG_SKIP_DNS_SERVER;
    // u64 elements keep the buffer aligned for the structures written into it.
    let mut buf: Vec<u64> = vec![0; 16 * 1024 / 8];
    let mut status = ERROR_BUFFER_OVERFLOW;
    for _ in 0..4 {
        let mut size = u32::try_from(buf.len() * 8).unwrap_or(u32::MAX);
        // SAFETY: `buf` has `size` writable, suitably aligned bytes.
        status = unsafe {
            GetAdaptersAddresses(
                0, // AF_UNSPEC
                flags,
                std::ptr::null(),
                buf.as_mut_ptr().cast::<IP_ADAPTER_ADDRESSES_LH>(),
                &mut size,
            )
        };
        if status != ERROR_BUFFER_OVERFLOW || size as usize > 4 * 1024 * 1024 {
            break;
        }
        buf = vec![0; (size as usize).div_ceil(8)];
    }
    if status != 0 {
        tracing::debug!(status, "GetAdaptersAddresses failed");
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut adapter = buf.as_ptr().cast::<IP_ADAPTER_ADDRESSES_LH>();
    while !adapter.is_null() {
        // SAFETY: GetAdaptersAddresses filled `buf` with a linked list of adapters whose
        // pointers (names, addresses, next) all point into `buf`, which outlives this loop.
        let a = unsafe { &*adapter };
        let mut addresses = Vec::new();
        let mut unicast = a.FirstUnicastAddress;
        while !unicast.is_null() {
            // SAFETY: as above: a node of the list inside `buf`.
            let u = unsafe { &*unicast };
            let len = usize::try_from(u.Address.iSockaddrLength).unwrap_or(0);
            if !u.Address.lpSockaddr.is_null() && len > 0 {
                // SAFETY: the sockaddr has `iSockaddrLength` bytes inside `buf`.
                let raw =
                    unsafe { std::slice::from_raw_parts(u.Address.lpSockaddr.cast::<u8>(), len) };
                if let Some(ip) = sockaddr_ip(raw).filter(is_private) {
                    addresses.push(ip.to_string());
                }
            }
            unicast = u.Next;
        }
        if !addresses.is_empty() {
            let mac_len = (a.PhysicalAddressLength as usize).min(a.PhysicalAddress.len());
            out.push(NetworkInterface {
                // SAFETY: FriendlyName is a NUL-terminated string inside `buf` (or null).
                name: unsafe { pwstr(a.FriendlyName) },
                mac: format_mac(&a.PhysicalAddress[..mac_len]),
                addresses,
            });
        }
        adapter = a.Next;
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Collects the inventory.
pub fn collect() -> AgentStatus {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    let cpus = system.cpus();
    let ids = super::machine_uid::smbios_ids();
    let serial = if ids.system_serial.is_empty() {
        ids.board_serial
    } else {
        ids.system_serial
    };
    AgentStatus {
        hostname: hostname(),
        os: "windows".to_owned(),
        os_version: os_version(),
        agent_version: crate::version::agent_version().to_owned(),
        cpu_model: cpus
            .first()
            .map(|c| c.brand().trim().to_owned())
            .unwrap_or_default(),
        cpu_count: u32::try_from(cpus.len()).unwrap_or(u32::MAX),
        ram_bytes: system.total_memory(),
        serial,
        interfaces: interfaces(),
        logged_on_user: logged_on_user(),
        idle_seconds: idle_seconds(),
        time_zone: time_zone(),
        // SAFETY: GetTickCount64 takes nothing.
        uptime_seconds: unsafe { GetTickCount64() } / 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_descriptions() {
        assert_eq!(
            describe_os(Some("Windows 10 Pro"), Some("22H2"), Some("19045")),
            "Windows 10 Pro 22H2 (build 19045)"
        );
        assert_eq!(
            describe_os(Some("Windows 10 Pro"), Some("23H2"), Some("22631")),
            "Windows 11 Pro 23H2 (build 22631)"
        );
        assert_eq!(
            describe_os(Some("Windows 7"), None, Some("7601")),
            "Windows 7 (build 7601)"
        );
        assert_eq!(describe_os(None, None, None), "Windows");
        assert_eq!(
            describe_os(Some("Microsoft Windows 10"), None, Some("18362")),
            "Windows 10 (build 18362)"
        );
    }

    #[test]
    fn sockaddrs_and_macs() {
        let v4 = [2u8, 0, 0, 0, 10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(sockaddr_ip(&v4), Some("10.1.2.3".parse().expect("ip")));
        let mut v6 = [0u8; 28];
        v6[0] = 23;
        v6[8] = 0xfd;
        v6[23] = 2;
        assert_eq!(sockaddr_ip(&v6), Some("fd00::2".parse().expect("ip")));
        assert_eq!(sockaddr_ip(&v4[..6]), None);
        assert_eq!(sockaddr_ip(&[1, 0]), None);
        assert_eq!(format_mac(&[0x02, 0xfc, 0, 0, 0, 1]), "02:fc:00:00:00:01");
    }

    #[test]
    fn collects_something() {
        let status = collect();
        assert_eq!(status.os, "windows");
        assert!(
            status.os_version.starts_with("Windows"),
            "{}",
            status.os_version
        );
        assert!(!status.hostname.is_empty());
        assert!(status.cpu_count >= 1);
        assert!(status.ram_bytes > 0);
        assert!(status.uptime_seconds > 0);
        assert!(!status.logged_on_user.is_empty());
        assert!(!local_user().is_empty());
        eprintln!(
            "inventory under test: os_version={:?} cpu={:?}x{} ram={} user={:?} tz={:?} idle={} uptime={} serial={:?} interfaces={:?}",
            status.os_version,
            status.cpu_model,
            status.cpu_count,
            status.ram_bytes,
            status.logged_on_user,
            status.time_zone,
            status.idle_seconds,
            status.uptime_seconds,
            status.serial,
            status.interfaces
        );
    }
}
