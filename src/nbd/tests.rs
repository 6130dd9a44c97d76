//! The decoders on arbitrary and mutated byte streams: they return a value or a clear
//! error, never panic, and what an encoder writes decodes back.

use proptest::prelude::*;

use super::*;

/// A valid client stream: flags, then options, then requests (what a decoder is fed
/// piece by piece).
fn valid_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

fn go_data(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for r in requests {
        d.extend_from_slice(&r.to_be_bytes());
    }
    d
}

fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

/// Feeds `stream` to the decoders as a server reads it; returns how far it got.
fn drive(stream: &[u8]) -> Result<usize, ProtoError> {
    let mut at = 0;
    ClientFlags::decode(stream.get(at..).unwrap_or(&[]))?;
    at += 4;
    loop {
        let h = OptionHeader::decode(stream.get(at..).unwrap_or(&[]))?;
        at += OPTION_HEADER_LEN;
        let end = (at + h.len as usize).min(stream.len());
        let o = Opt::decode(h.option, &stream[at..end])?;
        at = end;
        if matches!(
            o,
            Opt::ExportName(_) | Opt::Info { go: true, .. } | Opt::Abort
        ) {
            break;
        }
    }
    while at < stream.len() {
        let r = Request::decode(&stream[at..])?;
        at += REQUEST_LEN;
        if r.has_payload() {
            at += r.length as usize;
        }
        let _ = r.range_within(1 << 30);
    }
    Ok(at)
}

fn sample_stream() -> Vec<u8> {
    let mut s = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    s.extend(valid_option(opt::STRUCTURED_REPLY, &[]));
    s.extend(valid_option(
        opt::SET_META_CONTEXT,
        &meta_data("", &[BASE_ALLOCATION]),
    ));
    s.extend(valid_option(opt::LIST, &[]));
    s.extend(valid_option(opt::GO, &go_data("", &[info::BLOCK_SIZE])));
    for (kind, offset, length) in [(cmd::READ, 0, 4096), (cmd::BLOCK_STATUS, 4096, 1 << 20)] {
        Request {
            flags: 0,
            kind,
            cookie: 7,
            offset,
            length,
        }
        .encode(&mut s);
    }
    s
}

#[test]
fn a_valid_stream_decodes_whole() {
    let s = sample_stream();
    assert_eq!(drive(&s), Ok(s.len()));
}

#[test]
fn options_decode_to_what_was_sent() {
    assert_eq!(
        Opt::decode(opt::GO, &go_data("vol", &[3, 1])),
        Ok(Opt::Info {
            go: true,
            name: "vol".into(),
            requests: vec![3, 1]
        })
    );
    assert_eq!(
        Opt::decode(opt::LIST_META_CONTEXT, &meta_data("", &["base:", "qemu:x"])),
        Ok(Opt::MetaContext {
            set: false,
            name: String::new(),
            queries: vec!["base:".into(), "qemu:x".into()]
        })
    );
    assert_eq!(Opt::decode(opt::STARTTLS, &[]), Ok(Opt::Unsupported(5)));
    assert_eq!(Opt::decode(99, &[1, 2, 3]), Ok(Opt::Unsupported(99)));
}

#[test]
fn bad_input_gets_a_clear_error() {
    assert_eq!(
        ClientFlags::decode(&[0, 0, 0, 0]),
        Err(ProtoError::ClientFlags(0))
    );
    assert_eq!(
        ClientFlags::decode(&[0, 0, 0, 5]).unwrap_err().to_string(),
        "client flags 0x5: unknown bits set or fixed newstyle missing (only fixed newstyle is served)"
    );
    let mut h = valid_option(opt::GO, &[]);
    h[12..16].copy_from_slice(&(1u32 << 20).to_be_bytes());
    assert_eq!(
        OptionHeader::decode(&h).unwrap_err().to_string(),
        "option 7 carries 1048576 bytes, more than the 65536 accepted"
    );
    assert_eq!(
        Opt::decode(opt::LIST, &[0]).unwrap_err().to_string(),
        "option 3: 1 bytes after the option's data"
    );
    assert_eq!(
        Opt::decode(opt::GO, &[0, 0, 0, 9, b'a'])
            .unwrap_err()
            .to_string(),
        "option 7: export name needs 9 bytes, 1 left in the option"
    );
    assert_eq!(
        Opt::decode(opt::SET_META_CONTEXT, &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])
            .unwrap_err()
            .to_string(),
        "option 10: 4294967295 queries do not fit in the option"
    );
    assert_eq!(
        Request::decode(&[0; REQUEST_LEN]).unwrap_err().to_string(),
        "bad request magic 0x0: the client does not speak NBD fixed newstyle"
    );
    assert_eq!(
        Request::decode(&[0; 3]).unwrap_err().to_string(),
        "request needs 28 bytes, got 3"
    );
}

#[test]
fn a_range_past_the_end_is_refused() {
    let r = |offset, length| Request {
        flags: 0,
        kind: cmd::READ,
        cookie: 0,
        offset,
        length,
    };
    assert_eq!(r(0, 4096).range_within(4096), Some(0..4096));
    assert_eq!(r(1, 4096).range_within(4096), None);
    assert_eq!(r(u64::MAX, 2).range_within(u64::MAX), None);
}

proptest! {
    #[test]
    fn arbitrary_streams_never_panic(stream in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = drive(&stream);
        for option in [opt::EXPORT_NAME, opt::INFO, opt::GO, opt::LIST, opt::SET_META_CONTEXT, opt::LIST_META_CONTEXT] {
            let _ = Opt::decode(option, &stream);
        }
    }

    #[test]
    fn mutated_streams_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut s = sample_stream();
        for (at, byte) in flips {
            let i = at % s.len();
            s[i] = byte;
        }
        s.truncate(cut % (s.len() + 1));
        match drive(&s) {
            Ok(n) => prop_assert!(n >= s.len()),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
