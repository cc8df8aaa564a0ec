//! Getting each peer's DTLS-SRTP keying material out of str0m.
//!
//! str0m keeps the SRTP contexts it derives from the DTLS handshake private.
//! Its crypto provider is pluggable, though: this module wraps the default
//! DTLS provider so that every DTLS instance it creates also records the
//! keying material and profile the handshake exports (RFC 5764 §4.2), and
//! hands the record to the peer that owns the instance.
//!
//! The hand-off: str0m creates the DTLS instance inside `RtcConfig::build`
//! (`Rtc::new` → `Dtls::new` → `DtlsProvider::new_dtls`), synchronously, on
//! the calling thread. The wrapper puts the new instance's [`KeyCell`] in a
//! thread-local slot; [`build_tapped`] clears the slot, builds the `Rtc` and
//! takes the cell, all in one call on one thread, so the cell it returns is
//! the one of the `Rtc` it built. Nothing else reads the slot.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use std::time::Instant;

use str0m::config::DtlsCert;
use str0m::crypto::dtls::{
    DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
    SrtpProfile,
};
use str0m::crypto::{CryptoError, CryptoProvider};
use str0m::{Rtc, RtcConfig};

/// The keying material one DTLS handshake exported, once it has.
#[derive(Debug, Default)]
pub(crate) struct KeyCell(OnceLock<Exported>, AtomicBool, AtomicU64);

/// What the handshake exported: enough to derive both directions' SRTP keys.
pub(crate) struct Exported {
    pub(crate) material: Vec<u8>,
    pub(crate) profile: SrtpProfile,
    /// Whether this side was the DTLS client (it then sends with the first
    /// half of the material: RFC 5764 §4.2).
    pub(crate) active: bool,
}

impl std::fmt::Debug for Exported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Exported")
            .field("profile", &self.profile)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl KeyCell {
    /// The exported material, once the handshake produced it.
    pub(crate) fn get(&self) -> Option<&Exported> {
        self.0.get()
    }

    /// The handshake is over for both ends (see [`DtlsRelease`]): the
    /// DTLS instance has nothing left to do and is let go at its next call
    /// once it is drained. True the first time.
    pub(crate) fn release_dtls(&self) -> bool {
        !self.1.swap(true, Ordering::Relaxed)
    }

    /// DTLS records that reached the instance so far.
    fn records(&self) -> u64 {
        self.2.load(Ordering::Relaxed)
    }

    fn dtls_released(&self) -> bool {
        self.1.load(Ordering::Relaxed)
    }
}

thread_local! {
    /// The cell of the DTLS instance created last on this thread.
    static CREATED: RefCell<Option<Arc<KeyCell>>> = const { RefCell::new(None) };
}

/// The default DTLS provider, wrapped.
#[derive(Debug)]
struct TapProvider;

static TAP: TapProvider = TapProvider;

fn inner_provider() -> &'static dyn DtlsProvider {
    str0m::crypto::from_feature_flags().dtls_provider
}

impl DtlsProvider for TapProvider {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        inner_provider().generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let inner = inner_provider().new_dtls(cert, now, dtls_version, mtu)?;
        let cell = Arc::new(KeyCell::default());
        CREATED.with(|c| *c.borrow_mut() = Some(cell.clone()));
        Ok(Box::new(TapInstance {
            active: inner.is_active(),
            version: None,
            inner: Some(inner),
            cell,
            now,
            connected: false,
            drained: false,
        }))
    }
}

/// A DTLS instance that records the keying material it exports, and lets
/// the real instance go once the handshake is over for both ends
/// ([`DtlsRelease`]): str0m keeps a peer's DTLS instance for
/// the peer's life, a few KiB per listener that WebRTC without data
/// channels never uses again (no renegotiation; an ICE restart keeps the
/// DTLS session). Released, it ignores DTLS records (a late retransmission,
/// an alert: the peer's end is told by ICE and signaling) and asks for no
/// timer.
struct TapInstance {
    inner: Option<Box<dyn DtlsInstance>>,
    cell: Arc<KeyCell>,
    /// What the instance said before it was let go.
    active: bool,
    version: Option<ProtocolVersion>,
    /// The last time str0m handed in: a released instance's timer is far
    /// after it.
    now: Instant,
    /// The instance said `Connected`, and its last output was a timer
    /// (nothing of it is waiting to be polled): only then may it go.
    connected: bool,
    drained: bool,
}

/// How far a released instance's timer is: never, in practice.
const RELEASED_TIMER: Duration = Duration::from_secs(365 * 24 * 3600);

impl TapInstance {
    /// The real instance, unless it was let go (now, if the handshake is
    /// over for both ends and nothing of it waits to be polled).
    fn inner(&mut self) -> Option<&mut Box<dyn DtlsInstance>> {
        // DTLS 1.2 only (str0m's default): its server's last flight ends
        // the handshake; a 1.3 client may still want an acknowledgement.
        let dtls12 = self
            .inner
            .as_ref()
            .is_some_and(|i| i.protocol_version() == Some(ProtocolVersion::DTLS1_2));
        if dtls12
            && self.connected
            && self.drained
            && self.cell.dtls_released()
            && self.cell.get().is_some()
        {
            if let Some(inner) = self.inner.take() {
                self.active = inner.is_active();
                self.version = inner.protocol_version();
            }
        }
        self.inner.as_mut()
    }
}

impl std::fmt::Debug for TapInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapInstance").finish_non_exhaustive()
    }
}

impl DtlsInstance for TapInstance {
    fn set_active(&mut self, active: bool) {
        self.active = active;
        if let Some(inner) = self.inner() {
            inner.set_active(active)
        }
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.cell.2.fetch_add(1, Ordering::Relaxed);
        match self.inner() {
            Some(inner) => inner.handle_packet(packet),
            None => Ok(()),
        }
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let far = self.now + RELEASED_TIMER;
        let cell = self.cell.clone();
        let Some(inner) = self.inner() else {
            return DtlsOutput::Timeout(far);
        };
        let active = inner.is_active();
        let out = inner.poll_output(buf);
        self.drained = matches!(out, DtlsOutput::Timeout(_));
        self.connected |= matches!(out, DtlsOutput::Connected);
        if let DtlsOutput::KeyingMaterial(km, profile) = &out {
            // A renegotiation would export again; str0m keeps the first
            // contexts as well, so the first export is the one in use.
            let _ = cell.0.set(Exported {
                material: km.to_vec(),
                profile: *profile,
                active,
            });
        }
        out
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.now = now;
        match self.inner() {
            Some(inner) => inner.handle_timeout(now),
            None => Ok(()),
        }
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        match self.inner() {
            Some(inner) => inner.send_application_data(data),
            // Nothing is accepted: str0m reports the write as pending.
            None => Ok(0),
        }
    }

    fn is_active(&self) -> bool {
        self.inner.as_ref().map_or(self.active, |i| i.is_active())
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        match &self.inner {
            Some(inner) => inner.protocol_version(),
            None => self.version,
        }
    }

    fn is_closing(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_closing())
    }

    fn is_closed(&self) -> bool {
        self.inner.as_ref().is_none_or(|i| i.is_closed())
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        match self.inner() {
            Some(inner) => inner.close(),
            None => Ok(()),
        }
    }
}

/// The crypto provider to give every engine-side `Rtc`: the default one with
/// the DTLS provider wrapped.
pub(crate) fn tapped_provider() -> Arc<CryptoProvider> {
    let mut p = str0m::crypto::from_feature_flags();
    p.dtls_provider = &TAP;
    Arc::new(p)
}

/// Builds an `Rtc` and returns the cell its DTLS instance will fill. `None`
/// for the cell when the configuration's provider is not the tapped one.
pub(crate) fn build_tapped(config: RtcConfig, now: Instant) -> (Rtc, Option<Arc<KeyCell>>) {
    CREATED.with(|c| c.borrow_mut().take());
    let rtc = config.build(now);
    let cell = CREATED.with(|c| c.borrow_mut().take());
    (rtc, cell)
}

/// How long a member's media must flow with no DTLS record from it before
/// its DTLS instance is let go. Media alone proves nothing: a DTLS 1.2
/// client has its keys (and may send SRTCP) once it sent its Finished,
/// before it received ours; if ours was lost it retransmits its flight, 1 s
/// later, then 2, 4 and 8 s. Ten quiet seconds of media after the last
/// record leave that exchange time to finish.
pub(crate) const DTLS_QUIET: Duration = Duration::from_secs(10);

/// When to let a peer's DTLS instance go: after our handshake exported the
/// keys, once the member's media has flowed for [`DTLS_QUIET`] without a
/// DTLS record from it.
#[derive(Debug)]
pub(crate) struct DtlsRelease {
    cell: Arc<KeyCell>,
    /// Since when, and at which count of records, it has been quiet.
    quiet: Option<(Instant, u64)>,
}

impl DtlsRelease {
    pub(crate) fn new(cell: Arc<KeyCell>) -> DtlsRelease {
        DtlsRelease { cell, quiet: None }
    }

    /// The member's media arrived at `now`; true when the instance is let
    /// go now (then this is done with).
    pub(crate) fn media(&mut self, now: Instant) -> bool {
        if self.cell.get().is_none() {
            return false;
        }
        let records = self.cell.records();
        match self.quiet {
            Some((since, seen)) if seen == records => {
                now.saturating_duration_since(since) >= DTLS_QUIET && self.cell.release_dtls()
            }
            _ => {
                self.quiet = Some((now, records));
                false
            }
        }
    }
}
