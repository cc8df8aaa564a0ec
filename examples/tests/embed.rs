//! End to end over real loopback sockets and real time: the embed server
//! in-process, two str0m clients (a speaker sending an Opus tone, a listener
//! decoding what it hears), HTTP signaling with a hand-written client.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use media_core::str0m::change::{SdpAnswer, SdpPendingOffer};
use media_core::str0m::format::Codec;
use media_core::str0m::media::{Direction, MediaKind, Mid, Pt};
use media_core::str0m::net::{Protocol, Receive};
use media_core::str0m::rtp::{ExtensionValues, RtpWrite};
use media_core::str0m::{Candidate, Event, Input, Output, Rtc};
use testkit::audio::{ToneListener, ToneSpeaker, FRAME_SAMPLES, TONES};

/// Everything in a test must be done by then.
const LIMIT: Duration = Duration::from_secs(10);

fn server() -> examples::Handle {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    examples::serve(examples::Config {
        udp_port: 0,
        http_port: 0,
        seed: testkit::SEED,
    })
    .expect("server binds")
}

/// One HTTP/1.1 request; returns status, headers (lower-case names) and body.
fn http(
    server: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, HashMap<String, String>, String) {
    let mut s = TcpStream::connect(server).expect("connect");
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let len = body.len();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {server}\r\n{headers}Content-Length: {len}\r\n\r\n{body}");
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).expect("response");
    parse_response(&response)
}

fn parse_response(response: &str) -> (u16, HashMap<String, String>, String) {
    let (head, body) = response.split_once("\r\n\r\n").expect("response head");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    (status.parse().unwrap(), headers, body.to_string())
}

/// A WebRTC client on its own loopback UDP socket: str0m in RTP mode, like
/// `testkit::client::Client` but on real sockets and real time.
struct Client {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    /// The m-line it sends its tone on, the speaker, and the negotiated PT.
    uplink: Option<(Mid, ToneSpeaker, Option<Pt>)>,
    next_frame: Instant,
    seq: u64,
    timeout: Instant,
    connected: bool,
    /// One decoder per incoming stream, as a browser has.
    decoders: HashMap<u32, ToneListener>,
    rtp_received: usize,
    /// Frames heard per tone.
    heard: HashMap<usize, usize>,
}

impl Client {
    /// A client offering a send m-line (if `tone`) and three receive slots.
    fn new(tone: Option<usize>) -> (Client, String) {
        let now = Instant::now();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        let mut api = rtc.sdp_api();
        let uplink = tone.map(|t| {
            let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            (mid, ToneSpeaker::new(TONES[t], 0.5), None)
        });
        for _ in 0..3 {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        let (offer, pending) = api.apply().unwrap();
        let client = Client {
            rtc,
            socket,
            local,
            pending: Some(pending),
            uplink,
            next_frame: now,
            seq: 1,
            timeout: now,
            connected: false,
            decoders: HashMap::new(),
            rtp_received: 0,
            heard: HashMap::new(),
        };
        (client, offer.to_sdp_string())
    }

    fn accept_answer(&mut self, sdp: &str) {
        let answer = SdpAnswer::from_sdp_string(sdp).expect("answer parses");
        let pending = self.pending.take().unwrap();
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
        if let Some((mid, _, pt)) = &mut self.uplink {
            let remote = self.rtc.media(*mid).unwrap().remote_pts().to_vec();
            *pt = self
                .rtc
                .codec_config()
                .iter()
                .find(|p| p.spec().codec == Codec::Opus && remote.contains(&p.pt()))
                .map(|p| p.pt());
        }
    }

    /// Runs the client on real time until `done` holds, `stop` is set or
    /// `deadline` passes; waits on the socket, never sleeps.
    fn run(mut self, done: fn(&Client) -> bool, stop: &AtomicBool, deadline: Instant) -> Self {
        let mut buf = vec![0u8; 2048];
        loop {
            self.drain();
            let now = Instant::now();
            if done(&self) || stop.load(Ordering::Relaxed) || now >= deadline {
                return self;
            }
            if now >= self.timeout {
                self.rtc.handle_input(Input::Timeout(now)).unwrap();
                continue;
            }
            if self.send_due_frame(now) {
                continue;
            }
            // Also wakes every 20 ms to notice `stop`.
            let mut wake = self
                .timeout
                .min(deadline)
                .min(now + Duration::from_millis(20));
            if self.connected && self.uplink.is_some() {
                wake = wake.min(self.next_frame);
            }
            self.socket.set_read_timeout(Some(wake - now)).unwrap();
            if let Ok((n, source)) = self.socket.recv_from(&mut buf) {
                let r = Receive::new(Protocol::Udp, source, self.local, &buf[..n]).unwrap();
                self.rtc
                    .handle_input(Input::Receive(Instant::now(), r))
                    .unwrap();
            }
        }
    }

    /// Writes the next 20 ms Opus frame if one is due. Returns whether it did.
    fn send_due_frame(&mut self, now: Instant) -> bool {
        let Some((mid, speaker, Some(pt))) = &mut self.uplink else {
            return false;
        };
        if !self.connected || self.next_frame > now {
            return false;
        }
        let frame = speaker.next_frame();
        let ts = (self.seq * FRAME_SAMPLES as u64) as u32;
        // The RFC 6464 level, as browsers send it.
        let ext = ExtensionValues {
            audio_level: Some(-(frame.level as i8)),
            voice_activity: Some(frame.voiced),
            ..Default::default()
        };
        let write =
            RtpWrite::new(*pt, self.seq.into(), ts, self.next_frame, frame.payload).ext_vals(ext);
        if let Some(tx) = self.rtc.direct_api().stream_tx_by_mid(*mid, None) {
            tx.write_rtp(write);
        }
        self.seq += 1;
        self.next_frame += Duration::from_millis(20);
        true
    }

    /// Sends what str0m wants sent and handles its events.
    fn drain(&mut self) {
        loop {
            match self.rtc.poll_output().expect("client rtc") {
                Output::Timeout(t) => return self.timeout = t,
                Output::Transmit(t) => {
                    self.socket.send_to(&t.contents, t.destination).unwrap();
                }
                Output::Event(Event::Connected) => {
                    self.connected = true;
                    self.next_frame = Instant::now();
                }
                Output::Event(Event::RtpPacket(p)) => {
                    self.rtp_received += 1;
                    let decoder = self
                        .decoders
                        .entry(*p.header.ssrc)
                        .or_insert_with(|| ToneListener::new(&TONES));
                    if let Ok(Some(tone)) = decoder.decode(&p.payload) {
                        *self.heard.entry(tone).or_default() += 1;
                    }
                }
                Output::Event(_) => {}
            }
        }
    }
}

/// Joins a client to `channel` through the HTTP API. Returns its peer URL.
fn join(server: SocketAddr, client: &mut Client, offer: &str, role: &str, name: &str) -> String {
    let path = format!("/channels/room?role={role}&identity={name}");
    let ctype = "Content-Type: application/sdp\r\n";
    let (status, headers, answer) = http(server, "POST", &path, ctype, offer);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(headers["content-type"], "application/sdp");
    client.accept_answer(&answer);
    headers["location"].clone()
}

#[test]
fn listener_hears_speaker_over_real_sockets() {
    let start = Instant::now();
    let deadline = start + LIMIT;
    let handle = server();
    let addr = handle.http_addr();

    let (mut alice, offer) = Client::new(Some(0));
    let alice_url = join(addr, &mut alice, &offer, "speaker", "alice");
    let (mut bob, offer) = Client::new(None);
    let bob_url = join(addr, &mut bob, &offer, "listener", "bob");
    assert_ne!(alice_url, bob_url);

    let stop = AtomicBool::new(false);
    let bob = thread::scope(|s| {
        let alice = s.spawn(|| alice.run(|_| false, &stop, deadline));
        // 10 frames (200 ms) of alice's tone decoded by bob.
        let heard = |c: &Client| c.heard.get(&0).is_some_and(|n| *n >= 10);
        let bob = bob.run(heard, &stop, deadline);
        stop.store(true, Ordering::Relaxed);
        assert!(alice.join().unwrap().connected, "alice connected");
        bob
    });
    assert!(bob.connected, "bob connected");
    assert!(bob.rtp_received > 0, "bob received RTP");
    assert!(
        bob.heard.get(&0).is_some_and(|n| *n >= 10),
        "bob decoded alice's tone: {:?} in {} packets",
        bob.heard,
        bob.rtp_received
    );

    for url in [&alice_url, &bob_url] {
        assert_eq!(http(addr, "DELETE", url, "", "").0, 204);
        assert_eq!(http(addr, "DELETE", url, "", "").0, 404, "left once");
    }
    eprintln!("end to end in {:?}", start.elapsed());
}

#[test]
fn bad_requests_get_http_errors() {
    let handle = server();
    let addr = handle.http_addr();
    let sdp = "Content-Type: application/sdp\r\n";

    let (status, _, body) = http(addr, "POST", "/channels/x", sdp, "garbage");
    assert_eq!(status, 400);
    assert!(body.contains("invalid SDP offer"), "{body}");
    let (_, offer) = Client::new(Some(0));
    let (status, _, body) = http(addr, "POST", "/channels/x?role=boss", sdp, &offer);
    assert_eq!(
        (status, body.as_str()),
        (400, "role must be speaker or listener\n")
    );
    assert_eq!(http(addr, "POST", "/channels/x", "", &offer).0, 415);
    assert_eq!(http(addr, "GET", "/nowhere", "", "").0, 404);
    assert_eq!(http(addr, "DELETE", "/peers/not-a-number", "", "").0, 404);
    let (status, headers, _) = http(addr, "GET", "/channels/x", "", "");
    assert_eq!((status, headers["allow"].as_str()), (405, "POST"));
    assert_eq!(http(addr, "PUT", "/peers/1", "", "").0, 405);
    let (status, headers, page) = http(addr, "GET", "/", "", "");
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("text/html"));
    assert!(page.contains("RTCPeerConnection"));

    // Over 64 KiB: refused from the header alone, before any body is sent.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        s,
        "POST /channels/x HTTP/1.1\r\n{sdp}Content-Length: 65537\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert_eq!(parse_response(&response).0, 413);

    // Not HTTP at all, and a head that never ends (8 KiB at most are read):
    // answered, not panicked.
    for junk in ["\u{0}\u{1}garbage\r\n\r\n", &"x".repeat(8 * 1024)] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.write_all(junk.as_bytes()).unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 4"), "{response:?}");
    }
    // The server still works afterwards.
    assert_eq!(http(addr, "GET", "/", "", "").0, 200);
}
