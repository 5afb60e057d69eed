//! A local Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler; `scripts/tools.sh` builds them
//! into its cache) as the lab and the tests run it: what to run and with
//! which flags, and the files it needs (an openssl CA, the API server's
//! serving certificate, the service-account key, a token file with an
//! admin in `system:masters`, the admin's kubeconfig). Starting and
//! stopping the processes is the caller's (the tests kill them on drop,
//! the lab records them for `weir lab down`).
//!
//! The API server listens on loopback and, when `advertise` is given, on
//! that address too (a node address inside a network namespace the caller
//! made); RBAC and Node authorizers, the default admission plugins.
//! kube-controller-manager runs every controller (its pod CIDR allocator
//! unless `Options::allocate_node_cidrs` is off) but, unless real kubelets
//! run the nodes (`Options::real_kubelets`), the node lifecycle one: where
//! no kubelet renews node leases, that controller would call every node
//! unreachable after 50 s and mark its pods not ready. Real kubelets
//! authenticate with client certificates from the plan's CA
//! (`Plan::node_kubeconfig`), as `system:node:NAME` in `system:nodes`.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The API server's port when the caller has its own network namespace
/// (the lab); tests on the host's loopback pick free ports.
pub const APISERVER_PORT: u16 = 6443;

/// The cache `scripts/tools.sh` builds into: `$WEIR_TOOLS_DIR/bin`, by
/// default `~/.cache/weir-tools/bin`.
pub fn tools_dir() -> Option<PathBuf> {
    std::env::var_os("WEIR_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("weir-tools")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/weir-tools")))
        .map(|d| d.join("bin"))
}

/// A tool of the cache, if it is built.
pub fn tool(name: &str) -> Option<PathBuf> {
    tools_dir().map(|d| d.join(name)).filter(|p| p.exists())
}

/// Ports, addresses and ranges of one control plane.
#[derive(Debug, Clone)]
pub struct Options {
    pub etcd_client_port: u16,
    pub etcd_peer_port: u16,
    pub apiserver_port: u16,
    /// Also serve (and name in the certificate) this address.
    pub advertise: Option<Ipv4Addr>,
    pub service_cidr: String,
    pub cluster_cidr: String,
    /// The size of each node's pod CIDR from the allocator.
    pub node_cidr_mask: u8,
    /// kube-controller-manager allocates Nodes' pod CIDRs from
    /// `cluster_cidr` (its node IPAM controller). `false` when weir's
    /// operator allocates them (`weir-operator --cluster-cidr`): two
    /// allocators on one pool would hand out a CIDR twice.
    pub allocate_node_cidrs: bool,
    /// Real kubelets run the nodes: they renew leases, so the node
    /// lifecycle controller runs (it lifts the not-ready taint once a node
    /// is Ready, and marks nodes whose kubelet went away).
    pub real_kubelets: bool,
}

/// One process to run.
#[derive(Debug, Clone)]
pub struct Component {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Everything prepared; the processes not started.
#[derive(Debug, Clone)]
pub struct Plan {
    pub dir: PathBuf,
    /// `https://ADDRESS:PORT`, the advertised address if any.
    pub server: String,
    /// `https://127.0.0.1:PORT`.
    pub loopback_server: String,
    pub admin_token: String,
    /// The admin's kubeconfig (loopback server).
    pub admin_kubeconfig: PathBuf,
    /// In start order: etcd, the API server, then the controllers (which
    /// need the API server ready).
    pub components: Vec<Component>,
}

fn openssl(args: &[&str], what: &str) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .with_context(|| format!("openssl ({what}); scripts/deps.sh installs it"))?;
    if !out.status.success() {
        bail!("openssl ({what}): {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A kubeconfig for `server` with a bearer token, trusting the plan's CA.
pub fn kubeconfig(server: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: weir\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: weir\n  context: {{cluster: weir, user: user}}\ncurrent-context: weir\n",
        ca.display()
    )
}

/// A random token (hex of 16 bytes from the kernel).
fn token() -> anyhow::Result<String> {
    let bytes = std::fs::read("/proc/sys/kernel/random/uuid").context("a random token")?;
    Ok(String::from_utf8_lossy(&bytes).trim().replace('-', ""))
}

impl Plan {
    /// Writes certificates, keys, the token file and the admin kubeconfig
    /// into `dir` (created), and says what to run. Fails if a binary is
    /// not built.
    pub fn prepare(dir: &Path, o: &Options) -> anyhow::Result<Plan> {
        let need = |name: &str| {
            tool(name).with_context(|| format!("{name} is not built: scripts/tools.sh builds the control plane"))
        };
        let (etcd, apiserver, cm, scheduler) = (
            need("etcd")?,
            need("kube-apiserver")?,
            need("kube-controller-manager")?,
            need("kube-scheduler")?,
        );
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=weir-local-ca",
                "-keyout",
                &p("ca.key"),
                "-out",
                &p("ca.crt"),
            ],
            "CA",
        )?;
        let extra = o.advertise.map(|a| format!(",IP:{a}")).unwrap_or_default();
        std::fs::write(
            dir.join("san.ext"),
            format!(
                "subjectAltName=IP:127.0.0.1{extra},IP:{},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n",
                first_service_ip(&o.service_cidr)
            ),
        )?;
        signed_by_ca(dir, "apiserver", "/CN=kube-apiserver", Some(&p("san.ext")))?;
        openssl(&["genrsa", "-out", &p("sa.key"), "2048"], "service-account key")?;
        let admin_token = token()?;
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{admin_token},admin,admin,\"system:masters\"\n"),
        )?;
        let loopback_server = format!("https://127.0.0.1:{}", o.apiserver_port);
        let server = match o.advertise {
            Some(a) => format!("https://{a}:{}", o.apiserver_port),
            None => loopback_server.clone(),
        };
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        std::fs::write(
            &admin_kubeconfig,
            kubeconfig(&loopback_server, &dir.join("ca.crt"), &admin_token),
        )?;

        let etcd_url = format!("http://127.0.0.1:{}", o.etcd_client_port);
        let peer = format!("http://127.0.0.1:{}", o.etcd_peer_port);
        let s = |v: &[String]| v.to_vec();
        let etcd_args = s(&[
            "--name=weir".into(),
            format!("--data-dir={}", p("etcd")),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=weir={peer}"),
            "--log-level=warn".into(),
        ]);
        let bind = if o.advertise.is_some() { "0.0.0.0" } else { "127.0.0.1" };
        let advertised = o.advertise.unwrap_or(Ipv4Addr::LOCALHOST);
        let apiserver_args = s(&[
            format!("--etcd-servers={etcd_url}"),
            format!("--bind-address={bind}"),
            format!("--advertise-address={advertised}"),
            format!("--secure-port={}", o.apiserver_port),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=Node,RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", p("sa.key")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            format!("--service-cluster-ip-range={}", o.service_cidr),
            "--allow-privileged=true".into(),
            // Reach kubelets (exec, logs, port-forward) at their node
            // address: a node's name resolves nowhere here, and the
            // lookup itself would go to the host's resolver.
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname".into(),
            "--v=1".into(),
        ]);
        let kc = format!("--kubeconfig={}", admin_kubeconfig.display());
        let cm_args = s(&[
            kc.clone(),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            "--use-service-account-credentials=true".into(),
            match o.real_kubelets {
                true => "--controllers=*".into(),
                false => "--controllers=*,-node-lifecycle-controller".into(),
            },
            format!("--allocate-node-cidrs={}", o.allocate_node_cidrs),
            format!("--cluster-cidr={}", o.cluster_cidr),
            format!("--node-cidr-mask-size={}", o.node_cidr_mask),
            format!("--service-cluster-ip-range={}", o.service_cidr),
        ]);
        let scheduler_args = s(&[
            kc,
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
        ]);
        let c = |name, program, args| Component { name, program, args };
        Ok(Plan {
            dir: dir.to_owned(),
            server,
            loopback_server,
            admin_token,
            admin_kubeconfig,
            components: vec![
                c("etcd", etcd, etcd_args),
                c("kube-apiserver", apiserver, apiserver_args),
                c("kube-controller-manager", cm, cm_args),
                c("kube-scheduler", scheduler, scheduler_args),
            ],
        })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A kubeconfig for node `node`'s kubelet at `server`: a client
    /// certificate from the plan's CA for `system:node:NODE` in group
    /// `system:nodes`, which the Node authorizer and the NodeRestriction
    /// admission plugin know (a token would do too, but kubelets use
    /// certificates, and the token file is read once at start).
    pub fn node_kubeconfig(&self, node: &str, server: &str) -> anyhow::Result<PathBuf> {
        node_kubeconfig(&self.dir, node, server)
    }
}

/// `NAME.key` and `NAME.crt` in `dir`: a new RSA key and its certificate
/// for `subject`, signed by the plan's CA (`ca.crt`, `ca.key`), with the
/// extensions of `extfile` if any. Returns the key's and the
/// certificate's paths.
fn signed_by_ca(dir: &Path, name: &str, subject: &str, extfile: Option<&str>) -> anyhow::Result<(String, String)> {
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let (key, csr, crt) = (
        p(&format!("{name}.key")),
        p(&format!("{name}.csr")),
        p(&format!("{name}.crt")),
    );
    openssl(
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr,
        ],
        &format!("{name} key"),
    )?;
    let (ca, ca_key) = (p("ca.crt"), p("ca.key"));
    let mut args = vec![
        "x509",
        "-req",
        "-days",
        "30",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &crt,
    ];
    if let Some(ext) = extfile {
        args.extend(["-extfile", ext]);
    }
    openssl(&args, &format!("{name} certificate"))?;
    Ok((key, crt))
}

/// [`Plan::node_kubeconfig`] for a plan prepared earlier in `dir`.
pub fn node_kubeconfig(dir: &Path, node: &str, server: &str) -> anyhow::Result<PathBuf> {
    let subject = format!("/O=system:nodes/CN=system:node:{node}");
    let (key, crt) = signed_by_ca(dir, &format!("node-{node}"), &subject, None)?;
    let path = dir.join(format!("node-{node}.kubeconfig"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: weir\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: {node}\n  user:\n    client-certificate: {crt}\n    client-key: {key}\ncontexts:\n- name: weir\n  context: {{cluster: weir, user: {node}}}\ncurrent-context: weir\n",
        dir.join("ca.crt").display()
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The Service range's first address: the `kubernetes` Service's ClusterIP,
/// which in-cluster clients reach the API server at.
fn first_service_ip(cidr: &str) -> String {
    let net = cidr.split('/').next().unwrap_or_default();
    match net.parse::<Ipv4Addr>() {
        Ok(a) => Ipv4Addr::from(u32::from(a) + 1).to_string(),
        Err(_) => "10.96.0.1".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_names_the_server_ca_and_token() {
        let k = kubeconfig("https://10.0.0.1:6443", Path::new("/d/ca.crt"), "t0k");
        assert!(k.contains("server: https://10.0.0.1:6443"));
        assert!(k.contains("certificate-authority: /d/ca.crt") && k.contains("token: t0k"));
        assert_eq!(first_service_ip("10.96.0.0/16"), "10.96.0.1");
    }
}
