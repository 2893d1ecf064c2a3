//! A YAML tree that remembers the line and column of every node, so that every error in a
//! rules file can point at the line that caused it.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Line and column, both from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub(crate) line: u32,
    pub(crate) col: u32,
}

impl Pos {
    fn from_marker(m: &Marker) -> Pos {
        Pos {
            line: clamp(m.line()),
            col: clamp(m.col().saturating_add(1)),
        }
    }
}

fn clamp(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[derive(Clone, Debug)]
pub(crate) enum Node {
    Scalar {
        value: String,
        quoted: bool,
        block: bool,
        pos: Pos,
    },
    Seq {
        items: Vec<Node>,
        pos: Pos,
    },
    Map {
        entries: Vec<(Node, Node)>,
        pos: Pos,
    },
}

impl Node {
    pub(crate) fn pos(&self) -> Pos {
        match self {
            Node::Scalar { pos, .. } | Node::Seq { pos, .. } | Node::Map { pos, .. } => *pos,
        }
    }

    /// YAML's null: `~`, `null`, or nothing at all (plain scalars only).
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Node::Scalar { value, quoted: false, block: false, .. }
            if value.is_empty() || value == "~" || value == "null" || value == "Null" || value == "NULL")
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The value under `key` in a mapping (the last one if repeated, as yaml-cpp does).
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map { entries, .. } => entries
                .iter()
                .rev()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Node::Scalar { .. } => "a scalar",
            Node::Seq { .. } => "a sequence",
            Node::Map { .. } => "a mapping",
        }
    }
}

/// A YAML syntax error.
#[derive(Debug)]
pub(crate) struct YamlError {
    pub(crate) pos: Pos,
    pub(crate) message: String,
}

// Aliases copy subtrees; without a bound, a few lines of anchors expand to gigabytes.
const MAX_NODES: usize = 2_000_000;
const MAX_DEPTH: usize = 512;

enum Open {
    Seq {
        items: Vec<Node>,
        pos: Pos,
        anchor: usize,
    },
    Map {
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        pos: Pos,
        anchor: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    docs: Vec<Node>,
    anchors: Vec<(usize, Node)>,
    nodes: usize,
    error: Option<YamlError>,
}

impl Builder {
    fn fail(&mut self, pos: Pos, message: &str) {
        if self.error.is_none() {
            self.error = Some(YamlError {
                pos,
                message: message.to_string(),
            });
        }
    }

    fn count(&mut self, n: usize, pos: Pos) -> bool {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            self.fail(pos, "document too large (alias expansion?)");
            return false;
        }
        true
    }

    fn push_value(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.push((anchor, node.clone()));
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

fn size(node: &Node) -> usize {
    match node {
        Node::Scalar { .. } => 1,
        Node::Seq { items, .. } => 1 + items.iter().map(size).sum::<usize>(),
        Node::Map { entries, .. } => {
            1 + entries
                .iter()
                .map(|(k, v)| size(k) + size(v))
                .sum::<usize>()
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let pos = Pos::from_marker(&mark);
        match ev {
            Event::Scalar(value, style, anchor, _tag) => {
                if !self.count(1, pos) {
                    return;
                }
                let quoted = matches!(
                    style,
                    TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted
                );
                let block = matches!(style, TScalarStyle::Literal | TScalarStyle::Folded);
                self.push_value(
                    Node::Scalar {
                        value,
                        quoted,
                        block,
                        pos,
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return self.fail(pos, "nesting too deep");
                }
                self.stack.push(Open::Seq {
                    items: Vec::new(),
                    pos,
                    anchor,
                });
            }
            Event::MappingStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return self.fail(pos, "nesting too deep");
                }
                self.stack.push(Open::Map {
                    entries: Vec::new(),
                    key: None,
                    pos,
                    anchor,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Open::Seq { items, pos, anchor }) => {
                    if self.count(1, pos) {
                        self.push_value(Node::Seq { items, pos }, anchor);
                    }
                }
                Some(Open::Map {
                    entries,
                    pos,
                    anchor,
                    ..
                }) => {
                    // The parser marks a block mapping after its first key; its first key is
                    // where a reader sees it start.
                    let pos = entries.first().map_or(pos, |(k, _)| k.pos());
                    if self.count(1, pos) {
                        self.push_value(Node::Map { entries, pos }, anchor);
                    }
                }
                None => self.fail(pos, "unbalanced collection end"),
            },
            Event::Alias(id) => {
                let Some(node) = self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == id)
                    .map(|(_, n)| n.clone())
                else {
                    return self.fail(pos, "unknown alias");
                };
                if self.count(size(&node), pos) {
                    self.push_value(node, 0);
                }
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// Parses every document in `text`.
pub(crate) fn parse(text: &str) -> Result<Vec<Node>, YamlError> {
    match parse_strict(text) {
        Err(e) if e.message.contains("invalid indentation") => {
            // yaml-cpp (Falco) accepts a flow sequence closed by a `]` less indented than its
            // items when the last item is quoted; yaml-rust2 does not (the upstream sandbox
            // rules do this). Retry with such closing lines indented like the line before;
            // text that parses as is is never altered.
            match reindent_closers(text) {
                Some(fixed) => parse_strict(&fixed).map_err(|_| e),
                None => Err(e),
            }
        }
        other => other,
    }
}

/// Indents lines holding only closing brackets (`]`, `}`, commas, a comment) that are less
/// indented than the previous non-blank line. `None` when there is no such line.
fn reindent_closers(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 64);
    let mut prev_indent = 0usize;
    let mut changed = false;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let indent = body.len() - body.trim_start_matches(' ').len();
        let rest = body[indent..].trim_end();
        let code = rest.split('#').next().unwrap_or("").trim_end();
        let closer = !code.is_empty()
            && code.starts_with([']', '}'])
            && code.chars().all(|c| matches!(c, ']' | '}' | ',' | ' '));
        if closer && indent < prev_indent {
            out.push_str(&" ".repeat(prev_indent));
            out.push_str(&line[indent..]);
            changed = true;
            continue;
        }
        if !rest.is_empty() && !rest.starts_with('#') {
            prev_indent = indent;
        }
        out.push_str(line);
    }
    changed.then_some(out)
}

// yaml-rust2 recurses once per nested block collection and overflows the stack on a few
// thousand (`- - - - ...`): refuse deep block nesting before it gets there. Rules files nest a
// handful of levels.
const MAX_BLOCK_PREFIX: usize = 256;

/// The line whose block-structure prefix (indentation plus `- `/`? ` indicators) is too long.
fn too_deep(text: &str) -> Option<u32> {
    for (n, line) in text.lines().enumerate() {
        let b = line.as_bytes();
        let mut i = 0;
        while i < b.len() && i <= MAX_BLOCK_PREFIX {
            match b[i] {
                b' ' | b'\t' => i += 1,
                b'-' | b'?' if matches!(b.get(i + 1), None | Some(b' ' | b'\t')) => i += 2,
                _ => break,
            }
        }
        if i > MAX_BLOCK_PREFIX {
            return Some(u32::try_from(n + 1).unwrap_or(u32::MAX));
        }
    }
    None
}

fn parse_strict(text: &str) -> Result<Vec<Node>, YamlError> {
    if let Some(line) = too_deep(text) {
        return Err(YamlError {
            pos: Pos { line, col: 1 },
            message: format!(
                "nesting too deep (more than {MAX_BLOCK_PREFIX} columns of indentation and '- ')"
            ),
        });
    }
    // yaml-rust2 is fuzzed upstream, but a panic in a dependency must not take the sensor down:
    // a rules file is outside input.
    let result = std::panic::catch_unwind(|| {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        let loaded = parser.load(&mut builder, true);
        (loaded, builder)
    });
    let (loaded, builder) = match result {
        Ok(v) => v,
        Err(_) => {
            return Err(YamlError {
                pos: Pos::default(),
                message: "YAML parser failed".to_string(),
            });
        }
    };
    if let Err(e) = loaded {
        return Err(YamlError {
            pos: Pos::from_marker(e.marker()),
            message: e.info().to_string(),
        });
    }
    if let Some(e) = builder.error {
        return Err(e);
    }
    Ok(builder.docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let docs = parse("- rule: x\n  condition: >\n    a and\n    b\n").unwrap();
        let Node::Seq { items, .. } = &docs[0] else {
            panic!()
        };
        let item = &items[0];
        assert_eq!(item.get("rule").unwrap().pos(), Pos { line: 1, col: 9 });
        let cond = item.get("condition").unwrap();
        assert_eq!(cond.as_str(), Some("a and b\n"));
        // Block scalars: where the text itself begins.
        assert_eq!(cond.pos().line, 3);
    }

    #[test]
    fn closing_bracket_less_indented_than_a_quoted_last_item() {
        let docs =
            parse("- list: a\n  items: [\n    \"x\",\n    \"y\"\n  ]\n- list: b\n  items: [c]\n")
                .unwrap();
        let Node::Seq { items, .. } = &docs[0] else {
            panic!()
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].get("list").unwrap().pos().line, 6);
    }

    #[test]
    fn deep_block_nesting_is_refused_before_the_parser_overflows() {
        let e = parse(&format!("{}x\n", "- ".repeat(20_000))).unwrap_err();
        assert!(e.message.contains("nesting too deep"));
        assert!(parse(&format!("{}x\n", "- ".repeat(120))).is_ok());
        assert!(parse(&format!("a: |\n  {}\n", "-".repeat(1000))).is_ok());
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            s.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n", p = i - 1));
        }
        assert!(parse(&s).is_err());
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("- rule: x\n  condition: [a\n").unwrap_err();
        assert!(e.pos.line >= 2, "{:?}", e);
    }
}
