//! The engine's own SRTP sender for forwarded audio.
//!
//! Forwarding through str0m's send path (`StreamTx::write_rtp`, its pacer and
//! `poll_output`) costs about 2 µs per (packet, listener), of which the
//! encryption is about an eighth (BENCHMARKS.md). The engine instead writes
//! the RTP packets of a listener's slots itself and seals them with the SRTP
//! keys of the listener's DTLS handshake ([`tap`]), RFC 3711 / RFC 7714:
//! one header write, one AEAD seal, one allocation per (packet, listener).
//!
//! The slot SSRCs then belong to the engine alone (str0m's send streams for
//! them are removed before any media flows), so the RTP and SRTCP packets
//! sealed here never share an SSRC, and so never an IV, with what str0m
//! seals with the same keys (its receiver reports, from another SSRC).

pub(crate) mod tap;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128, AES_256};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use str0m::crypto::dtls::SrtpProfile;

use tap::Exported;

/// RFC 3711 §4.3.1 key derivation labels.
const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_KEY: u8 = 3;
const LABEL_RTCP_AUTH: u8 = 4;
const LABEL_RTCP_SALT: u8 = 5;

/// Bytes SRTP adds to an RTP packet at most (the AEAD tag).
pub(crate) const SRTP_OVERHEAD: usize = 16;
/// Bytes SRTCP adds at most (tag and E-flag + index).
pub(crate) const SRTCP_OVERHEAD: usize = 16 + 4;

const HMAC_TAG_LEN: usize = 10;

/// One direction's cipher for RTP or RTCP.
enum Cipher {
    /// AEAD_AES_128_GCM / AEAD_AES_256_GCM (RFC 7714).
    Gcm { key: LessSafeKey, salt: [u8; 12] },
    /// AES_CM_128_HMAC_SHA1_80 (RFC 3711).
    Cm(Box<CmCipher>),
}

struct CmCipher {
    key: EncryptingKey,
    auth: hmac::Key,
    salt: [u8; 14],
}

/// The sending half of a peer's SRTP session.
pub(crate) struct SrtpTx {
    rtp: Cipher,
    rtcp: Cipher,
    /// The next SRTCP index (31 bits).
    srtcp_index: u32,
}

impl std::fmt::Debug for SrtpTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let profile = match self.rtp {
            Cipher::Gcm { .. } => "AEAD_AES_GCM",
            Cipher::Cm(_) => "AES_CM_128_HMAC_SHA1_80",
        };
        f.debug_struct("SrtpTx")
            .field("profile", &profile)
            .finish_non_exhaustive()
    }
}

/// Why the engine could not take over sending for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SrtpError {
    /// A profile this module does not implement.
    Profile,
    /// The material has the wrong length for its profile.
    Material,
    /// The crypto library refused a key.
    Key,
}

impl SrtpTx {
    /// The sender context for one side of a DTLS-SRTP session.
    pub(crate) fn new(exported: &Exported) -> Result<SrtpTx, SrtpError> {
        let (key_len, salt_len, gcm) = match exported.profile {
            SrtpProfile::AES128_CM_SHA1_80 => (16, 14, false),
            SrtpProfile::AEAD_AES_128_GCM => (16, 12, true),
            SrtpProfile::AEAD_AES_256_GCM => (32, 12, true),
            _ => return Err(SrtpError::Profile),
        };
        let m = &exported.material;
        if m.len() != 2 * (key_len + salt_len) {
            return Err(SrtpError::Material);
        }
        // [client key, server key, client salt, server salt] (RFC 5764 §4.2);
        // each side sends with its own.
        let (ko, so) = if exported.active {
            (0, 0)
        } else {
            (key_len, salt_len)
        };
        let master = &m[ko..ko + key_len];
        let master_salt = &m[2 * key_len + so..2 * key_len + so + salt_len];
        let derive = |label: u8, out: &mut [u8]| kdf(master, master_salt, label, out);
        let cipher = |key_label: u8, auth_label: u8, salt_label: u8| {
            if gcm {
                let mut key = [0u8; 32];
                let key = &mut key[..key_len];
                derive(key_label, key)?;
                let mut salt = [0u8; 12];
                derive(salt_label, &mut salt)?;
                let alg = if key_len == 16 {
                    &aead::AES_128_GCM
                } else {
                    &aead::AES_256_GCM
                };
                let key = UnboundKey::new(alg, key).map_err(|_| SrtpError::Key)?;
                Ok(Cipher::Gcm {
                    key: LessSafeKey::new(key),
                    salt,
                })
            } else {
                let mut key = [0u8; 16];
                derive(key_label, &mut key)?;
                let mut auth = [0u8; 20];
                derive(auth_label, &mut auth)?;
                let mut salt = [0u8; 14];
                derive(salt_label, &mut salt)?;
                let key = UnboundCipherKey::new(&AES_128, &key).map_err(|_| SrtpError::Key)?;
                Ok(Cipher::Cm(Box::new(CmCipher {
                    key: EncryptingKey::ctr(key).map_err(|_| SrtpError::Key)?,
                    auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &auth),
                    salt,
                })))
            }
        };
        Ok(SrtpTx {
            rtp: cipher(LABEL_RTP_KEY, LABEL_RTP_AUTH, LABEL_RTP_SALT)?,
            rtcp: cipher(LABEL_RTCP_KEY, LABEL_RTCP_AUTH, LABEL_RTCP_SALT)?,
            srtcp_index: 0,
        })
    }

    /// Seals the RTP packet in `pkt` (header of `header_len` bytes, then the
    /// payload) in place and appends the tag. `index` is the packet's 48-bit
    /// SRTP index (rollover counter × 65536 + sequence number).
    pub(crate) fn seal_rtp(
        &self,
        pkt: &mut Vec<u8>,
        header_len: usize,
        index: u64,
    ) -> Result<(), SrtpError> {
        if pkt.len() < header_len || header_len < 12 {
            return Err(SrtpError::Material);
        }
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        match &self.rtp {
            Cipher::Gcm { key, salt } => {
                let roc = (index >> 16) as u32;
                let mut iv = [0u8; 12];
                iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
                iv[6..10].copy_from_slice(&roc.to_be_bytes());
                iv[10..12].copy_from_slice(&(index as u16).to_be_bytes());
                xor(&mut iv, salt);
                let (header, body) = pkt.split_at_mut(header_len);
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(iv),
                        Aad::from(&*header),
                        body,
                    )
                    .map_err(|_| SrtpError::Key)?;
                pkt.extend_from_slice(tag.as_ref());
            }
            Cipher::Cm(cm) => {
                let CmCipher { key, auth, salt } = &**cm;
                let iv = cm_iv(salt, ssrc, index);
                key.less_safe_encrypt(
                    &mut pkt[header_len..],
                    EncryptionContext::Iv128(FixedLength::from(iv)),
                )
                .map_err(|_| SrtpError::Key)?;
                let roc = ((index >> 16) as u32).to_be_bytes();
                let mut ctx = hmac::Context::with_key(auth);
                ctx.update(pkt);
                ctx.update(&roc);
                let tag = ctx.sign();
                pkt.extend_from_slice(&tag.as_ref()[..HMAC_TAG_LEN]);
            }
        }
        Ok(())
    }

    /// Seals the (compound) RTCP packet in `pkt` in place: SRTCP with the next
    /// index, encrypted (E flag set).
    pub(crate) fn seal_rtcp(&mut self, pkt: &mut Vec<u8>) -> Result<(), SrtpError> {
        if pkt.len() < 8 {
            return Err(SrtpError::Material);
        }
        let index = self.srtcp_index;
        self.srtcp_index = (index + 1) & 0x7fff_ffff;
        let e_index = (0x8000_0000 | index).to_be_bytes();
        let ssrc = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        match &self.rtcp {
            Cipher::Gcm { key, salt } => {
                let mut iv = [0u8; 12];
                iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
                iv[8..12].copy_from_slice(&index.to_be_bytes());
                xor(&mut iv, salt);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&pkt[..8]);
                aad[8..].copy_from_slice(&e_index);
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(iv),
                        Aad::from(aad),
                        &mut pkt[8..],
                    )
                    .map_err(|_| SrtpError::Key)?;
                pkt.extend_from_slice(tag.as_ref());
                pkt.extend_from_slice(&e_index);
            }
            Cipher::Cm(cm) => {
                let CmCipher { key, auth, salt } = &**cm;
                let iv = cm_iv(salt, ssrc, index as u64);
                key.less_safe_encrypt(
                    &mut pkt[8..],
                    EncryptionContext::Iv128(FixedLength::from(iv)),
                )
                .map_err(|_| SrtpError::Key)?;
                pkt.extend_from_slice(&e_index);
                let tag = hmac::sign(auth, pkt);
                pkt.extend_from_slice(&tag.as_ref()[..HMAC_TAG_LEN]);
            }
        }
        Ok(())
    }
}

/// The AES-CM IV (RFC 3711 §4.1.1): `salt·2^16 ⊕ SSRC·2^64 ⊕ index·2^16`.
fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[4..8].copy_from_slice(&ssrc.to_be_bytes());
    let index = (index & 0xffff_ffff_ffff).to_be_bytes();
    for (i, b) in index[2..].iter().enumerate() {
        iv[8 + i] ^= b;
    }
    for (v, s) in iv.iter_mut().zip(salt) {
        *v ^= s;
    }
    iv
}

fn xor(a: &mut [u8; 12], b: &[u8; 12]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// The SRTP key derivation function (RFC 3711 §4.3.1, key derivation rate
/// 0; RFC 6188 for 256-bit keys, RFC 7714 §11 for the 96-bit salts): the
/// AES-CM keystream under the master key, starting at
/// `(master salt ⊕ label·2^48)·2^16`.
fn kdf(master: &[u8], master_salt: &[u8], label: u8, out: &mut [u8]) -> Result<(), SrtpError> {
    let alg = match master.len() {
        16 => &AES_128,
        32 => &AES_256,
        _ => return Err(SrtpError::Material),
    };
    if master_salt.len() > 14 {
        return Err(SrtpError::Material);
    }
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    iv[7] ^= label;
    let key = UnboundCipherKey::new(alg, master).map_err(|_| SrtpError::Key)?;
    let key = EncryptingKey::ctr(key).map_err(|_| SrtpError::Key)?;
    out.fill(0);
    key.less_safe_encrypt(out, EncryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| SrtpError::Key)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3711 Appendix B.3: key derivation test vectors.
    #[test]
    fn kdf_matches_rfc3711_b3() {
        let master = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        let mut key = [0u8; 16];
        kdf(&master, &salt, LABEL_RTP_KEY, &mut key).unwrap();
        assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut s = [0u8; 14];
        kdf(&master, &salt, LABEL_RTP_SALT, &mut s).unwrap();
        assert_eq!(s.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth = [0u8; 20];
        kdf(&master, &salt, LABEL_RTP_AUTH, &mut auth).unwrap();
        assert_eq!(
            auth.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    fn exported(profile: SrtpProfile, len: usize, active: bool) -> Exported {
        Exported {
            material: (0..len as u8).collect(),
            profile,
            active,
        }
    }

    /// The GCM IV carries the rollover counter: a packet sealed at index
    /// 65536 + 7 opens only with ROC 1, sequence number 7 (RFC 7714 §8.1).
    #[test]
    fn gcm_iv_carries_the_rollover_counter() {
        let e = exported(SrtpProfile::AEAD_AES_128_GCM, 56, false);
        let tx = SrtpTx::new(&e).unwrap();
        let mut pkt = vec![
            0x80, 111, 0, 7, 0, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4,
        ];
        let plain = pkt.clone();
        tx.seal_rtp(&mut pkt, 12, (1 << 16) | 7).unwrap();
        assert_eq!(pkt.len(), plain.len() + 16);
        assert_ne!(&pkt[12..16], &plain[12..16], "the payload is encrypted");

        // Open it independently with the receiver's derivation of the same keys.
        let m = &e.material;
        let (master, salt) = (&m[16..32], &m[32 + 12..32 + 24]);
        let mut key = [0u8; 16];
        kdf(master, salt, LABEL_RTP_KEY, &mut key).unwrap();
        let mut s = [0u8; 12];
        kdf(master, salt, LABEL_RTP_SALT, &mut s).unwrap();
        let open = |roc: u32| {
            let key = LessSafeKey::new(UnboundKey::new(&aead::AES_128_GCM, &key).unwrap());
            let mut iv = [0u8; 12];
            iv[2..6].copy_from_slice(&0xaabbccddu32.to_be_bytes());
            iv[6..10].copy_from_slice(&roc.to_be_bytes());
            iv[10..12].copy_from_slice(&7u16.to_be_bytes());
            xor(&mut iv, &s);
            let mut body = pkt[12..].to_vec();
            key.open_in_place(
                Nonce::assume_unique_for_key(iv),
                Aad::from(&pkt[..12]),
                &mut body,
            )
            .map(|p| p.to_vec())
        };
        assert!(open(0).is_err());
        assert_eq!(open(1).unwrap(), plain[12..].to_vec());
    }

    #[test]
    fn material_of_the_wrong_length_is_refused() {
        let e = exported(SrtpProfile::AEAD_AES_256_GCM, 56, true);
        assert_eq!(SrtpTx::new(&e).unwrap_err(), SrtpError::Material);
        let ok = exported(SrtpProfile::AEAD_AES_256_GCM, 88, true);
        assert!(SrtpTx::new(&ok).is_ok());
        let cm = exported(SrtpProfile::AES128_CM_SHA1_80, 60, true);
        assert!(SrtpTx::new(&cm).is_ok());
    }

    #[test]
    fn srtcp_index_and_flag_follow_the_tag() {
        let e = exported(SrtpProfile::AEAD_AES_256_GCM, 88, true);
        let mut tx = SrtpTx::new(&e).unwrap();
        for i in 0..3u32 {
            let mut pkt = vec![0x80, 200, 0, 1, 1, 2, 3, 4];
            tx.seal_rtcp(&mut pkt).unwrap();
            assert_eq!(pkt.len(), 8 + 16 + 4);
            assert_eq!(&pkt[24..], &(0x8000_0000 | i).to_be_bytes());
        }
        let mut cm = SrtpTx::new(&exported(SrtpProfile::AES128_CM_SHA1_80, 60, true)).unwrap();
        let mut pkt = vec![0x80, 200, 0, 1, 1, 2, 3, 4, 9, 9, 9, 9];
        cm.seal_rtcp(&mut pkt).unwrap();
        assert_eq!(pkt.len(), 12 + 4 + 10);
        assert_eq!(&pkt[12..16], &0x8000_0000u32.to_be_bytes());
    }
}
