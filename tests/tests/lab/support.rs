//! Helpers more than one test module had its own copy of.

use vantage_agent::enroll::EnrollRequest;

/// An Enroll request for an agent named `name`, with no labels.
pub(crate) fn enroll_request(name: &str) -> EnrollRequest {
    EnrollRequest {
        name: name.into(),
        labels: Default::default(),
        role: "agent".into(),
    }
}
