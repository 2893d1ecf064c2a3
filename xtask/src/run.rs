//! `cargo xtask run`: a collector and an agent on this node, events shown as they arrive.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::Binaries;

const INGEST: &str = "127.0.0.1:7700";

/// Kills and reaps a child we started, by its PID, when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(bins: &Binaries, cluster: &str, agent_sets: &[String]) -> Result<()> {
    let mut collector = Owned(
        Command::new(&bins.collector)
            .args(["--set", &format!("listen={INGEST}"), "--set", "http.listen=127.0.0.1:9465"])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the collector")?,
    );
    let stdout = collector.0.stdout.take().context("collector stdout")?;
    let mut agent_cmd = Command::new(&bins.agent);
    agent_cmd.args([
        "--set",
        &format!("cluster_name={cluster}"),
        "--set",
        &format!("collector.address=http://{INGEST}"),
        "--set",
        &format!("ebpf.object={}", bins.ebpf.display()),
        "--set",
        "http.listen=127.0.0.1:9464",
    ]);
    for s in agent_sets {
        agent_cmd.args(["--set", s]);
    }
    let mut agent = Owned(agent_cmd.spawn().context("starting the agent")?);
    eprintln!("peregrine: collector on {INGEST}, agent metrics on http://127.0.0.1:9464/metrics; Ctrl-C stops both");
    eprintln!("peregrine: type a command in another shell to see it here");

    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading collector output")?;
        println!("{}", render(&line));
        if let Some(status) = agent.0.try_wait().context("checking the agent")? {
            bail!("the agent exited ({status}); its error is above");
        }
    }
    if let Some(status) = agent.0.try_wait()? {
        bail!("the agent exited ({status})");
    }
    Ok(())
}

/// One line per event for people; the collector's JSON has everything.
fn render(line: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(line) else { return line.to_owned() };
    let kind = &v["kind"];
    if let Some(e) = kind.get("exec") {
        let argv: Vec<&str> = e["argv"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        format!(
            "exec  pid={} ppid={} uid={} cgroup={} {} :: {}",
            e["pid"], e["parent_tgid"], e["uid"], e["cgroup_id"], e["filename"].as_str().unwrap_or(""), argv.join(" ")
        )
    } else if let Some(s) = kind.get("status") {
        format!(
            "agent phase={} hooks={} lost_in_kernel={} dropped={} sent={}",
            s["phase"], s["hooks"], s["kernel_records_lost"], s["events_dropped"], s["events_sent"]
        )
    } else {
        line.to_owned()
    }
}
