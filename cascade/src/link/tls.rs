//! TLS and QUIC configuration: throw-away certificates, a server-certificate
//! verifier that accepts any certificate, transport settings.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{LinkConfig, LinkError};

/// The TLS server name dialers ask for (and the name in every node's
/// certificate). It identifies nothing: see [`AnyServerCert`].
pub(super) const SERVER_NAME: &str = "voice-sfu-cascade";

/// ALPN protocol id: keeps other QUIC applications (HTTP/3, ...) from
/// talking to a cascade listener by accident.
const ALPN: &[u8] = b"voice-sfu-cascade/1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> LinkError {
    LinkError::Tls(e.to_string())
}

/// QUIC transport settings shared by both sides.
fn transport(config: &LinkConfig) -> Result<Arc<TransportConfig>, LinkError> {
    let idle = IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| LinkError::Config("idle_timeout out of range".into()))?;
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive))
        .datagram_send_buffer_size(config.datagram_send_buffer)
        // One stream per link (the control stream, opened by the dialer):
        // an unauthenticated peer cannot open more.
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    Ok(Arc::new(t))
}

/// A listener's QUIC configuration, with a fresh self-signed certificate.
pub(super) fn server_config(config: &LinkConfig) -> Result<quinn::ServerConfig, LinkError> {
    let certified =
        rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()]).map_err(tls_err)?;
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport(config)?);
    Ok(server)
}

/// A dialer's QUIC configuration.
pub(super) fn client_config(config: &LinkConfig) -> Result<quinn::ClientConfig, LinkError> {
    let provider = provider();
    let verifier = AnyServerCert {
        algorithms: provider.signature_verification_algorithms,
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport(config)?);
    Ok(client)
}

/// Accepts any server certificate, but still checks the TLS 1.3
/// CertificateVerify signature of the handshake against the certificate's key.
///
/// Why this is safe here: certificates are self-signed and thrown away at
/// every start, so there is nothing to check them against; they do not
/// authenticate nodes. Authentication is the cluster-secret HMAC over the TLS
/// exporter of this very session, exchanged right after the handshake in both
/// directions (see [`super`]). An impostor server does not hold the secret, so
/// its proof fails; a man in the middle terminates two TLS sessions with
/// different exporters, so it can neither forge nor relay a valid proof.
/// What the certificate still provides is the key of an ordinary TLS 1.3
/// handshake, whose signature we keep verifying.
#[derive(Debug)]
struct AnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Never used: only TLS 1.3 is enabled (QUIC requires it).
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
