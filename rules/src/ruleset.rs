//! A loaded, compiled set of rules, indexed by event type, and the report of what loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::alert::{Alert, Priority};
use crate::compile::{Compiler, SkipReason};
use crate::document::{Collected, Warning};
use crate::error::{LoadError, Location};
use crate::eval::Node;
use crate::event::{EventType, EventView, FieldArg, Value};
use crate::fields::FieldId;
use crate::output::OutputFormat;

/// One rules file's text and the name errors will use for it.
#[derive(Clone, Debug)]
pub struct RulesSource {
    /// Shown in errors and reports (usually the path).
    pub name: String,
    /// The YAML.
    pub text: String,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    name: Arc<str>,
    desc: String,
    priority: Priority,
    tags: Arc<[String]>,
    enabled: bool,
    location: Location,
    output: OutputFormat,
    event_types: Vec<EventType>,
}

impl Rule {
    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `desc`.
    pub fn desc(&self) -> &str {
        &self.desc
    }
    /// `priority`.
    pub fn priority(&self) -> Priority {
        self.priority
    }
    /// `tags`.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }
    /// Whether the rule is evaluated (`enabled: false` rules compile but never fire).
    pub fn enabled(&self) -> bool {
        self.enabled
    }
    /// Where the rule is defined.
    pub fn location(&self) -> &Location {
        &self.location
    }
    /// The event types the rule can fire on.
    pub fn event_types(&self) -> &[EventType] {
        &self.event_types
    }

    /// The output with the event's values substituted.
    pub fn render_output<E: EventView + ?Sized>(&self, ev: &E) -> String {
        self.output.render(ev)
    }

    /// The alert for this rule firing on `ev` at `time` (the caller's clock, used by folding).
    pub fn alert<E: EventView + ?Sized>(&self, ev: &E, time: u64) -> Alert {
        let container_id = match ev.field(FieldId::ContainerId, FieldArg::None) {
            Value::Str(s) => s.to_string(),
            _ => String::new(),
        };
        Alert {
            rule: self.name.clone(),
            priority: self.priority,
            tags: self.tags.clone(),
            output: self.output.render(ev),
            fields: self.output.fields(ev),
            container_id,
            time,
            count: 1,
            folded: false,
        }
    }
}

/// What happened to one rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleStatus {
    /// Compiled; fires on these event types (if enabled).
    Compiled(Vec<EventType>),
    /// Valid, but needs what Peregrine does not have.
    Skipped(SkipReason),
}

/// One rule in the load report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleReport {
    /// Rule name.
    pub name: String,
    /// Where it was (first) defined.
    pub location: Location,
    /// `enabled` after all overrides.
    pub enabled: bool,
    /// Compiled or skipped, and why.
    pub status: RuleStatus,
    /// Output fields Peregrine does not capture (they print `<NA>`).
    pub output_fields_not_captured: Vec<String>,
    /// Output `%names` that are not fields at all (they print `<NA>`).
    pub output_fields_unknown: Vec<String>,
}

/// Counts for one file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileCounts {
    /// Rules defined (after overrides: one per name).
    pub parsed: usize,
    /// Rules compiled.
    pub compiled: usize,
    /// Rules skipped, by [`SkipReason::category`].
    pub skipped: BTreeMap<String, usize>,
}

/// What a load produced, rule by rule.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Every rule, in definition order.
    pub rules: Vec<RuleReport>,
    /// Non-fatal remarks.
    pub warnings: Vec<Warning>,
    /// Files, in load order.
    pub files: Vec<Arc<str>>,
}

impl LoadReport {
    /// Counts for the rules first defined in `file`.
    pub fn counts(&self, file: &str) -> FileCounts {
        let mut c = FileCounts::default();
        for r in self.rules.iter().filter(|r| &*r.location.file == file) {
            c.parsed += 1;
            match &r.status {
                RuleStatus::Compiled(_) => c.compiled += 1,
                RuleStatus::Skipped(s) => {
                    *c.skipped.entry(s.category().to_string()).or_default() += 1
                }
            }
        }
        c
    }

    /// The skipped rules with their reasons.
    pub fn skipped(&self) -> impl Iterator<Item = (&str, &SkipReason)> {
        self.rules.iter().filter_map(|r| match &r.status {
            RuleStatus::Skipped(s) => Some((r.name.as_str(), s)),
            RuleStatus::Compiled(_) => None,
        })
    }
}

/// Compiled rules, ready to evaluate. Immutable: reloading builds a new one.
pub struct Ruleset {
    rules: Vec<Rule>,
    /// Per event type, the enabled rules that can fire on it, each with its condition
    /// specialised for that type; in definition order.
    by_type: [Vec<(u32, Node)>; 4],
    report: LoadReport,
}

impl std::fmt::Debug for Ruleset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ruleset")
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

/// Lists the rules files at `path`: the file itself, or a directory's `*.yaml`/`*.yml` files
/// by name, skipping hidden entries (kubelet's `..data` and timestamped directories).
pub fn rules_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let p = entry?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        if (name.ends_with(".yaml") || name.ends_with(".yml")) && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

impl Ruleset {
    /// Loads rules from texts, in order (later files override earlier ones).
    pub fn from_sources(sources: &[RulesSource]) -> Result<Ruleset, LoadError> {
        let mut col = Collected::default();
        for s in sources {
            col.add_file(&s.name, &s.text)?;
        }
        Self::compile(col)
    }

    /// Loads rules files or directories of them (see [`rules_files`]), in order.
    pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Result<Ruleset, LoadError> {
        let mut sources = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let files = rules_files(p).map_err(|e| io_error(p, &e))?;
            for f in files {
                let text = std::fs::read_to_string(&f).map_err(|e| io_error(&f, &e))?;
                sources.push(RulesSource {
                    name: f.display().to_string(),
                    text,
                });
            }
        }
        Self::from_sources(&sources)
    }

    fn compile(col: Collected) -> Result<Ruleset, LoadError> {
        let compiler = Compiler::new(&col)?;
        let mut rules = Vec::new();
        let mut by_type: [Vec<(u32, Node)>; 4] = Default::default();
        let mut report = LoadReport {
            warnings: col.warnings.clone(),
            files: col.files.clone(),
            ..Default::default()
        };
        for def in &col.rules {
            let output = OutputFormat::parse(&def.output);
            let status = match compiler.rule(def)? {
                Ok(compiled) => {
                    let idx = u32::try_from(rules.len()).unwrap_or(u32::MAX);
                    let types: Vec<EventType> = compiled.programs.iter().map(|(t, _)| *t).collect();
                    if def.enabled {
                        for (t, node) in compiled.programs {
                            by_type[t.index()].push((idx, node));
                        }
                    }
                    // Report the file that first defined the rule: the per-file counts are
                    // about what each file brings.
                    let mut location = def.loc.clone();
                    if let Some(f) = col.files.get(def.file_index) {
                        location.file = f.clone();
                    }
                    rules.push(Rule {
                        name: Arc::from(def.name.as_str()),
                        desc: def.desc.clone(),
                        priority: def.priority,
                        tags: Arc::from(def.tags.clone()),
                        enabled: def.enabled,
                        location,
                        output: output.clone(),
                        event_types: types.clone(),
                    });
                    RuleStatus::Compiled(types)
                }
                Err(reason) => RuleStatus::Skipped(reason),
            };
            let mut location = def.loc.clone();
            if let Some(f) = col.files.get(def.file_index) {
                location.file = f.clone();
            }
            report.rules.push(RuleReport {
                name: def.name.clone(),
                location,
                enabled: def.enabled,
                status,
                output_fields_not_captured: output.not_available.clone(),
                output_fields_unknown: output.unknown.clone(),
            });
        }
        Ok(Ruleset {
            rules,
            by_type,
            report,
        })
    }

    /// Calls `on_match` for every enabled rule whose condition holds for `ev`, in definition
    /// order. Only rules that can fire on `ev`'s type are looked at. (Falco's default
    /// `rule_matching: first` stops at the first: use [`Ruleset::first_match`] for that.)
    #[inline]
    pub fn evaluate<E: EventView + ?Sized>(&self, ev: &E, mut on_match: impl FnMut(&Rule)) {
        for (idx, node) in &self.by_type[ev.evt_type().index()] {
            if node.eval(ev)
                && let Some(rule) = self.rules.get(*idx as usize)
            {
                on_match(rule);
            }
        }
    }

    /// The first enabled rule whose condition holds for `ev`.
    pub fn first_match<E: EventView + ?Sized>(&self, ev: &E) -> Option<&Rule> {
        self.by_type[ev.evt_type().index()]
            .iter()
            .find(|(_, node)| node.eval(ev))
            .and_then(|(idx, _)| self.rules.get(*idx as usize))
    }

    /// Number of matching rules for `ev` (benchmarks, tests).
    pub fn count_matches<E: EventView + ?Sized>(&self, ev: &E) -> usize {
        let mut n = 0;
        self.evaluate(ev, |_| n += 1);
        n
    }

    /// Every compiled rule (enabled or not).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// A compiled rule by name.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name() == name)
    }

    /// What loaded and what did not.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// An empty ruleset (nothing fires).
    pub fn empty() -> Ruleset {
        Ruleset {
            rules: Vec::new(),
            by_type: Default::default(),
            report: LoadReport::default(),
        }
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> LoadError {
    LoadError::new(
        Location {
            file: Arc::from(path.display().to_string()),
            line: 0,
            col: 0,
        },
        None,
        format!("cannot read: {e}"),
    )
}
