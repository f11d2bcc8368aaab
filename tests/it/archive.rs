//! Tests for `archive::canonicalize`: archives built in memory with the `tar`
//! crate (and by hand where `tar` refuses to write hostile names), fed in
//! arbitrary chunkings, plain and gzip-compressed, plus real `docker save`
//! output and a differential test against the real engine.
//!
//! What holds for every input: a valid archive comes out as the host's own
//! archive (regular files only, unique names, the config under its digest,
//! then a manifest with no tags, then the end marker), whatever the chunking;
//! a refused one never gets a manifest (so Docker cannot load anything).

use std::collections::{HashMap, HashSet};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use nova_docker::image::archive::{ArchiveError, ArchiveLimits, ArchiveSummary, Compression, canonicalize};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// Running the canonicalizer
// ---------------------------------------------------------------------------

/// What came out.
#[derive(Debug)]
pub struct Outcome {
    /// Concatenation of the `Ok` chunks.
    pub out: Vec<u8>,
    /// The summary, or the error's message.
    pub result: Result<ArchiveSummary, String>,
    /// The error itself (for matching on the variant).
    pub error: Option<ArchiveError>,
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

pub async fn run_stream<S>(input: S, limits: ArchiveLimits) -> Outcome
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let (stream, summary) = canonicalize(input, limits);
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

/// One entry of the host's archive, as the `tar` crate reads it.
#[derive(Debug, Clone)]
pub struct OutEntry {
    pub name: String,
    pub kind: tar::EntryType,
    pub data: Vec<u8>,
}

/// Reads an output with the `tar` crate: its entries (up to the first error)
/// and whether it ended with a complete end-of-archive marker.
pub fn read_output(out: &[u8]) -> (Vec<OutEntry>, bool) {
    let mut archive = tar::Archive::new(out);
    let mut entries = Vec::new();
    let mut complete = false;
    if let Ok(iter) = archive.entries() {
        complete = true;
        for e in iter {
            let Ok(mut e) = e else {
                complete = false;
                break;
            };
            let name = String::from_utf8_lossy(&e.path_bytes()).to_string();
            let kind = e.header().entry_type();
            let mut data = Vec::new();
            if e.read_to_end(&mut data).is_err() {
                complete = false;
                break;
            }
            entries.push(OutEntry { name, kind, data });
        }
    }
    (entries, complete && out.len() >= 1024 && out[out.len() - 1024..].iter().all(|&b| b == 0))
}

/// Holds for every input: a valid archive comes out as the host's archive;
/// a refused one never has a manifest in what came out.
pub fn check_invariants(input: &[u8], o: &Outcome) {
    let (entries, complete) = read_output(&o.out);
    match &o.result {
        Ok(s) => {
            assert!(complete, "a valid archive's output is not a complete tar");
            assert_eq!(s.output_bytes, o.out.len() as u64);
            assert_eq!(s.input_bytes, input.len() as u64);
            let mut names = HashSet::new();
            for e in &entries {
                assert_eq!(e.kind, tar::EntryType::Regular, "{} is not a regular file", e.name);
                assert!(names.insert(e.name.clone()), "{} sent twice", e.name);
                assert!(!["repositories", "index.json", "oci-layout"].contains(&e.name.as_str()), "{} sent", e.name);
            }
            let n = entries.len();
            assert!(n >= 2, "no config and manifest");
            let (config, manifest) = (&entries[n - 2], &entries[n - 1]);
            assert_eq!(manifest.name, "manifest.json");
            assert_eq!(config.name, format!("{}.json", &s.image_id[7..]));
            assert_eq!(sha256(&config.data), s.image_id, "the image ID is not the config's digest");
            let m: serde_json::Value = serde_json::from_slice(&manifest.data).expect("manifest json");
            assert_eq!(m, serde_json::json!([{"Config": config.name, "RepoTags": null, "Layers": s.layers}]));
            for l in &s.layers {
                assert!(names.contains(l), "layer {l} not sent");
            }
        }
        Err(_) => {
            assert!(!entries.iter().any(|e| e.name == "manifest.json"), "a refused archive's manifest went out");
        }
    }
}

fn sha256(data: &[u8]) -> String {
    let sum = Sha256::digest(data);
    format!("sha256:{}", sum.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// The data of `path` in a tar the `tar` crate can read (links followed
/// one level), for comparing what went in with what came out.
fn input_file(input: &[u8], path: &str) -> Option<Vec<u8>> {
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut archive = tar::Archive::new(input);
    for e in archive.entries().ok()? {
        let mut e = e.ok()?;
        let name = String::from_utf8_lossy(&e.path_bytes()).trim_start_matches("./").to_string();
        match e.header().entry_type() {
            tar::EntryType::Symlink => {
                let target = e.link_name().ok()??.to_string_lossy().to_string();
                let dir = Path::new(&name).parent().map(|p| p.to_string_lossy().to_string()).unwrap_or_default();
                let joined = Path::new(&dir).join(target);
                let mut norm: Vec<String> = Vec::new();
                for c in joined.components() {
                    match c {
                        std::path::Component::ParentDir => {
                            norm.pop();
                        }
                        std::path::Component::Normal(s) => norm.push(s.to_string_lossy().to_string()),
                        _ => {}
                    }
                }
                links.insert(name, norm.join("/"));
            }
            _ => {
                let mut data = Vec::new();
                e.read_to_end(&mut data).ok()?;
                files.insert(name, data);
            }
        }
    }
    let path = links.get(path).cloned().unwrap_or_else(|| path.to_string());
    files.get(&path).cloned()
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

/// The name Docker gives a config: its digest.
fn cfg_name(config: &[u8]) -> String {
    format!("{}.json", &sha256(config)[7..])
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
    serde_json::to_vec(&serde_json::json!([{ "Config": config, "RepoTags": tags, "Layers": layers }]))
        .expect("manifest json")
}

/// Legacy (Docker < 25) layout: `<id>/{VERSION,json,layer.tar}`, `<cfg>.json`,
/// `manifest.json`, `repositories`.
fn legacy_archive() -> Vec<u8> {
    let layer = hex(1);
    let cfg = cfg_name(&config_json());
    let mut b = tar::Builder::new(Vec::new());
    add_dir(&mut b, &format!("{layer}/"));
    add_file(&mut b, &format!("{layer}/VERSION"), b"1.0");
    add_file(&mut b, &format!("{layer}/json"), br#"{"id":"1"}"#);
    add_file(&mut b, &format!("{layer}/layer.tar"), &layer_tar(b"busybox binary"));
    add_file(&mut b, &cfg, &config_json());
    add_file(&mut b, "manifest.json", &manifest(&cfg, &["demo:latest"], &[&format!("{layer}/layer.tar")]));
    add_file(&mut b, "repositories", format!(r#"{{"demo":{{"latest":"{layer}"}}}}"#).as_bytes());
    finish(b)
}

/// Docker 25+ OCI layout: blobs first, `manifest.json` near the end.
fn oci_archive_with(config: &[u8], manifest_first: bool) -> Vec<u8> {
    let layer = hex(10);
    let cfg = &sha256(config)[7..];
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
    let cfg = cfg_name(&config_json());
    vec![
        entry(format!("{layer}/"), Kind::Dir),
        file(format!("{layer}/VERSION"), b"1.0".to_vec()),
        file(format!("{layer}/layer.tar"), layer_tar(b"busybox")),
        file(&cfg, config_json()),
        file("manifest.json", manifest(&cfg, &["demo:latest"], &[&format!("{layer}/layer.tar")])),
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

/// A legacy archive whose only layer is `layer` (any bytes).
fn with_layer(layer: Vec<u8>) -> Vec<u8> {
    let mut entries = legacy_entries();
    entries[2].kind = Kind::File(layer);
    build(&entries)
}

// ---------------------------------------------------------------------------
// Valid archives
// ---------------------------------------------------------------------------

#[test]
fn valid_legacy_archive_comes_out_as_the_hosts_own() {
    let data = legacy_archive();
    let o = run(&data);
    let s = o.summary();
    let layer = format!("{}/layer.tar", hex(1));
    assert_eq!(s.image_id, sha256(&config_json()));
    assert_eq!(s.source_config_digest, s.image_id);
    assert_eq!(s.layers, vec![layer.clone()]);
    assert_eq!(s.dropped_tags, vec!["demo:latest".to_string()]);
    let (entries, _) = read_output(&o.out);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    // VERSION and the layer pass as they came; the v1 json is dropped.
    let cfg = cfg_name(&config_json());
    assert_eq!(names, [&format!("{}/VERSION", hex(1)), &layer, &cfg, "manifest.json"]);
    assert_eq!(entries[1].data, layer_tar(b"busybox binary"));
    assert_eq!(entries[2].data, config_json());
}

#[test]
fn valid_oci_archive() {
    for manifest_first in [false, true] {
        let data = oci_archive_with(&config_json(), manifest_first);
        let o = run(&data);
        let s = o.summary();
        assert_eq!(s.dropped_tags, vec!["demo:oci".to_string(), "demo:v2".to_string()]);
        assert_eq!(s.image_id, sha256(&config_json()));
        assert_eq!(s.layers, vec![format!("blobs/sha256/{}", hex(10))]);
    }
}

#[test]
fn valid_symlinked_and_hard_linked_layers_resolve_to_the_file() {
    // Legacy docker save links duplicate layers: <b>/layer.tar -> ../<a>/layer.tar,
    // the target before (as the engine writes it) or after the link.
    let (a, b, cfg) = (hex(1), hex(3), cfg_name(&config_json()));
    let forward = build(&[
        entry(format!("{b}/"), Kind::Dir),
        entry(format!("{b}/layer.tar"), Kind::Symlink(format!("../{a}/layer.tar"))),
        entry(format!("{a}/"), Kind::Dir),
        file(format!("{a}/layer.tar"), layer_tar(b"x")),
        file(&cfg, config_json()),
        file("manifest.json", manifest(&cfg, &[], &[&format!("{a}/layer.tar"), &format!("{b}/layer.tar")])),
    ]);
    let mut ar = tar::Builder::new(Vec::new());
    add_dir(&mut ar, &format!("{a}/"));
    add_file(&mut ar, &format!("{a}/layer.tar"), &layer_tar(b"x"));
    add_dir(&mut ar, &format!("{b}/"));
    add_symlink(&mut ar, &format!("{b}/layer.tar"), &format!("../{a}/layer.tar"));
    add_file(&mut ar, &cfg, &config_json());
    add_file(
        &mut ar,
        "manifest.json",
        &manifest(&cfg, &["x:y"], &[&format!("{a}/layer.tar"), &format!("{b}/layer.tar")]),
    );
    let back = finish(ar);
    let hard = build(&[
        file(format!("{a}/layer.tar"), layer_tar(b"x")),
        entry(format!("{b}/layer.tar"), Kind::HardLink(format!("{a}/layer.tar"))),
        file(&cfg, config_json()),
        file("manifest.json", manifest(&cfg, &["a:b"], &[&format!("{b}/layer.tar")])),
    ]);
    for (data, layers) in [(forward, 2), (back, 2), (hard, 1)] {
        let o = run(&data);
        let s = o.summary();
        assert_eq!(s.layers, vec![format!("{a}/layer.tar"); layers]);
        let (entries, _) = read_output(&o.out);
        assert!(entries.iter().all(|e| e.kind == tar::EntryType::Regular));
    }
}

#[test]
fn valid_long_names_pax_and_gnu() {
    let deep = format!("{}/{}/{}", "d".repeat(90), "e".repeat(90), "layer.tar");
    let cfg = cfg_name(&config_json());
    let pax = build(&[
        file(&deep, layer_tar(b"x")),
        file(&cfg, config_json()),
        file("manifest.json", manifest(&cfg, &["long:pax"], &[&deep])),
    ]);
    assert_eq!(run(&pax).summary().layers, vec![deep.clone()]);

    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(layer_tar(b"x").len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, &deep, layer_tar(b"x").as_slice()).expect("long name");
    add_file(&mut b, &cfg, &config_json());
    add_file(&mut b, "manifest.json", &manifest(&cfg, &["long:gnu"], &[&deep]));
    let gnu = finish(b);
    assert!(gnu.windows(13).any(|w| w == b"././@LongLink"), "GNU long name expected");
    let o = run(&gnu);
    assert_eq!(o.summary().layers, vec![deep.clone()]);
    let (entries, _) = read_output(&o.out);
    assert_eq!(entries[0].name, deep);
    assert_eq!(entries[0].data, layer_tar(b"x"));
}

#[test]
fn valid_gnu_base256_size_and_record_padding() {
    let mut data = build(&legacy_entries());
    let header = &mut data[512..1024];
    assert_eq!(&header[0..64], hex(1).as_bytes());
    header[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(header);
    h.set_cksum();
    header.copy_from_slice(h.as_bytes());
    data.resize(data.len().div_ceil(10240) * 10240 + 10240, 0);
    run(&data).summary();
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

#[test]
fn gzip_archives_are_read_like_plain_ones() {
    for data in [legacy_archive(), oci_archive()] {
        let plain = run(&data);
        let compressed = gzip(&data);
        let o = run_with(&compressed, ArchiveLimits::default());
        assert_eq!(o.out, plain.out, "gzip changed what Docker gets");
        assert_eq!(o.summary().compression, Some(Compression::Gzip));
        assert_eq!(o.summary().image_id, plain.summary().image_id);
        // Two members concatenated (as `cat a.gz b.gz`) are one stream.
        let mut two = gzip(&data[..1000]);
        two.extend(gzip(&data[1000..]));
        assert_eq!(run(&two).out, plain.out);
    }
}

// ---------------------------------------------------------------------------
// What the archive says is never an instruction
// ---------------------------------------------------------------------------

#[test]
fn tags_in_the_archive_never_reach_docker() {
    let data = legacy_archive();
    let o = run(&data);
    assert!(!o.out.windows(b"demo".len()).any(|w| w == b"demo"), "a tag went out");
    let (entries, _) = read_output(&o.out);
    assert!(!entries.iter().any(|e| e.name == "repositories"));
}

#[test]
fn a_config_named_after_another_image_is_refused() {
    let other = hex(0xdead);
    let data = build(&[
        file(format!("{}/layer.tar", hex(1)), layer_tar(b"x")),
        file(format!("{other}.json"), config_json()),
        file("manifest.json", manifest(&format!("{other}.json"), &[], &[&format!("{}/layer.tar", hex(1))])),
    ]);
    let o = run(&data);
    assert!(matches!(o.error, Some(ArchiveError::ConfigNameMismatch { .. })), "{}", o.err());
}

#[test]
fn image_volumes_are_removed_and_the_image_id_follows() {
    let config = br#"{"config":{"Cmd":["/bin/sh"],"Volumes":{"/data":{}}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cfg = cfg_name(config);
    let data = build(&[
        file(format!("{}/layer.tar", hex(1)), layer_tar(b"x")),
        file(&cfg, config.to_vec()),
        file("manifest.json", manifest(&cfg, &[], &[&format!("{}/layer.tar", hex(1))])),
    ]);
    let o = run(&data);
    let s = o.summary();
    assert_eq!(s.removed_volumes, ["/data"]);
    assert_eq!(s.source_config_digest, sha256(config));
    assert_ne!(s.image_id, s.source_config_digest);
    let (entries, _) = read_output(&o.out);
    let sent = &entries[entries.len() - 2];
    assert!(!String::from_utf8_lossy(&sent.data).contains("Volumes"));
}

#[test]
fn manifests_asking_for_more_than_one_image_a_parent_or_foreign_layers_are_refused() {
    let cfg = cfg_name(&config_json());
    let l = format!("{}/layer.tar", hex(1));
    for m in [
        format!(r#"[{{"Config":"{cfg}","Layers":["{l}"]}},{{"Config":"{cfg}","Layers":["{l}"]}}]"#),
        format!(r#"[{{"Config":"{cfg}","Layers":["{l}"],"Parent":"sha256:{}"}}]"#, hex(9)),
        format!(r#"[{{"Config":"{cfg}","Layers":["{l}"],"LayerSources":{{"sha256:1":{{"urls":["http://x"]}}}}}}]"#),
    ] {
        let o = run(&manifest_entries(m.into_bytes()));
        assert!(
            matches!(o.error, Some(ArchiveError::SeveralImages { .. } | ArchiveError::BadManifest { .. })),
            "{}",
            o.err()
        );
    }
}

// ---------------------------------------------------------------------------
// Compression and size
// ---------------------------------------------------------------------------

#[test]
fn compressions_docker_would_run_are_refused_before_a_byte_goes_out() {
    let tar = legacy_archive();
    let inputs: [(&[u8], Compression); 5] = [
        (b"BZh91AY&SY\x00\x00", Compression::Bzip2),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 0, 0, 0], Compression::Xz),
        (&[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0, 0, 0], Compression::Zstd),
        (&[0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 0, 0], Compression::Zstd),
        (&[0x5f, 0x2a, 0x4d, 0x18, 4, 0, 0, 0], Compression::Zstd),
    ];
    for (prefix, format) in inputs {
        let mut data = prefix.to_vec();
        data.extend_from_slice(&tar);
        let o = run(&data);
        assert!(o.out.is_empty(), "{format:?}: bytes went out");
        assert!(matches!(o.error, Some(ArchiveError::Compressed { format: f }) if f == format), "{}", o.err());
    }
    // Compressed twice: what gzip holds must be a plain tar.
    let o = run(&gzip(&gzip(&tar)));
    assert!(matches!(o.error, Some(ArchiveError::Compressed { format: Compression::Gzip })), "{}", o.err());
    // Trailing bytes after the gzip stream.
    let mut trailing = gzip(&tar);
    trailing.extend_from_slice(b"\0\0\0\0");
    assert!(matches!(run(&trailing).error, Some(ArchiveError::Gzip { .. })));
}

#[test]
fn layers_that_unpack_to_more_than_they_weigh_are_refused() {
    // A GNU sparse entry: Go would write its holes as zeros.
    let mut sparse = layer_tar(b"x");
    sparse[156] = b'S';
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(&sparse[..512]);
    h.set_cksum();
    sparse[..512].copy_from_slice(h.as_bytes());
    let o = run(&with_layer(sparse));
    assert!(
        matches!(&o.error, Some(ArchiveError::BadLayer { reason, .. }) if reason.contains("sparse")),
        "{}",
        o.err()
    );
    // PAX sparse records.
    let mut pax = Vec::new();
    let records = pax_record("GNU.sparse.size", b"1099511627776");
    push_block(&mut pax, &raw_header(b"PaxHeaders/x", b'x', records.len() as u64, b""), &records);
    pax.extend_from_slice(&layer_tar(b"x"));
    let o = run(&with_layer(pax));
    assert!(
        matches!(&o.error, Some(ArchiveError::BadLayer { reason, .. }) if reason.contains("sparse")),
        "{}",
        o.err()
    );
    // Compressions Docker unpacks but the host does not.
    let o = run(&with_layer(b"BZh91AY&SY more".to_vec()));
    assert!(matches!(&o.error, Some(ArchiveError::BadLayer { reason, .. }) if reason.contains("bzip2")), "{}", o.err());
    // A gzip layer is fine; a gzip bomb is not.
    run(&with_layer(gzip(&layer_tar(b"x")))).summary();
    let bomb_tar = layer_tar(&vec![0u8; 4 << 20]);
    let limits = ArchiveLimits { max_unpacked_bytes: 1 << 20, ..ArchiveLimits::default() };
    let o = run_with(&with_layer(gzip(&bomb_tar)), limits.clone());
    assert!(matches!(o.error, Some(ArchiveError::TooLarge { .. })), "{}", o.err());
    // An entry larger than the whole limit: refused at its header.
    let o = run_with(&with_extra(file("x/big", vec![0u8; 2 << 20])), limits);
    assert!(matches!(o.error, Some(ArchiveError::TooLarge { .. })), "{}", o.err());
    assert!(o.out.len() < 4096, "the big entry streamed: {}", o.out.len());
    // A file that is not a tar is fine as long as no one calls it a layer.
    run(&with_extra(file("x/junk", b"BZh91AY&SY".to_vec()))).summary();
}

#[test]
fn the_outer_gzip_cannot_fill_memory() {
    // 64 MiB of zeros in a layer, gzip'd to ~64 KiB: the output is taken a
    // little at a time, never held whole.
    let mut tar = legacy_entries();
    tar[2].kind = Kind::File(vec![0u8; 64 << 20]);
    let data = gzip(&build(&tar));
    assert!(data.len() < 1 << 20);
    let input = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(data))]);
    let (stream, _summary) = canonicalize(input, ArchiveLimits::default());
    let mut stream = Box::pin(stream);
    let mut biggest = 0;
    futures::executor::block_on(async {
        while let Some(item) = stream.next().await {
            biggest = biggest.max(item.expect("valid").len());
        }
    });
    assert!(biggest <= 2 << 20, "a chunk of {biggest} bytes");
}

// ---------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------

#[test]
fn refuses_path_traversal() {
    let o = run(&with_extra(file("../etc/passwd", b"root::0:0::/:/bin/sh\n".to_vec())));
    assert_eq!(o.err(), "image archive entry \"../etc/passwd\" escapes the archive");
    let o = run(&with_extra(file("a/../../x", b"x".to_vec())));
    assert!(matches!(o.error, Some(ArchiveError::PathEscapes { .. })));
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
    let o = run(&with_extra(entry(format!("{layer}/evil"), Kind::Symlink("/etc/passwd".into()))));
    assert!(matches!(o.error, Some(ArchiveError::SymlinkEscapes { .. })), "{}", o.err());
    let o = run(&with_extra(entry("evil", Kind::Symlink("manifest.json".into()))));
    assert_eq!(o.err(), "symlink \"evil\" in the archive root is refused");
}

#[test]
fn dangling_symlinks_matter_only_when_the_manifest_uses_them() {
    let layer = hex(1);
    let o = run(&with_extra(entry(format!("{layer}/other.tar"), Kind::Symlink("../nowhere/layer.tar".into()))));
    o.summary();
    let (entries, _) = read_output(&o.out);
    assert!(!entries.iter().any(|e| e.name.ends_with("other.tar")), "a symlink went out");
    let cfg = cfg_name(&config_json());
    let mut entries = legacy_entries();
    entries.insert(1, entry(format!("{layer}/other.tar"), Kind::Symlink("../nowhere/layer.tar".into())));
    *entries.last_mut().expect("manifest") =
        file("manifest.json", manifest(&cfg, &[], &[&format!("{layer}/other.tar")]));
    let o = run(&build(&entries));
    assert!(matches!(o.error, Some(ArchiveError::SymlinkDangling { .. })), "{}", o.err());
}

#[test]
fn refuses_entries_below_a_symlink_or_file() {
    let (a, b) = (hex(1), hex(3));
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
    let o = run(&with_extra(entry("x/contiguous", Kind::Raw { typeflag: b'7', size_field: 0, data: vec![] })));
    assert!(matches!(o.error, Some(ArchiveError::UnsupportedType { typeflag: '7', .. })));
}

#[test]
fn refuses_missing_manifest_blobs_and_config() {
    let mut entries = legacy_entries();
    entries.pop();
    assert_eq!(run(&build(&entries)).err(), "manifest.json is missing");
    let cfg = cfg_name(&config_json());
    let o = run(&manifest_entries(manifest(&cfg, &["a:b"], &["nothere/layer.tar"])));
    assert_eq!(o.err(), "manifest lists layer \"nothere/layer.tar\" that the archive does not contain");
    let o = run(&manifest_entries(manifest("missing.json", &[], &[&format!("{}/layer.tar", hex(1))])));
    assert_eq!(o.err(), "manifest lists config \"missing.json\" that the archive does not contain");
    let o = run(&manifest_entries(manifest(&cfg, &[], &[&hex(1)])));
    assert!(matches!(o.error, Some(ArchiveError::BlobNotRegular { .. })), "{}", o.err());
    // The manifest itself, or another dropped document, as a layer.
    let o = run(&manifest_entries(manifest(&cfg, &[], &["manifest.json"])));
    assert!(matches!(o.error, Some(ArchiveError::BlobNotRegular { .. })), "{}", o.err());
    // A layer as the config.
    let o = run(&manifest_entries(manifest(&format!("{}/layer.tar", hex(1)), &[], &[])));
    assert!(matches!(o.error, Some(ArchiveError::BadConfig { .. })), "{}", o.err());
}

#[test]
fn refuses_oversize_json() {
    let limits = ArchiveLimits { max_json_bytes: 200, ..ArchiveLimits::default() };
    let mut entries = legacy_entries();
    let big = manifest(&cfg_name(&config_json()), &["x".repeat(300).as_str()], &[]);
    let big_len = big.len();
    if let Some(last) = entries.last_mut() {
        last.kind = Kind::File(big);
    }
    let o = run_with(&build(&entries), limits);
    assert_eq!(o.err(), format!("manifest.json is larger than 200 bytes (it is {big_len} bytes)"));
    // A config over the limit cannot be held: refused once the manifest names it.
    let limits = ArchiveLimits { max_json_bytes: 1000, ..ArchiveLimits::default() };
    let mut big = b"{\"pad\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 2000));
    big.extend_from_slice(b"\"}");
    let o = run_with(&oci_archive_with(&big, false), limits);
    assert!(matches!(o.error, Some(ArchiveError::BadConfig { .. })), "{}", o.err());
    // Held JSON beyond its budget.
    let limits = ArchiveLimits { max_held_json_bytes: 100, ..ArchiveLimits::default() };
    let o = run_with(&legacy_archive(), limits);
    assert!(matches!(o.error, Some(ArchiveError::TooMuchJson { .. })), "{}", o.err());
    for bad in [&b"not json"[..], b"{\"a\":", b"[1,2]", b""] {
        for manifest_first in [false, true] {
            let o = run(&oci_archive_with(bad, manifest_first));
            assert!(matches!(o.error, Some(ArchiveError::BadConfig { .. })), "{bad:?}: {}", o.err());
        }
    }
}

#[test]
fn refuses_invalid_manifests() {
    let o = run(&manifest_entries(b"[{\"Config\": ".to_vec()));
    assert!(matches!(o.error, Some(ArchiveError::BadManifest { .. })), "{}", o.err());
    let o = run(&manifest_entries(b"{}".to_vec()));
    assert!(matches!(o.error, Some(ArchiveError::BadManifest { .. })), "{}", o.err());
    assert_eq!(run(&manifest_entries(b"[]".to_vec())).err(), "manifest.json lists no images");
    let o = run(&manifest_entries(br#"[{"Config":"a.json","Layers":"x"}]"#.to_vec()));
    assert!(matches!(o.error, Some(ArchiveError::BadManifest { .. })), "{}", o.err());
    let o = run(&manifest_entries(br#"[{"Config":"a.json","RepoTags":[1],"Layers":[]}]"#.to_vec()));
    assert!(matches!(o.error, Some(ArchiveError::BadManifest { .. })), "{}", o.err());
    let cfg = cfg_name(&config_json());
    let sneaky = format!(r#"[{{"Config":"{cfg}","config":"other.json","Layers":[]}}]"#);
    let o = run(&manifest_entries(sneaky.into_bytes()));
    assert!(o.err().contains("the same field to Docker"), "{}", o.err());
    let o = run(&manifest_entries(manifest("../escape.json", &[], &[])));
    assert!(matches!(o.error, Some(ArchiveError::BadManifest { .. })), "{}", o.err());
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
    assert!(matches!(o.error, Some(ArchiveError::Gzip { .. })), "{}", o.err());
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
        let z = gzip(&data[..cut]);
        let o = run(&z);
        assert!(o.result.is_err(), "gzip cut at {cut}");
        let o = run(&z[..z.len() - 3]);
        assert!(matches!(o.error, Some(ArchiveError::Gzip { .. })), "gzip stream cut: {}", o.err());
    }
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
    assert!(matches!(run(&data).error, Some(ArchiveError::TrailingData { .. })));
    let mut data = legacy_archive();
    data.extend(legacy_archive());
    assert!(run(&data).err().contains("after its end-of-archive marker"));
}

#[test]
fn refuses_structural_tricks() {
    let limits = ArchiveLimits { max_entries: 3, ..ArchiveLimits::default() };
    assert_eq!(run_with(&legacy_archive(), limits).err(), "image archive has too many entries (the limit is 3)");
    let o = run(&with_extra(file(format!("./{}//VERSION", hex(1)), b"1.0".to_vec())));
    assert!(matches!(o.error, Some(ArchiveError::Duplicate { .. })), "{}", o.err());
    let o = run(&with_extra(file(hex(1), b"".to_vec())));
    assert!(matches!(o.error, Some(ArchiveError::Duplicate { .. })), "{}", o.err());
    let o = run(&with_extra(entry("dir/", Kind::Raw { typeflag: b'5', size_field: 1024, data: vec![] })));
    assert!(o.err().contains("non-zero size"), "{}", o.err());
    let o = run(&with_extra(file("x/.wh.layer.tar", b"".to_vec())));
    assert!(matches!(o.error, Some(ArchiveError::BadName { .. })), "{}", o.err());
    let limits = ArchiveLimits { max_path_len: 50, ..ArchiveLimits::default() };
    let o = run_with(&with_extra(file("a".repeat(60), b"".to_vec())), limits);
    assert!(matches!(o.error, Some(ArchiveError::PathTooLong { .. })), "{}", o.err());
    let o = run(&with_extra(file("a/".repeat(40) + "x", b"".to_vec())));
    assert!(matches!(o.error, Some(ArchiveError::PathTooDeep { .. })), "{}", o.err());
    // Names beyond the memory budget.
    let limits = ArchiveLimits { max_name_bytes: 2000, ..ArchiveLimits::default() };
    let mut entries = legacy_entries();
    for i in 0..40 {
        entries.insert(1, file(format!("n{i}/{}", "x".repeat(100)), b"".to_vec()));
    }
    let o = run_with(&build(&entries), limits);
    assert!(matches!(o.error, Some(ArchiveError::TooManyNames { .. })), "{}", o.err());
    // A single zero block followed by data.
    let mut data = build(&legacy_entries());
    let at = data.len() - 1024 + 600;
    data[at] = 1;
    let o = run(&data);
    assert!(o.err().contains("single zero block"), "{}", o.err());
    // A first name that would make Docker take the host's archive for bzip2.
    let long_name = entry("././@LongLink", Kind::Raw { typeflag: b'L', size_field: 8, data: b"BZh91/x\0".to_vec() });
    let o = run(&build(&[long_name, file("ignored", layer_tar(b"x"))]));
    assert!(o.out.is_empty(), "{:?}", o.result);
    assert!(matches!(o.error, Some(ArchiveError::BadName { .. })), "{}", o.err());
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
    check_invariants(&data, &o);
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

fn valid_archives() -> Vec<Vec<u8>> {
    vec![
        legacy_archive(),
        oci_archive(),
        oci_archive_with(&config_json(), true),
        build(&legacy_entries()),
        gzip(&legacy_archive()),
    ]
}

fn invalid_archives() -> Vec<Vec<u8>> {
    let cfg = cfg_name(&config_json());
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
        gzip(&legacy_archive()[..3000]),
    ]
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![0usize..3, 1usize..600, Just(511), Just(512), Just(513), 1usize..20_000], 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    /// Any chunking of a valid archive gives the same output.
    #[test]
    fn chunking_never_changes_valid_output(which in 0usize..5, sizes in sizes()) {
        let data = &valid_archives()[which];
        let whole = run(data);
        let o = run_chunks(chunked(data, &sizes), ArchiveLimits::default());
        check_invariants(data, &o);
        prop_assert!(o.result.is_ok(), "{:?}", o.result);
        prop_assert_eq!(&o.out, &whole.out);
    }

    /// Any chunking of an invalid archive gives the same verdict.
    #[test]
    fn chunking_never_changes_the_verdict(which in 0usize..11, sizes in sizes()) {
        let data = &invalid_archives()[which];
        let whole = run(data);
        let o = run_chunks(chunked(data, &sizes), ArchiveLimits::default());
        check_invariants(data, &o);
        prop_assert!(o.result.is_err());
        prop_assert_eq!(&o.result.as_ref().err(), &whole.result.as_ref().err());
    }

    /// Every proper prefix of a valid archive is refused.
    #[test]
    fn every_prefix_is_refused(which in 0usize..5, cut in any::<prop::sample::Index>(), sizes in sizes()) {
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

    /// Random mutations of valid archives never panic, and whatever is
    /// accepted comes out well-formed.
    #[test]
    fn mutations_never_panic(
        which in 0usize..5,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
        sizes in sizes(),
    ) {
        let data = mutate(&valid_archives()[which], &edits);
        let whole = run(&data);
        let o = run_chunks(chunked(&data, &sizes), ArchiveLimits::default());
        check_invariants(&data, &o);
        prop_assert_eq!(&o.result.as_ref().err(), &whole.result.as_ref().err());
    }
}

/// Inputs the coverage-guided fuzzer (tests/fuzz) once broke the
/// canonicalizer with, replayed as the fuzz target reads them (the first
/// byte picks a chunk size): the verdict must not depend on the chunking.
#[test]
fn fuzzer_regressions() {
    let dir = crate::common::repo().join("tests/fuzz/regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("tests/fuzz/regressions") {
        let input = std::fs::read(entry.expect("entry").path()).expect("read");
        let Some((first, data)) = input.split_first() else { continue };
        let whole = run(data);
        let o = run_chunks(chunked(data, &[usize::from(*first) * 37 + 1]), ArchiveLimits::default());
        check_invariants(data, &o);
        assert_eq!(o.result.as_ref().err(), whole.result.as_ref().err());
        n += 1;
    }
    assert!(n > 0, "no regression inputs");
}

/// Applies byte edits; kind 3 edits a header field and fixes its checksum,
/// so the mutation reaches the parser behind the checksum test.
pub fn mutate(data: &[u8], edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
    let mut data = data.to_vec();
    for (at, value, how) in edits {
        if data.is_empty() {
            break;
        }
        let i = at.index(data.len());
        match how {
            0 => data[i] = *value,
            1 => data.insert(i, *value),
            2 => {
                data.remove(i);
            }
            _ => {
                let block = i / 512 * 512;
                if block + 512 <= data.len() && header_checksum_ok(&data[block..block + 512]) {
                    data[block + (i % 512)] = *value;
                    fix_checksum(&mut data[block..block + 512]);
                }
            }
        }
    }
    data
}

/// Random archives made of hostile-looking pieces.
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
        Just(manifest(&cfg_name(&config_json()), &[], &["a/layer.tar", "b/layer.tar"])),
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
        if o.result.is_ok() {
            prop_assert_eq!(&o.out, &whole.out);
        }
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
// Real docker save output, and the real engine
// ---------------------------------------------------------------------------

fn fixture(name: &str) -> PathBuf {
    crate::common::fixture(name)
}

async fn run_file(path: &Path) -> Outcome {
    let file = tokio::fs::File::open(path).await.expect("open fixture");
    let input = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    run_stream(input, ArchiveLimits::default()).await
}

/// `docker save` of an image imported from a rootfs holding bin/busybox
/// (Docker 20.10, legacy layout), and of one whose fourth layer repeats the
/// second (a symlinked layer): the layers come out byte for byte.
#[tokio::test]
async fn real_docker_save_archives() {
    for (name, layers) in [("busybox-save.tar", 1), ("busybox-symlink-save.tar", 4)] {
        let path = fixture(name);
        let data = std::fs::read(&path).expect("read fixture");
        let o = run_file(&path).await;
        check_invariants(&data, &o);
        let s = o.summary();
        assert_eq!(s.layers.len(), layers);
        assert!(s.dropped_tags.iter().all(|t| t.starts_with("nova-docker-archive-test:")), "{:?}", s.dropped_tags);
        assert_eq!(s.image_id, s.source_config_digest, "an image without volumes keeps its ID");
        let (entries, _) = read_output(&o.out);
        for l in &s.layers {
            let sent = entries.iter().find(|e| &e.name == l).expect("layer sent");
            assert_eq!(Some(&sent.data), input_file(&data, l).as_ref(), "{l} changed on the way");
        }
    }
}

/// What `docker load` of the host's archive printed, whether it succeeded,
/// and the engine's images afterwards (id -> tags).
async fn docker_load(host: &str, data: Vec<u8>) -> (Option<ArchiveError>, Result<String, String>) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("docker")
        .args(["-H", host, "load"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn docker load");
    let mut stdin = child.stdin.take().expect("stdin");
    let chunks = chunked(&data, &[4096, 100_000, 7]);
    let input = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let (stream, _summary) = canonicalize(input, ArchiveLimits::default());
    let mut stream = Box::pin(stream);
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => {
                if stdin.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    // The worst consumer: it closes the body cleanly even after an error.
    let _ = stdin.shutdown().await;
    drop(stdin);
    let output = child.wait_with_output().await.expect("docker load");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let result =
        if output.status.success() { Ok(text) } else { Err(String::from_utf8_lossy(&output.stderr).to_string()) };
    (error, result)
}

/// Every image on the engine with its tags.
pub fn engine_images(host: &str) -> HashMap<String, Vec<String>> {
    let out = std::process::Command::new("docker")
        .args(["-H", host, "images", "-a", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"])
        .output()
        .expect("docker images");
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((id, tag)) = line.split_once(' ') {
            let tags = map.entry(id.to_string()).or_default();
            if tag != "<none>:<none>" {
                tags.push(tag.to_string());
                tags.sort();
            }
        }
    }
    map
}

/// A loadable archive: real diff IDs, `n` layers of `seed`-derived files,
/// the chosen layout, tags and volumes.
fn loadable_archive(seed: u32, n: usize, oci: bool, volumes: bool, gzip_layers: bool) -> Vec<u8> {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..n {
        let mut b = tar::Builder::new(Vec::new());
        add_file(&mut b, &format!("f{seed}-{i}"), format!("layer {i} of {seed}").as_bytes());
        let plain = finish(b);
        diff_ids.push(sha256(&plain));
        layers.push(if gzip_layers { gzip(&plain) } else { plain });
    }
    let vols = if volumes { r#","Volumes":{"/data":{}}"# } else { "" };
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/f"],"Labels":{{"seed":"{seed}"}}{vols}}},"rootfs":{{"type":"layers","diff_ids":{}}}}}"#,
        serde_json::to_string(&diff_ids).expect("ids")
    )
    .into_bytes();
    let mut b = tar::Builder::new(Vec::new());
    let (cfg, layer_paths): (String, Vec<String>) = if oci {
        let paths = layers.iter().map(|l| format!("blobs/sha256/{}", &sha256(l)[7..])).collect();
        (format!("blobs/sha256/{}", &sha256(&config)[7..]), paths)
    } else {
        (cfg_name(&config), (0..n).map(|i| format!("{}/layer.tar", hex(seed * 100 + i as u32))).collect())
    };
    for (p, l) in layer_paths.iter().zip(&layers) {
        add_file(&mut b, p, l);
    }
    add_file(&mut b, &cfg, &config);
    let refs: Vec<&str> = layer_paths.iter().map(String::as_str).collect();
    add_file(&mut b, "manifest.json", &manifest(&cfg, &["busybox:latest", &format!("glance/{seed}:latest")], &refs));
    finish(b)
}

/// Differential: for archives the canonicalizer accepts, what the real
/// engine ends up with is exactly what the summary said: one new image with
/// that ID, no tags, the layers counted; no other image or tag changed.
/// A refused archive changes nothing, even when the body is closed cleanly.
/// On a private engine, so that no other test's images move meanwhile; it
/// starts with images tagged as the archives' tags claim.
#[tokio::test]
async fn docker_ends_up_with_exactly_what_the_canonicalizer_reported() {
    let engine =
        crate::faults::PrivateDocker::start(&std::env::temp_dir().join(crate::common::unique("nd-diff"))).await;
    let host = format!("unix://{}", engine.socket().display());
    let host = host.as_str();
    for tag in ["busybox:latest", "glance/1:latest"] {
        let seeded = loadable_archive(1, 1, false, false, false);
        let (_, loaded) = docker_load(host, seeded).await;
        let id = loaded.expect("seed").trim().trim_start_matches("Loaded image ID: ").to_string();
        let ok = std::process::Command::new("docker").args(["-H", host, "tag", &id, tag]).status().expect("tag");
        assert!(ok.success());
    }
    let mut cases = Vec::new();
    for (i, (oci, volumes, gz_layers, gz_outer)) in [
        (false, false, false, false),
        (true, false, false, false),
        (false, true, false, true),
        (true, true, true, false),
        (false, false, true, true),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = std::process::id() % 10_000 * 10 + i as u32;
        let data = loadable_archive(seed, 1 + i % 3, oci, volumes, gz_layers);
        cases.push(if gz_outer { gzip(&data) } else { data });
    }
    for data in cases {
        let expected = run(&data);
        let summary = expected.summary().clone();
        let before = engine_images(host);
        let (error, loaded) = docker_load(host, data).await;
        assert!(error.is_none(), "{error:?}");
        let printed = loaded.expect("docker load of an accepted archive");
        assert_eq!(printed.trim(), format!("Loaded image ID: {}", summary.image_id));
        let after = engine_images(host);
        for (id, tags) in &before {
            assert_eq!(after.get(id), Some(tags), "image {id} changed");
        }
        let new: Vec<_> = after.keys().filter(|id| !before.contains_key(*id)).collect();
        if before.contains_key(&summary.image_id) {
            assert!(new.is_empty(), "{new:?}");
        } else {
            assert_eq!(new, vec![&summary.image_id]);
        }
        assert_eq!(after[&summary.image_id], Vec::<String>::new());
        let inspect = std::process::Command::new("docker")
            .args(["-H", host, "image", "inspect", "--format", "{{len .RootFS.Layers}} {{json .Config.Volumes}}"])
            .arg(&summary.image_id)
            .output()
            .expect("inspect");
        let inspect = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
        assert_eq!(inspect, format!("{} null", summary.layers.len()));
        let _ = std::process::Command::new("docker").args(["-H", host, "rmi", &summary.image_id]).output();
    }

    // Refused at the very end (a layer the manifest names is not there),
    // with the consumer closing its input cleanly: nothing is loaded.
    let mut entries = legacy_entries();
    entries[4] = file("manifest.json", manifest(&cfg_name(&config_json()), &["nd-refused:x"], &["missing/layer.tar"]));
    let before = engine_images(host);
    let (error, loaded) = docker_load(host, build(&entries)).await;
    assert!(matches!(error, Some(ArchiveError::MissingBlob { .. })), "{error:?}");
    assert!(loaded.is_err(), "docker load accepted a refused archive: {loaded:?}");
    assert_eq!(engine_images(host), before, "a refused archive changed the engine's images");
    drop(engine);
}
