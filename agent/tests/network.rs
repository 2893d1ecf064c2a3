//! Connections on the real kernel against peers in network namespaces the test creates:
//! outcome, attribution, direction and destination class. Addresses: only 198.18.0.0/15,
//! 203.0.113.0/24, fd00::/8 and 169.254.0.0/16 inside namespaces made here; every route is
//! checked before traffic is sent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const HOST: &str = "198.18.0.1";
const PEER: &str = "198.18.0.2";
const REMOTE: &str = "203.0.113.10";
const BLACKHOLE: &str = "203.0.113.99";
const HOST6: &str = "fd00:18::1";
const PEER6: &str = "fd00:18::2";

/// Namespace tests share fixed names and addresses: one at a time.
static NETNS: Mutex<()> = Mutex::new(());

/// A peer namespace joined to the host by a veth pair; removed (with its links and routes)
/// on drop.
struct Peer {
    name: String,
    _lock: MutexGuard<'static, ()>,
}

impl Peer {
    fn new() -> Self {
        let lock = NETNS.lock().unwrap_or_else(|e| e.into_inner());
        let name = "pg-peer".to_owned();
        let _ = Command::new(tool("ip")).args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        ip(&["link", "add", "pg-veth-h", "type", "veth", "peer", "name", "pg-veth-p"]);
        ip(&["link", "set", "pg-veth-p", "netns", &name]);
        ip(&["addr", "add", &format!("{HOST}/30"), "dev", "pg-veth-h"]);
        ip(&["-6", "addr", "add", &format!("{HOST6}/64"), "dev", "pg-veth-h", "nodad"]);
        ip(&["link", "set", "pg-veth-h", "up"]);
        ip(&["-n", &name, "addr", "add", &format!("{PEER}/30"), "dev", "pg-veth-p"]);
        ip(&["-n", &name, "-6", "addr", "add", &format!("{PEER6}/64"), "dev", "pg-veth-p", "nodad"]);
        ip(&["-n", &name, "link", "set", "pg-veth-p", "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&["-n", &name, "addr", "add", &format!("{REMOTE}/32"), "dev", "lo"]);
        ip(&["-n", &name, "route", "add", "default", "via", HOST]);
        for dst in [REMOTE, BLACKHOLE] {
            ip(&["route", "add", &format!("{dst}/32"), "via", PEER, "dev", "pg-veth-h"]);
        }
        let peer = Self { name, _lock: lock };
        // Guard: traffic to the test addresses must go into the namespace, never the uplink.
        for dst in [REMOTE, BLACKHOLE, PEER6] {
            let out = Command::new(tool("ip")).args(["route", "get", dst]).output().unwrap();
            let route = String::from_utf8_lossy(&out.stdout);
            assert!(route.contains("dev pg-veth-h"), "route to {dst} does not use the test veth: {route}");
        }
        peer
    }

    /// Runs `f` on a thread that has joined the namespace's network stack.
    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        netns_thread(&self.name, f)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        for dst in [REMOTE, BLACKHOLE] {
            let _ = Command::new(tool("ip")).args(["route", "del", &format!("{dst}/32")]).status();
        }
        let _ = Command::new(tool("ip")).args(["link", "del", "pg-veth-h"]).status();
        let _ = Command::new(tool("ip")).args(["netns", "del", &self.name]).status();
    }
}

fn connections(events: &[Value]) -> Vec<Value> {
    events.iter().filter(|e| e["kind"]["connection"].is_object()).map(|e| e["kind"]["connection"].clone()).collect()
}

fn find_conn(collector: &Collector, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(WAIT, what, || connections(&collector.events()).into_iter().find(|c| pred(c)))
}

/// Starts a TCP connect with one SYN retry only (TCP_SYNCNT = 1), so a silent peer times out
/// fast: the socket, and the connect's error (none when it connected).
fn start_connect_syncnt1(dst: std::net::SocketAddrV4, nonblocking: bool) -> (std::os::fd::OwnedFd, Option<std::io::Error>) {
    let flags = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain socket calls on a descriptor owned by the returned OwnedFd.
    unsafe {
        let fd = libc::socket(libc::AF_INET, flags, 0);
        assert!(fd >= 0);
        let fd = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_SYNCNT, (&one as *const libc::c_int).cast(), 4);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: dst.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.ip().octets()) },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(fd.as_raw_fd(), (&sin as *const libc::sockaddr_in).cast(), size_of::<libc::sockaddr_in>() as u32);
        let error = (rc != 0).then(std::io::Error::last_os_error);
        (fd, error)
    }
}

/// A blocking connect with one SYN retry.
fn connect_syncnt1(dst: SocketAddr) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(v4) = dst else { panic!("v4 only") };
    match start_connect_syncnt1(v4, false) {
        (fd, None) => Ok(TcpStream::from(fd)),
        (_, Some(e)) => Err(e),
    }
}

/// A non-blocking connect with one SYN retry: the socket, its handshake under way.
fn connect_half_open(dst: std::net::SocketAddrV4) -> std::os::fd::OwnedFd {
    let (fd, error) = start_connect_syncnt1(dst, true);
    assert!(error.as_ref().is_some_and(|e| e.raw_os_error() == Some(libc::EINPROGRESS)), "connect to {dst}: {error:?}");
    fd
}

#[test]
fn outbound_connects_with_their_outcomes() {
    let dir = TempDir::new("net-out");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &[]);
    let peer = Peer::new();
    let listening = std::sync::Arc::new(std::sync::Barrier::new(2));
    let ready = listening.clone();
    let server = peer.inside(move || {
        let l = TcpListener::bind((REMOTE, 8080)).unwrap();
        ready.wait();
        let (mut s, _) = l.accept().unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    });
    listening.wait();

    // Established.
    let s = TcpStream::connect((REMOTE, 8080)).unwrap();
    let local = s.local_addr().unwrap();
    drop(s);
    server.join().unwrap();
    let c = find_conn(&collector, "the established connect", |c| c["local_port"] == local.port() && c["evt_type"] == "connect");
    assert_eq!(c["outcome"], "established");
    assert_eq!(c["direction"], "outbound");
    assert_eq!(c["local_ip"], HOST);
    assert_eq!(c["remote_ip"], REMOTE);
    assert_eq!(c["remote_port"], 8080);
    assert_eq!(c["remote_class"], "public");
    assert_eq!(c["family"], "ipv4");
    assert_eq!(c["process"]["pid"], std::process::id());
    assert_eq!(c["process"]["exe"], std::env::current_exe().unwrap().to_str().unwrap());
    assert_eq!(c["owner_unknown"], false);

    // Refused: nothing listens on 8081, the peer answers RST.
    let err = TcpStream::connect((REMOTE, 8081)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    let c = find_conn(&collector, "the refused connect", |c| c["remote_port"] == 8081);
    assert_eq!(c["outcome"], "refused");
    assert_eq!(c["error"], libc::ECONNREFUSED);
    assert_eq!(c["process"]["pid"], std::process::id());

    // Timed out: the peer silently drops the SYNs. The attempt is reported after about a
    // second as in_progress, then updated with the outcome.
    let err = connect_syncnt1(format!("{BLACKHOLE}:8082").parse().unwrap()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT));
    let all = wait_for(WAIT, "the timed-out connect's update", || {
        let cs: Vec<Value> = connections(&collector.events()).into_iter().filter(|c| c["remote_ip"] == BLACKHOLE).collect();
        cs.iter().any(|c| c["update"] == true).then_some(cs)
    });
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(all[0]["outcome"], "in_progress");
    assert_eq!(all[1]["outcome"], "timed_out");
    assert_eq!(all[1]["process"]["pid"], std::process::id());
}

/// A listener on the host, a connect to it from the peer, the accept: its event names this
/// process, both ends and the class. Returns the listener's port.
fn accept_from_peer(collector: &Collector, peer: &Peer) -> u16 {
    let listener = TcpListener::bind((HOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = peer.inside(move || TcpStream::connect((HOST, port)).unwrap().local_addr().unwrap());
    let (_conn, from) = listener.accept().unwrap();
    let client_addr = client.join().unwrap();
    assert_eq!(from, client_addr);
    let a = find_conn(collector, "the accept", |c| c["evt_type"] == "accept" && c["local_port"] == port);
    assert_eq!(a["direction"], "inbound");
    assert_eq!(a["local_ip"], HOST);
    assert_eq!(a["remote_ip"], PEER);
    assert_eq!(a["remote_port"], client_addr.port());
    assert_eq!(a["remote_class"], "public");
    assert_eq!(a["process"]["pid"], std::process::id());
    port
}

/// The accept programs' probe-read twins, which the agent loads where the verifier refuses
/// the task-BTF walk (kernels before 5.11) or with `ebpf.programs.task_btf = false`: named in
/// the status (the default programs load on this kernel: `exec.rs` checks the plain names),
/// and the same accept event.
#[test]
fn accept_through_the_probe_read_twin() {
    let dir = TempDir::new("net-twin");
    let collector = Collector::start(dir.path());
    // fexit off: where the kernel runs trampolines accepts would come from neither form.
    let _agent = Agent::start(dir.path(), &collector.address(), &["ebpf.programs.task_btf=false", "ebpf.programs.fexit=false"]);
    let started = collector.wait_event(WAIT, "the started status", |e| e["kind"]["status"]["phase"] == 1);
    let hooks: Vec<&str> = started["kind"]["status"]["hooks"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for twin in ["tracepoint/syscalls/sys_exit_accept4 (probe reads)", "tracepoint/syscalls/sys_exit_accept (probe reads)"] {
        assert!(hooks.contains(&twin), "{twin} in {hooks:?}");
    }
    assert!(!hooks.contains(&"tracepoint/syscalls/sys_exit_accept4"), "{hooks:?}");
    let peer = Peer::new();
    accept_from_peer(&collector, &peer);
}

#[test]
fn inbound_accept_listener_and_ipv6() {
    let dir = TempDir::new("net-in");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &[]);
    let peer = Peer::new();
    let port = accept_from_peer(&collector, &peer);
    let l = find_conn(&collector, "the new listener", |c| c["evt_type"] == "listen" && c["local_port"] == port);
    assert_eq!(l["direction"], "listen");
    assert_eq!(l["process"]["pid"], std::process::id());

    // IPv6 (ULA inside the namespace), outbound.
    let ready = std::sync::Arc::new(std::sync::Barrier::new(2));
    let r = ready.clone();
    let server = peer.inside(move || {
        let l = TcpListener::bind((PEER6, 8443)).unwrap();
        r.wait();
        let _ = l.accept().unwrap();
    });
    ready.wait();
    let s = TcpStream::connect((PEER6, 8443)).unwrap();
    let local = s.local_addr().unwrap();
    server.join().unwrap();
    let c = find_conn(&collector, "the IPv6 connect", |c| c["remote_port"] == 8443 && c["local_port"] == local.port());
    assert_eq!(c["family"], "ipv6");
    assert_eq!(c["remote_ip"], PEER6);
    assert_eq!(c["local_ip"], HOST6);
    assert_eq!(c["outcome"], "established");
    assert_eq!(c["remote_class"], "private");
}

/// Cloud metadata: a client in a namespace with no default route, joined only to a namespace
/// that holds 169.254.169.254, connects there; the event is classed IMDS.
#[test]
fn metadata_endpoint_is_classed_imds() {
    let dir = TempDir::new("net-imds");
    let collector = Collector::start(dir.path());
    let rules = dir.path().join("imds.yaml");
    std::fs::write(
        &rules,
        "- rule: Contact cloud metadata\n  desc: d\n  condition: evt.type = connect and peregrine.net.dest_class = imds and fd.sport = 80\n  output: \"metadata contacted (dest=%fd.sip:%fd.sport outcome=%peregrine.net.outcome proc=%proc.name)\"\n  priority: WARNING\n  tags: [cloud]\n",
    )
    .unwrap();
    let _agent = Agent::start(dir.path(), &collector.address(), &[&format!("rules.paths=[\"{}\"]", rules.display())]);
    let _lock = NETNS.lock().unwrap_or_else(|e| e.into_inner());
    struct Pair;
    impl Drop for Pair {
        fn drop(&mut self) {
            for ns in ["pg-imds", "pg-cli"] {
                let _ = Command::new(tool("ip")).args(["netns", "del", ns]).status();
            }
        }
    }
    drop(Pair);
    let _pair = Pair;
    ip(&["netns", "add", "pg-imds"]);
    ip(&["netns", "add", "pg-cli"]);
    ip(&["-n", "pg-cli", "link", "add", "pg-veth-c", "type", "veth", "peer", "name", "pg-veth-i", "netns", "pg-imds"]);
    ip(&["-n", "pg-imds", "addr", "add", "169.254.169.254/16", "dev", "pg-veth-i"]);
    ip(&["-n", "pg-imds", "link", "set", "pg-veth-i", "up"]);
    ip(&["-n", "pg-cli", "addr", "add", "169.254.0.2/16", "dev", "pg-veth-c"]);
    ip(&["-n", "pg-cli", "link", "set", "pg-veth-c", "up"]);
    let routes = Command::new(tool("ip")).args(["-n", "pg-cli", "route", "show", "default"]).output().unwrap();
    assert!(routes.stdout.is_empty(), "the client namespace must have no default route");
    let path = "/run/netns/pg-cli";
    let client = std::thread::spawn(move || {
        let ns = std::fs::File::open(path).unwrap();
        // SAFETY: setns on this thread only, with a namespace fd we hold open.
        assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        // Nothing listens on 80 there: the metadata namespace answers with a reset.
        TcpStream::connect_timeout(&"169.254.169.254:80".parse().unwrap(), Duration::from_secs(5)).unwrap_err().raw_os_error()
    });
    assert_eq!(client.join().unwrap(), Some(libc::ECONNREFUSED));
    let c = find_conn(&collector, "the metadata connect", |c| c["remote_ip"] == "169.254.169.254");
    assert_eq!(c["remote_class"], "imds");
    assert_eq!(c["remote_port"], 80);
    assert_eq!(c["outcome"], "refused");
    assert_eq!(c["process"]["pid"], std::process::id());
    // A Falco-language rule on connection fields fires on it.
    let alert = collector.wait_event(WAIT, "the metadata alert", |e| e["kind"]["alert"]["rule"] == "Contact cloud metadata");
    let comm = c["process"]["comm"].as_str().unwrap();
    assert_eq!(
        alert["kind"]["alert"]["output"],
        format!("metadata contacted (dest=169.254.169.254:80 outcome=refused proc={comm})")
    );
}

/// Loopback is left out in the kernel by default.
#[test]
fn loopback_is_excluded_by_default() {
    let dir = TempDir::new("net-lo");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &[]);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let _s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = l.accept().unwrap();
    collector.wait_drained_past(boot_now_ns(), WAIT);
    assert!(connections(&collector.events()).iter().all(|c| c["local_port"] != port && c["remote_port"] != port));
}

/// UDP through the cgroup hooks: the first datagram of a flow is reported (repeats within the
/// dedup window are not), and the datagrams still arrive with the hooks attached.
#[test]
fn udp_first_contact_and_traffic_still_flows() {
    let dir = TempDir::new("net-udp");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &[]);
    let peer = Peer::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = peer.inside(move || {
        let sock = std::net::UdpSocket::bind((REMOTE, 5353)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tx.send(()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            let (n, _) = sock.recv_from(&mut buf).unwrap();
            got.push(buf[..n].to_vec());
        }
        got
    });
    rx.recv_timeout(WAIT).unwrap();
    let sock = std::net::UdpSocket::bind((HOST, 0)).unwrap();
    for msg in [&b"one"[..], b"two", b"three"] {
        sock.send_to(msg, (REMOTE, 5353)).unwrap();
    }
    let received = receiver.join().unwrap();
    assert_eq!(received, vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()], "traffic flows with the hooks attached");
    let c = find_conn(&collector, "the UDP flow", |c| c["protocol"] == "udp" && c["remote_port"] == 5353);
    assert_eq!(c["evt_type"], "sendto");
    assert_eq!(c["direction"], "outbound");
    assert_eq!(c["remote_ip"], REMOTE);
    assert_eq!(c["process"]["pid"], std::process::id());
    collector.wait_drained_past(boot_now_ns(), WAIT);
    let flows = connections(&collector.events()).into_iter().filter(|c| c["protocol"] == "udp" && c["remote_port"] == 5353).count();
    assert_eq!(flows, 1, "three sends, one flow within the dedup window");
}

/// Inbound UDP: the first datagram received from a peer is reported with its source.
#[test]
fn udp_inbound_first_contact() {
    let dir = TempDir::new("net-udpin");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &[]);
    let peer = Peer::new();
    let sock = std::net::UdpSocket::bind((HOST, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let port = sock.local_addr().unwrap().port();
    let sender = peer.inside(move || {
        let s = std::net::UdpSocket::bind((PEER, 0)).unwrap();
        s.send_to(b"ping", (HOST, port)).unwrap();
        s.local_addr().unwrap().port()
    });
    let from_port = sender.join().unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from.port()), (&b"ping"[..], from_port));
    let c = find_conn(&collector, "the inbound datagram", |c| c["evt_type"] == "recvfrom" && c["remote_port"] == from_port);
    assert_eq!(c["direction"], "inbound");
    assert_eq!(c["protocol"], "udp");
    assert_eq!(c["remote_ip"], PEER);
    assert_eq!(c["process"]["pid"], std::process::id());
}

/// Egress enforcement: a connect to a denied destination fails with EPERM in the caller and
/// is reported; other destinations are untouched.
#[test]
fn denied_destination_fails_with_eperm_and_is_reported() {
    let dir = TempDir::new("net-deny");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(
        dir.path(),
        &collector.address(),
        &[&format!("network.deny_destinations=[\"{REMOTE}/32\"]")],
    );
    let _peer = Peer::new();
    let err = TcpStream::connect((REMOTE, 8080)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    let udp = std::net::UdpSocket::bind((HOST, 0)).unwrap();
    assert_eq!(udp.send_to(b"x", (REMOTE, 53)).unwrap_err().raw_os_error(), Some(libc::EPERM));
    let c = find_conn(&collector, "the TCP denial", |c| c["outcome"] == "denied" && c["protocol"] == "tcp");
    assert_eq!(c["evt_type"], "connect");
    assert_eq!(c["remote_ip"], REMOTE);
    assert_eq!(c["remote_port"], 8080);
    assert_eq!(c["error"], libc::EPERM);
    assert_eq!(c["process"]["pid"], std::process::id());
    let u = find_conn(&collector, "the UDP denial", |c| c["outcome"] == "denied" && c["protocol"] == "udp");
    assert_eq!(u["evt_type"], "sendto");
    assert_eq!(u["remote_port"], 53);
    // Another destination still connects (refused by the peer: nothing listens, but not EPERM).
    let err = TcpStream::connect((PEER, 9)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
}

/// Repeats of one flow within the TCP dedup window: the kernel sends the first and counts the
/// rest; one summary per flow and direction follows the window with the exact counts.
#[test]
fn repeated_connects_leave_one_event_and_a_summary_with_counts() {
    let dir = TempDir::new("net-dedup");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &["network.tcp_dedup_ms=3000"]);
    let peer = Peer::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = peer.inside(move || {
        let l = TcpListener::bind((REMOTE, 8090)).unwrap();
        tx.send(()).unwrap();
        for _ in 0..5 {
            let _ = l.accept().unwrap();
        }
    });
    rx.recv_timeout(WAIT).unwrap();
    let mut first_port = 0;
    for i in 0..5 {
        let s = TcpStream::connect((REMOTE, 8090)).unwrap();
        if i == 0 {
            first_port = s.local_addr().unwrap().port();
        }
    }
    server.join().unwrap();
    for _ in 0..3 {
        let err = TcpStream::connect((REMOTE, 8091)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    }
    let me = std::process::id();
    let summary_of = |port: u64, evt: &'static str| {
        find_conn(&collector, "a dedup summary", move |c| c["summary"] == true && c["remote_port"] == port && c["evt_type"] == evt)
    };
    let out = summary_of(8090, "connect");
    assert_eq!((out["count"].as_u64(), out["established_count"].as_u64(), out["failed_count"].as_u64()), (Some(4), Some(4), Some(0)));
    assert_eq!((out["remote_ip"].as_str(), out["local_port"].as_u64()), (Some(REMOTE), Some(0)));
    assert_eq!(out["process"]["pid"], me);
    assert_eq!(out["window_ms"], 3000);
    let refused = summary_of(8091, "connect");
    assert_eq!((refused["count"].as_u64(), refused["established_count"].as_u64(), refused["failed_count"].as_u64()), (Some(2), Some(0), Some(2)));
    // The server's accepts, one flow (peer address, listening port) whatever the client port.
    let inbound = find_conn(&collector, "the accept summary", |c| c["summary"] == true && c["evt_type"] == "accept" && c["local_ip"] == REMOTE);
    assert_eq!((inbound["count"].as_u64(), inbound["remote_ip"].as_str()), (Some(4), Some(HOST)));
    assert_eq!(inbound["process"]["pid"], me);

    collector.wait_drained_past(boot_now_ns(), WAIT);
    let all = connections(&collector.events());
    let sent: Vec<&Value> = all.iter().filter(|c| c["remote_port"] == 8090 && c["summary"] != true).collect();
    assert_eq!(sent.len(), 1, "one connect event for five connects: {sent:#?}");
    assert_eq!((sent[0]["local_port"].as_u64(), sent[0]["outcome"].as_str()), (Some(u64::from(first_port)), Some("established")));
    assert_eq!(all.iter().filter(|c| c["remote_port"] == 8091 && c["summary"] != true).count(), 1);
    assert_eq!(all.iter().filter(|c| c["evt_type"] == "accept" && c["local_ip"] == REMOTE && c["summary"] != true).count(), 1);
    assert_eq!(all.iter().filter(|c| c["summary"] == true).count(), 3, "one summary per flow: {all:#?}");
}

/// With the dedup window at 0 every connect is its own event. (Port 10: every agent sees every
/// test's connects, and no other test uses it.)
#[test]
fn dedup_off_reports_every_connect() {
    let dir = TempDir::new("net-nodedup");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &["network.tcp_dedup_ms=0"]);
    let _peer = Peer::new();
    for _ in 0..3 {
        let err = TcpStream::connect((PEER, 10)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    }
    let events = wait_for(WAIT, "three refused connects", || {
        let cs: Vec<Value> = connections(&collector.events()).into_iter().filter(|c| c["remote_ip"] == PEER && c["remote_port"] == 10).collect();
        (cs.len() >= 3).then_some(cs)
    });
    collector.wait_drained_past(boot_now_ns() + 2_000_000_000, WAIT);
    let cs: Vec<Value> = connections(&collector.events()).into_iter().filter(|c| c["remote_ip"] == PEER && c["remote_port"] == 10).collect();
    assert_eq!(cs.len(), 3, "{events:#?}");
    assert!(cs.iter().all(|c| c["outcome"] == "refused" && c["summary"] != true && c["process"]["pid"] == std::process::id()));
}

/// A connect that established and is then reset by the peer: after the connect's event, an
/// update with the outcome `reset` for the same socket and process.
#[test]
fn a_reset_by_the_peer_ends_the_connect_as_reset() {
    let dir = TempDir::new("net-reset");
    let collector = Collector::start(dir.path());
    let _agent = Agent::start(dir.path(), &collector.address(), &[]);
    let peer = Peer::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = peer.inside(move || {
        let l = TcpListener::bind((REMOTE, 8095)).unwrap();
        tx.send(()).unwrap();
        let (s, _) = l.accept().unwrap();
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt on a descriptor owned by `s`, with a correctly sized option.
        let rc = unsafe {
            libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), size_of::<libc::linger>() as u32)
        };
        assert_eq!(rc, 0);
        // Closing with a zero linger sends a reset instead of a FIN.
        drop(s);
    });
    rx.recv_timeout(WAIT).unwrap();
    let mut s = TcpStream::connect((REMOTE, 8095)).unwrap();
    let local = s.local_addr().unwrap();
    server.join().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let err = s.read(&mut [0u8; 1]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET));
    let reset = find_conn(&collector, "the reset", |c| c["outcome"] == "reset" && c["local_port"] == local.port());
    assert_eq!((reset["update"].as_bool(), reset["error"].as_i64()), (Some(true), Some(i64::from(libc::ECONNRESET))));
    assert_eq!((reset["remote_ip"].as_str(), reset["remote_port"].as_u64(), reset["local_ip"].as_str()), (Some(REMOTE), Some(8095), Some(HOST)));
    assert_eq!(reset["process"]["pid"], std::process::id());
    let cs: Vec<Value> = connections(&collector.events()).into_iter().filter(|c| c["local_port"] == local.port() && c["remote_port"] == 8095).collect();
    assert_eq!(cs.len(), 2, "the connect, then its reset: {cs:#?}");
    assert_eq!((cs[0]["outcome"].as_str(), cs[0]["update"].as_bool()), (Some("established"), Some(false)));
}

/// Map pressure: a flood of half-open connects (the peer drops every SYN) against kernel flow
/// maps of 64 entries. Every flow's connect is still reported with its process and ends
/// `timed_out`; outcomes whose map entry the LRU evicted are counted and are either joined to
/// the attempt the agent holds or reported without an owner — never with another process;
/// dedup windows evicted before they were read are counted losses, in the metric and in Loss
/// events alike; and the pipeline keeps going.
#[test]
fn a_flood_of_half_open_connects_under_map_pressure_is_counted_never_misattributed() {
    const FLOWS: u16 = 300;
    const FIRST_PORT: u16 = 20_000;
    const SAME_FLOW: usize = 200;
    const SAME_PORT: u16 = 19_999;
    let dir = TempDir::new("net-flood");
    let collector = Collector::start(dir.path());
    let agent = Agent::start(dir.path(), &collector.address(), &["network.flow_map_entries=64"]);
    let _peer = Peer::new();
    let unattributed = "peregrine_agent_connects_unattributed_total";
    let lost_windows = "peregrine_agent_events_dropped_total{reason=\"tcp_window_lost\"}";
    let before = agent.metrics();
    let blackhole: std::net::Ipv4Addr = BLACKHOLE.parse().unwrap();
    let mut sockets = Vec::new();
    // Distinct flows: each connect opens its own window, so each attempt is sent.
    for i in 0..FLOWS {
        sockets.push(connect_half_open(std::net::SocketAddrV4::new(blackhole, FIRST_PORT + i)));
    }
    // One flow: its first connect is sent, the others are absorbed into its window.
    for _ in 0..SAME_FLOW {
        sockets.push(connect_half_open(std::net::SocketAddrV4::new(blackhole, SAME_PORT)));
    }
    let mine = u64::from(std::process::id());
    let to_blackhole = |collector: &Collector| -> Vec<Value> {
        connections(&collector.events()).into_iter().filter(|c| c["remote_ip"] == BLACKHOLE && c["summary"] != true).collect()
    };
    let flood_port = |c: &Value| c["remote_port"].as_u64().is_some_and(|p| (u64::from(FIRST_PORT)..u64::from(FIRST_PORT + FLOWS)).contains(&p));
    let cs = wait_for(WAIT, "every distinct flow's connect ending timed out", || {
        let cs = to_blackhole(&collector);
        let done: std::collections::BTreeSet<u64> =
            cs.iter().filter(|c| flood_port(c) && c["outcome"] == "timed_out").filter_map(|c| c["remote_port"].as_u64()).collect();
        (done.len() == usize::from(FLOWS)).then_some(cs)
    });
    drop(sockets);
    // Attributed to this process, or to no one; never to another.
    for c in &cs {
        let pid = c["process"]["pid"].as_u64();
        assert!(pid == Some(mine) || (pid.is_none() && c["owner_unknown"] == true), "misattributed or unflagged: {c:#}");
    }
    // The distinct flows were all sent with their owner: each timed-out update names it.
    assert!(cs.iter().filter(|c| flood_port(c) && c["outcome"] == "timed_out").all(|c| c["process"]["pid"].as_u64() == Some(mine)));
    assert!(cs.iter().any(|c| c["remote_port"] == SAME_PORT && c["process"]["pid"].as_u64() == Some(mine)), "the one flow's first connect");
    // The maps were really under pressure: outcomes arrived without their map entry.
    let after = agent.metrics();
    let evicted = metric(&after, unattributed).unwrap() - metric(&before, unattributed).unwrap_or(0.0);
    assert!(evicted > 0.0, "no outcome lost its map entry: the test made no pressure");
    let ownerless = cs.iter().filter(|c| c["owner_unknown"] == true).count() as f64;
    assert!(ownerless <= evicted, "{ownerless} events without owner, {evicted} counted");
    eprintln!("flood: {} events, {evicted} outcomes without their map entry, {ownerless} reported without owner", cs.len());

    // Windows evicted before they were read (they end 10 s after the flood): counted, and the
    // Loss events add up to the metric.
    wait_for(WAIT, "Loss events adding up to the lost-window metric", || {
        let counted = metric(&agent.metrics(), lost_windows)?;
        let reported = collector
            .events()
            .iter()
            .filter(|e| e["kind"]["loss"]["reason"] == "tcp_window_lost")
            .filter_map(|e| e["kind"]["loss"]["total"].as_u64())
            .max()?;
        (counted > 0.0 && reported as f64 == counted).then_some(())
    });

    // Still flowing: a connect after the flood is reported with its process.
    let err = TcpStream::connect((PEER, 11)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    let c = find_conn(&collector, "a connect after the flood", |c| c["remote_ip"] == PEER && c["remote_port"] == 11);
    assert_eq!((c["outcome"].as_str(), c["process"]["pid"].as_u64()), (Some("refused"), Some(mine)));
}
