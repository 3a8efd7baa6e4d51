"""Voice-agent latency: speech in -> first talking frame out, through the StreamSession itself, the Pipecat video
service (a real Pipecat pipeline) and the LiveKit Agents VideoGenerator.

TTS-like speech is pushed in 40 ms pieces on the wall clock into a live session (chunk 8,
lookahead 0, one denoising step without guidance); the latency is the time from the first
piece pushed to the first lip-synced frame out of each path. The paths run in turns (session,
pipecat, livekit, session, ...) so machine load hits them alike; medians and the ratios to the
session are reported, with the session's first-chunk compute (what dominates on a CPU).
CPU with tiny-random (random weights): the figures show the structure (what the integrations
add on top of the session), not what a GPU with real weights does.

    python benchmarks/voice_agents.py --repeats 3
    python benchmarks/voice_agents.py --model latentsync-1.6 --device cuda --steps 20 --out /tmp/va.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import RESULTS, machine_info  # noqa: E402

PIECE_S = 0.04
RATE = 16_000


def demo_source(num_frames: int):
    """The e2e_demo1 crop (frames [T,320,320,3], landmarks [T,3,2]) and its speech, from the shared fixtures
    ($LATENTSYNC_SHARED, as the tests, else the folder beside the checkout)."""
    import os

    from safetensors.numpy import load_file

    shared = Path(os.environ.get("LATENTSYNC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    root = shared / "golden" / "e2e_demo1"
    inputs = load_file(root / "inputs.safetensors")
    frames = np.load(root / "inputs_frames.npz")["frames"][:num_frames]
    return frames, inputs["landmarks3"][:num_frames], inputs["audio_16k"]


def _config(args):
    from engine.pipeline.config import resolve_config
    from engine.stream import StreamConfig

    return StreamConfig(mode="live", chunk_frames=args.chunk, lookahead_ms=args.lookahead_ms, realtime=False,
                        sync=resolve_config("reference", steps=args.steps, guidance_scale=args.guidance))


def _pieces(speech: np.ndarray) -> list[np.ndarray]:
    piece = int(PIECE_S * RATE)
    return [speech[k:k + piece] for k in range(0, speech.size, piece)]


async def _paced(pieces, push) -> float:
    """Push the pieces on the wall clock (40 ms apart); returns the time of the first push."""
    t0 = time.time()
    for k, piece in enumerate(pieces):
        await asyncio.sleep(max(0.0, t0 + k * PIECE_S - time.time()))
        await push(piece)
    return t0


def run_session(sync, frames, face, speech, args) -> dict:
    from engine.stream import StreamSession

    first: list[float] = []
    session = StreamSession(sync, frames, _config(args), face=face,
                            on_frame=lambda f: first.append(time.time()) if f.kind == "speech" else None)

    async def push(piece):
        session.push_audio(piece)

    t0 = asyncio.run(_paced(_pieces(speech), push))
    while not first and session.worker_alive:
        time.sleep(0.005)
    chunk_s = session.chunk_seconds[0] if session.chunk_seconds else None
    session.close()
    return {"latency_s": first[0] - t0, "first_chunk_compute_s": chunk_s}


def run_pipecat(sync, frames, face, speech, args) -> dict:
    from pipecat.frames.frames import CancelFrame, OutputImageRawFrame, TTSAudioRawFrame, TTSStartedFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import WorkerRunner
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.frame_processor import FrameProcessor

    from engine.integrations.pipecat import LatentSyncVideoService

    first: list[float] = []

    class Sink(FrameProcessor):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, OutputImageRawFrame) and not first:
                first.append(time.time())
            await self.push_frame(frame, direction)

    service = LatentSyncVideoService(sync=sync, source=frames, config=_config(args), face=face)
    worker = PipelineWorker(Pipeline([service, Sink()]), cancel_on_idle_timeout=False)

    async def talk():
        while service.session is None:
            await asyncio.sleep(0.005)
        await worker.queue_frame(TTSStartedFrame())

        async def push(piece):
            pcm = np.round(piece * 32767).astype(np.int16)
            await worker.queue_frame(TTSAudioRawFrame(audio=pcm.tobytes(), sample_rate=RATE, num_channels=1))

        t0 = await _paced(_pieces(speech), push)
        while not first:
            await asyncio.sleep(0.005)
        await worker.queue_frame(CancelFrame())
        return t0

    async def main():
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        return (await asyncio.gather(runner.run(), talk()))[1]

    t0 = asyncio.run(main())
    return {"latency_s": first[0] - t0}


def run_livekit(sync, frames, face, speech, args) -> dict:
    from livekit import rtc

    from engine.integrations.livekit import LatentSyncVideoGenerator

    async def main():
        generator = LatentSyncVideoGenerator(sync, frames, config=_config(args), face=face)
        await generator.start()
        out = generator.__aiter__()

        async def push(piece):
            pcm = np.round(piece * 32767).astype(np.int16)
            await generator.push_audio(rtc.AudioFrame(pcm.tobytes(), RATE, 1, pcm.size))

        pusher = asyncio.create_task(_paced(_pieces(speech), push))
        first = None
        async for item in out:
            if isinstance(item, rtc.VideoFrame):
                first = time.time()
                break
        t0 = await pusher
        await generator.aclose()
        return first - t0

    return {"latency_s": asyncio.run(main())}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--lookahead-ms", type=float, default=0.0)
    p.add_argument("--seconds", type=float, default=1.0, help="speech pushed per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "voice_agents_cpu_tiny.json"))
    args = p.parse_args(argv)

    import logging

    from engine.pipeline.faces import LandmarkArraySource
    from engine.pipeline.sdk import LipSync

    logging.getLogger("pipecat").setLevel(logging.WARNING)
    sync = LipSync.from_pretrained(args.model, device=args.device)
    frames, landmarks, audio = demo_source(10)
    speech = np.tile(audio, 2)[:int(args.seconds * RATE)]
    paths = {"session": run_session, "pipecat": run_pipecat, "livekit": run_livekit}
    runs: dict[str, list[dict]] = {name: [] for name in paths}
    paths["session"](sync, frames, LandmarkArraySource(landmarks), speech, args)  # warm-up (not recorded)
    for _ in range(args.repeats):
        for name, run in paths.items():
            runs[name].append(run(sync, frames, LandmarkArraySource(landmarks), speech, args))
    config = _config(args)
    median = {name: statistics.median(r["latency_s"] for r in rs) for name, rs in runs.items()}
    compute = statistics.median(r["first_chunk_compute_s"] for r in runs["session"])
    report = {
        "benchmark": "voice_agents",
        "label": f"{args.device.upper()}, {args.model}" + (" (random weights: structure only, not real-model "
                                                           "latency)" if args.model == "tiny-random" else ""),
        "command": "python benchmarks/voice_agents.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info("2-core CPU shared with other jobs: compare ratios within this run"),
        "settings": {"mode": "live", "chunk_frames": args.chunk, "lookahead_ms": args.lookahead_ms,
                     "steps": args.steps, "guidance": args.guidance, "speech_s": args.seconds,
                     "piece_ms": PIECE_S * 1000, "source": "e2e_demo1 320x320, 10 frames", "repeats": args.repeats},
        "latency_floor_s": round(config.latency_floor_s, 3),
        "first_chunk_compute_s_median": round(compute, 3),
        "latency_s_median": {k: round(v, 3) for k, v in median.items()},
        "ratio_to_session": {k: round(v / median["session"], 3) for k, v in median.items()},
        "added_by_integration_s": {k: round(v - median["session"], 3) for k, v in median.items() if k != "session"},
        "runs": {k: [{kk: (round(vv, 4) if vv is not None else None) for kk, vv in r.items()} for r in rs]
                 for k, rs in runs.items()},
        "versions": _versions(),
    }
    report["dominates"] = ("the first chunk's compute" if compute > report["latency_floor_s"]
                           else "waiting for the speech the first chunk needs (the latency floor)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("label", "latency_floor_s", "first_chunk_compute_s_median",
                                              "latency_s_median", "ratio_to_session", "dominates")}, indent=2))
    return report


def _versions() -> dict:
    import importlib.metadata as m

    return {name: m.version(name) for name in ("pipecat-ai", "livekit-agents", "livekit", "torch")}


if __name__ == "__main__":
    main()
