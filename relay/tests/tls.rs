//! The relay over TLS, for real: `weir-relay` (the binary) reaches
//! agent-like Observer servers with mutual TLS (the same server code the
//! agent runs, on 127.0.0.1, so no root), refuses an agent whose
//! certificate another CA signed, serves the stock hubble CLI on a mutual
//! TLS port, and takes rotated certificates, its own and its client
//! certificate, without restarting.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_proto::testing::FixedObserver;
use weir_proto::testing::pki::{Ca, Leaf, write};

/// The name every agent's certificate carries (one wildcard certificate,
/// as one Secret mounted by the DaemonSet would be).
const AGENTS: &str = "*.weir-agent.weir.dev";
const RELAY_NAME: &str = "relay.weir.dev";

fn tempdir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weir-relay-tls-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An agent-like server: the Observer API with mutual TLS on `port` (0:
/// any), serving `observer`, with the server certificate `leaf` and
/// accepting clients of `client_ca`.
async fn agent(
    dir: &Path,
    observer: FixedObserver,
    leaf: &Leaf,
    client_ca: &Ca,
    port: u16,
) -> (String, tokio::task::JoinHandle<()>) {
    let name = observer.node.clone();
    let (cert, key) = leaf.write(dir, &format!("agent-{name}"));
    let files = weir_proto::tls::ServerFiles {
        cert,
        key,
        client_ca: Some(client_ca.write(dir, &format!("agent-{name}-client-ca.crt"))),
    };
    let tls = weir_proto::tls::ServerTls::watch(files, Duration::from_secs(60)).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let unix = tokio::net::UnixListener::bind(dir.join(format!("{name}.sock"))).unwrap();
    let task = tokio::spawn(weir_proto::server::serve(
        unix,
        Some(weir_proto::server::Tcp {
            listener,
            tls: Some(tls),
        }),
        observer.into_server(),
    ));
    (addr, task)
}

/// `weir-relay`, killed on drop; its log in `log`.
struct RelayProcess {
    child: std::process::Child,
    log: PathBuf,
    listen: String,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RelayProcess {
    fn start(dir: &Path, args: &[String]) -> Self {
        let log = dir.join("relay.log");
        let listen = format!("127.0.0.1:{}", free_port());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_weir-relay"))
            .args(["--socket", &dir.join("relay.sock").display().to_string()])
            .args(["--listen", &listen, "--tls-reload-interval", "200ms"])
            .args(args)
            .env("WEIR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start weir-relay");
        let relay = Self { child, log, listen };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&relay.listen).is_err() {
            assert!(Instant::now() < deadline, "weir-relay did not listen:\n{}", relay.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        relay
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

fn path(p: PathBuf) -> String {
    p.display().to_string()
}

/// hubble's TLS flags for the relay, presenting `client` (written as
/// `dir/<client_name>.*`) when given.
fn hubble_tls(dir: &Path, ca: &Ca, client: Option<(&str, &Leaf)>) -> Vec<String> {
    let mut args = vec![
        "--tls".to_owned(),
        "--tls-ca-cert-files".to_owned(),
        path(ca.write(dir, "hubble-ca.crt")),
        "--tls-server-name".to_owned(),
        RELAY_NAME.to_owned(),
    ];
    if let Some((name, leaf)) = client {
        let (cert, key) = leaf.write(dir, name);
        args.extend([
            "--tls-client-cert-file".into(),
            path(cert),
            "--tls-client-key-file".into(),
            path(key),
        ]);
    }
    args
}

async fn run(bin: &Path, args: &[String]) -> std::process::Output {
    tokio::process::Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reaches_agents_with_mutual_tls_and_serves_hubble_over_mutual_tls() {
    let Some(hubble) = weir_test_support::tool("hubble") else {
        return;
    };
    let dir = tempdir("mtls");
    let ca = Ca::new("weir CA");
    let other = Ca::new("someone else's CA");

    // Two agents with weir's certificate; a third whose certificate another
    // CA signed, with the right name: the relay must not take it.
    let a = FixedObserver::new("node-a", 3);
    let b = FixedObserver::new("node-b.zone-1", 2);
    let rogue = FixedObserver::new("rogue", 7);
    let agents_leaf = ca.server(&[AGENTS]);
    let (a_addr, _a) = agent(&dir, a.clone(), &agents_leaf, &ca, 0).await;
    let (b_addr, _b) = agent(&dir, b.clone(), &agents_leaf, &ca, 0).await;
    let (rogue_addr, _r) = agent(&dir, rogue.clone(), &other.server(&[AGENTS]), &ca, 0).await;

    let relay_client = ca.client("weir-relay");
    let (client_cert, client_key) = relay_client.write(&dir, "relay-client");
    let (relay_cert, relay_key) = ca.server(&[RELAY_NAME]).write(&dir, "relay");
    let mut relay = RelayProcess::start(
        &dir,
        &[
            format!("--peer=node-a={a_addr}"),
            format!("--peer=node-b.zone-1={b_addr}"),
            format!("--peer=rogue={rogue_addr}"),
            format!("--tls-client-cert={}", client_cert.display()),
            format!("--tls-client-key={}", client_key.display()),
            format!("--tls-ca={}", ca.write(&dir, "agents-ca.crt").display()),
            format!("--tls-cert={}", relay_cert.display()),
            format!("--tls-key={}", relay_key.display()),
            format!("--tls-client-ca={}", ca.write(&dir, "users-ca.crt").display()),
        ],
    );
    let user = ca.client("someone who observes");
    let server = ["--server".to_owned(), relay.listen.clone()];
    let tls = hubble_tls(&dir, &ca, Some(("user", &user)));
    let with_tls = |cmd: &[&str]| -> Vec<String> {
        cmd.iter()
            .map(|s| (*s).to_owned())
            .chain(server.iter().cloned())
            .chain(tls.iter().cloned())
            .collect()
    };

    // hubble status through the relay: two of three nodes.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = run(&hubble, &with_tls(&["status"])).await;
        if text(&out).contains("Connected Nodes: 2/3") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hubble status never saw 2/3 nodes: {}\nrelay log:\n{}",
            text(&out),
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = relay.log();
    assert!(
        log.contains("rogue") && log.to_lowercase().contains("unknownissuer"),
        "the relay says why it refused the rogue agent:\n{log}"
    );
    // Each agent saw the relay's client certificate (and only it).
    for seen in [&a.client_certs, &b.client_certs] {
        let seen = seen.lock().unwrap();
        assert!(
            !seen.is_empty() && seen.iter().all(|c| *c == relay_client.der),
            "{}",
            seen.len()
        );
    }
    assert!(
        rogue.client_certs.lock().unwrap().is_empty(),
        "nothing reached the rogue agent's service"
    );

    // Flows of both agents, through the relay, to the stock hubble CLI.
    let out = run(&hubble, &with_tls(&["observe", "--last", "10", "-o", "json"])).await;
    assert!(out.status.success(), "hubble observe: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let nodes: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("\"flow\""))
        .map(|l| if l.contains("node-b.zone-1") { "b" } else { "a" })
        .collect();
    assert_eq!(nodes.len(), 5, "{stdout}");
    assert_eq!(nodes.iter().filter(|n| **n == "b").count(), 2, "{stdout}");

    // The relay's port is mutual TLS: no client certificate, no flows; a
    // certificate of another CA, none either.
    let mut bare: Vec<String> = vec!["status".into()];
    bare.extend(server.iter().cloned());
    bare.extend(hubble_tls(&dir, &ca, None));
    let out = run(&hubble, &bare).await;
    assert!(!out.status.success(), "no client certificate: {}", text(&out));
    let mut foreign: Vec<String> = vec!["status".into()];
    foreign.extend(server.iter().cloned());
    foreign.extend(hubble_tls(&dir, &ca, Some(("intruder", &other.client("intruder")))));
    let out = run(&hubble, &foreign).await;
    assert!(!out.status.success(), "another CA's client certificate: {}", text(&out));
    assert!(relay.still_running());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The certificate a server presents to a new connection.
async fn presented(addr: &str, ca: &Ca, name: &str) -> Vec<u8> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_apply_to_new_connections_without_a_restart() {
    let dir = tempdir("rotate");
    let ca = Ca::new("weir CA");
    let first = ca.server(&[RELAY_NAME]);
    let (relay_cert, relay_key) = first.write(&dir, "relay");
    let first_client = ca.client("weir-relay");
    let (client_cert, client_key) = first_client.write(&dir, "relay-client");
    // An agent that comes up only after the relay's client certificate
    // has been rotated: its first connection must present the new one.
    let late_port = free_port();
    let mut relay = RelayProcess::start(
        &dir,
        &[
            format!("--peer=late=127.0.0.1:{late_port}"),
            format!("--tls-client-cert={}", client_cert.display()),
            format!("--tls-client-key={}", client_key.display()),
            format!("--tls-ca={}", ca.write(&dir, "ca.crt").display()),
            format!("--tls-cert={}", relay_cert.display()),
            format!("--tls-key={}", relay_key.display()),
        ],
    );
    let pid = relay.child.id();
    assert_eq!(presented(&relay.listen, &ca, RELAY_NAME).await, first.der);

    // The relay's own certificate, rotated in place (key first, so for a
    // moment the pair does not match and the old one stays).
    let second = ca.server(&[RELAY_NAME]);
    write(&dir, "relay.key", &second.key);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        presented(&relay.listen, &ca, RELAY_NAME).await,
        first.der,
        "half a rotation is not taken"
    );
    write(&dir, "relay.crt", &second.cert);
    let deadline = Instant::now() + Duration::from_secs(5);
    while presented(&relay.listen, &ca, RELAY_NAME).await != second.der {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served:\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken file: logged, the last good one kept.
    write(
        &dir,
        "relay.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(presented(&relay.listen, &ca, RELAY_NAME).await, second.der);
    assert!(
        relay.log().contains("do not load; keeping the ones in use"),
        "{}",
        relay.log()
    );

    // Its client certificate, rotated before the agent appears.
    let second_client = ca.client("weir-relay");
    write(&dir, "relay-client.key", &second_client.key);
    write(&dir, "relay-client.crt", &second_client.cert);
    let reloaded = |log: &str| log.matches("certificates reloaded").count();
    let deadline = Instant::now() + Duration::from_secs(5);
    while reloaded(&relay.log()) < 2 {
        assert!(
            Instant::now() < deadline,
            "the client certificate was never reloaded:\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = FixedObserver::new("late", 1);
    let (_addr, _late) = agent(&dir, late.clone(), &ca.server(&[AGENTS]), &ca, late_port).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while late.client_certs.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the relay never reached the late agent:\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        late.client_certs.lock().unwrap()[0],
        second_client.der,
        "the rotated client certificate"
    );

    assert!(relay.still_running() && relay.child.id() == pid, "never restarted");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// As in a cluster where the operator issues the certificates after the
/// relay's pod started (the kubelet fills its Secret volumes later): the
/// relay waits for them, then reaches its agents and serves TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_appear_after_the_start_are_used_then() {
    let dir = tempdir("later");
    let ca = Ca::new("weir CA");
    let observer = FixedObserver::new("n1", 1);
    let port = free_port();
    let (_addr, _agent) = agent(&dir, observer.clone(), &ca.server(&[AGENTS]), &ca, port).await;
    let files = dir.join("secret");
    std::fs::create_dir_all(&files).unwrap();
    let at = |f: &str| files.join(f).display().to_string();
    let relay = RelayProcess::start(
        &dir,
        &[
            format!("--peer=n1=127.0.0.1:{port}"),
            format!("--tls-client-cert={}", at("client.crt")),
            format!("--tls-client-key={}", at("client.key")),
            format!("--tls-ca={}", at("ca.crt")),
            format!("--tls-cert={}", at("relay.crt")),
            format!("--tls-key={}", at("relay.key")),
        ],
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(observer.client_certs.lock().unwrap().is_empty(), "no certificate yet");
    assert!(
        relay.log().contains("waiting for the certificate files"),
        "{}",
        relay.log()
    );
    let client = ca.client("weir-relay");
    client.write(&files, "client");
    ca.write(&files, "ca.crt");
    let served = ca.server(&[RELAY_NAME]);
    served.write(&files, "relay");
    let deadline = Instant::now() + Duration::from_secs(10);
    while observer.client_certs.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the agent was never reached:\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(observer.client_certs.lock().unwrap()[0], client.der);
    assert_eq!(presented(&relay.listen, &ca, RELAY_NAME).await, served.der);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn agents_on_tcp_need_tls_or_insecure_agents() {
    let dir = tempdir("config");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_weir-relay"))
            .args(["--socket", &dir.join("relay.sock").display().to_string()])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--peer", "n1=10.0.0.1:4244"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-client-cert FILE --tls-client-key FILE --tls-ca FILE") && err.contains("--insecure-agents"),
        "says what to pass: {err}"
    );
    assert!(!dir.join("relay.sock").exists(), "before any socket");
    let out = run(&["--peer", "n1=10.0.0.1:4244", "--tls-ca", "/nonexistent.crt"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("given without --tls-client-cert, --tls-client-key"),
        "{err}"
    );
    let out = run(&[
        "--peer",
        "n1=127.0.0.1:1",
        "--tls-cert",
        "/c.pem",
        "--tls-key",
        "/k.pem",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS is for --listen"), "{err}");
    // Files not there are waited for; files there must load.
    assert!(!err.contains("reading /c.pem"), "{err}");
    let out = run(&[
        "--peer",
        "n1=127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        "/proc/self/status",
        "--tls-key",
        "/proc/self/status",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/proc/self/status: no certificate"), "{err}");
    // A kubeconfig nothing uses is a mistake, said.
    let out = run(&["--peer", "n1=unix:///x.sock", "--kubeconfig", "/kc"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--kubeconfig is for --discover or --policy-check"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_relay_takes_no_path_that_is_not_its_stale_socket() {
    let dir = tempdir("socket");
    let run = |socket: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_weir-relay"))
            .args(["--socket", &socket.display().to_string()])
            .args(["--peer", "n1=unix:///nonexistent/hubble.sock"])
            .output()
            .unwrap()
    };
    // A file where the socket would go: refused and left as it is (the
    // relay used to remove whatever was there).
    let file = dir.join("not-a-socket");
    std::fs::write(&file, b"someone's").unwrap();
    let out = run(&file);
    assert!(!out.status.success());
    assert!(text(&out).contains("refusing to replace it"), "{}", text(&out));
    assert_eq!(std::fs::read(&file).unwrap(), b"someone's");
    // A live server's socket: refused, and the server keeps answering.
    let live = dir.join("live.sock");
    let listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let out = run(&live);
    assert!(!out.status.success());
    assert!(text(&out).contains("running server"), "{}", text(&out));
    assert!(std::os::unix::net::UnixStream::connect(&live).is_ok());
    drop(listener);
    std::fs::remove_dir_all(&dir).unwrap();
}
