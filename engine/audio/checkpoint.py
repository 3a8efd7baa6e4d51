"""OpenAI whisper checkpoints (`tiny.pt` layout) <-> WhisperAudioEncoder, strict and pickle-free."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from engine.audio.whisper import MLP_RATIO, WhisperAudioEncoder, check_encoder_dims
from engine.errors import CheckpointError, InvalidInputError

SAFETENSORS_DIMS_KEY = "dims"  # safetensors metadata entry holding the openai dims as JSON

# OpenAI encoder block names -> transformers WhisperEncoderLayer names (spec 4.7).
_BLOCK_MAP = {
    "attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm", "mlp.0": "fc1", "mlp.2": "fc2",
    "mlp_ln": "final_layer_norm",
}
_TOP_MAP = {"conv1": "conv1", "conv2": "conv2", "ln_post": "layer_norm"}


def openai_to_hf_key(key: str) -> str | None:
    """`encoder.blocks.0.attn.query.weight` -> `encoder.layers.0.self_attn.q_proj.weight` (None if unknown)."""
    parts = key.split(".")
    if parts[0] != "encoder" or len(parts) < 2:
        return None
    if key == "encoder.positional_embedding":
        return "encoder.embed_positions.weight"
    if parts[1] in _TOP_MAP and len(parts) == 3:
        return f"encoder.{_TOP_MAP[parts[1]]}.{parts[2]}"
    if parts[1] == "blocks" and len(parts) >= 5:
        module = _BLOCK_MAP.get(".".join(parts[3:-1]))
        if module is not None:
            return f"encoder.layers.{parts[2]}.{module}.{parts[-1]}"
    return None


def _attention_shapes(prefix: str, c: int) -> dict:
    shapes = {f"{prefix}.{p}.weight": (c, c) for p in ("query", "key", "value", "out")}
    shapes.update({f"{prefix}.{p}.bias": (c,) for p in ("query", "value", "out")})
    return shapes


def _block_shapes(prefix: str, c: int, attention_names: tuple[str, ...]) -> dict:
    shapes = {}
    for name in attention_names:
        shapes.update(_attention_shapes(f"{prefix}.{name}", c))
        shapes.update({f"{prefix}.{name}_ln.{p}": (c,) for p in ("weight", "bias")})
    shapes.update({f"{prefix}.mlp.0.weight": (MLP_RATIO * c, c), f"{prefix}.mlp.0.bias": (MLP_RATIO * c,),
                   f"{prefix}.mlp.2.weight": (c, MLP_RATIO * c), f"{prefix}.mlp.2.bias": (c,),
                   f"{prefix}.mlp_ln.weight": (c,), f"{prefix}.mlp_ln.bias": (c,)})
    return shapes


def openai_key_shapes(dims: dict, *, include_decoder: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor of an openai whisper state dict with these dims, in checkpoint order."""
    enc = check_encoder_dims(dims)
    c, n_mels = enc["n_audio_state"], enc["n_mels"]
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.positional_embedding": (enc["n_audio_ctx"], c),
        "encoder.conv1.weight": (c, n_mels, 3), "encoder.conv1.bias": (c,),
        "encoder.conv2.weight": (c, c, 3), "encoder.conv2.bias": (c,),
    }
    for i in range(enc["n_audio_layer"]):
        shapes.update(_block_shapes(f"encoder.blocks.{i}", c, ("attn",)))
    shapes.update({"encoder.ln_post.weight": (c,), "encoder.ln_post.bias": (c,)})
    if include_decoder:
        t = int(dims["n_text_state"])
        shapes.update({"decoder.token_embedding.weight": (int(dims["n_vocab"]), t),
                       "decoder.positional_embedding": (int(dims["n_text_ctx"]), t)})
        for i in range(int(dims["n_text_layer"])):
            shapes.update(_block_shapes(f"decoder.blocks.{i}", t, ("attn", "cross_attn")))
        shapes.update({"decoder.ln.weight": (t,), "decoder.ln.bias": (t,)})
    return shapes


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """OpenAI's fixed positional embedding [length, channels] = [sin | cos]."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


def random_whisper_state_dict(dims: dict, seed: int = 0, *, include_decoder: bool = False,
                              dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Seeded random weights in the openai layout: matrices randn/sqrt(fan_in), norms 1+0.1N, biases 0.1N."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in openai_key_shapes(dims, include_decoder=include_decoder).items():
        if key == "encoder.positional_embedding":
            value = sinusoids(*shape)
        elif key.endswith("positional_embedding") or key.endswith("token_embedding.weight"):
            value = 0.02 * torch.randn(shape, generator=generator)
        elif len(shape) > 1:
            value = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
        elif "_ln." in key or key.split(".")[-2] in ("ln", "ln_post"):
            value = (1.0 if key.endswith("weight") else 0.0) + 0.1 * torch.randn(shape, generator=generator)
        else:
            value = 0.1 * torch.randn(shape, generator=generator)
        state[key] = value.to(dtype)
    return state


def write_whisper_checkpoint(path: str | os.PathLike, dims: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write `{"dims", "model_state_dict"}` as OpenAI's `tiny.pt` (loadable with weights_only=True)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"dims": dict(dims), "model_state_dict": dict(state_dict)}, tmp)
    os.replace(tmp, path)
    return path


def _read_source(source, dims: dict | None) -> tuple[str, dict, dict]:
    """-> (name for errors, dims, openai-layout state dict)."""
    if isinstance(source, dict):
        name = "<state dict>"
        payload = source
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise CheckpointError(f"whisper checkpoint {name}: expected an existing file, found nothing there")
        if path.suffix == ".safetensors":
            return name, *_read_safetensors(path, dims)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle refused by weights_only, truncated zip, not a torch file
            raise CheckpointError(f"whisper checkpoint {name}: expected a weights-only torch file "
                                  f"{{'dims', 'model_state_dict'}}, found unreadable data ({exc})") from exc
    if "model_state_dict" in payload:
        dims = dims if dims is not None else payload.get("dims")
        payload = payload["model_state_dict"]
    if dims is None:
        raise CheckpointError(f"whisper checkpoint {name}: expected 'dims' (in the file or as an argument), found none")
    return name, dims, payload


def _read_safetensors(path: Path, dims: dict | None) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:
        raise CheckpointError(f"whisper checkpoint {path}: expected a safetensors file, found unreadable data "
                              f"({exc})") from exc
    if dims is None and SAFETENSORS_DIMS_KEY in metadata:
        dims = json.loads(metadata[SAFETENSORS_DIMS_KEY])
    if dims is None:
        raise CheckpointError(f"whisper checkpoint {path}: expected metadata {SAFETENSORS_DIMS_KEY!r} "
                              "or a dims argument, found none")
    return dims, state


def load_whisper_encoder(source, *, dims: dict | None = None) -> WhisperAudioEncoder:
    """OpenAI whisper checkpoint (tiny.pt path, .safetensors path, or dict) -> fp32 WhisperAudioEncoder (eval).

    Strict on the encoder keys (decoder keys are ignored); fp16 tensors are copied into fp32 modules,
    so the positional embedding keeps its stored (fp16-rounded) values, as the official loader does.
    """
    name, dims, state = _read_source(source, dims)
    try:
        enc_dims = check_encoder_dims(dims, f"whisper checkpoint {name} dims")
    except InvalidInputError as exc:
        raise CheckpointError(str(exc)) from exc
    expected = openai_key_shapes(enc_dims)
    for key, shape in expected.items():
        value = state.get(key)
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"whisper checkpoint {name} key {key}: expected a tensor of shape {list(shape)}, "
                                  f"found {'nothing' if value is None else type(value).__name__}")
        if tuple(value.shape) != shape or not value.dtype.is_floating_point:
            raise CheckpointError(f"whisper checkpoint {name} key {key}: expected float shape {list(shape)}, "
                                  f"found {value.dtype} {list(value.shape)}")
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"whisper checkpoint {name} key {key}: expected finite values, found NaN/Inf")
    extra = sorted(k for k in state if k not in expected and not k.startswith("decoder."))
    if extra:
        raise CheckpointError(f"whisper checkpoint {name}: expected only encoder.*/decoder.* keys of dims "
                              f"{enc_dims}, found unexpected {extra[:5]}")
    model = WhisperAudioEncoder({**dict(dims), **enc_dims})
    mapped = {openai_to_hf_key(k): state[k] for k in expected}
    model.load_state_dict(mapped, strict=True)  # copy_ casts fp16 -> fp32 exactly
    return model.eval()
