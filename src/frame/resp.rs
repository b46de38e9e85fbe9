//! RESP3, Redis's protocol, for the chat bus: commands written as arrays of blob strings, and
//! replies and pushes read from the bus connection's input. Both are the `redis-protocol`
//! crate's, sans-IO like socklab's own codecs: a frame is decoded only once it is whole, and
//! `None` says more input is needed.

use redis_protocol::resp3::decode::complete;
use redis_protocol::resp3::encode::complete::encode_borrowed;
use redis_protocol::resp3::types::BorrowedFrame;

pub(crate) use redis_protocol::resp3::types::OwnedFrame as Frame;

/// Why the bytes from Redis are not RESP3: the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not RESP3: {0}")]
pub(crate) struct RespError(String);

/// Appends the command `args` (its name first) to `out`.
pub(crate) fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let parts: Vec<BorrowedFrame<'_>> = args
        .iter()
        .map(|a| BorrowedFrame::BlobString {
            data: a,
            attributes: None,
        })
        .collect();
    let frame = BorrowedFrame::Array {
        data: &parts,
        attributes: None,
    };
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    match out
        .get_mut(start..)
        .map(|tail| encode_borrowed(tail, &frame, false))
    {
        Some(Ok(n)) => out.truncate(start + n),
        // The buffer was sized by the crate's own count; an array of blob strings cannot fail.
        _ => out.truncate(start),
    }
}

/// The first whole frame of `input` and the bytes it took, or `None` when it is not whole yet.
pub(crate) fn decode(input: &[u8]) -> Result<Option<(Frame, usize)>, RespError> {
    complete::decode(input).map_err(|e| RespError(e.details().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_blob_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"PUBLISH", b"ch", b"a b\r\n"]);
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$5\r\na b\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn a_frame_is_whole_or_none_in_every_split() {
        let push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        for cut in 0..push.len() {
            assert_eq!(decode(&push[..cut]), Ok(None), "cut at {cut}");
        }
        let (frame, used) = decode(push).unwrap().unwrap();
        assert_eq!(used, push.len());
        assert!(matches!(frame, Frame::Push { .. }));
        assert!(decode(b"?garbage\r\n").is_err());
        assert!(decode(b"$-5\r\n").is_err() || decode(b"$-5\r\n").unwrap().is_none());
    }
}
