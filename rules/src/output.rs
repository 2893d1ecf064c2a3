//! Rule output formats: `%field` substituted with the event's value, `<NA>` when it has none
//! (Falco's placeholder). Parsed once per rule; rendering allocates only the output string.

use std::fmt::Write as _;

use crate::eval::MAX_ANCESTORS;
use crate::event::{EventView, FieldArg, Value};
use crate::fields::{self, Access, FieldId};
use crate::parser;

/// Falco's text for a missing value.
pub const NOT_AVAILABLE: &str = "<NA>";

#[derive(Clone, Debug)]
enum Arg {
    None,
    Index(u32),
    Key(Box<str>),
}

#[derive(Clone, Debug)]
enum Getter {
    Value(FieldId, Arg),
    /// Every ancestor from the parent up, space separated.
    Ancestors(FieldId),
    /// A list field, `(a,b,c)`.
    List(FieldId),
    /// The first of two that has a value (`fd.ip`, `fd.port`).
    Either(FieldId, FieldId),
    EvtType,
    Constant(&'static str),
    /// Not captured, or not a field Peregrine knows.
    NotAvailable,
}

#[derive(Clone, Debug)]
enum Token {
    Lit(Box<str>),
    Field { name: Box<str>, get: Getter },
}

/// A compiled output format.
#[derive(Clone, Debug)]
pub(crate) struct OutputFormat {
    tokens: Vec<Token>,
    /// Fields in the format that Peregrine does not capture (rendered `<NA>`).
    pub(crate) not_available: Vec<String>,
    /// Names in the format that are not fields at all.
    pub(crate) unknown: Vec<String>,
}

impl OutputFormat {
    pub(crate) fn parse(fmt: &str) -> OutputFormat {
        // A leading `*` in Falco means "print even if fields are missing": always the case here.
        let fmt = fmt.strip_prefix('*').unwrap_or(fmt);
        let mut tokens = Vec::new();
        let mut not_available = Vec::new();
        let mut unknown = Vec::new();
        let mut lit = String::new();
        let mut rest = fmt;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            let mut after = &rest[i + 1..];
            // `%20proc.name`: a width; Peregrine does not pad (the value is printed as is).
            after = after.trim_start_matches(|c: char| c.is_ascii_digit());
            match field_at(after) {
                Some((name, get, used, known)) => {
                    if !lit.is_empty() {
                        tokens.push(Token::Lit(std::mem::take(&mut lit).into()));
                    }
                    if matches!(get, Getter::NotAvailable) {
                        if known {
                            not_available.push(name.clone());
                        } else {
                            unknown.push(name.clone());
                        }
                    }
                    tokens.push(Token::Field {
                        name: name.into(),
                        get,
                    });
                    rest = &after[used..];
                }
                None => {
                    lit.push('%');
                    rest = after;
                }
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            tokens.push(Token::Lit(lit.into()));
        }
        not_available.sort();
        not_available.dedup();
        unknown.sort();
        unknown.dedup();
        OutputFormat {
            tokens,
            not_available,
            unknown,
        }
    }

    pub(crate) fn render<E: EventView + ?Sized>(&self, ev: &E) -> String {
        let mut out = String::with_capacity(256);
        for t in &self.tokens {
            match t {
                Token::Lit(s) => out.push_str(s),
                Token::Field { get, .. } => render_field(get, ev, &mut out),
            }
        }
        out
    }

    /// Each field in the format (once) with its rendered value.
    pub(crate) fn fields<E: EventView + ?Sized>(&self, ev: &E) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for t in &self.tokens {
            if let Token::Field { name, get } = t {
                if out.iter().any(|(n, _)| **n == **name) {
                    continue;
                }
                let mut v = String::new();
                render_field(get, ev, &mut v);
                out.push((name.to_string(), v));
            }
        }
        out
    }
}

/// The longest field reference at the start of `s` that names a catalogue field (Falco shrinks
/// the token until it compiles): (display name, getter, bytes used, known to the catalogue).
fn field_at(s: &str) -> Option<(String, Getter, usize, bool)> {
    let (name, arg, used) = parser::parse_output_field(s)?;
    let mut n = name.as_str();
    loop {
        if let Some(def) = fields::lookup(n) {
            // A shorter name drops any argument that followed the longer one.
            let (arg, used) = if n.len() == name.len() {
                (arg, used)
            } else {
                (None, n.len())
            };
            let display = match &arg {
                Some(a) => format!("{n}[{a}]"),
                None => n.to_string(),
            };
            return Some((display, getter(def.access, arg.as_deref()), used, true));
        }
        // Drop the last segment and retry, as long as what remains is still a field name.
        match n.rfind('.') {
            Some(dot) if n[..dot].contains('.') => n = &n[..dot],
            _ => break,
        }
    }
    let display = match &arg {
        Some(a) => format!("{name}[{a}]"),
        None => name.clone(),
    };
    Some((display, Getter::NotAvailable, used, false))
}

fn getter(access: Access, arg: Option<&str>) -> Getter {
    let index = arg.and_then(|a| a.trim().parse::<u32>().ok());
    match access {
        Access::Direct(id) => Getter::Value(id, Arg::None),
        Access::Alias(id, 0) => Getter::Value(id, Arg::None),
        Access::Alias(id, l) => Getter::Value(id, Arg::Index(l)),
        Access::Ancestor { id, self_field } => match (arg, index) {
            (None, _) => Getter::Ancestors(id),
            (Some(_), Some(0)) => Getter::Value(self_field, Arg::None),
            (Some(_), Some(n)) => Getter::Value(id, Arg::Index(n)),
            (Some(_), None) => Getter::NotAvailable,
        },
        Access::List(id) => Getter::List(id),
        Access::Keyed(id) => match arg {
            Some(k) => Getter::Value(id, Arg::Key(k.into())),
            None => Getter::NotAvailable,
        },
        Access::Pair(a, b) | Access::NetPair(a, b) => Getter::Either(a, b),
        Access::Net(id) => Getter::Value(id, Arg::None),
        Access::EvtType => Getter::EvtType,
        Access::Constant(c) => Getter::Constant(c),
        Access::NotCaptured { .. } => Getter::NotAvailable,
    }
}

fn push_value(v: Value<'_>, out: &mut String) -> bool {
    // Writing to a String cannot fail.
    let _ = match v {
        Value::Absent => return false,
        Value::Str(s) => {
            out.push_str(s);
            Ok(())
        }
        Value::U64(n) => write!(out, "{n}"),
        Value::I64(n) => write!(out, "{n}"),
        Value::Bool(b) => write!(out, "{b}"),
        Value::Ip(ip) => write!(out, "{ip}"),
    };
    true
}

fn render_field<E: EventView + ?Sized>(get: &Getter, ev: &E, out: &mut String) {
    let ok = match get {
        Getter::Value(id, arg) => {
            let arg = match arg {
                Arg::None => FieldArg::None,
                Arg::Index(i) => FieldArg::Index(*i),
                Arg::Key(k) => FieldArg::Key(k),
            };
            push_value(ev.field(*id, arg), out)
        }
        Getter::Ancestors(id) => {
            let mut any = false;
            for i in 1..=MAX_ANCESTORS {
                let v = ev.field(*id, FieldArg::Index(i));
                if !v.is_present() {
                    break;
                }
                if any {
                    out.push(' ');
                }
                any |= push_value(v, out);
            }
            any
        }
        Getter::List(id) => {
            let start = out.len();
            out.push('(');
            let mut n = 0;
            for i in 0..crate::eval::MAX_LIST {
                let v = ev.field(*id, FieldArg::Index(i));
                if !v.is_present() {
                    break;
                }
                if n > 0 {
                    out.push(',');
                }
                push_value(v, out);
                n += 1;
            }
            if n == 0 {
                out.truncate(start);
                false
            } else {
                out.push(')');
                true
            }
        }
        Getter::Either(a, b) => {
            push_value(ev.field(*a, FieldArg::None), out)
                || push_value(ev.field(*b, FieldArg::None), out)
        }
        Getter::EvtType => {
            out.push_str(ev.evt_type().name());
            true
        }
        Getter::Constant(c) => {
            out.push_str(c);
            true
        }
        Getter::NotAvailable => false,
    };
    if !ok {
        out.push_str(NOT_AVAILABLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_unknowns() {
        let f = OutputFormat::parse(
            "x %proc.name y=%proc.aname[2] %evt.arg.flags %nope.field 100% %fd.sip.name",
        );
        assert_eq!(
            f.not_available,
            vec!["evt.arg.flags".to_string(), "fd.sip.name".to_string()]
        );
        assert_eq!(f.unknown, vec!["nope.field".to_string()]);
    }

    #[test]
    fn shrinks_to_a_known_field() {
        let (name, _, used, known) = field_at("container.image.repository:x").unwrap();
        assert_eq!(
            (name.as_str(), used, known),
            ("container.image.repository", 26, true)
        );
        let (name, _, used, known) = field_at("proc.name.foo").unwrap();
        assert_eq!((name.as_str(), used, known), ("proc.name", 9, true));
    }
}
