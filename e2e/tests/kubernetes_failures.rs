//! The agent against a real API server that misbehaves without going away
//! (`tests/kubernetes.rs` has the one that goes away for 30 s):
//!
//! - hung: the API server stopped with SIGSTOP, its sockets open, so the
//!   agent's watches go silent instead of failing;
//! - slow: the API server starved of CPU (stopped 900 ms of every second), so
//!   every list, watch event and write crawls;
//! - refusing: the agent's ClusterRoleBinding removed and the API server
//!   restarted, so every list and watch is answered 403 Forbidden.
//!
//! In each the agent must stay up and answer on its own endpoints, the
//! datapath must keep its last good state (the VIP answers, the policy
//! still denies: nothing flushed, nothing widened), and once the server
//! behaves again the change made meanwhile is applied.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use weir_e2e::Pod;
use weir_e2e::kube::{KubeNode, answers, metric, repo, wait_for};
use weir_e2e::require_root;

/// The API server's process, checked to be it (nsenter execs, so the
/// child is the server itself).
fn apiserver(k: &KubeNode) -> Pid {
    let pid = k.cp.pid("kube-apiserver").expect("the API server runs");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "kube-apiserver", "pid {pid} is the API server");
    Pid::from_raw(pid as i32)
}

/// SIGSTOP/SIGCONT in a duty cycle until dropped; always leaves it running.
struct Starved {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Starved {
    fn start(pid: Pid, stopped: Duration, running: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let _ = kill(pid, Signal::SIGSTOP);
                std::thread::sleep(stopped);
                let _ = kill(pid, Signal::SIGCONT);
                std::thread::sleep(running);
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Starved {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The datapath's last good state holds for `span`: the client reaches the
/// VIP, `other` is still denied, and the agent answers on /metrics.
fn holds(k: &KubeNode, client: &Pod, other: &Pod, vip: std::net::SocketAddr, span: Duration, when: &str) {
    let t0 = Instant::now();
    let mut checks = 0;
    while t0.elapsed() < span {
        assert!(answers(client, vip), "{when}: the client still reaches the VIP");
        assert!(!answers(other, vip), "{when}: the policy still denies: nothing widened");
        assert!(
            metric(&k.node, "weir_kubernetes_objects", "Pod") >= 3.0,
            "{when}: the agent answers on /metrics and keeps its objects"
        );
        checks += 1;
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert!(checks >= 3, "{when}: {checks} checks");
}

const ALLOW_CLIENT: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: demo}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]\n";

fn allow_both() -> String {
    ALLOW_CLIENT.replace(
        "{matchLabels: {app: client}}",
        "{matchExpressions: [{key: app, operator: In, values: [client, other]}]}",
    )
}

#[test]
fn a_hung_a_slow_and_a_refusing_api_server_neither_stop_the_agent_nor_widen_policy() {
    if !require_root() {
        return;
    }
    let Some(mut k) = KubeNode::start(&[]) else {
        return;
    };
    k.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n");
    let web = k.run_pod("demo", "web-1", "web");
    let client = k.run_pod("demo", "client", "client");
    let other = k.run_pod("demo", "other", "other");
    weir_e2e::kube::echo_server(&web, 8080);
    k.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {selector: {app: web}, ports: [{port: 80, targetPort: echo}]}\n",
    );
    let vip = weir_e2e::kube::vip(&k.cp, "demo", "web", 80);
    k.apply(ALLOW_CLIENT);
    wait_for("the policy enforced", Duration::from_secs(30), || {
        answers(&client, vip) && !answers(&other, vip)
    });
    let agent_pid = k.node.agent_pid();

    // Hung: silent watches, no errors to react to.
    let pid = apiserver(&k);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let resumed = scopeguard(pid);
    holds(&k, &client, &other, vip, Duration::from_secs(20), "API server hung");
    drop(resumed);
    k.apply(&allow_both());
    let took = wait_for("a change after the hang applies", Duration::from_secs(30), || {
        answers(&other, vip)
    });
    eprintln!("hung 20 s, then a change applied in {took:?}");

    // Slow: the same change back, written and watched through a server
    // that runs a tenth of the time.
    {
        let _starved = Starved::start(pid, Duration::from_millis(900), Duration::from_millis(100));
        let t0 = Instant::now();
        k.apply(ALLOW_CLIENT);
        eprintln!("kubectl apply on the starved API server took {:?}", t0.elapsed());
        let took = wait_for(
            "a change through the slow server applies",
            Duration::from_secs(90),
            || {
                assert!(answers(&client, vip), "the client is never cut off");
                !answers(&other, vip)
            },
        );
        eprintln!("slow API server: the change applied {took:?} after kubectl returned");
        holds(&k, &client, &other, vip, Duration::from_secs(5), "API server slow");
    }

    // Refusing: 403 to every list and watch of the agent's.
    let errors_before = metric(&k.node, "weir_kubernetes_watch_errors_total", "");
    let refusals = |k: &KubeNode| k.node.log().matches("forbidden").count();
    let refused_before = refusals(&k);
    k.cp.kubectl_ok(&["delete", "clusterrolebinding", "weir-agent"]);
    k.cp.stop("kube-apiserver");
    k.cp.restart("kube-apiserver");
    k.apply(&allow_both());
    wait_for("the agent logs the refusal", Duration::from_secs(30), || {
        refusals(&k) > refused_before
    });
    holds(&k, &client, &other, vip, Duration::from_secs(10), "API server refusing");
    assert!(
        metric(&k.node, "weir_kubernetes_watch_errors_total", "") > errors_before,
        "refusals are counted"
    );
    let binding = repo("install/rbac.yaml")
        .split("---\n")
        .find(|d| d.contains("kind: ClusterRoleBinding\nmetadata: {name: weir-agent}"))
        .expect("the agent's binding")
        .to_owned();
    k.apply(&binding);
    let took = wait_for("the change made while refused applies", Duration::from_secs(60), || {
        answers(&other, vip)
    });
    eprintln!("binding back, the missed change applied in {took:?}");
    assert!(answers(&client, vip));
    assert_eq!(k.node.agent_pid(), agent_pid, "the agent never restarted");
}

/// SIGCONT on drop, so a failed check never leaves the server stopped.
fn scopeguard(pid: Pid) -> impl Drop {
    struct Cont(Pid);
    impl Drop for Cont {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    Cont(pid)
}
