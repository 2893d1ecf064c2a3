//! An encoded [`Event`](crate::Event) written as JSON straight from its wire bytes: the
//! same document serde writes for the decoded event (fields in declaration order, defaults for
//! absent fields, `null` for absent messages and `optional`s, a `oneof` as `{"member": ...}`),
//! without building the event first. Decoding into the model and serializing it was most of
//! the collector's cost per event (every string its own allocation, then freed).
//!
//! The shape comes from tables generated from the .proto (`build.rs`). Map entries are written
//! sorted by key, as serde writes the model's maps (`BTreeMap`s). Input this writer does not take on (a singular field sent twice, which protobuf
//! merges; groups; packed repeated numbers) or that is malformed is refused with
//! [`NotTranscoded`]: the caller decodes that event with prost, which either reads it or says
//! what is wrong with it. So what this writes is always what serde would write.

use prost::encoding::WireType;

include!(concat!(env!("OUT_DIR"), "/json_schema.rs"));

/// Why an event was not written; see the module comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotTranscoded(pub &'static str);

impl std::fmt::Display for NotTranscoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for NotTranscoded {}

const MALFORMED: NotTranscoded = NotTranscoded("a field key, varint or length is malformed");
const PAST_END: NotTranscoded = NotTranscoded("a field runs past the end of its message");
const WIRE_TYPE: NotTranscoded = NotTranscoded("a field has another wire type than the .proto gives it");
const TWICE: NotTranscoded = NotTranscoded("a singular field appears twice (protobuf merges them)");
const GROUP: NotTranscoded = NotTranscoded("groups are not part of the event model");
const NOT_UTF8: NotTranscoded = NotTranscoded("a string is not UTF-8");
const TOO_LARGE: NotTranscoded = NotTranscoded("an event of 4 GiB or more");
const TOO_DEEP: NotTranscoded = NotTranscoded("messages nested too deep");

/// Appends the JSON document of the encoded event to `out`; on error `out` is left as it was.
pub fn event_json(encoded: &[u8], out: &mut Vec<u8>) -> Result<(), NotTranscoded> {
    if u32::try_from(encoded.len()).is_err() {
        return Err(TOO_LARGE);
    }
    let start = out.len();
    let written = message(encoded, ROOT, out, 0);
    if written.is_err() {
        out.truncate(start);
    }
    written
}

pub(crate) struct Message {
    slots: &'static [Slot],
    /// Field number -> (slot, member of a oneof slot); [`NONE`] for numbers not in the message.
    by_number: &'static [(u8, u8)],
}

const NONE: (u8, u8) = (u8::MAX, 0);
/// The most JSON fields a message may have (`build.rs` checks it).
const MAX_SLOTS: usize = 32;
/// Deeper than any message in the model.
const MAX_DEPTH: u32 = 16;

/// One JSON field: `key` is `,"name":`, `absent` the whole field when the message does not
/// have it (`,"name":0`, `,"name":null`, ...).
struct Slot {
    key: &'static str,
    absent: &'static str,
    number: u32,
    shape: Shape,
}

enum Shape {
    /// Absent: the type's default (`null` for a message).
    Single(Ty),
    /// proto3 `optional`: absent is `null`.
    Optional(Ty),
    Repeated(Ty),
    /// `map<string, string>`.
    Map,
    Oneof(&'static [Variant]),
}

/// A member of a `oneof`: `key` is `{"name":`.
struct Variant {
    key: &'static str,
    ty: Ty,
}

#[derive(Clone, Copy)]
enum Ty {
    Str,
    U64,
    I64,
    U32,
    I32,
    Bool,
    Message(&'static Message),
}

impl Ty {
    fn wire_type(self) -> WireType {
        match self {
            Ty::Str | Ty::Message(_) => WireType::LengthDelimited,
            Ty::U64 | Ty::I64 | Ty::U32 | Ty::I32 | Ty::Bool => WireType::Varint,
        }
    }
}

/// Where a field's last (for repeated fields: every) occurrence is: a varint's value, or a
/// length-delimited value's `start..end` (for repeated fields, from the first occurrence's key
/// to the end of the last one, scanned again to write them). Small, as a message's table of
/// them is cleared for every message written.
#[derive(Clone, Copy)]
struct Seen {
    a: u32,
    b: u32,
    count: u16,
    variant: u8,
}

const UNSEEN: Seen = Seen { a: 0, b: 0, count: 0, variant: 0 };

impl Seen {
    #[allow(clippy::cast_possible_truncation)]
    fn varint(value: u64, variant: u8) -> Self {
        Self { a: value as u32, b: (value >> 32) as u32, count: 1, variant }
    }

    /// Offsets fit: [`event_json`] takes no message of 4 GiB or more.
    #[allow(clippy::cast_possible_truncation)]
    fn range(start: usize, end: usize, variant: u8) -> Self {
        Self { a: start as u32, b: end as u32, count: 1, variant }
    }

    fn value(&self) -> u64 {
        u64::from(self.a) | (u64::from(self.b) << 32)
    }

    fn start(&self) -> usize {
        self.a as usize
    }

    fn end(&self) -> usize {
        self.b as usize
    }
}

fn message(bytes: &[u8], m: &Message, out: &mut Vec<u8>, depth: u32) -> Result<(), NotTranscoded> {
    if depth > MAX_DEPTH {
        return Err(TOO_DEEP);
    }
    let mut seen = [UNSEEN; MAX_SLOTS];
    let mut buf = bytes;
    while !buf.is_empty() {
        let key_at = bytes.len() - buf.len();
        let (number, wire) = field_key(&mut buf)?;
        let (slot, variant) = usize::try_from(number).ok().and_then(|n| m.by_number.get(n)).copied().unwrap_or(NONE);
        let Some(s) = m.slots.get(usize::from(slot)) else {
            skip(wire, &mut buf)?;
            continue;
        };
        let expected = match &s.shape {
            Shape::Single(ty) | Shape::Optional(ty) | Shape::Repeated(ty) => ty.wire_type(),
            Shape::Map => WireType::LengthDelimited,
            Shape::Oneof(variants) => variants.get(usize::from(variant)).ok_or(MALFORMED)?.ty.wire_type(),
        };
        if wire != expected {
            return Err(WIRE_TYPE);
        }
        let found = if wire == WireType::Varint {
            Seen::varint(varint(&mut buf)?, variant)
        } else {
            let len = take_len(&mut buf)?.len();
            let end = bytes.len() - buf.len();
            Seen::range(end - len, end, variant)
        };
        let at = seen.get_mut(usize::from(slot)).ok_or(MALFORMED)?;
        match &s.shape {
            Shape::Repeated(_) | Shape::Map => {
                let first = if at.count == 0 { key_at } else { at.start() };
                *at = Seen { count: at.count.saturating_add(1), ..Seen::range(first, bytes.len() - buf.len(), 0) };
            }
            Shape::Single(_) | Shape::Optional(_) | Shape::Oneof(_) => {
                if at.count > 0 {
                    return Err(TWICE);
                }
                *at = found;
            }
        }
    }

    out.push(b'{');
    for (i, (s, at)) in m.slots.iter().zip(seen.iter()).enumerate() {
        // The first field without its leading comma.
        let skip = usize::from(i == 0);
        if at.count == 0 {
            out.extend_from_slice(s.absent.as_bytes().get(skip..).unwrap_or_default());
            continue;
        }
        out.extend_from_slice(s.key.as_bytes().get(skip..).unwrap_or_default());
        match &s.shape {
            Shape::Single(ty) | Shape::Optional(ty) => value(*ty, bytes, at, out, depth)?,
            Shape::Repeated(ty) => {
                out.push(b'[');
                let mut first = true;
                for element in occurrences(bytes, at, s.number) {
                    let (start, end) = element?;
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    match ty {
                        Ty::Str | Ty::Message(_) => value(*ty, bytes, &Seen::range(start, end, 0), out, depth)?,
                        // Numbers come as varints here (wire type checked above); `start..end`
                        // holds the varint.
                        _ => {
                            let mut v = bytes.get(start..end).ok_or(PAST_END)?;
                            let n = varint(&mut v)?;
                            value(*ty, bytes, &Seen::varint(n, 0), out, depth)?;
                        }
                    }
                }
                out.push(b']');
            }
            Shape::Map => map(bytes, at, s.number, out)?,
            Shape::Oneof(variants) => {
                let v = variants.get(usize::from(at.variant)).ok_or(MALFORMED)?;
                out.extend_from_slice(v.key.as_bytes());
                value(v.ty, bytes, at, out, depth)?;
                out.push(b'}');
            }
        }
    }
    out.push(b'}');
    Ok(())
}

/// The value bytes (for varints: the varint) of every occurrence of field `number` in
/// `at.start..at.end`, a region the first pass has walked.
fn occurrences(bytes: &[u8], at: &Seen, number: u32) -> impl Iterator<Item = Result<(usize, usize), NotTranscoded>> {
    let region = if at.count == 0 { &[][..] } else { bytes.get(at.start()..at.end()).unwrap_or_default() };
    let base = at.start();
    let offset = move |buf: &[u8]| base + region.len() - buf.len();
    let mut buf = region;
    std::iter::from_fn(move || {
        while !buf.is_empty() {
            let step = (|| {
                let (n, wire) = field_key(&mut buf)?;
                if n != number {
                    skip(wire, &mut buf)?;
                    return Ok(None);
                }
                if wire == WireType::LengthDelimited {
                    let len = take_len(&mut buf)?.len();
                    let end = offset(buf);
                    Ok(Some((end - len, end)))
                } else {
                    let start = offset(buf);
                    skip(wire, &mut buf)?;
                    Ok(Some((start, offset(buf))))
                }
            })();
            match step {
                Ok(Some(found)) => return Some(Ok(found)),
                Ok(None) => {}
                Err(e) => {
                    buf = &[];
                    return Some(Err(e));
                }
            }
        }
        None
    })
}

/// A varint as prost reads one: at most 10 bytes, the 10th at most 1.
#[inline(always)]
fn varint(buf: &mut &[u8]) -> Result<u64, NotTranscoded> {
    if let Some((&b, rest)) = buf.split_first()
        && b < 0x80
    {
        *buf = rest;
        return Ok(u64::from(b));
    }
    let mut value = 0u64;
    for (i, &b) in buf.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (i * 7);
        if b < 0x80 {
            if i == 9 && b > 1 {
                return Err(MALFORMED);
            }
            *buf = buf.get(i + 1..).unwrap_or_default();
            return Ok(value);
        }
    }
    Err(MALFORMED)
}

/// A field key as prost reads one: a varint within u32, a known wire type, a field number
/// from 1.
#[inline(always)]
fn field_key(buf: &mut &[u8]) -> Result<(u32, WireType), NotTranscoded> {
    let key = u32::try_from(varint(buf)?).map_err(|_| MALFORMED)?;
    let wire = match key & 7 {
        0 => WireType::Varint,
        1 => WireType::SixtyFourBit,
        2 => WireType::LengthDelimited,
        3 => WireType::StartGroup,
        4 => WireType::EndGroup,
        5 => WireType::ThirtyTwoBit,
        _ => return Err(MALFORMED),
    };
    match key >> 3 {
        0 => Err(MALFORMED),
        number => Ok((number, wire)),
    }
}

/// A length-delimited value: its bytes, `buf` moved past them.
fn take_len<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], NotTranscoded> {
    let len = usize::try_from(varint(buf)?).map_err(|_| PAST_END)?;
    let value = buf.get(..len).ok_or(PAST_END)?;
    *buf = buf.get(len..).ok_or(PAST_END)?;
    Ok(value)
}

fn skip(wire: WireType, buf: &mut &[u8]) -> Result<(), NotTranscoded> {
    let n = match wire {
        WireType::Varint => {
            varint(buf)?;
            0
        }
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::LengthDelimited => return take_len(buf).map(|_| ()),
        WireType::StartGroup | WireType::EndGroup => return Err(GROUP),
    };
    *buf = buf.get(n..).ok_or(PAST_END)?;
    Ok(())
}

fn value(ty: Ty, bytes: &[u8], at: &Seen, out: &mut Vec<u8>, depth: u32) -> Result<(), NotTranscoded> {
    let mut n = itoa::Buffer::new();
    // The conversions are prost's: a varint is read as u64 and cut to the field's width.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    match ty {
        Ty::Str => string(bytes.get(at.start()..at.end()).ok_or(PAST_END)?, out)?,
        Ty::Message(m) => message(bytes.get(at.start()..at.end()).ok_or(PAST_END)?, m, out, depth + 1)?,
        Ty::U64 => out.extend_from_slice(n.format(at.value()).as_bytes()),
        Ty::I64 => out.extend_from_slice(n.format(at.value() as i64).as_bytes()),
        Ty::U32 => out.extend_from_slice(n.format(at.value() as u32).as_bytes()),
        Ty::I32 => out.extend_from_slice(n.format(at.value() as i32).as_bytes()),
        Ty::Bool => out.extend_from_slice(if at.value() != 0 { b"true" } else { b"false" }),
    }
    Ok(())
}

/// A `map<string, string>`: entries sorted by key, the last of equal keys kept (as prost
/// keeps it).
fn map(bytes: &[u8], at: &Seen, number: u32, out: &mut Vec<u8>) -> Result<(), NotTranscoded> {
    let mut entries: Vec<(&[u8], &[u8])> = Vec::new();
    for entry in occurrences(bytes, at, number) {
        let (start, end) = entry?;
        let mut buf = bytes.get(start..end).ok_or(PAST_END)?;
        let (mut key, mut val): (Option<&[u8]>, Option<&[u8]>) = (None, None);
        while !buf.is_empty() {
            let (n, wire) = field_key(&mut buf)?;
            if n != 1 && n != 2 {
                skip(wire, &mut buf)?;
                continue;
            }
            if wire != WireType::LengthDelimited {
                return Err(WIRE_TYPE);
            }
            let v = take_len(&mut buf)?;
            let field = if n == 1 { &mut key } else { &mut val };
            if field.replace(v).is_some() {
                return Err(TWICE);
            }
        }
        let (key, val) = (key.unwrap_or_default(), val.unwrap_or_default());
        utf8(key)?;
        utf8(val)?;
        entries.push((key, val));
    }
    // Stable: among equal keys the last sent stays last, and is the one kept.
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    let mut first = true;
    for (i, (k, v)) in entries.iter().enumerate() {
        if entries.get(i + 1).is_some_and(|next| next.0 == *k) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        escaped(k, out);
        out.push(b':');
        escaped(v, out);
    }
    out.push(b'}');
    Ok(())
}

fn utf8(bytes: &[u8]) -> Result<(), NotTranscoded> {
    if bytes.is_ascii() { Ok(()) } else { std::str::from_utf8(bytes).map(|_| ()).map_err(|_| NOT_UTF8) }
}

/// A string field: checked for UTF-8 (as prost checks it) while escaped, ASCII being the
/// common case.
fn string(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), NotTranscoded> {
    if escaped(bytes, out) { utf8(bytes) } else { Ok(()) }
}

/// A JSON string escaped as serde_json escapes it: `"`, `\` and control characters (the
/// short forms where JSON has them, `\u00XX` otherwise); everything else as is. Returns
/// whether there were bytes beyond ASCII (for the caller's UTF-8 check).
fn escaped(bytes: &[u8], out: &mut Vec<u8>) -> bool {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    /// Whether any of the 8 bytes is below 0x20, `"`, `\` or beyond ASCII (exact for "any").
    fn any_special(w: u64) -> bool {
        let below_space = w.wrapping_sub(LOW * 0x20) & !w;
        let quote = (w ^ (LOW * u64::from(b'"'))).wrapping_sub(LOW) & !(w ^ (LOW * u64::from(b'"')));
        let backslash = (w ^ (LOW * u64::from(b'\\'))).wrapping_sub(LOW) & !(w ^ (LOW * u64::from(b'\\')));
        (below_space | quote | backslash | w) & HIGH != 0
    }
    let mut beyond_ascii = false;
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // The usual string, plain ASCII: 8 bytes at a time, the last 8 for the tail.
    let word = |at: usize| bytes.get(at..at + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()).map_or(u64::MAX, u64::from_le_bytes);
    let plain = if bytes.len() >= 8 {
        let mut at = 0;
        while at + 8 <= bytes.len() && !any_special(word(at)) {
            at += 8;
        }
        (at + 8 > bytes.len()) && !any_special(word(bytes.len() - 8))
    } else {
        bytes.iter().all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\')
    };
    if plain {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return false;
    }
    let mut i = 0;
    let mut plain_from = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x09 => b"\\t",
            0x0a => b"\\n",
            0x0c => b"\\f",
            0x0d => b"\\r",
            0x00..=0x1f => b"",
            _ => {
                beyond_ascii |= b >= 0x80;
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[plain_from..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.extend_from_slice(short);
        }
        i += 1;
        plain_from = i;
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.push(b'"');
    beyond_ascii
}

#[cfg(test)]
mod tests {
    use prost::{
        Message as _,
        encoding::{WireType, encode_key, encode_varint},
    };

    use super::*;
    use crate::Event;

    /// Strings with everything JSON escapes, multi-byte characters and runs long enough for the
    /// 8-byte scan.
    fn random_string(rng: &mut fastrand::Rng) -> String {
        const PIECES: &[&str] = &["a", "/usr/bin/", "\"", "\\", "\n", "\t", "\r", "\u{8}", "\u{c}", "\u{1}", "\u{1f}", "\u{7f}", "é", "日本", "🦀", " ", "long-plain-run-of-text", "</script>"];
        (0..rng.usize(0..12)).map(|_| PIECES[rng.usize(..PIECES.len())]).collect()
    }

    fn random_scalar(ty: Ty, rng: &mut fastrand::Rng, depth: u32) -> Vec<u8> {
        let mut v = Vec::new();
        match ty {
            Ty::Str => {
                let s = random_string(rng);
                encode_varint(s.len() as u64, &mut v);
                v.extend_from_slice(s.as_bytes());
            }
            Ty::Message(m) => {
                let inner = random_message(m, rng, depth + 1);
                encode_varint(inner.len() as u64, &mut v);
                v.extend_from_slice(&inner);
            }
            // Any 64-bit value, as a sender of another width may put there: cut as prost cuts.
            _ => encode_varint(match rng.u8(..4) { 0 => 0, 1 => rng.u64(..300), 2 => u64::MAX - rng.u64(..3), _ => rng.u64(..) }, &mut v),
        }
        v
    }

    /// A valid encoding of a random `m`, every field of the schema possible, fields in random
    /// order, with unknown fields mixed in. Generated from the same tables, so a field added to
    /// the .proto is covered without touching this test.
    fn random_message(m: &Message, rng: &mut fastrand::Rng, depth: u32) -> Vec<u8> {
        let mut fields: Vec<Vec<u8>> = Vec::new();
        let field = |number: u32, ty: Ty, rng: &mut fastrand::Rng| {
            let mut f = Vec::new();
            encode_key(number, ty.wire_type(), &mut f);
            f.extend_from_slice(&random_scalar(ty, rng, depth));
            f
        };
        for s in m.slots {
            match &s.shape {
                Shape::Single(ty) | Shape::Optional(ty) => {
                    if depth < 6 && rng.bool() {
                        fields.push(field(s.number, *ty, rng));
                    }
                }
                Shape::Repeated(ty) => {
                    for _ in 0..if depth < 6 { rng.usize(0..4) } else { 0 } {
                        fields.push(field(s.number, *ty, rng));
                    }
                }
                Shape::Map => {
                    for _ in 0..rng.usize(0..4) {
                        let mut entry = Vec::new();
                        for n in [1, 2] {
                            if rng.u8(..8) > 0 {
                                entry.extend_from_slice(&field(n, Ty::Str, rng));
                            }
                        }
                        if rng.bool() {
                            // Keys that repeat: the last one is kept.
                            entry.clear();
                            entry.extend_from_slice(&field(1, Ty::Str, &mut fastrand::Rng::with_seed(1)));
                            entry.extend_from_slice(&field(2, Ty::Str, rng));
                        }
                        let mut f = Vec::new();
                        encode_key(s.number, WireType::LengthDelimited, &mut f);
                        encode_varint(entry.len() as u64, &mut f);
                        f.extend_from_slice(&entry);
                        fields.push(f);
                    }
                }
                Shape::Oneof(variants) => {
                    if depth < 6 && rng.u8(..8) > 0 {
                        let i = rng.usize(..variants.len());
                        let number = m.by_number.iter().position(|&(slot, v)| usize::from(slot) < m.slots.len() && std::ptr::eq(&m.slots[usize::from(slot)], s) && usize::from(v) == i);
                        fields.push(field(u32::try_from(number.unwrap_or_default()).unwrap_or_default(), variants[i].ty, rng));
                    }
                }
            }
        }
        if rng.u8(..4) == 0 {
            let mut f = Vec::new();
            encode_key(1000 + rng.u32(..100), WireType::LengthDelimited, &mut f);
            encode_varint(3, &mut f);
            f.extend_from_slice(b"\xff\x00\x01");
            encode_key(999, WireType::ThirtyTwoBit, &mut f);
            f.extend_from_slice(&[1, 2, 3, 4]);
            encode_key(998, WireType::SixtyFourBit, &mut f);
            f.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
            encode_key(997, WireType::Varint, &mut f);
            encode_varint(u64::MAX, &mut f);
            fields.push(f);
        }
        rng.shuffle(&mut fields);
        fields.concat()
    }

    fn serde_of(event: &Event) -> serde_json::Value {
        serde_json::to_value(event).unwrap_or_else(|e| panic!("{e}"))
    }

    fn transcoded(bytes: &[u8]) -> Result<(Vec<u8>, serde_json::Value), NotTranscoded> {
        let mut out = b"before".to_vec();
        let r = event_json(bytes, &mut out);
        if r.is_err() {
            assert_eq!(out, b"before", "a refused event leaves the buffer as it was");
        }
        r?;
        let json = out.split_off(6);
        let value = serde_json::from_slice(&json).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&json)));
        Ok((json, value))
    }

    /// Whatever the schema allows, in any field order, with unknown fields: the same document,
    /// byte for byte, as serde's of the decoded event.
    #[test]
    fn every_valid_event_is_written_as_serde_writes_the_decoded_one() {
        let mut rng = fastrand::Rng::with_seed(std::env::var("PEREGRINE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7));
        for _ in 0..20_000 {
            let bytes = random_message(ROOT, &mut rng, 0);
            let event = Event::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("the generator wrote an invalid event: {e}"));
            let (json, value) = transcoded(&bytes).unwrap_or_else(|e| panic!("valid event not transcoded: {e}"));
            assert_eq!(value, serde_of(&event), "{}", String::from_utf8_lossy(&json));
            let serde_bytes = serde_json::to_vec(&event).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(String::from_utf8_lossy(&json), String::from_utf8_lossy(&serde_bytes));
        }
    }

    /// Damaged bytes: refused whenever prost refuses them, and when written, what serde writes.
    #[test]
    fn damaged_events_are_refused_or_written_exactly() {
        let mut rng = fastrand::Rng::with_seed(std::env::var("PEREGRINE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(11));
        let (mut written, mut refused, mut left_to_prost) = (0, 0, 0);
        for round in 0..30_000 {
            let mut bytes = random_message(ROOT, &mut rng, 0);
            if bytes.is_empty() {
                continue;
            }
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..bytes.len());
                match round % 3 {
                    0 => bytes[i] = rng.u8(..),
                    1 => bytes.truncate(i),
                    _ => bytes.insert(i, rng.u8(..)),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            match (Event::decode(bytes.as_slice()), transcoded(&bytes)) {
                (Ok(event), Ok((json, value))) => {
                    written += 1;
                    assert_eq!(value, serde_of(&event), "{}", String::from_utf8_lossy(&json));
                    assert_eq!(json, serde_json::to_vec(&event).unwrap_or_default());
                }
                (Err(_), Err(_)) => refused += 1,
                (Ok(_), Err(_)) => left_to_prost += 1,
                (Err(e), Ok((json, _))) => panic!("prost refuses ({e}) what was written: {}", String::from_utf8_lossy(&json)),
            }
        }
        assert!(written > 1_000 && refused > 1_000, "both outcomes exercised ({written} written, {refused} refused, {left_to_prost} left to prost)");
    }

    #[test]
    fn shapes_left_to_prost_are_refused() {
        let event = Event { id: "a".into(), node: "n".into(), ..Default::default() }.encode_to_vec();
        // The id twice: protobuf keeps the last; this writer leaves that to prost.
        let twice = [event.clone(), event.clone()].concat();
        assert_eq!(Event::decode(twice.as_slice()).map(|e| e.id), Ok("a".to_owned()));
        assert_eq!(transcoded(&twice).map(|_| ()), Err(TWICE));
        // A group (wire type 3) where an unknown field would be.
        let mut group = event.clone();
        encode_key(900, WireType::StartGroup, &mut group);
        encode_key(900, WireType::EndGroup, &mut group);
        assert_eq!(transcoded(&group).map(|_| ()), Err(GROUP));
        // A string field sent as a varint.
        let mut wrong = Vec::new();
        encode_key(1, WireType::Varint, &mut wrong);
        encode_varint(5, &mut wrong);
        assert!(Event::decode(wrong.as_slice()).is_err());
        assert_eq!(transcoded(&wrong).map(|_| ()), Err(WIRE_TYPE));
        // Not UTF-8.
        let bad = Event { id: "\u{e9}".into(), ..Default::default() }.encode_to_vec();
        let bad: Vec<u8> = bad.iter().map(|&b| if b == 0xa9 { 0xff } else { b }).collect();
        assert!(Event::decode(bad.as_slice()).is_err());
        assert_eq!(transcoded(&bad).map(|_| ()), Err(NOT_UTF8));
    }

    /// Varints and keys at the edges prost draws: read or refused as prost does.
    #[test]
    fn varint_and_key_edges_agree_with_prost() {
        let seq = |v: &[u8]| [&[0x10][..], v].concat();
        let cases: Vec<Vec<u8>> = vec![
            seq(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            seq(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            seq(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            seq(&[0x80, 0x00]),
            seq(&[0x80]),
            vec![0x00, 0x01],
            vec![0x0e, 0x01],
            vec![0x0f, 0x01],
            vec![0xf8, 0xff, 0xff, 0xff, 0x0f, 0x01],
            vec![0x80, 0x80, 0x80, 0x80, 0x10, 0x01],
            vec![0xf8, 0xff, 0xff, 0xff, 0x1f, 0x01],
            vec![0x10, 0x96, 0x01],
        ];
        for bytes in cases {
            let prost = Event::decode(bytes.as_slice());
            let ours = transcoded(&bytes);
            assert_eq!(prost.is_ok(), ours.is_ok(), "{bytes:02x?}: prost {prost:?}, ours {:?}", ours.as_ref().map(|j| String::from_utf8_lossy(&j.0).into_owned()));
            if let (Ok(e), Ok((_, v))) = (prost, ours) {
                assert_eq!(v, serde_of(&e));
            }
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let all: String = (0u8..=0x7f).map(char::from).chain("é日🦀".chars()).collect();
        for s in [all.as_str(), "", "12345678", "1234567\"", "\"1234567", "plain text that is long enough", "\n", "ab\"", "é", "\u{7f}", "abcdefgh\u{1}"] {
            let mut out = Vec::new();
            assert_eq!(escaped(s.as_bytes(), &mut out), !s.is_ascii());
            assert_eq!(out, serde_json::to_vec(s).unwrap_or_default(), "{s:?}");
        }
    }
}
