//! Prometheus metrics (`GET /metrics`). Names are part of the contract in docs/api.md.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

/// Why the client API refused a request (`unauthenticated`, `permission_denied`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Which OmniPaxos 0.2.4 workaround acted (`omnipaxos_workarounds.rs`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkaroundLabel {
    pub workaround: String,
}

pub struct Metrics {
    pub registry: Registry,
    /// Client operations handed to consensus (each op of a batch counts).
    pub proposals: Counter,
    /// Log entries decided (observed advancing the decided index).
    pub decided: Counter,
    /// Log entries applied to the state machine.
    pub applied: Counter,
    /// Times the known leader changed.
    pub leader_changes: Counter,
    /// Quorum rounds this replica started as leader to confirm linearizable reads (one serves
    /// every read waiting when it starts).
    pub read_rounds: Counter,
    /// WAL syncs (fsyncs).
    pub fsyncs: Counter<u64, AtomicU64>,
    /// Peer frames dropped (full queue, non-member sender, wrong configuration).
    pub peer_frames_dropped: Counter,
    /// Client requests refused before reaching consensus.
    pub requests_refused: Counter,
    pub decided_idx: Gauge,
    pub applied_idx: Gauge,
    pub compacted_idx: Gauge,
    /// 1 while this replica is catching up (not applying, not answering).
    pub catching_up: Gauge,
    /// 1 while writes are refused for lack of free space.
    pub nospace: Gauge,
    /// Membership changes this replica went through.
    pub reconfigurations: Counter,
    /// Checkpoint (state transfer) bytes received.
    pub checkpoint_bytes_received: Counter,
    /// Checkpoints received, verified and installed.
    pub checkpoints_installed: Counter,
    /// Interrupted checkpoint transfers resumed where they stopped.
    pub checkpoints_resumed: Counter,
    /// The transfer being received: bytes and KV keys written, the whole state's (keys
    /// exact, bytes the sender's estimate), bytes per second, seconds left (-1: unknown or
    /// none). All 0 when no transfer runs.
    pub transfer_bytes: Gauge,
    pub transfer_bytes_total: Gauge,
    pub transfer_keys: Gauge,
    pub transfer_keys_total: Gauge,
    pub transfer_rate: Gauge,
    pub transfer_eta_seconds: Gauge,
    /// The consensus loop's longest iteration so far, in microseconds (a loop that pauses
    /// takes no part in consensus meanwhile).
    pub loop_longest_iteration_us: Gauge,
    /// Consensus loop iteration durations, seconds.
    pub loop_iteration_seconds: Histogram,
    /// Times the apply cursor fell below the compacted index (catch-up started).
    pub catchups: Counter,
    /// Decided entries fetched from peers while catching up.
    pub fetched_entries: Counter,
    /// Times each OmniPaxos 0.2.4 workaround acted: `stale_own_ballot`, `stopsign_stall`,
    /// `stopsign_resync` (a re-sync corrected or dropped).
    pub workarounds: Family<WorkaroundLabel, Counter>,
    /// The store revision applied here.
    pub revision: Gauge,
    /// The oldest revision the change history holds (a watch from below is `compacted`).
    pub history_first_revision: Gauge,
    /// Watch streams open (the watch hub counts them).
    pub watchers: Gauge,
    /// Leases that exist (as applied here).
    pub leases: Gauge,
    /// Leases the leader expired (expiry entries proposed).
    pub lease_expiries: Counter,
    /// Client requests refused by authentication or roles, by reason.
    pub auth_denied: Family<ReasonLabel, Counter>,
    /// Request latency by op (put, delete, txn, get_linearizable, get_local), seconds.
    pub request_seconds: Family<OpLabel, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("omnikv"),
            proposals: Counter::default(),
            decided: Counter::default(),
            applied: Counter::default(),
            leader_changes: Counter::default(),
            read_rounds: Counter::default(),
            fsyncs: Counter::default(),
            peer_frames_dropped: Counter::default(),
            requests_refused: Counter::default(),
            decided_idx: Gauge::default(),
            applied_idx: Gauge::default(),
            compacted_idx: Gauge::default(),
            catching_up: Gauge::default(),
            nospace: Gauge::default(),
            reconfigurations: Counter::default(),
            checkpoint_bytes_received: Counter::default(),
            checkpoints_installed: Counter::default(),
            checkpoints_resumed: Counter::default(),
            transfer_bytes: Gauge::default(),
            transfer_bytes_total: Gauge::default(),
            transfer_keys: Gauge::default(),
            transfer_keys_total: Gauge::default(),
            transfer_rate: Gauge::default(),
            transfer_eta_seconds: Gauge::default(),
            loop_longest_iteration_us: Gauge::default(),
            loop_iteration_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            catchups: Counter::default(),
            fetched_entries: Counter::default(),
            workarounds: Family::default(),
            revision: Gauge::default(),
            history_first_revision: Gauge::default(),
            watchers: Gauge::default(),
            leases: Gauge::default(),
            lease_expiries: Counter::default(),
            auth_denied: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            }),
        };
        m.registry.register(
            "proposals",
            "Client operations handed to consensus",
            m.proposals.clone(),
        );
        m.registry
            .register("decided_entries", "Log entries decided", m.decided.clone());
        m.registry.register(
            "applied_entries",
            "Log entries applied to the state machine",
            m.applied.clone(),
        );
        m.registry.register(
            "leader_changes",
            "Times the known leader changed",
            m.leader_changes.clone(),
        );
        m.registry.register(
            "read_rounds",
            "Quorum rounds started to confirm linearizable reads",
            m.read_rounds.clone(),
        );
        m.registry
            .register("fsyncs", "WAL syncs performed", m.fsyncs.clone());
        m.registry.register(
            "peer_frames_dropped",
            "Peer frames dropped",
            m.peer_frames_dropped.clone(),
        );
        m.registry.register(
            "requests_refused",
            "Client requests refused before reaching consensus",
            m.requests_refused.clone(),
        );
        m.registry.register(
            "decided_index",
            "Decided index of the current configuration",
            m.decided_idx.clone(),
        );
        m.registry.register(
            "applied_index",
            "Applied index of the current configuration",
            m.applied_idx.clone(),
        );
        m.registry.register(
            "compacted_index",
            "Compacted index of the current configuration",
            m.compacted_idx.clone(),
        );
        m.registry
            .register("catching_up", "1 while catching up", m.catching_up.clone());
        m.registry.register(
            "nospace",
            "1 while writes are refused for lack of free space (KVD_MIN_FREE_BYTES)",
            m.nospace.clone(),
        );
        m.registry.register(
            "reconfigurations",
            "Membership changes this replica went through",
            m.reconfigurations.clone(),
        );
        m.registry.register(
            "checkpoint_bytes_received",
            "State-transfer bytes received",
            m.checkpoint_bytes_received.clone(),
        );
        m.registry.register(
            "checkpoints_installed",
            "Checkpoints received, verified and installed",
            m.checkpoints_installed.clone(),
        );
        m.registry.register(
            "checkpoints_resumed",
            "Interrupted checkpoint transfers resumed where they stopped",
            m.checkpoints_resumed.clone(),
        );
        for (name, help, g) in [
            (
                "transfer_bytes",
                "State transfer being received: bytes written",
                &m.transfer_bytes,
            ),
            (
                "transfer_bytes_total",
                "State transfer being received: the sender's estimate of the state's bytes",
                &m.transfer_bytes_total,
            ),
            (
                "transfer_keys",
                "State transfer being received: keys written",
                &m.transfer_keys,
            ),
            (
                "transfer_keys_total",
                "State transfer being received: keys in the state",
                &m.transfer_keys_total,
            ),
            (
                "transfer_rate_bytes_per_second",
                "State transfer being received: bytes per second",
                &m.transfer_rate,
            ),
            (
                "transfer_eta_seconds",
                "State transfer being received: seconds left (-1 unknown)",
                &m.transfer_eta_seconds,
            ),
            (
                "loop_longest_iteration_microseconds",
                "The consensus loop's longest iteration since start",
                &m.loop_longest_iteration_us,
            ),
        ] {
            m.registry.register(name, help, g.clone());
        }
        m.registry.register(
            "loop_iteration_seconds",
            "Consensus loop iteration durations",
            m.loop_iteration_seconds.clone(),
        );
        m.transfer_eta_seconds.set(-1);
        m.registry.register(
            "catchups",
            "Times the apply cursor fell below the compacted index",
            m.catchups.clone(),
        );
        m.registry.register(
            "fetched_entries",
            "Decided entries fetched from peers while catching up",
            m.fetched_entries.clone(),
        );
        m.registry.register(
            "omnipaxos_workarounds",
            "Times each OmniPaxos 0.2.4 workaround acted",
            m.workarounds.clone(),
        );
        m.registry
            .register("revision", "Store revision applied", m.revision.clone());
        m.registry.register(
            "history_first_revision",
            "Oldest revision kept in the change history",
            m.history_first_revision.clone(),
        );
        m.registry
            .register("watchers", "Watch streams open", m.watchers.clone());
        m.registry
            .register("leases", "Leases that exist", m.leases.clone());
        m.registry.register(
            "lease_expiries",
            "Lease expiries proposed by this replica as leader",
            m.lease_expiries.clone(),
        );
        m.registry.register(
            "auth_denied",
            "Client requests refused by authentication (401) or roles (403)",
            m.auth_denied.clone(),
        );
        m.registry.register(
            "request_duration_seconds",
            "Client request latency",
            m.request_seconds.clone(),
        );
        m
    }

    /// Counts one action of the OmniPaxos workaround `name`.
    pub fn workaround(&self, name: &str) {
        self.workarounds
            .get_or_create(&WorkaroundLabel {
                workaround: name.to_string(),
            })
            .inc();
    }

    /// How often the OmniPaxos workaround `name` acted.
    pub fn workaround_count(&self, name: &str) -> u64 {
        self.workarounds
            .get_or_create(&WorkaroundLabel {
                workaround: name.to_string(),
            })
            .get()
    }

    /// Counts one request refused for `reason`.
    pub fn count_denied(&self, reason: &str) {
        self.auth_denied
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn observe(&self, op: &str, seconds: f64) {
        self.request_seconds
            .get_or_create(&OpLabel { op: op.to_string() })
            .observe(seconds);
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).expect("render metrics");
        s
    }
}
