//! Pinned maps across upgrades. aya reuses a map pinned under the same name
//! without asking whether it still fits; a map pinned by an older agent
//! with another key, value, type or size would then be used by programs
//! that read it differently. Before each load every pinned map is compared
//! with what the objects declare, and one that no longer fits is unpinned,
//! so the load creates it afresh: replaced deliberately, reported to the
//! caller (the agent logs each), never reused by accident. Its entries are
//! lost; the agent reprograms what it owns (endpoints, services, routes),
//! and conntrack entries start over. A map pinned by an older agent that no
//! object declares any more (`weir_snat4`, merged into conntrack) is
//! unpinned and reported the same way, so no stale map outlives its
//! datapath.

use std::collections::BTreeMap;
use std::path::Path;

use aya_obj::maps::PinningType;

/// What decides whether a pinned map can be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {} key {} B value {} B entries {} flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// A pinned map that did not fit and was unpinned before the load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinReplacement {
    pub map: String,
    /// What the pin held.
    pub was: MapShape,
    /// What the objects declare (and the load creates).
    pub now: MapShape,
}

/// Every map the objects pin by name, as they declare it, with the
/// loader's size overrides applied.
pub fn declared(
    objects: &[&[u8]],
    max_entries: &BTreeMap<String, u32>,
) -> Result<BTreeMap<String, MapShape>, aya_obj::ParseError> {
    let mut out = BTreeMap::new();
    for bytes in objects {
        let obj = aya_obj::Object::parse(bytes)?;
        for (name, map) in &obj.maps {
            if map.pinning() != PinningType::ByName {
                continue;
            }
            out.insert(
                name.clone(),
                MapShape {
                    map_type: map.map_type(),
                    key_size: map.key_size(),
                    value_size: map.value_size(),
                    max_entries: max_entries.get(name).copied().unwrap_or(map.max_entries()),
                    flags: map.map_flags(),
                },
            );
        }
    }
    Ok(out)
}

/// The pinned maps that must be replaced (pure).
pub fn incompatible(declared: &BTreeMap<String, MapShape>, pinned: &BTreeMap<String, MapShape>) -> Vec<PinReplacement> {
    pinned
        .iter()
        .filter_map(|(name, was)| {
            let now = declared.get(name)?;
            (was != now).then(|| PinReplacement {
                map: name.clone(),
                was: *was,
                now: *now,
            })
        })
        .collect()
}

/// The `weir_*` map pins in `dir` that no object declares (any more).
pub fn obsolete(dir: &Path, declared: &BTreeMap<String, MapShape>) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let is_map = e.file_type().ok()?.is_file() && aya::maps::MapInfo::from_pin(e.path()).is_ok();
            (is_map && name.starts_with("weir_") && !declared.contains_key(&name)).then_some(name)
        })
        .collect();
    out.sort();
    out
}

/// The shape of each declared map that is pinned in `dir`.
pub fn pinned(dir: &Path, declared: &BTreeMap<String, MapShape>) -> BTreeMap<String, MapShape> {
    declared
        .keys()
        .filter_map(|name| {
            let info = aya::maps::MapInfo::from_pin(dir.join(name)).ok()?;
            let shape = MapShape {
                map_type: info.map_type().ok()? as u32,
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
                flags: info.map_flags(),
            };
            Some((name.clone(), shape))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(value_size: u32) -> MapShape {
        MapShape {
            map_type: 1,
            key_size: 16,
            value_size,
            max_entries: 1024,
            flags: 0,
        }
    }

    #[test]
    fn only_pins_that_differ_from_the_declaration_are_replaced() {
        let declared: BTreeMap<String, MapShape> = [("a".to_string(), shape(40)), ("b".to_string(), shape(8))].into();
        let pinned: BTreeMap<String, MapShape> = [
            ("a".to_string(), shape(32)),
            ("b".to_string(), shape(8)),
            ("gone".to_string(), shape(1)),
        ]
        .into();
        assert_eq!(
            incompatible(&declared, &pinned),
            vec![PinReplacement {
                map: "a".into(),
                was: shape(32),
                now: shape(40)
            }]
        );
    }
}
