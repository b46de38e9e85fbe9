//! The fast path of a frame header (issue 20): one pass over the header's text into the few
//! fields a request needs, borrowed from the input — no map, no allocation. It takes only
//! headers whose meaning it can be sure of; any other header (a duplicate key, an escape, a
//! nested value, a field of an unexpected type, a number that is not a plain u64) makes it
//! answer `None`, and the strict path (`strict.rs`) decides, with the errors of PROTOCOL.md. So
//! the two paths never disagree on what a header means.

/// Distinct keys the fast path keeps track of for duplicates; a header with more is left to the
/// strict path.
const MAX_KEYS: usize = 8;

/// A top-level value of a header, as far as a request needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    /// A string (without escapes: those go to the strict path), borrowed.
    Str(&'a str),
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
///
/// A scanner of the one shape requests have — a flat object of plain keys and scalar values —
/// rather than serde: serde_json's typed deserialization cost half of building the whole
/// `Value` (168 against 320 ns for a 103-byte `put`, criterion), the scanner a fraction. It
/// accepts only text that is JSON and that it reads exactly as serde_json does (strings without
/// escapes, non-negative integers that fit a u64, the three literals); anything else, valid or
/// not, goes to the strict path. `frame::fuzz::check_paths_agree` checks that claim on every
/// header the fuzzers and the property tests make.
pub fn parse(raw: &str) -> Option<Request<'_>> {
    let mut s = Scanner {
        text: raw,
        bytes: raw.as_bytes(),
        pos: 0,
    };
    let mut req = Request::default();
    let mut seen: [&str; MAX_KEYS] = [""; MAX_KEYS];
    let mut keys = 0usize;
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek() == Some(b'}') {
        s.pos += 1;
    } else {
        loop {
            let key = s.string()?;
            let seen_before = seen.get(..keys)?;
            if seen_before.contains(&key) {
                return None;
            }
            *seen.get_mut(keys)? = key;
            keys += 1;
            s.ws();
            s.eat(b':')?;
            s.ws();
            let start = s.pos;
            let val = s.value()?;
            let text = raw.get(start..s.pos)?;
            match key {
                "id" => req.id = Some(text),
                "cmd" => req.cmd = Some(val),
                "filename" => req.filename = Some(val),
                "md5" => req.md5 = Some(val),
                "size" | "filesize" => {
                    let Val::U64(n) = val else { return None };
                    if key == "size" {
                        req.size = Some(n);
                    } else {
                        req.filesize = Some(n);
                    }
                }
                "argv" | "timeout_ms" => req.exec_fields = true,
                _ => {}
            }
            s.ws();
            match s.next()? {
                b',' => s.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.ws();
    (s.pos == s.bytes.len()).then_some(req)
}

/// A cursor over a header's text.
struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// A string without escapes or control characters, borrowed (its quotes left out).
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        let rest = self.bytes.get(start..)?;
        let len = memchr::memchr2(b'"', b'\\', rest)?;
        let inside = rest.get(..len)?;
        // An escape, or a control character (which JSON forbids inside a string).
        // (A fold without an early exit, so that it runs as vector code.)
        let control = inside.iter().fold(false, |seen, &b| seen | (b < 0x20));
        if rest.get(len) != Some(&b'"') || control {
            return None;
        }
        self.pos = start + len + 1;
        // The text is UTF-8 and a quote is a whole character: the slice is on boundaries.
        self.text.get(start..start + len)
    }

    /// A value the fast path reads as serde_json would: a plain string, a non-negative
    /// integer that fits a u64, `true`, `false`, `null`.
    fn value(&mut self) -> Option<Val<'a>> {
        match self.peek()? {
            b'"' => self.string().map(Val::Str),
            b'0'..=b'9' => {
                let start = self.pos;
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.pos += 1;
                }
                // A fraction, an exponent or a leading zero: the strict path reads those.
                if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
                    return None;
                }
                let digits = self.text.get(start..self.pos)?;
                if digits.len() > 1 && digits.starts_with('0') {
                    return None;
                }
                digits.parse().ok().map(Val::U64)
            }
            b't' => self.literal("true", Val::Scalar),
            b'f' => self.literal("false", Val::Scalar),
            b'n' => self.literal("null", Val::Null),
            _ => None,
        }
    }

    fn literal(&mut self, word: &str, val: Val<'a>) -> Option<Val<'a>> {
        let end = self.pos.checked_add(word.len())?;
        (self.text.get(self.pos..end)? == word).then(|| {
            self.pos = end;
            val
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_requests_are_typed_and_borrowed() {
        let raw = r#"{"cmd":"put","filename":"a.txt","size":5,"md5":null,"id":7,"x":true}"#;
        let r = parse(raw).expect("typed");
        assert_eq!(r.cmd, Some(Val::Str("put")));
        assert!(matches!(r.filename, Some(Val::Str("a.txt"))));
        assert_eq!(r.md5, Some(Val::Null));
        assert_eq!((r.size, r.filesize, r.id), (Some(5), None, Some("7")));
        let r = parse(r#"{"cmd":"ping","id":"a b"}"#).expect("typed");
        assert_eq!(r.id, Some(r#""a b""#));
        // Whitespace where JSON allows it.
        let r = parse(" {\t\"cmd\" :\r\n\"ping\" , \"size\": 0 }\n").expect("typed");
        assert_eq!((r.cmd, r.size), (Some(Val::Str("ping")), Some(0)));
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
            r#"{"cmd":"p\u0069ng"}"#,
            r#"{"size":05}"#,
            r#"{"size":1e2}"#,
            r#"{"x":tru}"#,
            r#"{"x":nul}"#,
            r#"{"x" "y"}"#,
            r#"{"x":1,}"#,
            r#"{,}"#,
            "{\"x\":\"a\u{1}b\"}",
            r#"{"x":1}}"#,
        ] {
            assert!(parse(raw).is_none(), "{raw}");
        }
        let many: String = (0..9).map(|i| format!("\"k{i}\":1,")).collect();
        assert!(parse(&format!("{{{many}\"cmd\":\"ping\"}}")).is_none());
    }
}
