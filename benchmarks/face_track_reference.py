"""Reference landmarks from the mediapipe package itself, for `benchmarks/face_track.py` to compare our port with.

mediapipe needs numpy<2, so it runs in a separate virtual environment; the frames come from our own decoder
through a pipe so both sides see identical pixels:

    python benchmarks/face_track_reference.py --emit ../shared/media/demo1_video.mp4 \
      | /path/to/mediapipe-venv/bin/python benchmarks/face_track_reference.py --landmarks OUT.npz

OUT.npz holds `static` and `video` [T,468,2] float32 frame pixels (NaN rows where mediapipe found no face),
from `FaceMesh(static_image_mode=True|False, max_num_faces=1, refine_landmarks=False)`.
"""

from __future__ import annotations

import argparse
import struct
import sys

HEADER = struct.Struct("<III")  # frames, height, width


def emit(video: str) -> None:
    """Decode `video` at 25 fps (engine.media) and write a header then raw RGB frames to stdout."""
    from engine.media import iter_video_frames

    frames = [f.rgb for f in iter_video_frames(video, fps=25)]
    out = sys.stdout.buffer
    out.write(HEADER.pack(len(frames), *frames[0].shape[:2]))
    for rgb in frames:
        out.write(rgb.tobytes())
    out.flush()


def landmarks(path: str) -> None:
    """Read frames from stdin; run mediapipe FaceMesh in static and in video mode; save both."""
    import mediapipe as mp
    import numpy as np

    count, height, width = HEADER.unpack(sys.stdin.buffer.read(HEADER.size))
    size = height * width * 3
    frames = [np.frombuffer(sys.stdin.buffer.read(size), np.uint8).reshape(height, width, 3) for _ in range(count)]
    result = {}
    for mode, static in (("static", True), ("video", False)):
        points = np.full((count, 468, 2), np.nan, np.float32)
        with mp.solutions.face_mesh.FaceMesh(static_image_mode=static, max_num_faces=1) as mesh:
            for i, rgb in enumerate(frames):
                found = mesh.process(rgb).multi_face_landmarks
                if found:
                    points[i] = [(p.x * width, p.y * height) for p in found[0].landmark]
        result[mode] = points
    np.savez_compressed(path, version=np.array(mp.__version__), **result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--emit", metavar="VIDEO", help="decode VIDEO and write raw frames to stdout")
    group.add_argument("--landmarks", metavar="OUT", help="read frames from stdin, write mediapipe landmarks to OUT")
    args = parser.parse_args()
    emit(args.emit) if args.emit else landmarks(args.landmarks)


if __name__ == "__main__":
    main()
