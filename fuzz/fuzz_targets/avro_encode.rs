//! Plain JSON → Avro against random schemas: a small schema tree drawn from the input
//! (records, enums, fixed, arrays, maps, unions, named references including recursive ones,
//! field defaults, every logical type kgate compiles) is rendered as `.avsc` text and given to
//! `avro::Schema::parse` as a registry's schema is; a JSON value shaped by the schema (mostly
//! fitting, sometimes not) goes through `Schema::encode`. What encodes must decode
//! (`Schema::decode`, the consume/DLQ path) and the decoded JSON must encode again. The rest of
//! the input is decoded as an Avro body, as `kgate consume` decodes what it reads from Kafka.
#![no_main]
use arbitrary::{Arbitrary, Result, Unstructured};
use kgate::avro::Schema;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

#[derive(Arbitrary, Debug, Clone)]
enum S {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Record(Vec<(S, Option<DefaultFrom>)>),
    Enum(u8),
    Array(Box<S>),
    Map(Box<S>),
    Union(Vec<S>),
    Fixed(u8),
    Decimal {
        precision: u8,
        scale: u8,
        fixed: Option<u8>,
    },
    Uuid(u8),
    Date,
    TimeMillis,
    TimeMicros,
    Timestamp {
        unit: u8,
        local: bool,
    },
    Duration,
    /// A named type already declared (or being declared: recursion).
    Ref(u8),
}

/// Where a field's default comes from.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum DefaultFrom {
    /// A value generated for the field's type (usually fits).
    Shaped,
    /// Any JSON.
    Null,
}

struct Render<'a, 'b> {
    names: Vec<(String, S)>,
    n: usize,
    u: &'a mut Unstructured<'b>,
}

const MAX_DEPTH: usize = 6;

impl Render<'_, '_> {
    fn name(&mut self) -> String {
        self.n += 1;
        format!("N{}", self.n)
    }

    fn schema(&mut self, s: &S, depth: usize) -> Value {
        if depth > MAX_DEPTH {
            return json!("int");
        }
        match s {
            S::Null => json!("null"),
            S::Boolean => json!("boolean"),
            S::Int => json!("int"),
            S::Long => json!("long"),
            S::Float => json!("float"),
            S::Double => json!("double"),
            S::Bytes => json!("bytes"),
            S::String => json!("string"),
            S::Record(fields) => {
                let name = self.name();
                self.names.push((name.clone(), s.clone()));
                let mut fs = Vec::new();
                for (i, (f, d)) in fields.iter().take(8).enumerate() {
                    let mut field =
                        json!({"name": format!("f{i}"), "type": self.schema(f, depth + 1)});
                    match d {
                        Some(DefaultFrom::Shaped) => {
                            field["default"] = self.value(f, depth + 1).unwrap_or(Value::Null)
                        }
                        Some(DefaultFrom::Null) => field["default"] = Value::Null,
                        None => {}
                    }
                    fs.push(field);
                }
                json!({"type": "record", "name": name, "fields": fs})
            }
            S::Enum(n) => {
                let name = self.name();
                self.names.push((name.clone(), s.clone()));
                let symbols: Vec<String> = (0..(*n % 5).max(1)).map(|i| format!("S{i}")).collect();
                json!({"type": "enum", "name": name, "symbols": symbols})
            }
            S::Array(i) => json!({"type": "array", "items": self.schema(i, depth + 1)}),
            S::Map(v) => json!({"type": "map", "values": self.schema(v, depth + 1)}),
            S::Union(bs) => Value::Array(
                bs.iter()
                    .take(5)
                    .map(|b| self.schema(b, depth + 1))
                    .collect(),
            ),
            S::Fixed(size) => {
                let name = self.name();
                self.names.push((name.clone(), s.clone()));
                json!({"type": "fixed", "name": name, "size": *size % 20})
            }
            S::Decimal {
                precision,
                scale,
                fixed,
            } => {
                let precision = (*precision % 48).max(1);
                let scale = *scale % (precision + 1);
                match fixed {
                    Some(size) => {
                        let name = self.name();
                        self.names.push((name.clone(), s.clone()));
                        json!({"type": "fixed", "name": name, "size": (*size % 24).max(1),
                            "logicalType": "decimal", "precision": precision, "scale": scale})
                    }
                    None => json!({"type": "bytes", "logicalType": "decimal",
                        "precision": precision, "scale": scale}),
                }
            }
            S::Uuid(repr) => match repr % 3 {
                0 => json!({"type": "string", "logicalType": "uuid"}),
                1 => {
                    let name = self.name();
                    self.names.push((name.clone(), s.clone()));
                    json!({"type": "fixed", "name": name, "size": 16, "logicalType": "uuid"})
                }
                _ => json!({"type": "bytes", "logicalType": "uuid"}),
            },
            S::Date => json!({"type": "int", "logicalType": "date"}),
            S::TimeMillis => json!({"type": "int", "logicalType": "time-millis"}),
            S::TimeMicros => json!({"type": "long", "logicalType": "time-micros"}),
            S::Timestamp { unit, local } => {
                let unit = ["millis", "micros", "nanos"][*unit as usize % 3];
                let prefix = if *local {
                    "local-timestamp"
                } else {
                    "timestamp"
                };
                json!({"type": "long", "logicalType": format!("{prefix}-{unit}")})
            }
            S::Duration => {
                let name = self.name();
                self.names.push((name.clone(), s.clone()));
                json!({"type": "fixed", "name": name, "size": 12, "logicalType": "duration"})
            }
            S::Ref(i) => match self.names.len() {
                0 => json!("string"),
                n => json!(self.names[*i as usize % n].0.clone()),
            },
        }
    }

    /// A JSON value for `s`: mostly one that fits, sometimes any JSON.
    fn value(&mut self, s: &S, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH + 2 || self.u.ratio(1, 12)? {
            return any_json(self.u, 2);
        }
        let u = &mut *self.u;
        Ok(match s {
            S::Null => Value::Null,
            S::Boolean => json!(bool::arbitrary(u)?),
            S::Int | S::Date | S::TimeMillis => json!(i32::arbitrary(u)?),
            S::Long | S::TimeMicros => json!(i64::arbitrary(u)?),
            S::Float | S::Double => number(f64::arbitrary(u)?),
            S::Bytes | S::String | S::Fixed(_) => json!(String::arbitrary(u)?),
            S::Record(fields) => {
                let mut m = Map::new();
                for (i, (f, _)) in fields.iter().take(8).enumerate() {
                    if !self.u.ratio(1, 6)? {
                        let v = self.value(f, depth + 1)?;
                        m.insert(format!("f{i}"), v);
                    }
                }
                Value::Object(m)
            }
            S::Enum(n) => json!(format!("S{}", u8::arbitrary(u)? % (n % 5).max(1))),
            S::Array(i) => {
                let n = self.u.int_in_range(0..=4)?;
                Value::Array(
                    (0..n)
                        .map(|_| self.value(i, depth + 1))
                        .collect::<Result<_>>()?,
                )
            }
            S::Map(v) => {
                let n = self.u.int_in_range(0..=4)?;
                let mut m = Map::new();
                for _ in 0..n {
                    let k = String::arbitrary(self.u)?;
                    let v = self.value(v, depth + 1)?;
                    m.insert(k, v);
                }
                Value::Object(m)
            }
            S::Union(bs) => match bs.iter().take(5).count() {
                0 => Value::Null,
                n => {
                    let b = &bs[self.u.choose_index(n)?];
                    let v = self.value(b, depth + 1)?;
                    if self.u.ratio(1, 8)? {
                        // The Avro-JSON wrapped form.
                        json!({ type_name(b): v })
                    } else {
                        v
                    }
                }
            },
            S::Decimal { .. } => {
                if bool::arbitrary(u)? {
                    let int = u64::arbitrary(u)?;
                    let frac = u32::arbitrary(u)?;
                    let neg = if bool::arbitrary(u)? { "-" } else { "" };
                    json!(format!("{neg}{int}.{frac}"))
                } else {
                    number(f64::arbitrary(u)?)
                }
            }
            S::Uuid(_) => {
                if bool::arbitrary(u)? {
                    let b = <[u8; 16]>::arbitrary(u)?;
                    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
                    json!(format!(
                        "{}-{}-{}-{}-{}",
                        &h[0..8],
                        &h[8..12],
                        &h[12..16],
                        &h[16..20],
                        &h[20..]
                    ))
                } else {
                    json!(String::arbitrary(u)?)
                }
            }
            S::Timestamp { .. } => match u.int_in_range(0..=2)? {
                0 => json!(i64::arbitrary(u)?),
                1 => {
                    let (y, mo, d) = (
                        u.int_in_range(0..=9999)?,
                        u.int_in_range(1..=12)?,
                        u.int_in_range(1..=31)?,
                    );
                    let (h, mi, s) = (
                        u.int_in_range(0..=23)?,
                        u.int_in_range(0..=59)?,
                        u.int_in_range(0..=60)?,
                    );
                    let frac = u64::arbitrary(u)?;
                    let off = ["Z", "z", "+02:00", "-11:30", "", "+24:00"][u.choose_index(6)?];
                    json!(format!(
                        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac}{off}"
                    ))
                }
                _ => json!(String::arbitrary(u)?),
            },
            S::Duration => json!({"months": u32::arbitrary(u)?, "days": u32::arbitrary(u)?,
                "millis": i64::arbitrary(u)?}),
            S::Ref(i) => match self.names.len() {
                0 => json!(String::arbitrary(u)?),
                n => {
                    let s = self.names[*i as usize % n].1.clone();
                    self.value(&s, depth + 1)?
                }
            },
        })
    }
}

fn type_name(s: &S) -> &'static str {
    match s {
        S::Null => "null",
        S::Boolean => "boolean",
        S::Int | S::Date | S::TimeMillis => "int",
        S::Long | S::TimeMicros | S::Timestamp { .. } => "long",
        S::Float => "float",
        S::Double => "double",
        S::Bytes => "bytes",
        S::Array(_) => "array",
        S::Map(_) => "map",
        _ => "string",
    }
}

fn number(f: f64) -> Value {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn any_json(u: &mut Unstructured<'_>, depth: usize) -> Result<Value> {
    Ok(match u.int_in_range(0..=6)? {
        0 => Value::Null,
        1 => json!(bool::arbitrary(u)?),
        2 => json!(i64::arbitrary(u)?),
        3 => number(f64::arbitrary(u)?),
        4 => json!(String::arbitrary(u)?),
        5 if depth > 0 => {
            let n = u.int_in_range(0..=3)?;
            Value::Array(
                (0..n)
                    .map(|_| any_json(u, depth - 1))
                    .collect::<Result<_>>()?,
            )
        }
        _ if depth > 0 => {
            let n = u.int_in_range(0..=3)?;
            let mut m = Map::new();
            for _ in 0..n {
                m.insert(String::arbitrary(u)?, any_json(u, depth - 1)?);
            }
            Value::Object(m)
        }
        _ => Value::Null,
    })
}

/// How many schema texts [`parsed`] keeps (then it starts over).
const CACHED_SCHEMAS: usize = 4096;

thread_local! {
    static SCHEMAS: RefCell<HashMap<String, Option<Rc<Schema>>>> = RefCell::new(HashMap::new());
}

/// `Schema::parse(text)`, once per text: a mutation that keeps the schema part of an input and
/// changes the value (most of them) does not compile the same schema again (kgate's registry
/// cache, too, parses a schema once). Parsing is deterministic, so nothing is lost but repeated work (it was most
/// of this target's time: ~3k executions/s).
fn parsed(text: String) -> Option<Rc<Schema>> {
    if let Some(hit) = SCHEMAS.with(|c| c.borrow().get(&text).cloned()) {
        return hit;
    }
    let schema = Schema::parse(&text).ok().map(Rc::new);
    SCHEMAS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHED_SCHEMAS {
            c.clear();
        }
        c.insert(text, schema.clone());
    });
    schema
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let s = S::arbitrary(&mut u)?;
    let mut r = Render {
        names: Vec::new(),
        n: 0,
        u: &mut u,
    };
    let schema_json = r.schema(&s, 0);
    let text = schema_json.to_string();
    // Values come from parsed JSON text in kgate (HTTP bodies, feeds): go through text too.
    let v = r.value(&s, 0)?;
    let v: Value = serde_json::from_str(&v.to_string()).expect("generated JSON parses");
    // `FUZZ_SHOW=1 <binary> <input>` shows the schema and value an input makes.
    if std::env::var_os("FUZZ_SHOW").is_some() {
        eprintln!(
            "schema {text}\nvalue {v}\nparsed {:?}",
            Schema::parse(&text).map(|_| ())
        );
    }
    let Some(schema) = parsed(text.clone()) else {
        return Ok(());
    };
    let mut out = Vec::new();
    if schema.encode(&v, &mut out).is_ok() {
        let back = schema.decode(&out).unwrap_or_else(|e| {
            panic!("encoded but does not decode: {e}\nschema {text}\nvalue {v}")
        });
        let mut again = Vec::new();
        schema.encode(&back, &mut again).unwrap_or_else(|e| {
            panic!(
                "decoded JSON does not encode again: {e}\nschema {text}\nvalue {v}\ndecoded {back}"
            )
        });
    } else {
        assert!(out.is_empty(), "a mismatch left bytes in the buffer");
    }
    let rest = u.take_rest();
    if let Ok(v) = schema.decode(rest) {
        let mut out = Vec::new();
        let _ = schema.encode(&v, &mut out);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
