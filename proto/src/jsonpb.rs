//! Protobuf messages as protojson writes them, with proto field names: what
//! `hubble observe -o jsonpb` prints (a `GetFlowsResponse` per line), made
//! from the encoded message and the embedded descriptors, so `weir observe
//! -o jsonpb` prints the same bytes' same JSON. Fields not on the wire
//! (proto3 defaults) are left out, enums are their names, 64-bit integers
//! strings, timestamps RFC 3339, wrappers their value.

use prost::Message;
use prost::encoding::decode_varint;
use prost_types::field_descriptor_proto::{Label, Type};
use serde_json::{Map, Value};

use crate::descriptors::{enums, messages};

/// A message's bytes as JSON; `None` when they do not decode as
/// `message` (a full name: `.observer.GetFlowsResponse`).
pub fn to_json(message: &str, bytes: &[u8]) -> Option<Value> {
    match message {
        ".google.protobuf.Timestamp" => {
            let t = prost_types::Timestamp::decode(bytes).ok()?;
            return Some(Value::String(crate::time::protojson(&t)));
        }
        ".google.protobuf.FieldMask" => {
            let m = prost_types::FieldMask::decode(bytes).ok()?;
            return Some(Value::String(m.paths.join(",")));
        }
        // Wrappers are their value (field 1), or the type's zero.
        w if w.starts_with(".google.protobuf.") && w.ends_with("Value") => {
            let inner = to_json_fields(w, bytes)?;
            let zero = match w {
                ".google.protobuf.BoolValue" => Value::Bool(false),
                ".google.protobuf.StringValue" | ".google.protobuf.BytesValue" => Value::String(String::new()),
                ".google.protobuf.Int64Value" | ".google.protobuf.UInt64Value" => Value::String("0".into()),
                _ => Value::from(0),
            };
            return Some(inner.get("value").cloned().unwrap_or(zero));
        }
        _ => {}
    }
    to_json_fields(message, bytes).map(Value::Object)
}

/// A message (full name) encoded from JSON as `hubble observe --allowlist`
/// reads it: keys are proto field names (any case) or their JSON names,
/// enums numbers or names, 64-bit integers numbers or strings, several
/// objects one after another allowed. An unknown key is an error, with
/// its name.
pub fn from_json(message: &str, v: &Value) -> Result<Vec<u8>, String> {
    let d = messages()
        .get(message)
        .ok_or_else(|| format!("{message}: not a message"))?;
    let Value::Object(fields) = v else {
        return Err(format!(
            "{}: expected an object, got {v}",
            message.trim_start_matches('.')
        ));
    };
    let mut out = Vec::new();
    for (key, value) in fields {
        let field = d
            .field
            .iter()
            .find(|f| f.name().eq_ignore_ascii_case(key) || f.json_name() == key)
            .ok_or_else(|| format!("unknown field {key:?} in {}", message.trim_start_matches('.')))?;
        let values: Vec<&Value> = match (value, field.label() == Label::Repeated) {
            (Value::Null, _) => Vec::new(),
            (Value::Array(items), true) => items.iter().collect(),
            (v, true) => return Err(format!("{key}: expected a list, got {v}")),
            (v, false) => vec![v],
        };
        for v in values {
            encode_one(field.number() as u32, field.r#type(), field.type_name(), v, &mut out)
                .map_err(|e| format!("{key}: {e}"))?;
        }
    }
    Ok(out)
}

fn encode_one(number: u32, t: Type, type_name: &str, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let int = |v: &Value| -> Result<i64, String> {
        match v {
            Value::Number(n) => n.as_i64().or_else(|| n.as_u64().map(|u| u as i64)),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("expected an integer, got {v}"))
    };
    match t {
        Type::Message => {
            let inner = match type_name {
                w if w.starts_with(".google.protobuf.") && w.ends_with("Value") => {
                    from_json(w, &serde_json::json!({ "value": v }))?
                }
                _ => from_json(type_name, v)?,
            };
            encode_key(number, WireType::LengthDelimited, out);
            encode_varint(inner.len() as u64, out);
            out.extend_from_slice(&inner);
        }
        Type::String => {
            let s = v.as_str().ok_or_else(|| format!("expected a string, got {v}"))?;
            encode_key(number, WireType::LengthDelimited, out);
            encode_varint(s.len() as u64, out);
            out.extend_from_slice(s.as_bytes());
        }
        Type::Bytes => {
            use base64::Engine;
            let s = v.as_str().ok_or_else(|| format!("expected base64, got {v}"))?;
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("{s:?}: {e}"))?;
            encode_key(number, WireType::LengthDelimited, out);
            encode_varint(b.len() as u64, out);
            out.extend_from_slice(&b);
        }
        Type::Bool => {
            let b = v.as_bool().ok_or_else(|| format!("expected true or false, got {v}"))?;
            encode_key(number, WireType::Varint, out);
            encode_varint(u64::from(b), out);
        }
        Type::Enum => {
            let n = match v.as_str() {
                Some(name) => enums()
                    .get(type_name)
                    .and_then(|e| e.value.iter().find(|x| x.name() == name))
                    .map(|x| i64::from(x.number()))
                    .ok_or_else(|| format!("{name:?} is not a value of {}", type_name.trim_start_matches('.')))?,
                None => int(v)?,
            };
            encode_key(number, WireType::Varint, out);
            encode_varint(n as u64, out);
        }
        Type::Int32 | Type::Int64 | Type::Uint32 | Type::Uint64 => {
            encode_key(number, WireType::Varint, out);
            encode_varint(int(v)? as u64, out);
        }
        Type::Sint32 | Type::Sint64 => {
            let n = int(v)?;
            encode_key(number, WireType::Varint, out);
            encode_varint(((n << 1) ^ (n >> 63)) as u64, out);
        }
        Type::Fixed32 | Type::Sfixed32 => {
            encode_key(number, WireType::ThirtyTwoBit, out);
            out.extend_from_slice(&(int(v)? as u32).to_le_bytes());
        }
        Type::Fixed64 | Type::Sfixed64 => {
            encode_key(number, WireType::SixtyFourBit, out);
            out.extend_from_slice(&(int(v)? as u64).to_le_bytes());
        }
        Type::Float => {
            let f = v.as_f64().ok_or_else(|| format!("expected a number, got {v}"))?;
            encode_key(number, WireType::ThirtyTwoBit, out);
            out.extend_from_slice(&(f as f32).to_le_bytes());
        }
        Type::Double => {
            let f = v.as_f64().ok_or_else(|| format!("expected a number, got {v}"))?;
            encode_key(number, WireType::SixtyFourBit, out);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Type::Group => return Err("groups are not supported".into()),
    }
    Ok(())
}

/// Every FlowFilter in `text`: one JSON object or several in a row, as
/// `hubble observe --allowlist` takes them.
pub fn flow_filters(text: &str) -> Result<Vec<crate::flow::FlowFilter>, String> {
    let mut out = Vec::new();
    for v in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        let v = v.map_err(|e| format!("{text:?}: {e}"))?;
        let bytes = from_json(".flow.FlowFilter", &v).map_err(|e| format!("{text:?}: {e}"))?;
        out.push(crate::flow::FlowFilter::decode(bytes.as_slice()).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// FlowFilters given as JSON values (from YAML, say: Hubble's exporter
/// and metrics configurations hold them so).
pub fn flow_filter_values(values: &[Value]) -> Result<Vec<crate::flow::FlowFilter>, String> {
    values
        .iter()
        .map(|v| {
            let bytes = from_json(".flow.FlowFilter", v)?;
            crate::flow::FlowFilter::decode(bytes.as_slice()).map_err(|e| e.to_string())
        })
        .collect()
}

/// A GetFlows response, as `hubble observe -o jsonpb` prints it.
pub fn response(r: &crate::observer::GetFlowsResponse) -> Value {
    to_json(".observer.GetFlowsResponse", &r.encode_to_vec()).unwrap_or(Value::Null)
}

fn to_json_fields(message: &str, mut bytes: &[u8]) -> Option<Map<String, Value>> {
    let d = messages().get(message)?;
    let mut out = Map::new();
    while !bytes.is_empty() {
        let key = decode_varint(&mut bytes).ok()?;
        let (number, wire) = ((key >> 3) as i32, key & 7);
        let raw: Raw = match wire {
            0 => Raw::Varint(decode_varint(&mut bytes).ok()?),
            1 => {
                let (v, rest) = bytes.split_first_chunk::<8>()?;
                bytes = rest;
                Raw::Fixed64(u64::from_le_bytes(*v))
            }
            5 => {
                let (v, rest) = bytes.split_first_chunk::<4>()?;
                bytes = rest;
                Raw::Fixed32(u32::from_le_bytes(*v))
            }
            2 => {
                let n = decode_varint(&mut bytes).ok()? as usize;
                if bytes.len() < n {
                    return None;
                }
                let (v, rest) = bytes.split_at(n);
                bytes = rest;
                Raw::Len(v)
            }
            _ => return None,
        };
        // Fields this schema does not know are skipped, as protojson does
        // with unknown fields.
        let Some(field) = d.field.iter().find(|f| f.number() == number) else {
            continue;
        };
        let repeated = field.label() == Label::Repeated;
        let values: Vec<Value> = match (raw, field.r#type()) {
            // A packed run of scalars.
            (Raw::Len(v), t) if repeated && !matches!(t, Type::String | Type::Bytes | Type::Message) => {
                packed(v, t, field.type_name())?
            }
            (raw, t) => vec![scalar_or_message(raw, t, field.type_name())?],
        };
        let name = field.name().to_owned();
        if repeated {
            let list = out.entry(name).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = list {
                a.extend(values);
            }
        } else if let Some(v) = values.into_iter().next_back() {
            out.insert(name, v);
        }
    }
    Some(out)
}

enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

fn enum_name(type_name: &str, n: i32) -> Value {
    enums()
        .get(type_name)
        .and_then(|e| e.value.iter().find(|v| v.number() == n))
        .map_or(Value::from(n), |v| Value::String(v.name().to_owned()))
}

fn scalar_or_message(raw: Raw, t: Type, type_name: &str) -> Option<Value> {
    Some(match (raw, t) {
        (Raw::Varint(v), Type::Bool) => Value::Bool(v != 0),
        (Raw::Varint(v), Type::Int32) => Value::from(v as i32),
        (Raw::Varint(v), Type::Uint32) => Value::from(v as u32),
        (Raw::Varint(v), Type::Sint32) => Value::from(((v >> 1) as i32) ^ -((v & 1) as i32)),
        (Raw::Varint(v), Type::Int64) => Value::String((v as i64).to_string()),
        (Raw::Varint(v), Type::Uint64) => Value::String(v.to_string()),
        (Raw::Varint(v), Type::Sint64) => Value::String((((v >> 1) as i64) ^ -((v & 1) as i64)).to_string()),
        (Raw::Varint(v), Type::Enum) => enum_name(type_name, v as i32),
        (Raw::Fixed64(v), Type::Fixed64) => Value::String(v.to_string()),
        (Raw::Fixed64(v), Type::Sfixed64) => Value::String((v as i64).to_string()),
        (Raw::Fixed64(v), Type::Double) => Value::from(f64::from_bits(v)),
        (Raw::Fixed32(v), Type::Fixed32) => Value::from(v),
        (Raw::Fixed32(v), Type::Sfixed32) => Value::from(v as i32),
        (Raw::Fixed32(v), Type::Float) => Value::from(f32::from_bits(v)),
        (Raw::Len(v), Type::String) => Value::String(String::from_utf8_lossy(v).into_owned()),
        (Raw::Len(v), Type::Bytes) => {
            use base64::Engine;
            Value::String(base64::engine::general_purpose::STANDARD.encode(v))
        }
        (Raw::Len(v), Type::Message) => to_json(type_name, v)?,
        _ => return None,
    })
}

fn packed(mut v: &[u8], t: Type, type_name: &str) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    while !v.is_empty() {
        let raw = match t {
            Type::Double | Type::Fixed64 | Type::Sfixed64 => {
                let (x, rest) = v.split_first_chunk::<8>()?;
                v = rest;
                Raw::Fixed64(u64::from_le_bytes(*x))
            }
            Type::Float | Type::Fixed32 | Type::Sfixed32 => {
                let (x, rest) = v.split_first_chunk::<4>()?;
                v = rest;
                Raw::Fixed32(u32::from_le_bytes(*x))
            }
            _ => Raw::Varint(decode_varint(&mut v).ok()?),
        };
        out.push(scalar_or_message(raw, t, type_name)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Endpoint, Flow, Layer4, Tcp, TcpFlags, Verdict, layer4::Protocol};
    use crate::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};

    #[test]
    fn filters_read_from_json_as_hubble_reads_them() {
        use crate::flow::{FlowFilter, TcpFlags, Workload};
        let got = flow_filters(
            r#"{"source_pod":["shop/"],"verdict":[2],"tcp_flags":[{"SYN":true}]} {"destination_workload":[{"name":"web"}],"verdict":["DROPPED"],"SOURCE_IP":["10.0.0.1"]}"#,
        )
        .expect("valid");
        assert_eq!(
            got,
            [
                FlowFilter {
                    source_pod: vec!["shop/".into()],
                    verdict: vec![Verdict::Dropped as i32],
                    tcp_flags: vec![TcpFlags {
                        syn: true,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                FlowFilter {
                    destination_workload: vec![Workload {
                        name: "web".into(),
                        kind: String::new(),
                    }],
                    verdict: vec![Verdict::Dropped as i32],
                    source_ip: vec!["10.0.0.1".into()],
                    ..Default::default()
                },
            ]
        );
        let err = flow_filters(r#"{"source_pood":["x"]}"#).unwrap_err();
        assert!(
            err.contains(r#"unknown field "source_pood" in flow.FlowFilter"#),
            "{err}"
        );
        assert!(flow_filters(r#"{"verdict":"DROPPED"}"#).is_err(), "a list is a list");
        assert!(flow_filters("{").is_err());
    }

    #[test]
    fn a_response_prints_as_protojson_with_proto_names() {
        let flow = Flow {
            time: Some(prost_types::Timestamp {
                seconds: 1_796_598_000,
                nanos: 250_000_000,
            }),
            verdict: Verdict::Dropped as i32,
            is_reply: Some(false),
            source: Some(Endpoint {
                identity: 300,
                namespace: "shop".into(),
                pod_name: "front".into(),
                labels: vec!["k8s:app=front".into(), "k8s:tier=web".into()],
                ..Default::default()
            }),
            l4: Some(Layer4 {
                protocol: Some(Protocol::Tcp(Tcp {
                    source_port: 40000,
                    destination_port: 80,
                    flags: Some(TcpFlags {
                        syn: true,
                        ..Default::default()
                    }),
                })),
            }),
            ..Default::default()
        };
        let r = GetFlowsResponse {
            time: flow.time,
            node_name: "node-a".into(),
            response_types: Some(ResponseTypes::Flow(flow)),
        };
        let got = to_json(".observer.GetFlowsResponse", &r.encode_to_vec()).expect("decodes");
        let want = serde_json::json!({
            "flow": {
                "time": "2026-12-06T23:00:00.250Z",
                "verdict": "DROPPED",
                "is_reply": false,
                "source": {"identity": 300, "namespace": "shop", "pod_name": "front",
                           "labels": ["k8s:app=front", "k8s:tier=web"]},
                "l4": {"TCP": {"source_port": 40000, "destination_port": 80, "flags": {"SYN": true}}},
            },
            "node_name": "node-a",
            "time": "2026-12-06T23:00:00.250Z",
        });
        assert_eq!(got, want);
    }
}
