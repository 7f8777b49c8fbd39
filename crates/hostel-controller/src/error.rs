//! The controller's one error type. It says what went wrong in the domain's terms and
//! knows nothing of HTTP: the REST layer maps it to a status and a JSON body in one place
//! (`http/error.rs`); the SSH gateway and the web UI show its message as it is.

use crate::agent_client::AgentCallError;
use hostel_api::agent::{AgentFailure, FailureCode};
use hostel_model::{Invalid, WrongState};

/// What kind of thing was not found (for the error's `kind`).
pub type Kind = &'static str;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such thing, or one the actor may not see (the same answer, so that nothing
    /// leaks).
    #[error("{message}")]
    NotFound {
        kind: Kind,
        name: String,
        message: String,
    },
    /// The request clashes with what exists or with the thing's state.
    #[error("{message}")]
    Conflict {
        field: Option<String>,
        message: String,
    },
    /// A field of the request is wrong; the message says what would work.
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// The actor may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Too many attempts: wait this long before the next.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    /// The owner's quota does not allow the request.
    #[error("{0}")]
    Quota(String),
    /// A host or service needed is not connected now: try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The host's agent did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// The host's agent failed to do what it was asked.
    #[error("{message}")]
    Agent {
        host: Option<String>,
        message: String,
    },
    /// A fault of Hostel's own (the database, a broken record).
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn not_found(kind: Kind, name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            name: name.into(),
            message: message.into(),
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict {
            field: None,
            message: message.into(),
        }
    }
    pub fn conflict_field(field: &str, message: impl Into<String>) -> Self {
        Error::Conflict {
            field: Some(field.into()),
            message: message.into(),
        }
    }
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Invalid::new(field, message).into()
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::Forbidden(message.into())
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::Unavailable(message.into())
    }
    /// Too many attempts; the message says what, and when to try again.
    pub fn rate_limited(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Error::RateLimited {
            message: message.into(),
            retry_after_secs,
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(anyhow::anyhow!(message.into()))
    }

    /// Was the request refused (who asked, or what they may see), rather than failed?
    /// The audit trail files the first as `denied`, the rest as `failed`.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::NotFound { .. }
                | Error::Forbidden(_)
                | Error::Unauthorized(_)
                | Error::RateLimited { .. }
        )
    }

    /// The error's message, for people and for the audit trail.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The same error, its message prefixed with what was being done.
    pub fn context(self, what: &str) -> Self {
        self.reworded(|m| format!("{what}: {m}"))
    }

    /// The same error, with what followed it said after its message.
    pub fn then(self, after: &str) -> Self {
        self.reworded(|m| format!("{m}; {after}"))
    }

    /// The same error (kind, field, status) with its message made by `pre`.
    fn reworded(self, pre: impl Fn(String) -> String) -> Self {
        match self {
            Error::NotFound {
                kind,
                name,
                message,
            } => Error::NotFound {
                kind,
                name,
                message: pre(message),
            },
            Error::Conflict { field, message } => Error::Conflict {
                field,
                message: pre(message),
            },
            Error::Invalid { field, message } => Error::Invalid {
                field,
                message: pre(message),
            },
            Error::Forbidden(m) => Error::Forbidden(pre(m)),
            Error::Unauthorized(m) => Error::Unauthorized(pre(m)),
            Error::RateLimited {
                message,
                retry_after_secs,
            } => Error::RateLimited {
                message: pre(message),
                retry_after_secs,
            },
            Error::Quota(m) => Error::Quota(pre(m)),
            Error::Unavailable(m) => Error::Unavailable(pre(m)),
            Error::Timeout(m) => Error::Timeout(pre(m)),
            Error::Agent { host, message } => Error::Agent {
                host,
                message: pre(message),
            },
            Error::Internal(e) => {
                let m = pre(format!("{e:#}"));
                Error::Internal(anyhow::anyhow!(m))
            }
        }
    }
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Error::Invalid {
            message: e.to_string(),
            field: e.field,
        }
    }
}

/// An operation the VM's state does not allow is a conflict, not bad input.
impl From<WrongState> for Error {
    fn from(e: WrongState) -> Self {
        Error::Conflict {
            field: Some("state".into()),
            message: e.to_string(),
        }
    }
}

/// What an agent refused becomes the controller's own error: users never see an agent's
/// raw status or code.
impl From<AgentFailure> for Error {
    fn from(f: AgentFailure) -> Self {
        let message = f.message;
        match f.code {
            FailureCode::Invalid => Error::Invalid {
                field: f.field.unwrap_or_else(|| "request".into()),
                message,
            },
            FailureCode::Conflict => Error::Conflict {
                field: f.field,
                message,
            },
            FailureCode::Timeout => Error::Timeout(message),
            FailureCode::Unavailable => Error::Unavailable(message),
            // The controller asked about something its records say the host has.
            FailureCode::NotFound | FailureCode::Internal => Error::Agent {
                host: None,
                message,
            },
        }
    }
}

impl From<AgentCallError> for Error {
    fn from(e: AgentCallError) -> Self {
        match e {
            AgentCallError::Refused(f) => f.into(),
            AgentCallError::Unreachable(e) => Error::Unavailable(format!(
                "the VM's host cannot be reached now: {e:#}; try again when `hostel host \
                 list` shows it online"
            )),
            AgentCallError::BadAnswer(e) => Error::Agent {
                host: None,
                message: format!(
                    "the host's agent gave an answer Hostel does not understand: {e:#}"
                ),
            },
        }
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<AgentCallError>() {
            Ok(a) => a.into(),
            Err(e) => Error::Internal(e),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(e.into())
    }
}
