//! The containerd + CRI fixture on its own (no agent): real pods started the way kubelet starts
//! them, on a private containerd. Needs root and the tools of xtask/tools.toml.
// Test code: a failed step should stop the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::containerd::{ContainerState, Containerd, PodSpec};

fn ns_of(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap().to_string_lossy().into_owned()
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn unified_cgroup(pid: u32) -> String {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    cgroup.lines().find_map(|l| l.strip_prefix("0::")).expect("a 0:: line").to_owned()
}

#[test]
fn default_pod_runs_in_its_kubelet_cgroup() {
    let ctrd = Containerd::start();
    let spec = PodSpec::new("web");
    let pod = ctrd.run_pod(&spec);
    assert_eq!(ctrd.container_state(&pod.container_id), ContainerState::Running);

    let (code, out) = ctrd.exec_sync(&pod.container_id, &["/bin/hostname"], Duration::from_secs(10));
    assert_eq!(code, 0, "hostname: {out}");
    assert_eq!(out.trim(), "web", "a pod with its own UTS namespace is named after the pod");

    assert_eq!(pod.cgroup_parent, format!("/kubepods/besteffort/pod{}", spec.uid));
    let expected = format!("{}/{}", pod.cgroup_parent, pod.container_id);
    assert_eq!(pod.cgroup_path, expected);
    assert_eq!(unified_cgroup(pod.pid), expected);

    // Not privileged, own pid and network namespaces.
    assert_eq!(status_field(pod.pid, "CapEff"), "00000000a80425fb");
    assert_ne!(ns_of(&pod.pid.to_string(), "pid"), ns_of("self", "pid"));
    assert_ne!(ns_of(&pod.pid.to_string(), "net"), ns_of("self", "net"));

    ctrd.remove_pod(&pod.pod_id);
    assert!(!std::path::Path::new(&format!("/proc/{}", pod.pid)).exists() || status_field(pod.pid, "State").starts_with('Z'));
}

#[test]
fn privileged_host_pid_pod_has_all_our_caps_and_our_pid_namespace() {
    let ctrd = Containerd::start();
    let mut spec = PodSpec::new("priv");
    spec.privileged = true;
    spec.host_pid = true;
    spec.host_network = true;
    spec.qos = support::containerd::Qos::Guaranteed;
    let pod = ctrd.run_pod(&spec);
    assert_eq!(pod.cgroup_parent, format!("/kubepods/pod{}", spec.uid));
    assert_eq!(unified_cgroup(pod.pid), format!("{}/{}", pod.cgroup_parent, pod.container_id));
    // Every capability we hold ourselves: root here lacks CAP_SYS_RESOURCE (docs/test-machine.md §1).
    assert_eq!(status_field(pod.pid, "CapEff"), "000001fffeffffff");
    assert_eq!(ns_of(&pod.pid.to_string(), "pid"), ns_of("self", "pid"));
    assert_eq!(ns_of(&pod.pid.to_string(), "net"), ns_of("self", "net"));
    // In the host pid namespace the container sees the host's processes, us included.
    let own_comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let argv = ["/bin/cat", &format!("/proc/{}/comm", std::process::id())];
    let (code, out) = ctrd.exec_sync(&pod.container_id, &argv, Duration::from_secs(10));
    assert_eq!((code, out.as_str()), (0, own_comm.as_str()), "the test process, seen from the container");
}

#[test]
fn short_lived_container_reaches_exited() {
    let ctrd = Containerd::start();
    let spec = PodSpec::new("short").command(&["/bin/sh", "-c", "sleep 0.2"]);
    let pod = ctrd.run_pod(&spec);
    let exit_code = ctrd.wait_exited(&pod.container_id, Duration::from_secs(10));
    assert_eq!(exit_code, 0);
    assert_eq!(ctrd.container_state(&pod.container_id), ContainerState::Exited { exit_code: 0 });
}

#[test]
fn run_as_user_and_readonly_rootfs_are_applied() {
    let ctrd = Containerd::start();
    let mut spec = PodSpec::new("ro");
    spec.run_as_user = Some(65534);
    spec.readonly_rootfs = true;
    let pod = ctrd.run_pod(&spec);
    assert!(status_field(pod.pid, "Uid").starts_with("65534\t"), "{}", status_field(pod.pid, "Uid"));
    let (code, out) = ctrd.exec_sync(&pod.container_id, &["/bin/id", "-u"], Duration::from_secs(10));
    assert_eq!((code, out.trim()), (0, "65534"));
    let (code, _) = ctrd.exec_sync(&pod.container_id, &["/bin/sh", "-c", "echo x > /probe"], Duration::from_secs(10));
    assert_ne!(code, 0, "the root filesystem is read-only");
}
