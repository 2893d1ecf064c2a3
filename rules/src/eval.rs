//! The compiled form of a condition and its evaluation.
//!
//! Everything that can be prepared is prepared at compile time: regexes compiled, `icontains`
//! needles lowercased, `in` sets sorted, networks parsed, `evt.type` tests folded away per event
//! type. Evaluating reads borrowed values from the event and never allocates.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use crate::event::{EventView, FieldArg, TypeMask, Value};
use crate::fields::FieldId;

/// How many ancestors "any ancestor" looks at, at most (Falco walks until the chain ends; the
/// bound keeps a looping or absurdly deep lineage from the agent harmless).
pub(crate) const MAX_ANCESTORS: u32 = 64;
/// How many elements of a list field are looked at, at most.
pub(crate) const MAX_LIST: u32 = 1024;

#[derive(Clone, Debug)]
pub(crate) enum Node {
    Const(bool),
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Check(Check),
    /// `evt.type` test: true for these types. Folded away before evaluation.
    EvtType(TypeMask),
    /// A leaf that cannot be evaluated (field not captured...): present only until the rule is
    /// specialised per type; a rule where one survives is not compiled.
    Missing {
        what: Missing,
        events: TypeMask,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Missing {
    NotCaptured(String),
    /// Not a field at all (reported from the resolver's own list).
    Unknown(String),
    Unsupported(String),
}

#[derive(Clone, Debug)]
pub(crate) struct Check {
    pub(crate) field: FieldId,
    pub(crate) access: Access,
    pub(crate) pred: Pred,
    /// Event types the field can have a value on; elsewhere the check is false.
    pub(crate) events: TypeMask,
}

#[derive(Clone, Debug)]
pub(crate) enum Access {
    Plain,
    Index(u32),
    Key(Box<str>),
    /// True if any ancestor (from the parent up) satisfies the predicate.
    AnyAncestor,
    /// List field, `intersects`/`exists`: any element.
    ListAny,
    /// List field, `in`: every element (and at least one).
    ListAll,
}

#[derive(Clone, Debug)]
pub(crate) enum Pred {
    Exists,
    Str(StrPred),
    Num(NumPred),
    Bool {
        accept_true: bool,
        accept_false: bool,
    },
    Ip(IpPred),
}

#[derive(Clone, Debug)]
pub(crate) enum StrPred {
    Eq(Box<str>),
    Ne(Box<str>),
    Lt(Box<str>),
    Le(Box<str>),
    Gt(Box<str>),
    Ge(Box<str>),
    Contains(Box<str>),
    /// Needle already ASCII-lowercased.
    IContains(Box<[u8]>),
    StartsWith(Box<str>),
    EndsWith(Box<str>),
    BContains(Box<[u8]>),
    BStartsWith(Box<[u8]>),
    Glob(Glob),
    IGlob(Glob),
    Regex(regex::Regex),
    In(StrSet),
    PMatch(PathSet),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NumOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug)]
pub(crate) enum NumPred {
    Cmp(NumOp, i128),
    /// Sorted.
    In(Box<[i128]>),
}

#[derive(Clone, Debug)]
pub(crate) enum IpPred {
    Eq(IpAddr),
    Ne(IpAddr),
    In(Box<[IpAddr]>),
    NetIn(Box<[Cidr]>),
    NetNotIn(Box<[Cidr]>),
}

/// A network: address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `fe80::/10`, or a bare address (a /32 or /128).
    pub(crate) fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                (u32::from(n) & mask) == (u32::from(a) & mask)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                (u128::from(n) & mask) == (u128::from(a) & mask)
            }
            // An IPv4-mapped IPv6 address belongs to the IPv4 network.
            (IpAddr::V4(_), IpAddr::V6(a)) => a
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

/// An exact-match string set. Conditions are full of short names (`proc.name in (...)`), where
/// a libc `memcmp` call per candidate costs more than the comparison: small sets scan with a
/// length and first-byte filter, larger ones hash (FxHash-style, no per-process random key:
/// the keys come from the rules file, not from the event).
#[derive(Clone, Debug)]
pub(crate) struct StrSet {
    small: Box<[Box<str>]>,
    large: Option<HashSet<Box<str>, BuildHasherDefault<FxHasher>>>,
    min_len: usize,
    max_len: usize,
}

const SMALL_SET: usize = 12;

impl StrSet {
    pub(crate) fn new(mut items: Vec<String>) -> StrSet {
        items.sort_unstable();
        items.dedup();
        let min_len = items.iter().map(String::len).min().unwrap_or(0);
        let max_len = items.iter().map(String::len).max().unwrap_or(0);
        let boxed: Vec<Box<str>> = items.into_iter().map(String::into_boxed_str).collect();
        if boxed.len() <= SMALL_SET {
            StrSet {
                small: boxed.into(),
                large: None,
                min_len,
                max_len,
            }
        } else {
            StrSet {
                small: Box::new([]),
                large: Some(boxed.into_iter().collect()),
                min_len,
                max_len,
            }
        }
    }

    pub(crate) fn contains(&self, s: &str) -> bool {
        if s.len() < self.min_len || s.len() > self.max_len {
            return false;
        }
        match &self.large {
            Some(set) => set.contains(s),
            None => self.small.iter().any(|i| str_eq(i, s)),
        }
    }
}

/// Equality with the cheap rejections first.
#[inline]
fn str_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes().first() == b.as_bytes().first() && a == b
}

#[inline]
fn starts_with(s: &str, p: &str) -> bool {
    s.len() >= p.len() && s.as_bytes().first() == p.as_bytes().first() || p.is_empty()
}

#[inline]
fn ends_with(s: &str, p: &str) -> bool {
    s.len() >= p.len() && s.as_bytes().last() == p.as_bytes().last() || p.is_empty()
}

/// The Fx hash (rustc's): a multiply and rotate per word.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(K);
        }
    }
}

/// `pmatch` prefixes: a path matches if one prefix's components are its leading components
/// (`*` matching any one component), as libsinsp's `path_prefix_search`.
#[derive(Clone, Debug)]
pub(crate) struct PathSet {
    prefixes: Box<[Box<[Box<str>]>]>,
}

impl PathSet {
    pub(crate) fn new(items: &[String]) -> PathSet {
        let prefixes = items
            .iter()
            .map(|p| {
                p.split('/')
                    .filter(|c| !c.is_empty())
                    .map(Box::from)
                    .collect::<Box<[Box<str>]>>()
            })
            .collect();
        PathSet { prefixes }
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        self.prefixes.iter().any(|prefix| {
            let mut comps = path.split('/').filter(|c| !c.is_empty());
            prefix
                .iter()
                .all(|want| comps.next().is_some_and(|c| &**want == "*" || c == &**want))
        })
    }
}

/// A shell pattern, matched like `fnmatch(3)` without flags: `*` and `?` also match `/`,
/// `[...]` sets with ranges and `!`/`^` negation, `\` escapes.
#[derive(Clone, Debug)]
pub(crate) struct Glob {
    pattern: Box<[u8]>,
    fold_case: bool,
}

impl Glob {
    pub(crate) fn new(pattern: &str, fold_case: bool) -> Glob {
        let p = if fold_case {
            pattern.to_ascii_lowercase()
        } else {
            pattern.to_string()
        };
        Glob {
            pattern: p.into_bytes().into_boxed_slice(),
            fold_case,
        }
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        let text = s.as_bytes();
        let pat = &self.pattern;
        let fold = |b: u8| {
            if self.fold_case {
                b.to_ascii_lowercase()
            } else {
                b
            }
        };
        let (mut p, mut t) = (0usize, 0usize);
        // Classic single-backtrack matching: the last `*` absorbs one more byte on mismatch.
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            let c = fold(text[t]);
            let step = match pat.get(p) {
                Some(b'*') => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                Some(b'?') => Some(p + 1),
                Some(b'[') => match class_match(pat, p, c) {
                    Some((true, next)) => Some(next),
                    Some((false, _)) => None,
                    // An unclosed '[' is a literal.
                    None => (c == b'[').then_some(p + 1),
                },
                Some(b'\\') if p + 1 < pat.len() => (pat[p + 1] == c).then_some(p + 2),
                Some(&lit) => (lit == c).then_some(p + 1),
                None => None,
            };
            match step {
                Some(np) => {
                    p = np;
                    t += 1;
                }
                None => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        pat[p..].iter().all(|b| *b == b'*')
    }
}

/// Matches byte `c` against the set starting at `pat[p] == '['`: (matched, index after ']').
fn class_match(pat: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = p + 1;
    let negate = matches!(pat.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let b = *pat.get(i)?;
        if b == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        let lo = if b == b'\\' {
            i += 1;
            *pat.get(i)?
        } else {
            b
        };
        if pat.get(i + 1) == Some(&b'-') && pat.get(i + 2).is_some_and(|n| *n != b']') {
            let hi = *pat.get(i + 2)?;
            if lo <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if lo == c {
                matched = true;
            }
            i += 1;
        }
    }
}

fn icontains(hay: &str, needle: &[u8]) -> bool {
    let h = hay.as_bytes();
    if needle.is_empty() {
        return true;
    }
    if needle.len() > h.len() {
        return false;
    }
    let first = needle[0];
    (0..=h.len() - needle.len()).any(|i| {
        h[i].to_ascii_lowercase() == first
            && h[i + 1..i + needle.len()]
                .iter()
                .zip(&needle[1..])
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
    })
}

fn bytes_contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

impl StrPred {
    pub(crate) fn test(&self, s: &str) -> bool {
        match self {
            StrPred::Eq(v) => str_eq(s, v),
            StrPred::Ne(v) => !str_eq(s, v),
            StrPred::Lt(v) => s < &**v,
            StrPred::Le(v) => s <= &**v,
            StrPred::Gt(v) => s > &**v,
            StrPred::Ge(v) => s >= &**v,
            StrPred::Contains(v) => s.contains(&**v),
            StrPred::IContains(v) => icontains(s, v),
            StrPred::StartsWith(v) => starts_with(s, v) && s.starts_with(&**v),
            StrPred::EndsWith(v) => ends_with(s, v) && s.ends_with(&**v),
            StrPred::BContains(v) => bytes_contains(s.as_bytes(), v),
            StrPred::BStartsWith(v) => s.as_bytes().starts_with(v),
            StrPred::Glob(g) | StrPred::IGlob(g) => g.matches(s),
            StrPred::Regex(r) => r.is_match(s),
            StrPred::In(set) => set.contains(s),
            StrPred::PMatch(p) => p.matches(s),
        }
    }
}

impl NumPred {
    fn test(&self, n: i128) -> bool {
        match self {
            NumPred::Cmp(op, v) => match op {
                NumOp::Eq => n == *v,
                NumOp::Ne => n != *v,
                NumOp::Lt => n < *v,
                NumOp::Le => n <= *v,
                NumOp::Gt => n > *v,
                NumOp::Ge => n >= *v,
            },
            NumPred::In(set) => set.binary_search(&n).is_ok(),
        }
    }
}

impl IpPred {
    fn test(&self, ip: IpAddr) -> bool {
        match self {
            IpPred::Eq(a) => ip == *a,
            IpPred::Ne(a) => ip != *a,
            IpPred::In(set) => set.contains(&ip),
            IpPred::NetIn(nets) => nets.iter().any(|n| n.contains(ip)),
            IpPred::NetNotIn(nets) => !nets.iter().any(|n| n.contains(ip)),
        }
    }
}

impl Pred {
    /// Absent values and values of the wrong type never satisfy anything (Falco: a field that
    /// cannot be extracted makes the comparison false, `!=` included).
    pub(crate) fn test(&self, v: Value<'_>) -> bool {
        match (self, v) {
            (_, Value::Absent) => false,
            (Pred::Exists, _) => true,
            (Pred::Str(p), Value::Str(s)) => p.test(s),
            (Pred::Num(p), Value::U64(n)) => p.test(i128::from(n)),
            (Pred::Num(p), Value::I64(n)) => p.test(i128::from(n)),
            (
                Pred::Bool {
                    accept_true,
                    accept_false,
                },
                Value::Bool(b),
            ) => {
                if b {
                    *accept_true
                } else {
                    *accept_false
                }
            }
            (Pred::Ip(p), Value::Ip(ip)) => p.test(ip),
            _ => false,
        }
    }

    /// Relative cost, to evaluate cheap checks first inside `and`/`or`.
    fn cost(&self) -> u32 {
        match self {
            Pred::Exists | Pred::Num(_) | Pred::Bool { .. } | Pred::Ip(_) => 1,
            Pred::Str(StrPred::Eq(_) | StrPred::Ne(_) | StrPred::In(_)) => 2,
            Pred::Str(StrPred::StartsWith(_) | StrPred::EndsWith(_) | StrPred::BStartsWith(_)) => 2,
            Pred::Str(StrPred::Lt(_) | StrPred::Le(_) | StrPred::Gt(_) | StrPred::Ge(_)) => 2,
            Pred::Str(StrPred::Contains(_) | StrPred::PMatch(_) | StrPred::BContains(_)) => 4,
            Pred::Str(StrPred::IContains(_) | StrPred::Glob(_) | StrPred::IGlob(_)) => 6,
            Pred::Str(StrPred::Regex(_)) => 12,
        }
    }
}

impl Check {
    pub(crate) fn eval<E: EventView + ?Sized>(&self, ev: &E) -> bool {
        match &self.access {
            Access::Plain => self.pred.test(ev.field(self.field, FieldArg::None)),
            Access::Index(i) => self.pred.test(ev.field(self.field, FieldArg::Index(*i))),
            Access::Key(k) => self.pred.test(ev.field(self.field, FieldArg::Key(k))),
            Access::AnyAncestor => {
                for i in 1..=MAX_ANCESTORS {
                    let v = ev.field(self.field, FieldArg::Index(i));
                    if !v.is_present() {
                        return false;
                    }
                    if self.pred.test(v) {
                        return true;
                    }
                }
                false
            }
            Access::ListAny => (0..MAX_LIST)
                .map(|i| ev.field(self.field, FieldArg::Index(i)))
                .take_while(Value::is_present)
                .any(|v| self.pred.test(v)),
            Access::ListAll => {
                let mut seen = false;
                for i in 0..MAX_LIST {
                    let v = ev.field(self.field, FieldArg::Index(i));
                    if !v.is_present() {
                        break;
                    }
                    seen = true;
                    if !self.pred.test(v) {
                        return false;
                    }
                }
                seen
            }
        }
    }

    fn cost(&self) -> u32 {
        let per = self.pred.cost();
        match self.access {
            Access::AnyAncestor | Access::ListAny | Access::ListAll => per * 8,
            _ => per,
        }
    }
}

impl Node {
    pub(crate) fn eval<E: EventView + ?Sized>(&self, ev: &E) -> bool {
        match self {
            Node::Const(b) => *b,
            Node::And(v) => v.iter().all(|n| n.eval(ev)),
            Node::Or(v) => v.iter().any(|n| n.eval(ev)),
            Node::Not(n) => !n.eval(ev),
            Node::Check(c) => c.eval(ev),
            // Folded away before evaluation; false keeps a mistake harmless.
            Node::EvtType(_) | Node::Missing { .. } => false,
        }
    }

    pub(crate) fn cost(&self) -> u32 {
        match self {
            Node::Const(_) | Node::EvtType(_) | Node::Missing { .. } => 0,
            Node::And(v) | Node::Or(v) => v.iter().map(Node::cost).fold(0u32, u32::saturating_add),
            Node::Not(n) => n.cost(),
            Node::Check(c) => c.cost(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_like_fnmatch() {
        let g = |p: &str, s: &str| Glob::new(p, false).matches(s);
        assert!(g("/home/*/.ssh/*", "/home/bob/.ssh/id_rsa"));
        assert!(g("*../*../*", "/var/www/../../etc/passwd"));
        assert!(!g("*../*../*", "/var/www/../etc/passwd"));
        assert!(g("/proc/*/environ", "/proc/1/environ"));
        assert!(g("a?c", "abc"));
        assert!(!g("a?c", "ac"));
        assert!(g("[a-c]x", "bx"));
        assert!(!g("[!a-c]x", "bx"));
        assert!(g("[]]", "]"));
        assert!(g("\\*", "*"));
        assert!(!g("\\*", "a"));
        assert!(g("*", ""));
        assert!(g("a*b*c", "axxbyyc"));
        assert!(!g("a*b*c", "axxbyy"));
        assert!(g("[", "["));
        assert!(Glob::new("*.SH", true).matches("run.sh"));
        assert!(!Glob::new("*.SH", false).matches("run.sh"));
    }

    #[test]
    fn pmatch_by_components() {
        let p = PathSet::new(&["/var/run".into(), "/etc/".into(), "/opt/*/subdir".into()]);
        assert!(p.matches("/var/run/docker"));
        assert!(p.matches("/var/run"));
        assert!(!p.matches("/var"));
        assert!(!p.matches("/var/runx"));
        assert!(p.matches("/etc/passwd"));
        assert!(p.matches("/opt/x/subdir/f"));
        assert!(!p.matches("/opt/x/other"));
        assert!(PathSet::new(&["/".into()]).matches("/anything"));
    }

    #[test]
    fn cidr() {
        let n = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(
            Cidr::parse("fe80::/10")
                .unwrap()
                .contains("fe80::1".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert_eq!(Cidr::parse("1.2.3.4"), Cidr::parse("1.2.3.4/32"));
    }

    #[test]
    fn icontains_ascii_fold() {
        assert!(icontains(
            "xx AWS_Secret_Access_Key yy",
            b"aws_secret_access_key"
        ));
        assert!(!icontains("aws", b"awss"));
        assert!(icontains("", b""));
    }

    #[test]
    fn string_sets() {
        let s = StrSet::new((0..20).map(|i| format!("n{i}")).collect());
        assert!(s.contains("n7"));
        assert!(s.contains("n19"));
        assert!(!s.contains("n77"));
        let s = StrSet::new(vec!["bash".into(), "sh".into(), "".into()]);
        assert!(s.contains("sh") && s.contains("bash") && s.contains(""));
        assert!(!s.contains("ba") && !s.contains("zsh"));
        assert!(starts_with("abc", "a") && starts_with("abc", "") && !starts_with("abc", "b"));
        assert!(ends_with("abc", "c") && ends_with("", "") && !ends_with("c", "bc"));
        assert!(!StrSet::new(vec![]).contains(""));
    }
}
