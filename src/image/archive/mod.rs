//! `docker save` archives from tenants, made into archives the host controls.
//!
//! A Glance image's bytes are chosen by a tenant, and `docker load` acts on
//! much more than the image's content: tags in the archive move references
//! anywhere on the host, a config file's *name* can point at an image that
//! is already there, compressed input runs a decompressor of the tenant's
//! choosing, sparse or compressed layers unpack to far more than they
//! weigh. So no tenant byte reaches Docker as an instruction. [`canonicalize`]
//! sits between Glance and `docker load` and streams out a new archive:
//!
//! * the input may be gzip-compressed (decompressed here, strictly); bzip2,
//!   xz and zstd, which Docker would also decompress, are refused before
//!   Docker sees a byte ([`compression`]);
//! * the outer tar is parsed as Go's `archive/tar` reads it, refusing the
//!   corner cases where readers disagree ([`tar`]); entry names are checked
//!   (no absolute paths, `..`, NUL, whiteouts, duplicates, entries below
//!   files); links are resolved, never passed on ([`tree`]);
//! * every tar header Docker receives is written by the host; file data
//!   flows through unchanged (zero-copy), each file walked as Docker would
//!   read it as a layer, refusing sparse entries and compressions it does
//!   not unpack itself ([`layer`]); what the image unpacks to is bounded;
//! * `manifest.json`, `repositories`, `index.json` and `oci-layout` are never
//!   passed on: the host writes the manifest anew from the resolved paths,
//!   with no tags ([`manifest`]);
//! * the config is bound to content: its digest is computed from its bytes,
//!   a file name claiming another digest is refused, and image volumes are
//!   removed ([`config`]); the digest of the config as sent is the image ID
//!   Docker will report, and the caller checks that it does.
//!
//! Holding back: the config and the manifest are written last, only once
//! every check passed and the input ended cleanly. An archive refused at
//! any point reaches Docker without a manifest, which Docker cannot load.
//!
//! Memory is bounded whatever the archive holds: names by a byte budget,
//! JSON waiting for the manifest by another, one extension header and one
//! small file at a time, layer data never buffered.

mod compression;
mod config;
mod gzip;
mod json;
mod layer;
mod manifest;
mod parser;
mod stream;
mod tar;
mod tree;

pub use compression::Compression;
pub use config::VOLUMES_LABEL;
pub use stream::{Canonicalized, canonicalize};
pub(crate) use tar::{Entry as TarEntry, directories, guest_entries};

/// Entry names longer than this are shortened in error messages.
const SHOWN_NAME_MAX: usize = 256;

/// Limits for one archive.
///
/// They bound the memory and work a single (possibly hostile) archive can
/// cause, and the disk it can take once Docker unpacks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Largest accepted size of each JSON document: `manifest.json`,
    /// `index.json`, `repositories`, `oci-layout`, top-level `*.json` and the
    /// image config.
    pub max_json_bytes: u64,
    /// Largest total of JSON documents held at once, waiting for the
    /// manifest to say which is the config.
    pub max_held_json_bytes: u64,
    /// Largest accepted number of entries (not counting extension headers).
    pub max_entries: u64,
    /// Longest accepted entry name or link target, in bytes.
    pub max_path_len: usize,
    /// Largest total of names and link targets remembered, in bytes.
    pub max_name_bytes: u64,
    /// Largest size the image may unpack to: the archive's files plus what
    /// compressed layers inflate to.
    pub max_unpacked_bytes: u64,
}

impl Default for ArchiveLimits {
    /// 1 MiB per JSON document, 4 MiB held, 10 000 entries, 4096-byte paths,
    /// 1 MiB of names, 20 GiB unpacked: far above what `docker save`
    /// produces, far below what would hurt the host.
    fn default() -> Self {
        Self {
            max_json_bytes: 1 << 20,
            max_held_json_bytes: 4 << 20,
            max_entries: 10_000,
            max_path_len: 4096,
            max_name_bytes: 1 << 20,
            max_unpacked_bytes: 20 << 30,
        }
    }
}

/// What the host sends Docker for a valid archive (available once the
/// stream ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// `sha256:<hex>` of the config as sent: the image ID Docker computes.
    pub image_id: String,
    /// `sha256:<hex>` of the config as the archive had it.
    pub source_config_digest: String,
    /// The layer paths in the manifest the host wrote, in order.
    pub layers: Vec<String>,
    /// Tags the archive asked for (never applied; at most 16 kept).
    pub dropped_tags: Vec<String>,
    /// Volumes the image declared, removed (at most 16 kept).
    pub removed_volumes: Vec<String>,
    /// The input's compression, if it had one.
    pub compression: Option<Compression>,
    /// Bytes received (compressed, if the input was).
    pub input_bytes: u64,
    /// Bytes sent to Docker.
    pub output_bytes: u64,
    /// What the image unpacks to, counted against `max_unpacked_bytes`.
    pub unpacked_bytes: u64,
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
    /// The input does not start like a tar file.
    #[error("image archive is not a tar file ({reason} at byte {offset})")]
    NotTar {
        /// Offset of the offending header.
        offset: u64,
        /// What was wrong with it.
        reason: String,
    },
    /// The input is compressed in a format the host does not unpack.
    #[error(
        "image archive is {}-compressed; only the output of `docker save`, plain or gzip-compressed, is accepted",
        .format.name()
    )]
    Compressed {
        /// The format Docker would have detected.
        format: Compression,
    },
    /// A gzip-compressed archive is corrupt or has data after its end.
    #[error("image archive: {reason}")]
    Gzip {
        /// What was wrong.
        reason: String,
    },
    /// A header or the end-of-archive marker is malformed.
    #[error("image archive is corrupt: {reason} at byte {offset}")]
    Corrupt {
        /// Offset of the offending header or byte (in the uncompressed tar).
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
    /// An entry name has too many components.
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
    /// A symlink the manifest relies on does not end at a regular file.
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
    /// More JSON waits for the manifest than `max_held_json_bytes`.
    #[error("image archive holds more than {max} bytes of JSON documents before its manifest")]
    TooMuchJson {
        /// The limit.
        max: u64,
    },
    /// `manifest.json` parses but is not an acceptable docker-save manifest.
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
    /// `manifest.json` lists several images.
    #[error("manifest.json lists {count} images; a Glance image holds exactly one")]
    SeveralImages {
        /// How many.
        count: usize,
    },
    /// The manifest names a config or layer that is not in the archive.
    #[error("manifest lists {what} {path:?} that the archive does not contain")]
    MissingBlob {
        /// "layer" or "config".
        what: &'static str,
        /// The path in the manifest.
        path: String,
    },
    /// The manifest names a config or layer that is not a regular file.
    #[error("manifest lists {what} {path:?}, which is not a regular file of the image")]
    BlobNotRegular {
        /// "layer" or "config".
        what: &'static str,
        /// The path in the manifest.
        path: String,
    },
    /// The image config is unacceptable.
    #[error("image config {path:?} is invalid: {reason}")]
    BadConfig {
        /// Its path in the archive.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The config's file name claims a digest its content does not have.
    #[error("image config {path:?} is named after a digest it does not have (its content is {digest})")]
    ConfigNameMismatch {
        /// Its path in the archive.
        path: String,
        /// The digest of its content.
        digest: String,
    },
    /// A file the manifest names as a layer would not unpack safely.
    #[error("layer {path:?} is refused: {reason}")]
    BadLayer {
        /// Its path in the archive.
        path: String,
        /// Why.
        reason: String,
    },
    /// The image unpacks to more than `max_unpacked_bytes`.
    #[error("image is larger than this host accepts: it unpacks to more than {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// More entries than `max_entries`.
    #[error("image archive has too many entries (the limit is {max})")]
    TooManyEntries {
        /// The limit.
        max: u64,
    },
    /// Names and link targets exceed `max_name_bytes`.
    #[error("image archive's names take more than {max} bytes")]
    TooManyNames {
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

/// A name for an error message, shortened if very long.
pub(crate) fn shown(name: &str) -> String {
    if name.len() <= SHOWN_NAME_MAX {
        return name.to_string();
    }
    let mut end = SHOWN_NAME_MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}
