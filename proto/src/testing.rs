//! What tests of the Observer API's servers and clients share (feature
//! `testing`; this crate's own tests have it too): certificates made on
//! the fly ([`pki`]) and an Observer that serves fixed flows and remembers
//! the client certificates it was shown ([`FixedObserver`]).

use std::sync::{Arc, Mutex};

use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status};

use crate::flow::Flow;
use crate::observer::observer_server::{Observer, ObserverServer};
use crate::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest, GetNodesResponse,
    Node, ServerStatusRequest, ServerStatusResponse, get_flows_response,
};

/// A CA and certificates it signs, made on the fly.
pub mod pki {
    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    /// A certificate authority that can sign server and client certificates.
    pub struct Ca {
        issuer: Issuer<'static, KeyPair>,
        /// The CA certificate, PEM.
        pub pem: String,
    }

    /// A certificate and its key, PEM.
    pub struct Leaf {
        pub cert: String,
        pub key: String,
        /// The certificate, DER (to compare with what a peer presented).
        pub der: Vec<u8>,
    }

    impl Ca {
        pub fn new(name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().expect("CA key");
            let cert = params.self_signed(&key).expect("CA certificate");
            Self {
                issuer: Issuer::new(params, key),
                pem: cert.pem(),
            }
        }

        fn leaf(&self, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
            let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
            Leaf {
                cert: cert.pem(),
                key: key.serialize_pem(),
                der: cert.der().to_vec(),
            }
        }

        /// A server certificate for these DNS names or IP addresses.
        pub fn server(&self, names: &[&str]) -> Leaf {
            self.leaf(
                names.first().copied().unwrap_or("server"),
                names,
                ExtendedKeyUsagePurpose::ServerAuth,
            )
        }

        /// A client certificate.
        pub fn client(&self, cn: &str) -> Leaf {
            self.leaf(cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
        }

        /// Writes the CA certificate to `dir/name`.
        pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
            write(dir, name, &self.pem)
        }
    }

    impl Leaf {
        /// Writes `dir/<name>.crt` and `dir/<name>.key`; returns both paths.
        pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
            (
                write(dir, &format!("{name}.crt"), &self.cert),
                write(dir, &format!("{name}.key"), &self.key),
            )
        }
    }

    /// Replaces `dir/name` atomically (a new file renamed over the old one,
    /// as a Secret volume's update looks to a reader).
    pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).expect("write pem");
        std::fs::rename(&tmp, &path).expect("rename pem");
        path
    }
}

/// An Observer with `flows` flows of node `node` (timestamps 1..=flows s),
/// that never follows, and records the first certificate each client
/// presented over TLS.
#[derive(Clone)]
pub struct FixedObserver {
    pub node: String,
    pub flows: u64,
    /// DER of every client certificate seen, one per call.
    pub client_certs: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl FixedObserver {
    pub fn new(node: &str, flows: u64) -> Self {
        Self {
            node: node.to_owned(),
            flows,
            client_certs: Arc::default(),
        }
    }

    pub fn into_server(self) -> ObserverServer<Self> {
        ObserverServer::new(self)
    }

    fn saw<T>(&self, r: &Request<T>) {
        let cert = r
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .and_then(|c| c.first().map(|c| c.to_vec()));
        if let Some(c) = cert {
            self.client_certs.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
    }
}

#[tonic::async_trait]
impl Observer for FixedObserver {
    type GetFlowsStream = ReceiverStream<Result<GetFlowsResponse, Status>>;

    async fn get_flows(&self, r: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        self.saw(&r);
        let (tx, rx) = tokio::sync::mpsc::channel(self.flows.max(1) as usize);
        for i in 1..=self.flows {
            let time = Some(prost_types::Timestamp {
                seconds: i as i64,
                nanos: 0,
            });
            let flow = Flow {
                time,
                node_name: self.node.clone(),
                ..Default::default()
            };
            let _ = tx.try_send(Ok(GetFlowsResponse {
                time,
                node_name: self.node.clone(),
                response_types: Some(get_flows_response::ResponseTypes::Flow(flow)),
            }));
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_nodes(&self, r: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        self.saw(&r);
        Ok(Response::new(GetNodesResponse {
            nodes: vec![Node {
                name: self.node.clone(),
                ..Default::default()
            }],
        }))
    }

    async fn get_namespaces(
        &self,
        r: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        self.saw(&r);
        Ok(Response::new(GetNamespacesResponse::default()))
    }

    async fn server_status(&self, r: Request<ServerStatusRequest>) -> Result<Response<ServerStatusResponse>, Status> {
        self.saw(&r);
        Ok(Response::new(ServerStatusResponse {
            num_flows: self.flows,
            max_flows: self.flows,
            seen_flows: self.flows,
            version: "fixed".into(),
            ..Default::default()
        }))
    }
}
