"""Optional GPU video I/O (`[gpu-video]` extra): NVDEC decode (torchcodec) and NVENC encode (PyNvVideoCodec).

Same output contract as the PyAV path (engine.media.video / engine.media.writer):
- decode: frames at a constant `fps`, chosen by presentation time with the rule of engine.media.video (frame k
  at k / fps shows the latest source frame whose pts <= k / fps), so counts and timestamps match PyAV's;
- encode: H.264 (no B-frames) from NVENC as an elementary stream, then muxed by PyAV into the mp4 with the
  AAC audio track (no video re-encode), pts k at k / fps, written to a `.partial` name and renamed by close().

Both libraries are imported lazily (engine.extras.import_optional), so `import engine` never needs them.
Selection: `resolve_video_io("cpu" | "gpu" | "auto", device)`. "gpu" without the libraries or a CUDA device is a
typed error (MissingExtraError naming [gpu-video], or BackendUnavailableError) raised before any model loads.

Limit (stated, not hidden): the face path takes numpy frames today, so decoded frames are copied to the host once
and output frames uploaded once before NVENC; decode, colour conversion and encode run on the GPU.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from engine.constants import FPS, SAMPLE_RATE
from engine.errors import BackendUnavailableError, InvalidInputError, MediaDecodeError, expect
from engine.extras import import_optional, missing_modules
from engine.media.paths import check_output, is_write_failure, output_write_error, partial_path
from engine.media.probe import MediaLimits, open_input, probe
from engine.media.video import RATE_DENOMINATOR_LIMIT, VideoFrame, as_rate
from engine.media.watchdog import with_timeout
from engine.media.writer import AtomicOutput

VIDEO_IO_CHOICES = ("auto", "cpu", "gpu")
GPU_VIDEO_EXTRA = "gpu-video"
DECODE_BATCH = 16  # frames fetched from NVDEC per call
NVENC_OPTIONS = {"codec": "h264", "preset": "P4", "tuning_info": "high_quality", "bf": 0}  # no B-frames: dts = pts


# ----------------------------------------------------------------- selection
def missing_libraries() -> list[str]:
    """Import names of the [gpu-video] extra that are not installed (nothing is imported)."""
    return missing_modules(GPU_VIDEO_EXTRA)


def cuda_device_available(device=None) -> bool:
    """True when `device` (None/"auto" or a CUDA device) names a CUDA device torch can use."""
    import torch

    name = str(device) if device is not None else "auto"
    if name not in ("auto",) and not name.startswith("cuda"):
        return False
    return bool(torch.cuda.is_available())


def resolve_video_io(request: str, device=None) -> str:
    """"cpu" or "gpu": `cpu` always; `gpu` only with the libraries and a CUDA device (else a typed error);
    `auto` picks gpu only when both libraries and a CUDA device are present."""
    expect(request in VIDEO_IO_CHOICES, InvalidInputError, "video_io", f"one of {VIDEO_IO_CHOICES}", request)
    if request == "cpu":
        return "cpu"
    missing = missing_libraries()
    if request == "auto":
        return "gpu" if not missing and cuda_device_available(device) else "cpu"
    if missing:
        from engine.extras import MissingExtraError

        raise MissingExtraError(
            f"--video-io gpu (NVDEC decode, NVENC encode): expected the [{GPU_VIDEO_EXTRA}] extra, found "
            f"{', '.join(missing)} not installed; install it with: pip install -e \".[{GPU_VIDEO_EXTRA}]\"")
    if not cuda_device_available(device):
        found = f"device {device}" if str(device) not in ("None", "auto") and not str(device).startswith("cuda") \
            else "no CUDA device torch can use"
        raise BackendUnavailableError(f"--video-io gpu: expected a CUDA device (NVDEC/NVENC), found {found}; "
                                      "use --video-io cpu")
    return "gpu"


# ----------------------------------------------------------------- decode
def resample_by_time(items, rate: Fraction, *, start_index: int = 0,
                     max_frames: int | None = None) -> Iterator[tuple[int, object]]:
    """(k, payload) at constant `rate` from (t, end, payload) source frames in display order (seconds, Fraction).

    The rule of engine.media.video: output frame k shows the latest source frame with t <= k / rate (the first
    for earlier k), while k / rate < the last frame's end. Non-increasing times are dropped.
    """
    k, emitted = start_index, 0
    prev, prev_t, end = None, None, None
    for t, frame_end, payload in items:
        if prev_t is not None and t <= prev_t:
            continue
        while prev is not None and k / rate < t:
            yield k, prev
            k, emitted = k + 1, emitted + 1
            if max_frames is not None and emitted >= max_frames:
                return
        prev, prev_t, end = payload, t, frame_end
    while prev is not None and k / rate < end:
        yield k, prev
        k, emitted = k + 1, emitted + 1
        if max_frames is not None and emitted >= max_frames:
            return


def _seconds(x: float) -> Fraction:
    return Fraction(float(x)).limit_denominator(RATE_DENOMINATOR_LIMIT)


def iter_gpu_video_frames(path: str | os.PathLike, *, fps: float | Fraction = FPS, device: str = "cuda",
                          limits: MediaLimits = MediaLimits(), max_frames: int | None = None,
                          host: bool = True) -> Iterator[VideoFrame]:
    """Like engine.media.video.iter_video_frames, decoded by NVDEC (torchcodec's CUDA decoder).

    `host=True` gives numpy [H, W, 3] uint8 frames (what the face path takes today); False keeps CUDA tensors.
    Colour conversion is torchcodec's (on the GPU), so pixels differ slightly from FFmpeg's swscale; torchcodec
    applies the display rotation itself, as the PyAV path does.
    """
    rate = as_rate(fps)
    expect(max_frames is None or max_frames >= 0, InvalidInputError, "max_frames", "None or >= 0", max_frames)
    info = probe(path, limits=limits, require_video=True, decode_check=False)
    decoders = import_optional("torchcodec.decoders", GPU_VIDEO_EXTRA, what="NVDEC decode (--video-io gpu)")
    if max_frames == 0:
        return
    frames = _decode_gpu(decoders, path, info, rate, limits, device, max_frames, host)
    yield from with_timeout(frames, limits.stall_timeout_s, f"{info.path}: {info.video.name} (NVDEC)")


def _decode_gpu(decoders, path, info, rate: Fraction, limits: MediaLimits, device: str, max_frames: int | None,
                host: bool) -> Iterator[VideoFrame]:
    """The body of iter_gpu_video_frames (run under its stall watchdog, as the PyAV path's)."""
    with open_input(path, limits=limits) as container:  # the stream's start time, as the PyAV path uses it
        stream = container.streams[info.video.index]
        origin = stream.start_time * stream.time_base if stream.start_time is not None else None
    decoder = decoders.VideoDecoder(str(path), device=device, dimension_order="NHWC",
                                    stream_index=info.video.index)

    def source() -> Iterator[tuple[Fraction, Fraction, object]]:
        nonlocal origin
        count = len(decoder)
        for start in range(0, count, DECODE_BATCH):
            batch = decoder.get_frames_in_range(start, min(count, start + DECODE_BATCH))
            for i in range(batch.data.shape[0]):
                t = _seconds(batch.pts_seconds[i].item())
                origin = t if origin is None else origin
                yield t - origin, t - origin + _seconds(batch.duration_seconds[i].item()), batch.data[i]

    emitted = 0
    for k, frame in resample_by_time(source(), rate, max_frames=max_frames):
        rgb = frame.cpu().numpy() if host else frame.clone()  # [H, W, 3] uint8
        emitted += 1
        yield VideoFrame(index=k, time_s=float(k / rate), rgb=rgb)
    if not emitted:
        raise MediaDecodeError(f"{path}: video stream {info.video.index}: expected decodable frames, found none")


# ----------------------------------------------------------------- encode
def rgb_to_nv12(rgb):  # torch uint8 [H, W, 3] (any device) -> uint8 [H * 3 / 2, W]
    """FFmpeg's default RGB -> YUV (BT.601, limited range, untagged), as the PyAV writer, in NV12 layout.

    Chroma is the mean of each 2x2 block. Runs on the tensor's own device (the GPU before NVENC).
    """
    import torch

    h, w = rgb.shape[:2]
    expect(h % 2 == 0 and w % 2 == 0, InvalidInputError, "NV12 frame size", "even width and height", (w, h))
    x = rgb.to(torch.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    uv = torch.stack([u, v], dim=-1).reshape(h // 2, 2, w // 2, 2, 2).mean(dim=(1, 3))  # [H/2, W/2, 2]
    out = torch.empty((h * 3 // 2, w), dtype=torch.uint8, device=rgb.device)
    out[:h] = y.round().clamp(0, 255).to(torch.uint8)
    out[h:] = uv.reshape(h // 2, w).round().clamp(0, 255).to(torch.uint8)
    return out


class _CudaArray:
    """One plane as a `__cuda_array_interface__` (what PyNvVideoCodec's Encode reads from a frame's cuda())."""

    def __init__(self, shape, strides, pointer: int) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "strides": strides, "data": (pointer, False),
                                         "typestr": "|u1", "version": 3}


class _Nv12Surface:
    """An NV12 frame on the GPU ([H * 3/2, W] uint8 contiguous tensor) as the two planes NVENC takes."""

    def __init__(self, nv12) -> None:
        self.tensor = nv12  # keeps the memory alive while NVENC reads it
        h, w = nv12.shape[0] * 2 // 3, nv12.shape[1]
        base = nv12.data_ptr()
        self.planes = [_CudaArray((h, w, 1), (w, 1, 1), base), _CudaArray((h // 2, w // 2, 2), (w, 2, 1), base + w * h)]

    def cuda(self):
        return self.planes


def _bitstream(packets) -> bytes:
    """Encode / EndEncode output as bytes: PyNvVideoCodec 2.x gives a list of {"data": ...} packets; older
    releases bytes or a numpy array."""
    if packets is None:
        return b""
    if isinstance(packets, (bytes, bytearray, memoryview)):
        return bytes(packets)
    if isinstance(packets, np.ndarray):
        return packets.tobytes()
    if isinstance(packets, dict):
        return bytes(packets["data"])
    return b"".join(_bitstream(p) for p in packets)


def mux_elementary_stream(h264: Path, target: Path, *, rate: Fraction, audio: np.ndarray | None,
                          sample_rate: int = SAMPLE_RATE, faststart: bool = True) -> int:
    """Mux an H.264 Annex B stream (no B-frames) and float audio [C, S] into mp4 `target`; returns frames muxed.

    Video packets are copied (no re-encode) with pts = dts = k at time base 1 / rate; audio is AAC in 1024-sample
    frames with the movie timescale at the sample rate, as engine.media.writer.VideoWriter writes them.
    """
    from engine.media.writer import AAC_BIT_RATE, AAC_FRAME_SAMPLES, AUDIO_LAYOUTS

    options = {"movflags": "+faststart"} if faststart else {}
    if audio is not None:
        options["movie_timescale"] = str(sample_rate)
    frames = 0
    with av.open(str(h264), format="h264") as source, \
            av.open(str(target), mode="w", format="mp4", options=options) as out:
        video_in = source.streams.video[0]
        video = out.add_stream_from_template(video_in)
        video.time_base = 1 / rate
        aac = None
        if audio is not None:
            aac = out.add_stream("aac", rate=sample_rate)
            aac.layout = AUDIO_LAYOUTS[audio.shape[0]]
            aac.bit_rate = AAC_BIT_RATE * audio.shape[0]
        audio_pts = 0

        def encode_audio(until: int | None) -> None:
            nonlocal audio_pts
            while aac is not None and audio_pts < audio.shape[1] and (until is None or audio_pts < until):
                chunk = np.ascontiguousarray(audio[:, audio_pts:audio_pts + AAC_FRAME_SAMPLES])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=aac.layout.name)
                frame.sample_rate, frame.pts, frame.time_base = sample_rate, audio_pts, Fraction(1, sample_rate)
                audio_pts += chunk.shape[1]
                for packet in aac.encode(frame):
                    out.mux(packet)

        for packet in source.demux(video_in):
            if packet.size == 0:
                continue
            packet.stream = video
            packet.pts = packet.dts = frames
            packet.duration = 1
            packet.time_base = 1 / rate
            out.mux(packet)
            frames += 1
            encode_audio(until=int(frames / rate * sample_rate))
        if aac is not None:
            encode_audio(until=None)
            for packet in aac.encode(None):
                out.mux(packet)
    return frames


class GpuVideoWriter(AtomicOutput):
    """The VideoWriter interface (write(rgb), close(), abort(), frames_written, path) with NVENC encode.

    The elementary stream goes to one `.partial` file, the mp4 to another; close() muxes and renames (atomic);
    abort(), an exception inside `with`, or garbage collection removes both.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, *, fps: float | Fraction = FPS,
                 audio: np.ndarray | None = None, sample_rate: int = SAMPLE_RATE, device: str = "cuda",
                 bitrate: int | None = None, faststart: bool = True) -> None:
        from engine.media.writer import _check_track

        self.path = check_output(path, suffixes=None)
        for name, value in (("width", width), ("height", height)):
            expect(isinstance(value, int) and value > 0, InvalidInputError, name, "a positive int", value)
        self.width, self.height, self.rate = width, height, as_rate(fps)
        self.encoded_size = (width + width % 2, height + height % 2)
        self.audio = None if audio is None else _check_track(audio, "audio")  # [C, S]
        self.sample_rate, self.faststart, self.device = sample_rate, faststart, device
        self.frames_written = 0
        nvc = import_optional("PyNvVideoCodec", GPU_VIDEO_EXTRA, what="NVENC encode (--video-io gpu)")
        options = dict(NVENC_OPTIONS, fps=str(math.ceil(self.rate)), gop=str(max(1, round(self.rate * 10))))
        if bitrate:
            options["bitrate"] = str(bitrate)
        w, h = self.encoded_size
        self._nvc = nvc
        self._encoder = nvc.CreateEncoder(w, h, "NV12", False, **options)  # False: input in GPU memory
        self._stream_path = partial_path(self.path)
        self._tmp = partial_path(self.path)
        self._file = open(self._stream_path, "wb")
        self._finalizer = weakref.finalize(self, _discard_files, self._file, (self._stream_path, self._tmp))

    def write(self, rgb) -> None:
        """Encode one frame [height, width, 3] uint8 RGB (numpy, or a torch tensor already on the GPU)."""
        import torch

        expect(self._finalizer.alive, InvalidInputError, f"GpuVideoWriter({self.path})", "an open writer",
               "a closed or aborted writer")
        expect(tuple(rgb.shape) == (self.height, self.width, 3), InvalidInputError, "frame shape",
               f"({self.height}, {self.width}, 3)", tuple(rgb.shape))
        frame = torch.as_tensor(rgb).to(self.device, non_blocking=True)
        expect(frame.dtype == torch.uint8, InvalidInputError, "frame dtype", "uint8", frame.dtype)
        if self.encoded_size != (self.width, self.height):  # odd sizes: repeat the last column / row
            frame = torch.nn.functional.pad(frame.permute(2, 0, 1)[None].float(),
                                            (0, self.width % 2, 0, self.height % 2), mode="replicate")
            frame = frame[0].permute(1, 2, 0).to(torch.uint8)
        surface = _Nv12Surface(rgb_to_nv12(frame).contiguous())
        if hasattr(self._nvc, "NV_ENC_PIC_PARAMS"):  # PyNvVideoCodec 2.x: the frame's timestamp goes with it
            params = self._nvc.NV_ENC_PIC_PARAMS()
            params.inputTimeStamp = self.frames_written
            packets = self._encoder.Encode(surface, params)
        else:
            packets = self._encoder.Encode(surface)
        self._write_bytes(_bitstream(packets))
        self.frames_written += 1

    def _write_bytes(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as e:
            self.abort()
            if is_write_failure(e):
                raise output_write_error(self.path, e) from e
            raise

    def close(self) -> Path:
        """Flush NVENC, mux video + audio with PyAV, rename onto the target. Returns the target path."""
        expect(self._finalizer.alive, InvalidInputError, f"GpuVideoWriter({self.path})", "an open writer",
               "a closed or aborted writer")

        def finish() -> None:
            expect(self.frames_written > 0, InvalidInputError, f"GpuVideoWriter({self.path})", "at least one frame",
                   "no frames written")
            self._write_bytes(_bitstream(self._encoder.EndEncode()))
            self._file.close()
            muxed = mux_elementary_stream(self._stream_path, self._tmp, rate=self.rate, audio=self.audio,
                                          sample_rate=self.sample_rate, faststart=self.faststart)
            expect(muxed == self.frames_written, MediaDecodeError, f"NVENC stream for {self.path}",
                   f"{self.frames_written} frames", f"{muxed}")

        self._commit(finish, self._tmp)
        self._finalizer()  # removes the elementary stream (the mp4 is already renamed)
        return self.path



def _discard_files(handle, paths) -> None:
    try:
        handle.close()
    except OSError:
        pass
    for p in paths:
        try:
            Path(p).unlink()
        except FileNotFoundError:
            pass
