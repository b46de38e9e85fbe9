use super::*;

fn v2(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(command);
    h.push(family);
    h.extend_from_slice(&u16::try_from(addrs.len()).unwrap().to_be_bytes());
    h.extend_from_slice(addrs);
    h
}

/// A v2 PROXY header for TCP over IPv4 from 192.0.2.7:4242 to 198.51.100.1:80.
fn v2_tcp4() -> Vec<u8> {
    v2(
        0x21,
        0x11,
        &[192, 0, 2, 7, 198, 51, 100, 1, 0x10, 0x92, 0, 80],
    )
}

#[test]
fn a_v1_header_names_the_client_and_says_its_length() {
    let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 80\r\n";
    let mut input = h.to_vec();
    input.extend_from_slice(b"ping\n");
    assert_eq!(
        parse(&input, ProxyVersions::Either),
        Ok(Parsed::Done {
            len: h.len(),
            source: Some("192.0.2.7:4242".parse().unwrap()),
        })
    );
    let h6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 5000 80\r\n";
    assert_eq!(
        parse(h6, ProxyVersions::V1),
        Ok(Parsed::Done {
            len: h6.len(),
            source: Some("[2001:db8::1]:5000".parse().unwrap()),
        })
    );
}

#[test]
fn every_prefix_of_a_header_is_incomplete() {
    let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 80\r\n".to_vec();
    for h in [v1, v2_tcp4()] {
        for n in 0..h.len() {
            assert_eq!(
                parse(&h[..n], ProxyVersions::Either),
                Ok(Parsed::Incomplete),
                "{n} bytes of {h:?}"
            );
        }
        assert!(matches!(
            parse(&h, ProxyVersions::Either),
            Ok(Parsed::Done { .. })
        ));
    }
}

#[test]
fn a_v2_header_names_the_client() {
    let mut input = v2_tcp4();
    let len = input.len();
    input.extend_from_slice(b"rest");
    assert_eq!(
        parse(&input, ProxyVersions::V2),
        Ok(Parsed::Done {
            len,
            source: Some("192.0.2.7:4242".parse().unwrap()),
        })
    );
}

#[test]
fn headers_that_name_no_client_leave_the_peer_address() {
    assert_eq!(
        parse(b"PROXY UNKNOWN\r\n", ProxyVersions::Either),
        Ok(Parsed::Done {
            len: 15,
            source: None
        })
    );
    // LOCAL: the balancer's own health check, with or without addresses.
    let local = v2(0x20, 0x00, &[]);
    assert_eq!(
        parse(&local, ProxyVersions::Either),
        Ok(Parsed::Done {
            len: 16,
            source: None
        })
    );
}

#[test]
fn a_connection_without_a_header_is_refused_at_its_first_wrong_byte() {
    assert!(matches!(
        parse(b"G", ProxyVersions::Either),
        Err(ProxyError::Missing(_))
    ));
    assert!(matches!(
        parse(b"\r\n\r\n\0\r\nQUIX", ProxyVersions::Either),
        Err(ProxyError::Missing(_))
    ));
    assert!(matches!(
        parse(b"PROXZ", ProxyVersions::Either),
        Err(ProxyError::Missing(_))
    ));
}

#[test]
fn the_wrong_version_is_refused() {
    assert_eq!(
        parse(&v2_tcp4(), ProxyVersions::V1),
        Err(ProxyError::WrongVersion {
            got: 2,
            expected: ProxyVersions::V1
        })
    );
    assert_eq!(
        parse(b"PROXY TCP4", ProxyVersions::V2),
        Err(ProxyError::WrongVersion {
            got: 1,
            expected: ProxyVersions::V2
        })
    );
    // A v2 signature with version nibble 1.
    let bad = v2(0x11, 0x11, &[0; 12]);
    assert!(matches!(
        parse(&bad, ProxyVersions::Either),
        Err(ProxyError::Invalid { version: 2, .. })
    ));
}

#[test]
fn too_long_headers_are_refused_before_they_are_whole() {
    let mut long_v1 = b"PROXY TCP4 ".to_vec();
    long_v1.resize(V1_MAX, b'1');
    assert_eq!(
        parse(&long_v1, ProxyVersions::Either),
        Err(ProxyError::TooLong { limit: V1_MAX })
    );
    let mut big = V2_SIGNATURE.to_vec();
    big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    assert_eq!(
        parse(&big, ProxyVersions::Either),
        Err(ProxyError::TooLong { limit: MAX_HEADER })
    );
}

#[test]
fn truncated_or_malformed_headers_are_invalid() {
    assert!(matches!(
        parse(b"PROXY TCP4 192.0.2.7\r\n", ProxyVersions::Either),
        Err(ProxyError::Invalid { version: 1, .. })
    ));
    assert!(matches!(
        parse(
            b"PROXY TCP4 300.0.2.7 198.51.100.1 1 2\r\n",
            ProxyVersions::Either
        ),
        Err(ProxyError::Invalid { version: 1, .. })
    ));
    // An address family that does not exist (4).
    let unknown = v2(0x21, 0x41, &[0; 12]);
    assert!(matches!(
        parse(&unknown, ProxyVersions::Either),
        Err(ProxyError::Invalid { version: 2, .. })
    ));
    // IPv4 with fewer address bytes than the family needs.
    let short = v2(0x21, 0x11, &[192, 0, 2, 7]);
    assert!(matches!(
        parse(&short, ProxyVersions::Either),
        Err(ProxyError::Invalid { version: 2, .. })
    ));
}
