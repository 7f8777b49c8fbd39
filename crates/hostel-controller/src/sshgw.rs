//! The SSH console gateway: `ssh -p 2222 VMNAME@HOST` attaches to that VM's serial
//! console. Users are known by their registered SSH public keys; a VM the key's owner may
//! not operate gets the same answer as a VM that does not exist (the key is refused).
//! Every attach goes to the same console hub as the API's websocket: recent output is
//! replayed, several people may watch and type at once.

use crate::consoles::{Door, VmRef};
use crate::context::{Caller, Ctx};
use crate::Controller;
use futures::{SinkExt, StreamExt};
use hostel_api::public::ConsoleKind;
use hostel_store::VmRecord;
use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Handler, Msg, Server, Session};
use russh::{Channel, ChannelId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Where the gateway listens and the host key it shows (for `hostel info`).
#[derive(Clone, Debug)]
pub struct SshConsole {
    pub addr: String,
    /// An OpenSSH public key line.
    pub host_key: String,
    /// Its SHA-256 fingerprint, as `ssh` prints it.
    pub fingerprint: String,
}

/// Loads the gateway's host key, making it on first use (`ssh-keygen`).
pub fn host_key(path: &Path) -> anyhow::Result<russh::keys::PrivateKey> {
    if !path.exists() {
        let out = std::process::Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "hostel-console",
                "-f",
            ])
            .arg(path)
            .output()
            .map_err(|e| {
                anyhow::anyhow!("cannot run ssh-keygen (apt-get install openssh-client): {e}")
            })?;
        if !out.status.success() {
            anyhow::bail!(
                "ssh-keygen: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(russh::keys::load_secret_key(path, None)?)
}

impl Controller {
    /// The VM named `vm` and the user a key belongs to, if that user may operate it.
    pub async fn ssh_console_access(&self, vm: &str, key: &str) -> Option<(VmRecord, Caller)> {
        let vm = self.store.vm_by_name(vm).await.ok()??;
        let id = crate::auth::ssh_key_id(key);
        for (user_id, public_key) in self.store.all_ssh_keys().await.ok()? {
            if crate::auth::ssh_key_id(&public_key) != id {
                continue;
            }
            let user = self.store.user_by_id(&user_id).await.ok()??;
            let caller = Caller {
                group_ids: self.store.group_ids_of(&user.id).await.ok()?,
                user_id: user.id,
                user_name: user.name,
                is_admin: user.is_admin,
                read_only: false,
                // The key, so that removing it ends the sessions it opened.
                token_name: format!("{}{id}", crate::console_sessions::SSH_KEY_PREFIX),
                token_expires_at: None,
            };
            if caller.may_operate(&vm) {
                return Some((vm, caller));
            }
        }
        None
    }

    /// Serves the gateway on `listener` until the process ends.
    pub fn spawn_ssh_gateway(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        key: russh::keys::PrivateKey,
    ) {
        let public = key.public_key();
        *self.ssh_console.lock().unwrap() = Some(SshConsole {
            addr: listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            host_key: public.to_openssh().unwrap_or_default(),
            fingerprint: public.fingerprint(russh::keys::HashAlg::Sha256).to_string(),
        });
        let config = Arc::new(russh::server::Config {
            keys: vec![key],
            auth_rejection_time: std::time::Duration::from_millis(300),
            auth_rejection_time_initial: Some(std::time::Duration::from_millis(0)),
            methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
            inactivity_timeout: None,
            ..Default::default()
        });
        let mut gw = Gateway { ctl: self.clone() };
        tokio::spawn(async move {
            if let Err(e) = gw.run_on_socket(config, &listener).await {
                tracing::error!("the SSH console gateway stopped: {e}");
            }
        });
    }
}

/// Console channels one SSH connection may have open at once, and open in all.
const MAX_OPEN_CHANNELS: usize = 4;
const MAX_CHANNELS_PER_CONNECTION: usize = 64;

struct Gateway {
    ctl: Arc<Controller>,
}

impl Server for Gateway {
    type Handler = Conn;
    fn new_client(&mut self, peer: Option<std::net::SocketAddr>) -> Conn {
        Conn {
            ctl: self.ctl.clone(),
            peer: peer
                .map(|p| p.ip().to_string())
                .unwrap_or_else(|| "unknown".into()),
            admitted: None,
            opened: 0,
            channels: HashMap::new(),
            inputs: HashMap::new(),
            sizes: HashMap::new(),
        }
    }
}

struct Conn {
    ctl: Arc<Controller>,
    peer: String,
    admitted: Option<(VmRecord, Caller)>,
    /// Channels opened on this connection so far.
    opened: usize,
    channels: HashMap<ChannelId, Channel<Msg>>,
    inputs: HashMap<ChannelId, (mpsc::UnboundedSender<Vec<u8>>, Instant)>,
    sizes: HashMap<ChannelId, (u32, u32)>,
}

impl Conn {
    /// The context the admitted user's console runs in.
    fn ctx(&self) -> Option<(VmRecord, Ctx)> {
        let (vm, caller) = self.admitted.clone()?;
        Some((vm, Ctx::user(caller, self.peer.clone())))
    }
}

/// A client that drops the connection (`~.`, a killed `ssh`, a lost network) ends its
/// sessions without closing their channels: their detaches are recorded here.
impl Drop for Conn {
    fn drop(&mut self) {
        let seconds: Vec<u64> = self
            .inputs
            .values()
            .map(|(_, since)| since.elapsed().as_secs())
            .collect();
        let Some((vm, ctx)) = self.ctx() else {
            return;
        };
        if seconds.is_empty() {
            return;
        }
        let ctl = self.ctl.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for s in seconds {
                    ctl.console_detached(
                        &ctx,
                        (&vm.id, &vm.name),
                        ConsoleKind::Serial,
                        Door::Ssh,
                        s,
                    )
                    .await;
                }
            });
        }
    }
}

impl Handler for Conn {
    type Error = anyhow::Error;

    async fn auth_publickey(&mut self, user: &str, key: &PublicKey) -> Result<Auth, Self::Error> {
        let offered = key.to_openssh().unwrap_or_default();
        match self.ctl.ssh_console_access(user, &offered).await {
            Some(ok) => {
                self.admitted = Some(ok);
                Ok(Auth::Accept)
            }
            None => Ok(Auth::reject()),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A connection gets a few sessions at once and a bounded number in all, so one
        // login cannot open channels (and audit rows) for ever.
        self.opened += 1;
        if self.channels.len() >= MAX_OPEN_CHANNELS || self.opened > MAX_CHANNELS_PER_CONNECTION {
            reply
                .reject(russh::ChannelOpenFailure::Other {
                    code: 4, // SSH_OPEN_RESOURCE_SHORTAGE, with the reason spelt out
                    reason: format!(
                        "hostel: at most {MAX_OPEN_CHANNELS} consoles at once and \
                         {MAX_CHANNELS_PER_CONNECTION} per connection: connect again"
                    ),
                })
                .await;
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((vm, ctx)) = self.ctx() else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        let terminal = match self.sizes.get(&channel) {
            Some((cols, rows)) if *cols > 0 && *rows > 0 => Some(format!("{cols}x{rows}")),
            _ => None,
        };
        // The VM as it is now (it may have moved or stopped since the login), checked and
        // audited as every console attach is.
        let attached = self
            .ctl
            .attach_console(
                &ctx,
                VmRef::Id(&vm.id, &vm.name),
                ConsoleKind::Serial,
                Door::Ssh,
                terminal,
                None,
            )
            .await;
        let (ws, guard) = match attached {
            Ok(a) => (a.upstream, a.session),
            Err(e) => {
                let _ = session.data(
                    channel,
                    format!("hostel: no console: {}\r\n", e.message()).into_bytes(),
                );
                session.channel_failure(channel)?;
                return Ok(());
            }
        };
        session.channel_success(channel)?;
        let _ = session.data(
            channel,
            format!("hostel: console of {} (~. detaches)\r\n", vm.name).into_bytes(),
        );
        let (mut to_vm, mut from_vm) = ws.split();
        let handle = session.handle();
        tokio::spawn(async move {
            use tokio_tungstenite::tungstenite::Message as T;
            let output = async {
                while let Some(Ok(m)) = from_vm.next().await {
                    let bytes = match m {
                        T::Binary(b) => b.to_vec(),
                        T::Text(t) => t.as_bytes().to_vec(),
                        T::Close(_) => break,
                        _ => continue,
                    };
                    if handle.data(channel, bytes).await.is_err() {
                        break;
                    }
                }
            };
            // Someone else attaching a console to the VM is told, and nobody is cut off.
            let attaches = async {
                loop {
                    let note = guard.next_attach().await;
                    if handle.data(channel, note.into_bytes()).await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = output => {}
                _ = attaches => {}
                note = guard.revoked() => {
                    let _ = handle.data(channel, note.into_bytes()).await;
                }
            }
            drop(guard);
            let _ = handle.close(channel).await;
        });
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            use tokio_tungstenite::tungstenite::Message as T;
            while let Some(b) = rx.recv().await {
                if to_vm.send(T::Binary(b.into())).await.is_err() {
                    break;
                }
            }
            let _ = to_vm.close().await;
        });
        self.inputs.insert(channel, (tx, Instant::now()));
        Ok(())
    }

    /// A serial line carries no window size, so the size is kept for the audit trail and
    /// the guest learns it the way a serial terminal does: `resize` (xterm) asks the
    /// user's own terminal, and the answer travels through the gateway like any input.
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.sizes.insert(channel, (cols, rows));
        session.channel_success(channel)?;
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.sizes.insert(channel, (cols, rows));
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some((tx, _)) = self.inputs.get(&channel) {
            let _ = tx.send(data.to_vec());
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        self.sizes.remove(&channel);
        if let (Some((_, since)), Some((vm, ctx))) = (self.inputs.remove(&channel), self.ctx()) {
            self.ctl
                .console_detached(
                    &ctx,
                    (&vm.id, &vm.name),
                    ConsoleKind::Serial,
                    Door::Ssh,
                    since.elapsed().as_secs(),
                )
                .await;
        }
        Ok(())
    }
}
