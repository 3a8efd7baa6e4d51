"""A minimal client of `engine serve`'s WebSocket protocol (docs/serving.md): speech in, frames out.

    python examples/ws_client.py --url ws://127.0.0.1:8765/stream --source demo1 \
        --audio examples/media/demo1_audio.wav --out frames

It opens one session on the server's source NAME, sends a WAV file's speech as 16 kHz mono int16 PCM, says
end of speech, saves every frame of the utterance as an image (JPEG or PNG, as the server sends them) with its
header in `frames.jsonl`, then closes the session and writes the server's `started` and `closed` messages to
`session.json`. It needs only `websockets` (the `[serve]` extra) and numpy, not the engine.
Exit status: 0 when the session closed normally, 1 when the server refused or failed it (its error is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000  # what the server expects: 16 kHz mono int16 little-endian PCM
MESSAGE_SECONDS = 0.2  # speech per binary message (any whole number of samples is allowed)
HEADER_LENGTH = struct.Struct(">I")  # a frame message starts with its JSON header's length, big-endian uint32
IMAGE_SUFFIX = {"jpeg": ".jpg", "png": ".png"}


def read_speech(path: Path) -> np.ndarray:
    """A 16-bit PCM WAV file -> int16 samples [n] at 16 kHz mono (channels averaged, linear resampling)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise SystemExit(f"{path}: expected 16-bit PCM WAV, found {8 * wav.getsampwidth()}-bit samples")
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, channels)
    mono = samples.astype(np.float64).mean(axis=1)  # [n]
    if rate != SAMPLE_RATE:
        times = np.arange(round(len(mono) * SAMPLE_RATE / rate)) / SAMPLE_RATE
        mono = np.interp(times, np.arange(len(mono)) / rate, mono)
    return np.clip(np.round(mono), -32768, 32767).astype("<i2")


def split_frame(message: bytes) -> tuple[dict, bytes]:
    """A binary frame message -> (its JSON header, the image bytes)."""
    (n,) = HEADER_LENGTH.unpack_from(message)
    header = json.loads(message[HEADER_LENGTH.size:HEADER_LENGTH.size + n])
    return header, message[HEADER_LENGTH.size + n:]


async def run_session(url: str, source: str, speech: np.ndarray, out: Path, mode: str) -> int:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    out.mkdir(parents=True, exist_ok=True)
    try:
        async with connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "start", "source": source, "mode": mode, "realtime": False}))
            started = json.loads(await ws.recv())
            if started["type"] != "started":
                print(f"refused: {started}", file=sys.stderr)
                return 1
            step = round(MESSAGE_SECONDS * SAMPLE_RATE)
            for start in range(0, len(speech), step):
                await ws.send(speech[start:start + step].tobytes())
            await ws.send(json.dumps({"type": "end_of_speech"}))
            suffix = IMAGE_SUFFIX[started["frame_format"]]
            saved = 0
            with open(out / "frames.jsonl", "w") as headers:
                while True:
                    message = await ws.recv()
                    if isinstance(message, str):  # an error; QueueFullError leaves the session open
                        error = json.loads(message)
                        print(f"server error: {error['error']}: {error['message']}", file=sys.stderr)
                        if error["error"] != "QueueFullError":
                            return 1
                        continue
                    header, image = split_frame(message)
                    (out / f"{header['index']:06d}{suffix}").write_bytes(image)
                    headers.write(json.dumps(header) + "\n")
                    saved += 1
                    if header["kind"] == "speech" and header["final"]:
                        break
            await ws.send(json.dumps({"type": "close"}))
            closed = json.loads(await ws.recv())
            (out / "session.json").write_text(json.dumps({"started": started, "closed": closed}, indent=1))
            print(f"{saved} frames saved in {out}; session closed: {closed['stats']['frames_emitted']} frames emitted")
            return 0
    except ConnectionClosed as exc:
        close = exc.rcvd
        print(f"connection closed by the server: {close.code if close else '?'} {close.reason if close else ''}",
              file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8765/stream", help="the server's WebSocket URL")
    parser.add_argument("--source", required=True, help="a source NAME the server was started with")
    parser.add_argument("--audio", type=Path, required=True, help="speech: a 16-bit PCM WAV file (any rate)")
    parser.add_argument("--out", type=Path, default=Path("frames"), help="folder for the frames")
    parser.add_argument("--mode", choices=("utterance", "live"), default="utterance")
    args = parser.parse_args(argv)
    return asyncio.run(run_session(args.url, args.source, read_speech(args.audio), args.out, args.mode))


if __name__ == "__main__":
    sys.exit(main())
