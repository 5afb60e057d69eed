//! The lab as the cluster's identity allocator: in standalone mode it
//! plays the part the operator plays against a real API server. After
//! every change to the pods it stores, [`sync`] runs the model's allocation
//! pass (`weir_model::identity::plan`) over the stored pods and
//! `WeirIdentity` objects and writes the result back into the store, which
//! every agent reads: the same label set gets the same number on every
//! node, and a number goes once no pod has its label set.
use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use weir_model::identity::{self, IdentityKey, WeirIdentity};
use weir_model::{Kind, Object};

use crate::manifests::Store;

/// One allocation pass over the store. Returns the identities it created
/// and released (numbers).
pub fn sync(store: &Store) -> Result<(Vec<u32>, Vec<u32>)> {
    let wanted: BTreeSet<IdentityKey> = store
        .list(Kind::Pod, None)?
        .iter()
        .filter_map(|o| match o {
            Object::Pod(p) => Some(IdentityKey::of_pod(p)),
            _ => None,
        })
        .collect();
    let existing: BTreeMap<u32, IdentityKey> = store
        .list(Kind::WeirIdentity, None)?
        .into_iter()
        .filter_map(|o| match o {
            Object::WeirIdentity(i) => Some((i.id()?, i.spec)),
            _ => None,
        })
        .collect();
    let plan = identity::plan(&existing, &wanted)?;
    for (id, key) in &plan.create {
        store.put(&Object::WeirIdentity(WeirIdentity::numbered(*id, key.clone())))?;
    }
    for id in &plan.release {
        store.remove(Kind::WeirIdentity, None, &id.to_string())?;
    }
    Ok((plan.create.iter().map(|(id, _)| *id).collect(), plan.release))
}
