//! Errors of calls into the processing engine, classified for the HTTP and gRPC mappings.

use std::time::Duration;

use weir_proto::plugin::v1 as pb;

/// How the plugin host classified a refusal or failure ([`pb::ErrorKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostErrorKind {
    /// The input is invalid; nothing was done.
    Invalid,
    /// It already exists.
    Exists,
    /// It does not exist.
    Missing,
    /// The host's configuration refuses it (installs with `--package-manager disabled`).
    Refused,
    /// It was tried and failed.
    Failed,
}

impl From<pb::ErrorKind> for HostErrorKind {
    fn from(k: pb::ErrorKind) -> Self {
        match k {
            pb::ErrorKind::Invalid => Self::Invalid,
            pb::ErrorKind::Exists => Self::Exists,
            pb::ErrorKind::Missing => Self::Missing,
            pb::ErrorKind::Refused => Self::Refused,
            pb::ErrorKind::Failed | pb::ErrorKind::Unspecified => Self::Failed,
        }
    }
}

/// Errors of calls into the plugin host.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// This server runs without a processing engine.
    #[error("the processing engine is not running")]
    NotRunning,
    /// No session with the plugin host right now.
    #[error("the plugin host is not connected (it may be starting or restarting); try again")]
    Unavailable,
    /// The host refused or failed the call; its message.
    #[error("{message}")]
    Host {
        /// How the host classified it.
        kind: HostErrorKind,
        /// What it said.
        message: String,
    },
    /// No answer in time.
    #[error("{what} did not {verb} within {}", humantime::format_duration(*.after))]
    Timeout {
        /// The call (`the install`, `the request plugin`, ...).
        what: &'static str,
        /// `finish` or `answer`.
        verb: &'static str,
        /// How long it was waited for.
        after: Duration,
    },
    /// Input the core checks itself is invalid (nothing was sent).
    #[error("{0}")]
    Invalid(String),
    /// The host answered with a message of the wrong kind (a bug on one side).
    #[error("unexpected reply from the plugin host to {what}: {reply}")]
    Protocol {
        /// The call.
        what: &'static str,
        /// The reply, debug-printed.
        reply: String,
    },
}

impl EngineError {
    /// A host refusal of kind `kind`.
    pub fn host(kind: HostErrorKind, message: impl Into<String>) -> Self {
        Self::Host { kind, message: message.into() }
    }

    /// The error an [`pb::AdminResult`] that is not `ok` stands for.
    pub fn from_admin(r: pb::AdminResult) -> Self {
        Self::host(r.error_kind().into(), r.error)
    }
}

/// The result type of engine calls.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
