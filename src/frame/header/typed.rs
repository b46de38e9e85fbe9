//! The fast path of a frame header (issue 20): one pass of serde over the header's text into
//! the few fields a request needs, borrowed from the input — no map, no allocation when no
//! string needs unescaping. It takes only headers whose meaning it can be sure of; any other
//! header (a duplicate key, an escaped key, a nested value, a field of an unexpected type, a
//! number that does not fit) makes it answer `None`, and the strict path (`strict.rs`) decides,
//! with the errors of PROTOCOL.md. So the two paths never disagree on what a header means.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Distinct keys the fast path keeps track of for duplicates; a header with more is left to the
/// strict path.
const MAX_KEYS: usize = 16;

/// A top-level value of a header, as far as a request needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    /// A string, borrowed unless it had escapes.
    Str(Cow<'a, str>),
    /// A non-negative integer.
    U64(u64),
    Null,
    /// `true`, `false`, a negative or fractional number: present, of no use to the fields
    /// read here.
    Scalar,
}

/// The header of a request, typed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request<'a> {
    pub cmd: Option<Val<'a>>,
    pub filename: Option<Val<'a>>,
    pub md5: Option<Val<'a>>,
    /// `id` as its JSON text (a string without escapes, a number, `true`, `false`, `null`),
    /// copied into the response byte for byte.
    pub id: Option<&'a str>,
    pub size: Option<u64>,
    pub filesize: Option<u64>,
    /// `argv` or `timeout_ms` is present: an `exec` request, read from the full map.
    pub exec_fields: bool,
}

/// The typed request in `raw`, or `None` when the strict path must decide.
pub fn parse(raw: &str) -> Option<Request<'_>> {
    let mut de = serde_json::Deserializer::from_str(raw);
    let req = de::Deserializer::deserialize_map(&mut de, RequestVisitor).ok()?;
    de.end().ok()?;
    req
}

struct RequestVisitor;

impl<'de> Visitor<'de> for RequestVisitor {
    /// `None`: leave it to the strict path (the rest of the input is still consumed, so that a
    /// syntax error anywhere is serde_json's to report there).
    type Value = Option<Request<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut req = Request::default();
        let mut seen: [&str; MAX_KEYS] = [""; MAX_KEYS];
        let mut keys = 0usize;
        let mut ok = true;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let key = match key {
                Cow::Borrowed(k) if ok => k,
                // An escaped key could spell a known one: the strict path reads it.
                _ => {
                    ok = false;
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let duplicate = seen.get(..keys).is_some_and(|s| s.contains(&key));
            if duplicate || keys >= MAX_KEYS {
                ok = false;
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if let Some(slot) = seen.get_mut(keys) {
                *slot = key;
            }
            keys += 1;
            match key {
                "id" => {
                    let raw: &'de RawValue = map.next_value()?;
                    match plain_id(raw.get()) {
                        Some(id) => req.id = Some(id),
                        None => ok = false,
                    }
                }
                "cmd" | "filename" | "md5" => {
                    let v = map.next_value_seed(ValSeed)?;
                    match (v, key) {
                        (Some(v), "cmd") => req.cmd = Some(v),
                        (Some(v), "filename") => req.filename = Some(v),
                        (Some(v), _) => req.md5 = Some(v),
                        (None, _) => ok = false,
                    }
                }
                "size" | "filesize" => match map.next_value_seed(ValSeed)? {
                    Some(Val::U64(n)) if key == "size" => req.size = Some(n),
                    Some(Val::U64(n)) => req.filesize = Some(n),
                    _ => ok = false,
                },
                other => {
                    if matches!(other, "argv" | "timeout_ms") {
                        req.exec_fields = true;
                    }
                    // Any other field: it must not hide what the strict path would refuse.
                    if map.next_value_seed(ValSeed)?.is_none() {
                        ok = false;
                    }
                }
            }
        }
        Ok(ok.then_some(req))
    }
}

/// An id the fast path can copy as it is: not an object or an array (whose inner keys the strict
/// path checks), a string without escapes, a number that parses as the strict path would.
fn plain_id(text: &str) -> Option<&str> {
    match text.as_bytes().first()? {
        b'{' | b'[' => None,
        b'"' => (!text.contains('\\')).then_some(text),
        b'-' | b'0'..=b'9' => serde_json::from_str::<serde_json::Number>(text)
            .ok()
            .map(|_| text),
        _ => Some(text),
    }
}

/// Reads a key, borrowed when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(CowStr)
    }
}

struct CowStr;

impl<'de> Visitor<'de> for CowStr {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// Reads a value: `None` for an object or an array (consumed, not kept).
struct ValSeed;

impl<'de> DeserializeSeed<'de> for ValSeed {
    type Value = Option<Val<'de>>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ValVisitor)
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Option<Val<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Val::Str(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Val::Str(Cow::Owned(v.to_owned()))))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Val::U64(v)))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Some(Val::Scalar))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // serde_json hands out an infinity for nothing; the strict path calls it out of range.
        Ok(v.is_finite().then_some(Val::Scalar))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Some(Val::Scalar))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Some(Val::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_requests_are_typed_and_borrowed() {
        let raw = r#"{"cmd":"put","filename":"a.txt","size":5,"md5":null,"id":7,"x":true}"#;
        let r = parse(raw).expect("typed");
        assert_eq!(r.cmd, Some(Val::Str(Cow::Borrowed("put"))));
        assert!(matches!(r.filename, Some(Val::Str(Cow::Borrowed("a.txt")))));
        assert_eq!(r.md5, Some(Val::Null));
        assert_eq!((r.size, r.filesize, r.id), (Some(5), None, Some("7")));
        let r = parse(r#"{"cmd":"ping","id":"a b"}"#).expect("typed");
        assert_eq!(r.id, Some(r#""a b""#));
        // Escapes in values are fine (owned); the id keeps its exact text only without them.
        let r = parse(r#"{"cmd":"p\u0069ng"}"#).expect("typed");
        assert_eq!(r.cmd, Some(Val::Str(Cow::Owned("ping".into()))));
        assert!(
            parse(r#"{"cmd":"exec","argv":["ls"]}"#).is_none(),
            "nested: strict"
        );
        assert!(
            parse(r#"{"cmd":"exec","timeout_ms":5}"#)
                .unwrap()
                .exec_fields
        );
    }

    #[test]
    fn anything_uncertain_goes_to_the_strict_path() {
        for raw in [
            r#"{"cmd":"ping","cmd":"put"}"#,
            r#"{"x":1,"x":2}"#,
            r#"{"c\u006dd":"ping"}"#,
            r#"{"id":{"a":1,"a":2}}"#,
            r#"{"id":[1]}"#,
            r#"{"id":"\u0041"}"#,
            r#"{"id":1e999}"#,
            r#"{"n":1e999}"#,
            r#"{"size":-1}"#,
            r#"{"size":1.5}"#,
            r#"{"size":"5"}"#,
            r#"{"filesize":18446744073709551616}"#,
            r#"{"meta":{"k":1}}"#,
            r#"[1,2]"#,
            r#""str""#,
            r#"{"cmd":"ping"} x"#,
            r#"{"cmd":"ping""#,
        ] {
            assert!(parse(raw).is_none(), "{raw}");
        }
        let many: String = (0..17).map(|i| format!("\"k{i}\":1,")).collect();
        assert!(parse(&format!("{{{many}\"cmd\":\"ping\"}}")).is_none());
    }
}
