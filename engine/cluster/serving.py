"""`engine serve --ray`: the streaming server on a Ray cluster, with the same WebSocket protocol.

Layout: a Ray Serve ingress deployment (HTTP + WebSocket, no GPU) in front of long-lived replica
actors. Each replica is one `engine serve` server (`engine.stream.server.LipSyncServer`: one loaded
model, one engine core, its own session cap) on its node; the ingress sends each new session to the
ready replica with the most free session slots and pipes the connection through unchanged, so
clients speak exactly `engine serve`'s protocol. When every replica is at its cap the ingress
refuses the session's "start" at once (an error message, then close code 1013 "busy: ..."); `/live` is the ingress itself, `/ready` is 200
while at least one replica is ready (503 with each replica's reason otherwise), `/status` is JSON.

Why an ingress and not Serve's own router: Serve queues requests beyond `max_ongoing_requests`
(at least one per caller), counts health checks against that limit, and cannot refuse at once, so
"busy" and per-replica caps are decided here, from the sessions the ingress itself holds.

This module needs no `ray`; `engine.cluster.serve_app` (imported only after `require("ray")`) holds
the Ray parts. `serve run engine.cluster.serve_app:app_builder model=... videos=NAME=PATH` deploys
the same application from Ray's own CLI.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import threading

from engine.cli.signals import SIGNAL_EXIT_BASE
from engine.cluster.options import ModelOptions
from engine.cluster.serve_spec import ServeSpec  # noqa: F401 - re-exported: its home before serve_spec.py
from engine.errors import InvalidInputError, expect

log = logging.getLogger(__name__)

APP_NAME = "lipsync-stream"


def add_ray_options(p: argparse.ArgumentParser) -> None:
    """`engine serve`'s Ray options (the server options keep their meaning per replica)."""
    g = p.add_argument_group("on a Ray cluster")
    g.add_argument("--ray", nargs="?", const="default", metavar="ADDRESS",
                   help="serve on Ray (Serve ingress + one replica per GPU): local, auto or ray://HOST:PORT; without "
                        "ADDRESS, Ray's default. --max-sessions is then per replica")
    g.add_argument("--replicas", type=int, help="replicas (default: one per GPU, else one per --num-cpus CPUs)")
    add_ray_resource_options(g, "replica")


def add_ray_resource_options(g, unit: str) -> None:
    """`--num-gpus` / `--num-cpus` per Ray `unit` (actor of `engine batch`, replica of `engine serve`)."""
    g.add_argument("--num-gpus", type=float, help=f"GPUs per Ray {unit} (default 1 where the cluster has GPUs, else 0)")
    g.add_argument("--num-cpus", type=float, default=1.0, help=f"CPUs per Ray {unit} (default 1)")


def spec_from_args(args: argparse.Namespace) -> ServeSpec:
    from engine.cli.options import generation_settings  # --preset/--steps/--guidance/--deepcache/--seed

    absolute = lambda pairs: tuple((name, os.path.abspath(path)) for name, path in pairs)  # noqa: E731
    return ServeSpec(
        model=ModelOptions.from_args(args),
        videos=absolute(args.video), avatars=absolute(args.avatar), sync=generation_settings(args),
        replicas=args.replicas, num_gpus=args.num_gpus, num_cpus=args.num_cpus, max_sessions=args.max_sessions,
        max_queued_seconds=args.max_queued_seconds, jpeg_quality=args.jpeg_quality,
        idle_timeout_s=args.idle_timeout)


def serve_on_ray(args: argparse.Namespace) -> int:
    """Deploy on the cluster at `args.ray`, serve until SIGINT/SIGTERM, then remove the application."""
    from engine.cluster.ray_env import check_address, connected
    from engine.extras import require

    require("ray", what="engine serve --ray")
    require("serve", what="engine serve --ray")  # websockets: the ingress's connection to each replica
    if importlib.util.find_spec("fastapi") is None:  # Ray without its [serve] part
        from engine.extras import MissingExtraError

        raise MissingExtraError('engine serve --ray: expected ray[serve] (the [ray] extra), found fastapi not '
                                'installed; install it with: pip install -e ".[ray]"')
    address = check_address(args.ray)
    expect(args.port != 0, InvalidInputError, "--port with --ray", "a fixed port (Serve's proxy listens on it)", 0)
    spec = spec_from_args(args)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    with connected(address, what="engine serve --ray"):
        from ray import serve

        from engine.cluster.serve_app import build_app

        serve.start(http_options={"host": args.host, "port": args.port})
        try:
            serve.run(build_app(spec), name=APP_NAME, route_prefix="/", blocking=False)
            print(f"serving on ws://{args.host}:{args.port}/stream (live: /live, ready: /ready, status: /status)",
                  flush=True)
            stop.wait()
        finally:
            serve.delete(APP_NAME)
            if address == "local":
                serve.shutdown()
    return SIGNAL_EXIT_BASE + received[0] if received else 0  # 143 after SIGTERM, 130 after Ctrl-C, as engine serve
