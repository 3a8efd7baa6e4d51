"""`engine demo` in a real headless Chromium: the demo's page connects over WebRTC (loopback, fake media devices),
the lip-synced avatar's frames arrive, a screenshot shows the source's face, and the mouth region changes while the
bot reads a speech file; Pipecat's prebuilt page is served and renders. The server runs as the printed command does
(a subprocess; tiny-random, one step); Chromium is driven over the DevTools protocol (websockets). Skips where no
Chromium binary is installed. The harness is tests/browser_helpers.py.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest

for _module in ("pipecat", "aiortc", "fastapi", "uvicorn", "pipecat_ai_small_webrtc_prebuilt", "websockets"):
    pytest.importorskip(_module, reason="the [webrtc] extra is not installed")

from browser_helpers import (  # noqa: E402
    CHROMIUM,
    STATE,
    TALKING,
    DevTools,
    connect_and_see_frames,
    running_chromium,
    running_demo,
    tail,
    wait_for,
    write_demo_inputs,
)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium/chromium-browser binary on PATH "
                                                          "(Debian: apt-get install chromium)")
SPEECH_WAIT_S = 150


@pytest.fixture(scope="module")
def demo_inputs(golden, tmp_path_factory):
    """A still 320x320 face clip (demo1's first crop, 10 frames), its face track, and 0.32 s of demo1's speech."""
    return write_demo_inputs(golden, tmp_path_factory.mktemp("demo-inputs"))


@pytest.fixture
def demo_server(demo_inputs, tmp_path):
    """`engine demo` on a free loopback port, as a user runs it; stopped (with its children) after the test."""
    with running_demo(demo_inputs, tmp_path) as server:
        yield server


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with fake camera/microphone and auto-granted permissions, loopback only; killed after."""
    with running_chromium(tmp_path) as tools:
        yield tools


def _see_the_mouth_move(browser: DevTools, diagnose) -> None:
    """Wait until a decoded frame's mouth box differs from the idle reference frame while its background does not."""
    talking = wait_for(lambda: (s := browser.js(STATE)) and s["mouth"] > TALKING and s, SPEECH_WAIT_S,
                       "the mouth region changes while speech plays", lambda: f"{browser.js(STATE)}\n{diagnose()}")
    assert talking["background"] < 6 and talking["mouth"] > 3 * talking["background"], talking


def _screenshot_of_video(tools: DevTools) -> np.ndarray:
    """The bot's <video> as shown on the page, RGB [h,w,3], from a DevTools screenshot."""
    import cv2

    rect = tools.js("""(() => { const v = [...document.querySelectorAll('video')].find(v => v.videoWidth === 320);
      const r = v.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()""")
    shot = tools.call("Page.captureScreenshot", format="png", clip={
        "x": rect[0], "y": rect[1], "width": rect[2], "height": rect[3], "scale": 1})
    image = cv2.imdecode(np.frombuffer(base64.b64decode(shot["data"]), np.uint8), cv2.IMREAD_COLOR)
    return image[:, :, ::-1]


def test_the_browser_demo_shows_live_lip_synced_frames(demo_server, browser, demo_inputs, tmp_path):
    import cv2

    def diagnose() -> str:
        return f"server log:\n{tail(demo_server['log'])}"

    browser.call("Page.enable")
    # Pipecat's prebuilt page is served and renders (connecting needs Daily's bundle from c.daily.co: not here)
    browser.call("Page.navigate", url=demo_server["url"] + "/client/")
    wait_for(lambda: browser.js("[...document.querySelectorAll('button')].some(b => /^connect$/i.test(b.textContent))"),
             60, "Pipecat's prebuilt page shows its Connect button", diagnose)

    # the demo's own page connects over WebRTC and shows the bot's video
    connect_and_see_frames(browser, demo_server["url"], diagnose)

    # the screenshot shows the source's face (idle frames pass the source through; VP8 and scaling blur it)
    shown = _screenshot_of_video(browser)
    cv2.imwrite(str(tmp_path / "shown.png"), shown[:, :, ::-1])  # kept with the test's folder, to look at
    source = cv2.resize(demo_inputs["frame"], (shown.shape[1], shown.shape[0]), interpolation=cv2.INTER_AREA)
    shown_f, source_f = shown.astype(np.float32), source.astype(np.float32)
    correlation = np.corrcoef(shown_f.reshape(-1), source_f.reshape(-1))[0, 1]
    assert shown_f.std() > 20, "the video region of the screenshot is blank"
    assert correlation > 0.8 and np.abs(shown_f - source_f).mean() < 25, \
        f"the screenshot does not show the source face (correlation {correlation:.2f})"

    # while the speech plays, the mouth region changes (tiny-random paints noise there); the background does not
    _see_the_mouth_move(browser, diagnose)


@pytest.mark.slow  # not needed for the Done-when: the same path with the microphone as the speech
def test_the_browser_demo_echoes_the_microphone(demo_inputs, tmp_path):
    """Without --speech, the demo speaks back what Chromium's (fake, file-fed) microphone said, over WebRTC."""
    with running_demo(demo_inputs, tmp_path, echo=True) as server, \
            running_chromium(tmp_path, f"--use-file-for-fake-audio-capture={demo_inputs['microphone']}") as browser:
        def diagnose() -> str:
            return f"server log:\n{tail(server['log'])}"

        browser.call("Page.enable")
        connect_and_see_frames(browser, server["url"], diagnose)
        _see_the_mouth_move(browser, diagnose)
        assert "demo: utterance 1," in server["log"].read_text(), "the echo stage heard no utterance"
