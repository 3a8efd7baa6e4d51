"""Media in and out with PyAV only: probe, decode video/audio, encode H.264/AAC MP4 (no ffmpeg binary, no shell)."""

from engine.media.audio import load_audio, load_pcm16
from engine.media.probe import AudioInfo, MediaInfo, MediaLimits, VideoInfo, probe
from engine.media.video import VideoFrame, count_source_frames, estimate_frame_count, iter_video_frames
from engine.media.writer import VideoWriter, cut_clip, write_wav

__all__ = [
    "AudioInfo", "MediaInfo", "MediaLimits", "VideoFrame", "VideoInfo", "VideoWriter", "count_source_frames",
    "cut_clip", "estimate_frame_count", "iter_video_frames", "load_audio", "load_pcm16", "probe", "write_wav",
]
