//! Falco-language rules in the agent, on real behaviour: an upstream stable rule firing on a
//! real `find`, folding of repeats, and hot reload through a kubelet-style `..data` swap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn upstream_rules() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/falco-rules/falco_rules.yaml");
    assert!(p.is_file(), "{} is missing: the upstream corpus lives in ../shared/corpus beside the repository", p.display());
    p
}

fn alerts(collector: &Collector) -> Vec<Value> {
    collector.events().into_iter().filter(|e| e["kind"]["alert"].is_object()).map(|e| e["kind"]["alert"].clone()).collect()
}

#[test]
fn upstream_stable_rule_fires_on_a_real_find() {
    let dir = TempDir::new("rulefind");
    let collector = Collector::start(dir.path());
    let rules = upstream_rules();
    let _agent = Agent::start(dir.path(), &collector.address(), &[&format!("rules.paths=[\"{}\"]", rules.display())]);
    let target = dir.path().join("keys");
    std::fs::create_dir(&target).unwrap();
    let status = Command::new(tool("find")).arg(&target).args(["-name", "id_rsa"]).status().unwrap();
    assert!(status.success());
    let alert = collector.wait_event(WAIT, "the private-key search alert", |e| {
        e["kind"]["alert"]["rule"] == "Search Private Keys or Passwords"
            && e["kind"]["alert"]["process"]["argv"][1] == target.to_str().unwrap()
    });
    let a = &alert["kind"]["alert"];
    // Falco's spelling of priorities in its JSON output.
    assert_eq!(a["priority"], "Warning");
    assert!(a["tags"].as_array().unwrap().iter().any(|t| t == "T1552.001"));
    let cmdline = format!("find {} -name id_rsa", target.display());
    let output = a["output"].as_str().unwrap();
    assert!(output.starts_with("Grep private keys or passwords activities found | evt_type=execve user=root user_uid=0"), "{output}");
    assert!(output.contains(&format!("command={cmdline} ")), "{output}");
    assert!(output.contains("process=find proc_exepath=/usr/bin/find"), "{output}");
    assert_eq!(a["fields"]["proc.cmdline"], cmdline.as_str());
    // The alert names the exec event that triggered it, which precedes it in the stream.
    let events = collector.events();
    let trigger = events.iter().position(|e| e["id"] == a["event_id"]).expect("the triggering event");
    let at = events.iter().position(|e| e["id"] == alert["id"]).unwrap();
    assert!(trigger < at);
    assert_eq!(events[trigger]["kind"]["exec"]["process"]["argv"][1], target.to_str().unwrap());
}

fn write_rule(path: &Path, marker: &str, rule: &str) {
    std::fs::write(
        path,
        format!(
            "- rule: {rule}\n  desc: test rule\n  condition: evt.type = execve and proc.args contains \"{marker}\"\n  output: \"{rule} fired (cmd=%proc.cmdline pid=%proc.pid host=%evt.hostname parent=%proc.pname)\"\n  priority: NOTICE\n  tags: [test]\n"
        ),
    )
    .unwrap();
}

/// kubelet's ConfigMap layout: `rules.yaml -> ..data/rules.yaml`, `..data -> ..<timestamp>`;
/// an update writes a new timestamped directory and renames a new `..data` link over the old.
fn configmap_swap(dir: &Path, generation: u32, write: impl FnOnce(&Path)) {
    let version = dir.join(format!("..2026_11_23_{generation}"));
    std::fs::create_dir(&version).unwrap();
    write(&version.join("rules.yaml"));
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("rules.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/rules.yaml", &link).unwrap();
    }
}

#[test]
fn rules_fold_repeats_and_reload_through_a_configmap_swap() {
    let dir = TempDir::new("rulereload");
    let cm = dir.path().join("configmap");
    std::fs::create_dir(&cm).unwrap();
    let first = unique("mark-a-");
    configmap_swap(&cm, 1, |p| write_rule(p, &first, "Marker A"));
    let collector = Collector::start(dir.path());
    let agent = Agent::start(
        dir.path(),
        &collector.address(),
        &[
            &format!("rules.paths=[\"{}\"]", cm.join("rules.yaml").display()),
            "rules.reload_interval_ms=200",
            "rules.fold_window_ms=1500",
        ],
    );
    let probe = dir.path().join(unique("pgr"));
    std::fs::copy(tool("true"), &probe).unwrap();
    for _ in 0..3 {
        Command::new(&probe).arg(&first).status().unwrap();
    }
    // The first goes out at once; the two repeats fold into one follow-up when the window ends.
    let folded = collector.wait_event(WAIT, "the folded follow-up", |e| {
        e["kind"]["alert"]["rule"] == "Marker A" && e["kind"]["alert"]["folded"] == true
    });
    assert_eq!(folded["kind"]["alert"]["count"], 2);
    let a: Vec<Value> = alerts(&collector).into_iter().filter(|a| a["rule"] == "Marker A").collect();
    assert_eq!(a.len(), 2, "one alert at once, one follow-up: {a:#?}");
    assert_eq!(a[0]["folded"], false);
    assert_eq!(a[0]["count"], 1);
    let comm = probe.file_name().unwrap().to_str().unwrap();
    // The node's name reaches the rules apart from the event, which gets it as it is encoded.
    let expected = format!("Marker A fired (cmd={comm} {first} pid={} host=test-node parent=", a[0]["process"]["pid"]);
    assert!(a[0]["output"].as_str().unwrap().starts_with(&expected), "{} vs {expected}", a[0]["output"]);

    // A broken update: the old rules stay in force, the agent says why.
    configmap_swap(&cm, 2, |p| std::fs::write(p, "- rule: Broken\n  condition: evt.type = execve and (\n  output: x\n  priority: NOTICE\n").unwrap());
    wait_for(WAIT, "the reload failure in the log", || agent.proc.stderr_text().contains("new rules do not load").then_some(()));
    let log = agent.proc.stderr_text();
    assert!(log.contains("rules.yaml") && log.contains("Broken"), "the error names the file and rule: {log}");
    let again = unique("again-");
    Command::new(&probe).arg(&first).arg(&again).status().unwrap();
    // Within the folding window, so it arrives as the follow-up, with the latest repeat's fields.
    collector.wait_event(WAIT, "Marker A still firing", |e| {
        e["kind"]["alert"]["rule"] == "Marker A"
            && e["kind"]["alert"]["fields"]["proc.cmdline"].as_str().is_some_and(|c| c.ends_with(again.as_str()))
    });

    // A good update replaces the rules.
    let second = unique("mark-b-");
    configmap_swap(&cm, 3, |p| write_rule(p, &second, "Marker B"));
    wait_for(WAIT, "Marker B in force", || {
        Command::new(&probe).arg(&second).status().unwrap();
        collector.events().into_iter().find(|e| e["kind"]["alert"]["rule"] == "Marker B")
    });
    let after = unique("gone-");
    Command::new(&probe).arg(&first).arg(&after).status().unwrap();
    collector.wait_drained_past(boot_now_ns(), WAIT);
    assert!(
        !alerts(&collector)
            .iter()
            .any(|a| a["rule"] == "Marker A" && a["fields"]["proc.cmdline"].as_str().is_some_and(|c| c.ends_with(after.as_str()))),
        "Marker A must be gone after the swap"
    );
}

#[test]
fn rules_that_do_not_load_stop_the_agent_with_the_place() {
    let dir = TempDir::new("rulebad");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "- rule: Oops\n  desc: d\n  condition: evt.type = execve and (proc.name = x\n  output: o\n  priority: NOTICE\n").unwrap();
    let cmd = agent_command("http://127.0.0.1:1", free_port(), &[&format!("rules.paths=[\"{}\"]", bad.display())]);
    let (code, stderr) = agent_fails(cmd, dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("bad.yaml") && stderr.contains("Oops"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
