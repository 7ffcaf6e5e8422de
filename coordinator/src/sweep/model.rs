//! What a sweep is (DESIGN §6a): a campaign target (every target flag of
//! `diagnose`), the regions it runs in, its interval, its `--confirm` and
//! its webhooks; and what one run found, as history keeps it.
//!
//! A definition is checked here once, whoever made it (`sweep create`,
//! `sweep apply`, the store on start-up), so the same input fails the same
//! way everywhere.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vantage_proto::domain::check_name;

use super::alert::{DEFAULT_CONFIRM, MAX_CONFIRM};
use super::schedule::{BadInterval, Schedule, DEFAULT_EVERY};
use crate::campaign::plan::{CampaignTarget, TargetRequest};
use crate::diagnosis::{FindingCode, FindingKind};

/// Most webhooks one sweep may post to.
pub const MAX_WEBHOOKS: usize = 16;
/// Longest webhook URL accepted.
pub const MAX_WEBHOOK_URL: usize = 2048;
/// Default `--quorum`: an origin finding from one region is evidence.
pub const DEFAULT_QUORUM: u32 = 1;
/// Largest `--quorum`.
pub const MAX_QUORUM: u32 = 256;

/// A sweep's definition, as stored and as `sweep apply` compares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepDefinition {
    /// What each run probes.
    pub target: TargetRequest,
    /// Regions each run uses (empty: every region with a connected agent).
    pub regions: Vec<String>,
    /// The interval, whole milliseconds.
    pub every_ms: u64,
    /// Consecutive runs that open (and resolve) an alert.
    pub confirm: u32,
    /// Where alert events are POSTed.
    pub webhooks: Vec<String>,
    /// Regions an `origin_*` finding must hold in before a run counts as
    /// evidence for its alert (carrier and edge findings are regional by
    /// nature and count from one region). Definitions stored before the
    /// option existed read as the default.
    #[serde(default = "default_quorum")]
    pub quorum: u32,
}

fn default_quorum() -> u32 {
    DEFAULT_QUORUM
}

/// A definition that cannot be a sweep's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SweepError {
    /// The name is empty, too long or has other characters than
    /// letters, digits, `.`, `_` and `-`.
    #[error("sweep name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The interval is out of range.
    #[error(transparent)]
    Interval(#[from] BadInterval),
    /// `--confirm` is out of range.
    #[error("--confirm {0}: must be between 1 and {MAX_CONFIRM}")]
    Confirm(u32),
    /// `--quorum` is out of range, or more than the regions listed.
    #[error("--quorum {quorum}: {reason}")]
    Quorum {
        /// The quorum asked for.
        quorum: u32,
        /// Why it cannot be.
        reason: String,
    },
    /// The target does not check out (`diagnose` would refuse it too).
    #[error("{0}")]
    Target(String),
    /// A region name is not a name.
    #[error("region {0:?} is not a valid region name")]
    Region(String),
    /// A webhook URL is not an `http` or `https` URL.
    #[error("webhook {url:?}: {reason}")]
    Webhook {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
}

impl SweepDefinition {
    /// A definition for `target` with every other setting at its default
    /// (every 5 minutes, all regions, `--confirm 2`, no webhooks).
    pub fn new(target: TargetRequest) -> Self {
        SweepDefinition {
            target,
            regions: Vec::new(),
            every_ms: u64::try_from(DEFAULT_EVERY.as_millis()).unwrap_or(300_000),
            confirm: DEFAULT_CONFIRM,
            webhooks: Vec::new(),
            quorum: DEFAULT_QUORUM,
        }
    }

    /// The interval.
    pub fn every(&self) -> Duration {
        Duration::from_millis(self.every_ms)
    }

    /// Checks the definition of sweep `name`; the answer is its schedule.
    pub fn check(&self, name: &str) -> Result<Schedule, SweepError> {
        check_name("sweep name", name).map_err(|e| SweepError::BadName {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        let schedule = Schedule::new(name, self.every())?;
        if !(1..=MAX_CONFIRM).contains(&self.confirm) {
            return Err(SweepError::Confirm(self.confirm));
        }
        if !(1..=MAX_QUORUM).contains(&self.quorum) {
            return Err(SweepError::Quorum {
                quorum: self.quorum,
                reason: format!("must be between 1 and {MAX_QUORUM}"),
            });
        }
        let listed: BTreeSet<&str> = self.regions.iter().map(String::as_str).collect();
        if !listed.is_empty() && !listed.contains("all") && self.quorum as usize > listed.len() {
            return Err(SweepError::Quorum {
                quorum: self.quorum,
                reason: format!(
                    "the sweep lists only {} region{}, so no origin finding could ever alert",
                    listed.len(),
                    if listed.len() == 1 { "" } else { "s" }
                ),
            });
        }
        CampaignTarget::new(&self.target).map_err(|e| SweepError::Target(e.to_string()))?;
        for region in &self.regions {
            if region != "all" && check_name("region", region).is_err() {
                return Err(SweepError::Region(region.clone()));
            }
        }
        if self.webhooks.len() > MAX_WEBHOOKS {
            return Err(SweepError::Webhook {
                url: String::new(),
                reason: format!("at most {MAX_WEBHOOKS} webhooks per sweep"),
            });
        }
        for url in &self.webhooks {
            check_webhook_syntax(url)?;
        }
        Ok(schedule)
    }
}

/// The syntax of a webhook URL: `http` or `https`, a host, bounded length.
/// Whether its address may be reached is the egress policy's question,
/// asked by the coordinator that will POST to it.
fn check_webhook_syntax(url: &str) -> Result<(), SweepError> {
    let bad = |reason: &str| SweepError::Webhook {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if url.len() > MAX_WEBHOOK_URL {
        return Err(bad("longer than 2048 bytes"));
    }
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    Ok(())
}

/// One finding of a run, as history and alerts key it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFinding {
    /// Its code.
    pub code: FindingCode,
    /// Its kind, if its code has kinds.
    pub kind: Option<FindingKind>,
    /// Where it held.
    pub regions: BTreeSet<String>,
    /// Its summary sentence.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
}

impl RunFinding {
    /// The alert key's code and kind names (`""` for no kind).
    pub fn key(&self) -> (&'static str, &'static str) {
        (
            self.code.as_str(),
            self.kind.map_or("", FindingKind::as_str),
        )
    }

    /// Whether the finding is evidence for its alert under `quorum`: an
    /// origin finding seen from fewer regions may be one vantage point's
    /// bad path rather than the origin, so it counts only from `quorum`
    /// regions up.
    pub fn meets(&self, quorum: u32) -> bool {
        !self.code.is_origin() || self.regions.len() >= quorum as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> SweepDefinition {
        SweepDefinition::new(TargetRequest::new(
            "http://shop.example/",
            &["203.0.113.10"],
        ))
    }

    #[test]
    fn the_defaults_are_the_contract() {
        let d = good();
        assert_eq!(d.every(), Duration::from_secs(300));
        assert_eq!(d.confirm, 2);
        assert!(d.regions.is_empty() && d.webhooks.is_empty());
        assert!(d.check("checkout-eu").is_ok());
    }

    #[test]
    fn bad_definitions_are_refused_with_one_line() {
        let mut d = good();
        assert!(matches!(
            d.check("no spaces"),
            Err(SweepError::BadName { .. })
        ));
        d.every_ms = 500;
        assert_eq!(
            d.check("a").unwrap_err().to_string(),
            "--every 500ms: must be between 1s and 7days"
        );
        let mut d = good();
        d.confirm = 0;
        assert!(matches!(d.check("a"), Err(SweepError::Confirm(0))));
        let mut d = good();
        d.webhooks = vec!["ftp://hooks.example/x".into()];
        let err = d.check("a").unwrap_err().to_string();
        assert!(err.contains("http:// or https://"), "{err}");
        let mut d = good();
        d.webhooks = vec!["https:///nohost".into()];
        assert!(d.check("a").is_err());
        let mut d = good();
        d.regions = vec!["eu west".into()];
        assert!(matches!(d.check("a"), Err(SweepError::Region(_))));
        let mut d = good();
        d.target.origins.clear();
        assert!(matches!(d.check("a"), Err(SweepError::Target(_))));
    }

    #[test]
    fn a_definition_round_trips_through_its_stored_json() {
        let mut d = good();
        d.regions = vec!["eu".into(), "us".into()];
        d.webhooks = vec!["https://hooks.slack.com/services/T/B/X".into()];
        d.target.edge_timeout = Some(Duration::from_secs(3));
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<SweepDefinition>(&json).unwrap(), d);
    }

    #[test]
    fn quorum_is_checked_against_its_range_and_the_listed_regions() {
        let mut d = good();
        d.quorum = 0;
        assert!(matches!(
            d.check("s"),
            Err(SweepError::Quorum { quorum: 0, .. })
        ));
        d.quorum = 3;
        assert!(
            d.check("s").is_ok(),
            "all regions: any quorum up to the bound"
        );
        d.regions = vec!["eu".into(), "us".into()];
        let err = d.check("s").unwrap_err().to_string();
        assert!(
            err.starts_with("--quorum 3: the sweep lists only 2 regions"),
            "{err}"
        );
        d.quorum = 2;
        assert!(d.check("s").is_ok());
        d.quorum = MAX_QUORUM + 1;
        d.regions.clear();
        assert!(d.check("s").is_err());
    }

    #[test]
    fn only_origin_findings_wait_for_the_quorum() {
        let finding = |code, regions: &[&str]| RunFinding {
            code,
            kind: None,
            regions: regions.iter().map(|r| r.to_string()).collect(),
            summary: String::new(),
        };
        assert!(finding(FindingCode::OriginDown, &["eu"]).meets(1));
        assert!(!finding(FindingCode::OriginDown, &["eu"]).meets(2));
        assert!(finding(FindingCode::OriginDown, &["eu", "us"]).meets(2));
        assert!(finding(FindingCode::CarrierInterference, &["eu"]).meets(2));
        assert!(finding(FindingCode::EdgeFault, &["eu"]).meets(3));
    }

    #[test]
    fn a_definition_stored_before_the_quorum_reads_as_the_default() {
        let mut value = serde_json::to_value(good()).unwrap();
        value.as_object_mut().unwrap().remove("quorum");
        let d: SweepDefinition = serde_json::from_value(value).unwrap();
        assert_eq!(d.quorum, DEFAULT_QUORUM);
    }
}
