//! GetFlows' `field_mask`, applied on the server: only the flow fields a
//! client asked for go on the wire (the stock hubble CLI asks for about 25
//! of Flow's fields for its compact, dict and table output). Paths are
//! Flow's proto field names (`time`, `IP`, `source.pod_name`), resolved
//! against the descriptors this crate embeds, and applied to the encoded
//! flow itself, field by field on the wire, so a flow encoded once
//! ([`crate::encoded`]) is masked without being decoded.

use std::collections::BTreeMap;

use prost_types::field_descriptor_proto::Type;

use crate::descriptors::messages;

/// A mask path that names no field of Flow (or goes through a field that
/// holds no message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("field mask path {path:?}: {why}")]
pub struct MaskError {
    pub path: String,
    pub why: String,
}

/// Which fields of a message to keep: a field number to everything under
/// it (`None`) or to a mask of its own message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mask(BTreeMap<u32, Option<Mask>>);

impl Mask {
    /// The mask of Flow for these paths. With `lenient`, a path that
    /// names no field of weir's Flow is skipped rather than refused: the
    /// stock hubble CLI asks for fields of Hubble's Flow weir does not
    /// have (`l7`, `ip_trace_id`), and there is nothing to send for them.
    pub fn for_flow(paths: &[String], lenient: bool) -> Result<Mask, MaskError> {
        let mut mask = Mask::default();
        for path in paths {
            match mask.add(".flow.Flow", path) {
                Ok(()) => {}
                Err(_) if lenient => {}
                Err(e) => return Err(e),
            }
        }
        Ok(mask)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The mask of a GetFlowsResponse whose flow gets `flow`: its time,
    /// node, node status and lost events stay whole.
    pub fn for_response(flow: Mask) -> Mask {
        let mut m = Mask::default();
        m.0.insert(1, Some(flow));
        for whole in [2, 3, 1000, 1001] {
            m.0.insert(whole, None);
        }
        m
    }

    fn add(&mut self, message: &str, path: &str) -> Result<(), MaskError> {
        let err = |why: String| MaskError {
            path: path.to_owned(),
            why,
        };
        let mut node = self;
        let mut msg = message.to_owned();
        let segments: Vec<&str> = path.split('.').collect();
        for (i, seg) in segments.iter().enumerate() {
            let d = messages()
                .get(&msg)
                .ok_or_else(|| err(format!("{msg} is not a message")))?;
            let field = d
                .field
                .iter()
                .find(|f| f.name() == *seg)
                .ok_or_else(|| err(format!("{} has no field {seg:?}", msg.trim_start_matches('.'))))?;
            let number = field.number() as u32;
            let last = i + 1 == segments.len();
            if last {
                node.0.insert(number, None);
                return Ok(());
            }
            if field.r#type() != Type::Message {
                return Err(err(format!("{seg} holds no message")));
            }
            msg = field.type_name().to_owned();
            let entry = node.0.entry(number).or_insert_with(|| Some(Mask::default()));
            match entry {
                // Already all of it: a finer path adds nothing.
                None => return Ok(()),
                Some(sub) => node = sub,
            }
        }
        Ok(())
    }

    /// `bytes` (an encoded message this mask is for) with only the masked
    /// fields; `None` when they are not a well-formed message.
    pub fn apply(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(bytes.len());
        let mut rest = bytes;
        while !rest.is_empty() {
            let start = rest;
            let key = prost::encoding::decode_varint(&mut rest).ok()?;
            let (number, wire) = ((key >> 3) as u32, (key & 7) as u8);
            let value_start = rest;
            let len = match wire {
                0 => {
                    prost::encoding::decode_varint(&mut rest).ok()?;
                    value_start.len() - rest.len()
                }
                1 => 8,
                5 => 4,
                2 => {
                    let n = prost::encoding::decode_varint(&mut rest).ok()? as usize;
                    (value_start.len() - rest.len()) + n
                }
                _ => return None,
            };
            if value_start.len() < len {
                return None;
            }
            let whole = &start[..start.len() - value_start.len() + len];
            match self.0.get(&number) {
                Some(None) => out.extend_from_slice(whole),
                Some(Some(sub)) if wire == 2 => {
                    let header = value_start.len() - rest.len();
                    let inner = sub.apply(&value_start[header..len])?;
                    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
                    prost::encoding::encode_varint(inner.len() as u64, &mut out);
                    out.extend_from_slice(&inner);
                }
                _ => {}
            }
            rest = &value_start[len..];
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Endpoint, Flow, Ip, Verdict};
    use prost::Message;

    fn flow() -> Flow {
        Flow {
            time: Some(prost_types::Timestamp { seconds: 7, nanos: 1 }),
            verdict: Verdict::Dropped as i32,
            node_name: "node-a".into(),
            ip: Some(Ip {
                source: "10.0.0.1".into(),
                destination: "10.0.0.2".into(),
                ..Default::default()
            }),
            source: Some(Endpoint {
                namespace: "shop".into(),
                pod_name: "front".into(),
                labels: vec!["k8s:app=front".into()],
                identity: 300,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn masked(paths: &[&str]) -> Flow {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let mask = Mask::for_flow(&paths, false).expect("valid");
        Flow::decode(mask.apply(&flow().encode_to_vec()).expect("applies").as_slice()).expect("decodes")
    }

    #[test]
    fn only_the_asked_fields_remain_nested_ones_too() {
        let got = masked(&["time", "verdict", "source.pod_name", "source.namespace"]);
        let want = Flow {
            time: flow().time,
            verdict: Verdict::Dropped as i32,
            source: Some(Endpoint {
                namespace: "shop".into(),
                pod_name: "front".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(got, want);
        assert_eq!(
            masked(&["IP", "IP.source"]).ip,
            flow().ip,
            "a whole field wins over a finer path"
        );
        assert_eq!(masked(&[]), Flow::default());
    }

    #[test]
    fn paths_naming_nothing_are_refused_unless_lenient() {
        let bad = ["source.nope".to_owned()];
        assert_eq!(
            Mask::for_flow(&bad, false).unwrap_err().to_string(),
            "field mask path \"source.nope\": flow.Endpoint has no field \"nope\""
        );
        assert!(Mask::for_flow(&["verdict.x".to_owned()], false).is_err());
        let hubble = ["time".to_owned(), "l7".to_owned(), "ip_trace_id".to_owned()];
        let m = Mask::for_flow(&hubble, true).expect("lenient");
        assert_eq!(
            Flow::decode(m.apply(&flow().encode_to_vec()).unwrap().as_slice()).unwrap(),
            Flow {
                time: flow().time,
                ..Default::default()
            }
        );
    }
}
