"""Streaming SDK: speech chunks in, lip-synced frames out (sessions, live features, prepared avatars)."""

from engine.stream.avatar import Avatar, prepare_avatar
from engine.stream.session import StreamConfig, StreamFrame, StreamSession

__all__ = ["Avatar", "prepare_avatar", "StreamConfig", "StreamFrame", "StreamSession"]
