//! Peregrine's rules engine: reads Falco rules files, compiles them, evaluates them on events,
//! builds and folds alerts, and reloads them when the files change.
//!
//! # Using it (the agent's side)
//!
//! 1. Implement [`EventView`] for the agent's event: `evt_type()` and `field(FieldId, FieldArg)`
//!    returning a borrowed [`Value`] (`Value::Absent` when unknown). Ancestor fields
//!    (`FieldId::ProcAname`...) are asked with `FieldArg::Index(n)`, n >= 1 (1 = parent); pod
//!    labels with `FieldArg::Index(i)` (from 0, as `key:value`) or `FieldArg::Key(key)`.
//!    [`FieldId`] lists everything that may be asked; [`fields::CATALOGUE`] says what each
//!    Falco name maps to.
//! 2. Load: `let (handle, watcher) = RulesWatcher::start(paths)?;` then
//!    `watcher.spawn(Duration::from_secs(2), |outcome| log(outcome))` (or call
//!    [`RulesWatcher::poll`] from your own timer). A file that does not load gives a
//!    [`LoadError`] naming file, line, column, item and problem; the rules in force stay.
//! 3. Per event (or batch): `let rules = handle.current();` then
//!    `rules.evaluate(&event, |rule| alerts.push(rule.alert(&event, now)))`.
//! 4. Pass alerts through a [`Folder`] (`offer`, and `flush` on a timer) before sending.
//!
//! [`Ruleset::report`] tells which rules compiled and why the others were skipped.
//!
//! # Modules
//!
//! `yaml` (YAML with positions) → `document` (Falco items, append/override) → `lexer`/`parser`
//! (conditions) → `compile` (macros, lists, fields, per-type specialisation) → `eval` (the
//! compiled form) → `ruleset` (index by event type) → `output`/`alert` (rendering, folding);
//! `reload` (watching files); `recorded` (an owned event for tests and benchmarks).

mod alert;
mod compile;
mod document;
mod error;
mod eval;
mod event;
pub mod fields;
mod lexer;
mod output;
mod parser;
#[cfg(feature = "proto")]
pub mod proto_view;
mod recorded;
mod reload;
mod ruleset;
mod yaml;

pub use alert::{Alert, FoldConfig, Folder, Priority};
pub use compile::SkipReason;
pub use document::Warning;
pub use error::{ItemKind, LoadError, Location};
pub use event::{EventType, EventView, FieldArg, Value};
pub use fields::FieldId;
pub use output::NOT_AVAILABLE;
pub use recorded::{OwnedValue, RawValue, RecordError, RecordedEvent};
pub use reload::{PollOutcome, RulesHandle, RulesWatcher, WatcherThread};
pub use ruleset::{
    FileCounts, LoadReport, Rule, RuleReport, RuleStatus, RulesSource, Ruleset, rules_files,
};
