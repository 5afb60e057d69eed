//! The CustomResourceDefinitions in `install/crds/` are what the Rust types
//! say (kube's derive makes them): a changed type without a regenerated
//! file fails here. `WEIR_WRITE_CRDS=1 cargo test -p weir-model --test crds`
//! rewrites the file.
use kube::CustomResourceExt;
use weir_model::policy::crd::{WeirClusterNetworkPolicy, WeirNetworkPolicy};

#[test]
fn install_crds_match_the_rust_types() {
    let mut text = String::from(
        "# Generated from model/src/policy/crd.rs (cargo test -p weir-model --test crds, WEIR_WRITE_CRDS=1); do not edit.\n",
    );
    for crd in [WeirNetworkPolicy::crd(), WeirClusterNetworkPolicy::crd()] {
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(&crd).expect("CRD to YAML"));
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../install/crds/weir-policies.yaml");
    if std::env::var_os("WEIR_WRITE_CRDS").is_some() {
        std::fs::write(path, &text).expect("writing the CRDs");
    }
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == text,
        "install/crds/weir-policies.yaml is not what the types generate: rerun with WEIR_WRITE_CRDS=1"
    );
    // What a user writes parses into the types the agent reads.
    let objs = weir_model::parse_documents(
        "apiVersion: weir.dev/v1alpha1\nkind: WeirNetworkPolicy\nmetadata: {name: p, namespace: n}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  enforcement: audit\n  ingress: [{from: [{entities: [world]}], ports: [{port: 80, endPort: 90}]}]\n  egressDeny: [{to: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]}]\n",
    )
    .unwrap();
    assert_eq!(objs[0].describe(), "weirnetworkpolicy n/p");
}
