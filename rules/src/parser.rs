//! Falco condition grammar (libsinsp `filter/parser.cpp`), by recursive descent:
//!
//! ```text
//! Expr   ::= And ('or' And)*
//! And    ::= Not ('and' Not)*
//! Not    ::= 'not'* Check | 'not(' Expr ')'
//! Check  ::= '(' Expr ')' | Field Cond | Identifier          (an identifier is a macro)
//! Cond   ::= 'exists' | NumOp Number | StrOp Value | ListOp (List | Identifier)
//! ```
//!
//! Field transformers (`tolower(...)`, `val(...)`) and operator modifiers (`startswith oneof`)
//! parse, and are marked unsupported for the compiler to report.

use crate::lexer::Cursor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Exists,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    IContains,
    BContains,
    StartsWith,
    BStartsWith,
    EndsWith,
    Glob,
    IGlob,
    Regex,
    In,
    Intersects,
    PMatch,
}

impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Exists => "exists",
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Contains => "contains",
            Op::IContains => "icontains",
            Op::BContains => "bcontains",
            Op::StartsWith => "startswith",
            Op::BStartsWith => "bstartswith",
            Op::EndsWith => "endswith",
            Op::Glob => "glob",
            Op::IGlob => "iglob",
            Op::Regex => "regex",
            Op::In => "in",
            Op::Intersects => "intersects",
            Op::PMatch => "pmatch",
        }
    }

    pub(crate) fn from_name(s: &str) -> Option<Op> {
        Some(match s {
            "exists" => Op::Exists,
            "=" | "==" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "contains" => Op::Contains,
            "icontains" => Op::IContains,
            "bcontains" => Op::BContains,
            "startswith" => Op::StartsWith,
            "bstartswith" => Op::BStartsWith,
            "endswith" => Op::EndsWith,
            "glob" => Op::Glob,
            "iglob" => Op::IGlob,
            "regex" => Op::Regex,
            "in" => Op::In,
            "intersects" => Op::Intersects,
            "pmatch" => Op::PMatch,
            _ => return None,
        })
    }

    pub(crate) fn is_list_op(self) -> bool {
        matches!(self, Op::In | Op::Intersects | Op::PMatch)
    }
}

/// A literal as written: `quoted` ones are never list names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Val {
    pub(crate) text: String,
    pub(crate) quoted: bool,
    pub(crate) at: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Rhs {
    None,
    Value(Val),
    List(Vec<Val>),
    /// `in some_list` without parentheses.
    ListName(Val),
    /// A field transformer as a value (`val(proc.pname)`).
    Unsupported(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lhs {
    Field {
        name: String,
        arg: Option<String>,
    },
    /// A field transformer (`tolower(proc.name)`), named.
    Transformer(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Macro {
        name: String,
        at: usize,
    },
    Check {
        lhs: Lhs,
        op: Result<Op, String>,
        rhs: Rhs,
        at: usize,
    },
}

/// A syntax error at a byte offset of the condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) at: usize,
    pub(crate) message: String,
}

// Falco's parser allows 1000 nested calls for rule conditions; every nesting level costs five
// calls, so this is about 200 levels of parentheses, and keeps the stack small.
const MAX_DEPTH: u32 = 1000;

const NUM_OPS: &[&str] = &["<=", "<", ">=", ">"];
const STR_OPS: &[&str] = &[
    "==",
    "=",
    "!=",
    "glob ",
    "iglob ",
    "contains ",
    "icontains ",
    "bcontains ",
    "startswith ",
    "bstartswith ",
    "endswith ",
    "regex ",
];
const MODIFIERS: &[&str] = &["oneof ", "anyof ", "allof "];
const LIST_OPS: &[&str] = &["intersects", "in", "pmatch"];
const TRANSFORMERS: &[&str] = &[
    "tolower(",
    "toupper(",
    "b64(",
    "basename(",
    "len(",
    "join(",
    "concat(",
    "getopt(",
];

struct Parser<'a> {
    c: Cursor<'a>,
    depth: u32,
    last: String,
}

/// Parses a whole condition.
pub(crate) fn parse(src: &str) -> Result<Expr, ParseError> {
    if src.is_empty() {
        return Err(ParseError {
            at: 0,
            message: "condition is empty".into(),
        });
    }
    let mut p = Parser {
        c: Cursor::new(src),
        depth: 0,
        last: String::new(),
    };
    let e = p.or()?;
    if !p.c.at_end() {
        return Err(p.err(format!(
            "unexpected token after '{}', expecting 'or', 'and'",
            p.last
        )));
    }
    Ok(e)
}

/// Parses a field reference at the start of `src` (for exception `fields`): name and argument.
pub(crate) fn parse_field_ref(src: &str) -> Option<(String, Option<String>)> {
    let mut p = Parser {
        c: Cursor::new(src.trim()),
        depth: 0,
        last: String::new(),
    };
    let name = p.c.field_name()?.to_string();
    let arg = p.field_arg().ok()?;
    p.c.at_end().then_some((name, arg))
}

/// Parses a parenthesised list (`(a, "b c", d)`) making up all of `src` (exception values).
pub(crate) fn parse_list_literal(src: &str) -> Result<Vec<Val>, ParseError> {
    let mut p = Parser {
        c: Cursor::new(src),
        depth: 0,
        last: String::new(),
    };
    let rhs = p.list_value()?;
    p.c.blank();
    if !p.c.at_end() {
        return Err(p.err("unexpected text after the list"));
    }
    match rhs {
        Rhs::List(items) => Ok(items),
        Rhs::ListName(v) => Ok(vec![v]),
        _ => Err(ParseError {
            at: 0,
            message: "expected a list".into(),
        }),
    }
}

/// Parses `%field` in an output format: the longest field reference at the start of `src`.
/// Returns the field name, its argument and the bytes consumed.
pub(crate) fn parse_output_field(src: &str) -> Option<(String, Option<String>, usize)> {
    let mut p = Parser {
        c: Cursor::new(src),
        depth: 0,
        last: String::new(),
    };
    let name = p.c.field_name()?.to_string();
    let save = p.c.pos;
    let arg = match p.field_arg() {
        Ok(a) => a,
        Err(_) => {
            p.c.pos = save;
            None
        }
    };
    Some((name, arg, p.c.pos))
}

impl Parser<'_> {
    fn err(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            at: self.c.pos,
            message: message.into(),
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("condition nested too deeply"));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        self.chain("or", Self::and, Expr::Or)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        self.chain("and", Self::not, Expr::And)
    }

    /// `operand (op operand)*` for the binary operators: `op` must be followed by a blank or an
    /// opening parenthesis; a single operand is returned as is.
    fn chain(
        &mut self,
        op: &'static str,
        operand: fn(&mut Self) -> Result<Expr, ParseError>,
        combine: fn(Vec<Expr>) -> Expr,
    ) -> Result<Expr, ParseError> {
        self.enter()?;
        self.c.blank();
        let mut children = vec![operand(self)?];
        self.c.blank();
        while self.c.eat(op) {
            self.last = op.into();
            let child = if self.c.blank() {
                operand(self)?
            } else if self.c.eat("(") {
                self.embedded()?
            } else {
                return Err(self.err(format!("expected blank or '(' after '{op}'")));
            };
            children.push(child);
            self.c.blank();
        }
        self.depth -= 1;
        Ok(if children.len() == 1 {
            children.remove(0)
        } else {
            combine(children)
        })
    }

    fn not(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        self.c.blank();
        let mut negate = false;
        while self.c.not_blank() {
            negate = !negate;
        }
        let child = if self.c.eat("not(") {
            negate = !negate;
            self.embedded()?
        } else {
            self.check()?
        };
        self.depth -= 1;
        Ok(if negate {
            Expr::Not(Box::new(child))
        } else {
            child
        })
    }

    /// After a '(' has been read.
    fn embedded(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        self.c.blank();
        let e = self.or()?;
        self.c.blank();
        if !self.c.eat(")") {
            return Err(self.err("expected a ')' token"));
        }
        self.last = ")".into();
        self.depth -= 1;
        Ok(e)
    }

    fn check(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        self.c.blank();
        let at = self.c.pos;
        let e = if self.c.eat("(") {
            self.embedded()?
        } else if let Some(name) = self.c.field_name() {
            self.last = name.to_string();
            let arg = self.field_arg()?;
            let lhs = Lhs::Field {
                name: name.to_string(),
                arg,
            };
            self.condition(lhs, at)?
        } else if let Some(t) = self.transformer_start() {
            self.skip_balanced()?;
            self.field_arg()?;
            self.condition(Lhs::Transformer(t), at)?
        } else if let Some(name) = self.c.identifier() {
            self.last = name.to_string();
            Expr::Macro {
                name: name.to_string(),
                at,
            }
        } else {
            return Err(self.err("expected a '(' token, a field check, or an identifier"));
        };
        self.depth -= 1;
        Ok(e)
    }

    fn transformer_start(&mut self) -> Option<String> {
        for t in TRANSFORMERS.iter().chain(std::iter::once(&"val(")) {
            if self.c.eat(t) {
                return Some(format!("field transformer {}", t.trim_end_matches('(')));
            }
        }
        None
    }

    /// Skips to the ')' closing an already opened '(' (transformer arguments).
    fn skip_balanced(&mut self) -> Result<(), ParseError> {
        let mut depth = 1u32;
        loop {
            if self.c.quoted().map_err(|m| self.err(m))?.is_some() {
                continue;
            }
            match self.c.peek() {
                None => return Err(self.err("expected a ')' token closing the transformer")),
                Some(b'(') => depth += 1,
                Some(b')') => {
                    depth -= 1;
                    if depth == 0 {
                        self.c.pos += 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            // Step one character (not byte) to stay on UTF-8 boundaries.
            let step = self.c.rest().chars().next().map_or(1, char::len_utf8);
            self.c.pos += step;
        }
    }

    fn field_arg(&mut self) -> Result<Option<String>, ParseError> {
        if !self.c.eat("[") {
            return Ok(None);
        }
        let arg = match self.c.quoted().map_err(|m| self.err(m))? {
            Some(s) => s,
            None => match self.c.field_arg_bare() {
                Some(s) => s.to_string(),
                None => {
                    return Err(self
                        .err("expected a valid field argument: a quoted string or a bare string"));
                }
            },
        };
        if !self.c.eat("]") {
            return Err(self.err("expected a ']' token"));
        }
        Ok(Some(arg))
    }

    fn condition(&mut self, lhs: Lhs, at: usize) -> Result<Expr, ParseError> {
        self.enter()?;
        self.c.blank();
        if self.c.eat("exists") {
            self.last = "exists".into();
            self.depth -= 1;
            return Ok(Expr::Check {
                lhs,
                op: Ok(Op::Exists),
                rhs: Rhs::None,
                at,
            });
        }
        self.c.blank();
        let (op, rhs) = if let Some(op) = self.c.operator(NUM_OPS) {
            self.last = op.to_string();
            (Ok(Op::from_name(op).unwrap_or(Op::Eq)), self.num_value()?)
        } else if let Some(op) = self.c.operator(STR_OPS) {
            self.last = op.to_string();
            let had_blank = op.as_bytes()[0].is_ascii_alphabetic() || self.c.blank();
            let save = self.c.pos;
            let modifier = if had_blank {
                self.c.operator(MODIFIERS)
            } else {
                None
            };
            let base = Op::from_name(op).unwrap_or(Op::Eq);
            match modifier {
                Some(m) if self.list_follows() && !self.bool_keyword_follows() => (
                    Err(format!("operator modifier '{} {m}'", base.name())),
                    self.list_value()?,
                ),
                _ => {
                    self.c.pos = save;
                    (Ok(base), self.str_value()?)
                }
            }
        } else if let Some(op) = self.c.operator(LIST_OPS) {
            self.last = op.to_string();
            (Ok(Op::from_name(op).unwrap_or(Op::In)), self.list_value()?)
        } else {
            return Err(self.err(
                "expected a valid check operator: one of 'exists', '<=', '<', '>=', '>', '==', '=', '!=', 'glob', 'iglob', 'contains', 'icontains', 'bcontains', 'startswith', 'bstartswith', 'endswith', 'regex', 'intersects', 'in', 'pmatch'",
            ));
        };
        self.depth -= 1;
        Ok(Expr::Check { lhs, op, rhs, at })
    }

    fn list_follows(&mut self) -> bool {
        if self.c.peek() == Some(b'(') {
            return true;
        }
        let save = self.c.pos;
        let r = self.c.identifier().is_some();
        self.c.pos = save;
        r
    }

    fn bool_keyword_follows(&self) -> bool {
        let r = self.c.rest().as_bytes();
        ["and", "or", "not"].iter().any(|kw| {
            r.starts_with(kw.as_bytes())
                && r.get(kw.len()).is_none_or(|c| !c.is_ascii_alphanumeric())
        })
    }

    fn transformer_value(&mut self) -> Result<Option<Rhs>, ParseError> {
        if let Some(t) = self.transformer_start() {
            self.skip_balanced()?;
            self.field_arg()?;
            return Ok(Some(Rhs::Unsupported(t)));
        }
        Ok(None)
    }

    fn num_value(&mut self) -> Result<Rhs, ParseError> {
        self.c.blank();
        let at = self.c.pos;
        if let Some(t) = self.transformer_value()? {
            return Ok(t);
        }
        match self.c.number() {
            Some(n) => {
                self.last = n.to_string();
                Ok(Rhs::Value(Val {
                    text: n.to_string(),
                    quoted: false,
                    at,
                }))
            }
            None => Err(self.err("expected a number value")),
        }
    }

    fn plain_str(&mut self) -> Result<Option<Val>, ParseError> {
        let at = self.c.pos;
        if let Some(s) = self.c.quoted().map_err(|m| ParseError { at, message: m })? {
            self.last = s.clone();
            return Ok(Some(Val {
                text: s,
                quoted: true,
                at,
            }));
        }
        if let Some(s) = self.c.bare_str() {
            self.last = s.to_string();
            return Ok(Some(Val {
                text: s.to_string(),
                quoted: false,
                at,
            }));
        }
        Ok(None)
    }

    fn str_value(&mut self) -> Result<Rhs, ParseError> {
        self.c.blank();
        if let Some(t) = self.transformer_value()? {
            return Ok(t);
        }
        match self.plain_str()? {
            Some(v) => Ok(Rhs::Value(v)),
            None => Err(self.err("expected a string value")),
        }
    }

    fn list_value(&mut self) -> Result<Rhs, ParseError> {
        self.c.blank();
        let at = self.c.pos;
        if self.c.eat("(") {
            let mut items = Vec::new();
            self.c.blank();
            if let Some(v) = self.plain_str()? {
                items.push(v);
                self.c.blank();
                while self.c.eat(",") {
                    self.c.blank();
                    match self.plain_str()? {
                        Some(v) => items.push(v),
                        None => return Err(self.err("expected a string value")),
                    }
                    self.c.blank();
                }
            }
            if !self.c.eat(")") {
                return Err(self.err("expected a ')' token"));
            }
            self.last = ")".into();
            return Ok(Rhs::List(items));
        }
        if let Some(t) = self.transformer_value()? {
            return Ok(t);
        }
        if let Some(name) = self.c.identifier() {
            self.last = name.to_string();
            return Ok(Rhs::ListName(Val {
                text: name.to_string(),
                quoted: false,
                at,
            }));
        }
        Err(self.err("expected a list or an identifier"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str) -> Lhs {
        Lhs::Field {
            name: name.into(),
            arg: None,
        }
    }

    #[test]
    fn precedence_not_and_or() {
        let e = parse("a or not b and c").unwrap();
        let Expr::Or(v) = e else { panic!("{e:?}") };
        assert!(matches!(&v[0], Expr::Macro { name, .. } if name == "a"));
        let Expr::And(w) = &v[1] else { panic!() };
        assert!(matches!(&w[0], Expr::Not(_)));
        assert!(matches!(&w[1], Expr::Macro { name, .. } if name == "c"));
    }

    #[test]
    fn double_not_cancels() {
        assert!(matches!(parse("not not a").unwrap(), Expr::Macro { .. }));
        assert!(matches!(parse("not(a)").unwrap(), Expr::Not(_)));
    }

    #[test]
    fn checks() {
        let e = parse("proc.name in (bash, 'sh', \"z sh\")").unwrap();
        let Expr::Check {
            lhs,
            op,
            rhs: Rhs::List(items),
            ..
        } = e
        else {
            panic!()
        };
        assert_eq!(lhs, field("proc.name"));
        assert_eq!(op, Ok(Op::In));
        let texts: Vec<_> = items.iter().map(|v| (v.text.as_str(), v.quoted)).collect();
        assert_eq!(texts, vec![("bash", false), ("sh", true), ("z sh", true)]);

        let e = parse("proc.aname[2]=sshd").unwrap();
        let Expr::Check {
            lhs: Lhs::Field { arg, .. },
            ..
        } = e
        else {
            panic!()
        };
        assert_eq!(arg.as_deref(), Some("2"));

        assert!(matches!(
            parse("proc.pname exists").unwrap(),
            Expr::Check {
                op: Ok(Op::Exists),
                ..
            }
        ));
        assert!(matches!(
            parse("evt.rawres >= 0").unwrap(),
            Expr::Check { op: Ok(Op::Ge), .. }
        ));
        assert!(
            matches!(parse("proc.name in ()").unwrap(), Expr::Check { rhs: Rhs::List(v), .. } if v.is_empty())
        );
        assert!(matches!(
            parse("proc.name in shell_binaries").unwrap(),
            Expr::Check {
                rhs: Rhs::ListName(_),
                ..
            }
        ));
    }

    #[test]
    fn unsupported_constructs_parse() {
        assert!(matches!(
            parse("tolower(proc.name) = bash").unwrap(),
            Expr::Check {
                lhs: Lhs::Transformer(_),
                ..
            }
        ));
        assert!(matches!(
            parse("proc.name = val(proc.pname)").unwrap(),
            Expr::Check {
                rhs: Rhs::Unsupported(_),
                ..
            }
        ));
        assert!(matches!(
            parse("proc.name startswith oneof (a, b)").unwrap(),
            Expr::Check { op: Err(_), .. }
        ));
    }

    #[test]
    fn errors_have_offsets() {
        let e = parse("proc.name = bash and (a or b").unwrap_err();
        assert_eq!(e.message, "expected a ')' token");
        assert_eq!(e.at, 28);
        let e = parse("proc.name bash").unwrap_err();
        assert!(e.message.starts_with("expected a valid check operator"));
        assert_eq!(parse("").unwrap_err().message, "condition is empty");
        let e = parse("a b").unwrap_err();
        assert_eq!(
            e.message,
            "unexpected token after 'a', expecting 'or', 'and'"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let s = "(".repeat(100_000) + "a" + &")".repeat(100_000);
        assert!(parse(&s).is_err());
        let s = "not ".repeat(100_000) + "a";
        assert!(parse(&s).is_ok());
    }
}
