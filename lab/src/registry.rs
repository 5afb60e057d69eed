//! The lab's image registry (`kubelet: real`): `crane registry serve` on
//! the external host (the world outside the cluster, where registries
//! live), holding the images `scripts/images.sh` built under their public
//! names; the nodes' containerd reaches it through its registry mirror
//! config (`realnode::registry_hosts_toml`), so manifests name images as a
//! user's would and the kubelet pulls them for real.
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::state::LabState;
use super::{Lab, netns, procs, signals};

pub const PORT: u16 = 5000;

/// One image of the cache's `images/index.tsv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Its public name, `registry.k8s.io/pause:3.10.2`.
    pub reference: String,
    pub entrypoint: String,
    pub layer: PathBuf,
}

impl Image {
    /// The repository and tag inside a registry: the reference without its host.
    pub fn path(&self) -> &str {
        self.reference.split_once('/').map_or(&self.reference, |(_, p)| p)
    }
}

/// The images of `index.tsv` in `dir`.
pub fn parse_index(text: &str, dir: &Path) -> Result<Vec<Image>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.split('\t').collect::<Vec<_>>().as_slice() {
            [reference, entrypoint, layer] => Ok(Image {
                reference: (*reference).to_owned(),
                entrypoint: (*entrypoint).to_owned(),
                layer: dir.join(layer),
            }),
            _ => bail!("images/index.tsv: bad line {l:?}"),
        })
        .collect()
}

/// The images the tools cache holds.
pub fn images() -> Result<Vec<Image>> {
    let dir = weir_k8s::local::tools_dir()
        .and_then(|b| b.parent().map(|d| d.join("images")))
        .context("no tools cache")?;
    let index = dir.join("index.tsv");
    let text = std::fs::read_to_string(&index)
        .with_context(|| format!("reading {} (scripts/tools.sh builds the images)", index.display()))?;
    parse_index(&text, &dir)
}

/// Starts the registry in the external host's netns and pushes every
/// image into it; returns `host:port` as the nodes reach it.
pub fn start(lab: &Lab, state: &mut LabState) -> Result<String> {
    let crane = weir_k8s::local::tool("crane").context("crane is not built: scripts/tools.sh builds it")?;
    let ns = state.topology.external_netns();
    let disk = lab.dir.root.join("registry");
    std::fs::create_dir_all(&disk)?;
    let log_path = lab.dir.logs().join("registry.log");
    let log = File::create(&log_path)?;
    let child = signals::spawn_in(Some(&netns::path(&ns)), &crane)?
        .args(["registry", "serve", "--address", &format!("0.0.0.0:{PORT}"), "--disk"])
        .arg(&disk)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the registry")?;
    state
        .servers
        .push(procs::record(child.id(), "crane registry".to_owned()));
    lab.dir.save(state)?;
    let local = format!("127.0.0.1:{PORT}");
    let t0 = Instant::now();
    for image in images()? {
        let target = format!("{local}/{}", image.path());
        let crane_in_ns = |args: &[&str]| -> Result<()> {
            let out = netns::command(&ns, &crane)
                .args(args)
                .output()
                .context("running crane")?;
            if !out.status.success() {
                bail!(
                    "crane {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        };
        let layer = image.layer.to_string_lossy();
        // The registry may take a moment to listen.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match crane_in_ns(&["append", "--oci-empty-base", "-f", &layer, "-t", &target]) {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline && e.to_string().contains("connection refused") => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
        crane_in_ns(&[
            "mutate",
            &target,
            "--entrypoint",
            &image.entrypoint,
            "--set-platform",
            "linux/amd64",
            "-t",
            &target,
        ])?;
    }
    let addr = format!("{}:{PORT}", state.topology.external_ip());
    println!(
        "registry: {addr} on the external host (images pushed in {:.1}s)",
        t0.elapsed().as_secs_f64()
    );
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_names_each_image_by_its_public_reference() {
        let images = parse_index(
            "registry.k8s.io/pause:3.10.2\t/pause\tpause.tar\nregistry.k8s.io/e2e-test-images/agnhost:2.63.0\t/agnhost\tagnhost.tar\n",
            Path::new("/c/images"),
        )
        .expect("parses");
        assert_eq!(images[1].path(), "e2e-test-images/agnhost:2.63.0");
        assert_eq!(images[0].layer, Path::new("/c/images/pause.tar"));
        assert!(parse_index("one\ttwo\n", Path::new("/")).is_err());
    }
}
