//! Which container (and pod) a cgroup path belongs to.
//!
//! Runtimes name a container's cgroup after its id, in a handful of forms that depend on the
//! runtime and on the cgroup driver (cgroupfs or systemd). The forms seen on this project's
//! test machine are exercised by the integration tests; the systemd forms, which need a
//! running systemd, are pinned here with literal paths taken from real nodes.

/// The runtime a path names, when the path says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// containerd through CRI (kubelet) or `ctr`.
    Containerd,
    CriO,
    Docker,
    Podman,
    /// A CRI path (`/kubepods/.../pod<uid>/<id>`) with a cgroupfs driver does not name the
    /// runtime: it is whichever CRI runtime the node runs.
    Cri,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Cri => "",
        }
    }

    /// Whether the CRI API can describe such a container.
    pub fn speaks_cri(self) -> bool {
        matches!(self, Self::Containerd | Self::CriO | Self::Cri)
    }
}

/// What a cgroup path says about its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub id: String,
    pub runtime: Runtime,
    /// The Kubernetes pod's uid, for paths under kubelet's `kubepods` hierarchy.
    pub pod_uid: Option<String>,
    /// For `ctr` containers: the containerd namespace (`default`, `k8s.io`, ...).
    pub namespace: Option<String>,
}

/// containerd namespaces whose `/<namespace>/<id>` cgroups (`ctr run`) are recognised.
const CONTAINERD_NAMESPACES: [&str; 3] = ["default", "k8s.io", "moby"];

/// The container a cgroup2 (or v1) path belongs to, or None for host cgroups. A path below a
/// container's own cgroup (a process that made sub-cgroups) belongs to that container.
pub fn parse(path: &str) -> Option<ContainerRef> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let pod_uid = parts.iter().find_map(|p| pod_uid(p));
    let kube = parts.first().is_some_and(|p| p.starts_with("kubepods"));
    // The outermost component that names a container: deeper ones are its own sub-cgroups.
    for (i, part) in parts.iter().enumerate() {
        if let Some((runtime, id)) = scoped_id(part) {
            return Some(ContainerRef { id, runtime, pod_uid, namespace: None });
        }
        if kube && i > 0 && is_hex_id(part) && parts[i - 1].starts_with("pod") {
            return Some(ContainerRef { id: (*part).to_owned(), runtime: Runtime::Cri, pod_uid, namespace: None });
        }
        if !kube && i == 1 && parts[0] == "docker" && is_hex_id(part) {
            return Some(ContainerRef { id: (*part).to_owned(), runtime: Runtime::Docker, pod_uid: None, namespace: None });
        }
        if !kube && i == 1 && CONTAINERD_NAMESPACES.contains(&parts[0]) && !part.is_empty() {
            return Some(ContainerRef {
                id: (*part).to_owned(),
                runtime: Runtime::Containerd,
                pod_uid: None,
                namespace: Some(parts[0].to_owned()),
            });
        }
    }
    None
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, `libpod-<id>.scope`,
/// and the cgroupfs forms `libpod-<id>` (podman); conmon's own scope is not a container.
fn scoped_id(part: &str) -> Option<(Runtime, String)> {
    let base = part.strip_suffix(".scope").unwrap_or(part);
    let (runtime, id) = if let Some(id) = base.strip_prefix("cri-containerd-") {
        (Runtime::Containerd, id)
    } else if let Some(id) = base.strip_prefix("crio-") {
        (Runtime::CriO, id)
    } else if let Some(id) = base.strip_prefix("docker-") {
        (Runtime::Docker, id)
    } else if let Some(id) = base.strip_prefix("libpod-") {
        (Runtime::Podman, id)
    } else {
        return None;
    };
    is_hex_id(id).then(|| (runtime, id.to_owned()))
}

/// Container ids are 64 lowercase hex digits in every runtime here.
fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(part: &str) -> Option<String> {
    let base = part.strip_suffix(".slice").unwrap_or(part);
    let tail = match base.rfind("-pod") {
        Some(i) if base.starts_with("kubepods") => &base[i + 4..],
        _ => base.strip_prefix("pod")?,
    };
    let uid = tail.replace('_', "-");
    let ok = !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then_some(uid)
}

/// The cgroup path to parse from a `/proc/<pid>/cgroup` text: the cgroup2 (`0::`) line, or on
/// a v1-only host the first hierarchy whose path names a container.
pub fn from_proc_cgroup(text: &str) -> Option<String> {
    let mut v1 = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(_controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if id == "0" {
            return Some(path.to_owned());
        }
        if v1.is_none() && parse(path).is_some() {
            v1 = Some(path.to_owned());
        }
    }
    v1
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6be1d2d140c936c34ac9c67f27e133a9fc1432da9ad205b0ac2f4a22d9d68a77";
    const UID: &str = "2b6c9e5e-1b7a-4e0e-9d3c-7f3f1f0a9c11";

    fn r(id: &str, runtime: Runtime, pod: Option<&str>) -> Option<ContainerRef> {
        Some(ContainerRef { id: id.into(), runtime, pod_uid: pod.map(Into::into), namespace: None })
    }

    #[test]
    fn kubelet_cgroupfs_driver() {
        assert_eq!(parse(&format!("/kubepods/besteffort/pod{UID}/{ID}")), r(ID, Runtime::Cri, Some(UID)));
        assert_eq!(parse(&format!("/kubepods/burstable/pod{UID}/{ID}")), r(ID, Runtime::Cri, Some(UID)));
        // Guaranteed pods sit directly under kubepods.
        assert_eq!(parse(&format!("/kubepods/pod{UID}/{ID}")), r(ID, Runtime::Cri, Some(UID)));
        // The pod's own cgroup is not a container.
        assert_eq!(parse(&format!("/kubepods/besteffort/pod{UID}")), None);
        assert_eq!(parse("/kubepods/besteffort"), None);
    }

    #[test]
    fn kubelet_systemd_driver() {
        let u = UID.replace('-', "_");
        let containerd = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parse(&containerd), r(ID, Runtime::Containerd, Some(UID)));
        let crio = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{ID}.scope");
        assert_eq!(parse(&crio), r(ID, Runtime::CriO, Some(UID)));
        let guaranteed = format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope");
        assert_eq!(parse(&guaranteed), r(ID, Runtime::Containerd, Some(UID)));
        // CRI-O's conmon runs beside the container, not in it.
        let conmon = format!("/kubepods.slice/kubepods-pod{u}.slice/crio-conmon-{ID}.scope");
        assert_eq!(parse(&conmon), None);
        // cri-dockerd.
        let docker = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{ID}.scope");
        assert_eq!(parse(&docker), r(ID, Runtime::Docker, Some(UID)));
    }

    #[test]
    fn standalone_runtimes() {
        assert_eq!(parse(&format!("/docker/{ID}")), r(ID, Runtime::Docker, None));
        assert_eq!(parse(&format!("/system.slice/docker-{ID}.scope")), r(ID, Runtime::Docker, None));
        assert_eq!(parse(&format!("/libpod_parent/libpod-{ID}")), r(ID, Runtime::Podman, None));
        assert_eq!(parse(&format!("/machine.slice/libpod-{ID}.scope")), r(ID, Runtime::Podman, None));
        // podman with a private cgroup namespace nests the workload one level down.
        assert_eq!(parse(&format!("/machine.slice/libpod-{ID}.scope/container")), r(ID, Runtime::Podman, None));
        assert_eq!(
            parse("/default/ctr-default"),
            Some(ContainerRef {
                id: "ctr-default".into(),
                runtime: Runtime::Containerd,
                pod_uid: None,
                namespace: Some("default".into())
            })
        );
    }

    #[test]
    fn host_cgroups_are_not_containers() {
        for p in ["/", "", "/system.slice/sshd.service", "/user.slice/user-0.slice/session-3.scope", "/process_api/abc"] {
            assert_eq!(parse(p), None, "{p}");
        }
        // Not 64 hex digits.
        assert_eq!(parse("/docker/abc"), None);
        assert_eq!(parse(&format!("/kubepods/besteffort/pod{UID}/{}", ID.to_uppercase())), None);
    }

    #[test]
    fn sub_cgroups_belong_to_their_container() {
        assert_eq!(parse(&format!("/kubepods/besteffort/pod{UID}/{ID}/init.scope")), r(ID, Runtime::Cri, Some(UID)));
    }

    #[test]
    fn proc_cgroup_lines() {
        let v2 = format!("12:memory:/kubepods/pod{UID}/{ID}\n0::/kubepods/pod{UID}/{ID}\n");
        assert_eq!(from_proc_cgroup(&v2), Some(format!("/kubepods/pod{UID}/{ID}")));
        // cgroup v1 only: the first hierarchy that names a container.
        let v1 = format!("12:pids:/\n4:memory:/kubepods/besteffort/pod{UID}/{ID}\n3:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{ID}\n");
        assert_eq!(from_proc_cgroup(&v1), Some(format!("/kubepods/besteffort/pod{UID}/{ID}")));
        assert_eq!(from_proc_cgroup("garbage\n\n::\n"), None);
    }
}
