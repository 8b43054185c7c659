//! Tests of the Avro codec: byte-level agreement with apache-avro's own decoder and encoder,
//! the JSON mapping rules of the module docs, mismatches, defaults and decode errors.

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

use super::*;

const TRADE_EVENT: &str = include_str!("../../schemas/TradeEvent.avsc");

fn schema(text: &str) -> Schema {
    Schema::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A schema for one field `v` of type `ty` (JSON text).
fn field(ty: &str) -> Schema {
    schema(&format!(
        r#"{{"type":"record","name":"R","namespace":"t","fields":[{{"name":"v","type":{ty}}}]}}"#
    ))
}

fn enc(s: &Schema, v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    s.encode(v, &mut out)
        .unwrap_or_else(|e| panic!("{e} (value {v})"));
    out
}

fn mismatch(s: &Schema, v: &Value) -> Mismatch {
    let mut out = vec![9];
    let e = s.encode(v, &mut out).expect_err("should not encode");
    assert_eq!(out, [9], "a failed encode leaves the buffer as it was");
    e
}

/// Decodes `bytes` with apache-avro (an independent decoder) and checks it used every byte.
fn apache_reads(text: &str, bytes: &[u8]) -> apache_avro::types::Value {
    let s = apache_avro::Schema::parse_str(text).unwrap();
    let mut rd: &[u8] = bytes;
    let v = GenericDatumReader::builder(&s)
        .build()
        .and_then(|r| r.read_value(&mut rd))
        .unwrap_or_else(|e| panic!("apache-avro cannot read {bytes:?}: {e}"));
    assert!(rd.is_empty(), "apache-avro left {} bytes unread", rd.len());
    v
}

/// [`apache_reads`], and apache-avro encodes what it read back to the very same bytes (not for
/// maps of several entries: apache-avro keeps them in a HashMap, in no fixed order).
fn apache_agrees(text: &str, bytes: &[u8]) -> apache_avro::types::Value {
    let s = apache_avro::Schema::parse_str(text).unwrap();
    let v = apache_reads(text, bytes);
    let again = GenericDatumWriter::builder(&s)
        .build()
        .and_then(|w| w.write_value_to_vec(v.clone()))
        .unwrap();
    assert_eq!(again, bytes, "apache-avro re-encodes {v:?} differently");
    v
}

/// Encodes `{"v": value}` with a one-field schema, checks apache-avro agrees, and returns
/// apache-avro's reading of the field.
fn one(ty: &str, value: Value) -> apache_avro::types::Value {
    let text = format!(
        r#"{{"type":"record","name":"R","namespace":"t","fields":[{{"name":"v","type":{ty}}}]}}"#
    );
    let bytes = enc(&schema(&text), &json!({ "v": value }));
    match apache_agrees(&text, &bytes) {
        apache_avro::types::Value::Record(mut f) => f.remove(0).1,
        other => panic!("{other:?}"),
    }
}

/// Encodes then decodes `{"v": value}`, returning the decoded field.
fn round(ty: &str, value: Value) -> Value {
    let s = field(ty);
    let bytes = enc(&s, &json!({ "v": value }));
    s.decode(&bytes).unwrap()["v"].clone()
}

// ---------------------------------------------------------------------------------------------
// TradeEvent

/// What the synth `trades` feed sends, after the pipeline's rename of `@context` to `context`.
fn trade(seq: u64) -> Value {
    let text = crate::cmd::synth::message(
        crate::cmd::synth::Feed::Trades,
        seq,
        "feed-1",
        &mut StdRng::seed_from_u64(seq),
    );
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let vc = v["tradeCredential"].as_object_mut().unwrap();
    let ctx = vc.remove("@context").unwrap();
    vc.insert("context".into(), ctx);
    v
}

/// `"65000.12000000"` and `"65000.12"` are the same decimal.
fn trim_decimal(v: &mut Value) {
    let s = v.as_str().unwrap();
    let t = s.trim_end_matches('0').trim_end_matches('.');
    *v = Value::String(t.to_owned());
}

#[test]
fn trade_event_round_trips_the_synth_feed() {
    let s = schema(TRADE_EVENT);
    assert_eq!(s.full_name(), Some("io.kgate.trades.TradeEvent"));
    assert!(s
        .canonical()
        .starts_with(r#"{"name":"io.kgate.trades.TradeEvent","type":"record""#));
    let mut out = Vec::new();
    for seq in 0..200 {
        let mut original = trade(seq);
        out.clear();
        s.encode(&original, &mut out)
            .unwrap_or_else(|e| panic!("{e}\n{original}"));
        assert!(out.len() < 700, "{} bytes", out.len());
        if seq < 20 {
            apache_agrees(TRADE_EVENT, &out);
        }
        let mut back = s.decode(&out).unwrap();
        // The optional field the feed does not send decodes as null.
        let vc = back["tradeCredential"].as_object_mut().unwrap();
        assert_eq!(vc.remove("expirationDate"), Some(Value::Null));
        for v in [&mut back, &mut original] {
            let cs = &mut v["tradeCredential"]["credentialSubject"];
            trim_decimal(&mut cs["price"]);
            trim_decimal(&mut cs["quantity"]);
        }
        assert_eq!(back, original);
    }
}

#[test]
fn trade_event_mismatches_name_the_path() {
    let s = schema(TRADE_EVENT);
    let mut t = trade(1);
    t["tradeCredential"]["credentialSubject"]["price"] = json!("12.3456789012");
    let e = mismatch(&s, &t);
    assert_eq!(e.path, "/tradeCredential/credentialSubject/price");
    assert!(e.expected.starts_with("decimal(24,8)"), "{e}");
    assert_eq!(
        e.found,
        r#"the string "12.3456789012" (10 fraction digits, scale is 8)"#
    );

    let mut t = trade(1);
    t["tradeCredential"]["credentialSubject"]["side"] = json!("hold");
    let e = mismatch(&s, &t);
    assert_eq!(
        e.to_string(),
        r#"at /tradeCredential/credentialSubject/side: expected enum Side {buy, sell}, found the string "hold" (not one of the symbols)"#
    );

    let mut t = trade(1);
    t["tradeCredential"]["proof"]
        .as_object_mut()
        .unwrap()
        .remove("created");
    let e = mismatch(&s, &t);
    assert_eq!(e.path, "/tradeCredential/proof/created");
    assert_eq!(e.found, "missing");

    let mut t = trade(1);
    t["tradeCredential"]["context"][1] = json!(7);
    let e = mismatch(&s, &t);
    assert_eq!(
        e.to_string(),
        "at /tradeCredential/context/1: expected string, found the number 7"
    );

    // Missing `source` is fine (nullable with default null); a wrong type is not.
    let mut t = trade(1);
    t.as_object_mut().unwrap().remove("source");
    let bytes = enc(&s, &t);
    assert_eq!(s.decode(&bytes).unwrap()["source"], Value::Null);
    t["source"] = json!(5);
    assert_eq!(
        mismatch(&s, &t).to_string(),
        "at /source: expected union [null, string], found the number 5"
    );
    assert_eq!(
        mismatch(&s, &json!([1])).to_string(),
        "at the top level: expected record io.kgate.trades.TradeEvent, found an array of 1 item"
    );
}

// ---------------------------------------------------------------------------------------------
// Primitives

#[test]
fn primitives_match_apache_avro() {
    use apache_avro::types::Value as A;
    assert_eq!(one(r#""null""#, json!(null)), A::Null);
    assert_eq!(one(r#""boolean""#, json!(true)), A::Boolean(true));
    assert_eq!(one(r#""int""#, json!(-2_147_483_648i64)), A::Int(i32::MIN));
    assert_eq!(one(r#""int""#, json!(3.0)), A::Int(3));
    assert_eq!(one(r#""long""#, json!(i64::MAX)), A::Long(i64::MAX));
    assert_eq!(one(r#""long""#, json!(-1)), A::Long(-1));
    assert_eq!(one(r#""float""#, json!(1.5)), A::Float(1.5));
    assert_eq!(one(r#""double""#, json!(7)), A::Double(7.0));
    assert_eq!(
        one(r#""string""#, json!("héllo")),
        A::String("héllo".into())
    );
    assert_eq!(one(r#""bytes""#, json!("ab")), A::Bytes(b"ab".to_vec()));
    assert_eq!(
        one(r#"{"type":"array","items":"long"}"#, json!([1, 2, 300])),
        A::Array(vec![A::Long(1), A::Long(2), A::Long(300)])
    );
    assert_eq!(
        one(r#"{"type":"array","items":"long"}"#, json!([])),
        A::Array(vec![])
    );
    let A::Map(m) = one(r#"{"type":"map","values":"int"}"#, json!({"a": 1})) else {
        panic!()
    };
    assert_eq!(m["a"], A::Int(1));
    let map = r#"{"type":"record","name":"M","fields":[{"name":"v","type":{"type":"map","values":"int"}}]}"#;
    let bytes = enc(&schema(map), &json!({"v": {"a": 1, "b": 2}}));
    let A::Record(f) = apache_reads(map, &bytes) else {
        panic!()
    };
    let A::Map(m) = &f[0].1 else { panic!() };
    assert_eq!((m.len(), &m["b"]), (2, &A::Int(2)));
    assert_eq!(
        one(
            r#"{"type":"enum","name":"E","symbols":["A","B"]}"#,
            json!("B")
        ),
        A::Enum(1, "B".into())
    );
    assert_eq!(
        one(r#"{"type":"fixed","name":"F","size":3}"#, json!("xyz")),
        A::Fixed(3, b"xyz".to_vec())
    );
    assert_eq!(round(r#""float""#, json!(0.1)), json!(0.1));
    assert_eq!(round(r#""bytes""#, json!("ab")), json!("ab"));
}

#[test]
fn primitive_mismatches() {
    let m = |ty: &str, v: Value| mismatch(&field(ty), &json!({ "v": v })).to_string();
    assert_eq!(
        m(r#""long""#, json!(1.5)),
        "at /v: expected long (a JSON integer within 64 bits), found the number 1.5"
    );
    assert_eq!(
        m(r#""long""#, json!(u64::MAX)),
        "at /v: expected long (a JSON integer within 64 bits), found the number 18446744073709551615 (out of range)"
    );
    assert_eq!(
        m(r#""int""#, json!(3_000_000_000i64)),
        "at /v: expected int (a JSON integer within 32 bits), found the number 3000000000 (out of range)"
    );
    assert_eq!(
        m(r#""long""#, json!("1")),
        r#"at /v: expected long (a JSON integer within 64 bits), found the string "1""#
    );
    assert_eq!(
        m(r#""float""#, json!(1e300)),
        "at /v: expected float (a JSON number), found the number 1e+300 (out of range)"
    );
    assert_eq!(
        m(r#""boolean""#, json!(null)),
        "at /v: expected boolean, found null"
    );
    assert_eq!(
        m(r#""string""#, json!({"a": 1})),
        "at /v: expected string, found an object with keys a"
    );
    let long = "x".repeat(100);
    assert_eq!(
        m(r#""int""#, json!(long)),
        format!(
            "at /v: expected int (a JSON integer within 32 bits), found the string \"{}\"…",
            "x".repeat(40)
        )
    );
    assert_eq!(
        m(
            r#"{"type":"enum","name":"Side","symbols":["BUY","SELL"]}"#,
            json!("buy")
        ),
        r#"at /v: expected enum Side {BUY, SELL}, found the string "buy" (not one of the symbols)"#
    );
    assert_eq!(
        m(r#"{"type":"fixed","name":"F","size":4}"#, json!("abc")),
        r#"at /v: expected fixed F (a string of exactly 4 bytes), found the string "abc" (3 bytes)"#
    );
    assert_eq!(
        m(
            r#"{"type":"array","items":{"type":"record","name":"I","fields":[{"name":"price","type":"double"}]}}"#,
            json!([{"price": 1}, {"price": 2}, {"price": 3}, {"price": "x"}])
        ),
        r#"at /v/3/price: expected double (a JSON number), found the string "x""#
    );
    assert_eq!(
        m(r#"{"type":"map","values":"int"}"#, json!({"a/b~c": "x"})),
        r#"at /v/a~1b~0c: expected int (a JSON integer within 32 bits), found the string "x""#
    );
}

// ---------------------------------------------------------------------------------------------
// Records: missing fields, defaults, extra fields, names

#[test]
fn missing_fields_take_defaults_encoded_at_parse_time() {
    let text = r#"{"type":"record","name":"D","namespace":"t","fields":[
        {"name":"a","type":"int","default":7},
        {"name":"b","type":"string","default":"x"},
        {"name":"c","type":["null","long"],"default":null},
        {"name":"d","type":["long","null"],"default":5},
        {"name":"e","type":["string","null"]},
        {"name":"f","type":{"type":"array","items":"int"},"default":[1,2]},
        {"name":"g","type":"bytes","default":"\u00ff\u0000"},
        {"name":"h","type":{"type":"record","name":"In","fields":[
            {"name":"x","type":"long","default":1},{"name":"y","type":"string"}]},
         "default":{"y":"why"}},
        {"name":"i","type":{"type":"enum","name":"E","symbols":["P","Q"]},"default":"Q"},
        {"name":"j","type":{"type":"long","logicalType":"timestamp-millis"},"default":0},
        {"name":"k","type":{"type":"bytes","logicalType":"decimal","precision":4,"scale":2},"default":"\u0004\u00ce"},
        {"name":"l","type":"double","default":1.5},
        {"name":"m","type":{"type":"map","values":"boolean"},"default":{}}
    ]}"#;
    let s = schema(text);
    let bytes = enc(&s, &json!({"ignored": [1, 2, 3]}));
    apache_agrees(text, &bytes);
    assert_eq!(
        s.decode(&bytes).unwrap(),
        json!({"a": 7, "b": "x", "c": null, "d": 5, "e": null, "f": [1, 2], "g": "\u{fffd}\u{0}",
               "h": {"x": 1, "y": "why"}, "i": "Q", "j": "1970-01-01T00:00:00.000Z",
               "k": "12.30", "l": 1.5, "m": {}})
    );
    // Given values win over defaults; explicit null is not replaced by a default.
    let given = json!({"a": 1, "c": 3, "e": "s", "d": null});
    let back = s.decode(&enc(&s, &given)).unwrap();
    assert_eq!(
        (&back["a"], &back["c"], &back["e"], &back["d"]),
        (&json!(1), &json!(3), &json!("s"), &json!(null))
    );
    assert_eq!(
        mismatch(&s, &json!({"a": null})).to_string(),
        "at /a: expected int (a JSON integer within 32 bits), found null"
    );
}

#[test]
fn missing_field_without_default_is_a_mismatch() {
    let s = field(r#""long""#);
    assert_eq!(
        mismatch(&s, &json!({})).to_string(),
        "at /v: expected long (a JSON integer within 64 bits), found missing"
    );
}

#[test]
fn bad_defaults_and_bad_schemas_are_refused_with_a_reason() {
    let e = Schema::parse(
        r#"{"type":"record","name":"X","fields":[{"name":"a","type":"int","default":"no"}]}"#,
    )
    .unwrap_err();
    assert!(e.starts_with("invalid Avro schema:"), "{e}");
    let e = Schema::parse(r#"{"type":"record","name":"X","fields":[{"name":"a","type":"Nope"}]}"#)
        .unwrap_err();
    assert!(e.contains("Nope"), "{e}");
    assert!(Schema::parse("{")
        .unwrap_err()
        .starts_with("invalid Avro schema:"));
    assert!(Schema::parse(r#"{"type":"enum","name":"E","symbols":["A","A"]}"#).is_err());
}

/// Found by fuzzing (fuzz/, avro_encode): a decimal default is bytes (a string of code points
/// 0-255, the unscaled value), and one beyond the precision was taken, so every record missing
/// the field carried a decimal the type cannot hold (kgate's own decoder then gave JSON that
/// does not encode again). Refused at parse time, as such a value from JSON is.
#[test]
fn decimal_defaults_beyond_the_precision_are_refused() {
    // The fuzzer's input: 31 bytes of unscaled value, 74 digits, for decimal(8,1).
    let e = Schema::parse(
        r#"{"fields":[{"default":"14843864373515780095.4294967295","name":"f0","type":{"logicalType":"decimal","precision":8,"scale":1,"type":"bytes"}}],"name":"N1","type":"record"}"#,
    )
    .unwrap_err();
    assert!(e.contains("74 digits, more than the precision 8"), "{e}");
    // On a fixed too: 0x7F 0xFF is 32767, five digits for decimal(4,0).
    let e = Schema::parse(
        r#"{"type":"record","name":"R","fields":[{"name":"d","default":"\u007f\u00ff","type":{"type":"fixed","name":"F","size":2,"logicalType":"decimal","precision":4,"scale":0}}]}"#,
    )
    .unwrap_err();
    assert!(e.contains("5 digits, more than the precision 4"), "{e}");
    // Within the precision, the default is written as given: 0x30 0x39 is 12345 → 123.45.
    let s = schema(
        r#"{"type":"record","name":"R","fields":[{"name":"d","default":"09","type":{"type":"bytes","logicalType":"decimal","precision":5,"scale":2}}]}"#,
    );
    let bytes = enc(&s, &json!({}));
    assert_eq!(bytes, [4, 0x30, 0x39]);
    assert_eq!(s.decode(&bytes).unwrap(), json!({"d": "123.45"}));
}

#[test]
fn named_types_namespaces_and_recursion() {
    let text = r#"{"type":"record","name":"Node","namespace":"io.x","fields":[
        {"name":"value","type":"long"},
        {"name":"kind","type":{"type":"enum","name":"Kind","namespace":"io.y","symbols":["A","B"]}},
        {"name":"other","type":"io.y.Kind"},
        {"name":"id","type":{"type":"fixed","name":"Id","size":2}},
        {"name":"id2","type":"Id"},
        {"name":"children","type":{"type":"array","items":"Node"}},
        {"name":"next","type":["null","Node"],"default":null}
    ]}"#;
    let s = schema(text);
    assert_eq!(s.full_name(), Some("io.x.Node"));
    let v = json!({"value": 1, "kind": "A", "other": "B", "id": "ab", "id2": "cd",
        "children": [{"value": 2, "kind": "B", "other": "A", "id": "ef", "id2": "gh", "children": []}],
        "next": {"value": 3, "kind": "A", "other": "A", "id": "ij", "id2": "kl", "children": []}});
    let bytes = enc(&s, &v);
    apache_agrees(text, &bytes);
    let back = s.decode(&bytes).unwrap();
    assert_eq!(back["children"][0]["next"], Value::Null);
    assert_eq!(back["next"]["value"], json!(3));
    assert_eq!(back["other"], json!("B"));
    let e = mismatch(
        &s,
        &json!({"value": 1, "kind": "A", "other": "B", "id": "ab", "id2": "cd",
        "children": [], "next": {"value": "3"}}),
    );
    assert_eq!(e.path, "/next/value", "{e}");
}

// ---------------------------------------------------------------------------------------------
// Unions

#[test]
fn nullable_unions_in_either_order() {
    use apache_avro::types::Value as A;
    for ty in [r#"["null","string"]"#, r#"["string","null"]"#] {
        let string_at = if ty.starts_with(r#"["null""#) { 1 } else { 0 };
        assert_eq!(
            one(ty, json!("x")),
            A::Union(string_at, Box::new(A::String("x".into())))
        );
        assert_eq!(
            one(ty, json!(null)),
            A::Union(1 - string_at, Box::new(A::Null))
        );
        // The Avro-JSON wrapped form is accepted too.
        assert_eq!(
            one(ty, json!({"string": "w"})),
            A::Union(string_at, Box::new(A::String("w".into())))
        );
        assert_eq!(round(ty, json!("x")), json!("x"));
        assert_eq!(round(ty, json!(null)), json!(null));
        // Missing and no default: null.
        let s = field(ty);
        assert_eq!(s.decode(&enc(&s, &json!({}))).unwrap(), json!({"v": null}));
        assert_eq!(
            mismatch(&s, &json!({"v": true})).to_string(),
            format!(
                "at /v: expected union {}, found the boolean true",
                ty.replace('"', "").replace(',', ", ")
            )
        );
    }
}

#[test]
fn wider_unions_take_the_first_branch_that_fits() {
    use apache_avro::types::Value as A;
    let u = |i, v| A::Union(i, Box::new(v));
    let t = r#"["null","int","string"]"#;
    assert_eq!(one(t, json!(5)), u(1, A::Int(5)));
    assert_eq!(one(t, json!("5")), u(2, A::String("5".into())));
    assert_eq!(one(t, json!(null)), u(0, A::Null));
    // An int out of range fits no branch: the only numeric branch says why.
    assert_eq!(
        mismatch(&field(t), &json!({"v": 1i64 << 40})).to_string(),
        "at /v: expected int (a JSON integer within 32 bits), found the number 1099511627776 (out of range)"
    );

    let t = r#"["string","long","double"]"#;
    assert_eq!(one(t, json!("a")), u(0, A::String("a".into())));
    assert_eq!(one(t, json!(1i64 << 40)), u(1, A::Long(1 << 40)));
    assert_eq!(one(t, json!(2.5)), u(2, A::Double(2.5)));
    assert_eq!(one(t, json!(2.0)), u(1, A::Long(2)));
    assert_eq!(
        mismatch(&field(t), &json!({"v": [1]})).to_string(),
        "at /v: expected union [string, long, double], found an array of 1 item"
    );

    let t = r#"["int","long","float","double"]"#;
    assert_eq!(one(t, json!(5)), u(0, A::Int(5)));
    assert_eq!(
        one(t, json!(5_000_000_000i64)),
        u(1, A::Long(5_000_000_000))
    );
    assert_eq!(one(t, json!(0.5)), u(2, A::Float(0.5)));
    assert_eq!(one(t, json!(1e300)), u(3, A::Double(1e300)));

    // An enum before string takes its symbols; other strings go on to string.
    let t = r#"[{"type":"enum","name":"E","symbols":["A"]},"string"]"#;
    assert_eq!(one(t, json!("A")), u(0, A::Enum(0, "A".into())));
    assert_eq!(one(t, json!("B")), u(1, A::String("B".into())));

    // A logical type before string takes what parses.
    let t = r#"["null",{"type":"long","logicalType":"timestamp-millis"},"string"]"#;
    assert_eq!(
        one(t, json!("1970-01-01T00:00:01Z")),
        u(1, A::TimestampMillis(1000))
    );
    assert_eq!(one(t, json!("soon")), u(2, A::String("soon".into())));
    assert_eq!(round(t, json!("soon")), json!("soon"));
    assert_eq!(one(t, json!({"long": 5})), u(1, A::TimestampMillis(5)));
}

#[test]
fn record_branches() {
    use apache_avro::types::Value as A;
    let t = r#"["null",
        {"type":"record","name":"Cat","fields":[{"name":"meow","type":"boolean"}]},
        {"type":"record","name":"Dog","fields":[{"name":"bark","type":"int"}]}]"#;
    let A::Union(1, _) = one(t, json!({"meow": true})) else {
        panic!()
    };
    let A::Union(2, _) = one(t, json!({"bark": 3})) else {
        panic!()
    };
    // The wrapped form, by full or short name.
    let A::Union(2, _) = one(t, json!({"t.Dog": {"bark": 4}})) else {
        panic!()
    };
    let A::Union(2, _) = one(t, json!({"Dog": {"bark": 4}})) else {
        panic!()
    };
    assert_eq!(round(t, json!({"bark": 3})), json!({"bark": 3}));
    // Two record branches could take an object: the mismatch names the union.
    assert_eq!(
        mismatch(&field(t), &json!({"v": {"purr": 1}})).to_string(),
        "at /v: expected union [null, t.Cat, t.Dog], found an object with keys purr"
    );
    // One record branch: its own error, with the inner path.
    let t =
        r#"["null",{"type":"record","name":"Cat","fields":[{"name":"meow","type":"boolean"}]}]"#;
    assert_eq!(
        mismatch(&field(t), &json!({"v": {"meow": 1}})).to_string(),
        "at /v/meow: expected boolean, found the number 1"
    );
}

// ---------------------------------------------------------------------------------------------
// Logical types

#[test]
fn timestamps_dates_and_times() {
    use apache_avro::types::Value as A;
    let ms = r#"{"type":"long","logicalType":"timestamp-millis"}"#;
    let us = r#"{"type":"long","logicalType":"timestamp-micros"}"#;
    let ns = r#"{"type":"long","logicalType":"timestamp-nanos"}"#;
    let lms = r#"{"type":"long","logicalType":"local-timestamp-millis"}"#;
    let at = 1_748_781_296_789i64;
    assert_eq!(
        one(ms, json!("2025-06-01T12:34:56.789Z")),
        A::TimestampMillis(at)
    );
    assert_eq!(
        one(ms, json!("2025-06-01T14:34:56.789+02:00")),
        A::TimestampMillis(at)
    );
    assert_eq!(
        one(ms, json!("2025-06-01 12:34:56.789123z")),
        A::TimestampMillis(at)
    );
    assert_eq!(
        one(ms, json!("2025-06-01T12:34:56.789")),
        A::TimestampMillis(at)
    );
    assert_eq!(one(ms, json!(at)), A::TimestampMillis(at));
    assert_eq!(
        one(us, json!("2025-06-01T12:34:56.789123Z")),
        A::TimestampMicros(at * 1000 + 123)
    );
    assert_eq!(
        one(ns, json!("2025-06-01T12:34:56.789123456Z")),
        A::TimestampNanos(at * 1_000_000 + 123_456)
    );
    assert_eq!(
        one(lms, json!("2025-06-01T12:34:56.789")),
        A::LocalTimestampMillis(at)
    );
    assert_eq!(
        round(ms, json!("2025-06-01T14:34:56.789+02:00")),
        json!("2025-06-01T12:34:56.789Z")
    );
    assert_eq!(
        round(us, json!(at * 1000)),
        json!("2025-06-01T12:34:56.789000Z")
    );
    assert_eq!(round(lms, json!(at)), json!("2025-06-01T12:34:56.789"));
    assert_eq!(
        round(ms, json!(i64::MAX)),
        json!(i64::MAX),
        "beyond year 9999: the integer"
    );

    let date = r#"{"type":"int","logicalType":"date"}"#;
    assert_eq!(one(date, json!("2024-02-29")), A::Date(19_782));
    assert_eq!(one(date, json!(-1)), A::Date(-1));
    assert_eq!(round(date, json!("1969-12-31")), json!("1969-12-31"));
    let tm = r#"{"type":"int","logicalType":"time-millis"}"#;
    let tu = r#"{"type":"long","logicalType":"time-micros"}"#;
    assert_eq!(one(tm, json!("12:34:56.5")), A::TimeMillis(45_296_500));
    assert_eq!(one(tu, json!("00:00:01.000001")), A::TimeMicros(1_000_001));
    assert_eq!(round(tm, json!(1)), json!("00:00:00.001"));

    let m = |ty: &str, v: Value| mismatch(&field(ty), &json!({ "v": v })).to_string();
    assert_eq!(
        m(ms, json!("yesterday")),
        r#"at /v: expected timestamp-millis (an RFC 3339 string or integer milliseconds), found the string "yesterday" (not an RFC 3339 date-time)"#
    );
    assert_eq!(
        m(ms, json!(1.5)),
        "at /v: expected timestamp-millis (an RFC 3339 string or integer milliseconds), found the number 1.5"
    );
    assert!(m(lms, json!("2025-06-01T12:34:56+02:00")).contains("takes no UTC offset"));
    assert!(m(ns, json!("9999-01-01T00:00:00Z")).contains("out of range"));
    assert!(m(date, json!("2023-02-29")).contains("not a YYYY-MM-DD date"));
    assert!(m(tm, json!("24:00:00")).contains("not an HH:MM:SS time"));
    assert!(m(tm, json!(86_400_000)).contains("not within one day"));
}

#[test]
fn uuids() {
    use apache_avro::types::Value as A;
    let id = "123e4567-e89b-12d3-a456-426614174000";
    let ty = r#"{"type":"string","logicalType":"uuid"}"#;
    assert_eq!(one(ty, json!(id)), A::Uuid(id.parse().unwrap()));
    assert_eq!(round(ty, json!(id)), json!(id));
    let fx = r#"{"type":"fixed","name":"U","size":16,"logicalType":"uuid"}"#;
    let bytes = enc(&field(fx), &json!({"v": id.to_uppercase()}));
    assert_eq!(bytes[..3], [0x12, 0x3e, 0x45]);
    assert_eq!(field(fx).decode(&bytes).unwrap(), json!({"v": id}));
    assert_eq!(
        mismatch(&field(ty), &json!({"v": "123"})).to_string(),
        r#"at /v: expected uuid (a string like 123e4567-e89b-12d3-a456-426614174000), found the string "123""#
    );
}

#[test]
fn decimals_are_exact_and_match_apache_avro() {
    use apache_avro::types::Value as A;
    let dec = |p: usize, s: usize| {
        format!(r#"{{"type":"bytes","logicalType":"decimal","precision":{p},"scale":{s}}}"#)
    };
    let unscaled = |v: A| match v {
        A::Decimal(d) => {
            num_bigint::BigInt::from_signed_bytes_be(&<Vec<u8>>::try_from(d).unwrap()).to_string()
        }
        other => panic!("{other:?}"),
    };
    let d = dec(10, 2);
    assert_eq!(unscaled(one(&d, json!("0.01"))), "1");
    assert_eq!(unscaled(one(&d, json!("-12.30"))), "-1230");
    assert_eq!(unscaled(one(&d, json!("12.3"))), "1230");
    assert_eq!(unscaled(one(&d, json!(12.3))), "1230");
    assert_eq!(unscaled(one(&d, json!(-7))), "-700");
    assert_eq!(unscaled(one(&d, json!("0"))), "0");
    assert_eq!(unscaled(one(&d, json!("1.5e2"))), "15000");
    assert_eq!(unscaled(one(&d, json!("1.2300"))), "123");
    assert_eq!(round(&d, json!("0.01")), json!("0.01"));
    assert_eq!(round(&d, json!("-12.30")), json!("-12.30"));
    assert_eq!(round(&d, json!(-0.5)), json!("-0.50"));
    // 128 and -129 need a sign byte: two's complement, not magnitude.
    assert_eq!(enc(&field(&d), &json!({"v": "1.28"})), [4, 0x00, 0x80]);
    assert_eq!(enc(&field(&d), &json!({"v": "-1.29"})), [4, 0xFF, 0x7F]);

    let big = dec(40, 1);
    let v = "123456789012345678901234.5";
    assert_eq!(unscaled(one(&big, json!(v))), "1234567890123456789012345");
    assert_eq!(round(&big, json!(v)), json!(v));
    let huge = dec(60, 3);
    let v = "-123456789012345678901234567890123456789012345678.901";
    assert_eq!(unscaled(one(&huge, json!(v))), v.replace('.', ""));
    assert_eq!(round(&huge, json!(v)), json!(v));

    // On fixed: sign-extended to the size.
    let fx =
        r#"{"type":"fixed","name":"D","size":4,"logicalType":"decimal","precision":9,"scale":2}"#;
    assert_eq!(
        enc(&field(fx), &json!({"v": "-0.01"})),
        [0xFF, 0xFF, 0xFF, 0xFF]
    );
    assert_eq!(enc(&field(fx), &json!({"v": "12.30"})), [0, 0, 0x04, 0xCE]);
    assert_eq!(unscaled(one(fx, json!("-12.30"))), "-1230");
    assert_eq!(round(fx, json!("1234567.89")), json!("1234567.89"));

    let m = |ty: &str, v: Value| mismatch(&field(ty), &json!({ "v": v })).to_string();
    assert_eq!(
        m(&d, json!("1.234")),
        r#"at /v: expected decimal(10,2) (a JSON number or decimal string), found the string "1.234" (3 fraction digits, scale is 2)"#
    );
    assert_eq!(
        m(&d, json!(0.001)),
        "at /v: expected decimal(10,2) (a JSON number or decimal string), found the number 0.001 (3 fraction digits, scale is 2)"
    );
    assert!(m(&d, json!("123456789.00")).contains("(11 digits, precision is 10)"));
    assert!(m(&d, json!("12,30")).contains("(not a decimal number)"));
    assert!(m(&d, json!(true)).contains("found the boolean true"));
    let small =
        r#"{"type":"fixed","name":"S","size":1,"logicalType":"decimal","precision":3,"scale":0}"#;
    assert!(m(small, json!(200)).contains("(needs 2 bytes, the fixed has 1)"));
}

#[test]
fn durations() {
    let ty = r#"{"type":"fixed","name":"Dur","size":12,"logicalType":"duration"}"#;
    let v = json!({"months": 1, "days": 2, "millis": 3});
    let bytes = enc(&field(ty), &json!({ "v": v }));
    assert_eq!(bytes, [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]);
    assert_eq!(round(ty, v.clone()), v);
}

// ---------------------------------------------------------------------------------------------
// Decode errors and framing

#[test]
fn decode_refuses_truncated_input_and_trailing_garbage() {
    let s = schema(TRADE_EVENT);
    let bytes = enc(&s, &trade(3));
    for cut in [0, 1, 10, bytes.len() / 2, bytes.len() - 1] {
        let e = s.decode(&bytes[..cut]).unwrap_err();
        assert!(e.contains("truncated input"), "cut at {cut}: {e}");
    }
    let mut more = bytes.clone();
    more.push(0);
    assert_eq!(
        s.decode(&more).unwrap_err(),
        format!(
            "trailing garbage: 1 bytes after the value (which ends at byte {})",
            bytes.len()
        )
    );
    let u = field(r#"["null","string"]"#);
    assert!(u
        .decode(&[4])
        .unwrap_err()
        .contains("union branch 2 at byte 0 is out of range"));
    let e = field(r#"{"type":"enum","name":"E","symbols":["A"]}"#);
    assert!(e
        .decode(&[2])
        .unwrap_err()
        .contains("enum symbol 1 at byte 0 is out of range (1 in all)"));
    let st = field(r#""string""#);
    assert!(st
        .decode(&[4, 0xFF, 0xFE])
        .unwrap_err()
        .contains("invalid UTF-8"));
    assert!(st.decode(&[3]).unwrap_err().contains("negative"));
    let l = field(r#""long""#);
    assert!(l
        .decode(&[0xFF; 11])
        .unwrap_err()
        .contains("invalid varint"));
    let a = field(r#"{"type":"array","items":"null"}"#);
    assert!(a
        .decode(&[0xFE, 0xFF, 0xFF, 0xFF, 0x0F])
        .unwrap_err()
        .contains("larger than the input"));
    let b = field(r#""boolean""#);
    assert!(b.decode(&[2]).unwrap_err().contains("invalid boolean"));
}

#[test]
fn decode_bounds_values_that_take_no_bytes() {
    // The fuzzer's find: items that take no bytes but weigh several values each (a record of
    // three nulls is four), so a block count the byte bound lets through still adds up.
    let s = field(
        r#"{"type":"array","items":{"type":"record","name":"E","fields":[
            {"name":"a","type":"null"},{"name":"b","type":"null"},{"name":"c","type":"null"}]}}"#,
    );
    let body = [0xA0, 0x8D, 0x06, 0]; // one block of 50,000, then the end
    let e = s.decode(&body).unwrap_err();
    assert!(
        e.contains("more than 100016 values that take no bytes") && e.contains("4-byte body"),
        "{e}"
    );
    // One block bigger than what is left of the budget is refused before any work.
    let nulls = field(r#"{"type":"array","items":"null"}"#);
    let e = nulls.decode(&[0x80, 0x89, 0x7A, 0]).unwrap_err();
    assert!(e.contains("larger than the input"), "{e}");
    // Up to the budget decodes: 25,000 such records (100,000 zero-byte values, and the outer
    // record's one, within 100,016).
    let ok = [0xD0, 0x86, 0x03, 0]; // count 25,000
    let v = s.decode(&ok).unwrap();
    assert_eq!(v["v"].as_array().unwrap().len(), 25_000);
    // Values that take bytes are bounded by the input alone, not by this budget.
    let ints = field(r#"{"type":"array","items":"int"}"#);
    let mut big = vec![0x80, 0xB5, 0x18]; // count 200,000
    big.extend(std::iter::repeat_n(2, 200_000));
    big.push(0);
    assert_eq!(
        ints.decode(&big).unwrap()["v"].as_array().unwrap().len(),
        200_000
    );
}

#[test]
fn decode_reads_negative_block_counts() {
    // Arrays written in blocks with byte sizes (count -2, size 2) must read too.
    let s = field(r#"{"type":"array","items":"int"}"#);
    assert_eq!(s.decode(&[3, 4, 2, 4, 0]).unwrap(), json!({"v": [1, 2]}));
}

#[test]
fn framing() {
    let mut out = vec![];
    frame(0x0102_0304, &mut out);
    out.extend_from_slice(b"body");
    assert_eq!(out[..5], [0, 1, 2, 3, 4]);
    assert_eq!(unframe(&out).unwrap(), (0x0102_0304, &b"body"[..]));
    assert_eq!(unframe(&[0, 0, 0, 0, 9]).unwrap(), (9, &[][..]));
    assert!(unframe(&[1, 0, 0, 0, 9])
        .unwrap_err()
        .contains("magic byte"));
    assert!(unframe(&[0, 0])
        .unwrap_err()
        .contains("shorter than the 5-byte header"));
}

#[test]
fn schema_is_send_sync_and_top_level_types_work() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Schema>();
    let s = schema(r#""long""#);
    assert_eq!(s.full_name(), None);
    assert_eq!(enc(&s, &json!(-1)), [1]);
    assert_eq!(s.decode(&[1]).unwrap(), json!(-1));
    assert_eq!(
        mismatch(&s, &json!("x")).to_string(),
        r#"at the top level: expected long (a JSON integer within 64 bits), found the string "x""#
    );
}

#[test]
fn fields_match_keys_whatever_the_order_extras_and_gaps() {
    let s = schema(
        r#"{"type":"record","name":"O","fields":[
        {"name":"c","type":"int","default":3},{"name":"a","type":"int"},
        {"name":"e","type":"int","default":5},{"name":"aa","type":"int","default":9}]}"#,
    );
    let v = json!({"b": 0, "d": 0, "a": 1, "f": 0, "e": 2, "": 0, "zz": 0});
    assert_eq!(
        s.decode(&enc(&s, &v)).unwrap(),
        json!({"c": 3, "a": 1, "e": 2, "aa": 9})
    );
    assert_eq!(mismatch(&s, &json!({"b": 1})).path, "/a");
    // Records wider than the merge pass's slots look fields up one by one.
    let fields: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"name":"f{i}","type":"int","default":{i}}}"#))
        .collect();
    let wide = schema(&format!(
        r#"{{"type":"record","name":"W","fields":[{}]}}"#,
        fields.join(",")
    ));
    let back = wide
        .decode(&enc(&wide, &json!({"f39": -1, "x": 0})))
        .unwrap();
    assert_eq!(
        (&back["f0"], &back["f38"], &back["f39"]),
        (&json!(0), &json!(38), &json!(-1))
    );
}

/// A schema may not make one value cost minutes (a decimal of a hundred million digits) or a
/// small record gigabytes (defaults filling it).
#[test]
fn hostile_schemas_are_bounded() {
    let e = Schema::parse(
        r#"{"type":"bytes","logicalType":"decimal","precision":100000000,"scale":0}"#,
    )
    .unwrap_err();
    assert!(e.contains("limit of 1000 digits"), "{e}");
    let s = Schema::parse(r#"{"type":"bytes","logicalType":"decimal","precision":1000,"scale":0}"#)
        .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    assert!(s
        .encode(&serde_json::json!("1e10000000"), &mut out)
        .is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(1));

    let big = "x".repeat(64 * 1024);
    let fields: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"name":"f{i}","type":"string","default":"{big}"}}"#))
        .collect();
    let s = Schema::parse(&format!(
        r#"{{"type":"record","name":"R","fields":[{}]}}"#,
        fields.join(",")
    ))
    .unwrap();
    let mut out = Vec::new();
    let e = s.encode(&serde_json::json!({}), &mut out).unwrap_err();
    assert!(e.found.contains("larger than"), "{e}");
    assert!(out.is_empty());
}

/// Found by fuzzing (fuzz/, avro_encode): a default that takes itself in through a recursive
/// type overflowed the stack in `Schema::parse` (a crash of the whole process, from a schema a
/// REST Proxy client may send). Here `{"float": …}` is first tried as an `N1`, which lacks `f0`,
/// whose default is `{"float": …}` again. Refused, naming the field.
#[test]
fn a_default_that_takes_itself_in_is_refused() {
    let text = r#"{"fields":[{"default":{"float":6.8566e-320},"name":"f0","type":["N1","float",{"fields":[],"name":"N2","type":"record"}]}],"name":"N1","type":"record"}"#;
    // On a thread with the stack of a tokio worker (2 MiB): the refusal must not need more.
    let e = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || Schema::parse(text).map(|_| ()))
        .unwrap()
        .join()
        .expect("no stack overflow")
        .unwrap_err();
    assert!(
        e.contains("the default of field f0 in record N1: the default takes itself in through a recursive type"),
        "{e}"
    );
    // A recursive type whose default ends is fine.
    let s = schema(
        r#"{"type":"record","name":"L","fields":[{"name":"next","type":["null","L"],"default":null}]}"#,
    );
    assert_eq!(
        s.decode(&enc(&s, &json!({}))).unwrap(),
        json!({"next": null})
    );
}

/// Runs `f` on a thread with a tokio worker's stack (2 MiB): what kgate does with a schema it
/// is handed must fit in it.
fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .expect("no stack overflow")
}

#[test]
fn a_default_apache_avro_resolves_without_end_is_refused() {
    // apache-avro 0.22 checks field `b`'s default `{}` as an N2, whose missing field `c` takes
    // its default `{}` as an N2 again, and so on: the process aborted (a stack overflow in
    // `apache_avro::Schema::parse_str`, found by fuzzing avro_encode). kgate keeps defaults out
    // of that check and refuses the schema itself.
    let text = include_str!("../../fuzz/regressions/avro_encode/default-resolved-without-end.avsc");
    let e = on_worker_stack(move || Schema::parse(text).map(|_| ())).unwrap_err();
    assert!(
        e.contains("the default of field c in record N2: the default takes itself in through a recursive type"),
        "{e}"
    );
    // The registry's compatibility check parses it without aborting too.
    let old = crate::registry::client::RegisteredSchema {
        subject: "s".into(),
        version: 1,
        id: 1,
        schema_type: "AVRO".into(),
        schema: text.into(),
    };
    let reasons = on_worker_stack(move || {
        crate::registry::client::incompatibility_reasons("BACKWARD", text, &[old])
    });
    assert_eq!(reasons, Vec::<String>::new());
}

/// `levels` levels: unions and arrays in turn, an int innermost (a level of its own).
fn nested(levels: usize) -> String {
    let mut s = String::from(r#""int""#);
    for i in 0..levels - 1 {
        s = if i % 2 == 0 {
            format!(r#"{{"type":"array","items":{s}}}"#)
        } else {
            format!(r#"["null",{s}]"#)
        };
    }
    s
}

#[test]
fn schemas_nested_deeper_than_the_limit_are_refused() {
    let too_deep = nested(MAX_SCHEMA_DEPTH + 6);
    let e = on_worker_stack(move || Schema::parse(&too_deep).map(|_| ())).unwrap_err();
    assert_eq!(
        e,
        format!(
            "invalid Avro schema: the schema nests {} levels deep (records, arrays, maps and \
             unions inside each other); kgate takes at most {MAX_SCHEMA_DEPTH}",
            MAX_SCHEMA_DEPTH + 6
        )
    );
    // At the limit it parses, encodes and decodes on a worker's stack.
    let deepest = nested(MAX_SCHEMA_DEPTH);
    let back = on_worker_stack(move || {
        let s = Schema::parse(&deepest).unwrap();
        let mut v = json!(7);
        for i in 0..MAX_SCHEMA_DEPTH - 1 {
            if i % 2 == 0 {
                v = json!([v]);
            }
        }
        let mut out = Vec::new();
        s.encode(&v, &mut out).unwrap();
        (s.decode(&out).unwrap(), v)
    });
    assert_eq!(back.0, back.1);
}

#[test]
fn defaults_survive_the_deferred_check() {
    // Defaults are kept out of apache-avro's parse and put back: records in unions, arrays and
    // maps keep theirs, a field attribute named like kgate's mark is not taken for a default,
    // and a wrong default is still refused (by kgate's own check).
    let s = schema(
        r#"{"type":"record","name":"T","fields":[
            {"name":"u","type":["null",{"type":"record","name":"A","fields":[
                {"name":"x","type":"int","default":5}]}]},
            {"name":"l","type":{"type":"array","items":{"type":"record","name":"B","fields":[
                {"name":"y","type":"string","default":"hi"}]}}},
            {"name":"m","type":{"type":"map","values":{"type":"record","name":"C","fields":[
                {"name":"z","type":"long","default":9,"\u0000kgate-deferred-default":1},
                {"name":"w","type":["null","long"],"\u0000kgate-deferred-default":1}]}}}]}"#,
    );
    let v = json!({"u": {}, "l": [{}], "m": {"k": {}}});
    assert_eq!(
        s.decode(&enc(&s, &v)).unwrap(),
        json!({"u": {"x": 5}, "l": [{"y": "hi"}], "m": {"k": {"z": 9, "w": null}}})
    );
    let e = Schema::parse(
        r#"{"type":"record","name":"T","fields":[{"name":"a","type":"int","default":"x"}]}"#,
    )
    .unwrap_err();
    assert!(e.contains("the default of field a in record T"), "{e}");
}
