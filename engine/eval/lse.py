"""LSE-C / LSE-D: the official SyncNet offset search and confidence arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.constants import SAMPLES_PER_FRAME
from engine.errors import InvalidInputError

VSHIFT = 15  # frames searched either side -> 31 offsets
BATCH_SIZE = 20  # official evaluation batch
PAIRWISE_EPS = 1e-6  # torch.pairwise_distance adds eps to the difference
MIN_WINDOWS = 1


@dataclass(frozen=True)
class LseResult:
    """One clip's sync scores. LSE-D = min_dist (lower is better), LSE-C = confidence (higher is better)."""

    av_offset: int  # frames; vshift - argmin
    min_dist: float
    confidence: float
    mean_dists: tuple[float, ...]  # 2*vshift+1 values, index j <-> audio shift j - vshift
    n_windows: int

    @property
    def lse_d(self) -> float:
        return self.min_dist

    @property
    def lse_c(self) -> float:
        return self.confidence


def num_windows(num_frames: int, num_samples: int) -> int:
    """Official n = min(#frames, floor(#samples / 640)) - 5; InvalidInputError when < 1."""
    n = min(num_frames, num_samples // SAMPLES_PER_FRAME) - 5
    if n < MIN_WINDOWS:
        raise InvalidInputError(
            f"LSE: expected at least 6 frames of video and audio (one 5-frame window), found "
            f"{num_frames} frames and {num_samples} samples ({num_samples // SAMPLES_PER_FRAME} frames of audio)"
        )
    return n


def pairwise_dists(lip: torch.Tensor, aud: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """dists [n, 2*vshift+1]: dists[i,j] = ||lip[i] - aud[i+j-vshift] + 1e-6||, aud zero outside [0,n)."""
    window = 2 * vshift + 1
    aud_padded = F.pad(aud, (0, 0, vshift, vshift))  # [n+2*vshift, D]
    index = torch.arange(lip.shape[0])[:, None] + torch.arange(window)[None, :]  # [n, window]
    return F.pairwise_distance(lip[:, None, :].expand(-1, window, -1), aud_padded[index], eps=PAIRWISE_EPS)


def score_offsets(lip: torch.Tensor, aud: torch.Tensor, vshift: int = VSHIFT) -> LseResult:
    """lip, aud [n,D] window embeddings -> offset, LSE-D, LSE-C (official calc_pdist + evaluate)."""
    if lip.shape != aud.shape or lip.ndim != 2 or lip.shape[0] < MIN_WINDOWS:
        raise InvalidInputError(f"LSE embeddings: expected two equal [n>=1,D] tensors, found {tuple(lip.shape)} "
                                f"and {tuple(aud.shape)}")
    mean_dists = pairwise_dists(lip.float(), aud.float(), vshift).mean(0)  # [2*vshift+1]
    min_dist, min_index = torch.min(mean_dists, 0)
    confidence = torch.median(mean_dists) - min_dist  # torch.median: the lower middle value
    return LseResult(
        av_offset=vshift - int(min_index),
        min_dist=float(min_dist),
        confidence=float(confidence),
        mean_dists=tuple(float(d) for d in mean_dists),
        n_windows=int(lip.shape[0]),
    )


def average_tracks(results: list[LseResult]) -> tuple[int, float, float]:
    """Per-video (offset, min_dist, confidence): mean over face tracks, offset truncated to int (official)."""
    if not results:
        raise InvalidInputError("LSE: expected at least one face track, found none")
    return (
        int(np.mean([r.av_offset for r in results])),
        float(np.mean([r.min_dist for r in results])),
        float(np.mean([r.confidence for r in results])),
    )


def evaluate_lse(
    net, crops_bgr: np.ndarray, audio_int16: np.ndarray, *, vshift: int = VSHIFT, batch_size: int = BATCH_SIZE,
    on_batch=None,
) -> LseResult:
    """End to end: lip crops [T,224,224,3] BGR uint8 + 16 kHz int16 audio -> LseResult (`on_batch(done, total)`
    is told the windows embedded so far)."""
    from engine.eval.mfcc import syncnet_cc
    from engine.eval.syncnet import embed_clip

    n = num_windows(len(crops_bgr), len(audio_int16))
    lip, aud = embed_clip(net, crops_bgr, syncnet_cc(audio_int16), n, batch_size=batch_size, on_batch=on_batch)
    return score_offsets(lip, aud, vshift)
