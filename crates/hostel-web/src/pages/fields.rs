//! A posted form as its fields, for pages whose forms each send a few of many fields
//! (one handler per page, one action per form): each action reads what it needs, and a
//! number that does not read is refused here with the field's name, before the API.

use crate::api::ApiResult;
use crate::session::{back, back_err, Flash};
use axum::response::Response;
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(transparent)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    /// The field's first value as typed (passwords: spaces count).
    pub fn raw(&self, key: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// The field's first value, trimmed.
    pub fn get(&self, key: &str) -> &str {
        self.raw(key).trim()
    }

    /// The value, or none when it was left empty.
    pub fn opt(&self, key: &str) -> Option<String> {
        Some(self.get(key))
            .filter(|v| !v.is_empty())
            .map(String::from)
    }

    /// A checkbox: sent only when ticked.
    pub fn on(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// A whole number; empty is none.
    pub fn num<T: std::str::FromStr>(&self, key: &str, what: &str) -> Result<Option<T>, String> {
        match self.get(key) {
            "" => Ok(None),
            v => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{what}: {v:?} is not a whole number")),
        }
    }

    /// A list typed one item a line (or separated by commas or spaces).
    pub fn list(&self, key: &str) -> Vec<String> {
        self.raw(key)
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }
}

/// Back to `to` after an API call: its error, or `ok` as the page's message.
pub fn done<T>(to: &str, r: ApiResult<T>, ok: impl FnOnce(T) -> String) -> Response {
    match r {
        Ok(v) => back(to, Flash::ok(ok(v))),
        Err(e) => back_err(to, &e),
    }
}

/// An error of the form itself (not the API's), as the page's message.
pub fn refused(to: &str, why: String) -> Response {
    back(to, Flash::err(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_as_typed() {
        let f: Fields =
            serde_html_form::from_bytes(b"a=+x+&n=12&bad=1x&l=tcp/22,+tcp/80%0Audp/53&c=on")
                .unwrap();
        assert_eq!(f.get("a"), "x");
        assert_eq!(f.raw("a"), " x ");
        assert_eq!(f.opt("missing"), None);
        assert!(f.on("c") && !f.on("d"));
        assert_eq!(f.num::<u64>("n", "n"), Ok(Some(12)));
        assert_eq!(f.num::<u64>("missing", "m"), Ok(None));
        assert!(f.num::<u64>("bad", "size").unwrap_err().contains("size"));
        assert_eq!(f.list("l"), ["tcp/22", "tcp/80", "udp/53"]);
    }
}
