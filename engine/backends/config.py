"""One frozen engine configuration shared by `engine build/export/run/bench/serve` and the SDK, and the registry
that lets `run` find what `build`/`export` made.

`engine build --frames 8 --out DIR` writes `DIR/engine-config.json` (the profile, precision and typing it
built with) and records DIR for the model in `<engine cache>/engines.json`. `engine run` (and
`LipSync.from_pretrained`) resolve the configuration from there: the same folder, the same profile, so the
engine's key matches and it is found. Only export/build register a folder: `engine bench` and explicit
`--backend onnxruntime` runs leave files that `auto` never picks up unasked.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from engine.audio.features import WINDOW_BATCH
from engine.errors import InvalidInputError, expect
from engine.pipeline.device import DeviceOptions
from export.artifacts import read_json_dict

log = logging.getLogger(__name__)

REGISTRY_FILE = "engines.json"  # <engine cache>/engines.json: {"models": {model: {"artifact_dir": ...}}}
DIR_CONFIG_FILE = "engine-config.json"  # in an artifact folder: what build/export made there and how
REGISTRY_FORMAT = 1
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
ORT_ARENA_STRATEGIES = ("kSameAsRequested", "kNextPowerOfTwo")
_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that capture CUDA graphs
# What a TensorRT engine was built for: `run` must use the same values or the engine key differs.
PROFILE_FIELDS = ("batch", "frames", "audio_batch", "opt_level", "workspace_gib", "typing", "fp32_norms", "precision")


@dataclass(frozen=True)
class EngineConfig:
    """Backend options of one engine: where artifacts live, the TensorRT profile, compile and device settings."""

    artifact_dir: Path | None = None  # ONNX files + engines; None: the folder registered for the model, if any
    use_artifacts: bool | None = None  # may `auto` use built artifacts? None: yes when a folder was given/registered
    allow_build: bool = True  # explicit onnxruntime/tensorrt may export/build what is missing (never `auto`)
    # TensorRT profile and build options (export.trt_builder.BuildSettings, export.specs.BuildShape)
    precision: str = "fp16"  # what `engine build` loads and builds; strongly typed runs take the run's dtype
    batch: int = 2  # largest U-Net batch (2 with classifier-free guidance)
    frames: int = 16  # largest chunk
    audio_batch: int = WINDOW_BATCH  # largest number of 30 s whisper windows per encoder call
    opt_level: int = 3
    workspace_gib: float = 0.0
    typing: str = "strong"  # strongly typed from the graph (fp32 norms kept), or "weak" (builder precision flags)
    fp32_norms: bool = True
    trt_cuda_graphs: bool = True  # TensorRT executor: one CUDA graph per input shape
    ort_providers: tuple[Any, ...] | None = None  # e.g. ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    # ONNX Runtime memory: every session's CPU arena keeps its high-water mark per shape and never returns it;
    # with five sessions that made a 3 s CPU run peak at 5.3x eager torch (benchmarks/results/backend_memory.json).
    ort_cpu_mem_arena: bool = False
    # CUDA EP arena growth: kSameAsRequested grows by what is asked, kNextPowerOfTwo (ORT's default) doubles
    ort_cuda_arena_strategy: str = "kSameAsRequested"
    compile_mode: str | None = None  # torch.compile mode; None: reduce-overhead on CUDA (default without graphs)
    compile_cuda_graphs: bool = True  # let torch.compile capture CUDA graphs (CUDA only)
    device: DeviceOptions = field(default_factory=DeviceOptions)
    modelled: Any = None  # engine.modelled.executor.ModelledOptions for `--backend modelled` (None: its defaults)

    def __post_init__(self) -> None:
        for name in ("batch", "frames", "audio_batch"):
            value = getattr(self, name)
            expect(isinstance(value, int) and value > 0, InvalidInputError, name, "a positive int", value)
        expect(self.typing in ("strong", "weak"), InvalidInputError, "typing", ("strong", "weak"), self.typing)
        expect(self.ort_cuda_arena_strategy in ORT_ARENA_STRATEGIES, InvalidInputError, "ort_cuda_arena_strategy",
               ORT_ARENA_STRATEGIES, self.ort_cuda_arena_strategy)
        expect(self.compile_mode is None or self.compile_mode in COMPILE_MODES, InvalidInputError, "compile mode",
               COMPILE_MODES, self.compile_mode)
        if self.artifact_dir is not None and not isinstance(self.artifact_dir, Path):
            object.__setattr__(self, "artifact_dir", Path(self.artifact_dir).expanduser())

    @property
    def artifacts_opted_in(self) -> bool:
        return self.use_artifacts if self.use_artifacts is not None else self.artifact_dir is not None

    def compile_mode_for(self, device_type: str) -> str:
        """The torch.compile mode to use on `device_type`, honouring `compile_cuda_graphs`."""
        if self.compile_mode is not None:
            if not (self.compile_cuda_graphs and device_type == "cuda"):
                expect(self.compile_mode not in _GRAPH_MODES, InvalidInputError, "compile mode without CUDA graphs",
                       [m for m in COMPILE_MODES if m not in _GRAPH_MODES], self.compile_mode)
            return self.compile_mode
        return "reduce-overhead" if device_type == "cuda" and self.compile_cuda_graphs else "default"

    def profile(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PROFILE_FIELDS}

    def summary(self) -> dict[str, Any]:
        """JSON-ready fields (for reports and the run's settings)."""
        data = dataclasses.asdict(self)
        data["artifact_dir"] = str(self.artifact_dir) if self.artifact_dir else None
        data["artifacts_opted_in"] = self.artifacts_opted_in
        return data


BackendOptions = EngineConfig  # the name this configuration had before it was shared by every front end


# ---------------------------------------------------------------------------------------------- registry
def registry_path() -> Path:
    from engine.weights import engine_cache_dir

    return engine_cache_dir() / REGISTRY_FILE


def default_artifact_dir(model_name: str) -> Path:
    """Where `engine export`/`engine build` write when no --out is given."""
    from engine.weights import engine_cache_dir

    return engine_cache_dir() / "artifacts" / model_name.replace("/", "_")


def bench_artifact_dir(model_name: str) -> Path:
    """Where `engine bench` writes: never registered, so `auto` does not pick its files up."""
    from engine.weights import engine_cache_dir

    return engine_cache_dir() / "bench-artifacts" / model_name.replace("/", "_")


def read_artifact_config(artifact_dir: Path) -> dict[str, Any]:
    """What export/build recorded in `artifact_dir` ({} when nothing was)."""
    return read_json_dict(Path(artifact_dir) / DIR_CONFIG_FILE)


def registered_artifact_dir(model_name: str) -> Path | None:
    """The folder export/build registered for `model_name`, when it still exists."""
    entry = read_json_dict(registry_path()).get("models", {}).get(model_name)
    if not isinstance(entry, dict) or not entry.get("artifact_dir"):
        return None
    path = Path(entry["artifact_dir"])
    return path if path.is_dir() else None


def register_artifacts(model_name: str, artifact_dir: Path, *, written_by: str, section: str,
                       values: dict[str, Any]) -> Path:
    """Record what `written_by` made in `artifact_dir` (its `section`: "onnx" or "tensorrt") and register the folder.

    Both files are rewritten atomically under a lock; other sections and models are kept.
    """
    from export.locking import atomic_write_text, file_lock

    artifact_dir = Path(artifact_dir).resolve()
    dir_file = artifact_dir / DIR_CONFIG_FILE
    with file_lock(dir_file):
        data = read_artifact_config(artifact_dir)
        data.update({"format": REGISTRY_FORMAT, "model": model_name,
                     "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        data[section] = {**data.get(section, {}), **values, "written_by": written_by}
        atomic_write_text(dir_file, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    registry = registry_path()
    with file_lock(registry):
        data = read_json_dict(registry)
        models = data.setdefault("models", {})
        models[model_name] = {"artifact_dir": str(artifact_dir), "written_by": written_by,
                              "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        data["format"] = REGISTRY_FORMAT
        atomic_write_text(registry, json.dumps(data, indent=2, sort_keys=True) + "\n")
    log.info("registered %s for %s in %s (engine run --backend auto uses it)", artifact_dir, model_name, registry)
    return dir_file


def resolve_engine_config(model_name: str, config: EngineConfig | None = None) -> EngineConfig:
    """The configuration a run of `model_name` uses: `config`'s folder, else the registered one, with the
    TensorRT profile recorded there (so the engines built there are the ones looked up)."""
    config = config or EngineConfig()
    folder = config.artifact_dir or registered_artifact_dir(model_name)
    if folder is None:
        return config
    recorded = read_artifact_config(folder).get("tensorrt", {})
    known = {f.name for f in fields(EngineConfig)}
    profile = {k: v for k, v in recorded.items() if k in PROFILE_FIELDS and k in known}
    return replace(config, artifact_dir=Path(folder), **profile)


# ---------------------------------------------------------------------------------------------- CLI
def add_artifacts_argument(parser: argparse.ArgumentParser) -> None:
    """`--artifacts DIR` for commands that use built artifacts (run, serve)."""
    parser.add_argument("--artifacts", metavar="DIR",
                        help="ONNX files / TensorRT engines to use (default: the folder `engine export`/`engine build`"
                             " registered for the model; without one, --backend auto uses eager torch)")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig | None:
    """The EngineConfig a run's arguments ask for, or None when they ask for nothing beyond the defaults."""
    artifacts = getattr(args, "artifacts", None)
    return EngineConfig(artifact_dir=Path(artifacts)) if artifacts else None
