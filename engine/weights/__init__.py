"""Model names, file resolution (HF hub cache, local folders, tiny-random) and strict, safe weight loading."""

from engine.weights.checkpoints import (
    check_state_dict,
    read_checkpoint,
    read_state_dict,
    sha256_file,
    write_official_unet_checkpoint,
    write_safetensors,
)
from engine.weights.convert import convert_model
from engine.weights.files import ModelFiles, engine_cache_dir, resolve_model
from engine.weights.loader import (
    LoadedModels,
    load_models,
    load_unet_checkpoint,
    load_vae,
    load_whisper,
    read_unet_state_dict,
)
from engine.weights.registry import MODELS, TINY_RANDOM, ModelSpec, get_spec, model_names
from engine.weights.tiny import ensure_tiny_random

__all__ = [
    "MODELS",
    "TINY_RANDOM",
    "LoadedModels",
    "ModelFiles",
    "ModelSpec",
    "check_state_dict",
    "convert_model",
    "ensure_tiny_random",
    "engine_cache_dir",
    "get_spec",
    "load_models",
    "load_unet_checkpoint",
    "load_vae",
    "load_whisper",
    "model_names",
    "read_checkpoint",
    "read_state_dict",
    "read_unet_state_dict",
    "resolve_model",
    "sha256_file",
    "write_official_unet_checkpoint",
    "write_safetensors",
]
