//! The image config: what binds a Glance image to content, and the one
//! thing in it the host changes.
//!
//! Docker names an image by the SHA-256 of its config bytes, and checks
//! every layer against the config's `rootfs.diff_ids`, so the config digest
//! pins the whole image. The host computes it from the bytes it sends and
//! refuses a config whose file name claims another digest.
//!
//! Volumes an image declares (`config.Volumes`) would become Docker volumes:
//! directories on the host outside the container's writable layer, so
//! outside its root-disk limit, its snapshots and its delete. The host
//! removes them from the config; the paths stay ordinary directories of the
//! instance's root disk, as on a VM. That changes the config, hence the
//! image ID, which is then the digest of the config as the host wrote it.

use sha2::{Digest, Sha256};

use super::ArchiveError;
use super::json::{go_fold_eq, object_members, object_text, same_field_twice};

/// Volume paths remembered (for the log) out of those removed.
const VOLUMES_KEPT: usize = 16;
/// Most volumes an image may declare.
const MAX_VOLUMES: usize = 256;
/// The image label that lists the volume paths the host removed, as a JSON
/// array: the driver creates those that do not exist in the image, as
/// Docker creates a volume's mount point.
pub const VOLUMES_LABEL: &str = "org.openstack.nova-docker.volumes";

/// A config as the host will hand it to Docker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Config {
    /// `sha256:<hex>` of the config as the archive had it.
    pub source_digest: String,
    /// The bytes Docker gets (the archive's, unless volumes were removed).
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`: the image ID Docker will compute.
    pub image_id: String,
    /// Volume paths removed (at most a few, for the log).
    pub removed_volumes: Vec<String>,
}

/// `sha256:<hex>` of some bytes.
pub(super) fn digest(bytes: &[u8]) -> String {
    let sum = Sha256::digest(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in sum {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The digest a config's file name claims, if it names one
/// (`<hex>.json` in Docker's layout, `blobs/sha256/<hex>` in OCI's).
pub(super) fn claimed_digest(path: &str) -> Option<String> {
    let hex = path.strip_prefix("blobs/sha256/").or_else(|| path.strip_suffix(".json").filter(|h| !h.contains('/')))?;
    let valid = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    valid.then(|| format!("sha256:{hex}"))
}

/// Checks the config at `path` and applies the host's policy to it.
pub(super) fn prepare(path: &str, bytes: &[u8]) -> Result<Config, ArchiveError> {
    let invalid = |reason: String| ArchiveError::BadConfig { path: super::shown(path), reason };
    let source_digest = digest(bytes);
    if let Some(claimed) = claimed_digest(path)
        && claimed != source_digest
    {
        return Err(ArchiveError::ConfigNameMismatch { path: super::shown(path), digest: source_digest });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("it is not UTF-8".into()))?;
    let top = object_members(text).map_err(|e| invalid(format!("it is not a JSON object: {e}")))?;
    if let Some((a, b)) = same_field_twice(&top) {
        return Err(invalid(format!("keys {a:?} and {b:?} are the same field to Docker")));
    }
    let unchanged = |source_digest: String| Config {
        image_id: source_digest.clone(),
        source_digest,
        bytes: bytes.to_vec(),
        removed_volumes: Vec::new(),
    };
    let Some(at) = top.iter().position(|(k, _)| go_fold_eq(k, "config")) else {
        return Ok(unchanged(source_digest));
    };
    let run_config = top[at].1.get();
    if run_config.trim() == "null" {
        return Ok(unchanged(source_digest));
    }
    let members = object_members(run_config).map_err(|e| invalid(format!("its \"config\" is not an object: {e}")))?;
    if let Some((a, b)) = same_field_twice(&members) {
        return Err(invalid(format!("keys {a:?} and {b:?} of its \"config\" are the same field to Docker")));
    }
    let Some(vat) = members.iter().position(|(k, _)| go_fold_eq(k, "Volumes")) else {
        return Ok(unchanged(source_digest));
    };
    let volumes: serde_json::Value =
        serde_json::from_str(members[vat].1.get()).map_err(|e| invalid(format!("its Volumes: {e}")))?;
    let paths: Vec<String> = match &volumes {
        serde_json::Value::Null => return Ok(unchanged(source_digest)),
        serde_json::Value::Object(m) if m.is_empty() => return Ok(unchanged(source_digest)),
        serde_json::Value::Object(m) => m.keys().cloned().collect(),
        _ => return Err(invalid("its Volumes is not an object".into())),
    };
    if paths.len() > MAX_VOLUMES {
        return Err(invalid(format!("it declares {} volumes, more than {MAX_VOLUMES}", paths.len())));
    }
    for p in &paths {
        if !clean_absolute(p) {
            return Err(invalid(format!("volume {:?} is not a plain absolute path", super::shown(p))));
        }
    }
    let removed_volumes = paths.iter().take(VOLUMES_KEPT).cloned().collect();
    let labels_at = members.iter().position(|(k, _)| go_fold_eq(k, "Labels"));
    let labels = match labels_at.map(|i| members[i].1.get().trim()) {
        None | Some("null") => String::from("{}"),
        Some(text) => text.to_string(),
    };
    let label_members = object_members(&labels).map_err(|e| invalid(format!("its Labels is not an object: {e}")))?;
    let list = serde_json::Value::String(serde_json::to_string(&paths).unwrap_or_default()).to_string();
    let new_labels = object_text(
        label_members
            .iter()
            .filter(|(k, _)| k != VOLUMES_LABEL)
            .map(|(k, v)| (k.as_str(), v.get()))
            .chain(std::iter::once((VOLUMES_LABEL, list.as_str()))),
    );
    let mut run: Vec<(&str, &str)> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != vat)
        .map(|(i, (k, v))| (k.as_str(), if Some(i) == labels_at { new_labels.as_str() } else { v.get() }))
        .collect();
    if labels_at.is_none() {
        run.push(("Labels", new_labels.as_str()));
    }
    let new_run = object_text(run.into_iter());
    let new_top = object_text(top.iter().enumerate().map(|(i, (k, v))| {
        let value = if i == at { new_run.as_str() } else { v.get() };
        (k.as_str(), value)
    }));
    let bytes = new_top.into_bytes();
    Ok(Config { image_id: digest(&bytes), source_digest, bytes, removed_volumes })
}

/// An absolute path with no empty, `.` or `..` component and no NUL.
fn clean_absolute(p: &str) -> bool {
    p.len() <= 4096
        && p.len() > 1
        && p.starts_with('/')
        && !p.contains('\0')
        && p.trim_end_matches('/')[1..].split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_configs_keep_their_digest() {
        let c = br#"{"architecture":"amd64","config":{"Cmd":["sh"],"Volumes":null},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let p = prepare("x.json", c).unwrap();
        assert_eq!(p.bytes, c);
        assert_eq!(p.image_id, p.source_digest);
        assert_eq!(p.image_id, digest(c));
        let named = format!("{}.json", &p.image_id[7..]);
        assert_eq!(prepare(&named, c).unwrap().image_id, p.image_id);
    }

    #[test]
    fn a_name_that_lies_about_the_content_is_refused() {
        let c = br#"{"config":{}}"#;
        let other = format!("{}.json", "a".repeat(64));
        assert!(matches!(prepare(&other, c), Err(ArchiveError::ConfigNameMismatch { .. })));
        let blob = format!("blobs/sha256/{}", "b".repeat(64));
        assert!(matches!(prepare(&blob, c), Err(ArchiveError::ConfigNameMismatch { .. })));
    }

    #[test]
    fn volumes_are_removed_whatever_their_spelling() {
        let c = br#"{"config":{"Cmd":["sh"],"volumes":{"/data":{},"/var/lib/db":{}},"Env":["A=1.000000000000000000001"]},"os":"linux"}"#;
        let p = prepare("c.json", c).unwrap();
        assert_eq!(p.removed_volumes, ["/data", "/var/lib/db"]);
        assert_eq!(
            String::from_utf8(p.bytes.clone()).unwrap(),
            r#"{"config":{"Cmd":["sh"],"Env":["A=1.000000000000000000001"],"Labels":{"org.openstack.nova-docker.volumes":"[\"/data\",\"/var/lib/db\"]"}},"os":"linux"}"#
        );
        let labelled =
            br#"{"config":{"Labels":{"a":"b","org.openstack.nova-docker.volumes":"[\"/etc\"]"},"Volumes":{"/x":{}}}}"#;
        let q = prepare("c.json", labelled).unwrap();
        assert_eq!(
            String::from_utf8(q.bytes).unwrap(),
            r#"{"config":{"Labels":{"a":"b","org.openstack.nova-docker.volumes":"[\"/x\"]"}}}"#
        );
        for bad in ["relative", "/a/../b", "/a//b", "/", "/a/./b"] {
            let c = format!(r#"{{"config":{{"Volumes":{{"{bad}":{{}}}}}}}}"#);
            assert!(prepare("c.json", c.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(p.image_id, digest(&p.bytes));
        assert_ne!(p.image_id, p.source_digest);
        let k = "{\"CONFIG\":{\"VOLUME\u{17f}\":{\"/x\":{}}}}";
        assert_eq!(prepare("c.json", k.as_bytes()).unwrap().removed_volumes, ["/x"]);
    }

    #[test]
    fn ambiguous_configs_are_refused() {
        for c in [
            &br#"{"config":{},"Config":{"Volumes":{"/x":{}}}}"#[..],
            br#"{"config":{"Volumes":{},"VOLUMES":{"/x":{}}}}"#,
            br#"{"config":{"Volumes":["/x"]}}"#,
            br#"[]"#,
            b"{\"config\":\xff}",
        ] {
            assert!(prepare("c.json", c).is_err(), "{}", String::from_utf8_lossy(c));
        }
    }
}
