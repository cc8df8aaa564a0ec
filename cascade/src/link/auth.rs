//! The hellos exchanged right after the TLS handshake: each side's node id
//! and its proof that it holds the cluster secret.

use aws_lc_rs::hmac;
use quinn::{Connection, ReadExactError, RecvStream, SendStream, WriteError};

use super::{CloseReason, LinkError, CLOSE_AUTH_FAILED, CLOSE_NODE_ID_IN_USE};

/// First bytes of the control stream in both directions.
const MAGIC: &[u8; 8] = b"VSFUCAS2";
/// The magic of the first version, whose hello carried no node id.
const MAGIC_V1: &[u8; 8] = b"VSFUCAS1";
/// The node id: big-endian u16.
const NODE_LEN: usize = 2;
/// HMAC-SHA256 output length.
const PROOF_LEN: usize = 32;
/// What follows the magic: the node id and the proof.
const BODY_LEN: usize = NODE_LEN + PROOF_LEN;
/// The magic, the node id and the proof.
const HELLO_LEN: usize = MAGIC.len() + BODY_LEN;
/// TLS exporter label; the context is empty.
const EXPORTER_LABEL: &[u8] = b"voice-sfu-cascade";
/// Domain separation prefix of the HMAC input.
const DOMAIN: &[u8] = b"voice-sfu cascade v2 ";

const ROLE_CLIENT: &[u8] = b"client";
const ROLE_SERVER: &[u8] = b"server";

fn exporter(conn: &Connection) -> Result<[u8; 32], LinkError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, &[])
        .map_err(|_| LinkError::Tls("TLS exporter unavailable".into()))?;
    Ok(out)
}

/// The proof covers the role, the node id and the session's exporter.
fn input(role: &[u8], node: u16, exporter: &[u8; 32]) -> Vec<u8> {
    [DOMAIN, role, &node.to_be_bytes(), exporter].concat()
}

fn hello(key: &hmac::Key, role: &[u8], node: u16, exporter: &[u8; 32]) -> [u8; HELLO_LEN] {
    let tag = hmac::sign(key, &input(role, node, exporter));
    let mut out = [0u8; HELLO_LEN];
    out[..MAGIC.len()].copy_from_slice(MAGIC);
    out[MAGIC.len()..MAGIC.len() + NODE_LEN].copy_from_slice(&node.to_be_bytes());
    out[MAGIC.len() + NODE_LEN..].copy_from_slice(tag.as_ref());
    out
}

/// Checks the magic (public) that starts a hello.
fn check_magic(magic: &[u8; 8]) -> Result<(), LinkError> {
    match magic {
        m if m == MAGIC => Ok(()),
        m if m == MAGIC_V1 => Err(LinkError::Protocol(
            "the peer speaks cascade v1 (no node id): upgrade it".into(),
        )),
        _ => Err(LinkError::Protocol(
            "bad magic on the control stream".into(),
        )),
    }
}

/// Checks the rest of a received hello: the proof, in constant time.
/// Returns the peer's node id.
fn check_body(
    key: &hmac::Key,
    role: &[u8],
    exporter: &[u8; 32],
    body: &[u8; BODY_LEN],
) -> Result<u16, LinkError> {
    let node = u16::from_be_bytes([body[0], body[1]]);
    hmac::verify(key, &input(role, node, exporter), &body[NODE_LEN..])
        .map_err(|_| LinkError::AuthFailed)?;
    Ok(node)
}

/// Reads and checks a hello (magic first, so that a peer of another
/// version is told so at once). Returns the peer's node id.
async fn read_hello(
    recv: &mut RecvStream,
    key: &hmac::Key,
    role: &[u8],
    exporter: &[u8; 32],
) -> Result<u16, LinkError> {
    let mut magic = [0u8; 8];
    recv.read_exact(&mut magic).await.map_err(read_err)?;
    check_magic(&magic)?;
    let mut body = [0u8; BODY_LEN];
    recv.read_exact(&mut body).await.map_err(read_err)?;
    check_body(key, role, exporter, &body)
}

fn closed(e: quinn::ConnectionError) -> LinkError {
    match CloseReason::from(e) {
        CloseReason::Peer { code, .. } if code == u64::from(CLOSE_AUTH_FAILED) => {
            LinkError::AuthRejected
        }
        CloseReason::Peer { code, reason } if code == u64::from(CLOSE_NODE_ID_IN_USE) => {
            LinkError::NodeIdInUse(reason)
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

/// The control stream of an authenticated connection and the peer's node
/// id.
pub(super) struct Authenticated {
    pub(super) send: SendStream,
    pub(super) recv: RecvStream,
    pub(super) peer_node: u16,
}

/// The dialer's side: open the control stream, send our node id and proof,
/// verify the listener's. On error the caller closes the connection.
pub(super) async fn client(
    conn: &Connection,
    key: &hmac::Key,
    node: u16,
) -> Result<Authenticated, LinkError> {
    let exporter = exporter(conn)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(closed)?;
    send.write_all(&hello(key, ROLE_CLIENT, node, &exporter))
        .await
        .map_err(write_err)?;
    let peer_node = read_hello(&mut recv, key, ROLE_SERVER, &exporter).await?;
    Ok(Authenticated {
        send,
        recv,
        peer_node,
    })
}

/// The listener's side: accept the control stream, verify the dialer's
/// proof, ask `admit` whether its node id may link (a refusal is the
/// error), then answer with our node id and proof. A DATAGRAM before the
/// dialer's proof is a protocol violation. On error the caller closes the
/// connection.
pub(super) async fn server(
    conn: &Connection,
    key: &hmac::Key,
    node: u16,
    admit: impl FnOnce(u16) -> Result<(), LinkError>,
) -> Result<Authenticated, LinkError> {
    let exporter = exporter(conn)?;
    let read_client = async {
        let (send, mut recv) = conn.accept_bi().await.map_err(closed)?;
        let peer_node = read_hello(&mut recv, key, ROLE_CLIENT, &exporter).await?;
        Ok::<_, LinkError>((send, recv, peer_node))
    };
    let (mut send, recv, peer_node) = tokio::select! {
        biased;
        r = read_client => r?,
        d = conn.read_datagram() => {
            return Err(match d {
                Ok(_) => LinkError::Protocol("datagram before authentication".into()),
                Err(e) => closed(e),
            });
        }
    };
    admit(peer_node)?;
    send.write_all(&hello(key, ROLE_SERVER, node, &exporter))
        .await
        .map_err(write_err)?;
    Ok(Authenticated {
        send,
        recv,
        peer_node,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a whole hello as the reader does.
    fn check(
        key: &hmac::Key,
        role: &[u8],
        exporter: &[u8; 32],
        hello: &[u8; HELLO_LEN],
    ) -> Result<u16, LinkError> {
        let (magic, body) = hello.split_at(MAGIC.len());
        check_magic(magic.try_into().unwrap())?;
        check_body(key, role, exporter, body.try_into().unwrap())
    }

    #[test]
    fn proofs_bind_role_node_exporter_and_secret() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"other");
        let ex = [7u8; 32];
        let h = hello(&key, ROLE_CLIENT, 0x0102, &ex);
        assert_eq!(&h[8..10], &[1, 2]);
        assert_eq!(check(&key, ROLE_CLIENT, &ex, &h).unwrap(), 0x0102);
        let fails = |r: Result<u16, LinkError>| matches!(r, Err(LinkError::AuthFailed));
        assert!(fails(check(&key, ROLE_SERVER, &ex, &h)));
        assert!(fails(check(&key, ROLE_CLIENT, &[8u8; 32], &h)));
        assert!(fails(check(&other, ROLE_CLIENT, &ex, &h)));
        // Another node id under the same proof does not verify.
        let mut renumbered = h;
        renumbered[9] ^= 1;
        assert!(fails(check(&key, ROLE_CLIENT, &ex, &renumbered)));
        let mut bad = h;
        bad[0] ^= 1;
        assert!(matches!(
            check(&key, ROLE_CLIENT, &ex, &bad),
            Err(LinkError::Protocol(_))
        ));
        let mut v1 = h;
        v1[..8].copy_from_slice(MAGIC_V1);
        assert!(
            matches!(check(&key, ROLE_CLIENT, &ex, &v1), Err(LinkError::Protocol(m)) if m.contains("v1"))
        );
    }
}
