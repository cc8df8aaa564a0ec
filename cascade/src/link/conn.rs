//! An authenticated link: sending (media datagrams, ordered control frames)
//! and receiving (both merged into one event stream).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use media_core::RelayMsg;
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;

use super::auth::{self, Authenticated};
use super::{tls, CloseReason, LinkConfig, LinkError, Shared, CLOSE_AUTH_FAILED};
use super::{CLOSE_NODE_ID_IN_USE, CLOSE_NORMAL, CLOSE_PROTOCOL};
use crate::control::{ControlItem, ControlReader};
use crate::wire::{decode_datagram, encode_datagram, encode_frame};

/// Received messages buffered between the receive task and the owner.
const EVENT_QUEUE: usize = 1024;
/// Control frames queued for the control-stream writer.
const CONTROL_QUEUE: usize = 256;
/// Largest chunk read from the control stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// Counters of one link (a snapshot, see [`Link::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkStats {
    /// Media datagrams handed to QUIC.
    pub media_sent: u64,
    /// Media datagrams dropped: refused (too large for the path, encoding
    /// failed, link closed) or evicted from a full send queue by newer ones
    /// (one per eviction; exact when datagrams are of similar size).
    pub media_dropped: u64,
    /// Control messages written to the control stream.
    pub control_sent: u64,
    /// Messages received and delivered (datagrams and control frames).
    pub received: u64,
    /// Received datagrams or control frames that did not decode (dropped).
    pub malformed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    media_sent: AtomicU64,
    media_dropped: AtomicU64,
    control_sent: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> LinkStats {
        LinkStats {
            media_sent: self.media_sent.load(Ordering::Relaxed),
            media_dropped: self.media_dropped.load(Ordering::Relaxed),
            control_sent: self.control_sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
        }
    }
}

/// What a link delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A message from the peer (a media datagram or a control frame).
    Message(RelayMsg),
    /// The link ended; nothing follows.
    Closed(CloseReason),
}

struct Inner {
    conn: Connection,
    control: mpsc::Sender<Bytes>,
    counters: Counters,
    /// The node id the peer announced in its (verified) hello.
    peer_node: u16,
}

/// The sending half of a [`Link`]: cheap to clone, usable from many tasks.
///
/// A handle does not keep the link open: when its [`Link`] is dropped (or a
/// [`super::Dialer`]'s link ends), sends fail (`send_media` drops and counts,
/// `send_control` returns [`LinkError::Closed`]).
#[derive(Clone)]
pub struct LinkHandle {
    inner: Arc<Inner>,
}

impl fmt::Debug for LinkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkHandle")
            .field("remote_addr", &self.remote_addr())
            .field("stats", &self.stats())
            .finish()
    }
}

impl LinkHandle {
    /// Sends `msg` (normally [`RelayMsg::Media`]) in one QUIC DATAGRAM.
    ///
    /// Never blocks and never queues beyond the small datagram send buffer:
    /// a datagram that does not encode, is larger than the path allows, or
    /// finds the link closed is dropped; when the send buffer is full (the
    /// link is congested) QUIC drops the oldest queued datagrams to make room.
    /// Both count in [`LinkStats::media_dropped`]. Returns whether `msg` was
    /// handed to QUIC.
    pub fn send_media(&self, msg: &RelayMsg) -> bool {
        let counters = &self.inner.counters;
        let mut buf = BytesMut::with_capacity(64 + media_len(msg));
        if let Err(e) = encode_datagram(msg, &mut buf) {
            tracing::debug!(error = %e, "media message does not encode; dropped");
            bump(&counters.media_dropped);
            return false;
        }
        let conn = &self.inner.conn;
        // Full queue: quinn will evict older datagrams to make room.
        if buf.len() > conn.datagram_send_buffer_space() {
            bump(&counters.media_dropped);
        }
        match conn.send_datagram(buf.freeze()) {
            Ok(()) => {
                bump(&counters.media_sent);
                true
            }
            Err(e) => {
                tracing::trace!(error = %e, "media datagram dropped");
                bump(&counters.media_dropped);
                false
            }
        }
    }

    /// Sends `msg` (normally anything but media) on the reliable, ordered
    /// control stream.
    ///
    /// `Ok` means the frame is queued, in order, for the stream (it waits
    /// only while the small control queue is full, which flow control
    /// bounds); it may still be lost if the link then fails. Cancelling the
    /// future never writes a partial frame.
    pub async fn send_control(&self, msg: &RelayMsg) -> Result<(), LinkError> {
        let mut buf = BytesMut::new();
        encode_frame(msg, &mut buf)?;
        if let Some(reason) = self.close_reason() {
            return Err(LinkError::Closed(reason));
        }
        self.inner
            .control
            .send(buf.freeze())
            .await
            .map_err(|_| LinkError::Closed(self.close_reason().unwrap_or(CloseReason::Local)))
    }

    /// Counters of this link.
    pub fn stats(&self) -> LinkStats {
        self.inner.counters.snapshot()
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.inner.conn.remote_address()
    }

    /// The node id the peer announced in its hello (covered by its proof).
    pub fn peer_node_id(&self) -> u16 {
        self.inner.peer_node
    }

    /// The largest encoded media datagram the path takes now (`None` when the
    /// link is closed or datagrams are unavailable).
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.inner.conn.max_datagram_size()
    }

    /// Why the link ended, or `None` while it is open.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.inner.conn.close_reason().map(CloseReason::from)
    }

    /// Closes the link now ([`super::CLOSE_NORMAL`]); control frames not yet
    /// written are discarded. The peer sees [`CloseReason::Peer`].
    pub fn close(&self) {
        self.inner
            .conn
            .close(VarInt::from_u32(CLOSE_NORMAL), b"closed");
    }
}

fn media_len(msg: &RelayMsg) -> usize {
    match msg {
        RelayMsg::Media { payload, .. } => payload.len(),
        _ => 0,
    }
}

/// One authenticated QUIC link to another node.
///
/// Dropping a `Link` closes the connection ([`super::CLOSE_NORMAL`]).
pub struct Link {
    handle: LinkHandle,
    events: mpsc::Receiver<LinkEvent>,
    finished: bool,
    // A dialed link owns its client endpoint.
    _endpoint: Option<Endpoint>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("handle", &self.handle)
            .finish()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.handle
            .inner
            .conn
            .close(VarInt::from_u32(CLOSE_NORMAL), b"dropped");
    }
}

/// A local address of the family of `remote` (loopback when it is loopback).
fn bind_addr_for(remote: SocketAddr) -> SocketAddr {
    let ip = match remote.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(ip) if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

impl Link {
    /// Dials `addr` once: QUIC handshake, then mutual authentication with the
    /// cluster secret. Returns only an authenticated link; handshake plus
    /// authentication are bounded by [`LinkConfig::idle_timeout`].
    ///
    /// Wrong secrets give [`LinkError::AuthRejected`] (the listener refused
    /// our proof) or [`LinkError::AuthFailed`] (the listener's proof did not
    /// verify); see [`LinkError::is_auth`].
    pub async fn dial(addr: SocketAddr, config: LinkConfig) -> Result<Link, LinkError> {
        Self::dial_shared(addr, &Shared::new(config)?).await
    }

    pub(super) async fn dial_shared(addr: SocketAddr, shared: &Shared) -> Result<Link, LinkError> {
        let client = tls::client_config(&shared.config)?;
        let endpoint = Endpoint::client(bind_addr_for(addr))?;
        let connecting = endpoint
            .connect_with(client, addr, tls::SERVER_NAME)
            .map_err(|e| LinkError::Connect(e.to_string()))?;
        let deadline = shared.config.connect_timeout;
        let attempt = async {
            let conn = connecting.await.map_err(|e| LinkError::Closed(e.into()))?;
            match auth::client(&conn, &shared.key, shared.config.node_id).await {
                Ok(authenticated) => Ok((conn, authenticated)),
                Err(e) => {
                    close_failed(&conn, &e);
                    Err(e)
                }
            }
        };
        let result = match tokio::time::timeout(deadline, attempt).await {
            Ok(r) => r,
            Err(_) => Err(LinkError::Timeout(deadline)),
        };
        match result {
            Ok((conn, authenticated)) => Ok(Link::start(conn, authenticated, Some(endpoint))),
            Err(e) => {
                endpoint.close(VarInt::from_u32(CLOSE_NORMAL), b"dial failed");
                Err(e)
            }
        }
    }

    /// Starts the receive and control-write tasks of an authenticated
    /// connection.
    pub(super) fn start(
        conn: Connection,
        authenticated: Authenticated,
        endpoint: Option<Endpoint>,
    ) -> Link {
        let Authenticated {
            send,
            recv,
            peer_node,
        } = authenticated;
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let inner = Arc::new(Inner {
            conn,
            control: control_tx,
            counters: Counters::default(),
            peer_node,
        });
        tokio::spawn(write_control(Arc::downgrade(&inner), send, control_rx));
        tokio::spawn(receive(inner.clone(), recv, events_tx));
        Link {
            handle: LinkHandle { inner },
            events: events_rx,
            finished: false,
            _endpoint: endpoint,
        }
    }

    /// A sending handle for other tasks.
    pub fn handle(&self) -> LinkHandle {
        self.handle.clone()
    }

    /// See [`LinkHandle::send_media`].
    pub fn send_media(&self, msg: &RelayMsg) -> bool {
        self.handle.send_media(msg)
    }

    /// See [`LinkHandle::send_control`].
    pub async fn send_control(&self, msg: &RelayMsg) -> Result<(), LinkError> {
        self.handle.send_control(msg).await
    }

    /// The next event: messages (datagrams and control frames merged, each
    /// in its own order), then one [`LinkEvent::Closed`], then `None`.
    /// Cancel-safe.
    pub async fn recv_event(&mut self) -> Option<LinkEvent> {
        if self.finished {
            return None;
        }
        let event = match self.events.recv().await {
            Some(event) => event,
            // The receive task always ends with `Closed`; this is defensive.
            None => LinkEvent::Closed(self.handle.close_reason().unwrap_or(CloseReason::Local)),
        };
        if matches!(event, LinkEvent::Closed(_)) {
            self.finished = true;
        }
        Some(event)
    }

    /// The next message, or `None` once the link has ended (see
    /// [`Link::close_reason`]). Cancel-safe.
    pub async fn recv(&mut self) -> Option<RelayMsg> {
        match self.recv_event().await? {
            LinkEvent::Message(msg) => Some(msg),
            LinkEvent::Closed(_) => None,
        }
    }

    /// See [`LinkHandle::stats`].
    pub fn stats(&self) -> LinkStats {
        self.handle.stats()
    }

    /// See [`LinkHandle::remote_addr`].
    pub fn remote_addr(&self) -> SocketAddr {
        self.handle.remote_addr()
    }

    /// See [`LinkHandle::peer_node_id`].
    pub fn peer_node_id(&self) -> u16 {
        self.handle.peer_node_id()
    }

    /// See [`LinkHandle::close_reason`].
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.handle.close_reason()
    }

    /// See [`LinkHandle::close`].
    pub fn close(&self) {
        self.handle.close();
    }
}

/// Closes a connection whose authentication failed with the matching code.
pub(super) fn close_failed(conn: &Connection, e: &LinkError) {
    match e {
        LinkError::AuthFailed => conn.close(
            VarInt::from_u32(CLOSE_AUTH_FAILED),
            b"authentication failed",
        ),
        LinkError::Protocol(_) | LinkError::Timeout(_) => {
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"protocol violation")
        }
        LinkError::NodeIdInUse(reason) => {
            conn.close(VarInt::from_u32(CLOSE_NODE_ID_IN_USE), reason.as_bytes())
        }
        _ => conn.close(VarInt::from_u32(CLOSE_NORMAL), b"handshake failed"),
    }
}

/// Writes queued control frames in order until the queue closes (every
/// handle dropped) or the stream fails.
async fn write_control(
    inner: std::sync::Weak<Inner>,
    mut send: SendStream,
    mut queue: mpsc::Receiver<Bytes>,
) {
    while let Some(frame) = queue.recv().await {
        if send.write_chunk(frame).await.is_err() {
            return;
        }
        match inner.upgrade() {
            Some(inner) => bump(&inner.counters.control_sent),
            None => return,
        }
    }
}

fn protocol_close(conn: &Connection, what: &str) -> CloseReason {
    conn.close(VarInt::from_u32(CLOSE_PROTOCOL), what.as_bytes());
    CloseReason::Protocol(what.to_owned())
}

/// Reads datagrams and control frames and delivers them, then `Closed`.
async fn receive(inner: Arc<Inner>, mut recv: RecvStream, events: mpsc::Sender<LinkEvent>) {
    let conn = inner.conn.clone();
    let counters = &inner.counters;
    let mut control = ControlReader::new();
    let reason = 'link: loop {
        tokio::select! {
            biased;
            () = events.closed() => return,
            chunk = recv.read_chunk(READ_CHUNK, true) => match chunk {
                Ok(Some(chunk)) => {
                    control.push(&chunk.bytes);
                    while let Some(item) = control.poll() {
                        match item {
                            ControlItem::Message(msg) => {
                                bump(&counters.received);
                                if events.send(LinkEvent::Message(msg)).await.is_err() {
                                    return;
                                }
                            }
                            ControlItem::Malformed(e) => {
                                bump(&counters.malformed);
                                tracing::debug!(error = %e, "malformed control frame dropped");
                            }
                            ControlItem::Lost(e) => {
                                bump(&counters.malformed);
                                tracing::debug!(error = %e, "control stream cannot be framed");
                                break 'link protocol_close(&conn, "control stream cannot be framed");
                            }
                        }
                    }
                }
                Ok(None) => break 'link protocol_close(&conn, "control stream finished"),
                Err(quinn::ReadError::ConnectionLost(e)) => break 'link e.into(),
                Err(e) => break 'link protocol_close(&conn, &format!("control stream: {e}")),
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(bytes) => match decode_datagram(bytes) {
                    Ok(msg) => {
                        bump(&counters.received);
                        if events.send(LinkEvent::Message(msg)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        bump(&counters.malformed);
                        tracing::debug!(error = %e, "malformed datagram dropped");
                    }
                },
                Err(e) => break 'link e.into(),
            },
        }
    };
    tracing::debug!(remote = %conn.remote_address(), %reason, "link closed");
    let _ = events.send(LinkEvent::Closed(reason)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_address_follows_the_remote_family() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(bind_addr_for(a("127.0.0.1:5000")), a("127.0.0.1:0"));
        assert_eq!(bind_addr_for(a("10.0.0.1:5000")), a("0.0.0.0:0"));
        assert_eq!(bind_addr_for(a("[::1]:5000")), a("[::1]:0"));
        assert_eq!(bind_addr_for(a("[2001:db8::1]:5000")), a("[::]:0"));
    }

    #[test]
    fn config_defaults_and_validation() {
        let d = LinkConfig::default();
        assert_eq!(d.keep_alive.as_millis(), 300);
        assert_eq!(d.idle_timeout.as_millis(), 1500);
        assert_eq!(d.connect_timeout.as_secs(), 1);
        assert_eq!(d.datagram_send_buffer, 32 * 1024);
        assert!(matches!(d.validate(), Err(LinkError::Config(_))));
        assert!(LinkConfig::new(Vec::new()).is_err());
        let ok = LinkConfig::new(b"s".to_vec()).unwrap();
        assert!(
            !format!("{ok:?}").contains("115"),
            "secret must not be printed"
        );
        let bad = LinkConfig {
            keep_alive: ok.idle_timeout,
            ..ok.clone()
        };
        assert!(bad.validate().is_err());
    }
}
