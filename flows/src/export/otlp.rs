//! Flows as OpenTelemetry log records: the body is the flow as structured
//! data (its protojson, the fields the exporter's mask keeps), the
//! attributes name its ends and verdict for a backend's indexes, and the
//! resource is the node. Sent with OTLP's gRPC `LogsService/Export`.

use std::time::Duration;

use serde_json::Value;
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use weir_proto::otlp::any_value::Value as Any;
use weir_proto::otlp::logs_service_client::LogsServiceClient;
use weir_proto::otlp::{
    AnyValue, ArrayValue, ExportLogsServiceRequest, InstrumentationScope, KeyValue, KeyValueList, LogRecord, Resource,
    ResourceLogs, ScopeLogs, SeverityNumber,
};

/// How long one export may take before its records count as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A flow's log record, from its GetFlowsResponse in protojson.
pub fn record(response: &Value, time_nanos: i128, observed_nanos: i128) -> LogRecord {
    let flow = response.get("flow").unwrap_or(&Value::Null);
    let verdict = flow.get("verdict").and_then(Value::as_str).unwrap_or("");
    let warn = matches!(verdict, "DROPPED" | "ERROR");
    let mut attributes = Vec::new();
    let mut attr = |key: &str, v: Option<&Value>| {
        if let Some(v) = v.filter(|v| !v.is_null()) {
            attributes.push(KeyValue {
                key: key.into(),
                value: Some(any(v)),
            });
        }
    };
    attr("flow.verdict", flow.get("verdict"));
    attr("flow.drop_reason", flow.get("drop_reason_desc"));
    attr("flow.traffic_direction", flow.get("traffic_direction"));
    for (end, addr) in [("source", "source"), ("destination", "destination")] {
        let e = flow.get(end);
        attr(&format!("{end}.namespace"), e.and_then(|e| e.get("namespace")));
        attr(&format!("{end}.pod"), e.and_then(|e| e.get("pod_name")));
        attr(
            &format!("{end}.workload"),
            e.and_then(|e| e.pointer("/workloads/0/name")),
        );
        attr(&format!("{addr}.address"), flow.pointer(&format!("/IP/{addr}")));
    }
    let l4 = flow.get("l4");
    for proto in ["TCP", "UDP", "SCTP"] {
        if let Some(p) = l4.and_then(|l| l.get(proto)) {
            attr("network.transport", Some(&Value::String(proto.to_ascii_lowercase())));
            attr("source.port", p.get("source_port"));
            attr("destination.port", p.get("destination_port"));
        }
    }
    LogRecord {
        time_unix_nano: u64::try_from(time_nanos).unwrap_or(0),
        observed_time_unix_nano: u64::try_from(observed_nanos).unwrap_or(0),
        severity_number: if warn {
            SeverityNumber::Warn
        } else {
            SeverityNumber::Info
        } as i32,
        severity_text: if warn { "WARN" } else { "INFO" }.into(),
        body: Some(any(flow)),
        attributes,
        event_name: "weir.flow".into(),
    }
}

/// A group of flows' log record (`aggregateBy`): the body is the group,
/// its keys and counts attributes too.
pub fn group_record(group: &Value, time_nanos: i128, observed_nanos: i128) -> LogRecord {
    let attributes = group
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with("window_") && *k != "node_name")
        .map(|(k, v)| KeyValue {
            key: format!("weir.group.{}", k.replace('-', "_")),
            value: Some(any(v)),
        })
        .collect();
    LogRecord {
        time_unix_nano: u64::try_from(time_nanos).unwrap_or(0),
        observed_time_unix_nano: u64::try_from(observed_nanos).unwrap_or(0),
        severity_number: SeverityNumber::Info as i32,
        severity_text: "INFO".into(),
        body: Some(any(group)),
        attributes,
        event_name: "weir.flow.group".into(),
    }
}

/// JSON as OTLP's AnyValue: objects become key-value lists, so a backend
/// sees the flow's fields, not a string holding them.
fn any(v: &Value) -> AnyValue {
    let value = match v {
        Value::Null => None,
        Value::Bool(b) => Some(Any::BoolValue(*b)),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => Any::IntValue(i),
            None => Any::DoubleValue(n.as_f64().unwrap_or(0.0)),
        }),
        Value::String(s) => Some(Any::StringValue(s.clone())),
        Value::Array(a) => Some(Any::ArrayValue(ArrayValue {
            values: a.iter().map(any).collect(),
        })),
        Value::Object(o) => Some(Any::KvlistValue(KeyValueList {
            values: o
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(any(v)),
                })
                .collect(),
        })),
    };
    AnyValue { value }
}

/// One node's records in one request.
pub fn request(node: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Any::StringValue(v.into())),
        }),
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "weir-agent"), kv("k8s.node.name", node)],
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "weir.flows".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                log_records: records,
            }],
        }],
    }
}

/// What became of one export.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The collector took these many and refused the rest.
    Sent { accepted: u64, rejected: u64 },
    /// Nothing arrived: unreachable, timed out or refused whole.
    Failed(String),
}

/// A client of one collector; connects lazily and reconnects by itself.
pub struct Client {
    inner: LogsServiceClient<tonic::transport::Channel>,
    headers: Vec<(MetadataKey<Ascii>, MetadataValue<Ascii>)>,
}

impl Client {
    /// `endpoint` and `headers` were checked by the configuration.
    pub fn new(endpoint: &str, headers: &[(String, String)]) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(EXPORT_TIMEOUT)
            .connect_lazy();
        let headers = headers
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
            .collect();
        Ok(Self {
            inner: LogsServiceClient::new(channel),
            headers,
        })
    }

    pub async fn export(&mut self, node: &str, records: Vec<LogRecord>) -> Outcome {
        let n = records.len() as u64;
        let mut req = tonic::Request::new(request(node, records));
        for (k, v) in &self.headers {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        match self.inner.export(req).await {
            Ok(resp) => {
                let rejected = resp
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| u64::try_from(p.rejected_log_records).unwrap_or(0))
                    .min(n);
                Outcome::Sent {
                    accepted: n - rejected,
                    rejected,
                }
            }
            Err(status) => Outcome::Failed(status.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attr<'a>(r: &'a LogRecord, key: &str) -> Option<&'a Any> {
        r.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn a_drop_is_a_warning_naming_both_ends() {
        let resp = json!({"flow": {
            "verdict": "DROPPED", "drop_reason_desc": "POLICY_DENIED",
            "IP": {"source": "10.1.0.5", "destination": "10.1.1.7"},
            "l4": {"TCP": {"source_port": 40000, "destination_port": 80}},
            "source": {"namespace": "demo", "pod_name": "intruder"},
            "destination": {"namespace": "demo", "pod_name": "web-1", "workloads": [{"name": "web", "kind": "Deployment"}]}
        }, "node_name": "n1"});
        let r = record(&resp, 5, 7);
        assert_eq!(r.severity_number, SeverityNumber::Warn as i32);
        assert_eq!((r.time_unix_nano, r.observed_time_unix_nano), (5, 7));
        assert_eq!(
            attr(&r, "flow.drop_reason"),
            Some(&Any::StringValue("POLICY_DENIED".into()))
        );
        assert_eq!(attr(&r, "source.pod"), Some(&Any::StringValue("intruder".into())));
        assert_eq!(attr(&r, "destination.workload"), Some(&Any::StringValue("web".into())));
        assert_eq!(
            attr(&r, "destination.address"),
            Some(&Any::StringValue("10.1.1.7".into()))
        );
        assert_eq!(attr(&r, "destination.port"), Some(&Any::IntValue(80)));
        assert_eq!(attr(&r, "network.transport"), Some(&Any::StringValue("tcp".into())));
        let Some(Any::KvlistValue(body)) = r.body.and_then(|b| b.value) else {
            panic!("body is not a key-value list")
        };
        assert!(body.values.iter().any(|kv| kv.key == "l4"));
    }

    #[test]
    fn a_masked_flow_has_only_what_the_mask_kept() {
        let resp = json!({"flow": {"verdict": "FORWARDED"}});
        let r = record(&resp, 1, 1);
        assert_eq!(r.severity_text, "INFO");
        let keys: Vec<_> = r.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["flow.verdict"]);
    }
}
