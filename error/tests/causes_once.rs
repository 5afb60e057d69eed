//! Every error variant of the workspace that marks its cause as the
//! source (`#[source]`, `#[from]`, a field named `source`) leaves it out
//! of its own message: the chain printers ([`weir_error::Report`],
//! anyhow's `{:#}`, tracing-subscriber's `error.sources`) print it, and a
//! message that names it too prints it twice. A scan of the sources, as a
//! lint would do it.
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            if !matches!(name, "target" | ".git" | "node_modules") && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The source field a variant's lines (after its `#[error]`) name, if any:
/// a field named `source` or marked `#[source]`/`#[from]` (`0` for a
/// tuple variant's).
fn source_field(variant: &[&str]) -> Option<String> {
    let text = variant.join(" ");
    for attr in ["#[source]", "#[from]"] {
        if let Some(rest) = text.split(attr).nth(1) {
            let rest = rest.trim_start();
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let after = rest[name.len()..].trim_start();
            let named = after.starts_with(':') && !after.starts_with("::");
            return Some(if named { name } else { "0".to_owned() });
        }
    }
    variant
        .iter()
        .any(|l| l.trim_start().starts_with("source:"))
        .then(|| "source".to_owned())
}

#[test]
fn no_error_message_repeats_its_source() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut repeated = Vec::new();
    let mut variants = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a source file");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(msg) = line.trim_start().strip_prefix("#[error(\"") else {
                continue;
            };
            // The variant: up to the next attribute of another variant or
            // the end of this one.
            let variant: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| !l.trim_start().starts_with("#[error") && !l.trim_start().starts_with("///"))
                .take(8)
                .copied()
                .collect();
            let Some(field) = source_field(&variant) else {
                continue;
            };
            variants += 1;
            if msg.contains(&format!("{{{field}}}")) || msg.contains(&format!("{{{field}:")) {
                repeated.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        variants > 30,
        "the scan found only {variants} variants with a source: it no longer reads the sources"
    );
    assert!(
        repeated.is_empty(),
        "these messages repeat their source (the chain printers print it):\n{}",
        repeated.join("\n")
    );
}
