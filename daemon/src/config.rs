//! The agent's one typed configuration, from flags and environment.

use std::path::PathBuf;

use clap::Parser;
use ipnet::Ipv4Net;
use weir_flows::export::config::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Routing {
    Native,
    Vxlan,
}

/// How the datapath picks a service backend for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LbAlgorithm {
    /// Uniformly random per connection.
    Random,
    /// Maglev consistent hashing of the 5-tuple: the same backend from every
    /// node, few connections move when backends change.
    Maglev,
}

/// Where NodePorts, externalIPs and LoadBalancer IPs are translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NodePortXdp {
    /// Native XDP on a physical uplink, TC on a virtual one (veth and other
    /// software devices, where an XDP program makes every frame, pod traffic
    /// included, take the XDP path and copies GSO frames).
    Auto,
    /// Native XDP on the uplink whatever its driver; fails if it cannot.
    #[value(alias = "true", alias = "native")]
    On,
    /// TC alone: the same translation in `from_netdev`, later in the stack.
    #[value(alias = "false", alias = "tc")]
    Off,
}

/// `--uplink auto`: the interface with the Node's InternalIP.
pub const AUTO_UPLINK: &str = "auto";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "weir-agent",
    version,
    about = "weir node agent: loads the eBPF datapath and wires pods"
)]
pub struct Config {
    /// Name of this node (the Node object's name).
    #[arg(long, env = "WEIR_NODE")]
    pub node: String,

    /// The node's pod CIDR; pod addresses are allocated from it. Against
    /// the API server it defaults to the Node object's `spec.podCIDR`.
    #[arg(long, env = "WEIR_POD_CIDR")]
    pub pod_cidr: Option<Ipv4Net>,

    /// bpffs directory under which this node's maps and links are pinned
    /// (in `<bpffs-root>/<node>`); bpffs is mounted at /sys/fs/bpf if absent.
    #[arg(long, env = "WEIR_BPFFS_ROOT", default_value = "/sys/fs/bpf/weir")]
    pub bpffs_root: PathBuf,

    /// Directory for state that must survive restarts (address allocations).
    #[arg(long, env = "WEIR_STATE_DIR", default_value = "/var/lib/weir")]
    pub state_dir: PathBuf,

    /// Unix socket of the local API used by weir-cni (created mode 0600).
    #[arg(long, env = "WEIR_SOCKET", default_value = "/run/weir/agent.sock")]
    pub socket: PathBuf,

    /// Standalone mode: read cluster state from this directory of Kubernetes
    /// YAML instead of the API server.
    #[arg(long, env = "WEIR_MANIFESTS", conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,

    /// The API server to watch, from this kubeconfig. Without it (and
    /// without --manifests) the agent uses its pod's service account
    /// (in-cluster config).
    #[arg(long, env = "WEIR_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// The node's uplink: its TC ingress gets the program that delivers
    /// routed traffic to local pods, and its IPv4 address is the node IP.
    /// `auto`: the interface holding the Node object's InternalIP (against
    /// the API server), so a DaemonSet needs no per-node flag.
    #[arg(long, env = "WEIR_UPLINK")]
    pub uplink: Option<String>,

    /// Install weir as the node's CNI once the agent serves pod ADDs: the
    /// conflist `05-weir.conflist` in this directory (the runtime's CNI
    /// config dir), written atomically, naming `--socket`. Without it the
    /// conflist is someone else's to write (the lab, an installer).
    #[arg(long, env = "WEIR_CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,

    /// How pod traffic reaches other nodes: `native` (routes to each node's
    /// pod CIDR via its node IP) or `vxlan` (encapsulated by the datapath).
    #[arg(long, env = "WEIR_ROUTING", value_enum, default_value_t = Routing::Native)]
    pub routing: Routing,

    /// The cluster's pod CIDR (every node's pod CIDR lies in it). With it,
    /// local pods' traffic to anything outside it (the world, and other
    /// nodes' IPs) is masqueraded to the node IP by the uplink's egress
    /// program, in eBPF (no iptables). Without it, nothing is masqueraded
    /// and pod traffic leaves with the pod's own address. Needs --uplink.
    #[arg(long, env = "WEIR_CLUSTER_CIDR")]
    pub cluster_cidr: Option<Ipv4Net>,

    /// Service backend selection for new connections: `random` or `maglev`.
    #[arg(long, env = "WEIR_LB_ALGORITHM", value_enum, default_value_t = LbAlgorithm::Random)]
    pub lb_algorithm: LbAlgorithm,

    /// Translate NodePorts, externalIPs and LoadBalancer IPs in XDP (native
    /// mode) on the uplink: `auto` (physical uplinks only), `on` (also
    /// `true`) or `off` (also `false`: the uplink's TC program alone).
    #[arg(long, env = "WEIR_NODEPORT_XDP", value_enum, default_value_t = NodePortXdp::Auto)]
    pub nodeport_xdp: NodePortXdp,

    /// Socket-level services for the node's own sockets (the node's
    /// processes, kubelet probes, host-network pods reach ClusterIPs, this
    /// node's NodePorts and external IPs at connect time): `auto` (the
    /// cgroup2 root of this mount namespace, if any), `off`, or the host's
    /// cgroup v2 directory as mounted here (its `unified` child is used on
    /// a hybrid v1/v2 host).
    #[arg(long, env = "WEIR_SOCKET_LB", default_value = "auto")]
    pub socket_lb: crate::socket_lb::SocketLb,

    /// Log filter (tracing-subscriber EnvFilter syntax).
    /// (The Kubernetes client's and watcher's own messages are off by
    /// default: each failed request of a watch would be one, 403s at warn
    /// with the whole status; the agent says once per outage, cause and
    /// kind what failed.)
    #[arg(
        long,
        env = "WEIR_LOG",
        default_value = "info,kube_client=off,kube_runtime::watcher=off"
    )]
    pub log: String,

    /// The Observer API's Unix socket (root only), for `hubble observe
    /// --server unix://...`, `weir observe` and the relay. Default: next
    /// to --socket, named hubble.sock.
    #[arg(long, env = "WEIR_HUBBLE_SOCKET")]
    pub hubble_socket: Option<PathBuf>,

    /// Also serve the Observer API on this TCP address (Hubble's port is
    /// 4244). Off unless given. Anything but a loopback address needs
    /// mutual TLS (--hubble-tls-cert, --hubble-tls-key,
    /// --hubble-tls-client-ca) or --hubble-insecure.
    #[arg(long, env = "WEIR_HUBBLE_LISTEN")]
    pub hubble_listen: Option<std::net::SocketAddr>,

    /// --hubble-listen over TLS: the agent's certificate chain (PEM, its
    /// own certificate first). Re-read when it changes, no restart.
    #[arg(long, env = "WEIR_HUBBLE_TLS_CERT")]
    pub hubble_tls_cert: Option<PathBuf>,

    /// The private key of --hubble-tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "WEIR_HUBBLE_TLS_KEY")]
    pub hubble_tls_key: Option<PathBuf>,

    /// The CA (PEM) whose client certificates --hubble-listen accepts (the
    /// relay's); clients without one are refused at the handshake.
    #[arg(long, env = "WEIR_HUBBLE_TLS_CLIENT_CA")]
    pub hubble_tls_client_ca: Option<PathBuf>,

    /// Serve --hubble-listen in plaintext, to anyone who reaches the port,
    /// on an address that is not loopback.
    #[arg(long, env = "WEIR_HUBBLE_INSECURE")]
    pub hubble_insecure: bool,

    /// Flows kept in memory for GetFlows.
    #[arg(long, env = "WEIR_FLOW_BUFFER", default_value_t = 4095)]
    pub flow_buffer: usize,

    /// A deleted pod is still named on its late flows for this long.
    #[arg(long, env = "WEIR_FLOW_DELETED_POD_GRACE", value_parser = parse_duration, default_value = "2m")]
    pub flow_deleted_pod_grace: std::time::Duration,

    /// How often a live connection reports its counters.
    #[arg(long, env = "WEIR_FLOW_REPORT_INTERVAL", value_parser = parse_duration, default_value = "10s")]
    pub flow_report_interval: std::time::Duration,

    /// Record flow events in the datapath (off: no events, no flows; the
    /// benchmark's baseline).
    #[arg(long, env = "WEIR_FLOW_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub flow_events: bool,

    /// Flow export configuration (`flowLogs`: files with rotation, OTLP
    /// collectors; filters and field masks), read again whenever it
    /// changes. No file: no export.
    #[arg(long, env = "WEIR_FLOW_EXPORT_CONFIG")]
    pub flow_export_config: Option<PathBuf>,

    /// Prometheus metrics on http://ADDR/metrics; "off" for none.
    #[arg(long, env = "WEIR_METRICS_LISTEN", value_parser = parse_listen, default_value = "127.0.0.1:9962")]
    pub metrics_listen: Listen,

    /// Hubble's flow metrics, in Hubble's syntax: metrics separated by
    /// spaces, each with its context options, e.g. `flow:sourceContext=
    /// workload;destinationContext=namespace|reserved-identity drop
    /// port-distribution flows-to-world` (metrics: flow, drop,
    /// port-distribution, flows-to-world; contexts: identity, namespace,
    /// pod, pod-name, ip, reserved-identity, workload, workload-name, app;
    /// or labelsContext=source_namespace,destination_pod,...). Empty: none.
    #[arg(long, env = "WEIR_HUBBLE_METRICS", default_value = "flow")]
    pub hubble_metrics: String,

    /// Hubble's flow metrics from a YAML file in Hubble's format
    /// (`metrics: [{name, contextOptions: [{name, values}],
    /// includeFilters, excludeFilters}]`): the filters keep namespaces or
    /// pods out of the series. Read at start; replaces --hubble-metrics.
    #[arg(long, env = "WEIR_HUBBLE_METRICS_CONFIG")]
    pub hubble_metrics_config: Option<PathBuf>,

    /// Per-pod series (bytes by pod); off keeps only namespaces.
    #[arg(long, env = "WEIR_METRICS_PER_POD", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics_per_pod: bool,
}

/// An address to listen on, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    On(std::net::SocketAddr),
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen::Off);
    }
    s.parse()
        .map(Listen::On)
        .map_err(|e| format!("{s:?}: {e} (expected ADDR:PORT or off)"))
}

impl Config {
    /// Checks what clap cannot; returns every problem at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.node.is_empty() || self.node.contains('/') {
            errors.push(format!("--node {:?}: must be a non-empty name without '/'", self.node));
        }
        match self.pod_cidr {
            Some(cidr) => errors.extend(self.pod_cidr_errors(cidr)),
            None if self.manifests.is_some() => {
                errors.push("--pod-cidr is needed in standalone mode (--manifests)".into());
            }
            // From the Node object, checked when it is read.
            None => {}
        }
        if self.routing == Routing::Vxlan && self.uplink.is_none() {
            errors.push("--routing vxlan needs --uplink (the node IP is the tunnel endpoint)".into());
        }
        if let Some(cluster) = self.cluster_cidr {
            if cluster.network() != cluster.addr() {
                errors.push(format!(
                    "--cluster-cidr {cluster}: has host bits set (did you mean {}?)",
                    cluster.trunc()
                ));
            }
            if self.uplink.is_none() {
                errors.push("--cluster-cidr needs --uplink (masquerading happens on the uplink)".into());
            }
        }
        if self.flow_buffer == 0 || self.flow_buffer > 1 << 24 {
            errors.push(format!("--flow-buffer {}: must be 1 to {}", self.flow_buffer, 1 << 24));
        }
        if self.flow_report_interval < std::time::Duration::from_millis(100) {
            errors.push("--flow-report-interval: at least 100ms".into());
        }
        if self.uplink.as_deref() == Some(AUTO_UPLINK) && self.manifests.is_some() {
            errors.push("--uplink auto needs the API server (it reads the Node's InternalIP)".into());
        }
        if !self.bpffs_root.is_absolute() {
            errors.push(format!("--bpffs-root {}: must be absolute", self.bpffs_root.display()));
        }
        errors.extend(self.hubble_tls_errors());
        if let Err(e) = self.flow_metrics() {
            errors.push(e);
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// Hubble's flow metrics as configured: the file's, else the flag's.
    pub fn flow_metrics(&self) -> Result<Vec<crate::metrics::context::MetricSpec>, String> {
        match &self.hubble_metrics_config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--hubble-metrics-config {}: {e}", path.display()))?;
                crate::metrics::context::parse_file(&text)
                    .map_err(|e| format!("--hubble-metrics-config {}: {e}", path.display()))
            }
            None => {
                crate::metrics::context::parse_flag(&self.hubble_metrics).map_err(|e| format!("--hubble-metrics: {e}"))
            }
        }
    }

    /// What is wrong with --hubble-listen's security flags; the files are
    /// read to check they load.
    fn hubble_tls_errors(&self) -> Vec<String> {
        let tls = [
            ("--hubble-tls-cert", &self.hubble_tls_cert),
            ("--hubble-tls-key", &self.hubble_tls_key),
            ("--hubble-tls-client-ca", &self.hubble_tls_client_ca),
        ];
        let given: Vec<&str> = tls.iter().filter(|(_, v)| v.is_some()).map(|(f, _)| *f).collect();
        let missing: Vec<&str> = tls.iter().filter(|(_, v)| v.is_none()).map(|(f, _)| *f).collect();
        let mut errors = Vec::new();
        if !given.is_empty() && self.hubble_listen.is_none() {
            errors.push(format!(
                "{}: TLS is for --hubble-listen, which is not given (the Unix socket has no TLS)",
                given.join(", ")
            ));
        }
        if !given.is_empty() && !missing.is_empty() {
            errors.push(format!(
                "{} given without {}: the agent's TCP port serves mutual TLS only, all three are needed",
                given.join(", "),
                missing.join(", ")
            ));
        }
        if !given.is_empty() && self.hubble_insecure {
            errors.push("--hubble-insecure with TLS flags: choose one".into());
        }
        if let Some(addr) = self.hubble_listen
            && given.is_empty()
            && !self.hubble_insecure
            && !addr.ip().is_loopback()
        {
            errors.push(format!(
                "--hubble-listen {addr}: flows on a non-loopback address need mutual TLS: pass \
                 --hubble-tls-cert FILE --hubble-tls-key FILE --hubble-tls-client-ca FILE (PEM), \
                 or --hubble-insecure to serve them in plaintext to anyone who reaches the port"
            ));
        }
        // Files not there yet (a Secret the operator has yet to issue) are
        // waited for: the TCP port refuses connections until they load.
        if let Some(files) = self.hubble_tls()
            && let Err(e) = weir_proto::tls::ServerTls::check(&files)
            && !e.is_missing()
        {
            errors.push(format!("--hubble-tls-*: {}", weir_error::report(&e)));
        }
        errors
    }

    /// The TLS files of --hubble-listen, when all are given.
    pub fn hubble_tls(&self) -> Option<weir_proto::tls::ServerFiles> {
        Some(weir_proto::tls::ServerFiles {
            cert: self.hubble_tls_cert.clone()?,
            key: self.hubble_tls_key.clone()?,
            client_ca: Some(self.hubble_tls_client_ca.clone()?),
        })
    }

    /// What is wrong with `cidr` as this node's pod CIDR (given, or read
    /// from the Node object).
    pub fn pod_cidr_errors(&self, cidr: Ipv4Net) -> Vec<String> {
        let mut errors = Vec::new();
        if cidr.prefix_len() > 30 {
            errors.push(format!(
                "pod CIDR {cidr}: needs at least 4 addresses (prefix /30 or shorter)"
            ));
        }
        if cidr.network() != cidr.addr() {
            errors.push(format!(
                "pod CIDR {cidr}: has host bits set (did you mean {}?)",
                cidr.trunc()
            ));
        }
        if let Some(cluster) = self.cluster_cidr.filter(|c| !c.contains(&cidr)) {
            errors.push(format!("--cluster-cidr {cluster} does not contain the pod CIDR {cidr}"));
        }
        errors
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs_root.join(&self.node)
    }

    /// The conflist the agent writes, with `--cni-conf-dir`.
    pub fn cni_conflist(&self) -> Option<PathBuf> {
        self.cni_conf_dir
            .as_ref()
            .map(|d| d.join(weir_agent_api::CONFLIST_NAME))
    }

    pub fn hubble_socket(&self) -> PathBuf {
        self.hubble_socket
            .clone()
            .unwrap_or_else(|| self.socket.with_file_name("hubble.sock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("weir-agent").chain(args.iter().copied()))
    }

    #[test]
    fn reports_every_problem_at_once() {
        let c = parse(&["--node", "a/b", "--pod-cidr", "10.0.0.1/31", "--bpffs-root", "rel"]).unwrap();
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        let c = parse(&["--node", "n", "--pod-cidr", "10.0.0.0/24", "--routing", "vxlan"]).unwrap();
        assert!(c.validate().unwrap_err()[0].contains("--uplink"));
    }

    #[test]
    fn cluster_cidr_must_hold_the_pod_cidr_and_needs_an_uplink() {
        let c = parse(&[
            "--node",
            "n",
            "--pod-cidr",
            "10.244.1.0/24",
            "--cluster-cidr",
            "10.245.0.1/16",
        ])
        .unwrap();
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        let c = parse(&[
            "--node",
            "n",
            "--pod-cidr",
            "10.244.1.0/24",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--uplink",
            "eth0",
        ])
        .unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn accepts_a_normal_node() {
        let c = parse(&["--node", "n1", "--pod-cidr", "10.244.1.0/24"]).unwrap();
        c.validate().unwrap();
        assert_eq!(c.pin_dir(), PathBuf::from("/sys/fs/bpf/weir/n1"));
        assert_eq!(c.nodeport_xdp, NodePortXdp::Auto, "XDP where it pays, by default");
        let c = parse(&["--node", "n1", "--pod-cidr", "10.244.1.0/24", "--nodeport-xdp=false"]).unwrap();
        assert_eq!(c.nodeport_xdp, NodePortXdp::Off);
        let c = parse(&["--node", "n1", "--pod-cidr", "10.244.1.0/24", "--nodeport-xdp=true"]).unwrap();
        assert_eq!(c.nodeport_xdp, NodePortXdp::On);
    }

    #[test]
    fn a_non_loopback_hubble_port_needs_mutual_tls_or_insecure() {
        let base = ["--node", "n1", "--pod-cidr", "10.244.1.0/24"];
        let with = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            parse(&args).unwrap().validate()
        };
        with(&["--hubble-listen", "127.0.0.1:4244"]).expect("loopback stays plaintext");
        with(&["--hubble-listen", "[::1]:4244"]).expect("loopback stays plaintext");
        let errs = with(&["--hubble-listen", "0.0.0.0:4244"]).unwrap_err();
        assert!(
            errs.len() == 1 && errs[0].contains("--hubble-tls-cert FILE") && errs[0].contains("--hubble-insecure"),
            "says what to pass: {errs:?}"
        );
        with(&["--hubble-listen", "10.0.0.1:4244", "--hubble-insecure"]).expect("plaintext, explicitly");

        let errs = with(&["--hubble-listen", "10.0.0.1:4244", "--hubble-tls-cert", "/c.pem"]).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.contains("without --hubble-tls-key, --hubble-tls-client-ca")),
            "{errs:?}"
        );
        let errs = with(&[
            "--hubble-tls-cert",
            "/c",
            "--hubble-tls-key",
            "/k",
            "--hubble-tls-client-ca",
            "/ca",
        ])
        .unwrap_err();
        assert!(errs.iter().any(|e| e.contains("not given")), "{errs:?}");
        let errs = with(&[
            "--hubble-listen",
            "10.0.0.1:4244",
            "--hubble-insecure",
            "--hubble-tls-cert",
            "/c",
            "--hubble-tls-key",
            "/k",
            "--hubble-tls-client-ca",
            "/ca",
        ])
        .unwrap_err();
        assert!(errs.iter().any(|e| e.contains("choose one")), "{errs:?}");
        // Files not there yet are waited for (a Secret the operator has
        // yet to issue); files that are there are read, and must load.
        assert!(!errs.iter().any(|e| e.contains("reading /c")), "{errs:?}");
        let errs = with(&[
            "--hubble-listen",
            "10.0.0.1:4244",
            "--hubble-tls-cert",
            "/proc/self/status",
            "--hubble-tls-key",
            "/proc/self/status",
            "--hubble-tls-client-ca",
            "/proc/self/status",
        ])
        .unwrap_err();
        assert!(
            errs.iter().any(|e| e.contains("/proc/self/status: no certificate")),
            "the files are read: {errs:?}"
        );
    }

    #[test]
    fn the_three_hubble_tls_files_make_the_servers_files() {
        let c = parse(&[
            "--node",
            "n1",
            "--hubble-tls-cert",
            "/c",
            "--hubble-tls-key",
            "/k",
            "--hubble-tls-client-ca",
            "/ca",
        ])
        .unwrap();
        let files = c.hubble_tls().unwrap();
        assert_eq!(
            (files.cert, files.key, files.client_ca),
            ("/c".into(), "/k".into(), Some("/ca".into()))
        );
        assert!(
            parse(&["--node", "n1", "--hubble-tls-cert", "/c"])
                .unwrap()
                .hubble_tls()
                .is_none()
        );
    }

    #[test]
    fn the_pod_cidr_is_needed_only_without_an_api_server() {
        assert!(parse(&[]).is_err(), "--node is required");
        let c = parse(&["--node", "n1", "--manifests", "/m"]).unwrap();
        assert!(c.validate().unwrap_err()[0].contains("--pod-cidr is needed in standalone mode"));
        let c = parse(&["--node", "n1", "--kubeconfig", "/k"]).unwrap();
        c.validate().expect("the pod CIDR comes from the Node object");
        assert!(
            parse(&["--node", "n1", "--manifests", "/m", "--kubeconfig", "/k"]).is_err(),
            "one source of cluster state"
        );
        let c = parse(&["--node", "n1", "--kubeconfig", "/k", "--cluster-cidr", "10.244.0.0/16"]).unwrap();
        let errs = c.pod_cidr_errors("10.245.1.0/24".parse().unwrap());
        assert!(
            errs[0].contains("does not contain"),
            "a Node's CIDR is checked too: {errs:?}"
        );
    }
}
