//! Why a command failed, and its exit code: 1 the broker refused, 2 usage, 3 no connection.

use sluice_client::ClientError;

/// Exit code when the broker refused the request.
pub const EXIT_REFUSED: i32 = 1;
/// Exit code of a usage error (clap uses the same).
pub const EXIT_USAGE: i32 = 2;
/// Exit code when no broker could be reached.
pub const EXIT_CONNECT: i32 = 3;

/// A failed command: one line for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: i32,
    /// The line printed to stderr.
    pub message: String,
}

impl Failure {
    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    /// A failure that is neither usage nor connection (I/O on stdin/stdout, bad data).
    pub fn other(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_REFUSED,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match &e {
            ClientError::Connect { .. } => Self {
                code: EXIT_CONNECT,
                message: e.to_string(),
            },
            // A transport failure after connecting: the broker went away.
            ClientError::Refused {
                reason: None,
                code: sluice_client::Code::Unavailable,
                message,
                ..
            } => Self {
                code: EXIT_CONNECT,
                message: format!("lost the connection to the broker: {message}"),
            },
            ClientError::Refused {
                reason, message, ..
            } => Self {
                code: EXIT_REFUSED,
                message: format!(
                    "{}: {message}",
                    reason.map_or("ERROR", sluice_client::Reason::as_str)
                ),
            },
            ClientError::InvalidArgument(m) => Self::usage(m.clone()),
            _ => Self::other(e.to_string()),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        // A reader that went away (`| head`): stop quietly, as other Unix tools do.
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Self {
                code: 0,
                message: String::new(),
            };
        }
        Self::other(format!("I/O error: {e}"))
    }
}
