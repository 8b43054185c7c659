//! Plain JSON → Avro binary, walking the compiled plan. The success path allocates nothing
//! but the output buffer's growth; a failure carries borrowed pieces (schema names, the JSON
//! value) and is rendered into a [`Mismatch`] only at the top.

use serde_json::{Map, Number, Value};

use super::compile::{kind_of, Decimal, Field, Node, NodeId, Plan, Union, UuidRepr};
use super::logical;
use super::Mismatch;

/// Writes `n` as an Avro long: zig-zag, then a little-endian base-128 varint.
#[inline]
pub(crate) fn put_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[inline]
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// The largest encoded record that field defaults may grow to.
pub(crate) const MAX_RECORD_FROM_DEFAULTS: usize = 1024 * 1024;

/// Records with at most this many fields match fields to keys in one merge pass.
const SLOTS: usize = 32;

/// One step of the path to a mismatch.
pub(crate) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// A failed encode, cheap to build and to pass up; rendered by [`Fail::into_mismatch`].
pub(crate) struct Fail<'a> {
    node: NodeId,
    /// `None`: the field was missing.
    found: Option<&'a Value>,
    /// Why the value does not fit, beyond its type (e.g. "3 fraction digits, scale is 2").
    why: Option<String>,
    /// Innermost step first.
    path: Vec<Seg<'a>>,
}

type Res<'a> = Result<(), Box<Fail<'a>>>;

#[cold]
fn fail(node: NodeId, v: &Value) -> Box<Fail<'_>> {
    Box::new(Fail {
        node,
        found: Some(v),
        why: None,
        path: Vec::new(),
    })
}

#[cold]
fn fail_why(node: NodeId, v: &Value, why: impl Into<String>) -> Box<Fail<'_>> {
    Box::new(Fail {
        node,
        found: Some(v),
        why: Some(why.into()),
        path: Vec::new(),
    })
}

trait At<'a> {
    fn at(self, seg: Seg<'a>) -> Self;
}

impl<'a> At<'a> for Res<'a> {
    #[inline]
    fn at(self, seg: Seg<'a>) -> Self {
        self.map_err(|mut e| {
            e.path.push(seg);
            e
        })
    }
}

impl Fail<'_> {
    pub(crate) fn into_mismatch(self, plan: &Plan) -> Mismatch {
        let mut path = String::new();
        for seg in self.path.iter().rev() {
            path.push('/');
            match seg {
                Seg::Key(k) => path.push_str(&k.replace('~', "~0").replace('/', "~1")),
                Seg::Index(i) => path.push_str(&i.to_string()),
            }
        }
        let mut found = match self.found {
            None => "missing".to_string(),
            Some(v) => render_found(v),
        };
        if let Some(why) = self.why {
            found.push_str(" (");
            found.push_str(&why);
            found.push(')');
        }
        Mismatch {
            path,
            expected: plan.describe(self.node),
            found,
        }
    }
}

/// A short rendering of a JSON value for messages, e.g. `the string "abc"`.
pub(crate) fn render_found(v: &Value) -> String {
    const MAX: usize = 40;
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => {
            let cut = s
                .char_indices()
                .nth(MAX)
                .map_or(s.as_str(), |(i, _)| &s[..i]);
            let more = if cut.len() < s.len() { "…" } else { "" };
            format!("the string {}{more}", Value::String(cut.into()))
        }
        Value::Array(a) => match a.len() {
            0 => "an empty array".into(),
            1 => "an array of 1 item".into(),
            n => format!("an array of {n} items"),
        },
        Value::Object(m) if m.is_empty() => "an empty object".into(),
        Value::Object(m) => {
            let keys: Vec<&str> = m.keys().take(5).map(String::as_str).collect();
            let more = if m.len() > 5 { ", ..." } else { "" };
            format!("an object with keys {}{more}", keys.join(", "))
        }
    }
}

/// A JSON number as an integer: integers as they are, and floats only when integral and
/// exactly representable (|x| ≤ 2^53), so `1.0` is 1 but `1.5` and `1e300` are not integers.
#[inline]
fn integer(n: &Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    if n.is_u64() {
        return None;
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then_some(f as i64)
}

/// The decimal text of a JSON number: integers exactly, floats as the shortest text that
/// reads back as the same f64 (exact for up to 15 significant digits).
/// (serde_json writes at most 24 characters for a float, 20 for an integer.)
fn number_text<'b>(n: &Number, buf: &'b mut [u8; 64]) -> Option<&'b str> {
    use std::io::Write;
    let mut cur = &mut buf[..];
    write!(cur, "{n}").ok()?;
    let len = 64 - cur.len();
    std::str::from_utf8(&buf[..len]).ok()
}

/// The integer of a logical type given as a JSON integer, or the text parsed by `parse`.
fn logical_int<'a>(
    id: NodeId,
    v: &'a Value,
    parse: impl FnOnce(&str) -> Result<i64, &'static str>,
) -> Result<i64, Box<Fail<'a>>> {
    match v {
        Value::Number(n) => integer(n).ok_or_else(|| fail(id, v)),
        Value::String(s) => parse(s).map_err(|why| fail_why(id, v, why)),
        _ => Err(fail(id, v)),
    }
}

impl Plan {
    /// Encodes `v` as node `id`.
    pub(crate) fn enc<'a>(&'a self, id: NodeId, v: &'a Value, out: &mut Vec<u8>) -> Res<'a> {
        match self.node(id) {
            Node::Null => match v {
                Value::Null => Ok(()),
                _ => Err(fail(id, v)),
            },
            Node::Boolean => match v {
                Value::Bool(b) => {
                    out.push(u8::from(*b));
                    Ok(())
                }
                _ => Err(fail(id, v)),
            },
            Node::Int => match v {
                Value::Number(n) => match integer(n) {
                    Some(i) if i32::try_from(i).is_ok() => {
                        put_long(out, i);
                        Ok(())
                    }
                    Some(_) => Err(fail_why(id, v, "out of range")),
                    None if n.is_u64() => Err(fail_why(id, v, "out of range")),
                    None => Err(fail(id, v)),
                },
                _ => Err(fail(id, v)),
            },
            Node::Long => match v {
                Value::Number(n) => match integer(n) {
                    Some(i) => {
                        put_long(out, i);
                        Ok(())
                    }
                    None if n.is_u64() => Err(fail_why(id, v, "out of range")),
                    None => Err(fail(id, v)),
                },
                _ => Err(fail(id, v)),
            },
            Node::Float => match v.as_f64() {
                Some(f) => {
                    let x = f as f32;
                    if x.is_infinite() {
                        return Err(fail_why(id, v, "out of range"));
                    }
                    out.extend_from_slice(&x.to_le_bytes());
                    Ok(())
                }
                None => Err(fail(id, v)),
            },
            Node::Double => match v.as_f64() {
                Some(f) => {
                    out.extend_from_slice(&f.to_le_bytes());
                    Ok(())
                }
                None => Err(fail(id, v)),
            },
            Node::String | Node::Bytes => match v {
                Value::String(s) => {
                    put_bytes(out, s.as_bytes());
                    Ok(())
                }
                _ => Err(fail(id, v)),
            },
            Node::Record(r) => {
                let Value::Object(obj) = v else {
                    return Err(fail(id, v));
                };
                if self.sorted_maps && r.fields.len() <= SLOTS {
                    let mut slots: [Option<&Value>; SLOTS] = [None; SLOTS];
                    let mut j = 0;
                    'keys: for (k, x) in obj {
                        while let Some((name, i)) = r.sorted.get(j) {
                            if **name == **k {
                                slots[*i] = Some(x);
                                j += 1;
                                continue 'keys;
                            }
                            if **name > **k {
                                continue 'keys; // a key that is not a field
                            }
                            j += 1; // a field the object lacks
                        }
                        break;
                    }
                    for (f, x) in r.fields.iter().zip(slots) {
                        self.field(f, x, out)?;
                    }
                } else {
                    for f in &r.fields {
                        self.field(f, obj.get(&*f.name), out)?;
                    }
                }
                Ok(())
            }
            Node::Enum(e) => match v {
                Value::String(s) => match e.symbols.iter().position(|x| x == s) {
                    Some(i) => {
                        put_long(out, i as i64);
                        Ok(())
                    }
                    None => Err(fail_why(id, v, "not one of the symbols")),
                },
                _ => Err(fail(id, v)),
            },
            Node::Fixed { size, .. } => match v {
                Value::String(s) if s.len() == *size => {
                    out.extend_from_slice(s.as_bytes());
                    Ok(())
                }
                Value::String(s) => Err(fail_why(id, v, format!("{} bytes", s.len()))),
                _ => Err(fail(id, v)),
            },
            Node::Array(item) => {
                let Value::Array(a) = v else {
                    return Err(fail(id, v));
                };
                if !a.is_empty() {
                    put_long(out, a.len() as i64);
                    for (i, x) in a.iter().enumerate() {
                        self.enc(*item, x, out).at(Seg::Index(i))?;
                    }
                }
                out.push(0);
                Ok(())
            }
            Node::Map(item) => {
                let Value::Object(m) = v else {
                    return Err(fail(id, v));
                };
                if !m.is_empty() {
                    put_long(out, m.len() as i64);
                    for (k, x) in m {
                        put_bytes(out, k.as_bytes());
                        self.enc(*item, x, out).at(Seg::Key(k))?;
                    }
                }
                out.push(0);
                Ok(())
            }
            Node::Union(u) => {
                let kind = kind_of(v);
                let mut tried = 0;
                let mut last = None;
                for (i, b) in u.branches.iter().enumerate() {
                    if b.mask & kind == 0 {
                        continue;
                    }
                    let mark = out.len();
                    put_long(out, i as i64);
                    match self.enc(b.node, v, out) {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            out.truncate(mark);
                            tried += 1;
                            last = Some(e);
                        }
                    }
                }
                // The Avro-JSON form {"<type name>": value}.
                if let Value::Object(m) = v {
                    if let Some(r) = self.enc_wrapped(u, m, out) {
                        return r;
                    }
                }
                match last {
                    // Only one branch could take this kind of value: its own error says more.
                    Some(e) if tried == 1 => Err(e),
                    _ => Err(fail(id, v)),
                }
            }
            Node::Decimal(d) => {
                let mut buf = [0u8; 64];
                let text = match v {
                    Value::String(s) => s.as_str(),
                    Value::Number(n) => number_text(n, &mut buf).ok_or_else(|| fail(id, v))?,
                    _ => return Err(fail(id, v)),
                };
                let u = logical::parse_decimal(text, d.precision, d.scale)
                    .map_err(|why| fail_why(id, v, why))?;
                logical::with_decimal_bytes(&u, |b| match &d.fixed {
                    None => {
                        put_bytes(out, b);
                        Ok(())
                    }
                    Some((_, size)) if b.len() <= *size => {
                        let fill = if b[0] & 0x80 != 0 { 0xFF } else { 0 };
                        out.resize(out.len() + size - b.len(), fill);
                        out.extend_from_slice(b);
                        Ok(())
                    }
                    Some((_, size)) => Err(fail_why(
                        id,
                        v,
                        format!("needs {} bytes, the fixed has {size}", b.len()),
                    )),
                })
            }
            Node::Uuid(repr) => {
                let Value::String(s) = v else {
                    return Err(fail(id, v));
                };
                let bytes = logical::parse_uuid(s).ok_or_else(|| fail(id, v))?;
                match repr {
                    UuidRepr::String => put_bytes(out, s.as_bytes()),
                    UuidRepr::Fixed(_) => out.extend_from_slice(&bytes),
                    UuidRepr::Bytes => put_bytes(out, &bytes),
                }
                Ok(())
            }
            Node::Date => {
                let days = logical_int(id, v, |s| {
                    logical::parse_date(s).ok_or("not a YYYY-MM-DD date")
                })?;
                if i32::try_from(days).is_err() {
                    return Err(fail_why(id, v, "out of range"));
                }
                put_long(out, days);
                Ok(())
            }
            Node::TimeMillis | Node::TimeMicros => {
                let per = if matches!(self.node(id), Node::TimeMillis) {
                    1_000
                } else {
                    1_000_000
                };
                let t = logical_int(id, v, |s| {
                    logical::parse_time(s, per).ok_or("not an HH:MM:SS time")
                })?;
                if !(0..86_400 * per).contains(&t) {
                    return Err(fail_why(id, v, "not within one day"));
                }
                put_long(out, t);
                Ok(())
            }
            Node::Timestamp { unit, local } => {
                let t = logical_int(id, v, |s| {
                    let (secs, nanos) = logical::parse_timestamp(s, *local)?;
                    logical::to_unit(secs, nanos, *unit).ok_or("out of range")
                })?;
                put_long(out, t);
                Ok(())
            }
            Node::Duration(_) => {
                let Value::Object(m) = v else {
                    return Err(fail(id, v));
                };
                for k in ["months", "days", "millis"] {
                    let n = match m.get(k) {
                        None => 0,
                        Some(Value::Number(n)) => n
                            .as_u64()
                            .and_then(|x| u32::try_from(x).ok())
                            .ok_or_else(|| fail_why(id, v, format!("{k} is not a u32")))?,
                        Some(_) => return Err(fail_why(id, v, format!("{k} is not a u32"))),
                    };
                    out.extend_from_slice(&n.to_le_bytes());
                }
                Ok(())
            }
            Node::Pending => Err(fail(id, v)),
        }
    }

    /// Encodes one record field: its value, or what a missing field becomes.
    #[inline]
    fn field<'a>(&'a self, f: &'a Field, x: Option<&'a Value>, out: &mut Vec<u8>) -> Res<'a> {
        match x {
            Some(x) => self.enc(f.node, x, out).at(Seg::Key(&f.name)),
            None => match &f.missing {
                // Defaults are the one place output can outgrow input (an array of `{}` whose
                // records default many large fields): bounded, so a small hostile record cannot
                // take gigabytes.
                Some(bytes) if out.len() + bytes.len() > MAX_RECORD_FROM_DEFAULTS => {
                    Err(Box::new(Fail {
                        node: f.node,
                        found: None,
                        why: Some(format!(
                            "its default would make the record larger than {MAX_RECORD_FROM_DEFAULTS} bytes"
                        )),
                        path: vec![Seg::Key(&f.name)],
                    }))
                }
                Some(bytes) => {
                    out.extend_from_slice(bytes);
                    Ok(())
                }
                None => Err(Box::new(Fail {
                    node: f.node,
                    found: None,
                    why: None,
                    path: vec![Seg::Key(&f.name)],
                })),
            },
        }
    }

    /// The wrapped union form: an object with exactly one key naming a branch. `None` when `m`
    /// is not of that form.
    fn enc_wrapped<'a>(
        &'a self,
        u: &'a Union,
        m: &'a Map<String, Value>,
        out: &mut Vec<u8>,
    ) -> Option<Res<'a>> {
        if m.len() != 1 {
            return None;
        }
        let (k, inner) = m.iter().next()?;
        let i = u.branches.iter().position(|b| b.names.contains(k))?;
        let mark = out.len();
        put_long(out, i as i64);
        let r = self.enc(u.branches[i].node, inner, out).at(Seg::Key(k));
        if r.is_err() {
            out.truncate(mark);
        }
        Some(r)
    }
}

/// A decimal default (its unscaled value as big-endian two's complement bytes) has at most
/// `precision` digits, as a decimal from JSON must: else every record missing the field would
/// carry a value that the type cannot hold.
fn decimal_default_fits(b: &[u8], precision: usize) -> Result<(), String> {
    let digits = num_bigint::BigInt::from_signed_bytes_be(b)
        .magnitude()
        .to_string()
        .len();
    if digits > precision {
        return Err(format!(
            "its unscaled value has {digits} digits, more than the precision {precision}"
        ));
    }
    Ok(())
}

/// Encodes a field `default` as the Avro spec writes defaults: bytes and fixed (also under
/// decimal and duration) as strings whose code points 0–255 are the bytes, a union default
/// for its first branch (other branches are tried after it, leniently), records with their
/// own field defaults; everything else as plain JSON.
pub(crate) fn encode_default(
    plan: &Plan,
    id: NodeId,
    v: &Value,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    default_at(plan, id, v, out, 0)
}

/// How deep a default may nest, counting the field defaults it takes in and the union branches
/// it tries (a JSON value nests 128 deep at most; only a default that takes itself in through a
/// recursive type goes on).
const MAX_DEFAULT_DEPTH: usize = 512;

/// The start of the error of a default that takes itself in (no union branch can mend it).
const RECURSIVE_DEFAULT: &str = "the default takes itself in through a recursive type";

fn default_at(
    plan: &Plan,
    id: NodeId,
    v: &Value,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), String> {
    // A record whose field's default is a union taking that record again, e.g. field `f` of
    // `R` typed `[R, "null"]` with the default `{}`: `{}` lacks `f`, so it takes the default
    // `{}`, and so on (found by fuzzing: a stack overflow in Schema::parse).
    if depth > MAX_DEFAULT_DEPTH {
        return Err(format!(
            "{RECURSIVE_DEFAULT} (nested deeper than {MAX_DEFAULT_DEPTH} levels)"
        ));
    }
    let plain = |out: &mut Vec<u8>| {
        plan.enc(id, v, out)
            .map_err(|e| e.into_mismatch(plan).to_string())
    };
    let latin1 = |v: &Value| -> Result<Vec<u8>, String> {
        let s = v
            .as_str()
            .ok_or_else(|| format!("expected a string, found {}", render_found(v)))?;
        s.chars()
            .map(|c| u8::try_from(u32::from(c)).map_err(|_| format!("{c:?} is not a byte")))
            .collect()
    };
    match plan.node(id) {
        Node::Bytes => {
            put_bytes(out, &latin1(v)?);
            Ok(())
        }
        Node::Fixed { size, .. }
        | Node::Decimal(Decimal {
            fixed: Some((_, size)),
            ..
        }) => {
            let b = latin1(v)?;
            if b.len() != *size {
                return Err(format!("{} bytes, the fixed has {size}", b.len()));
            }
            if let Node::Decimal(d) = plan.node(id) {
                decimal_default_fits(&b, d.precision)?;
            }
            out.extend_from_slice(&b);
            Ok(())
        }
        Node::Decimal(d) => {
            let b = latin1(v)?;
            decimal_default_fits(&b, d.precision)?;
            put_bytes(out, &b);
            Ok(())
        }
        Node::Duration(_) if v.is_string() => {
            let b = latin1(v)?;
            if b.len() != 12 {
                return Err(format!("{} bytes, a duration has 12", b.len()));
            }
            out.extend_from_slice(&b);
            Ok(())
        }
        Node::Array(item) => {
            let a = v
                .as_array()
                .ok_or_else(|| format!("expected an array, found {}", render_found(v)))?;
            if !a.is_empty() {
                put_long(out, a.len() as i64);
                for x in a {
                    default_at(plan, *item, x, out, depth + 1)?;
                }
            }
            out.push(0);
            Ok(())
        }
        Node::Map(item) => {
            let m = v
                .as_object()
                .ok_or_else(|| format!("expected an object, found {}", render_found(v)))?;
            if !m.is_empty() {
                put_long(out, m.len() as i64);
                for (k, x) in m {
                    put_bytes(out, k.as_bytes());
                    default_at(plan, *item, x, out, depth + 1)?;
                }
            }
            out.push(0);
            Ok(())
        }
        Node::Record(r) => {
            let m = v
                .as_object()
                .ok_or_else(|| format!("expected an object, found {}", render_found(v)))?;
            for f in &r.fields {
                match (m.get(&*f.name), &f.default_json) {
                    (Some(x), _) | (None, Some(x)) => default_at(plan, f.node, x, out, depth + 1)
                        .map_err(|e| {
                        if e.starts_with(RECURSIVE_DEFAULT) {
                            e
                        } else {
                            format!("field {}: {e}", f.name)
                        }
                    })?,
                    (None, None) => match plan.node(f.node) {
                        Node::Union(Union {
                            null_index: Some(i),
                            ..
                        }) => put_long(out, *i as i64),
                        _ => return Err(format!("field {} is missing", f.name)),
                    },
                }
            }
            Ok(())
        }
        Node::Union(u) => {
            let mut first_err = None;
            for (i, b) in u.branches.iter().enumerate() {
                let mark = out.len();
                put_long(out, i as i64);
                match default_at(plan, b.node, v, out, depth + 1) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.starts_with(RECURSIVE_DEFAULT) => return Err(e),
                    Err(e) => {
                        out.truncate(mark);
                        first_err.get_or_insert(e);
                    }
                }
            }
            Err(first_err.unwrap_or_else(|| "an empty union has no default".into()))
        }
        _ => plain(out),
    }
}

/// Encodes every record field's default once (what a missing field encodes to), into the
/// compiled `plan`. Inner records first (a nested record's node comes after its parent's), so
/// that a bad default is named where it is written rather than where it is taken in.
pub(crate) fn fill_defaults(plan: &mut Plan) -> Result<(), String> {
    for rid in (0..plan.nodes.len()).rev() {
        let Node::Record(r) = &plan.nodes[rid] else {
            continue;
        };
        let mut missing = Vec::with_capacity(r.fields.len());
        for f in &r.fields {
            missing.push(missing_bytes(plan, f).map_err(|e| {
                format!("the default of field {} in record {}: {e}", f.name, r.name)
            })?);
        }
        if let Node::Record(r) = &mut plan.nodes[rid] {
            for (f, m) in r.fields.iter_mut().zip(missing) {
                f.missing = m;
            }
        }
    }
    Ok(())
}

/// What a missing field encodes to: its default, else null for a union with a null branch.
fn missing_bytes(plan: &Plan, f: &Field) -> Result<Option<Box<[u8]>>, String> {
    if let Some(d) = &f.default_json {
        let mut out = Vec::new();
        encode_default(plan, f.node, d, &mut out)?;
        return Ok(Some(out.into_boxed_slice()));
    }
    if let Node::Union(u) = plan.node(f.node) {
        if let Some(i) = u.null_index {
            let mut out = Vec::new();
            put_long(&mut out, i as i64);
            return Ok(Some(out.into_boxed_slice()));
        }
    }
    Ok(None)
}
