//! Realistic session descriptions (~3 KB, like a browser's audio+video offer) and ICE
//! candidates, so that the relayed frames have the size and shape of real calls.

use rand::Rng;
use signal_proto::roap::IceCandidate;

fn token(rng: &mut impl Rng, len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..len)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}

fn fingerprint(rng: &mut impl Rng) -> String {
    (0..32)
        .map(|_| format!("{:02X}", rng.random::<u8>()))
        .collect::<Vec<_>>()
        .join(":")
}

/// The ICE credentials and DTLS fingerprint of one endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub ufrag: String,
    pwd: String,
    fingerprint: String,
    session: u64,
    ssrc_audio: u32,
    ssrc_video: u32,
    cname: String,
    stream: String,
}

impl Endpoint {
    pub fn random() -> Endpoint {
        let mut rng = rand::rng();
        Endpoint {
            ufrag: token(&mut rng, 4),
            pwd: token(&mut rng, 24),
            fingerprint: fingerprint(&mut rng),
            session: rng.random_range(1_000_000_000_000_000u64..9_000_000_000_000_000),
            ssrc_audio: rng.random(),
            ssrc_video: rng.random(),
            cname: token(&mut rng, 16),
            stream: format!(
                "{}-{}-{}",
                token(&mut rng, 8),
                token(&mut rng, 4),
                token(&mut rng, 12)
            ),
        }
    }

    /// An offer (`setup:actpass`) or answer (`setup:active`) with one audio and one video
    /// section, as Chrome writes them (trimmed to the common codecs): about 3 KB.
    pub fn sdp(&self, answer: bool, version: u64) -> String {
        let setup = if answer { "active" } else { "actpass" };
        let Endpoint {
            ufrag,
            pwd,
            fingerprint,
            session,
            ssrc_audio,
            ssrc_video,
            cname,
            stream,
        } = self;
        let mut s = String::with_capacity(3500);
        s.push_str(&format!(
            "v=0\r\no=- {session} {version} IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
             a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS {stream}\r\n"
        ));
        let common = format!(
            "c=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:{ufrag}\r\n\
             a=ice-pwd:{pwd}\r\na=ice-options:trickle\r\na=fingerprint:sha-256 {fingerprint}\r\n\
             a=setup:{setup}\r\n"
        );
        s.push_str("m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n");
        s.push_str(&common);
        s.push_str(
            "a=mid:0\r\n\
             a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
             a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
             a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
             a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n",
        );
        s.push_str(&format!(
            "a=sendrecv\r\na=msid:{stream} {stream}-audio\r\na=rtcp-mux\r\n\
             a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n\
             a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\n\
             a=fmtp:63 111/111\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:110 telephone-event/48000\r\n\
             a=rtpmap:126 telephone-event/8000\r\na=ssrc:{ssrc_audio} cname:{cname}\r\n\
             a=ssrc:{ssrc_audio} msid:{stream} {stream}-audio\r\n"
        ));
        s.push_str(
            "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 108 109 127 125 39 40\r\n",
        );
        s.push_str(&common);
        s.push_str(
            "a=mid:1\r\n\
             a=extmap:14 urn:ietf:params:rtp-hdrext:toffset\r\n\
             a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
             a=extmap:13 urn:3gpp:video-orientation\r\n\
             a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
             a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay\r\n\
             a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n",
        );
        s.push_str(&format!(
            "a=sendrecv\r\na=msid:{stream} {stream}-video\r\na=rtcp-mux\r\na=rtcp-rsize\r\n"
        ));
        for (pt, codec, fmtp) in [
            (96, "VP8/90000", None),
            (98, "VP9/90000", Some("profile-id=0")),
            (
                102,
                "H264/90000",
                Some("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
            ),
            (
                104,
                "H264/90000",
                Some("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
            ),
            (39, "AV1/90000", Some("level-idx=5;profile=0;tier=0")),
        ] {
            s.push_str(&format!(
                "a=rtpmap:{pt} {codec}\r\na=rtcp-fb:{pt} goog-remb\r\na=rtcp-fb:{pt} transport-cc\r\n\
                 a=rtcp-fb:{pt} ccm fir\r\na=rtcp-fb:{pt} nack\r\na=rtcp-fb:{pt} nack pli\r\n"
            ));
            if let Some(f) = fmtp {
                s.push_str(&format!("a=fmtp:{pt} {f}\r\n"));
            }
            s.push_str(&format!(
                "a=rtpmap:{} rtx/90000\r\na=fmtp:{} apt={pt}\r\n",
                pt + 1,
                pt + 1
            ));
        }
        s.push_str(&format!(
            "a=ssrc-group:FID {ssrc_video} {}\r\na=ssrc:{ssrc_video} cname:{cname}\r\n\
             a=ssrc:{ssrc_video} msid:{stream} {stream}-video\r\n",
            ssrc_video.wrapping_add(1)
        ));
        s
    }

    /// The `n`-th host/srflx candidate of this endpoint.
    pub fn candidate(&self, n: usize) -> IceCandidate {
        let mut rng = rand::rng();
        let port: u16 = rng.random_range(49_152..65_535);
        let foundation: u32 = rng.random();
        let (typ, addr, prio) = if n % 2 == 0 {
            ("host", format!("192.0.2.{}", 1 + n % 250), 2_122_260_223u32)
        } else {
            (
                "srflx",
                format!("198.51.100.{} rport 9 raddr 0.0.0.0", 1 + n % 250),
                1_686_052_607,
            )
        };
        let (host, rest) = addr.split_once(' ').unwrap_or((&addr, ""));
        let rest = if rest.is_empty() {
            String::new()
        } else {
            format!(" {rest}")
        };
        IceCandidate {
            candidate: format!(
                "candidate:{foundation} 1 udp {prio} {host} {port} typ {typ}{rest} generation 0 ufrag {} network-id 1",
                self.ufrag
            ),
            sdp_mid: Some((n % 2).to_string()),
            sdp_mline_index: Some((n % 2) as u16),
            username_fragment: Some(self.ufrag.clone()),
            extra: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_has_the_size_of_a_real_offer() {
        let e = Endpoint::random();
        let offer = e.sdp(false, 1);
        assert!(
            (2_500..4_000).contains(&offer.len()),
            "{} bytes",
            offer.len()
        );
        assert!(offer.starts_with("v=0\r\n"));
        assert!(offer.contains("a=setup:actpass"));
        assert!(e.sdp(true, 2).contains("a=setup:active"));
        let c = e.candidate(1);
        assert!(c.candidate.starts_with("candidate:"));
        assert!(c.candidate.contains("typ srflx"));
        assert_eq!(c.username_fragment.as_deref(), Some(e.ufrag.as_str()));
    }
}
