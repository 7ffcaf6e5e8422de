//! CDN profiles (DESIGN §5, a public contract): the headers each CDN adds when
//! it pulls from the origin, the header that carries its request id, and its
//! default origin-response timeout. The plan builder replays these headers
//! straight to the origin (the seed's step 3.3), the lab's edge simulator adds
//! them, and the diagnosis bisects over them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A CDN whose pull behaviour vantage knows (stored by its [`name`](Self::name)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CdnProfile {
    /// Tencent Cloud EdgeOne.
    EdgeOne,
    /// Cloudflare.
    Cloudflare,
    /// Any other CDN or reverse proxy.
    Generic,
}

/// An unknown profile name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CDN profile {0:?}: expected edgeone, cloudflare or generic")]
pub struct UnknownProfile(pub String);

impl CdnProfile {
    /// Every profile.
    pub const ALL: [CdnProfile; 3] = [
        CdnProfile::EdgeOne,
        CdnProfile::Cloudflare,
        CdnProfile::Generic,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            CdnProfile::EdgeOne => "edgeone",
            CdnProfile::Cloudflare => "cloudflare",
            CdnProfile::Generic => "generic",
        }
    }

    /// How long the edge waits for the origin's answer before giving up
    /// (EdgeOne 524 after 15 s, Cloudflare after 100 s).
    pub fn edge_timeout(self) -> Duration {
        match self {
            CdnProfile::EdgeOne => Duration::from_secs(15),
            CdnProfile::Cloudflare => Duration::from_secs(100),
            CdnProfile::Generic => Duration::from_secs(60),
        }
    }

    /// The response header that carries the edge's request id.
    pub fn request_id_header(self) -> &'static str {
        match self {
            CdnProfile::EdgeOne => "EO-LOG-UUID",
            CdnProfile::Cloudflare => "CF-Ray",
            CdnProfile::Generic => "X-Request-Id",
        }
    }

    /// The headers the edge adds to a pull for a client at `client_ip`
    /// reaching it over `scheme` (`http`/`https`), with request id `id`.
    pub fn pull_headers(self, client_ip: &str, scheme: &str, id: &str) -> Vec<(String, String)> {
        let pairs: Vec<(&str, String)> = match self {
            CdnProfile::EdgeOne => vec![
                ("EO-Connecting-IP", client_ip.to_string()),
                ("X-Forwarded-For", client_ip.to_string()),
                ("X-Forwarded-Proto", scheme.to_string()),
                ("CDN-Loop", "TencentEdgeOne; loops=1".to_string()),
                ("EO-LOG-UUID", id.to_string()),
            ],
            CdnProfile::Cloudflare => vec![
                ("CF-Connecting-IP", client_ip.to_string()),
                ("X-Forwarded-For", client_ip.to_string()),
                ("X-Forwarded-Proto", scheme.to_string()),
                ("CF-Ray", id.to_string()),
                ("CF-Visitor", format!("{{\"scheme\":\"{scheme}\"}}")),
                ("CDN-Loop", "cloudflare".to_string()),
            ],
            CdnProfile::Generic => vec![
                ("X-Forwarded-For", client_ip.to_string()),
                ("X-Forwarded-Proto", scheme.to_string()),
                ("Via", "1.1 vantage-edge".to_string()),
            ],
        };
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

impl fmt::Display for CdnProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CdnProfile {
    type Err = UnknownProfile;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CdnProfile::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownProfile(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_follow_the_contract() {
        let eo = CdnProfile::EdgeOne.pull_headers("198.51.100.7", "https", "abc");
        let names: Vec<&str> = eo.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "EO-Connecting-IP",
                "X-Forwarded-For",
                "X-Forwarded-Proto",
                "CDN-Loop",
                "EO-LOG-UUID"
            ]
        );
        assert!(eo.contains(&("CDN-Loop".into(), "TencentEdgeOne; loops=1".into())));
        let cf = CdnProfile::Cloudflare.pull_headers("198.51.100.7", "https", "r1");
        let names: Vec<&str> = cf.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "CF-Connecting-IP",
                "X-Forwarded-For",
                "X-Forwarded-Proto",
                "CF-Ray",
                "CF-Visitor",
                "CDN-Loop"
            ]
        );
        let generic = CdnProfile::Generic.pull_headers("1.2.3.4", "http", "x");
        let names: Vec<&str> = generic.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["X-Forwarded-For", "X-Forwarded-Proto", "Via"]);
        assert_eq!(CdnProfile::EdgeOne.edge_timeout(), Duration::from_secs(15));
        assert_eq!(
            CdnProfile::Cloudflare.edge_timeout(),
            Duration::from_secs(100)
        );
        assert_eq!(CdnProfile::Generic.edge_timeout(), Duration::from_secs(60));
        assert_eq!(CdnProfile::EdgeOne.request_id_header(), "EO-LOG-UUID");
        assert_eq!(CdnProfile::Cloudflare.request_id_header(), "CF-Ray");
    }

    #[test]
    fn names_round_trip() {
        for profile in CdnProfile::ALL {
            assert_eq!(profile.name().parse::<CdnProfile>(), Ok(profile));
        }
        assert_eq!("EdgeOne".parse::<CdnProfile>(), Ok(CdnProfile::EdgeOne));
        assert!("akamai".parse::<CdnProfile>().is_err());
    }
}
