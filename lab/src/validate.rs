//! What kube-apiserver validates before it stores an object, for the checks
//! the lab's control plane would otherwise let through, worded as the API
//! server words them (k8s.io/apimachinery's `field.Error` and
//! `errors.NewInvalid`), so a user sees the same reason in standalone mode
//! as on a real control plane. Pure: `weir lab apply` runs [`object`] over
//! every object of a text before it changes anything.
//!
//! Covered: `metadata.name` of Namespaces (DNS-1123 label) and Services
//! (DNS-1035 label), `metadata.namespace` of namespaced objects (DNS-1123
//! label), and a Service's ports as `ValidateService` and
//! `validateServicePort` check them (names required when there is more
//! than one port, valid and unique; numbers; protocols; target ports;
//! duplicate node ports and port/protocol pairs). Names that are not DNS
//! subdomains at all are refused earlier, by the parser (`weir_model`).

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::manifests::Object;

/// One field error, printed as apimachinery's `field.Error` prints itself:
/// `spec.ports[1].name: Duplicate value: "http"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The path, e.g. `spec.ports[1].name`.
    pub field: String,
    /// What `ErrorBody` prints: the type, the value, the detail.
    pub body: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body)
    }
}

/// A string as Go's `%q` prints it (the names here are ASCII; Rust's debug
/// quoting agrees with Go's on those).
fn quote(s: &str) -> String {
    format!("{s:?}")
}

impl FieldError {
    fn new(field: impl Into<String>, body: String) -> Self {
        Self {
            field: field.into(),
            body,
        }
    }

    /// `field.Required(path, "")`.
    fn required(field: impl Into<String>) -> Self {
        Self::new(field, "Required value".into())
    }

    /// `field.Invalid(path, "string value", detail)`.
    fn invalid_str(field: impl Into<String>, value: &str, detail: &str) -> Self {
        Self::new(field, format!("Invalid value: {}: {detail}", quote(value)))
    }

    /// `field.Invalid(path, number, detail)`.
    fn invalid_int(field: impl Into<String>, value: i32, detail: &str) -> Self {
        Self::new(field, format!("Invalid value: {value}: {detail}"))
    }

    /// `field.Duplicate(path, value)`; `value` already printed (a quoted
    /// string, a number, or JSON for a struct).
    fn duplicate(field: impl Into<String>, value: String) -> Self {
        Self::new(field, format!("Duplicate value: {value}"))
    }

    /// `field.NotSupported(path, value, supported)`.
    fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| quote(s)).collect();
        Self::new(
            field,
            format!(
                "Unsupported value: {}: supported values: {}",
                quote(value),
                list.join(", ")
            ),
        )
    }
}

/// An object the API server would refuse, printed as its Status message:
/// `Service "web" is invalid: spec.ports[1].name: Duplicate value: "http"`
/// (several errors as `[a, b]`, as `errors.NewAggregate` prints them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {} is invalid: {}", quote(name), aggregate(errors))]
pub struct Invalid {
    /// The `kind:` (`Service`).
    pub kind: &'static str,
    /// `metadata.name`.
    pub name: String,
    /// Every field error, in the API server's order.
    pub errors: Vec<FieldError>,
}

/// `utilerrors.NewAggregate(errs).Error()`: one error alone, several in
/// brackets, repeats left out.
fn aggregate(errors: &[FieldError]) -> String {
    let mut seen = BTreeSet::new();
    let unique: Vec<String> = errors
        .iter()
        .map(ToString::to_string)
        .filter(|m| seen.insert(m.clone()))
        .collect();
    match unique.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
/// Longest DNS label (RFC 1123 and 1035 alike).
const LABEL_MAX: usize = 63;

/// `validation.MaxLenError`.
fn max_len(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// `validation.RegexError(msg, fmt, examples...)`, double space and all.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let shown: Vec<String> = examples.iter().map(|e| format!("'{e}', ")).collect();
    format!(
        "{msg} (e.g. {}regex used for validation is '{fmt}')",
        shown.join(" or ")
    )
}

fn is_label_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, or with `first_letter`, `[a-z]([-a-z0-9]*[a-z0-9])?`.
fn matches_label(s: &str, first_letter: bool) -> bool {
    let b = s.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    let first_ok = if first_letter {
        first.is_ascii_lowercase()
    } else {
        first.is_ascii_alphanumeric() && !first.is_ascii_uppercase()
    };
    first_ok && (last.is_ascii_lowercase() || last.is_ascii_digit()) && b.iter().all(|&c| is_label_char(c))
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`
fn matches_subdomain(s: &str) -> bool {
    s.split('.').all(|l| matches_label(l, false))
}

/// `validation.IsDNS1123Label`.
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > LABEL_MAX {
        errs.push(max_len(LABEL_MAX));
    }
    if !matches_label(s, false) {
        if matches_subdomain(s) {
            errs.push("must not contain dots".into());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_MSG,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// `validation.IsDNS1035Label`.
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > LABEL_MAX {
        errs.push(max_len(LABEL_MAX));
    }
    if !matches_label(s, true) {
        errs.push(regex_error(
            DNS1035_LABEL_MSG,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// `validation.IsValidPortNum`.
fn port_num(n: i32) -> Vec<String> {
    if (1..=65535).contains(&n) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".into()]
    }
}

/// `validation.IsValidPortName` (an IANA service name).
fn port_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 15 {
        errs.push(max_len(15));
    }
    if s.is_empty() || !s.bytes().all(is_label_char) {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// Protocols a Service port may use (`supportedPortProtocols`, sorted as
/// the API server lists them).
const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];

/// The checks of `ValidateService` and `validateServicePort` that concern
/// the ports, after the API server's defaults (protocol TCP, target port
/// the port).
pub fn service_ports(svc: &Service) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = svc.spec.clone().unwrap_or_default();
    let ports = spec.ports.unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if ports.is_empty() && !headless && spec.type_.as_deref() != Some("ExternalName") {
        errs.push(FieldError::required("spec.ports"));
    }
    let protocol = |p: &k8s_openapi::api::core::v1::ServicePort| p.protocol.clone().unwrap_or_else(|| "TCP".into());
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let name = p.name.as_deref().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("{path}.name")));
        } else if !name.is_empty() {
            for msg in dns1123_label(name) {
                errs.push(FieldError::invalid_str(format!("{path}.name"), name, &msg));
            }
            if !names.insert(name) {
                errs.push(FieldError::duplicate(format!("{path}.name"), quote(name)));
            }
        }
        for msg in port_num(p.port) {
            errs.push(FieldError::invalid_int(format!("{path}.port"), p.port, &msg));
        }
        let proto = protocol(p);
        if !PROTOCOLS.contains(&proto.as_str()) {
            errs.push(FieldError::not_supported(
                format!("{path}.protocol"),
                &proto,
                &PROTOCOLS,
            ));
        }
        // Unset, 0 or "" defaults to the port (and is checked as such).
        let target = match &p.target_port {
            None | Some(IntOrString::Int(0)) => IntOrString::Int(p.port),
            Some(IntOrString::String(s)) if s.is_empty() => IntOrString::Int(p.port),
            Some(t) => t.clone(),
        };
        match &target {
            IntOrString::Int(n) => {
                for msg in port_num(*n) {
                    errs.push(FieldError::invalid_int(format!("{path}.targetPort"), *n, &msg));
                }
            }
            IntOrString::String(s) => {
                for msg in port_name(s) {
                    errs.push(FieldError::invalid_str(format!("{path}.targetPort"), s, &msg));
                }
            }
        }
    }
    // (protocol, nodePort) pairs, for the node ports asked for.
    let mut node_ports = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let Some(np) = p.node_port.filter(|n| *n != 0) else {
            continue;
        };
        if !node_ports.insert((protocol(p), np)) {
            errs.push(FieldError::duplicate(
                format!("spec.ports[{i}].nodePort"),
                np.to_string(),
            ));
        }
    }
    // (protocol, port) pairs. The API server keys them with a ServicePort
    // holding only those two fields, and prints that key as JSON.
    let mut pairs = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let proto = protocol(p);
        if !pairs.insert((proto.clone(), p.port)) {
            let key = format!(
                r#"{{"Name":"","Protocol":{},"AppProtocol":null,"Port":{},"TargetPort":0,"NodePort":0}}"#,
                serde_json::Value::String(proto),
                p.port
            );
            errs.push(FieldError::duplicate(format!("spec.ports[{i}]"), key));
        }
    }
    errs
}

/// Why the API server would refuse `obj`, if it would (for the checks this
/// module covers).
pub fn object(obj: &Object) -> Result<(), Invalid> {
    let mut errors = Vec::new();
    let name = obj.name();
    let name_rule = match obj {
        Object::Namespace(_) => Some(dns1123_label as fn(&str) -> Vec<String>),
        Object::Service(_) => Some(dns1035_label as fn(&str) -> Vec<String>),
        _ => None,
    };
    for msg in name_rule.map(|rule| rule(name)).unwrap_or_default() {
        errors.push(FieldError::invalid_str("metadata.name", name, &msg));
    }
    if obj.kind().namespaced() {
        let ns = obj.namespace().unwrap_or("default");
        for msg in dns1123_label(ns) {
            errors.push(FieldError::invalid_str("metadata.namespace", ns, &msg));
        }
    }
    if let Object::Service(svc) = obj {
        errors.extend(service_ports(svc));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Invalid {
            kind: obj.kind().name(),
            name: name.to_owned(),
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::parse_documents;

    fn check(yaml: &str) -> Result<(), String> {
        let objs = parse_documents(yaml).expect("parses");
        assert_eq!(objs.len(), 1);
        object(&objs[0]).map_err(|e| e.to_string())
    }

    fn svc(ports: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  selector: {{app: web}}\n  ports: {ports}\n"
        )
    }

    // The expected texts below are what k8s.io/apimachinery v0.36.4 prints
    // for the same field errors (`apierrors.NewInvalid(...).Error()`),
    // checked by running it.

    #[test]
    fn duplicate_port_names_are_refused_as_the_api_server_refuses_them() {
        assert_eq!(
            check(&svc("[{name: http, port: 80}, {name: http, port: 81}]")),
            Err(r#"Service "web" is invalid: spec.ports[1].name: Duplicate value: "http""#.into())
        );
    }

    #[test]
    fn several_ports_need_a_name_each() {
        assert_eq!(
            check(&svc("[{port: 80}, {name: b, port: 81}]")),
            Err(r#"Service "web" is invalid: spec.ports[0].name: Required value"#.into())
        );
        assert_eq!(
            check(&svc("[{port: 80}, {port: 81}]")),
            Err(
                r#"Service "web" is invalid: [spec.ports[0].name: Required value, spec.ports[1].name: Required value]"#
                    .into()
            )
        );
        // One port needs no name.
        assert_eq!(check(&svc("[{port: 80}]")), Ok(()));
    }

    #[test]
    fn duplicate_port_and_protocol_pairs_are_refused() {
        assert_eq!(
            check(&svc("[{name: a, port: 80}, {name: b, port: 80, protocol: TCP}]")),
            Err(r#"Service "web" is invalid: spec.ports[1]: Duplicate value: {"Name":"","Protocol":"TCP","AppProtocol":null,"Port":80,"TargetPort":0,"NodePort":0}"#.into())
        );
        // The same number over two protocols is fine (DNS: 53/UDP and 53/TCP).
        assert_eq!(
            check(&svc(
                "[{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53}]"
            )),
            Ok(())
        );
    }

    #[test]
    fn every_error_of_a_service_is_reported_in_the_api_servers_order() {
        assert_eq!(
            check(&svc(
                "[{name: http, port: 80}, {name: http, port: 80}, {name: HTTP, port: 0, protocol: tcp}]"
            )),
            Err(concat!(
                r#"Service "web" is invalid: ["#,
                r#"spec.ports[1].name: Duplicate value: "http", "#,
                r#"spec.ports[2].name: Invalid value: "HTTP": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?'), "#,
                r#"spec.ports[2].port: Invalid value: 0: must be between 1 and 65535, inclusive, "#,
                r#"spec.ports[2].protocol: Unsupported value: "tcp": supported values: "SCTP", "TCP", "UDP", "#,
                r#"spec.ports[2].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive, "#,
                r#"spec.ports[1]: Duplicate value: {"Name":"","Protocol":"TCP","AppProtocol":null,"Port":80,"TargetPort":0,"NodePort":0}]"#,
            )
            .into())
        );
    }

    #[test]
    fn target_ports_and_node_ports() {
        assert_eq!(
            check(&svc("[{port: 80, targetPort: \"8080\"}]")),
            Err(r#"Service "web" is invalid: spec.ports[0].targetPort: Invalid value: "8080": must contain at least one letter (a-z)"#.into())
        );
        assert_eq!(
            check(&svc("[{port: 80, targetPort: 70000}]")),
            Err(r#"Service "web" is invalid: spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive"#.into())
        );
        assert_eq!(check(&svc("[{port: 80, targetPort: http-alt}]")), Ok(()));
        assert_eq!(
            check(&svc(
                "[{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30080}, {name: c, port: 81, protocol: UDP, nodePort: 30080}]"
            )),
            Err(r#"Service "web" is invalid: spec.ports[1].nodePort: Duplicate value: 30080"#.into())
        );
    }

    #[test]
    fn ports_are_required_unless_headless_or_external_name() {
        let base = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n";
        assert_eq!(
            check(&format!("{base}spec: {{selector: {{app: web}}}}\n")),
            Err(r#"Service "web" is invalid: spec.ports: Required value"#.into())
        );
        assert_eq!(check(&format!("{base}spec: {{clusterIP: None}}\n")), Ok(()));
        assert_eq!(
            check(&format!(
                "{base}spec: {{type: ExternalName, externalName: example.com}}\n"
            )),
            Ok(())
        );
    }

    #[test]
    fn names_and_namespaces_follow_the_api_servers_rules() {
        let long_label = "a".repeat(64);
        assert_eq!(
            check(&format!("kind: Namespace\nmetadata: {{name: {long_label}}}\n")),
            Err(format!(
                r#"Namespace "{long_label}" is invalid: metadata.name: Invalid value: "{long_label}": must be no more than 63 characters"#
            ))
        );
        assert_eq!(
            check("kind: Namespace\nmetadata: {name: a.b}\n"),
            Err(r#"Namespace "a.b" is invalid: metadata.name: Invalid value: "a.b": must not contain dots"#.into())
        );
        assert_eq!(
            check("kind: Pod\nmetadata: {name: p, namespace: a.b}\n"),
            Err(r#"Pod "p" is invalid: metadata.namespace: Invalid value: "a.b": must not contain dots"#.into())
        );
        assert_eq!(
            check("kind: Service\nmetadata: {name: 1web}\nspec: {ports: [{port: 80}]}\n"),
            Err(r#"Service "1web" is invalid: metadata.name: Invalid value: "1web": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"#.into())
        );
        // A pod's name is a DNS subdomain: up to 253 characters, dots allowed.
        let long_pod = format!("{}.{}", "p".repeat(200), "q".repeat(52));
        assert_eq!(long_pod.len(), 253);
        assert_eq!(
            check(&format!("kind: Pod\nmetadata: {{name: {long_pod}, namespace: shop}}\n")),
            Ok(())
        );
    }

    #[test]
    fn the_demo_manifests_are_valid() {
        for text in [
            include_str!("../demo/pods.yaml"),
            include_str!("../demo/services.yaml"),
            include_str!("../demo/policy.yaml"),
        ] {
            for o in parse_documents(text).unwrap() {
                assert_eq!(object(&o), Ok(()), "{}", o.describe());
            }
        }
    }
}
