//! The network room: what stands between an agent and the origin — the CDN
//! edge simulator ([`edge`]), a carrier's middleboxes and resolvers
//! ([`carrier`]), and the network-namespace lab where iptables applies
//! packet-level faults ([`netns`]). It never imports scenarios or benches.

pub mod carrier;
pub mod edge;
pub mod netns;
