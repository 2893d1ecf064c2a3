//! Bounded, deterministic fuzzing of the loader: mutated corpus files, mutated conditions and
//! random bytes must give a ruleset or a `LoadError`, never a panic. Seeded, so a failure
//! reproduces; bounded in iterations, so it runs in plain `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

mod common;

use peregrine_rules::{RecordedEvent, RulesSource, Ruleset};

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "\"",
    "'",
    ",",
    " and ",
    " or ",
    " not ",
    "=",
    "!=",
    " in ",
    " exists",
    " contains ",
    " glob ",
    " regex ",
    " pmatch ",
    "proc.aname[",
    "evt.type",
    "%",
    "\n",
    "  ",
    "- ",
    ": ",
    "&a ",
    "*a",
    "|",
    ">",
    "\\",
    "\\x4",
    "0x",
    "-1",
    "tolower(",
    "val(",
    "oneof ",
    "macro",
    "list",
    "rule",
    "append: true",
    "override:",
    "exceptions:",
    "\t",
    "\u{0}",
    "é",
    "\u{feff}",
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut b = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(b.len() + 1);
        match rng.below(5) {
            0 => {
                let n = rng.below(40).min(b.len() - at.min(b.len()));
                b.drain(at..at + n);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                b.splice(at..at, t.bytes());
            }
            2 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            3 if b.len() > 2 => {
                // Duplicate a slice (repeats lists, macros, nesting).
                let s = rng.below(b.len());
                let e = (s + rng.below(200)).min(b.len());
                let chunk = b[s..e].to_vec();
                b.splice(at..at, chunk);
            }
            _ => {
                let t = TOKENS[rng.below(TOKENS.len())].repeat(1 + rng.below(50));
                b.splice(at..at, t.bytes());
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn load(text: String) {
    let src = RulesSource {
        name: "fuzz.yaml".into(),
        text,
    };
    if let Ok(rs) = Ruleset::from_sources(&[src]) {
        // Whatever compiled must evaluate and render without panicking too.
        let ev: RecordedEvent = common::event(common::EXEC_IN_CONTAINER);
        rs.evaluate(&ev, |r| {
            let _ = r.alert(&ev, 0);
        });
    }
}

#[test]
fn mutated_corpus_files_never_panic() {
    let stable = common::corpus_file("falco_rules.yaml").text;
    let sandbox = common::corpus_file("falco-sandbox_rules.yaml").text;
    let mut rng = Rng(0x5eed_0001);
    let start = std::time::Instant::now();
    for i in 0..300 {
        let base = if i % 2 == 0 { &stable } else { &sandbox };
        load(mutate(&mut rng, base));
        // A bound on time as well as iterations, for slow debug builds.
        if start.elapsed().as_secs() > 20 {
            break;
        }
    }
}

#[test]
fn mutated_small_rules_never_panic() {
    let seeds = [
        "- list: l\n  items: [a, \"b c\", '\"d\"']\n- macro: m\n  condition: proc.name in (l) and not proc.aname[2] = x\n- rule: r\n  desc: d\n  condition: m or (evt.type = connect and fd.net != \"10.0.0.0/8\") or proc.cmdline regex 'a.*'\n  output: \"%proc.name %proc.aname[1] %fd.sip\"\n  priority: INFO\n  exceptions:\n    - name: e\n      fields: [proc.name, user.uid]\n      comps: [startswith, in]\n      values:\n        - [x, [0, 1]]\n",
        "- rule: r\n  desc: d\n  condition: proc.exepath glob '/a/[!b-c]*?/\\\\*' and k8s.pod.label[app] exists\n  output: o\n  priority: INFO\n",
    ];
    let mut rng = Rng(0x5eed_0002);
    for i in 0..4000 {
        load(mutate(&mut rng, seeds[i % seeds.len()]));
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..2000 {
        let n = rng.below(300);
        let bytes: Vec<u8> = (0..n)
            .map(|_| {
                // Mostly printable, so the parsers get past the first character.
                let r = rng.next() as u8;
                const ALPHABET: &[u8] = b" -:[]{}()\"',\nabcdefprocnamein=!%.#&*|>";
                if r < 200 {
                    ALPHABET[(r as usize) % ALPHABET.len()]
                } else {
                    r
                }
            })
            .collect();
        load(String::from_utf8_lossy(&bytes).into_owned());
    }
}

#[test]
fn pathological_nesting_is_refused_not_overflowed() {
    for text in [
        format!(
            "- rule: r\n  desc: d\n  condition: {}a{}\n  output: o\n  priority: INFO\n",
            "(".repeat(50_000),
            ")".repeat(50_000)
        ),
        format!("{}\n", "[".repeat(100_000)),
        format!("{}x\n", "- ".repeat(20_000)),
        // Exponential macro growth.
        (0..40)
            .map(|i| {
                if i == 0 {
                    "- macro: m0\n  condition: proc.name = a\n".to_string()
                } else {
                    format!("- macro: m{i}\n  condition: m{p} or m{p}\n", p = i - 1)
                }
            })
            .collect::<String>()
            + "- rule: r\n  desc: d\n  condition: m39\n  output: o\n  priority: INFO\n",
    ] {
        load(text);
    }
}
