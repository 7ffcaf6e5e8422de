//! The special-purpose address ranges (IANA's IPv4 and IPv6 registries:
//! loopback, private networks, link-local, documentation, ...), and the
//! one classification every egress guard uses: the agent's SSRF policy
//! for the targets it probes, the coordinator's for the webhooks it calls.
//!
//! [`special_purpose_range`] names the range an address falls in. IPv6
//! forms that embed an IPv4 address are judged by the embedded address
//! (normalised before deciding): IPv4-mapped (`::ffff:a.b.c.d`),
//! IPv4-translated (`::ffff:0:a.b.c.d`, RFC 2765), IPv4-compatible
//! (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`). So
//! `::ffff:127.0.0.1` and `::ffff:0:7f00:1` are as loopback as `127.0.0.1`. The
//! deprecated IPv4-compatible form is special even when the embedded address
//! is public: no legitimate target uses it.
//!
//! It owns the tables and the lookup only, no policy (what to refuse and
//! which flag allows it stay with the caller); it imports nothing but `std`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 special-purpose range, with the names it gets when it turns up
/// embedded in an IPv6 address (the names must be `'static`, hence spelled
/// out here rather than formatted on demand).
struct V4Range {
    net: u32,
    len: u8,
    name: &'static str,
    mapped: &'static str,
    translated: &'static str,
    compatible: &'static str,
    nat64: &'static str,
    six_to_four: &'static str,
}

macro_rules! v4 {
    ([$a:literal, $b:literal, $c:literal, $d:literal] / $len:literal, $name:literal) => {
        V4Range {
            net: u32::from_be_bytes([$a, $b, $c, $d]),
            len: $len,
            name: $name,
            mapped: concat!("IPv4-mapped ", $name),
            translated: concat!("IPv4-translated ", $name),
            compatible: concat!("IPv4-compatible ", $name),
            nat64: concat!("NAT64 of ", $name),
            six_to_four: concat!("6to4 of ", $name),
        }
    };
}

/// First match wins, so narrower ranges come before the ranges containing
/// them.
const V4_RANGES: &[V4Range] = &[
    v4!([0, 0, 0, 0] / 32, "unspecified"),
    v4!([0, 0, 0, 0] / 8, "this network (0.0.0.0/8)"),
    v4!([10, 0, 0, 0] / 8, "private (RFC 1918)"),
    v4!([100, 64, 0, 0] / 10, "carrier-grade NAT (RFC 6598)"),
    v4!([127, 0, 0, 0] / 8, "loopback"),
    v4!([169, 254, 0, 0] / 16, "link-local"),
    v4!([172, 16, 0, 0] / 12, "private (RFC 1918)"),
    v4!(
        [192, 0, 0, 0] / 24,
        "IETF protocol assignments (192.0.0.0/24)"
    ),
    v4!([192, 0, 2, 0] / 24, "documentation (192.0.2.0/24)"),
    v4!([192, 88, 99, 0] / 24, "6to4 relay anycast (deprecated)"),
    v4!([192, 168, 0, 0] / 16, "private (RFC 1918)"),
    v4!([198, 18, 0, 0] / 15, "benchmarking (RFC 2544)"),
    v4!([198, 51, 100, 0] / 24, "documentation (198.51.100.0/24)"),
    v4!([203, 0, 113, 0] / 24, "documentation (203.0.113.0/24)"),
    v4!([224, 0, 0, 0] / 4, "multicast"),
    v4!([255, 255, 255, 255] / 32, "broadcast"),
    v4!([240, 0, 0, 0] / 4, "reserved (240.0.0.0/4)"),
];

/// How an IPv6 range is to be judged.
enum V6Kind {
    /// Always special, under this name.
    Special(&'static str),
    /// Judged by the IPv4 address in bits `from..from + 32`; `public` names
    /// the range when that address is public and the form itself is still
    /// refused (`None`: a public embedded address is public).
    Embeds {
        from: u32,
        how: Embedding,
        public: Option<&'static str>,
    },
}

#[derive(Clone, Copy)]
enum Embedding {
    Mapped,
    Translated,
    Compatible,
    Nat64,
    SixToFour,
}

struct V6Range {
    net: u128,
    len: u8,
    kind: V6Kind,
}

const fn v6(segments: [u16; 8], len: u8, kind: V6Kind) -> V6Range {
    let mut net: u128 = 0;
    let mut i = 0;
    while i < 8 {
        net = (net << 16) | segments[i] as u128;
        i += 1;
    }
    V6Range { net, len, kind }
}

const fn special(name: &'static str) -> V6Kind {
    V6Kind::Special(name)
}

/// First match wins, so narrower ranges come before the ranges containing
/// them.
const V6_RANGES: &[V6Range] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, special("unspecified")),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, special("loopback")),
    v6(
        [0, 0, 0, 0, 0, 0xffff, 0, 0],
        96,
        V6Kind::Embeds {
            from: 96,
            how: Embedding::Mapped,
            public: None,
        },
    ),
    v6(
        [0, 0, 0, 0, 0xffff, 0, 0, 0],
        96,
        V6Kind::Embeds {
            from: 96,
            how: Embedding::Translated,
            public: None,
        },
    ),
    v6(
        [0, 0, 0, 0, 0, 0, 0, 0],
        96,
        V6Kind::Embeds {
            from: 96,
            how: Embedding::Compatible,
            public: Some("IPv4-compatible (deprecated, ::/96)"),
        },
    ),
    v6(
        [0x64, 0xff9b, 0, 0, 0, 0, 0, 0],
        96,
        V6Kind::Embeds {
            from: 96,
            how: Embedding::Nat64,
            public: None,
        },
    ),
    v6(
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        special("local-use NAT64 (64:ff9b:1::/48)"),
    ),
    v6(
        [0x100, 0, 0, 0, 0, 0, 0, 0],
        64,
        special("discard-only (100::/64)"),
    ),
    v6(
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        32,
        special("Teredo (2001::/32)"),
    ),
    v6(
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        special("IETF protocol assignments (2001::/23)"),
    ),
    v6(
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        special("documentation (2001:db8::/32)"),
    ),
    v6(
        [0x2002, 0, 0, 0, 0, 0, 0, 0],
        16,
        V6Kind::Embeds {
            from: 16,
            how: Embedding::SixToFour,
            public: None,
        },
    ),
    v6(
        [0x3fff, 0, 0, 0, 0, 0, 0, 0],
        20,
        special("documentation (3fff::/20)"),
    ),
    v6(
        [0xfc00, 0, 0, 0, 0, 0, 0, 0],
        7,
        special("unique local (fc00::/7)"),
    ),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, special("link-local")),
    v6(
        [0xfec0, 0, 0, 0, 0, 0, 0, 0],
        10,
        special("site-local (deprecated, fec0::/10)"),
    ),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, special("multicast")),
];

/// Whether the top `len` bits of `addr` and `net` agree; `len` is clamped to
/// the width of the type.
fn prefix_matches_u32(addr: u32, net: u32, len: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0);
    addr & mask == net & mask
}

fn prefix_matches_u128(addr: u128, net: u128, len: u8) -> bool {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0);
    addr & mask == net & mask
}

fn v4_range(ip: Ipv4Addr) -> Option<&'static V4Range> {
    let bits = u32::from(ip);
    V4_RANGES
        .iter()
        .find(|r| prefix_matches_u32(bits, r.net, r.len))
}

fn v6_range_name(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    let range = V6_RANGES
        .iter()
        .find(|r| prefix_matches_u128(bits, r.net, r.len))?;
    match range.kind {
        V6Kind::Special(name) => Some(name),
        V6Kind::Embeds { from, how, public } => {
            // Truncation is the point: keep the 32 bits starting at `from`.
            let embedded = Ipv4Addr::from((bits >> (96 - from)) as u32);
            let Some(r) = v4_range(embedded) else {
                return public;
            };
            Some(match how {
                Embedding::Mapped => r.mapped,
                Embedding::Translated => r.translated,
                Embedding::Compatible => r.compatible,
                Embedding::Nat64 => r.nat64,
                Embedding::SixToFour => r.six_to_four,
            })
        }
    }
}

/// The name of the special-purpose range `ip` falls in, or `None` for an
/// ordinary public address.
pub fn special_purpose_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_range(v4).map(|r| r.name),
        IpAddr::V6(v6) => v6_range_name(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> Option<&'static str> {
        special_purpose_range(s.parse().unwrap())
    }

    #[track_caller]
    fn assert_special(s: &str, want: &str) {
        assert_eq!(range(s), Some(want), "{s}");
    }

    #[track_caller]
    fn assert_public(s: &str) {
        assert_eq!(range(s), None, "{s}");
    }

    #[test]
    fn ipv4_ranges() {
        let cases = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network (0.0.0.0/8)"),
            ("0.255.255.255", "this network (0.0.0.0/8)"),
            ("10.0.0.0", "private (RFC 1918)"),
            ("10.255.255.255", "private (RFC 1918)"),
            ("100.64.0.0", "carrier-grade NAT (RFC 6598)"),
            ("100.127.255.255", "carrier-grade NAT (RFC 6598)"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "link-local"),
            ("172.16.0.0", "private (RFC 1918)"),
            ("172.31.255.255", "private (RFC 1918)"),
            ("192.0.0.8", "IETF protocol assignments (192.0.0.0/24)"),
            ("192.0.2.1", "documentation (192.0.2.0/24)"),
            ("192.88.99.1", "6to4 relay anycast (deprecated)"),
            ("192.168.1.1", "private (RFC 1918)"),
            ("198.18.0.0", "benchmarking (RFC 2544)"),
            ("198.19.255.255", "benchmarking (RFC 2544)"),
            ("198.51.100.7", "documentation (198.51.100.0/24)"),
            ("203.0.113.9", "documentation (203.0.113.0/24)"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.255", "multicast"),
            ("240.0.0.0", "reserved (240.0.0.0/4)"),
            ("255.255.255.254", "reserved (240.0.0.0/4)"),
            ("255.255.255.255", "broadcast"),
        ];
        for (addr, want) in cases {
            assert_special(addr, want);
        }
    }

    #[test]
    fn ipv4_boundaries() {
        for addr in [
            "1.0.0.0",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.255",
            "192.0.3.0",
            "192.88.98.255",
            "192.88.100.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.99.255",
            "198.51.101.0",
            "203.0.112.255",
            "203.0.114.0",
            "223.255.255.255",
        ] {
            assert_public(addr);
        }
        assert_special("100.64.0.0", "carrier-grade NAT (RFC 6598)");
    }

    #[test]
    fn ipv6_ranges() {
        let cases = [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::2", "IPv4-compatible this network (0.0.0.0/8)"),
            ("::8.8.8.8", "IPv4-compatible (deprecated, ::/96)"),
            ("64:ff9b:1::1", "local-use NAT64 (64:ff9b:1::/48)"),
            ("64:ff9b:1:ffff::", "local-use NAT64 (64:ff9b:1::/48)"),
            ("100::", "discard-only (100::/64)"),
            ("100::ffff:ffff:ffff:ffff", "discard-only (100::/64)"),
            ("2001::1", "Teredo (2001::/32)"),
            ("2001:0:ffff::1", "Teredo (2001::/32)"),
            ("2001:1::1", "IETF protocol assignments (2001::/23)"),
            ("2001:1ff:ffff::", "IETF protocol assignments (2001::/23)"),
            ("2001:db8::1", "documentation (2001:db8::/32)"),
            ("2001:db8:ffff::1", "documentation (2001:db8::/32)"),
            ("3fff::1", "documentation (3fff::/20)"),
            ("fc00::1", "unique local (fc00::/7)"),
            ("fdff:ffff::1", "unique local (fc00::/7)"),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("fec0::1", "site-local (deprecated, fec0::/10)"),
            ("feff::1", "site-local (deprecated, fec0::/10)"),
            ("ff02::1", "multicast"),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "multicast"),
        ];
        for (addr, want) in cases {
            assert_special(addr, want);
        }
    }

    #[test]
    fn ipv6_boundaries() {
        for addr in [
            "100:0:0:1::",
            "2001:200::1",
            "2001:db7:ffff::1",
            "2001:db9::1",
            "2003::1",
            "3ffe:ffff::1",
            "4000::1",
            "fbff:ffff::1",
            "64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert_public(addr);
        }
    }

    #[test]
    fn six_to_four_is_judged_by_the_embedded_address() {
        // 2002:AABB:CCDD:: embeds AA.BB.CC.DD.
        assert_special("2002:7f00:1::", "6to4 of loopback");
        assert_special("2002:c0a8:101::1", "6to4 of private (RFC 1918)");
        assert_special("2002:a9fe:a9fe:1::5", "6to4 of link-local");
        assert_public("2002:808:808::1");
        assert_public("2002:808:808:ffff:ffff:ffff:ffff:ffff");
    }

    #[test]
    fn prefix_helpers_handle_edge_lengths() {
        assert!(prefix_matches_u32(0xdead_beef, 0, 0));
        assert!(prefix_matches_u32(0xdead_beef, 0xdead_beef, 32));
        assert!(!prefix_matches_u32(0xdead_beef, 0xdead_beee, 32));
        assert!(prefix_matches_u32(0xdead_beef, 0xdead_beef, 200));
        assert!(prefix_matches_u128(u128::MAX, 0, 0));
        assert!(prefix_matches_u128(u128::MAX, u128::MAX, 128));
        assert!(!prefix_matches_u128(u128::MAX, u128::MAX - 1, 128));
    }

    #[test]
    fn every_table_entry_is_reachable() {
        // A range shadowed by earlier, wider ones would never be reported;
        // its first or its last address must reach it.
        for (i, r) in V4_RANGES.iter().enumerate() {
            let last = r.net | u32::MAX.checked_shr(u32::from(r.len)).unwrap_or(0);
            let hit = |a: u32| {
                V4_RANGES
                    .iter()
                    .position(|f| prefix_matches_u32(a, f.net, f.len))
            };
            assert!(
                hit(r.net) == Some(i) || hit(last) == Some(i),
                "v4 entry {i}"
            );
        }
        for (i, r) in V6_RANGES.iter().enumerate() {
            let last = r.net | u128::MAX.checked_shr(u32::from(r.len)).unwrap_or(0);
            let hit = |a: u128| {
                V6_RANGES
                    .iter()
                    .position(|f| prefix_matches_u128(a, f.net, f.len))
            };
            assert!(
                hit(r.net) == Some(i) || hit(last) == Some(i),
                "v6 entry {i}"
            );
        }
    }
}
