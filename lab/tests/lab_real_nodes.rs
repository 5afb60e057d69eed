//! weir as the CNI of real nodes: the real kubelet and containerd on each
//! lab node (`kubelet: real`), pods from images pulled from the lab's
//! registry, `weir-cni` called by containerd as any runtime calls it.
mod support;

use std::time::{Duration, Instant};

use support::{Lab, REAL_NODES_WORKLOAD, pods_in, privileged, show};

fn kubectl(lab: &Lab, args: &[&str]) -> std::process::Output {
    std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}-a", lab.name))
        .arg("--")
        .arg(weir_test_support::tool("kubectl").expect("kubectl is built by scripts/tools.sh"))
        .arg(format!(
            "--kubeconfig={}",
            lab.dir.join("kube/admin.kubeconfig").display()
        ))
        .args(args)
        .output()
        .expect("kubectl")
}

#[test]
fn weir_becomes_the_cni_of_real_nodes() {
    if !privileged() {
        return;
    }
    let lab = Lab::new("rn");
    let topo = lab.file(
        "topo.yaml",
        &format!(
            "name: {}\nclusterCIDR: 10.244.0.0/16\nnodeCIDR: 172.31.250.0/24\nrouting: native\ncontrolPlane: kubernetes\nkubelet: real\nnodes:\n  - {{name: a, podCIDR: 10.244.1.0/24}}\n  - {{name: b, podCIDR: 10.244.2.0/24}}\n",
            lab.name
        ),
    );
    let up = lab.ok(&["up", &topo]);
    // Fresh nodes: NotReady without a CNI, Ready once weir is installed.
    for node in ["a", "b"] {
        assert!(
            up.contains(&format!("node {node}: NotReady (no CNI configured yet)")),
            "{up}"
        );
    }
    assert!(up.contains("every node Ready"), "{up}");

    let file = lab.file("workload.yaml", REAL_NODES_WORKLOAD);
    lab.ok(&["apply", &file]);
    let all = pods_in(&lab, "rn");
    let web: Vec<_> = all.iter().filter(|p| p.0.starts_with("web-")).collect();
    assert_eq!(web.len(), 2, "{all:?}");
    let mut nodes: Vec<&str> = web.iter().map(|p| p.1.as_str()).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["a", "b"], "one web pod per node: {all:?}");

    // Pod to pod, on the node and across nodes: each answers its name.
    for (name, _, ip) in &web {
        let out = lab.ok(&["probe", "rn/client", &format!("{ip}:8080/tcp")]);
        assert_eq!(out.trim(), format!("connected: {name}"), "{all:?}");
    }
    // Through the Service's ClusterIP.
    let svc: serde_json::Value =
        serde_json::from_str(&lab.ok(&["get", "svc", "rn/web", "-o", "json"])).expect("service JSON");
    let vip = svc["spec"]["clusterIP"].as_str().expect("clusterIP").to_owned();
    let out = lab.ok(&["probe", "rn/client", &format!("{vip}:80/tcp")]);
    assert!(out.trim().starts_with("connected: web-"), "{out}");

    // `kubectl exec` through the API server, the kubelet and containerd.
    let remote = web.iter().find(|p| p.1 == "b").expect("a web pod on b");
    let out = kubectl(
        &lab,
        &[
            "exec",
            "-n",
            "rn",
            "client",
            "--",
            "sh",
            "-c",
            &format!("nc -w 2 {} 8080 </dev/null", remote.2),
        ],
    );
    assert!(out.status.success(), "kubectl exec: {}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), remote.0);

    // Scaled down: the kubelet stops the pod, containerd calls CNI DEL,
    // and the agent forgets the endpoint.
    lab.ok(&["scale", "deployment/web", "--replicas", "1", "-n", "rn"]);
    let t0 = Instant::now();
    loop {
        let now = pods_in(&lab, "rn");
        if now.iter().filter(|p| p.0.starts_with("web-")).count() == 1 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "still two web endpoints: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Down leaves nothing of the nodes: no process in their cgroups, no
    // cgroup, no mount under the lab dir.
    let cgroups = |lab: &Lab| -> Vec<String> {
        let want = format!("weir-{}-", lab.name);
        std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|h| std::fs::read_dir(h.path()).into_iter().flatten().flatten())
            .map(|e| e.path().display().to_string())
            .filter(|p| p.rsplit('/').next().is_some_and(|n| n.starts_with(&want)))
            .collect()
    };
    assert!(!cgroups(&lab).is_empty(), "the nodes have cgroups while up");
    lab.ok(&["down"]);
    assert_eq!(cgroups(&lab), Vec::<String>::new(), "cgroups left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir = lab.dir.display().to_string();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&dir)).collect();
    assert!(left.is_empty(), "mounts left: {left:#?}");
    assert!(lab.leftover_netns().is_empty(), "{:?}", lab.leftover_netns());
}
