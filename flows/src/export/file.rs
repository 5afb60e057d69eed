//! A file of JSON lines that rotates by size, as Hubble's exporter's
//! (lumberjack) does: when the next line would pass the limit the file
//! is renamed `<stem>-<UTC time>.<ext>` beside it, a new one is started,
//! and the oldest backups beyond the count are deleted.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// `2006-01-02T15-04-05.000`
const STAMP_LEN: usize = 23;

pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    backups: u32,
    out: BufWriter<File>,
    size: u64,
}

impl RotatingFile {
    /// Opens (appends to) `path`, making its directory if needed. Flows
    /// name pods and addresses: the file is for the node's admins only.
    pub fn open(path: &Path, max_bytes: u64, backups: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o750).create(dir)?;
        }
        let file = open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            max_bytes,
            backups,
            out: BufWriter::with_capacity(64 << 10, file),
            size,
        })
    }

    /// Writes one line (`line` without its newline).
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let n = line.len() as u64 + 1;
        if self.size > 0 && self.size + n > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.out.write_all(b"\n")?;
        self.size += n;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let backup = self.backup_name(SystemTime::now());
        std::fs::rename(&self.path, &backup)?;
        self.out = BufWriter::with_capacity(64 << 10, open(&self.path)?);
        self.size = 0;
        self.prune()
    }

    /// `<stem>-<2006-01-02T15-04-05.000>.<ext>`, lumberjack's name; a
    /// second rotation within the same millisecond gets a suffix.
    fn backup_name(&self, now: SystemTime) -> PathBuf {
        let (stem, ext) = split(&self.path);
        let d = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs() as i64;
        let (y, mo, day) = weir_proto::time::civil_date(secs.div_euclid(86_400));
        let s = secs.rem_euclid(86_400);
        let stamp = format!(
            "{y:04}-{mo:02}-{day:02}T{:02}-{:02}-{:02}.{:03}",
            s / 3600,
            s / 60 % 60,
            s % 60,
            d.subsec_millis()
        );
        let mut candidate = self.path.with_file_name(format!("{stem}-{stamp}{ext}"));
        let mut n = 1;
        while candidate.exists() {
            candidate = self.path.with_file_name(format!("{stem}-{stamp}-{n}{ext}"));
            n += 1;
        }
        candidate
    }

    /// The backups of this file, oldest first (their names sort by time).
    pub fn backups(&self) -> io::Result<Vec<PathBuf>> {
        let (stem, ext) = split(&self.path);
        let prefix = format!("{stem}-");
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with(&prefix)
                    && name.ends_with(&ext)
                    && name[prefix.len()..].starts_with(|c: char| c.is_ascii_digit())
            })
            .map(|e| e.path())
            .collect();
        // By time, then by the suffix of a second rotation in the same
        // millisecond ("-1" would sort before ".log" by name).
        let key = |p: &PathBuf| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let rest = &name[prefix.len()..name.len() - ext.len()];
            let (stamp, n) = rest.split_at(rest.len().min(STAMP_LEN));
            (stamp.to_owned(), n.trim_start_matches('-').parse::<u32>().unwrap_or(0))
        };
        found.sort_by_key(key);
        Ok(found)
    }

    fn prune(&self) -> io::Result<()> {
        let backups = self.backups()?;
        let extra = backups.len().saturating_sub(self.backups as usize);
        for old in &backups[..extra] {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

/// A file name's stem and its extension with the dot (`""` if none).
fn split(path: &Path) -> (String, String) {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (stem, ext)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(test: &str) -> Self {
            let d = std::env::temp_dir().join(format!("weir-export-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            Self(d)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p).unwrap().lines().map(str::to_owned).collect()
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest_backups() {
        let dir = Dir::new("rotate");
        let path = dir.path().join("flows/all.log");
        let mut f = RotatingFile::open(&path, 100, 2).unwrap();
        // 30-byte lines: three fit in 100 bytes, the fourth rotates.
        for i in 0..10 {
            f.write_line(format!("{i:029}").as_bytes()).unwrap();
        }
        f.flush().unwrap();
        assert_eq!(lines(&path), [format!("{:029}", 9)]);
        let backups = f.backups().unwrap();
        assert_eq!(backups.len(), 2, "{backups:?}");
        // The newest backup holds the three lines before the last.
        assert_eq!(
            lines(&backups[1]),
            (6..9).map(|i| format!("{i:029}")).collect::<Vec<_>>()
        );
        assert_eq!(
            lines(&backups[0]),
            (3..6).map(|i| format!("{i:029}")).collect::<Vec<_>>()
        );
        let name = backups[1].file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("all-2") && name.ends_with(".log"), "{name}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
    }

    #[test]
    fn appends_to_what_is_there_and_counts_it_towards_the_limit() {
        let dir = Dir::new("append");
        let path = dir.path().join("a.log");
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::write(&path, format!("{}\n", "x".repeat(89))).unwrap();
        let mut f = RotatingFile::open(&path, 100, 1).unwrap();
        f.write_line(b"0123456789").unwrap();
        f.flush().unwrap();
        assert_eq!(f.backups().unwrap().len(), 1);
        assert_eq!(lines(&path), ["0123456789"]);
        // A line longer than the limit still goes out, alone in its file.
        f.write_line(&[b'y'; 150]).unwrap();
        f.flush().unwrap();
        assert_eq!(lines(&path).len(), 1);
    }
}
