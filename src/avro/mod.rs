//! Avro from plain JSON: a schema compiled once, then records encoded straight from
//! `serde_json::Value` into a reused buffer; the decoder that inverts it; and the Confluent wire
//! format header. No network I/O here (the schema registry client lives elsewhere).
//!
//! ```
//! use kgate::avro::{frame, unframe, Schema};
//! let schema = Schema::parse(r#"{"type":"record","name":"T","namespace":"io.x","fields":[
//!     {"name":"id","type":"long"},
//!     {"name":"note","type":["null","string"]}]}"#).unwrap();
//! assert_eq!(schema.full_name(), Some("io.x.T"));
//! let mut out = Vec::new();
//! frame(42, &mut out);
//! schema.encode(&serde_json::json!({"id": 7, "note": "hi"}), &mut out).unwrap();
//! let (id, body) = unframe(&out).unwrap();
//! assert_eq!(id, 42);
//! assert_eq!(schema.decode(body).unwrap(), serde_json::json!({"id": 7, "note": "hi"}));
//! ```
//!
//! # Why not apache-avro for the encoding
//! `apache-avro` parses and validates the schema text (names, namespaces, aliases, defaults,
//! logical-type attributes): that part is well kept and we use it. Its writers, however, take
//! its own `types::Value` (a second tree built per record from the JSON) and resolve or validate
//! it against the schema on every write, a known slowness (avro-rs #371), and they read JSON in
//! the Avro-JSON form (unions wrapped, timestamps as numbers). Here the parsed schema is compiled
//! once into a plan — an arena of nodes with named types resolved to indices, union branch tests
//! precomputed and field defaults already encoded to bytes — and `encode` walks the plan and
//! the `serde_json::Value` side by side, writing varints into the caller's `Vec<u8>`. The
//! success path allocates nothing but the buffer's growth. `benches/avro_encode.rs` measures
//! both.
//!
//! # How JSON maps to Avro (encode)
//! The JSON is plain: what an application naturally sends, with no Avro-JSON wrapping.
//! - `null`: JSON null. `boolean`: true/false.
//! - `int`, `long`: a JSON integer within the type's range. A float with an integral value that
//!   is exactly representable (`3.0`, `1e3`; |x| ≤ 2^53) is taken as that integer; `1.5` is a
//!   mismatch, and so is an integer out of range.
//! - `float`, `double`: any JSON number (a `float` out of f32 range is a mismatch).
//! - `string`: a JSON string. `bytes`: a JSON string, whose UTF-8 bytes are written (base64 is
//!   not assumed). `fixed`: a JSON string of exactly `size` UTF-8 bytes.
//! - `enum`: a JSON string that is one of the symbols (the mismatch lists them).
//! - `array`: a JSON array. `map`: a JSON object (values of the map's type).
//! - `record`: a JSON object. Fields are written in schema order; JSON keys that are not fields
//!   are ignored. A missing field takes the field's `default`, encoded once when the schema is
//!   parsed; with no default, a field whose type is a union with `null` is written as null;
//!   otherwise a missing field is a mismatch. An explicit JSON `null` is never replaced by a
//!   default: it must fit the field's type.
//! - unions: the value is written as the **first branch, in schema order, that encodes it**.
//!   Branches that cannot take the JSON kind at all are skipped without trying (a string is
//!   never tried as a number); a branch that could take it is tried, and on failure the output
//!   is rolled back and the next is tried. So `["null","string"]` and `["string","null"]` both
//!   take a string or null; `[int, long, double]` takes 5 as int, 2^40 as long and 1.5 as
//!   double; `[enum E, string]` takes a symbol of E as the enum and any other string as string;
//!   `[timestamp-millis, string]` takes an RFC 3339 string as a timestamp and other strings as
//!   string; with several record branches, the first whose fields all fit. If no bare branch
//!   fits and the value is an object with exactly one key naming a branch (Avro-JSON's
//!   `{"string": "x"}`, `{"io.x.Rec": {...}}` or the short name `{"Rec": {...}}`; for logical
//!   types the underlying type or the logical name), the inner value is written as that branch.
//!   When only one branch could take the value's kind, its own mismatch is reported (pointing
//!   inside a record branch, say); otherwise the mismatch names the union.
//! - `decimal` (on `bytes` or `fixed`): a JSON string such as `"12.30"`, `"-0.01"`, `"1.5e3"`,
//!   or a JSON number. Strings are read digit by digit, never through a float: `"12.30"` at
//!   scale 2 is the unscaled integer 1230, written as minimal big-endian two's complement
//!   (sign-extended to the size of a `fixed`). Fraction digits beyond the scale are a mismatch
//!   unless they are zeros (nothing is ever rounded); more digits than the precision is a
//!   mismatch, as is a value too large for the `fixed`. Any precision works (beyond 38 digits a
//!   big integer is used). JSON *numbers* are read through serde_json's f64 (this crate does
//!   not enable serde_json's `arbitrary_precision`, which would slow every JSON parse in the
//!   gateway): they are exact up to 15 significant digits; send larger decimals as strings.
//! - `timestamp-millis`/`-micros`/`-nanos`: an RFC 3339 string (`2025-06-01T12:34:56.789Z`,
//!   `...+02:00`, any number of fraction digits, `T`, `t` or a space between date and time; no
//!   offset is read as UTC), or a JSON integer already in the unit. Digits finer than the unit
//!   are dropped (floored), not rounded. `local-timestamp-*`: the same without an offset (`Z`
//!   is allowed, a numeric offset is a mismatch), the wall-clock time as written.
//! - `date`: `"YYYY-MM-DD"` or integer days since 1970-01-01. `time-millis`/`time-micros`:
//!   `"HH:MM:SS[.fff…]"` or an integer count of the unit, within one day.
//! - `uuid`: a string `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case), validated; on
//!   `string` it is written as given, on `fixed(16)` as its 16 bytes.
//! - `duration`: an object `{"months": m, "days": d, "millis": ms}` (missing keys are 0).
//! - `big-decimal` is not supported (the schema is refused at parse time).
//!
//! Field defaults follow the Avro spec's JSON form: `bytes`/`fixed` (also under `decimal`) as
//! strings whose code points 0–255 are the bytes, a union's default for its first branch (other
//! branches are tried after it), timestamps and dates as integers; other types as above.
//!
//! # How Avro maps back to JSON (decode)
//! Unions decode to the plain value of their branch; enums to the symbol; `bytes` and `fixed` to
//! a string (invalid UTF-8 is replaced, so arbitrary binary does not round-trip); decimals to a
//! string with exactly `scale` fraction digits (`"12.30"`); timestamps to RFC 3339 in UTC with
//! the unit's digits (`.789Z`, `.789000Z`), local ones without `Z`; dates to `"YYYY-MM-DD"`;
//! times to `"HH:MM:SS.fff"`; uuids to lowercase text; a float through its shortest f32 text
//! (so `0.1` stays `0.1`); NaN and infinities to null. A timestamp or date outside years
//! 0000–9999 (or a time outside one day) decodes to its integer. Trailing bytes, truncated
//! input, bad varints, out-of-range union/enum indices and invalid UTF-8 in strings are errors.

mod compile;
mod decode;
mod encode;
mod guard;
mod logical;
#[cfg(test)]
mod tests;

use std::fmt;

pub use guard::{parse_apache, MAX_SCHEMA_DEPTH};

/// A compiled Avro schema: immutable, `Send + Sync`, cheap to share in an `Arc`.
pub struct Schema {
    plan: compile::Plan,
    full_name: Option<String>,
    canonical: String,
    text: String,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schema")
            .field("full_name", &self.full_name)
            .field("canonical", &self.canonical)
            .finish_non_exhaustive()
    }
}

impl Schema {
    /// Parses `.avsc` JSON text (a record, or any Avro type) and compiles it, field defaults
    /// included. The error says what is wrong with the schema.
    pub fn parse(text: &str) -> Result<Schema, String> {
        let parsed = parse_apache(text).map_err(|e| format!("invalid Avro schema: {e}"))?;
        let mut plan =
            compile::compile(&parsed).map_err(|e| format!("invalid Avro schema: {e}"))?;
        encode::fill_defaults(&mut plan).map_err(|e| format!("invalid Avro schema: {e}"))?;
        let full_name = match plan.node(plan.root) {
            compile::Node::Record(r) => Some(r.name.clone()),
            compile::Node::Enum(e) => Some(e.name.clone()),
            compile::Node::Fixed { name, .. } | compile::Node::Duration(name) => Some(name.clone()),
            compile::Node::Uuid(compile::UuidRepr::Fixed(name)) => Some(name.clone()),
            compile::Node::Decimal(compile::Decimal {
                fixed: Some((name, _)),
                ..
            }) => Some(name.clone()),
            _ => None,
        };
        Ok(Schema {
            plan,
            full_name,
            canonical: parsed.canonical_form(),
            text: text.to_owned(),
        })
    }

    /// The full name (`namespace.name`) of the top-level named type, e.g. `io.kgate.trades.TradeEvent`
    /// (for the record_name subject strategy); `None` for an unnamed top-level type.
    pub fn full_name(&self) -> Option<&str> {
        self.full_name.as_deref()
    }

    /// The schema's Parsing Canonical Form (as defined by the Avro spec).
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The schema text as given to [`Schema::parse`] (what a registry should be sent, since the
    /// canonical form drops defaults and logical types).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Appends the Avro binary encoding of `v` to `out` (see the module docs for how JSON maps
    /// to Avro). On a mismatch `out` is left as it was.
    pub fn encode(&self, v: &serde_json::Value, out: &mut Vec<u8>) -> Result<(), Mismatch> {
        let start = out.len();
        self.plan.enc(self.plan.root, v, out).map_err(|e| {
            out.truncate(start);
            e.into_mismatch(&self.plan)
        })
    }

    /// Decodes one Avro binary value that spans all of `bytes` into plain JSON (the inverse
    /// mapping, see the module docs). Truncated input and trailing bytes are errors.
    pub fn decode(&self, bytes: &[u8]) -> Result<serde_json::Value, String> {
        self.plan.decode_all(bytes)
    }
}

/// Why a JSON value does not fit the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// JSON pointer to the value, e.g. `/tradeCredential/credentialSubject/price` or
    /// `/items/3/price`; empty for the top level.
    pub path: String,
    /// The Avro type expected there, e.g. `long (a JSON integer within 64 bits)`,
    /// `union [null, string]`, `enum Side {BUY, SELL}`.
    pub expected: String,
    /// A short rendering of what was found, e.g. `the string "abc"`, `missing`, with the
    /// reason in parentheses where the type was right but the value was not (out of range,
    /// too many fraction digits, …).
    pub found: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "at the top level: ")?;
        } else {
            write!(f, "at {}: ", self.path)?;
        }
        write!(f, "expected {}, found {}", self.expected, self.found)
    }
}

impl std::error::Error for Mismatch {}

/// Appends the Confluent wire format header: magic byte 0, then the 4-byte big-endian schema id.
pub fn frame(schema_id: u32, out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
}

/// Reads the Confluent wire format header: returns the schema id and the Avro body after it.
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), String> {
    match bytes {
        [0, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [m, _, _, _, _, ..] => Err(format!(
            "not in the Confluent wire format: the first byte is {m:#04x}, not the magic byte 0x00"
        )),
        _ => Err(format!(
            "not in the Confluent wire format: {} bytes, shorter than the 5-byte header",
            bytes.len()
        )),
    }
}
