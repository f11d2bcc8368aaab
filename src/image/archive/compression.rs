//! Which bytes Docker would decompress before reading a tar: its detection
//! table byte for byte (moby `pkg/archive` `DetectCompression`, applied by
//! `DecompressStream` to a `docker load` input and to each layer in it).
//!
//! Docker peeks at most the first 10 bytes. gzip is decompressed by this
//! host (`super::gzip`) so the archive inside is checked like any other;
//! bzip2, xz and zstd never reach Docker: nothing `docker save` writes uses
//! them, and each would be a decompressor of the tenant's choosing run by
//! the engine on bytes nobody checked.

/// How many leading bytes Docker looks at.
pub(super) const PEEK: usize = 10;

/// A compression format Docker recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`1f 8b 08`), what `docker save | gzip` gives.
    Gzip,
    /// bzip2 (`BZh`).
    Bzip2,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// zstd (`28 b5 2f fd`, or a skippable frame first).
    Zstd,
}

impl Compression {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }
}

/// Docker's verdict on a stream starting with `prefix` (at most [`PEEK`]
/// bytes matter; give fewer only when the stream is that short).
pub(super) fn detect(prefix: &[u8]) -> Option<Compression> {
    const BZIP2: &[u8] = &[0x42, 0x5A, 0x68];
    const GZIP: &[u8] = &[0x1F, 0x8B, 0x08];
    const XZ: &[u8] = &[0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00];
    const ZSTD: &[u8] = &[0x28, 0xB5, 0x2F, 0xFD];
    const ZSTD_SKIPPABLE_START: u32 = 0x184D_2A50;
    const ZSTD_SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
    if prefix.starts_with(BZIP2) {
        Some(Compression::Bzip2)
    } else if prefix.starts_with(GZIP) {
        Some(Compression::Gzip)
    } else if prefix.starts_with(XZ) {
        Some(Compression::Xz)
    } else if prefix.starts_with(ZSTD) {
        Some(Compression::Zstd)
    } else if prefix.len() >= 8
        && u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) & ZSTD_SKIPPABLE_MASK
            == ZSTD_SKIPPABLE_START
    {
        // A zstd skippable frame: Docker hands the stream to zstd.
        Some(Compression::Zstd)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_matches_dockers() {
        assert_eq!(detect(&[0x1f, 0x8b, 0x08, 0]), Some(Compression::Gzip));
        // gzip with another method is not gzip to Docker.
        assert_eq!(detect(&[0x1f, 0x8b, 0x07, 0]), None);
        assert_eq!(detect(b"BZh91AY&SY"), Some(Compression::Bzip2));
        assert_eq!(detect(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]), Some(Compression::Xz));
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd]), Some(Compression::Zstd));
        for low in 0x50..=0x5f {
            assert_eq!(detect(&[low, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]), Some(Compression::Zstd), "{low:x}");
            // Docker wants 8 bytes before it calls it a skippable frame.
            assert_eq!(detect(&[low, 0x2a, 0x4d, 0x18, 0, 0, 0]), None);
        }
        assert_eq!(detect(&[0x60, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]), None);
        assert_eq!(detect(b"manifest.json\0"), None);
        assert_eq!(detect(b""), None);
    }
}
