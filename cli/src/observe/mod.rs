//! `weir observe` and `weir status`: Hubble's Observer API from the
//! command line, against an agent or the relay. Flags become Hubble
//! `FlowFilter`s (the server filters); flows print as one readable line
//! each (`compact`, colour only on a terminal), one JSON object per line,
//! or a table. A closed pipe (`| head`) ends quietly.

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use tokio_stream::StreamExt;
use weir_proto::client::{Server, Tls, connect_with};
use weir_proto::flow::{self, Flow, FlowFilter, Verdict, layer4};
use weir_proto::observer::observer_client::ObserverClient;
use weir_proto::observer::{GetFlowsRequest, ServerStatusRequest, get_flows_response::ResponseTypes};
use weir_proto::relay::NodeState;
use weir_proto::tls::{ClientFiles, ClientTls};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Compact,
    Json,
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

#[derive(Debug, clap::Args)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// Flows from or to pods of this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Flows from or to this pod ([namespace/]name prefix; without a
    /// namespace: --namespace's, or any).
    #[arg(long)]
    pub pod: Vec<String>,
    #[arg(long)]
    pub from_pod: Vec<String>,
    #[arg(long)]
    pub to_pod: Vec<String>,
    #[arg(long)]
    pub from_namespace: Vec<String>,
    #[arg(long)]
    pub to_namespace: Vec<String>,
    /// A label selector on either end (Kubernetes syntax: app=web,tier!=db).
    #[arg(long)]
    pub label: Vec<String>,
    /// Flows from or to this service ([namespace/]name).
    #[arg(long)]
    pub service: Vec<String>,
    /// FORWARDED, DROPPED, AUDIT, ...
    #[arg(long)]
    pub verdict: Vec<String>,
    /// tcp, udp, icmp, sctp.
    #[arg(long)]
    pub protocol: Vec<String>,
    /// Either end's port.
    #[arg(long)]
    pub port: Vec<u16>,
    /// Event type: drop, trace (a connection's events), packet (every
    /// packet of a pod traced with `weir lab trace`), policy-verdict.
    #[arg(long = "type")]
    pub event_type: Vec<String>,
    /// The node that saw the flow (glob: node-*).
    #[arg(long)]
    pub node: Vec<String>,
    /// Either end's address or CIDR.
    #[arg(long)]
    pub ip: Vec<String>,
    /// Keep printing new flows as they come.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// The last N flows (per node through the relay). Default 20, or none
    /// of the past with --follow.
    #[arg(long)]
    pub last: Option<u64>,
    /// Flows since a time: a duration ago (30s, 5m, 1h) or RFC 3339.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Compact)]
    pub output: Output,
}

/// `30s`/`5m`/`1h` ago, or `2026-12-01T13:00:00Z` (RFC 3339, UTC or with
/// an offset).
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime> {
    if let Some(unit_at) = s.find(|c: char| !c.is_ascii_digit())
        && unit_at > 0
        && !s.contains('-')
    {
        let n: u64 = s[..unit_at].parse()?;
        let secs = match &s[unit_at..] {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86400,
            u => bail!("--since {s:?}: unknown unit {u:?} (s, m, h, d)"),
        };
        return Ok(now - Duration::from_secs(secs));
    }
    parse_rfc3339(s).with_context(|| format!("--since {s:?}: expected 5m or 2026-12-01T13:00:00Z"))
}

fn parse_rfc3339(s: &str) -> Result<SystemTime> {
    let (date, rest) = s.split_once(['T', ' ']).context("no time")?;
    let d: Vec<i64> = date.split('-').map(str::parse).collect::<Result<_, _>>()?;
    let [y, mo, da] = d[..] else { bail!("date is y-m-d") };
    let (time, offset) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (t, o) = rest.split_at(i);
        let sign = if o.starts_with('-') { -1 } else { 1 };
        let (oh, om) = o[1..].split_once(':').context("offset is +hh:mm")?;
        (t, sign * (oh.parse::<i64>()? * 3600 + om.parse::<i64>()? * 60))
    } else {
        bail!("no time zone (Z or +hh:mm)")
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(str::parse).collect::<Result<_, _>>()?;
    let [h, mi, se] = t[..] else { bail!("time is h:m:s") };
    // Days from the civil date (Howard Hinnant's algorithm).
    let (yy, mm) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + mi * 60 + se - offset;
    let nanos: u32 = format!("{frac:0<9}")[..9].parse()?;
    if secs < 0 {
        bail!("before 1970");
    }
    Ok(UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

fn with_namespace(p: &str, ns: Option<&str>) -> String {
    match (p.contains('/'), ns) {
        (true, _) => p.to_owned(),
        (false, Some(ns)) => format!("{ns}/{p}"),
        (false, None) => p.to_owned(),
    }
}

fn verdict_number(v: &str) -> Result<i32> {
    Verdict::from_str_name(&v.to_ascii_uppercase())
        .map(|v| v as i32)
        .with_context(|| format!("--verdict {v:?}: expected FORWARDED, DROPPED, AUDIT, ERROR, TRACED or TRANSLATED"))
}

/// The whitelist for the flags: the flags that name one end are fixed; each
/// flag that may match either end doubles the filters (source side or
/// destination side), so `--pod a --port 80` means "a on one end and port
/// 80 on either", exactly.
pub fn filters(a: &ObserveArgs) -> Result<Vec<FlowFilter>> {
    let ns = a.namespace.as_deref();
    let mut base = FlowFilter {
        verdict: a.verdict.iter().map(|v| verdict_number(v)).collect::<Result<_>>()?,
        protocol: a.protocol.clone(),
        node_name: a.node.clone(),
        ..Default::default()
    };
    for t in &a.event_type {
        let r#type = match t.as_str() {
            "drop" => 1,
            "packet" | "capture" => 3,
            "trace" => 4,
            "policy-verdict" => 5,
            _ => bail!("--type {t:?}: expected drop, trace, packet or policy-verdict"),
        };
        base.event_type.push(flow::EventTypeFilter {
            r#type,
            ..Default::default()
        });
    }
    base.source_pod.extend(a.from_pod.iter().map(|p| with_namespace(p, ns)));
    base.destination_pod
        .extend(a.to_pod.iter().map(|p| with_namespace(p, ns)));
    base.source_pod.extend(a.from_namespace.iter().map(|n| format!("{n}/")));
    base.destination_pod
        .extend(a.to_namespace.iter().map(|n| format!("{n}/")));

    type Side = fn(&mut FlowFilter, &[String]);
    let mut either: Vec<(Vec<String>, Side, Side)> = Vec::new();
    let pods: Vec<String> = a.pod.iter().map(|p| with_namespace(p, ns)).collect();
    if !pods.is_empty() {
        either.push((
            pods,
            |f, v| f.source_pod.extend_from_slice(v),
            |f, v| f.destination_pod.extend_from_slice(v),
        ));
    } else if let Some(ns) = ns
        && a.from_pod.is_empty()
        && a.to_pod.is_empty()
    {
        either.push((
            vec![format!("{ns}/")],
            |f, v| f.source_pod.extend_from_slice(v),
            |f, v| f.destination_pod.extend_from_slice(v),
        ));
    }
    let either_of = |v: &[String], s: Side, d: Side| (v.to_vec(), s, d);
    if !a.label.is_empty() {
        either.push(either_of(
            &a.label,
            |f, v| f.source_label.extend_from_slice(v),
            |f, v| f.destination_label.extend_from_slice(v),
        ));
    }
    if !a.service.is_empty() {
        let v: Vec<String> = a.service.iter().map(|s| with_namespace(s, ns)).collect();
        either.push((
            v,
            |f, v| f.source_service.extend_from_slice(v),
            |f, v| f.destination_service.extend_from_slice(v),
        ));
    }
    if !a.port.is_empty() {
        let v: Vec<String> = a.port.iter().map(u16::to_string).collect();
        either.push((
            v,
            |f, v| f.source_port.extend_from_slice(v),
            |f, v| f.destination_port.extend_from_slice(v),
        ));
    }
    if !a.ip.is_empty() {
        either.push(either_of(
            &a.ip,
            |f, v| f.source_ip.extend_from_slice(v),
            |f, v| f.destination_ip.extend_from_slice(v),
        ));
    }
    let mut out = vec![base];
    for (values, src, dst) in either {
        out = out
            .into_iter()
            .flat_map(|f| {
                let (mut s, mut d) = (f.clone(), f);
                src(&mut s, &values);
                dst(&mut d, &values);
                [s, d]
            })
            .collect();
    }
    Ok(out)
}

fn endpoint_name(e: Option<&flow::Endpoint>, ip: &str) -> String {
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

fn local_time(f: &Flow) -> String {
    let t = f
        .time
        .as_ref()
        .and_then(weir_proto::time::from_timestamp)
        .unwrap_or(UNIX_EPOCH);
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        d.subsec_millis()
    )
}

fn rfc3339(f: &Flow) -> String {
    let t = f
        .time
        .as_ref()
        .and_then(weir_proto::time::from_timestamp)
        .unwrap_or(UNIX_EPOCH);
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    // Civil date from days since the epoch (the inverse of parse_rfc3339's).
    let z = (secs / 86400) as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
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

fn line(f: &Flow) -> Line {
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
        time: local_time(f),
        node: f.node_name.clone(),
        src: with_port(endpoint_name(f.source.as_ref(), &ip.source), sp),
        dst: with_port(endpoint_name(f.destination.as_ref(), &ip.destination), dp),
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

pub fn compact(f: &Flow, colour: bool) -> String {
    let l = line(f);
    let vc = colour.then_some(match l.verdict {
        "FORWARDED" => "32",
        "DROPPED" => "31",
        "AUDIT" => "33",
        _ => "0",
    });
    let (src, dst) = if l.arrow == "<-" {
        (&l.dst, &l.src)
    } else {
        (&l.src, &l.dst)
    };
    format!(
        "{} [{}] {} {} {} {} {}{}",
        l.time,
        l.node,
        src,
        l.arrow,
        dst,
        paint(l.verdict, vc),
        l.proto,
        if l.extra.is_empty() {
            String::new()
        } else {
            format!(" ({})", l.extra)
        }
    )
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

pub async fn observe(a: ObserveArgs) -> Result<()> {
    let (server, tls) = a.server.resolve()?;
    let whitelist = filters(&a)?;
    let now = SystemTime::now();
    let since = a.since.as_deref().map(|s| parse_since(s, now)).transpose()?;
    let number = a.last.unwrap_or(if a.follow || since.is_some() { 0 } else { 20 });
    let req = GetFlowsRequest {
        number,
        follow: a.follow,
        whitelist,
        since: since.map(weir_proto::time::to_timestamp),
        ..Default::default()
    };
    let channel = connect_with(&server, Duration::from_secs(5), tls.as_ref()).await?;
    let mut stream = ObserverClient::new(channel)
        .max_decoding_message_size(4 << 20)
        .get_flows(req)
        .await
        .map_err(|s| call_error(&server, &s))?
        .into_inner();
    let stdout = std::io::stdout();
    let colour = a.output == Output::Compact && stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut w = stdout.lock();
    if a.output == Output::Table {
        out(
            &mut w,
            &format!(
                "{:<12}  {:<8}  {:<28}  {:<2}  {:<28}  {:<9}  {:<11}  {}",
                "TIME", "NODE", "SOURCE", "", "DESTINATION", "VERDICT", "PROTO", "DETAILS"
            ),
        )?;
    }
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(|s| call_error(&server, &s))?;
        match msg.response_types {
            Some(ResponseTypes::Flow(f)) => {
                let text = match a.output {
                    Output::Compact => compact(&f, colour),
                    Output::Json => json(&f).to_string(),
                    Output::Table => {
                        let l = line(&f);
                        format!(
                            "{:<12}  {:<8}  {:<28}  {:<2}  {:<28}  {:<9}  {:<11}  {}",
                            l.time, l.node, l.src, l.arrow, l.dst, l.verdict, l.proto, l.extra
                        )
                    }
                };
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
    Ok(())
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

    fn args(v: &[&str]) -> ObserveArgs {
        T::parse_from(std::iter::once("t").chain(v.iter().copied())).a
    }

    #[test]
    fn either_end_flags_multiply_into_exact_filters() {
        let f = filters(&args(&["--pod", "shop/web", "--port", "80", "--verdict", "dropped"])).unwrap();
        assert_eq!(f.len(), 4);
        assert!(f.iter().all(|x| x.verdict == [Verdict::Dropped as i32]));
        assert!(
            f.iter()
                .any(|x| x.source_pod == ["shop/web"] && x.destination_port == ["80"])
        );
        assert!(
            f.iter()
                .any(|x| x.destination_pod == ["shop/web"] && x.source_port == ["80"])
        );
        let f = filters(&args(&["-n", "shop", "--from-pod", "client", "--to-namespace", "db"])).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].source_pod, ["shop/client"]);
        assert_eq!(f[0].destination_pod, ["db/"]);
        assert!(filters(&args(&["--verdict", "maybe"])).is_err());
    }

    #[test]
    fn since_takes_durations_and_rfc3339() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_since("5m", now).unwrap(), now - Duration::from_secs(300));
        let t = parse_since("2026-12-01T13:00:00Z", now).unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1_796_130_000);
        let t2 = parse_since("2026-12-01T14:00:00+01:00", now).unwrap();
        assert_eq!(t, t2);
        assert!(parse_since("yesterday", now).is_err());
        let f = Flow {
            time: Some(weir_proto::time::to_timestamp(t + Duration::from_nanos(5))),
            ..Default::default()
        };
        assert_eq!(rfc3339(&f), "2026-12-01T13:00:00.000000005Z");
    }
}
