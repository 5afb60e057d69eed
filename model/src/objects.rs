//! One kind's objects by key, as [`crate::ClusterState`] holds them: a
//! persistent sorted map (rpds's red-black tree, its nodes shared through
//! `Arc`s) with the part of `BTreeMap`'s interface the controllers use.
//!
//! Why persistent: a source keeps its model and publishes snapshot after
//! snapshot of it, up to several a second while a cluster churns. A
//! `BTreeMap` snapshot cloned every map: 26 ms at 40,000 objects, the
//! largest part of the agent's CPU under churn (issue 22's profile). Here
//! a clone shares every node, and a write after one copies only the path
//! to its entry (about log2(n) small nodes; the entries themselves, key
//! and object, stay shared).
use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use rpds::RedBlackTreeMapSync;

/// Keys to shared values, sorted; cheap to clone.
pub struct Persistent<K, V>(RedBlackTreeMapSync<K, V>);

/// A kind's objects by namespace and name.
pub type Objects<T> = Persistent<crate::ObjectKey, Arc<T>>;

impl<K: Ord + Clone, V: Clone> Persistent<K, V> {
    pub fn new() -> Self {
        Self(RedBlackTreeMapSync::new_sync())
    }

    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.0.get(key)
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.0.contains_key(key)
    }

    /// Adds or replaces; the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.0.get(&key).cloned();
        self.0.insert_mut(key, value);
        old
    }

    /// Removes; the value it held.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let old = self.0.get(key).cloned()?;
        self.0.remove_mut(key);
        Some(old)
    }

    pub fn clear(&mut self) {
        *self = Self::new();
    }

    pub fn len(&self) -> usize {
        self.0.size()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// In key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + '_ {
        self.0.iter()
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + '_ {
        self.0.keys()
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + '_ {
        self.0.values()
    }

    /// Whether both are the same map (one cloned from the other and
    /// neither written since): equal without a look at any entry.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        self.0.ptr_eq(&other.0)
    }
}

impl<K: Ord, V> Clone for Persistent<K, V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// `map[&key]`, as `BTreeMap`'s: panics when the key is not there.
impl<K: Ord + Clone, V: Clone, Q: Ord + ?Sized> std::ops::Index<&Q> for Persistent<K, V>
where
    K: Borrow<Q>,
{
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry for the key")
    }
}

impl<K: Ord + Clone, V: Clone> Default for Persistent<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: fmt::Debug + Ord, V: fmt::Debug> fmt::Debug for Persistent<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl<K: Ord, V: PartialEq> PartialEq for Persistent<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<'a, K: Ord + Clone, V: Clone> IntoIterator for &'a Persistent<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Box<dyn DoubleEndedIterator<Item = (&'a K, &'a V)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.0.iter())
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for Persistent<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = Self::new();
        for (k, v) in iter {
            map.0.insert_mut(k, v);
        }
        map
    }
}

impl<K: Ord + Clone, V: Clone> Extend<(K, V)> for Persistent<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.0.insert_mut(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_is_a_snapshot_writes_do_not_reach() {
        let mut live: Persistent<String, Arc<u32>> = (0..100).map(|i| (format!("k{i:03}"), Arc::new(i))).collect();
        let snapshot = live.clone();
        assert!(live.ptr_eq(&snapshot));
        assert_eq!(live.insert("k005".into(), Arc::new(500)).as_deref(), Some(&5));
        assert_eq!(live.remove("k006").as_deref(), Some(&6));
        assert_eq!(live.remove("k006"), None);
        live.insert("k100".into(), Arc::new(100));
        assert!(!live.ptr_eq(&snapshot));
        assert_eq!(
            snapshot.get("k005").map(|v| **v),
            Some(5),
            "the snapshot keeps what it had"
        );
        assert!(snapshot.contains_key("k006") && !snapshot.contains_key("k100"));
        assert_eq!((snapshot.len(), live.len()), (100, 100));
        // Entries not written are the same objects in both.
        assert!(Arc::ptr_eq(snapshot.get("k007").unwrap(), live.get("k007").unwrap()));
        let keys: Vec<&String> = live.keys().collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "in key order");
    }
}
