"""Known model names and where their official files live on the Hugging Face hub."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import InvalidInputError

OFFICIAL_VAE_REPO = "stabilityai/sd-vae-ft-mse"
VAE_CONFIG_FILE = "config.json"
VAE_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
TINY_RANDOM = "tiny-random"
RESOLUTIONS = (256, 512)


@dataclass(frozen=True)
class ModelSpec:
    """One released LatentSync model: its hub files and native resolution."""

    name: str
    resolution: int
    unet_repo: str
    unet_file: str = "latentsync_unet.pt"
    whisper_file: str = "whisper/tiny.pt"  # in unet_repo
    vae_repo: str = OFFICIAL_VAE_REPO
    revision: str | None = None  # hub revision (None = main)
    description: str = ""

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise InvalidInputError(f"{self.name} resolution: expected one of {RESOLUTIONS}, found {self.resolution}")


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="latentsync-1.6",
            resolution=512,
            unet_repo="ByteDance/LatentSync-1.6",
            description="LatentSync 1.6, 512 px faces (about 18 GB VRAM officially)",
        ),
        ModelSpec(
            name="latentsync-1.5",
            resolution=256,
            unet_repo="ByteDance/LatentSync-1.5",
            description="LatentSync 1.5, 256 px faces (about 8 GB VRAM officially)",
        ),
    )
}


def model_names() -> list[str]:
    """Every name `load_models` accepts besides a directory."""
    return [*MODELS, TINY_RANDOM]


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise InvalidInputError(
            f"model: expected one of {model_names()} or an existing directory, found {name!r}"
        ) from None
