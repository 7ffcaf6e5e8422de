//! A running campaign's event feed: a broadcast for the live events, plus
//! what was said so far, so a watcher that subscribes after the plans went
//! out (`vantage diagnose` calls WatchCampaign right after StartCampaign)
//! still learns each region's expected requests and deadline. The history
//! keeps every event but progress, of which it keeps each region's latest
//! (progress counts are cumulative), so it stays a few events per region.

use std::sync::Mutex;

use tokio::sync::broadcast;

use super::CampaignEvent;

/// Live events a slow watcher may fall behind by before it skips some.
const LIVE_BUFFER: usize = 1024;

/// The feed of one campaign.
#[derive(Debug)]
pub(crate) struct CampaignFeed {
    live: broadcast::Sender<CampaignEvent>,
    said: Mutex<Vec<CampaignEvent>>,
}

impl CampaignFeed {
    /// A feed, and a receiver that sees every event from the first.
    pub(crate) fn new() -> (CampaignFeed, broadcast::Receiver<CampaignEvent>) {
        let (live, first) = broadcast::channel(LIVE_BUFFER);
        (
            CampaignFeed {
                live,
                said: Mutex::new(Vec::new()),
            },
            first,
        )
    }

    /// Says `event` to every watcher and keeps it for later ones.
    pub(crate) fn send(&self, event: CampaignEvent) {
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        if let CampaignEvent::Progress { region, .. } = &event {
            said.retain(|e| !matches!(e, CampaignEvent::Progress { region: r, .. } if r == region));
        }
        said.push(event.clone());
        // Under the lock: a watcher subscribing now gets this event either
        // in its history or live, never both, never neither.
        let _ = self.live.send(event);
    }

    /// What was said so far, and a receiver for what comes next.
    pub(crate) fn watch(&self) -> (Vec<CampaignEvent>, broadcast::Receiver<CampaignEvent>) {
        let said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        (said.clone(), self.live.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vantage_proto::domain::Outcome;

    fn sent(region: &str) -> CampaignEvent {
        CampaignEvent::PlanSent {
            region: region.into(),
            agent: format!("{region}-1"),
            expected: 10,
            deadline: Duration::from_secs(16),
        }
    }

    fn progress(region: &str, done: u64) -> CampaignEvent {
        CampaignEvent::Progress {
            region: region.into(),
            done,
            outcomes: vec![(Outcome::Ok, done)],
        }
    }

    #[test]
    fn a_late_watcher_gets_the_plans_and_each_regions_latest_progress_then_live_events() {
        let (feed, _first) = CampaignFeed::new();
        feed.send(sent("eu"));
        feed.send(sent("us"));
        feed.send(progress("eu", 3));
        feed.send(progress("us", 1));
        feed.send(progress("eu", 7));
        let (said, mut live) = feed.watch();
        assert_eq!(
            said,
            [sent("eu"), sent("us"), progress("us", 1), progress("eu", 7)]
        );
        feed.send(CampaignEvent::RegionDone {
            region: "eu".into(),
        });
        assert_eq!(
            live.try_recv().unwrap(),
            CampaignEvent::RegionDone {
                region: "eu".into()
            }
        );
        assert!(live.try_recv().is_err(), "nothing said twice");
    }
}
