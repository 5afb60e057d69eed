//! The CustomResourceDefinitions in `install/crds/` are what the Rust types
//! say (kube's derive makes them): a changed type without a regenerated
//! file fails here. `WEIR_WRITE_CRDS=1 cargo test -p weir-model --test crds`
//! rewrites the file.
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use weir_model::WeirIdentity;
use weir_model::policy::crd::{WeirClusterNetworkPolicy, WeirNetworkPolicy};

/// `install/crds/<file>` holds exactly `crds`, generated from `source`.
fn check(file: &str, source: &str, crds: &[CustomResourceDefinition]) {
    let mut text =
        format!("# Generated from {source} (cargo test -p weir-model --test crds, WEIR_WRITE_CRDS=1); do not edit.\n");
    for crd in crds {
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(crd).expect("CRD to YAML"));
    }
    let path = format!("{}/../install/crds/{file}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("WEIR_WRITE_CRDS").is_some() {
        std::fs::write(&path, &text).expect("writing the CRDs");
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == text,
        "install/crds/{file} is not what the types generate: rerun with WEIR_WRITE_CRDS=1"
    );
}

#[test]
fn install_crds_match_the_rust_types() {
    check(
        "weir-policies.yaml",
        "model/src/policy/crd.rs",
        &[WeirNetworkPolicy::crd(), WeirClusterNetworkPolicy::crd()],
    );
    check("weir-identities.yaml", "model/src/identity.rs", &[WeirIdentity::crd()]);
    // What a user writes parses into the types the agent reads.
    let objs = weir_model::parse_documents(
        "apiVersion: weir.dev/v1alpha1\nkind: WeirNetworkPolicy\nmetadata: {name: p, namespace: n}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  enforcement: audit\n  ingress: [{from: [{entities: [world]}], ports: [{port: 80, endPort: 90}]}]\n  egressDeny: [{to: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]}]\n",
    )
    .unwrap();
    assert_eq!(objs[0].describe(), "weirnetworkpolicy n/p");
}
