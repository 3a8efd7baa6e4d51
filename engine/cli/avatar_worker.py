"""`engine avatar-worker`: join a LiveKit room as the lip-synced avatar of a LiveKit Agents voice agent."""

from __future__ import annotations

import argparse
import os

from engine.cli.options import add_generation_options, add_model_options, load_sync

DESCRIPTION = """\
Join a LiveKit room as an avatar participant (livekit.agents.voice.avatar.AvatarRunner): the agent's
speech arrives over the room's data streams (the agent uses DataStreamAudioOutput with this
participant's identity), and the avatar publishes the lip-synced video and the re-timed speech.
The server URL and credentials come from LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET.
Needs the [livekit] extra.
"""

ENV_VARS = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")


def register(subparsers) -> None:
    p = subparsers.add_parser("avatar-worker", help="lip-sync a LiveKit Agents voice agent in a room",
                              description=DESCRIPTION)
    p.add_argument("--room", required=True, help="the LiveKit room to join")
    p.add_argument("--source", required=True, help="avatar directory (engine avatar prepare) or face video")
    p.add_argument("--identity", default="latentsync-avatar", help="this participant's identity in the room")
    p.add_argument("--agent-identity", default=None,
                   help="the agent participant whose speech to lip-sync (default: whoever sends it)")
    p.add_argument("--chunk-frames", type=int, default=16, choices=[8, 12, 16], help="live chunk size in frames")
    add_model_options(p)
    add_generation_options(p)
    p.set_defaults(func=_run)


def access_token(room: str, identity: str, env=os.environ) -> tuple[str, str]:
    """(url, token) to join `room` as `identity`, from the LiveKit environment variables."""
    from livekit import api

    from engine.errors import InvalidInputError

    missing = [name for name in ENV_VARS if not env.get(name)]
    if missing:
        raise InvalidInputError(f"avatar-worker: expected {', '.join(ENV_VARS)} in the environment, "
                                f"found {', '.join(missing)} unset")
    token = (api.AccessToken(env["LIVEKIT_API_KEY"], env["LIVEKIT_API_SECRET"]).with_identity(identity)
             .with_kind("agent").with_grants(api.VideoGrants(room_join=True, room=room)).to_jwt())
    return env["LIVEKIT_URL"], token


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from engine.cli.options import generation_settings
    from engine.extras import require
    from engine.stream import StreamConfig

    require("livekit")
    url, token = access_token(args.room, args.identity)  # before any model loads
    sync = load_sync(args)
    config = StreamConfig(mode="live", chunk_frames=args.chunk_frames, sync=generation_settings(args))
    from engine.integrations.livekit import run_avatar_worker

    asyncio.run(run_avatar_worker(sync, args.source, url=url, token=token, config=config,
                                  agent_identity=args.agent_identity))
    return 0
