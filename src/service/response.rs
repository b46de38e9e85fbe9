//! `files` response headers written straight into the output, field by field, with the 4-byte
//! length prefix patched in at the end: no JSON map is built and nothing is allocated for a
//! response, which is most of the cost of a small request like `ping`. The error codes of
//! PROTOCOL.md ([`ErrorCode`]) are here too, for `files` and `exec` alike.

/// The error codes of PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadFrame,
    BadRequest,
    UnknownCmd,
    BadFilename,
    NotFound,
    TooLarge,
    Md5Mismatch,
    Io,
    AuthRequired,
    AuthFailed,
    ExecDisabled,
    NotAllowed,
    TooBusy,
    Timeout,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownCmd => "unknown_cmd",
            ErrorCode::BadFilename => "bad_filename",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Md5Mismatch => "md5_mismatch",
            ErrorCode::Io => "io",
            ErrorCode::AuthRequired => "auth_required",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::ExecDisabled => "exec_disabled",
            ErrorCode::NotAllowed => "not_allowed",
            ErrorCode::TooBusy => "too_busy",
            ErrorCode::Timeout => "timeout",
        }
    }
}

/// Bytes of the length prefix.
const PREFIX: usize = 4;

/// A response header being written. Keys are the protocol's own ASCII names; values that come
/// from elsewhere (strings, ids) are written by serde_json, which escapes them.
pub struct Head<'a> {
    /// Where the frame goes.
    out: &'a mut Vec<u8>,
    /// Where the frame starts in `out` (its prefix).
    start: usize,
}

impl<'a> Head<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0; PREFIX]);
        Head { out, start }
    }

    /// `{"ok":true,"cmd":"<cmd>"`.
    pub fn ok(out: &'a mut Vec<u8>, cmd: &'static str) -> Self {
        let h = Head::open(out);
        h.out.extend_from_slice(b"{\"ok\":true,\"cmd\":\"");
        h.out.extend_from_slice(cmd.as_bytes());
        h.out.push(b'"');
        h
    }

    /// `{"ok":false,"cmd":…,"error":{"code":…,"message":…}`.
    pub fn error(
        out: &'a mut Vec<u8>,
        cmd: Option<&'static str>,
        code: &'static str,
        message: &str,
    ) -> Self {
        let mut h = Head::open(out);
        h.out.extend_from_slice(b"{\"ok\":false,\"cmd\":");
        match cmd {
            Some(c) => {
                h.out.push(b'"');
                h.out.extend_from_slice(c.as_bytes());
                h.out.push(b'"');
            }
            None => h.out.extend_from_slice(b"null"),
        }
        h.out.extend_from_slice(b",\"error\":{\"code\":\"");
        h.out.extend_from_slice(code.as_bytes());
        h.out.extend_from_slice(b"\",\"message\":");
        h.json(&message);
        h.out.push(b'}');
        h
    }

    fn key(&mut self, key: &'static str) {
        self.out.extend_from_slice(b",\"");
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn json<T: serde::Serialize + ?Sized>(&mut self, v: &T) {
        // Serializing a string, a number or a parsed JSON value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, v);
    }

    /// A string field.
    pub fn str(mut self, key: &'static str, v: &str) -> Self {
        self.key(key);
        self.json(v);
        self
    }

    /// An integer field.
    pub fn num(mut self, key: &'static str, v: impl itoa::Integer) -> Self {
        self.key(key);
        let mut b = itoa::Buffer::new();
        self.out.extend_from_slice(b.format(v).as_bytes());
        self
    }

    /// Ends the header with the request's `id` (if any: its JSON text, copied as it came) and
    /// `size`, and fills in the prefix.
    pub fn finish(mut self, id: Option<&str>, size: u64) {
        if let Some(id) = id {
            self.key("id");
            self.out.extend_from_slice(id.as_bytes());
        }
        self.key("size");
        self.out
            .extend_from_slice(itoa::Buffer::new().format(size).as_bytes());
        self.out.push(b'}');
        let len = self
            .out
            .len()
            .saturating_sub(self.start)
            .saturating_sub(PREFIX);
        let prefix = u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
        if let Some(slot) = self
            .out
            .get_mut(self.start..self.start.saturating_add(PREFIX))
        {
            slot.copy_from_slice(&prefix);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn decode(out: &[u8]) -> Value {
        let h = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
        assert_eq!(out.len(), 4 + h);
        serde_json::from_slice(&out[4..]).unwrap()
    }

    /// Names and messages are escaped exactly as serde_json escapes them: every byte value of
    /// ASCII, and characters of every UTF-8 length.
    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut texts: Vec<String> = (0u8..=0x7f).map(|b| format!("a{}b", b as char)).collect();
        texts.extend(["é", "€", "𝄞", "\u{2028}\u{2029}", "\\\"", ""].map(String::from));
        for text in texts {
            let mut out = Vec::new();
            Head::ok(&mut out, "get")
                .str("filename", &text)
                .finish(None, 0);
            let want = format!(
                "{{\"ok\":true,\"cmd\":\"get\",\"filename\":{},\"size\":0}}",
                serde_json::to_string(&text).unwrap()
            );
            assert_eq!(&out[4..], want.as_bytes(), "{text:?}");
            assert_eq!(decode(&out)["filename"], Value::String(text.clone()));
            out.clear();
            Head::error(&mut out, Some("put"), "io", &text).finish(Some("1"), 0);
            assert_eq!(
                decode(&out)["error"]["message"],
                Value::String(text.clone())
            );
        }
    }

    #[test]
    fn ok_and_error_heads_are_json_objects() {
        let mut out = Vec::new();
        Head::ok(&mut out, "get")
            .str("md5", "ab\"c\n")
            .num("mtime", -5i64)
            .finish(Some(r#"{"k": [1, "x"]}"#), 42);
        assert_eq!(
            decode(&out),
            json!({"ok": true, "cmd": "get", "md5": "ab\"c\n", "mtime": -5, "id": {"k": [1, "x"]}, "size": 42})
        );
        out.clear();
        Head::error(&mut out, None, "bad_frame", "line \"1\"\u{1}").finish(None, 0);
        assert_eq!(
            decode(&out),
            json!({"ok": false, "cmd": null, "error": {"code": "bad_frame", "message": "line \"1\"\u{1}"}, "size": 0})
        );
    }
}
