//! Avro binary → plain JSON, the inverse of the encoder's mapping.

use serde_json::{Map, Number, Value};

use super::compile::{Node, NodeId, Plan, UuidRepr};
use super::logical;

/// How deep nested values may go before decoding gives up (recursive schemas).
const MAX_DEPTH: usize = 256;

/// Values that take no bytes (nulls, records, fixed(0)) one body may hold: this many plus
/// [`ZERO_BYTE_PER_INPUT_BYTE`] per byte of the body. Every other value consumes at least one
/// byte, so this bounds what a body of N bytes can decode into. Without it, a block count of a
/// million nulls or empty records, repeated in block after block, made a 224-byte body decode
/// into 2.3 GB of JSON (a fuzzer's find); a hostile producer could do the same to `kgate
/// consume`, the DLQ and the UI's message browser.
const ZERO_BYTE_VALUES: usize = 100_000;
/// See [`ZERO_BYTE_VALUES`]: records nested in records, each around a one-byte value, take a
/// few zero-byte values per byte; real data stays far below this.
const ZERO_BYTE_PER_INPUT_BYTE: usize = 4;

struct Reader<'b> {
    b: &'b [u8],
    pos: usize,
    /// How many more zero-byte values this body may decode into ([`ZERO_BYTE_VALUES`]).
    zero_left: usize,
}

impl<'b> Reader<'b> {
    fn truncated(&self, what: &str) -> String {
        format!(
            "truncated input: {what} at byte {} runs past the end ({} bytes)",
            self.pos,
            self.b.len()
        )
    }

    fn long(&mut self) -> Result<i64, String> {
        let start = self.pos;
        let mut z: u64 = 0;
        let mut shift = 0;
        loop {
            let Some(&byte) = self.b.get(self.pos) else {
                self.pos = start;
                return Err(self.truncated("a varint"));
            };
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(format!(
                    "invalid varint at byte {start}: longer than 64 bits"
                ));
            }
            z |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        Ok((z >> 1) as i64 ^ -((z & 1) as i64))
    }

    fn int(&mut self) -> Result<i32, String> {
        let at = self.pos;
        let n = self.long()?;
        i32::try_from(n).map_err(|_| format!("int out of range at byte {at}: {n}"))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'b [u8], String> {
        if self.b.len() - self.pos < n {
            return Err(self.truncated(what));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn bytes(&mut self, what: &str) -> Result<&'b [u8], String> {
        let at = self.pos;
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| format!("negative {what} length at byte {at}"))?;
        self.take(n, what)
    }

    fn string(&mut self) -> Result<String, String> {
        let at = self.pos;
        let b = self.bytes("a string")?;
        String::from_utf8(b.to_vec())
            .map_err(|_| format!("invalid UTF-8 in the string at byte {at}"))
    }

    /// Reads an index (of a union branch or an enum symbol) into `items`.
    fn index<'s, T>(&mut self, items: &'s [T], what: &str) -> Result<&'s T, String> {
        let at = self.pos;
        let i = self.long()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| items.get(i))
            .ok_or_else(|| {
                format!(
                    "{what} {i} at byte {at} is out of range ({} in all)",
                    items.len()
                )
            })
    }

    /// Counts one value that takes no bytes of the input; refuses when the body has made more
    /// than its share ([`ZERO_BYTE_VALUES`]).
    fn zero_byte_value(&mut self) -> Result<(), String> {
        match self.zero_left.checked_sub(1) {
            Some(left) => {
                self.zero_left = left;
                Ok(())
            }
            None => Err(format!(
                "more than {} values that take no bytes (nulls, records, fixed of size 0) in a \
                 {}-byte body (at byte {}): a corrupt or hostile block count; the limit is \
                 {ZERO_BYTE_VALUES} + {ZERO_BYTE_PER_INPUT_BYTE} per byte of the body",
                ZERO_BYTE_VALUES + ZERO_BYTE_PER_INPUT_BYTE * self.b.len(),
                self.b.len(),
                self.pos
            )),
        }
    }

    /// The item count of the next array or map block (0 at the end).
    fn block(&mut self) -> Result<usize, String> {
        let at = self.pos;
        let mut n = self.long()?;
        if n < 0 {
            n = n
                .checked_neg()
                .ok_or_else(|| format!("invalid block count at byte {at}"))?;
            self.long()?; // the block's size in bytes, which we do not need
        }
        let n = n as u64;
        // Items are at least one byte, except zero-byte ones, which have their own budget; a
        // count beyond both cannot be read, so refuse it before looping or allocating.
        if n > (self.b.len() - self.pos) as u64 + self.zero_left as u64 {
            return Err(format!(
                "block of {n} items at byte {at} is larger than the input"
            ));
        }
        Ok(n as usize)
    }
}

fn number_f64(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

impl Plan {
    /// Decodes one value of `root` that must span all of `bytes`.
    pub(crate) fn decode_all(&self, bytes: &[u8]) -> Result<Value, String> {
        let mut r = Reader {
            b: bytes,
            pos: 0,
            zero_left: ZERO_BYTE_VALUES.saturating_add(ZERO_BYTE_PER_INPUT_BYTE * bytes.len()),
        };
        let v = self.dec(self.root, &mut r, 0)?;
        if r.pos != bytes.len() {
            return Err(format!(
                "trailing garbage: {} bytes after the value (which ends at byte {})",
                bytes.len() - r.pos,
                r.pos
            ));
        }
        Ok(v)
    }

    fn dec(&self, id: NodeId, r: &mut Reader<'_>, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(format!("values nested deeper than {MAX_DEPTH}"));
        }
        Ok(match self.node(id) {
            Node::Pending => return Err("incomplete schema".into()),
            Node::Null => {
                r.zero_byte_value()?;
                Value::Null
            }
            Node::Boolean => {
                let at = r.pos;
                match r.take(1, "a boolean")?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    x => return Err(format!("invalid boolean {x} at byte {at}")),
                }
            }
            Node::Int => r.int()?.into(),
            Node::Long => r.long()?.into(),
            Node::Float => {
                let b = r.take(4, "a float")?;
                let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                // Through the shortest f32 text, so 0.1f32 reads back as 0.1, not 0.100000001…
                number_f64(x.to_string().parse().unwrap_or(f64::from(x)))
            }
            Node::Double => {
                let b = r.take(8, "a double")?;
                number_f64(f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            }
            Node::String => Value::String(r.string()?),
            Node::Bytes => Value::String(String::from_utf8_lossy(r.bytes("bytes")?).into_owned()),
            Node::Record(rec) => {
                r.zero_byte_value()?;
                let mut m = Map::new();
                for f in &rec.fields {
                    let v = self
                        .dec(f.node, r, depth + 1)
                        .map_err(|e| format!("{e} (in field {})", f.name))?;
                    m.insert(f.name.to_string(), v);
                }
                Value::Object(m)
            }
            Node::Enum(e) => Value::String(r.index(&e.symbols, "enum symbol")?.clone()),
            Node::Fixed { size, .. } => {
                if *size == 0 {
                    r.zero_byte_value()?;
                }
                Value::String(String::from_utf8_lossy(r.take(*size, "a fixed")?).into_owned())
            }
            Node::Array(item) => {
                let mut a = Vec::new();
                loop {
                    let n = r.block()?;
                    if n == 0 {
                        break;
                    }
                    a.reserve(n.min(r.b.len() - r.pos));
                    for _ in 0..n {
                        a.push(self.dec(*item, r, depth + 1)?);
                    }
                }
                Value::Array(a)
            }
            Node::Map(item) => {
                let mut m = Map::new();
                loop {
                    let n = r.block()?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        let k = r.string()?;
                        let v = self.dec(*item, r, depth + 1)?;
                        m.insert(k, v);
                    }
                }
                Value::Object(m)
            }
            Node::Union(u) => {
                let b = r.index(&u.branches, "union branch")?;
                self.dec(b.node, r, depth + 1)?
            }
            Node::Decimal(d) => {
                let b = match &d.fixed {
                    Some((_, size)) => {
                        if *size == 0 {
                            r.zero_byte_value()?;
                        }
                        r.take(*size, "a decimal")?
                    }
                    None => r.bytes("a decimal")?,
                };
                Value::String(logical::render_decimal(b, d.scale))
            }
            Node::Uuid(repr) => match repr {
                UuidRepr::String => Value::String(r.string()?),
                UuidRepr::Fixed(_) => Value::String(logical::render_uuid(r.take(16, "a uuid")?)),
                UuidRepr::Bytes => Value::String(logical::render_uuid(r.bytes("a uuid")?)),
            },
            Node::Date => {
                let d = r.int()?;
                logical::render_date(d.into()).map_or(d.into(), Value::String)
            }
            Node::TimeMillis => {
                let t = r.int()?;
                logical::render_time(t.into(), 1_000, 3).map_or(t.into(), Value::String)
            }
            Node::TimeMicros => {
                let t = r.long()?;
                logical::render_time(t, 1_000_000, 6).map_or(t.into(), Value::String)
            }
            Node::Timestamp { unit, local } => {
                let t = r.long()?;
                logical::render_timestamp(t, *unit, *local).map_or(t.into(), Value::String)
            }
            Node::Duration(_) => {
                let b = r.take(12, "a duration")?;
                let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
                let mut m = Map::new();
                m.insert("months".into(), u(0).into());
                m.insert("days".into(), u(4).into());
                m.insert("millis".into(), u(8).into());
                Value::Object(m)
            }
        })
    }
}
