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
    /// A stable machine-readable code: `invalid`, `not-found`, `conflict`, `unavailable`,
    /// `internal`, `unauthorized`.
    pub error: String,
    /// What went wrong and what would work, for a person.
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
