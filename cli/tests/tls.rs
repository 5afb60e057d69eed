//! `weir status` and `weir observe` over TLS: against an agent-like
//! Observer server with mutual TLS on 127.0.0.1 (no root), with hubble's
//! flag names; a missing client certificate fails with the server's reason.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use weir_proto::testing::FixedObserver;
use weir_proto::testing::pki::Ca;

const NAME: &str = "node-1.weir-agent.weir.dev";

fn p(path: PathBuf) -> String {
    path.display().to_string()
}

async fn weir(args: &[String]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env_remove("WEIR_SERVER")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_observe_and_status_speak_mutual_tls() {
    let dir = std::env::temp_dir().join(format!("weir-cli-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Ca::new("weir CA");
    let (cert, key) = ca.server(&[NAME]).write(&dir, "server");
    let ca_file = ca.write(&dir, "ca.crt");
    let tls = weir_proto::tls::ServerTls::watch(
        weir_proto::tls::ServerFiles {
            cert,
            key,
            client_ca: Some(ca_file.clone()),
        },
        Duration::from_secs(60),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let observer = FixedObserver::new("node-1", 3);
    let _server = tokio::spawn(weir_proto::server::serve(
        tokio::net::UnixListener::bind(dir.join("hubble.sock")).unwrap(),
        Some(weir_proto::server::Tcp {
            listener,
            tls: Some(tls),
        }),
        observer.clone().into_server(),
    ));
    let (ccert, ckey) = ca.client("weir-user").write(&dir, "client");
    let server_tls = [
        "--server".to_owned(),
        format!("tls://{addr}"),
        "--tls-ca-cert-files".to_owned(),
        p(ca_file.clone()),
        "--tls-server-name".to_owned(),
        NAME.to_owned(),
    ];
    let client = [
        "--tls-client-cert-file".to_owned(),
        p(ccert),
        "--tls-client-key-file".to_owned(),
        p(ckey),
    ];
    let args = |cmd: &[&str], with_client: bool| -> Vec<String> {
        let mut v: Vec<String> = cmd.iter().map(|s| (*s).to_owned()).collect();
        v.extend(server_tls.iter().cloned());
        if with_client {
            v.extend(client.iter().cloned());
        }
        v
    };

    let (ok, out) = weir(&args(&["status"], true)).await;
    assert!(ok && out.contains("3/3 stored"), "{out}");
    let (ok, out) = weir(&args(&["observe", "-o", "json"], true)).await;
    assert!(ok, "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("node-1")).count(), 3, "{out}");
    assert_eq!(
        observer.client_certs.lock().unwrap().len(),
        2,
        "the server saw our certificate"
    );

    let (ok, out) = weir(&args(&["status"], false)).await;
    assert!(!ok && out.contains("CertificateRequired"), "the server's reason: {out}");
    // The certificate is checked for the name: the address's host by default.
    let mut by_ip: Vec<String> = ["status", "--server", &addr, "--tls-ca-cert-files", &p(ca_file)]
        .map(str::to_owned)
        .into();
    by_ip.extend(client.iter().cloned());
    let (ok, out) = weir(&by_ip).await;
    assert!(!ok && out.contains("not valid for name"), "{out}");
    let (ok, out) = weir(&[
        "status".into(),
        "--server".into(),
        "unix:///x.sock".into(),
        "--tls".into(),
    ])
    .await;
    assert!(!ok && out.contains("TLS is for TCP servers"), "{out}");
    let (ok, out) = weir(&["status".into(), "--server".into(), addr, "--tls".into()]).await;
    assert!(!ok && out.contains("needs --tls-ca-cert-files"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
