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
use std::sync::{Arc, OnceLock};
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
pub(crate) struct KeyCell(OnceLock<Exported>);

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
        Ok(Box::new(TapInstance { inner, cell }))
    }
}

/// A DTLS instance that records the keying material it exports.
struct TapInstance {
    inner: Box<dyn DtlsInstance>,
    cell: Arc<KeyCell>,
}

impl std::fmt::Debug for TapInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapInstance").finish_non_exhaustive()
    }
}

impl DtlsInstance for TapInstance {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active)
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let out = self.inner.poll_output(buf);
        if let DtlsOutput::KeyingMaterial(km, profile) = &out {
            // A renegotiation would export again; str0m keeps the first
            // contexts as well, so the first export is the one in use.
            let _ = self.cell.0.set(Exported {
                material: km.to_vec(),
                profile: *profile,
                active: self.inner.is_active(),
            });
        }
        out
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.inner.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
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
