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
    /// Its default arguments (the image's Cmd), space-separated; empty for
    /// none.
    pub cmd: String,
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
            [reference, entrypoint, layer, cmd @ ..] if cmd.len() <= 1 => Ok(Image {
                reference: (*reference).to_owned(),
                entrypoint: (*entrypoint).to_owned(),
                layer: dir.join(layer),
                cmd: cmd.first().map(|c| (*c).to_owned()).unwrap_or_default(),
            }),
            _ => bail!("images/index.tsv: bad line {l:?}"),
        })
        .collect()
}

/// The images the tools cache holds.
pub fn images() -> Result<Vec<Image>> {
    let dir = weir_control_plane::tools_dir()
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
    let crane = weir_control_plane::tool("crane").context("crane is not built: scripts/tools.sh builds it")?;
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
    let t0 = Instant::now();
    for image in images()? {
        push(state, &image)?;
    }
    let addr = format!("{}:{PORT}", state.topology.external_ip());
    println!(
        "registry: {addr} on the external host (images pushed in {:.1}s)",
        t0.elapsed().as_secs_f64()
    );
    Ok(addr)
}

/// Pushes one image (a single layer) into the lab's registry under its
/// public name.
pub fn push(state: &LabState, image: &Image) -> Result<()> {
    let crane = weir_control_plane::tool("crane").context("crane is not built: scripts/tools.sh builds it")?;
    let ns = state.topology.external_netns();
    let target = format!("127.0.0.1:{PORT}/{}", image.path());
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
    let mut args = vec!["mutate", &target, "--set-platform", "linux/amd64", "-t", &target];
    if !image.entrypoint.is_empty() {
        args.extend(["--entrypoint", &image.entrypoint]);
    }
    let cmd = image.cmd.split_whitespace().collect::<Vec<_>>().join(",");
    if !cmd.is_empty() {
        args.extend(["--cmd", &cmd]);
    }
    crane_in_ns(&args)
}

/// weir's image repository (the chart's `image.repository`).
pub const WEIR_IMAGE: &str = "ghcr.io/weir-dev/weir";

/// The binaries weir's image holds, in `/usr/local/bin`.
pub const WEIR_BINARIES: [&str; 5] = ["weir-agent", "weir-cni", "weir-operator", "weir-relay", "weir"];

/// weir's image's one layer, from the binaries in `bin_dir` (debug info
/// stripped) with the shared libraries they load (glibc's, from this
/// host): written to `layer`, staged in `work`. Returns its size in bytes.
pub fn weir_layer(bin_dir: &Path, work: &Path, layer: &Path) -> Result<u64> {
    let stage = work.join("weir-stage");
    let _ = std::fs::remove_dir_all(&stage);
    let bin = stage.join("usr/local/bin");
    std::fs::create_dir_all(&bin)?;
    let mut libs = std::collections::BTreeSet::new();
    for name in WEIR_BINARIES {
        let from = bin_dir.join(name);
        let out = std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(&from)
            .arg(bin.join(name))
            .output()
            .context("running objcopy (binutils)")?;
        if !out.status.success() {
            bail!(
                "objcopy {}: {}",
                from.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let ldd = std::process::Command::new("ldd")
            .arg(&from)
            .output()
            .context("running ldd")?;
        libs.extend(shared_libraries(&String::from_utf8_lossy(&ldd.stdout)));
    }
    for lib in &libs {
        let to = stage.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().context("library path")?)?;
        std::fs::copy(lib, &to).with_context(|| format!("copying {lib}"))?;
    }
    std::fs::create_dir_all(stage.join("tmp"))?;
    let out = std::process::Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "-C",
        ])
        .arg(&stage)
        .arg("-cf")
        .arg(layer)
        .arg(".")
        .output()
        .context("running tar")?;
    let _ = std::fs::remove_dir_all(&stage);
    if !out.status.success() {
        bail!("tar: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(std::fs::metadata(layer)?.len())
}

/// weir's image, `ghcr.io/weir-dev/weir:TAG` (what install/weir.yaml
/// names), from the binaries in `bin_dir` ([`weir_layer`]): built into the
/// lab dir and pushed to the lab's registry. Returns the size of its one
/// layer in bytes.
pub fn push_weir(lab: &Lab, state: &LabState, bin_dir: &Path, tag: &str) -> Result<u64> {
    let work = lab.dir.root.join("registry");
    let layer = work.join("weir-layer.tar");
    let size = weir_layer(bin_dir, &work, &layer)?;
    let image = Image {
        reference: format!("{WEIR_IMAGE}:{tag}"),
        entrypoint: String::new(),
        layer,
        cmd: String::new(),
    };
    push(state, &image)?;
    Ok(size)
}

/// `weir lab image`: weir's image from the binaries in `bin_dir`, pushed
/// to `push` (crane, with the registry credentials of `~/.docker/config.json`)
/// or written to `output` as a tarball (`docker load`, `ctr image import`).
pub fn image(bin_dir: &Path, push: Option<&str>, output: Option<&Path>) -> Result<()> {
    let crane = weir_control_plane::tool("crane").context("crane is not built: scripts/tools.sh builds it")?;
    let work = std::env::temp_dir().join(format!("weir-image-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let layer = work.join("layer.tar");
    let built = weir_layer(bin_dir, &work, &layer);
    let crane_run = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new(&crane)
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
    let layer_arg = layer.to_string_lossy().into_owned();
    let result = built.and_then(|size| {
        let default_ref = format!("{WEIR_IMAGE}:{}", env!("CARGO_PKG_VERSION"));
        match (push, output) {
            (Some(reference), None) => {
                crane_run(&["append", "--oci-empty-base", "-f", &layer_arg, "-t", reference])?;
                crane_run(&["mutate", reference, "--set-platform", "linux/amd64", "-t", reference])?;
                println!("pushed {reference} (layer {} MiB)", size >> 20);
            }
            (None, Some(file)) => {
                let file = file.to_string_lossy();
                crane_run(&[
                    "append",
                    "--oci-empty-base",
                    "--platform",
                    "linux/amd64",
                    "-f",
                    &layer_arg,
                    "-t",
                    &default_ref,
                    "-o",
                    &file,
                ])?;
                println!("wrote {file}: {default_ref} (layer {} MiB)", size >> 20);
            }
            _ => bail!("give --push REGISTRY/REPOSITORY:TAG or --output FILE"),
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The libraries `ldd` lists with a path (not the vDSO).
fn shared_libraries(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_the_libraries_to_ship() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            shared_libraries(ldd),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn the_index_names_each_image_by_its_public_reference() {
        let images = parse_index(
            "registry.k8s.io/pause:3.10.2\t/pause\tpause.tar\nregistry.k8s.io/e2e-test-images/agnhost:2.63.0\t/agnhost\tagnhost.tar\tpause\n",
            Path::new("/c/images"),
        )
        .expect("parses");
        assert_eq!(images[1].path(), "e2e-test-images/agnhost:2.63.0");
        assert_eq!(images[0].layer, Path::new("/c/images/pause.tar"));
        assert_eq!((images[0].cmd.as_str(), images[1].cmd.as_str()), ("", "pause"));
        assert!(parse_index("one\ttwo\n", Path::new("/")).is_err());
    }
}
