//! Optional mutual TLS of the internal gRPC services (`--grpc-tls-cert`, `--grpc-tls-key`,
//! `--grpc-tls-ca` on central and the nodes, rustls): the servers then accept only clients
//! presenting a certificate signed by the CA, and the clients (to `https://` URLs) present
//! theirs and check the server's against the same CA. The signed credentials of
//! `grpc_auth` are sent either way.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// Why the TLS files cannot be used; names the flag.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--{flag} {path}: cannot read: {reason}")]
    Read {
        flag: &'static str,
        path: String,
        reason: String,
    },
    #[error("--{flag} {path}: not a PEM file")]
    NotPem { flag: &'static str, path: String },
    #[error("--grpc-tls-cert, --grpc-tls-key and --grpc-tls-ca go together: {0} missing")]
    Incomplete(&'static str),
}

/// Certificate, key and CA of one process, loaded (PEM). Cheap to clone.
#[derive(Clone, Debug)]
pub struct GrpcTls {
    identity: Identity,
    ca: Certificate,
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
        flag,
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsError::NotPem {
            flag,
            path: path.display().to_string(),
        });
    }
    Ok(bytes)
}

impl GrpcTls {
    /// `None` when none of the three is given; an error when only some are.
    pub fn from_flags(
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
        ca: Option<&PathBuf>,
    ) -> Result<Option<GrpcTls>, TlsError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(c), Some(k), Some(a)) => GrpcTls::load(c, k, a).map(Some),
            (None, _, _) => Err(TlsError::Incomplete("--grpc-tls-cert")),
            (_, None, _) => Err(TlsError::Incomplete("--grpc-tls-key")),
            (_, _, None) => Err(TlsError::Incomplete("--grpc-tls-ca")),
        }
    }

    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<GrpcTls, TlsError> {
        let cert = read("grpc-tls-cert", cert)?;
        let key = read("grpc-tls-key", key)?;
        let ca = read("grpc-tls-ca", ca)?;
        Ok(GrpcTls {
            identity: Identity::from_pem(cert, key),
            ca: Certificate::from_pem(ca),
        })
    }

    /// The server side: this identity, client certificates required and checked.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// The client side: present this identity, trust only the CA.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .identity(self.identity.clone())
            .ca_certificate(self.ca.clone())
    }
}

/// `endpoint` with TLS when `tls` is set and the URL is `https://`.
pub fn endpoint(
    endpoint: Endpoint,
    tls: Option<&GrpcTls>,
) -> Result<Endpoint, tonic::transport::Error> {
    match tls {
        Some(t) if endpoint.uri().scheme_str() == Some("https") => endpoint.tls_config(t.client()),
        _ => Ok(endpoint),
    }
}
