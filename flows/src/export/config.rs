//! The flow export configuration: a YAML file in the shape of Hubble's
//! dynamic exporter (`flowLogs`, each with its filters, field mask and
//! rotation), plus an `otlp` sink. Parsed and checked whole here, with
//! no side effects: a file that fails any check changes nothing.
//!
//! ```yaml
//! flowLogs:
//!   - name: drops
//!     filePath: /var/run/weir/flows/drops.log
//!     includeFilters: [{verdict: [DROPPED]}]
//!     fieldMask: [time, source.namespace, source.pod_name, destination, drop_reason_desc]
//!     fileMaxSizeMb: 10
//!     fileMaxBackups: 5
//!   - name: collector
//!     otlp: {endpoint: "http://otel-collector.observability:4317"}
//!     excludeFilters: [{source_pod: ["kube-system/"]}]
//!   - name: edges
//!     filePath: /var/run/weir/flows/edges.log
//!     aggregateBy: [source-workload, destination-workload, verdict]
//!     aggregateInterval: 1m
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use weir_proto::filter::FlowFilters;
use weir_proto::mask::Mask;

/// Rotation defaults, as Hubble's exporter has them.
const DEFAULT_MAX_SIZE_MB: u64 = 10;
const DEFAULT_MAX_BACKUPS: u32 = 5;
/// Groups are written once a minute unless said otherwise.
const DEFAULT_AGGREGATE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("not valid YAML for a flow export configuration: {0}")]
    Yaml(String),
    #[error("flowLogs[{index}] ({name:?}): {why}")]
    FlowLog { index: usize, name: String, why: String },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    #[serde(default)]
    flow_logs: Vec<Spec>,
}

/// One exporter as written. Kept whole so a reload can tell which
/// exporters changed (an unchanged one keeps running, its file open).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    #[serde(default)]
    file_path: Option<PathBuf>,
    #[serde(default)]
    otlp: Option<OtlpSpec>,
    #[serde(default)]
    include_filters: Vec<serde_json::Value>,
    #[serde(default)]
    exclude_filters: Vec<serde_json::Value>,
    #[serde(default)]
    field_mask: Vec<String>,
    #[serde(default)]
    file_max_size_mb: Option<u64>,
    #[serde(default)]
    file_max_backups: Option<u32>,
    /// Instead of each flow, groups of flows per interval (`weir observe
    /// --aggregate-by`'s keys).
    #[serde(default)]
    aggregate_by: Vec<String>,
    #[serde(default)]
    aggregate_interval: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OtlpSpec {
    endpoint: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Where an exporter's flows go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// JSON lines (`hubble observe -o jsonpb`'s), rotated at `max_bytes`
    /// keeping `backups` old files.
    File {
        path: PathBuf,
        max_bytes: u64,
        backups: u32,
    },
    /// OTLP logs over gRPC (plaintext HTTP/2) to a collector.
    Otlp {
        endpoint: String,
        headers: Vec<(String, String)>,
    },
}

/// Flows folded into groups, one record per group and interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregation {
    pub keys: Vec<weir_proto::aggregate::Key>,
    pub interval: std::time::Duration,
}

/// One exporter, checked and compiled.
#[derive(Debug)]
pub struct FlowLog {
    pub spec: Spec,
    pub sink: Sink,
    pub filters: FlowFilters,
    /// The response mask; none: every field.
    pub mask: Option<Mask>,
    /// Groups instead of flows.
    pub aggregation: Option<Aggregation>,
}

/// Parses and checks a whole configuration. An empty file (or one with
/// no `flowLogs`) means no export.
pub fn parse(text: &str) -> Result<Vec<FlowLog>, ConfigError> {
    let file: File = if text.trim().is_empty() {
        File { flow_logs: Vec::new() }
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?
    };
    let mut names = std::collections::HashSet::new();
    let mut paths = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(file.flow_logs.len());
    for (index, spec) in file.flow_logs.into_iter().enumerate() {
        let fail = |why: String| ConfigError::FlowLog {
            index,
            name: spec.name.clone(),
            why,
        };
        if !valid_name(&spec.name) {
            return Err(fail("name: 1 to 63 lowercase letters, digits and '-'".into()));
        }
        if !names.insert(spec.name.clone()) {
            return Err(fail("name: another flow log has it".into()));
        }
        let sink = sink(&spec).map_err(&fail)?;
        if let Sink::File { path, .. } = &sink
            && !paths.insert(path.clone())
        {
            return Err(fail(format!("filePath {}: another flow log writes it", path.display())));
        }
        let include = filters(&spec.include_filters).map_err(|e| fail(format!("includeFilters: {e}")))?;
        let exclude = filters(&spec.exclude_filters).map_err(|e| fail(format!("excludeFilters: {e}")))?;
        let filters = FlowFilters::compile(&include, &exclude).map_err(|e| fail(e.to_string()))?;
        let mask = match spec.field_mask.is_empty() {
            true => None,
            false => Some(Mask::for_response(
                Mask::for_flow(&spec.field_mask, false).map_err(|e| fail(format!("fieldMask: {e}")))?,
            )),
        };
        let aggregation = aggregation(&spec).map_err(&fail)?;
        if aggregation.is_some() && mask.is_some() {
            return Err(fail("fieldMask is for flows; aggregateBy writes groups".into()));
        }
        out.push(FlowLog {
            spec,
            sink,
            filters,
            mask,
            aggregation,
        });
    }
    Ok(out)
}

fn aggregation(spec: &Spec) -> Result<Option<Aggregation>, String> {
    if spec.aggregate_by.is_empty() {
        return match spec.aggregate_interval {
            Some(_) => Err("aggregateInterval is for aggregateBy".into()),
            None => Ok(None),
        };
    }
    let keys = spec
        .aggregate_by
        .iter()
        .map(|k| weir_proto::aggregate::Key::parse(k).map_err(|e| format!("aggregateBy: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let interval = match &spec.aggregate_interval {
        Some(t) => parse_duration(t).map_err(|e| format!("aggregateInterval: {e}"))?,
        None => DEFAULT_AGGREGATE_INTERVAL,
    };
    if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600)).contains(&interval) {
        return Err(format!("aggregateInterval {interval:?}: 1s to 1h"));
    }
    Ok(Some(Aggregation { keys, interval }))
}

/// `500ms`, `10s`, `2m`, `1h`, or bare seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with ms, s, m or h"))?;
    let d = match unit {
        "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n * 60),
        "h" => std::time::Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m or h)")),
    };
    Ok(d)
}

fn valid_name(n: &str) -> bool {
    (1..=63).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn sink(spec: &Spec) -> Result<Sink, String> {
    match (&spec.file_path, &spec.otlp) {
        (Some(path), None) => {
            if !path.is_absolute() {
                return Err(format!("filePath {}: must be absolute", path.display()));
            }
            let mb = spec.file_max_size_mb.unwrap_or(DEFAULT_MAX_SIZE_MB);
            if !(1..=10_240).contains(&mb) {
                return Err(format!("fileMaxSizeMb {mb}: 1 to 10240"));
            }
            let backups = spec.file_max_backups.unwrap_or(DEFAULT_MAX_BACKUPS);
            if backups > 1000 {
                return Err(format!("fileMaxBackups {backups}: at most 1000"));
            }
            Ok(Sink::File {
                path: path.clone(),
                max_bytes: mb << 20,
                backups,
            })
        }
        (None, Some(otlp)) => {
            if spec.file_max_size_mb.is_some() || spec.file_max_backups.is_some() {
                return Err("fileMaxSizeMb and fileMaxBackups are for filePath".into());
            }
            let rest = otlp.endpoint.strip_prefix("http://").ok_or_else(|| {
                format!(
                    "otlp.endpoint {:?}: must be http://HOST:PORT (OTLP over gRPC in plaintext; TLS to a collector is \
                     not supported yet)",
                    otlp.endpoint
                )
            })?;
            let authority: tonic::codegen::http::uri::Authority = rest
                .trim_end_matches('/')
                .parse()
                .map_err(|e| format!("otlp.endpoint {:?}: {e}", otlp.endpoint))?;
            if authority.port_u16().is_none() {
                return Err(format!(
                    "otlp.endpoint {:?}: needs a port (4317 is OTLP's)",
                    otlp.endpoint
                ));
            }
            for (k, v) in &otlp.headers {
                let ok = k
                    .parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>()
                    .is_ok()
                    && v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
                        .is_ok();
                if !ok {
                    return Err(format!("otlp.headers {k:?}: not a valid gRPC metadata key and value"));
                }
            }
            Ok(Sink::Otlp {
                endpoint: format!("http://{authority}"),
                headers: otlp.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            })
        }
        (Some(_), Some(_)) => Err("filePath and otlp: give one of them".into()),
        (None, None) => Err("no sink: give filePath or otlp".into()),
    }
}

/// Filters as Hubble's exporter takes them: FlowFilter objects in
/// protojson (either field naming).
fn filters(values: &[serde_json::Value]) -> Result<Vec<weir_proto::flow::FlowFilter>, String> {
    weir_proto::jsonpb::flow_filter_values(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(yaml: &str) -> Result<FlowLog, ConfigError> {
        parse(yaml).map(|mut v| v.remove(0))
    }

    fn why(yaml: &str) -> String {
        parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn an_empty_file_exports_nothing() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("flowLogs: []").unwrap().is_empty());
    }

    #[test]
    fn a_file_log_with_filters_mask_and_rotation() {
        let f = one(
            "flowLogs:\n- name: drops\n  filePath: /var/run/weir/drops.log\n  includeFilters: [{verdict: [DROPPED]}]\n  \
             excludeFilters: [{source_pod: [kube-system/]}]\n  fieldMask: [time, source.pod_name, verdict]\n  \
             fileMaxSizeMb: 2\n  fileMaxBackups: 3\n",
        )
        .unwrap();
        assert_eq!(
            f.sink,
            Sink::File {
                path: "/var/run/weir/drops.log".into(),
                max_bytes: 2 << 20,
                backups: 3
            }
        );
        assert!(!f.filters.is_empty());
        assert!(f.mask.is_some());
        let d = one("flowLogs: [{name: all, filePath: /tmp/all.log}]").unwrap();
        assert_eq!(
            d.sink,
            Sink::File {
                path: "/tmp/all.log".into(),
                max_bytes: 10 << 20,
                backups: 5
            }
        );
        assert!(d.filters.is_empty() && d.mask.is_none());
    }

    #[test]
    fn an_aggregated_log() {
        let f = one("flowLogs: [{name: edges, filePath: /e.log, aggregateBy: [source-workload, verdict], aggregateInterval: 10s}]")
            .unwrap();
        let a = f.aggregation.expect("aggregated");
        assert_eq!(
            a.keys,
            [
                weir_proto::aggregate::Key::SourceWorkload,
                weir_proto::aggregate::Key::Verdict
            ]
        );
        assert_eq!(a.interval, std::time::Duration::from_secs(10));
    }

    #[test]
    fn an_otlp_log() {
        let f =
            one("flowLogs: [{name: otel, otlp: {endpoint: 'http://127.0.0.1:4317', headers: {x-team: net}}}]").unwrap();
        assert_eq!(
            f.sink,
            Sink::Otlp {
                endpoint: "http://127.0.0.1:4317".into(),
                headers: vec![("x-team".into(), "net".into())]
            }
        );
    }

    #[test]
    fn every_mistake_is_refused_with_its_place_and_reason() {
        for (yaml, expect) in [
            ("flowLogs: [{name: a}]", "no sink"),
            ("flowLogs: [{name: a, filePath: rel.log}]", "must be absolute"),
            ("flowLogs: [{name: A, filePath: /a}]", "name: 1 to 63"),
            (
                "flowLogs: [{name: a, filePath: /a}, {name: a, filePath: /b}]",
                "another flow log has it",
            ),
            (
                "flowLogs: [{name: a, filePath: /a}, {name: b, filePath: /a}]",
                "another flow log writes it",
            ),
            (
                "flowLogs: [{name: a, filePath: /a, otlp: {endpoint: 'http://h:1'}}]",
                "give one of them",
            ),
            ("flowLogs: [{name: a, filePath: /a, fieldMask: [nope]}]", "fieldMask"),
            (
                "flowLogs: [{name: a, filePath: /a, includeFilters: [{verdikt: [DROPPED]}]}]",
                "includeFilters",
            ),
            (
                "flowLogs: [{name: a, filePath: /a, fileMaxSizeMb: 0}]",
                "fileMaxSizeMb 0",
            ),
            (
                "flowLogs: [{name: a, otlp: {endpoint: 'https://h:4317'}}]",
                "must be http://",
            ),
            ("flowLogs: [{name: a, otlp: {endpoint: 'http://h'}}]", "needs a port"),
            (
                "flowLogs: [{name: a, otlp: {endpoint: 'http://h:1'}, fileMaxBackups: 1}]",
                "are for filePath",
            ),
            ("flowLogs: [{name: a, filePath: /a, colour: red}]", "unknown field"),
            ("flowlogs: []", "unknown field"),
            (
                "flowLogs: [{name: a, filePath: /a, aggregateBy: [colour]}]",
                "is not an aggregation key",
            ),
            (
                "flowLogs: [{name: a, filePath: /a, aggregateInterval: 1m}]",
                "aggregateInterval is for aggregateBy",
            ),
            (
                "flowLogs: [{name: a, filePath: /a, aggregateBy: [verdict], aggregateInterval: 2h}]",
                "1s to 1h",
            ),
            (
                "flowLogs: [{name: a, filePath: /a, aggregateBy: [verdict], fieldMask: [time]}]",
                "fieldMask is for flows",
            ),
        ] {
            let got = why(yaml);
            assert!(got.contains(expect), "{yaml}: {got}");
        }
        assert!(why("flowLogs: [{name: ok, filePath: /a}, {name: b}]").starts_with("flowLogs[1] (\"b\")"));
    }
}
