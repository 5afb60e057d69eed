//! TLS for the Observer API's TCP ports, with rustls (ring, the provider
//! the rest of the workspace uses) and certificates read from PEM files
//! that may change while the process runs.
//!
//! A server ([`ServerTls`]) presents a certificate chain and, with a client
//! CA, accepts only clients whose certificate that CA signed; a client
//! ([`ClientTls`]) trusts one CA bundle and may present a certificate of
//! its own. Both keep the last configuration that loaded and re-read their
//! files every few seconds ([`RELOAD_INTERVAL`]): when the bytes change and
//! the new ones load, new connections use them (connections already open
//! keep theirs); when they do not load (a half-written pair, a key that does
//! not match the certificate), the error is logged once and the old
//! configuration stays. A Kubernetes Secret volume updated in place (the
//! kubelet swaps a symlink) or `mv` of a new file both work; nothing waits
//! on an inotify event that a symlink swap may not send.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

/// How often the binaries look at their certificate files.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// gRPC runs over HTTP/2; grpc-go clients (the hubble CLI) insist that the
/// server selects it by ALPN.
const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM block of the kind wanted, or a broken one.
    #[error("{path}: no {what} in PEM form")]
    Pem {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A CA file's certificate is not one a trust anchor can be made of.
    #[error("{path}: not a usable CA certificate")]
    Ca {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built from the CA.
    #[error("{path}: no client verifier from this CA")]
    Verifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls refused the certificate and key (most often: the key is not
    /// the certificate's).
    #[error("{cert} with {key}")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// A name the server's certificate is checked against that is neither
    /// a DNS name nor an IP address.
    #[error("TLS server name {0:?}: not a DNS name or IP address")]
    ServerName(String),
}

/// What a TLS server reads: its certificate chain and key, and the CA that
/// signs the clients it accepts (none: any client, no client certificate
/// asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// PEM certificates, the server's own first, then intermediates.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates; a client must present a certificate one of
    /// them signed.
    pub client_ca: Option<PathBuf>,
}

/// What a TLS client reads: the CAs it trusts for the server's certificate
/// and, for mutual TLS, its own certificate chain and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    /// PEM CA certificates (every file's certificates are trusted).
    pub ca: Vec<PathBuf>,
    /// The client's certificate chain and key (both or neither).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A set of files read together, and the configuration they make.
trait Files: Send + Sync + 'static {
    type Config: Send + Sync + 'static;
    fn paths(&self) -> Vec<&Path>;
    /// Builds from the files' bytes (as [`Files::paths`] orders them).
    fn build(&self, bytes: &[Vec<u8>]) -> Result<Self::Config, TlsError>;
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        path: path.to_owned(),
        what: "certificate",
        source,
    };
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(pem(rustls::pki_types::pem::Error::NoItemsFound));
    }
    Ok(certs)
}

fn private_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|source| TlsError::Pem {
        path: path.to_owned(),
        what: "private key",
        source,
    })
}

fn roots(paths: &[&Path], bytes: &[&Vec<u8>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (path, bytes) in paths.iter().zip(bytes) {
        for cert in certs(path, bytes)? {
            roots.add(cert).map_err(|source| TlsError::Ca {
                path: path.to_path_buf(),
                source,
            })?;
        }
    }
    Ok(roots)
}

impl Files for ServerFiles {
    type Config = ServerConfig;

    fn paths(&self) -> Vec<&Path> {
        let mut p = vec![self.cert.as_path(), self.key.as_path()];
        p.extend(self.client_ca.as_deref());
        p
    }

    fn build(&self, bytes: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = match &self.client_ca {
            Some(ca) => {
                let roots = roots(&[ca], &[&bytes[2]])?;
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|source| TlsError::Verifier {
                        path: ca.clone(),
                        source,
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = certs(&self.cert, &bytes[0])?;
        let key = private_key(&self.key, &bytes[1])?;
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|source| TlsError::Identity {
                cert: self.cert.clone(),
                key: self.key.clone(),
                source,
            })?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }
}

impl Files for ClientFiles {
    type Config = ClientConfig;

    fn paths(&self) -> Vec<&Path> {
        let mut p: Vec<&Path> = self.ca.iter().map(PathBuf::as_path).collect();
        if let Some((cert, key)) = &self.identity {
            p.extend([cert.as_path(), key.as_path()]);
        }
        p
    }

    fn build(&self, bytes: &[Vec<u8>]) -> Result<ClientConfig, TlsError> {
        let ca_paths: Vec<&Path> = self.ca.iter().map(PathBuf::as_path).collect();
        let ca_bytes: Vec<&Vec<u8>> = bytes.iter().take(ca_paths.len()).collect();
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots(&ca_paths, &ca_bytes)?);
        let mut config = match &self.identity {
            Some((cert, key)) => {
                let n = ca_paths.len();
                let chain = certs(cert, &bytes[n])?;
                let private = private_key(key, &bytes[n + 1])?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|source| TlsError::Identity {
                        cert: cert.clone(),
                        key: key.clone(),
                        source,
                    })?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }
}

fn read_all(paths: &[&Path]) -> Result<Vec<Vec<u8>>, TlsError> {
    paths
        .iter()
        .map(|p| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.to_path_buf(),
                source,
            })
        })
        .collect()
}

/// The configuration in use, replaced when the files change; `None` while
/// the files are not there yet.
struct Reloading<C> {
    current: Arc<RwLock<Option<Arc<C>>>>,
}

impl<C> Clone for Reloading<C> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
        }
    }
}

impl TlsError {
    /// A file is not there (yet): a Secret volume the kubelet fills once
    /// the Secret exists, for example.
    pub fn is_missing(&self) -> bool {
        matches!(self, TlsError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

impl<C: Send + Sync + 'static> Reloading<C> {
    /// Loads the files now (an error is the caller's: a bad start is a
    /// configuration error) and, with an `interval`, follows them on the
    /// current tokio runtime for as long as a handle lives. Followed files
    /// may be missing at the start: there is no configuration until they
    /// all appear and load.
    fn start<F: Files<Config = C>>(files: F, interval: Option<Duration>) -> Result<Self, TlsError> {
        let (config, bytes) = match read_all(&files.paths()) {
            Ok(bytes) => (Some(Arc::new(files.build(&bytes)?)), bytes),
            Err(e) if e.is_missing() && interval.is_some() => {
                tracing::info!(error = %weir_error::Report(&e), "tls: waiting for the certificate files; no TLS connection until they appear");
                (None, Vec::new())
            }
            Err(e) => return Err(e),
        };
        let current = Arc::new(RwLock::new(config));
        if let Some(interval) = interval {
            tokio::spawn(follow(files, bytes, Arc::downgrade(&current), interval));
        }
        Ok(Self { current })
    }

    fn get(&self) -> Option<Arc<C>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Re-reads the files every `interval` until the configuration is dropped.
async fn follow<F: Files>(
    files: F,
    mut loaded: Vec<Vec<u8>>,
    slot: Weak<RwLock<Option<Arc<F::Config>>>>,
    interval: Duration,
) {
    let paths: Vec<PathBuf> = files.paths().into_iter().map(Path::to_owned).collect();
    let shown = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    // The last failure reported, so a file that stays broken is said once.
    let mut reported: Option<String> = None;
    loop {
        tokio::time::sleep(interval).await;
        let Some(slot) = slot.upgrade() else { return };
        // Small files on a local (often tmpfs) volume: read in place.
        let result = read_all(&files.paths()).and_then(|bytes| {
            if bytes == loaded {
                return Ok(None);
            }
            files.build(&bytes).map(|c| Some((c, bytes)))
        });
        match result {
            Ok(None) => {}
            Ok(Some((config, bytes))) => {
                *slot.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(config));
                let first = loaded.is_empty();
                loaded = bytes;
                reported = None;
                match first {
                    true => tracing::info!(files = %shown, "tls: certificates loaded; TLS connections start"),
                    false => tracing::info!(files = %shown, "tls: certificates reloaded; new connections use them"),
                }
            }
            // Still waiting for the files to appear: said at the start.
            Err(e) if e.is_missing() && loaded.is_empty() => {}
            Err(e) => {
                let why = e.to_string();
                if reported.as_deref() != Some(&why) {
                    tracing::warn!(files = %shown, error = %why, "tls: the changed files do not load; keeping the ones in use");
                    reported = Some(why);
                }
            }
        }
    }
}

/// A TLS server's configuration, following its files.
#[derive(Clone)]
pub struct ServerTls {
    config: Reloading<ServerConfig>,
    mutual: bool,
}

impl ServerTls {
    /// Loads `files` and re-reads them every `interval` (on the current
    /// tokio runtime); files not there yet are waited for.
    pub fn watch(files: ServerFiles, interval: Duration) -> Result<Self, TlsError> {
        let mutual = files.client_ca.is_some();
        Ok(Self {
            config: Reloading::start(files, Some(interval))?,
            mutual,
        })
    }

    /// Checks that `files` load, following nothing (configuration checks
    /// before the process starts its work).
    pub fn check(files: &ServerFiles) -> Result<(), TlsError> {
        files.build(&read_all(&files.paths())?).map(|_| ())
    }

    /// The configuration for the next connection; `None` while the files
    /// are awaited.
    pub fn config(&self) -> Option<Arc<ServerConfig>> {
        self.config.get()
    }

    /// Whether clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("mutual", &self.mutual).finish()
    }
}

/// A TLS client's configuration, following its files when watched.
#[derive(Clone)]
pub struct ClientTls {
    config: Reloading<ClientConfig>,
}

impl ClientTls {
    /// Loads `files` once (a command that runs briefly).
    pub fn load(files: ClientFiles) -> Result<Self, TlsError> {
        Ok(Self {
            config: Reloading::start(files, None)?,
        })
    }

    /// Loads `files` and re-reads them every `interval` (on the current
    /// tokio runtime); files not there yet are waited for.
    pub fn watch(files: ClientFiles, interval: Duration) -> Result<Self, TlsError> {
        Ok(Self {
            config: Reloading::start(files, Some(interval))?,
        })
    }

    /// Trusts the CA certificates of `pem` (read from elsewhere than a
    /// file: a Secret), presenting no certificate; `from` names them in
    /// errors.
    pub fn from_ca_pem(pem: Vec<u8>, from: &str) -> Result<Self, TlsError> {
        let files = ClientFiles {
            ca: vec![PathBuf::from(from)],
            identity: None,
        };
        let config = files.build(&[pem])?;
        Ok(Self {
            config: Reloading {
                current: Arc::new(RwLock::new(Some(Arc::new(config)))),
            },
        })
    }

    /// Checks that `files` load, following nothing.
    pub fn check(files: &ClientFiles) -> Result<(), TlsError> {
        files.build(&read_all(&files.paths())?).map(|_| ())
    }

    /// The configuration for the next connection; `None` while the files
    /// are awaited.
    pub fn config(&self) -> Option<Arc<ClientConfig>> {
        self.config.get()
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

/// The name a server's certificate must carry (a DNS name, or an IP
/// address in the certificate's IP SANs).
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pki::{Ca, write};

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weir-proto-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn loads_server_and_client_files_and_names_what_is_wrong() {
        let dir = tempdir("load");
        let ca = Ca::new("weir test CA");
        let (cert, key) = ca.server(&["agent.weir.dev"]).write(&dir, "server");
        let ca_path = ca.write(&dir, "ca.crt");
        let files = ServerFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: Some(ca_path.clone()),
        };
        ServerTls::check(&files).unwrap();
        let (ccert, ckey) = ca.client("relay").write(&dir, "client");
        ClientTls::check(&ClientFiles {
            ca: vec![ca_path.clone()],
            identity: Some((ccert, ckey.clone())),
        })
        .unwrap();

        // The other leaf's key: rustls says the pair does not match.
        let mismatched = ServerFiles {
            key: ckey,
            ..files.clone()
        };
        let e = ServerTls::check(&mismatched).unwrap_err().to_string();
        assert!(e.contains("server.crt with") && e.contains("client.key"), "{e}");
        // A key where the certificate should be.
        let e = ServerTls::check(&ServerFiles {
            cert: key.clone(),
            ..files.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("server.key: no certificate in PEM form"), "{e}");
        let e = ServerTls::check(&ServerFiles {
            client_ca: Some(dir.join("missing.crt")),
            ..files
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("reading ") && e.contains("missing.crt"), "{e}");
        assert!(server_name("10.0.0.1").is_ok() && server_name("a.weir-agent.weir.dev").is_ok());
        assert!(server_name("10.0.0.1:4244").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_change_is_taken_a_broken_change_is_not() {
        let dir = tempdir("reload");
        let ca = Ca::new("weir test CA");
        let (cert, key) = ca.server(&["one.weir.dev"]).write(&dir, "server");
        let tls = ServerTls::watch(
            ServerFiles {
                cert,
                key,
                client_ca: None,
            },
            Duration::from_millis(20),
        )
        .unwrap();
        let first = tls.config().unwrap();
        let settle = || tokio::time::sleep(Duration::from_millis(150));

        settle().await;
        assert!(
            Arc::ptr_eq(&first, &tls.config().unwrap()),
            "unchanged files: same configuration"
        );

        // Half a rotation: a new certificate with the old key.
        let next = ca.server(&["two.weir.dev"]);
        write(&dir, "server.crt", &next.cert);
        settle().await;
        assert!(
            Arc::ptr_eq(&first, &tls.config().unwrap()),
            "a mismatched pair is not taken"
        );

        // The rest of it.
        write(&dir, "server.key", &next.key);
        settle().await;
        let second = tls.config().unwrap();
        assert!(!Arc::ptr_eq(&first, &second), "the new pair is taken");

        // Garbage: kept.
        write(&dir, "server.crt", "not a certificate");
        settle().await;
        assert!(Arc::ptr_eq(&second, &tls.config().unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn files_that_appear_later_are_taken_then() {
        let dir = tempdir("later");
        let files = ServerFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            client_ca: Some(dir.join("ca.crt")),
        };
        let e = ServerTls::check(&files).unwrap_err();
        assert!(e.is_missing(), "{e}");
        let tls = ServerTls::watch(files.clone(), Duration::from_millis(20)).unwrap();
        assert!(tls.config().is_none(), "nothing to serve with yet");
        assert!(
            ClientTls::load(ClientFiles {
                ca: vec![dir.join("ca.crt")],
                identity: None
            })
            .is_err_and(|e| e.is_missing()),
            "a one-off load does not wait"
        );
        let ca = Ca::new("weir test CA");
        ca.server(&["one.weir.dev"]).write(&dir, "server");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(tls.config().is_none(), "not all files yet");
        ca.write(&dir, "ca.crt");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(tls.config().is_some(), "all there: taken");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
