"""Streaming SDK: speech chunks in, lip-synced frames out (sessions, live features, prepared avatars)."""

from engine.stream.avatar import Avatar, prepare_avatar
from engine.stream.config import StreamConfig
from engine.stream.frame import StreamFrame
from engine.stream.session import StreamSession

__all__ = ["Avatar", "prepare_avatar", "StreamConfig", "StreamFrame", "StreamSession"]
