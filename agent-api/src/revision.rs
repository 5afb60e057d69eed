//! The revision of a standalone manifest directory: a hash of its listing
//! (every manifest's path, size and mtime). The agent reports the revision
//! its controllers applied; a writer of the directory (`weir lab`) computes
//! the revision it left and waits for the agent to report it. Both sides
//! use this one function, so they agree on what a revision is.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One manifest file as the listing sees it.
pub type ManifestFile = (PathBuf, u64, SystemTime);

/// Every manifest under `dir` (recursively: `*.yaml`, `*.yml`, `*.json`),
/// sorted; dotfiles are writers' temporaries (write-then-rename) and left out.
pub fn manifest_files(dir: &Path) -> Vec<ManifestFile> {
    fn walk(dir: &Path, out: &mut Vec<ManifestFile>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                walk(&path, out);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
                out.push((path, meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// The revision of a listing of `dir`: FNV-1a over every path (relative to
/// `dir`, so the agent and a writer that name the directory differently
/// agree), size and mtime; the same in every build of every binary (std's
/// hasher is not).
pub fn revision(dir: &Path, files: &[ManifestFile]) -> u64 {
    let mut h = crate::names::Fnv1a::default();
    let mut eat = |bytes: &[u8]| h.eat(bytes);
    for (path, size, mtime) in files {
        eat(path.strip_prefix(dir).unwrap_or(path).as_os_str().as_encoded_bytes());
        eat(&[0]);
        eat(&size.to_le_bytes());
        let ns = mtime.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        eat(&ns.to_le_bytes());
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_follows_every_change_of_the_listing() {
        let dir = std::env::temp_dir().join(format!("weir-revision-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pod")).unwrap();
        std::fs::write(dir.join("pod/a.yaml"), "kind: Pod").unwrap();
        std::fs::write(dir.join("pod/.a.yaml.tmp"), "junk").unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let one = manifest_files(&dir);
        assert_eq!(one.len(), 1, "{one:?}");
        assert_eq!(revision(&dir, &one), revision(&dir, &manifest_files(&dir)), "stable");
        let via = dir.join("pod").join("..");
        assert_eq!(
            revision(&via, &manifest_files(&via)),
            revision(&dir, &one),
            "the same directory by another name"
        );
        std::fs::write(dir.join("pod/a.yaml"), "kind: Pod\n").unwrap();
        assert_ne!(
            revision(&dir, &one),
            revision(&dir, &manifest_files(&dir)),
            "a rewrite changes it"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
