//! weir's chart (`install/helm/weir`) and the one-file install it renders
//! (`install/weir.yaml`): `helm lint` passes, the defaults render exactly
//! the checked-in file (rerun with `WEIR_WRITE_INSTALL=1` after changing
//! the chart), and every documented value takes effect. Needs the helm
//! that scripts/tools.sh builds; no root, no cluster.
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm(args: &[&str]) -> String {
    let helm = weir_test_support::tool("helm").expect("helm is not built: scripts/tools.sh builds it");
    let out = Command::new(helm)
        .args(args)
        .current_dir(root())
        .output()
        .expect("running helm");
    assert!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const RENDER: [&str; 6] = [
    "template",
    "weir",
    "install/helm/weir",
    "--namespace=kube-system",
    "--include-crds",
    "--kube-version=1.36.3",
];

const HEADER: &str = "# weir, everything in one file: `kubectl apply -f install/weir.yaml`.\n\
# Generated from the chart (install/helm/weir) with its defaults by\n\
# `helm template weir install/helm/weir --namespace=kube-system --include-crds`;\n\
# do not edit: change the chart, then `WEIR_WRITE_INSTALL=1 cargo test -p weir-lab --test install_manifests`.\n";

/// The YAML documents of a multi-document text.
fn docs(text: &str) -> Vec<serde_yaml_ng::Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde_yaml_ng::Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [serde_yaml_ng::Value], kind: &str, name: &str) -> Option<&'a serde_yaml_ng::Value> {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
}

#[test]
fn the_chart_lints() {
    let out = helm(&["lint", "install/helm/weir", "--strict"]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn install_weir_yaml_is_the_chart_with_its_defaults() {
    let rendered = format!("{HEADER}{}", helm(&RENDER));
    let path = root().join("install/weir.yaml");
    if std::env::var("WEIR_WRITE_INSTALL").as_deref() == Ok("1") {
        std::fs::write(&path, &rendered).expect("writing install/weir.yaml");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == rendered,
        "install/weir.yaml is not what the chart renders: rerun with WEIR_WRITE_INSTALL=1"
    );
    let all = docs(&rendered);
    for (kind, name) in [
        ("CustomResourceDefinition", "weirnetworkpolicies.weir.dev"),
        ("CustomResourceDefinition", "weiridentities.weir.dev"),
        ("DaemonSet", "weir-agent"),
        ("Deployment", "weir-operator"),
        ("Deployment", "weir-relay"),
        ("Service", "weir-relay"),
        ("ConfigMap", "weir-config"),
    ] {
        assert!(find(&all, kind, name).is_some(), "no {kind} {name}");
    }
    // The chart's appVersion is the binaries' version: the image tag.
    let ds = find(&all, "DaemonSet", "weir-agent").expect("agent");
    let image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(image, format!("ghcr.io/weir-dev/weir:{}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn the_cleanup_daemonset_runs_this_version_with_the_charts_paths() {
    let text = std::fs::read_to_string(root().join("install/cleanup.yaml")).expect("install/cleanup.yaml");
    let all = docs(&text);
    let spec = &find(&all, "DaemonSet", "weir-cleanup").expect("cleanup")["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    for c in [&spec["initContainers"][0], &spec["containers"][0]] {
        assert_eq!(
            c["image"].as_str(),
            Some(format!("ghcr.io/weir-dev/weir:{}", env!("CARGO_PKG_VERSION")).as_str()),
            "the chart's image"
        );
        let args: Vec<&str> = c["command"]
            .as_sequence()
            .expect("command")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        // The chart's paths: its agent's socket (a running agent stops the
        // cleanup) and the host dirs the init container installed into.
        for want in [
            "cleanup",
            "--socket=/var/run/weir/agent.sock",
            "--bpffs-root=/sys/fs/bpf/weir",
            "--cni-conf-dir=/host/etc/cni/net.d",
            "--cni-bin-dir=/host/opt/cni/bin",
        ] {
            assert!(args.contains(&want), "{want}: {args:?}");
        }
    }
    let chart = docs(&helm(&RENDER));
    let agent =
        serde_yaml_ng::to_string(&find(&chart, "DaemonSet", "weir-agent").expect("agent")["spec"]).expect("YAML");
    for same in [
        "--socket=/var/run/weir/agent.sock",
        "--bpffs-root=/sys/fs/bpf/weir",
        "path: /opt/cni/bin",
        "path: /etc/cni/net.d",
    ] {
        assert!(agent.contains(same), "the chart's agent has {same}");
    }
}

#[test]
fn the_agent_runs_with_named_capabilities_not_privileged() {
    let all = docs(&helm(&RENDER));
    let spec = &find(&all, "DaemonSet", "weir-agent").expect("agent")["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    let agent = &spec["containers"][0];
    let sc = &agent["securityContext"];
    assert!(sc["privileged"].is_null(), "{sc:?}");
    let add: Vec<&str> = sc["capabilities"]["add"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str())
        .collect();
    assert_eq!(add, ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"]);
    // Every taint tolerated; probes on the agent's health endpoints.
    assert_eq!(spec["tolerations"][0]["operator"].as_str(), Some("Exists"));
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    // The conflist is the agent's to write, once ready.
    let args: Vec<&str> = agent["args"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--cni-conf-dir=/host/etc/cni/net.d"), "{args:?}");
    // Mutual TLS by default, with the certificates the operator issues:
    // plaintext flows only when asked for by name.
    assert!(!args.contains(&"--hubble-insecure"), "{args:?}");
    assert!(
        args.contains(&"--hubble-tls-client-ca=/etc/weir/hubble-tls/ca.crt"),
        "{args:?}"
    );
    let secret = &spec["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "hubble-tls")
        .expect("the certificates' volume")["secret"];
    assert_eq!(secret["secretName"].as_str(), Some("weir-hubble-server-certs"));
    assert_eq!(
        secret["optional"].as_bool(),
        Some(true),
        "the agent starts before the Secret exists"
    );
    let op =
        serde_yaml_ng::to_string(&find(&all, "Deployment", "weir-operator").expect("operator")["spec"]).expect("YAML");
    assert!(op.contains("WEIR_HUBBLE_CERTS"), "{op}");
}

#[test]
fn every_documented_value_takes_effect() {
    let values = "\
image: {repository: registry.example/weir, tag: v9, pullPolicy: Always}
k8sServiceHost: 192.0.2.1
k8sServicePort: 443
routing: vxlan
clusterCIDR: 10.42.0.0/16
nodePortXDP: \"off\"
lbAlgorithm: maglev
agent:
  flowBuffer: 8191
  uplink: eth1
  log: debug
  extraArgs: [--metrics-per-pod=false]
  runDir: /run/weir2
  stateDir: /var/lib/weir2
  resources: {limits: {memory: 2Gi}}
cni: {binDir: /usr/libexec/cni, confDir: /etc/cni/conf.d}
metrics: {listen: 0.0.0.0, port: 19962}
hubble:
  port: 14244
  tls: {enabled: true, auto: false, serverSecret: srv, clientSecret: cli}
  metrics:
    enabled: [\"flow:sourceContext=pod\", drop]
    config: {metrics: [{name: flow, excludeFilters: [{source_pod: [kube-system/]}]}]}
  export:
    flowLogs: [{name: drops, filePath: /var/run/weir/flows/drops.log, includeFilters: [{verdict: [DROPPED]}]}]
operator: {replicas: 3, log: debug, podCIDRPool: 10.42.0.0/16, nodeCIDRMaskSize: 25}
relay: {enabled: true, tls: {enabled: true, secret: relay-srv}, ui: {enabled: true, port: 18080}}
tolerations: [{key: dedicated, operator: Exists}]
";
    let file = std::env::temp_dir().join(format!("weir-values-{}.yaml", std::process::id()));
    std::fs::write(&file, values).expect("values file");
    let mut args = RENDER.to_vec();
    let f = format!("--values={}", file.display());
    args.push(&f);
    let text = helm(&args);
    let _ = std::fs::remove_file(&file);
    let all = docs(&text);
    let config = &find(&all, "ConfigMap", "weir-config").expect("config")["data"];
    for (key, want) in [
        ("WEIR_ROUTING", "vxlan"),
        ("WEIR_CLUSTER_CIDR", "10.42.0.0/16"),
        ("WEIR_NODEPORT_XDP", "off"),
        ("WEIR_LB_ALGORITHM", "maglev"),
        ("WEIR_FLOW_BUFFER", "8191"),
        ("WEIR_UPLINK", "eth1"),
        ("WEIR_LOG", "debug"),
        ("WEIR_METRICS_LISTEN", "0.0.0.0:19962"),
        ("WEIR_HUBBLE_METRICS", "flow:sourceContext=pod drop"),
        ("WEIR_HUBBLE_METRICS_CONFIG", "/etc/weir/hubble-metrics/metrics.yaml"),
    ] {
        assert_eq!(config[key].as_str(), Some(want), "{key}");
    }
    let metrics = find(&all, "ConfigMap", "weir-hubble-metrics").expect("metrics config")["data"]["metrics.yaml"]
        .as_str()
        .expect("metrics.yaml")
        .to_owned();
    assert!(
        metrics.contains("kube-system/") && metrics.contains("excludeFilters"),
        "{metrics}"
    );
    let export = find(&all, "ConfigMap", "weir-flow-export").expect("flow export")["data"]["flow-export.yaml"]
        .as_str()
        .expect("flow-export.yaml")
        .to_owned();
    assert!(
        export.contains("/var/run/weir/flows/drops.log") && export.contains("DROPPED"),
        "{export}"
    );
    let ds = &find(&all, "DaemonSet", "weir-agent").expect("agent")["spec"]["template"]["spec"];
    let agent = &ds["containers"][0];
    assert_eq!(agent["image"].as_str(), Some("registry.example/weir:v9"));
    assert_eq!(agent["imagePullPolicy"].as_str(), Some("Always"));
    let text_of = |v: &serde_yaml_ng::Value| serde_yaml_ng::to_string(v).expect("YAML");
    let agent_text = text_of(agent);
    for want in [
        "--metrics-per-pod=false",
        "--socket=/run/weir2/agent.sock",
        "--state-dir=/var/lib/weir2",
        "$(NODE_IP):14244",
        "192.0.2.1",
        "memory: 2Gi",
        "port: 19962",
        "--hubble-tls-client-ca=/etc/weir/hubble-tls/ca.crt",
        "--flow-export-config=/etc/weir/flow-export/flow-export.yaml",
        "mountPath: /etc/weir/hubble-metrics",
    ] {
        assert!(agent_text.contains(want), "agent lacks {want}: {agent_text}");
    }
    let ds_text = text_of(ds);
    assert!(
        ds_text.contains("/usr/libexec/cni") && ds_text.contains("/etc/cni/conf.d"),
        "{ds_text}"
    );
    assert!(ds_text.contains("dedicated"), "{ds_text}");
    assert!(
        ds_text.contains("secretName: srv") && !ds_text.contains("--hubble-insecure"),
        "{ds_text}"
    );
    let op = find(&all, "Deployment", "weir-operator").expect("operator");
    assert_eq!(op["spec"]["replicas"].as_u64(), Some(3));
    let op_text = text_of(&op["spec"]["template"]["spec"]["containers"][0]);
    for want in [
        "WEIR_CLUSTER_CIDR",
        "10.42.0.0/16",
        "WEIR_NODE_CIDR_MASK_SIZE",
        "'25'",
        "level: debug",
    ] {
        assert!(
            op_text.contains(want) || (want == "level: debug" && op_text.contains("debug")),
            "operator lacks {want}: {op_text}"
        );
    }
    // Certificates from the values' Secrets: the operator issues none.
    assert!(!op_text.contains("WEIR_HUBBLE_CERTS"), "{op_text}");
    let relay = text_of(&find(&all, "Deployment", "weir-relay").expect("relay")["spec"]["template"]["spec"]);
    for want in [
        "secretName: cli",
        "secretName: relay-srv",
        "--tls-cert=/etc/weir/relay-tls/tls.crt",
        "--ui-listen=127.0.0.1:18080",
        "--policy-check",
    ] {
        assert!(relay.contains(want), "relay lacks {want}: {relay}");
    }
    // The map's policy check reads, never writes, and only what it needs.
    let role = text_of(find(&all, "ClusterRole", "weir-relay-policy-check").expect("policy check role"));
    assert!(
        role.contains("networkpolicies") && role.contains("weiridentities"),
        "{role}"
    );
    assert!(
        !role.contains("watch") && !role.contains("create") && !role.contains("secrets"),
        "{role}"
    );
    assert!(
        find(&docs(&helm(&RENDER)), "ClusterRole", "weir-relay-policy-check").is_none(),
        "off with the map off (the default)"
    );
}

/// `weir lab image --output` (what scripts/image.sh runs on the release
/// binaries): a tarball crane validates, named as the chart names the
/// image, holding every binary and the libraries they load.
#[test]
fn the_image_tarball_holds_every_binary_and_their_libraries() {
    let out_dir = std::env::temp_dir().join(format!("weir-image-test-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).expect("dir");
    let tarball = out_dir.join("weir.tar");
    let built = Command::new(weir_test_support::bin("weir"))
        .args(["lab", "image", "--output"])
        .arg(&tarball)
        .output()
        .expect("weir lab image");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let said = String::from_utf8_lossy(&built.stdout);
    assert!(
        said.contains(&format!("ghcr.io/weir-dev/weir:{}", env!("CARGO_PKG_VERSION"))),
        "{said}"
    );
    let crane = weir_test_support::tool("crane").expect("crane is not built: scripts/tools.sh builds it");
    let valid = Command::new(crane)
        .args(["validate", "--tarball"])
        .arg(&tarball)
        .output()
        .expect("crane validate");
    assert!(valid.status.success(), "{}", String::from_utf8_lossy(&valid.stderr));
    // The one layer's files.
    let listed = Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&out_dir)
        .output()
        .expect("tar");
    assert!(listed.status.success());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).expect("manifest.json")).expect("JSON");
    let layer = manifest[0]["Layers"][0].as_str().expect("a layer");
    let files = Command::new("tar")
        .arg("-tzf")
        .arg(out_dir.join(layer))
        .output()
        .expect("tar");
    let files = String::from_utf8_lossy(&files.stdout);
    for want in [
        "./usr/local/bin/weir-agent",
        "./usr/local/bin/weir-cni",
        "./usr/local/bin/weir-operator",
        "./usr/local/bin/weir-relay",
        "./usr/local/bin/weir",
        "libc.so.6",
        "ld-linux-x86-64.so.2",
    ] {
        assert!(
            files.lines().any(|f| f.ends_with(want)),
            "no {want} in the layer: {files}"
        );
    }
    std::fs::remove_dir_all(&out_dir).expect("cleanup");
}
