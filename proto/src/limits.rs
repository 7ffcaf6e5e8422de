//! The limits a plan must respect, in one place, because both sides apply
//! them: the coordinator refuses a plan or campaign that exceeds them and
//! counts the requests a plan will make with the same caps the agent's
//! runner applies, so "expected requests" means the same on both sides.

use crate::pb;

/// Most probes in one plan (the coordinator refuses more; the agent too).
pub const MAX_PLAN_PROBES: usize = 100_000;
/// Largest burst per attempt the agent honours for a coordinator's plan,
/// and the largest a campaign may ask for.
pub const MAX_BURST: u32 = 200;
/// Most attempts per probe the agent honours for a coordinator's plan.
pub const MAX_ATTEMPTS: u32 = 100;
/// Most attempts per probe a campaign may ask for: inside what the agent
/// honours, so a campaign's plans are never capped behind its back.
pub const MAX_CAMPAIGN_ATTEMPTS: u32 = 20;

const _: () = assert!(MAX_CAMPAIGN_ATTEMPTS <= MAX_ATTEMPTS);

/// The caps applied to every probe spec of a plan. [`PlanCaps::default`] is
/// what an agent applies to a coordinator's plans; the agent's own `probe`
/// command raises the burst, since the operator asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanCaps {
    /// Largest burst honoured per attempt.
    pub max_burst: u32,
    /// Most attempts honoured per probe.
    pub max_attempts: u32,
    /// Most probes accepted in one plan.
    pub max_probes: usize,
}

impl Default for PlanCaps {
    fn default() -> Self {
        PlanCaps {
            max_burst: MAX_BURST,
            max_attempts: MAX_ATTEMPTS,
            max_probes: MAX_PLAN_PROBES,
        }
    }
}

impl PlanCaps {
    /// The attempts `spec` runs: 0 means 1, and never more than the cap.
    pub fn attempts(&self, spec: &pb::ProbeSpec) -> u32 {
        spec.attempts.clamp(1, self.max_attempts.max(1))
    }

    /// The requests per attempt of `spec`: 0 means 1, and never more than the cap.
    pub fn burst(&self, spec: &pb::ProbeSpec) -> u32 {
        spec.burst.clamp(1, self.max_burst.max(1))
    }

    /// The requests `spec` expands to once capped: attempts × burst.
    pub fn requests(&self, spec: &pb::ProbeSpec) -> u64 {
        u64::from(self.attempts(spec)) * u64::from(self.burst(spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(attempts: u32, burst: u32) -> pb::ProbeSpec {
        pb::ProbeSpec {
            attempts,
            burst,
            ..Default::default()
        }
    }

    #[test]
    fn requests_fill_in_zeroes_and_apply_the_caps() {
        let caps = PlanCaps::default();
        assert_eq!(caps.requests(&spec(0, 0)), 1);
        assert_eq!(caps.requests(&spec(3, 10)), 30);
        assert_eq!(
            caps.requests(&spec(1_000, 1_000)),
            u64::from(MAX_ATTEMPTS) * u64::from(MAX_BURST)
        );
        let zero = PlanCaps {
            max_burst: 0,
            max_attempts: 0,
            max_probes: 0,
        };
        assert_eq!(zero.requests(&spec(5, 5)), 1);
    }
}
