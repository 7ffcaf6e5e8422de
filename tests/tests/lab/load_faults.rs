//! Faults under load (issue 5, item 5). Each test runs a plan of 12,000
//! requests across three regional agents — real `vantage-agent` processes,
//! each probing from its own loopback source address — against the lab
//! origin, and injects one fault while at least 10,000 of them are in flight:
//!
//! 1. `kill -9` of one agent: its plan-agent becomes `lost`, the plan still
//!    ends in bounded time, and every result of the other agents is stored;
//! 2. `kill -9` of the coordinator, restarted on the same data dir and port:
//!    the agents reconnect by themselves and every result is stored once;
//! 3. a hung coordinator while an agent with a small `--spool-max` keeps
//!    producing: that agent refuses a new plan with a recorded reason and
//!    loses nothing.
//!
//! Every assertion is an exact count: the plan status, the origin's
//! per-client counters, and the stored rows read back from SQLite.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use vantage::store::Store as _;

use vantage::client::ControlClient;
use vantage_lab::lab::{spawn_agent_process, wait_agent_connected, CoordinatorProcess};
use vantage_lab::origin::Origin;
use vantage_lab::process::{poll_until, ChildProcess};
use vantage_proto::pb;

/// Probe specs in the load plan; each runs `ATTEMPTS` × `BURST` requests.
const SPECS: u32 = 50;
const ATTEMPTS: u32 = 2;
const BURST: u32 = 40;
/// Requests one agent runs for the load plan.
const PER_AGENT: u64 = (SPECS * ATTEMPTS * BURST) as u64;
/// Requests of the load plan across the three agents.
const TOTAL: u64 = PER_AGENT * 3;
/// Each agent's `--max-concurrency`: its requests open at once. Held
/// requests keep their slot, so a stalled agent has exactly this many open.
const CONCURRENCY: u64 = 256;
/// Requests answered before the origin holds the rest (tests 2 and 3): the
/// fault then strikes with `TOTAL - FIRST_WAVE` = 10,500 requests in flight.
const FIRST_WAVE: u64 = 1_500;
/// Requests of the small follow-up plans, per agent (3 specs × 5).
const SMALL: u64 = 15;
/// Bound on every wait for the load to make progress (debug build, 2 cores).
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How often conditions in another process (plan status) are polled.
const POLL: Duration = Duration::from_millis(50);

/// One region of the lab: agent name, region, and the source address its
/// probes and coordinator link use.
struct Region {
    name: &'static str,
    region: &'static str,
    ip: &'static str,
}

const REGIONS: [Region; 3] = [
    Region {
        name: "fra-1",
        region: "eu",
        ip: "127.0.1.1",
    },
    Region {
        name: "iad-1",
        region: "us",
        ip: "127.0.2.1",
    },
    Region {
        name: "bom-1",
        region: "ap",
        ip: "127.0.3.1",
    },
];

struct AgentProcess {
    name: &'static str,
    ip: IpAddr,
    process: ChildProcess,
    state: tempfile::TempDir,
}

/// A coordinator process and one agent process per region.
struct LoadLab {
    coordinator: CoordinatorProcess,
    agents: Vec<AgentProcess>,
    data: tempfile::TempDir,
}

impl LoadLab {
    /// Starts the coordinator with `heartbeat`, then the three agents, each
    /// with its rate and concurrency caps raised so that 4,000 requests to one
    /// target finish in seconds (the default 200/s would take 20 s), and the
    /// first one with `--spool-max first_spool` if given.
    async fn start(heartbeat: Duration, first_spool: Option<&str>) -> LoadLab {
        let data = tempfile::tempdir().unwrap();
        let coordinator =
            CoordinatorProcess::start(data.path(), "127.0.0.1:0".parse().unwrap(), heartbeat)
                .await
                .unwrap();
        let concurrency = CONCURRENCY.to_string();
        let mut agents = Vec::new();
        for (index, region) in REGIONS.iter().enumerate() {
            let token = coordinator.create_token(region.region).await.unwrap();
            let state = tempfile::tempdir().unwrap();
            let mut args = vec![
                "--token",
                &token,
                "--name",
                region.name,
                "--bind-ip",
                region.ip,
                "--max-rate",
                "100000",
                "--max-concurrency",
                &concurrency,
            ];
            if let (0, Some(max)) = (index, first_spool) {
                args.extend(["--spool-max", max]);
            }
            let mut process = spawn_agent_process(state.path(), &args).unwrap();
            wait_agent_connected(&mut process).await.unwrap();
            agents.push(AgentProcess {
                name: region.name,
                ip: region.ip.parse().unwrap(),
                process,
                state,
            });
        }
        LoadLab {
            coordinator,
            agents,
            data,
        }
    }

    fn names(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.name.to_string()).collect()
    }

    fn control(&self) -> ControlClient {
        self.coordinator.control().unwrap()
    }

    async fn run_plan(&self, agents: Vec<String>, probes: Vec<pb::ProbeSpec>) -> String {
        self.control()
            .run_plan(pb::RunPlanRequest { agents, probes })
            .await
            .unwrap()
            .into_inner()
            .plan_id
    }

    /// Polls the plan's status until `done` holds for it, bounded.
    async fn wait_status(
        &self,
        plan_id: &str,
        timeout: Duration,
        done: impl Fn(&pb::GetPlanStatusResponse) -> bool,
    ) -> pb::GetPlanStatusResponse {
        let control = self.control();
        let done = &done;
        poll_until(timeout, POLL, || {
            let mut control = control.clone();
            let request = pb::GetPlanStatusRequest {
                plan_id: plan_id.to_string(),
            };
            async move {
                let status = control.get_plan_status(request).await.ok()?.into_inner();
                done(&status).then_some(status)
            }
        })
        .await
        .unwrap_or_else(|e| panic!("plan {plan_id}: {e}"))
    }

    /// Waits until every agent's spool holds no batch: all acknowledged.
    async fn wait_spools_drained(&self) {
        for agent in &self.agents {
            let spool = agent.state.path().join("spool");
            poll_until(LOAD_TIMEOUT, POLL, || {
                let batches = spool_batches(&spool).len();
                async move { (batches == 0).then_some(()) }
            })
            .await
            .unwrap_or_else(|e| panic!("{}'s spool never drained: {e}", agent.name));
        }
    }
}

/// `count` probe specs of `attempts` × `burst` requests each, to the origin.
fn probes(origin: &Origin, tag: &str, count: u32, attempts: u32, burst: u32) -> Vec<pb::ProbeSpec> {
    (0..count)
        .map(|i| pb::ProbeSpec {
            probe_id: format!("{tag}{i}"),
            url: origin.url(&format!("/{tag}/{i}")),
            route: pb::Route::Direct as i32,
            variant: "baseline".into(),
            attempts,
            burst,
            ..Default::default()
        })
        .collect()
}

/// The load plan: `PER_AGENT` requests for every agent it is sent to.
fn load_probes(origin: &Origin) -> Vec<pb::ProbeSpec> {
    probes(origin, "load", SPECS, ATTEMPTS, BURST)
}

/// A small plan: `SMALL` requests per agent.
fn small_probes(origin: &Origin, tag: &str) -> Vec<pb::ProbeSpec> {
    probes(origin, tag, 3, 1, 5)
}

fn row<'a>(status: &'a pb::GetPlanStatusResponse, agent: &str) -> &'a pb::PlanAgentStatus {
    status
        .agents
        .iter()
        .find(|a| a.agent == agent)
        .unwrap_or_else(|| panic!("no row for {agent} in {status:?}"))
}

fn ended(status: &pb::GetPlanStatusResponse) -> bool {
    status.agents.iter().all(|a| a.state != "sent")
}

/// Sizes of the batch files in a spool directory.
fn spool_batches(dir: &Path) -> Vec<u64> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "batch"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .collect()
        })
        .unwrap_or_default()
}

/// A plan's stored results, read back from the coordinator's SQLite file
/// once the coordinator has exited: (rows, distinct result ids, distinct
/// request slots). Three equal numbers mean that no request was stored
/// twice, not even under a second result id.
async fn stored_rows(data_dir: &Path, plan_id: &str) -> (usize, usize, usize) {
    let store =
        vantage::store::SqliteStore::open(&data_dir.join(vantage::server::DB_FILE)).unwrap();
    let records = store.results_for_plan(plan_id).await.unwrap();
    let decoded = vantage::ingest::decode_results(&records).unwrap();
    let rows: Vec<(String, _)> = records
        .into_iter()
        .map(|r| r.agent_id)
        .zip(decoded)
        .collect();
    let ids: HashSet<&str> = rows.iter().map(|(_, r)| r.result_id.as_str()).collect();
    let slots: HashSet<(&str, &str, u32, u32)> = rows
        .iter()
        .map(|(agent, r)| {
            (
                agent.as_str(),
                r.probe_id.as_str(),
                r.attempt,
                r.burst_index,
            )
        })
        .collect();
    (rows.len(), ids.len(), slots.len())
}

/// Stops the coordinator and asserts that exactly `want` results of the plan
/// are stored, each once; returns (rows, ids, slots) for the figures.
async fn stop_and_count_stored(
    lab: &mut LoadLab,
    plan_id: &str,
    want: usize,
) -> (usize, usize, usize) {
    lab.coordinator
        .process
        .terminate(Duration::from_secs(30))
        .await
        .unwrap();
    let counts = stored_rows(lab.data.path(), plan_id).await;
    assert_eq!(counts, (want, want, want), "no duplicate");
    counts
}

/// Sends `signal` to a child process.
fn signal(process: &ChildProcess, signal: rustix::process::Signal) {
    let pid = process
        .pid()
        .and_then(|pid| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?))
        .expect("the process is running");
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Waits until `want` requests (from `client`, or from anyone) have arrived
/// at the origin — its answered ones plus every request slot held open —
/// and checks that no more did: a held request keeps its agent's slot, so
/// no agent has more than its `--max-concurrency` open.
async fn wait_slots_held(origin: &Origin, client: Option<IpAddr>, want: u64) {
    let arrived = || client.map_or_else(|| origin.arrived(), |ip| origin.arrived_from(ip));
    poll_until(LOAD_TIMEOUT, POLL, || {
        let now = arrived();
        async move { (now >= want).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{} of {want} requests arrived: {e}", arrived()));
    assert_eq!(arrived(), want, "{client:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_agent_under_load_marks_it_lost_and_keeps_every_other_result() {
    /// Requests of each agent answered (and stored) before the origin holds
    /// the rest of its part: 12,000 - 3 × 500 = 10,500 stay in flight.
    const FIRST_EACH: u64 = 500;
    let started = Instant::now();
    let mut origin = Origin::builder();
    for region in &REGIONS {
        origin = origin.hold_client_after(region.ip.parse().unwrap(), FIRST_EACH);
    }
    let origin = origin.spawn().await.unwrap();
    // A 1 s heartbeat: a killed agent's connection closes at once, so the
    // heartbeat only matters for the survivors, which must not be dropped
    // as silent while the machine is busy.
    let mut lab = LoadLab::start(Duration::from_secs(1), None).await;
    let plan_id = lab.run_plan(lab.names(), load_probes(&origin)).await;

    // Every agent's first wave is answered; then all its request slots are
    // held open at the origin, so its part of the plan is in flight (and
    // the rest of it queued behind) when the victim dies.
    for agent in &lab.agents {
        origin
            .wait_answered_from(agent.ip, FIRST_EACH, LOAD_TIMEOUT)
            .await
            .unwrap();
        wait_slots_held(&origin, Some(agent.ip), FIRST_EACH + CONCURRENCY).await;
    }
    let (victim, victim_ip) = (lab.agents[2].name, lab.agents[2].ip);
    // The victim's first wave is stored: what it had produced is safe.
    let before = lab
        .wait_status(&plan_id, LOAD_TIMEOUT, |s| {
            row(s, victim).results_stored >= FIRST_EACH
        })
        .await;
    assert_eq!(row(&before, victim).results_stored, FIRST_EACH);
    let in_flight_at_kill = TOTAL - origin.answered();
    assert_eq!(in_flight_at_kill, TOTAL - 3 * FIRST_EACH);
    assert!(in_flight_at_kill >= 10_000);

    lab.agents[2].process.kill9().await.unwrap();
    let killed = Instant::now();
    // The survivors run on; the victim's held requests lead nowhere, their
    // connections died with it.
    origin.release();
    // The coordinator sees the victim's connection close and marks its part
    // lost; the plan ends (no plan-agent left waiting in "sent") once the
    // survivors have finished theirs — bounded either way.
    lab.wait_status(&plan_id, LOAD_TIMEOUT, |s| row(s, victim).state != "sent")
        .await;
    let lost_after = killed.elapsed();
    let status = lab.wait_status(&plan_id, LOAD_TIMEOUT, ended).await;
    let ended_after = killed.elapsed();

    let lost = row(&status, victim);
    assert_eq!(lost.state, "lost", "{status:?}");
    assert!(lost.reason.contains("disconnected"), "{}", lost.reason);
    assert_eq!(lost.results_stored, FIRST_EACH);
    for survivor in &REGIONS[..2] {
        let r = row(&status, survivor.name);
        assert_eq!(r.state, "finished", "{r:?}");
        assert_eq!(
            (r.results_expected, r.results_stored),
            (PER_AGENT, PER_AGENT)
        );
    }
    assert_eq!(status.results_stored, 2 * PER_AGENT + FIRST_EACH);
    // Each survivor's requests ran once; nothing more reached the origin
    // from the victim after it died.
    for survivor in &lab.agents[..2] {
        assert_eq!(origin.arrived_from(survivor.ip), PER_AGENT);
        assert_eq!(origin.answered_from(survivor.ip), PER_AGENT);
    }
    assert_eq!(origin.arrived_from(victim_ip), FIRST_EACH + CONCURRENCY);

    let (rows, ids, slots) = stop_and_count_stored(
        &mut lab,
        &plan_id,
        usize::try_from(2 * PER_AGENT + FIRST_EACH).unwrap(),
    )
    .await;
    eprintln!(
        "agent kill: {in_flight_at_kill} requests in flight at the kill; victim lost {lost_after:?} and plan ended \
         {ended_after:?} after it ({:?}); \
         stored {} ({PER_AGENT} + {PER_AGENT} survivors, {FIRST_EACH} victim); {rows} rows, {ids} ids, {slots} slots; \
         whole test {:?}",
        lost.reason,
        status.results_stored,
        started.elapsed()
    );
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_coordinator_under_load_stores_every_result_exactly_once() {
    let started = Instant::now();
    let origin = Origin::builder()
        .hold_after(FIRST_WAVE)
        .spawn()
        .await
        .unwrap();
    let mut lab = LoadLab::start(Duration::from_secs(1), None).await;
    let plan_id = lab.run_plan(lab.names(), load_probes(&origin)).await;

    // The coordinator dies the moment the first wave is answered: its last
    // results are still on their way (in the agents' batches, on the wire,
    // or stored but not yet acknowledged), and the rest of the plan is in
    // flight behind the origin's hold.
    origin
        .wait_answered(FIRST_WAVE, LOAD_TIMEOUT)
        .await
        .unwrap();
    lab.coordinator.kill9().await.unwrap();
    let in_flight_at_kill = TOTAL - origin.answered();
    assert_eq!(in_flight_at_kill, TOTAL - FIRST_WAVE);
    assert!(in_flight_at_kill >= 10_000);

    // With the coordinator dead the agents run the plan to its end: every
    // result they produce from now on can only go to their spools.
    origin.release();
    origin.wait_answered(TOTAL, LOAD_TIMEOUT).await.unwrap();
    for agent in &mut lab.agents {
        agent
            .process
            .wait_for_line(LOAD_TIMEOUT, |_, line| line.contains("session lost"))
            .await
            .unwrap();
    }

    let restarted = lab.coordinator.restart().await.unwrap();
    let restarted_at = Instant::now();
    let dead = std::mem::replace(&mut lab.coordinator, restarted);
    drop(dead);
    let status = lab
        .wait_status(&plan_id, LOAD_TIMEOUT, |s| {
            s.results_stored >= TOTAL && s.agents.iter().all(|a| a.state == "finished")
        })
        .await;
    let replayed_in = restarted_at.elapsed();
    assert_eq!(status.results_stored, TOTAL, "every result stored once");
    for agent in &lab.agents {
        let r = row(&status, agent.name);
        assert_eq!(
            (r.results_expected, r.results_stored),
            (PER_AGENT, PER_AGENT)
        );
        assert_eq!(
            origin.arrived_from(agent.ip),
            PER_AGENT,
            "no request ran twice"
        );
    }
    assert_eq!(origin.arrived(), TOTAL);
    // Each agent reconnected by itself: a second "session established".
    let sessions: Vec<usize> = lab
        .agents
        .iter()
        .map(|agent| {
            let output = agent.process.output();
            let sessions = output.matches("session established").count();
            assert!(sessions >= 2, "{}: {output}", agent.name);
            sessions
        })
        .collect();
    lab.wait_spools_drained().await;

    let (rows, ids, slots) =
        stop_and_count_stored(&mut lab, &plan_id, usize::try_from(TOTAL).unwrap()).await;
    eprintln!(
        "coordinator kill: {in_flight_at_kill} requests in flight at the kill; \
         produced {} (origin answered), stored {}; {rows} rows, {ids} ids, {slots} slots, {} duplicates; \
         sessions per agent {sessions:?}; replayed in {replayed_in:?}; whole test {:?}",
        origin.answered(),
        status.results_stored,
        rows - slots,
        started.elapsed()
    );
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_under_a_hung_coordinator_refuses_new_plans_and_loses_nothing() {
    /// The smallest spool bound the agent accepts.
    const SPOOL_MAX: u64 = 64 * 1024;
    /// Batches an agent has sent but not yet seen acknowledged, at most
    /// (the agent session's `WINDOW`).
    const WINDOW: usize = 8;
    let started = Instant::now();
    let origin = Origin::builder()
        .hold_after(FIRST_WAVE)
        .spawn()
        .await
        .unwrap();
    // A 20 s heartbeat: the coordinator is frozen for a while below, and
    // neither side may give up on the session (three silent heartbeats) in
    // that time — the point is an agent whose link stays up but whose
    // results are not acknowledged.
    let mut lab = LoadLab::start(Duration::from_secs(20), Some(&SPOOL_MAX.to_string())).await;
    let full = &lab.agents[0];
    let plan_id = lab.run_plan(lab.names(), load_probes(&origin)).await;
    origin
        .wait_answered(FIRST_WAVE, LOAD_TIMEOUT)
        .await
        .unwrap();
    wait_slots_held(&origin, None, FIRST_WAVE + 3 * CONCURRENCY).await;
    lab.wait_status(&plan_id, LOAD_TIMEOUT, |s| s.results_stored > 0)
        .await;

    // The coordinator hangs (SIGSTOP): connections stay open, nothing is
    // acknowledged. The agents run the other 10,500 requests of the plan
    // and their results pile up in their spools, far past the small bound.
    signal(&lab.coordinator.process, rustix::process::Signal::STOP);
    let in_flight_at_hang = TOTAL - origin.answered();
    assert_eq!(in_flight_at_hang, TOTAL - FIRST_WAVE);
    origin.release();
    origin.wait_answered(TOTAL, LOAD_TIMEOUT).await.unwrap();
    let spool = full.state.path().join("spool");
    // Even if the coordinator acknowledged every batch in the agent's window
    // before the next plan reaches it, the spool would still be full.
    let piled = poll_until(LOAD_TIMEOUT, POLL, || {
        let mut sizes = spool_batches(&spool);
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let beyond_window: u64 = sizes.iter().skip(WINDOW).sum();
        let total: u64 = sizes.iter().sum();
        async move { (beyond_window >= SPOOL_MAX).then_some((sizes.len(), total)) }
    })
    .await
    .unwrap();

    // Freeze the full agent too, then let the coordinator resume and send
    // it a plan: the agent reads at most its window's Acks before the plan,
    // so the plan meets a full spool — deterministically, not by racing the
    // replay.
    signal(&full.process, rustix::process::Signal::STOP);
    signal(&lab.coordinator.process, rustix::process::Signal::CONT);
    let refused_plan = lab
        .run_plan(lab.names(), small_probes(&origin, "next"))
        .await;
    signal(&full.process, rustix::process::Signal::CONT);

    let refused = lab.wait_status(&refused_plan, LOAD_TIMEOUT, ended).await;
    let r = row(&refused, full.name);
    assert_eq!(r.state, "rejected", "{refused:?}");
    assert!(r.reason.contains("spool full"), "{}", r.reason);
    assert_eq!(r.results_stored, 0);
    for other in &lab.agents[1..] {
        let accepted = row(&refused, other.name);
        assert_eq!(
            (accepted.state.as_str(), accepted.results_stored),
            ("finished", SMALL),
            "an agent with room in its spool takes the same plan"
        );
    }
    assert_eq!(
        origin.arrived_from(full.ip),
        PER_AGENT,
        "the refused plan sent nothing"
    );

    // Nothing is lost: every result of the load plan is stored, once.
    let status = lab
        .wait_status(&plan_id, LOAD_TIMEOUT, |s| {
            s.results_stored >= TOTAL && s.agents.iter().all(|a| a.state == "finished")
        })
        .await;
    assert_eq!(status.results_stored, TOTAL);
    for agent in &lab.agents {
        assert_eq!(row(&status, agent.name).results_stored, PER_AGENT);
    }
    lab.wait_spools_drained().await;
    // Once drained, the agent takes plans again.
    let accepted = lab
        .run_plan(vec![full.name.to_string()], small_probes(&origin, "after"))
        .await;
    let after = lab.wait_status(&accepted, LOAD_TIMEOUT, ended).await;
    assert_eq!(
        (row(&after, full.name).state.as_str(), after.results_stored),
        ("finished", SMALL)
    );
    assert_eq!(origin.arrived(), TOTAL + 3 * SMALL);
    let refusals = full.process.output().matches("refusing plan").count();
    assert_eq!(refusals, 1, "{}", full.process.output());

    let (rows, ids, slots) =
        stop_and_count_stored(&mut lab, &plan_id, usize::try_from(TOTAL).unwrap()).await;
    eprintln!(
        "full spool: {in_flight_at_hang} requests in flight at the hang; {} batches / {} bytes spooled against a {SPOOL_MAX}-byte bound; refused: {:?}; \
         stored {} of {TOTAL}; {rows} rows, {ids} ids, {slots} slots; whole test {:?}",
        piled.0,
        piled.1,
        r.reason,
        status.results_stored,
        started.elapsed()
    );
    origin.stop().await;
}
