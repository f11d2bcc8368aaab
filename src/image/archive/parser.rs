//! The outer tar of a `docker save` archive, parsed as it streams and
//! written anew: a push parser fed with the (decompressed) archive, whose
//! output is the archive Docker receives.

use std::collections::VecDeque;

use bytes::Bytes;

use super::compression;
use super::config;
use super::layer::{LayerInspector, LayerVerdict};
use super::manifest::{self, Manifest};
use super::tar::{self, BLOCK, ExtKind, MAX_EXT_HEADER, PaxOverrides};
use super::tree::{InsertError, NodeKind, Table};
use super::{ArchiveError, ArchiveLimits, ArchiveSummary, shown};

/// Deepest entry path accepted (docker-save archives use at most three levels).
const MAX_PATH_DEPTH: usize = 16;
/// Bounds for the size of one PAX or GNU long-name extension header.
const MIN_EXT_HEADER_LIMIT: u64 = 64 * 1024;
/// Padding and end-of-archive zeros.
static ZEROS: [u8; 1024] = [0; 1024];

/// What the parser expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a 512-byte header block.
    Header,
    /// Collecting the data of a PAX or GNU extension header.
    ExtData { kind: ExtKind, remaining: u64, pad: u64, start: u64 },
    /// The data of a regular file.
    Data { remaining: u64, pad: u64 },
    /// Skipping the padding after an entry's data.
    Padding { remaining: u64 },
    /// One zero block seen; the second must follow.
    EndMarker { seen: u64 },
    /// Both zero blocks seen; only zeros may follow.
    Trailer,
}

/// Extension headers seen since the last real entry.
#[derive(Debug, Default)]
struct PendingExt {
    pax: Option<PaxOverrides>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl PendingExt {
    fn is_empty(&self) -> bool {
        self.pax.is_none() && self.long_name.is_none() && self.long_link.is_none()
    }
}

/// What became of a regular file of the archive.
#[derive(Debug)]
enum Fate {
    /// Sent to Docker as it arrived.
    Sent,
    /// A JSON object held back: it may be the config.
    Held(Bytes),
    /// Metadata the host replaces (`manifest.json`, `index.json`, ...) or
    /// JSON that cannot be a config; never sent.
    Dropped,
}

/// A regular file of the archive.
#[derive(Debug)]
struct FileRecord {
    path: Box<str>,
    fate: Fate,
    layer: Option<LayerVerdict>,
}

/// How the current file's data is handled.
enum Sink {
    /// Large: header sent, data passed on as it comes.
    Stream(Box<LayerInspector>),
    /// Small: kept whole, then held (a JSON object) or sent.
    Small(Vec<u8>),
    /// Top-level metadata: kept whole and parsed.
    Metadata(Vec<u8>, Role),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `manifest.json`: read, replaced by the host's.
    Manifest,
    /// `index.json`, `oci-layout`, `repositories`: a JSON object, dropped.
    Discard,
    /// Another top-level `*.json`: valid JSON; held when an object.
    TopJson,
}

struct Current {
    file: usize,
    sink: Sink,
    /// Zeros owed after the data, when the host sends it.
    pad: u64,
}

/// The parser.
pub(super) struct Parser {
    limits: ArchiveLimits,
    ext_limit: u64,

    out: VecDeque<Bytes>,
    output_bytes: u64,

    pos: u64,
    state: State,
    hdr: [u8; 512],
    hdr_fill: usize,
    ext_buf: Vec<u8>,
    ext: PendingExt,
    current: Option<Current>,
    entries: u64,

    table: Table,
    files: Vec<FileRecord>,
    manifest: Option<Manifest>,
    held_bytes: u64,
    unpacked: u64,
}

impl Parser {
    pub fn new(limits: ArchiveLimits) -> Self {
        let wanted = (limits.max_path_len as u64).saturating_mul(2).saturating_add(4096);
        let ext_limit = wanted.clamp(MIN_EXT_HEADER_LIMIT, MAX_EXT_HEADER);
        Parser {
            table: Table::new(limits.max_name_bytes),
            limits,
            ext_limit,
            out: VecDeque::new(),
            output_bytes: 0,
            pos: 0,
            state: State::Header,
            hdr: [0; 512],
            hdr_fill: 0,
            ext_buf: Vec::new(),
            ext: PendingExt::default(),
            current: None,
            entries: 0,
            files: Vec::new(),
            manifest: None,
            held_bytes: 0,
            unpacked: 0,
        }
    }

    /// The next piece of output, if any.
    pub fn pop(&mut self) -> Option<Bytes> {
        self.out.pop_front()
    }

    /// Drops output not yet taken (after an error).
    pub fn discard_output(&mut self) {
        self.out.clear();
    }

    fn emit(&mut self, bytes: Bytes) -> Result<(), ArchiveError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.output_bytes == 0 && compression::detect(&bytes[..bytes.len().min(compression::PEEK)]).is_some() {
            // Docker would decompress the host's own archive: never.
            return Err(ArchiveError::BadName {
                name: shown(&String::from_utf8_lossy(&bytes[..bytes.len().min(100)])),
                reason: "as the first name of the archive it would read as compressed data",
            });
        }
        self.output_bytes += bytes.len() as u64;
        self.out.push_back(bytes);
        Ok(())
    }

    /// Sends a whole regular file: header, data, padding.
    fn emit_file(&mut self, path: &str, data: Bytes) -> Result<(), ArchiveError> {
        let len = data.len() as u64;
        self.emit(Bytes::from(tar::file_header(path, len)))?;
        self.emit(data)?;
        self.emit(Bytes::from_static(&ZEROS[..tar::padding(len) as usize]))
    }

    fn count_unpacked(&mut self, n: u64) -> Result<(), ArchiveError> {
        self.unpacked = self.unpacked.saturating_add(n);
        if self.unpacked > self.limits.max_unpacked_bytes {
            return Err(ArchiveError::TooLarge { max: self.limits.max_unpacked_bytes });
        }
        Ok(())
    }

    fn unpacked_budget(&self) -> u64 {
        self.limits.max_unpacked_bytes.saturating_sub(self.unpacked)
    }

    // ----- input ----------------------------------------------------------

    /// Parses one chunk of the (uncompressed) archive.
    pub fn feed(&mut self, chunk: Bytes) -> Result<(), ArchiveError> {
        let mut at = 0;
        while at < chunk.len() {
            at += self.step(&chunk, at)?;
        }
        Ok(())
    }

    /// Consumes a prefix of `chunk[at..]` according to the current state.
    fn step(&mut self, chunk: &Bytes, at: usize) -> Result<usize, ArchiveError> {
        let data = &chunk[at..];
        match self.state {
            State::Header => {
                let n = (512 - self.hdr_fill).min(data.len());
                self.hdr[self.hdr_fill..self.hdr_fill + n].copy_from_slice(&data[..n]);
                self.hdr_fill += n;
                self.pos += n as u64;
                if self.hdr_fill == 512 {
                    self.hdr_fill = 0;
                    self.on_header_block()?;
                }
                Ok(n)
            }
            State::ExtData { kind, remaining, pad, start } => {
                let n = take(remaining, data.len());
                self.ext_buf.extend_from_slice(&data[..n]);
                self.pos += n as u64;
                let remaining = remaining - n as u64;
                if remaining == 0 {
                    self.on_ext_data(kind, start)?;
                    self.state = padding_state(pad);
                } else {
                    self.state = State::ExtData { kind, remaining, pad, start };
                }
                Ok(n)
            }
            State::Data { remaining, pad } => {
                let n = take(remaining, data.len());
                self.on_file_data(chunk.slice(at..at + n))?;
                self.pos += n as u64;
                let remaining = remaining - n as u64;
                if remaining == 0 {
                    self.finish_file()?;
                    self.state = padding_state(pad);
                } else {
                    self.state = State::Data { remaining, pad };
                }
                Ok(n)
            }
            State::Padding { remaining } => {
                let n = take(remaining, data.len());
                self.pos += n as u64;
                self.state = padding_state(remaining - n as u64);
                Ok(n)
            }
            State::EndMarker { seen } => {
                let n = take(BLOCK - seen, data.len());
                if let Some(i) = data[..n].iter().position(|&b| b != 0) {
                    return Err(ArchiveError::Corrupt {
                        offset: self.pos + i as u64,
                        reason: "a single zero block is followed by data".into(),
                    });
                }
                self.pos += n as u64;
                let seen = seen + n as u64;
                self.state = if seen == BLOCK { State::Trailer } else { State::EndMarker { seen } };
                Ok(n)
            }
            State::Trailer => {
                if let Some(i) = data.iter().position(|&b| b != 0) {
                    return Err(ArchiveError::TrailingData { offset: self.pos + i as u64 });
                }
                self.pos += data.len() as u64;
                Ok(data.len())
            }
        }
    }

    /// A complete 512-byte block arrived in `Header` state.
    fn on_header_block(&mut self) -> Result<(), ArchiveError> {
        let start = self.pos - BLOCK;
        if start == 0
            && let Some(format) = compression::detect(&self.hdr[..compression::PEEK])
        {
            return Err(ArchiveError::Compressed { format });
        }
        if self.hdr.iter().all(|&b| b == 0) {
            if !self.ext.is_empty() {
                return Err(ArchiveError::Corrupt {
                    offset: start,
                    reason: "an extended header is followed by the end-of-archive marker".into(),
                });
            }
            self.state = State::EndMarker { seen: 0 };
            return Ok(());
        }
        let raw = tar::parse_header(&self.hdr).map_err(|reason| {
            if start == 0 {
                ArchiveError::NotTar { offset: 0, reason: reason.clone() }
            } else {
                ArchiveError::Corrupt { offset: start, reason }
            }
        })?;
        match ExtKind::of(raw.typeflag) {
            Some(kind) => self.on_ext_header(kind, raw.size, start),
            None => self.on_entry(raw, start),
        }
    }

    /// Header of a PAX or GNU extension.
    fn on_ext_header(&mut self, kind: ExtKind, size: u64, start: u64) -> Result<(), ArchiveError> {
        let corrupt = |reason: &str| ArchiveError::Corrupt { offset: start, reason: reason.into() };
        let duplicate = match kind {
            ExtKind::GlobalPax => !self.ext.is_empty(),
            ExtKind::Pax => self.ext.pax.is_some(),
            ExtKind::LongName => self.ext.long_name.is_some(),
            ExtKind::LongLink => self.ext.long_link.is_some(),
        };
        if duplicate {
            return Err(corrupt(
                "an entry has two extended headers of the same kind, or a global header sits between an extended header and its entry",
            ));
        }
        if size > self.ext_limit {
            return Err(ArchiveError::Corrupt {
                offset: start,
                reason: format!(
                    "an extended header of {size} bytes is larger than the limit of {} bytes",
                    self.ext_limit
                ),
            });
        }
        self.ext_buf.clear();
        if size == 0 {
            self.on_ext_data(kind, start)?;
            self.state = State::Header;
        } else {
            self.state = State::ExtData { kind, remaining: size, pad: tar::padding(size), start };
        }
        Ok(())
    }

    /// The data of a PAX or GNU extension is complete.
    fn on_ext_data(&mut self, kind: ExtKind, start: u64) -> Result<(), ArchiveError> {
        let corrupt = |reason: String| ArchiveError::Corrupt { offset: start, reason };
        match kind {
            ExtKind::Pax | ExtKind::GlobalPax => {
                let records = tar::parse_pax(&self.ext_buf).map_err(corrupt)?;
                let overrides = tar::pax_overrides(&records).map_err(corrupt)?;
                // Go (and so Docker) ignores global headers; so does the host.
                if kind == ExtKind::Pax {
                    self.ext.pax = Some(overrides);
                }
            }
            ExtKind::LongName | ExtKind::LongLink => {
                let value = tar::parse_string(&self.ext_buf);
                if self.ext_buf[value.len()..].iter().any(|&b| b != 0) {
                    return Err(corrupt("a GNU long name contains a NUL byte".into()));
                }
                if value.is_empty() {
                    return Err(corrupt("a GNU long name is empty".into()));
                }
                let value = value.to_vec();
                if kind == ExtKind::LongName {
                    self.ext.long_name = Some(value);
                } else {
                    self.ext.long_link = Some(value);
                }
            }
        }
        self.ext_buf = Vec::new();
        Ok(())
    }

    /// Header of a real entry (after its extension headers).
    fn on_entry(&mut self, raw: tar::RawHeader, start: u64) -> Result<(), ArchiveError> {
        let ext = std::mem::take(&mut self.ext);
        let mut name = raw.name;
        let mut link = raw.linkname;
        let mut size = raw.size;
        if let Some(pax) = ext.pax {
            if let Some(v) = pax.path {
                name = v;
            }
            if let Some(v) = pax.linkpath {
                link = v;
            }
            if let Some(v) = pax.size {
                size = v;
            }
        }
        if let Some(v) = ext.long_name {
            name = v;
        }
        if let Some(v) = ext.long_link {
            link = v;
        }
        let typeflag = match raw.typeflag {
            0 if name.ends_with(b"/") => b'5',
            0 => b'0',
            t => t,
        };

        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries { max: self.limits.max_entries });
        }

        let name = utf8_name(name)?;
        let comps = self.components(&name)?;
        let path = comps.join("/");
        if tar::is_header_only(typeflag) && size != 0 {
            return Err(ArchiveError::Corrupt {
                offset: start,
                reason: format!("entry {:?} of type {:?} has a non-zero size", shown(&name), char::from(typeflag)),
            });
        }
        if comps.is_empty() && typeflag != b'5' {
            // Only the archive root itself ("./") may have an empty name.
            return Err(ArchiveError::BadName { name: shown(&name), reason: "the name is empty" });
        }
        let metadata = comps.len() == 1 && is_metadata_name(&path);
        match typeflag {
            b'0' => return self.on_regular_file(&comps, path, size, metadata),
            _ if metadata => return Err(ArchiveError::MetadataNotRegular { name: path }),
            b'5' => {
                if !comps.is_empty() {
                    self.insert(&comps, &name, NodeKind::Dir)?;
                }
            }
            b'1' => self.on_hard_link(&comps, &name, link)?,
            b'2' => self.on_symlink(&comps, &name, link)?,
            b'3' => return Err(ArchiveError::DeviceNode { name: shown(&name), kind: "character device" }),
            b'4' => return Err(ArchiveError::DeviceNode { name: shown(&name), kind: "block device" }),
            b'6' => return Err(ArchiveError::Fifo { name: shown(&name) }),
            other => {
                return Err(ArchiveError::UnsupportedType { name: shown(&name), typeflag: char::from(other) });
            }
        }
        self.state = State::Header;
        Ok(())
    }

    fn on_regular_file(&mut self, comps: &[&str], path: String, size: u64, metadata: bool) -> Result<(), ArchiveError> {
        if size > self.unpacked_budget() {
            return Err(ArchiveError::TooLarge { max: self.limits.max_unpacked_bytes });
        }
        let max_json = self.limits.max_json_bytes;
        let role = metadata.then_some(match path.as_str() {
            "manifest.json" => Role::Manifest,
            "index.json" | "oci-layout" | "repositories" => Role::Discard,
            _ => Role::TopJson,
        });
        if role.is_some() && size > max_json {
            return Err(ArchiveError::JsonTooLarge { name: path, size, max: max_json });
        }
        let file = self.files.len();
        self.insert(comps, &path, NodeKind::File(file))?;
        self.table
            .charge(path.len() as u64)
            .map_err(|_| ArchiveError::TooManyNames { max: self.limits.max_name_bytes })?;
        let capacity = usize::try_from(size).unwrap_or(0);
        let sink = match role {
            Some(role) => Sink::Metadata(Vec::with_capacity(capacity), role),
            None if size <= max_json => Sink::Small(Vec::with_capacity(capacity)),
            None => {
                self.emit(Bytes::from(tar::file_header(&path, size)))?;
                Sink::Stream(Box::new(LayerInspector::new()))
            }
        };
        self.files.push(FileRecord { path: path.into(), fate: Fate::Dropped, layer: None });
        self.current = Some(Current { file, sink, pad: tar::padding(size) });
        if size == 0 {
            self.finish_file()?;
            self.state = State::Header;
        } else {
            self.state = State::Data { remaining: size, pad: tar::padding(size) };
        }
        Ok(())
    }

    fn on_file_data(&mut self, data: Bytes) -> Result<(), ArchiveError> {
        let Some(current) = self.current.as_mut() else {
            return Ok(());
        };
        let budget = self.limits.max_unpacked_bytes.saturating_sub(self.unpacked);
        let mut inflated = 0;
        let mut stream = None;
        match &mut current.sink {
            Sink::Stream(inspector) => {
                inflated = inspector
                    .feed(&data, budget)
                    .map_err(|_| ArchiveError::TooLarge { max: self.limits.max_unpacked_bytes })?;
                stream = Some(data.clone());
            }
            Sink::Small(buf) | Sink::Metadata(buf, _) => buf.extend_from_slice(&data),
        }
        if !matches!(current.sink, Sink::Metadata(..)) {
            self.count_unpacked(data.len() as u64 + inflated)?;
        }
        if let Some(bytes) = stream {
            self.emit(bytes)?;
        }
        Ok(())
    }

    /// The data of the current regular file is complete.
    fn finish_file(&mut self) -> Result<(), ArchiveError> {
        let Some(current) = self.current.take() else {
            return Ok(());
        };
        let path = self.files[current.file].path.clone();
        let (fate, layer) = match current.sink {
            Sink::Stream(inspector) => {
                self.emit(Bytes::from_static(&ZEROS[..current.pad as usize]))?;
                (Fate::Sent, Some(inspector.finish()))
            }
            Sink::Small(buf) => {
                let layer = self.inspect_whole(&buf)?;
                if is_json_object(&buf) {
                    (self.hold(buf)?, Some(layer))
                } else {
                    self.emit_file(&path, Bytes::from(buf))?;
                    (Fate::Sent, Some(layer))
                }
            }
            Sink::Metadata(buf, role) => self.finish_metadata(&path, buf, role)?,
        };
        let record = &mut self.files[current.file];
        record.fate = fate;
        record.layer = layer;
        Ok(())
    }

    fn finish_metadata(
        &mut self,
        path: &str,
        buf: Vec<u8>,
        role: Role,
    ) -> Result<(Fate, Option<LayerVerdict>), ArchiveError> {
        let invalid = |reason: String| ArchiveError::InvalidJson { name: path.to_string(), reason };
        match role {
            Role::Manifest => {
                self.manifest = Some(manifest::parse(&buf)?);
                Ok((Fate::Dropped, None))
            }
            Role::Discard => {
                serde_json::from_slice::<serde::de::IgnoredAny>(&buf).map_err(|e| invalid(e.to_string()))?;
                if !starts_object(&buf) {
                    return Err(invalid("it is not a JSON object".into()));
                }
                Ok((Fate::Dropped, None))
            }
            Role::TopJson => {
                serde_json::from_slice::<serde::de::IgnoredAny>(&buf).map_err(|e| invalid(e.to_string()))?;
                if !starts_object(&buf) {
                    return Ok((Fate::Dropped, None));
                }
                let layer = self.inspect_whole(&buf)?;
                Ok((self.hold(buf)?, Some(layer)))
            }
        }
    }

    /// The layer verdict of a file kept whole (its bytes are already counted).
    fn inspect_whole(&mut self, buf: &[u8]) -> Result<LayerVerdict, ArchiveError> {
        let mut inspector = LayerInspector::new();
        let inflated = inspector
            .feed(buf, self.unpacked_budget())
            .map_err(|_| ArchiveError::TooLarge { max: self.limits.max_unpacked_bytes })?;
        self.count_unpacked(inflated)?;
        Ok(inspector.finish())
    }

    fn hold(&mut self, buf: Vec<u8>) -> Result<Fate, ArchiveError> {
        self.held_bytes += buf.len() as u64;
        if self.held_bytes > self.limits.max_held_json_bytes {
            return Err(ArchiveError::TooMuchJson { max: self.limits.max_held_json_bytes });
        }
        Ok(Fate::Held(Bytes::from(buf)))
    }

    fn on_hard_link(&mut self, comps: &[&str], name: &str, link: Vec<u8>) -> Result<(), ArchiveError> {
        let target = self.link_target(name, link)?;
        let escapes = || ArchiveError::HardLinkEscapes { name: shown(name), target: shown(&target) };
        if target.starts_with('/') {
            return Err(escapes());
        }
        let mut target_comps = Vec::new();
        for c in target.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(escapes()),
                c => target_comps.push(c),
            }
        }
        let Some(NodeKind::File(file)) = self.table.lookup(target_comps.iter().copied()).cloned() else {
            return Err(ArchiveError::HardLinkMissing { name: shown(name), target: shown(&target) });
        };
        self.insert(comps, name, NodeKind::File(file))
    }

    fn on_symlink(&mut self, comps: &[&str], name: &str, link: Vec<u8>) -> Result<(), ArchiveError> {
        if comps.len() <= 1 {
            return Err(ArchiveError::RootSymlink { name: shown(name) });
        }
        let target = self.link_target(name, link)?;
        let escapes = || ArchiveError::SymlinkEscapes { name: shown(name), target: shown(&target) };
        if target.starts_with('/') {
            return Err(escapes());
        }
        let mut resolved: Vec<&str> = comps[..comps.len() - 1].to_vec();
        for c in target.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    if resolved.pop().is_none() {
                        return Err(escapes());
                    }
                }
                c => resolved.push(c),
            }
        }
        if resolved.is_empty() {
            return Err(ArchiveError::SymlinkDangling { name: shown(name), target: shown(&target) });
        }
        let resolved = resolved.join("/");
        self.table
            .charge(resolved.len() as u64)
            .map_err(|_| ArchiveError::TooManyNames { max: self.limits.max_name_bytes })?;
        self.insert(comps, name, NodeKind::Symlink(resolved.into()))
    }

    /// Decodes and bounds a link target.
    fn link_target(&self, name: &str, link: Vec<u8>) -> Result<String, ArchiveError> {
        if link.len() > self.limits.max_path_len {
            return Err(ArchiveError::PathTooLong {
                name: shown(&String::from_utf8_lossy(&link)),
                len: link.len(),
                max: self.limits.max_path_len,
            });
        }
        let target = String::from_utf8(link).map_err(|e| ArchiveError::BadName {
            name: shown(&String::from_utf8_lossy(e.as_bytes())),
            reason: "the link target is not valid UTF-8",
        })?;
        if target.contains('\0') {
            return Err(ArchiveError::BadName { name: shown(&target), reason: "the link target contains a NUL byte" });
        }
        if target.is_empty() {
            return Err(ArchiveError::BadName { name: shown(name), reason: "the link target is empty" });
        }
        Ok(target)
    }

    /// Splits and checks an entry name; returns its normalised components.
    fn components<'a>(&self, name: &'a str) -> Result<Vec<&'a str>, ArchiveError> {
        if name.len() > self.limits.max_path_len {
            return Err(ArchiveError::PathTooLong {
                name: shown(name),
                len: name.len(),
                max: self.limits.max_path_len,
            });
        }
        if name.contains('\0') {
            return Err(ArchiveError::BadName { name: shown(name), reason: "it contains a NUL byte" });
        }
        if name.starts_with('/') {
            return Err(ArchiveError::AbsolutePath { name: shown(name) });
        }
        let mut comps = Vec::new();
        for c in name.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(ArchiveError::PathEscapes { name: shown(name) }),
                c if c.starts_with(".wh.") => {
                    return Err(ArchiveError::BadName {
                        name: shown(name),
                        reason: "names starting with \".wh.\" are reserved for layer whiteouts",
                    });
                }
                c => comps.push(c),
            }
        }
        if comps.len() > MAX_PATH_DEPTH {
            return Err(ArchiveError::PathTooDeep { name: shown(name), max: MAX_PATH_DEPTH });
        }
        Ok(comps)
    }

    fn insert(&mut self, comps: &[&str], name: &str, kind: NodeKind) -> Result<(), ArchiveError> {
        self.table.insert(comps, kind).map_err(|e| match e {
            InsertError::Duplicate => ArchiveError::Duplicate { name: shown(&comps.join("/")) },
            InsertError::NotADirectory(depth) => {
                ArchiveError::NotADirectory { name: shown(name), parent: shown(&comps[..depth].join("/")) }
            }
            InsertError::OverBudget => ArchiveError::TooManyNames { max: self.limits.max_name_bytes },
        })
    }

    // ----- the end ----------------------------------------------------------

    /// The input ended: check the end of the archive and the manifest, then
    /// send the config, the host's manifest and the end-of-archive marker.
    pub fn finish(
        &mut self,
        input_bytes: u64,
        compression: Option<super::Compression>,
    ) -> Result<ArchiveSummary, ArchiveError> {
        self.check_ended()?;
        if self.entries == 0 {
            return Err(ArchiveError::Empty);
        }
        let manifest = self.manifest.take().ok_or(ArchiveError::ManifestMissing)?;

        let config_file = self.resolve("config", &manifest.config)?;
        let config_bytes = match &self.files[config_file].fate {
            Fate::Held(bytes) => bytes.clone(),
            Fate::Sent => {
                return Err(ArchiveError::BadConfig {
                    path: shown(&manifest.config),
                    reason: format!("it is not a JSON object of at most {} bytes", self.limits.max_json_bytes),
                });
            }
            Fate::Dropped => {
                return Err(ArchiveError::BlobNotRegular { what: "config", path: shown(&manifest.config) });
            }
        };
        let config = config::prepare(&manifest.config, &config_bytes)?;
        let config_name = format!("{}.json", &config.image_id["sha256:".len()..]);

        let mut layers = Vec::with_capacity(manifest.layers.len());
        let mut held_layers: Vec<usize> = Vec::new();
        for path in &manifest.layers {
            let file = self.resolve("layer", path)?;
            let record = &self.files[file];
            match &record.layer {
                Some(LayerVerdict::Tar { .. }) => {}
                Some(LayerVerdict::Refused(why)) => {
                    return Err(ArchiveError::BadLayer { path: shown(path), reason: why.to_string() });
                }
                None => return Err(ArchiveError::BlobNotRegular { what: "layer", path: shown(path) }),
            }
            match record.fate {
                Fate::Sent => {}
                Fate::Held(_) => {
                    if !held_layers.contains(&file) {
                        held_layers.push(file);
                    }
                }
                Fate::Dropped => return Err(ArchiveError::BlobNotRegular { what: "layer", path: shown(path) }),
            }
            layers.push(record.path.to_string());
        }

        for file in held_layers {
            let Fate::Held(bytes) = &self.files[file].fate else { continue };
            let (path, bytes) = (self.files[file].path.clone(), bytes.clone());
            if *path == config_name {
                if bytes.as_ref() == config.bytes.as_slice() {
                    continue; // the same file, sent once
                }
                return Err(ArchiveError::BadConfig {
                    path: shown(&manifest.config),
                    reason: "a layer has the name the config is sent under".into(),
                });
            }
            self.emit_file(&path, bytes)?;
        }
        self.emit_file(&config_name, Bytes::from(config.bytes))?;
        let manifest_json = manifest::canonical(&config_name, &layers);
        self.emit_file("manifest.json", Bytes::from(manifest_json))?;
        self.emit(Bytes::from_static(&ZEROS))?;
        Ok(ArchiveSummary {
            image_id: config.image_id,
            source_config_digest: config.source_digest,
            layers,
            dropped_tags: manifest.dropped_tags,
            removed_volumes: config.removed_volumes,
            compression,
            input_bytes,
            output_bytes: self.output_bytes,
            unpacked_bytes: self.unpacked,
        })
    }

    /// The parse state at the end of the input is the end of a tar.
    fn check_ended(&self) -> Result<(), ArchiveError> {
        match self.state {
            State::Trailer => Ok(()),
            _ if self.pos == 0 => Err(ArchiveError::Empty),
            State::Header if self.hdr_fill > 0 && self.pos < BLOCK => {
                if let Some(format) = compression::detect(&self.hdr[..self.hdr_fill.min(compression::PEEK)]) {
                    return Err(ArchiveError::Compressed { format });
                }
                Err(ArchiveError::NotTar {
                    offset: self.pos,
                    reason: "the input ends inside the first 512-byte header".into(),
                })
            }
            State::Header if self.hdr_fill > 0 => Err(ArchiveError::Truncated {
                detail: format!("the stream ends inside the header at byte {}", self.pos - self.hdr_fill as u64),
            }),
            State::Header if !self.ext.is_empty() => Err(ArchiveError::Truncated {
                detail: "the stream ends after an extended header, before its entry".into(),
            }),
            State::Header => Err(ArchiveError::Truncated {
                detail: format!("the end-of-archive marker (two zero blocks) is missing after byte {}", self.pos),
            }),
            State::ExtData { start, .. } => Err(ArchiveError::Truncated {
                detail: format!("the stream ends inside the extended header at byte {start}"),
            }),
            State::Data { remaining, .. } => {
                let name = self.current.as_ref().map_or("", |c| &*self.files[c.file].path);
                Err(ArchiveError::Truncated {
                    detail: format!("entry {:?} is cut short ({remaining} bytes missing)", shown(name)),
                })
            }
            State::Padding { .. } => Err(ArchiveError::Truncated {
                detail: format!("the stream ends inside the padding before byte {}", self.pos),
            }),
            State::EndMarker { .. } => Err(ArchiveError::Truncated {
                detail: "the end-of-archive marker is incomplete (one zero block instead of two)".into(),
            }),
        }
    }

    /// The file a manifest path names, following links.
    fn resolve(&self, what: &'static str, path: &str) -> Result<usize, ArchiveError> {
        let node =
            self.table.lookup(path.split('/')).ok_or_else(|| ArchiveError::MissingBlob { what, path: shown(path) })?;
        match self.table.resolve_file(path) {
            Some(file) => Ok(file),
            None => match node {
                NodeKind::Symlink(target) => {
                    Err(ArchiveError::SymlinkDangling { name: shown(path), target: shown(target) })
                }
                _ => Err(ArchiveError::BlobNotRegular { what, path: shown(path) }),
            },
        }
    }
}

fn padding_state(pad: u64) -> State {
    if pad == 0 { State::Header } else { State::Padding { remaining: pad } }
}

/// `min(remaining, available)` as a slice length.
fn take(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

fn utf8_name(name: Vec<u8>) -> Result<String, ArchiveError> {
    String::from_utf8(name).map_err(|e| ArchiveError::BadName {
        name: shown(&String::from_utf8_lossy(e.as_bytes())),
        reason: "it is not valid UTF-8",
    })
}

/// Top-level names whose content must be JSON.
fn is_metadata_name(path: &str) -> bool {
    matches!(path, "manifest.json" | "index.json" | "repositories" | "oci-layout") || path.ends_with(".json")
}

fn starts_object(buf: &[u8]) -> bool {
    buf.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Whether a small file parses as a JSON object (so may be a config).
fn is_json_object(buf: &[u8]) -> bool {
    starts_object(buf) && serde_json::from_slice::<serde::de::IgnoredAny>(buf).is_ok()
}
