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
