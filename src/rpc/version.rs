//! RPC API versions ("6.0", "1.1") and oslo.messaging's compatibility rule.

use std::fmt;
use std::str::FromStr;

/// A `major.minor` RPC API version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Incompatible changes bump it: a server serves only its own major.
    pub major: u32,
    /// Compatible additions bump it: a server serves any minor up to its own.
    pub minor: u32,
}

impl Version {
    /// Builds a version from its parts.
    pub const fn new(major: u32, minor: u32) -> Self {
        Version { major, minor }
    }

    /// oslo's `version_is_compatible(imp, req)`: same major, requested minor not
    /// above what the endpoint implements.
    pub fn can_serve(&self, requested: &Version) -> bool {
        self.major == requested.major && requested.minor <= self.minor
    }
}

/// A version string that is not `major[.minor[.rev]]`.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid RPC version {0:?}")]
pub struct BadVersion(pub String);

impl FromStr for Version {
    type Err = BadVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('.');
        let bad = || BadVersion(s.to_string());
        let major = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let minor = match parts.next() {
            Some(m) => m.parse().map_err(|_| bad())?,
            None => 0,
        };
        // oslo tolerates a third (revision) component and ignores it.
        if let Some(rev) = parts.next() {
            rev.parse::<u32>().map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Version { major, minor })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatibility_is_same_major_and_minor_not_above() {
        let imp = Version::new(6, 1);
        assert!(imp.can_serve(&"6.0".parse().unwrap()));
        assert!(imp.can_serve(&"6.1".parse().unwrap()));
        assert!(!imp.can_serve(&"6.2".parse().unwrap()));
        assert!(!imp.can_serve(&"5.0".parse().unwrap()));
        assert!(!imp.can_serve(&"7.0".parse().unwrap()));
    }

    #[test]
    fn parsing() {
        assert_eq!("1".parse::<Version>().unwrap(), Version::new(1, 0));
        assert_eq!("6.5.1".parse::<Version>().unwrap(), Version::new(6, 5));
        assert!("x.1".parse::<Version>().is_err());
        assert!("".parse::<Version>().is_err());
        assert!("1.2.3.4".parse::<Version>().is_err());
    }
}
