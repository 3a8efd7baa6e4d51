"""Media in and out with PyAV only: probe, decode video/audio, encode H.264/AAC MP4 (no ffmpeg binary, no shell)."""

from engine.media.audio import load_audio, load_pcm16
from engine.media.probe import AudioInfo, MediaInfo, MediaLimits, VideoInfo, probe
from engine.media.video import VideoFrame, count_source_frames, estimate_frame_count, iter_video_frames
from engine.media.writer import VideoWriter, cut_clip, write_wav
from engine.media.paths import check_output, check_output_dir
from engine.media.preflight import Preflight, preflight

__all__ = [
    "AudioInfo", "MediaInfo", "MediaLimits", "Preflight", "VideoFrame", "VideoInfo", "VideoWriter", "check_output",
    "check_output_dir", "count_source_frames", "cut_clip", "estimate_frame_count", "iter_video_frames", "load_audio",
    "load_pcm16", "preflight", "probe", "write_wav",
]
