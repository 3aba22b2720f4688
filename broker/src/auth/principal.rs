//! The identity a call runs as.

use rustls::pki_types::CertificateDer;

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// It did not.
    None,
    /// A SCRAM session token.
    Scram,
    /// A client certificate (mutual TLS).
    Mtls,
    /// Another broker of the cluster (a session only brokers can mint).
    Broker,
}

impl AuthMethod {
    /// Its name in `WhoAmI`.
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::Scram => "scram",
            AuthMethod::Mtls => "mtls",
            AuthMethod::Broker => "broker",
        }
    }
}

/// The user a call runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user's name (a SCRAM user, or a certificate's subject common name); empty for
    /// the anonymous caller.
    pub name: String,
    /// How it was proven.
    pub method: AuthMethod,
}

impl Principal {
    /// No one: the caller did not authenticate.
    pub fn anonymous() -> Self {
        Self {
            name: String::new(),
            method: AuthMethod::None,
        }
    }

    /// Whether the caller authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.method != AuthMethod::None
    }

    /// The principal of a verified client certificate: its subject's common name; `None`
    /// if it has none (such a certificate authenticates no one).
    pub fn from_certificate(certificate: &CertificateDer<'_>) -> Option<Self> {
        let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
        let name = parsed
            .subject()
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_string();
        // `*` would read as every user in an ACL.
        // `__` names are the broker's own.
        let reserved = name == "*" || name == "ANONYMOUS" || name.starts_with("__");
        (!name.is_empty() && !reserved).then_some(Self {
            name,
            method: AuthMethod::Mtls,
        })
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_authenticated() {
            write!(f, "User:{}", self.name)
        } else {
            f.write_str("User:ANONYMOUS")
        }
    }
}
