"""What a batch shares across all its jobs: the model and where it runs (`engine run`'s model options)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelOptions:
    """`--model`, `--device`, `--dtype`, `--backend`, `--face` (default face source), `--offline`."""

    model: str = "latentsync-1.6"
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"
    face: str = "auto"
    offline: bool = False
    artifacts: str | None = None  # --artifacts: built ONNX files / engines to use

    @classmethod
    def from_args(cls, args) -> "ModelOptions":
        """The options `engine.cli.options.add_model_options` parsed (batch, serve --ray)."""
        return cls(model=args.model, device=args.device, dtype=args.dtype, backend=args.backend, face=args.face,
                   offline=args.offline, artifacts=args.artifacts)

    def load(self):
        """A loaded `LipSync` (what `engine run` loads with the same options)."""
        from engine.backends.config import EngineConfig
        from engine.pipeline.sdk import LipSync

        engine = EngineConfig(artifact_dir=self.artifacts) if self.artifacts else None
        return LipSync.from_pretrained(self.model, device=self.device, dtype=self.dtype, face=self.face,
                                       backend=self.backend, offline=self.offline, engine=engine)

    def identity(self) -> dict:
        """The options that change output pixels (offline and the default face do not: faces are per job)."""
        return {k: v for k, v in asdict(self).items() if k not in ("offline", "face")}
