//! A real, private containerd (1.6, CRI plugin) for container tests, driven over the kubelet's
//! CRI API exactly as kubelet drives it (RunPodSandbox → CreateContainer → StartContainer, with
//! kubelet's labels, annotations, cgroup parents and namespace modes).
//!
//! Machine facts this relies on (docs/test-machine.md §1–3): no systemd, so the cgroupfs driver;
//! no CAP_SYS_RESOURCE, so `restrict_oom_score_adj = true`; the CRI never pulls, so the images are
//! built locally (busybox-static + umoci) and imported into namespace `k8s.io` with `ctr`.
//!
//! Instances: each test starts its own [`Containerd`] (own root, state, socket, runc root, CNI
//! directories, all under one temporary directory). Several may run at once, in one test binary
//! or in several: the only host paths they share are containerd 1.6's fixed `/run/containerd/s`
//! (shim sockets, named by a hash of our socket path, so they never collide), libcni's fixed
//! `/var/lib/cni/results` (entries named by sandbox id) and the kubelet-style parent cgroups
//! `/kubepods[/besteffort]` (pod cgroups are per pod UID). Every instance holds a shared `flock` on
//! `$TMPDIR/peregrine-containerd.lock` for its lifetime; the last one out takes it exclusively and
//! removes those shared leftovers (empty directories only), so no instance ever loses a directory
//! it is about to use.
//!
//! Pod networking: hostNetwork pods use the node's network. Every other pod gets its own network
//! namespace with `lo` up and an `eth0` that leads nowhere (a veth whose peer stays inside the pod),
//! made by a tiny busybox CNI plugin in the instance's private CNI directories: containerd 1.6
//! refuses pod-network sandboxes without a CNI network that gives `eth0` an address. No bridge,
//! route, or host-side interface is created; the pod's netns is mounted under our state directory.
// Test scaffolding: a failed set-up step should stop the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::Read,
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    self as cri, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient, NamespaceMode,
};
use tonic::transport::{Channel, Endpoint, Uri};

use super::{tool, unique, wait_for, Proc, TempDir};

/// The workload image: busybox-static, `CMD ["/bin/sh"]`.
pub const BUSYBOX_IMAGE: &str = "localhost/busybox:latest";
/// The sandbox ("pause") image: the same rootfs, `ENTRYPOINT ["/bin/sleep"] CMD ["2147483647"]`.
pub const PAUSE_IMAGE: &str = "localhost/pause:local";
/// containerd's namespace for everything the CRI plugin manages.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// Upper bound for one CRI call (ExecSync adds its own timeout to this).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one short external command (umoci, busybox, ctr).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Test images: built once per test process, removed when the process exits.

struct Images {
    busybox: PathBuf,
    pause: PathBuf,
}

static IMAGES_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_images_dir() {
    if let Some(dir) = IMAGES_DIR.get() {
        let _ = fs::remove_dir_all(dir);
    }
}

fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let t0 = Instant::now();
        let dir = std::env::temp_dir().join(unique("peregrine-images-"));
        fs::create_dir_all(&dir).unwrap();
        if IMAGES_DIR.set(dir.clone()).is_ok() {
            // SAFETY: registers a plain `extern "C" fn()` that only reads a static set above.
            unsafe { libc::atexit(remove_images_dir) };
        }
        let busybox = build_image(&dir, "busybox", "latest", &["--config.cmd=/bin/sh"]);
        let pause = build_image(&dir, "pause", "local", &["--config.entrypoint=/bin/sleep", "--config.cmd=2147483647"]);
        eprintln!("containerd fixture: test images built in {:?}", t0.elapsed());
        Images { busybox, pause }
    })
}

/// A busybox-static root filesystem: every applet a symlink in /bin, root in /etc/passwd.
fn populate_rootfs(rootfs: &Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "usr/bin", "usr/sbin", "sbin", "var/run"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    let busybox = tool("busybox");
    let elf = fs::read(&busybox).unwrap();
    let dynamic = object::read::elf::ElfFile64::<object::Endianness>::parse(&*elf)
        .map(|f| object::Object::section_by_name(&f, ".interp").is_some())
        .unwrap_or(true);
    assert!(!dynamic, "{} is not a static busybox (the image has no libc): install busybox-static", busybox.display());
    fs::copy(&busybox, rootfs.join("bin/busybox")).unwrap();
    fs::set_permissions(rootfs.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    let mut list = Command::new(&busybox);
    list.arg("--list");
    for applet in run(list, "busybox --list").lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox") {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n").unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

/// `umoci` recipe of docs/test-machine.md §2.3; returns the OCI-layout tarball.
fn build_image(dir: &Path, name: &str, tag: &str, config: &[&str]) -> PathBuf {
    let layout = dir.join(format!("{name}-oci"));
    let bundle = dir.join(format!("{name}-bundle"));
    let image = format!("{}:{tag}", layout.display());
    let umoci = |args: &[&str], what: &str| {
        let mut c = Command::new(tool("umoci"));
        c.args(args);
        run(c, what)
    };
    umoci(&["init", "--layout", layout.to_str().unwrap()], "umoci init");
    umoci(&["new", "--image", &image], "umoci new");
    umoci(&["unpack", "--image", &image, bundle.to_str().unwrap()], "umoci unpack");
    populate_rootfs(&bundle.join("rootfs"));
    umoci(&["repack", "--image", &image, bundle.to_str().unwrap()], "umoci repack");
    let mut args = vec!["config", "--image", &image, "--config.env=PATH=/usr/sbin:/usr/bin:/sbin:/bin"];
    args.extend_from_slice(config);
    umoci(&args, "umoci config");
    let tar = dir.join(format!("{name}-oci.tar"));
    let mut c = Command::new(tool("busybox"));
    c.args(["tar", "-cf"]).arg(&tar).arg("-C").arg(&layout).arg(".");
    run(c, "busybox tar");
    let _ = fs::remove_dir_all(&bundle);
    let _ = fs::remove_dir_all(&layout);
    tar
}

/// Runs a short external command to completion (bounded), panicking with its stderr on failure.
fn run(mut cmd: Command, what: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {:?}: {e}", cmd.get_program()));
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let status = wait_child(&mut child, COMMAND_TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what}: still running after {COMMAND_TIMEOUT:?}, killed")
    });
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "{what} failed ({status}): {err}{out}");
    out
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Pods, as a kubelet would describe them.

/// Kubelet's QoS classes, which decide the pod's cgroup parent (cgroupfs driver).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Qos {
    /// `/kubepods/besteffort/pod<uid>`: no requests or limits.
    #[default]
    BestEffort,
    /// `/kubepods/pod<uid>`: requests == limits (here 100m CPU, 128 MiB).
    Guaranteed,
}

/// One pod with one container (image [`BUSYBOX_IMAGE`]).
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    /// The pod UID (a UUID, as the API server makes them).
    pub uid: String,
    /// Pod labels: on the sandbox, as kubelet puts them (kubelet does not copy them to containers).
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub container_name: String,
    /// `securityContext.privileged` of the container (kubelet then makes the sandbox privileged too).
    pub privileged: bool,
    pub host_pid: bool,
    pub host_network: bool,
    pub host_ipc: bool,
    /// `shareProcessNamespace`: pid namespace mode POD instead of kubelet's default CONTAINER.
    pub share_process_namespace: bool,
    /// The container's `command` (the image has only `CMD /bin/sh`, which would exit at once).
    pub command: Vec<String>,
    pub run_as_user: Option<i64>,
    pub readonly_rootfs: bool,
    pub qos: Qos,
    /// The container's image (imported into `k8s.io`); default [`BUSYBOX_IMAGE`].
    pub image: String,
    /// `args` (appended to `command`, or to the image's entrypoint when `command` is empty).
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    /// Volume mounts, as kubelet resolves them to host paths.
    pub mounts: Vec<HostMount>,
    /// `securityContext.capabilities` (names as in a pod spec, without `CAP_`); None: the
    /// runtime's default set.
    pub capabilities: Option<Capabilities>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privs: bool,
    /// `seccompProfile.type: RuntimeDefault` (else Unconfined: kubelet's default without one).
    pub seccomp_runtime_default: bool,
}

/// One mount of a host path into the container.
#[derive(Clone, Debug)]
pub struct HostMount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub readonly: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Capabilities {
    pub add: Vec<String>,
    pub drop: Vec<String>,
}

impl PodSpec {
    /// A best-effort pod `name` in namespace `default` with a fresh UID, whose container sleeps.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            uid: uuid::Uuid::now_v7().to_string(),
            labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
            annotations: BTreeMap::new(),
            container_name: "main".to_owned(),
            privileged: false,
            host_pid: false,
            host_network: false,
            host_ipc: false,
            share_process_namespace: false,
            command: ["/bin/sleep", "2147483647"].map(String::from).to_vec(),
            run_as_user: None,
            readonly_rootfs: false,
            qos: Qos::BestEffort,
            image: BUSYBOX_IMAGE.to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            mounts: Vec::new(),
            capabilities: None,
            no_new_privs: false,
            seccomp_runtime_default: false,
        }
    }

    pub fn command(mut self, argv: &[&str]) -> Self {
        self.command = argv.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Kubelet's cgroup parent for this pod (cgroupfs driver).
    pub fn cgroup_parent(&self) -> String {
        match self.qos {
            Qos::BestEffort => format!("/kubepods/besteffort/pod{}", self.uid),
            Qos::Guaranteed => format!("/kubepods/pod{}", self.uid),
        }
    }
}

/// A started pod: sandbox and one container.
#[derive(Clone, Debug)]
pub struct RunningPod {
    pub pod_id: String,
    pub container_id: String,
    pub uid: String,
    /// `/kubepods/besteffort/pod<uid>` (or `/kubepods/pod<uid>`).
    pub cgroup_parent: String,
    /// The container's `runtimeSpec.linux.cgroupsPath`: `<cgroup_parent>/<container_id>`.
    pub cgroup_path: String,
    /// The container's init process on the host (verbose ContainerStatus `pid`).
    pub pid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited { exit_code: i32 },
    Unknown,
}

// ---------------------------------------------------------------------------------------------
// The instance lock (see the module docs).

struct InstanceLock(fs::File);

fn flock(file: &fs::File, op: i32) -> bool {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

impl InstanceLock {
    fn path() -> PathBuf {
        std::env::temp_dir().join("peregrine-containerd.lock")
    }

    fn shared() -> Self {
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(Self::path()).unwrap();
        wait_for(Duration::from_secs(60), "the containerd instance lock (another instance is cleaning up)", || {
            flock(&file, libc::LOCK_SH | libc::LOCK_NB).then_some(())
        });
        Self(file)
    }

    /// Unlocks; if no other instance is alive, first removes the shared leftovers.
    fn release(self, cgroup_parents: &[String]) {
        if flock(&self.0, libc::LOCK_EX | libc::LOCK_NB) {
            let mut shared: Vec<String> = Vec::new();
            for parent in cgroup_parents {
                let mut p = Path::new(parent);
                while let Some(up) = p.parent().filter(|u| *u != Path::new("/")) {
                    shared.push(up.to_str().unwrap().to_owned());
                    p = up;
                }
            }
            shared.sort_by_key(|p| std::cmp::Reverse(p.len()));
            shared.dedup();
            for mount in cgroup_mounts() {
                for p in &shared {
                    let _ = fs::remove_dir(mount.join(p.trim_start_matches('/')));
                }
            }
            // containerd 1.6's fixed shim socket directory; libcni's fixed result cache.
            for d in ["/run/containerd/s", "/run/containerd", CNI_CACHE, "/var/lib/cni"] {
                let _ = fs::remove_dir(d);
            }
        }
        let _ = flock(&self.0, libc::LOCK_UN);
    }
}

/// libcni's result cache (fixed in containerd 1.6; the CNI DEL of a pod removes its entries).
const CNI_CACHE: &str = "/var/lib/cni/results";

/// Every cgroup (v1 and v2) mount point: runc's cgroupfs driver makes the same path in each.
fn cgroup_mounts() -> Vec<PathBuf> {
    cgroup_mounts_typed().into_iter().map(|(m, _)| m).collect()
}

/// Cgroup mount points, each with whether it is the cgroup2 (unified) one.
fn cgroup_mounts_typed() -> Vec<(PathBuf, bool)> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let mount = pre.split_whitespace().nth(4).map(unescape_mountinfo)?;
            (fstype == "cgroup" || fstype == "cgroup2").then_some((mount, fstype == "cgroup2"))
        })
        .collect()
}

fn unescape_mountinfo(s: &str) -> PathBuf {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

// ---------------------------------------------------------------------------------------------
// CRI client on a private current-thread runtime, so tests stay synchronous.

struct Cri {
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

impl Cri {
    fn new(socket: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let socket = socket.to_owned();
        let channel = {
            let _enter = rt.enter();
            Endpoint::try_from("http://[::]:50051").unwrap().connect_timeout(Duration::from_secs(5)).connect_with_connector_lazy(
                tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
                }),
            )
        };
        Self { rt, channel }
    }

    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs one call to completion, bounded by `timeout`.
    fn call<T>(
        &self,
        what: &str,
        timeout: Duration,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, String> {
        match self.rt.block_on(async move { tokio::time::timeout(timeout, fut).await }) {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(format!("CRI {what}: {:?}: {}", status.code(), status.message())),
            Err(_) => Err(format!("CRI {what}: no answer within {timeout:?}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The instance.

/// A private containerd. Dropping it removes its pods, stops it and its shims (by PID) and
/// removes its directory.
pub struct Containerd {
    cri: Cri,
    proc: Option<Proc>,
    socket: PathBuf,
    state: PathBuf,
    pods_log_root: PathBuf,
    /// The cgroup parents of every pod this instance ran (for cleanup).
    cgroup_parents: Mutex<Vec<String>>,
    /// Sandbox configs by pod id: CreateContainer takes the sandbox's config again, as from kubelet.
    sandboxes: Mutex<HashMap<String, cri::PodSandboxConfig>>,
    /// Every pod id this instance made (for cleanup).
    pod_ids: Mutex<Vec<String>>,
    /// The shims (PIDs) that ran this instance's pods (for cleanup).
    shims: Mutex<Vec<i32>>,
    lock: Option<InstanceLock>,
    // Last: removed after Drop::drop has stopped everything.
    dir: TempDir,
}

/// The pod network of every non-hostNetwork pod: one interface, nothing behind it.
const CNI_CONFLIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "peregrine-test-isolated",
  "plugins": [ { "type": "peregrine-test-isolated" } ]
}
"#;

/// A CNI plugin for test pods, installed both as `loopback` (go-cni runs that for its built-in
/// `cni-loopback` network, with ifname `lo`) and as `peregrine-test-isolated` (ifname `eth0`).
/// `lo`: brought up. `eth0`: one end of a veth pair whose peer stays in the same namespace, with a
/// /32 from 198.19.0.0/16 taken from the sandbox id (containerd 1.6 requires an IP on `eth0`).
/// No bridge, no route, no address outside the pod's own network namespace; DEL has nothing to
/// undo (the namespace goes with its interfaces). `@SH@`/`@BUSYBOX@` become the resolved tools.
const CNI_PLUGIN: &str = r#"#!@SH@
BB=@BUSYBOX@
ver=$($BB cat | $BB tr -d '\n' | $BB sed -n 's/.*"cniVersion" *: *"\([^"]*\)".*/\1/p')
[ -n "$ver" ] || ver=1.0.0
case "$CNI_COMMAND" in
ADD)
  ns() { $BB nsenter --net="$CNI_NETNS" $BB "$@"; }
  if [ "$CNI_IFNAME" = lo ]; then
    ns ip link set lo up || exit 1
    addr=127.0.0.1/8
  else
    a=$(printf '%s' "$CNI_CONTAINERID" | $BB cut -c1-2)
    b=$(printf '%s' "$CNI_CONTAINERID" | $BB cut -c3-4)
    addr="198.19.$((0x$a)).$((0x$b))/32"
    # busybox ip ignores "peer name": the peer is the namespace's first free vethN, here veth0.
    ns ip link add "$CNI_IFNAME" type veth || exit 1
    ns ip addr add "$addr" dev "$CNI_IFNAME" || exit 1
    ns ip link set veth0 up || exit 1
    ns ip link set "$CNI_IFNAME" up || exit 1
  fi
  case "$ver" in 0.*) v4='"version":"4",' ;; *) v4= ;; esac
  printf '{"cniVersion":"%s","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{%s"address":"%s","interface":0}],"dns":{}}' \
    "$ver" "$CNI_IFNAME" "$CNI_NETNS" "$v4" "$addr" ;;
VERSION) printf '{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}' ;;
esac
exit 0
"#;

impl Containerd {
    /// Starts a private containerd with the CRI plugin, waits (bounded) until the CRI answers,
    /// and imports the test images into namespace `k8s.io`.
    pub fn start() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "container tests need root (containerd, runc, cgroups, mounts)");
        let t0 = Instant::now();
        let images = images();
        let (containerd, ctr) = (tool("containerd"), tool("ctr"));
        // Run by containerd's shim from PATH; looked up here so a missing runc fails clearly.
        tool("runc");
        let lock = InstanceLock::shared();
        let dir = TempDir::new("containerd");
        let d = dir.path().to_owned();
        let socket = d.join("containerd.sock");
        let (root, state, runc_root) = (d.join("root"), d.join("state"), d.join("runc"));
        let (cni_conf, cni_bin) = (d.join("cni/net.d"), d.join("cni/bin"));
        for p in [&root, &state, &runc_root, &cni_conf, &cni_bin] {
            fs::create_dir_all(p).unwrap();
        }
        fs::write(cni_conf.join("10-peregrine-test-isolated.conflist"), CNI_CONFLIST).unwrap();
        let script = CNI_PLUGIN.replace("@SH@", tool("sh").to_str().unwrap()).replace("@BUSYBOX@", tool("busybox").to_str().unwrap());
        for plugin in ["loopback", "peregrine-test-isolated"] {
            fs::write(cni_bin.join(plugin), &script).unwrap();
            fs::set_permissions(cni_bin.join(plugin), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_IMAGE}"
    # no CAP_SYS_RESOURCE here: a negative oom_score_adj (the sandbox's -998) cannot be set
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          Root = "{runc_root}"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{cni_bin}"
      conf_dir = "{cni_conf}"
"#,
            root = root.display(),
            state = state.display(),
            sock = socket.display(),
            runc_root = runc_root.display(),
            cni_bin = cni_bin.display(),
            cni_conf = cni_conf.display(),
        );
        let config_path = d.join("config.toml");
        fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(&containerd);
        cmd.arg("--config").arg(&config_path).arg("--log-level").arg("info");
        let proc = Proc::spawn("containerd", cmd, &d);
        let mut me = Self {
            cri: Cri::new(&socket),
            proc: Some(proc),
            socket: socket.clone(),
            state,
            pods_log_root: d.join("pod-logs"),
            cgroup_parents: Mutex::new(Vec::new()),
            sandboxes: Mutex::new(HashMap::new()),
            pod_ids: Mutex::new(Vec::new()),
            shims: Mutex::new(Vec::new()),
            lock: Some(lock),
            dir,
        };
        wait_for(Duration::from_secs(20), "containerd's socket", || {
            me.assert_alive();
            socket.exists().then_some(())
        });
        let version = wait_for(Duration::from_secs(20), "the CRI Version call to answer", || {
            me.assert_alive();
            me.cri
                .call("Version", Duration::from_secs(2), me.cri.runtime().version(cri::VersionRequest { version: "v1".into() }))
                .ok()
        });
        assert_eq!(version.runtime_api_version, "v1", "{version:?}");
        let t_up = t0.elapsed();
        for (tar, base) in [(&images.busybox, "localhost/busybox"), (&images.pause, "localhost/pause")] {
            let mut c = Command::new(&ctr);
            c.arg("--address").arg(&me.socket).args(["--namespace", K8S_NAMESPACE, "images", "import", "--base-name", base]).arg(tar);
            run(c, &format!("ctr images import {base}"));
        }
        for image in [BUSYBOX_IMAGE, PAUSE_IMAGE] {
            let status = me
                .cri
                .call(
                    "ImageStatus",
                    CALL_TIMEOUT,
                    me.cri.images().image_status(cri::ImageStatusRequest {
                        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
                        verbose: false,
                    }),
                )
                .unwrap_or_else(|e| me.fail(&e));
            assert!(status.image.is_some(), "the CRI does not see {image} after the import");
        }
        me.assert_alive();
        eprintln!(
            "containerd fixture: {} {} up in {t_up:?}, images imported at {:?}",
            version.runtime_name,
            version.runtime_version,
            t0.elapsed()
        );
        me
    }

    /// The CRI (and containerd API) unix socket.
    pub fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    /// containerd's `state` directory (bundles at `io.containerd.runtime.v2.task/k8s.io/<id>`).
    pub fn state_dir(&self) -> PathBuf {
        self.state.clone()
    }

    /// Imports an OCI-layout tarball into `k8s.io` as `<base_name>:<its tag>`.
    pub fn import_image(&self, tar: &Path, base_name: &str) {
        let mut c = Command::new(tool("ctr"));
        c.arg("--address").arg(&self.socket).args(["--namespace", K8S_NAMESPACE, "images", "import", "--base-name", base_name]).arg(tar);
        run(c, &format!("ctr images import {base_name}"));
    }

    /// What the pod's container wrote to stdout/stderr so far (the CRI log file, one line per
    /// write: `<time> <stream> <tag> <text>`; the text is returned).
    pub fn container_log(&self, spec: &PodSpec) -> String {
        let file = self
            .pods_log_root
            .join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid))
            .join(&spec.container_name)
            .join("0.log");
        let text = fs::read_to_string(file).unwrap_or_default();
        text.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).collect::<Vec<_>>().join("\n")
    }

    /// The network namespace file of a pod with its own network (from the container's spec).
    pub fn netns_path(&self, container_id: &str) -> PathBuf {
        let info = self.container_info(container_id);
        let namespaces = info["runtimeSpec"]["linux"]["namespaces"].as_array().cloned().unwrap_or_default();
        let path = namespaces
            .iter()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .unwrap_or_else(|| panic!("container {container_id} has no network namespace path in its spec: {info}"));
        PathBuf::from(path)
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::stderr_text).unwrap_or_default()
    }

    fn assert_alive(&mut self) {
        let proc = self.proc.as_mut().unwrap();
        if !proc.alive() {
            let log = proc.stderr_text();
            panic!("containerd exited: {}", tail(&log, 40));
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n--- containerd log (tail) ---\n{}", tail(&self.log(), 30))
    }

    /// RunPodSandbox, CreateContainer, StartContainer — with the configs kubelet would send.
    pub fn run_pod(&self, spec: &PodSpec) -> RunningPod {
        let t0 = Instant::now();
        let cgroup_parent = spec.cgroup_parent();
        self.cgroup_parents.lock().unwrap().push(cgroup_parent.clone());
        let sandbox_config = self.sandbox_config(spec, &cgroup_parent);
        let rt = &self.cri;
        let pod_id = rt
            .call(
                "RunPodSandbox",
                CALL_TIMEOUT,
                rt.runtime().run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(sandbox_config.clone()),
                    runtime_handler: String::new(),
                }),
            )
            .unwrap_or_else(|e| self.fail(&e))
            .pod_sandbox_id;
        self.sandboxes.lock().unwrap().insert(pod_id.clone(), sandbox_config.clone());
        self.pod_ids.lock().unwrap().push(pod_id.clone());
        let t_sandbox = t0.elapsed();
        let container_config = self.container_config(spec);
        let container_id = rt
            .call(
                "CreateContainer",
                CALL_TIMEOUT,
                rt.runtime().create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod_id.clone(),
                    config: Some(container_config),
                    sandbox_config: Some(sandbox_config),
                }),
            )
            .unwrap_or_else(|e| self.fail(&e))
            .container_id;
        rt.call(
            "StartContainer",
            CALL_TIMEOUT,
            rt.runtime().start_container(cri::StartContainerRequest { container_id: container_id.clone() }),
        )
        .unwrap_or_else(|e| self.fail(&e));
        let info = self.container_info(&container_id);
        let cgroup_path = info["runtimeSpec"]["linux"]["cgroupsPath"]
            .as_str()
            .unwrap_or_else(|| panic!("no runtimeSpec.linux.cgroupsPath in the verbose status: {info}"))
            .to_owned();
        let pid = info["pid"].as_u64().unwrap_or_else(|| panic!("no pid in the verbose status: {info}"));
        let pid = u32::try_from(pid).unwrap();
        if let Some(shim) = our_shim_parent(pid as i32, &self.socket) {
            let mut shims = self.shims.lock().unwrap();
            if !shims.contains(&shim) {
                shims.push(shim);
            }
        }
        eprintln!(
            "containerd fixture: pod {}/{} sandbox in {t_sandbox:?}, container started in {:?}",
            spec.namespace,
            spec.name,
            t0.elapsed()
        );
        RunningPod { pod_id, container_id, uid: spec.uid.clone(), cgroup_parent, cgroup_path, pid }
    }

    /// The `info` of a verbose ContainerStatus (containerd: `pid`, `sandboxID`, `runtimeSpec`, …).
    pub fn container_info(&self, container_id: &str) -> serde_json::Value {
        let status = self.container_status(container_id, true);
        let info = status.info.get("info").unwrap_or_else(|| panic!("ContainerStatus has no verbose info: {:?}", status.info));
        serde_json::from_str(info).unwrap()
    }

    fn container_status(&self, container_id: &str, verbose: bool) -> cri::ContainerStatusResponse {
        self.cri
            .call(
                "ContainerStatus",
                CALL_TIMEOUT,
                self.cri.runtime().container_status(cri::ContainerStatusRequest { container_id: container_id.into(), verbose }),
            )
            .unwrap_or_else(|e| self.fail(&e))
    }

    /// ExecSync (as `kubectl exec` without a tty, or an exec probe): exit code and stdout.
    pub fn exec_sync(&self, container_id: &str, argv: &[&str], timeout: Duration) -> (i32, String) {
        let secs = i64::try_from(timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0)).unwrap().max(1);
        let r = self
            .cri
            .call(
                "ExecSync",
                timeout + Duration::from_secs(10),
                self.cri.runtime().exec_sync(cri::ExecSyncRequest {
                    container_id: container_id.into(),
                    cmd: argv.iter().map(|s| (*s).to_owned()).collect(),
                    timeout: secs,
                }),
            )
            .unwrap_or_else(|e| self.fail(&e));
        (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned())
    }

    pub fn container_state(&self, container_id: &str) -> ContainerState {
        let status = self.container_status(container_id, false).status.expect("ContainerStatus without a status");
        match cri::ContainerState::try_from(status.state) {
            Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
            Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running,
            Ok(cri::ContainerState::ContainerExited) => ContainerState::Exited { exit_code: status.exit_code },
            _ => ContainerState::Unknown,
        }
    }

    /// Waits (bounded) until the container has exited; returns its exit code.
    pub fn wait_exited(&self, container_id: &str, timeout: Duration) -> i32 {
        wait_for(timeout, &format!("container {container_id} to exit"), || match self.container_state(container_id) {
            ContainerState::Exited { exit_code } => Some(exit_code),
            _ => None,
        })
    }

    /// StopPodSandbox + RemovePodSandbox (kills and removes its containers), then removes the
    /// pod's cgroup directories, as kubelet does once a pod is gone.
    pub fn remove_pod(&self, pod_id: &str) {
        self.stop_and_remove(pod_id).unwrap_or_else(|e| self.fail(&e));
        let config = self.sandboxes.lock().unwrap().remove(pod_id);
        if let Some(linux) = config.and_then(|c| c.linux) {
            remove_cgroup_tree(&linux.cgroup_parent, Duration::from_secs(5));
        }
    }

    fn stop_and_remove(&self, pod_id: &str) -> Result<(), String> {
        let rt = &self.cri;
        rt.call("StopPodSandbox", CALL_TIMEOUT, rt.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod_id.into() }))?;
        rt.call(
            "RemovePodSandbox",
            CALL_TIMEOUT,
            rt.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod_id.into() }),
        )?;
        Ok(())
    }

    fn namespace_options(spec: &PodSpec) -> cri::NamespaceOption {
        // kubelet's NamespacesForPod.
        let mode = |node: bool, otherwise: NamespaceMode| (if node { NamespaceMode::Node } else { otherwise }) as i32;
        cri::NamespaceOption {
            network: mode(spec.host_network, NamespaceMode::Pod),
            pid: mode(spec.host_pid, if spec.share_process_namespace { NamespaceMode::Pod } else { NamespaceMode::Container }),
            ipc: mode(spec.host_ipc, NamespaceMode::Pod),
            target_id: String::new(),
            userns_options: None,
        }
    }

    /// kubelet's generatePodSandboxConfig (cgroupfs driver, no DNS/ports).
    fn sandbox_config(&self, spec: &PodSpec, cgroup_parent: &str) -> cri::PodSandboxConfig {
        let log_directory = self.pods_log_root.join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid));
        fs::create_dir_all(&log_directory).unwrap();
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert("io.kubernetes.pod.name".into(), spec.name.clone());
        labels.insert("io.kubernetes.pod.namespace".into(), spec.namespace.clone());
        labels.insert("io.kubernetes.pod.uid".into(), spec.uid.clone());
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            // kubelet sets a hostname only for pods with their own network (UTS) namespace.
            hostname: if spec.host_network { String::new() } else { spec.name.clone() },
            log_directory: log_directory.to_str().unwrap().to_owned(),
            labels,
            annotations: spec.annotations.clone().into_iter().collect(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.to_owned(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(Self::namespace_options(spec)),
                    privileged: spec.privileged,
                    // kubelet always asks for RuntimeDefault on the sandbox (kubernetes#84623).
                    seccomp: Some(cri::SecurityProfile {
                        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                        localhost_ref: String::new(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// kubelet's generateContainerConfig for one container with `command` set.
    fn container_config(&self, spec: &PodSpec) -> cri::ContainerConfig {
        let name = &spec.container_name;
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_owned(), spec.name.clone()),
            ("io.kubernetes.pod.namespace".to_owned(), spec.namespace.clone()),
            ("io.kubernetes.pod.uid".to_owned(), spec.uid.clone()),
            ("io.kubernetes.container.name".to_owned(), name.clone()),
        ]);
        let annotations = HashMap::from([
            ("io.kubernetes.container.hash".to_owned(), container_hash(spec)),
            ("io.kubernetes.container.restartCount".to_owned(), "0".to_owned()),
            ("io.kubernetes.container.terminationMessagePath".to_owned(), "/dev/termination-log".to_owned()),
            ("io.kubernetes.container.terminationMessagePolicy".to_owned(), "File".to_owned()),
            ("io.kubernetes.pod.terminationGracePeriod".to_owned(), "30".to_owned()),
        ]);
        // kubelet bind-mounts a per-container termination-log file from the pod's directory.
        let pod_dir = self.dir.path().join("kubelet/pods").join(&spec.uid).join("containers").join(name);
        fs::create_dir_all(&pod_dir).unwrap();
        let termination_log = pod_dir.join(unique("tl"));
        fs::write(&termination_log, "").unwrap();
        let resources = match spec.qos {
            Qos::BestEffort => cri::LinuxContainerResources { cpu_shares: 2, oom_score_adj: 1000, ..Default::default() },
            Qos::Guaranteed => cri::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 10_000,
                cpu_shares: 102,
                memory_limit_in_bytes: 128 << 20,
                oom_score_adj: -997,
                ..Default::default()
            },
        };
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.clone(), attempt: 0 }),
            image: Some(cri::ImageSpec {
                image: spec.image.clone(),
                user_specified_image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            envs: spec.envs.iter().map(|(key, value)| cri::KeyValue { key: key.clone(), value: value.clone() }).collect(),
            mounts: spec
                .mounts
                .iter()
                .map(|m| cri::Mount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.to_str().unwrap().to_owned(),
                    readonly: m.readonly,
                    ..Default::default()
                })
                .chain([cri::Mount {
                    container_path: "/dev/termination-log".into(),
                    host_path: termination_log.to_str().unwrap().to_owned(),
                    ..Default::default()
                }])
                .collect(),
            labels,
            annotations,
            log_path: format!("{name}/0.log"),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(resources),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    privileged: spec.privileged,
                    namespace_options: Some(Self::namespace_options(spec)),
                    run_as_user: spec.run_as_user.map(|value| cri::Int64Value { value }),
                    readonly_rootfs: spec.readonly_rootfs,
                    masked_paths: DEFAULT_MASKED_PATHS.iter().map(|s| (*s).to_owned()).collect(),
                    readonly_paths: DEFAULT_READONLY_PATHS.iter().map(|s| (*s).to_owned()).collect(),
                    capabilities: spec.capabilities.as_ref().map(|c| cri::Capability {
                        add_capabilities: c.add.clone(),
                        drop_capabilities: c.drop.clone(),
                        ..Default::default()
                    }),
                    no_new_privs: spec.no_new_privs,
                    // No profile in the pod and kubelet's --seccomp-default off: Unconfined.
                    seccomp: Some(cri::SecurityProfile {
                        profile_type: if spec.seccomp_runtime_default {
                            cri::security_profile::ProfileType::RuntimeDefault
                        } else {
                            cri::security_profile::ProfileType::Unconfined
                        } as i32,
                        localhost_ref: String::new(),
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }
}

/// kubelet's securitycontext defaults for `procMount: Default`.
const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const DEFAULT_READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A stand-in for kubelet's container hash (hex of a hash of the container's spec).
fn container_hash(spec: &PodSpec) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in spec.container_name.bytes().chain(spec.command.join("\0").into_bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("{h:x}")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SIGKILLs every process in `<cgroup>` (and its children) in the cgroup2 hierarchy.
fn kill_cgroup(cgroup2: &Path, rel: &str) {
    let dir = cgroup2.join(rel.trim_start_matches('/'));
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        if let Ok(rd) = fs::read_dir(&d) {
            dirs.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
}

/// Removes `<parent>` and its child cgroups in every hierarchy, retrying (bounded) while the
/// last processes are being reaped. Never removes anything above `parent`.
fn remove_cgroup_tree(parent: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for mount in cgroup_mounts() {
        let top = mount.join(parent.trim_start_matches('/'));
        if !top.exists() {
            continue;
        }
        loop {
            let mut children: Vec<PathBuf> = Vec::new();
            let mut stack = vec![top.clone()];
            while let Some(d) = stack.pop() {
                if let Ok(rd) = fs::read_dir(&d) {
                    for e in rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
                        stack.push(e.path());
                        children.push(e.path());
                    }
                }
            }
            children.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for c in &children {
                let _ = fs::remove_dir(c);
            }
            if fs::remove_dir(&top).is_ok() || !top.exists() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The parent of `pid` if it is a shim of this instance (its command line names our socket).
/// containerd 1.6's runc shim writes no pid file; it is the parent of every task it runs.
fn our_shim_parent(pid: i32, socket: &Path) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid: i32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
    is_our_shim(ppid, socket).then_some(ppid)
}

/// `pid` is alive (not a zombie) and is a shim of this instance: its command line names our
/// socket. Checked again before every signal, so a reused PID is never hit.
fn is_our_shim(pid: i32, socket: &Path) -> bool {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = socket.as_os_str().as_encoded_bytes();
    pid_alive(pid) && cmdline.windows(needle.len()).any(|w| w == needle)
}

/// Shims still running tasks of this instance (from the bundles' `init.pid`), and the shim
/// sockets those bundles name (`address`), which a killed shim leaves behind.
fn bundle_shims(state: &Path, socket: &Path) -> (Vec<i32>, Vec<PathBuf>) {
    let (mut pids, mut sockets) = (Vec::new(), Vec::new());
    for ns in fs::read_dir(state.join("io.containerd.runtime.v2.task")).into_iter().flatten().flatten() {
        for bundle in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            if let Ok(addr) = fs::read_to_string(bundle.path().join("address")) {
                let path = PathBuf::from(addr.trim().trim_start_matches("unix://"));
                if path.starts_with("/run/containerd/s") && !sockets.contains(&path) {
                    sockets.push(path);
                }
            }
            let init = fs::read_to_string(bundle.path().join("init.pid")).ok().and_then(|s| s.trim().parse::<i32>().ok());
            if let Some(shim) = init.and_then(|pid| our_shim_parent(pid, socket)).filter(|s| !pids.contains(s)) {
                pids.push(shim);
            }
        }
    }
    (pids, sockets)
}

fn pid_alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at the state instead.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')).map(|z| !z))
        .unwrap_or(false)
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let t0 = Instant::now();
        let alive = self.proc.as_mut().is_some_and(Proc::alive);
        // 1. Every pod, through the CRI (kills containers, unmounts rootfs/shm, deletes netns).
        if alive {
            let pods = self
                .cri
                .call("ListPodSandbox", CALL_TIMEOUT, self.cri.runtime().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }))
                .map(|r| r.items)
                .unwrap_or_default();
            for pod in pods {
                if let Err(e) = self.stop_and_remove(&pod.id) {
                    eprintln!("containerd fixture: cleanup of pod {}: {e}", pod.id);
                }
            }
        }
        // 2. Shims of this instance (parents of our tasks), found before containerd goes.
        let mut shims = self.shims.lock().map(|s| s.clone()).unwrap_or_default();
        let (more, mut shim_sockets) = bundle_shims(&self.state, &self.socket);
        shims.extend(more);
        // 3. containerd itself, by PID: SIGTERM, bounded wait, then SIGKILL.
        if let Some(mut proc) = self.proc.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(proc.pid() as i32), nix::sys::signal::Signal::SIGTERM);
            if wait_child(&mut proc.child, Duration::from_secs(10)).is_none() {
                eprintln!("containerd fixture: containerd did not stop within 10 s of SIGTERM, killing it");
            }
            drop(proc); // SIGKILL (if still running) and reap
        }
        let (more, sockets) = bundle_shims(&self.state, &self.socket);
        shims.extend(more);
        shim_sockets.extend(sockets);
        // 4. Leftovers (a pod the CRI failed to remove): its processes by cgroup, then the shims.
        let parents = self.cgroup_parents.lock().map(|p| p.clone()).unwrap_or_default();
        if let Some((cgroup2, _)) = cgroup_mounts_typed().into_iter().find(|(_, v2)| *v2) {
            for parent in &parents {
                kill_cgroup(&cgroup2, parent);
            }
        }
        // A shim exits by itself once its tasks are deleted; give it a moment, then kill it.
        let deadline = Instant::now() + Duration::from_secs(3);
        while shims.iter().any(|p| is_our_shim(*p, &self.socket)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for &pid in shims.iter().filter(|p| is_our_shim(**p, &self.socket)) {
            eprintln!("containerd fixture: killing leftover shim {pid}");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while shims.iter().any(|p| is_our_shim(*p, &self.socket)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for socket in shim_sockets.iter().filter(|s| s.exists()) {
            let _ = fs::remove_file(socket);
        }
        // 5. The pods' cgroups (kubelet removes pod<uid> once a pod is gone).
        for parent in &parents {
            remove_cgroup_tree(parent, Duration::from_secs(5));
        }
        // 6. CNI results of our pods left in libcni's cache (only if a CNI DEL never ran).
        let pod_ids = self.pod_ids.lock().map(|p| p.clone()).unwrap_or_default();
        for entry in fs::read_dir(CNI_CACHE).into_iter().flatten().flatten() {
            if pod_ids.iter().any(|id| entry.file_name().to_string_lossy().contains(id.as_str())) {
                let _ = fs::remove_file(entry.path());
            }
        }
        // 7. Anything still mounted under our directory (rootfs, shm, netns) before removing it.
        let dir = self.dir.path().to_owned();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<PathBuf> =
            mountinfo.lines().filter_map(|l| l.split_whitespace().nth(4).map(unescape_mountinfo)).filter(|m| m.starts_with(&dir)).collect();
        mounts.reverse();
        for m in mounts {
            eprintln!("containerd fixture: unmounting leftover {}", m.display());
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        // 8. Shared host leftovers, by the last instance out.
        if let Some(lock) = self.lock.take() {
            lock.release(&parents);
        }
        eprintln!("containerd fixture: stopped and cleaned up in {:?}", t0.elapsed());
        // `dir` (TempDir) is removed when the fields drop.
    }
}
