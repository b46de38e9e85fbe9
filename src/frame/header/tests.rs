//! Tests of the header+body decoder and encoder.

use super::*;
use serde_json::json;

/// Prefix + header text.
fn frame(header: &str) -> Vec<u8> {
    let mut v = (header.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v
}

fn header_of(d: &mut HeaderBodyDecoder, input: &[u8]) -> (Map<String, Value>, u64, usize) {
    match d.decode(input) {
        Ok(Decoded::Item {
            item: Part::Header(h),
            consumed,
        }) => (h.map().into_owned(), h.size, consumed),
        other => panic!("expected a header, got {other:?}"),
    }
}

#[test]
fn python_client_put_frame() {
    // struct.pack('i', len(h)) + h + body, as the classic upload client sends it.
    let mut input = frame(r#"{"cmd":"put","filename":"a.txt","filesize":5}"#);
    input.extend_from_slice(b"hello");
    input.extend_from_slice(&frame(r#"{"cmd":"ping"}"#));
    let mut d = HeaderBodyDecoder::default();
    let (fields, size, consumed) = header_of(&mut d, &input);
    assert_eq!(
        (fields["cmd"].as_str(), size, consumed),
        (Some("put"), 5, 49)
    );
    let rest = &input[consumed..];
    assert_eq!(d.body_remaining(), 5);
    assert_eq!(
        d.decode(&rest[..2]),
        Ok(Decoded::Item {
            item: Part::BodyChunk(b"he"),
            consumed: 2
        })
    );
    assert_eq!(
        d.decode(&rest[2..]),
        Ok(Decoded::Item {
            item: Part::BodyChunk(b"llo"),
            consumed: 3
        })
    );
    assert_eq!(
        d.decode(&rest[5..]),
        Ok(Decoded::Item {
            item: Part::BodyEnd,
            consumed: 0
        })
    );
    let (fields, size, _) = header_of(&mut d, &rest[5..]);
    assert_eq!((fields["cmd"].as_str(), size), (Some("ping"), 0));
    assert_eq!(
        d.decode(b""),
        Ok(Decoded::Item {
            item: Part::BodyEnd,
            consumed: 0
        })
    );
    assert_eq!(d.decode(b""), Ok(Decoded::Incomplete));
}

#[test]
fn header_borrows_its_text_and_parses_typed() {
    #[derive(serde::Deserialize)]
    struct Put<'a> {
        filename: &'a str,
    }
    let input = frame(r#"{"cmd":"put","filename":"a.txt","size":0,"id":[1]}"#);
    let mut d = HeaderBodyDecoder::default();
    let Ok(Decoded::Item {
        item: Part::Header(h),
        ..
    }) = d.decode(&input)
    else {
        panic!()
    };
    assert_eq!(h.parse::<Put>().unwrap().filename, "a.txt");
    assert_eq!((h.cmd(), h.id_value()), (Some("put"), Some(json!([1]))));
    assert!(std::ptr::eq(h.raw.as_ptr(), input[4..].as_ptr()));
}

#[test]
fn partial_input_consumes_nothing() {
    let input = frame(r#"{"size":1}"#);
    let mut d = HeaderBodyDecoder::default();
    for end in 0..input.len() {
        assert_eq!(d.decode(&input[..end]), Ok(Decoded::Incomplete), "{end}");
    }
    header_of(&mut d, &input);
    assert_eq!(d.decode(b""), Ok(Decoded::Incomplete));
}

#[test]
fn terabyte_body_in_constant_memory() {
    let input = frame(r#"{"size":1000000000000}"#);
    let mut d = HeaderBodyDecoder::default();
    let (_, size, _) = header_of(&mut d, &input);
    assert_eq!(size, 1_000_000_000_000);
    let chunk = [7u8; 4096];
    for _ in 0..1000 {
        assert_eq!(
            d.decode(&chunk),
            Ok(Decoded::Item {
                item: Part::BodyChunk(&chunk),
                consumed: 4096
            })
        );
    }
    assert_eq!(d.body_remaining(), 1_000_000_000_000 - 4_096_000);
    assert_eq!(d.max_buffered(), 4 + 65536);
}

#[test]
fn chunk_stops_at_the_end_of_the_body() {
    let mut input = frame(r#"{"size":3}"#);
    input.extend_from_slice(b"abcNEXT");
    let mut d = HeaderBodyDecoder::default();
    let (_, _, consumed) = header_of(&mut d, &input);
    assert_eq!(
        d.decode(&input[consumed..]),
        Ok(Decoded::Item {
            item: Part::BodyChunk(b"abc"),
            consumed: 3
        })
    );
}

#[test]
fn size_rules() {
    let ok = |h: &str, accept_filesize: bool| {
        let mut d = HeaderBodyDecoder::new(HeaderBodyConfig {
            accept_filesize,
            ..Default::default()
        });
        header_of(&mut d, &frame(h)).1
    };
    assert_eq!(ok(r#"{}"#, true), 0);
    assert_eq!(ok(r#"{"filesize":7}"#, true), 7);
    assert_eq!(ok(r#"{"filesize":7}"#, false), 0);
    assert_eq!(ok(r#"{"size":7,"filesize":7}"#, true), 7);
    assert_eq!(ok(r#"{"size":7,"filesize":8}"#, false), 7);
    assert_eq!(ok(r#"{"size":18446744073709551615}"#, true), u64::MAX);
}

fn err(header: &[u8]) -> HeaderError {
    let mut input = (header.len() as u32).to_le_bytes().to_vec();
    input.extend_from_slice(header);
    HeaderBodyDecoder::default().decode(&input).unwrap_err()
}

#[test]
fn errors_of_the_prefix_and_the_bytes() {
    let mut d = HeaderBodyDecoder::default();
    assert_eq!(
        d.decode(b"\0\0\0\0"),
        Err(HeaderError::EmptyHeader {
            offset: 0,
            max: 65536
        })
    );
    // Decided from the prefix alone: no header byte has arrived.
    assert_eq!(
        d.decode(b"\x01\x00\x01\x00"),
        Err(HeaderError::HeaderTooLong {
            offset: 0,
            length: 65537,
            max: 65536
        })
    );
    assert_eq!(
        d.decode(b"\xff\xff\xff\xff"),
        Err(HeaderError::HeaderTooLong {
            offset: 0,
            length: u32::MAX,
            max: 65536
        })
    );
    assert_eq!(
        err(b"{\"a\":\"\xff\"}"),
        HeaderError::NotUtf8 {
            offset: 0,
            valid_up_to: 6
        }
    );
}

#[test]
fn errors_of_the_json() {
    assert!(matches!(
        err(b"{\"a\":"),
        HeaderError::BadJson {
            offset: 0,
            line: 1,
            column: 5,
            ..
        }
    ));
    assert!(matches!(
        err(b"{} {}"),
        HeaderError::BadJson {
            line: 1,
            column: 4,
            ..
        }
    ));
    assert_eq!(
        err(b"[1]"),
        HeaderError::NotObject {
            offset: 0,
            found: "array"
        }
    );
    assert_eq!(
        err(b"null"),
        HeaderError::NotObject {
            offset: 0,
            found: "null"
        }
    );
    assert_eq!(
        err(b"\"x\""),
        HeaderError::NotObject {
            offset: 0,
            found: "string"
        }
    );
    assert_eq!(
        err(b"1"),
        HeaderError::NotObject {
            offset: 0,
            found: "number"
        }
    );
    assert_eq!(
        err(b"true"),
        HeaderError::NotObject {
            offset: 0,
            found: "boolean"
        }
    );
}

#[test]
fn errors_of_the_size_fields_keep_the_id() {
    for (bad, field) in [
        (&br#"{"size":-1,"id":9}"#[..], "size"),
        (br#"{"size":1.5,"id":9}"#, "size"),
        (br#"{"size":"5","id":9}"#, "size"),
        (br#"{"size":null,"id":9}"#, "size"),
        (br#"{"size":18446744073709551616,"id":9}"#, "size"),
        (br#"{"filesize":-1,"id":9}"#, "filesize"),
        (br#"{"size":1,"filesize":"1","id":9}"#, "filesize"),
    ] {
        let e = err(bad);
        assert!(
            matches!(&e, HeaderError::BadSize { offset: 0, field: f, .. } if *f == field),
            "{e:?}"
        );
        assert_eq!(e.request_id(), Some(&json!(9)), "{e:?}");
    }
    let e = err(br#"{"id":{"n":[1,2]},"size":1,"filesize":2}"#);
    assert_eq!(
        e,
        HeaderError::SizeConflict {
            offset: 0,
            size: 1,
            filesize: 2,
            id: Some(json!({"n":[1,2]}))
        }
    );
    assert_eq!(
        e.to_string(),
        "frame at byte 0: `size` 1 and `filesize` 2 differ"
    );
    assert_eq!(err(br#"{"size":-1}"#).request_id(), None);
    assert_eq!(err(b"[1]").request_id(), None);
}

#[test]
fn error_offset_is_the_bad_frames_place_in_the_stream() {
    let mut input = frame(r#"{"size":2}"#);
    input.extend_from_slice(b"xy\0\0\0\0");
    let mut d = HeaderBodyDecoder::default();
    let mut pos = 0;
    let e = loop {
        match d.decode(&input[pos..]) {
            Ok(answer) => pos += answer.consumed(),
            Err(e) => break e,
        }
    };
    assert_eq!(
        e,
        HeaderError::EmptyHeader {
            offset: 16,
            max: 65536
        }
    );
    assert_eq!(e.offset(), 16);
    // Errors are final: the same answer again.
    assert_eq!(d.decode(&input[pos..]), Err(e));
}

#[test]
fn max_header_is_configurable() {
    let mut d = HeaderBodyDecoder::new(HeaderBodyConfig {
        max_header: 2,
        accept_filesize: true,
        typed: true,
    });
    assert_eq!(d.max_buffered(), 6);
    header_of(&mut d, &frame("{}"));
    assert_eq!(
        d.decode(b""),
        Ok(Decoded::Item {
            item: Part::BodyEnd,
            consumed: 0
        })
    );
    assert_eq!(
        d.decode(&frame("{ }")),
        Err(HeaderError::HeaderTooLong {
            offset: 6,
            length: 3,
            max: 2
        })
    );
}

#[test]
fn encode_header_adds_size_and_round_trips() {
    #[derive(Serialize)]
    struct Reply<'a> {
        ok: bool,
        cmd: &'a str,
    }
    let mut out = b"pending".to_vec();
    encode_header(
        &Reply {
            ok: true,
            cmd: "get",
        },
        3,
        &mut out,
    )
    .unwrap();
    out.extend_from_slice(b"abc");
    assert_eq!(&out[..7], b"pending");
    let text = r#"{"ok":true,"cmd":"get","size":3}"#;
    assert_eq!(&out[7..11], &(text.len() as u32).to_le_bytes());
    assert_eq!(&out[11..11 + text.len()], text.as_bytes());
    let mut d = HeaderBodyDecoder::new(HeaderBodyConfig::responses());
    let (fields, size, consumed) = header_of(&mut d, &out[7..]);
    assert_eq!(
        (fields["cmd"].as_str(), size, consumed),
        (Some("get"), 3, 4 + text.len())
    );

    let mut out = Vec::new();
    encode_header(&json!({"ok": false, "cmd": null}), 0, &mut out).unwrap();
    assert_eq!(&out[4..], br#"{"cmd":null,"ok":false,"size":0}"#);
}

#[test]
fn encode_header_errors_leave_output_alone() {
    let mut out = b"x".to_vec();
    let e = encode_header(&json!([1, 2]), 0, &mut out).unwrap_err();
    assert!(matches!(e, HeaderEncodeError::NotAnObject { .. }), "{e:?}");
    assert!(matches!(
        encode_header("text", 0, &mut out),
        Err(HeaderEncodeError::NotAnObject { .. })
    ));
    let small = HeaderBodyConfig {
        max_header: 10,
        accept_filesize: false,
        typed: false,
    };
    assert_eq!(
        small.encode_header(&json!({"a": 1}), 0, &mut out),
        Err(HeaderEncodeError::TooLong {
            length: 16,
            max: 10
        })
    );
    assert_eq!(out, b"x");
}

#[test]
fn unusable_fields_are_a_problem_unless_they_hide_the_size() {
    let mut d = HeaderBodyDecoder::default();
    let input = frame(r#"{"cmd":"ping","cmd":"put","size":2,"id":1e999}"#);
    let Ok(Decoded::Item {
        item: Part::Header(h),
        consumed,
    }) = d.decode(&input)
    else {
        panic!()
    };
    assert_eq!(
        (h.size, consumed, h.id_value(), h.cmd()),
        (2, input.len(), None, None)
    );
    assert_eq!(
        h.problem.map(|p| p.to_string()).as_deref(),
        Some("duplicate key `cmd`")
    );
    assert_eq!(d.body_remaining(), 2, "the body is still framed");
    for (bad, field) in [
        (&br#"{"size":1,"size":1,"id":9}"#[..], "size"),
        (br#"{"filesize":1e999,"id":9}"#, "filesize"),
    ] {
        let e = err(bad);
        assert!(
            matches!(&e, HeaderError::UnknownSize { problem, .. } if problem.key == field),
            "{e:?}"
        );
        assert_eq!(e.request_id(), Some(&json!(9)));
    }
    // In a response `filesize` is not a length: a bad one is only a problem.
    let mut d = HeaderBodyDecoder::new(HeaderBodyConfig::responses());
    let (fields, size, _) = header_of(&mut d, &frame(r#"{"filesize":1e999,"size":0}"#));
    assert_eq!((fields.len(), size), (1, 0));
}

mod paths_agree {
    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "cmd",
        "filename",
        "md5",
        "size",
        "filesize",
        "id",
        "x",
        "argv",
        "c\\u006dd",
        "",
    ];
    const VALUES: &[&str] = &[
        "\"ping\"",
        "\"put\"",
        "\"a.txt\"",
        "\"a\\u0041\"",
        "\"\"",
        "null",
        "true",
        "0",
        "5",
        "-1",
        "-0",
        "1.5",
        "1e2",
        "1e999",
        "18446744073709551615",
        "18446744073709551616",
        "{\"a\":1,\"a\":2}",
        "{}",
        "[1]",
        "[]",
    ];

    proptest! {
        /// Headers made of the pieces that matter (known keys, duplicates, escapes, nesting,
        /// numbers at every edge): whenever the fast path takes one, the strict path reads it
        /// the same way; and the decoder's answer does not depend on which path it took.
        #[test]
        fn the_fast_and_strict_paths_agree(
            fields in prop::collection::vec((0..KEYS.len(), 0..VALUES.len()), 0..7),
            spaces in any::<bool>(),
        ) {
            let sep = if spaces { ", " } else { "," };
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("\"{}\":{}", KEYS[*k], VALUES[*v]))
                .collect();
            let raw = format!("{{{}}}", body.join(sep));
            crate::frame::fuzz::check_paths_agree(&raw);
        }
    }
}

#[test]
fn header_text_reads_as_from_utf8_does() {
    // ASCII of every length around the word size, UTF-8 of 2 to 4 bytes, and bytes that are
    // not UTF-8 (a lone continuation, a truncated sequence, an overlong form, a surrogate)
    // at the start, middle and end.
    let mut cases: Vec<Vec<u8>> = (0..=33).map(|n| vec![b'a'; n]).collect();
    for bad in [
        &b"\x80"[..],
        b"\xc3",
        b"\xc0\xaf",
        b"\xed\xa0\x80",
        b"\xff",
        "é".as_bytes(),
        "€".as_bytes(),
        "😀".as_bytes(),
        b"\x7f",
    ] {
        for at in [0, 7, 8, 15, 16, 30] {
            let mut v = vec![b'x'; 30];
            v.splice(at..at, bad.iter().copied());
            cases.push(v);
        }
    }
    for case in &cases {
        assert_eq!(header_text(case), std::str::from_utf8(case), "{case:?}");
    }
    let name = r#"{"cmd":"put","filename":"é.txt","size":0}"#;
    let mut frame = (name.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(name.as_bytes());
    match HeaderBodyDecoder::default().decode(&frame) {
        Ok(Decoded::Item {
            item: Part::Header(h),
            ..
        }) => assert_eq!(h.raw, name),
        other => panic!("{other:?}"),
    }
}
