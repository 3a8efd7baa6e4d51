"""Shared inputs for the streaming tests: the tiny-random model, and golden demo1 frames.

The streaming properties under test (bit-identity with the offline path, ordering,
latency bookkeeping, cancellation) do not depend on network sizes; tiny-random's VAE is
already the narrow one (engine.models.vae.TINY_RANDOM_VAE_OVERRIDES).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SOURCE_FRAMES = 10  # a short source, so every utterance loops it ping-pong


def micro_sync():
    """`LipSync` over the tiny-random models on the CPU in fp32."""
    from engine.pipeline.device import choose_placement
    from engine.pipeline.sdk import LipSync
    from engine.weights import load_models

    return LipSync(load_models("tiny-random"), choose_placement("cpu", "fp32"))


def demo1_inputs(golden: Path, num_frames: int = SOURCE_FRAMES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames uint8 [T,320,320,3], landmarks3 float32 [T,3,2], speech float32 [20480]) of e2e_demo1."""
    from safetensors.numpy import load_file

    root = golden / "e2e_demo1"
    inputs = load_file(root / "inputs.safetensors")
    frames = np.load(root / "inputs_frames.npz")["frames"][:num_frames]
    return frames, inputs["landmarks3"][:num_frames], inputs["audio_16k"]


def still_inputs(golden: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A still avatar: demo1's first frame and landmarks repeated SOURCE_FRAMES times, and demo1's speech (float32),
    so that where a session is in its source loop never changes a frame."""
    frames, landmarks, audio = demo1_inputs(golden)
    return np.repeat(frames[:1], SOURCE_FRAMES, axis=0), np.repeat(landmarks[:1], SOURCE_FRAMES, axis=0), audio


def fast_settings():
    """One denoising step without guidance: the cheapest faithful-path settings."""
    from engine.pipeline.config import resolve_config

    return resolve_config("reference", steps=1, guidance_scale=1.0)


def write_format1_avatar(path: Path, num_frames: int = 2) -> Path:
    """An avatar directory as format 1 wrote it (raw frames.raw / faces.raw / posterior.raw), for upgrade tests."""
    import json

    t, r, h = num_frames, 256, 32
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({
        "model": "tiny-random", "resolution": r, "face_source": "auto", "num_frames": t, "height": 8, "width": 8,
        "latent_size": h, "vae_fingerprint": "0123456789abcdef", "dtype": "float32", "format_version": 1,
        "engine_version": "0.1.0", "created_unix": 0.0}))
    (path / "frames.raw").write_bytes(bytes(t * 8 * 8 * 3))
    (path / "faces.raw").write_bytes(bytes(t * r * r * 3))
    (path / "posterior.raw").write_bytes(bytes(t * 4 * 4 * h * h * 4))
    np.save(path / "matrices.npy", np.zeros((t, 2, 3), np.float32))
    return path


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """(max |a - b| in uint8 steps, fraction of values equal) of two frame stacks of one shape."""
    assert a.shape == b.shape
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(diff.max()), float((diff == 0).mean())


def run_threads(*calls):
    """Run the callables at once, each in its own thread; returns their results (re-raises the first error)."""
    import threading

    results, errors = [None] * len(calls), []

    def run(k):
        try:
            results[k] = calls[k]()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    if errors:
        raise errors[0]
    return results


async def speak_and_collect(ws, pieces) -> tuple[list, dict]:
    """One utterance over an open `engine serve` connection: send the int16 speech `pieces`, end of speech,
    receive every frame up to the utterance's final one, then close. Returns ([(header, rgb)], "closed" message)."""
    import asyncio
    import json

    from engine.stream.server import decode_frame

    for piece in pieces:
        await ws.send(piece.tobytes())
    await ws.send(json.dumps({"type": "end_of_speech"}))
    frames = []
    while not (frames and frames[-1][0]["final"]):
        frames.append(decode_frame(await asyncio.wait_for(ws.recv(), 300)))
    await ws.send(json.dumps({"type": "close"}))
    closed = json.loads(await asyncio.wait_for(ws.recv(), 60))
    return frames, closed
