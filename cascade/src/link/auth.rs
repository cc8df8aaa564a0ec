//! The cluster-secret proofs exchanged right after the TLS handshake.

use aws_lc_rs::hmac;
use quinn::{Connection, ReadExactError, RecvStream, SendStream, WriteError};

use super::{CloseReason, LinkError, CLOSE_AUTH_FAILED};

/// First bytes of the control stream in both directions.
const MAGIC: &[u8; 8] = b"VSFUCAS1";
/// HMAC-SHA256 output length.
const PROOF_LEN: usize = 32;
/// The magic and the proof.
const HELLO_LEN: usize = MAGIC.len() + PROOF_LEN;
/// TLS exporter label; the context is empty.
const EXPORTER_LABEL: &[u8] = b"voice-sfu-cascade";
/// Domain separation prefix of the HMAC input.
const DOMAIN: &[u8] = b"voice-sfu cascade v1 ";

const ROLE_CLIENT: &[u8] = b"client";
const ROLE_SERVER: &[u8] = b"server";

fn exporter(conn: &Connection) -> Result<[u8; 32], LinkError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, &[])
        .map_err(|_| LinkError::Tls("TLS exporter unavailable".into()))?;
    Ok(out)
}

fn input(role: &[u8], exporter: &[u8; 32]) -> Vec<u8> {
    [DOMAIN, role, exporter].concat()
}

fn hello(key: &hmac::Key, role: &[u8], exporter: &[u8; 32]) -> [u8; HELLO_LEN] {
    let tag = hmac::sign(key, &input(role, exporter));
    let mut out = [0u8; HELLO_LEN];
    out[..MAGIC.len()].copy_from_slice(MAGIC);
    out[MAGIC.len()..].copy_from_slice(tag.as_ref());
    out
}

/// Checks a received hello: the magic (public), then the proof in constant
/// time.
fn check(
    key: &hmac::Key,
    role: &[u8],
    exporter: &[u8; 32],
    hello: &[u8; HELLO_LEN],
) -> Result<(), LinkError> {
    if &hello[..MAGIC.len()] != MAGIC {
        return Err(LinkError::Protocol(
            "bad magic on the control stream".into(),
        ));
    }
    hmac::verify(key, &input(role, exporter), &hello[MAGIC.len()..])
        .map_err(|_| LinkError::AuthFailed)
}

fn closed(e: quinn::ConnectionError) -> LinkError {
    match CloseReason::from(e) {
        CloseReason::Peer { code, .. } if code == u64::from(CLOSE_AUTH_FAILED) => {
            LinkError::AuthRejected
        }
        reason => LinkError::Closed(reason),
    }
}

fn read_err(e: ReadExactError) -> LinkError {
    match e {
        ReadExactError::FinishedEarly(_) => {
            LinkError::Protocol("control stream ended during authentication".into())
        }
        ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)) => closed(e),
        ReadExactError::ReadError(e) => LinkError::Protocol(format!("control stream: {e}")),
    }
}

fn write_err(e: WriteError) -> LinkError {
    match e {
        WriteError::ConnectionLost(e) => closed(e),
        e => LinkError::Protocol(format!("control stream: {e}")),
    }
}

/// The dialer's side: open the control stream, send our proof, verify the
/// listener's. On error the caller closes the connection.
pub(super) async fn client(
    conn: &Connection,
    key: &hmac::Key,
) -> Result<(SendStream, RecvStream), LinkError> {
    let exporter = exporter(conn)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(closed)?;
    send.write_all(&hello(key, ROLE_CLIENT, &exporter))
        .await
        .map_err(write_err)?;
    let mut theirs = [0u8; HELLO_LEN];
    recv.read_exact(&mut theirs).await.map_err(read_err)?;
    check(key, ROLE_SERVER, &exporter, &theirs)?;
    Ok((send, recv))
}

/// The listener's side: accept the control stream, verify the dialer's
/// proof, answer with ours. A DATAGRAM before the dialer's proof is a
/// protocol violation. On error the caller closes the connection.
pub(super) async fn server(
    conn: &Connection,
    key: &hmac::Key,
) -> Result<(SendStream, RecvStream), LinkError> {
    let exporter = exporter(conn)?;
    let read_hello = async {
        let (send, mut recv) = conn.accept_bi().await.map_err(closed)?;
        let mut theirs = [0u8; HELLO_LEN];
        recv.read_exact(&mut theirs).await.map_err(read_err)?;
        Ok::<_, LinkError>((send, recv, theirs))
    };
    let (mut send, recv, theirs) = tokio::select! {
        biased;
        r = read_hello => r?,
        d = conn.read_datagram() => {
            return Err(match d {
                Ok(_) => LinkError::Protocol("datagram before authentication".into()),
                Err(e) => closed(e),
            });
        }
    };
    check(key, ROLE_CLIENT, &exporter, &theirs)?;
    send.write_all(&hello(key, ROLE_SERVER, &exporter))
        .await
        .map_err(write_err)?;
    Ok((send, recv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_role_exporter_and_secret() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"other");
        let ex = [7u8; 32];
        let h = hello(&key, ROLE_CLIENT, &ex);
        assert!(check(&key, ROLE_CLIENT, &ex, &h).is_ok());
        assert!(matches!(
            check(&key, ROLE_SERVER, &ex, &h),
            Err(LinkError::AuthFailed)
        ));
        assert!(matches!(
            check(&key, ROLE_CLIENT, &[8u8; 32], &h),
            Err(LinkError::AuthFailed)
        ));
        assert!(matches!(
            check(&other, ROLE_CLIENT, &ex, &h),
            Err(LinkError::AuthFailed)
        ));
        let mut bad = h;
        bad[0] ^= 1;
        assert!(matches!(
            check(&key, ROLE_CLIENT, &ex, &bad),
            Err(LinkError::Protocol(_))
        ));
    }
}
