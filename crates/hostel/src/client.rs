//! The CLI's side of the REST API: where its config lives and how it calls.

use anyhow::{bail, Context, Result};
use hostel_api::ErrorBody;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientConfig {
    pub url: String,
    pub token: String,
}

/// `$HOSTEL_CONFIG`, else `$XDG_CONFIG_HOME/hostel/client.toml`, else
/// `~/.config/hostel/client.toml`.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HOSTEL_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/"))
                .join(".config")
        });
    base.join("hostel/client.toml")
}

impl ClientConfig {
    pub fn load() -> Result<ClientConfig> {
        let path = config_path();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no client config at {}: start Hostel with `hostel up` (it writes one), or set \
                 HOSTEL_CONFIG to the config's path",
                path.display()
            )
        })?;
        toml::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// Writes the config with mode 0600 (it holds a token), atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(toml::to_string(self)?.as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// The API path of one VM; its actions are under it.
pub fn vm_path(name: &str) -> String {
    format!("/api/v1/vms/{name}")
}

pub struct Api {
    pub cfg: ClientConfig,
    http: reqwest::Client,
}

impl Api {
    pub fn new() -> Result<Api> {
        let cfg = ClientConfig::load()?;
        Ok(Api {
            cfg,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(900))
                .build()?,
        })
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        Ok(self.send_paged(req).await?.0)
    }

    /// Sends a request; gives the answer and the next page's path when a `Link` header
    /// names one (`rel="next"`).
    async fn send_paged<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(T, Option<String>)> {
        let resp = req
            .bearer_auth(&self.cfg.token)
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach Hostel at {} (is `hostel up` running?)",
                    self.cfg.url
                )
            })?;
        let status = resp.status();
        let next = resp
            .headers()
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(next_link);
        let text = resp.text().await?;
        if !status.is_success() {
            match serde_json::from_str::<ErrorBody>(&text) {
                Ok(e) => bail!("{}", e.message),
                Err(_) => bail!("the API answered {status}: {text}"),
            }
        }
        if text.is_empty() {
            return Ok((serde_json::from_str("null")?, next));
        }
        Ok((serde_json::from_str(&text)?, next))
    }

    /// A text answer (`/metrics`), as it came.
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.cfg.url))
            .bearer_auth(&self.cfg.token)
            .send()
            .await
            .with_context(|| format!("cannot reach Hostel at {}", self.cfg.url))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            match serde_json::from_str::<ErrorBody>(&text) {
                Ok(e) => bail!("{}", e.message),
                Err(_) => bail!("the API answered {status}: {text}"),
            }
        }
        Ok(text)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.get(format!("{}{path}", self.cfg.url)))
            .await
    }

    /// A paged list, every page of it, handed over a page at a time.
    pub async fn get_pages<T: DeserializeOwned>(
        &self,
        path: &str,
        mut each: impl FnMut(Vec<T>) -> Result<()>,
    ) -> Result<()> {
        let mut path = Some(path.to_string());
        while let Some(p) = path {
            let (page, next) = self
                .send_paged(self.http.get(format!("{}{p}", self.cfg.url)))
                .await?;
            each(page)?;
            path = next;
        }
        Ok(())
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.http.post(format!("{}{path}", self.cfg.url)).json(body))
            .await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.http.put(format!("{}{path}", self.cfg.url)).json(body))
            .await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.send(
            self.http
                .patch(format!("{}{path}", self.cfg.url))
                .json(body),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        let _: serde_json::Value = self
            .send(self.http.delete(format!("{}{path}", self.cfg.url)))
            .await?;
        Ok(())
    }

    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.cfg.url)))
            .await
    }

    /// A client for transfers that take as long as they take (an export, an import):
    /// only connecting is timed.
    fn long_http() -> Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()?)
    }

    /// Fails with the API's message when `resp` is not a success.
    async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await?;
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => bail!("{}", e.message),
            Err(_) => bail!("the API answered {status}: {text}"),
        }
    }

    /// A download: the answer, its body not yet read.
    pub async fn get_stream(&self, path: &str) -> Result<reqwest::Response> {
        let resp = Self::long_http()?
            .get(format!("{}{path}", self.cfg.url))
            .bearer_auth(&self.cfg.token)
            .send()
            .await
            .with_context(|| format!("cannot reach Hostel at {}", self.cfg.url))?;
        Self::check(resp).await
    }

    /// An upload of `body` (of `content_type`); its JSON answer.
    pub async fn post_stream<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: reqwest::Body,
    ) -> Result<T> {
        let resp = Self::long_http()?
            .post(format!("{}{path}", self.cfg.url))
            .bearer_auth(&self.cfg.token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach Hostel at {}", self.cfg.url))?;
        let text = Self::check(resp).await?.text().await?;
        Ok(serde_json::from_str(&text)?)
    }

    pub fn ws_url(&self, path: &str) -> String {
        let base = self
            .cfg
            .url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        format!("{base}{path}")
    }
}

/// The target of a `Link` header's `rel="next"` entry: `</path?query>; rel="next"`.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        (is_next && target.starts_with('/')).then(|| target.to_string())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_link_is_read_from_the_header() {
        assert_eq!(
            super::next_link(r#"</api/v1/vms?limit=2&after=b>; rel="next""#).as_deref(),
            Some("/api/v1/vms?limit=2&after=b")
        );
        assert_eq!(
            super::next_link(r#"</x>; rel="prev", </y>; rel="next""#).as_deref(),
            Some("/y")
        );
        assert_eq!(super::next_link(r#"</x>; rel="prev""#), None);
        // Only paths on the same server are followed.
        assert_eq!(
            super::next_link(r#"<http://elsewhere/x>; rel="next""#),
            None
        );
    }
}
