"""Lip-sync quality you can measure: SyncNet LSE-C/LSE-D, StableSyncNet score, fidelity to a reference."""

from engine.eval.fidelity import FidelityAccumulator, FidelityResult, psnr, ssim
from engine.eval.lse import LseResult, evaluate_lse, score_offsets
from engine.eval.report import EvalNetworks, EvalOptions, EvalReport, evaluate_clip
from engine.eval.stable_syncnet import StableSyncNet, load_stable_syncnet, stable_sync_score
from engine.eval.syncnet import SyncNetS, load_syncnet

__all__ = [
    "EvalNetworks", "EvalOptions", "EvalReport", "FidelityAccumulator", "FidelityResult", "LseResult",
    "StableSyncNet", "SyncNetS", "evaluate_clip", "evaluate_lse", "load_stable_syncnet", "load_syncnet",
    "psnr", "score_offsets", "ssim", "stable_sync_score",
]  # fmt: skip
