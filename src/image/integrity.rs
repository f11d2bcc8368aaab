//! Image data checked against the hash Glance recorded when it was uploaded.
//!
//! Glance computes `os_hash_value` with `os_hash_algo` (sha512 by default)
//! and the legacy MD5 `checksum` over the bytes it stores. The download is
//! hashed as it streams and compared at its end; a mismatch becomes an
//! error in the stream itself, so the archive canonicalizer after it never
//! sends the config and manifest and Docker never commits an image from
//! bytes Glance did not store.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use md5::Md5;
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::GlanceImage;

/// The hash to check, and the value Glance recorded.
pub struct ExpectedHash {
    algo: &'static str,
    hasher: Hasher,
    value: String,
}

enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

/// Why an image's data cannot be checked.
#[derive(Debug, thiserror::Error)]
#[error(
    "Glance records no hash this host can check for image {id} (os_hash_algo {algo:?}, no MD5 checksum): \
     refusing data that cannot be verified"
)]
pub struct NoUsableHash {
    /// The image.
    pub id: String,
    /// The algorithm Glance named, if any.
    pub algo: Option<String>,
}

/// The strongest hash Glance recorded for `image` that this host computes:
/// `os_hash_value` (sha256, sha384 or sha512), else the MD5 `checksum`.
pub fn expected(image: &GlanceImage) -> Result<ExpectedHash, NoUsableHash> {
    let value = |v: &Option<String>| v.as_deref().map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty());
    if let Some(v) = value(&image.os_hash_value) {
        let found = match image.os_hash_algo.as_deref() {
            Some("sha256") => Some(("sha256", Hasher::Sha256(Sha256::new()))),
            Some("sha384") => Some(("sha384", Hasher::Sha384(Sha384::new()))),
            Some("sha512") => Some(("sha512", Hasher::Sha512(Sha512::new()))),
            _ => None,
        };
        if let Some((algo, hasher)) = found {
            return Ok(ExpectedHash { algo, hasher, value: v });
        }
    }
    if let Some(v) = value(&image.checksum) {
        return Ok(ExpectedHash { algo: "md5", hasher: Hasher::Md5(Md5::new()), value: v });
    }
    Err(NoUsableHash { id: image.id.clone(), algo: image.os_hash_algo.clone() })
}

impl ExpectedHash {
    fn update(&mut self, data: &[u8]) {
        match &mut self.hasher {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// Whether what went by has the recorded hash.
    fn matches(self) -> bool {
        let sum = match self.hasher {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
        hex == self.value
    }

    /// The algorithm checked.
    pub fn algo(&self) -> &'static str {
        self.algo
    }
}

/// `data` unchanged, with an error instead of its end when the bytes do not
/// have the expected hash.
pub fn verified<S>(data: S, expected: ExpectedHash) -> Verified<S>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    Verified { data, expected: Some(expected) }
}

/// The stream returned by [`verified`].
pub struct Verified<S> {
    data: S,
    expected: Option<ExpectedHash>,
}

impl<S> Stream for Verified<S>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expected.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.data).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(e) = self.expected.as_mut() {
                    e.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.expected = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => match self.expected.take() {
                Some(e) => {
                    let algo = e.algo;
                    if e.matches() {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("the data Glance sent does not have the image's recorded {algo} hash"),
                        ))))
                    }
                }
                None => Poll::Ready(None),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    fn image(meta: serde_json::Value) -> GlanceImage {
        let mut v = json!({"id": "i", "status": "active", "container_format": "docker"});
        v.as_object_mut().unwrap().extend(meta.as_object().unwrap().clone());
        GlanceImage::from_json(&v).unwrap()
    }

    async fn run(meta: serde_json::Value, chunks: &[&'static [u8]]) -> Result<Vec<u8>, String> {
        let e = expected(&image(meta)).map_err(|e| e.to_string())?;
        let input = futures::stream::iter(chunks.iter().map(|c| Ok(Bytes::from_static(c))));
        let mut out = Vec::new();
        let mut s = verified(input, e);
        while let Some(item) = s.next().await {
            out.extend_from_slice(&item.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn glance_hashes_are_checked() {
        // sha512("hello") and md5("hello").
        let sha512 = "9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca72323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043";
        let md5 = "5d41402abc4b2a76b9719d911017c592";
        let ok = run(json!({"os_hash_algo": "sha512", "os_hash_value": sha512}), &[b"hel", b"lo"]).await;
        assert_eq!(ok.as_deref(), Ok(&b"hello"[..]));
        let bad = run(json!({"os_hash_algo": "sha512", "os_hash_value": sha512}), &[b"hellO"]).await;
        assert!(bad.unwrap_err().contains("sha512"));
        // An algorithm this host does not compute falls back to MD5.
        let fallback =
            run(json!({"os_hash_algo": "sha3_512", "os_hash_value": "ab", "checksum": md5}), &[b"hello"]).await;
        assert!(fallback.is_ok());
        let none = run(json!({"os_hash_algo": "sha3_512", "os_hash_value": "ab"}), &[b"hello"]).await;
        assert!(none.unwrap_err().contains("sha3_512"));
    }
}
