//! OCI images of the agent and the collector, assembled from the built binaries with Debian's
//! `umoci`. No registry or Docker engine is reachable here, so the Dockerfiles under
//! `deploy/images/` (for users) cannot run in CI; this is the image the tests start through the
//! CRI under the DaemonSet's security context.
//!
//! Contents: the binary (debug info stripped), exactly the shared libraries `ldd` lists and the
//! loader, the kernel object for the agent, `/etc/passwd` with the image's user, and the empty
//! directories the manifests mount over. Nothing else: no shell, no package manager.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{Binaries, sh};

/// One image: what goes in and how it starts.
struct Spec<'a> {
    name: &'a str,
    binary: &'a Path,
    /// Extra files: source, path in the image.
    files: Vec<(&'a Path, &'a str)>,
    user: u32,
    /// Directories the manifests mount volumes on.
    dirs: &'a [&'a str],
}

/// The image tag the tests import (`localhost/<name>:<TAG>` once imported with `ctr`).
pub const TAG: &str = "test";

/// Builds both images into `out`; returns (agent, collector) OCI-layout tarballs.
pub fn build(bins: &Binaries, out: &Path) -> Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let agent = build_one(
        &Spec {
            name: "peregrine-agent",
            binary: &bins.agent,
            files: vec![(&bins.ebpf, "/usr/lib/peregrine/peregrine-ebpf.o")],
            // The agent needs uid 0 for its capabilities to be effective (Kubernetes grants no
            // ambient capabilities); docs/DEPLOY.md lists each one.
            user: 0,
            dirs: &["/etc/peregrine", "/var/lib/peregrine/spool", "/host/sys/fs/cgroup", "/run/containerd", "/tmp"],
        },
        out,
    )?;
    let collector = build_one(
        &Spec {
            name: "peregrine-collector",
            binary: &bins.collector,
            files: vec![],
            user: 65532,
            dirs: &["/etc/peregrine", "/var/lib/peregrine/queue", "/tmp"],
        },
        out,
    )?;
    Ok((agent, collector))
}

fn build_one(spec: &Spec<'_>, out: &Path) -> Result<PathBuf> {
    let work = out.join(format!("{}.work", spec.name));
    let _ = fs::remove_dir_all(&work);
    let (layout, bundle) = (work.join("layout"), work.join("bundle"));
    let image = format!("{}:{TAG}", layout.display());
    fs::create_dir_all(&work)?;
    umoci(&["init", "--layout", &layout.display().to_string()])?;
    umoci(&["new", "--image", &image])?;
    umoci(&["unpack", "--image", &image, &bundle.display().to_string()])?;
    let rootfs = bundle.join("rootfs");

    let bin_dest = format!("/usr/local/bin/{}", spec.name);
    let dest = inside(&rootfs, &bin_dest);
    sh(Command::new("objcopy").arg("--strip-debug").arg(spec.binary).arg(&dest))
        .with_context(|| format!("stripping {} into the image", spec.binary.display()))?;
    for lib in shared_libraries(spec.binary)? {
        let dest = inside(&rootfs, &lib.display().to_string());
        fs::copy(&lib, &dest).with_context(|| format!("copying {} into the image", lib.display()))?;
    }
    for (src, path) in &spec.files {
        fs::copy(src, inside(&rootfs, path)).with_context(|| format!("copying {} into the image", src.display()))?;
    }
    for dir in spec.dirs {
        fs::create_dir_all(rootfs.join(dir.trim_start_matches('/')))?;
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    let etc = rootfs.join("etc");
    fs::create_dir_all(&etc)?;
    let user = if spec.user == 0 { "root".to_owned() } else { "peregrine".to_owned() };
    fs::write(etc.join("passwd"), format!("{user}:x:{0}:{0}:{user}:/:/sbin/nologin\n", spec.user))?;
    fs::write(etc.join("group"), format!("{user}:x:{}:\n", spec.user))?;

    umoci(&["repack", "--image", &image, &bundle.display().to_string()])?;
    umoci(&[
        "config",
        "--image",
        &image,
        &format!("--config.entrypoint={bin_dest}"),
        &format!("--config.user={}", spec.user),
        "--config.workingdir=/",
        "--config.env=PATH=/usr/local/bin",
    ])?;
    let tar = out.join(format!("{}-oci.tar", spec.name));
    sh(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&layout).arg("."))?;
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(tar)
}

/// `path` (absolute, in the image) under `rootfs`, its parent directory made.
fn inside(rootfs: &Path, path: &str) -> PathBuf {
    let p = rootfs.join(path.trim_start_matches('/'));
    if let Some(parent) = p.parent() {
        let _ = fs::create_dir_all(parent);
    }
    p
}

fn umoci(args: &[&str]) -> Result<()> {
    sh(Command::new("umoci").args(args))
}

/// The libraries and loader `ldd` resolves for `binary` (the images have nothing else).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().context("running ldd")?;
    if !out.status.success() {
        bail!("ldd {} failed: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)";
        // the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        } else if line.contains("not found") {
            bail!("ldd {}: {line}", binary.display());
        }
    }
    Ok(libs)
}
