"""`engine doctor`: what this machine can run, and why not."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform


def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="report what this machine can run and why not", description=__doc__)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run)


def _module_version(name: str) -> tuple[str | None, str | None]:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - report any import failure
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return getattr(module, "__version__", "installed"), None


def collect() -> dict:
    import torch

    report: dict = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__}
    cuda = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if cuda["available"]:
        cuda["devices"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                "fp16": True,
                "bf16": torch.cuda.get_device_capability(i)[0] >= 8,
            }
            for i in range(torch.cuda.device_count())
        ]
    else:
        cuda["why_not"] = "no CUDA device visible to torch" if torch.version.cuda else "CPU-only torch build"
    report["cuda"] = cuda
    ort_version, ort_err = _module_version("onnxruntime")
    report["onnxruntime"] = {"version": ort_version, "why_not": ort_err}
    if ort_version:
        import onnxruntime

        report["onnxruntime"]["providers"] = onnxruntime.get_available_providers()
    for name in ("tensorrt", "triton", "ai_edge_litert"):
        version, err = _module_version(name)
        report[name] = {"version": version, "why_not": err}
    report["backends"] = _backends()
    report["models"] = _models()
    return report


def _backends() -> dict:
    try:
        from engine.backends import availability
    except Exception as exc:  # noqa: BLE001 - the backends layer is optional here
        return {"why_not": f"{type(exc).__name__}: {exc}"}
    return availability()


def _models() -> dict:
    """Which registry models resolve from the local cache alone (no network)."""
    try:
        from engine.weights import MODELS, engine_cache_dir, resolve_model
    except Exception as exc:  # noqa: BLE001
        return {"why_not": f"{type(exc).__name__}: {exc}"}
    out: dict = {"engine_cache": str(engine_cache_dir()), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "")}
    for name in MODELS:
        try:
            resolve_model(name, offline=True)
            out[name] = "cached"
        except Exception as exc:  # noqa: BLE001 - report why not
            out[name] = f"not cached ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    return out


def _run(args: argparse.Namespace) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"python {report['python']} on {report['platform']}")
    print(f"torch {report['torch']} (CUDA build: {report['cuda']['torch_cuda']})")
    if report["cuda"]["available"]:
        for d in report["cuda"]["devices"]:
            print(f"  GPU {d['name']}  sm {d['compute_capability']}  {d['memory_gib']} GiB  bf16={d['bf16']}")
    else:
        print(f"  CUDA: no ({report['cuda']['why_not']})")
    for name in ("onnxruntime", "tensorrt", "triton", "ai_edge_litert"):
        entry = report[name]
        status = entry["version"] or f"no ({entry['why_not']})"
        extra = f" providers={entry['providers']}" if entry.get("providers") else ""
        print(f"{name}: {status}{extra}")
    print("backends:", json.dumps(report["backends"], default=str))
    print("models:", json.dumps(report["models"], default=str))
    return 0
