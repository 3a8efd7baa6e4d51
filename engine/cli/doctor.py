"""`engine doctor`: what this machine can run, and why not.

Only what is usable here is listed as usable: an ONNX Runtime wheel lists its CUDA and TensorRT providers on
any machine, so they are reported as "listed but unusable" (with the reason) when there is no CUDA device.
Caches are inspected without touching the network, and nothing is reported as "offline" unless the user
asked for it (HF_HUB_OFFLINE).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="report what this machine can run and why not", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
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
    report["cuda_without_gpu"] = cuda_libraries_without_gpu(torch.__version__, torch.version.cuda, cuda["available"])
    report["onnxruntime"] = _onnxruntime(cuda)
    for name in ("tensorrt", "triton", "ai_edge_litert"):
        version, err = _module_version(name)
        report[name] = {"version": version, "why_not": err}
    report["extras"] = _extras()
    report["backends"] = _backends()
    report["offline"] = _offline()
    report["models"] = _models()
    report["face_models"] = _face_models()
    report["shadowed_packages"] = _shadowed()
    return report


CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def nvidia_distributions() -> dict[str, int]:
    """{name: installed bytes} of every `nvidia-*` pip distribution (CUDA runtime libraries)."""
    import importlib.metadata

    found: dict[str, int] = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("nvidia-") and name not in found:
            size = 0
            for f in dist.files or ():
                try:
                    size += os.path.getsize(dist.locate_file(f))
                except OSError:
                    pass
            found[name] = size
    return found


def gpu_visible(torch_sees_cuda: bool) -> bool:
    """A GPU torch can use, or an NVIDIA device node (a CPU torch build cannot tell)."""
    return torch_sees_cuda or os.path.exists("/dev/nvidiactl")


def cuda_libraries_without_gpu(torch_version: str, torch_cuda: str | None, torch_sees_cuda: bool) -> str | None:
    """A warning when CUDA libraries (a +cuXXX torch, nvidia-* wheels) are installed but no GPU is visible."""
    if gpu_visible(torch_sees_cuda):
        return None
    found = []
    if torch_cuda or "+cu" in torch_version:
        found.append(f"torch {torch_version} is a CUDA build (CUDA {torch_cuda})")
    nvidia = nvidia_distributions()
    if nvidia:
        found.append(f"{len(nvidia)} nvidia-* packages ({sum(nvidia.values()) / 2**30:.1f} GiB: "
                     f"{', '.join(sorted(nvidia)[:3])}{', ...' if len(nvidia) > 3 else ''})")
    if not found:
        return None
    return ("CUDA libraries are installed but no GPU is visible: " + "; ".join(found) + ". They are never used "
            "here. For a CPU-only environment install the CPU build of torch first, then the engine: "
            f"pip install torch --index-url {CPU_TORCH_INDEX} (see docs/install-notes.md)")


def _shadowed() -> list[dict]:
    """Installed packages hidden by a folder or module in the working directory (Python puts it first on the path)."""
    from pathlib import Path

    from engine.shadowing import shadows_in

    return [{"name": s.name, "folder": str(s.folder), "distribution": s.distribution, "version": s.version,
             "installed": s.installed, "message": s.describe()} for s in shadows_in(Path.cwd())]


def _onnxruntime(cuda: dict) -> dict:
    """Version and providers, split into usable here and listed-but-unusable (with why)."""
    version, err = _module_version("onnxruntime")
    out: dict = {"version": version, "why_not": err}
    if version is None:
        return out
    import onnxruntime

    listed = onnxruntime.get_available_providers()
    unusable = {}
    for provider in listed:
        if provider in GPU_PROVIDERS and not cuda["available"]:
            unusable[provider] = f"listed by the wheel, but {cuda['why_not']}"
        elif provider == "TensorrtExecutionProvider" and importlib.util.find_spec("tensorrt") is None:
            unusable[provider] = "listed by the wheel, but the TensorRT libraries are not installed (the [trt] extra)"
        elif provider == "AzureExecutionProvider":
            unusable[provider] = "remote inference on Azure, not used by this engine"
    out["providers"] = [p for p in listed if p not in unusable]
    out["providers_unusable"] = unusable
    return out


def _extras() -> dict:
    from engine.extras import status

    return status()


def _backends() -> dict:
    try:
        from engine.backends import availability
    except Exception as exc:  # noqa: BLE001 - the backends layer is optional here
        return {"why_not": f"{type(exc).__name__}: {exc}"}
    return availability()


def _offline() -> dict:
    from engine.weights.files import is_offline

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return {"on": is_offline(), "HF_HUB_OFFLINE": value or None}


def _models() -> dict:
    """Which models are in the local caches (looked up without any network access) and where they would come from."""
    try:
        from huggingface_hub import try_to_load_from_cache

        from engine.eval.weights import STABLE_SYNCNET, SYNCNET_V2
        from engine.weights import MODELS, engine_cache_dir
        from engine.weights.registry import VAE_WEIGHTS_FILE
    except Exception as exc:  # noqa: BLE001
        return {"why_not": f"{type(exc).__name__}: {exc}"}

    def cached(repo: str, filename: str, revision: str | None = None) -> str | None:
        path = try_to_load_from_cache(repo, filename, revision=revision)
        return path if isinstance(path, str) else None

    out: dict = {"engine_cache": str(engine_cache_dir())}
    for name, spec in MODELS.items():
        files = {f"{spec.unet_repo}/{spec.unet_file}": cached(spec.unet_repo, spec.unet_file, spec.revision),
                 f"{spec.unet_repo}/{spec.whisper_file}": cached(spec.unet_repo, spec.whisper_file, spec.revision),
                 f"{spec.vae_repo}/{VAE_WEIGHTS_FILE}": cached(spec.vae_repo, VAE_WEIGHTS_FILE)}
        missing = [f for f, path in files.items() if path is None]
        out[name] = "cached" if not missing else f"not cached (downloaded from the hub on first use: {', '.join(missing)})"
    tiny = engine_cache_dir() / "tiny-random" / "engine.json"
    out["tiny-random"] = (f"ready ({tiny.parent})" if tiny.is_file()
                          else "not made yet (generated locally on first use, no download)")
    for spec in (SYNCNET_V2, STABLE_SYNCNET):  # the evaluator's networks (engine eval)
        path = cached(spec.repo_id, spec.filename)
        out[f"eval:{spec.name}"] = f"cached ({path})" if path else (
            f"not cached (downloaded from {spec.repo_id} on first `engine eval`; or pass its file)")
    return out


def _face_models() -> dict:
    """The face model files: cached and hash-checked, or where they come from on first use."""
    from engine.errors import CheckpointError
    from engine.face.detection import FETCH_FAILED_FILE, models

    out: dict = {"cache": str(models.cache_dir())}
    for label, files, origin in (
        ("mediapipe", (models.MEDIAPIPE_DETECTOR, models.MEDIAPIPE_MESH),
         "fetched from PyPI (the mediapipe 0.10.21 wheel, 1.5 MB read) on first use"),
        ("insightface", (models.INSIGHTFACE_DETECTOR, models.INSIGHTFACE_LANDMARK),
         f"fetched from {models.INSIGHTFACE_PACK.urls[0]} on first use ({models.INSIGHTFACE_PACK.license})"),
    ):
        try:
            paths = [models.cached(f) for f in files]
        except CheckpointError as exc:
            out[label] = f"damaged cache: {exc}"
            continue
        out[label] = (f"cached, hash checked ({', '.join(str(p) for p in paths)})" if all(paths)
                      else f"not cached: {origin}")
    record = models.cache_dir() / FETCH_FAILED_FILE
    if record.is_file() and not all(models.cached(f) for f in (models.INSIGHTFACE_DETECTOR, models.INSIGHTFACE_LANDMARK)):
        try:
            failed = json.loads(record.read_text())
            out["insightface"] += f"; last download failed: {failed.get('reason', '?')}"
        except (OSError, ValueError):
            pass
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
    if report["cuda_without_gpu"]:
        print(f"  WARNING {report['cuda_without_gpu']}")
    ort = report["onnxruntime"]
    if ort["version"]:
        print(f"onnxruntime {ort['version']}: usable providers {', '.join(ort['providers']) or 'none'}")
        for provider, why in ort["providers_unusable"].items():
            print(f"  {provider}: not usable ({why})")
    else:
        print(f"onnxruntime: no ({ort['why_not']})")
    for name in ("tensorrt", "triton", "ai_edge_litert"):
        entry = report[name]
        print(f"{name}: {entry['version'] or 'no (' + str(entry['why_not']) + ')'}")
    print("extras (pip install -e \".[NAME]\"):")
    for name, extra in report["extras"].items():
        state = "installed" if extra["present"] else f"missing ({', '.join(extra['missing'])})"
        print(f"  [{name}] {state}: {extra['purpose']}")
    backends = report["backends"]
    if "why_not" in backends:
        print(f"backends: unknown ({backends['why_not']})")
    else:
        order = backends.pop("auto_order", {})
        for name, entry in backends.items():
            print(f"backend {name}: {'available' if entry['available'] else 'no (' + str(entry['why_not']) + ')'}")
        if order:
            print(f"  --backend auto on {order['device']} tries: {', '.join(order['order'])}")
    offline = report["offline"]
    print(f"offline mode: {'on (HF_HUB_OFFLINE=' + offline['HF_HUB_OFFLINE'] + ')' if offline['on'] else 'off'}")
    print("models:")
    for name, state in report["models"].items():
        print(f"  {name}: {state}")
    print("face models:")
    for name, state in report["face_models"].items():
        print(f"  {name}: {state}")
    shadows = report["shadowed_packages"]
    print(f"shadowed packages: {'none' if not shadows else len(shadows)}")
    for shadow in shadows:
        print(f"  WARNING {shadow['message']}")
    return 0
