//! Hot reload through a ConfigMap-style directory: kubelet writes a new timestamped directory,
//! points a temporary symlink at it and renames it over `..data`; `rules.yaml` is a symlink to
//! `..data/rules.yaml` and never changes itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::{EXEC_IN_CONTAINER, event, matches};
use peregrine_rules::{PollOutcome, RulesWatcher};

fn rule(name: &str, proc_name: &str) -> String {
    format!(
        "- rule: {name}\n  desc: d\n  condition: proc.name = {proc_name}\n  output: o\n  priority: INFO\n"
    )
}

struct ConfigMapDir {
    dir: PathBuf,
    version: u32,
}

impl ConfigMapDir {
    fn new(tag: &str, text: &str) -> ConfigMapDir {
        let dir =
            std::env::temp_dir().join(format!("peregrine-rules-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = ConfigMapDir { dir, version: 0 };
        c.publish(text);
        symlink("..data/rules.yaml", c.dir.join("rules.yaml")).unwrap();
        c
    }

    /// What kubelet does on a ConfigMap update.
    fn publish(&mut self, text: &str) {
        self.version += 1;
        let ts = format!(
            "..2026_11_23_10_00_0{}.{}",
            self.version,
            100 + self.version
        );
        std::fs::create_dir(self.dir.join(&ts)).unwrap();
        std::fs::write(self.dir.join(&ts).join("rules.yaml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ConfigMapDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn configmap_symlink_swap_reloads_and_broken_files_keep_the_old_rules() {
    let ev = event(EXEC_IN_CONTAINER); // proc.name = ls
    let mut cm = ConfigMapDir::new("swap", &rule("first", "ls"));
    // Watching the directory, as the agent does with a mounted ConfigMap.
    let (handle, mut w) = RulesWatcher::start(vec![cm.path().to_path_buf()]).unwrap();
    assert_eq!(matches(&handle.current(), &ev), vec!["first"]);
    assert!(matches!(w.poll(), PollOutcome::Unchanged));

    cm.publish(&rule("second", "ls"));
    assert!(matches!(
        w.poll(),
        PollOutcome::Reloaded {
            compiled: 1,
            skipped: 0
        }
    ));
    assert_eq!(matches(&handle.current(), &ev), vec!["second"]);
    assert!(matches!(w.poll(), PollOutcome::Unchanged));

    // A broken update: reported once with file, line, rule and problem; the rules stay.
    cm.publish(
        "- rule: third\n  desc: d\n  condition: proc.name = (\n  output: o\n  priority: INFO\n",
    );
    match w.poll() {
        PollOutcome::Failed(e) => {
            let s = e.to_string();
            assert!(
                s.contains("rules.yaml:3:14: rule 'third': condition: expected a string value"),
                "{s}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(matches!(w.poll(), PollOutcome::StillFailing));
    assert_eq!(matches(&handle.current(), &ev), vec!["second"]);

    cm.publish(&rule("fourth", "ls"));
    assert!(matches!(w.poll(), PollOutcome::Reloaded { .. }));
    assert_eq!(matches(&handle.current(), &ev), vec!["fourth"]);
}

#[test]
fn watching_the_symlinked_file_itself_also_sees_the_swap() {
    let ev = event(EXEC_IN_CONTAINER);
    let mut cm = ConfigMapDir::new("file", &rule("first", "ls"));
    let (handle, mut w) = RulesWatcher::start(vec![cm.path().join("rules.yaml")]).unwrap();
    cm.publish(&rule("second", "ls"));
    assert!(matches!(w.poll(), PollOutcome::Reloaded { .. }));
    assert_eq!(matches(&handle.current(), &ev), vec!["second"]);
}

#[test]
fn the_polling_thread_reloads_and_stops() {
    let ev = event(EXEC_IN_CONTAINER);
    let mut cm = ConfigMapDir::new("thread", &rule("first", "ls"));
    let (handle, w) = RulesWatcher::start(vec![cm.path().to_path_buf()]).unwrap();
    let (tx, rx) = mpsc::channel();
    let thread = w
        .spawn(Duration::from_millis(10), move |o| {
            let _ = tx.send(format!("{o:?}"));
        })
        .unwrap();
    cm.publish(&rule("second", "ls"));
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no reload within 10 s");
    assert!(got.starts_with("Reloaded"), "{got}");
    assert_eq!(matches(&handle.current(), &ev), vec!["second"]);
    thread.stop();
}

#[test]
fn a_broken_file_at_start_is_an_error() {
    let cm = ConfigMapDir::new("start", "- rule: x\n");
    let e = RulesWatcher::start(vec![cm.path().to_path_buf()])
        .err()
        .expect("should fail");
    assert!(e.to_string().contains("rule 'x'"), "{e}");
}
