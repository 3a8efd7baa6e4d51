"""Whisper audio encoder returning LatentSync's 5 stacked embeddings (HF modules, OpenAI arithmetic)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.constants import N_MELS
from engine.errors import InvalidInputError, expect

CONV_STRIDE = 2  # conv2 halves the mel frame rate: 100 -> 50 positions per second
MLP_RATIO = 4  # whisper MLP width = 4 * n_audio_state
ENCODER_DIM_KEYS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")


def official_whisper_tiny_dims() -> dict:
    """Dims of OpenAI's `tiny.pt` (the checkpoint LatentSync ships)."""
    return {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6, "n_audio_layer": 4,
            "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 384, "n_text_head": 6, "n_text_layer": 4}


def tiny_whisper_dims() -> dict:
    """Dims of the e2e golden `weights/whisper/tiny.pt`: the real encoder shape, a small text side."""
    return {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6, "n_audio_layer": 4,
            "n_vocab": 128, "n_text_ctx": 64, "n_text_state": 384, "n_text_head": 6, "n_text_layer": 1}


def check_encoder_dims(dims: dict, what: str = "whisper dims") -> dict:
    """Validate the encoder part of openai dims; return {key: int} for ENCODER_DIM_KEYS."""
    expect(isinstance(dims, dict), InvalidInputError, what, "a dict", type(dims).__name__)
    missing = [k for k in ENCODER_DIM_KEYS if k not in dims]
    expect(not missing, InvalidInputError, what, f"keys {list(ENCODER_DIM_KEYS)}", f"missing {missing}")
    enc = {k: int(dims[k]) for k in ENCODER_DIM_KEYS}
    expect(enc["n_mels"] == N_MELS, InvalidInputError, f"{what} n_mels", N_MELS, enc["n_mels"])
    expect(min(enc.values()) > 0, InvalidInputError, what, "positive sizes", enc)
    expect(enc["n_audio_state"] % enc["n_audio_head"] == 0, InvalidInputError, f"{what} n_audio_state",
           f"a multiple of n_audio_head={enc['n_audio_head']}", enc["n_audio_state"])
    return enc


def _hf_encoder(dims: dict) -> nn.Module:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(
        num_mel_bins=dims["n_mels"], d_model=dims["n_audio_state"], encoder_layers=dims["n_audio_layer"],
        encoder_attention_heads=dims["n_audio_head"], encoder_ffn_dim=MLP_RATIO * dims["n_audio_state"],
        max_source_positions=dims["n_audio_ctx"], decoder_layers=1, decoder_attention_heads=dims["n_audio_head"],
        activation_function="gelu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )
    return WhisperEncoder(config).eval()


def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """OpenAI `Linear`: weights cast to the input dtype on each call."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


def _conv(layer: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """OpenAI `Conv1d`: weights cast to the input dtype on each call."""
    return F.conv1d(x, layer.weight.to(x.dtype), layer.bias.to(x.dtype), layer.stride, layer.padding)


def _layer_norm(layer: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """OpenAI `LayerNorm`: computed in fp32, cast back."""
    return F.layer_norm(x.float(), layer.normalized_shape, layer.weight.float(), layer.bias.float(),
                        layer.eps).to(x.dtype)


class WhisperAudioEncoder(nn.Module):
    """transformers `WhisperEncoder` run the OpenAI way, returning [after pos-emb, block 1..L] (no ln_post).

    Arithmetic follows OpenAI's encoder (q and k each scaled by d^-0.25, LayerNorm and softmax in fp32,
    positional add promoted to fp32), so feeding an fp16 mel to fp32 weights reproduces the official
    CUDA fp16 encode, and an fp32 mel the CPU one. Any mel length T >= 2 is accepted.

    `compute_dtype` (None: the mel's dtype) is the dtype the encode runs in, whatever dtype callers pass (the
    result comes back in theirs): the engine sets it to the run dtype on CUDA (`follow_run_dtype`), so the
    encode is fp16 there as in the official GPU run, and leaves it fp32 on the CPU.
    """

    compute_dtype: torch.dtype | None = None

    def __init__(self, dims: dict):
        super().__init__()
        self.dims = dict(dims)
        enc = check_encoder_dims(dims)
        self.n_ctx, self.n_state, self.n_head = enc["n_audio_ctx"], enc["n_audio_state"], enc["n_audio_head"]
        self.encoder = _hf_encoder(enc)
        self.requires_grad_(False)

    @property
    def num_embeddings(self) -> int:
        return len(self.encoder.layers) + 1

    def _attention(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape  # [B, n, C]
        scale = (c // self.n_head) ** -0.25
        q = _linear(attn.q_proj, x).view(b, n, self.n_head, -1).permute(0, 2, 1, 3) * scale  # [B,h,n,d]
        k = _linear(attn.k_proj, x).view(b, n, self.n_head, -1).permute(0, 2, 3, 1) * scale  # [B,h,d,n]
        v = _linear(attn.v_proj, x).view(b, n, self.n_head, -1).permute(0, 2, 1, 3)  # [B,h,n,d]
        weights = F.softmax((q @ k).float(), dim=-1).to(q.dtype)  # [B,h,n,n]
        out = (weights @ v).permute(0, 2, 1, 3).flatten(start_dim=2)  # [B,n,C]
        return _linear(attn.out_proj, out)

    def _block(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x + self._attention(layer.self_attn, _layer_norm(layer.self_attn_layer_norm, x))
        hidden = F.gelu(_linear(layer.fc1, _layer_norm(layer.final_layer_norm, x)))
        return x + _linear(layer.fc2, hidden)

    def forward(self, mel: torch.Tensor, position_offset: int = 0) -> torch.Tensor:
        """mel [B, 80, T] -> embeddings [B, T//2, 5, C] in mel's dtype (computed in `compute_dtype` when set).

        position_offset: index of the first output position within the 30 s window (streaming callers).
        """
        expect(mel.ndim == 3 and mel.shape[1] == N_MELS, InvalidInputError, "mel shape", f"[B, {N_MELS}, T]",
               tuple(mel.shape))
        out_dtype = mel.dtype  # an upcast of fp16 results is exact: callers keep the dtype they passed
        if self.compute_dtype is not None:
            mel = mel.to(self.compute_dtype)
        n_out = mel.shape[-1] // CONV_STRIDE
        if not torch.compiler.is_compiling():
            expect(n_out >= 1, InvalidInputError, "mel frames", ">= 2", mel.shape[-1])
            expect(0 <= position_offset and position_offset + n_out <= self.n_ctx, InvalidInputError,
                   "position_offset + T//2", f"within [0, {self.n_ctx}]", f"{position_offset} + {n_out}")
        x = F.gelu(_conv(self.encoder.conv1, mel))  # [B, C, T]
        x = F.gelu(_conv(self.encoder.conv2, x))  # [B, C, ceil(T/2)]
        x = x[:, :, :n_out].permute(0, 2, 1)  # [B, n, C]
        positions = self.encoder.embed_positions.weight[position_offset:position_offset + n_out]  # [n, C]
        x = (x + positions).to(x.dtype)
        embeddings = [x]
        for layer in self.encoder.layers:
            x = self._block(layer, x)
            embeddings.append(x)
        return torch.stack(embeddings, dim=2).to(out_dtype)  # [B, n, L+1, C]


def whisper_dtype(device: torch.device | str, run_dtype: torch.dtype) -> torch.dtype | None:
    """The encode dtype of a run: its dtype on CUDA (the official GPU run encodes in fp16), None (fp32) elsewhere."""
    return run_dtype if torch.device(device).type == "cuda" and run_dtype != torch.float32 else None


def follow_run_dtype(encoder: nn.Module, device: torch.device | str, run_dtype: torch.dtype) -> torch.dtype:
    """Set `encoder.compute_dtype` for a run on `device` in `run_dtype`; returns the dtype the encode will use."""
    compute = whisper_dtype(device, run_dtype)
    if hasattr(encoder, "compute_dtype"):
        encoder.compute_dtype = compute
    return compute or torch.float32
