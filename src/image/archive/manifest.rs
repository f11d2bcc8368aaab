//! `manifest.json`: what the tenant's archive claims, and the manifest the
//! host writes in its place.
//!
//! Docker's loader (moby `image/tarexport`) reads one item per image:
//! `Config` and `Layers` are paths in the archive, `RepoTags` are names it
//! puts on the loaded image (moving them from any image that had them, on
//! the whole host), `Parent` links the image under another image of the
//! host, `LayerSources` describes foreign layers. Only the paths are
//! content; the rest are instructions to the engine. So the host keeps the
//! paths (resolved to the files it streamed) and writes the manifest anew
//! with no tags, refusing archives that ask for a parent or foreign layers.

use serde_json::json;

use super::ArchiveError;
use super::json::{go_fold_eq, object_members, same_field_twice};

/// Field names of Docker's manifest item.
const FIELDS: [&str; 5] = ["Config", "RepoTags", "Layers", "Parent", "LayerSources"];
/// Tags remembered (for the log) out of those the archive asked for.
const TAGS_KEPT: usize = 16;

/// The one image of an accepted manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Manifest {
    /// Path of the image config, normalised.
    pub config: String,
    /// Paths of the layers, normalised, in order.
    pub layers: Vec<String>,
    /// Tags the archive asked for (at most a few, for the log); never applied.
    pub dropped_tags: Vec<String>,
}

/// Parses and checks `manifest.json`.
pub(super) fn parse(text: &[u8]) -> Result<Manifest, ArchiveError> {
    let bad = |reason: String| ArchiveError::BadManifest { reason };
    let text = std::str::from_utf8(text).map_err(|_| bad("it is not UTF-8".into()))?;
    let items: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(text).map_err(|e| bad(format!("the top level is not a JSON array ({e})")))?;
    let item = match items.as_slice() {
        [] => return Err(ArchiveError::NoImages),
        [one] => *one,
        more => return Err(ArchiveError::SeveralImages { count: more.len() }),
    };
    let members = object_members(item.get()).map_err(|e| bad(format!("the image is not a JSON object ({e})")))?;
    if let Some((a, b)) = same_field_twice(&members) {
        return Err(bad(format!("keys {a:?} and {b:?} are the same field to Docker")));
    }
    let mut config = None;
    let mut layers = None;
    let mut dropped_tags = Vec::new();
    for (key, value) in &members {
        let Some(field) = FIELDS.iter().find(|f| go_fold_eq(key, f)) else {
            continue; // Docker ignores unknown keys.
        };
        let v: serde_json::Value = serde_json::from_str(value.get()).map_err(|e| bad(e.to_string()))?;
        match *field {
            "Config" => config = Some(v.as_str().ok_or_else(|| bad("Config is not a string".into()))?.to_string()),
            "Layers" => {
                let list = v.as_array().ok_or_else(|| bad("Layers is not a list".into()))?;
                let paths: Option<Vec<String>> = list.iter().map(|l| l.as_str().map(str::to_string)).collect();
                layers = Some(paths.ok_or_else(|| bad("a layer path is not a string".into()))?);
            }
            "RepoTags" if !v.is_null() => {
                let list = v.as_array().ok_or_else(|| bad("RepoTags is not a list".into()))?;
                for tag in list {
                    let tag = tag.as_str().ok_or_else(|| bad("a tag is not a string".into()))?;
                    if dropped_tags.len() < TAGS_KEPT {
                        dropped_tags.push(tag.chars().take(256).collect());
                    }
                }
            }
            "Parent" if !(v.is_null() || v.as_str() == Some("")) => {
                return Err(bad(
                    "it names a parent image; an image from Glance is never linked to another image of the host".into(),
                ));
            }
            "LayerSources" if !(v.is_null() || v.as_object().is_some_and(|m| m.is_empty())) => {
                return Err(bad("it declares foreign layer sources, which this host never fetches".into()));
            }
            _ => {}
        }
    }
    let path = |p: &str| normalise(p).map_err(|why| bad(format!("path {:?} {why}", super::shown(p))));
    let config = path(&config.ok_or_else(|| bad("the image has no Config".into()))?)?;
    let layers = layers.ok_or_else(|| bad("the image has no Layers".into()))?;
    let layers = layers.iter().map(|l| path(l)).collect::<Result<Vec<_>, _>>()?;
    Ok(Manifest { config, layers, dropped_tags })
}

/// The manifest the host writes: the same config and layers, no tags.
pub(super) fn canonical(config: &str, layers: &[String]) -> Vec<u8> {
    json!([{"Config": config, "RepoTags": null, "Layers": layers}]).to_string().into_bytes()
}

/// Normalises a path named by the manifest.
fn normalise(p: &str) -> Result<String, &'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_dropped_and_paths_normalised() {
        let m = parse(
            br#"[{"Config":"./c.json","RepoTags":["busybox:latest","glance/x:latest"],"Layers":["a//layer.tar"]}]"#,
        )
        .unwrap();
        assert_eq!(m.config, "c.json");
        assert_eq!(m.layers, ["a/layer.tar"]);
        assert_eq!(m.dropped_tags, ["busybox:latest", "glance/x:latest"]);
        let text = String::from_utf8(canonical(&m.config, &m.layers)).unwrap();
        assert_eq!(text, r#"[{"Config":"c.json","Layers":["a/layer.tar"],"RepoTags":null}]"#);
        assert_eq!(parse(text.as_bytes()).unwrap().dropped_tags, Vec::<String>::new());
    }

    #[test]
    fn instructions_and_ambiguities_are_refused() {
        let refused = [
            &br#"[]"#[..],
            br#"[{"Config":"c","Layers":[]},{"Config":"d","Layers":[]}]"#,
            br#"[{"Config":"c","Layers":[],"Parent":"sha256:abc"}]"#,
            br#"[{"Config":"c","Layers":[],"LayerSources":{"sha256:a":{"urls":["http://x"]}}}]"#,
            br#"[{"Config":"c","config":"d","Layers":[]}]"#,
            br#"[{"Config":"../c","Layers":[]}]"#,
            br#"[{"Config":"c","Layers":["/etc/passwd"]}]"#,
            br#"[{"Layers":[]}]"#,
            br#"[{"Config":1,"Layers":[]}]"#,
            br#"{"Config":"c"}"#,
        ];
        for r in refused {
            assert!(parse(r).is_err(), "{}", String::from_utf8_lossy(r));
        }
        // Go reads these keys as the fields; so do we.
        let m = parse(br#"[{"config":"c","LAYERS":["l"],"Parent":"","LayerSources":null}]"#).unwrap();
        assert_eq!((m.config.as_str(), m.layers.len()), ("c", 1));
    }
}
