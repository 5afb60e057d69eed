//! What the flow pipeline and the exporters count, as the agent's
//! Prometheus registry takes it: a trait, so this crate needs no registry
//! and the agent's metrics module (which reads the flows' names and
//! records) depends on this crate, not the other way round.
use crate::names::FlowNames;
use crate::store::FlowRecord;

pub trait FlowMetrics: Send + Sync {
    /// One named record, as the reader stores it (Hubble's flow metrics).
    fn observe_record(&self, record: &FlowRecord);
    /// Names went: series of pods no longer named may go too.
    fn retain_named(&self, names: &FlowNames);
    /// The datapath's lost-event total (a running count).
    fn set_lost(&self, total: u64);
    /// Drop events the datapath's per-endpoint rate held back (a running
    /// total).
    fn set_rate_limited(&self, total: u64);
    /// How many exporters run.
    fn set_exporters(&self, running: usize);
    /// A reload of the export configuration, and whether it was taken.
    fn export_reload(&self, ok: bool);
    /// Flows an exporter wrote or sent.
    fn export_flows(&self, exporter: &str, n: u64);
    /// Flows an exporter lost, and why (`lagged`, `queue_full`, ...).
    fn export_dropped(&self, exporter: &str, reason: &str, n: u64);
}
