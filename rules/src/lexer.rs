//! Token-level reading of Falco conditions. Falco's parser (libsinsp `filter/parser.cpp`) has no
//! separate token stream: it matches patterns at a cursor. This mirrors those patterns one by
//! one, so that what Falco accepts as a bare string, a field name or a number, this accepts too.

/// A cursor over condition text. Positions are byte offsets.
pub(crate) struct Cursor<'a> {
    src: &'a str,
    pub(crate) pos: usize,
}

/// Falco's blanks (`lex_blank`): note `\b`, and no `\v`/`\f`.
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x08 | b'\r' | b'\n')
}

/// POSIX `[[:space:]]`.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn is_ident_rest(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        Cursor { src, pos: 0 }
    }

    pub(crate) fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn bytes(&self) -> &'a [u8] {
        self.rest().as_bytes()
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.bytes().first().copied()
    }

    /// Skips blanks; true if there were any.
    pub(crate) fn blank(&mut self) -> bool {
        let n = self.bytes().iter().take_while(|b| is_blank(**b)).count();
        self.pos += n;
        n > 0
    }

    /// Consumes `s` if the text continues with it.
    pub(crate) fn eat(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn take(&mut self, n: usize) -> &'a str {
        let start = self.pos;
        self.pos += n;
        self.src.get(start..self.pos).unwrap_or("")
    }

    /// `not[[:space:]]+`
    pub(crate) fn not_blank(&mut self) -> bool {
        let b = self.bytes();
        if b.starts_with(b"not") && b.get(3).is_some_and(|c| is_space(*c)) {
            let n = 3 + b[3..].iter().take_while(|c| is_space(**c)).count();
            self.pos += n;
            true
        } else {
            false
        }
    }

    fn ident_len(b: &[u8]) -> usize {
        if b.first().is_some_and(|c| c.is_ascii_alphabetic()) {
            1 + b[1..].iter().take_while(|c| is_ident_rest(**c)).count()
        } else {
            0
        }
    }

    /// `[a-zA-Z]+[a-zA-Z0-9_]*`
    pub(crate) fn identifier(&mut self) -> Option<&'a str> {
        let n = Self::ident_len(self.bytes());
        (n > 0).then(|| self.take(n))
    }

    /// `[a-zA-Z]+[a-zA-Z0-9_]*(\.[a-zA-Z]+[a-zA-Z0-9_]*)+`
    pub(crate) fn field_name(&mut self) -> Option<&'a str> {
        let b = self.bytes();
        let mut n = Self::ident_len(b);
        if n == 0 {
            return None;
        }
        let mut segments = 0;
        while b.get(n) == Some(&b'.') {
            let m = Self::ident_len(&b[n + 1..]);
            if m == 0 {
                break;
            }
            n += 1 + m;
            segments += 1;
        }
        (segments > 0).then(|| self.take(n))
    }

    /// `[^][\"'[:space:]]+` (a field argument without quotes).
    pub(crate) fn field_arg_bare(&mut self) -> Option<&'a str> {
        let n = self
            .bytes()
            .iter()
            .take_while(|c| !matches!(**c, b'[' | b']' | b'"' | b'\'') && !is_space(**c))
            .count();
        (n > 0).then(|| self.take(n))
    }

    /// `[^()\"'[:space:]=,]+`
    pub(crate) fn bare_str(&mut self) -> Option<&'a str> {
        let n = self
            .bytes()
            .iter()
            .take_while(|c| {
                !matches!(**c, b'(' | b')' | b'"' | b'\'' | b'=' | b',') && !is_space(**c)
            })
            .count();
        (n > 0).then(|| self.take(n))
    }

    /// `0[xX][0-9a-fA-F]+` or `[+\-]?[0-9]+[\.]?[0-9]*([eE][+\-][0-9]+)?`
    pub(crate) fn number(&mut self) -> Option<&'a str> {
        let b = self.bytes();
        if b.len() > 2 && b[0] == b'0' && (b[1] == b'x' || b[1] == b'X') {
            let h = b[2..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
            if h > 0 {
                return Some(self.take(2 + h));
            }
        }
        let mut n = usize::from(matches!(b.first(), Some(b'+' | b'-')));
        let digits = b[n..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        n += digits;
        if b.get(n) == Some(&b'.') {
            n += 1;
        }
        n += b[n..].iter().take_while(|c| c.is_ascii_digit()).count();
        if matches!(b.get(n), Some(b'e' | b'E')) && matches!(b.get(n + 1), Some(b'+' | b'-')) {
            let e = b[n + 2..].iter().take_while(|c| c.is_ascii_digit()).count();
            if e > 0 {
                n += 2 + e;
            }
        }
        Some(self.take(n))
    }

    /// A `'...'` or `"..."` string, unescaped. `Ok(None)`: no string here (or unterminated, as
    /// Falco backtracks then); `Err`: a bad escape.
    pub(crate) fn quoted(&mut self) -> Result<Option<String>, String> {
        let b = self.bytes();
        let Some(&delim) = b.first() else {
            return Ok(None);
        };
        if delim != b'"' && delim != b'\'' {
            return Ok(None);
        }
        // Falco ends the string at the first delimiter not preceded by a backslash (so `\\"`
        // does not end it either: kept for compatibility).
        let mut prev = delim;
        for (i, &c) in b.iter().enumerate().skip(1) {
            if c == delim && prev != b'\\' {
                let raw = self.take(i + 1);
                return unescape(raw).map(Some);
            }
            prev = c;
        }
        Ok(None)
    }

    /// Matches an operator keyword; keywords ending in a space need a blank after them.
    pub(crate) fn operator(&mut self, ops: &[&'static str]) -> Option<&'static str> {
        for op in ops {
            if let Some(word) = op.strip_suffix(' ') {
                let save = self.pos;
                if self.eat(word) {
                    if self.blank() {
                        return Some(word);
                    }
                    self.pos = save;
                }
            } else if self.eat(op) {
                return Some(op);
            }
        }
        None
    }

    /// Line and column (from 1) of a byte offset.
    pub(crate) fn line_col(src: &str, offset: usize) -> (u32, u32) {
        let upto = src.get(..offset.min(src.len())).unwrap_or(src);
        let line = upto.bytes().filter(|b| *b == b'\n').count() + 1;
        let col = upto
            .rsplit('\n')
            .next()
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(col).unwrap_or(u32::MAX),
        )
    }
}

/// Falco's `unescape_str`: `raw` includes both quotes.
pub(crate) fn unescape(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    if bytes.len() < 2 {
        return Ok(String::new());
    }
    let delim = bytes[0];
    let inner = &bytes[1..bytes.len() - 1];
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let Some(&e) = inner.get(i + 1) else {
            // A trailing lone backslash: Falco drops it.
            break;
        };
        match e {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b' ' | b'\\' => out.push(b'\\'),
            b'/' => out.push(b'/'),
            b'"' | b'\'' => {
                if e != delim {
                    return Err(format!(
                        "invalid \\{} escape in a {}-quoted string",
                        e as char, delim as char
                    ));
                }
                out.push(e);
            }
            b'x' => {
                let hex = inner.get(i + 2..i + 4).ok_or("truncated hex escape")?;
                let s = std::str::from_utf8(hex).map_err(|_| "invalid hex escape".to_string())?;
                let v =
                    u8::from_str_radix(s, 16).map_err(|_| format!("invalid hex escape \\x{s}"))?;
                out.push(v);
                i += 2;
            }
            other => return Err(format!("unsupported escape sequence \\{}", other as char)),
        }
        i += 2;
    }
    String::from_utf8(out).map_err(|_| "escaped string is not valid UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_strings_stop_where_falco_stops() {
        let mut c = Cursor::new("runc:[0:PARENT], x");
        assert_eq!(c.bare_str(), Some("runc:[0:PARENT]"));
        let mut c = Cursor::new("/etc/shadow)");
        assert_eq!(c.bare_str(), Some("/etc/shadow"));
    }

    #[test]
    fn field_names_need_a_dot() {
        assert_eq!(
            Cursor::new("proc.aname[2]").field_name(),
            Some("proc.aname")
        );
        assert_eq!(
            Cursor::new("fd.sip.name=x").field_name(),
            Some("fd.sip.name")
        );
        assert_eq!(Cursor::new("shell_procs").field_name(), None);
        assert_eq!(Cursor::new("evt.type.").field_name(), Some("evt.type"));
    }

    #[test]
    fn numbers() {
        assert_eq!(Cursor::new("0x1F ").number(), Some("0x1F"));
        assert_eq!(Cursor::new("-12)").number(), Some("-12"));
        assert_eq!(Cursor::new("5000000000 ").number(), Some("5000000000"));
        assert_eq!(Cursor::new("abc").number(), None);
    }

    #[test]
    fn quoted_strings_unescape() {
        assert_eq!(
            Cursor::new(r#""a \"b\"" x"#).quoted(),
            Ok(Some("a \"b\"".to_string()))
        );
        assert_eq!(Cursor::new("'it''s'").quoted(), Ok(Some("it".to_string())));
        assert_eq!(Cursor::new(r#""\x41""#).quoted(), Ok(Some("A".to_string())));
        assert!(Cursor::new(r#""\q""#).quoted().is_err());
        assert!(Cursor::new(r#"'\"'"#).quoted().is_err());
        assert_eq!(Cursor::new("\"open").quoted(), Ok(None));
        assert_eq!(Cursor::new("\"\")").quoted(), Ok(Some(String::new())));
    }

    #[test]
    fn word_operators_need_a_blank() {
        let mut c = Cursor::new("containsx");
        assert_eq!(c.operator(&["contains "]), None);
        let mut c = Cursor::new("contains x");
        assert_eq!(c.operator(&["contains "]), Some("contains"));
    }
}
