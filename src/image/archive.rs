//! Streaming validation of `docker save` archives.
//!
//! Images reach nova-docker from Glance as `docker save` tarballs written by
//! tenants, so their bytes cannot be trusted. They are streamed (never buffered
//! whole, never spooled to disk) into Docker's `POST /images/load`. [`validate`]
//! sits in that pipe: it passes the bytes through unchanged while parsing the
//! outer tar archive, and turns the first thing that is not a sane docker-save
//! archive into an [`ArchiveError`] before Docker receives the offending bytes.
//!
//! What is checked:
//! * the tar structure itself (header checksums, numeric fields, sizes,
//!   padding, PAX `x`/`g` and GNU `L`/`K` extension headers, the two zero
//!   blocks at the end, nothing but zeros after them). The parser follows Go's
//!   `archive/tar` (which Docker uses) closely and refuses the corner cases
//!   where the two could disagree about where an entry starts or ends
//!   (non-zero sizes on header-only entries, star headers, GNU sparse files,
//!   the pre-Go-1.8 GNU prefix quirk);
//! * entry names (no absolute paths, no `..`, no NUL, no whiteout names,
//!   bounded length and depth, no duplicates, nothing below a non-directory);
//! * entry types (regular files and directories; hard links only to earlier
//!   regular files; relative symlinks below the root that stay inside the
//!   archive and end at a regular file; no devices, FIFOs or exotic types);
//! * the JSON metadata at the top level (`manifest.json`, `index.json`,
//!   `repositories`, `oci-layout`, `*.json`) and the image configs named by
//!   the manifest: bounded size, valid JSON, and a well-formed manifest;
//! * at the end of the stream, that the manifest names at least one image and
//!   that every config and layer it lists exists as a regular file.
//!
//! Layer tarballs are not unpacked: Docker validates their contents itself.
//!
//! Holding back: bytes are released only once the entry they belong to is
//! known to be good. Headers (with their extension headers) and strict JSON
//! files are held until validated; layer data flows through at once. The last
//! byte of the last entry and the whole end-of-archive marker are held until
//! the final checks pass. Docker's tar reader accepts an archive whose stream
//! simply stops at an entry boundary, so holding back only the end marker
//! would not stop a consumer that closes its request body cleanly on error;
//! with the last entry cut short by one byte, Docker always sees a truncated
//! archive unless validation succeeded.
//!
//! Memory: one node per path component in the name table (bounded by
//! `max_entries` and a depth limit of 16 components), plus at most one JSON document
//! (`max_json_bytes`) and one extension header (at most 1 MiB) at a time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::oneshot;

/// Size of a tar block.
const BLOCK: u64 = 512;
/// Deepest entry path accepted (docker-save archives use at most three levels).
const MAX_PATH_DEPTH: usize = 16;
/// Longest symlink chain followed when resolving manifest references.
const MAX_SYMLINK_HOPS: usize = 8;
/// Bounds for the size of one PAX or GNU long-name extension header.
const MIN_EXT_HEADER_LIMIT: u64 = 64 * 1024;
const MAX_EXT_HEADER_LIMIT: u64 = 1 << 20;
/// Entry names longer than this are shortened in error messages.
const SHOWN_NAME_MAX: usize = 256;
/// Source of the end-of-archive zero bytes, which are counted rather than kept.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Limits for validation.
///
/// They bound the memory and work a single (possibly hostile) archive can
/// cause: JSON documents are buffered whole to be parsed, and every entry
/// name is remembered until the end of the stream to check the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Largest accepted size of each JSON document: `manifest.json`,
    /// `index.json`, `repositories`, `oci-layout`, top-level `*.json` and the
    /// image configs named by the manifest.
    pub max_json_bytes: u64,
    /// Largest accepted number of entries (headers, not counting PAX/GNU
    /// extension headers) in the archive.
    pub max_entries: u64,
    /// Longest accepted entry name or link target, in bytes.
    pub max_path_len: usize,
}

impl Default for ArchiveLimits {
    /// 1 MiB per JSON document, 100 000 entries, 4096-byte paths: far above
    /// what `docker save` produces, far below what would hurt the host.
    fn default() -> Self {
        Self { max_json_bytes: 1024 * 1024, max_entries: 100_000, max_path_len: 4096 }
    }
}

/// What was learned from a valid archive (available after the stream ended).
///
/// Lets the caller record what Docker is about to load without parsing the
/// archive a second time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArchiveSummary {
    /// Every tag listed in the manifest, over all images, without duplicates.
    pub repo_tags: Vec<String>,
    /// `sha256:<hex>` of the first image's config, when its path in the
    /// manifest is `blobs/sha256/<hex>` or `<hex>.json`.
    pub config_digest: Option<String>,
    /// The first image's layer paths as listed in the manifest (normalised).
    pub layers: Vec<String>,
    /// Number of bytes in the archive.
    pub total_bytes: u64,
}

/// Why an image archive was refused.
///
/// The messages are meant for operators and tenants: they name the entry and
/// the rule it broke. Entry names are quoted and shortened when very long.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The input stream ended before any byte arrived.
    #[error("image archive is empty")]
    Empty,
    /// The first header is not a tar header.
    #[error("image archive is not a tar file ({reason} at byte {offset})")]
    NotTar {
        /// Offset of the offending header.
        offset: u64,
        /// What was wrong with it.
        reason: String,
    },
    /// The input is a compressed file; only plain tar is accepted.
    #[error("image archive is {format}-compressed; only the uncompressed output of `docker save` is accepted")]
    Compressed {
        /// Compression format recognised from the magic bytes.
        format: &'static str,
    },
    /// A later header or the end-of-archive marker is malformed.
    #[error("image archive is corrupt: {reason} at byte {offset}")]
    Corrupt {
        /// Offset of the offending header or byte.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// The stream ended inside an entry or before the end-of-archive marker.
    #[error("truncated archive: {detail}")]
    Truncated {
        /// Where the archive was cut.
        detail: String,
    },
    /// Non-zero bytes follow the end-of-archive marker.
    #[error("image archive has unexpected data after its end-of-archive marker (byte {offset})")]
    TrailingData {
        /// Offset of the first non-zero byte.
        offset: u64,
    },
    /// An entry name contains a `..` component.
    #[error("image archive entry {name:?} escapes the archive")]
    PathEscapes {
        /// The entry name.
        name: String,
    },
    /// An entry name is absolute.
    #[error("image archive entry {name:?} has an absolute path")]
    AbsolutePath {
        /// The entry name.
        name: String,
    },
    /// An entry name is unusable for another reason.
    #[error("image archive entry name {name:?} is invalid: {reason}")]
    BadName {
        /// The entry name (lossily decoded).
        name: String,
        /// The rule it broke.
        reason: &'static str,
    },
    /// An entry name or link target is longer than `max_path_len`.
    #[error("image archive entry name {name:?} is {len} bytes long, more than the limit of {max}")]
    PathTooLong {
        /// The (shortened) name.
        name: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An entry name has more than 16 components.
    #[error("image archive entry {name:?} is nested more than {max} levels deep")]
    PathTooDeep {
        /// The entry name.
        name: String,
        /// The limit.
        max: usize,
    },
    /// A hard link target is absolute or contains `..`.
    #[error("hard link {name:?} points outside the archive (to {target:?})")]
    HardLinkEscapes {
        /// The link.
        name: String,
        /// Its target.
        target: String,
    },
    /// A hard link target is not an earlier regular file.
    #[error(
        "hard link {name:?} points to a missing entry {target:?} (it must be a regular file earlier in the archive)"
    )]
    HardLinkMissing {
        /// The link.
        name: String,
        /// Its target.
        target: String,
    },
    /// A symlink target is absolute or climbs above the archive root.
    #[error("symlink {name:?} points outside the archive (to {target:?})")]
    SymlinkEscapes {
        /// The link.
        name: String,
        /// Its target.
        target: String,
    },
    /// A symlink does not end at a regular file of the archive.
    #[error("symlink {name:?} points to {target:?}, which is not a regular file in the archive")]
    SymlinkDangling {
        /// The link.
        name: String,
        /// Its target, as written in the archive.
        target: String,
    },
    /// A symlink sits directly in the archive root.
    #[error("symlink {name:?} in the archive root is refused")]
    RootSymlink {
        /// The link.
        name: String,
    },
    /// A character or block device entry.
    #[error("device node {name:?} ({kind}) is refused")]
    DeviceNode {
        /// The entry name.
        name: String,
        /// "character device" or "block device".
        kind: &'static str,
    },
    /// A FIFO entry.
    #[error("FIFO {name:?} is refused")]
    Fifo {
        /// The entry name.
        name: String,
    },
    /// An entry type that docker-save archives never contain.
    #[error("image archive entry {name:?} has unsupported type {typeflag:?}")]
    UnsupportedType {
        /// The entry name.
        name: String,
        /// The tar typeflag.
        typeflag: char,
    },
    /// The same (normalised) name appears twice.
    #[error("image archive contains {name:?} more than once")]
    Duplicate {
        /// The entry name.
        name: String,
    },
    /// An entry sits below a file or symlink.
    #[error("image archive entry {name:?} is inside {parent:?}, which is not a directory")]
    NotADirectory {
        /// The entry name.
        name: String,
        /// The ancestor that is not a directory.
        parent: String,
    },
    /// A top-level metadata name is used by something that is not a regular file.
    #[error("{name} must be a regular file")]
    MetadataNotRegular {
        /// The entry name.
        name: String,
    },
    /// A JSON document is larger than `max_json_bytes`.
    #[error("{name} is larger than {max} bytes (it is {size} bytes)")]
    JsonTooLarge {
        /// Which document.
        name: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A JSON document does not parse or has the wrong top-level type.
    #[error("{name} is not valid JSON: {reason}")]
    InvalidJson {
        /// Which document.
        name: String,
        /// The parser's complaint.
        reason: String,
    },
    /// `manifest.json` parses but is not a docker-save manifest.
    #[error("manifest.json is not a valid docker-save manifest: {reason}")]
    BadManifest {
        /// What is wrong with it.
        reason: String,
    },
    /// The archive ended without a `manifest.json`.
    #[error("manifest.json is missing")]
    ManifestMissing,
    /// `manifest.json` is an empty list.
    #[error("manifest.json lists no images")]
    NoImages,
    /// The manifest names a config or layer that is not in the archive.
    #[error("manifest lists {what} {path:?} that the archive does not contain")]
    MissingBlob {
        /// "layer" or "config".
        what: &'static str,
        /// The path in the manifest.
        path: String,
    },
    /// The manifest names a config or layer that is not a regular file.
    #[error("manifest lists {what} {path:?}, which is not a regular file")]
    BlobNotRegular {
        /// "layer" or "config".
        what: &'static str,
        /// The path in the manifest.
        path: String,
    },
    /// More entries than `max_entries`.
    #[error("image archive has too many entries (the limit is {max})")]
    TooManyEntries {
        /// The limit.
        max: u64,
    },
    /// The input stream itself failed.
    #[error("reading the image archive failed: {message}")]
    Input {
        /// The source error's text.
        message: String,
    },
}

/// Wraps a byte stream: yields the same bytes unchanged (zero-copy where possible, chunk sizes free), validating as they pass.
///
/// The first invalid byte range turns into an `Err` item and the stream ends
/// there; the bytes before it that were already validated are yielded first.
/// When the input ends, the final checks run (manifest present and
/// consistent); a failure there is an `Err` item too, emitted instead of the
/// end of the stream. Until those checks pass, the end-of-archive marker and
/// the last byte of the last entry are held back, so a consumer like
/// `docker load` never receives a complete archive that failed validation.
///
/// The receiver gets an [`ArchiveSummary`] once the final checks passed; it
/// reports a closed channel when validation failed.
pub fn validate<S, E>(
    input: S,
    limits: ArchiveLimits,
) -> (impl Stream<Item = Result<Bytes, ArchiveError>> + Send + 'static, oneshot::Receiver<ArchiveSummary>)
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let (tx, rx) = oneshot::channel();
    let stream = Validated {
        input: Some(Box::pin(input)),
        validator: Validator::new(limits),
        summary_tx: Some(tx),
        error: None,
        ended: false,
    };
    (stream, rx)
}

/// Input chunks consumed in one poll without producing output before the
/// stream yields to the executor (e.g. a long run of trailing zeros).
const CHUNKS_PER_POLL: usize = 64;

/// The stream returned by [`validate`].
struct Validated<S> {
    /// Dropped as soon as it ended or failed, releasing the source early.
    input: Option<Pin<Box<S>>>,
    validator: Validator,
    summary_tx: Option<oneshot::Sender<ArchiveSummary>>,
    error: Option<ArchiveError>,
    ended: bool,
}

impl<S, E> Stream for Validated<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<Bytes, ArchiveError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        for _ in 0..CHUNKS_PER_POLL {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(bytes) = this.validator.pop_ready() {
                return Poll::Ready(Some(Ok(bytes)));
            }
            if let Some(error) = this.error.take() {
                this.ended = true;
                return Poll::Ready(Some(Err(error)));
            }
            let Some(input) = this.input.as_mut() else {
                this.ended = true;
                return Poll::Ready(None);
            };
            match input.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Err(error) = this.validator.feed(chunk) {
                        this.fail(error);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    let error: Box<dyn std::error::Error + Send + Sync> = error.into();
                    this.fail(ArchiveError::Input { message: error.to_string() });
                }
                Poll::Ready(None) => {
                    this.input = None;
                    match this.validator.finish() {
                        Ok(summary) => {
                            if let Some(tx) = this.summary_tx.take() {
                                // The caller may not care about the summary.
                                let _ = tx.send(summary);
                            }
                        }
                        Err(error) => this.fail(error),
                    }
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S> Validated<S> {
    /// Records the error to yield once the already validated bytes are out.
    fn fail(&mut self, error: ArchiveError) {
        self.input = None;
        self.summary_tx = None;
        self.validator.discard_unapproved();
        self.error = Some(error);
    }
}

// ---------------------------------------------------------------------------
// The validator: a push parser over the outer tar stream.
// ---------------------------------------------------------------------------

/// What the parser expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a 512-byte header block.
    Header,
    /// Collecting the data of a PAX or GNU extension header.
    ExtData { kind: ExtKind, remaining: u64, pad: u64, start: u64 },
    /// Passing the data of a regular file.
    Data { remaining: u64, pad: u64 },
    /// Skipping the padding after an entry's data.
    Padding { remaining: u64 },
    /// One zero block seen; the second must follow.
    EndMarker { seen: u64 },
    /// Both zero blocks seen; only zeros may follow.
    Trailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExtKind {
    Pax,
    GlobalPax,
    LongName,
    LongLink,
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

/// The PAX records that change how an entry is read.
#[derive(Debug, Default)]
struct PaxOverrides {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
}

/// What to do with the data of the current regular file.
#[derive(Debug)]
enum Sink {
    /// Layer data: pass through, look at nothing.
    Stream,
    /// Small file that might be an image config (if it turns out the manifest
    /// names it): note whether it is a JSON object, pass it through.
    Sniff { buf: Vec<u8>, decided: bool, abandoned: bool },
    /// Metadata JSON: hold until parsed, refuse if invalid.
    Strict { buf: Vec<u8>, role: JsonRole },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonRole {
    /// `manifest.json`.
    Manifest,
    /// Must be a JSON object (`index.json`, `oci-layout`, `repositories`, configs).
    Object,
    /// Any JSON value (other top-level `*.json`).
    Any,
}

/// The regular file whose data is passing.
#[derive(Debug)]
struct Current {
    node: usize,
    name: String,
    sink: Sink,
    region_end: u64,
}

/// What is known about a file's content as JSON (for image configs that are
/// only recognised as such once the manifest is read).
#[derive(Debug, Clone, PartialEq, Eq)]
enum JsonVerdict {
    Pending,
    Object,
    NotObject,
    Invalid(Box<str>),
    NotJson,
    TooLarge,
}

/// A manifest entry after checking.
#[derive(Debug, Clone)]
struct ManifestImage {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// `manifest.json` as Docker reads it.
#[derive(Debug, Deserialize)]
struct RawManifestItem {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Field names of Docker's manifest item; Go's JSON decoder matches keys
/// case-insensitively, so near-miss spellings are refused.
const MANIFEST_FIELDS: [&str; 5] = ["Config", "RepoTags", "Layers", "Parent", "LayerSources"];

struct Validator {
    limits: ArchiveLimits,
    ext_limit: u64,

    // Output bookkeeping: `pending` holds the received bytes from absolute
    // offset `pending_start`; bytes below `approved` may be handed out.
    pending: VecDeque<Bytes>,
    pending_start: u64,
    pending_len: u64,
    approved: u64,
    approve_limit: u64,
    zeros_dropped: u64,
    zeros_to_emit: u64,

    // Parser.
    pos: u64,
    state: State,
    hdr: [u8; 512],
    hdr_fill: usize,
    ext_buf: Vec<u8>,
    ext: PendingExt,
    current: Option<Current>,
    entries: u64,
    marker_start: u64,

    // What was seen.
    table: Table,
    symlinks: Vec<(Box<str>, Box<str>)>,
    manifest: Option<Vec<ManifestImage>>,
    config_paths: HashSet<String>,
}

impl Validator {
    fn new(limits: ArchiveLimits) -> Self {
        let wanted = (limits.max_path_len as u64).saturating_mul(2).saturating_add(4096);
        let ext_limit = wanted.clamp(MIN_EXT_HEADER_LIMIT, MAX_EXT_HEADER_LIMIT);
        Self {
            limits,
            ext_limit,
            pending: VecDeque::new(),
            pending_start: 0,
            pending_len: 0,
            approved: 0,
            approve_limit: 0,
            zeros_dropped: 0,
            zeros_to_emit: 0,
            pos: 0,
            state: State::Header,
            hdr: [0; 512],
            hdr_fill: 0,
            ext_buf: Vec::new(),
            ext: PendingExt::default(),
            current: None,
            entries: 0,
            marker_start: 0,
            table: Table::new(),
            symlinks: Vec::new(),
            manifest: None,
            config_paths: HashSet::new(),
        }
    }

    // ----- output ---------------------------------------------------------

    /// Next validated slice of the input, if any.
    fn pop_ready(&mut self) -> Option<Bytes> {
        if self.pending_start < self.approved {
            let front = self.pending.front_mut()?;
            let allowed = self.approved - self.pending_start;
            let out = if (front.len() as u64) <= allowed {
                self.pending.pop_front()?
            } else {
                // allowed < front.len() <= usize::MAX
                front.split_to(usize::try_from(allowed).ok()?)
            };
            self.pending_start += out.len() as u64;
            self.pending_len -= out.len() as u64;
            return Some(out);
        }
        if self.zeros_to_emit > 0 {
            let n = self.zeros_to_emit.min(ZEROS.len() as u64);
            self.zeros_to_emit -= n;
            let n = usize::try_from(n).unwrap_or(ZEROS.len());
            return Some(Bytes::from_static(&ZEROS[..n]));
        }
        None
    }

    /// Drops everything received but not validated (after an error).
    fn discard_unapproved(&mut self) {
        self.truncate_pending(self.approved);
        self.zeros_to_emit = 0;
    }

    /// Drops pending bytes from absolute offset `end` on; returns how many.
    fn truncate_pending(&mut self, end: u64) -> u64 {
        let keep = end.saturating_sub(self.pending_start);
        let mut dropped = 0;
        while self.pending_len > keep {
            let excess = self.pending_len - keep;
            let Some(back) = self.pending.back_mut() else {
                break;
            };
            let len = back.len() as u64;
            if len <= excess {
                self.pending.pop_back();
                self.pending_len -= len;
                dropped += len;
            } else {
                // excess < len, so the new length fits in usize.
                let new_len = usize::try_from(len - excess).unwrap_or(0);
                back.truncate(new_len);
                self.pending_len -= excess;
                dropped += excess;
            }
        }
        dropped
    }

    /// Advances the parse position by `n` consumed bytes.
    fn advance(&mut self, n: usize) {
        self.pos += n as u64;
        self.approved = self.approved.max(self.pos.min(self.approve_limit));
    }

    /// Allows bytes up to (not including) `limit` to be handed out.
    fn release_to(&mut self, limit: u64) {
        self.approve_limit = self.approve_limit.max(limit);
        self.approved = self.approved.max(self.pos.min(self.approve_limit));
    }

    // ----- input ----------------------------------------------------------

    /// Validates one chunk of input and queues it for output.
    fn feed(&mut self, chunk: Bytes) -> Result<(), ArchiveError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.pending_len += chunk.len() as u64;
        self.pending.push_back(chunk.clone());
        let mut data: &[u8] = &chunk;
        while !data.is_empty() {
            let used = self.step(data)?;
            data = &data[used..];
        }
        if matches!(self.state, State::EndMarker { .. } | State::Trailer) {
            // Everything from the marker on is zeros: count it, do not keep it.
            self.zeros_dropped += self.truncate_pending(self.marker_start);
        }
        Ok(())
    }

    /// Consumes a prefix of `data` according to the current state.
    fn step(&mut self, data: &[u8]) -> Result<usize, ArchiveError> {
        match self.state {
            State::Header => {
                let n = (512 - self.hdr_fill).min(data.len());
                self.hdr[self.hdr_fill..self.hdr_fill + n].copy_from_slice(&data[..n]);
                self.hdr_fill += n;
                self.advance(n);
                if self.hdr_fill == 512 {
                    self.hdr_fill = 0;
                    self.on_header_block()?;
                }
                Ok(n)
            }
            State::ExtData { kind, remaining, pad, start } => {
                let n = take(remaining, data.len());
                self.ext_buf.extend_from_slice(&data[..n]);
                self.advance(n);
                let remaining = remaining - n as u64;
                if remaining == 0 {
                    self.on_ext_data(kind, start, pad)?;
                    self.state = padding_state(pad);
                } else {
                    self.state = State::ExtData { kind, remaining, pad, start };
                }
                Ok(n)
            }
            State::Data { remaining, pad } => {
                let n = take(remaining, data.len());
                if let Some(current) = self.current.as_mut() {
                    current.sink.push(&data[..n]);
                }
                self.advance(n);
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
                self.advance(n);
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
                self.advance(n);
                let seen = seen + n as u64;
                self.state = if seen == BLOCK { State::Trailer } else { State::EndMarker { seen } };
                Ok(n)
            }
            State::Trailer => {
                if let Some(i) = data.iter().position(|&b| b != 0) {
                    return Err(ArchiveError::TrailingData { offset: self.pos + i as u64 });
                }
                self.advance(data.len());
                Ok(data.len())
            }
        }
    }

    /// A complete 512-byte block arrived in `Header` state.
    fn on_header_block(&mut self) -> Result<(), ArchiveError> {
        let start = self.pos - BLOCK;
        if start == 0
            && let Some(format) = compression_magic(&self.hdr)
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
            self.marker_start = start;
            self.state = State::EndMarker { seen: 0 };
            return Ok(());
        }
        let raw = parse_header(&self.hdr).map_err(|reason| {
            if start == 0 {
                ArchiveError::NotTar { offset: 0, reason: reason.clone() }
            } else {
                ArchiveError::Corrupt { offset: start, reason }
            }
        })?;
        let kind = match raw.typeflag {
            b'x' => Some(ExtKind::Pax),
            b'g' => Some(ExtKind::GlobalPax),
            b'L' => Some(ExtKind::LongName),
            b'K' => Some(ExtKind::LongLink),
            _ => None,
        };
        match kind {
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
            self.on_ext_data(kind, start, 0)?;
            self.state = State::Header;
        } else {
            self.state = State::ExtData { kind, remaining: size, pad: padding(size), start };
        }
        Ok(())
    }

    /// The data of a PAX or GNU extension is complete.
    /// `pad` is the padding still to come after the data.
    fn on_ext_data(&mut self, kind: ExtKind, start: u64, pad: u64) -> Result<(), ArchiveError> {
        let corrupt = |reason: String| ArchiveError::Corrupt { offset: start, reason };
        match kind {
            ExtKind::Pax | ExtKind::GlobalPax => {
                let records = parse_pax(&self.ext_buf).map_err(corrupt)?;
                let overrides = pax_overrides(&records).map_err(corrupt)?;
                if kind == ExtKind::Pax {
                    self.ext.pax = Some(overrides);
                } else {
                    // Go's reader (and so Docker) ignores global headers:
                    // release it like a complete entry, so that a run of
                    // them cannot pile up in memory.
                    self.release_to(self.pos.saturating_add(pad).saturating_sub(1));
                }
            }
            ExtKind::LongName | ExtKind::LongLink => {
                let value = parse_string(&self.ext_buf);
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
    fn on_entry(&mut self, raw: RawHeader, start: u64) -> Result<(), ArchiveError> {
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
        let header_only = matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6');
        if header_only && size != 0 {
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
        let header_end = self.pos;
        match typeflag {
            b'0' => return self.on_regular_file(comps.as_slice(), path, size, metadata),
            _ if metadata => return Err(ArchiveError::MetadataNotRegular { name: path }),
            b'5' => {
                if !comps.is_empty() {
                    self.insert(&comps, &name, NodeKind::Dir)?;
                }
            }
            b'1' => self.on_hard_link(&comps, &name, link)?,
            b'2' => self.on_symlink(&comps, &name, link)?,
            b'3' => {
                return Err(ArchiveError::DeviceNode { name: shown(&name), kind: "character device" });
            }
            b'4' => {
                return Err(ArchiveError::DeviceNode { name: shown(&name), kind: "block device" });
            }
            b'6' => return Err(ArchiveError::Fifo { name: shown(&name) }),
            other => {
                return Err(ArchiveError::UnsupportedType { name: shown(&name), typeflag: char::from(other) });
            }
        }
        // Header-only entry: nothing follows; keep its last byte back.
        self.release_to(header_end - 1);
        self.state = State::Header;
        Ok(())
    }

    fn on_regular_file(&mut self, comps: &[&str], path: String, size: u64, metadata: bool) -> Result<(), ArchiveError> {
        let max_json = self.limits.max_json_bytes;
        let role = if metadata {
            Some(match path.as_str() {
                "manifest.json" => JsonRole::Manifest,
                "index.json" | "oci-layout" | "repositories" => JsonRole::Object,
                _ if self.config_paths.contains(&path) => JsonRole::Object,
                _ => JsonRole::Any,
            })
        } else if self.config_paths.contains(&path) {
            Some(JsonRole::Object)
        } else {
            None
        };
        if role.is_some() && size > max_json {
            return Err(ArchiveError::JsonTooLarge { name: path, size, max: max_json });
        }
        let initial = if size > max_json { JsonVerdict::TooLarge } else { JsonVerdict::Pending };
        let node = self.insert(comps, &path, NodeKind::File { size, json: initial })?;
        let sink = match role {
            Some(role) => Sink::Strict { buf: Vec::with_capacity(usize::try_from(size).unwrap_or(0)), role },
            None if size <= max_json => Sink::Sniff { buf: Vec::new(), decided: false, abandoned: false },
            None => Sink::Stream,
        };
        let pad = padding(size);
        let region_end = self.pos.saturating_add(size).saturating_add(pad);
        if role.is_none() {
            self.release_to(region_end - 1);
        }
        self.current = Some(Current { node, name: path, sink, region_end });
        if size == 0 {
            self.finish_file()?;
            self.state = State::Header;
        } else {
            self.state = State::Data { remaining: size, pad };
        }
        Ok(())
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
        let found = self.table.lookup(target_comps.iter().copied()).map(|id| &self.table.nodes[id].kind);
        let kind = match found {
            Some(NodeKind::File { size, json }) => NodeKind::File { size: *size, json: json.clone() },
            _ => {
                return Err(ArchiveError::HardLinkMissing { name: shown(name), target: shown(&target) });
            }
        };
        self.insert(comps, name, kind)?;
        Ok(())
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
        self.insert(comps, name, NodeKind::Symlink { target: resolved.clone().into() })?;
        self.symlinks.push((comps.join("/").into(), target.into()));
        Ok(())
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

    fn insert(&mut self, comps: &[&str], name: &str, kind: NodeKind) -> Result<usize, ArchiveError> {
        self.table.insert(comps, kind).map_err(|e| match e {
            InsertError::Duplicate => ArchiveError::Duplicate { name: shown(&comps.join("/")) },
            InsertError::NotADirectory(depth) => {
                ArchiveError::NotADirectory { name: shown(name), parent: shown(&comps[..depth].join("/")) }
            }
        })
    }

    /// The data of the current regular file is complete.
    fn finish_file(&mut self) -> Result<(), ArchiveError> {
        let Some(current) = self.current.take() else {
            return Ok(());
        };
        let verdict = match current.sink {
            Sink::Stream => None,
            Sink::Sniff { buf, decided, abandoned } => Some(if decided && !abandoned {
                match serde_json::from_slice::<serde::de::IgnoredAny>(&buf) {
                    Ok(_) => JsonVerdict::Object,
                    Err(e) => JsonVerdict::Invalid(e.to_string().into()),
                }
            } else {
                JsonVerdict::NotJson
            }),
            Sink::Strict { buf, role } => {
                let verdict = self.check_strict_json(&current.name, &buf, role)?;
                self.release_to(current.region_end - 1);
                Some(verdict)
            }
        };
        if let Some(verdict) = verdict
            && let Some(node) = self.table.nodes.get_mut(current.node)
            && let NodeKind::File { json, .. } = &mut node.kind
        {
            *json = verdict;
        }
        Ok(())
    }

    /// Parses a held metadata document; refuses it if invalid.
    fn check_strict_json(&mut self, name: &str, buf: &[u8], role: JsonRole) -> Result<JsonVerdict, ArchiveError> {
        let invalid = |reason: String| ArchiveError::InvalidJson { name: name.to_string(), reason };
        match role {
            JsonRole::Manifest => {
                let value: serde_json::Value = serde_json::from_slice(buf).map_err(|e| invalid(e.to_string()))?;
                let images = parse_manifest(value)?;
                self.config_paths = images.iter().map(|i| i.config.clone()).collect();
                self.manifest = Some(images);
                Ok(JsonVerdict::NotObject)
            }
            JsonRole::Object | JsonRole::Any => {
                serde_json::from_slice::<serde::de::IgnoredAny>(buf).map_err(|e| invalid(e.to_string()))?;
                if starts_object(buf) {
                    Ok(JsonVerdict::Object)
                } else if role == JsonRole::Object {
                    Err(invalid("it is not a JSON object".into()))
                } else {
                    Ok(JsonVerdict::NotObject)
                }
            }
        }
    }

    /// The input ended: check the end of the archive and the manifest.
    fn finish(&mut self) -> Result<ArchiveSummary, ArchiveError> {
        match self.state {
            State::Trailer => {}
            _ if self.pos == 0 => return Err(ArchiveError::Empty),
            State::Header if self.hdr_fill > 0 && self.pos < BLOCK => {
                if let Some(format) = compression_magic(&self.hdr[..self.hdr_fill]) {
                    return Err(ArchiveError::Compressed { format });
                }
                return Err(ArchiveError::NotTar {
                    offset: self.pos,
                    reason: "the input ends inside the first 512-byte header".into(),
                });
            }
            State::Header if self.hdr_fill > 0 => {
                return Err(ArchiveError::Truncated {
                    detail: format!("the stream ends inside the header at byte {}", self.pos - self.hdr_fill as u64),
                });
            }
            State::Header if !self.ext.is_empty() => {
                return Err(ArchiveError::Truncated {
                    detail: "the stream ends after an extended header, before its entry".into(),
                });
            }
            State::Header => {
                return Err(ArchiveError::Truncated {
                    detail: format!("the end-of-archive marker (two zero blocks) is missing after byte {}", self.pos),
                });
            }
            State::ExtData { start, .. } => {
                return Err(ArchiveError::Truncated {
                    detail: format!("the stream ends inside the extended header at byte {start}"),
                });
            }
            State::Data { remaining, .. } => {
                let name = self.current.as_ref().map_or("", |c| c.name.as_str());
                return Err(ArchiveError::Truncated {
                    detail: format!("entry {:?} is cut short ({remaining} bytes missing)", shown(name)),
                });
            }
            State::Padding { .. } => {
                return Err(ArchiveError::Truncated {
                    detail: format!("the stream ends inside the padding before byte {}", self.pos),
                });
            }
            State::EndMarker { .. } => {
                return Err(ArchiveError::Truncated {
                    detail: "the end-of-archive marker is incomplete (one zero block instead of two)".into(),
                });
            }
        }
        if self.entries == 0 {
            return Err(ArchiveError::Empty);
        }
        for (name, target) in &self.symlinks {
            if self.resolve_file(name).is_none() {
                return Err(ArchiveError::SymlinkDangling { name: shown(name), target: shown(target) });
            }
        }
        let images = self.manifest.take().ok_or(ArchiveError::ManifestMissing)?;
        let max_json = self.limits.max_json_bytes;
        for image in &images {
            let (size, json) = self.resolve_blob("config", &image.config)?;
            let label = || format!("image config {:?}", shown(&image.config));
            let invalid = |reason: &str| ArchiveError::InvalidJson { name: label(), reason: reason.to_string() };
            match json {
                JsonVerdict::Object => {}
                JsonVerdict::TooLarge | JsonVerdict::Pending if size > max_json => {
                    return Err(ArchiveError::JsonTooLarge { name: label(), size, max: max_json });
                }
                JsonVerdict::Invalid(reason) => return Err(invalid(reason)),
                JsonVerdict::NotObject => return Err(invalid("it is not a JSON object")),
                JsonVerdict::NotJson | JsonVerdict::TooLarge | JsonVerdict::Pending => {
                    return Err(invalid("it does not start with '{'"));
                }
            }
            for layer in &image.layers {
                self.resolve_blob("layer", layer)?;
            }
        }

        let mut repo_tags: Vec<String> = Vec::new();
        for tag in images.iter().flat_map(|i| i.repo_tags.iter()) {
            if !repo_tags.contains(tag) {
                repo_tags.push(tag.clone());
            }
        }
        let first = images.first();
        let summary = ArchiveSummary {
            repo_tags,
            config_digest: first.and_then(|i| config_digest(&i.config)),
            layers: first.map(|i| i.layers.clone()).unwrap_or_default(),
            total_bytes: self.pos,
        };
        // Everything checked: release the held bytes and the end marker.
        self.approve_limit = u64::MAX;
        self.approved = self.pending_start + self.pending_len;
        self.zeros_to_emit = self.zeros_dropped;
        Ok(summary)
    }

    /// Follows symlinks from `path` to a regular file node.
    fn resolve_file(&self, path: &str) -> Option<usize> {
        let mut path = path;
        for _ in 0..=MAX_SYMLINK_HOPS {
            let id = self.table.lookup(path.split('/'))?;
            match &self.table.nodes[id].kind {
                NodeKind::File { .. } => return Some(id),
                NodeKind::Symlink { target } => path = target,
                NodeKind::Dir => return None,
            }
        }
        None
    }

    /// Looks up a path named by the manifest; it must be a regular file.
    /// Returns its size and what is known about it as JSON.
    fn resolve_blob(&self, what: &'static str, path: &str) -> Result<(u64, &JsonVerdict), ArchiveError> {
        if self.table.lookup(path.split('/')).is_none() {
            return Err(ArchiveError::MissingBlob { what, path: shown(path) });
        }
        match self.resolve_file(path).map(|id| &self.table.nodes[id].kind) {
            Some(NodeKind::File { size, json }) => Ok((*size, json)),
            _ => Err(ArchiveError::BlobNotRegular { what, path: shown(path) }),
        }
    }
}

impl Sink {
    fn push(&mut self, data: &[u8]) {
        match self {
            Sink::Stream => {}
            Sink::Strict { buf, .. } => buf.extend_from_slice(data),
            Sink::Sniff { buf, decided, abandoned } => {
                if *abandoned {
                    return;
                }
                if !*decided {
                    match data.iter().find(|b| !b.is_ascii_whitespace()) {
                        Some(b'{') => *decided = true,
                        Some(_) => {
                            *abandoned = true;
                            *buf = Vec::new();
                            return;
                        }
                        None => {}
                    }
                }
                buf.extend_from_slice(data);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Name table: a tree of path components.
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum NodeKind {
    Dir,
    File { size: u64, json: JsonVerdict },
    Symlink { target: Box<str> },
}

#[derive(Debug)]
struct Node {
    kind: NodeKind,
    children: HashMap<Box<str>, usize>,
}

enum InsertError {
    Duplicate,
    /// The ancestor with this many components is not a directory.
    NotADirectory(usize),
}

/// Every entry seen so far, with its implied parent directories. A tree
/// stores each shared prefix once, so memory stays proportional to the names.
#[derive(Debug)]
struct Table {
    nodes: Vec<Node>,
}

impl Table {
    fn new() -> Self {
        Self { nodes: vec![Node { kind: NodeKind::Dir, children: HashMap::new() }] }
    }

    fn lookup<'a>(&self, comps: impl Iterator<Item = &'a str>) -> Option<usize> {
        let mut cur = 0;
        for c in comps {
            if c.is_empty() || c == "." {
                continue;
            }
            cur = *self.nodes.get(cur)?.children.get(c)?;
        }
        Some(cur)
    }

    fn insert(&mut self, comps: &[&str], kind: NodeKind) -> Result<usize, InsertError> {
        let Some((leaf, parents)) = comps.split_last() else {
            return Err(InsertError::Duplicate);
        };
        let mut cur = 0;
        for (depth, c) in parents.iter().enumerate() {
            cur = match self.nodes[cur].children.get(*c) {
                Some(&id) => {
                    if !matches!(self.nodes[id].kind, NodeKind::Dir) {
                        return Err(InsertError::NotADirectory(depth + 1));
                    }
                    id
                }
                None => self.add_child(cur, c, NodeKind::Dir),
            };
        }
        match self.nodes[cur].children.get(*leaf) {
            Some(&id) => {
                // A directory may be listed again (or after its contents).
                if matches!(kind, NodeKind::Dir) && matches!(self.nodes[id].kind, NodeKind::Dir) {
                    Ok(id)
                } else {
                    Err(InsertError::Duplicate)
                }
            }
            None => Ok(self.add_child(cur, leaf, kind)),
        }
    }

    fn add_child(&mut self, parent: usize, name: &str, kind: NodeKind) -> usize {
        let id = self.nodes.len();
        self.nodes.push(Node { kind, children: HashMap::new() });
        self.nodes[parent].children.insert(name.into(), id);
        id
    }
}

// ---------------------------------------------------------------------------
// Tar header parsing (mirrors Go's archive/tar reader).
// ---------------------------------------------------------------------------

/// The fields of one header block that matter here.
#[derive(Debug)]
struct RawHeader {
    typeflag: u8,
    name: Vec<u8>,
    linkname: Vec<u8>,
    size: u64,
}

/// Parses and checks one non-zero header block.
fn parse_header(b: &[u8; 512]) -> Result<RawHeader, String> {
    let checksum = parse_octal(&b[148..156]).map_err(|()| "bad header checksum".to_string())?;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &c) in b.iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        unsigned += i64::from(c);
        signed += i64::from(c as i8);
    }
    let checksum = i64::try_from(checksum).map_err(|_| "bad header checksum".to_string())?;
    if checksum != unsigned && checksum != signed {
        return Err("bad header checksum".into());
    }

    let magic = &b[257..263];
    let version = &b[263..265];
    let trailer = &b[508..512];
    let (ustar, gnu) = match magic {
        b"ustar\0" if trailer == b"tar\0" => {
            return Err("unsupported tar variant (star header)".into());
        }
        b"ustar\0" => (true, false),
        b"ustar " if version == b" \0" => (false, true),
        _ => (false, false),
    };

    let bad_field = |field: &str| format!("bad {field} field in tar header");
    let size = parse_numeric(&b[124..136]).map_err(|()| bad_field("size"))?;
    let size = u64::try_from(size).map_err(|_| "negative size in tar header".to_string())?;
    for (range, field) in [(100..108, "mode"), (108..116, "uid"), (116..124, "gid"), (136..148, "mtime")] {
        parse_numeric(&b[range]).map_err(|()| bad_field(field))?;
    }
    if ustar || gnu {
        parse_numeric(&b[329..337]).map_err(|()| bad_field("devmajor"))?;
        parse_numeric(&b[337..345]).map_err(|()| bad_field("devminor"))?;
    }
    if gnu {
        // Go falls back to reading a USTAR prefix here when these do not
        // parse; refuse instead of guessing the same way.
        for range in [345..357, 357..369] {
            if b[range.start] != 0 && parse_numeric(&b[range]).is_err() {
                return Err("unsupported GNU header (unreadable atime/ctime)".into());
            }
        }
    }

    let mut name = parse_string(&b[0..100]).to_vec();
    if ustar {
        let prefix = parse_string(&b[345..500]);
        if !prefix.is_empty() {
            let mut full = prefix.to_vec();
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
    }
    Ok(RawHeader { typeflag: b[156], name, linkname: parse_string(&b[157..257]).to_vec(), size })
}

/// Bytes up to the first NUL.
fn parse_string(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i])
}

/// Octal field: surrounding spaces and NULs ignored, empty means 0.
fn parse_octal(b: &[u8]) -> Result<u64, ()> {
    let is_pad = |c: &u8| *c == b' ' || *c == 0;
    let Some(first) = b.iter().position(|c| !is_pad(c)) else {
        return Ok(0);
    };
    let last = b.iter().rposition(|c| !is_pad(c)).unwrap_or(first);
    let digits = parse_string(&b[first..=last]);
    let mut x: u64 = 0;
    for &c in digits {
        if !(b'0'..=b'7').contains(&c) {
            return Err(());
        }
        x = x.checked_mul(8).and_then(|x| x.checked_add(u64::from(c - b'0'))).ok_or(())?;
    }
    Ok(x)
}

/// Numeric field: octal, or GNU base-256 when the top bit of the first byte is set.
fn parse_numeric(b: &[u8]) -> Result<i64, ()> {
    if let Some(&first) = b.first()
        && first & 0x80 != 0
    {
        let inv: u8 = if first & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in b.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 > 0 {
                return Err(());
            }
            x = (x << 8) | u64::from(c);
        }
        if x >> 63 > 0 {
            return Err(());
        }
        let x = i64::try_from(x).map_err(|_| ())?;
        return Ok(if inv == 0xff { !x } else { x });
    }
    let x = parse_octal(b)?;
    i64::try_from(x).map_err(|_| ())
}

/// PAX records (`"%d %s=%s\n"`), last one wins per key, as Go reads them.
fn parse_pax(data: &[u8]) -> Result<HashMap<Vec<u8>, Vec<u8>>, String> {
    let bad = || "malformed PAX extended header".to_string();
    let mut records = HashMap::new();
    let mut s = data;
    while !s.is_empty() {
        let space = s.iter().position(|&c| c == b' ').ok_or_else(bad)?;
        let len: i64 = std::str::from_utf8(&s[..space]).ok().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        let len = usize::try_from(len).map_err(|_| bad())?;
        if len < 5 || len > s.len() || len <= space + 1 {
            return Err(bad());
        }
        let rest = &s[space + 1..];
        let n = len - (space + 1);
        let record = &rest[..n - 1];
        if rest[n - 1] != b'\n' {
            return Err(bad());
        }
        s = &rest[n..];
        let eq = record.iter().position(|&c| c == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        if key.is_empty() {
            return Err(bad());
        }
        let nul_checked = if matches!(key, b"path" | b"linkpath" | b"uname" | b"gname") { value } else { key };
        if nul_checked.contains(&0) {
            return Err(bad());
        }
        if key.starts_with(b"GNU.sparse.") {
            return Err("sparse files are not supported".into());
        }
        records.insert(key.to_vec(), value.to_vec());
    }
    Ok(records)
}

/// Applies Go's rules for the PAX records it interprets.
fn pax_overrides(records: &HashMap<Vec<u8>, Vec<u8>>) -> Result<PaxOverrides, String> {
    let mut out = PaxOverrides::default();
    for (key, value) in records {
        if value.is_empty() {
            continue; // Go keeps the header's own value.
        }
        let text = std::str::from_utf8(value).ok();
        let bad = || {
            format!("bad PAX record {:?}={:?}", String::from_utf8_lossy(key), shown(&String::from_utf8_lossy(value)))
        };
        match key.as_slice() {
            b"path" => out.path = Some(value.clone()),
            b"linkpath" => out.linkpath = Some(value.clone()),
            b"size" => {
                let size: i64 = text.and_then(|t| t.parse().ok()).ok_or_else(bad)?;
                out.size = Some(u64::try_from(size).map_err(|_| bad())?);
            }
            b"uid" | b"gid" => {
                text.and_then(|t| t.parse::<i64>().ok()).ok_or_else(bad)?;
            }
            b"mtime" | b"atime" | b"ctime" if !text.is_some_and(valid_pax_time) => {
                return Err(bad());
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `[-+]seconds[.fraction]`, as Go's `parsePAXTime` accepts it.
fn valid_pax_time(s: &str) -> bool {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    secs.parse::<i64>().is_ok() && frac.bytes().all(|c| c.is_ascii_digit())
}

/// Docker's loader decompresses transparently; a tar that starts like a
/// compressed file would be read differently by Docker, so refuse it.
fn compression_magic(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if b.starts_with(b"BZh") {
        Some("bzip2")
    } else if b.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if b.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else {
        None
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
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

/// A name for an error message, shortened if very long.
fn shown(name: &str) -> String {
    if name.len() <= SHOWN_NAME_MAX {
        return name.to_string();
    }
    let mut end = SHOWN_NAME_MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

// ---------------------------------------------------------------------------
// manifest.json
// ---------------------------------------------------------------------------

fn parse_manifest(value: serde_json::Value) -> Result<Vec<ManifestImage>, ArchiveError> {
    let bad = |reason: String| ArchiveError::BadManifest { reason };
    let serde_json::Value::Array(items) = value else {
        return Err(bad("the top level is not a JSON array".into()));
    };
    if items.is_empty() {
        return Err(ArchiveError::NoImages);
    }
    let mut images = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let serde_json::Value::Object(fields) = &item else {
            return Err(bad(format!("image #{i} is not a JSON object")));
        };
        for key in fields.keys() {
            for field in MANIFEST_FIELDS {
                if key != field && go_fold_eq(key, field) {
                    return Err(bad(format!("image #{i} has key {key:?}, which Docker would read as {field:?}")));
                }
            }
        }
        let raw: RawManifestItem = serde_json::from_value(item).map_err(|e| bad(format!("image #{i}: {e}")))?;
        let path =
            |p: &str| manifest_path(p).map_err(|reason| bad(format!("image #{i}: path {:?} {reason}", shown(p))));
        let config = path(&raw.config)?;
        let layers = raw.layers.iter().map(|l| path(l)).collect::<Result<Vec<_>, _>>()?;
        let repo_tags = raw.repo_tags.unwrap_or_default();
        for tag in &repo_tags {
            if tag.is_empty() || tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad(format!("image #{i} has an invalid tag {:?}", shown(tag))));
            }
        }
        images.push(ManifestImage { config, repo_tags, layers });
    }
    Ok(images)
}

/// Normalises a path named by the manifest.
fn manifest_path(p: &str) -> Result<String, &'static str> {
    if p.contains('\0') {
        return Err("contains a NUL byte");
    }
    if p.starts_with('/') {
        return Err("is absolute");
    }
    let mut comps = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("escapes the archive"),
            c => comps.push(c),
        }
    }
    if comps.is_empty() {
        return Err("is empty");
    }
    Ok(comps.join("/"))
}

/// Go's `encoding/json` key matching: Unicode simple case folding, under
/// which only 'ſ' (U+017F) and 'K' (U+212A) fold onto ASCII letters.
fn go_fold_eq(key: &str, field: &str) -> bool {
    let fold = |c: char| match c {
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    };
    key.chars().map(fold).eq(field.chars().map(fold))
}

/// `sha256:<hex>` from `blobs/sha256/<hex>` or `<hex>.json`.
fn config_digest(config: &str) -> Option<String> {
    let hex =
        config.strip_prefix("blobs/sha256/").or_else(|| config.strip_suffix(".json").filter(|h| !h.contains('/')))?;
    let valid = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    valid.then(|| format!("sha256:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &[u8], typeflag: u8, size_field: &[u8]) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..name.len()].copy_from_slice(name);
        b[100..107].copy_from_slice(b"0000644");
        b[108..115].copy_from_slice(b"0000000");
        b[116..123].copy_from_slice(b"0000000");
        b[124..124 + size_field.len()].copy_from_slice(size_field);
        b[136..147].copy_from_slice(b"00000000000");
        b[156] = typeflag;
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        set_checksum(&mut b);
        b
    }

    fn set_checksum(b: &mut [u8; 512]) {
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
        let field = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(field.as_bytes());
    }

    #[test]
    fn octal_and_base256_fields() {
        assert_eq!(parse_octal(b"0000644\0"), Ok(0o644));
        assert_eq!(parse_octal(b"  644 \0\0"), Ok(0o644));
        assert_eq!(parse_octal(b"\0\0\0\0"), Ok(0));
        assert_eq!(parse_octal(b"12\0garbage"), Ok(0o12));
        assert_eq!(parse_octal(b"64 4"), Err(()));
        assert_eq!(parse_octal(b"0009"), Err(()));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4..12].copy_from_slice(&(10u64 << 33).to_be_bytes());
        assert_eq!(parse_numeric(&big), Ok(10 << 33));
        let negative = [0xffu8; 12];
        assert_eq!(parse_numeric(&negative), Ok(-1));
        let mut overflow = [0xffu8; 12];
        overflow[0] = 0x80;
        assert_eq!(parse_numeric(&overflow), Err(()));
    }

    #[test]
    fn header_checks() {
        let ok = header(b"a/b", b'0', b"00000000005\0");
        let raw = parse_header(&ok).expect("valid header");
        assert_eq!((raw.name.as_slice(), raw.size, raw.typeflag), (&b"a/b"[..], 5, b'0'));

        let mut bad_sum = ok;
        bad_sum[0] = b'x';
        assert_eq!(parse_header(&bad_sum).unwrap_err(), "bad header checksum");

        let mut base256 = header(b"big", b'0', &[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]);
        set_checksum(&mut base256);
        assert_eq!(parse_header(&base256).map(|h| h.size), Ok(0x1000));

        let mut negative = header(b"neg", b'0', &[0xff; 12]);
        set_checksum(&mut negative);
        assert!(parse_header(&negative).is_err());

        let mut star = ok;
        star[508..512].copy_from_slice(b"tar\0");
        set_checksum(&mut star);
        assert!(parse_header(&star).unwrap_err().contains("star"));

        let mut prefixed = header(b"layer.tar", b'0', b"00000000000\0");
        prefixed[345..349].copy_from_slice(b"abcd");
        set_checksum(&mut prefixed);
        assert_eq!(parse_header(&prefixed).map(|h| h.name), Ok(b"abcd/layer.tar".to_vec()));
    }

    #[test]
    fn pax_records() {
        let records = parse_pax(b"16 path=a/b/c/d\n11 size=42\n").expect("valid");
        let o = pax_overrides(&records).expect("valid");
        assert_eq!(o.path.as_deref(), Some(&b"a/b/c/d"[..]));
        assert_eq!(o.size, Some(42));
        assert!(parse_pax(b"15 path=a/b/c/d\n").is_err()); // wrong length
        assert!(parse_pax(b"12 path=a\0b\n").is_err()); // NUL in path
        assert!(parse_pax(b"x path=a\n").is_err());
        assert!(parse_pax(b"22 GNU.sparse.size=10\n").is_err());
        let bad_size = parse_pax(b"12 size=-42\n").expect("record parses");
        assert!(pax_overrides(&bad_size).is_err());
        let bad_time = parse_pax(b"14 mtime=1.5x\n").expect("record parses");
        assert!(pax_overrides(&bad_time).is_err());
        let empty_path = parse_pax(b"7 a=bc\n8 path=\n").expect("valid");
        assert!(pax_overrides(&empty_path).expect("valid").path.is_none());
    }

    #[test]
    fn fold_and_digest_helpers() {
        assert!(go_fold_eq("config", "Config"));
        assert!(go_fold_eq("Layer\u{17f}", "Layers"));
        assert!(!go_fold_eq("Configs", "Config"));
        let hex = "a".repeat(64);
        assert_eq!(config_digest(&format!("{hex}.json")), Some(format!("sha256:{hex}")));
        assert_eq!(config_digest(&format!("blobs/sha256/{hex}")), Some(format!("sha256:{hex}")));
        assert_eq!(config_digest("x/abc.json"), None);
        assert_eq!(manifest_path("./a//b/"), Ok("a/b".to_string()));
        assert!(manifest_path("../a").is_err());
    }

    /// Global PAX headers are ignored and released, not accumulated.
    #[test]
    fn global_headers_do_not_pile_up() {
        let mut v = Validator::new(ArchiveLimits::default());
        let record = b"20 comment=whatever\n";
        let size_field = format!("{:011o}\0", record.len());
        let h = header(b"pax_global_header", b'g', size_field.as_bytes());
        let mut block = h.to_vec();
        block.extend_from_slice(record);
        block.resize(1024, 0);
        let block = Bytes::from(block);
        for _ in 0..10_000 {
            v.feed(block.clone()).expect("global header");
            while v.pop_ready().is_some() {}
            assert!(v.pending_len <= 1024, "held {} bytes", v.pending_len);
        }
        assert_eq!(v.entries, 0);
    }

    /// A multi-gigabyte layer passes with bounded buffering.
    #[test]
    fn layer_data_is_not_buffered() {
        let mut v = Validator::new(ArchiveLimits::default());
        let size: u64 = 8 << 30;
        let size_field = format!("{size:011o}\0");
        let h = header(b"abc/layer.tar", b'0', size_field.as_bytes());
        v.feed(Bytes::copy_from_slice(&h)).expect("header");
        let chunk = Bytes::from(vec![7u8; 1 << 20]);
        let mut out = 0u64;
        for _ in 0..(size >> 20) {
            v.feed(chunk.clone()).expect("data");
            while let Some(b) = v.pop_ready() {
                out += b.len() as u64;
            }
            assert!(v.pending_len <= 1 << 20, "held {} bytes", v.pending_len);
        }
        // Everything but the last byte of the entry has been released.
        assert_eq!(out, 512 + size - 1);
        assert_eq!(v.pending_len, 1);
        assert_eq!(v.table.nodes.len(), 3);
    }
}
