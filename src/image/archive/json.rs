//! JSON as Docker's Go decoder reads it, where that differs from a plain
//! parse: object keys match struct fields case-insensitively (so `Config`,
//! `config` and `CONFIG` are one field, and a repeated field is merged or
//! overwritten), and members are kept as raw text so a document can be
//! rebuilt without touching the values it does not change.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// One object member: its key and its value as written.
pub(super) type Member<'a> = (String, &'a RawValue);

/// The members of the JSON object `text`, in order, duplicates included.
/// Fails when `text` is not an object.
pub(super) fn object_members(text: &str) -> Result<Vec<Member<'_>>, String> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<Member<'de>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let members = (&mut de).deserialize_map(Members).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(members)
}

/// Rebuilds an object from members (keys re-encoded, values as written).
pub(super) fn object_text<'a>(members: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in members.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(k.to_string()).to_string());
        out.push(':');
        out.push_str(v);
    }
    out.push('}');
    out
}

/// The first two members whose keys Go would take for the same field.
pub(super) fn same_field_twice<'a>(members: &'a [Member<'_>]) -> Option<(&'a str, &'a str)> {
    for (i, (a, _)) in members.iter().enumerate() {
        for (b, _) in &members[i + 1..] {
            if go_fold_eq(a, b) {
                return Some((a, b));
            }
        }
    }
    None
}

/// Go's `encoding/json` key matching: Unicode simple case folding, under
/// which only 'ſ' (U+017F) and 'K' (U+212A) fold onto ASCII letters.
pub(super) fn go_fold_eq(key: &str, field: &str) -> bool {
    let fold = |c: char| match c {
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    };
    key.chars().map(fold).eq(field.chars().map(fold))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_order_duplicates_and_raw_values() {
        let m = object_members(r#"{"b": 1.50000000000000000001, "a": {"x":[1, 2]}, "b": null}"#).unwrap();
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a", "b"]);
        assert_eq!(m[0].1.get(), "1.50000000000000000001");
        assert_eq!(
            object_text(m.iter().map(|(k, v)| (k.as_str(), v.get()))),
            r#"{"b":1.50000000000000000001,"a":{"x":[1, 2]},"b":null}"#
        );
        assert!(object_members("[1]").is_err());
        assert!(object_members("{} x").is_err());
    }

    #[test]
    fn go_folds_keys() {
        assert!(go_fold_eq("config", "Config"));
        assert!(go_fold_eq("Layer\u{17f}", "Layers"));
        assert!(!go_fold_eq("Configs", "Config"));
        let m = object_members(r#"{"Volumes": {}, "volumes": {}}"#).unwrap();
        assert_eq!(same_field_twice(&m), Some(("Volumes", "volumes")));
    }
}
