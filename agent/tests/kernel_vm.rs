//! A second kernel: Debian's 6.1 cloud kernel (the AKS-like one: kprobes, fentry, BPF LSM,
//! BTF) booted under QEMU with software emulation, cgroup v2 mounted alone as on AKS nodes,
//! BPF LSM active (`lsm=...,bpf`). An initramfs holds busybox, the agent and the collector
//! built for the host tests, and the kernel object; its `/init` runs the scenarios the host
//! tests run and prints the collector's output between markers on the serial console, which
//! this test reads and checks, field by field.
//!
//! The kernel comes from `xtask/tools.toml` (`kind = "kernel"`: downloaded and unpacked under
//! /opt/peregrine/kernels, never installed on this machine). The VM has no network device
//! (`-nic none`): every connection is to its own loopback.

// Test scaffolding: a failed set-up step should stop the test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{TempDir, agent_bin, collector_bin, ebpf_object, tool};

const KERNEL_DIR: &str = "/opt/peregrine/kernels/linux-image-cloud-amd64";
/// Boot, start, scenarios and power-off take about 20 s under emulation here.
const VM_TIMEOUT: Duration = Duration::from_secs(300);

fn kernel() -> PathBuf {
    let manifest = include_str!("../../xtask/tools.toml");
    assert!(manifest.contains(&format!("bin = \"{KERNEL_DIR}\"")), "xtask/tools.toml does not list the test kernel {KERNEL_DIR}");
    let boot = Path::new(KERNEL_DIR).join("boot");
    let entries = fs::read_dir(&boot)
        .unwrap_or_else(|e| panic!("the test kernel is not unpacked at {} ({e}): run `cargo xtask setup`", boot.display()));
    entries
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .unwrap_or_else(|| panic!("no vmlinuz-* in {}: run `cargo xtask setup`", boot.display()))
}

/// The scenarios, as the VM's /init runs them. Markers are fixed strings: the VM is private.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t cgroup2 none /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing
mount -t securityfs securityfs /sys/kernel/security
ip link set lo up
say() { echo "PEREGRINE-VM $*"; }
# A listener on port $1 accepts one connect from here; says "$2 <listener pid>" and waits
# (bounded) for the accept's event.
accept_once() {
  nc -l -p "$1" > /dev/null &
  l=$!
  sleep 0.5
  nc 127.0.0.1 "$1" < /dev/null
  say "$2" "$l"
  i=0; while [ $i -lt 300 ] && ! grep -q "\"local_port\":$1," /tmp/events.jsonl; do sleep 0.2; i=$((i+1)); done
}
say uname "$(uname -r)"
say cgroup-mounts "$(grep -c cgroup /proc/mounts)"
/bin/agent --check-core /peregrine-ebpf.o > /tmp/core.jsonl 2> /tmp/core.err
say core-exit "$?"
cp /bin/busybox /tmp/deny-me
/bin/collector --set listen=127.0.0.1:7700 --set http.listen=127.0.0.1:9465 --set queue.dir=/tmp/q \
  --set output.kind=file --set output.path=/tmp/events.jsonl 2>/tmp/collector.log &
/bin/agent --set cluster_name=vm --set node_name=vm --set collector.address=http://127.0.0.1:7700 \
  --set ebpf.object=/peregrine-ebpf.o --set spool.dir=/tmp/spool --set http.listen=127.0.0.1:9464 \
  --set pipeline.heartbeat_interval_ms=200 \
  --set network.exclude_loopback=false --set 'process.deny_exec=["/tmp/deny-me"]' 2>/tmp/agent.log &
agent=$!
i=0; while [ $i -lt 900 ] && ! grep -q '"phase":1' /tmp/events.jsonl 2>/dev/null; do sleep 0.2; i=$((i+1)); done
say ready "$i"

# 1. exec with argv and ancestry: lvl1.sh -> lvl2.sh -> busybox true.
printf '#!/bin/sh\necho $$ > /tmp/pid1\n/tmp/lvl2.sh vm-arg2\nexit 0\n' > /tmp/lvl1.sh
printf '#!/bin/sh\necho $$ > /tmp/pid2\n/bin/busybox true vm-exec-token\nexit 0\n' > /tmp/lvl2.sh
chmod +x /tmp/lvl1.sh /tmp/lvl2.sh
/tmp/lvl1.sh vm-arg1
say pids "$(cat /tmp/pid1)" "$(cat /tmp/pid2)"

# 2. connects with their outcomes: established to a listener, refused on a closed port.
nc -l -p 8080 > /dev/null &
nclisten=$!
sleep 0.5
sh -c 'echo $$ > /tmp/ncpid1; exec nc 127.0.0.1 8080' < /dev/null
sh -c 'echo $$ > /tmp/ncpid2; exec nc 127.0.0.1 8081' < /dev/null
say ncpids "$(cat /tmp/ncpid1)" "$(cat /tmp/ncpid2)" "$nclisten"
# 2b. an accept through io_uring, which never passes the syscall tracepoints.
/bin/uringaccept 127.0.0.1:8083 > /tmp/uring.out 2>&1 &
uring=$!
i=0; while [ $i -lt 100 ] && ! grep -q listening /tmp/uring.out; do sleep 0.1; i=$((i+1)); done
nc 127.0.0.1 8083 < /dev/null
i=0; while [ $i -lt 100 ] && kill -0 $uring 2>/dev/null; do sleep 0.1; i=$((i+1)); done
say uring "$uring" "$(tr '\n' ' ' < /tmp/uring.out)"

# 3. a container's process: a kubelet-style cgroup (cgroupfs driver), a process run inside.
cg=/sys/fs/cgroup/kubepods/besteffort/podvm-pod-uid/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
mkdir -p $cg
say cgroup-inode "$(stat -c %i $cg)"
sh -c "echo \$\$ > $cg/cgroup.procs; exec /bin/busybox true vm-container-token"

i=0
while [ $i -lt 300 ]; do
  if grep -q vm-exec-token /tmp/events.jsonl && grep -q vm-container-token /tmp/events.jsonl \
     && grep -q '"remote_port":8081,' /tmp/events.jsonl && grep -q '"outcome":"refused"' /tmp/events.jsonl \
     && grep -q '"outcome":"established"' /tmp/events.jsonl && grep -q '"local_port":8083,' /tmp/events.jsonl; then break; fi
  sleep 0.2; i=$((i+1))
done
say waited "$i"

# 5. exec enforcement by the BPF LSM hook: the denied copy of busybox does not run.
sh -c 'echo $$ > /tmp/denypid; exec /tmp/deny-me true vm-deny-token'
say deny-exit "$?" "$(cat /tmp/denypid)"
i=0; while [ $i -lt 300 ] && ! grep -q 'Exec denied by policy' /tmp/events.jsonl; do sleep 0.2; i=$((i+1)); done

# 4. the perf event array transport, forced: a second agent after the first stopped.
kill $agent
i=0; while [ $i -lt 100 ] && kill -0 $agent 2>/dev/null; do sleep 0.1; i=$((i+1)); done
/bin/agent --set cluster_name=vm --set node_name=vm --set collector.address=http://127.0.0.1:7700 \
  --set ebpf.object=/peregrine-ebpf.o --set spool.dir=/tmp/spool2 --set http.listen=127.0.0.1:9466 \
  --set ebpf.transport=perf_array --set network.exclude_loopback=false 2>/tmp/agent2.log &
agent2=$!
i=0; while [ $i -lt 900 ] && ! grep -q 'perf_event_array (configured)' /tmp/events.jsonl; do sleep 0.2; i=$((i+1)); done
/bin/busybox true vm-perf-token
i=0; while [ $i -lt 300 ] && ! grep -q vm-perf-token /tmp/events.jsonl; do sleep 0.2; i=$((i+1)); done
say perf-waited "$i"
# 6. that agent's accepts from the fexit program, over the perf array.
accept_once 8082 nclisten2
# 7. a third agent with ebpf.programs.fexit = false: accepts from the syscall tracepoints.
kill $agent2
i=0; while [ $i -lt 100 ] && kill -0 $agent2 2>/dev/null; do sleep 0.1; i=$((i+1)); done
/bin/agent --set cluster_name=vm --set node_name=vm --set collector.address=http://127.0.0.1:7700 \
  --set ebpf.object=/peregrine-ebpf.o --set spool.dir=/tmp/spool3 --set http.listen=127.0.0.1:9467 \
  --set network.exclude_loopback=false --set ebpf.programs.fexit=false 2>/tmp/agent3.log &
i=0; while [ $i -lt 900 ] && [ "$(grep -c '"phase":1' /tmp/events.jsonl)" -lt 3 ]; do sleep 0.2; i=$((i+1)); done
accept_once 8084 nclisten3
echo PEREGRINE-VM-EVENTS-BEGIN
grep -e '"status"' -e vm- -e '"connection"' -e deny-me /tmp/events.jsonl
echo PEREGRINE-VM-EVENTS-END
echo PEREGRINE-VM-CORE-BEGIN
cat /tmp/core.jsonl /tmp/core.err
echo PEREGRINE-VM-CORE-END
echo PEREGRINE-VM-AGENT-LOG-BEGIN
tail -20 /tmp/agent.log
tail -20 /tmp/agent2.log
tail -20 /tmp/agent3.log
echo PEREGRINE-VM-AGENT-LOG-END
poweroff -f
"#;

/// Builds the initramfs: busybox, the two binaries (debug info stripped), their libraries and
/// loader, the kernel object, /init.
fn initramfs(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "run"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(tool("busybox"), root.join("bin/busybox")).unwrap();
    let uring = agent_bin().with_file_name("uringaccept");
    assert!(uring.is_file(), "{} is missing: build the workspace's binaries first (`cargo xtask test` does)", uring.display());
    for (bin, name) in [(agent_bin(), "agent"), (collector_bin(), "collector"), (uring, "uringaccept")] {
        let status = Command::new(tool("objcopy")).arg("--strip-debug").arg(&bin).arg(root.join("bin").join(name)).status().unwrap();
        assert!(status.success(), "objcopy {}", bin.display());
        let ldd = Command::new(tool("ldd")).arg(&bin).output().unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(lib) = path.filter(|p| p.starts_with('/')) {
                let dest = root.join(lib.trim_start_matches('/'));
                fs::create_dir_all(dest.parent().unwrap()).unwrap();
                fs::copy(lib, &dest).unwrap();
            }
        }
    }
    fs::copy(ebpf_object(), root.join("peregrine-ebpf.o")).unwrap();
    fs::write(root.join("init"), INIT).unwrap();
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755)).unwrap();
    let image = dir.join("initramfs.gz");
    let status = Command::new(tool("busybox"))
        .args(["sh", "-c", "cd \"$1\" && busybox find . | busybox cpio -o -H newc 2>/dev/null | busybox gzip -1 > \"$2\"", "sh"])
        .arg(&root)
        .arg(&image)
        .status()
        .unwrap();
    assert!(status.success() && image.exists(), "building the initramfs");
    image
}

/// Boots the kernel with the initramfs; returns the serial console's text. Bounded; the VM is
/// killed by PID on timeout.
fn boot(kernel: &Path, initramfs: &Path) -> String {
    let mut child = Command::new(tool("qemu-system-x86_64"))
        .args(["-machine", "accel=tcg", "-cpu", "max", "-m", "1536", "-smp", "1", "-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        // cgroup v2 alone (as on AKS); BPF LSM active; no kernel chatter on the console.
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=0 lsm=lockdown,capability,yama,bpf"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + VM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let console = reader.join().unwrap();
    assert!(status.is_some(), "the VM did not power off within {VM_TIMEOUT:?}; console:\n{console}");
    console
}

fn section<'a>(console: &'a str, name: &str) -> Vec<&'a str> {
    let begin = format!("PEREGRINE-VM-{name}-BEGIN");
    let end = format!("PEREGRINE-VM-{name}-END");
    console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .skip_while(|l| !l.ends_with(&begin))
        .skip(1)
        .take_while(|l| !l.ends_with(&end))
        .collect()
}

/// `PEREGRINE-VM <key> <values...>` lines.
fn said(console: &str) -> BTreeMap<String, Vec<String>> {
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once("PEREGRINE-VM "))
        .map(|(_, rest)| {
            let mut words = rest.split_whitespace().map(str::to_owned);
            (words.next().unwrap_or_default(), words.collect())
        })
        .collect()
}

#[test]
fn the_6_1_kernel_runs_the_scenarios_with_every_optional_feature() {
    let kernel = kernel();
    let dir = TempDir::new("vm");
    let image = initramfs(dir.path());
    let t0 = Instant::now();
    let console = boot(&kernel, &image);
    eprintln!("VM booted, ran the scenarios and powered off in {:?}", t0.elapsed());
    let log = section(&console, "AGENT-LOG").join("\n");
    let said = said(&console);
    let num = |key: &str, i: usize| -> u64 {
        said.get(key).and_then(|v| v.get(i)).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no `{key}` from the VM:\n{console}"))
    };
    assert!(said["uname"][0].starts_with("6.1.0-"), "the 6.1 kernel is the one running: {:?}", said["uname"]);
    assert_eq!(said["cgroup-mounts"], ["1"], "cgroup v2 mounted alone");

    // CO-RE: every relocation of the object resolves against 6.1's own BTF, the same list as
    // against this machine's kernel (agent/tests/core.rs).
    let core = section(&console, "CORE");
    assert_eq!(said["core-exit"], ["0"], "the CO-RE check failed in the VM:\n{}", core.join("\n"));
    let vm: Vec<Value> = core.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let key = |r: &Value| format!("{} {} {}", r["program"], r["kind"], r["spec"]);
    let host = Command::new(agent_bin()).arg("--check-core").arg(ebpf_object()).output().unwrap();
    let host: Vec<Value> = String::from_utf8(host.stdout).unwrap().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(host.len() > 50 && vm.len() == host.len(), "{} relocations in the VM, {} on the host", vm.len(), host.len());
    let mut vm_keys: Vec<String> = vm.iter().map(key).collect();
    let mut host_keys: Vec<String> = host.iter().map(key).collect();
    vm_keys.sort();
    host_keys.sort();
    assert_eq!(vm_keys, host_keys);
    let not_resolved: Vec<&Value> = vm.iter().filter(|r| r["outcome"] != "resolved").collect();
    assert!(not_resolved.is_empty(), "on 6.1: {not_resolved:?}");
    let events: Vec<Value> = section(&console, "EVENTS").iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!events.is_empty(), "no events from the VM; agent log:\n{log}\nconsole:\n{console}");

    // The kernel's report: every hook attached; every feature, optional ones included, there.
    let started = events.iter().find(|e| e["kind"]["status"]["phase"] == 1).unwrap_or_else(|| panic!("no started status: {log}"));
    let hooks = started["kind"]["status"]["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 15, "{hooks:?}");
    assert!(hooks.iter().any(|h| h == "lsm/bprm_check_security"), "the LSM exec hook, enforcing: {hooks:?}");
    for h in [
        "tracepoint/sched/sched_process_exec",
        "raw_tracepoint/sched_process_fork",
        "tracepoint/sched/sched_process_exit",
        "raw_tracepoint/inet_sock_set_state",
        "raw_tracepoint/inet_sk_error_report",
        // Accepts from the trampoline, so no syscall tracepoint (6.1 has inet_csk_accept's
        // four parameters).
        "fexit/inet_csk_accept",
        "cgroup/connect4",
        "tracepoint/cgroup/cgroup_mkdir",
    ] {
        assert!(hooks.iter().any(|x| x == h), "{h} attached on 6.1: {hooks:?}");
    }
    assert!(!hooks.iter().any(|x| x.as_str().is_some_and(|h| h.starts_with("tracepoint/syscalls/"))), "{hooks:?}");
    let features = &started["kind"]["status"]["kernel_features"];
    for f in ["btf", "ring_buffer", "tracepoint", "raw_tracepoint", "cgroup_sock_addr", "kprobe", "fentry", "lsm"] {
        assert_eq!(features[f], "available", "{f} on 6.1 with lsm=...,bpf: {features}");
    }

    // 1. exec: exact argv, parent, and the script chain above it.
    let (pid1, pid2) = (num("pids", 0), num("pids", 1));
    let exec = events
        .iter()
        .find(|e| e["kind"]["exec"]["process"]["argv"] == json!(["/bin/busybox", "true", "vm-exec-token"]))
        .unwrap_or_else(|| panic!("the exec is missing: {log}"));
    let p = &exec["kind"]["exec"]["process"];
    assert_eq!(p["ppid"], pid2);
    assert_eq!(p["exe"], "/bin/busybox");
    let ancestors = exec["kind"]["exec"]["ancestors"].as_array().unwrap();
    assert_eq!(ancestors[0]["pid"], pid2);
    assert_eq!(ancestors[0]["argv"], json!(["/bin/sh", "/tmp/lvl2.sh", "vm-arg2"]));
    assert_eq!(ancestors[1]["pid"], pid1);
    assert_eq!(ancestors[1]["argv"], json!(["/bin/sh", "/tmp/lvl1.sh", "vm-arg1"]));
    assert_eq!(ancestors[2]["pid"], 1, "then init, older than the agent (seeded from /proc)");
    assert_eq!(p["parent_exec_id"], ancestors[0]["exec_id"]);

    // 2. connects, with their outcome and their process.
    let conn = |port: u64| {
        events
            .iter()
            .filter_map(|e| e["kind"]["connection"].as_object().map(|_| &e["kind"]["connection"]))
            .find(|c| c["remote_port"] == port && c["evt_type"] == "connect" && c["outcome"] != "in_progress")
            .unwrap_or_else(|| panic!("no connect to {port}: {log}"))
            .clone()
    };
    let established = conn(8080);
    assert_eq!(established["outcome"], "established");
    assert_eq!(established["remote_ip"], "127.0.0.1");
    assert_eq!(established["direction"], "outbound");
    assert_eq!(established["process"]["pid"], num("ncpids", 0));
    let refused = conn(8081);
    assert_eq!(refused["outcome"], "refused");
    assert_eq!(refused["process"]["pid"], num("ncpids", 1));
    // The listener's accept of that connect, from the fexit program on inet_csk_accept.
    let accept_on = |port: u64| {
        events
            .iter()
            .filter_map(|e| e["kind"]["connection"].as_object().map(|_| &e["kind"]["connection"]))
            .find(|c| c["evt_type"] == "accept" && c["local_port"] == port)
            .unwrap_or_else(|| panic!("no accept on {port}: {log}"))
            .clone()
    };
    // io_uring's accept (the syscall tracepoints never see it), in the submitting process.
    assert!(said["uring"].iter().any(|w| w == "accepted"), "the io_uring accept failed: {:?}", said["uring"]);
    let uring = accept_on(8083);
    assert_eq!(uring["remote_ip"], "127.0.0.1");
    assert_eq!(uring["direction"], "inbound");
    assert_eq!(uring["process"]["pid"], num("uring", 0));
    let accept = accept_on(8080);
    assert_eq!(accept["remote_port"], established["local_port"]);
    // busybox nc listens on a dual-stack IPv6 socket: the peer comes IPv4-mapped.
    assert_eq!(accept["remote_ip"], "::ffff:127.0.0.1");
    assert_eq!(accept["direction"], "inbound");
    assert_eq!(accept["process"]["pid"], num("ncpids", 2));

    // 3. the container's process: its cgroup id is the directory's inode; the path names it.
    let in_container = events
        .iter()
        .find(|e| e["kind"]["exec"]["process"]["argv"] == json!(["/bin/busybox", "true", "vm-container-token"]))
        .unwrap_or_else(|| panic!("the container's exec is missing: {log}"));
    assert_eq!(in_container["kind"]["exec"]["process"]["cgroup_id"], num("cgroup-inode", 0));
    let c = &in_container["container"];
    assert_eq!(c["id"], "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "{in_container}");
    assert_eq!(c["pod"]["uid"], "vm-pod-uid");
    assert_eq!(in_container["enrichment"], "partial", "no container runtime in the VM");

    // 4. the perf event array transport, forced on 6.1: the first agent said ring buffer, the
    // second perf, and an exec after its start arrived with its exact argv.
    let transports: Vec<&str> =
        events.iter().filter(|e| e["kind"]["status"]["phase"] == 1).filter_map(|e| e["kind"]["status"]["transport"].as_str()).collect();
    assert_eq!(
        transports,
        ["ring_buffer (the kernel has a BPF ring buffer)", "perf_event_array (configured)", "ring_buffer (the kernel has a BPF ring buffer)"],
        "{log}"
    );
    let perf_exec = events
        .iter()
        .find(|e| e["kind"]["exec"]["process"]["argv"] == json!(["/bin/busybox", "true", "vm-perf-token"]))
        .unwrap_or_else(|| panic!("the exec over the perf array is missing: {log}"));
    assert_eq!(perf_exec["kind"]["exec"]["process"]["exe"], "/bin/busybox");

    // 6. the second agent's accepts from the fexit program, over the perf array (attached
    // after the perf buffers opened), in the listener's process.
    let started: Vec<&Value> = events.iter().filter(|e| e["kind"]["status"]["phase"] == 1).collect();
    let hooks_of = |i: usize| started.get(i).and_then(|e| e["kind"]["status"]["hooks"].as_array()).cloned().unwrap_or_default();
    assert!(hooks_of(1).iter().any(|x| x == "fexit/inet_csk_accept"), "{:?}", hooks_of(1));
    let accept2 = accept_on(8082);
    assert_eq!(accept2["direction"], "inbound");
    assert_eq!(accept2["process"]["pid"], num("nclisten2", 0));

    // 7. the third agent (ebpf.programs.fexit = false) took accepts from the task-BTF syscall
    // tracepoints instead, and saw the accept on 8084 in the listener's process.
    let hooks3 = hooks_of(2);
    for h in ["tracepoint/syscalls/sys_exit_accept4", "tracepoint/syscalls/sys_exit_accept"] {
        assert!(hooks3.iter().any(|x| x == h), "{h} attached with fexit off: {hooks3:?}");
    }
    assert!(!hooks3.iter().any(|x| x == "fexit/inet_csk_accept"), "{hooks3:?}");
    let accept3 = accept_on(8084);
    assert_eq!(accept3["direction"], "inbound");
    assert_eq!(accept3["process"]["pid"], num("nclisten3", 0));

    // 5. exec enforcement (the first agent, with process.deny_exec): the exec failed with
    // EPERM in the shell that tried, and the denial is an alert naming the file and process.
    let deny_pid = num("deny-exit", 1);
    assert_ne!(said["deny-exit"][0], "0", "the denied exec ran");
    let denied = events
        .iter()
        .find(|e| e["kind"]["alert"]["rule"] == "Exec denied by policy")
        .unwrap_or_else(|| panic!("no denial alert: {log}"));
    let a = &denied["kind"]["alert"];
    assert_eq!(a["priority"], "Critical");
    assert_eq!(a["fields"]["evt.arg.filename"], "/tmp/deny-me");
    assert_eq!(a["fields"]["proc.pid"], deny_pid.to_string());
    assert_eq!(a["process"]["pid"], deny_pid);
    assert_eq!(a["output"], format!("Exec of /tmp/deny-me denied by process.deny_exec (pid={deny_pid} comm=sh)"));
    assert!(
        !events.iter().any(|e| e["kind"]["exec"]["process"]["filename"] == "/tmp/deny-me"),
        "an exec event for the denied file"
    );
}
