//! oslo.config's command-line conventions for the configuration files:
//! `--config-file` and `--config-dir` may repeat and interleave, and are
//! read in the order given (a directory contributes its `*.conf` files in
//! name order); with neither, the default files that exist are read.

use std::path::{Path, PathBuf};

/// Where Nova's services look when no file is named, in order.
pub const DEFAULT_CONFIG_FILES: [&str; 2] = ["/etc/nova/nova.conf", "/etc/nova/nova-docker.conf"];

/// A `--config-dir` that cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The directory cannot be read.
    #[error("--config-dir {path}: {source}")]
    ConfigDir {
        /// The directory given.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
}

/// One configuration source as given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `--config-file PATH`.
    File(PathBuf),
    /// `--config-dir DIR`.
    Dir(PathBuf),
}

/// The files to read, from the parsed arguments (`config_files` and
/// `config_dirs` ids, as `main` declares them).
pub fn config_files(matches: &clap::ArgMatches) -> Result<Vec<PathBuf>, CliError> {
    let mut sources: Vec<(usize, Source)> = Vec::new();
    for (id, dir) in [("config_files", false), ("config_dirs", true)] {
        let (Some(values), Some(indices)) = (matches.get_many::<PathBuf>(id), matches.indices_of(id)) else {
            continue;
        };
        for (value, index) in values.zip(indices) {
            let s = if dir { Source::Dir(value.clone()) } else { Source::File(value.clone()) };
            sources.push((index, s));
        }
    }
    sources.sort_by_key(|(i, _)| *i);
    let sources: Vec<Source> = sources.into_iter().map(|(_, s)| s).collect();
    resolve(&sources, |p| p.is_file())
}

/// Expands the sources in order; the defaults (those `exists` accepts) when
/// there are none.
pub fn resolve(sources: &[Source], exists: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>, CliError> {
    if sources.is_empty() {
        return Ok(DEFAULT_CONFIG_FILES.iter().map(PathBuf::from).filter(|p| exists(p)).collect());
    }
    let mut files = Vec::new();
    for source in sources {
        match source {
            Source::File(p) => files.push(p.clone()),
            Source::Dir(d) => {
                let err = |source| CliError::ConfigDir { path: d.clone(), source };
                let mut in_dir: Vec<PathBuf> = std::fs::read_dir(d)
                    .map_err(err)?
                    .map(|e| e.map(|e| e.path()))
                    .collect::<Result<_, _>>()
                    .map_err(err)?;
                in_dir.retain(|p| p.extension().is_some_and(|e| e == "conf") && exists(p));
                in_dir.sort();
                files.extend(in_dir);
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_nova_files_that_exist() {
        let files = resolve(&[], |p| p == Path::new("/etc/nova/nova-docker.conf")).unwrap();
        assert_eq!(files, vec![PathBuf::from("/etc/nova/nova-docker.conf")]);
        let files = resolve(&[], |_| true).unwrap();
        assert_eq!(files, DEFAULT_CONFIG_FILES.iter().map(PathBuf::from).collect::<Vec<_>>());
    }

    #[test]
    fn dirs_expand_to_their_conf_files_in_name_order_where_they_stand() {
        let dir = std::env::temp_dir().join(format!("nd-cli-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["20-b.conf", "10-a.conf", "notes.txt"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let sources =
            [Source::File("/x/first.conf".into()), Source::Dir(dir.clone()), Source::File("/x/last.conf".into())];
        let files = resolve(&sources, |p| p.is_file()).unwrap();
        assert_eq!(
            files,
            vec![
                PathBuf::from("/x/first.conf"),
                dir.join("10-a.conf"),
                dir.join("20-b.conf"),
                PathBuf::from("/x/last.conf")
            ]
        );
        assert!(resolve(&[Source::Dir(dir.join("missing"))], |_| true).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
