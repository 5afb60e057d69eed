//! The certificates themselves (rcgen, ring): weir's Observer CA and the
//! leaves it signs. No API server here.
//!
//! The CA is rebuilt from its Secret's key alone: an issuer needs only the
//! CA's name, which is fixed ([`CA_NAME`]), and its key, so the CA's
//! certificate is never parsed (rcgen would need x509-parser for that).
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// The CA's subject: every leaf names it as its issuer.
pub const CA_NAME: &str = "weir Observer CA";
/// Certificates start this long before they are made: a node whose clock
/// is a little behind the operator's accepts them at once.
const BACKDATE: time::Duration = time::Duration::minutes(5);

#[derive(Debug, thiserror::Error)]
#[error("certificate")]
pub struct PkiError(#[from] rcgen::Error);

/// A certificate and its key, PEM, and when it expires (Unix seconds).
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: String,
    pub key: String,
    pub not_after: i64,
}

/// What a leaf is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server answering to these DNS names.
    Server(Vec<String>),
    /// A TLS client with this common name.
    Client(String),
}

fn ca_params(now: OffsetDateTime, validity: time::Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params
}

/// A new CA, valid for `validity` from `now`.
pub fn new_ca(now: OffsetDateTime, validity: time::Duration) -> Result<Issued, PkiError> {
    let key = KeyPair::generate()?;
    let params = ca_params(now, validity);
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert: cert.pem(),
        key: key.serialize_pem(),
        not_after: params.not_after.unix_timestamp(),
    })
}

/// The CA of `key_pem` as an issuer.
pub fn ca_issuer(key_pem: &str) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(key_pem)?;
    // Only the name and key matter to an issuer; the dates are not used.
    Ok(Issuer::new(
        ca_params(OffsetDateTime::UNIX_EPOCH, time::Duration::ZERO),
        key,
    ))
}

/// A leaf for `usage`, signed by `ca`, valid for `validity` from `now`.
pub fn leaf(
    ca: &Issuer<'static, KeyPair>,
    usage: &Usage,
    now: OffsetDateTime,
    validity: time::Duration,
) -> Result<Issued, PkiError> {
    let (cn, names, eku) = match usage {
        Usage::Server(names) => (
            names.first().cloned().unwrap_or_default(),
            names.clone(),
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        Usage::Client(cn) => (cn.clone(), Vec::new(), ExtendedKeyUsagePurpose::ClientAuth),
    };
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok(Issued {
        cert: cert.pem(),
        key: key.serialize_pem(),
        not_after: params.not_after.unix_timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_rebuilt_from_its_key_signs_leaves_as_the_first_did() {
        let now = OffsetDateTime::now_utc();
        let ca = new_ca(now, time::Duration::days(3650)).unwrap();
        let issuer = ca_issuer(&ca.key).unwrap();
        let server = leaf(
            &issuer,
            &Usage::Server(vec!["*.weir-agent.weir.dev".into()]),
            now,
            time::Duration::days(1),
        )
        .unwrap();
        assert_eq!(server.not_after, (now + time::Duration::days(1)).unix_timestamp());
        assert!(server.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca_issuer("not a key").is_err());
    }
}
