//! The JSON of a frame header, parsed strictly (PROTOCOL.md, "Frames": duplicate keys and
//! numbers out of range).
//!
//! serde_json's own `Value` takes a duplicate key last-wins, which a proxy or logger that reads
//! first-wins would see differently; [`parse`] builds the map with a visitor that refuses a key
//! it has already seen, at every level, in the same single pass.
//!
//! serde_json stops the whole parse at a number it cannot represent (`1e999`, a 5,000-digit
//! integer), so one bad field would hide every good one, `size` included, and with it the
//! frame's end. Only when that first pass fails does a second pass take the header field by
//! field as raw text (serde_json checks the syntax of a raw value without converting its
//! numbers) and parse each value on its own: the header is then known to be a well-formed
//! object, the fields that parse are kept, and the others are reported as [`BadField`]s, so the
//! caller can answer `bad_request` and keep the connection.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value, map::Entry};

/// Characters of a key shown in a message at most (a key can be 64 KiB long).
const SHOWN_KEY: usize = 64;

/// A header field that is present but unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadField {
    /// The top-level key.
    pub key: String,
    /// What is wrong with it.
    pub reason: BadReason,
}

/// Why a field is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadReason {
    /// The key appears more than once in the header.
    Duplicate,
    /// Its value does not parse on its own: a number out of range, or a duplicate key inside.
    Value(String),
}

impl fmt::Display for BadField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = shown(&self.key);
        match &self.reason {
            BadReason::Duplicate => write!(f, "duplicate key `{key}`"),
            BadReason::Value(why) => write!(f, "`{key}` is unusable: {why}"),
        }
    }
}

/// At most [`SHOWN_KEY`] characters of `key`, escaped.
fn shown(key: &str) -> String {
    let mut s: String = key
        .chars()
        .take(SHOWN_KEY)
        .flat_map(char::escape_default)
        .collect();
    if key.chars().nth(SHOWN_KEY).is_some() {
        s.push('…');
    }
    s
}

/// A header's JSON, parsed.
#[derive(Debug)]
pub enum Parsed {
    /// An object: its usable fields, and the unusable ones in the order they came.
    Object {
        fields: Map<String, Value>,
        bad: Vec<BadField>,
    },
    /// Some other JSON value: its type's name.
    Other(&'static str),
}

/// Parses a header's text; `Err` when it is not JSON at all (bad syntax, trailing bytes).
pub fn parse(raw: &str) -> Result<Parsed, serde_json::Error> {
    match strict_value(raw) {
        Ok(Value::Object(fields)) => Ok(Parsed::Object {
            fields,
            bad: Vec::new(),
        }),
        Ok(other) => Ok(Parsed::Other(kind(&other))),
        Err(first) => match field_by_field(raw) {
            Ok(Parsed::Object { bad, .. }) if bad.is_empty() => Err(first),
            answer => answer,
        },
    }
}

/// The JSON type of a value.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// One whole JSON text as a [`Value`], refusing duplicate keys at any depth.
fn strict_value(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = StrictValue.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// The second pass: each top-level value taken raw, then parsed on its own.
fn field_by_field(raw: &str) -> Result<Parsed, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(raw);
    let parsed = de::Deserializer::deserialize_any(&mut de, FieldByField)?;
    de.end()?;
    Ok(parsed)
}

/// Builds a [`Value`] like serde_json's own, but a map with a key seen twice is an error.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // serde_json never yields a non-finite number; refuse one rather than invent a value.
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictValue)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match fields.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(map.next_value_seed(StrictValue)?);
                }
                Entry::Occupied(slot) => {
                    let key = shown(slot.key());
                    return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
                }
            }
        }
        Ok(Value::Object(fields))
    }
}

/// The second pass's visitor: an object's values as raw text, each parsed on its own.
struct FieldByField;

impl<'de> Visitor<'de> for FieldByField {
    type Value = Parsed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        let mut fields = Map::new();
        let mut bad: Vec<BadField> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let raw: &'de RawValue = map.next_value()?;
            // A key seen before is unusable however many times it comes: neither value wins.
            if fields.remove(&key).is_some() || bad.iter().any(|b| b.key == key) {
                bad.retain(|b| b.key != key);
                bad.push(BadField {
                    key,
                    reason: BadReason::Duplicate,
                });
                continue;
            }
            match strict_value(raw.get()) {
                Ok(value) => {
                    fields.insert(key, value);
                }
                Err(e) => {
                    // The position is within the value, not the header: leave it out.
                    let why = e.to_string();
                    let why = why.split(" at line ").next().unwrap_or_default().to_owned();
                    bad.push(BadField {
                        key,
                        reason: BadReason::Value(why),
                    });
                }
            }
        }
        Ok(Parsed::Object { fields, bad })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Parsed::Other("array"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Parsed, E> {
        Ok(Parsed::Other("boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Parsed, E> {
        Ok(Parsed::Other("number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Parsed, E> {
        Ok(Parsed::Other("number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Parsed, E> {
        Ok(Parsed::Other("number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Parsed, E> {
        Ok(Parsed::Other("string"))
    }

    fn visit_unit<E>(self) -> Result<Parsed, E> {
        Ok(Parsed::Other("null"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(raw: &str) -> (Value, Vec<String>) {
        match parse(raw) {
            Ok(Parsed::Object { fields, bad }) => (
                Value::Object(fields),
                bad.iter().map(ToString::to_string).collect(),
            ),
            other => panic!("{raw}: {other:?}"),
        }
    }

    #[test]
    fn a_clean_header_is_parsed_in_one_pass_like_serde_json() {
        let raw = r#"{"cmd":"put","id":[1,{"a":null}],"size":5,"f":-1.5,"b":true}"#;
        let (v, bad) = object(raw);
        assert!(bad.is_empty());
        assert_eq!(v, serde_json::from_str::<Value>(raw).unwrap());
    }

    #[test]
    fn duplicate_keys_are_unusable_at_every_level() {
        let (v, bad) = object(r#"{"cmd":"ping","cmd":"put","id":1}"#);
        assert_eq!(v, json!({"id": 1}), "neither value wins");
        assert_eq!(bad, ["duplicate key `cmd`"]);
        let (v, bad) = object(r#"{"a":1,"a":2,"a":3,"b":{"x":[{"y":1,"y":1}]}}"#);
        assert_eq!(v, json!({}));
        assert_eq!(
            bad,
            ["duplicate key `a`", "`b` is unusable: duplicate key `y`"]
        );
    }

    #[test]
    fn numbers_out_of_range_spoil_their_field_only() {
        let huge = "9".repeat(5000);
        let (v, bad) = object(&format!(r#"{{"id":{huge},"size":3,"cmd":"echo"}}"#));
        assert_eq!(v, json!({"size": 3, "cmd": "echo"}));
        assert_eq!(bad, ["`id` is unusable: number out of range"]);
        let (v, bad) = object(r#"{"a":[1e999],"b":-1e400,"c":1e308}"#);
        assert_eq!(v, json!({"c": 1e308}));
        assert_eq!(bad.len(), 2, "{bad:?}");
        // A u64 overflow that f64 holds is a number, as with serde_json.
        let (v, bad) = object(r#"{"n":18446744073709551616}"#);
        assert!(bad.is_empty() && v["n"].is_f64(), "{v}");
    }

    #[test]
    fn what_is_not_a_json_object_stays_an_error_or_another_type() {
        for raw in [r#"{"a":1e999"#, r#"{"a":1e999} x"#, r#"{"a":-}"#, "", "{"] {
            assert!(parse(raw).is_err(), "{raw}");
        }
        for (raw, found) in [
            ("[1e999]", "array"),
            ("[1]", "array"),
            ("\"s\"", "string"),
            ("null", "null"),
            ("1", "number"),
        ] {
            assert!(
                matches!(parse(raw), Ok(Parsed::Other(f)) if f == found),
                "{raw}"
            );
        }
    }

    #[test]
    fn long_keys_are_shortened_in_messages() {
        let key = "k\n".repeat(100);
        let (_, bad) = object(&format!(
            r#"{{"{}":1,"{}":2}}"#,
            key.escape_default(),
            key.escape_default()
        ));
        assert!(bad[0].len() < 200 && bad[0].ends_with("…`"), "{bad:?}");
    }
}
