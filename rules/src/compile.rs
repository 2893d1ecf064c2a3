//! From collected rule text to evaluators: parse conditions, expand macros and lists, resolve
//! fields against the catalogue, type the values, then specialise the condition for each event
//! type Peregrine produces (folding `evt.type` tests and fields that cannot exist on that type).
//!
//! Two kinds of failure: a broken rules file (syntax, undefined macro, a value of the wrong type)
//! is a [`LoadError`] and nothing loads, as in Falco; a valid rule that needs something Peregrine
//! does not capture is *skipped* with a [`SkipReason`] and the rest loads.

use std::collections::{HashMap, HashSet};

use crate::document::{Collected, Condition, Entry, ExceptionDef, RuleDef};
use crate::error::{ItemKind, LoadError, Location};
use crate::eval::{
    Access as EAccess, Check, Cidr, Glob, IpPred, Missing, Node, NumOp, NumPred, PathSet, Pred,
    StrPred, StrSet,
};
use crate::event::{EventType, TypeMask, Value};
use crate::fields::{self, Access, FieldDef, FieldId, FieldType};
use crate::lexer::{Cursor, unescape};
use crate::parser::{self, Expr, Lhs, Op, ParseError, Rhs, Val};

/// Why a valid rule was not compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The rule can only match event types Peregrine does not capture (listed).
    EventTypesNotCaptured(Vec<String>),
    /// The condition is false for every event Peregrine produces.
    NeverMatches,
    /// Fields (or operators, syntax) the rule needs that Peregrine cannot evaluate.
    Missing {
        /// Known Falco fields Peregrine does not capture yet.
        not_captured: Vec<String>,
        /// Names not in the catalogue at all.
        unknown: Vec<String>,
        /// Operators or syntax not supported (transformers, modifiers...).
        unsupported: Vec<String>,
    },
    /// The rule is for another event source (`k8s_audit`, plugins).
    UnsupportedSource(String),
}

impl SkipReason {
    /// A short category, for counting.
    pub fn category(&self) -> &'static str {
        match self {
            SkipReason::EventTypesNotCaptured(_) => "event types not captured",
            SkipReason::NeverMatches => "never matches",
            SkipReason::Missing {
                unknown,
                not_captured,
                ..
            } => {
                if !unknown.is_empty() {
                    "unknown field"
                } else if !not_captured.is_empty() {
                    "field not captured"
                } else {
                    "unsupported operator or syntax"
                }
            }
            SkipReason::UnsupportedSource(_) => "unsupported source",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::EventTypesNotCaptured(t) => write!(
                f,
                "needs event types Peregrine does not capture: {}",
                t.join(", ")
            ),
            SkipReason::NeverMatches => {
                f.write_str("the condition is false for every event Peregrine produces")
            }
            SkipReason::Missing {
                not_captured,
                unknown,
                unsupported,
            } => {
                let mut parts = Vec::new();
                if !unknown.is_empty() {
                    parts.push(format!("unknown fields: {}", unknown.join(", ")));
                }
                if !not_captured.is_empty() {
                    parts.push(format!("fields not captured: {}", not_captured.join(", ")));
                }
                if !unsupported.is_empty() {
                    parts.push(format!("not supported: {}", unsupported.join(", ")));
                }
                f.write_str(&parts.join("; "))
            }
            SkipReason::UnsupportedSource(s) => {
                write!(f, "source '{s}' is not supported (only syscall)")
            }
        }
    }
}

/// A rule's condition, compiled per event type.
pub(crate) struct CompiledCondition {
    pub(crate) programs: Vec<(EventType, Node)>,
}

// Macro expansion copies subtrees: bound the result so a hostile file cannot exhaust memory.
const MAX_NODES: usize = 2_000_000;
const MAX_LIST_VALUES: usize = 1_000_000;

/// Where the text being compiled came from, for error messages.
#[derive(Clone, Copy)]
enum Origin<'a> {
    Rule(&'a Condition),
    Macro(&'a str, &'a Condition),
    Exception(&'a str, &'a Location),
}

pub(crate) struct Compiler<'a> {
    col: &'a Collected,
    macros: HashMap<&'a str, Expr>,
}

impl<'a> Compiler<'a> {
    /// Parses every macro and checks the references between them (undefined, recursive): a
    /// broken macro breaks the file, used or not, as in Falco.
    pub(crate) fn new(col: &'a Collected) -> Result<Self, LoadError> {
        let mut macros = HashMap::new();
        for m in &col.macros {
            let text = m.cond.text();
            let expr = parser::parse(&text).map_err(|e| {
                parse_error(
                    Some((ItemKind::Macro, m.name.clone())),
                    &m.cond,
                    &text,
                    &e,
                    "condition",
                )
            })?;
            macros.insert(m.name.as_str(), expr);
        }
        let c = Compiler { col, macros };
        for m in &col.macros {
            let mut refs = Vec::new();
            if let Some(e) = c.macros.get(m.name.as_str()) {
                macro_refs(e, &mut refs);
            }
            for (name, _) in refs {
                if !c.macros.contains_key(name.as_str()) {
                    return Err(LoadError::new(
                        m.cond.pieces[0].loc.clone(),
                        Some((ItemKind::Macro, m.name.clone())),
                        format!("undefined macro '{name}' used in condition"),
                    ));
                }
            }
        }
        c.check_cycles()?;
        Ok(c)
    }

    fn check_cycles(&self) -> Result<(), LoadError> {
        // 0 = unvisited, 1 = on the stack, 2 = done.
        let mut state: HashMap<&str, u8> = HashMap::new();
        for m in &self.col.macros {
            let mut path = Vec::new();
            self.visit(m.name.as_str(), &mut state, &mut path)?;
        }
        Ok(())
    }

    fn visit<'s>(
        &'s self,
        name: &'s str,
        state: &mut HashMap<&'s str, u8>,
        path: &mut Vec<&'s str>,
    ) -> Result<(), LoadError> {
        match state.get(name) {
            Some(2) => return Ok(()),
            Some(1) => {
                let start = path.iter().position(|n| *n == name).unwrap_or(0);
                let mut cycle: Vec<&str> = path[start..].to_vec();
                cycle.push(name);
                let m = self.col.macro_def(name);
                let loc = m
                    .map(|m| m.loc.clone())
                    .unwrap_or_else(|| unknown_loc(self.col));
                return Err(LoadError::new(
                    loc,
                    Some((ItemKind::Macro, name.to_string())),
                    format!("macro recursion: {}", cycle.join(" -> ")),
                ));
            }
            _ => {}
        }
        state.insert(name, 1);
        path.push(name);
        if let Some(e) = self.macros.get(name) {
            let mut refs = Vec::new();
            macro_refs(e, &mut refs);
            let mut seen = HashSet::new();
            for (r, _) in refs {
                if seen.insert(r.clone())
                    && let Some((k, _)) = self.macros.get_key_value(r.as_str())
                {
                    self.visit(k, state, path)?;
                }
            }
        }
        path.pop();
        state.insert(name, 2);
        Ok(())
    }

    /// Compiles one rule: `Ok(Err(reason))` when it is valid but cannot run on Peregrine events.
    pub(crate) fn rule(
        &self,
        rule: &RuleDef,
    ) -> Result<Result<CompiledCondition, SkipReason>, LoadError> {
        let item = Some((ItemKind::Rule, rule.name.clone()));
        if rule.source != "syscall" {
            // Other sources have their own fields (`ka.*`, plugins): nothing here can check them.
            return Ok(Err(SkipReason::UnsupportedSource(rule.source.clone())));
        }
        let text = rule.cond.text();
        let expr = parser::parse(&text)
            .map_err(|e| parse_error(item.clone(), &rule.cond, &text, &e, "condition"))?;
        let mut r = Resolver {
            c: self,
            item: item.clone(),
            stack: Vec::new(),
            nodes: 0,
            unknown: Vec::new(),
            mentioned_types: Vec::new(),
        };
        let mut root = r.resolve(&expr, Origin::Rule(&rule.cond))?;
        for ex in &rule.exceptions {
            if let Some(ex_expr) = exception_expr(ex, &item)? {
                let n = r.resolve(&ex_expr, Origin::Exception(&ex.name, &ex.loc))?;
                root = Node::And(vec![root, Node::Not(Box::new(n))]);
            }
        }
        let mut unknown = r.unknown;
        sort_dedup(&mut unknown);
        let mut programs = Vec::new();
        let mut missing = Vec::new();
        for t in EventType::ALL {
            let n = specialize(&root, t);
            if matches!(n, Node::Const(false)) {
                continue;
            }
            collect_missing(&n, &mut missing);
            programs.push((t, n));
        }
        if !unknown.is_empty() || !missing.is_empty() {
            let mut not_captured = Vec::new();
            let mut unsupported = Vec::new();
            for m in missing {
                match m {
                    Missing::NotCaptured(f) => not_captured.push(f),
                    Missing::Unsupported(u) => unsupported.push(u),
                    Missing::Unknown(_) => {}
                }
            }
            sort_dedup(&mut not_captured);
            sort_dedup(&mut unsupported);
            return Ok(Err(SkipReason::Missing {
                not_captured,
                unknown,
                unsupported,
            }));
        }
        if programs.is_empty() {
            let mut types: Vec<String> = r
                .mentioned_types
                .into_iter()
                .filter(|t| EventType::from_name(t).is_none())
                .collect();
            sort_dedup(&mut types);
            return Ok(Err(if types.is_empty() {
                SkipReason::NeverMatches
            } else {
                SkipReason::EventTypesNotCaptured(types)
            }));
        }
        Ok(Ok(CompiledCondition { programs }))
    }
}

fn unknown_loc(col: &Collected) -> Location {
    Location {
        file: col
            .files
            .last()
            .cloned()
            .unwrap_or_else(|| "<rules>".into()),
        line: 0,
        col: 0,
    }
}

fn sort_dedup(v: &mut Vec<String>) {
    v.sort();
    v.dedup();
}

fn macro_refs(e: &Expr, out: &mut Vec<(String, usize)>) {
    match e {
        Expr::And(v) | Expr::Or(v) => v.iter().for_each(|c| macro_refs(c, out)),
        Expr::Not(c) => macro_refs(c, out),
        Expr::Macro { name, at } => out.push((name.clone(), *at)),
        Expr::Check { .. } => {}
    }
}

/// Describes an error at byte `at` of a condition: the piece's location, the line and column
/// inside the condition text, and the text near it.
fn parse_error(
    item: Option<(ItemKind, String)>,
    cond: &Condition,
    text: &str,
    e: &ParseError,
    label: &str,
) -> LoadError {
    position_error(item, cond, text, e.at, label, &e.message)
}

fn position_error(
    item: Option<(ItemKind, String)>,
    cond: &Condition,
    text: &str,
    at: usize,
    label: &str,
    msg: &str,
) -> LoadError {
    let (loc, off) = cond.locate(at);
    let piece = cond
        .pieces
        .iter()
        .find(|p| std::ptr::eq(&p.loc, loc))
        .map(|p| p.text.as_str())
        .unwrap_or(text);
    let (l, c) = Cursor::line_col(piece, off);
    let near: String = text
        .get(at.min(text.len())..)
        .unwrap_or("")
        .chars()
        .take(30)
        .collect();
    let near = near.split_whitespace().collect::<Vec<_>>().join(" ");
    let near = if near.is_empty() {
        "end of condition".to_string()
    } else {
        format!("'{near}'")
    };
    LoadError::new(
        loc.clone(),
        item,
        format!("{label}: {msg} (condition line {l}, column {c}, near {near})"),
    )
}

/// An exception as a condition: `(f1 c1 v1 and f2 c2 v2) or (...)`, Falco's construction.
fn exception_expr(
    ex: &ExceptionDef,
    item: &Option<(ItemKind, String)>,
) -> Result<Option<Expr>, LoadError> {
    let err = |msg: String| {
        LoadError::new(
            ex.loc.clone(),
            item.clone(),
            format!("exception '{}': {msg}", ex.name),
        )
    };
    let field_ref = |s: &str| -> Result<Lhs, LoadError> {
        let (name, arg) =
            parser::parse_field_ref(s).ok_or_else(|| err(format!("'{s}' is not a field")))?;
        Ok(Lhs::Field { name, arg })
    };
    let op_of = |s: &str| -> Result<Result<Op, String>, LoadError> {
        let s = s.trim();
        if let Some(op) = Op::from_name(s) {
            return Ok(Ok(op));
        }
        let mut words = s.split_whitespace();
        match (
            words.next().and_then(Op::from_name),
            words.next(),
            words.next(),
        ) {
            (Some(_), Some("oneof" | "anyof" | "allof"), None) => {
                Ok(Err(format!("operator modifier '{s}'")))
            }
            _ => Err(err(format!("'{s}' is not a supported comparison operator"))),
        }
    };
    let scalar_val = |s: &str| -> Result<Val, LoadError> { item_val(s).map_err(&err) };
    match ex.fields.as_ref() {
        Some(Entry::Scalar(field)) => {
            // One field: `field comp (v1, v2, ...)`, comp defaulting to `in`.
            let comp = match &ex.comps {
                None => "in".to_string(),
                Some(Entry::Scalar(c)) => c.trim().to_string(),
                Some(Entry::List(_)) => {
                    return Err(err("fields and comps must both be strings".into()));
                }
            };
            let op = op_of(&comp)?;
            if let Ok(o) = op
                && !o.is_list_op()
            {
                return Err(err(
                    "when fields is a single value, comps must be one of in, pmatch, intersects"
                        .into(),
                ));
            }
            let mut vals = Vec::new();
            for v in &ex.values {
                match v {
                    Entry::Scalar(s) => vals.push(scalar_val(s)?),
                    Entry::List(_) => {
                        return Err(err("expected values to be a list of strings".into()));
                    }
                }
            }
            if vals.is_empty() {
                return Ok(None);
            }
            Ok(Some(Expr::Check {
                lhs: field_ref(field)?,
                op,
                rhs: Rhs::List(vals),
                at: 0,
            }))
        }
        Some(Entry::List(fields)) => {
            let comps: Vec<String> = match &ex.comps {
                None => vec!["=".to_string(); fields.len()],
                Some(Entry::List(c)) => c
                    .iter()
                    .map(|e| match e {
                        Entry::Scalar(s) => Ok(s.trim().to_string()),
                        Entry::List(_) => Err(err("comps must be strings".into())),
                    })
                    .collect::<Result<_, _>>()?,
                Some(Entry::Scalar(_)) => {
                    return Err(err("fields and comps must both be lists".into()));
                }
            };
            if comps.len() != fields.len() {
                return Err(err("fields and comps lists must have equal length".into()));
            }
            let mut alts = Vec::new();
            for tuple in &ex.values {
                let Entry::List(vals) = tuple else {
                    return Err(err("each value must be a list, as long as fields".into()));
                };
                if vals.len() != fields.len() {
                    return Err(err("fields and values lists must have equal length".into()));
                }
                let mut checks = Vec::new();
                for ((f, comp), v) in fields.iter().zip(&comps).zip(vals) {
                    let Entry::Scalar(f) = f else {
                        return Err(err("fields must be strings".into()));
                    };
                    let op = op_of(comp)?;
                    let listy = match op {
                        Ok(o) => o.is_list_op(),
                        Err(_) => true,
                    };
                    let rhs = match (v, listy) {
                        (Entry::List(items), true) => {
                            let mut out = Vec::new();
                            for i in items {
                                let Entry::Scalar(s) = i else {
                                    return Err(err("nested lists in values".into()));
                                };
                                out.push(scalar_val(s)?);
                            }
                            Rhs::List(out)
                        }
                        (Entry::List(_), false) => {
                            return Err(err(format!(
                                "a list value needs a list operator, not '{comp}'"
                            )));
                        }
                        (Entry::Scalar(s), true) => {
                            let src = if s.starts_with('(') {
                                s.clone()
                            } else {
                                format!("({s})")
                            };
                            Rhs::List(
                                parser::parse_list_literal(&src)
                                    .map_err(|e| err(format!("value '{s}': {}", e.message)))?,
                            )
                        }
                        (Entry::Scalar(s), false) => Rhs::Value(scalar_val(s)?),
                    };
                    checks.push(Expr::Check {
                        lhs: field_ref(f)?,
                        op,
                        rhs,
                        at: 0,
                    });
                }
                alts.push(if checks.len() == 1 {
                    checks.remove(0)
                } else {
                    Expr::And(checks)
                });
            }
            Ok(match alts.len() {
                0 => None,
                1 => alts.pop(),
                _ => Some(Expr::Or(alts)),
            })
        }
        None => Err(err("missing 'fields'".into())),
    }
}

/// A list item or exception value as a literal: Falco pastes it into the condition, so
/// `'"a b"'` is the quoted string `a b`, while a bare word may name another list.
fn item_val(s: &str) -> Result<Val, String> {
    let b = s.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        return Ok(Val {
            text: unescape(s)?,
            quoted: true,
            at: 0,
        });
    }
    // Falco quotes items containing a space: they are literals, never list names.
    Ok(Val {
        text: s.to_string(),
        quoted: s.contains(' '),
        at: 0,
    })
}

struct Resolver<'c, 'a> {
    c: &'c Compiler<'a>,
    item: Option<(ItemKind, String)>,
    stack: Vec<String>,
    nodes: usize,
    unknown: Vec<String>,
    mentioned_types: Vec<String>,
}

impl Resolver<'_, '_> {
    fn error(&self, origin: Origin<'_>, at: usize, msg: &str) -> LoadError {
        match origin {
            Origin::Rule(cond) => {
                position_error(self.item.clone(), cond, &cond.text(), at, "condition", msg)
            }
            Origin::Macro(name, cond) => position_error(
                self.item.clone(),
                cond,
                &cond.text(),
                at,
                &format!("in macro '{name}'"),
                msg,
            ),
            Origin::Exception(name, loc) => LoadError::new(
                loc.clone(),
                self.item.clone(),
                format!("exception '{name}': {msg}"),
            ),
        }
    }

    fn count(&mut self, origin: Origin<'_>, at: usize) -> Result<(), LoadError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(self.error(origin, at, "condition too large after macro expansion"));
        }
        Ok(())
    }

    fn resolve(&mut self, e: &Expr, origin: Origin<'_>) -> Result<Node, LoadError> {
        self.count(origin, 0)?;
        Ok(match e {
            Expr::And(v) => Node::And(
                v.iter()
                    .map(|c| self.resolve(c, origin))
                    .collect::<Result<_, _>>()?,
            ),
            Expr::Or(v) => Node::Or(
                v.iter()
                    .map(|c| self.resolve(c, origin))
                    .collect::<Result<_, _>>()?,
            ),
            Expr::Not(c) => Node::Not(Box::new(self.resolve(c, origin)?)),
            Expr::Macro { name, at } => {
                let Some((key, expr)) = self.c.macros.get_key_value(name.as_str()) else {
                    return Err(self.error(origin, *at, &format!("undefined macro '{name}'")));
                };
                if self.stack.iter().any(|s| s == name) {
                    return Err(self.error(
                        origin,
                        *at,
                        &format!("macro recursion: {} -> {name}", self.stack.join(" -> ")),
                    ));
                }
                let Some(def) = self.c.col.macro_def(key) else {
                    return Err(self.error(origin, *at, &format!("undefined macro '{name}'")));
                };
                self.stack.push(name.clone());
                let n = self.resolve(expr, Origin::Macro(&def.name, &def.cond));
                self.stack.pop();
                n?
            }
            Expr::Check { lhs, op, rhs, at } => self.check(lhs, op, rhs, *at, origin)?,
        })
    }

    fn expand_values(
        &self,
        items: &[Val],
        stack: &mut Vec<String>,
        out: &mut Vec<String>,
        origin: Origin<'_>,
        at: usize,
    ) -> Result<(), LoadError> {
        for v in items {
            if !v.quoted
                && let Some(list) = self.c.col.list(&v.text)
            {
                // A list naming itself (directly or not) keeps the name as a literal, as
                // Falco's single textual pass would.
                if !stack.contains(&v.text) {
                    stack.push(v.text.clone());
                    let vals: Vec<Val> = list
                        .items
                        .iter()
                        .map(|i| item_val(i))
                        .collect::<Result<_, _>>()
                        .map_err(|m| {
                            LoadError::new(
                                list.loc.clone(),
                                Some((ItemKind::List, list.name.clone())),
                                format!("item: {m}"),
                            )
                        })?;
                    self.expand_values(&vals, stack, out, origin, at)?;
                    stack.pop();
                    continue;
                }
            }
            if out.len() >= MAX_LIST_VALUES {
                return Err(self.error(origin, at, "list too large after expansion"));
            }
            out.push(v.text.clone());
        }
        Ok(())
    }

    fn check(
        &mut self,
        lhs: &Lhs,
        op: &Result<Op, String>,
        rhs: &Rhs,
        at: usize,
        origin: Origin<'_>,
    ) -> Result<Node, LoadError> {
        let all = TypeMask::ALL;
        let (name, arg) = match lhs {
            Lhs::Field { name, arg } => (name.as_str(), arg.as_deref()),
            Lhs::Transformer(t) => {
                return Ok(Node::Missing {
                    what: Missing::Unsupported(t.clone()),
                    events: all,
                });
            }
        };
        let Some(def) = fields::lookup(name) else {
            self.unknown.push(name.to_string());
            return Ok(Node::Missing {
                what: Missing::Unknown(name.to_string()),
                events: all,
            });
        };
        let op = match op {
            Ok(o) => *o,
            Err(what) => {
                return Ok(Node::Missing {
                    what: Missing::Unsupported(what.clone()),
                    events: def.events.mask(),
                });
            }
        };
        if let Rhs::Unsupported(t) = rhs {
            return Ok(Node::Missing {
                what: Missing::Unsupported(t.clone()),
                events: def.events.mask(),
            });
        }
        if let Access::NotCaptured { .. } = def.access {
            return Ok(Node::Missing {
                what: Missing::NotCaptured(name.to_string()),
                events: def.events.mask(),
            });
        }
        // Shape: `exists` alone, list operators with a list, the others with one value.
        let raw: Vec<Val> = match (op, rhs) {
            (Op::Exists, Rhs::None) => Vec::new(),
            (o, Rhs::List(items)) if o.is_list_op() => items.clone(),
            (o, Rhs::ListName(v)) if o.is_list_op() => vec![v.clone()],
            (o, Rhs::Value(v)) if !o.is_list_op() && o != Op::Exists => vec![v.clone()],
            _ => {
                return Err(self.error(
                    origin,
                    at,
                    &format!("operator '{}' does not fit its operand", op.name()),
                ));
            }
        };
        let mut values = Vec::new();
        if op.is_list_op() {
            self.expand_values(&raw, &mut Vec::new(), &mut values, origin, at)?;
        } else {
            values.extend(raw.into_iter().map(|v| v.text));
        }
        let events = def.events.mask();
        let no_arg = |this: &Self| -> Result<(), LoadError> {
            match arg {
                Some(a) => Err(this.error(
                    origin,
                    at,
                    &format!("field '{name}' does not take an argument ('[{a}]')"),
                )),
                None => Ok(()),
            }
        };
        let check = |field: FieldId, access: EAccess, pred: Pred| {
            Node::Check(Check {
                field,
                access,
                pred,
                events,
            })
        };
        Ok(match def.access {
            Access::EvtType => {
                no_arg(self)?;
                self.mentioned_types.extend(values.iter().cloned());
                let pred = self.pred(def, FieldType::Str, op, &values, origin, at)?;
                let mut mask = TypeMask::default();
                for t in EventType::ALL {
                    if pred.test(Value::Str(t.name())) {
                        mask.insert(t);
                    }
                }
                Node::EvtType(mask)
            }
            Access::Constant(v) => {
                no_arg(self)?;
                let pred = self.pred(def, def.ty, op, &values, origin, at)?;
                Node::Const(pred.test(Value::Str(v)))
            }
            Access::Direct(id) => {
                no_arg(self)?;
                check(
                    id,
                    EAccess::Plain,
                    self.pred(def, def.ty, op, &values, origin, at)?,
                )
            }
            Access::Alias(id, level) => {
                no_arg(self)?;
                let access = if level == 0 {
                    EAccess::Plain
                } else {
                    EAccess::Index(level)
                };
                check(id, access, self.pred(def, def.ty, op, &values, origin, at)?)
            }
            Access::Ancestor { id, self_field } => {
                let pred = self.pred(def, def.ty, op, &values, origin, at)?;
                match arg {
                    None => check(id, EAccess::AnyAncestor, pred),
                    Some(a) => match a.trim().parse::<u32>() {
                        Ok(0) => check(self_field, EAccess::Plain, pred),
                        Ok(n) => check(id, EAccess::Index(n), pred),
                        Err(_) => return Err(self.error(
                            origin,
                            at,
                            &format!(
                                "'{name}[{a}]': the argument must be an ancestor level (0, 1, 2...)"
                            ),
                        )),
                    },
                }
            }
            Access::Keyed(id) => {
                let Some(key) = arg else {
                    return Err(self.error(
                        origin,
                        at,
                        &format!("field '{name}' needs a key: {name}[key]"),
                    ));
                };
                check(
                    id,
                    EAccess::Key(key.into()),
                    self.pred(def, def.ty, op, &values, origin, at)?,
                )
            }
            Access::List(id) => {
                no_arg(self)?;
                let (access, pred) =
                    match op {
                        Op::Exists => (EAccess::ListAny, Pred::Exists),
                        Op::In => (
                            EAccess::ListAll,
                            Pred::Str(StrPred::In(StrSet::new(values))),
                        ),
                        Op::Intersects => (
                            EAccess::ListAny,
                            Pred::Str(StrPred::In(StrSet::new(values))),
                        ),
                        _ => return Err(self.error(
                            origin,
                            at,
                            &format!(
                                "list field '{name}' supports only 'exists', 'in' and 'intersects'"
                            ),
                        )),
                    };
                check(id, access, pred)
            }
            Access::Pair(a, b) => {
                no_arg(self)?;
                let pred = self.pred(def, def.ty, op, &values, origin, at)?;
                let pair = vec![
                    check(a, EAccess::Plain, pred.clone()),
                    check(b, EAccess::Plain, pred),
                ];
                // `!=` means "neither", every other operator "either" (libsinsp compare_ip/port).
                if op == Op::Ne {
                    Node::And(pair)
                } else {
                    Node::Or(pair)
                }
            }
            Access::Net(id) => {
                no_arg(self)?;
                check(
                    id,
                    EAccess::Plain,
                    self.pred(def, FieldType::IpNet, op, &values, origin, at)?,
                )
            }
            Access::NetPair(a, b) => {
                no_arg(self)?;
                let pred = self.pred(def, FieldType::IpNet, op, &values, origin, at)?;
                let pair = vec![
                    check(a, EAccess::Plain, pred.clone()),
                    check(b, EAccess::Plain, pred),
                ];
                if op == Op::Ne {
                    Node::And(pair)
                } else {
                    Node::Or(pair)
                }
            }
            Access::NotCaptured { .. } => Node::Missing {
                what: Missing::NotCaptured(name.to_string()),
                events,
            },
        })
    }

    /// The predicate for `op values` on a field of type `ty`; operators the type does not
    /// support and values that do not parse are errors in the rules file, as in Falco.
    fn pred(
        &self,
        def: &FieldDef,
        ty: FieldType,
        op: Op,
        values: &[String],
        origin: Origin<'_>,
        at: usize,
    ) -> Result<Pred, LoadError> {
        let bad_op = || {
            self.error(
                origin,
                at,
                &format!(
                    "operator '{}' is not supported for {} field '{}'",
                    op.name(),
                    ty.name(),
                    def.name
                ),
            )
        };
        let first = || values.first().cloned().unwrap_or_default();
        if op == Op::Exists {
            return Ok(Pred::Exists);
        }
        match ty {
            FieldType::Str | FieldType::StrList => {
                let v = first();
                Ok(Pred::Str(match op {
                    Op::Eq => StrPred::Eq(v.into()),
                    Op::Ne => StrPred::Ne(v.into()),
                    Op::Lt => StrPred::Lt(v.into()),
                    Op::Le => StrPred::Le(v.into()),
                    Op::Gt => StrPred::Gt(v.into()),
                    Op::Ge => StrPred::Ge(v.into()),
                    Op::Contains => StrPred::Contains(v.into()),
                    Op::IContains => StrPred::IContains(v.to_ascii_lowercase().into_bytes().into()),
                    Op::StartsWith => StrPred::StartsWith(v.into()),
                    Op::EndsWith => StrPred::EndsWith(v.into()),
                    Op::BContains | Op::BStartsWith => {
                        let bytes = hex(&v).ok_or_else(|| {
                            self.error(
                                origin,
                                at,
                                &format!("'{v}' is not a hex byte string (for {})", op.name()),
                            )
                        })?;
                        if op == Op::BContains {
                            StrPred::BContains(bytes.into())
                        } else {
                            StrPred::BStartsWith(bytes.into())
                        }
                    }
                    Op::Glob => StrPred::Glob(Glob::new(&v, false)),
                    Op::IGlob => StrPred::IGlob(Glob::new(&v, true)),
                    Op::Regex => {
                        // RE2 semantics as libsinsp: the whole value must match.
                        let re = regex::Regex::new(&format!("^(?:{v})$")).map_err(|e| {
                            self.error(origin, at, &format!("invalid regex '{v}': {e}"))
                        })?;
                        StrPred::Regex(re)
                    }
                    Op::In | Op::Intersects => StrPred::In(StrSet::new(values.to_vec())),
                    Op::PMatch => StrPred::PMatch(PathSet::new(values)),
                    Op::Exists => return Err(bad_op()),
                }))
            }
            FieldType::U64 | FieldType::I64 | FieldType::Port => {
                let parse = |s: &String| -> Result<i128, LoadError> {
                    parse_int(s, ty).ok_or_else(|| {
                        self.error(
                            origin,
                            at,
                            &format!(
                                "'{s}' is not a valid {} value for field '{}'",
                                ty.name(),
                                def.name
                            ),
                        )
                    })
                };
                let cmp = |o: NumOp| -> Result<Pred, LoadError> {
                    Ok(Pred::Num(NumPred::Cmp(o, parse(&first())?)))
                };
                match op {
                    Op::Eq => cmp(NumOp::Eq),
                    Op::Ne => cmp(NumOp::Ne),
                    Op::Lt => cmp(NumOp::Lt),
                    Op::Le => cmp(NumOp::Le),
                    Op::Gt => cmp(NumOp::Gt),
                    Op::Ge => cmp(NumOp::Ge),
                    Op::In | Op::Intersects => {
                        let mut v = values.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
                        v.sort_unstable();
                        v.dedup();
                        Ok(Pred::Num(NumPred::In(v.into())))
                    }
                    _ => Err(bad_op()),
                }
            }
            FieldType::Bool => {
                let parse = |s: &String| -> Result<bool, LoadError> {
                    match s.as_str() {
                        "true" => Ok(true),
                        "false" => Ok(false),
                        _ => Err(self.error(
                            origin,
                            at,
                            &format!(
                                "'{s}' is not a valid bool value for field '{}' (true or false)",
                                def.name
                            ),
                        )),
                    }
                };
                match op {
                    Op::Eq => {
                        let b = parse(&first())?;
                        Ok(Pred::Bool {
                            accept_true: b,
                            accept_false: !b,
                        })
                    }
                    Op::Ne => {
                        let b = parse(&first())?;
                        Ok(Pred::Bool {
                            accept_true: !b,
                            accept_false: b,
                        })
                    }
                    Op::In | Op::Intersects => {
                        let (mut t, mut f) = (false, false);
                        for s in values {
                            if parse(s)? {
                                t = true;
                            } else {
                                f = true;
                            }
                        }
                        Ok(Pred::Bool {
                            accept_true: t,
                            accept_false: f,
                        })
                    }
                    _ => Err(bad_op()),
                }
            }
            FieldType::Ip => {
                let ip = |s: &String| s.trim().parse::<std::net::IpAddr>().ok();
                match op {
                    Op::Eq | Op::Ne => {
                        let v = first();
                        let a = ip(&v).ok_or_else(|| {
                            self.error(
                                origin,
                                at,
                                &format!(
                                    "'{v}' is not a valid IP address for field '{}'",
                                    def.name
                                ),
                            )
                        })?;
                        Ok(Pred::Ip(if op == Op::Eq {
                            IpPred::Eq(a)
                        } else {
                            IpPred::Ne(a)
                        }))
                    }
                    Op::In | Op::Intersects => {
                        // Peregrine extension: a network in the list matches the addresses in it.
                        if values.iter().any(|v| v.contains('/')) {
                            return self.pred(def, FieldType::IpNet, op, values, origin, at);
                        }
                        let v = values
                            .iter()
                            .map(|s| {
                                ip(s).ok_or_else(|| {
                                    self.error(
                                        origin,
                                        at,
                                        &format!(
                                            "'{s}' is not a valid IP address for field '{}'",
                                            def.name
                                        ),
                                    )
                                })
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok(Pred::Ip(IpPred::In(v.into())))
                    }
                    _ => Err(bad_op()),
                }
            }
            FieldType::IpNet => {
                let nets = values
                    .iter()
                    .map(|s| {
                        Cidr::parse(s).ok_or_else(|| {
                            self.error(
                                origin,
                                at,
                                &format!(
                                    "'{s}' is not a valid network (a.b.c.d/n) for field '{}'",
                                    def.name
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                match op {
                    Op::Eq | Op::In | Op::Intersects => Ok(Pred::Ip(IpPred::NetIn(nets.into()))),
                    Op::Ne => Ok(Pred::Ip(IpPred::NetNotIn(nets.into()))),
                    _ => Err(bad_op()),
                }
            }
        }
    }
}

fn hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Decimal or `0x` hexadecimal, within the type's range.
fn parse_int(s: &str, ty: FieldType) -> Option<i128> {
    let s = s.trim();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v: i128 = if let Some(h) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i128::from_str_radix(h, 16).ok()?
    } else {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()?
    };
    let v = if neg { -v } else { v };
    let ok = match ty {
        FieldType::U64 => (0..=i128::from(u64::MAX)).contains(&v),
        FieldType::Port => (0..=65535).contains(&v),
        _ => (i128::from(i64::MIN)..=i128::from(i64::MAX)).contains(&v),
    };
    ok.then_some(v)
}

/// The condition as it stands for events of type `t`: `evt.type` tests and checks on fields
/// that cannot exist for `t` become constants, then constants fold away. What is left is
/// ordered so that cheap checks run first (no check has side effects).
pub(crate) fn specialize(n: &Node, t: EventType) -> Node {
    match n {
        Node::Const(b) => Node::Const(*b),
        Node::EvtType(mask) => Node::Const(mask.contains(t)),
        Node::Check(c) => {
            if c.events.contains(t) {
                Node::Check(c.clone())
            } else {
                Node::Const(false)
            }
        }
        Node::Missing { what, events } => {
            if events.contains(t) {
                Node::Missing {
                    what: what.clone(),
                    events: *events,
                }
            } else {
                Node::Const(false)
            }
        }
        Node::Not(c) => match specialize(c, t) {
            Node::Const(b) => Node::Const(!b),
            Node::Not(inner) => *inner,
            other => Node::Not(Box::new(other)),
        },
        Node::And(v) => fold(v, t, true),
        Node::Or(v) => fold(v, t, false),
    }
}

fn fold(children: &[Node], t: EventType, is_and: bool) -> Node {
    // For `and`, true is neutral and false absorbs; for `or`, the reverse.
    let mut out = Vec::with_capacity(children.len());
    for c in children {
        match specialize(c, t) {
            Node::Const(b) if b == is_and => {}
            Node::Const(b) => return Node::Const(b),
            Node::And(inner) if is_and => out.extend(inner),
            Node::Or(inner) if !is_and => out.extend(inner),
            other => out.push(other),
        }
    }
    match out.len() {
        0 => Node::Const(is_and),
        1 => out.pop().unwrap_or(Node::Const(is_and)),
        _ => {
            out.sort_by_key(Node::cost);
            if is_and {
                Node::And(out)
            } else {
                Node::Or(out)
            }
        }
    }
}

fn collect_missing(n: &Node, out: &mut Vec<Missing>) {
    match n {
        Node::Missing { what, .. } => out.push(what.clone()),
        Node::And(v) | Node::Or(v) => v.iter().for_each(|c| collect_missing(c, out)),
        Node::Not(c) => collect_missing(c, out),
        Node::Const(_) | Node::Check(_) | Node::EvtType(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints() {
        assert_eq!(parse_int("0x10", FieldType::U64), Some(16));
        assert_eq!(parse_int("-1", FieldType::U64), None);
        assert_eq!(parse_int("-1", FieldType::I64), Some(-1));
        assert_eq!(parse_int("70000", FieldType::Port), None);
        assert_eq!(parse_int("1.5", FieldType::U64), None);
        assert_eq!(parse_int("", FieldType::U64), None);
    }

    #[test]
    fn hex_strings() {
        assert_eq!(hex("cafebabe"), Some(vec![0xca, 0xfe, 0xba, 0xbe]));
        assert_eq!(hex("abc"), None);
        assert_eq!(hex("zz"), None);
    }

    #[test]
    fn items() {
        assert_eq!(item_val("\"(systemd)\"").unwrap().text, "(systemd)");
        assert!(item_val("\"(systemd)\"").unwrap().quoted);
        assert!(!item_val("bash").unwrap().quoted);
        assert!(item_val("puma reactor").unwrap().quoted);
        assert_eq!(
            item_val(r#""sh -c node -e \"require('nan')\"""#)
                .unwrap()
                .text,
            "sh -c node -e \"require('nan')\""
        );
    }
}
