//! Load errors: every one names the file, the line and column, the list/macro/rule, and what is
//! wrong.

use std::fmt;
use std::sync::Arc;

/// Where something is in a rules file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file's name as given to the loader.
    pub file: Arc<str>,
    /// Line, from 1 (0: unknown).
    pub line: u32,
    /// Column, from 1 (0: unknown).
    pub col: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// What kind of item an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    /// A `- list:` item.
    List,
    /// A `- macro:` item.
    Macro,
    /// A `- rule:` item.
    Rule,
    /// A top-level item that is none of the above, or the file itself.
    Document,
}

impl fmt::Display for ItemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ItemKind::List => "list",
            ItemKind::Macro => "macro",
            ItemKind::Rule => "rule",
            ItemKind::Document => "document",
        })
    }
}

/// Why a set of rules files could not be loaded. The previous ruleset, if any, stays in force.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// Where.
    pub location: Location,
    /// Which item (kind and name); `None` for file-level errors.
    pub item: Option<(ItemKind, String)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.item {
            Some((kind, name)) => write!(f, "{}: {kind} '{name}': {}", self.location, self.message),
            None => write!(f, "{}: {}", self.location, self.message),
        }
    }
}

impl LoadError {
    pub(crate) fn new(
        location: Location,
        item: Option<(ItemKind, String)>,
        message: impl Into<String>,
    ) -> Self {
        LoadError {
            location,
            item,
            message: message.into(),
        }
    }
}
