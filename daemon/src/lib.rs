//! weir-agent: loads the datapath, owns IPAM and endpoints, serves the local
//! API to weir-cni and keeps the cluster-state model current.

pub mod api;
pub mod backoff;
pub mod cleanup;
pub mod cluster;
pub mod config;
pub mod dataplane;
pub mod endpoints;
pub mod exclusive;
pub mod ipam;
pub mod ipcache;
pub mod metrics;
pub mod netdev;
pub mod policy;
pub mod reconcile;
pub mod routing;
pub mod services;
pub mod socket_lb;
pub mod store;
pub mod supervise;
pub mod sync;
pub mod xdp;

#[cfg(test)]
mod incremental_tests;

use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::watch;

use cluster::{ClusterSource, ClusterState, KubeSource, StandaloneSource};
use config::Config;
use dataplane::Kernel;
use endpoints::Endpoints;
use netdev::Netdev;
use store::Store;

/// Runs the agent until SIGTERM or SIGINT. Pinned maps and links stay behind
/// on purpose: pods keep their connectivity while the agent is away.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Before anything reads or writes the state: one agent per state dir.
    let state_lock = exclusive::StateLock::acquire(&config.state_dir)?;
    let mut datapath = load_datapath(&config)?;
    let netdev = Netdev::connect()?;
    // The Kubernetes client first: the uplink and the pod CIDR may come
    // from the Node.
    let kube = match &config.manifests {
        Some(_) => None,
        None => Some(weir_k8s::client(config.kubeconfig.as_deref()).await?),
    };
    let uplink = match uplink_name(&config, kube.as_ref(), &netdev).await? {
        Some(name) => Some(setup_uplink(&config, &name, &netdev, &mut datapath).await?),
        None => None,
    };
    attach_socket_lb(&config, &mut datapath)?;
    // One owner per map: each controller gets the handles of the maps it
    // programs; the endpoint manager keeps the datapath with the rest.
    let maps = OwnedMaps {
        route: datapath.take_route_maps()?,
        service: datapath.take_service_maps()?,
        ipcache: datapath.take_ipcache()?,
        events: datapath.take_events()?,
        policy: datapath.take_policy_maps()?,
    };
    let kernel = Kernel {
        datapath,
        netdev: netdev.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let pod_cidr = pod_cidr(&config, kube.as_ref()).await?;
    let (node, cidr, store) = (config.node.clone(), pod_cidr, Store::new(&config.state_dir));
    // Re-adopting endpoints makes blocking netlink calls: off the async threads.
    let endpoints = tokio::task::spawn_blocking(move || Endpoints::open(node, cidr, kernel, store))
        .await?
        .context("opening endpoint state")?;
    let endpoints = Arc::new(Mutex::new(endpoints));

    let flow_metrics = config.flow_metrics().map_err(|e| anyhow::anyhow!(e))?;
    let metrics = Arc::new(metrics::Metrics::with_flow_metrics(
        config.metrics_per_pod,
        flow_metrics,
    ));
    let (tx, rx) = watch::channel(Arc::new(ClusterState::default()));
    let OwnedMaps {
        route,
        service,
        ipcache,
        events,
        policy,
    } = maps;
    let running = start_controllers(Controllers {
        config: &config,
        kube,
        source: tx,
        cluster: rx.clone(),
        metrics: metrics.clone(),
        uplink,
        pod_cidr,
        netdev,
        route,
        service,
        ipcache,
        policy,
        endpoints: endpoints.clone(),
    });
    let flows = start_flows(&config, events, &running, rx.clone(), metrics.clone()).await?;
    if let config::Listen::On(addr) = config.metrics_listen {
        match metrics::bind(addr).await {
            Ok(l) => {
                tokio::spawn(metrics::serve(
                    metrics.clone(),
                    running.sync.clone(),
                    running.health.clone(),
                    l,
                ));
            }
            // Loud, not fatal: pods and flows matter more than a scrape.
            Err(e) => tracing::error!(%addr, error = %weir_error::Report(&e), "metrics: cannot listen; no /metrics"),
        }
    }

    let (listener, own_socket) =
        api::bind(&config.socket).with_context(|| format!("binding {}", config.socket.display()))?;
    tracing::info!(node = %config.node, %pod_cidr, socket = %config.socket.display(),
        hubble = %config.hubble_socket().display(), "agent ready");
    let sync = running.sync.clone();
    let server = tokio::spawn(api::serve(listener, endpoints, rx, sync.clone(), Some(metrics)));
    sync.set_serving();
    // Installed as the node's CNI only now: the runtime calls weir-cni as
    // soon as the conflist is there, and every ADD must find the agent.
    if let Some(path) = config.cni_conflist() {
        write_conflist(&path, &config.socket).with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(conflist = %path.display(), "installed as the node's CNI");
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: exiting, datapath stays in place"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: exiting, datapath stays in place"),
    }
    server.abort();
    flows.stop().await;
    own_socket.remove();
    drop(state_lock);
    Ok(())
}

/// Loads (or adopts the pinned) datapath, saying what of older pins it
/// replaced or removed.
fn load_datapath(config: &Config) -> anyhow::Result<weir_datapath::Datapath> {
    if config.pin_dir().starts_with("/sys/fs/bpf") {
        weir_datapath::ensure_bpffs(std::path::Path::new("/sys/fs/bpf"))?;
    }
    let load = weir_datapath::LoadOptions {
        no_flow_events: !config.flow_events,
        flow_report_interval: Some(config.flow_report_interval),
        ..Default::default()
    };
    let datapath = weir_datapath::Datapath::load_with(&config.pin_dir(), &load)
        .with_context(|| format!("loading datapath pinned at {}", config.pin_dir().display()))?;
    for r in datapath.replaced_pins() {
        tracing::warn!(
            map = %r.map,
            was = %r.was,
            now = %r.now,
            "a pinned map no longer fits this datapath: replaced with a new one (its entries are gone)"
        );
    }
    for map in datapath.retired_pins() {
        tracing::warn!(%map, "a pinned map of an older datapath is not used any more: removed");
    }
    Ok(datapath)
}

/// The uplink's name: as given, or (`auto`) the interface holding the
/// Node's InternalIP.
async fn uplink_name(
    config: &Config,
    kube: Option<&weir_k8s::kube::Client>,
    netdev: &Netdev,
) -> anyhow::Result<Option<String>> {
    Ok(match (config.uplink.as_deref(), kube) {
        (Some(config::AUTO_UPLINK), Some(client)) => {
            let ip = cluster::kubernetes::node_internal_ip(client, &config.node).await?;
            let name = netdev
                .link_with_ipv4(ip)
                .await?
                .with_context(|| format!("--uplink auto: no interface has the Node's InternalIP {ip}"))?;
            tracing::info!(node = %config.node, %ip, uplink = %name, "uplink from the Node's InternalIP");
            Some(name)
        }
        (other, _) => other.map(str::to_owned),
    })
}

/// The node's pod CIDR: as given, or the Node object's.
async fn pod_cidr(config: &Config, kube: Option<&weir_k8s::kube::Client>) -> anyhow::Result<ipnet::Ipv4Net> {
    match (config.pod_cidr, kube) {
        (Some(c), _) => Ok(c),
        (None, Some(client)) => {
            let c = cluster::kubernetes::node_pod_cidr(client, &config.node).await?;
            let errors = config.pod_cidr_errors(c);
            anyhow::ensure!(errors.is_empty(), "Node {}: {}", config.node, errors.join("; "));
            tracing::info!(node = %config.node, pod_cidr = %c, "pod CIDR from the Node object");
            Ok(c)
        }
        (None, None) => anyhow::bail!("--pod-cidr is needed in standalone mode"),
    }
}

/// The map handles each controller owns, taken from the datapath.
struct OwnedMaps {
    route: weir_datapath::RouteMaps,
    service: weir_datapath::lb::ServiceMaps,
    ipcache: weir_datapath::ipcache::IpCache,
    events: weir_datapath::events::EventSource,
    policy: weir_datapath::policy::PolicyMaps,
}

/// What the controllers are made of.
struct Controllers<'a> {
    config: &'a Config,
    kube: Option<weir_k8s::kube::Client>,
    source: watch::Sender<Arc<ClusterState>>,
    cluster: watch::Receiver<Arc<ClusterState>>,
    metrics: Arc<metrics::Metrics>,
    /// The uplink's ifindex and the node's address on it.
    uplink: Option<(u32, std::net::Ipv4Addr)>,
    pod_cidr: ipnet::Ipv4Net,
    netdev: Netdev,
    route: weir_datapath::RouteMaps,
    service: weir_datapath::lb::ServiceMaps,
    ipcache: weir_datapath::ipcache::IpCache,
    policy: weir_datapath::policy::PolicyMaps,
    endpoints: Arc<Mutex<Endpoints<Kernel>>>,
}

/// What the running controllers share with the rest of the agent.
struct Running {
    health: Arc<supervise::Health>,
    sync: Arc<sync::SyncStatus>,
    policy_names: Arc<weir_flows::PolicyNames>,
}

/// The cluster source and every controller, under one supervisor: a
/// panic is reported (/healthz, metrics, log) and, where the controller
/// can be made again, restarted.
fn start_controllers(c: Controllers<'_>) -> Running {
    let Controllers {
        config,
        kube,
        source: tx,
        cluster: rx,
        metrics,
        uplink,
        pod_cidr,
        netdev,
        route: route_maps,
        service: service_maps,
        ipcache: ipcache_map,
        policy: policy_maps,
        endpoints,
    } = c;
    let node_info = services::NodeInfo {
        name: config.node.clone(),
        ip: uplink.map(|(_, ip)| ip),
    };
    let health = Arc::new(supervise::Health::default());
    let mut controllers = supervise::Supervisor::new(health.clone(), Some(metrics.clone()));
    match (&config.manifests, kube) {
        (Some(dir), _) => {
            tracing::info!(dir = %dir.display(), "standalone mode: cluster state from manifests");
            controllers.start(
                "cluster-source",
                supervise::Start::once(StandaloneSource::new(dir.clone()).run(tx)),
            );
        }
        (None, Some(client)) => {
            tracing::info!(kubeconfig = ?config.kubeconfig, "cluster state from the Kubernetes API server");
            let source = KubeSource::new(client, Some(metrics.clone())).run(tx);
            controllers.start("cluster-source", supervise::Start::once(source));
        }
        (None, None) => unreachable!("a client is made whenever there are no manifests"),
    }

    if let Some((route_dev, _)) = uplink {
        let setup = routing::Setup {
            mode: config.routing,
            node: config.node.clone(),
            route_dev,
            bounds: routing::Bounds {
                own: pod_cidr,
                cluster: config.cluster_cidr,
            },
        };
        let route_maps = Arc::new(std::sync::Mutex::new(route_maps));
        let (metrics, rx) = (metrics.clone(), rx.clone());
        controllers.start(
            "routing",
            supervise::Start::restart(move || {
                routing::run(
                    setup.clone(),
                    netdev.clone(),
                    route_maps.clone(),
                    metrics.clone(),
                    rx.clone(),
                )
            }),
        );
    }

    let sync = Arc::new(sync::SyncStatus::default());
    {
        let (map, node, rx, sync) = (
            Arc::new(std::sync::Mutex::new(ipcache_map)),
            config.node.clone(),
            rx.clone(),
            sync.clone(),
        );
        controllers.start(
            "ipcache",
            supervise::Start::restart(move || {
                reconcile::run(
                    ipcache::Controller::new(map.clone(), node.clone(), sync.clone()),
                    rx.clone(),
                    reconcile::Options::default(),
                )
            }),
        );
    }
    {
        let (endpoints, rx) = (endpoints.clone(), rx.clone());
        controllers.start(
            "identities",
            supervise::Start::restart(move || endpoints::follow_identities(endpoints.clone(), rx.clone())),
        );
    }

    let lb_algorithm = match config.lb_algorithm {
        config::LbAlgorithm::Random => weir_datapath::lb::Algorithm::Random,
        config::LbAlgorithm::Maglev => weir_datapath::lb::Algorithm::Maglev,
    };
    let policy_names = Arc::new(weir_flows::PolicyNames::default());
    {
        let controller = Arc::new(std::sync::Mutex::new(policy::Controller::new(
            policy_maps,
            policy_names.clone(),
            Some(metrics.clone()),
        )));
        let (eps, changes) = (
            endpoints.clone(),
            endpoints.lock().unwrap_or_else(|p| p.into_inner()).changes(),
        );
        let list: policy::EndpointList =
            Arc::new(move || eps.lock().unwrap_or_else(|p| p.into_inner()).policy_endpoints());
        let (rx, sync) = (rx.clone(), sync.clone());
        controllers.start(
            "policy",
            supervise::Start::restart(move || {
                policy::run(
                    controller.clone(),
                    list.clone(),
                    rx.clone(),
                    changes.clone(),
                    sync.clone(),
                )
            }),
        );
    }
    {
        let (maps, rx, sync, metrics) = (
            services::shared(service_maps),
            rx.clone(),
            sync.clone(),
            metrics.clone(),
        );
        controllers.start(
            "services",
            supervise::Start::restart(move || {
                services::run(
                    maps.clone(),
                    lb_algorithm,
                    node_info.clone(),
                    rx.clone(),
                    sync.clone(),
                    Some(metrics.clone()),
                )
            }),
        );
    }
    tokio::spawn(controllers.run());
    Running {
        health,
        sync,
        policy_names,
    }
}

/// The flow pipeline's running parts: the reader thread, the Observer
/// API, the exporters.
struct Flows {
    reader: std::thread::JoinHandle<()>,
    stop_reader: Arc<std::sync::atomic::AtomicBool>,
    observer: tokio::task::JoinHandle<()>,
    hubble_own: weir_proto::socket::OwnSocket,
    export: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

/// Flows: the reader thread, the store, the Observer API, the exporters.
async fn start_flows(
    config: &Config,
    events: weir_datapath::events::EventSource,
    running: &Running,
    rx: watch::Receiver<Arc<ClusterState>>,
    metrics: Arc<metrics::Metrics>,
) -> anyhow::Result<Flows> {
    let flow_store = Arc::new(weir_flows::store::FlowStore::new(config.flow_buffer));
    let flow_stats = Arc::new(weir_flows::FlowStats::default());
    let stop_reader = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pipeline = weir_flows::Pipeline::new(
        config.node.clone(),
        config.flow_deleted_pod_grace,
        flow_stats.clone(),
        Some(metrics.clone()),
    )
    .with_policy_names(running.policy_names.clone());
    let reader = weir_flows::pipeline::spawn_reader(events, pipeline, flow_store.clone(), rx, stop_reader.clone())
        .context("starting the flow reader")?;
    let hubble_socket = config.hubble_socket();
    let (hubble_listener, hubble_own) =
        api::bind(&hubble_socket).with_context(|| format!("binding {}", hubble_socket.display()))?;
    let export = config.flow_export_config.clone().map(|path| {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let cx = weir_flows::export::Context {
            store: flow_store.clone(),
            node: Arc::from(config.node.as_str()),
            metrics: metrics.clone(),
        };
        (stop, weir_flows::export::spawn_watch(path, cx, stopped))
    });
    let observer = weir_flows::server::ObserverService {
        store: flow_store,
        stats: flow_stats,
        node: config.node.clone(),
        address: format!("unix://{}", hubble_socket.display()),
        started: std::time::Instant::now(),
        streams: Default::default(),
    };
    let hubble_tcp = match config.hubble_listen {
        Some(addr) => weir_flows::server::bind_tcp(addr, config.hubble_tls()).await,
        None => None,
    };
    let observer = tokio::spawn(weir_flows::server::serve(hubble_listener, hubble_tcp, observer));
    Ok(Flows {
        reader,
        stop_reader,
        observer,
        hubble_own,
        export,
    })
}

impl Flows {
    async fn stop(self) {
        self.observer.abort();
        // Exporters write out the flows they hold (a second at most).
        if let Some((stop, task)) = self.export {
            let _ = stop.send(());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), task).await;
        }
        self.hubble_own.remove();
        self.stop_reader.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.reader.join();
    }
}

/// The conflist naming `socket`, atomically (a runtime reading the dir
/// sees none or the whole file).
fn write_conflist(path: &std::path::Path, socket: &std::path::Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".weir-conflist.tmp");
    std::fs::write(&tmp, weir_agent_api::conflist(socket))?;
    std::fs::rename(&tmp, path)
}

/// Socket-level services for the node's own sockets (`socket_lb.rs`).
/// `auto` never keeps the node from starting: without a cgroup v2 root
/// the node's sockets reach no ClusterIP, as before, and the log says so.
fn attach_socket_lb(config: &Config, datapath: &mut weir_datapath::Datapath) -> anyhow::Result<()> {
    let auto = config.socket_lb == socket_lb::SocketLb::Auto;
    let cgroup = match socket_lb::resolve(&config.socket_lb) {
        Ok(Some(cgroup)) => cgroup,
        Ok(None) => {
            if auto {
                tracing::warn!("no cgroup v2 mount: the node's own sockets reach no service (--socket-lb)");
            }
            datapath.detach_socket_lb()?;
            return Ok(());
        }
        Err(why) => anyhow::bail!(why),
    };
    let cookie = weir_datapath::netns_cookie().context("the node's network namespace cookie (SO_NETNS_COOKIE)")?;
    match datapath.attach_socket_lb(&cgroup, cookie) {
        Ok(()) => {
            tracing::info!(cgroup = %cgroup.display(), netns_cookie = cookie, "socket-level services for the node's sockets");
            Ok(())
        }
        Err(e) if auto => {
            tracing::warn!(cgroup = %cgroup.display(), error = %weir_error::Report(&e), "socket-level services not attached: the node's own sockets reach no service");
            datapath.detach_socket_lb()?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("attaching socket-level services to {}", cgroup.display())),
    }
}

/// Node plumbing for multi-node clusters: the uplink's ingress program, its
/// egress (masquerade) program when a cluster CIDR is given, the vxlan
/// device in overlay mode, forwarding, and the datapath's config.
/// NodePorts and external IPs are translated by XDP on the uplink where that
/// pays ([`xdp::decide`]), else by `from_netdev` in TC alone.
/// Returns the device routes to other nodes use (the uplink, or the vxlan
/// device in overlay mode) and the node IP.
async fn setup_uplink(
    config: &Config,
    uplink: &str,
    netdev: &Netdev,
    datapath: &mut weir_datapath::Datapath,
) -> anyhow::Result<(u32, std::net::Ipv4Addr)> {
    use weir_datapath::ProgramKind;
    use weir_datapath::abi::{Config as DpConfig, ROUTING_NATIVE, ROUTING_VXLAN};

    let index = netdev
        .link_index(uplink)
        .await?
        .with_context(|| format!("uplink {uplink} does not exist"))?;
    let node_ip = netdev
        .ipv4_of(index)
        .await?
        .with_context(|| format!("uplink {uplink} has no IPv4 address"))?;
    datapath.attach_device(uplink, ProgramKind::FromNetdev)?;
    let kind = netdev.link_kind(index).await?;
    let (choice, why) = xdp::decide(config.nodeport_xdp, kind.as_deref());
    let nodeport_xdp = match choice {
        xdp::Choice::Native => match datapath.attach_xdp(uplink) {
            Ok(()) => true,
            Err(e) if config.nodeport_xdp == config::NodePortXdp::Auto => {
                // TC does the same translation; a driver without native XDP
                // must not keep the node from starting.
                tracing::warn!(%uplink, error = %weir_error::Report(&e), "native XDP not available: NodePorts in TC");
                datapath.detach_xdp(uplink)?;
                false
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("attaching XDP (native mode) to {uplink}; --nodeport-xdp=off uses TC"));
            }
        },
        xdp::Choice::Tc => {
            datapath.detach_xdp(uplink)?;
            false
        }
    };
    tracing::info!(%uplink, link_kind = kind.as_deref().unwrap_or("physical"), nodeport_xdp, reason = why, "NodePort translation");
    let (mode, tunnel_ifindex) = match config.routing {
        config::Routing::Native => (ROUTING_NATIVE, 0),
        config::Routing::Vxlan => {
            let vxlan = netdev.ensure_vxlan().await?;
            datapath.attach_device(netdev::VXLAN_DEVICE, ProgramKind::FromOverlay)?;
            datapath.attach_device(netdev::VXLAN_DEVICE, ProgramKind::ToOverlay)?;
            (ROUTING_VXLAN, vxlan)
        }
    };
    let mut dp_config = DpConfig {
        routing_mode: mode,
        tunnel_ifindex,
        node_ip: u32::from_ne_bytes(node_ip.octets()),
        ..Default::default()
    };
    match config.cluster_cidr {
        Some(cluster) => dp_config = dp_config.with_masquerade(cluster),
        // An earlier agent may have attached it: no masquerading now.
        None => datapath.detach_device(uplink, ProgramKind::ToNetdev)?,
    }
    // Config first: to_netdev reads it from its first packet on.
    datapath.set_config(dp_config)?;
    if config.cluster_cidr.is_some() {
        datapath.attach_device(uplink, ProgramKind::ToNetdev)?;
    }
    // The node forwards pod traffic to other nodes (native routing) and to
    // the outside; /proc/sys/net is per network namespace.
    // Written only when off: in a container /proc/sys may be read-only,
    // and the DaemonSet's init container has already turned it on.
    let forwarding = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(forwarding)
        .map(|v| v.trim() != "1")
        .unwrap_or(true)
    {
        std::fs::write(forwarding, "1").context("enabling IPv4 forwarding")?;
    }
    tracing::info!(%uplink, %node_ip, routing = ?config.routing, masquerade = ?config.cluster_cidr, nodeport_xdp, "uplink ready");
    Ok((if tunnel_ifindex != 0 { tunnel_ifindex } else { index }, node_ip))
}
