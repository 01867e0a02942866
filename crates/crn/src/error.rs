//! What can go wrong serving a program, in terms a client can act on. The API maps
//! each kind to its status code; the library never speaks HTTP.

use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProgramError {
    /// The reference is not an item hash.
    #[error("{0}")]
    BadReference(String),
    /// No such message on the CCN, or it is not a PROGRAM this node can run.
    #[error("{0}")]
    NotFound(String),
    /// The message or one of its files is malformed or uses what this node lacks.
    #[error("{0}")]
    Unsupported(String),
    /// The CCN could not be reached or did not give a file.
    #[error("{0}")]
    Unavailable(String),
    /// The VM or the app did not start; `traceback` is the app's output.
    #[error("{error}")]
    StartFailed {
        error: String,
        traceback: Option<String>,
    },
    #[error("{0}")]
    NoCapacity(String),
    #[error("the node is draining: it takes no new requests")]
    Draining,
    /// A persistent program that the scheduler placed elsewhere (or not yet here):
    /// starting it on request would run a second copy.
    #[error("{0}")]
    NotAllocated(String),
    /// The VM took the request but no answer came (the VM or its app died).
    #[error("{0}")]
    NoAnswer(String),
    #[error("the program did not answer within {} s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("{0}")]
    Internal(String),
}

impl ProgramError {
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::Internal(error.to_string())
    }

    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadReference(_) => 400,
            Self::NotFound(_) => 404,
            Self::Unsupported(_) | Self::StartFailed { .. } | Self::Internal(_) => 500,
            Self::NoAnswer(_) => 502,
            Self::Unavailable(_) | Self::NoCapacity(_) | Self::Draining | Self::NotAllocated(_) => {
                503
            }
            Self::Timeout(_) => 504,
        }
    }

    pub fn traceback(&self) -> Option<&str> {
        match self {
            Self::StartFailed { traceback, .. } => traceback.as_deref(),
            _ => None,
        }
    }
}
