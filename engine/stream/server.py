"""WebSocket front end over streaming sessions: speech in, JPEG frames out, health endpoints, a session cap.

Protocol (one session per connection, path `/` or `/stream`):

client -> server
  text   {"type": "start", "source": NAME, "mode": "live"|"utterance", "chunk_frames": 8|12|16,
          "lookahead_ms": 0..2000, "idle": "passthrough"|"silence", "realtime": true|false}
         (only "source" is required; NAME is one of the server's configured sources, never a path)
  binary speech: 16 kHz mono int16 little-endian PCM, any whole number of samples per message
  text   {"type": "end_of_speech"}
  text   {"type": "close", "drain": false}      drain=true: finish the queued speech first
server -> client
  text   {"type": "started", "fps": 25, "source": NAME, "latency_floor_s": ..., "frame_format": "jpeg"|"png",
          "config": {...}, "settings": {"steps", "guidance_scale", "deepcache_interval", "seed", ...}}
  binary one frame: 4-byte big-endian header length n, n bytes of UTF-8 JSON header
         {"index", "time_s", "audio_time_s", "wall_time", "kind", "utterance", "utterance_frame",
          "final", "source_index", "has_face", "dropped", "held"}, then the image bytes: JPEG, or PNG
         (lossless) when the server runs with frame_format "png" (cv2.imencode, RGB content)
  text   {"type": "error", "error": "<class>", "message": "... expected ..., found ...", "field": NAME}
         ("field": only for a refused client message, naming the field)
         (QueueFullError keeps the session open: that chunk of speech was refused; resend it later)
  text   {"type": "closed", "stats": {...}}, then close code 1000
Every client text message is validated by one declared schema (engine.stream.protocol, shared with the Ray
ingress): strict types (`"realtime": "no"` is refused), no unknown fields, at most 4096 bytes and 2 levels of
nesting (checked before parsing). A refusal sends the error message naming the field, then closes with 1008
and the reason "invalid field NAME".
Close codes: 1013 not ready / over the session cap / too many connections waiting to start (try again
later), 1008 protocol violation (including no "start" within `start_timeout_s`, and a started session idle
for longer than `idle_timeout_s`: no client message while no speech is queued; its slot is freed),
1011 failure, 1001 the server is shutting down.
A session slot is taken only by a connection that has sent a valid "start"; connections that have not
(yet) are bounded separately (`max_pending`) and closed after `start_timeout_s`.
HTTP: GET /live -> 200 as soon as the process serves; GET /ready -> 200 once the models are loaded and
warmed up (`LipSync.warm_up` on every chunk shape a session can ask for), else 503 with the reason
(what is loading or building, or why loading failed).
All sessions share the one engine core of the loaded `LipSync`, which batches their chunks together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus

import numpy as np

from engine.constants import FPS
from engine.errors import EngineError, InvalidInputError, QueueFullError, expect
from engine.stream.config import CLIENT_OPTIONS

log = logging.getLogger(__name__)

HEADER_LENGTH = struct.Struct(">I")  # frame message: header length, big-endian uint32
CLOSE_TRY_LATER = 1013
CLOSE_POLICY = 1008
CLOSE_FAILURE = 1011
STREAM_PATHS = ("/", "/stream")
FRAME_POLL_S = 0.1
SHUTDOWN_TIMEOUT_S = 30.0  # a graceful stop waits this long for sessions to close
FRAME_FORMATS = {"jpeg": ".jpg", "png": ".png"}
PNG_COMPRESSION = 1  # fastest zlib level: PNG is for exact frames, not for size


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port (see `LipSyncServer.port`)
    max_sessions: int = 2  # sessions that have started; more are refused (1013)
    max_pending: int = 8  # connections that have not sent "start" yet; more are refused (1013)
    start_timeout_s: float = 5.0  # a connection must send "start" this soon (else 1008)
    jpeg_quality: int = 90
    frame_format: str = "jpeg"  # "png": lossless frames (exactly what the session made), larger and slower
    max_message_bytes: int = 1 << 20  # a speech message holds at most ~32 s of int16 PCM
    max_queued_seconds: float = 30.0  # per session
    idle_timeout_s: float = 60.0  # a started session with no client message and no queued speech this long: closed

    def __post_init__(self) -> None:
        expect(self.max_sessions >= 1, InvalidInputError, "max_sessions", ">= 1", self.max_sessions)
        expect(self.max_pending >= 1, InvalidInputError, "max_pending", ">= 1", self.max_pending)
        expect(self.start_timeout_s > 0, InvalidInputError, "start_timeout_s", "> 0", self.start_timeout_s)
        expect(self.idle_timeout_s > 0, InvalidInputError, "idle_timeout_s", "> 0", self.idle_timeout_s)
        expect(1 <= self.jpeg_quality <= 100, InvalidInputError, "jpeg_quality", "1..100", self.jpeg_quality)
        expect(self.frame_format in FRAME_FORMATS, InvalidInputError, "frame_format", f"one of {sorted(FRAME_FORMATS)}",
               repr(self.frame_format))
        expect(0 <= self.port <= 65535, InvalidInputError, "port", "0..65535", self.port)


def encode_frame(frame, quality: int = 90, frame_format: str = "jpeg") -> bytes:
    """One binary frame message: header length, JSON header, JPEG (at `quality`) or PNG bytes."""
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if frame_format == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION,
                                                                                 PNG_COMPRESSION]
    ok, image = cv2.imencode(FRAME_FORMATS[frame_format], np.ascontiguousarray(frame.rgb[..., ::-1]), params)
    if not ok:
        raise EngineError(f"frame {frame.index}: {frame_format.upper()} encoding failed")
    header = json.dumps({
        "index": frame.index, "time_s": frame.time_s, "audio_time_s": frame.audio_time_s,
        "wall_time": frame.wall_time, "kind": frame.kind, "utterance": frame.utterance,
        "utterance_frame": frame.utterance_frame, "final": frame.final, "source_index": frame.source_index,
        "has_face": frame.has_face, "dropped": frame.dropped, "held": frame.held,
    }).encode()
    return HEADER_LENGTH.pack(len(header)) + header + image.tobytes()


def decode_frame(message: bytes) -> tuple[dict, np.ndarray]:
    """Client side of `encode_frame`: (header, RGB image [H,W,3] uint8); JPEG or PNG."""
    import cv2

    (n,) = HEADER_LENGTH.unpack_from(message)
    header = json.loads(message[HEADER_LENGTH.size:HEADER_LENGTH.size + n])
    jpeg = np.frombuffer(message[HEADER_LENGTH.size + n:], np.uint8)
    return header, cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1]


def error_message(exc: BaseException) -> dict:
    """{"type": "error", "error": <engine.errors class>, "message": ...}; a protocol refusal is an
    InvalidInputError with "field" naming the field it refused."""
    from engine.stream.protocol import ProtocolError

    if isinstance(exc, ProtocolError):
        return {"type": "error", "error": "InvalidInputError", "message": str(exc), "field": exc.field}
    return {"type": "error", "error": type(exc).__name__, "message": str(exc)}


def pcm_from_message(message: bytes) -> np.ndarray:
    """Binary speech message -> int16 samples [n]; an odd byte count is not whole samples."""
    expect(len(message) % 2 == 0, InvalidInputError, "speech message", "int16 PCM (an even number of bytes)",
           f"{len(message)} bytes")
    return np.frombuffer(message, dtype="<i2").astype(np.int16)


class LipSyncServer:
    """Serves `StreamSession`s over WebSockets.

    `load()` runs in a thread after the socket is listening and returns `(sync, sources)`:
    a loaded `LipSync` and {name: Avatar | video path | frames}; it may call `set_status(...)`
    to say what it is doing (shown by /ready). The server owns that `LipSync` from then on:
    `stop()` closes it. `face` is the landmark source for video sources (default: the model's
    face setting).
    """

    def __init__(self, load: Callable[[], tuple], config: ServerConfig | None = None, *, face=None,
                 stream_defaults=None) -> None:
        from engine.stream.config import StreamConfig

        self.config = config or ServerConfig()
        self._load = load
        self._face = face
        self._defaults = stream_defaults or StreamConfig()
        self.sync = None
        self.sources: dict = {}
        self.ready = False
        self.failed = False
        self.not_ready_reason = "loading models"
        self._status_since = time.monotonic()
        self.pending_connections = 0  # connected, no "start" yet
        self.active_sessions = 0
        self.sessions_started = 0
        self.sessions_served = 0
        self._sessions: set = set()
        self._server = None
        self._pool = ThreadPoolExecutor(max_workers=2 * self.config.max_sessions + 2,
                                        thread_name_prefix="lipsync-serve")
        self._loaded = threading.Event()
        self._stopping = False
        self.warm_up_report: dict | None = None  # what `LipSync.warm_up` ran (shapes, seconds)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> int:
        """Listen, then load and warm up in the background; returns the bound port."""
        from engine.extras import import_optional

        serve = import_optional("websockets.asyncio.server", "serve").serve
        self._server = await serve(self._handle, self.config.host, self.config.port,
                                   process_request=self._process_request, max_size=self.config.max_message_bytes,
                                   logger=_LifecycleAtDebug(logging.getLogger("websockets.server"), {}))
        log.info("serving on ws://%s:%d (live: /live, ready: /ready)", self.config.host, self.port)
        # a plain daemon thread: a load still running (an engine build) never holds up a shutdown
        threading.Thread(target=self._load_and_warm_up, name="lipsync-serve-load", daemon=True).start()
        return self.port

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop gracefully: cancel every session (within a chunk), close connections (1001), stop listening,
        then close the model's engine core."""
        self._stopping = True
        for session in list(self._sessions):
            session.speech.close()
        if self._server is not None:
            self._server.close(close_connections=True)
            try:
                await asyncio.wait_for(self._server.wait_closed(), SHUTDOWN_TIMEOUT_S)
            except TimeoutError:
                log.warning("shutdown: connections still open after %g s; stopping anyway", SHUTDOWN_TIMEOUT_S)
        self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, self._close_model)

    def _close_model(self) -> None:
        """Close what is left of the sessions, then the LipSync (its engine core's device thread)."""
        for session in list(self._sessions):
            session.close()
        if self.sync is not None:
            self.sync.close()

    async def serve_until_signalled(self, signals=(signal.SIGTERM, signal.SIGINT)) -> int:
        """Serve until one of `signals` arrives (main thread), then stop gracefully; returns that signal."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        received: list[int] = []

        def on_signal(signum: int) -> None:
            received.append(signum)
            stop.set()

        for signum in signals:
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await self.start()
            await stop.wait()
            log.info("%s: shutting down (%d sessions open)", signal.Signals(received[0]).name, self.active_sessions)
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            await self.stop()
        from engine.runtime.heap import describe_peak_rss, peak_rss_mib

        log.info("stopped after %d sessions | %s", self.sessions_served, describe_peak_rss(peak_rss_mib()))
        return received[0]

    def set_status(self, reason: str) -> None:
        """What the server is doing before it is ready (reported by /ready), e.g. "building the U-Net engine"."""
        self.not_ready_reason = reason
        self._status_since = time.monotonic()
        log.info("%s", reason)

    def _load_and_warm_up(self) -> None:
        try:
            sync, sources = self._load()
            self.sync = sync
            expect(bool(sources), InvalidInputError, "server sources", "at least one --avatar or --video", "none")
            self.sources = dict(sources)
            if self._stopping:  # stopped while loading: nothing will close it later
                self._close_model()
                return
            self.set_status("warming up")
            self._warm_up()
            self.ready = True
            log.info("ready: sources %s", sorted(self.sources))
        except BaseException as exc:  # reported by /ready
            self.failed = True
            self.not_ready_reason = f"failed: {type(exc).__name__}: {exc}"
            if isinstance(exc, EngineError):
                log.error("not ready: %s", self.not_ready_reason)
            else:
                log.exception("not ready: model loading or warm-up failed")
        finally:
            self._loaded.set()

    def _warm_up(self) -> None:
        """Every chunk shape a session can ask for, before any client: the served settings at each live chunk
        length (8/12/16; utterance mode uses 16), with DeepCache's full and shallow passes, at each batch size
        up to the session cap (what the engine core may stack), and the whisper encoder (`LipSync.warm_up`)."""
        from engine.stream.config import CHUNK_CHOICES

        settings = self._defaults.sync
        configs = [dataclasses.replace(settings, chunk_frames=n) for n in sorted({*CHUNK_CHOICES,
                                                                                   settings.chunk_frames})]
        eager = set(self.sync.core.runners.choice.values()) == {"torch"}  # eager: one pass per shape checks it
        sizes = None if eager else range(1, min(self.sync.policy.max_batch, self.config.max_sessions) + 1)
        self.warm_up_report = self.sync.warm_up(configs, batch_sizes=sizes)

    def _open_session(self, name: str, config):
        from engine.stream.session import StreamSession

        return StreamSession(self.sync, self.sources[name], config, face=self._face)

    # ------------------------------------------------------------------ HTTP
    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): the reason says what is loading or building (and for how long), or why it failed."""
        if self.ready:
            return True, "ready"
        if self.failed:
            return False, self.not_ready_reason
        return False, f"{self.not_ready_reason} ({time.monotonic() - self._status_since:.0f} s)"

    def _process_request(self, connection, request):
        path = request.path.split("?", 1)[0]
        if path == "/live":
            log.debug("GET /live -> 200")
            return connection.respond(HTTPStatus.OK, "live\n")
        if path == "/ready":
            ready, reason = self.readiness()
            log.debug("GET /ready -> %s", 200 if ready else f"503 ({reason})")
            if ready:
                return connection.respond(HTTPStatus.OK, "ready\n")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {reason}\n")
        if path not in STREAM_PATHS:
            log.debug("GET %s -> 404", path)
            return connection.respond(HTTPStatus.NOT_FOUND, f"no such path: {path}\n")
        return None

    # ------------------------------------------------------------------ WebSocket
    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        if not self.ready:
            await ws.close(CLOSE_TRY_LATER, f"not ready: {self.readiness()[1]}"[:120])
            return
        if self.pending_connections >= self.config.max_pending:
            await ws.close(CLOSE_TRY_LATER, f"busy: at most {self.config.max_pending} connections waiting to start")
            return
        self.pending_connections += 1
        try:
            first = await asyncio.wait_for(ws.recv(), self.config.start_timeout_s)
            name, config = self._parse_start(first)
        except ConnectionClosed:
            return
        except TimeoutError:
            await self._report(ws, InvalidInputError(f"first message: expected \"start\" within "
                                                     f"{self.config.start_timeout_s:g} s, found none"),
                               close_code=CLOSE_POLICY)
            return
        except InvalidInputError as exc:
            await self._report(ws, exc, close_code=CLOSE_POLICY)
            return
        finally:
            self.pending_connections -= 1
        if self.active_sessions >= self.config.max_sessions:  # a slot counts from "start" on
            await self._report(ws, QueueFullError(f"sessions: expected at most {self.config.max_sessions} at once, "
                                                  f"found {self.active_sessions} running; try again later"),
                               close_code=CLOSE_TRY_LATER,
                               reason=f"busy: at most {self.config.max_sessions} sessions")
            return
        self.active_sessions += 1
        self.sessions_started += 1
        number = self.sessions_started
        started = time.monotonic()
        log.info("session %d: started (source %s, %s mode, from %s)", number, name, config.mode,
                 _peer(ws))
        outcome = "failed"
        try:
            outcome = await self._serve(ws, name, config)  # frees the slot itself, before the client sees a close
        finally:
            self.sessions_served += 1
            log.info("session %d: %s after %.1f s", number, outcome, time.monotonic() - started)

    async def _serve(self, ws, name: str, config) -> str:
        """Run one started session to its end; returns how it ended (for the log).

        The session is closed and its slot freed before the connection is closed, whatever the ending, so a
        client that reconnects as soon as it sees the close finds the slot free."""
        from websockets.exceptions import ConnectionClosed

        loop = asyncio.get_running_loop()
        session = sender = None
        freed = False

        async def release() -> None:
            nonlocal freed
            if freed:
                return
            freed = True
            if sender is not None:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            try:
                if session is not None:
                    await loop.run_in_executor(self._pool, session.close)
                    self._sessions.discard(session)
            finally:
                self.active_sessions -= 1

        try:
            session = await loop.run_in_executor(self._pool, self._open_session, name, config)
            self._sessions.add(session)
            await ws.send(json.dumps({"type": "started", "fps": FPS, "source": name,
                                      "latency_floor_s": config.latency_floor_s,
                                      "frame_format": self.config.frame_format,
                                      "config": {k: getattr(config, k) for k in CLIENT_OPTIONS},
                                      "settings": dataclasses.asdict(config.sync)}))
            sender = asyncio.create_task(self._send_frames(ws, session))
            drain = await self._receive(ws, session, sender)
            if drain:
                session.finish()
                await sender
            await ws.send(json.dumps({"type": "closed", "stats": session.stats}))
            await release()
            await ws.close(1000, "session closed")
            return f"closed, {session.stats['frames_emitted']} frames"
        except ConnectionClosed:
            return "ended: the client went away or the server is shutting down"
        except (EngineError, ValueError, TimeoutError) as exc:
            code = CLOSE_FAILURE if isinstance(exc, EngineError) and not isinstance(exc, InvalidInputError) \
                else CLOSE_POLICY
            await release()
            await self._report(ws, exc, close_code=code)
            return f"failed: {type(exc).__name__}: {exc}"
        finally:
            await release()

    def _parse_start(self, message) -> tuple:
        from engine.stream.protocol import parse_start

        start = parse_start(message)  # the declared schema (ProtocolError naming the field)
        expect(start.source in self.sources, InvalidInputError, "source", f"one of {sorted(self.sources)}",
               repr(start.source))
        config = dataclasses.replace(self._defaults, max_queued_seconds=self.config.max_queued_seconds,
                                     **start.options())
        return start.source, config

    async def _receive(self, ws, session, sender) -> bool:
        """Feed the session until the client asks to close (-> drain?) or the frames stop; a session idle for
        `idle_timeout_s` (no client message, no queued speech) ends with a ProtocolError (1008)."""
        from engine.stream.protocol import Close, ProtocolError, parse_control

        idle_timeout = self.config.idle_timeout_s
        last_active = time.monotonic()
        recv = None
        while True:
            if recv is None:
                recv = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait({recv, sender}, return_when=asyncio.FIRST_COMPLETED,
                                         timeout=min(idle_timeout, 1.0))
            now = time.monotonic()
            if not done:
                if session.speech.queued_samples() > 0:
                    last_active = now  # still rendering the client's speech: not idle
                elif now - last_active > idle_timeout:
                    recv.cancel()
                    await asyncio.gather(recv, return_exceptions=True)
                    raise ProtocolError(f"session: expected a message within the idle timeout of {idle_timeout:g} s, "
                                        f"found none for {now - last_active:.1f} s; closed to free its slot",
                                        "idle timeout")
                continue
            if recv not in done:  # the session ended (failure): stop listening
                recv.cancel()
                await asyncio.gather(recv, return_exceptions=True)
                sender.result()  # raises the session's error
                return False
            message, recv, last_active = recv.result(), None, now
            if isinstance(message, bytes):
                try:
                    session.push_audio(pcm_from_message(message))
                except QueueFullError as exc:
                    await self._report(ws, exc)
                continue
            control = parse_control(message)
            if isinstance(control, Close):
                return control.drain
            session.end_of_speech()

    async def _send_frames(self, ws, session) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame = await loop.run_in_executor(self._pool, session.next_frame, FRAME_POLL_S)
            if frame is None:
                if not session.worker_alive:
                    return
                continue
            await ws.send(await loop.run_in_executor(self._pool, encode_frame, frame, self.config.jpeg_quality,
                                                     self.config.frame_format))

    @staticmethod
    async def _report(ws, exc: BaseException, *, close_code: int | None = None, reason: str | None = None) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await ws.send(json.dumps(error_message(exc)))
            if close_code is not None:  # a protocol refusal's reason names the field
                await ws.close(close_code, (reason or getattr(exc, "close_reason", None) or type(exc).__name__)[:120])
        except ConnectionClosed:
            pass


class _LifecycleAtDebug(logging.LoggerAdapter):
    """websockets' own INFO lines ("connection open", "HTTP response sent", "connection closed", "server
    listening") at DEBUG: the server logs one line per fact itself (session started/ended, ready, shutdown),
    and a health probe would otherwise cost two INFO lines. Warnings and errors pass unchanged."""

    def log(self, level, msg, *args, **kwargs):
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)


def _peer(ws) -> str:
    address = getattr(ws, "remote_address", None)
    return f"{address[0]}:{address[1]}" if address else "?"
