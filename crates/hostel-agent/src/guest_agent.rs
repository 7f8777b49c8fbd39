//! The QEMU guest agent inside a VM, reached through its port's socket on the host
//! (`RuntimePaths::guest_agent`). Used to freeze the guest's file systems for the
//! instant a live backup starts, so that the backup holds them as if cleanly unmounted.
//!
//! The port is a byte stream that outlives any one agent: a request sent while no agent
//! runs waits in the guest and is answered when one starts. So every session begins
//! with `guest-sync-delimited` and a fresh id (answered after a 0xFF byte), and answers
//! before it are skipped.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long a guest agent has to answer the first request: one that does not is taken
/// for absent.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(3);
/// How long freezing may take (flushing every file system's dirty data).
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest line read from a guest agent (its answers to freezing are a few bytes).
const MOST_LINE: u64 = 64 << 10;

pub struct GuestAgent {
    io: BufReader<UnixStream>,
}

impl GuestAgent {
    /// Connects and synchronises; fails when no agent answers within `SYNC_TIMEOUT`.
    pub async fn connect(path: &Path) -> Result<GuestAgent> {
        let stream = UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting to {}", path.display()))?;
        let mut ga = GuestAgent {
            io: BufReader::new(stream),
        };
        let id = u32::from_le_bytes(rand_bytes()) as u64 & 0x7fff_ffff;
        let sync = async {
            // 0xFF first: whatever half a request an earlier client left is dropped.
            let mut req = vec![0xffu8];
            req.extend_from_slice(
                json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
                    .to_string()
                    .as_bytes(),
            );
            req.push(b'\n');
            ga.io.get_mut().write_all(&req).await?;
            loop {
                // The answer follows a 0xFF byte; anything before it is stale.
                let mut b = [0u8; 1];
                loop {
                    ga.io.read_exact(&mut b).await?;
                    if b[0] == 0xff {
                        break;
                    }
                }
                let answer = ga.line().await?;
                if answer["return"].as_u64() == Some(id) {
                    return Ok::<(), anyhow::Error>(());
                }
            }
        };
        tokio::time::timeout(SYNC_TIMEOUT, sync)
            .await
            .map_err(|_| anyhow!("no guest agent answered within {SYNC_TIMEOUT:?}"))??;
        Ok(ga)
    }

    /// The next JSON line the agent sends (the guest writes what it likes: a line is
    /// read up to `MOST_LINE` bytes, and one longer is an error, not memory).
    async fn line(&mut self) -> Result<Value> {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = (&mut self.io)
                .take(MOST_LINE)
                .read_until(b'\n', &mut buf)
                .await?;
            if n == 0 {
                bail!("the guest agent's port closed");
            }
            if buf.last() != Some(&b'\n') && n as u64 >= MOST_LINE {
                bail!("the guest agent sent a line of over {MOST_LINE} bytes");
            }
            let text = String::from_utf8_lossy(&buf);
            // (A 0xFF byte, the delimiter of a sync answer, reads as U+FFFD.)
            let t = text.trim_matches(|c: char| c.is_whitespace() || c == '\u{fffd}');
            if t.is_empty() {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<Value>(t) {
                return Ok(v);
            }
        }
    }

    /// Runs `command`; its `return`, or its error.
    pub async fn call(&mut self, command: &str, timeout: Duration) -> Result<Value> {
        let mut req = json!({ "execute": command }).to_string();
        req.push('\n');
        let run = async {
            self.io.get_mut().write_all(req.as_bytes()).await?;
            loop {
                let v = self.line().await?;
                if let Some(r) = v.get("return") {
                    return Ok(r.clone());
                }
                if let Some(e) = v.get("error") {
                    bail!(
                        "{command}: {}",
                        e["desc"].as_str().unwrap_or("the guest agent refused")
                    );
                }
            }
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| anyhow!("{command}: no answer within {timeout:?}"))?
    }

    /// Freezes the guest's file systems; how many.
    pub async fn freeze(&mut self) -> Result<u64> {
        let r = self.call("guest-fsfreeze-freeze", FREEZE_TIMEOUT).await?;
        r.as_u64()
            .ok_or_else(|| anyhow!("guest-fsfreeze-freeze answered {r}"))
    }

    /// Thaws them; how many.
    pub async fn thaw(&mut self) -> Result<u64> {
        let r = self.call("guest-fsfreeze-thaw", FREEZE_TIMEOUT).await?;
        r.as_u64()
            .ok_or_else(|| anyhow!("guest-fsfreeze-thaw answered {r}"))
    }
}

/// Four bytes from the kernel's random source (for a sync id; any will do).
fn rand_bytes() -> [u8; 4] {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_whole_and_a_guest_cannot_send_an_endless_one() {
        let (ours, mut guest) = UnixStream::pair().unwrap();
        let mut ga = GuestAgent {
            io: BufReader::new(ours),
        };
        guest
            .write_all(b"\xff{\"return\": 7}\n\n{\"return\": {}}\n")
            .await
            .unwrap();
        assert_eq!(ga.line().await.unwrap()["return"], 7);
        assert_eq!(ga.line().await.unwrap()["return"], json!({}));
        let endless = tokio::spawn(async move {
            let junk = vec![b'x'; 1 << 16];
            while guest.write_all(&junk).await.is_ok() {}
        });
        let e = ga.line().await.unwrap_err().to_string();
        assert!(e.contains("a line of over 65536 bytes"), "{e}");
        drop(ga);
        endless.await.unwrap();
    }
}
