//! The scenarios room: whole diagnoses end to end. [`scenario`] is the
//! tests' builder (real `vantage serve`, regional agents, witness, origin,
//! edge; then `vantage diagnose --json`); [`demo`] is the catalogue that
//! `vantage-lab demo` runs and prints. Both assemble the harness, fixture
//! and network rooms; nothing below imports this room.

pub mod demo;
pub mod scenario;

/// One lab region: the short name tests use, the name the demo shows, its
/// agent's name there, and the loopback source address that stands for it
/// (each region's agent binds its own, so a carrier rule can single it out).
#[derive(Debug, Clone, Copy)]
pub struct LabRegion {
    /// The tests' region name, e.g. `eu`.
    pub name: &'static str,
    /// The demo's region name, e.g. `eu-central`.
    pub demo_name: &'static str,
    /// The demo's agent name, e.g. `fra-1`.
    pub demo_agent: &'static str,
    /// The region's source address, 127.0.N.1.
    pub source: [u8; 4],
}

/// Every lab region, in the order scenarios take them.
pub const LAB_REGIONS: [LabRegion; 4] = [
    LabRegion {
        name: "eu",
        demo_name: "eu-central",
        demo_agent: "fra-1",
        source: [127, 0, 1, 1],
    },
    LabRegion {
        name: "us",
        demo_name: "us-east",
        demo_agent: "iad-1",
        source: [127, 0, 2, 1],
    },
    LabRegion {
        name: "ap",
        demo_name: "ap-southeast",
        demo_agent: "sin-1",
        source: [127, 0, 3, 1],
    },
    LabRegion {
        name: "sa",
        demo_name: "sa-east",
        demo_agent: "gru-1",
        source: [127, 0, 4, 1],
    },
];
