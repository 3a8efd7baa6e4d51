"""`engine demo` and a headless Chromium driven over the DevTools protocol, for the browser demo's tests and its
latency benchmark (benchmarks/webrtc_demo.py). Every process started here runs in its own process group and is
ended (with its children) when its `with` block ends; every file goes under the folder given.

The demo's inputs are demo1's first 320x320 crop as a still clip (so any change of the mouth is the lip-sync's),
its face track (no face detector needed), and speech from demo1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

CHROMIUM = next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)
FRAMES = 10
SPEECH = slice(8_000, 13_120)  # 0.32 s of demo1 (voiced; it starts with 0.4 s of silence): one live chunk of 8 frames
MICROPHONE = slice(6_400, 19_200)  # 0.8 s of demo1 for the fake microphone
MOUTH = (119, 140, 199, 200)  # x0, y0, x1, y1 in the 320x320 demo1 crop (below the nose, around the lips)
BACKGROUND = (0, 0, 30, 30)  # a corner outside the face crop: passed through unchanged
TALKING = 15.0  # mean |difference| to the idle frame in the mouth box above which a frame is lip-synced
SERVER_START_S = 180


def write_demo_inputs(golden: Path, root: Path) -> dict:
    """Write the still clip, its face track, the speech WAV and the microphone WAV under `root`."""
    import av
    from safetensors.numpy import load_file

    frame = np.load(golden / "e2e_demo1" / "inputs_frames.npz")["frames"][0]  # uint8 [320,320,3]
    inputs = load_file(golden / "e2e_demo1" / "inputs.safetensors")
    clip, track, wav, mic = root / "face.mp4", root / "face-track.json", root / "speech.wav", root / "microphone.wav"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 320, "yuv420p"
        stream.options = {"crf": "12"}
        for _ in range(FRAMES):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    track.write_text(json.dumps({"landmarks3": [inputs["landmarks3"][0].tolist()] * FRAMES}))
    speech = np.round(inputs["audio_16k"] * 32767).astype(np.int16)
    write_wav(wav, speech[SPEECH])
    # Chromium loops the file: 0.5 s quiet, 0.8 s of voice, 2 s quiet
    write_wav(mic, np.concatenate([np.zeros(8_000, np.int16), speech[MICROPHONE], np.zeros(32_000, np.int16)]))
    return {"clip": clip, "track": track, "speech": wav, "microphone": mic, "frame": frame}


def write_wav(path: Path, pcm: np.ndarray) -> None:
    """int16 mono [n] at 16 kHz as a WAV file."""
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(pcm.tobytes())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen | None) -> None:
    """End a process we started and every child of it (its own process group), politely first."""
    if process is None or process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else ""


@contextlib.contextmanager
def running_demo(inputs: dict, folder: Path, *, echo: bool = False, extra: tuple[str, ...] = ()):
    """`engine demo` on a free loopback port reading the speech file (or, `echo`, speaking back the microphone):
    tiny-random, one step, chunks of 8. Yields {"url", "log", "process"}."""
    port = free_port()
    log = folder / "server.log"
    command = [sys.executable, "-m", "engine", "demo", "--host", "127.0.0.1", "--port", str(port),
               "--source", str(inputs["clip"]), "--face", str(inputs["track"]), "--model", "tiny-random",
               "--device", "cpu", "--steps", "1", "--guidance", "1", "--chunk-frames", "8", "--offline",
               *([] if echo else ["--speech", str(inputs["speech"])]), *extra]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert server.poll() is None, f"engine demo exited ({server.returncode}):\n{tail(log)}"
            assert time.monotonic() < deadline, f"engine demo did not serve {base}/ in {SERVER_START_S} s:\n{tail(log)}"
            try:
                with urllib.request.urlopen(base + "/", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield {"url": base, "log": log, "process": server}
    finally:
        stop(server)


class DevTools:
    """A minimal Chrome DevTools protocol client over one page target's WebSocket."""

    def __init__(self, ws) -> None:
        self.ws = ws  # a websockets.sync.client connection to the page target
        self.next_id = 0
        self.events: list[dict] = []  # notifications received while waiting for replies (console messages...)

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            if "method" in reply:
                self.events.append(reply)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, f"{expression[:80]}...: {result['exceptionDetails']}"
        return result["result"].get("value")


@contextlib.contextmanager
def running_chromium(folder: Path, *flags: str):
    """Headless Chromium with fake camera/microphone and auto-granted permissions, its profile and HOME under
    `folder`; yields a DevTools client of its page."""
    assert CHROMIUM is not None, "no chromium/chromium-browser binary on PATH"
    profile = folder / "chromium-profile"
    # --no-sandbox: Chromium refuses to run as root with its sandbox, and containers often lack the namespaces it
    # needs; it only ever opens the demo's own pages here
    command = [CHROMIUM, "--headless=new", "--no-sandbox", "--use-fake-ui-for-media-stream",
               "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required", "--mute-audio",
               f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-allow-origins=*",
               "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
               "--disable-background-networking", "--disable-sync", "--disable-component-update",
               "--disable-breakpad", "--disable-features=WebRtcHideLocalIpsWithMdns", "--window-size=1280,900",
               *flags, "about:blank"]
    log = folder / "chromium.log"
    with open(log, "wb") as out:
        chromium = subprocess.Popen(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, "HOME": str(folder / "home")})
    try:
        active = profile / "DevToolsActivePort"  # written by Chromium once it listens (a fresh profile has none)
        deadline = time.monotonic() + 60
        while not (active.is_file() and active.read_text().strip()):
            assert chromium.poll() is None, f"chromium exited ({chromium.returncode}):\n{tail(log)}"
            assert time.monotonic() < deadline, f"chromium opened no DevTools port in 60 s:\n{tail(log)}"
            time.sleep(0.2)
        port = int(active.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            pages = [t for t in json.load(reply) if t["type"] == "page"]
        from websockets.sync.client import connect

        with connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=20) as ws:
            yield DevTools(ws)
    finally:
        stop(chromium)


def wait_for(check, timeout: float, what: str, diagnose=lambda: ""):
    """Poll `check()` until it returns something true (returned), or fail saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout:.0f} s\n{diagnose()}")


# In the page: every decoded frame of the bot's 320x320 <video> is drawn to a canvas. The 25th is the idle
# reference; for each later frame the mean absolute difference to it in the mouth and background boxes is taken:
# their maxima are kept, and the wall time (ms since the epoch) of each first frame of a run of talking frames.
SAMPLER = """
(() => {
  const video = [...document.querySelectorAll('video')].find(v => v.videoWidth === 320);
  if (!video) return false;
  if (window.__demo) return true;
  const canvas = document.createElement('canvas');
  canvas.width = 320; canvas.height = 320;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const state = window.__demo = {frames: 0, mouth: 0, background: 0, ref: null, talking: false, talkStarts: []};
  const box = (data, [x0, y0, x1, y1]) => { const out = [];
    for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) { const i = 4 * (y * 320 + x);
      out.push(data[i], data[i + 1], data[i + 2]); } return out; };
  const diff = (a, b) => { let s = 0; for (let i = 0; i < a.length; i++) s += Math.abs(a[i] - b[i]);
    return s / a.length; };
  const sample = () => {
    const now = performance.timeOrigin + performance.now();
    ctx.drawImage(video, 0, 0, 320, 320);
    const data = ctx.getImageData(0, 0, 320, 320).data;
    const mouth = box(data, MOUTH), background = box(data, BACKGROUND);
    state.frames += 1;
    if (state.frames < 25) {} else if (!state.ref) { state.ref = {mouth, background}; }
    else {
      const m = diff(mouth, state.ref.mouth);
      state.mouth = Math.max(state.mouth, m);
      state.background = Math.max(state.background, diff(background, state.ref.background));
      const talking = m > TALKING;
      if (talking && !state.talking) state.talkStarts.push(now);
      state.talking = talking;
    }
    video.requestVideoFrameCallback(sample);
  };
  video.requestVideoFrameCallback(sample);
  return true;
})()
""".replace("MOUTH", json.dumps(list(MOUTH))).replace("BACKGROUND", json.dumps(list(BACKGROUND))).replace(
    "TALKING", str(TALKING))

STATE = """(() => { const s = window.__demo; const v = [...document.querySelectorAll('video')]
  .find(v => v.videoWidth === 320);
  return s ? {frames: s.frames, mouth: s.mouth, background: s.background, talkStarts: s.talkStarts,
              time: v ? v.currentTime : 0} : null; })()"""


def connect_and_see_frames(browser: DevTools, url: str, diagnose) -> None:
    """Open the demo's page, press Connect, and wait until the bot's frames arrive and keep coming."""
    browser.call("Page.navigate", url=url + "/")
    wait_for(lambda: browser.js("!!document.getElementById('connect')"), 30, "the demo page loads", diagnose)
    browser.js("document.getElementById('connect').click()")
    wait_for(lambda: browser.js(SAMPLER), 90, "the bot's 320x320 video appears on the page", diagnose)
    first = wait_for(lambda: (s := browser.js(STATE)) and s["frames"] >= 30 and s, 60, "frames arrive", diagnose)
    later = wait_for(lambda: (s := browser.js(STATE)) and s["time"] > first["time"] + 0.5 and s, 30,
                     "the video plays on", diagnose)
    assert later["frames"] > first["frames"]
