"""The browser demo (`engine demo`, `[webrtc]` extra): a local Pipecat bot over Pipecat's small WebRTC transport
with Pipecat's prebuilt client page, showing the lip-synced avatar live in the browser.

One FastAPI app serves Pipecat's prebuilt page (`/client/`) and the endpoints it uses
(pipecat-ai-small-webrtc-prebuilt 2.5.0: `POST /start`, then `POST`/`PATCH /sessions/{id}/api/offer`;
`/api/offer` too, for other Pipecat clients), and at `/` a plain page of its own that speaks the same protocol
without third-party code (`webrtc_page`: the prebuilt page loads Daily's device manager from c.daily.co, so it
needs internet access). Each WebRTC connection runs its own pipeline on the one loaded model:

    transport.input() -> speech (a file read in a loop, or an echo of the microphone) -> LatentSyncVideoService
        -> PlaybackMonitor -> transport.output()  (video at the source's size, 25 fps)

The transport's video output is not "live" (`video_out_is_live` False): Pipecat 1.14 shows an image that waits for
its audio (`sync_with_audio`, as the service sends speech frames) only in that mode, where it sends the latest
image at the frame rate.

No ICE servers are offered (no STUN/TURN): the browser and the server meet over the local network only.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

import numpy as np

from engine.extras import require

require("webrtc", what="the browser demo (engine demo)")

from fastapi import FastAPI, Request, Response  # noqa: E402 - after the extra check
from fastapi.responses import HTMLResponse  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.runner import WorkerRunner  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.transports.base_transport import TransportParams  # noqa: E402
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection  # noqa: E402
from pipecat.transports.smallwebrtc.request_handler import (  # noqa: E402
    IceCandidate,
    SmallWebRTCPatchRequest,
    SmallWebRTCRequest,
    SmallWebRTCRequestHandler,
)
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport  # noqa: E402

from engine.constants import FPS  # noqa: E402
from engine.integrations.demo_speech import EchoSpeech, PlaybackMonitor, SpeechFileLoop  # noqa: E402
from engine.integrations.pipecat import LatentSyncVideoService  # noqa: E402
from engine.stream.config import StreamConfig  # noqa: E402

__all__ = ["DemoBot", "create_app", "serve"]

log = logging.getLogger(__name__)
CLIENT_PATH = "/client/"


@dataclass(frozen=True)
class DemoBot:
    """What every connection's pipeline is made of: the loaded model, the avatar and the speech.

    `source`: an avatar directory, a video path or frames uint8 [T,H,W,3]; `size`: its (width, height);
    `speech`: int16 [n] at 16 kHz read in a loop, or None to echo the microphone."""

    sync: object
    source: object
    size: tuple[int, int]
    config: StreamConfig
    speech: np.ndarray | None = None
    face: object = None
    bots: set = field(default_factory=set, compare=False)  # running pipelines (asyncio tasks)

    def pipeline(self, connection: SmallWebRTCConnection) -> PipelineWorker:
        width, height = self.size
        transport = SmallWebRTCTransport(webrtc_connection=connection, params=TransportParams(
            audio_in_enabled=self.speech is None, audio_out_enabled=True, video_out_enabled=True,
            video_out_width=width, video_out_height=height, video_out_framerate=FPS))
        monitor = PlaybackMonitor()
        video = LatentSyncVideoService(sync=self.sync, source=self.source, config=self.config, face=self.face)

        def stats() -> dict | None:
            return video.session.stats if video.session is not None else None

        speaker = (EchoSpeech(monitor, stats=stats) if self.speech is None
                   else SpeechFileLoop(self.speech, monitor, stats=stats))
        worker = PipelineWorker(Pipeline([transport.input(), speaker, video, monitor, transport.output()]),
                                params=PipelineParams(audio_in_sample_rate=16_000), cancel_on_idle_timeout=False)

        @transport.event_handler("on_client_connected")
        async def on_client_connected(transport, client) -> None:
            log.info("demo: browser connected (%s)", connection.pc_id)
            if isinstance(speaker, SpeechFileLoop):
                speaker.start()

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(transport, client) -> None:
            log.info("demo: browser left (%s)", connection.pc_id)
            await worker.cancel()

        return worker

    async def run(self, connection: SmallWebRTCConnection) -> None:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.pipeline(connection))
        await runner.run()

    def start(self, connection: SmallWebRTCConnection) -> None:
        task = asyncio.get_running_loop().create_task(self.run(connection), name=f"demo-bot-{connection.pc_id}")
        self.bots.add(task)
        task.add_done_callback(self.bots.discard)


def create_app(bot: DemoBot) -> FastAPI:
    """The pages (/ and the prebuilt /client/) and the endpoints their Connect buttons use."""
    from contextlib import asynccontextmanager

    from pipecat_ai_small_webrtc_prebuilt.frontend import SmallWebRTCPrebuiltUI

    handler = SmallWebRTCRequestHandler()  # no ICE servers: local network only
    sessions: set[str] = set()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for task in list(bot.bots):
            task.cancel()
        await handler.close()

    app = FastAPI(lifespan=lifespan)
    app.mount("/client", SmallWebRTCPrebuiltUI)

    @app.get("/", include_in_schema=False)
    async def page():
        from engine.integrations.webrtc_page import PAGE

        return HTMLResponse(PAGE)

    @app.get("/demo/config")
    async def demo_config():
        """What the page needs to know: whether the bot echoes the microphone (else it reads a file)."""
        return {"echo": bot.speech is None}

    @app.post("/start")
    async def start(request: Request):
        """The page's first call: a session id (and no ICE servers, whatever it asks for)."""
        session_id = str(uuid.uuid4())
        sessions.add(session_id)
        return {"sessionId": session_id, "iceConfig": {"iceServers": []}}

    @app.post("/api/offer")
    async def offer(request: SmallWebRTCRequest):
        async def connected(connection: SmallWebRTCConnection) -> None:
            bot.start(connection)

        return await handler.handle_web_request(request=request, webrtc_connection_callback=connected)

    @app.patch("/api/offer")
    async def ice_candidate(request: SmallWebRTCPatchRequest):
        await handler.handle_patch_request(request)
        return {"status": "success"}

    @app.api_route("/sessions/{session_id}/api/offer", methods=["POST", "PATCH"])
    async def session_offer(session_id: str, request: Request):
        """The page's offer (POST) and trickled ICE candidates (PATCH), under the id /start gave it."""
        if session_id not in sessions:
            return Response(content="unknown session id (call /start first)", status_code=404)
        data = await request.json()
        if request.method == "PATCH":
            return await ice_candidate(SmallWebRTCPatchRequest(
                pc_id=data["pc_id"], candidates=[IceCandidate(**c) for c in data.get("candidates", [])]))
        return await offer(SmallWebRTCRequest(
            sdp=data["sdp"], type=data["type"], pc_id=data.get("pc_id"), restart_pc=data.get("restart_pc"),
            request_data=data.get("request_data") or data.get("requestData")))

    return app


def serve(bot: DemoBot, *, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the demo until interrupted (Ctrl-C)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(bot), host=host, port=port, log_level="warning"))
    print(f"engine demo: open http://{host}:{port}/ in a browser and press Connect (Pipecat's prebuilt page, which "
          f"needs internet access for its device manager: http://{host}:{port}{CLIENT_PATH}); Ctrl-C stops", flush=True)
    server.run()
