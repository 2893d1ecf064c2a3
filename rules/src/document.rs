//! The Falco rules-file layer: reads `list`, `macro` and `rule` items out of the YAML tree and
//! applies them in order across files (definitions, `append: true`, `override:`), as Falco's
//! rule loader does. What comes out is text (conditions, outputs) still to be compiled.

use std::collections::HashMap;
use std::sync::Arc;

use crate::alert::Priority;
use crate::error::{ItemKind, LoadError, Location};
use crate::yaml::{self, Node, Pos};

/// A non-fatal remark about a rules file (deprecated syntax, ignored keys...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// Where.
    pub location: Location,
    /// Which item, if any.
    pub item: Option<(ItemKind, String)>,
    /// What.
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.item {
            Some((k, n)) => write!(f, "{}: {k} '{n}': {}", self.location, self.message),
            None => write!(f, "{}: {}", self.location, self.message),
        }
    }
}

/// A piece of condition text and where it starts. Appends make a condition of several pieces,
/// joined by a space, as Falco does.
#[derive(Clone, Debug)]
pub(crate) struct Piece {
    pub(crate) text: String,
    pub(crate) loc: Location,
}

#[derive(Clone, Debug)]
pub(crate) struct Condition {
    pub(crate) pieces: Vec<Piece>,
}

impl Condition {
    fn new(text: String, loc: Location) -> Self {
        Condition {
            pieces: vec![Piece { text, loc }],
        }
    }

    fn append(&mut self, text: String, loc: Location) {
        self.pieces.push(Piece { text, loc });
    }

    /// The joined text.
    pub(crate) fn text(&self) -> String {
        let mut s = String::new();
        for (i, p) in self.pieces.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(&p.text);
        }
        s
    }

    /// The piece holding byte `offset` of the joined text, and the offset within it.
    pub(crate) fn locate(&self, offset: usize) -> (&Location, usize) {
        let mut start = 0usize;
        let mut last = (&self.pieces[0].loc, offset);
        for p in &self.pieces {
            if offset < start + p.text.len() + 1 {
                return (&p.loc, offset.saturating_sub(start));
            }
            last = (&p.loc, offset.saturating_sub(start));
            start += p.text.len() + 1;
        }
        last
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ListDef {
    pub(crate) name: String,
    pub(crate) items: Vec<String>,
    pub(crate) loc: Location,
}

#[derive(Clone, Debug)]
pub(crate) struct MacroDef {
    pub(crate) name: String,
    pub(crate) cond: Condition,
    pub(crate) loc: Location,
}

/// One value of an exception's `fields`, `comps` or `values`: a string or a list.
#[derive(Clone, Debug)]
pub(crate) enum Entry {
    Scalar(String),
    List(Vec<Entry>),
}

#[derive(Clone, Debug)]
pub(crate) struct ExceptionDef {
    pub(crate) name: String,
    pub(crate) loc: Location,
    pub(crate) fields: Option<Entry>,
    pub(crate) comps: Option<Entry>,
    pub(crate) values: Vec<Entry>,
}

#[derive(Clone, Debug)]
pub(crate) struct RuleDef {
    pub(crate) name: String,
    pub(crate) loc: Location,
    /// Index of the file that first defined it.
    pub(crate) file_index: usize,
    pub(crate) desc: String,
    pub(crate) cond: Condition,
    pub(crate) output: String,
    pub(crate) output_loc: Location,
    pub(crate) priority: Priority,
    pub(crate) tags: Vec<String>,
    pub(crate) enabled: bool,
    pub(crate) source: String,
    pub(crate) exceptions: Vec<ExceptionDef>,
}

/// Everything read from a sequence of files, definitions merged.
#[derive(Default, Debug)]
pub(crate) struct Collected {
    pub(crate) lists: Vec<ListDef>,
    pub(crate) macros: Vec<MacroDef>,
    pub(crate) rules: Vec<RuleDef>,
    list_index: HashMap<String, usize>,
    macro_index: HashMap<String, usize>,
    rule_index: HashMap<String, usize>,
    pub(crate) warnings: Vec<Warning>,
    pub(crate) files: Vec<Arc<str>>,
}

impl Collected {
    pub(crate) fn list(&self, name: &str) -> Option<&ListDef> {
        self.list_index.get(name).and_then(|i| self.lists.get(*i))
    }
    pub(crate) fn macro_def(&self, name: &str) -> Option<&MacroDef> {
        self.macro_index.get(name).and_then(|i| self.macros.get(*i))
    }

    /// Reads one file's text and applies its items.
    pub(crate) fn add_file(&mut self, file: &str, text: &str) -> Result<(), LoadError> {
        let file: Arc<str> = Arc::from(file);
        self.files.push(file.clone());
        let file_index = self.files.len() - 1;
        let docs = yaml::parse(text).map_err(|e| {
            LoadError::new(
                loc(&file, e.pos),
                None,
                format!("YAML syntax: {}", e.message),
            )
        })?;
        let mut r = Reader {
            file,
            file_index,
            out: self,
        };
        for doc in &docs {
            if doc.is_null() {
                continue;
            }
            let Node::Seq { items, .. } = doc else {
                return Err(r.err(
                    doc.pos(),
                    None,
                    "rules content is not a YAML sequence of items",
                ));
            };
            for item in items {
                if item.is_null() {
                    continue;
                }
                r.item(item)?;
            }
        }
        Ok(())
    }
}

fn loc(file: &Arc<str>, pos: Pos) -> Location {
    Location {
        file: file.clone(),
        line: pos.line,
        col: pos.col,
    }
}

struct Reader<'a> {
    file: Arc<str>,
    file_index: usize,
    out: &'a mut Collected,
}

type Item = Option<(ItemKind, String)>;

const RULE_KEYS: &[&str] = &[
    "rule",
    "condition",
    "output",
    "desc",
    "priority",
    "source",
    "enabled",
    "capture",
    "capture_duration",
    "warn_evttypes",
    "skip-if-unknown-filter",
    "tags",
    "exceptions",
    "override",
    "append",
];

impl Reader<'_> {
    fn loc(&self, pos: Pos) -> Location {
        loc(&self.file, pos)
    }

    fn err(&self, pos: Pos, item: Item, msg: impl Into<String>) -> LoadError {
        LoadError::new(self.loc(pos), item, msg)
    }

    fn warn(&mut self, pos: Pos, item: Item, msg: impl Into<String>) {
        let location = self.loc(pos);
        self.out.warnings.push(Warning {
            location,
            item,
            message: msg.into(),
        });
    }

    /// A required non-empty scalar (Falco's `decode_val`).
    fn scalar<'n>(&self, node: &'n Node, key: &str, item: &Item) -> Result<&'n Node, LoadError> {
        let Some(v) = node.get(key) else {
            return Err(self.err(node.pos(), item.clone(), format!("missing key '{key}'")));
        };
        if v.is_null() {
            return Err(self.err(v.pos(), item.clone(), format!("key '{key}' is empty")));
        }
        match v {
            Node::Scalar { value, .. } if !value.is_empty() => Ok(v),
            Node::Scalar { .. } => Err(self.err(
                v.pos(),
                item.clone(),
                format!("key '{key}' must not be empty"),
            )),
            other => Err(self.err(
                v.pos(),
                item.clone(),
                format!("key '{key}' must be a scalar, found {}", other.kind()),
            )),
        }
    }

    fn string(&self, node: &Node, key: &str, item: &Item) -> Result<(String, Pos), LoadError> {
        let v = self.scalar(node, key, item)?;
        Ok((v.as_str().unwrap_or_default().to_string(), v.pos()))
    }

    fn opt_bool(&self, node: &Node, key: &str, item: &Item) -> Result<Option<bool>, LoadError> {
        let Some(v) = node.get(key) else {
            return Ok(None);
        };
        let s = match v {
            Node::Scalar { value, .. } => value.as_str(),
            other => {
                return Err(self.err(
                    v.pos(),
                    item.clone(),
                    format!("key '{key}' must be a boolean, found {}", other.kind()),
                ));
            }
        };
        match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "y" => Ok(Some(true)),
            "false" | "no" | "off" | "n" => Ok(Some(false)),
            _ => Err(self.err(
                v.pos(),
                item.clone(),
                format!("key '{key}' must be true or false, found '{s}'"),
            )),
        }
    }

    fn string_seq(&self, node: &Node, key: &str, item: &Item) -> Result<Vec<String>, LoadError> {
        let Some(v) = node.get(key) else {
            return Err(self.err(node.pos(), item.clone(), format!("missing key '{key}'")));
        };
        let Node::Seq { items, .. } = v else {
            return Err(self.err(
                v.pos(),
                item.clone(),
                format!("key '{key}' must be a sequence, found {}", v.kind()),
            ));
        };
        let mut out = Vec::with_capacity(items.len());
        for i in items {
            match i {
                Node::Scalar { value, .. } => out.push(value.clone()),
                other => {
                    return Err(self.err(
                        i.pos(),
                        item.clone(),
                        format!("'{key}' items must be scalars, found {}", other.kind()),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// `override:` as (appended keys, replaced keys), checked against what the item may override.
    fn overrides(
        &self,
        node: &Node,
        item: &Item,
        appendable: &[&str],
        replaceable: &[&str],
    ) -> Result<(Vec<String>, Vec<String>), LoadError> {
        let (mut app, mut rep) = (Vec::new(), Vec::new());
        let Some(ov) = node.get("override") else {
            return Ok((app, rep));
        };
        let Node::Map { entries, .. } = ov else {
            return Err(self.err(ov.pos(), item.clone(), "'override' must be a mapping"));
        };
        for (k, v) in entries {
            let key = k.as_str().unwrap_or_default();
            match v.as_str() {
                Some("append") => {
                    if !appendable.contains(&key) {
                        return Err(self.err(
                            k.pos(),
                            item.clone(),
                            format!("key '{key}' cannot be appended to, use 'replace' instead"),
                        ));
                    }
                    app.push(key.to_string());
                }
                Some("replace") => {
                    if !replaceable.contains(&key) {
                        return Err(self.err(
                            k.pos(),
                            item.clone(),
                            format!("key '{key}' cannot be replaced"),
                        ));
                    }
                    rep.push(key.to_string());
                }
                _ => {
                    return Err(self.err(v.pos(), item.clone(), format!("invalid override operation for key '{key}': expected 'append' or 'replace'")));
                }
            }
        }
        Ok((app, rep))
    }

    fn unknown_keys(&mut self, node: &Node, expected: &[&str], item: &Item) {
        if let Node::Map { entries, .. } = node {
            for (k, _) in entries {
                let key = k.as_str().unwrap_or_default();
                if !expected.contains(&key) {
                    let pos = k.pos();
                    self.warn(pos, item.clone(), format!("unknown key '{key}' ignored"));
                }
            }
        }
    }

    fn item(&mut self, node: &Node) -> Result<(), LoadError> {
        let Node::Map { .. } = node else {
            return Err(self.err(
                node.pos(),
                None,
                format!("an item must be a mapping, found {}", node.kind()),
            ));
        };
        if node.get("required_engine_version").is_some() {
            self.warn(node.pos(), None, "required_engine_version accepted and ignored (Peregrine checks fields, not versions)");
            Ok(())
        } else if node.get("required_plugin_versions").is_some() {
            self.warn(node.pos(), None, "required_plugin_versions accepted and ignored (Peregrine has no plugins; its container fields are built in)");
            Ok(())
        } else if node.get("list").is_some() {
            self.list(node)
        } else if node.get("macro").is_some() {
            self.macro_item(node)
        } else if node.get("rule").is_some() {
            self.rule(node)
        } else {
            self.warn(node.pos(), None, "unknown top-level item ignored");
            Ok(())
        }
    }

    fn list(&mut self, node: &Node) -> Result<(), LoadError> {
        let (name, _) = self.string(node, "list", &None)?;
        let item = Some((ItemKind::List, name.clone()));
        let items = self.string_seq(node, "items", &item)?;
        let legacy_append = self.opt_bool(node, "append", &item)?.unwrap_or(false);
        let (app, _rep) = self.overrides(node, &item, &["items"], &["items"])?;
        if legacy_append && node.get("override").is_some() {
            return Err(self.err(
                node.pos(),
                item,
                "'append' and 'override' cannot be used together",
            ));
        }
        if legacy_append {
            self.warn(
                node.pos(),
                item.clone(),
                "'append: true' is deprecated, use 'override: {items: append}'",
            );
        }
        self.unknown_keys(node, &["list", "items", "append", "override"], &item);
        let loc = self.loc(node.pos());
        if legacy_append || !app.is_empty() {
            let Some(&i) = self.out.list_index.get(&name) else {
                return Err(self.err(node.pos(), item, "appending to a list that is not defined"));
            };
            self.out.lists[i].items.extend(items);
        } else if let Some(&i) = self.out.list_index.get(&name) {
            self.out.lists[i] = ListDef { name, items, loc };
        } else {
            self.out
                .list_index
                .insert(name.clone(), self.out.lists.len());
            self.out.lists.push(ListDef { name, items, loc });
        }
        Ok(())
    }

    fn macro_item(&mut self, node: &Node) -> Result<(), LoadError> {
        let (name, _) = self.string(node, "macro", &None)?;
        let item = Some((ItemKind::Macro, name.clone()));
        let (cond, cpos) = self.string(node, "condition", &item)?;
        let legacy_append = self.opt_bool(node, "append", &item)?.unwrap_or(false);
        let (app, _rep) = self.overrides(node, &item, &["condition"], &["condition"])?;
        if legacy_append && node.get("override").is_some() {
            return Err(self.err(
                node.pos(),
                item,
                "'append' and 'override' cannot be used together",
            ));
        }
        if legacy_append {
            self.warn(
                node.pos(),
                item.clone(),
                "'append: true' is deprecated, use 'override: {condition: append}'",
            );
        }
        self.unknown_keys(node, &["macro", "condition", "append", "override"], &item);
        let cloc = self.loc(cpos);
        if legacy_append || !app.is_empty() {
            let Some(&i) = self.out.macro_index.get(&name) else {
                return Err(self.err(node.pos(), item, "appending to a macro that is not defined"));
            };
            self.out.macros[i].cond.append(cond, cloc);
        } else {
            let def = MacroDef {
                name: name.clone(),
                cond: Condition::new(cond, cloc),
                loc: self.loc(node.pos()),
            };
            if let Some(&i) = self.out.macro_index.get(&name) {
                self.out.macros[i] = def;
            } else {
                self.out.macro_index.insert(name, self.out.macros.len());
                self.out.macros.push(def);
            }
        }
        Ok(())
    }

    fn tags(&self, node: &Node, item: &Item) -> Result<Option<Vec<String>>, LoadError> {
        match node.get("tags") {
            None => Ok(None),
            Some(v) if v.is_null() => Ok(Some(Vec::new())),
            Some(_) => self.string_seq(node, "tags", item).map(Some),
        }
    }

    fn priority(&self, node: &Node, item: &Item) -> Result<Priority, LoadError> {
        let v = self.scalar(node, "priority", item)?;
        let s = v.as_str().unwrap_or_default();
        Priority::parse(s.trim()).ok_or_else(|| {
            self.err(v.pos(), item.clone(), format!("invalid priority '{s}' (expected EMERGENCY, ALERT, CRITICAL, ERROR, WARNING, NOTICE, INFO(RMATIONAL) or DEBUG)"))
        })
    }

    fn entry(&self, node: &Node, item: &Item, what: &str) -> Result<Entry, LoadError> {
        match node {
            Node::Scalar { value, .. } => {
                if value.is_empty() {
                    return Err(self.err(
                        node.pos(),
                        item.clone(),
                        format!("exception {what} must not be empty"),
                    ));
                }
                Ok(Entry::Scalar(value.clone()))
            }
            Node::Seq { items, .. } => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    out.push(self.entry(i, item, what)?);
                }
                Ok(Entry::List(out))
            }
            Node::Map { .. } => Err(self.err(
                node.pos(),
                item.clone(),
                format!("exception {what} must be a string or a list"),
            )),
        }
    }

    fn exceptions(&self, node: &Node, item: &Item) -> Result<Vec<ExceptionDef>, LoadError> {
        let Some(exs) = node.get("exceptions") else {
            return Ok(Vec::new());
        };
        if exs.is_null() {
            return Ok(Vec::new());
        }
        let Node::Seq { items, .. } = exs else {
            return Err(self.err(exs.pos(), item.clone(), "'exceptions' must be a sequence"));
        };
        let mut out = Vec::new();
        for ex in items {
            let Node::Map { .. } = ex else {
                return Err(self.err(ex.pos(), item.clone(), "an exception must be a mapping"));
            };
            let (name, _) = self.string(ex, "name", item)?;
            let fields = match ex.get("fields") {
                Some(f) if !f.is_null() => Some(self.entry(f, item, "fields")?),
                _ => None,
            };
            let comps = match ex.get("comps") {
                Some(c) if !c.is_null() => Some(self.entry(c, item, "comps")?),
                _ => None,
            };
            let mut values = Vec::new();
            if let Some(vs) = ex.get("values")
                && !vs.is_null()
            {
                let Node::Seq { items: vitems, .. } = vs else {
                    return Err(self.err(
                        vs.pos(),
                        item.clone(),
                        format!("exception '{name}': 'values' must be a sequence"),
                    ));
                };
                for v in vitems {
                    values.push(self.entry(v, item, "values")?);
                }
            }
            out.push(ExceptionDef {
                name,
                loc: self.loc(ex.pos()),
                fields,
                comps,
                values,
            });
        }
        Ok(out)
    }

    fn rule(&mut self, node: &Node) -> Result<(), LoadError> {
        let (name, _) = self.string(node, "rule", &None)?;
        let item = Some((ItemKind::Rule, name.clone()));
        self.unknown_keys(node, RULE_KEYS, &item);
        let legacy_append = self.opt_bool(node, "append", &item)?.unwrap_or(false);
        let appendable = ["condition", "output", "desc", "tags", "exceptions"];
        let replaceable = [
            "condition",
            "output",
            "desc",
            "priority",
            "capture",
            "capture_duration",
            "tags",
            "exceptions",
            "enabled",
            "warn_evttypes",
            "skip-if-unknown-filter",
        ];
        let (app, rep) = self.overrides(node, &item, &appendable, &replaceable)?;
        let has_overrides = node.get("override").is_some();
        if legacy_append && has_overrides {
            return Err(self.err(
                node.pos(),
                item,
                "'append' and 'override' cannot be used together",
            ));
        }
        if has_overrides {
            // Every overridable key present must be covered by `override`, and every key named
            // in `override` must be present.
            for key in appendable.iter().chain(replaceable.iter()) {
                if let Some(v) = node.get(key)
                    && !app.iter().any(|k| k == key)
                    && !rep.iter().any(|k| k == key)
                {
                    return Err(self.err(
                        v.pos(),
                        item,
                        format!("unexpected key '{key}': no corresponding entry under 'override'"),
                    ));
                }
            }
            for key in app.iter().chain(rep.iter()) {
                if node.get(key).is_none() {
                    return Err(self.err(
                        node.pos(),
                        item,
                        format!("an override for '{key}' was specified but '{key}' is not defined"),
                    ));
                }
            }
            let Some(&idx) = self.out.rule_index.get(&name) else {
                return Err(self.err(node.pos(), item, "overriding a rule that is not defined"));
            };
            if !app.is_empty() {
                self.append_rule(node, idx, &item, &app)?;
            }
            if !rep.is_empty() {
                self.replace_rule(node, idx, &item, &rep)?;
            }
            return Ok(());
        }
        if legacy_append {
            self.warn(
                node.pos(),
                item.clone(),
                "'append: true' is deprecated, use 'override:'",
            );
            let Some(&idx) = self.out.rule_index.get(&name) else {
                return Err(self.err(node.pos(), item, "appending to a rule that is not defined"));
            };
            let keys: Vec<String> = ["condition", "exceptions"]
                .iter()
                .filter(|k| node.get(k).is_some())
                .map(|k| k.to_string())
                .collect();
            return self.append_rule(node, idx, &item, &keys);
        }
        let defines = ["condition", "output", "desc", "priority"]
            .iter()
            .any(|k| node.get(k).is_some());
        if !defines {
            // `- rule: X` + `enabled: false` alone toggles an earlier rule.
            let Some(enabled) = self.opt_bool(node, "enabled", &item)? else {
                return Err(self.err(node.pos(), item, "a rule needs 'condition', 'output', 'desc' and 'priority' (or only 'enabled' to toggle an earlier rule)"));
            };
            let Some(&idx) = self.out.rule_index.get(&name) else {
                return Err(self.err(
                    node.pos(),
                    item,
                    "'enabled' given for a rule that is not defined",
                ));
            };
            self.out.rules[idx].enabled = enabled;
            return Ok(());
        }
        let (cond, cpos) = self.string(node, "condition", &item)?;
        let (output, opos) = self.string(node, "output", &item)?;
        let (desc, _) = self.string(node, "desc", &item)?;
        let priority = self.priority(node, &item)?;
        let source = match node.get("source") {
            Some(v) if !v.is_null() => v.as_str().unwrap_or_default().to_string(),
            _ => "syscall".to_string(),
        };
        let enabled = self.opt_bool(node, "enabled", &item)?.unwrap_or(true);
        let mut tags = self.tags(node, &item)?.unwrap_or_default();
        dedup(&mut tags);
        let exceptions = self.exceptions(node, &item)?;
        for ex in &exceptions {
            if ex.fields.is_none() {
                return Err(LoadError::new(
                    ex.loc.clone(),
                    item,
                    format!("exception '{}' has no 'fields'", ex.name),
                ));
            }
        }
        let def = RuleDef {
            name: name.clone(),
            loc: self.loc(node.pos()),
            file_index: self.file_index,
            desc,
            cond: Condition::new(cond, self.loc(cpos)),
            output: output.trim().to_string(),
            output_loc: self.loc(opos),
            priority,
            tags,
            enabled,
            source,
            exceptions,
        };
        if let Some(&i) = self.out.rule_index.get(&name) {
            let file_index = self.out.rules[i].file_index;
            self.out.rules[i] = RuleDef { file_index, ..def };
        } else {
            self.out.rule_index.insert(name, self.out.rules.len());
            self.out.rules.push(def);
        }
        Ok(())
    }

    fn append_rule(
        &mut self,
        node: &Node,
        idx: usize,
        item: &Item,
        keys: &[String],
    ) -> Result<(), LoadError> {
        let has = |k: &str| keys.iter().any(|x| x == k);
        let cond = if has("condition") {
            Some(self.string(node, "condition", item)?)
        } else {
            None
        };
        let output = if has("output") {
            Some(self.string(node, "output", item)?.0)
        } else {
            None
        };
        let desc = if has("desc") {
            Some(self.string(node, "desc", item)?.0)
        } else {
            None
        };
        let tags = if has("tags") {
            self.tags(node, item)?
        } else {
            None
        };
        let exceptions = if has("exceptions") {
            self.exceptions(node, item)?
        } else {
            Vec::new()
        };
        let cond_loc = cond.as_ref().map(|(_, p)| self.loc(*p));
        let rule = &mut self.out.rules[idx];
        if let (Some((c, _)), Some(l)) = (cond, cond_loc) {
            rule.cond.append(c, l);
        }
        if let Some(o) = output {
            rule.output = format!("{} {}", rule.output, o.trim());
        }
        if let Some(d) = desc {
            rule.desc = format!("{} {d}", rule.desc);
        }
        if let Some(t) = tags {
            rule.tags.extend(t);
            dedup(&mut rule.tags);
        }
        for ex in exceptions {
            if let Some(prev) = rule.exceptions.iter_mut().find(|e| e.name == ex.name) {
                if ex.fields.is_some() || ex.comps.is_some() {
                    return Err(LoadError::new(
                        ex.loc,
                        item.clone(),
                        format!(
                            "exception '{}': can only append values to an existing exception, not fields or comps",
                            ex.name
                        ),
                    ));
                }
                prev.values.extend(ex.values);
            } else {
                if ex.fields.is_none() {
                    return Err(LoadError::new(
                        ex.loc,
                        item.clone(),
                        format!("exception '{}' has no 'fields'", ex.name),
                    ));
                }
                if ex.values.is_empty() {
                    return Err(LoadError::new(
                        ex.loc,
                        item.clone(),
                        format!("exception '{}' has no 'values'", ex.name),
                    ));
                }
                rule.exceptions.push(ex);
            }
        }
        Ok(())
    }

    fn replace_rule(
        &mut self,
        node: &Node,
        idx: usize,
        item: &Item,
        keys: &[String],
    ) -> Result<(), LoadError> {
        let has = |k: &str| keys.iter().any(|x| x == k);
        if has("condition") {
            let (c, p) = self.string(node, "condition", item)?;
            let l = self.loc(p);
            self.out.rules[idx].cond = Condition::new(c, l);
        }
        if has("output") {
            let (o, p) = self.string(node, "output", item)?;
            let l = self.loc(p);
            self.out.rules[idx].output = o.trim().to_string();
            self.out.rules[idx].output_loc = l;
        }
        if has("desc") {
            self.out.rules[idx].desc = self.string(node, "desc", item)?.0;
        }
        if has("priority") {
            self.out.rules[idx].priority = self.priority(node, item)?;
        }
        if has("tags") {
            let mut t = self.tags(node, item)?.unwrap_or_default();
            dedup(&mut t);
            self.out.rules[idx].tags = t;
        }
        if has("exceptions") {
            let exs = self.exceptions(node, item)?;
            for ex in &exs {
                if ex.fields.is_none() {
                    return Err(LoadError::new(
                        ex.loc.clone(),
                        item.clone(),
                        format!("exception '{}' has no 'fields'", ex.name),
                    ));
                }
            }
            self.out.rules[idx].exceptions = exs;
        }
        if has("enabled")
            && let Some(e) = self.opt_bool(node, "enabled", item)?
        {
            self.out.rules[idx].enabled = e;
        }
        Ok(())
    }
}

fn dedup(tags: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    tags.retain(|t| seen.insert(t.clone()));
}
