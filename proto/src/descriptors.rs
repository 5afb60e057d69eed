//! The messages and enums of the Observer API by full name (`.flow.Flow`),
//! from the descriptor set this crate embeds: what field masks and the
//! protojson printer resolve names and types with.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

struct All {
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, EnumDescriptorProto>,
}

fn all() -> &'static All {
    static ALL: OnceLock<All> = OnceLock::new();
    ALL.get_or_init(|| {
        let set = FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).expect("the embedded descriptors decode");
        let mut out = All {
            messages: BTreeMap::new(),
            enums: BTreeMap::new(),
        };
        fn walk(prefix: &str, m: &DescriptorProto, out: &mut All) {
            let name = format!("{prefix}.{}", m.name());
            for nested in &m.nested_type {
                walk(&name, nested, out);
            }
            for e in &m.enum_type {
                out.enums.insert(format!("{name}.{}", e.name()), e.clone());
            }
            out.messages.insert(name, m.clone());
        }
        for f in &set.file {
            let prefix = match f.package() {
                "" => String::new(),
                p => format!(".{p}"),
            };
            for m in &f.message_type {
                walk(&prefix, m, &mut out);
            }
            for e in &f.enum_type {
                out.enums.insert(format!("{prefix}.{}", e.name()), e.clone());
            }
        }
        out
    })
}

/// Every message, by full name.
pub fn messages() -> &'static BTreeMap<String, DescriptorProto> {
    &all().messages
}

/// Every enum, by full name.
pub fn enums() -> &'static BTreeMap<String, EnumDescriptorProto> {
    &all().enums
}
