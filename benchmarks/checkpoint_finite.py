"""Cost of refusing NaN/Inf weights at load (engine.weights.checkpoints.check_finite), on the tiny-random model and
a large random state dict, against the time to read the same checkpoint. Writes JSON.

    python benchmarks/checkpoint_finite.py --params 300 --out benchmarks/results/checkpoint_finite.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.bench_utils import machine_info  # noqa: E402
from engine.weights.checkpoints import check_finite, read_state_dict, write_safetensors  # noqa: E402


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(state: dict, path: Path) -> dict:
    write_safetensors(state, path)
    read = timed(lambda: {k: v.clone() for k, v in read_state_dict(path, container_key=None).items()})
    loaded = read_state_dict(path, container_key=None)
    check = timed(lambda: check_finite(loaded, source=path))
    return {"tensors": len(state), "params": sum(v.numel() for v in state.values()),
            "bytes": os.path.getsize(path), "read_s": read, "check_s": check, "check_vs_read": check / read}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=int, default=300, help="millions of fp32 parameters in the large state dict")
    ap.add_argument("--out", default="benchmarks/results/checkpoint_finite.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from engine.weights.tiny import tiny_unet_state_dict

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows["tiny_unet"] = measure(tiny_unet_state_dict(), Path(tmp) / "tiny.safetensors")
        per = 4_000_000  # about the size of a large U-Net conv/attention weight
        large = {f"w{i}": torch.randn(per) for i in range(args.params * 1_000_000 // per)}
        rows[f"random_{args.params}M"] = measure(large, Path(tmp) / "large.safetensors")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "checkpoint_finite", "rows": rows, "command": " ".join(sys.argv),
                               **machine_info("1 torch thread; best of 3")}, indent=1) + "\n")
    for name, row in rows.items():
        print(f"{name}: {row['tensors']} tensors, {row['params'] / 1e6:.1f} M params: read {row['read_s']:.3f} s, "
              f"check {row['check_s']:.3f} s ({100 * row['check_vs_read']:.1f} % of the read)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
