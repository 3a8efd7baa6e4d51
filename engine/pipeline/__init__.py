"""The lip-sync pipeline: settings, the chunked core, and the SDK entry point."""

from engine.pipeline.config import PRESETS, SyncConfig, resolve_config
from engine.pipeline.core import AudioPlan, FaceLandmarkSource, LipSyncCore, OutputFrame, StageTimer

__all__ = [
    "PRESETS", "SyncConfig", "resolve_config", "AudioPlan", "FaceLandmarkSource", "LipSyncCore",
    "OutputFrame", "StageTimer", "LipSync", "SyncResult",
]


def __getattr__(name):  # LipSync pulls in media and weights: import on first use
    if name in ("LipSync", "SyncResult"):
        from engine.pipeline import sdk

        return getattr(sdk, name)
    raise AttributeError(name)
