//! Layered configuration: one TOML file, then environment variables, then `--set` flags.
//!
//! Layers are merged as TOML trees *before* deserializing, so a typo in any layer is reported
//! with its key path and where it came from, and `deny_unknown_fields` catches misspelt keys.
//! Environment variables are `<PREFIX>__<SECTION>__<KEY>` (double underscore between levels);
//! flags are `--set section.key=value`. Values are parsed as TOML scalars when they parse
//! (`true`, `42`, `"quoted"`) and taken as strings otherwise.

use std::{collections::BTreeMap, fmt, path::Path};

use serde::de::DeserializeOwned;
use toml::{Table, Value};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (fix the path given with --config)")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("{origin}: `{raw}` is not `key=value` (example: --set collector.address=http://127.0.0.1:7700)")]
    Override { origin: String, raw: String },
    #[error("config key `{key}`{origin}: {message}")]
    Key { key: String, origin: Origin, message: String },
}

/// Where a key's value came from, for error messages.
#[derive(Debug, Clone, Default)]
pub struct Origin(Option<String>);

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(o) => write!(f, " (set by {o})"),
            None => Ok(()),
        }
    }
}

/// Semantic checks beyond types; each failure names the key.
pub trait Validate {
    fn validate(&self) -> Result<(), (String, String)>;
}

#[derive(Debug, Default)]
pub struct Layers {
    tree: Table,
    origins: BTreeMap<String, String>,
}

impl Layers {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax { path: shown.clone(), message: e.to_string().replace('\n', " ") })?;
        let mut keys = Vec::new();
        leaf_keys(&table, String::new(), &mut keys);
        for k in keys {
            self.origins.insert(k, format!("file {shown}"));
        }
        merge(&mut self.tree, table);
        Ok(self)
    }

    /// Applies `PREFIX__A__B=value` variables from `vars` (normally `std::env::vars()`).
    pub fn env(mut self, prefix: &str, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let head = format!("{prefix}__");
        let mut vars: Vec<_> = vars.into_iter().filter(|(k, _)| k.starts_with(&head)).collect();
        vars.sort();
        for (name, value) in vars {
            let path: Vec<String> =
                name[head.len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
            let key = path.join(".");
            self.set(&key, &value, format!("environment variable {name}"));
        }
        self
    }

    /// Applies `key=value` overrides (from `--set`).
    pub fn overrides<'s>(mut self, sets: impl IntoIterator<Item = &'s str>) -> Result<Self, ConfigError> {
        for raw in sets {
            let Some((key, value)) = raw.split_once('=') else {
                return Err(ConfigError::Override { origin: "--set".into(), raw: raw.into() });
            };
            self.set(key.trim(), value, format!("--set {raw}"));
        }
        Ok(self)
    }

    fn set(&mut self, key: &str, value: &str, origin: String) {
        let parsed = parse_scalar(value);
        let mut node = &mut self.tree;
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                node.insert((*part).to_owned(), parsed.clone());
            } else {
                let entry = node.entry((*part).to_owned()).or_insert_with(|| Value::Table(Table::new()));
                if !entry.is_table() {
                    *entry = Value::Table(Table::new());
                }
                match entry {
                    Value::Table(t) => node = t,
                    _ => return,
                }
            }
        }
        self.origins.insert(key.to_owned(), origin);
    }

    /// Deserializes the merged tree and validates it.
    pub fn build<T: DeserializeOwned + Validate>(self) -> Result<T, ConfigError> {
        let value = Value::Table(self.tree);
        let config: T = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string().replace('\n', " ");
            // An unknown field is reported at its parent's path; name the field itself.
            let key = match unknown_field(&message) {
                Some(field) if key == "." => field,
                Some(field) if key == field || key.ends_with(&format!(".{field}")) => key,
                Some(field) => format!("{key}.{field}"),
                None => key,
            };
            let origin = Origin(self.origins.get(&key).cloned());
            ConfigError::Key { key, origin, message }
        })?;
        config.validate().map_err(|(key, message)| ConfigError::Key {
            origin: Origin(self.origins.get(&key).cloned()),
            key,
            message,
        })?;
        Ok(config)
    }
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

fn parse_scalar(raw: &str) -> Value {
    let doc = format!("v = {raw}");
    match doc.parse::<Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| Value::String(raw.to_owned())),
        Err(_) => Value::String(raw.to_owned()),
    }
}

fn merge(into: &mut Table, from: Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn leaf_keys(table: &Table, prefix: String, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            Value::Table(t) => leaf_keys(t, key, out),
            _ => out.push(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        port: u16,
        name: String,
    }
    impl Default for Inner {
        fn default() -> Self {
            Self { port: 1, name: "x".into() }
        }
    }
    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        inner: Inner,
        flag: bool,
    }
    impl Validate for Cfg {
        fn validate(&self) -> Result<(), (String, String)> {
            if self.inner.port == 0 {
                return Err(("inner.port".into(), "must not be 0".into()));
            }
            Ok(())
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn layers_apply_in_order_file_env_flag() {
        let dir = std::env::temp_dir().join(format!("pg-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "flag = true\n[inner]\nport = 5\nname = \"file\"\n").unwrap();
        let cfg: Cfg = Layers::new()
            .file(&f)
            .unwrap()
            .env("PG", env(&[("PG__INNER__PORT", "6"), ("OTHER__INNER__PORT", "9")]))
            .overrides(["inner.name=flag"])
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(cfg, Cfg { inner: Inner { port: 6, name: "flag".into() }, flag: true });
    }

    #[test]
    fn type_error_names_key_and_origin() {
        let err = Layers::new()
            .env("PG", env(&[("PG__INNER__PORT", "many")]))
            .build::<Cfg>()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config key `inner.port` (set by environment variable PG__INNER__PORT):"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Layers::new().overrides(["inner.prot=3"]).unwrap().build::<Cfg>().unwrap_err().to_string();
        assert!(err.starts_with("config key `inner.prot` (set by --set inner.prot=3): unknown field `prot`"), "{err}");
    }

    #[test]
    fn validation_names_key() {
        let err = Layers::new().overrides(["inner.port=0"]).unwrap().build::<Cfg>().unwrap_err().to_string();
        assert_eq!(err, "config key `inner.port` (set by --set inner.port=0): must not be 0");
    }

    #[test]
    fn malformed_override_and_missing_file() {
        let err = Layers::new().overrides(["novalue"]).unwrap_err().to_string();
        assert!(err.contains("`novalue` is not `key=value`"), "{err}");
        let err = Layers::new().file(Path::new("/nonexistent/pg.toml")).unwrap_err().to_string();
        assert!(err.starts_with("cannot read config file /nonexistent/pg.toml"), "{err}");
    }
}
