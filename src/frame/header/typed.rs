//! The fast path of a frame header (issue 20): one pass over the header's text into the few
//! fields a request needs, borrowed from the input — no map, no allocation. It takes only
//! headers whose meaning it can be sure of; any other header (a duplicate key, an escape, a
//! nested value, a field of an unexpected type, a number that is not a plain u64) makes it
//! answer `None`, and the strict path (`strict.rs`) decides, with the errors of PROTOCOL.md. So
//! the two paths never disagree on what a header means.

/// Keys a header may have on the fast path (any beyond the request's own are remembered by name
/// for the duplicate check); a header with more is left to the strict path.
const MAX_KEYS: usize = 8;

/// A top-level value of a header, as far as a request needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    /// A string (without escapes: those go to the strict path), borrowed.
    Str(&'a str),
    /// A non-negative integer.
    U64(u64),
    Null,
    /// `true` or `false` (a reader that needs which tells them apart by the value's text).
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
    // Keys seen so far: the request's own as bits, any other by name.
    let mut seen_fields = 0u8;
    let mut seen_others: [&str; MAX_KEYS] = [""; MAX_KEYS];
    let mut others = 0usize;
    let mut keys = 0usize;
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek() == Some(b'}') {
        s.pos += 1;
    } else {
        loop {
            let key = s.string()?;
            keys += 1;
            if keys > MAX_KEYS {
                return None;
            }
            s.ws();
            s.eat(b':')?;
            s.ws();
            let start = s.pos;
            let val = s.value()?;
            let text = raw.get(start..s.pos)?;
            let field = match record(&mut req, key, val, text)? {
                0 => {
                    if seen_others.get(..others)?.contains(&key) {
                        return None;
                    }
                    *seen_others.get_mut(others)? = key;
                    others += 1;
                    0
                }
                bit => bit,
            };
            if seen_fields & field != 0 {
                return None;
            }
            seen_fields |= field;
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

/// Walks `raw` as a flat JSON object of plain keys and scalar values (the one shape `parse`
/// reads), handing `field` each key, its value and the value's text as it stands; `None` when
/// `raw` is anything else, or when `field` answers `None`. For readers of other headers
/// (`socklab bench`'s, of responses). `parse` keeps a loop of its own: written on this walk, with
/// its state behind the closure, it counted 17 instructions more a header (callgrind).
pub(crate) fn walk_object<'a>(
    raw: &'a str,
    mut field: impl FnMut(&'a str, Val<'a>, &'a str) -> Option<()>,
) -> Option<()> {
    let mut s = Scanner {
        text: raw,
        bytes: raw.as_bytes(),
        pos: 0,
    };
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek() == Some(b'}') {
        s.pos += 1;
    } else {
        loop {
            let key = s.string()?;
            s.ws();
            s.eat(b':')?;
            s.ws();
            let start = s.pos;
            let val = s.value()?;
            field(key, val, raw.get(start..s.pos)?)?;
            s.ws();
            match s.next()? {
                b',' => s.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.ws();
    (s.pos == s.bytes.len()).then_some(())
}

/// Puts a value into the request's field named `key` and answers that field's bit (for the
/// duplicate check), 0 for a key the request does not read, `None` for a size that is not a
/// plain u64. `text` is the value as it stands in the header.
fn record<'a>(req: &mut Request<'a>, key: &'a str, val: Val<'a>, text: &'a str) -> Option<u8> {
    let bit = match key {
        "id" => {
            req.id = Some(text);
            1
        }
        "cmd" => {
            req.cmd = Some(val);
            1 << 1
        }
        "filename" => {
            req.filename = Some(val);
            1 << 2
        }
        "md5" => {
            req.md5 = Some(val);
            1 << 3
        }
        "size" | "filesize" => {
            let Val::U64(n) = val else { return None };
            if key == "size" {
                req.size = Some(n);
                1 << 4
            } else {
                req.filesize = Some(n);
                1 << 5
            }
        }
        "argv" | "timeout_ms" => {
            req.exec_fields = true;
            if key == "argv" { 1 << 6 } else { 1 << 7 }
        }
        _ => 0,
    };
    Some(bit)
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
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        let rest = self.bytes.get(start..)?;
        let len = special_byte(rest)?;
        // An escape or a control character (which JSON forbids inside a string) comes first.
        if rest.get(len) != Some(&b'"') {
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

/// Where the first byte that ends a plain string is: a quote, a backslash or a control
/// character (below 0x20).
///
/// Eight bytes at a time in a `u64`: the strings of a request are short (`cmd`, `ping`) or
/// hex (`md5`), where a call to memchr and a second pass for control characters cost more than
/// the scan (criterion, `header_decode`). Each of the three word tests (quote, backslash, below
/// 0x20) flags the lowest matching byte exactly, in its top bit; only bytes above a match can be
/// flagged wrongly (by the borrow), so the lowest flag of the three is the first special byte.
fn special_byte(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const TOPS: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero_byte = |w: u64| w.wrapping_sub(ONES) & !w;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0usize;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let flags = (zero_byte(w ^ (ONES * u64::from(b'"')))
            | zero_byte(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w))
            & TOPS;
        if flags != 0 {
            return Some(at + (flags.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = chunks.remainder();
    let i = tail
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(at + i)
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
    fn the_word_scan_finds_what_a_byte_loop_finds() {
        let naive = |b: &[u8]| b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
        for len in 0..=24 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    // Every byte value at every place, among plain bytes and among bytes that
                    // make the word arithmetic borrow (0x00 after it, 0x80 and 0xff around).
                    for fill in [b'a', 0x80, 0xff, 0x20, 0x21] {
                        let mut buf = vec![fill; len];
                        buf[at] = byte;
                        assert_eq!(special_byte(&buf), naive(&buf), "{buf:?}");
                        if let Some(next) = buf.get_mut(at + 1) {
                            *next = 0;
                            assert_eq!(special_byte(&buf), naive(&buf), "{buf:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_walk_hands_over_every_field_in_order_and_only_of_flat_objects() {
        let mut seen = Vec::new();
        let raw = r#" {"ok":true, "cmd":"ping","id":7,"x":null,"size":0} "#;
        walk_object(raw, |k, v, text| {
            seen.push((k, v, text));
            Some(())
        })
        .expect("flat");
        assert_eq!(
            seen,
            [
                ("ok", Val::Scalar, "true"),
                ("cmd", Val::Str("ping"), "\"ping\""),
                ("id", Val::U64(7), "7"),
                ("x", Val::Null, "null"),
                ("size", Val::U64(0), "0"),
            ]
        );
        assert_eq!(walk_object("{}", |_, _, _| None), Some(()));
        assert_eq!(walk_object(r#"{"a":1}"#, |_, _, _| None), None, "refused");
        for raw in [
            r#"{"e":{"a":1}}"#,
            r#"{"a":"\n"}"#,
            r#"{"a":1} x"#,
            "[1]",
            r#"{"a":1,}"#,
        ] {
            assert_eq!(walk_object(raw, |_, _, _| Some(())), None, "{raw}");
        }
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
        for key in [
            "id",
            "cmd",
            "filename",
            "md5",
            "size",
            "filesize",
            "argv",
            "timeout_ms",
            "other",
        ] {
            for raw in [
                format!(r#"{{"{key}":1,"{key}":1}}"#),
                format!(r#"{{"{key}":1,"x":2,"y":3,"{key}":1}}"#),
            ] {
                assert!(parse(&raw).is_none(), "{raw}");
            }
            let once = format!(r#"{{"{key}":1,"x":2}}"#);
            assert!(parse(&once).is_some(), "{once}");
        }
        let many: String = (0..9).map(|i| format!("\"k{i}\":1,")).collect();
        assert!(parse(&format!("{{{many}\"cmd\":\"ping\"}}")).is_none());
    }
}
