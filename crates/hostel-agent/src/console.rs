//! A VM's serial console: one connection to QEMU's serial socket, fanned out to any
//! number of watchers, with a scrollback buffer and a size-bounded log file.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};

/// How much recent output a new watcher is shown.
pub const SCROLLBACK: usize = 64 * 1024;
/// The console log is rotated (to `console.log.1`) past this size.
pub const LOG_LIMIT: u64 = 1024 * 1024;

/// The last `n` lines of the console log at `log` and its rotated predecessor, with
/// terminal control sequences and carriage returns left out.
pub fn tail_lines(log: &Path, n: usize) -> Vec<String> {
    let mut bytes = std::fs::read(log.with_extension("log.1")).unwrap_or_default();
    bytes.extend(std::fs::read(log).unwrap_or_default());
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<String> = text.lines().map(plain).collect();
    let skip = all.len().saturating_sub(n);
    all.into_iter().skip(skip).collect()
}

/// A console line without ANSI escape sequences and carriage returns.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // parameters, then one final byte in @..~
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else if let Some(c) = chars.next() {
                    // charset designations (ESC ( B and kin) carry one more byte
                    if matches!(c, '(' | ')' | '*' | '+' | '#' | '%') {
                        chars.next();
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// Removes a console log and its rotated predecessor.
pub fn clear_log(log: &Path) -> anyhow::Result<()> {
    for f in [log.to_path_buf(), log.with_extension("log.1")] {
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("removing {}: {e}", f.display()),
        }
    }
    Ok(())
}

pub struct ConsoleHub {
    scrollback: Mutex<VecDeque<u8>>,
    out: broadcast::Sender<Bytes>,
    input: Mutex<Option<mpsc::Sender<Bytes>>>,
    log: PathBuf,
}

impl ConsoleHub {
    /// `log` keeps the output across daemon restarts; its tail seeds the scrollback.
    pub fn new(log: &Path) -> ConsoleHub {
        let mut scrollback = VecDeque::with_capacity(SCROLLBACK);
        if let Ok(bytes) = std::fs::read(log) {
            let start = bytes.len().saturating_sub(SCROLLBACK);
            scrollback.extend(&bytes[start..]);
        }
        ConsoleHub {
            scrollback: Mutex::new(scrollback),
            out: broadcast::channel(1024).0,
            input: Mutex::new(None),
            log: log.to_path_buf(),
        }
    }

    /// The scrollback and a receiver of everything after it, taken atomically.
    pub fn subscribe(&self) -> (Vec<u8>, broadcast::Receiver<Bytes>) {
        let sb = self.scrollback.lock().unwrap();
        let rx = self.out.subscribe();
        (sb.iter().copied().collect(), rx)
    }

    /// The console as a byte stream: the scrollback, then live output; what is written
    /// to it goes to the guest. It ends when the other end is dropped.
    pub fn open(self: &std::sync::Arc<Self>) -> tokio::io::DuplexStream {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (scrollback, mut out) = self.subscribe();
        let hub = self.clone();
        tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(ours);
            if !scrollback.is_empty() && wr.write_all(&scrollback).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 4096];
            loop {
                tokio::select! {
                    data = out.recv() => match data {
                        Ok(b) => if wr.write_all(&b).await.is_err() { break },
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    },
                    n = rd.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => { let _ = hub.send(Bytes::copy_from_slice(&buf[..n])).await; }
                    },
                }
            }
        });
        theirs
    }

    /// Everything currently in the scrollback, as text.
    #[cfg(test)]
    pub fn scrollback_text(&self) -> String {
        let sb = self.scrollback.lock().unwrap();
        String::from_utf8_lossy(&sb.iter().copied().collect::<Vec<u8>>()).into_owned()
    }

    /// Queues keystrokes for the guest. Fails when no QEMU is connected.
    pub async fn send(&self, data: Bytes) -> anyhow::Result<()> {
        let tx = self.input.lock().unwrap().clone();
        match tx {
            Some(tx) => tx
                .send(data)
                .await
                .map_err(|_| anyhow::anyhow!("the VM's console is not connected")),
            None => anyhow::bail!("the VM is not running, so its console is not connected"),
        }
    }

    /// Forgets everything seen so far: the scrollback and the log files (a VM that
    /// changed hands starts a clean console). Held under the scrollback's lock, so no
    /// output is recorded halfway.
    pub fn clear(&self) -> anyhow::Result<()> {
        let mut sb = self.scrollback.lock().unwrap();
        sb.clear();
        clear_log(&self.log)
    }

    fn record(&self, data: &[u8]) {
        {
            let mut sb = self.scrollback.lock().unwrap();
            sb.extend(data);
            let excess = sb.len().saturating_sub(SCROLLBACK);
            sb.drain(..excess);
        }
        self.append_log(data);
        let _ = self.out.send(Bytes::copy_from_slice(data));
    }

    fn append_log(&self, data: &[u8]) {
        if let Ok(meta) = std::fs::metadata(&self.log) {
            if meta.len() > LOG_LIMIT {
                let _ = std::fs::rename(&self.log, self.log.with_extension("log.1"));
            }
        }
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = f.write_all(data);
        }
    }

    /// Connects to QEMU's serial socket and pumps it until QEMU closes it.
    pub async fn attach(self: &std::sync::Arc<Self>, socket: &Path) -> anyhow::Result<()> {
        let stream = UnixStream::connect(socket).await?;
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(256);
        *self.input.lock().unwrap() = Some(tx);
        let hub = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => hub.record(&buf[..n]),
                }
            }
            *hub.input.lock().unwrap() = None;
        });
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if wr.write_all(&data).await.is_err() {
                    break;
                }
            }
        });
        Ok(())
    }

    /// Waits until `needle` appears in output produced after this call started, or in
    /// the scrollback if `include_scrollback`.
    pub async fn wait_for(&self, needle: &str, include_scrollback: bool) {
        let (sb, mut rx) = self.subscribe();
        let mut seen = if include_scrollback { sb } else { Vec::new() };
        loop {
            if String::from_utf8_lossy(&seen).contains(needle) {
                return;
            }
            match rx.recv().await {
                Ok(b) => seen.extend_from_slice(&b),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            }
            if seen.len() > 2 * SCROLLBACK {
                seen.drain(..SCROLLBACK);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let hub = ConsoleHub::new(&log);
        let line = format!("{}\r\n", "x".repeat(1023));
        for i in 0..3000 {
            hub.record(format!("line {i} ").as_bytes());
            hub.record(line.as_bytes());
        }
        let current = std::fs::metadata(&log).unwrap().len();
        let rotated = std::fs::metadata(log.with_extension("log.1"))
            .unwrap()
            .len();
        assert!(current <= LOG_LIMIT + 2048, "{current}");
        assert!(rotated <= LOG_LIMIT + 2048, "{rotated}");
        let tail = tail_lines(&log, 3);
        assert_eq!(tail.len(), 3);
        assert!(tail[2].starts_with("line 2999 x"), "{:?}", &tail[2][..20]);
        assert!(!tail[2].contains('\r'));
        // The scrollback of a new hub (a daemon restart) comes from the log.
        let again = ConsoleHub::new(&log);
        assert!(again.scrollback_text().contains("line 2999"));
        assert!(again.scrollback_text().len() <= SCROLLBACK);
    }

    #[test]
    fn escape_sequences_are_left_out() {
        assert_eq!(plain("\x1b[1;32mREADY\x1b[0m\r"), "READY");
        assert_eq!(plain("a\x1b(Bb"), "ab");
    }
}
