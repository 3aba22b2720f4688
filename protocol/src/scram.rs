//! SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash): the computations and message formats both
//! the SDK and the broker use. The exchange itself is in `sluice_broker::auth` and
//! `sluice_client`; docs/security.md describes it on the wire.
//!
//! Only the `n,,` GS2 header is accepted (no channel binding, no authorization identity
//! other than the authenticated user).

use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2};

/// Fewest PBKDF2 iterations a credential may have (RFC 7677's minimum).
pub const ITERATIONS_MIN: u32 = 4096;
/// Most PBKDF2 iterations accepted: a server (or a man in the middle) asking for more would
/// only burn the client's CPU.
pub const ITERATIONS_MAX: u32 = 1_000_000;
/// Shortest salt a credential may have, in bytes.
pub const SALT_BYTES_MIN: usize = 16;
/// Bytes of a SHA-256 output, and so of every key here.
pub const KEY_BYTES: usize = 32;
/// The GS2 header this implementation speaks: no channel binding, no authzid.
pub const GS2_HEADER: &str = "n,,";

/// A SCRAM exchange went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message does not follow RFC 5802's grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The server's nonce does not extend the client's, or the client's final message
    /// names another nonce.
    #[error("SCRAM nonce mismatch")]
    Nonce,
    /// The proof (client) or signature (server) is wrong.
    #[error("SCRAM authentication failed")]
    Failed,
    /// The credential's parameters are too weak.
    #[error("weak SCRAM parameters: {0}")]
    Weak(&'static str),
    /// The OS gave no random bytes.
    #[error("no randomness from the operating system")]
    Random,
}

/// Random bytes from the OS, for secrets (salts, nonces, keys).
pub fn secret_bytes<const N: usize>() -> Result<[u8; N], ScramError> {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| ScramError::Random)?;
    Ok(out)
}

/// A random nonce of RFC 5802's printable characters (URL-safe base64 of 18 bytes).
pub fn nonce() -> Result<String, ScramError> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Ok(URL_SAFE_NO_PAD.encode(secret_bytes::<18>()?))
}

/// What the server stores for a user: never the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// H(ClientKey).
    pub stored_key: [u8; KEY_BYTES],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; KEY_BYTES],
}

impl Credential {
    /// The credential of `password` with `salt` and `iterations`.
    pub fn new(password: &str, salt: &[u8], iterations: u32) -> Result<Self, ScramError> {
        check_strength(salt.len(), iterations)?;
        let salted = salted_password(password, salt, iterations)?;
        Ok(Self {
            salt: salt.to_vec(),
            iterations,
            stored_key: sha256(&hmac_sha256(&salted, b"Client Key")),
            server_key: hmac_sha256(&salted, b"Server Key"),
        })
    }
}

/// Refuses a salt or an iteration count below the minimums.
pub fn check_strength(salt_bytes: usize, iterations: u32) -> Result<(), ScramError> {
    if iterations < ITERATIONS_MIN {
        return Err(ScramError::Weak("fewer than 4096 iterations"));
    }
    if iterations > ITERATIONS_MAX {
        return Err(ScramError::Weak("more than 1,000,000 iterations"));
    }
    if salt_bytes < SALT_BYTES_MIN {
        return Err(ScramError::Weak("a salt shorter than 16 bytes"));
    }
    Ok(())
}

/// Hi(password, salt, i) of RFC 5802: PBKDF2 with HMAC-SHA-256.
pub fn salted_password(
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> Result<[u8; KEY_BYTES], ScramError> {
    let iterations = NonZeroU32::new(iterations).ok_or(ScramError::Weak("zero iterations"))?;
    let mut out = [0u8; KEY_BYTES];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut out,
    );
    Ok(out)
}

/// HMAC-SHA-256.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; KEY_BYTES] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; KEY_BYTES];
    out.copy_from_slice(tag.as_ref());
    out
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; KEY_BYTES] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; KEY_BYTES];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equality whose time depends only on the lengths: every byte is compared.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn xor(a: &[u8; KEY_BYTES], b: &[u8; KEY_BYTES]) -> [u8; KEY_BYTES] {
    let mut out = [0u8; KEY_BYTES];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

/// `saslname` escaping of RFC 5802: `,` and `=` as `=2C` and `=3D`.
pub fn escape_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn unescape_name(name: &str) -> Result<String, ScramError> {
    let unescaped = name.replace("=2C", ",").replace("=3D", "=");
    if unescaped.len() + 2 * name.matches('=').count() != name.len() {
        return Err(ScramError::Malformed("bad escape in the user name"));
    }
    Ok(unescaped)
}

/// The value of attribute `key` (`k=value`) in a comma-separated message.
fn attribute(message: &str, key: char) -> Option<&str> {
    message.split(',').find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(key) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

/// A parsed client-first-message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The user.
    pub user: String,
    /// The client's nonce.
    pub nonce: String,
    /// The message without its GS2 header (part of the AuthMessage).
    pub bare: String,
}

/// Parses a client-first-message (`n,,n=user,r=nonce`).
pub fn parse_client_first(message: &str) -> Result<ClientFirst, ScramError> {
    let bare = message
        .strip_prefix(GS2_HEADER)
        .ok_or(ScramError::Malformed(
            "only the GS2 header \"n,,\" is supported",
        ))?;
    if bare.starts_with("m=") {
        return Err(ScramError::Malformed("extensions are not supported"));
    }
    let user = attribute(bare, 'n').ok_or(ScramError::Malformed("no user name"))?;
    let nonce = attribute(bare, 'r').ok_or(ScramError::Malformed("no client nonce"))?;
    if user.is_empty() || !printable_nonce(nonce) {
        return Err(ScramError::Malformed("empty user or bad nonce"));
    }
    Ok(ClientFirst {
        user: unescape_name(user)?,
        nonce: nonce.to_string(),
        bare: bare.to_string(),
    })
}

/// RFC 5802's `printable`: ASCII 0x21–0x7E except `,`.
fn printable_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// The server-first-message for `nonce` (the client's and the server's joined).
pub fn server_first(nonce: &str, salt: &[u8], iterations: u32) -> String {
    format!("r={nonce},s={},i={iterations}", B64.encode(salt))
}

/// The client-final-message without its proof: `c=biws,r=nonce`.
pub fn client_final_without_proof(nonce: &str) -> String {
    format!("c={},r={nonce}", B64.encode(GS2_HEADER))
}

/// The AuthMessage both sides sign.
pub fn auth_message(client_first_bare: &str, server_first: &str, without_proof: &str) -> String {
    format!("{client_first_bare},{server_first},{without_proof}")
}

/// The server's check of a client-final-message; answers the server-final-message.
pub fn verify_client_final(
    credential: &Credential,
    client_first_bare: &str,
    server_first: &str,
    nonce: &str,
    client_final: &str,
) -> Result<String, ScramError> {
    let (without_proof, proof) = client_final
        .rsplit_once(",p=")
        .ok_or(ScramError::Malformed("no proof"))?;
    if attribute(without_proof, 'c') != Some(B64.encode(GS2_HEADER).as_str()) {
        return Err(ScramError::Malformed("channel binding is not \"biws\""));
    }
    if !constant_time_eq(
        attribute(without_proof, 'r').unwrap_or_default().as_bytes(),
        nonce.as_bytes(),
    ) {
        return Err(ScramError::Nonce);
    }
    let proof = B64
        .decode(proof)
        .map_err(|_| ScramError::Malformed("proof is not base64"))?;
    let proof: [u8; KEY_BYTES] = proof
        .try_into()
        .map_err(|_| ScramError::Malformed("proof is not 32 bytes"))?;
    let auth = auth_message(client_first_bare, server_first, without_proof);
    let client_signature = hmac_sha256(&credential.stored_key, auth.as_bytes());
    let client_key = xor(&proof, &client_signature);
    if !constant_time_eq(&sha256(&client_key), &credential.stored_key) {
        return Err(ScramError::Failed);
    }
    let server_signature = hmac_sha256(&credential.server_key, auth.as_bytes());
    Ok(format!("v={}", B64.encode(server_signature)))
}

/// The client side of an exchange, after the server-first-message.
#[derive(Debug, Clone)]
pub struct ClientFinal {
    /// The client-final-message to send.
    pub message: String,
    /// The server-final-message the server must answer with.
    pub expected_server_final: String,
}

/// The client's answer to `server_first`, given its own first message's bare part and nonce.
pub fn client_final(
    password: &str,
    client_first_bare: &str,
    client_nonce: &str,
    server_first: &str,
) -> Result<ClientFinal, ScramError> {
    let nonce = attribute(server_first, 'r').ok_or(ScramError::Malformed("no nonce"))?;
    if !nonce.starts_with(client_nonce) || nonce.len() == client_nonce.len() {
        return Err(ScramError::Nonce);
    }
    let salt = attribute(server_first, 's')
        .and_then(|s| B64.decode(s).ok())
        .ok_or(ScramError::Malformed("no salt"))?;
    let iterations: u32 = attribute(server_first, 'i')
        .and_then(|i| i.parse().ok())
        .ok_or(ScramError::Malformed("no iteration count"))?;
    check_strength(salt.len(), iterations)?;
    let salted = salted_password(password, &salt, iterations)?;
    let client_key = hmac_sha256(&salted, b"Client Key");
    let without_proof = client_final_without_proof(nonce);
    let auth = auth_message(client_first_bare, server_first, &without_proof);
    let signature = hmac_sha256(&sha256(&client_key), auth.as_bytes());
    let server_key = hmac_sha256(&salted, b"Server Key");
    Ok(ClientFinal {
        message: format!(
            "{without_proof},p={}",
            B64.encode(xor(&client_key, &signature))
        ),
        expected_server_final: format!(
            "v={}",
            B64.encode(hmac_sha256(&server_key, auth.as_bytes()))
        ),
    })
}

/// The client-first-message for `user` with `nonce`, and its bare part.
pub fn client_first(user: &str, nonce: &str) -> (String, String) {
    let bare = format!("n={},r={nonce}", escape_name(user));
    (format!("{GS2_HEADER}{bare}"), bare)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3.
    const USER: &str = "user";
    const PASSWORD: &str = "pencil";
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_credential() -> Credential {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        Credential::new(PASSWORD, &salt, 4096).expect("credential")
    }

    #[test]
    fn the_client_side_reproduces_rfc_7677() {
        let (first, bare) = client_first(USER, CLIENT_NONCE);
        assert_eq!(first, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let answer = client_final(PASSWORD, &bare, CLIENT_NONCE, SERVER_FIRST).expect("final");
        assert_eq!(answer.message, CLIENT_FINAL);
        assert_eq!(answer.expected_server_final, SERVER_FINAL);
    }

    #[test]
    fn the_server_side_accepts_rfc_7677_and_answers_its_signature() {
        let first = parse_client_first("n,,n=user,r=rOprNGfwEbeRWgbNEkqO").expect("first");
        assert_eq!(first.user, USER);
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let answer = verify_client_final(
            &rfc_credential(),
            &first.bare,
            SERVER_FIRST,
            nonce,
            CLIENT_FINAL,
        );
        assert_eq!(answer.as_deref(), Ok(SERVER_FINAL));
    }

    #[test]
    fn a_wrong_password_or_a_tampered_nonce_fails() {
        let first = parse_client_first("n,,n=user,r=rOprNGfwEbeRWgbNEkqO").expect("first");
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let wrong = client_final("pencil2", &first.bare, CLIENT_NONCE, SERVER_FIRST).expect("f");
        assert_eq!(
            verify_client_final(
                &rfc_credential(),
                &first.bare,
                SERVER_FIRST,
                nonce,
                &wrong.message
            ),
            Err(ScramError::Failed)
        );
        let tampered = CLIENT_FINAL.replace("k0,p=", "k1,p=");
        assert_eq!(
            verify_client_final(
                &rfc_credential(),
                &first.bare,
                SERVER_FIRST,
                nonce,
                &tampered
            ),
            Err(ScramError::Nonce)
        );
        // A server nonce that does not extend the client's.
        let other = SERVER_FIRST.replace("r=rOpr", "r=xOpr");
        assert_eq!(
            client_final(PASSWORD, &first.bare, CLIENT_NONCE, &other).map(|f| f.message),
            Err(ScramError::Nonce)
        );
    }

    #[test]
    fn weak_parameters_and_other_gs2_headers_are_refused() {
        assert!(matches!(
            Credential::new("p", &[0; 16], 4095),
            Err(ScramError::Weak(_))
        ));
        assert!(matches!(
            Credential::new("p", &[0; 15], 4096),
            Err(ScramError::Weak(_))
        ));
        for message in [
            "y,,n=user,r=abc",
            "n,a=admin,n=user,r=abc",
            "n,,n=,r=abc",
            "n,,n=u",
        ] {
            assert!(parse_client_first(message).is_err(), "{message}");
        }
        assert_eq!(
            parse_client_first("n,,n=a=2Cb=3Dc,r=x").map(|f| f.user),
            Ok("a,b=c".to_string())
        );
        assert!(parse_client_first("n,,n=a=2Xb,r=x").is_err());
    }
}
