//! `weir observe` and `weir status`: Hubble's Observer API from the
//! command line, against an agent or the relay. Flags become Hubble
//! `FlowFilter`s (the server filters); flows print as one readable line
//! each (`compact`, colour only on a terminal), one JSON object per line,
//! or a table. A closed pipe (`| head`) ends quietly.

use weir_proto::aggregate;
use weir_proto::flags as filters;
pub mod window;

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use clap::ArgAction;
use tokio_stream::StreamExt;
use weir_proto::client::{Server, Tls, connect_with};
use weir_proto::flow::{self, Flow, Verdict, layer4};
use weir_proto::observer::observer_client::ObserverClient;
use weir_proto::observer::{GetFlowsRequest, ServerStatusRequest, get_flows_response::ResponseTypes};
use weir_proto::relay::NodeState;
use weir_proto::tls::{ClientFiles, ClientTls};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per flow.
    Compact,
    /// A block of `KEY: value` lines per flow, as hubble's dict.
    Dict,
    /// One JSON object per flow (weir's fields: names, drop reasons,
    /// policies, translations).
    Json,
    /// Each response as protojson with proto field names, as `hubble
    /// observe -o jsonpb` prints it (weir's details in `flow.weir`).
    Jsonpb,
    /// Columns.
    Table,
}

#[derive(Debug, clap::Args)]
pub struct ServerArg {
    /// The Observer API: unix:///path, host:port, or tls://host:port. Default:
    /// the lab's relay when a lab is up, else /run/weir/relay.sock, else
    /// /run/weir/hubble.sock.
    #[arg(long, env = "WEIR_SERVER")]
    pub server: Option<String>,
    /// Connect with TLS (so does a tls:// address or any other --tls-* flag).
    #[arg(long, env = "WEIR_TLS")]
    pub tls: bool,
    /// CA certificates (PEM) the server's certificate must chain to
    /// (repeat, or comma-separate); needed with TLS.
    #[arg(long, env = "WEIR_TLS_CA_CERT_FILES", value_delimiter = ',')]
    pub tls_ca_cert_files: Vec<std::path::PathBuf>,
    /// A client certificate (PEM) for a server that asks for one (mutual TLS).
    #[arg(long, env = "WEIR_TLS_CLIENT_CERT_FILE", requires = "tls_client_key_file")]
    pub tls_client_cert_file: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-client-cert-file.
    #[arg(long, env = "WEIR_TLS_CLIENT_KEY_FILE", requires = "tls_client_cert_file")]
    pub tls_client_key_file: Option<std::path::PathBuf>,
    /// The name the server's certificate must carry. Default: the host of
    /// --server.
    #[arg(long, env = "WEIR_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

/// The host of `host:port` or `[v6]:port`.
fn host_of(hostport: &str) -> &str {
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl ServerArg {
    /// Where the server is, and TLS to it when asked for.
    fn resolve(&self) -> Result<(Server, Option<Tls>)> {
        let (server, tls_scheme) = match self.server.as_deref() {
            Some(s) => match s.strip_prefix("tls://") {
                Some(rest) => (Server::parse(rest)?, true),
                None => (Server::parse(s)?, false),
            },
            None => (self.default_server()?, false),
        };
        let wants_tls = tls_scheme
            || self.tls
            || !self.tls_ca_cert_files.is_empty()
            || self.tls_client_cert_file.is_some()
            || self.tls_server_name.is_some();
        if !wants_tls {
            return Ok((server, None));
        }
        let Server::Tcp(hostport) = &server else {
            bail!("{server}: TLS is for TCP servers; a Unix socket is reached without it");
        };
        if self.tls_ca_cert_files.is_empty() {
            bail!("TLS needs --tls-ca-cert-files: the CA of the server's certificate (weir trusts no system roots)");
        }
        let files = ClientFiles {
            ca: self.tls_ca_cert_files.clone(),
            identity: self.tls_client_cert_file.clone().zip(self.tls_client_key_file.clone()),
        };
        let server_name = self
            .tls_server_name
            .clone()
            .unwrap_or_else(|| host_of(hostport).to_owned());
        let tls = Tls {
            config: ClientTls::load(files)?,
            server_name,
        };
        Ok((server, Some(tls)))
    }

    fn default_server(&self) -> Result<Server> {
        let lab = std::env::var_os("WEIR_LAB_DIR").map_or_else(|| "/run/weir-lab".into(), std::path::PathBuf::from);
        let candidates = [
            lab.join("run/relay.sock"),
            "/run/weir/relay.sock".into(),
            "/run/weir/hubble.sock".into(),
        ];
        match candidates.iter().find(|p| p.exists()) {
            Some(p) => Ok(Server::Unix(p.clone())),
            None => bail!(
                "no Observer API found (tried {}): is a lab or an agent running? Or pass --server",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// `weir observe`'s flags: `hubble observe`'s names and meanings (see
/// `filters.rs` and `window.rs`), with weir's output formats.
#[derive(Debug, clap::Args)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// Flows of pods of this namespace (on either end; with --pod or
    /// --service, their namespace).
    #[arg(long, short = 'n', help_heading = FILTERS)]
    pub namespace: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub from_namespace: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub to_namespace: Vec<String>,
    /// Pods of every namespace (with --pod: that name in any namespace).
    #[arg(long, short = 'A', num_args = 0, default_missing_value = "true", action = ArgAction::Append, help_heading = FILTERS)]
    pub all_namespaces: Vec<bool>,
    #[arg(long, num_args = 0, default_missing_value = "true", action = ArgAction::Append, help_heading = FILTERS)]
    pub from_all_namespaces: Vec<bool>,
    #[arg(long, num_args = 0, default_missing_value = "true", action = ArgAction::Append, help_heading = FILTERS)]
    pub to_all_namespaces: Vec<bool>,
    /// A pod on either end: [namespace/]name-prefix (no namespace: `default`,
    /// or --namespace's).
    #[arg(long, help_heading = FILTERS)]
    pub pod: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub from_pod: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub to_pod: Vec<String>,
    /// A label selector on either end (app=web,tier!=db).
    #[arg(long, short = 'l', help_heading = FILTERS)]
    pub label: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub from_label: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub to_label: Vec<String>,
    /// A service on either end ([namespace/]name).
    #[arg(long, help_heading = FILTERS)]
    pub service: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub from_service: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub to_service: Vec<String>,
    /// An address or CIDR on either end.
    #[arg(long, help_heading = FILTERS)]
    pub ip: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub from_ip: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub to_ip: Vec<String>,
    /// A port on either end.
    #[arg(long, help_heading = FILTERS)]
    pub port: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub from_port: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub to_port: Vec<String>,
    /// A security identity on either end: a number or a reserved name
    /// (host, world, remote-node, ...).
    #[arg(long, help_heading = FILTERS)]
    pub identity: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub from_identity: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub to_identity: Vec<String>,
    /// A workload on either end: name, Kind/name or Kind/.
    #[arg(long, help_heading = FILTERS)]
    pub workload: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub from_workload: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub to_workload: Vec<String>,
    /// FORWARDED, DROPPED, AUDIT, ...
    #[arg(long, help_heading = FILTERS)]
    pub verdict: Vec<String>,
    /// tcp, udp, icmp, sctp.
    #[arg(long, help_heading = FILTERS)]
    pub protocol: Vec<String>,
    /// Event type: drop, trace, policy-verdict, capture, ... or a number,
    /// with an optional sub-type (trace:to-endpoint).
    #[arg(long = "type", short = 't', id = "type", help_heading = FILTERS)]
    pub event_type: Vec<String>,
    /// The node that saw the flow (glob: node-*).
    #[arg(long, alias = "node", help_heading = FILTERS)]
    pub node_name: Vec<String>,
    /// A fully qualified domain name on either end (weir's flows carry none yet).
    #[arg(long, help_heading = FILTERS)]
    pub fqdn: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub from_fqdn: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub to_fqdn: Vec<String>,
    /// A cluster name on either end (weir's is `default`).
    #[arg(long, help_heading = FILTERS)]
    pub cluster: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub from_cluster: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub to_cluster: Vec<String>,
    /// A label selector on the node that saw the flow.
    #[arg(long, help_heading = FILTERS)]
    pub node_label: Vec<String>,
    /// TCP flags that must all be set (syn,ack); repeat for any of several sets.
    #[arg(long, help_heading = FILTERS)]
    pub tcp_flags: Vec<String>,
    /// ingress or egress.
    #[arg(long, help_heading = FILTERS)]
    pub traffic_direction: Vec<String>,
    /// v4, v6 (or anything else: not IP).
    #[arg(long, help_heading = FILTERS)]
    pub ip_version: Vec<String>,
    /// The address a flow was source-NATed to.
    #[arg(long, help_heading = FILTERS)]
    pub snat_ip: Vec<String>,
    /// Hubble's drop reason (POLICY_DENIED, ...).
    #[arg(long, help_heading = FILTERS)]
    pub drop_reason_desc: Vec<String>,
    /// The interface that saw the flow.
    #[arg(long, help_heading = FILTERS)]
    pub interface: Vec<String>,
    /// One flow, by its id.
    #[arg(long, help_heading = FILTERS)]
    pub uuid: Vec<String>,
    /// A trace id.
    #[arg(long, help_heading = FILTERS)]
    pub trace_id: Vec<String>,
    /// HTTP filters, as hubble's (weir records no L7 yet: the server refuses them).
    #[arg(long, help_heading = FILTERS)]
    pub http_status: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub http_method: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub http_path: Vec<String>,
    #[arg(long, help_heading = FILTERS)]
    pub http_url: Vec<String>,
    /// IPv4 flows only.
    #[arg(long, short = '4', num_args = 0, default_missing_value = "true", action = ArgAction::Append, help_heading = FILTERS)]
    pub ipv4: Vec<bool>,
    /// IPv6 flows only.
    #[arg(long, short = '6', num_args = 0, default_missing_value = "true", action = ArgAction::Append, help_heading = FILTERS)]
    pub ipv6: Vec<bool>,
    /// The next filter flag excludes what it matches (--not --verdict DROPPED).
    #[arg(long, num_args = 0, default_missing_value = "true", action = ArgAction::Append, help_heading = FILTERS)]
    pub not: Vec<bool>,
    /// More allowed flows, as FlowFilters in JSON (proto field names):
    /// '{"source_pod":["shop/"],"verdict":[2]}'. Repeat, or put several
    /// objects in one.
    #[arg(long)]
    pub allowlist: Vec<String>,
    /// Flows to leave out, as FlowFilters in JSON (as --allowlist).
    #[arg(long)]
    pub denylist: Vec<String>,
    /// Print the filters the flags make, as `hubble observe
    /// --print-raw-filters` does, and exit.
    #[arg(long)]
    pub print_raw_filters: bool,
    /// Keep printing new flows as they come.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// The newest N flows (per node through the relay). Default 20 when no
    /// other bound is given.
    #[arg(long)]
    pub last: Option<u64>,
    /// The oldest N flows still held.
    #[arg(long)]
    pub first: Option<u64>,
    /// Every flow still held.
    #[arg(long)]
    pub all: bool,
    /// Flows since a time: a duration ago (30s, 5m, 1h30m) or a date and
    /// time (2026-12-01T13:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Flows until a time (same formats; ignored with --follow).
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Compact)]
    pub output: Output,
    /// Fold the window's flows into groups by these (comma-separated:
    /// source-workload, destination-workload, source-namespace,
    /// destination-namespace, source-pod, destination-pod, verdict, port,
    /// drop-reason, node) and print each group's flows, connections,
    /// bytes each way and drops (a table, or -o json). Every flow held
    /// unless --last/--first/--since/--until bound the window.
    #[arg(long, value_delimiter = ',', value_parser = aggregate::Key::parse, conflicts_with_all = ["follow", "print_raw_filters"])]
    pub aggregate_by: Vec<aggregate::Key>,
    /// Only these fields of each flow, sent by the server (Flow's proto
    /// field names, comma-separated: time,verdict,source.pod_name); json
    /// output only, as hubble's.
    #[arg(long, value_delimiter = ',')]
    pub field_mask: Vec<String>,
    /// How times print (compact, dict, table): hubble's names, StampMilli
    /// (default), YearMonthDay, YearMonthDayHour, YearMonthDayHourMinute,
    /// RFC3339, RFC3339Milli, RFC3339Micro, RFC3339Nano, RFC1123Z.
    #[arg(long, value_enum, ignore_case = true, default_value_t = TimeFormat::StampMilli)]
    pub time_format: TimeFormat,
    /// The node's name on each flow (compact, dict, table).
    #[arg(long)]
    pub print_node_name: bool,
    /// Addresses instead of pod and service names.
    #[arg(long)]
    pub numeric: bool,
    /// Colour: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, value_enum, default_value_t = Colour::Auto)]
    pub color: Colour,
}

const FILTERS: &str = "Filters (hubble observe's)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Colour {
    Auto,
    Always,
    Never,
}

impl ObserveArgs {
    fn window(&self) -> window::WindowArgs {
        // An aggregate of the default 20 flows says little: all, unless
        // bounded.
        let unbounded = self.first.is_none() && self.last.is_none() && self.since.is_none() && self.until.is_none();
        window::WindowArgs {
            since: self.since.clone(),
            until: self.until.clone(),
            first: self.first,
            last: self.last,
            all: self.all || (!self.aggregate_by.is_empty() && unbounded),
            follow: self.follow,
        }
    }
}

/// The filter flags in command-line order (`--not` applies to the next
/// one), from what clap parsed: hubble's flags are order-sensitive. Flags
/// without a value are lists of `true` so that every occurrence keeps its
/// place (a count keeps only its last).
pub fn occurrences(m: &clap::ArgMatches) -> Vec<filters::Occurrence> {
    let mut found: Vec<(usize, filters::Occurrence)> = Vec::new();
    for flag in filters::FLAGS.iter().chain(&["not"]) {
        let id = if *flag == "type" {
            "type".to_owned()
        } else {
            flag.replace('-', "_")
        };
        // Given on the command line, not a default (a count's 0).
        if m.value_source(&id) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        let Some(indices) = m.indices_of(&id) else { continue };
        let values: Vec<String> = match m.try_get_many::<String>(&id) {
            Ok(Some(v)) => v.cloned().collect(),
            _ => Vec::new(),
        };
        for (i, index) in indices.enumerate() {
            let value = values.get(i).cloned().unwrap_or_default();
            found.push((index, filters::Occurrence { flag, value }));
        }
    }
    found.sort_by_key(|(index, _)| *index);
    found.into_iter().map(|(_, o)| o).collect()
}

fn endpoint_name(e: Option<&flow::Endpoint>, ip: &str, numeric: bool) -> String {
    if numeric {
        return ip.to_owned();
    }
    match e {
        Some(e) if !e.pod_name.is_empty() => format!("{}/{}", e.namespace, e.pod_name),
        Some(e) => match e.labels.first().and_then(|l| l.strip_prefix("reserved:")) {
            Some(r) if r != "world" => format!("{ip} ({r})"),
            _ => ip.to_owned(),
        },
        None => ip.to_owned(),
    }
}

fn ports(f: &Flow) -> (Option<u32>, Option<u32>, String) {
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => {
            let fl = t.flags.unwrap_or_default();
            let names: Vec<&str> = [
                (fl.syn, "SYN"),
                (fl.ack, "ACK"),
                (fl.fin, "FIN"),
                (fl.rst, "RST"),
                (fl.psh, "PSH"),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
            (
                Some(t.source_port),
                Some(t.destination_port),
                format!("TCP {}", names.join(",")),
            )
        }
        Some(layer4::Protocol::Udp(u)) => (Some(u.source_port), Some(u.destination_port), "UDP".into()),
        Some(layer4::Protocol::Sctp(s)) => (Some(s.source_port), Some(s.destination_port), "SCTP".into()),
        Some(layer4::Protocol::IcmPv4(i)) => (None, None, format!("ICMP type {}", i.r#type)),
        Some(layer4::Protocol::IcmPv6(i)) => (None, None, format!("ICMPv6 type {}", i.r#type)),
        None => (None, None, "?".into()),
    }
}

/// The flow's time, since the epoch.
fn since_epoch(f: &Flow) -> Duration {
    f.time
        .as_ref()
        .and_then(weir_proto::time::from_timestamp)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// How times print (`--time-format`): hubble's names and layouts, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[value(rename_all = "verbatim")]
pub enum TimeFormat {
    /// `Dec  6 13:00:00.123`
    #[default]
    StampMilli,
    /// `2026-12-06`
    YearMonthDay,
    /// `2026-12-06T13Z`
    YearMonthDayHour,
    /// `2026-12-06T13:00Z`
    YearMonthDayHourMinute,
    /// `2026-12-06T13:00:00Z`
    RFC3339,
    /// `2026-12-06T13:00:00.123Z` (trailing zeros dropped)
    RFC3339Milli,
    /// `2026-12-06T13:00:00.123456Z`
    RFC3339Micro,
    /// `2026-12-06T13:00:00.123456789Z`
    RFC3339Nano,
    /// `Sun, 06 Dec 2026 13:00:00 +0000`
    RFC1123Z,
}

/// A flow's time as `format` prints it (Go's layouts: fractions cut, not
/// rounded; `.999` drops trailing zeros).
fn format_time(f: &Flow, format: TimeFormat) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    let d = since_epoch(f);
    let secs = d.as_secs();
    let days = (secs / 86400) as i64;
    let (year, month, day) = weir_proto::time::civil_date(days);
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let date = format!("{year:04}-{month:02}-{day:02}");
    let frac = |digits: u32| {
        let cut = d.subsec_nanos() / 10u32.pow(9 - digits);
        let text = format!("{cut:0width$}", width = digits as usize);
        let text = text.trim_end_matches('0');
        if text.is_empty() {
            String::new()
        } else {
            format!(".{text}")
        }
    };
    match format {
        TimeFormat::StampMilli => format!(
            "{} {day:>2} {h:02}:{m:02}:{s:02}.{:03}",
            MONTHS[(month - 1) as usize],
            d.subsec_millis()
        ),
        TimeFormat::YearMonthDay => date,
        TimeFormat::YearMonthDayHour => format!("{date}T{h:02}Z"),
        TimeFormat::YearMonthDayHourMinute => format!("{date}T{h:02}:{m:02}Z"),
        TimeFormat::RFC3339 => format!("{date}T{h:02}:{m:02}:{s:02}Z"),
        TimeFormat::RFC3339Milli => format!("{date}T{h:02}:{m:02}:{s:02}{}Z", frac(3)),
        TimeFormat::RFC3339Micro => format!("{date}T{h:02}:{m:02}:{s:02}{}Z", frac(6)),
        TimeFormat::RFC3339Nano => format!("{date}T{h:02}:{m:02}:{s:02}{}Z", frac(9)),
        TimeFormat::RFC1123Z => format!(
            "{}, {day:02} {} {year:04} {h:02}:{m:02}:{s:02} +0000",
            DAYS[(days + 4).rem_euclid(7) as usize],
            MONTHS[(month - 1) as usize]
        ),
    }
}

fn rfc3339(f: &Flow) -> String {
    let d = since_epoch(f);
    let secs = d.as_secs();
    let (year, month, day) = weir_proto::time::civil_date((secs / 86400) as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        d.subsec_nanos()
    )
}

fn verdict_name(f: &Flow) -> &'static str {
    Verdict::try_from(f.verdict).map_or("UNKNOWN", |v| v.as_str_name())
}

/// The parts every output shows.
struct Line {
    time: String,
    node: String,
    src: String,
    dst: String,
    arrow: &'static str,
    verdict: &'static str,
    proto: String,
    extra: String,
}

/// How flows print: hubble's --print-node-name, --numeric and --color.
#[derive(Debug, Clone, Copy, Default)]
pub struct Print {
    pub time_format: TimeFormat,
    pub node: bool,
    pub numeric: bool,
    pub colour: bool,
}

fn line(f: &Flow, p: Print) -> Line {
    let numeric = p.numeric;
    let ip = f.ip.clone().unwrap_or_default();
    let (sp, dp, proto) = ports(f);
    let with_port = |name: String, p: Option<u32>| match p {
        Some(p) => format!("{name}:{p}"),
        None => name,
    };
    let d = f.weir.clone().unwrap_or_default();
    let mut extra = Vec::new();
    if let Some(a) = &d.dialled {
        let svc = f
            .destination_service
            .as_ref()
            .or(f.source_service.as_ref())
            .map(|s| format!("{}/{} ", s.namespace, s.name))
            .unwrap_or_default();
        extra.push(format!("via {svc}{}:{}", a.ip, a.port));
    }
    if d.dialled.is_none()
        && let Some(s) = &f.destination_service
    {
        // A service's VIP itself (a drop before translation, say).
        extra.push(format!("service {}/{}", s.namespace, s.name));
    }
    if let Some(a) = &d.snat {
        extra.push(format!("SNAT {}:{}", a.ip, a.port));
    }
    if !d.drop_reason.is_empty() {
        // A policy drop: the rule says more than the reason's sentence.
        if d.policy.is_empty() {
            extra.push(format!("reason {}: {}", d.drop_reason, d.drop_reason_text));
        } else {
            extra.push(format!("reason {}", d.drop_reason));
        }
    }
    if !d.policy.is_empty() {
        extra.push(format!("policy: {}", d.policy));
    }
    if d.handshake_ns > 0 {
        extra.push(format!("handshake {:.3} ms", d.handshake_ns as f64 / 1e6));
    }
    if d.event == "update" || d.event == "end" {
        extra.push(format!("{} B out, {} B back", d.bytes, d.reply_bytes));
    }
    if !d.event.is_empty() {
        extra.push(format!("[{} {}]", d.event, d.observation_point));
    }
    Line {
        time: format_time(f, p.time_format),
        node: f.node_name.clone(),
        src: with_port(endpoint_name(f.source.as_ref(), &ip.source, numeric), sp),
        dst: with_port(endpoint_name(f.destination.as_ref(), &ip.destination, numeric), dp),
        arrow: match f.is_reply {
            Some(true) => "<-",
            Some(false) => "->",
            None => "<>",
        },
        verdict: verdict_name(f),
        proto,
        extra: extra.join("; "),
    }
}

fn paint(s: &str, colour: Option<&str>) -> String {
    match colour {
        Some(c) => format!("\x1b[{c}m{s}\x1b[0m"),
        None => s.to_owned(),
    }
}

/// The colour of a verdict (hubble's: green, red, yellow).
fn verdict_colour(verdict: &str) -> &'static str {
    match verdict {
        "FORWARDED" => "32",
        "DROPPED" | "ERROR" => "31",
        "AUDIT" => "33",
        _ => "0",
    }
}

/// One line: `time [node]: source -> destination VERDICT proto (details)`,
/// the reply's ends swapped (`<-`) as hubble prints it; hosts in cyan and
/// the verdict in its colour with `colour`.
pub fn compact(f: &Flow, p: Print) -> String {
    let l = line(f, p);
    let colour = |c: &'static str| p.colour.then_some(c);
    let (src, dst) = if l.arrow == "<-" {
        (&l.dst, &l.src)
    } else {
        (&l.src, &l.dst)
    };
    format!(
        "{}{}: {} {} {} {} {}{}",
        l.time,
        if p.node {
            format!(" [{}]", l.node)
        } else {
            String::new()
        },
        paint(src, colour("36")),
        l.arrow,
        paint(dst, colour("36")),
        paint(l.verdict, colour(verdict_colour(l.verdict))),
        l.proto,
        if l.extra.is_empty() {
            String::new()
        } else {
            format!(" ({})", l.extra)
        }
    )
}

/// hubble's dict: a `KEY: value` block per flow, keys right-aligned.
pub fn dict(f: &Flow, p: Print) -> String {
    let l = line(f, p);
    let d = f.weir.clone().unwrap_or_default();
    let kind = if d.drop_reason_text.is_empty() {
        d.observation_point.clone()
    } else {
        d.drop_reason_text.clone()
    };
    let mut rows = vec![("TIMESTAMP", l.time.clone())];
    if p.node {
        rows.push(("NODE", l.node.clone()));
    }
    let summary = if l.extra.is_empty() {
        l.proto.clone()
    } else {
        format!("{}; {}", l.proto, l.extra)
    };
    rows.extend([
        ("SOURCE", l.src.clone()),
        ("DESTINATION", l.dst.clone()),
        ("TYPE", kind),
        (
            "VERDICT",
            paint(l.verdict, p.colour.then_some(verdict_colour(l.verdict))),
        ),
        ("SUMMARY", summary),
    ]);
    rows.iter()
        .map(|(k, v)| format!("{k:>11}: {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn json(f: &Flow) -> serde_json::Value {
    use serde_json::json;
    let ep = |e: &Option<flow::Endpoint>| {
        let e = e.clone().unwrap_or_default();
        json!({
            "namespace": e.namespace, "pod_name": e.pod_name, "identity": e.identity, "labels": e.labels,
            "workloads": e.workloads.iter().map(|w| json!({"name": w.name, "kind": w.kind})).collect::<Vec<_>>(),
        })
    };
    let addr =
        |a: &Option<weir_proto::weir::flow::v1::Address>| a.as_ref().map(|a| json!({"ip": a.ip, "port": a.port}));
    let ip = f.ip.clone().unwrap_or_default();
    let (sp, dp, proto) = ports(f);
    let d = f.weir.clone().unwrap_or_default();
    let svc = |s: &Option<flow::Service>| s.as_ref().map(|s| json!({"namespace": s.namespace, "name": s.name}));
    json!({
        "time": rfc3339(f),
        "node_name": f.node_name,
        "verdict": verdict_name(f),
        "drop_reason": (!d.drop_reason.is_empty()).then_some(&d.drop_reason),
        "drop_reason_text": (!d.drop_reason_text.is_empty()).then_some(&d.drop_reason_text),
        "policy": (!d.policy.is_empty()).then_some(&d.policy),
        "policy_match_type": (f.policy_match_type != 0).then_some(f.policy_match_type),
        "drop_reason_desc": flow::DropReason::try_from(f.drop_reason_desc).ok().filter(|r| *r as i32 != 0).map(|r| r.as_str_name()),
        "event": d.event,
        "observation_point": d.observation_point,
        "is_reply": f.is_reply,
        "traffic_direction": flow::TrafficDirection::try_from(f.traffic_direction).map_or("UNKNOWN", |t| t.as_str_name()),
        "IP": {"source": ip.source, "destination": ip.destination,
               "source_xlated": (!ip.source_xlated.is_empty()).then_some(&ip.source_xlated)},
        "l4": {
            "protocol": proto.split(' ').next().unwrap_or(""),
            "flags": proto.split_once(' ').map(|(_, f)| f.split(',').filter(|x| !x.is_empty()).collect::<Vec<_>>()),
            "source_port": sp, "destination_port": dp,
        },
        "source": ep(&f.source),
        "destination": ep(&f.destination),
        "source_service": svc(&f.source_service),
        "destination_service": svc(&f.destination_service),
        "dialled": addr(&d.dialled),
        "backend": addr(&d.backend),
        "snat": addr(&d.snat),
        "packets": d.packets, "bytes": d.bytes, "reply_packets": d.reply_packets, "reply_bytes": d.reply_bytes,
        "handshake_ns": d.handshake_ns,
        "interface": f.interface.as_ref().map(|i| i.index),
    })
}

/// Writes a line; a closed pipe ends the program quietly.
fn out(w: &mut impl Write, s: &str) -> Result<()> {
    match writeln!(w, "{s}").and_then(|()| w.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(e.into()),
    }
}

/// A failed call, with what caused it (a TLS refusal is in the sources of
/// tonic's "transport error").
fn call_error(server: &Server, s: &tonic::Status) -> anyhow::Error {
    let mut text = s.message().to_owned();
    let mut next = std::error::Error::source(s);
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        next = cause.source();
    }
    anyhow::anyhow!("{server}: {text}")
}

/// Runs `weir observe`: `occurrences` are its filter flags in command-line
/// order ([`occurrences`]).
pub async fn observe(a: ObserveArgs, occurrences: &[filters::Occurrence]) -> Result<()> {
    let (mut whitelist, mut blacklist) = filters::build(occurrences)?;
    // As hubble: the raw filters come after the flags' own.
    for (list, raw, flag) in [
        (&mut whitelist, &a.allowlist, "--allowlist"),
        (&mut blacklist, &a.denylist, "--denylist"),
    ] {
        for text in raw {
            list.extend(
                weir_proto::jsonpb::flow_filters(text).map_err(|e| anyhow::anyhow!("invalid {flag} flag: {e}"))?,
            );
        }
    }
    let w = a.window().window(SystemTime::now())?;
    if a.print_raw_filters {
        let mut w = std::io::stdout().lock();
        w.write_all(filters::raw(&whitelist, &blacklist).as_bytes())?;
        return Ok(());
    }
    if a.output == Output::Table && a.follow {
        bail!("table output format is not compatible with follow mode");
    }
    let field_mask = match a.field_mask.is_empty() {
        true => None,
        false if !matches!(a.output, Output::Json | Output::Jsonpb) => {
            bail!("{:?} output format is not compatible with custom field mask", a.output)
        }
        false => {
            weir_proto::mask::Mask::for_flow(&a.field_mask, false)?;
            Some(prost_types::FieldMask {
                paths: a.field_mask.clone(),
            })
        }
    };
    let (server, tls) = a.server.resolve()?;
    let req = GetFlowsRequest {
        number: w.number,
        first: w.first,
        follow: w.follow,
        whitelist,
        blacklist,
        since: w.since.map(weir_proto::time::to_timestamp),
        until: w.until.map(weir_proto::time::to_timestamp),
        field_mask,
    };
    let mut stream = open_flows(&server, tls.as_ref(), req).await?;
    let stdout = std::io::stdout();
    let colour = match a.color {
        Colour::Always => true,
        Colour::Never => false,
        Colour::Auto => stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let print = Print {
        time_format: a.time_format,
        node: a.print_node_name,
        numeric: a.numeric,
        // As hubble: compact and dict only.
        colour: colour && matches!(a.output, Output::Compact | Output::Dict),
    };
    let mut w = stdout.lock();
    // Streamed columns (hubble's table waits for the end to size them).
    let row = |cells: [&str; 8], node: bool| {
        let node = if node {
            format!("{:<8}  ", cells[1])
        } else {
            String::new()
        };
        format!(
            "{:<19}  {node}{:<28}  {:<2}  {:<28}  {:<9}  {:<11}  {}",
            cells[0], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
        )
    };
    if a.output == Output::Table {
        let header = [
            "TIMESTAMP",
            "NODE",
            "SOURCE",
            "",
            "DESTINATION",
            "VERDICT",
            "PROTO",
            "SUMMARY",
        ];
        out(&mut w, &row(header, print.node))?;
    }
    let mut records = 0u64;
    let mut folded = (!a.aggregate_by.is_empty()).then(|| aggregate::Aggregate::new(a.aggregate_by.clone()));
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(|s| call_error(&server, &s))?;
        match msg.response_types {
            Some(ResponseTypes::Flow(f)) if folded.is_some() => {
                if let Some(agg) = folded.as_mut() {
                    agg.add(&f);
                }
            }
            Some(ResponseTypes::Flow(f)) => {
                let text = match a.output {
                    Output::Compact => compact(&f, print),
                    Output::Dict if records == 0 => dict(&f, print),
                    Output::Dict => format!("------------\n{}", dict(&f, print)),
                    Output::Jsonpb => {
                        let whole = weir_proto::observer::GetFlowsResponse {
                            time: msg.time,
                            node_name: msg.node_name.clone(),
                            response_types: Some(ResponseTypes::Flow(f)),
                        };
                        weir_proto::jsonpb::response(&whole).to_string()
                    }
                    Output::Json if a.field_mask.is_empty() => json(&f).to_string(),
                    // The fields asked for, not the rest as empties.
                    Output::Json => {
                        let mut v = json(&f);
                        if let Some(o) = v.as_object_mut() {
                            o.retain(|k, _| a.field_mask.iter().any(|p| p.split('.').next() == Some(k.as_str())));
                        }
                        v.to_string()
                    }
                    Output::Table => {
                        let l = line(&f, print);
                        let cells = [
                            l.time.as_str(),
                            l.node.as_str(),
                            l.src.as_str(),
                            l.arrow,
                            l.dst.as_str(),
                            l.verdict,
                            l.proto.as_str(),
                            l.extra.as_str(),
                        ];
                        row(cells, print.node)
                    }
                };
                records += 1;
                out(&mut w, &text)?;
            }
            Some(ResponseTypes::NodeStatus(n)) => {
                let state = NodeState::try_from(n.state_change).map_or("UNKNOWN", |s| s.as_str_name());
                eprintln!(
                    "node {}: {state}{}",
                    n.node_names.join(", "),
                    if n.message.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", n.message)
                    }
                );
            }
            Some(ResponseTypes::LostEvents(l)) => {
                eprintln!(
                    "{} flows lost ({})",
                    l.num_events_lost,
                    flow::LostEventSource::try_from(l.source).map_or("unknown", |s| s.as_str_name())
                );
            }
            None => {}
        }
    }
    if let Some(agg) = folded {
        match a.output {
            Output::Json => {
                for g in agg.json() {
                    out(&mut w, &g.to_string())?;
                }
            }
            _ => w.write_all(agg.table().as_bytes())?,
        }
    }
    Ok(())
}

/// A GetFlows stream from `server`.
async fn open_flows(
    server: &Server,
    tls: Option<&Tls>,
    req: GetFlowsRequest,
) -> Result<tonic::Streaming<weir_proto::observer::GetFlowsResponse>> {
    let channel = connect_with(server, Duration::from_secs(5), tls).await?;
    Ok(ObserverClient::new(channel)
        .max_decoding_message_size(4 << 20)
        .get_flows(req)
        .await
        .map_err(|s| call_error(server, &s))?
        .into_inner())
}

/// Every flow a finite request returns (no follow), for the commands that
/// judge flows rather than print them.
pub async fn fetch_flows(server: &ServerArg, req: GetFlowsRequest) -> Result<Vec<Flow>> {
    let (server, tls) = server.resolve()?;
    let mut stream = open_flows(&server, tls.as_ref(), req).await?;
    let mut flows = Vec::new();
    while let Some(msg) = stream.next().await {
        if let Some(ResponseTypes::Flow(f)) = msg.map_err(|s| call_error(&server, &s))?.response_types {
            flows.push(f);
        }
    }
    Ok(flows)
}

pub async fn status(server: ServerArg) -> Result<()> {
    let (server, tls) = server.resolve()?;
    let channel = connect_with(&server, Duration::from_secs(5), tls.as_ref()).await?;
    let mut req = tonic::Request::new(ServerStatusRequest {});
    req.set_timeout(Duration::from_secs(10));
    let s = ObserverClient::new(channel)
        .server_status(req)
        .await
        .map_err(|s| call_error(&server, &s))?
        .into_inner();
    let mut w = std::io::stdout().lock();
    out(&mut w, &format!("Server:      {server} ({})", s.version))?;
    if let (Some(c), Some(u)) = (s.num_connected_nodes, s.num_unavailable_nodes) {
        let down = if s.unavailable_nodes.is_empty() {
            String::new()
        } else {
            format!(": {}", s.unavailable_nodes.join(", "))
        };
        out(&mut w, &format!("Nodes:       {c} connected, {u} unavailable{down}"))?;
    } else {
        out(&mut w, "Nodes:       1 (an agent)")?;
    }
    out(
        &mut w,
        &format!(
            "Flows:       {}/{} stored, {} seen, {:.2}/s",
            s.num_flows, s.max_flows, s.seen_flows, s.flows_rate
        ),
    )?;
    out(
        &mut w,
        &format!(
            "Lost events: {} (ring buffer full), {} unreadable",
            s.weir_lost_events, s.weir_undecodable_events
        ),
    )?;
    out(&mut w, &format!("Uptime:      {} s", s.uptime_ns / 1_000_000_000))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ObserveArgs,
    }

    /// The lists the flags make, through clap as `weir observe` parses them.
    fn built(v: &[&str]) -> Result<(Vec<flow::FlowFilter>, Vec<flow::FlowFilter>)> {
        use clap::CommandFactory;
        let m = T::command().get_matches_from(std::iter::once("t").chain(v.iter().copied()));
        Ok(filters::build(&occurrences(&m))?)
    }

    #[test]
    fn flags_reach_the_filters_in_command_line_order() {
        let (allow, deny) = built(&[
            "--pod",
            "shop/web",
            "--not",
            "--verdict",
            "DROPPED",
            "--port",
            "80",
            "--not",
            "-t",
            "drop",
            "--node",
            "n1",
        ])
        .unwrap();
        assert_eq!(allow.len(), 2);
        assert_eq!(
            (allow[0].source_pod.clone(), allow[0].source_port.clone()),
            (vec!["shop/web".to_owned()], vec!["80".to_owned()])
        );
        assert_eq!(allow[1].destination_port, ["80"]);
        assert!(
            allow.iter().all(|f| f.node_name == ["n1"] && f.verdict.is_empty()),
            "{allow:?} {deny:?}"
        );
        assert_eq!(deny.len(), 1);
        assert_eq!(deny[0].verdict, [Verdict::Dropped as i32]);
        assert_eq!(deny[0].event_type[0].r#type, 1);
        let (allow, _) = built(&["-A", "--pod", "web"]).unwrap();
        assert_eq!(allow[0].source_pod, ["/web"]);
        assert!(built(&["--verdict", "maybe"]).is_err());
        assert!(built(&["--pod", "x", "--not"]).is_err());
    }

    #[test]
    fn times_print_in_hubbles_formats() {
        let f = Flow {
            time: Some(prost_types::Timestamp {
                seconds: 1_796_598_000 + 5,
                nanos: 120_400_000,
            }),
            ..Default::default()
        };
        let at = |t| format_time(&f, t);
        assert_eq!(at(TimeFormat::StampMilli), "Dec  6 23:00:05.120");
        assert_eq!(at(TimeFormat::YearMonthDay), "2026-12-06");
        assert_eq!(at(TimeFormat::YearMonthDayHour), "2026-12-06T23Z");
        assert_eq!(at(TimeFormat::YearMonthDayHourMinute), "2026-12-06T23:00Z");
        assert_eq!(at(TimeFormat::RFC3339), "2026-12-06T23:00:05Z");
        assert_eq!(at(TimeFormat::RFC3339Milli), "2026-12-06T23:00:05.12Z");
        assert_eq!(at(TimeFormat::RFC3339Micro), "2026-12-06T23:00:05.1204Z");
        assert_eq!(at(TimeFormat::RFC3339Nano), "2026-12-06T23:00:05.1204Z");
        assert_eq!(at(TimeFormat::RFC1123Z), "Sun, 06 Dec 2026 23:00:05 +0000");
    }

    #[test]
    fn times_print_as_rfc3339() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = window::parse_time("2026-12-01T13:00:00Z", now).unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1_796_130_000);
        let f = Flow {
            time: Some(weir_proto::time::to_timestamp(t + Duration::from_nanos(5))),
            ..Default::default()
        };
        assert_eq!(rfc3339(&f), "2026-12-01T13:00:00.000000005Z");
    }
}
