//! Docker's attach endpoint as a raw byte stream, for the serial console
//! (`virt::console`).
//!
//! `POST /containers/{name}/attach?stream=1&stdin=1&stdout=1&stderr=1`
//! with `Upgrade: tcp` turns the engine's HTTP connection into the
//! container's terminal: bytes written go to its stdin, bytes read are its
//! terminal output, unframed (the container has a TTY). bollard's attach
//! reads that output through a decoder that takes a guest's bytes 0-2 for
//! a frame header and then buffers up to the length the guest wrote (4 GiB)
//! on the host: the host reads the upgraded connection itself instead, and
//! only the response head is parsed (bounded).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::VirtError;

/// The largest response head accepted from the engine.
const MAX_HEAD: usize = 16 * 1024;

/// Attaches to container `name` (a name this host made: `nova-<uuid>`).
/// `NotRunning` when the engine says it does not run (409), `NotFound`
/// (404) without it; `uuid` names the instance in those errors.
pub async fn attach(socket: &Path, name: &str, uuid: &str, timeout: Duration) -> Result<UnixStream, VirtError> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
        return Err(VirtError::Invalid(format!("container name {name:?} is not one this host makes")));
    }
    let fail = |detail: String, status: Option<u16>| VirtError::Engine { op: "attach".into(), detail, status };
    let run = async {
        let mut s = UnixStream::connect(socket).await.map_err(|e| fail(format!("{}: {e}", socket.display()), None))?;
        let request = format!(
            "POST /containers/{name}/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\n\
             Host: docker\r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.map_err(|e| fail(e.to_string(), None))?;
        // Byte by byte up to the blank line: what follows is the console's.
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_HEAD {
                return Err(fail("response head too long".into(), None));
            }
            let b = s.read_u8().await.map_err(|e| fail(format!("reading the response: {e}"), None))?;
            head.push(b);
        }
        Ok((s, head))
    };
    let (mut s, head) = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| VirtError::Timeout { op: "attach".into(), after: timeout })??;
    let status = status_of(&head).ok_or_else(|| fail("malformed response".into(), None))?;
    match status {
        101 | 200 => Ok(s),
        404 => Err(VirtError::NotFound(uuid.to_string())),
        409 => Err(VirtError::NotRunning(uuid.to_string())),
        other => {
            // The engine's JSON message, bounded, for the log.
            let mut body = vec![0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut body)).await.ok().and_then(Result::ok);
            body.truncate(n.unwrap_or(0));
            Err(fail(String::from_utf8_lossy(&body).trim().to_string(), Some(other)))
        }
    }
}

/// The status code of an HTTP/1.x response head.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    words.next().filter(|v| v.starts_with("HTTP/1."))?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_of_a_response_head() {
        assert_eq!(status_of(b"HTTP/1.1 101 UPGRADED\r\nContent-Type: x\r\n\r\n"), Some(101));
        assert_eq!(status_of(b"HTTP/1.0 409 Conflict\r\n\r\n"), Some(409));
        assert_eq!(status_of(b"SSH-2.0 x\r\n\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 abc\r\n\r\n"), None);
    }

    #[tokio::test]
    async fn refuses_names_that_would_change_the_request() {
        let e = attach(Path::new("/nonexistent"), "x?stdin=0 HTTP/1.1\r\n", "u", Duration::from_secs(1)).await;
        assert!(matches!(e, Err(VirtError::Invalid(_))), "{e:?}");
    }
}
