"""Interop with aiortc (the Python WebRTC stack) over WHIP and WHEP.

Publishers WHIP-publish a sine tone each (aiortc encodes it with Opus and
sends the RFC 6464 audio level with the voice-activity bit always 0);
listeners WHEP-listen with several recvonly audio m-lines (slots), decode
what arrives on every track and name the tones they hear. Passes when every
listener hears every publisher's tone for at least MIN_SECONDS.

What it exercises: a WHEP answer with several bundled m-sections (aiortc
takes the ICE candidates of the last one it reads, so every bundled section
must carry them), and selection of voices whose V bit is 0 (level decides).

Run by scripts/interop-test.sh inside a network namespace whose `lo` carries
127.0.0.2 as well: aiortc never gathers a 127.0.0.1 candidate, and test
packets must stay on 127.0.0.0/8. Prints one JSON line with what each
listener heard; exit 0 on success, 1 on failure.
"""

import argparse
import array
import asyncio
import fractions
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from av import AudioFrame

RATE = 48000
FRAME = 960  # 20 ms
# Far apart, and none a harmonic of another.
TONES = [440.0, 620.0, 830.0]
# A frame counts for a tone when it carries this share of the frame's energy.
TONE_SHARE = 0.6
# RMS below this (of 32767) is silence, not a tone.
SILENCE_RMS = 300.0
MIN_SECONDS = 2.0


class ToneTrack(MediaStreamTrack):
    """A 48 kHz mono sine, in real time, 20 ms a frame."""

    kind = "audio"

    def __init__(self, freq: float, amplitude: float = 0.3):
        super().__init__()
        self.freq = freq
        self.amplitude = amplitude
        self.sent = 0
        self.start = None

    async def recv(self) -> AudioFrame:
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.sent / RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        samples = array.array(
            "h",
            (
                int(32767 * self.amplitude * math.sin(2 * math.pi * self.freq * (self.sent + i) / RATE))
                for i in range(FRAME)
            ),
        )
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(samples.tobytes())
        frame.pts = self.sent
        frame.sample_rate = RATE
        frame.time_base = fractions.Fraction(1, RATE)
        self.sent += FRAME
        return frame


def goertzel(x, rate, freq):
    """Power of one frequency in a block of samples."""
    k = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for v in x:
        s1, s2 = v + k * s1 - s2, s1
    return s1 * s1 + s2 * s2 - k * s1 * s2


def classify(frame: AudioFrame, tones):
    """The index of the tone a decoded frame carries, or None."""
    channels = len(frame.layout.channels) if frame.format.is_packed else 1
    # The plane's buffer may be longer than the samples it holds.
    raw = array.array("h", bytes(frame.planes[0])[: 2 * channels * frame.samples])
    # Packed s16: the first channel is every `channels`th sample.
    x = raw[::channels]
    n = len(x)
    if n == 0:
        return None
    energy = sum(v * v for v in x)
    if math.sqrt(energy / n) < SILENCE_RMS:
        return None
    rate = frame.sample_rate or RATE
    # A pure tone of power P puts about n * energy / 2 into its bin.
    best, share = None, 0.0
    for i, f in enumerate(tones):
        s = goertzel(x, rate, f) * 2 / (n * energy)
        if s > share:
            best, share = i, s
    return best if share >= TONE_SHARE else None


def post_sdp(url: str, sdp: str):
    """POSTs an offer; returns (answer, resource URL)."""
    req = urllib.request.Request(
        url, data=sdp.encode(), method="POST", headers={"Content-Type": "application/sdp"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        if r.status != 201:
            raise RuntimeError(f"{url}: HTTP {r.status}")
        location = r.headers.get("Location")
        return r.read().decode(), urllib.parse.urljoin(url, location) if location else None


async def negotiate(pc: RTCPeerConnection, url: str):
    # aiortc gathers all its candidates in setLocalDescription: no trickle.
    await pc.setLocalDescription(await pc.createOffer())
    loop = asyncio.get_running_loop()
    answer, resource = await loop.run_in_executor(None, post_sdp, url, pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return answer, resource


class Listener:
    def __init__(self, name: str, slots: int, tones):
        self.name = name
        self.tones = tones
        # No STUN server: aiortc would otherwise use a public one.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for _ in range(slots):
            self.pc.addTransceiver("audio", direction="recvonly")
        # tone index -> frames heard, per track
        self.heard = {}
        self.frames = 0
        self.tasks = []
        self.pc.on("track", self.on_track)
        self.answer = ""

    def on_track(self, track):
        counts = self.heard.setdefault(len(self.heard), {})
        self.tasks.append(asyncio.ensure_future(self.read(track, counts)))

    async def read(self, track, counts):
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            self.frames += 1
            t = classify(frame, self.tones)
            if t is not None:
                counts[t] = counts.get(t, 0) + 1

    def seconds(self, tone: int) -> float:
        """Seconds of a tone heard, on all tracks."""
        return sum(c.get(tone, 0) for c in self.heard.values()) * FRAME / RATE


async def run(args) -> int:
    base = args.url.rstrip("/")
    tones = TONES[: args.publishers]
    publishers = []
    resources = []
    for i, f in enumerate(tones):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(ToneTrack(f), direction="sendonly")
        _, res = await negotiate(pc, f"{base}/whip/{args.channel}")
        publishers.append(pc)
        resources.append(res)
    listeners = [Listener(f"listener-{i}", args.slots, tones) for i in range(args.listeners)]
    for lst in listeners:
        lst.answer, res = await negotiate(lst.pc, f"{base}/whep/{args.channel}")
        resources.append(res)

    def done():
        return all(lst.seconds(t) >= MIN_SECONDS for lst in listeners for t in range(len(tones)))

    deadline = time.monotonic() + args.timeout
    while not done() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    ok = done()

    report = {
        "ok": ok,
        "publishers": [pc.connectionState for pc in publishers],
        "listeners": {
            lst.name: {
                "state": lst.pc.connectionState,
                "frames": lst.frames,
                "seconds_per_tone": {f"{tones[t]:.0f}Hz": round(lst.seconds(t), 2) for t in range(len(tones))},
                "answer_candidate_sections": answer_sections_with_candidates(lst.answer),
            }
            for lst in listeners
        },
    }
    print(json.dumps(report))
    for lst in listeners:
        for t in lst.tasks:
            t.cancel()
    for pc in publishers + [lst.pc for lst in listeners]:
        await pc.close()
    for res in resources:
        if res:
            try:
                urllib.request.urlopen(urllib.request.Request(res, method="DELETE"), timeout=5)
            except (urllib.error.URLError, OSError):
                pass
    return 0 if ok else 1


def answer_sections_with_candidates(sdp: str):
    """Per m-section of an answer: whether it carries an ICE candidate."""
    sections = sdp.split("\nm=")[1:]
    return [("a=candidate:" in s) for s in sections]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:18090")
    p.add_argument("--channel", default="interop")
    p.add_argument("--publishers", type=int, default=2)
    p.add_argument("--listeners", type=int, default=3)
    p.add_argument("--slots", type=int, default=3)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for every tone")
    args = p.parse_args()
    if not 1 <= args.publishers <= len(TONES):
        p.error(f"--publishers must be 1..{len(TONES)}")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
