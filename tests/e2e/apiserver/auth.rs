//! TLS identity and client credentials: a generated CA, a server certificate for the loopback
//! names, a bearer token, and the kubeconfig that ties them together, so clients reach the
//! server through the same kubeconfig, TLS verification and authentication as a real cluster.

use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls;

/// The user every request with the right token is authenticated as.
pub const USER: &str = "e2e";

pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub token: String,
}

impl Credentials {
    pub fn generate() -> Credentials {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kubectl-pg-e2e-ca");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default.svc".to_string(),
        ])
        .expect("server params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        params.distinguished_name = dn;
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let token: [u8; 24] = rand::random();
        Credentials {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            token: token.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// The rustls server configuration (HTTP/1.1 only, as ALPN tells clients).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let certs: Vec<rustls::pki_types::CertificateDer<'static>> = pem_blocks(&self.cert_pem)
            .into_iter()
            .map(rustls::pki_types::CertificateDer::from)
            .collect();
        let key_der = pem_blocks(&self.key_pem).remove(0);
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A kubeconfig with one cluster, user and context, all named `e2e` (namespace unset).
    pub fn kubeconfig(&self, url: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: e2e\n  \
               cluster:\n    \
                 server: {url}\n    \
                 certificate-authority-data: {ca}\n\
             users:\n\
             - name: e2e\n  \
               user:\n    \
                 token: {token}\n\
             contexts:\n\
             - name: e2e\n  \
               context:\n    \
                 cluster: e2e\n    \
                 user: e2e\n\
             current-context: e2e\n\
             preferences: {{}}\n",
            token = self.token
        )
    }
}

/// The DER contents of each PEM block.
fn pem_blocks(pem: &str) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in pem.lines() {
        if line.starts_with("-----BEGIN") {
            current = Some(String::new());
        } else if line.starts_with("-----END") {
            if let Some(b64) = current.take() {
                blocks.push(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .expect("PEM base64"),
                );
            }
        } else if let Some(b64) = current.as_mut() {
            b64.push_str(line.trim());
        }
    }
    blocks
}
