//! Tests for `archive::validate`: archives built in memory with the `tar`
//! crate (and by hand where `tar` refuses to write hostile names), fed in
//! arbitrary chunkings, plus real `docker save` output when available.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use nova_docker::image::archive::{ArchiveError, ArchiveLimits, ArchiveSummary, validate};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Running the validator
// ---------------------------------------------------------------------------

/// What came out of the validator.
#[derive(Debug)]
struct Outcome {
    /// Concatenation of the `Ok` chunks.
    out: Vec<u8>,
    /// The summary, or the error's message.
    result: Result<ArchiveSummary, String>,
    /// The error itself (for matching on the variant).
    error: Option<ArchiveError>,
}

impl Outcome {
    fn err(&self) -> &str {
        match &self.result {
            Ok(s) => panic!("expected a refusal, got {s:?}"),
            Err(e) => e,
        }
    }
    fn summary(&self) -> &ArchiveSummary {
        match &self.result {
            Ok(s) => s,
            Err(e) => panic!("expected a valid archive, got: {e}"),
        }
    }
}

async fn run_stream<S>(input: S, limits: ArchiveLimits) -> Outcome
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let (stream, summary) = validate(input, limits);
    let mut stream = Box::pin(stream);
    let mut out = Vec::new();
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => {
                assert!(error.is_none(), "bytes after an error");
                assert!(!bytes.is_empty(), "empty chunk yielded");
                out.extend_from_slice(&bytes);
            }
            Err(e) => {
                assert!(error.is_none(), "two errors");
                error = Some(e);
            }
        }
    }
    assert!(stream.next().await.is_none(), "stream resumed after its end");
    let summary = summary.await;
    let result = match &error {
        Some(e) => {
            assert!(summary.is_err(), "summary sent for a refused archive");
            Err(e.to_string())
        }
        None => Ok(summary.expect("summary of a valid archive")),
    };
    Outcome { out, result, error }
}

fn run_chunks(chunks: Vec<Bytes>, limits: ArchiveLimits) -> Outcome {
    let input = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    futures::executor::block_on(run_stream(input, limits))
}

/// Splits `data` cycling through `sizes` (a 0 yields an empty chunk).
fn chunked(data: &[u8], sizes: &[usize]) -> Vec<Bytes> {
    let data = Bytes::copy_from_slice(data);
    let mut chunks = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let size = sizes.get(i % sizes.len().max(1)).copied().unwrap_or(4096);
        i += 1;
        let end = (at + size).min(data.len());
        chunks.push(data.slice(at..end));
        at = end;
        if i > 4 * data.len() + 16 {
            // Only zero sizes: finish in one piece.
            chunks.push(data.slice(at..));
            break;
        }
    }
    chunks
}

fn run(data: &[u8]) -> Outcome {
    run_with(data, ArchiveLimits::default())
}

fn run_with(data: &[u8], limits: ArchiveLimits) -> Outcome {
    let outcome = run_chunks(vec![Bytes::copy_from_slice(data)], limits);
    check_invariants(data, &outcome);
    outcome
}

/// Holds for every input: the output is a prefix of the input; it is all of
/// it exactly when the archive is valid; a refused archive never gets its
/// end-of-archive marker (nor the last byte before it) through.
fn check_invariants(data: &[u8], o: &Outcome) {
    assert!(data.starts_with(&o.out), "output is not a prefix of the input");
    match &o.result {
        Ok(summary) => {
            assert_eq!(o.out.len(), data.len(), "valid archive not passed whole");
            assert_eq!(summary.total_bytes, data.len() as u64);
        }
        Err(_) => {
            // A truncated input may stream up to its cut (then fails), but a
            // tar stream Docker could read to an end is never passed whole:
            // the last byte of its last entry is held back.
            if let Some(end) = tar_end(data) {
                assert!(o.out.len() < end, "refused archive's last entry passed whole");
            }
        }
    }
}

/// Offset of the end-of-archive marker, if `data` parses as a tar stream
/// (header walk only; used to check the hold-back rule).
fn tar_end(data: &[u8]) -> Option<usize> {
    let mut archive = tar::Archive::new(data);
    let entries = archive.entries().ok()?;
    let mut end = 0usize;
    for entry in entries {
        let entry = entry.ok()?;
        let size = usize::try_from(entry.size()).ok()?;
        let start = usize::try_from(entry.raw_file_position()).ok()?;
        end = start + size.div_ceil(512) * 512;
    }
    (end > 0).then_some(end)
}

// ---------------------------------------------------------------------------
// Building archives
// ---------------------------------------------------------------------------

fn hex(n: u32) -> String {
    format!("{n:064x}")
}

/// A small layer tarball.
fn layer_tar(content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_size(content.len() as u64);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "bin/busybox", content).expect("layer entry");
    b.into_inner().expect("layer tar")
}

fn config_json() -> Vec<u8> {
    br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:0000"]}}"#.to_vec()
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).expect("file entry");
}

fn add_dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_size(0);
    h.set_entry_type(tar::EntryType::Directory);
    b.append_data(&mut h, path, &[][..]).expect("dir entry");
}

fn add_symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o777);
    h.set_size(0);
    h.set_entry_type(tar::EntryType::Symlink);
    b.append_link(&mut h, path, target).expect("symlink entry");
}

fn finish(b: tar::Builder<Vec<u8>>) -> Vec<u8> {
    b.into_inner().expect("archive")
}

fn manifest(config: &str, tags: &[&str], layers: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!([{
        "Config": config,
        "RepoTags": tags,
        "Layers": layers,
    }]))
    .expect("manifest json")
}

/// Legacy (Docker < 25) layout: `<id>/{VERSION,json,layer.tar}`, `<cfg>.json`,
/// `manifest.json`, `repositories`.
fn legacy_archive() -> Vec<u8> {
    let layer = hex(1);
    let cfg = hex(2);
    let mut b = tar::Builder::new(Vec::new());
    add_dir(&mut b, &format!("{layer}/"));
    add_file(&mut b, &format!("{layer}/VERSION"), b"1.0");
    add_file(&mut b, &format!("{layer}/json"), br#"{"id":"1"}"#);
    add_file(&mut b, &format!("{layer}/layer.tar"), &layer_tar(b"busybox binary"));
    add_file(&mut b, &format!("{cfg}.json"), &config_json());
    add_file(
        &mut b,
        "manifest.json",
        &manifest(&format!("{cfg}.json"), &["demo:latest"], &[&format!("{layer}/layer.tar")]),
    );
    add_file(&mut b, "repositories", format!(r#"{{"demo":{{"latest":"{layer}"}}}}"#).as_bytes());
    finish(b)
}

/// Docker 25+ OCI layout: blobs first, `manifest.json` near the end.
fn oci_archive_with(config: &[u8], manifest_first: bool) -> Vec<u8> {
    let layer = hex(10);
    let cfg = hex(11);
    let mf = hex(12);
    let docker_manifest =
        manifest(&format!("blobs/sha256/{cfg}"), &["demo:oci", "demo:v2"], &[&format!("blobs/sha256/{layer}")]);
    let mut b = tar::Builder::new(Vec::new());
    if manifest_first {
        add_file(&mut b, "manifest.json", &docker_manifest);
    }
    add_dir(&mut b, "blobs/");
    add_dir(&mut b, "blobs/sha256/");
    add_file(&mut b, &format!("blobs/sha256/{layer}"), &layer_tar(b"busybox binary"));
    add_file(&mut b, &format!("blobs/sha256/{cfg}"), config);
    add_file(
        &mut b,
        &format!("blobs/sha256/{mf}"),
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
    );
    add_file(
        &mut b,
        "index.json",
        format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"sha256:{mf}"}}]}}"#).as_bytes(),
    );
    if !manifest_first {
        add_file(&mut b, "manifest.json", &docker_manifest);
    }
    add_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add_file(&mut b, "repositories", format!(r#"{{"demo":{{"oci":"{layer}"}}}}"#).as_bytes());
    finish(b)
}

fn oci_archive() -> Vec<u8> {
    oci_archive_with(&config_json(), false)
}

/// Hand-made entries for names and types the `tar` crate will not write.
#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    HardLink(String),
    Raw { typeflag: u8, size_field: u64, data: Vec<u8> },
}

#[derive(Debug, Clone)]
struct Entry {
    name: Vec<u8>,
    kind: Kind,
}

fn file(name: impl AsRef<[u8]>, data: impl Into<Vec<u8>>) -> Entry {
    Entry { name: name.as_ref().to_vec(), kind: Kind::File(data.into()) }
}

fn entry(name: impl AsRef<[u8]>, kind: Kind) -> Entry {
    Entry { name: name.as_ref().to_vec(), kind }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn push_block(out: &mut Vec<u8>, header: &tar::Header, data: &[u8]) {
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn raw_header(name: &[u8], typeflag: u8, size: u64, link: &[u8]) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::new(typeflag));
    h.set_size(size);
    let old = h.as_old_mut();
    let n = name.len().min(100);
    old.name[..n].copy_from_slice(&name[..n]);
    let n = link.len().min(100);
    old.linkname[..n].copy_from_slice(&link[..n]);
    h.set_cksum();
    h
}

/// Writes entries by hand; names or targets over 100 bytes get PAX headers.
fn build(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (typeflag, size, data, link): (u8, u64, &[u8], &[u8]) = match &e.kind {
            Kind::File(d) => (b'0', d.len() as u64, d, b""),
            Kind::Dir => (b'5', 0, b"", b""),
            Kind::Symlink(t) => (b'2', 0, b"", t.as_bytes()),
            Kind::HardLink(t) => (b'1', 0, b"", t.as_bytes()),
            Kind::Raw { typeflag, size_field, data } => (*typeflag, *size_field, data, b""),
        };
        if e.name.len() > 100 || link.len() > 100 {
            let mut records = Vec::new();
            if e.name.len() > 100 {
                records.extend(pax_record("path", &e.name));
            }
            if link.len() > 100 {
                records.extend(pax_record("linkpath", link));
            }
            let h = raw_header(b"PaxHeaders/entry", b'x', records.len() as u64, b"");
            push_block(&mut out, &h, &records);
        }
        let h = raw_header(&e.name, typeflag, size, link);
        push_block(&mut out, &h, data);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

/// Entries of a valid legacy archive, for building variants by hand.
fn legacy_entries() -> Vec<Entry> {
    let layer = hex(1);
    let cfg = hex(2);
    vec![
        entry(format!("{layer}/"), Kind::Dir),
        file(format!("{layer}/VERSION"), b"1.0".to_vec()),
        file(format!("{layer}/layer.tar"), layer_tar(b"busybox")),
        file(format!("{cfg}.json"), config_json()),
        file("manifest.json", manifest(&format!("{cfg}.json"), &["demo:latest"], &[&format!("{layer}/layer.tar")])),
    ]
}

fn with_extra(extra: Entry) -> Vec<u8> {
    let mut entries = legacy_entries();
    entries.insert(1, extra);
    build(&entries)
}

fn manifest_entries(manifest_json: Vec<u8>) -> Vec<u8> {
    let mut entries = legacy_entries();
    if let Some(last) = entries.last_mut() {
        last.kind = Kind::File(manifest_json);
    }
    build(&entries)
}

// ---------------------------------------------------------------------------
// Valid archives
// ---------------------------------------------------------------------------

#[test]
fn valid_legacy_archive() {
    let data = legacy_archive();
    let o = run(&data);
    let s = o.summary();
    assert_eq!(o.out, data);
    assert_eq!(s.repo_tags, vec!["demo:latest".to_string()]);
    assert_eq!(s.config_digest, Some(format!("sha256:{}", hex(2))));
    assert_eq!(s.layers, vec![format!("{}/layer.tar", hex(1))]);
    assert_eq!(s.total_bytes, data.len() as u64);
}

#[test]
fn valid_oci_archive() {
    let data = oci_archive();
    let o = run(&data);
    let s = o.summary();
    assert_eq!(o.out, data);
    assert_eq!(s.repo_tags, vec!["demo:oci".to_string(), "demo:v2".to_string()]);
    assert_eq!(s.config_digest, Some(format!("sha256:{}", hex(11))));
    assert_eq!(s.layers, vec![format!("blobs/sha256/{}", hex(10))]);
}

#[test]
fn valid_oci_archive_with_manifest_first() {
    let o = run(&oci_archive_with(&config_json(), true));
    o.summary();
}

#[test]
fn valid_hand_built_archive() {
    let o = run(&build(&legacy_entries()));
    assert_eq!(o.summary().repo_tags, vec!["demo:latest".to_string()]);
}

#[test]
fn valid_symlinked_layer_pointing_forward() {
    // Legacy docker save links duplicate layers: <b>/layer.tar -> ../<a>/layer.tar.
    // Here the target comes later in the stream.
    let (a, b, cfg) = (hex(1), hex(3), hex(2));
    let data = build(&[
        entry(format!("{b}/"), Kind::Dir),
        entry(format!("{b}/layer.tar"), Kind::Symlink(format!("../{a}/layer.tar"))),
        entry(format!("{a}/"), Kind::Dir),
        file(format!("{a}/layer.tar"), layer_tar(b"x")),
        file(format!("{cfg}.json"), config_json()),
        file(
            "manifest.json",
            manifest(&format!("{cfg}.json"), &[], &[&format!("{a}/layer.tar"), &format!("{b}/layer.tar")]),
        ),
    ]);
    let o = run(&data);
    assert_eq!(o.summary().layers.len(), 2);
    assert!(o.summary().repo_tags.is_empty());
}

#[test]
fn valid_symlinked_layer_pointing_back() {
    // As the real engine writes it: the target comes first.
    let (a, b, cfg) = (hex(1), hex(3), hex(2));
    let mut ar = tar::Builder::new(Vec::new());
    add_dir(&mut ar, &format!("{a}/"));
    add_file(&mut ar, &format!("{a}/layer.tar"), &layer_tar(b"x"));
    add_dir(&mut ar, &format!("{b}/"));
    add_symlink(&mut ar, &format!("{b}/layer.tar"), &format!("../{a}/layer.tar"));
    add_file(&mut ar, &format!("{cfg}.json"), &config_json());
    add_file(
        &mut ar,
        "manifest.json",
        &manifest(&format!("{cfg}.json"), &["x:y"], &[&format!("{a}/layer.tar"), &format!("{b}/layer.tar")]),
    );
    run(&finish(ar)).summary();
}

#[test]
fn valid_hard_linked_layer() {
    let (a, b, cfg) = (hex(1), hex(3), hex(2));
    let data = build(&[
        file(format!("{a}/layer.tar"), layer_tar(b"x")),
        entry(format!("{b}/layer.tar"), Kind::HardLink(format!("{a}/layer.tar"))),
        file(format!("{cfg}.json"), config_json()),
        file("manifest.json", manifest(&format!("{cfg}.json"), &["a:b"], &[&format!("{b}/layer.tar")])),
    ]);
    run(&data).summary();
}

#[test]
fn valid_long_names_pax_and_gnu() {
    let deep = format!("{}/{}/{}", "d".repeat(90), "e".repeat(90), "layer.tar");
    let cfg = hex(2);
    // PAX path headers, written by hand.
    let pax = build(&[
        file(&deep, layer_tar(b"x")),
        file(format!("{cfg}.json"), config_json()),
        file("manifest.json", manifest(&format!("{cfg}.json"), &["long:pax"], &[&deep])),
    ]);
    assert_eq!(run(&pax).summary().layers, vec![deep.clone()]);

    // GNU 'L' long names, written by the tar crate.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(layer_tar(b"x").len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, &deep, layer_tar(b"x").as_slice()).expect("long name");
    add_file(&mut b, &format!("{cfg}.json"), &config_json());
    add_file(&mut b, "manifest.json", &manifest(&format!("{cfg}.json"), &["long:gnu"], &[&deep]));
    let gnu = finish(b);
    assert!(gnu.windows(13).any(|w| w == b"././@LongLink"), "GNU long name expected");
    assert_eq!(run(&gnu).summary().repo_tags, vec!["long:gnu".to_string()]);
}

#[test]
fn valid_gnu_base256_size_and_record_padding() {
    let mut data = build(&legacy_entries());
    // Re-encode the first file's size (VERSION, 3 bytes) in GNU base-256.
    let header = &mut data[512..1024];
    assert_eq!(&header[0..64], hex(1).as_bytes());
    header[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(header);
    h.set_cksum();
    header.copy_from_slice(h.as_bytes());
    // GNU tar pads the archive to a 10 KiB record with zeros.
    data.resize(data.len().div_ceil(10240) * 10240 + 10240, 0);
    let o = run(&data);
    o.summary();
    assert_eq!(o.out, data);
}

#[test]
fn valid_with_leading_dot_slash_and_root_dir() {
    let mut entries = legacy_entries();
    for e in &mut entries {
        let mut name = b"./".to_vec();
        name.extend_from_slice(&e.name);
        e.name = name;
    }
    entries.insert(0, entry("./", Kind::Dir));
    run(&build(&entries)).summary();
}

// ---------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------

#[test]
fn refuses_path_traversal() {
    let o = run(&with_extra(file("../etc/passwd", b"root::0:0::/:/bin/sh\n".to_vec())));
    assert_eq!(o.err(), "image archive entry \"../etc/passwd\" escapes the archive");
    assert!(matches!(o.error, Some(ArchiveError::PathEscapes { .. })));
    let o = run(&with_extra(file("a/../../x", b"x".to_vec())));
    assert!(matches!(o.error, Some(ArchiveError::PathEscapes { .. })));
    // Also when the name comes from a PAX header.
    let long = format!("{}/../../../etc/shadow", "a".repeat(120));
    let o = run(&with_extra(file(&long, b"x".to_vec())));
    assert!(matches!(o.error, Some(ArchiveError::PathEscapes { .. })), "{}", o.err());
}

#[test]
fn refuses_absolute_path() {
    let o = run(&with_extra(file("/etc/cron.d/evil", b"x".to_vec())));
    assert_eq!(o.err(), "image archive entry \"/etc/cron.d/evil\" has an absolute path");
}

#[test]
fn refuses_escaping_symlinks() {
    let layer = hex(1);
    let o = run(&with_extra(entry(format!("{layer}/evil"), Kind::Symlink("../../etc/passwd".into()))));
    assert!(matches!(o.error, Some(ArchiveError::SymlinkEscapes { .. })), "{}", o.err());
    assert!(o.err().contains("points outside the archive"));
    let o = run(&with_extra(entry(format!("{layer}/evil"), Kind::Symlink("/etc/passwd".into()))));
    assert!(matches!(o.error, Some(ArchiveError::SymlinkEscapes { .. })), "{}", o.err());
}

#[test]
fn refuses_symlink_in_root() {
    let o = run(&with_extra(entry("evil", Kind::Symlink("manifest.json".into()))));
    assert_eq!(o.err(), "symlink \"evil\" in the archive root is refused");
}

#[test]
fn refuses_dangling_symlink_at_the_end() {
    let layer = hex(1);
    let o = run(&with_extra(entry(format!("{layer}/other.tar"), Kind::Symlink("../nowhere/layer.tar".into()))));
    assert!(matches!(o.error, Some(ArchiveError::SymlinkDangling { .. })), "{}", o.err());
    // Found only at the end: the marker and the last entry's tail are held.
    let data = with_extra(entry(format!("{layer}/other.tar"), Kind::Symlink("../nowhere/layer.tar".into())));
    assert!(o.out.len() < data.len() - 1024);
}

#[test]
fn refuses_entries_below_a_symlink() {
    let (a, b) = (hex(1), hex(3));
    let o = run(&with_extra(entry(format!("{b}/dir"), Kind::Symlink(format!("../{a}")))));
    // The symlink points at a directory.
    assert!(matches!(o.error, Some(ArchiveError::SymlinkDangling { .. })), "{}", o.err());
    let mut entries = legacy_entries();
    entries.insert(1, entry(format!("{b}/dir"), Kind::Symlink(format!("../{a}"))));
    entries.insert(2, file(format!("{b}/dir/x"), b"x".to_vec()));
    let o = run(&build(&entries));
    assert!(matches!(o.error, Some(ArchiveError::NotADirectory { .. })), "{}", o.err());
}

#[test]
fn refuses_bad_hard_links() {
    let o = run(&with_extra(entry("x/y", Kind::HardLink("../../etc/shadow".into()))));
    assert!(matches!(o.error, Some(ArchiveError::HardLinkEscapes { .. })), "{}", o.err());
    let o = run(&with_extra(entry("x/y", Kind::HardLink("/etc/shadow".into()))));
    assert!(matches!(o.error, Some(ArchiveError::HardLinkEscapes { .. })), "{}", o.err());
    let o = run(&with_extra(entry("x/y", Kind::HardLink("not/there".into()))));
    assert!(matches!(o.error, Some(ArchiveError::HardLinkMissing { .. })), "{}", o.err());
    assert!(o.err().contains("missing entry"));
}

#[test]
fn refuses_device_nodes_and_fifos() {
    for (typeflag, expected) in [
        (b'3', "device node \"dev/x\" (character device) is refused"),
        (b'4', "device node \"dev/x\" (block device) is refused"),
        (b'6', "FIFO \"dev/x\" is refused"),
    ] {
        let o = run(&with_extra(entry("dev/x", Kind::Raw { typeflag, size_field: 0, data: vec![] })));
        assert_eq!(o.err(), expected);
    }
    let o = run(&with_extra(entry("sparse", Kind::Raw { typeflag: b'S', size_field: 0, data: vec![] })));
    assert!(matches!(o.error, Some(ArchiveError::UnsupportedType { typeflag: 'S', .. })));
    // Contiguous files: Docker's untar does not handle them either.
    let o = run(&with_extra(entry("x/contiguous", Kind::Raw { typeflag: b'7', size_field: 0, data: vec![] })));
    assert!(matches!(o.error, Some(ArchiveError::UnsupportedType { typeflag: '7', .. })));
}

#[test]
fn refuses_missing_manifest() {
    let mut entries = legacy_entries();
    entries.pop();
    let data = build(&entries);
    let o = run(&data);
    assert_eq!(o.err(), "manifest.json is missing");
    assert!(o.out.len() < data.len() - 1024);
}

#[test]
fn refuses_manifest_with_missing_layer() {
    let cfg = hex(2);
    let data = manifest_entries(manifest(&format!("{cfg}.json"), &["a:b"], &["nothere/layer.tar"]));
    let o = run(&data);
    assert_eq!(o.err(), "manifest lists layer \"nothere/layer.tar\" that the archive does not contain");
    // The final 1024 zero bytes (and more) were held back.
    assert!(o.out.len() < data.len() - 1024);

    let o = run(&manifest_entries(manifest("missing.json", &[], &[&format!("{}/layer.tar", hex(1))])));
    assert_eq!(o.err(), "manifest lists config \"missing.json\" that the archive does not contain");

    // A layer path naming a directory.
    let o = run(&manifest_entries(manifest(&format!("{cfg}.json"), &[], &[&hex(1)])));
    assert!(matches!(o.error, Some(ArchiveError::BlobNotRegular { .. })), "{}", o.err());
}

#[test]
fn refuses_oversize_manifest() {
    let limits = ArchiveLimits { max_json_bytes: 200, ..ArchiveLimits::default() };
    let mut entries = legacy_entries();
    let big = manifest(&format!("{}.json", hex(2)), &["x".repeat(300).as_str()], &[]);
    let big_len = big.len();
    if let Some(last) = entries.last_mut() {
        last.kind = Kind::File(big);
    }
    let o = run_with(&build(&entries), limits);
    assert_eq!(o.err(), format!("manifest.json is larger than 200 bytes (it is {big_len} bytes)"));
}

#[test]
fn refuses_oversize_or_invalid_config() {
    // OCI: the config blob passes before manifest.json names it.
    let limits = ArchiveLimits { max_json_bytes: 1000, ..ArchiveLimits::default() };
    let mut big = b"{\"pad\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 2000));
    big.extend_from_slice(b"\"}");
    let o = run_with(&oci_archive_with(&big, false), limits.clone());
    assert!(matches!(o.error, Some(ArchiveError::JsonTooLarge { .. })), "{}", o.err());
    assert!(o.err().starts_with("image config \"blobs/sha256/"), "{}", o.err());
    // After manifest.json named it: refused as soon as its header arrives.
    let o = run_with(&oci_archive_with(&big, true), limits);
    assert!(matches!(o.error, Some(ArchiveError::JsonTooLarge { .. })), "{}", o.err());

    for bad in [&b"not json"[..], b"{\"a\":", b"[1,2]", b""] {
        for manifest_first in [false, true] {
            let o = run(&oci_archive_with(bad, manifest_first));
            assert!(matches!(o.error, Some(ArchiveError::InvalidJson { .. })), "{bad:?}: {}", o.err());
        }
    }
}

#[test]
fn refuses_invalid_manifests() {
    let o = run(&manifest_entries(b"[{\"Config\": ".to_vec()));
    assert!(o.err().starts_with("manifest.json is not valid JSON: "), "{}", o.err());
    let o = run(&manifest_entries(b"{}".to_vec()));
    assert!(matches!(o.error, Some(ArchiveError::BadManifest { .. })), "{}", o.err());
    let o = run(&manifest_entries(b"[]".to_vec()));
    assert_eq!(o.err(), "manifest.json lists no images");
    let o = run(&manifest_entries(br#"[{"Config":"a.json","Layers":"x"}]"#.to_vec()));
    assert!(matches!(o.error, Some(ArchiveError::BadManifest { .. })), "{}", o.err());
    let o = run(&manifest_entries(br#"[{"Config":"a.json","RepoTags":[1],"Layers":[]}]"#.to_vec()));
    assert!(matches!(o.error, Some(ArchiveError::BadManifest { .. })), "{}", o.err());
    // Go's decoder would read "config" (or "Layer\u017f") as the real field.
    let cfg = format!("{}.json", hex(2));
    let sneaky = format!(r#"[{{"Config":"{cfg}","config":"other.json","Layers":[]}}]"#);
    let o = run(&manifest_entries(sneaky.into_bytes()));
    assert!(o.err().contains("which Docker would read as \"Config\""), "{}", o.err());
    let sneaky = format!("[{{\"Config\":\"{cfg}\",\"Layers\":[],\"Layer\u{17f}\":[\"x\"]}}]");
    let o = run(&manifest_entries(sneaky.into_bytes()));
    assert!(matches!(o.error, Some(ArchiveError::BadManifest { .. })), "{}", o.err());
    let o = run(&manifest_entries(manifest("../escape.json", &[], &[])));
    assert!(matches!(o.error, Some(ArchiveError::BadManifest { .. })), "{}", o.err());
    // Invalid JSON is refused before Docker sees the manifest's header.
    let data = manifest_entries(b"[{\"Config\": ".to_vec());
    let o = run(&data);
    let manifest_header = data.windows(13).position(|w| w == b"manifest.json").expect("manifest header");
    assert!(o.out.len() < manifest_header);
}

#[test]
fn refuses_other_metadata() {
    let o = run(&with_extra(file("index.json", b"{\"schemaVersion\":".to_vec())));
    assert!(o.err().starts_with("index.json is not valid JSON"), "{}", o.err());
    let o = run(&with_extra(file("repositories", b"[]".to_vec())));
    assert!(o.err().starts_with("repositories is not valid JSON"), "{}", o.err());
    let o = run(&with_extra(entry("manifest.json", Kind::Dir)));
    assert_eq!(o.err(), "manifest.json must be a regular file");
}

#[test]
fn refuses_garbage_bytes() {
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let o = run(&garbage);
    assert_eq!(o.err(), "image archive is not a tar file (bad header checksum at byte 0)");
    assert!(o.out.is_empty());
    let o = run(b"hello");
    assert!(matches!(o.error, Some(ArchiveError::NotTar { .. })), "{}", o.err());
    let o = run(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
    assert!(matches!(o.error, Some(ArchiveError::Compressed { format: "gzip" })));
}

#[test]
fn refuses_truncated_archives() {
    let data = legacy_archive();
    for cut in [1, 511, 512, 700, 1024, data.len() / 2, data.len() - 1024, data.len() - 513, data.len() - 1] {
        let o = run(&data[..cut]);
        assert!(
            matches!(o.error, Some(ArchiveError::Truncated { .. } | ArchiveError::NotTar { .. })),
            "cut at {cut}: {}",
            o.err()
        );
    }
    assert!(run(&data[..data.len() - 1]).err().starts_with("truncated archive"));
}

#[test]
fn refuses_empty_input() {
    assert_eq!(run(b"").err(), "image archive is empty");
    assert_eq!(run(&[0; 10240]).err(), "image archive is empty");
}

#[test]
fn refuses_trailing_data() {
    let mut data = legacy_archive();
    data.extend_from_slice(b"more");
    let o = run(&data);
    assert!(matches!(o.error, Some(ArchiveError::TrailingData { .. })), "{}", o.err());
    // A second archive glued on.
    let mut data = legacy_archive();
    data.extend(legacy_archive());
    assert!(run(&data).err().contains("after its end-of-archive marker"));
}

#[test]
fn refuses_structural_tricks() {
    // Too many entries.
    let limits = ArchiveLimits { max_entries: 3, ..ArchiveLimits::default() };
    let o = run_with(&legacy_archive(), limits);
    assert_eq!(o.err(), "image archive has too many entries (the limit is 3)");
    // Same name twice.
    let o = run(&with_extra(file(format!("./{}//VERSION", hex(1)), b"1.0".to_vec())));
    assert!(matches!(o.error, Some(ArchiveError::Duplicate { .. })), "{}", o.err());
    let o = run(&with_extra(file(hex(1), b"".to_vec())));
    assert!(matches!(o.error, Some(ArchiveError::Duplicate { .. })), "{}", o.err());
    // A directory with a size: Go would skip 0 bytes, a naive reader 1024.
    let o = run(&with_extra(entry("dir/", Kind::Raw { typeflag: b'5', size_field: 1024, data: vec![] })));
    assert!(o.err().contains("non-zero size"), "{}", o.err());
    // Whiteout names.
    let o = run(&with_extra(file("x/.wh.layer.tar", b"".to_vec())));
    assert!(matches!(o.error, Some(ArchiveError::BadName { .. })), "{}", o.err());
    // Over-long names.
    let limits = ArchiveLimits { max_path_len: 50, ..ArchiveLimits::default() };
    let o = run_with(&with_extra(file("a".repeat(60), b"".to_vec())), limits);
    assert!(matches!(o.error, Some(ArchiveError::PathTooLong { .. })), "{}", o.err());
    // Too deep.
    let o = run(&with_extra(file("a/".repeat(40) + "x", b"".to_vec())));
    assert!(matches!(o.error, Some(ArchiveError::PathTooDeep { .. })), "{}", o.err());
    // A single zero block followed by data.
    let mut data = legacy_archive();
    let end = tar_end(&data).expect("tar");
    data[end + 600] = 1;
    let o = run(&data);
    assert!(o.err().contains("single zero block"), "{}", o.err());
}

#[test]
fn input_errors_are_reported() {
    let data = legacy_archive();
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::copy_from_slice(&data[..2048])),
        Err(std::io::Error::other("glance connection reset")),
        Ok(Bytes::copy_from_slice(&data[2048..])),
    ];
    let o = futures::executor::block_on(run_stream(futures::stream::iter(chunks), ArchiveLimits::default()));
    assert_eq!(o.err(), "reading the image archive failed: glance connection reset");
    assert!(matches!(o.error, Some(ArchiveError::Input { .. })));
    assert!(o.out.len() <= 2048);
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

fn valid_archives() -> Vec<Vec<u8>> {
    vec![legacy_archive(), oci_archive(), oci_archive_with(&config_json(), true), build(&legacy_entries())]
}

fn invalid_archives() -> Vec<Vec<u8>> {
    let cfg = format!("{}.json", hex(2));
    let mut missing_manifest = legacy_entries();
    missing_manifest.pop();
    vec![
        with_extra(file("../etc/passwd", b"x".to_vec())),
        with_extra(file("/abs", b"x".to_vec())),
        with_extra(entry(format!("{}/l", hex(1)), Kind::Symlink("../../x".into()))),
        with_extra(entry("dev/x", Kind::Raw { typeflag: b'3', size_field: 0, data: vec![] })),
        build(&missing_manifest),
        manifest_entries(manifest(&cfg, &[], &["nothere/layer.tar"])),
        manifest_entries(b"[{".to_vec()),
        oci_archive_with(b"nope", false),
        legacy_archive()[..3000].to_vec(),
        b"definitely not a tar archive".repeat(40),
    ]
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![0usize..3, 1usize..600, Just(511), Just(512), Just(513), 1usize..20_000], 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    /// Any chunking of a valid archive passes it through byte for byte.
    #[test]
    fn chunking_never_changes_valid_output(which in 0usize..4, sizes in sizes()) {
        let data = &valid_archives()[which];
        let o = run_chunks(chunked(data, &sizes), ArchiveLimits::default());
        check_invariants(data, &o);
        prop_assert!(o.result.is_ok(), "{:?}", o.result);
        prop_assert_eq!(&o.out, data);
    }

    /// Any chunking of an invalid archive gives the same verdict and the
    /// same output prefix.
    #[test]
    fn chunking_never_changes_the_verdict(which in 0usize..10, sizes in sizes()) {
        let data = &invalid_archives()[which];
        let whole = run(data);
        let o = run_chunks(chunked(data, &sizes), ArchiveLimits::default());
        check_invariants(data, &o);
        prop_assert!(o.result.is_err());
        prop_assert_eq!(&o.result.as_ref().err(), &whole.result.as_ref().err());
        prop_assert_eq!(&o.out, &whole.out);
    }

    /// Every proper prefix of a valid archive is refused.
    #[test]
    fn every_prefix_is_refused(which in 0usize..4, cut in any::<prop::sample::Index>(), sizes in sizes()) {
        let data = &valid_archives()[which];
        let cut = cut.index(data.len());
        let o = run_chunks(chunked(&data[..cut], &sizes), ArchiveLimits::default());
        check_invariants(&data[..cut], &o);
        prop_assert!(o.result.is_err());
    }

    /// Random bytes never panic.
    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4096), sizes in sizes()) {
        let o = run_chunks(chunked(&data, &sizes), ArchiveLimits::default());
        check_invariants(&data, &o);
    }

    /// Random mutations of valid archives never panic and never let a
    /// refused archive through whole.
    #[test]
    fn mutations_never_panic(
        which in 0usize..4,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
        sizes in sizes(),
    ) {
        let mut data = valid_archives()[which].clone();
        for (at, value, how) in edits {
            if data.is_empty() {
                break;
            }
            let i = at.index(data.len());
            match how {
                0 => data[i] = value,
                1 => { data.insert(i, value); }
                2 => { data.remove(i); }
                _ => {
                    // Mutate a header field and fix the checksum, so the
                    // mutation reaches the parser behind the checksum test.
                    let block = i / 512 * 512;
                    if block + 512 <= data.len() && header_checksum_ok(&data[block..block + 512]) {
                        data[block + (i % 512)] = value;
                        fix_checksum(&mut data[block..block + 512]);
                    }
                }
            }
        }
        let o = run_chunks(chunked(&data, &sizes), ArchiveLimits::default());
        check_invariants(&data, &o);
    }
}

/// Random archives made of hostile-looking pieces: names with `..`, `.`,
/// empty components and metadata names, every entry type, links to
/// anything, and JSON that may or may not fit.
fn hostile_entries() -> impl Strategy<Value = Vec<Entry>> {
    let component = prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just(String::new()),
        Just("manifest.json".to_string()),
        Just("layer.tar".to_string()),
        Just("c.json".to_string()),
        Just(".wh.x".to_string()),
        Just(hex(1)),
    ];
    let name = (prop_oneof![Just(""), Just("/"), Just("./")], prop::collection::vec(component, 1..4))
        .prop_map(|(lead, parts)| format!("{lead}{}", parts.join("/")));
    let data = prop_oneof![
        Just(config_json()),
        Just(layer_tar(b"x")),
        Just(b"[]".to_vec()),
        Just(manifest("c.json", &["t:1"], &["a/layer.tar"])),
        Just(manifest("a/c.json", &[], &["a/layer.tar", "b/layer.tar"])),
        prop::collection::vec(any::<u8>(), 0..700),
    ];
    let kind = prop_oneof![
        4 => data.prop_map(Kind::File),
        2 => Just(Kind::Dir),
        2 => name.clone().prop_map(Kind::Symlink),
        1 => name.clone().prop_map(Kind::HardLink),
        1 => (prop_oneof![Just(b'3'), Just(b'6'), Just(b'7'), Just(b'g'), Just(b'x'), Just(b'L'), Just(0u8)], 0u64..40)
            .prop_map(|(typeflag, size_field)| Kind::Raw {
                typeflag,
                size_field,
                data: vec![b'7'; usize::try_from(size_field).unwrap_or(0)],
            }),
    ];
    prop::collection::vec((name, kind).prop_map(|(name, kind)| Entry { name: name.into_bytes(), kind }), 0..12)
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    /// Random hostile archives: no panic, and the verdict and the output do
    /// not depend on how the input is chunked.
    #[test]
    fn hostile_archives_are_judged_independently_of_chunking(entries in hostile_entries(), sizes in sizes()) {
        let data = build(&entries);
        let whole = run(&data);
        let o = run_chunks(chunked(&data, &sizes), ArchiveLimits::default());
        check_invariants(&data, &o);
        prop_assert_eq!(&o.result.as_ref().err(), &whole.result.as_ref().err());
        prop_assert_eq!(&o.out, &whole.out);
    }
}

fn header_checksum_ok(block: &[u8]) -> bool {
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(block);
    block.iter().any(|&b| b != 0) && h.cksum().ok() == Some(checksum(block))
}

fn checksum(block: &[u8]) -> u32 {
    block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u32::from(b) }).sum()
}

fn fix_checksum(block: &mut [u8]) {
    let sum = checksum(block);
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

// ---------------------------------------------------------------------------
// Real docker save output
// ---------------------------------------------------------------------------

fn fixture(name: &str) -> Option<PathBuf> {
    Some(crate::common::fixture(name))
}

async fn run_file(path: &Path) -> Outcome {
    let file = tokio::fs::File::open(path).await.expect("open fixture");
    let input = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    run_stream(input, ArchiveLimits::default()).await
}

/// `docker save` of an image imported from a rootfs holding bin/busybox
/// (Docker 20.10, legacy layout).
#[tokio::test]
async fn real_docker_save_archive() {
    let Some(path) = fixture("busybox-save.tar") else {
        return;
    };
    let data = std::fs::read(&path).expect("read fixture");
    let o = run_file(&path).await;
    check_invariants(&data, &o);
    let s = o.summary();
    assert_eq!(o.out, data);
    assert_eq!(s.repo_tags, vec!["nova-docker-archive-test:busybox".to_string()]);
    let digest = s.config_digest.as_deref().expect("config digest");
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
    assert_eq!(s.layers.len(), 1);
    assert!(s.layers[0].ends_with("/layer.tar"));
}

/// `docker save` of an image whose fourth layer repeats the second one, so
/// the engine wrote `<id>/layer.tar` as a symlink to `../<other>/layer.tar`.
#[tokio::test]
async fn real_docker_save_archive_with_symlinked_layer() {
    let Some(path) = fixture("busybox-symlink-save.tar") else {
        return;
    };
    let data = std::fs::read(&path).expect("read fixture");
    let o = run_file(&path).await;
    check_invariants(&data, &o);
    assert_eq!(o.summary().layers.len(), 4);
    assert_eq!(o.out, data);
}

/// End to end with the real engine: pipe validated bytes into `docker load`,
/// closing its stdin *cleanly* on error (the worst consumer). A refused
/// archive must not be loaded; the valid one must.
#[tokio::test]
async fn real_docker_load_sees_only_validated_archives() {
    let Some(path) = fixture("busybox-save.tar") else {
        return;
    };
    assert!(Path::new("/var/run/docker.sock").exists(), "no Docker engine at /var/run/docker.sock");
    let tag = "nova-docker-archive-test:busybox";
    let good = std::fs::read(&path).expect("read fixture");

    // Same archive plus a dangling symlink as its last entry: Docker itself
    // would load it; the validator only refuses it at the very end.
    let end = tar_end(&good).expect("fixture is a tar");
    let mut bad = good[..end].to_vec();
    let layer_dir = std::str::from_utf8(&good[..64]).expect("first entry is the layer dir");
    let h = raw_header(format!("{layer_dir}/extra").as_bytes(), b'2', 0, b"../missing");
    push_block(&mut bad, &h, b"");
    bad.extend_from_slice(&[0; 1024]);

    let _ = std::process::Command::new("docker").args(["rmi", tag]).output();
    let (loaded, error) = docker_load(bad).await;
    assert!(matches!(error, Some(ArchiveError::SymlinkDangling { .. })), "{error:?}");
    assert!(!loaded, "docker load accepted a refused archive");
    assert!(!image_exists(tag), "refused image was loaded");

    let (loaded, error) = docker_load(good).await;
    assert!(error.is_none(), "{error:?}");
    assert!(loaded, "docker load failed on a valid archive");
    assert!(image_exists(tag));
}

async fn docker_load(data: Vec<u8>) -> (bool, Option<ArchiveError>) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("docker")
        .arg("load")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn docker load");
    let mut stdin = child.stdin.take().expect("stdin");
    let chunks = chunked(&data, &[4096, 100_000, 7]);
    let input = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let (stream, _summary) = validate(input, ArchiveLimits::default());
    let mut stream = Box::pin(stream);
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => stdin.write_all(&bytes).await.expect("write to docker load"),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    stdin.shutdown().await.expect("close stdin");
    drop(stdin);
    let output = child.wait_with_output().await.expect("docker load");
    let _ = std::io::stderr().write_all(&output.stderr);
    (output.status.success(), error)
}

fn image_exists(tag: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", tag])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
