//! RTP header validation (RFC 3550 §5.1), just enough to route a packet.
//!
//! The relay reads the fixed header to learn the SSRC and checks that every
//! length the header declares fits in the datagram. It never reads or
//! rewrites the payload: SRTP (RFC 3711) keeps the RTP header in the clear
//! and appends its auth tag after the encrypted payload, so SRTP packets
//! pass this check unchanged and the relay needs no keys.
//!
//! RTCP is not recognised: an RTCP packet multiplexed onto this port reads
//! as an RTP header whose "SSRC" is part of an NTP timestamp, and is dropped
//! as an unknown SSRC.

use std::fmt;

/// Length of the fixed RTP header, before CSRCs and extension.
pub const FIXED_HEADER_LEN: usize = 12;

/// A synchronisation source identifier: the one identity a media packet
/// carries, and the key of the relay table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ssrc(pub u32);

impl fmt::Display for Ssrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a datagram is not a routable RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("datagram of {0} bytes is shorter than the fixed rtp header")]
    TooShort(usize),
    #[error("rtp version {0}, expected 2")]
    BadVersion(u8),
    #[error("{count} csrcs do not fit in {len} bytes")]
    CsrcOverrun { count: usize, len: usize },
    #[error("header extension of {needed} bytes does not fit in {len} bytes")]
    ExtensionOverrun { needed: usize, len: usize },
    #[error("padding of {padding} bytes does not fit after a {header} byte header in {len} bytes")]
    PaddingOverrun { padding: usize, header: usize, len: usize },
}

/// Checks `packet` is a well-formed RTP packet and returns its SSRC.
///
/// With the P bit set the last byte counts the padding, which must be at
/// least 1 and fit after the header. (An SRTP packet's padding count is
/// encrypted, so SRTP senders, whose stream ciphers need no padding, leave
/// P clear.)
pub fn parse_ssrc(packet: &[u8]) -> Result<Ssrc, RtpError> {
    let len = packet.len();
    let Some(fixed) = packet.get(..FIXED_HEADER_LEN) else {
        return Err(RtpError::TooShort(len));
    };
    let version = fixed[0] >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion(version));
    }
    let has_padding = fixed[0] & 0x20 != 0;
    let has_extension = fixed[0] & 0x10 != 0;
    let csrc_count = usize::from(fixed[0] & 0x0f);

    let mut header = FIXED_HEADER_LEN + 4 * csrc_count;
    if header > len {
        return Err(RtpError::CsrcOverrun { count: csrc_count, len });
    }
    if has_extension {
        // 4 bytes of profile id and length, then `length` 32-bit words.
        let needed = header + 4;
        let Some(ext) = packet.get(header..needed) else {
            return Err(RtpError::ExtensionOverrun { needed, len });
        };
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        let needed = needed + 4 * words;
        if needed > len {
            return Err(RtpError::ExtensionOverrun { needed, len });
        }
        header = needed;
    }
    if has_padding {
        // `header <= len` and `len >= 12` here, so the last byte exists.
        let padding = usize::from(packet[len - 1]);
        if padding == 0 || header + padding > len {
            return Err(RtpError::PaddingOverrun { padding, header, len });
        }
    }
    Ok(Ssrc(u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-2 header with the given first byte flags and SSRC.
    fn header(first: u8, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80 | first, 96, 0, 1, 0, 0, 0, 160];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p
    }

    #[test]
    fn minimal_header_yields_its_ssrc() {
        assert_eq!(parse_ssrc(&header(0, 0xdead_beef)), Ok(Ssrc(0xdead_beef)));
    }

    #[test]
    fn payload_after_header_is_accepted() {
        let mut p = header(0, 7);
        p.extend_from_slice(&[1, 2, 3]);
        assert_eq!(parse_ssrc(&p), Ok(Ssrc(7)));
    }

    #[test]
    fn empty_and_short_datagrams_are_too_short() {
        assert_eq!(parse_ssrc(&[]), Err(RtpError::TooShort(0)));
        assert_eq!(parse_ssrc(&header(0, 7)[..11]), Err(RtpError::TooShort(11)));
    }

    #[test]
    fn versions_other_than_two_are_rejected() {
        for version in [0u8, 1, 3] {
            let mut p = header(0, 7);
            p[0] = (p[0] & 0x3f) | (version << 6);
            assert_eq!(parse_ssrc(&p), Err(RtpError::BadVersion(version)));
        }
    }

    #[test]
    fn csrcs_must_fit() {
        let mut p = header(2, 7);
        p.extend_from_slice(&[0; 7]);
        assert_eq!(parse_ssrc(&p), Err(RtpError::CsrcOverrun { count: 2, len: 19 }));
        p.push(0);
        assert_eq!(parse_ssrc(&p), Ok(Ssrc(7)));
    }

    #[test]
    fn extension_header_must_fit() {
        let p = header(0x10, 7);
        assert_eq!(parse_ssrc(&p), Err(RtpError::ExtensionOverrun { needed: 16, len: 12 }));
    }

    #[test]
    fn extension_body_must_fit() {
        let mut p = header(0x10, 7);
        p.extend_from_slice(&[0xbe, 0xde, 0, 2]);
        p.extend_from_slice(&[0; 7]);
        assert_eq!(parse_ssrc(&p), Err(RtpError::ExtensionOverrun { needed: 24, len: 23 }));
        p.push(0);
        assert_eq!(parse_ssrc(&p), Ok(Ssrc(7)));
    }

    #[test]
    fn extension_after_csrcs_is_measured_from_the_csrcs() {
        let mut p = header(0x11, 7);
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&[0xbe, 0xde, 0, 1]);
        assert_eq!(parse_ssrc(&p), Err(RtpError::ExtensionOverrun { needed: 24, len: 20 }));
        p.extend_from_slice(&[0; 4]);
        assert_eq!(parse_ssrc(&p), Ok(Ssrc(7)));
    }

    #[test]
    fn padding_must_fit_after_the_header() {
        let mut p = header(0x20, 7);
        p.extend_from_slice(&[9, 9, 4]);
        assert_eq!(
            parse_ssrc(&p),
            Err(RtpError::PaddingOverrun {
                padding: 4,
                header: 12,
                len: 15
            })
        );
        p[14] = 3;
        assert_eq!(parse_ssrc(&p), Ok(Ssrc(7)));
    }

    #[test]
    fn zero_padding_count_is_rejected() {
        let mut p = header(0x20, 7);
        p.push(0);
        assert_eq!(
            parse_ssrc(&p),
            Err(RtpError::PaddingOverrun {
                padding: 0,
                header: 12,
                len: 13
            })
        );
    }

    #[test]
    fn srtp_packet_passes_with_opaque_payload_and_auth_tag() {
        let mut p = header(0, 0x0102_0304);
        // Ciphertext bytes that would be nonsense as RTP, then a 10-byte
        // HMAC-SHA1-80 tag: the relay must not care.
        p.extend_from_slice(&[0xff, 0x00, 0x3c, 0x81, 0x7e, 0x10, 0x20, 0x30]);
        p.extend_from_slice(&[0xa5; 10]);
        assert_eq!(parse_ssrc(&p), Ok(Ssrc(0x0102_0304)));
    }
}
