//! Address rules shared by every platform's inventory.

use std::net::IpAddr;

/// Whether an address is private to the site (RFC 1918, CGNAT, link-local, IPv6 ULA and
/// link-local): the addresses an inventory reports; public ones the server sees itself.
pub fn is_private(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || v4.is_link_local() || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses() {
        for a in [
            "10.1.2.3",
            "192.168.0.9",
            "172.16.5.5",
            "100.64.1.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_private(&a.parse().expect("ip")), "{a}");
        }
        for a in ["8.8.8.8", "127.0.0.1", "2001:db8::1", "::1"] {
            assert!(!is_private(&a.parse().expect("ip")), "{a}");
        }
    }
}
