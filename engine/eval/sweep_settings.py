"""Sweep settings: a compact text form (`fast+deepcache=off`, `live=120`, `backend=onnxruntime`) and the default set."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.errors import InvalidInputError, expect
from engine.pipeline.config import PRESETS, SyncConfig, resolve_config

PART_SEPARATOR = "+"
OFF_WORDS = ("off", "none", "0")
OFFLINE, LIVE = "offline", "live"
DEFAULT_BACKEND = "torch"
LIVE_CHUNK_FRAMES = 16  # live chunk of the default live rows (the official chunk length)
DEFAULT_BASELINE = "reference"
# step counts, DeepCache intervals (reference: 3) and live lookaheads; `fast` = 10 steps with DeepCache 3
DEFAULT_SETTINGS = ("fast", "steps=5", "deepcache=off", "deepcache=2", "deepcache=5", "steps=10+deepcache=off",
                    "live=0", "live=120", "live=240")  # fmt: skip
KEYS = ("preset", "steps", "guidance", "deepcache", "seed", "live", "chunk", "backend")


@dataclass(frozen=True)
class SweepSetting:
    """One row of a sweep: how frames are made (offline call or live stream) and with what settings."""

    name: str
    config: SyncConfig
    preset: str = DEFAULT_BASELINE
    backend: str = DEFAULT_BACKEND
    mode: str = OFFLINE
    lookahead_ms: float | None = None  # live mode only
    chunk_frames: int | None = None  # live mode only

    @property
    def key(self) -> tuple:
        """What makes two settings produce the same run (names aside)."""
        config = dataclasses.replace(self.config, deepcache_interval=self.config.effective_deepcache)
        return (config, self.backend, self.mode, self.lookahead_ms, self.chunk_frames)

    def describe(self) -> dict:
        c = self.config
        return {"name": self.name, "mode": self.mode, "backend": self.backend, "preset": self.preset,
                "steps": c.steps, "guidance": c.guidance_scale, "deepcache": c.effective_deepcache, "seed": c.seed,
                "lookahead_ms": self.lookahead_ms, "chunk_frames": self.chunk_frames}  # fmt: skip


def parse_setting(text: str) -> SweepSetting:
    """`reference` | `fast` | parts joined by '+': a preset name or key=value with keys
    preset, steps, guidance, deepcache (N | off), seed, live (lookahead ms: live streaming), chunk (live chunk
    frames: 8 | 12 | 16), backend (torch | compile | onnxruntime | tensorrt). Unset values: the preset's."""
    text = text.strip()
    expect(bool(text), InvalidInputError, "sweep setting", "a preset or key=value parts", "an empty string")
    values: dict[str, str] = {}
    for part in text.split(PART_SEPARATOR):
        key, eq, value = (s.strip() for s in part.partition("="))
        if not eq:
            key, value = "preset", key
        expect(key in KEYS, InvalidInputError, f"sweep setting {text!r}", f"keys {KEYS}", repr(key))
        expect(key not in values, InvalidInputError, f"sweep setting {text!r}", f"{key} at most once", "it twice")
        values[key] = value
    preset = values.get("preset", DEFAULT_BASELINE)
    expect(preset in PRESETS, InvalidInputError, f"sweep setting {text!r}: preset", sorted(PRESETS), repr(preset))
    deepcache = values.get("deepcache")
    config = resolve_config(
        preset,
        steps=_number(values, "steps", int, text),
        guidance_scale=_number(values, "guidance", float, text),
        seed=_number(values, "seed", int, text),
        deepcache_interval=None if deepcache is None or deepcache.lower() in OFF_WORDS
        else _number(values, "deepcache", int, text),
        deepcache_off=deepcache is not None and deepcache.lower() in OFF_WORDS,
    )  # fmt: skip
    backend = values.get("backend", DEFAULT_BACKEND)
    from engine.backends import BACKENDS

    expect(backend in BACKENDS, InvalidInputError, f"sweep setting {text!r}: backend", BACKENDS, repr(backend))
    live = "live" in values
    expect(live or "chunk" not in values, InvalidInputError, f"sweep setting {text!r}", "chunk only with live=MS",
           "chunk without live")  # fmt: skip
    chunk = _number(values, "chunk", int, text)
    return SweepSetting(
        name=text, config=config, preset=preset, backend=backend, mode=LIVE if live else OFFLINE,
        lookahead_ms=_number(values, "live", float, text) if live else None,
        chunk_frames=(LIVE_CHUNK_FRAMES if chunk is None else chunk) if live else None,
    )  # fmt: skip


def _number(values: dict[str, str], key: str, kind: type, text: str):
    if key not in values:
        return None
    try:
        return kind(values[key])
    except ValueError as exc:
        raise InvalidInputError(f"sweep setting {text!r}: {key}: expected a {kind.__name__}, "
                                f"found {values[key]!r}") from exc


def default_settings(device: str = "cpu") -> list[str]:
    """The default sweep (after the baseline): presets, step counts, DeepCache intervals, live lookaheads, and
    each accelerated backend of `device` that `auto` would consider (torch is every other row)."""
    from engine.backends import AUTO_ORDER

    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    backends = [f"backend={b}" for b in AUTO_ORDER[kind] if b != DEFAULT_BACKEND]
    return [*DEFAULT_SETTINGS, *backends]


def plan_settings(baseline: str, settings: list[str]) -> tuple[list[SweepSetting], list[str]]:
    """Baseline first, then `settings` in order, each run once: -> (settings, notes about dropped duplicates)."""
    planned: list[SweepSetting] = []
    notes: list[str] = []
    seen: dict[tuple, str] = {}
    for text in [baseline, *settings]:
        setting = parse_setting(text)
        if setting.key in seen:
            notes.append(f"{setting.name!r} is the same run as {seen[setting.key]!r}: run once")
            continue
        seen[setting.key] = setting.name
        planned.append(setting)
    return planned, notes
