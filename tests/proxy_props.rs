//! Properties of the PROXY protocol header parser (`socklab::frame::proxy`), as for the other
//! decoders: no input makes it panic or claim more than it was given, and a valid header of
//! either version, followed by anything, is incomplete at every cut before its end and whole,
//! with its own length and the client's address, from its end on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::collection::vec;
use proptest::prelude::*;
use socklab::frame::proxy::{Parsed, ProxyVersions, parse};

const VERSIONS: [ProxyVersions; 3] = [ProxyVersions::V1, ProxyVersions::V2, ProxyVersions::Either];

fn v1(src: SocketAddr, dst_port: u16) -> Vec<u8> {
    let (fam, dst) = match src.ip() {
        IpAddr::V4(_) => ("TCP4", "198.51.100.1"),
        IpAddr::V6(_) => ("TCP6", "2001:db8::2"),
    };
    format!(
        "PROXY {fam} {} {dst} {} {dst_port}\r\n",
        src.ip(),
        src.port()
    )
    .into_bytes()
}

fn v2(src: SocketAddr, dst_port: u16, tlv: &[u8]) -> Vec<u8> {
    let mut addrs = Vec::new();
    let family = match src.ip() {
        IpAddr::V4(ip) => {
            addrs.extend_from_slice(&ip.octets());
            addrs.extend_from_slice(&[198, 51, 100, 1]);
            0x11
        }
        IpAddr::V6(ip) => {
            addrs.extend_from_slice(&ip.octets());
            addrs.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
            0x21
        }
    };
    addrs.extend_from_slice(&src.port().to_be_bytes());
    addrs.extend_from_slice(&dst_port.to_be_bytes());
    // One NOOP TLV (type 4) carrying `tlv`.
    if !tlv.is_empty() {
        addrs.push(0x04);
        addrs.extend_from_slice(&u16::try_from(tlv.len()).unwrap().to_be_bytes());
        addrs.extend_from_slice(tlv);
    }
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    h.push(family);
    h.extend_from_slice(&u16::try_from(addrs.len()).unwrap().to_be_bytes());
    h.extend_from_slice(&addrs);
    h
}

fn any_source() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<u128>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

proptest! {
    #[test]
    fn no_input_panics_or_claims_more_than_it_has(
        input in vec(any::<u8>(), 0..2048),
        prefix in prop_oneof![Just(b"PROXY ".to_vec()), Just(b"\r\n\r\n\0\r\nQUIT\n".to_vec()), Just(Vec::new())],
    ) {
        let mut bytes = prefix;
        bytes.extend_from_slice(&input);
        for versions in VERSIONS {
            if let Ok(Parsed::Done { len, .. }) = parse(&bytes, versions) {
                prop_assert!(len <= bytes.len());
            }
        }
    }

    #[test]
    fn a_valid_header_is_whole_exactly_at_its_end(
        src in any_source(),
        dst_port in any::<u16>(),
        tlv in vec(any::<u8>(), 0..200),
        tail in vec(any::<u8>(), 0..64),
        second in any::<bool>(),
    ) {
        let header = if second { v2(src, dst_port, &tlv) } else { v1(src, dst_port) };
        let mut input = header.clone();
        input.extend_from_slice(&tail);
        for cut in 0..header.len() {
            prop_assert_eq!(parse(&input[..cut], ProxyVersions::Either), Ok(Parsed::Incomplete));
        }
        for end in header.len()..=input.len() {
            prop_assert_eq!(
                parse(&input[..end], ProxyVersions::Either),
                Ok(Parsed::Done { len: header.len(), source: Some(src) })
            );
        }
    }
}
