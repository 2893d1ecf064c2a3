//! The language: grammar, operators, Falco's semantics, YAML features and errors, each with an
//! exact expected result.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

mod common;

use common::{CONNECT_ON_HOST, EXEC_IN_CONTAINER, event, event_with, load, matches};
use peregrine_rules::{LoadError, RecordedEvent, RuleStatus, RulesSource, Ruleset, SkipReason};

fn rule_file(cond: &str) -> String {
    format!(
        "- rule: r\n  desc: d\n  condition: {}\n  output: o\n  priority: WARNING\n",
        serde_json::to_string(cond).unwrap()
    )
}

/// Whether a one-rule file with `cond` fires on `ev`.
fn fires(cond: &str, ev: &RecordedEvent) -> bool {
    let rs = load(&rule_file(cond));
    assert_eq!(
        rs.rules().len(),
        1,
        "'{cond}' did not compile: {:?}",
        rs.report().rules
    );
    !matches(&rs, ev).is_empty()
}

fn exec() -> RecordedEvent {
    event(EXEC_IN_CONTAINER)
}

fn err(text: &str) -> LoadError {
    match Ruleset::from_sources(&[RulesSource {
        name: "bad.yaml".into(),
        text: text.into(),
    }]) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

fn skip_reason(cond: &str) -> SkipReason {
    let rs = load(&rule_file(cond));
    match &rs.report().rules[0].status {
        RuleStatus::Skipped(r) => r.clone(),
        RuleStatus::Compiled(_) => panic!("'{cond}' compiled"),
    }
}

#[test]
fn precedence_not_binds_tighter_than_and_tighter_than_or() {
    let e = exec();
    // true or (false and false) = true; (true or false) and false would be false.
    assert!(fires(
        "proc.name = ls or proc.name = x and proc.name = y",
        &e
    ));
    // not true and false = false; not (true and false) would be true.
    assert!(!fires("not proc.name = ls and proc.name = x", &e));
    assert!(fires("not (proc.name = ls and proc.name = x)", &e));
    assert!(fires("not not proc.name = ls", &e));
    assert!(fires("(proc.name=ls)and(user.uid=0)", &e));
    assert!(fires("not(proc.name=x)", &e));
}

#[test]
fn string_operators() {
    let e = exec(); // proc.cmdline "ls -la", proc.exepath "/usr/bin/ls"
    let cases = [
        ("proc.name = ls", true),
        ("proc.name == ls", true),
        ("proc.name = LS", false),
        ("proc.name != ls", false),
        ("proc.name != bash", true),
        ("proc.cmdline contains \"-la\"", true),
        ("proc.cmdline contains LA", false),
        ("proc.cmdline icontains LA", true),
        ("proc.exepath startswith /usr/", true),
        ("proc.exepath endswith /ls", true),
        ("proc.exepath glob '/usr/*/l?'", true),
        ("proc.exepath glob '/usr/*/x*'", false),
        ("proc.exepath iglob '/USR/*'", true),
        ("proc.exepath regex '/usr/bin/l[a-z]'", true),
        // A regex must match the whole value (RE2 full match, as libsinsp).
        ("proc.exepath regex 'bin'", false),
        ("proc.exepath regex '.*bin.*'", true),
        ("proc.exepath pmatch (/usr/bin, /opt)", true),
        ("proc.exepath pmatch (/usr/bi)", false),
        ("proc.name in (bash, ls, sh)", true),
        ("proc.name in (bash, sh)", false),
        ("proc.name intersects (ls)", true),
        ("proc.name in ()", false),
        ("proc.name exists", true),
        ("proc.exepath bcontains 2f62696e", true),
        ("proc.exepath bstartswith 2f757372", true),
        ("proc.exepath bstartswith 2f62696e", false),
    ];
    for (cond, want) in cases {
        assert_eq!(fires(cond, &e), want, "{cond}");
    }
}

#[test]
fn numeric_bool_and_address_operators() {
    let e = exec(); // user.uid 0, proc.pid 4242, user.loginuid -1
    let c = event(CONNECT_ON_HOST); // 10.0.0.5:40000 -> 203.0.113.7:443
    let cases = [
        ("user.uid = 0", &e, true),
        ("user.uid != 0", &e, false),
        ("proc.pid > 4000", &e, true),
        ("proc.pid <= 4241", &e, false),
        ("proc.pid in (1, 4242)", &e, true),
        ("proc.pid = 0x1092", &e, true),
        ("user.loginuid = -1", &e, true),
        ("user.loginuid < 0", &e, true),
        ("container.privileged = false", &e, true),
        ("container.privileged != true", &e, true),
        ("container.privileged in (true)", &e, false),
        ("fd.sip = 203.0.113.7", &c, true),
        ("fd.sip != 203.0.113.7", &c, false),
        ("fd.cip in (10.0.0.5, 10.0.0.6)", &c, true),
        ("fd.sport = 443", &c, true),
        ("fd.sport in (80, 443)", &c, true),
        ("fd.sport > 1024", &c, false),
        // fd.ip / fd.port / fd.net: `=` either end, `!=` neither end.
        ("fd.ip = 10.0.0.5", &c, true),
        ("fd.ip != 10.0.0.5", &c, false),
        ("fd.ip != 0.0.0.0", &c, true),
        ("fd.port = 40000", &c, true),
        ("fd.port > 1024", &c, true),
        ("fd.net = \"10.0.0.0/8\"", &c, true),
        ("fd.net != \"10.0.0.0/8\"", &c, false),
        ("fd.net != \"127.0.0.0/8\"", &c, true),
        ("fd.snet in (\"10.0.0.0/8\", \"192.168.0.0/16\")", &c, false),
        ("fd.cnet = \"10.0.0.0/24\"", &c, true),
        ("fd.sip in (\"203.0.113.0/24\")", &c, true),
        ("fd.typechar = 4 and fd.l4proto = tcp", &c, true),
    ];
    for (cond, ev, want) in cases {
        assert_eq!(fires(cond, ev), want, "{cond}");
    }
}

#[test]
fn absent_fields_compare_false_even_with_not_equal() {
    let e = event_with(
        EXEC_IN_CONTAINER,
        r#"{"proc.cwd": null, "container.privileged": null}"#,
    );
    assert!(!fires("proc.cwd = /", &e));
    assert!(!fires("proc.cwd != /", &e));
    assert!(!fires("proc.cwd exists", &e));
    assert!(fires("not proc.cwd exists", &e));
    assert!(fires("not proc.cwd = /", &e));
    assert!(!fires("proc.cwd in (/, /app)", &e));
    assert!(!fires("container.privileged != true", &e));
    // fd.* fields cannot exist on an exec: the checks fold to false for execve.
    assert!(!fires("fd.sip != 1.2.3.4", &exec()));
    assert!(fires("not fd.name exists", &exec()));
}

#[test]
fn process_fields_keep_falco_meanings() {
    // A process started as `/usr/bin/python3 /opt/x.py --v`: comm "python3".
    let e = event_with(
        EXEC_IN_CONTAINER,
        r#"{"proc.name": "python3", "proc.exe": "/usr/bin/python3", "proc.exepath": "/usr/bin/python3.11",
            "proc.cmdline": "python3 /opt/x.py --v", "proc.args": "/opt/x.py --v"}"#,
    );
    assert!(fires("proc.cmdline startswith \"python3 /opt\"", &e));
    assert!(!fires("proc.cmdline contains /usr/bin/python3", &e));
    assert!(fires(
        "proc.exe = /usr/bin/python3 and proc.args = \"/opt/x.py --v\"",
        &e
    ));
    // Ancestors: [1] is the parent, [0] the process; no index means any ancestor (parent up).
    assert!(fires("proc.aname[0] = python3", &e));
    assert!(fires("proc.aname[1] = bash and proc.pname = bash", &e));
    assert!(fires("proc.aname[3] = systemd", &e));
    assert!(!fires("proc.aname[4] exists", &e));
    assert!(fires("proc.aname = containerd-shim", &e));
    assert!(!fires("proc.aname = python3", &e));
    assert!(fires("proc.aname in (sshd, systemd)", &e));
    assert!(fires("proc.apid[2] = 300 and proc.ppid = 4000", &e));
    assert!(fires(
        "proc.pexe = /bin/bash and proc.pexepath = /bin/bash",
        &e
    ));
    assert!(fires("proc.pcmdline = bash", &e));
    assert!(fires("proc.acmdline contains k8s.io", &e));
    assert!(fires(
        "proc.aexepath[2] endswith containerd-shim-runc-v2",
        &e
    ));
    // `!=` without index: some ancestor differs.
    assert!(fires("proc.aname != bash", &e));
}

#[test]
fn labels_and_event_types() {
    let e = exec();
    assert!(fires("k8s.pod.label[app] = web", &e));
    assert!(!fires("k8s.pod.label[nope] exists", &e));
    assert!(fires("k8s.pod.labels intersects (\"app:web\")", &e));
    assert!(!fires("k8s.pod.labels in (\"app:web\")", &e));
    assert!(fires(
        "k8s.pod.labels in (\"app:web\", \"tier:front\", \"x:y\")",
        &e
    ));
    assert!(fires("evt.type = execve and evt.dir = <", &e));
    assert!(fires("evt.type in (execve, execveat)", &e));
    assert!(!fires("evt.type = connect or proc.name = x", &e));
    assert!(fires("evt.type != connect", &e));
    assert!(fires("evt.num = 42", &e));
}

#[test]
fn lists_and_macros_expand() {
    let text = r#"
- list: shells
  items: [bash, '"z sh"', sh]
- list: all_things
  items: [shells, ls, "runc:[1:CHILD]"]
- macro: is_thing
  condition: proc.name in (all_things)
- macro: in_container
  condition: container.id != host
- rule: r
  desc: d
  condition: is_thing and in_container and proc.name in (shells, ls) and not proc.name in ("shells")
  output: "%proc.name in %container.id"
  priority: INFO
"#;
    let rs = load(text);
    assert_eq!(matches(&rs, &exec()), vec!["r"]);
    let e = event_with(EXEC_IN_CONTAINER, r#"{"proc.name": "z sh"}"#);
    assert_eq!(matches(&rs, &e), vec!["r"]);
    let e = event_with(EXEC_IN_CONTAINER, r#"{"proc.name": "shells"}"#);
    assert!(matches(&rs, &e).is_empty());
    assert_eq!(rs.rules()[0].render_output(&exec()), "ls in 0123456789ab");
}

#[test]
fn append_and_override() {
    let text = r#"
- list: l
  items: [a]
- list: l
  items: [b]
  append: true
- list: l2
  items: [x]
- list: l2
  items: [ls]
  override:
    items: append
- macro: m
  condition: proc.name in (l)
- macro: m
  condition: or proc.name = ls
  override:
    condition: append
- rule: r
  desc: d
  condition: m
  output: o
  priority: INFO
- rule: r2
  desc: d
  condition: proc.name = nothing
  output: o
  priority: INFO
  tags: [one]
- rule: r2
  condition: proc.name in (l2)
  priority: ERROR
  tags: [two]
  override:
    condition: replace
    priority: replace
    tags: append
- rule: r3
  desc: d
  condition: proc.name = ls
  output: o
  priority: INFO
- rule: r3
  enabled: false
- rule: r4
  desc: d
  condition: proc.name = zz
  output: o
  priority: INFO
- rule: r4
  condition: or proc.name = ls
  append: true
"#;
    let rs = load(text);
    assert_eq!(matches(&rs, &exec()), vec!["r", "r2", "r4"]);
    let e = event_with(EXEC_IN_CONTAINER, r#"{"proc.name": "b"}"#);
    assert_eq!(matches(&rs, &e), vec!["r"]);
    let r2 = rs.rule("r2").unwrap();
    assert_eq!(r2.priority(), peregrine_rules::Priority::Error);
    assert_eq!(r2.tags(), &["one".to_string(), "two".to_string()]);
    assert!(!rs.rule("r3").unwrap().enabled());
    assert!(
        rs.report()
            .warnings
            .iter()
            .any(|w| w.message.contains("deprecated"))
    );
}

#[test]
fn exceptions() {
    let text = r#"
- list: ok_images
  items: [docker.io/library/nginx]
- rule: r
  desc: d
  condition: proc.name in (ls, cat)
  output: o
  priority: INFO
  exceptions:
    - name: by_image_and_user
      fields: [container.image.repository, user.name]
      comps: [in, =]
      values:
        - [[ok_images], root]
    - name: by_cmdline
      fields: proc.cmdline
      comps: in
      values: ["cat /etc/hosts", "cat x"]
    - name: by_exe_prefix
      fields: [proc.exepath]
      comps: [startswith]
      values:
        - [/opt/]
"#;
    let rs = load(text);
    // Excepted by image and user.
    assert!(matches(&rs, &exec()).is_empty());
    let e = event_with(EXEC_IN_CONTAINER, r#"{"user.name": "alice"}"#);
    assert_eq!(matches(&rs, &e), vec!["r"]);
    let e = event_with(
        EXEC_IN_CONTAINER,
        r#"{"user.name": "alice", "proc.name": "cat", "proc.cmdline": "cat /etc/hosts"}"#,
    );
    assert!(matches(&rs, &e).is_empty());
    let e = event_with(
        EXEC_IN_CONTAINER,
        r#"{"user.name": "alice", "proc.exepath": "/opt/ls"}"#,
    );
    assert!(matches(&rs, &e).is_empty());
    // Appending values to an existing exception.
    let more = format!(
        "{text}\n- rule: r\n  exceptions:\n    - name: by_cmdline\n      values: [\"ls -la\"]\n  override:\n    exceptions: append\n"
    );
    let rs = load(&more);
    let e = event_with(EXEC_IN_CONTAINER, r#"{"user.name": "alice"}"#);
    assert!(matches(&rs, &e).is_empty());
}

#[test]
fn rules_needing_what_is_not_captured_are_skipped_with_the_reason() {
    assert_eq!(
        skip_reason("proc.name = ls and fd.directory = /etc").to_string(),
        "fields not captured: fd.directory"
    );
    assert_eq!(
        skip_reason("evt.arg.flags contains O_TRUNC").to_string(),
        "fields not captured: evt.arg.flags"
    );
    assert_eq!(
        skip_reason("proc.name = x and nope.field = 1").to_string(),
        "unknown fields: nope.field"
    );
    assert_eq!(
        skip_reason("tolower(proc.name) = ls").to_string(),
        "not supported: field transformer tolower"
    );
    assert_eq!(
        skip_reason("proc.name startswith oneof (a, b)").to_string(),
        "not supported: operator modifier 'startswith oneof'"
    );
    assert_eq!(
        skip_reason("evt.type in (open, openat) and proc.name = ls").to_string(),
        "needs event types Peregrine does not capture: open, openat"
    );
    assert_eq!(
        skip_reason("evt.dir = >").to_string(),
        "the condition is false for every event Peregrine produces"
    );
    // A branch that cannot happen on captured event types does not need its fields.
    assert!(fires(
        "(evt.type = open and fd.directory = /etc) or proc.name = ls",
        &exec()
    ));
    let rs = load(
        "- rule: r\n  desc: d\n  condition: ka.verb = get\n  output: o\n  priority: INFO\n  source: k8s_audit\n",
    );
    assert_eq!(
        rs.report().rules[0].status,
        RuleStatus::Skipped(SkipReason::UnsupportedSource("k8s_audit".into()))
    );
}

#[test]
fn rules_without_event_type_apply_to_every_type_and_typed_rules_only_to_theirs() {
    let rs = load(&format!(
        "{}{}",
        rule_file("user.uid = 0 or user.uid = 1000"),
        rule_file("evt.type = connect").replace("rule: r", "rule: c")
    ));
    assert_eq!(matches(&rs, &exec()), vec!["r"]);
    assert_eq!(matches(&rs, &event(CONNECT_ON_HOST)), vec!["r", "c"]);
    assert_eq!(
        rs.first_match(&event(CONNECT_ON_HOST)).map(|r| r.name()),
        Some("r")
    );
}

#[test]
fn errors_name_file_line_item_and_problem() {
    let e = err(
        "- rule: r\n  desc: d\n  condition: proc.name = ls and (a or b\n  output: o\n  priority: INFO\n",
    );
    assert_eq!(
        e.to_string(),
        "bad.yaml:3:14: rule 'r': condition: expected a ')' token (condition line 1, column 27, near end of condition)"
    );
    let e = err(
        "- macro: m\n  condition: proc.name = x\n- rule: r\n  desc: d\n  condition: m and nope\n  output: o\n  priority: INFO\n",
    );
    assert_eq!(
        e.to_string(),
        "bad.yaml:5:14: rule 'r': condition: undefined macro 'nope' (condition line 1, column 7, near 'nope')"
    );
    let e = err("- macro: a\n  condition: b\n- macro: b\n  condition: a\n");
    assert!(
        e.to_string().contains("macro recursion: a -> b -> a"),
        "{e}"
    );
    let e =
        err("- rule: r\n  desc: d\n  condition: proc.tty = abc\n  output: o\n  priority: INFO\n");
    assert!(e.to_string().starts_with("bad.yaml:3:14: rule 'r': condition: 'abc' is not a valid u64 value for field 'proc.tty'"), "{e}");
    let e = err(
        "- rule: r\n  desc: d\n  condition: proc.tty contains 1\n  output: o\n  priority: INFO\n",
    );
    assert!(
        e.message
            .contains("operator 'contains' is not supported for u64 field 'proc.tty'"),
        "{e}"
    );
    let e = err("- rule: r\n  desc: d\n  condition: x\n  output: o\n  priority: LOUD\n");
    assert_eq!(e.location.line, 5);
    assert!(e.message.starts_with("invalid priority 'LOUD'"));
    let e = err("- rule: r\n  condition: x\n");
    assert_eq!(
        e.to_string(),
        "bad.yaml:1:3: rule 'r': missing key 'output'"
    );
    let e = err("- list: l\n  items: [a\n");
    assert!(e.to_string().starts_with("bad.yaml:3:"), "{e}");
    assert!(e.message.starts_with("YAML syntax"));
    let e = err("- list: l\n  items: [a]\n  append: true\n  override:\n    items: append\n");
    assert!(
        e.message
            .contains("'append' and 'override' cannot be used together")
    );
    let e = err("- list: l\n  items: [a]\n  override:\n    items: append\n");
    assert!(e.message.contains("not defined"));
    let e = err(
        "- rule: r\n  desc: d\n  condition: proc.name = x\n  output: o\n  priority: INFO\n  exceptions:\n    - name: e\n      fields: [proc.name, user.name]\n      values: [[a]]\n",
    );
    assert_eq!(e.location.line, 7);
    assert!(
        e.to_string()
            .contains("rule 'r': exception 'e': fields and values lists must have equal length"),
        "{e}"
    );
    let e = err("- macro: m\n  condition: proc.name = (\n");
    assert!(
        e.to_string()
            .starts_with("bad.yaml:2:14: macro 'm': condition: expected a string value"),
        "{e}"
    );
    // As in Falco, `<`, `<=`, `>`, `>=` take numbers only.
    let e =
        err("- rule: r\n  desc: d\n  condition: proc.name < m\n  output: o\n  priority: INFO\n");
    assert!(e.message.contains("expected a number value"), "{e}");
    let e = err("just a string");
    assert!(e.message.contains("not a YAML sequence"));
}

#[test]
fn required_versions_are_accepted_and_noted() {
    let rs = load(
        "- required_engine_version: 0.57.0\n- required_plugin_versions:\n    - name: container\n      version: 0.4.0\n",
    );
    assert_eq!(rs.report().warnings.len(), 2);
}
