"""The Ray parts of `engine serve --ray` (see engine.cluster.serving): replica actors, the ingress, the app.

Imported only once `engine.extras.require("ray")` has passed: it imports ray, ray.serve and fastapi.
No `from __future__ import annotations` here: FastAPI must see the real `WebSocket` annotation.
"""

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

import ray
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse
from ray import serve

from engine.cluster.ray_env import actor_death_cause, actor_layout
from engine.cluster.serve_spec import ServeSpec
from engine.errors import EngineError, InvalidInputError

log = logging.getLogger(__name__)

CLOSE_TRY_LATER = 1013  # the code engine serve uses for "not ready" and "busy"
STATUS_TIMEOUT_S = 5.0
STATUS_MAX_AGE_S = 0.5  # a routing decision uses replica states at most this old
UPSTREAM_OPEN_TIMEOUT_S = 30.0
START_TIMEOUT_S = 5.0  # a client must send "start" this soon, as engine serve asks
STREAM_PATHS = ("/", "/stream")


class StreamReplica:
    """A Ray actor running one `LipSyncServer` (one model, one engine core, its own session cap)."""

    def __init__(self, spec: ServeSpec, name: str) -> None:
        import threading

        from engine.stream.server import LipSyncServer, ServerConfig
        from engine.stream.session import StreamConfig

        self.name = name
        host = spec.replica_host or ray.util.get_node_ip_address()
        self.server = LipSyncServer(spec.load, ServerConfig(
            host=host, port=0, max_sessions=spec.max_sessions, jpeg_quality=spec.jpeg_quality,
            max_queued_seconds=spec.max_queued_seconds, idle_timeout_s=spec.idle_timeout_s), stream_defaults=StreamConfig(sync=spec.sync))
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="lipsync-replica", daemon=True).start()
        port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(60)  # loads in background
        self.url = f"ws://{host}:{port}/stream"

    def status(self) -> dict:
        s = self.server
        return {"name": self.name, "url": self.url, "ready": s.ready, "reason": s.not_ready_reason,
                "active": s.active_sessions, "max_sessions": s.config.max_sessions, "served": s.sessions_served}


@dataclass
class _Replica:
    name: str
    actor: object
    status: dict = field(default_factory=dict)
    down: str | None = None  # why the actor cannot be reached (restarting or gone)
    holding: int = 0  # sessions this ingress has open on it

    @property
    def ready(self) -> bool:
        return self.down is None and bool(self.status.get("ready"))

    def free(self, cap: int) -> int:
        return cap - max(self.holding, int(self.status.get("active", 0))) if self.ready else 0

    def reason(self) -> str:
        return self.down or ("ready" if self.ready else str(self.status.get("reason", "starting")))


class ReplicaPool:
    """The replicas behind one ingress, their last known states and the sessions the ingress holds on each."""

    def __init__(self, spec: ServeSpec) -> None:
        count, num_gpus = actor_layout(ray, num_gpus=spec.num_gpus, num_cpus=spec.num_cpus, requested=spec.replicas)
        self.cap = spec.max_sessions
        actor = ray.remote(StreamReplica).options(num_cpus=spec.num_cpus, num_gpus=num_gpus,
                                                   max_restarts=spec.max_restarts, max_concurrency=4)
        self.replicas = [_Replica(f"replica-{i}", actor.remote(spec, f"replica-{i}")) for i in range(count)]
        self._refreshed = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self, *, max_age: float = STATUS_MAX_AGE_S) -> None:
        async with self._lock:
            if time.monotonic() - self._refreshed < max_age:
                return
            await asyncio.gather(*(self._refresh_one(r) for r in self.replicas))
            self._refreshed = time.monotonic()

    @staticmethod
    async def _refresh_one(replica: _Replica) -> None:
        try:
            replica.status = await asyncio.wait_for(replica.actor.status.remote(), STATUS_TIMEOUT_S)
            replica.down = None
        except asyncio.TimeoutError:
            replica.down = "starting" if not replica.status else "not answering"
        except ray.exceptions.RayActorError as exc:
            first = replica.down is None or "died" not in replica.down
            replica.down = f"down: {type(exc).__name__}: died, {actor_death_cause(exc)}"
            if first:  # one clear line per death, not one per health poll
                log.error("%s %s", replica.name, replica.down)

    def pick(self) -> tuple[_Replica | None, str]:
        """(the ready replica with the most free sessions, "") or (None, the close reason)."""
        ready = [r for r in self.replicas if r.ready]
        if not ready:
            return None, "not ready: " + "; ".join(f"{r.name}: {r.reason()}" for r in self.replicas)
        best = max(ready, key=lambda r: r.free(self.cap))
        if best.free(self.cap) <= 0:
            return None, f"busy: all {len(ready)} ready replicas hold their {self.cap} sessions"
        return best, ""

    def report(self) -> dict:
        return {"ready": sum(r.ready for r in self.replicas), "replicas": len(self.replicas), "max_sessions": self.cap,
                "free_sessions": sum(r.free(self.cap) for r in self.replicas),
                "detail": [{"name": r.name, "state": r.reason(), "holding": r.holding, **r.status}
                           for r in self.replicas]}


def _payload(message: dict):
    data = message.get("bytes")
    return data if data is not None else message.get("text", "")


async def pipe_session(ws: WebSocket, url: str, first: dict) -> None:
    """Relay one accepted client WebSocket (whose `first` message was read) to a replica's server and back;
    the replica's close code and reason pass through."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with connect(url, max_size=None, open_timeout=UPSTREAM_OPEN_TIMEOUT_S) as upstream:
        await upstream.send(_payload(first))

        async def client_to_replica() -> None:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    await upstream.close()
                    return
                await upstream.send(_payload(message))

        async def replica_to_client() -> None:
            # recv() in a loop, not `async for` (an async generator): cancelling this task when the client goes
            # away then ends it at once, instead of a generator that Python finalises later and that logged
            # "async generator ignored GeneratorExit" with a traceback
            try:
                while True:
                    message = await upstream.recv()
                    if isinstance(message, bytes):
                        await ws.send_bytes(message)
                    else:
                        await ws.send_text(message)
            except ConnectionClosed:
                pass

        tasks = [asyncio.create_task(client_to_replica()), asyncio.create_task(replica_to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        code, reason = upstream.close_code, upstream.close_reason
    await _close(ws, code or 1000, reason or "")


async def _refuse(ws: WebSocket, error: str, message: str, code: int, reason: str) -> None:
    """engine serve's refusal: {"type": "error", ...}, then the close code."""
    try:
        await ws.send_text(json.dumps({"type": "error", "error": error, "message": message}))
    except (RuntimeError, OSError):
        return
    await _close(ws, code, reason)


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    try:
        await ws.close(code=code, reason=reason[:120])
    except (RuntimeError, OSError):  # the client is already gone
        pass


app = FastAPI(title="latentsync-engine streaming on Ray")


# No access log: it wrote one INFO line per /ready or /live poll; sessions are logged by the replicas' servers,
# failures by this ingress itself.
@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000, health_check_period_s=10,
                  logging_config={"enable_access_log": False})
@serve.ingress(app)
class StreamIngress:
    """HTTP health + the WebSocket session router in front of the replicas (one ingress replica holds the counts)."""

    def __init__(self, spec: ServeSpec) -> None:
        self.pool = ReplicaPool(spec)

    @app.get("/live", response_class=PlainTextResponse)
    async def live(self) -> str:
        return "live\n"

    @app.get("/ready")
    async def ready(self):
        await self.pool.refresh()
        report = self.pool.report()
        if report["ready"]:
            return PlainTextResponse(f"ready: {report['ready']} of {report['replicas']} replicas, "
                                     f"{report['free_sessions']} free sessions\n")
        _, reason = self.pool.pick()
        return PlainTextResponse(reason + "\n", status_code=503)

    @app.get("/status")
    async def status(self):
        await self.pool.refresh()
        return JSONResponse(self.pool.report())

    @app.websocket("/")
    async def stream_root(self, ws: WebSocket) -> None:
        await self._session(ws)

    @app.websocket("/stream")
    async def stream(self, ws: WebSocket) -> None:
        await self._session(ws)

    async def _session(self, ws: WebSocket) -> None:
        """As `engine serve`: not ready -> 1013 at once; a slot counts from "start" on; full -> error + 1013."""
        await ws.accept()
        await self.pool.refresh()
        if not any(r.ready for r in self.pool.replicas):
            await _close(ws, CLOSE_TRY_LATER, self.pool.pick()[1])
            return
        try:
            first = await asyncio.wait_for(ws.receive(), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            await _refuse(ws, "InvalidInputError", f'first message: expected "start" within {START_TIMEOUT_S:g} s, '
                          "found none", 1008, "InvalidInputError")
            return
        if first["type"] == "websocket.disconnect":
            return
        from engine.stream.protocol import ProtocolError, parse_start

        try:  # the schema engine serve uses (engine.stream.protocol): refused here, before a replica is taken
            parse_start(first["text"] if first.get("text") is not None else first.get("bytes"))
        except ProtocolError as exc:
            from engine.stream.server import error_message

            try:
                await ws.send_text(json.dumps(error_message(exc)))
            except (RuntimeError, OSError):
                return
            await _close(ws, 1008, exc.close_reason)
            return
        await self.pool.refresh()
        replica, reason = self.pool.pick()
        if replica is None:
            await _refuse(ws, "QueueFullError", f"sessions: expected a replica with a free slot, found {reason}; "
                          "try again later", CLOSE_TRY_LATER, reason)
            return
        replica.holding += 1
        try:
            await pipe_session(ws, replica.status["url"], first)
        except (OSError, asyncio.TimeoutError, EngineError) as exc:
            log.warning("replica %s unreachable: %s", replica.name, exc)
            await _close(ws, CLOSE_TRY_LATER, f"not ready: {replica.name} unreachable")
        except Exception:
            log.exception("session via %s failed", replica.name)
        finally:
            replica.holding -= 1

    async def check_health(self) -> None:
        """Serve restarts the ingress (and with it the replicas) only when every replica is gone for good."""
        await self.pool.refresh(max_age=0)
        if all(r.down and "ActorDiedError" in r.down for r in self.pool.replicas):
            raise RuntimeError("every replica is dead: " + "; ".join(r.reason() for r in self.pool.replicas))


def build_app(spec: ServeSpec):
    """The Serve application: `serve.run(build_app(spec), route_prefix="/")`."""
    return StreamIngress.bind(spec)


def app_builder(args: dict):
    """For `serve run engine.cluster.serve_app:app_builder model=M videos=NAME=PATH[,NAME=PATH] ...`.

    Keys: model, device, dtype, face, backend, offline, videos, avatars, preset, replicas, num_gpus,
    num_cpus, max_sessions, max_queued_seconds, jpeg_quality (strings, as Ray's CLI passes them).
    """
    import os

    from engine.cluster.options import ModelOptions
    from engine.pipeline.config import resolve_config

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        out = []
        for item in filter(None, str(args.get(key, "")).split(",")):
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise InvalidInputError(f"{key}: expected NAME=PATH[,NAME=PATH...], found {item!r}")
            out.append((name, os.path.abspath(path)))
        return tuple(out)

    def number(key: str, kind, default):
        return kind(args[key]) if key in args else default

    known = {"model", "device", "dtype", "face", "backend", "offline", "videos", "avatars", "preset", "replicas",
             "num_gpus", "num_cpus", "max_sessions", "max_queued_seconds", "jpeg_quality"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise InvalidInputError(f"serve arguments: expected only {sorted(known)}, found {unknown}")
    model = ModelOptions(model=args.get("model", "latentsync-1.6"), device=args.get("device", "auto"),
                         dtype=args.get("dtype", "auto"), face=args.get("face", "auto"),
                         backend=args.get("backend", "torch"),
                         offline=str(args.get("offline", "false")).lower() in ("1", "true", "yes"))
    spec = ServeSpec(model=model, videos=pairs("videos"), avatars=pairs("avatars"),
                     sync=resolve_config(args.get("preset", "reference")), replicas=number("replicas", int, None),
                     num_gpus=number("num_gpus", float, None), num_cpus=number("num_cpus", float, 1.0),
                     max_sessions=number("max_sessions", int, 2),
                     max_queued_seconds=number("max_queued_seconds", float, 30.0),
                     jpeg_quality=number("jpeg_quality", int, 90))
    return build_app(spec)


__all__ = ["StreamIngress", "StreamReplica", "app_builder", "build_app"]
