"""Audio path: whisper log-mel, the 5-embedding whisper encoder, 30 s segmentation, per-frame windows."""

from engine.audio.checkpoint import (
    load_whisper_encoder,
    openai_key_shapes,
    random_whisper_state_dict,
    write_whisper_checkpoint,
)
from engine.audio.features import audio_features
from engine.audio.mel import log_mel_spectrogram, slaney_mel_filters
from engine.audio.whisper import WhisperAudioEncoder, official_whisper_tiny_dims, tiny_whisper_dims
from engine.audio.windows import frame_windows, official_frame_count, window_indices

__all__ = [
    "WhisperAudioEncoder",
    "audio_features",
    "frame_windows",
    "load_whisper_encoder",
    "log_mel_spectrogram",
    "official_frame_count",
    "official_whisper_tiny_dims",
    "openai_key_shapes",
    "random_whisper_state_dict",
    "slaney_mel_filters",
    "tiny_whisper_dims",
    "window_indices",
    "write_whisper_checkpoint",
]
