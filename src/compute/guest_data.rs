//! What a build asks to put in the guest besides its image: block device
//! mappings and injected files (personality). A container has no block
//! devices, so every mapping other than the image itself is refused; the
//! injected files are written into the container before it starts
//! (`virt::spec::GuestFile`). Nothing is dropped without a word: what the
//! host cannot honour fails the build with a fault that says why.

use serde_json::Value;

use super::errors::OpError;
use crate::virt::spec::{GuestFile, guest_path};

/// What a build puts in the guest besides its image and ports.
#[derive(Debug, Default)]
pub struct Guest<'a> {
    /// The injected files, checked and decoded.
    pub files: Vec<GuestFile>,
    /// The admin password (only for the config drive).
    pub admin_pass: Option<&'a str>,
}

/// Most injected files accepted in one build (Nova's default quota is 5).
pub const MAX_INJECTED_FILES: usize = 100;

/// Most bytes of all injected files of one build, decoded (Nova's default
/// quota is 10 KiB per file).
pub const MAX_INJECTED_BYTES: usize = 1 << 20;

/// Most block device mappings read from one request.
const MAX_BDMS: usize = 256;

/// The data of each mapping of a `BlockDeviceMappingList` primitive (or of a
/// plain list of mappings); an error for anything else.
fn bdm_entries(v: &Value) -> Result<Vec<&serde_json::Map<String, Value>>, OpError> {
    let bad = || OpError::Invalid("block_device_mapping is not a list of block device mappings".into());
    let list = match v {
        Value::Array(a) => a,
        Value::Object(o) => {
            o.get("nova_object.data").and_then(|d| d.get("objects")).and_then(Value::as_array).ok_or_else(bad)?
        }
        _ => return Err(bad()),
    };
    if list.len() > MAX_BDMS {
        return Err(OpError::Invalid(format!("{} block device mappings: more than {MAX_BDMS}", list.len())));
    }
    list.iter()
        .map(|b| match b.get("nova_object.data").unwrap_or(b) {
            Value::Object(m) => Ok(m),
            _ => Err(bad()),
        })
        .collect()
}

/// Refuses every block device mapping but the image's own (source image,
/// destination local): volumes, snapshots, ephemeral and swap disks have
/// nowhere to go in a container. Mappings that say "no device" are none.
pub fn check_block_devices(v: Option<&Value>) -> Result<(), OpError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(()) };
    for (n, b) in bdm_entries(v)?.into_iter().enumerate() {
        let s = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("");
        if b.get("no_device").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let (source, destination) = (s("source_type"), s("destination_type"));
        let what = match (source, destination) {
            ("image", "local") => continue,
            (_, "volume") => "volumes cannot be attached to a container",
            ("blank", "local") if s("guest_format") == "swap" => "a container has no swap disk (flavor swap)",
            ("blank", "local") => "a container has no ephemeral disk (flavor ephemeral_gb)",
            _ => "a container has no block devices",
        };
        let source = if source.is_empty() { "?" } else { source };
        let destination = if destination.is_empty() { "?" } else { destination };
        return Err(OpError::Invalid(format!(
            "block device mapping {} (source_type {source}, destination_type {destination}) is not supported by \
             nova-docker: {what}",
            n + 1
        )));
    }
    Ok(())
}

/// Whether the build needs a config drive, as Nova's
/// `configdrive.required_by` decides: the server asked for one, the image
/// says `img_config_drive=mandatory`, or `[DEFAULT] force_config_drive`.
pub fn config_drive_required(
    instance: &crate::objects::Instance,
    image_properties: &serde_json::Map<String, Value>,
    force: bool,
) -> bool {
    instance.config_drive()
        || force
        || image_properties.get("img_config_drive").and_then(Value::as_str) == Some("mandatory")
}

/// The injected files (personality) of a build, `[path, base64 contents]`
/// pairs as Nova's API passed them: each becomes a root-owned 0644 file,
/// its missing parents root-owned 0755 directories. A path that is not a
/// plain absolute path, contents that are not base64, or more than
/// [`MAX_INJECTED_FILES`] files or [`MAX_INJECTED_BYTES`] bytes are
/// refused. The contents are the tenant's: decoded, never interpreted.
pub fn injected_files(v: Option<&Value>) -> Result<Vec<GuestFile>, OpError> {
    use base64::Engine;
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let list = v.as_array().ok_or_else(|| OpError::Invalid("injected_files is not a list".into()))?;
    if list.len() > MAX_INJECTED_FILES {
        return Err(OpError::Invalid(format!("{} injected files: more than {MAX_INJECTED_FILES}", list.len())));
    }
    let mut files = Vec::with_capacity(list.len());
    let mut total = 0usize;
    for (n, f) in list.iter().enumerate() {
        let n = n + 1;
        let pair = f.as_array().filter(|p| p.len() == 2);
        let (Some(path), Some(contents)) = (pair.and_then(|p| p[0].as_str()), pair.and_then(|p| p[1].as_str())) else {
            return Err(OpError::Invalid(format!("injected file {n} is not a (path, contents) pair")));
        };
        let path = guest_path(path).map_err(|why| OpError::Invalid(format!("injected file {n}: its path {why}")))?;
        // Python's b64decode (what Nova's compute manager uses) skips
        // whitespace; the API checked the text already.
        let text: String = contents.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        if text.len() / 4 * 3 > MAX_INJECTED_BYTES {
            return Err(OpError::Invalid(format!("injected files: more than {MAX_INJECTED_BYTES} bytes")));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|_| OpError::Invalid(format!("injected file {n}: its contents are not base64")))?;
        total += bytes.len();
        if total > MAX_INJECTED_BYTES {
            return Err(OpError::Invalid(format!("injected files: more than {MAX_INJECTED_BYTES} bytes")));
        }
        files.push(GuestFile { path, mode: 0o644, contents: Some(bytes) });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bdm(data: Value) -> Value {
        json!({"nova_object.name": "BlockDeviceMapping", "nova_object.namespace": "nova",
               "nova_object.version": "1.21", "nova_object.data": data})
    }

    fn list(items: Vec<Value>) -> Value {
        json!({"nova_object.name": "BlockDeviceMappingList", "nova_object.namespace": "nova",
               "nova_object.version": "1.18", "nova_object.data": {"objects": items}})
    }

    fn image_bdm() -> Value {
        bdm(json!({"source_type": "image", "destination_type": "local", "boot_index": 0, "image_id": "i"}))
    }

    #[test]
    fn only_the_image_mapping_is_accepted() {
        check_block_devices(None).unwrap();
        check_block_devices(Some(&Value::Null)).unwrap();
        check_block_devices(Some(&list(vec![image_bdm()]))).unwrap();
        check_block_devices(Some(&list(vec![]))).unwrap();
        let none = bdm(json!({"source_type": "blank", "destination_type": "local", "no_device": true}));
        check_block_devices(Some(&list(vec![image_bdm(), none]))).unwrap();
        for (data, says) in [
            (json!({"source_type": "volume", "destination_type": "volume", "volume_id": "v"}), "volumes"),
            (json!({"source_type": "image", "destination_type": "volume", "volume_size": 1}), "volumes"),
            (json!({"source_type": "snapshot", "destination_type": "volume"}), "volumes"),
            (json!({"source_type": "blank", "destination_type": "local", "guest_format": "swap"}), "swap"),
            (json!({"source_type": "blank", "destination_type": "local", "volume_size": 1}), "ephemeral"),
            (json!({"source_type": "blank"}), "no block devices"),
        ] {
            let e = check_block_devices(Some(&list(vec![image_bdm(), bdm(data.clone())]))).unwrap_err();
            let m = e.to_string();
            assert!(m.contains("block device mapping 2") && m.contains(says), "{data}: {m}");
            assert!(m.contains("not supported by nova-docker"), "{m}");
        }
        // A plain list of mappings, too; anything else is refused, not skipped.
        let plain = json!([{"source_type": "volume", "destination_type": "volume"}]);
        assert!(check_block_devices(Some(&plain)).is_err());
        for bad in [json!("x"), json!({"nova_object.data": {}}), json!([1])] {
            assert!(check_block_devices(Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn injected_files_are_decoded_with_their_paths_checked() {
        assert!(injected_files(None).unwrap().is_empty());
        assert!(injected_files(Some(&json!([]))).unwrap().is_empty());
        let f = injected_files(Some(&json!([["/etc/motd", "aGVs\nbG8="], ["//opt//a b/c", ""]]))).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].path.as_str(), f[0].mode, f[0].contents.as_deref()), ("etc/motd", 0o644, Some(&b"hello"[..])));
        assert_eq!((f[1].path.as_str(), f[1].contents.as_deref()), ("opt/a b/c", Some(&b""[..])));
        for (bad, says) in [
            (json!([["etc/motd", "aGk="]]), "absolute"),
            (json!([["/etc/../../x", "aGk="]]), ".."),
            (json!([["/./x", "aGk="]]), ".."),
            (json!([["/", "aGk="]]), "names no file"),
            (json!([["/etc/", "aGk="]]), "directory"),
            (json!([["/a\u{0}b", "aGk="]]), "NUL"),
            (json!([["/x", "not base64!"]]), "not base64"),
            (json!([["/x"]]), "pair"),
            (json!([[1, "aGk="]]), "pair"),
            (json!("x"), "not a list"),
        ] {
            let e = injected_files(Some(&bad)).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let long = format!("/{}", "a/".repeat(2100));
        assert!(injected_files(Some(&json!([[long, ""]]))).unwrap_err().to_string().contains("4096"));
    }

    #[test]
    fn injected_files_are_bounded() {
        let many: Vec<Value> = (0..=MAX_INJECTED_FILES).map(|i| json!([format!("/f{i}"), ""])).collect();
        assert!(injected_files(Some(&Value::Array(many))).unwrap_err().to_string().contains("more than"));
        use base64::Engine;
        let half = base64::engine::general_purpose::STANDARD.encode(vec![0u8; MAX_INJECTED_BYTES / 2 + 1]);
        assert!(injected_files(Some(&json!([["/a", half]]))).is_ok());
        let e = injected_files(Some(&json!([["/a", half], ["/b", half]]))).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; MAX_INJECTED_BYTES + 3]);
        assert!(injected_files(Some(&json!([["/a", big]]))).is_err());
    }
}
