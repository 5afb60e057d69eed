//! `weir lab ui`: where the lab's service map is, and a picture of it taken
//! by headless Chromium (Debian's `chromium`, which scripts/deps.sh
//! installs).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::state::LabDir;

/// The flags Chromium needs on these machines: no sandbox as root, and
/// none of its own connections (the network is closed; refused
/// connections slow it down, many at a time).
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

pub fn ui(dir: &LabDir, screenshot: Option<&Path>) -> Result<()> {
    let Some(url) = dir.ui_url() else {
        bail!("this lab's relay serves no service map (is the lab up?)");
    };
    println!("{url}");
    if let Some(path) = screenshot {
        let profile = tempdir()?;
        let out = Command::new("chromium")
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--window-size=1600,1000")
            // The page draws its first map as it loads, then one a
            // second; its streams never end, so no virtual time budget
            // (it would wait for them): the shot is taken when loading
            // stops, at the latest after this.
            .arg("--timeout=3000")
            .arg(format!("--screenshot={}", path.display()))
            .arg(&url)
            .output()
            .context("running chromium (scripts/deps.sh installs it)");
        let _ = std::fs::remove_dir_all(&profile);
        let out = out?;
        if !out.status.success() || !path.exists() {
            bail!(
                "chromium took no screenshot: {}",
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
            );
        }
        println!("screenshot: {}", path.display());
    }
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let p = std::env::temp_dir().join(format!("weir-lab-chromium-{}", std::process::id()));
    std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    Ok(p)
}
