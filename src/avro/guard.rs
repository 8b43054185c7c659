//! Schema text kgate did not write (a registry's answer, a `schema:` file, a REST Proxy
//! client's `value_schema`) goes through [`parse_apache`] before apache-avro sees it, for two
//! reasons:
//! - **Nesting depth.** Records, arrays, maps and unions inside each other are bounded by
//!   [`MAX_SCHEMA_DEPTH`]: every later step (apache-avro's parser, the canonical form, kgate's
//!   compiler) recurses once per level, and a tokio worker has a 2 MiB stack.
//! - **Field defaults.** apache-avro 0.22 checks a field's `default` by resolving it against the
//!   field's type, and resolving a record fills each missing field from *its* default, with no
//!   depth bound: a field `c` of record `N2` typed `["N2", {"type":"map",…}]` with the default
//!   `{}`, and a later field of type `["N2","null"]` with the default `{}`, recurse until the
//!   stack overflows and the process aborts (found by fuzzing `avro_encode`; fixed upstream by
//!   avro-rs PR 642, in 0.23 release candidates only). So the defaults are moved out of
//!   apache-avro's sight while it parses (into a reserved field attribute) and put back on the
//!   parsed fields afterwards; kgate's compiler checks each default against its type itself,
//!   with its own depth bound (`encode::default_at`).

use apache_avro::schema::{Schema, UnionSchema};
use serde_json::Value;

/// How deeply records, arrays, maps and unions may nest inside each other in a schema kgate
/// takes (the top-level type is level 1). Real schemas stay far below it.
pub const MAX_SCHEMA_DEPTH: usize = 64;

/// Where a field's `default` waits while apache-avro parses (a field attribute it keeps as is).
const DEFERRED_DEFAULT: &str = "\u{0}kgate-deferred-default";

/// Parses `.avsc` text with apache-avro, the nesting depth bounded and field defaults kept out
/// of apache-avro's (unbounded) default check; the parsed schema carries the defaults as given.
/// The error says what is wrong, e.g. `the schema nests 70 levels deep (records, arrays, maps
/// and unions inside each other); kgate takes at most 64`.
pub fn parse_apache(text: &str) -> Result<Schema, String> {
    // serde_json refuses JSON nested deeper than 128 levels, which bounds `defer_defaults`.
    let mut json: Value =
        serde_json::from_str(text).map_err(|e| format!("the schema is not JSON: {e}"))?;
    let depth = defer_defaults(&mut json, 1);
    if depth > MAX_SCHEMA_DEPTH {
        return Err(format!(
            "the schema nests {depth} levels deep (records, arrays, maps and unions inside each \
             other); kgate takes at most {MAX_SCHEMA_DEPTH}"
        ));
    }
    let mut schema = Schema::parse(&json).map_err(|e| e.to_string())?;
    restore_defaults(&mut schema)?;
    Ok(schema)
}

/// Moves every record field's `default` into [`DEFERRED_DEFAULT`], walking only schema
/// positions (a field's `type`, `items`, `values`, union branches, a nested `type` object), never
/// into a default's value. Returns the deepest nesting level seen at or below `v`.
fn defer_defaults(v: &mut Value, depth: usize) -> usize {
    let mut deepest = depth;
    match v {
        Value::Array(branches) => {
            for b in branches {
                deepest = deepest.max(defer_defaults(b, depth + 1));
            }
        }
        Value::Object(m) => {
            let kind = m.get("type").and_then(Value::as_str).map(str::to_owned);
            match kind.as_deref() {
                Some("record" | "error") => {
                    if let Some(Value::Array(fields)) = m.get_mut("fields") {
                        for f in fields {
                            let Value::Object(f) = f else { continue };
                            // Only kgate's own mark is ever read back.
                            f.remove(DEFERRED_DEFAULT);
                            if let Some(d) = f.remove("default") {
                                f.insert(DEFERRED_DEFAULT.to_owned(), d);
                            }
                            if let Some(t) = f.get_mut("type") {
                                deepest = deepest.max(defer_defaults(t, depth + 1));
                            }
                        }
                    }
                }
                Some("array") => {
                    if let Some(t) = m.get_mut("items") {
                        deepest = deepest.max(defer_defaults(t, depth + 1));
                    }
                }
                Some("map") => {
                    if let Some(t) = m.get_mut("values") {
                        deepest = deepest.max(defer_defaults(t, depth + 1));
                    }
                }
                Some(_) => {}
                // `{"type": {...}}` or `{"type": [...]}`: the type is the inner schema.
                None => {
                    if let Some(t) = m.get_mut("type") {
                        deepest = deepest.max(defer_defaults(t, depth + 1));
                    }
                }
            }
        }
        _ => {}
    }
    deepest
}

/// Puts the deferred defaults back on the parsed record fields (each record is defined once in
/// the parsed tree; later uses are references).
fn restore_defaults(s: &mut Schema) -> Result<(), String> {
    match s {
        Schema::Record(r) => {
            for f in &mut r.fields {
                if let Some(d) = f.custom_attributes.remove(DEFERRED_DEFAULT) {
                    f.default = Some(d);
                }
                restore_defaults(&mut f.schema)?;
            }
        }
        Schema::Array(a) => restore_defaults(&mut a.items)?,
        Schema::Map(m) => restore_defaults(&mut m.types)?,
        Schema::Union(u) => {
            let mut branches = u.variants().to_vec();
            for b in &mut branches {
                restore_defaults(b)?;
            }
            *u = UnionSchema::new(branches).map_err(|e| e.to_string())?;
        }
        _ => {}
    }
    Ok(())
}
