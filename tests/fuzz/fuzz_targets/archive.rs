//! Fuzzes `image::archive::canonicalize` with arbitrary bytes in arbitrary
//! chunkings: it must never panic, its verdict and output must not depend on
//! the chunking, an accepted archive must come out as the host's own (a tar
//! of regular files ending with the config and a tag-less manifest), and a
//! refused one must never have a manifest in what came out.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../../src/image/archive/mod.rs"]
mod archive;

use std::io::Read;

use bytes::Bytes;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;

use archive::{ArchiveLimits, canonicalize};

/// Output and verdict for `data` split at `cuts`.
fn run(data: &[u8], cuts: &[usize]) -> (Vec<u8>, Result<String, String>) {
    let mut chunks = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let end = (at + c).min(data.len());
        chunks.push(Ok::<_, std::io::Error>(Bytes::copy_from_slice(&data[at..end])));
        at = end;
    }
    chunks.push(Ok(Bytes::copy_from_slice(&data[at..])));
    let limits = ArchiveLimits { max_unpacked_bytes: 64 << 20, ..ArchiveLimits::default() };
    let (stream, summary) = canonicalize(futures::stream::iter(chunks), limits);
    futures::executor::block_on(async move {
        let mut stream = Box::pin(stream);
        let mut out = Vec::new();
        let mut error = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(b) => {
                    assert!(error.is_none(), "bytes after an error");
                    out.extend_from_slice(&b);
                }
                Err(e) => error = Some(e.to_string()),
            }
        }
        let verdict = match (error, summary.await) {
            (None, Ok(s)) => Ok(s.image_id),
            (Some(e), Err(_)) => Err(e),
            (e, s) => panic!("error {e:?} with summary {s:?}"),
        };
        (out, verdict)
    })
}

/// The names of the entries in `out` (up to the first unreadable one) and
/// whether it read to a clean end.
fn entries(out: &[u8]) -> (Vec<(String, tar::EntryType, Vec<u8>)>, bool) {
    let mut a = tar::Archive::new(out);
    let mut list = Vec::new();
    let Ok(iter) = a.entries() else { return (list, false) };
    for e in iter {
        let Ok(mut e) = e else { return (list, false) };
        let name = String::from_utf8_lossy(&e.path_bytes()).to_string();
        let kind = e.header().entry_type();
        let mut data = Vec::new();
        if e.read_to_end(&mut data).is_err() {
            return (list, false);
        }
        list.push((name, kind, data));
    }
    (list, true)
}

fuzz_target!(|input: &[u8]| {
    // The first byte picks a chunk size for the second run.
    let (step, data) = match input.split_first() {
        Some((s, rest)) => (usize::from(*s) * 37 + 1, rest),
        None => (1, input),
    };
    let (whole, verdict) = run(data, &[]);
    let cuts: Vec<usize> = std::iter::repeat_n(step, data.len() / step).collect();
    let (chunked, verdict2) = run(data, &cuts);
    assert_eq!(verdict, verdict2, "the verdict depends on the chunking");
    let (list, clean) = entries(&whole);
    match verdict {
        Ok(image_id) => {
            assert_eq!(whole, chunked, "the output depends on the chunking");
            assert!(clean, "an accepted archive's output is not a tar");
            assert!(list.iter().all(|(_, k, _)| *k == tar::EntryType::Regular));
            let (name, _, manifest) = list.last().expect("a manifest");
            assert_eq!(name, "manifest.json");
            let m: serde_json::Value = serde_json::from_slice(manifest).expect("manifest JSON");
            assert!(m[0]["RepoTags"].is_null(), "tags went out");
            assert_eq!(m[0]["Config"], format!("{}.json", &image_id[7..]));
        }
        Err(_) => {
            assert!(!list.iter().any(|(n, _, _)| n == "manifest.json"), "a refused archive's manifest went out");
        }
    }
});
