//! oslo.config's value interpolation, so that a nova.conf written for
//! Python Nova means the same here: `$option` and `${group.option}` are
//! replaced by that option's value, `$$` (or `\$`) is a literal `$`.
//!
//! As oslo.config (`ConfigOpts._substitute` with its `Template`, whose
//! identifiers are `[_a-z][._a-z0-9]*`, case-insensitive, and
//! `StrSubWrapper`):
//! - `$name` is looked up in the referring option's own group, then in
//!   `[DEFAULT]`; `$group.name` / `${group.name}` in that group (then, like
//!   oslo, as a `[DEFAULT]` option of the whole dotted name);
//! - the referenced value is itself interpolated, in its own group;
//! - an option without a value (no default) gives the empty string;
//! - a `$` not followed by an identifier or `{identifier}` stays as it is.
//!
//! Where oslo.config would raise (a reference to an option that does not
//! exist) this is a configuration error naming the option and the
//! reference; a reference loop, which oslo does not detect (it overflows
//! Python's stack), is an error too.

/// Why a value could not be interpolated (the caller adds which option).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InterpolationError {
    /// No option of that name in the group(s) looked in.
    #[error("${reference}: no such option in {searched}")]
    NoSuchOption {
        /// The reference as written, without `$` and braces.
        reference: String,
        /// Where it was looked up, e.g. `[glance] or [DEFAULT]`.
        searched: String,
    },
    /// The option is known but its value is computed at run time (e.g.
    /// `my_ip`), which a reference cannot use: set it in the file.
    #[error("${reference}: its value is computed at run time; set [{group}] {name} explicitly to refer to it")]
    Computed {
        /// The reference as written.
        reference: String,
        /// The referenced option's group.
        group: String,
        /// The referenced option's name.
        name: String,
    },
    /// Following references comes back to an option already being expanded.
    #[error("${reference}: the references loop ({path})")]
    Loop {
        /// The reference that closes the loop.
        reference: String,
        /// The chain of options, `[g] a -> [g] b -> [g] a`.
        path: String,
    },
}

/// The value of a referenced option, as a [`Lookup`] finds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// Set in a file or the environment, or a plain default: interpolated in turn.
    Value(String),
    /// A known option whose default is computed at run time.
    Computed,
}

/// Where references are resolved: the files' values and the option table.
pub trait Lookup {
    /// The raw (not yet interpolated) value of `[group] name`, `None` when
    /// there is no such option (neither set nor known).
    fn find(&self, group: &str, name: &str) -> Option<Found>;
}

/// Interpolates `value`, the raw value of `[group] name`.
pub fn interpolate(lookup: &dyn Lookup, group: &str, name: &str, value: &str) -> Result<String, InterpolationError> {
    let mut stack = vec![(group.to_string(), name.to_string())];
    expand(lookup, group, value, &mut stack)
}

/// Whether `value` holds anything interpolation would change.
pub fn has_template(value: &str) -> bool {
    value.contains('$')
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_ident(c: char) -> bool {
    c == '_' || c == '.' || c.is_ascii_alphanumeric()
}

fn expand(
    lookup: &dyn Lookup,
    group: &str,
    value: &str,
    stack: &mut Vec<(String, String)>,
) -> Result<String, InterpolationError> {
    if !has_template(value) {
        return Ok(value.to_string());
    }
    // oslo.config: "\$" is taken as "$$".
    let value = value.replace("\\$", "$$");
    let chars: Vec<char> = value.chars().collect();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        match next {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                let close = chars[i + 2..].iter().position(|c| *c == '}').map(|p| i + 2 + p);
                let ident: Option<String> = close.map(|end| chars[i + 2..end].iter().collect());
                match (close, ident) {
                    (Some(end), Some(id))
                        if id.chars().next().is_some_and(is_ident_start) && id.chars().all(is_ident) =>
                    {
                        out.push_str(&reference(lookup, group, &id, stack)?);
                        i = end + 1;
                    }
                    // Not a valid placeholder: left as written.
                    _ => {
                        out.push('$');
                        i += 1;
                    }
                }
            }
            Some(c) if is_ident_start(c) => {
                let mut end = i + 1;
                while end < chars.len() && is_ident(chars[end]) {
                    end += 1;
                }
                let id: String = chars[i + 1..end].iter().collect();
                out.push_str(&reference(lookup, group, &id, stack)?);
                i = end;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

fn reference(
    lookup: &dyn Lookup,
    group: &str,
    id: &str,
    stack: &mut Vec<(String, String)>,
) -> Result<String, InterpolationError> {
    // The candidates, in oslo.config's order.
    let candidates: Vec<(String, String)> = match id.split_once('.') {
        Some((g, name)) => {
            let g = super::ini::normalize_group(g);
            vec![(g, name.to_string()), ("DEFAULT".to_string(), id.to_string())]
        }
        None => {
            let mut c = vec![(group.to_string(), id.to_string())];
            if group != "DEFAULT" {
                c.push(("DEFAULT".to_string(), id.to_string()));
            }
            c
        }
    };
    for (g, name) in &candidates {
        let Some(found) = lookup.find(g, name) else { continue };
        let raw = match found {
            Found::Value(v) => v,
            Found::Computed => {
                return Err(InterpolationError::Computed {
                    reference: id.to_string(),
                    group: g.clone(),
                    name: name.clone(),
                });
            }
        };
        let key = (g.clone(), name.clone());
        if stack.contains(&key) {
            let mut path: Vec<String> = stack.iter().map(|(g, n)| format!("[{g}] {n}")).collect();
            path.push(format!("[{g}] {name}"));
            return Err(InterpolationError::Loop { reference: id.to_string(), path: path.join(" -> ") });
        }
        stack.push(key);
        let expanded = expand(lookup, g, &raw, stack);
        stack.pop();
        return expanded;
    }
    let searched = match id.split_once('.') {
        Some((g, _)) => format!("[{}]", super::ini::normalize_group(g)),
        None if group != "DEFAULT" => format!("[{group}] or [DEFAULT]"),
        None => "[DEFAULT]".to_string(),
    };
    Err(InterpolationError::NoSuchOption { reference: id.to_string(), searched })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Map(BTreeMap<(String, String), Found>);

    impl Lookup for Map {
        fn find(&self, group: &str, name: &str) -> Option<Found> {
            self.0.get(&(group.to_string(), name.to_string())).cloned()
        }
    }

    fn map(entries: &[(&str, &str, &str)]) -> Map {
        Map(entries.iter().map(|(g, n, v)| ((g.to_string(), n.to_string()), Found::Value(v.to_string()))).collect())
    }

    #[test]
    fn plain_braced_and_grouped_references() {
        let m = map(&[
            ("DEFAULT", "state_path", "/srv/nova"),
            ("DEFAULT", "host", "cmp1"),
            ("glance", "port", "9292"),
            ("glance", "host", "img"),
        ]);
        assert_eq!(interpolate(&m, "DEFAULT", "x", "$state_path/instances").unwrap(), "/srv/nova/instances");
        assert_eq!(interpolate(&m, "DEFAULT", "x", "${state_path}x").unwrap(), "/srv/novax");
        assert_eq!(interpolate(&m, "DEFAULT", "x", "http://${glance.host}:$glance.port/").unwrap(), "http://img:9292/");
        // Unqualified: the referring option's group first, then DEFAULT.
        assert_eq!(interpolate(&m, "glance", "x", "$host-$state_path").unwrap(), "img-/srv/nova");
        assert_eq!(interpolate(&m, "DEFAULT", "x", "$host").unwrap(), "cmp1");
        assert_eq!(interpolate(&m, "DEFAULT", "x", "${DEFAULT.host}").unwrap(), "cmp1");
    }

    #[test]
    fn dollars_escape_and_invalid_placeholders_stay() {
        let m = map(&[("DEFAULT", "a", "A")]);
        assert_eq!(interpolate(&m, "DEFAULT", "p", "pa$$word").unwrap(), "pa$word");
        assert_eq!(interpolate(&m, "DEFAULT", "p", "pa\\$a").unwrap(), "pa$a");
        assert_eq!(interpolate(&m, "DEFAULT", "p", "$$a $a").unwrap(), "$a A");
        for literal in ["cost $5", "end$", "${1x}", "${a", "$-"] {
            assert_eq!(interpolate(&m, "DEFAULT", "p", literal).unwrap(), literal);
        }
    }

    #[test]
    fn references_are_expanded_in_their_own_group() {
        let m =
            map(&[("DEFAULT", "state_path", "$base/state"), ("DEFAULT", "base", "/srv"), ("docker", "base", "/wrong")]);
        assert_eq!(interpolate(&m, "docker", "x", "$state_path").unwrap(), "/srv/state");
    }

    #[test]
    fn unknown_references_name_what_was_searched() {
        let m = map(&[]);
        let err = interpolate(&m, "glance", "x", "$nope/x").unwrap_err();
        assert_eq!(err.to_string(), "$nope: no such option in [glance] or [DEFAULT]");
        let err = interpolate(&m, "DEFAULT", "x", "${vnc.listen}").unwrap_err();
        assert_eq!(err.to_string(), "$vnc.listen: no such option in [vnc]");
        let computed = Map([(("DEFAULT".into(), "my_ip".into()), Found::Computed)].into_iter().collect());
        let err = interpolate(&computed, "DEFAULT", "x", "$my_ip").unwrap_err();
        assert!(err.to_string().contains("set [DEFAULT] my_ip explicitly"), "{err}");
    }

    #[test]
    fn loops_are_errors_not_overflows() {
        let m = map(&[("DEFAULT", "a", "$b"), ("DEFAULT", "b", "x$a")]);
        let err = interpolate(&m, "DEFAULT", "a", "$b").unwrap_err();
        assert_eq!(err.to_string(), "$a: the references loop ([DEFAULT] a -> [DEFAULT] b -> [DEFAULT] a)");
        let m = map(&[("DEFAULT", "a", "$a")]);
        assert!(matches!(interpolate(&m, "DEFAULT", "a", "$a"), Err(InterpolationError::Loop { .. })));
        // The same option twice side by side is no loop.
        let m = map(&[("DEFAULT", "a", "A")]);
        assert_eq!(interpolate(&m, "DEFAULT", "x", "$a$a").unwrap(), "AA");
    }
}
