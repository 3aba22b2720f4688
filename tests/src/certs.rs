//! Test certificates (rcgen): a CA and the leaf certificates the TLS tests need, good and
//! bad, written as PEM files into a temp dir.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

/// A certificate authority that signs test certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate (PEM file).
    pub cert: PathBuf,
    dir: PathBuf,
}

/// A leaf certificate and its key (PEM files).
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// What a leaf certificate is for and when it is valid.
#[derive(Debug, Clone)]
pub struct LeafSpec<'a> {
    /// Its subject's common name (the principal).
    pub name: &'a str,
    /// Its subject alternative names (DNS names; IP addresses as text).
    pub sans: &'a [&'a str],
    /// Server, client, or both (a broker).
    pub usages: &'a [ExtendedKeyUsagePurpose],
    /// Validity (year from, year to).
    pub years: (i32, i32),
}

impl LeafSpec<'_> {
    /// A server certificate for 127.0.0.1 and localhost, valid now.
    pub fn server(name: &str) -> LeafSpec<'_> {
        LeafSpec {
            name,
            sans: &["127.0.0.1", "localhost"],
            usages: &[ExtendedKeyUsagePurpose::ServerAuth],
            years: (2000, 4000),
        }
    }

    /// A client certificate, valid now.
    pub fn client(name: &str) -> LeafSpec<'_> {
        LeafSpec {
            name,
            sans: &[],
            usages: &[ExtendedKeyUsagePurpose::ClientAuth],
            years: (2000, 4000),
        }
    }

    /// A broker's: server and client for 127.0.0.1 and localhost.
    pub fn broker(name: &str) -> LeafSpec<'_> {
        LeafSpec {
            name,
            sans: &["127.0.0.1", "localhost"],
            usages: &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            years: (2000, 4000),
        }
    }
}

impl TestCa {
    /// A new CA named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        let cert = dir.join(format!("{name}.ca.pem"));
        std::fs::write(&cert, pem).expect("write the CA");
        Self {
            issuer: Issuer::new(params, key),
            cert,
            dir: dir.to_path_buf(),
        }
    }

    /// Signs a leaf certificate as `spec` says; its files are named after `file`.
    pub fn leaf(&self, file: &str, spec: &LeafSpec<'_>) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let sans: Vec<String> = spec.sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, spec.name);
        params.extended_key_usages = spec.usages.to_vec();
        params.not_before = date_time_ymd(spec.years.0, 1, 1);
        params.not_after = date_time_ymd(spec.years.1, 1, 1);
        let pem = params.signed_by(&key, &self.issuer).expect("sign").pem();
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert, pem).expect("write the certificate");
        std::fs::write(&leaf.key, key.serialize_pem()).expect("write the key");
        leaf
    }
}

/// Flags for a listener's TLS: `--{prefix}cert`, `--{prefix}key` and, if given,
/// `--{prefix}client-ca`.
pub fn listener_flags(prefix: &str, leaf: &Leaf, client_ca: Option<&Path>) -> Vec<String> {
    let mut flags = vec![
        format!("--{prefix}cert"),
        leaf.cert.display().to_string(),
        format!("--{prefix}key"),
        leaf.key.display().to_string(),
    ];
    if let Some(ca) = client_ca {
        flags.push(format!("--{prefix}client-ca"));
        flags.push(ca.display().to_string());
    }
    flags
}
