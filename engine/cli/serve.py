"""`engine serve`: a WebSocket lip-sync server over prepared avatars and videos (see engine.stream.server).

/live answers as soon as the process listens; /ready once the model is loaded and warmed up on every chunk
shape a session can ask for (503 with the reason before: what is loading, or why it failed). All sessions
share one engine core, which batches their chunks. SIGTERM or Ctrl-C stops it gracefully: open
sessions are cancelled and their connections closed (1001), then it exits 143 (SIGTERM) or 130 (SIGINT).
"""

from __future__ import annotations

import argparse

from engine.cli.options import add_generation_options, add_model_options, generation_settings, load_sync
from engine.cli.signals import SIGNAL_EXIT_BASE  # the shell's convention: 128 + signal number
from engine.errors import InvalidInputError


def _named(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, found {value!r}")
    return name, path


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve streaming lip-sync over WebSockets", description=__doc__)
    add_model_options(p)
    p.add_argument("--avatar", type=_named, action="append", default=[], metavar="NAME=DIR",
                   help="a prepared avatar clients may pick by NAME (repeatable)")
    p.add_argument("--video", type=_named, action="append", default=[], metavar="NAME=PATH",
                   help="a face video clients may pick by NAME (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default loopback only)")
    p.add_argument("--port", type=int, default=8765, help="listen port (0: any free port; the log says which)")
    p.add_argument("--max-sessions", type=int, default=2,
                   help="concurrent sessions, counted from a client's start message; more are refused (1013)")
    p.add_argument("--max-pending", type=int, default=8,
                   help="connections that have not sent start yet; more are refused (1013)")
    p.add_argument("--start-timeout", type=float, default=5.0,
                   help="seconds a connection may take to send start before it is closed (1008)")
    p.add_argument("--idle-timeout", type=float, default=60.0,
                   help="seconds a started session may go without a client message while no speech is queued "
                        "before it is closed (1008) and its slot freed (default 60)")
    add_generation_options(p)
    p.add_argument("--max-queued-seconds", type=float, default=30.0,
                   help="speech a session may queue before pushes are refused (QueueFullError)")
    p.add_argument("--jpeg-quality", type=int, default=90,
                   help="JPEG quality of the frames sent to clients, 1..100 (default 90)")
    p.add_argument("--frame-format", choices=["jpeg", "png"], default="jpeg",
                   help="how frames are sent: jpeg (default) or png (lossless: exactly the frames made; larger)")
    from engine.cluster.serving import add_ray_options  # --ray, --replicas, --num-gpus, --num-cpus

    add_ray_options(p)
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from engine import extras

    extras.require("serve")  # before anything else: a missing websockets names the extra (exit 7)
    import asyncio
    from pathlib import Path

    from engine.stream import Avatar, StreamConfig
    from engine.stream.server import LipSyncServer, ServerConfig

    names = [name for name, _ in args.avatar + args.video]
    if len(set(names)) != len(names) or not names:
        raise InvalidInputError(f"sources: expected at least one, with unique names, found {names}")
    for name, path in args.avatar + args.video:  # cheap checks before listening
        if not Path(path).exists():
            raise InvalidInputError(f"source {name}: expected an existing path, found {path}")
    if args.ray is not None:  # replicas of this server on a Ray cluster (engine.cluster.serving)
        from engine.cluster.serving import serve_on_ray

        return serve_on_ray(args)
    avatars = {name: Avatar(path) for name, path in args.avatar}  # manifests and sizes: typed errors now
    settings = generation_settings(args)
    config = ServerConfig(host=args.host, port=args.port, max_sessions=args.max_sessions,
                          max_pending=args.max_pending, start_timeout_s=args.start_timeout,
                          jpeg_quality=args.jpeg_quality, frame_format=args.frame_format,
                          max_queued_seconds=args.max_queued_seconds, idle_timeout_s=args.idle_timeout)

    def load():
        server.set_status(f"loading model {args.model}")
        sync = load_sync(args)
        return sync, {**avatars, **{name: path for name, path in args.video}}

    server = LipSyncServer(load, config, stream_defaults=StreamConfig(sync=settings))
    return SIGNAL_EXIT_BASE + asyncio.run(server.serve_until_signalled())
