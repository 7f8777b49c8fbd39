//! A small async QMP client: id-tagged requests, an event stream, and file-descriptor
//! passing (SCM_RIGHTS) for commands such as `getfd`.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, watch};

/// An error QEMU returned, or a failure to talk to it.
#[derive(Debug, Clone)]
pub enum QmpError {
    /// QEMU answered with an error.
    Command {
        class: String,
        desc: String,
    },
    /// The socket closed (QEMU exited) before an answer came.
    Closed,
    /// No answer within the time allowed.
    Timeout(String),
    Io(String),
}

impl std::fmt::Display for QmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QmpError::Command { class, desc } => write!(f, "QEMU refused: {desc} ({class})"),
            QmpError::Closed => write!(f, "QEMU's monitor closed (the QEMU process exited)"),
            QmpError::Timeout(cmd) => write!(f, "QEMU did not answer {cmd} in time"),
            QmpError::Io(e) => write!(f, "talking to QEMU's monitor failed: {e}"),
        }
    }
}

impl std::error::Error for QmpError {}

#[derive(Debug, Clone)]
pub struct QmpEvent {
    pub event: String,
    pub data: Value,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>;

/// A connected QMP monitor. Cheap to share behind an `Arc`.
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Receiver<bool>,
    /// QEMU's version as its greeting gave it.
    pub version: String,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<Arc<Qmp>, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| QmpError::Io(format!("connect {}: {e}", path.display())))?;
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut greeting = String::new();
        let n = tokio::time::timeout(DEFAULT_TIMEOUT, reader.read_line(&mut greeting))
            .await
            .map_err(|_| QmpError::Timeout("greeting".into()))?
            .map_err(|e| QmpError::Io(e.to_string()))?;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        let g: Value = serde_json::from_str(&greeting)
            .map_err(|e| QmpError::Io(format!("bad QMP greeting {greeting:?}: {e}")))?;
        let v = &g["QMP"]["version"]["qemu"];
        let version = format!("{}.{}.{}", v["major"], v["minor"], v["micro"]);

        let (events, _) = broadcast::channel(256);
        let (closed_tx, closed) = watch::channel(false);
        let pending: Pending = Arc::default();
        let qmp = Arc::new(Qmp {
            writer: tokio::sync::Mutex::new(write),
            pending: pending.clone(),
            next_id: AtomicU64::new(1),
            events: events.clone(),
            closed,
            version,
        });
        tokio::spawn(read_loop(reader, pending, events, closed_tx));
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    /// Subscribes to events; subscribe before the command whose events you wait for.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    /// Resolves once the monitor has closed, which means QEMU has exited.
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    pub async fn execute(&self, cmd: &str, args: Value) -> Result<Value, QmpError> {
        self.execute_inner(cmd, args, None, DEFAULT_TIMEOUT).await
    }

    pub async fn execute_timeout(
        &self,
        cmd: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_inner(cmd, args, None, timeout).await
    }

    /// Sends a command with a file descriptor attached (for `getfd` and `add-fd`).
    pub async fn execute_with_fd(
        &self,
        cmd: &str,
        args: Value,
        fd: RawFd,
    ) -> Result<Value, QmpError> {
        self.execute_inner(cmd, args, Some(fd), DEFAULT_TIMEOUT)
            .await
    }

    async fn execute_inner(
        &self,
        cmd: &str,
        args: Value,
        fd: Option<RawFd>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        if self.is_closed() {
            return Err(QmpError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut line = serde_json::to_vec(&json!({"execute": cmd, "arguments": args, "id": id}))
            .expect("a JSON value serializes");
        line.push(b'\n');
        let sent = {
            let mut w = self.writer.lock().await;
            match fd {
                None => w
                    .write_all(&line)
                    .await
                    .map_err(|e| QmpError::Io(e.to_string())),
                Some(fd) => send_with_fd(&mut w, &line, fd).await,
            }
        };
        if let Err(e) = sent {
            self.pending.lock().unwrap().remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(QmpError::Closed),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(QmpError::Timeout(cmd.to_string()))
            }
        }
    }
}

async fn send_with_fd(w: &mut OwnedWriteHalf, line: &[u8], fd: RawFd) -> Result<(), QmpError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let stream: &UnixStream = w.as_ref();
    let sock = stream.as_raw_fd();
    let mut sent_fd = false;
    let mut off = 0;
    while off < line.len() {
        stream
            .writable()
            .await
            .map_err(|e| QmpError::Io(e.to_string()))?;
        let res = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let iov = [std::io::IoSlice::new(&line[off..])];
            let fds = [fd];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let cmsgs: &[ControlMessage] = if sent_fd { &[] } else { &cmsg };
            sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::empty(), None).map_err(std::io::Error::from)
        });
        match res {
            Ok(n) => {
                sent_fd = true;
                off += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(QmpError::Io(e.to_string())),
        }
    }
    Ok(())
}

async fn read_loop(
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    pending: Pending,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Sender<bool>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!(line = %line.trim(), "unparsable QMP message");
            continue;
        };
        if let Some(ev) = msg.get("event").and_then(|e| e.as_str()) {
            let _ = events.send(QmpEvent {
                event: ev.to_string(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
            });
            continue;
        }
        let Some(id) = msg.get("id").and_then(|i| i.as_u64()) else {
            continue;
        };
        let Some(tx) = pending.lock().unwrap().remove(&id) else {
            continue;
        };
        let result = if let Some(r) = msg.get("return") {
            Ok(r.clone())
        } else {
            let e = &msg["error"];
            Err(QmpError::Command {
                class: e["class"].as_str().unwrap_or("GenericError").to_string(),
                desc: e["desc"].as_str().unwrap_or("unknown error").to_string(),
            })
        };
        let _ = tx.send(result);
    }
    let _ = closed.send(true);
    for (_, tx) in pending.lock().unwrap().drain() {
        let _ = tx.send(Err(QmpError::Closed));
    }
}
