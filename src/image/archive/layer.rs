//! What Docker will do with a file if the manifest names it as a layer.
//!
//! Layer bytes go to Docker unchanged (its diff IDs are digests of them),
//! but Docker unpacks them to disk: a layer that is compressed, or that
//! holds GNU sparse entries (which Go's tar reader expands into zeros the
//! archive does not carry), can make a few megabytes of archive into
//! gigabytes on the host. So every file of the archive is walked here as
//! Docker would read it as a layer: its compression sniffed with Docker's
//! table, gzip inflated, and its tar headers followed exactly as Go's
//! `archive/tar` follows them (data lengths, PAX `size`, extension headers,
//! the end marker), without keeping any of its content. Memory: one header
//! block, at most one PAX header (1 MiB, Go's own cap) and the inflater.
//!
//! Files that turn out not to be layers (`VERSION`, JSON) get a verdict too;
//! it only matters if the manifest names them.

use super::compression::{self, Compression, PEEK};
use super::gzip::{GzipDecoder, GzipFailure};
use super::tar::{self, ExtKind, MAX_EXT_HEADER};

/// How a file fares as a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LayerVerdict {
    /// Docker reads it as a tar (plain or gzip) with nothing expanding.
    Tar { compression: Option<Compression> },
    /// It cannot be a layer here, and why.
    Refused(Box<str>),
}

/// The unpacked size went over the budget the caller gave.
#[derive(Debug)]
pub(super) struct OverBudget;

/// Watches one file's bytes go by.
pub(super) struct LayerInspector {
    prefix: [u8; PEEK],
    prefix_fill: usize,
    mode: Mode,
    walker: TarWalker,
}

enum Mode {
    /// The first bytes are still being collected.
    Sniffing,
    Plain,
    Gzip(Box<GzipDecoder>),
    /// Decided: not a layer (or a refused one); nothing more is looked at.
    Done(Box<str>),
}

impl LayerInspector {
    /// An inspector at the start of a file.
    pub fn new() -> Self {
        LayerInspector { prefix: [0; PEEK], prefix_fill: 0, mode: Mode::Sniffing, walker: TarWalker::new() }
    }

    /// Looks at the next bytes of the file. Returns how many bytes the file
    /// unpacks to beyond `data` itself (what gzip inflated); fails when that
    /// would exceed `budget`.
    pub fn feed(&mut self, data: &[u8], budget: u64) -> Result<u64, OverBudget> {
        if let Mode::Sniffing = self.mode {
            let n = (PEEK - self.prefix_fill).min(data.len());
            self.prefix[self.prefix_fill..self.prefix_fill + n].copy_from_slice(&data[..n]);
            self.prefix_fill += n;
            if self.prefix_fill < PEEK {
                return Ok(0);
            }
            self.decide();
            let prefix = self.prefix;
            let extra = self.consume(&prefix, budget)?;
            return Ok(extra + self.consume(&data[n..], budget.saturating_sub(extra))?);
        }
        self.consume(data, budget)
    }

    fn decide(&mut self) {
        self.mode = match compression::detect(&self.prefix[..self.prefix_fill]) {
            None => Mode::Plain,
            Some(Compression::Gzip) => Mode::Gzip(Box::new(GzipDecoder::new())),
            Some(other) => {
                Mode::Done(format!("it is {}-compressed, which this host does not unpack", other.name()).into())
            }
        };
    }

    fn consume(&mut self, data: &[u8], budget: u64) -> Result<u64, OverBudget> {
        match &mut self.mode {
            Mode::Sniffing | Mode::Done(_) => Ok(0),
            Mode::Plain => {
                if let Err(why) = self.walker.walk(data) {
                    self.mode = Mode::Done(why.into());
                }
                Ok(0)
            }
            Mode::Gzip(gz) => {
                let walker = &mut self.walker;
                let mut inflated = 0u64;
                let result = gz.feed(data, &mut |piece: &[u8]| {
                    inflated += piece.len() as u64;
                    if inflated > budget {
                        return Err(None);
                    }
                    walker.walk(piece).map_err(Some)
                });
                match result {
                    Ok(()) => Ok(inflated),
                    Err(GzipFailure::Sink(None)) => Err(OverBudget),
                    Err(GzipFailure::Sink(Some(why))) | Err(GzipFailure::Corrupt(why)) => {
                        self.mode = Mode::Done(why.into());
                        Ok(inflated)
                    }
                }
            }
        }
    }

    /// The file ended: the verdict.
    pub fn finish(mut self) -> LayerVerdict {
        if let Mode::Sniffing = self.mode {
            self.decide();
            let prefix = self.prefix;
            let fill = self.prefix_fill;
            // A file under 10 bytes: no budget concern.
            let _ = self.consume(&prefix[..fill], u64::MAX);
        }
        let compression = match &self.mode {
            Mode::Done(why) => return LayerVerdict::Refused(why.clone()),
            Mode::Gzip(gz) => {
                if let Err(why) = gz.finish() {
                    return LayerVerdict::Refused(why.into());
                }
                Some(Compression::Gzip)
            }
            Mode::Plain | Mode::Sniffing => None,
        };
        match self.walker.finish() {
            Ok(()) => LayerVerdict::Tar { compression },
            Err(why) => LayerVerdict::Refused(why.into()),
        }
    }
}

/// Follows the headers of a tar stream as Go's reader does, keeping nothing.
struct TarWalker {
    state: WalkState,
    hdr: [u8; 512],
    fill: usize,
    ext_buf: Vec<u8>,
    pending_size: Option<u64>,
    pending: [bool; 3],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalkState {
    Header,
    /// Collecting (PAX) or skipping (GNU names) an extension's data.
    Ext {
        kind: ExtKind,
        remaining: u64,
        pad: u64,
    },
    /// Skipping an entry's data and padding.
    Skip {
        remaining: u64,
    },
    /// One zero block seen; Go reads one more.
    AfterZero,
    /// The end marker was read: Go stops here, the rest is never looked at.
    Done,
}

impl TarWalker {
    fn new() -> Self {
        TarWalker {
            state: WalkState::Header,
            hdr: [0; 512],
            fill: 0,
            ext_buf: Vec::new(),
            pending_size: None,
            pending: [false; 3],
        }
    }

    fn walk(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            match self.state {
                WalkState::Done => return Ok(()),
                WalkState::Header | WalkState::AfterZero => {
                    let n = (512 - self.fill).min(data.len());
                    self.hdr[self.fill..self.fill + n].copy_from_slice(&data[..n]);
                    self.fill += n;
                    data = &data[n..];
                    if self.fill == 512 {
                        self.fill = 0;
                        self.on_block()?;
                    }
                }
                WalkState::Ext { kind, remaining, pad } => {
                    let n = usize::try_from(remaining).map_or(data.len(), |r| r.min(data.len()));
                    if matches!(kind, ExtKind::Pax | ExtKind::GlobalPax) {
                        self.ext_buf.extend_from_slice(&data[..n]);
                    }
                    data = &data[n..];
                    let remaining = remaining - n as u64;
                    if remaining > 0 {
                        self.state = WalkState::Ext { kind, remaining, pad };
                    } else {
                        self.on_ext_data(kind)?;
                        self.state = skip(pad);
                    }
                }
                WalkState::Skip { remaining } => {
                    let n = usize::try_from(remaining).map_or(data.len(), |r| r.min(data.len()));
                    data = &data[n..];
                    self.state = skip(remaining - n as u64);
                }
            }
        }
        Ok(())
    }

    fn on_block(&mut self) -> Result<(), String> {
        let zero = self.hdr.iter().all(|&b| b == 0);
        if self.state == WalkState::AfterZero {
            if !zero {
                return Err("its tar stream has a zero block followed by data".into());
            }
            self.state = WalkState::Done;
            return Ok(());
        }
        if zero {
            if self.pending.iter().any(|p| *p) {
                return Err("its tar stream ends right after an extended header".into());
            }
            self.state = WalkState::AfterZero;
            return Ok(());
        }
        let raw = tar::parse_header(&self.hdr).map_err(|e| format!("its tar stream is corrupt: {e}"))?;
        if raw.typeflag == b'S' {
            return Err("it holds a GNU sparse file".into());
        }
        if let Some(kind) = ExtKind::of(raw.typeflag) {
            let slot = match kind {
                ExtKind::Pax => Some(0),
                ExtKind::LongName => Some(1),
                ExtKind::LongLink => Some(2),
                ExtKind::GlobalPax => None,
            };
            match slot {
                Some(i) if self.pending[i] => return Err("an entry has two extended headers of one kind".into()),
                Some(i) => self.pending[i] = true,
                None if self.pending.iter().any(|p| *p) => {
                    return Err("a global header sits between an extended header and its entry".into());
                }
                None => {}
            }
            if raw.size > MAX_EXT_HEADER {
                return Err(format!("an extended header of {} bytes is over Docker's limit", raw.size));
            }
            self.ext_buf.clear();
            self.state = if raw.size == 0 {
                self.on_ext_data(kind)?;
                WalkState::Header
            } else {
                WalkState::Ext { kind, remaining: raw.size, pad: tar::padding(raw.size) }
            };
            return Ok(());
        }
        let size = self.pending_size.take().unwrap_or(raw.size);
        self.pending = [false; 3];
        let header_only = tar::is_header_only(raw.typeflag) || (raw.typeflag == 0 && raw.name.ends_with(b"/"));
        let data = if header_only { 0 } else { size };
        self.state = skip(data.saturating_add(tar::padding(data)));
        Ok(())
    }

    fn on_ext_data(&mut self, kind: ExtKind) -> Result<(), String> {
        if matches!(kind, ExtKind::Pax | ExtKind::GlobalPax) {
            let records = tar::parse_pax(&self.ext_buf).map_err(|e| format!("its tar stream has {e}"))?;
            let overrides = tar::pax_overrides(&records).map_err(|e| format!("its tar stream has a {e}"))?;
            if kind == ExtKind::Pax {
                self.pending_size = overrides.size;
            }
        }
        self.ext_buf = Vec::new();
        Ok(())
    }

    /// The stream ended: where Go would have stopped cleanly, or not.
    fn finish(&self) -> Result<(), String> {
        match self.state {
            WalkState::Done | WalkState::AfterZero if self.fill == 0 => Ok(()),
            WalkState::Header if self.fill == 0 && !self.pending.iter().any(|p| *p) => Ok(()),
            _ => Err("its tar stream is cut short".into()),
        }
    }
}

fn skip(remaining: u64) -> WalkState {
    if remaining == 0 { WalkState::Header } else { WalkState::Skip { remaining } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = ::tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn verdict(data: &[u8], chunk: usize) -> LayerVerdict {
        let mut i = LayerInspector::new();
        for c in data.chunks(chunk.max(1)) {
            i.feed(c, u64::MAX).expect("no budget");
        }
        i.finish()
    }

    #[test]
    fn plain_and_gzip_layers_pass() {
        let plain = layer(&[("bin/sh", b"#!"), ("etc/x", &[7; 3000])]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        for chunk in [1, 9, 512, 1 << 20] {
            assert_eq!(verdict(&plain, chunk), LayerVerdict::Tar { compression: None });
            assert_eq!(verdict(&gz, chunk), LayerVerdict::Tar { compression: Some(Compression::Gzip) });
        }
        assert_eq!(verdict(b"", 1), LayerVerdict::Tar { compression: None });
    }

    #[test]
    fn sparse_entries_and_foreign_compressions_are_refused() {
        let mut sparse = layer(&[("a", b"x")]);
        sparse[156] = b'S';
        sparse[148..156].copy_from_slice(b"        ");
        let sum: u32 = sparse[..512].iter().map(|&c| u32::from(c)).sum();
        sparse[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert!(matches!(verdict(&sparse, 100), LayerVerdict::Refused(w) if w.contains("sparse")));
        assert!(matches!(verdict(b"BZh91AY&SYxxxx", 3), LayerVerdict::Refused(w) if w.contains("bzip2")));
        let skippable = [0x5a, 0x2a, 0x4d, 0x18, 0, 0, 0, 0, 1, 2, 3];
        assert!(matches!(verdict(&skippable, 1), LayerVerdict::Refused(w) if w.contains("zstd")));
        assert!(matches!(verdict(b"1.0", 1), LayerVerdict::Refused(_)));
        let plain = layer(&[("a", &[1; 100])]);
        assert!(matches!(verdict(&plain[..700], 64), LayerVerdict::Refused(w) if w.contains("cut short")));
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_budget() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 8 << 20]).unwrap();
        let gz = gz.finish().unwrap();
        let mut i = LayerInspector::new();
        let mut over = false;
        for c in gz.chunks(4096) {
            if i.feed(c, 1 << 20).is_err() {
                over = true;
                break;
            }
        }
        assert!(over, "8 MiB of zeros inflated under a 1 MiB budget");
    }

    #[test]
    fn data_after_the_end_marker_is_never_read() {
        let mut t = layer(&[("a", b"x")]);
        t.extend_from_slice(&[0xff; 4096]);
        assert_eq!(verdict(&t, 77), LayerVerdict::Tar { compression: None });
    }
}
