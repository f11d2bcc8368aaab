//! An INI reader that behaves like oslo.config's parser, so that an operator's
//! existing `nova.conf` means the same thing to us as to Python Nova.
//!
//! Stock INI crates differ from oslo.config in ways that matter for real files
//! (see `reference/crates.md` §3.4): group names other than `DEFAULT` are
//! lowercased, backslashes are literal, a repeated key keeps every value (the
//! last one wins for single-valued options), an indented line continues the
//! previous value (joined with a newline), `#` and `;` start comment lines
//! only (never inline), and a value wrapped in matching quotes loses them.

use std::collections::BTreeMap;

/// Every value seen for every key, per group, in file order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct IniFile {
    groups: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

/// Why a file could not be parsed; carries the 1-based line number.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IniError {
    /// A `key = value` line comes before any `[section]`.
    #[error("line {0}: a key = value line appears before any [section] header")]
    NoSection(usize),
    /// A line starting with `[` is not a well-formed `[section]` header.
    #[error("line {0}: invalid section header")]
    BadSection(usize),
    /// A line has no `=` or `:` separator, or nothing before it.
    #[error("line {0}: expected `key = value`")]
    NoSeparator(usize),
    /// An indented continuation line has no key above it to continue.
    #[error("line {0}: continuation line without a preceding key")]
    StrayContinuation(usize),
}

/// Normalises a group name the way oslo.config does.
pub fn normalize_group(name: &str) -> String {
    if name == "DEFAULT" { name.to_string() } else { name.to_lowercase() }
}

impl IniFile {
    /// Parses the text of one file.
    pub fn parse(text: &str) -> Result<Self, IniError> {
        let mut file = IniFile::default();
        let mut section: Option<String> = None;
        // The key being assembled and its lines (continuations append).
        let mut pending: Option<(String, Vec<String>)> = None;

        for (index, raw) in text.lines().enumerate() {
            let lineno = index + 1;
            let line = raw.trim_end_matches('\r');
            let trimmed = line.trim();
            let is_continuation = line.starts_with([' ', '\t']) && !trimmed.is_empty();

            if is_continuation && pending.is_some() && !trimmed.starts_with(['#', ';']) {
                if let Some((_, lines)) = pending.as_mut() {
                    lines.push(trimmed.to_string());
                }
                continue;
            }
            if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
                // A blank or comment line ends a continuation.
                file.flush(&section, &mut pending);
                continue;
            }
            file.flush(&section, &mut pending);
            if trimmed.starts_with('[') {
                let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
                    return Err(IniError::BadSection(lineno));
                };
                let name = name.trim();
                if name.is_empty() {
                    return Err(IniError::BadSection(lineno));
                }
                section = Some(normalize_group(name));
                file.groups.entry(normalize_group(name)).or_default();
                continue;
            }
            if is_continuation {
                return Err(IniError::StrayContinuation(lineno));
            }
            if section.is_none() {
                return Err(IniError::NoSection(lineno));
            }
            let Some(split) = trimmed.find(['=', ':']) else {
                return Err(IniError::NoSeparator(lineno));
            };
            let key = trimmed[..split].trim();
            if key.is_empty() {
                return Err(IniError::NoSeparator(lineno));
            }
            let value = strip_quotes(trimmed[split + 1..].trim());
            pending = Some((key.to_string(), vec![value.to_string()]));
        }
        file.flush(&section, &mut pending);
        Ok(file)
    }

    fn flush(&mut self, section: &Option<String>, pending: &mut Option<(String, Vec<String>)>) {
        if let (Some(section), Some((key, lines))) = (section, pending.take()) {
            // oslo joins continuation lines with a newline; a first line that is
            // empty (`key =` followed by indented lines) is dropped.
            let lines: Vec<String> = if lines.len() > 1 && lines[0].is_empty() { lines[1..].to_vec() } else { lines };
            self.groups.entry(section.clone()).or_default().entry(key).or_default().push(lines.join("\n"));
        }
    }

    /// The last value of `group.key` (what a single-valued option sees).
    pub fn get(&self, group: &str, key: &str) -> Option<&str> {
        self.get_all(group, key).and_then(|v| v.last()).map(String::as_str)
    }

    /// Every value of `group.key` in file order (what a MultiStrOpt sees).
    pub fn get_all(&self, group: &str, key: &str) -> Option<&[String]> {
        self.groups.get(&normalize_group(group))?.get(key).map(Vec::as_slice)
    }

    /// Iterates `(group, key, last value)` over the whole file.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.groups.iter().flat_map(|(group, keys)| {
            keys.iter()
                .filter_map(move |(key, values)| values.last().map(|v| (group.as_str(), key.as_str(), v.as_str())))
        })
    }
}

fn strip_quotes(value: &str) -> &str {
    for quote in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(quote) && value.ends_with(quote) {
            return &value[1..value.len() - 1];
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_lowercased_except_default() {
        let f = IniFile::parse("[DEFAULT]\nhost = a\n[Oslo_Messaging_Rabbit]\nssl = true\n").unwrap();
        assert_eq!(f.get("DEFAULT", "host"), Some("a"));
        assert_eq!(f.get("oslo_messaging_rabbit", "ssl"), Some("true"));
    }

    #[test]
    fn backslashes_are_literal_and_inline_comments_kept() {
        let f = IniFile::parse("[x]\npath = C:\\new\\path\nip = 10.0.0.1 ; comment\n").unwrap();
        assert_eq!(f.get("x", "path"), Some("C:\\new\\path"));
        assert_eq!(f.get("x", "ip"), Some("10.0.0.1 ; comment"));
    }

    #[test]
    fn repeated_keys_keep_every_value_last_wins() {
        let f = IniFile::parse("[x]\nmulti = one\nmulti = two\n").unwrap();
        assert_eq!(f.get("x", "multi"), Some("two"));
        assert_eq!(f.get_all("x", "multi").unwrap(), ["one", "two"]);
    }

    #[test]
    fn continuation_lines_join_with_newline() {
        let f = IniFile::parse("[x]\nv = first\n  second\n# c\nw = 1\n").unwrap();
        assert_eq!(f.get("x", "v"), Some("first\nsecond"));
        assert_eq!(f.get("x", "w"), Some("1"));
    }

    #[test]
    fn quotes_colons_and_empty_values() {
        let f = IniFile::parse("[x]\nq = \"a b\"\nc: d\ne =\n").unwrap();
        assert_eq!(f.get("x", "q"), Some("a b"));
        assert_eq!(f.get("x", "c"), Some("d"));
        assert_eq!(f.get("x", "e"), Some(""));
    }

    #[test]
    fn url_values_keep_their_equals_and_colons() {
        let f = IniFile::parse("[DEFAULT]\ntransport_url = rabbit://u:p=w@h:5672/\n").unwrap();
        assert_eq!(f.get("DEFAULT", "transport_url"), Some("rabbit://u:p=w@h:5672/"));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(IniFile::parse("host = a\n"), Err(IniError::NoSection(1)));
        assert_eq!(IniFile::parse("[x]\nnovalue\n"), Err(IniError::NoSeparator(2)));
        assert_eq!(IniFile::parse("[x\n"), Err(IniError::BadSection(1)));
    }
}
