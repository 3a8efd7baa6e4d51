"""`engine serve`: a WebSocket lip-sync server over prepared avatars and videos (see engine.stream.server)."""

from __future__ import annotations

import argparse

from engine.cli.avatar import add_model_options, load_sync
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
    p.add_argument("--port", type=int, default=8765, help="listen port (0: any free port)")
    p.add_argument("--max-sessions", type=int, default=2, help="concurrent sessions; more are refused (1013)")
    p.add_argument("--preset", default="reference", choices=["reference", "fast"], help="generation settings")
    p.add_argument("--max-queued-seconds", type=float, default=30.0, help="speech a session may queue")
    p.add_argument("--jpeg-quality", type=int, default=90)
    from engine.cluster.serving import add_ray_options  # --ray, --replicas, --num-gpus, --num-cpus

    add_ray_options(p)
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from engine.pipeline.config import resolve_config
    from engine.stream.server import LipSyncServer, ServerConfig
    from engine.stream.session import StreamConfig

    names = [name for name, _ in args.avatar + args.video]
    if len(set(names)) != len(names) or not names:
        raise InvalidInputError(f"sources: expected at least one, with unique names, found {names}")
    for name, path in args.avatar + args.video:  # cheap checks before listening
        if not Path(path).exists():
            raise InvalidInputError(f"source {name}: expected an existing path, found {path}")
    if args.ray is not None:  # replicas of this server on a Ray cluster (engine.cluster.serving)
        from engine.cluster.serving import serve_on_ray

        return serve_on_ray(args)

    def load():
        from engine.stream import Avatar

        sources = {name: Avatar(path) for name, path in args.avatar}
        sources.update({name: path for name, path in args.video})
        return load_sync(args), sources

    config = ServerConfig(host=args.host, port=args.port, max_sessions=args.max_sessions,
                          jpeg_quality=args.jpeg_quality, max_queued_seconds=args.max_queued_seconds)
    server = LipSyncServer(load, config, stream_defaults=StreamConfig(sync=resolve_config(args.preset)))
    asyncio.run(server.serve_forever())
    return 0
