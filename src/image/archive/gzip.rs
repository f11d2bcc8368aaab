//! A push decoder for gzip streams (RFC 1952), strict where readers differ.
//!
//! Docker decompresses gzip with Go's `compress/gzip` or, when installed,
//! `unpigz`. The two agree on well-formed input but not on what follows the
//! last member (Go fails, unpigz ignores it), so this decoder accepts
//! exactly what both read the same way: one or more complete members, each
//! with its header CRC (if flagged), CRC32 and length checked, and nothing
//! after the last one. Whatever either reader extracts from an accepted
//! stream is then what this decoder produced.
//!
//! `flate2` does the inflating (its pure-Rust `zlib-rs` backend): a
//! maintained, fuzzed implementation beats a hand-written one; the framing
//! around it is written here because the strictness above is the point.

use flate2::{Decompress, FlushDecompress, Status};

/// Output produced per inflate call.
const OUT_CHUNK: usize = 32 * 1024;

/// What went wrong: the stream, or the consumer of its output.
#[derive(Debug)]
pub(super) enum GzipFailure<E> {
    /// The bytes are not a gzip stream this host accepts.
    Corrupt(String),
    /// The sink refused the output.
    Sink(E),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The 10-byte fixed header; `fill` bytes so far.
    Fixed { fill: usize },
    /// FEXTRA's 2-byte length.
    ExtraLen { fill: usize },
    /// FEXTRA's data.
    Extra { remaining: usize },
    /// A zero-terminated FNAME.
    Name,
    /// A zero-terminated FCOMMENT.
    Comment,
    /// FHCRC's 2 bytes.
    HeaderCrc { fill: usize },
    /// Deflate data.
    Data,
    /// CRC32 and ISIZE.
    Trailer { fill: usize },
    /// After a member: the end, or the next member.
    Between,
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const RESERVED: u8 = 0xE0;

/// The decoder; feed it input in any chunking.
pub(super) struct GzipDecoder {
    state: State,
    flags: u8,
    small: [u8; 10],
    inflate: Decompress,
    crc: crc32fast::Hasher,
    header_crc: crc32fast::Hasher,
    member_out: u64,
    out: Vec<u8>,
    members: u64,
}

impl GzipDecoder {
    /// A decoder expecting the first member's header.
    pub fn new() -> Self {
        GzipDecoder {
            state: State::Fixed { fill: 0 },
            flags: 0,
            small: [0; 10],
            inflate: Decompress::new(false),
            crc: crc32fast::Hasher::new(),
            header_crc: crc32fast::Hasher::new(),
            member_out: 0,
            out: Vec::new(),
            members: 0,
        }
    }

    /// Decodes `input`, handing every decompressed piece to `sink`.
    pub fn feed<E>(
        &mut self,
        mut input: &[u8],
        sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), GzipFailure<E>> {
        let corrupt = |why: &str| GzipFailure::Corrupt(why.to_string());
        loop {
            if input.is_empty() && self.state != State::Data {
                return Ok(());
            }
            match self.state {
                State::Between => {
                    // More bytes: they must be another member.
                    self.state = State::Fixed { fill: 0 };
                }
                State::Fixed { fill } => {
                    let n = (10 - fill).min(input.len());
                    self.small[fill..fill + n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    let fill = fill + n;
                    let magic = [0x1f, 0x8b, 0x08];
                    if self.small[..fill.min(3)] != magic[..fill.min(3)] {
                        return Err(corrupt(if self.members == 0 {
                            "not a gzip stream"
                        } else {
                            "data follows the end of the gzip stream"
                        }));
                    }
                    if fill < 10 {
                        self.state = State::Fixed { fill };
                        continue;
                    }
                    self.flags = self.small[3];
                    if self.flags & RESERVED != 0 {
                        return Err(corrupt("gzip header has reserved flags set"));
                    }
                    self.header_crc = crc32fast::Hasher::new();
                    self.header_crc.update(&self.small);
                    self.state = self.after(FEXTRA - 1);
                }
                State::ExtraLen { fill } => {
                    let n = (2 - fill).min(input.len());
                    self.small[fill..fill + n].copy_from_slice(&input[..n]);
                    self.header_crc.update(&input[..n]);
                    input = &input[n..];
                    let fill = fill + n;
                    self.state = if fill < 2 {
                        State::ExtraLen { fill }
                    } else {
                        State::Extra { remaining: usize::from(u16::from_le_bytes([self.small[0], self.small[1]])) }
                    };
                }
                State::Extra { remaining } => {
                    let n = remaining.min(input.len());
                    self.header_crc.update(&input[..n]);
                    input = &input[n..];
                    self.state =
                        if remaining == n { self.after(FEXTRA) } else { State::Extra { remaining: remaining - n } };
                }
                State::Name | State::Comment => {
                    let (end, done) = match input.iter().position(|&b| b == 0) {
                        Some(i) => (i + 1, true),
                        None => (input.len(), false),
                    };
                    self.header_crc.update(&input[..end]);
                    input = &input[end..];
                    if done {
                        self.state = self.after(if self.state == State::Name { FNAME } else { FCOMMENT });
                    }
                }
                State::HeaderCrc { fill } => {
                    let n = (2 - fill).min(input.len());
                    self.small[fill..fill + n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    let fill = fill + n;
                    if fill < 2 {
                        self.state = State::HeaderCrc { fill };
                        continue;
                    }
                    let expected = u16::from_le_bytes([self.small[0], self.small[1]]);
                    let actual = (self.header_crc.clone().finalize() & 0xffff) as u16;
                    if expected != actual {
                        return Err(corrupt("gzip header CRC mismatch"));
                    }
                    self.state = self.after(FHCRC);
                }
                State::Data => {
                    let used = self.inflate_some(input, sink)?;
                    if self.state == State::Data && used == 0 && !input.is_empty() {
                        return Err(corrupt("gzip data is corrupt: the inflater stopped making progress"));
                    }
                    input = &input[used..];
                    if self.state == State::Data && input.is_empty() {
                        return Ok(());
                    }
                }
                State::Trailer { fill } => {
                    let n = (8 - fill).min(input.len());
                    self.small[fill..fill + n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    let fill = fill + n;
                    if fill < 8 {
                        self.state = State::Trailer { fill };
                        continue;
                    }
                    let crc = u32::from_le_bytes([self.small[0], self.small[1], self.small[2], self.small[3]]);
                    let isize = u32::from_le_bytes([self.small[4], self.small[5], self.small[6], self.small[7]]);
                    let actual = std::mem::replace(&mut self.crc, crc32fast::Hasher::new()).finalize();
                    if crc != actual {
                        return Err(corrupt("gzip data CRC mismatch"));
                    }
                    if u64::from(isize) != self.member_out & 0xffff_ffff {
                        return Err(corrupt("gzip length mismatch"));
                    }
                    self.members += 1;
                    self.member_out = 0;
                    self.inflate.reset(false);
                    self.state = State::Between;
                }
            }
        }
    }

    /// The state after the optional header field `done` (or after the
    /// fixed header when `done` is below FEXTRA).
    fn after(&self, done: u8) -> State {
        let pending = |flag: u8| self.flags & flag != 0 && done < flag;
        if pending(FEXTRA) {
            State::ExtraLen { fill: 0 }
        } else if pending(FNAME) {
            State::Name
        } else if pending(FCOMMENT) {
            State::Comment
        } else if self.flags & FHCRC != 0 && done != FHCRC {
            State::HeaderCrc { fill: 0 }
        } else {
            State::Data
        }
    }

    /// Inflates from `input` until it is used up (and the inflater has
    /// nothing more to give) or the member's deflate stream ends. Returns
    /// how many input bytes were consumed.
    fn inflate_some<E>(
        &mut self,
        input: &[u8],
        sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<usize, GzipFailure<E>> {
        if self.out.is_empty() {
            self.out = vec![0; OUT_CHUNK];
        }
        let mut consumed = 0;
        loop {
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let result = self.inflate.decompress(&input[consumed..], &mut self.out, FlushDecompress::None);
            let used = usize::try_from(self.inflate.total_in() - in_before).unwrap_or(usize::MAX);
            let produced = usize::try_from(self.inflate.total_out() - out_before).unwrap_or(usize::MAX);
            consumed += used;
            // What was inflated before an error goes out first: the verdict
            // is then the first fault in stream order, however the input
            // was cut into pieces.
            if produced > 0 {
                let piece = &self.out[..produced];
                self.crc.update(piece);
                self.member_out += produced as u64;
                sink(piece).map_err(GzipFailure::Sink)?;
            }
            let status = result.map_err(|e| GzipFailure::Corrupt(format!("gzip data is corrupt: {e}")))?;
            match status {
                Status::StreamEnd => {
                    self.state = State::Trailer { fill: 0 };
                    return Ok(consumed);
                }
                Status::Ok | Status::BufError => {
                    let output_full = produced == self.out.len();
                    if (consumed == input.len() && !output_full) || (used == 0 && produced == 0) {
                        return Ok(consumed);
                    }
                }
            }
        }
    }

    /// The input ended: it must have ended after a complete member.
    pub fn finish(&self) -> Result<(), String> {
        match self.state {
            State::Between => Ok(()),
            State::Fixed { fill: 0 } if self.members > 0 => Ok(()),
            _ => Err("the gzip stream is cut short".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8], name: Option<&str>) -> Vec<u8> {
        let mut b = flate2::GzBuilder::new();
        if let Some(n) = name {
            b = b.filename(n).comment("c");
        }
        let mut e = b.write(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode(input: &[u8], chunk: usize) -> Result<Vec<u8>, String> {
        let mut d = GzipDecoder::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            d.feed(piece, &mut |b: &[u8]| {
                out.extend_from_slice(b);
                Ok::<(), ()>(())
            })
            .map_err(|e| match e {
                GzipFailure::Corrupt(s) => s,
                GzipFailure::Sink(()) => "sink".into(),
            })?;
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn members_decode_in_any_chunking() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut two = gzip(&data, Some("name"));
        two.extend(gzip(b"second", None));
        let mut expected = data.clone();
        expected.extend_from_slice(b"second");
        for chunk in [1, 7, 512, 65536, 1 << 20] {
            assert_eq!(decode(&two, chunk).as_deref(), Ok(&expected[..]), "chunk {chunk}");
        }
    }

    #[test]
    fn strict_framing() {
        let good = gzip(b"hello", Some("n"));
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"\0\0\0\0");
        assert!(decode(&trailing, 3).unwrap_err().contains("follows the end"));
        assert!(decode(&good[..good.len() - 1], 5).unwrap_err().contains("cut short"));
        let mut bad_crc = good.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        assert!(decode(&bad_crc, 4).unwrap_err().contains("CRC"));
        let mut bad_len = good.clone();
        bad_len[n - 1] ^= 1;
        assert!(decode(&bad_len, 4).unwrap_err().contains("length"));
        let mut reserved = good.clone();
        reserved[3] |= 0x20;
        assert!(decode(&reserved, 4).unwrap_err().contains("reserved"));
        assert!(decode(b"plain tar", 4).unwrap_err().contains("not a gzip"));
        assert!(decode(b"", 4).is_err());
    }

    #[test]
    fn header_crc_is_checked() {
        // FHCRC set by hand: the CRC16 of the header bytes before it.
        let body = gzip(b"x", None);
        let mut h = body[..10].to_vec();
        h[3] |= FHCRC;
        let crc = (crc32fast::hash(&h) & 0xffff) as u16;
        let mut ok = h.clone();
        ok.extend_from_slice(&crc.to_le_bytes());
        ok.extend_from_slice(&body[10..]);
        assert_eq!(decode(&ok, 1).as_deref(), Ok(&b"x"[..]));
        let mut bad = h;
        bad.extend_from_slice(&(crc ^ 1).to_le_bytes());
        bad.extend_from_slice(&body[10..]);
        assert!(decode(&bad, 1).unwrap_err().contains("header CRC"));
    }
}
