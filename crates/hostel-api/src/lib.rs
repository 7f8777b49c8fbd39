//! Wire types of Hostel's two HTTP APIs.
//!
//! - [`public`]: what the CLI, the web UI and scripts use (`/api/v1/...`), described by the
//!   OpenAPI document.
//! - [`agent`]: what the controller sends to the agent of a host (`/v1/...` over mutual TLS).

pub mod agent;
pub mod public;

pub use hostel_model::{Accel, ImageKind, Policy, VmState};

/// The body of every error response of both APIs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code: `invalid` (400), `quota` (400: the owner's quota
    /// does not allow it), `unauthorized` (401), `forbidden` (403), `not-found` (404),
    /// `conflict` (409), `rate-limited` (429), `internal` (500), `agent` (502: a host's
    /// agent failed), `unavailable` (503: a host is not connected), `timeout` (504).
    pub error: String,
    /// What went wrong and what would work, for a person.
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
