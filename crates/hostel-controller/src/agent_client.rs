//! The controller's client of one host's agent: HTTPS with a client certificate from
//! the cluster CA.

use anyhow::{anyhow, Context};
use hostel_api::agent::*;
use hostel_api::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct AgentClient {
    pub url: String,
    http: reqwest::Client,
    /// For the console's websocket, which reqwest does not speak.
    tls: Arc<rustls::ClientConfig>,
}

/// An agent's refusal, with the HTTP status it came with.
#[derive(Debug)]
pub struct AgentRefusal {
    pub status: u16,
    pub body: ErrorBody,
}

impl std::fmt::Display for AgentRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.body.message)
    }
}

impl std::error::Error for AgentRefusal {}

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

    async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> anyhow::Result<T> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.json().await?);
        }
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str::<ErrorBody>(&text).unwrap_or(ErrorBody {
            error: "internal".into(),
            message: format!("the host's agent answered {status}: {text}"),
            field: None,
        });
        Err(anyhow!(AgentRefusal {
            status: status.as_u16(),
            body
        }))
    }

    async fn call<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("reaching the agent at {}", self.url))?;
        Self::decode(resp).await
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(self.http.get(format!("{}{path}", self.url)))
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.call(self.http.post(format!("{}{path}", self.url)).json(body))
            .await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.call(self.http.put(format!("{}{path}", self.url)).json(body))
            .await
    }

    pub async fn facts(&self) -> anyhow::Result<HostFacts> {
        self.get("/v1/host").await
    }

    pub async fn vms(&self) -> anyhow::Result<Vec<VmStatus>> {
        self.get("/v1/vms").await
    }

    /// The agent's status of one VM, or None if the agent does not know it.
    pub async fn vm(&self, id: &str) -> anyhow::Result<Option<VmStatus>> {
        match self.get(&format!("/v1/vms/{id}")).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.downcast_ref::<AgentRefusal>().map(|r| r.status) == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn action(&self, id: &str, action: &str) -> anyhow::Result<VmStatus> {
        self.post(&format!("/v1/vms/{id}/{action}"), &serde_json::json!({}))
            .await
    }

    /// Opens a streaming POST and hands each JSON line to `on_line`.
    pub async fn stream_lines<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        mut on_line: impl FnMut(serde_json::Value),
    ) -> anyhow::Result<()> {
        use futures::StreamExt;
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await?;
        if !resp.status().is_success() {
            return Self::decode::<()>(resp).await;
        }
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        // No silence limit: a build step may print nothing for minutes.
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if let Ok(v) = serde_json::from_slice(&line) {
                    on_line(v);
                }
            }
        }
        Ok(())
    }

    /// Follows the agent's event stream; returns when it ends.
    pub async fn follow_events(
        &self,
        connected: impl FnOnce(),
        mut on_event: impl FnMut(Event),
    ) -> anyhow::Result<()> {
        use futures::StreamExt;
        let resp = self
            .http
            .get(format!("{}/v1/events", self.url))
            .send()
            .await?
            .error_for_status()?;
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        let mut connected = Some(connected);
        loop {
            let chunk = match tokio::time::timeout(EVENTS_SILENCE, stream.next()).await {
                Ok(Some(chunk)) => chunk?,
                Ok(None) => break,
                Err(_) => anyhow::bail!(
                    "no word from the agent at {} in {} s",
                    self.url,
                    EVENTS_SILENCE.as_secs()
                ),
            };
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if let Some(c) = connected.take() {
                    c();
                }
                if let Ok(ev) = serde_json::from_slice::<Event>(&line) {
                    on_event(ev);
                }
            }
        }
        Ok(())
    }

    /// Opens a websocket of a VM on this agent: `console` (the serial console hub) or
    /// `vnc` (its VNC socket).
    pub async fn websocket(
        &self,
        id: &str,
        what: &str,
    ) -> anyhow::Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    > {
        let url = format!(
            "{}/v1/vms/{id}/{what}",
            self.url.replacen("https://", "wss://", 1)
        );
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            false,
            Some(tokio_tungstenite::Connector::Rustls(self.tls.clone())),
        )
        .await
        .with_context(|| format!("connecting to the agent's {what} websocket"))?;
        Ok(ws)
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
