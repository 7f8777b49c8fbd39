//! The agent API's error: what an agent answers when it refuses or fails a request.
//!
//! On the wire it is a [`crate::ErrorBody`] (`{"error": code, "message": .., "field": ..}`)
//! with the HTTP status of its code.

use crate::ErrorBody;
use serde::{Deserialize, Serialize};

/// Why an agent refused or failed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    /// The request is wrong (a bad id, path, size, ...). HTTP 400.
    Invalid,
    /// No such VM (or file) on this host. HTTP 404.
    NotFound,
    /// The VM's state does not allow it (running, stopped, a QEMU that exited...). HTTP 409.
    Conflict,
    /// The operation did not finish in time. HTTP 504.
    Timeout,
    /// This agent cannot do it now (or at all: a simulated host has no consoles). HTTP 503.
    Unavailable,
    /// Anything else. HTTP 500.
    Internal,
}

impl FailureCode {
    pub const ALL: [FailureCode; 6] = [
        FailureCode::Invalid,
        FailureCode::NotFound,
        FailureCode::Conflict,
        FailureCode::Timeout,
        FailureCode::Unavailable,
        FailureCode::Internal,
    ];

    /// The code as written in [`ErrorBody::error`].
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::Invalid => "invalid",
            FailureCode::NotFound => "not-found",
            FailureCode::Conflict => "conflict",
            FailureCode::Timeout => "timeout",
            FailureCode::Unavailable => "unavailable",
            FailureCode::Internal => "internal",
        }
    }

    /// The code written as `s`; None for a code this version does not know.
    pub fn parse(s: &str) -> Option<FailureCode> {
        FailureCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The HTTP status an answer with this code carries.
    pub fn http_status(self) -> u16 {
        match self {
            FailureCode::Invalid => 400,
            FailureCode::NotFound => 404,
            FailureCode::Conflict => 409,
            FailureCode::Timeout => 504,
            FailureCode::Unavailable => 503,
            FailureCode::Internal => 500,
        }
    }
}

/// An agent's refusal or failure, as sent on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "ErrorBody", from = "ErrorBody")]
pub struct AgentFailure {
    pub code: FailureCode,
    /// What went wrong and what would work, for a person.
    pub message: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
}

impl AgentFailure {
    pub fn new(code: FailureCode, message: impl Into<String>) -> AgentFailure {
        AgentFailure {
            code,
            message: message.into(),
            field: None,
        }
    }
    pub fn invalid(message: impl Into<String>) -> AgentFailure {
        AgentFailure::new(FailureCode::Invalid, message)
    }
    pub fn not_found(message: impl Into<String>) -> AgentFailure {
        AgentFailure::new(FailureCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> AgentFailure {
        AgentFailure::new(FailureCode::Conflict, message)
    }
    pub fn timeout(message: impl Into<String>) -> AgentFailure {
        AgentFailure::new(FailureCode::Timeout, message)
    }
    pub fn unavailable(message: impl Into<String>) -> AgentFailure {
        AgentFailure::new(FailureCode::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> AgentFailure {
        AgentFailure::new(FailureCode::Internal, message)
    }
    /// The same failure, blaming the request field `field`.
    pub fn with_field(mut self, field: impl Into<String>) -> AgentFailure {
        self.field = Some(field.into());
        self
    }
}

impl std::fmt::Display for AgentFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AgentFailure {}

impl From<AgentFailure> for ErrorBody {
    fn from(f: AgentFailure) -> ErrorBody {
        ErrorBody {
            error: f.code.as_str().into(),
            message: f.message,
            field: f.field,
        }
    }
}

/// A code this version does not know reads as [`FailureCode::Internal`].
impl From<ErrorBody> for AgentFailure {
    fn from(b: ErrorBody) -> AgentFailure {
        AgentFailure {
            code: FailureCode::parse(&b.error).unwrap_or(FailureCode::Internal),
            message: b.message,
            field: b.field,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_travel_as_error_bodies() {
        let f = AgentFailure::invalid("path: not absolute").with_field("path");
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "invalid", "message": "path: not absolute", "field": "path"})
        );
        assert_eq!(serde_json::from_value::<AgentFailure>(v).unwrap(), f);
        let nf = serde_json::to_value(AgentFailure::not_found("no VM x")).unwrap();
        assert_eq!(
            nf,
            serde_json::json!({"error": "not-found", "message": "no VM x"})
        );
        for c in FailureCode::ALL {
            assert_eq!(FailureCode::parse(c.as_str()), Some(c));
        }
        let odd: AgentFailure =
            serde_json::from_str(r#"{"error":"teapot","message":"m"}"#).unwrap();
        assert_eq!(odd.code, FailureCode::Internal);
    }
}
