//! The controller's client of one host's agent: HTTPS with a client certificate from
//! the cluster CA.
//!
//! Its typed methods are those of [`AgentApi`] (in `agent_client/typed.rs`): each builds
//! its request from the endpoint's declaration in `hostel_api::agent::endpoints`, and
//! fails with an [`AgentCallError`]. There is no other way to call an agent: no path is
//! written outside the contract.

mod typed;

use anyhow::anyhow;
use futures::stream::BoxStream;
use futures::StreamExt;
use hostel_api::agent::endpoints::{PathParams, SocketEndpoint};
use hostel_api::agent::*;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

pub use typed::AgentSocket;

#[derive(Clone)]
pub struct AgentClient {
    pub url: String,
    http: reqwest::Client,
    /// For the console's websocket, which reqwest does not speak.
    tls: Arc<rustls::ClientConfig>,
}

/// Why a typed call to an agent failed.
#[derive(Debug)]
pub enum AgentCallError {
    /// The agent answered with a failure; its code says which (`not-found`, ...).
    Refused(AgentFailure),
    /// The agent could not be reached, or the connection broke.
    Unreachable(anyhow::Error),
    /// The agent answered outside the contract: a route it does not serve, a body that
    /// does not decode as the declared type.
    BadAnswer(anyhow::Error),
}

impl AgentCallError {
    /// The agent's failure, when it answered with one.
    pub fn failure(&self) -> Option<&AgentFailure> {
        match self {
            AgentCallError::Refused(f) => Some(f),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.failure().map(|f| f.code) == Some(FailureCode::NotFound)
    }

    /// As an `anyhow::Error` that downcasts back to this error (the controller's
    /// `Error` does), for the follower's `anyhow` paths.
    pub fn into_anyhow(self) -> anyhow::Error {
        anyhow::Error::new(self)
    }
}

impl std::fmt::Display for AgentCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentCallError::Refused(r) => f.write_str(&r.message),
            AgentCallError::Unreachable(e) | AgentCallError::BadAnswer(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for AgentCallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AgentCallError::Refused(r) => Some(r),
            AgentCallError::Unreachable(e) | AgentCallError::BadAnswer(e) => Some(e.as_ref()),
        }
    }
}

impl From<AgentFailure> for AgentCallError {
    fn from(f: AgentFailure) -> Self {
        AgentCallError::Refused(f)
    }
}

pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl AgentClient {
    pub fn new(url: &str, tls: &ClientTls) -> anyhow::Result<AgentClient> {
        let mut identity = tls.cert_pem.clone();
        identity.extend_from_slice(&tls.key_pem);
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&tls.ca_pem)?)
            .identity(reqwest::Identity::from_pem(&identity)?)
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Duration::from_secs(10))
            .build()?;
        Ok(AgentClient {
            url: url.trim_end_matches('/').to_string(),
            http,
            tls: Arc::new(rustls_config(tls)?),
        })
    }

    /// A client of the agent at `url` sharing this one's HTTP client and TLS settings (one
    /// connection pool and one TLS configuration for all agents: at 1,000 hosts, one each
    /// cost about 120 KiB a host).
    pub fn for_url(&self, url: &str) -> AgentClient {
        AgentClient {
            url: url.trim_end_matches('/').to_string(),
            http: self.http.clone(),
            tls: self.tls.clone(),
        }
    }

    /// Follows the agent's event stream; returns when it ends.
    pub async fn follow_events(
        &self,
        connected: impl FnOnce(),
        mut on_event: impl FnMut(Event),
    ) -> anyhow::Result<()> {
        let mut events = self.events().await.map_err(AgentCallError::into_anyhow)?;
        connected();
        while let Some(ev) = events.next().await {
            on_event(ev.map_err(AgentCallError::into_anyhow)?);
        }
        Ok(())
    }

    /// Opens the websocket endpoint `E` of VM `id`.
    async fn socket<E: SocketEndpoint>(&self, id: &str) -> Result<AgentSocket, AgentCallError> {
        let url = format!(
            "{}{}",
            self.url
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1),
            id.to_string().render(E::ROUTE)
        );
        let connector = tokio_tungstenite::Connector::Rustls(self.tls.clone());
        match tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
            .await
        {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status();
                let body = resp.body().as_deref().unwrap_or_default();
                Err(match serde_json::from_slice::<AgentFailure>(body) {
                    Ok(f) => AgentCallError::Refused(f),
                    Err(_) => AgentCallError::BadAnswer(anyhow!(
                        "the host's agent answered {status} to {}",
                        E::NAME
                    )),
                })
            }
            Err(e) => Err(AgentCallError::Unreachable(
                anyhow!(e).context(format!("reaching the agent at {}", self.url)),
            )),
        }
    }
}

/// The lines of an ndjson answer, read as they come.
struct LineReader {
    stream: BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buf: Vec<u8>,
    /// The longest wait for a line before giving up on the agent.
    silence: Option<Duration>,
    url: String,
}

impl LineReader {
    fn new(resp: reqwest::Response, silence: Option<Duration>) -> LineReader {
        LineReader {
            url: resp.url().to_string(),
            stream: resp.bytes_stream().boxed(),
            buf: Vec::new(),
            silence,
        }
    }

    /// The next line (without its newline), or None at the end of the answer.
    async fn next_line(&mut self) -> Option<Result<Vec<u8>, AgentCallError>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                return Some(Ok(line));
            }
            let chunk = match self.silence {
                Some(s) => match tokio::time::timeout(s, self.stream.next()).await {
                    Ok(c) => c,
                    Err(_) => {
                        return Some(Err(AgentCallError::Unreachable(anyhow!(
                            "no word from the agent at {} in {} s",
                            self.url,
                            s.as_secs()
                        ))))
                    }
                },
                None => self.stream.next().await,
            };
            match chunk? {
                Ok(c) => self.buf.extend_from_slice(&c),
                Err(e) => return Some(Err(AgentCallError::Unreachable(e.into()))),
            }
        }
    }

    /// The lines as a stream of `L`; empty lines (heartbeats) are skipped, and so are
    /// lines that do not decode (with a warning).
    fn typed<L: DeserializeOwned + Send + 'static>(self) -> Lines<L, AgentCallError> {
        futures::stream::unfold(self, |mut r| async move {
            loop {
                match r.next_line().await? {
                    Err(e) => return Some((Err(e), r)),
                    Ok(line) if line.iter().all(u8::is_ascii_whitespace) => continue,
                    Ok(line) => match serde_json::from_slice::<L>(&line) {
                        Ok(l) => return Some((Ok(l), r)),
                        Err(e) => tracing::warn!(url = %r.url, "skipped an agent's line: {e}"),
                    },
                }
            }
        })
        .boxed()
    }
}

fn rustls_config(tls: &ClientTls) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        roots.add(c?)?;
    }
    let certs: Vec<CertificateDer> =
        CertificateDer::pem_slice_iter(&tls.cert_pem).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem)?;
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?)
}
