"""How big the README's no-GPU environment is: a fresh virtual environment, the CPU build of torch first, then the
engine with the extras the README names, measured on disk (`du`), with the packages pip installed.

Usage: python benchmarks/install_size.py [--torch "torch==2.13.0"] [--index-url URL] [--out FILE]

`--torch` and `--index-url` give the first step: the README's is `pip install torch --index-url
https://download.pytorch.org/whl/cpu`; where the configured index already serves the CPU build, `--torch
"torch==2.13.0"` without `--index-url` installs the same wheel. The result records which torch build it got and
fails if any `nvidia-*` package was installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_utils import REPO, RESULTS, machine_info  # noqa: E402

EXTRAS = ".[cpu,face,serve,plot]"


def _run(argv: list[str]) -> None:
    subprocess.run(argv, cwd=REPO, check=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def disk_bytes(path: Path) -> int:
    """Bytes on disk, as `du -s` counts them (blocks, hard links once)."""
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch", default="torch", help='the first step\'s requirement (default "torch")')
    parser.add_argument("--index-url", default="https://download.pytorch.org/whl/cpu",
                        help="the first step's index ('' : the configured one)")
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_install_size.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        python = str(venv / "bin" / "python")
        first = ["pip", "install", args.torch] + (["--index-url", args.index_url] if args.index_url else [])
        second = ["pip", "install", "-e", EXTRAS]
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([python, "-m", *first])
        _run([python, "-m", *second])
        packages = json.loads(subprocess.run([python, "-m", "pip", "list", "--format=json"], check=True,
                                             capture_output=True, text=True).stdout)
        size = disk_bytes(venv)
    versions = {p["name"].lower(): p["version"] for p in packages}
    nvidia = sorted(name for name in versions if name.startswith("nvidia-"))
    report = {
        "benchmark": "install_size",
        "command": shlex.join(["python", "benchmarks/install_size.py", *sys.argv[1:]]),
        "steps": ["python3 -m venv VENV", shlex.join(first), shlex.join(second)],
        "machine": machine_info(),
        "size_bytes": size,
        "size_gib": round(size / 2**30, 2),
        "packages": len(packages),
        "nvidia_packages": nvidia,
        "torch": versions.get("torch"),
        "onnxruntime": versions.get("onnxruntime"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{report['size_gib']} GiB, {len(packages)} packages, torch {report['torch']}, nvidia packages: {nvidia}")
    print(f"wrote {args.out}")
    if nvidia:
        raise SystemExit(f"nvidia packages were installed: {nvidia}")


if __name__ == "__main__":
    main()
