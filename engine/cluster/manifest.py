"""A batch manifest: one job per line (JSONL or CSV), every line validated before any work starts.

Keys: `video`, `audio`, `output` (required) and the settings `engine run` names `preset`, `steps`,
`guidance`, `deepcache`, `seed`, `face`, `strict_faces` (or `strict-faces`), `crf`, `length`, `output_audio`; optionally `id`
(a name for the report). Relative paths are relative to the manifest's folder, so a manifest means
the same from any working directory. CSV needs a header row; an empty cell leaves a setting unset.

Every bad line is collected (missing or unreadable inputs, bad settings, an output that is an input
or another line's output, an output folder that cannot be written) and reported together with its
line number as one InvalidInputError (exit 2) before a model loads or a cluster starts.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from engine.constants import FPS, SAMPLE_RATE
from engine.errors import EngineError, InvalidInputError
from engine.media.paths import VIDEO_SUFFIXES
from engine.pipeline.config import (
    DEFAULT_LENGTH,
    DEFAULT_OUTPUT_AUDIO,
    SyncConfig,
    check_length,
    check_output_audio,
    output_frame_count,
    resolve_config,
)

SIDECAR_SUFFIX = ".job.json"  # a job's record beside its output (engine.cluster.fingerprint)

PATH_KEYS = ("video", "audio", "output")
INT_SETTINGS = ("steps", "deepcache", "seed", "crf")
SETTING_KEYS = ("preset", "steps", "guidance", "deepcache", "seed", "face", "strict_faces", "crf", "length",
                "output_audio")
KEY_ALIASES = {"strict-faces": "strict_faces"}
KNOWN_KEYS = ("id", *PATH_KEYS, *SETTING_KEYS)
OUTPUT_SUFFIXES = VIDEO_SUFFIXES  # what the mp4 writer produces
FACE_NAMES = ("auto", "insightface", "mediapipe")
MAX_CRF = 51
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no", "")
MAX_REPORTED_LINES = 50  # a manifest with thousands of bad lines names the first ones and counts the rest


@dataclass(frozen=True)
class JobSettings:
    """How one job is generated and encoded: `engine run`'s settings. None keeps the preset's value."""

    preset: str = "reference"
    steps: int | None = None
    guidance: float | None = None
    deepcache: int | None = None  # interval; 0 disables DeepCache
    seed: int | None = None
    face: str = "auto"  # auto | insightface | mediapipe | a face-track JSON path
    strict_faces: bool = False
    crf: int = 18
    length: str = DEFAULT_LENGTH  # audio: as long as the speech; official: the official frame count
    output_audio: str = DEFAULT_OUTPUT_AUDIO  # source: the speech file's own audio; model: the 16 kHz mono signal

    def sync_config(self) -> SyncConfig:
        """The SyncConfig `engine run` builds from the same options (raises InvalidInputError when out of range)."""
        deepcache = self.deepcache
        return resolve_config(self.preset, steps=self.steps, guidance_scale=self.guidance, seed=self.seed,
                              deepcache_interval=deepcache if deepcache else None, deepcache_off=deepcache == 0)

    def check(self) -> None:
        """InvalidInputError naming the first setting that `engine run` would refuse."""
        self.sync_config()
        if not (isinstance(self.crf, int) and 0 <= self.crf <= MAX_CRF):
            raise InvalidInputError(f"crf: expected an int in 0..{MAX_CRF}, found {self.crf!r}")
        check_length(self.length)
        check_output_audio(self.output_audio)
        if self.face not in FACE_NAMES and not Path(self.face).is_file():
            raise InvalidInputError(f"face: expected one of {FACE_NAMES} or an existing face-track JSON file, "
                                    f"found {self.face!r}")


@dataclass(frozen=True)
class BatchJob:
    """One validated line: absolute paths, settings with the batch's defaults filled in."""

    line: int  # 1-based line number in the manifest (CSV: where the record starts)
    id: str
    video: str
    audio: str
    output: str
    settings: JobSettings
    frames_estimate: int | None = None  # from the audio's duration, for the progress bar

    def to_json(self) -> dict:
        return {**asdict(self), "settings": asdict(self.settings)}

    @classmethod
    def from_json(cls, data: dict) -> "BatchJob":
        return cls(**{**data, "settings": JobSettings(**data["settings"])})


@dataclass
class _Problems:
    """Bad lines collected while reading: {line: [message, ...]}."""

    lines: dict[int, list[str]] = field(default_factory=dict)

    def add(self, line: int, message: str) -> None:
        self.lines.setdefault(line, []).append(message)

    def raise_if_any(self, manifest: Path, total: int) -> None:
        if not self.lines:
            return
        numbers = sorted(self.lines)
        shown = [f"  line {n}: {'; '.join(self.lines[n])}" for n in numbers[:MAX_REPORTED_LINES]]
        more = len(numbers) - len(shown)
        tail = [f"  ... and {more} more bad lines"] if more else []
        raise InvalidInputError(
            f"manifest {manifest}: expected every line to be a valid job, found {len(numbers)} bad line(s) of "
            f"{total} (lines {', '.join(map(str, numbers[:MAX_REPORTED_LINES]))}); nothing was run:\n"
            + "\n".join(shown + tail))


# ---------------------------------------------------------------------------------------------- reading
def read_records(path: Path) -> Iterator[tuple[int, dict | str]]:
    """(line number, raw record) per job line; a str record is a line that could not be parsed."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"manifest {path}: expected UTF-8 text, found undecodable bytes ({exc})") from exc
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_records(text)
    elif suffix == ".csv":
        yield from _csv_records(text)
    else:
        raise InvalidInputError(f"manifest {path}: expected a .jsonl, .ndjson or .csv file, found {suffix or 'no'} "
                                "extension")


def _jsonl_records(text: str) -> Iterator[tuple[int, dict | str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as exc:
            yield number, f"expected a JSON object, found invalid JSON ({exc.msg} at column {exc.colno})"
            continue
        yield number, record if isinstance(record, dict) else f"expected a JSON object, found {type(record).__name__}"


def _csv_records(text: str) -> Iterator[tuple[int, dict | str]]:
    reader = csv.reader(text.splitlines(keepends=True))
    header: list[str] | None = None
    start = 1
    for row in reader:
        if header is None:
            header = [h.strip() for h in row]
            start = reader.line_num + 1
            continue
        number, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield number, f"expected {len(header)} columns as in the header, found {len(row)}"
            continue
        yield number, {k: v.strip() for k, v in zip(header, row) if v.strip() != ""}


# ---------------------------------------------------------------------------------------------- values
def _as_int(key: str, value, from_text: bool) -> int:
    if from_text and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidInputError(f"{key}: expected an integer, found {value!r}")


def _as_float(key: str, value, from_text: bool) -> float:
    if from_text and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise InvalidInputError(f"{key}: expected a number, found {value!r}")


def _as_bool(key: str, value, from_text: bool) -> bool:
    if isinstance(value, bool):
        return value
    if from_text and isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise InvalidInputError(f"{key}: expected true or false, found {value!r}")


def _as_text(key: str, value) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise InvalidInputError(f"{key}: expected a non-empty string, found {value!r}")


def parse_settings(record: dict, defaults: JobSettings, base: Path, *, from_text: bool) -> JobSettings:
    """The line's settings over the batch defaults (type errors raise InvalidInputError naming the key)."""
    changes: dict = {}
    for key in SETTING_KEYS:
        if key not in record:
            continue
        value = record[key]
        if key in INT_SETTINGS:
            changes[key] = _as_int(key, value, from_text)
        elif key == "guidance":
            changes[key] = _as_float(key, value, from_text)
        elif key == "strict_faces":
            changes[key] = _as_bool(key, value, from_text)
        else:
            text = _as_text(key, value)
            changes[key] = str(_resolve(text, base)) if key == "face" and text not in FACE_NAMES else text
    return replace(defaults, **changes)


def _resolve(path: str, base: Path) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else base / p


# ---------------------------------------------------------------------------------------------- checks
def check_job_paths(video: Path, audio: Path, output: Path, probes: dict) -> float:
    """Every check a job's files allow before any model loads (as `engine run` makes them); returns the
    speech's duration in seconds (0 when unknown).

    `engine.media.preflight` demuxes the video's packets and decodes the whole audio track; its verdict per
    (video, audio) pair is kept in `probes`, so a video dubbed into many languages is read once. The output
    path is checked per job (not an input, writable folder, an mp4 name; stale partial files removed).
    """
    from engine.media import check_output, preflight

    key = (str(video), str(audio))
    if key not in probes:
        try:
            checked = preflight(video, audio)
            probes[key] = checked.audio.audio.duration_s if checked.audio.audio is not None else 0.0
        except EngineError as exc:
            probes[key] = exc
    if isinstance(probes[key], EngineError):
        raise probes[key]
    check_output(output, inputs=(("video", video), ("audio", audio)), suffixes=OUTPUT_SUFFIXES)
    return probes[key]


def frames_estimate(duration_s: float, length: str) -> int | None:
    """The frames a job of `duration_s` seconds of speech will output (for progress bars); None when unknown."""
    if duration_s <= 0:
        return None
    official = round(duration_s * FPS) + 2  # the official count is about 25/s + 2
    return output_frame_count(official, round(duration_s * SAMPLE_RATE), length)


def load_manifest(path: str | os.PathLike, defaults: JobSettings = JobSettings(), *,
                  report: str | os.PathLike | None = None) -> list[BatchJob]:
    """Read and validate every line; raise one InvalidInputError listing all bad lines (nothing has run).

    `report`: where the batch report will be written; it is checked against every input and output too."""
    manifest = Path(os.fspath(path)).expanduser().absolute()
    if not manifest.is_file():
        raise InvalidInputError(f"manifest {manifest}: expected an existing file, found "
                                f"{'a directory' if manifest.is_dir() else 'no such file'}")
    base = manifest.parent
    from_text = manifest.suffix.lower() == ".csv"
    problems = _Problems()
    jobs: list[BatchJob] = []
    probes: dict = {}
    total = 0
    for number, record in read_records(manifest):
        total += 1
        if isinstance(record, str):
            problems.add(number, record)
            continue
        job = _validate_line(number, record, defaults, base, from_text, probes, problems)
        if job is not None:
            jobs.append(job)
    if total == 0:
        raise InvalidInputError(f"manifest {manifest}: expected at least one job line, found none")
    _check_across_lines(manifest, jobs, problems, Path(os.fspath(report)).expanduser().absolute() if report else None)
    problems.raise_if_any(manifest, total)
    return jobs


def _validate_line(number: int, record: dict, defaults: JobSettings, base: Path, from_text: bool, probes: dict,
                   problems: _Problems) -> BatchJob | None:
    record = {KEY_ALIASES.get(k, k): v for k, v in record.items()}
    unknown = sorted(set(record) - set(KNOWN_KEYS))
    if unknown:
        problems.add(number, f"unknown key(s) {unknown}: expected only {list(KNOWN_KEYS)}")
    paths: dict[str, Path] = {}
    for key in PATH_KEYS:
        if key not in record:
            problems.add(number, f"{key}: expected a path, found no {key!r} key")
            continue
        try:
            paths[key] = _resolve(_as_text(key, record[key]), base)
        except InvalidInputError as exc:
            problems.add(number, str(exc))
    settings = None
    try:
        settings = parse_settings(record, defaults, base, from_text=from_text)
        settings.check()
    except InvalidInputError as exc:
        problems.add(number, str(exc))
    duration = 0.0
    if len(paths) == len(PATH_KEYS):
        try:
            duration = check_job_paths(paths["video"], paths["audio"], paths["output"], probes)
        except EngineError as exc:
            problems.add(number, f"{type(exc).__name__}: {exc}")
    if number in problems.lines or settings is None:
        return None
    job_id = record.get("id")
    return BatchJob(line=number, id=str(job_id) if job_id not in (None, "") else f"line {number}",
                    video=str(paths["video"]), audio=str(paths["audio"]), output=str(paths["output"]),
                    settings=settings, frames_estimate=frames_estimate(duration, settings.length))


def _check_across_lines(manifest: Path, jobs: list[BatchJob], problems: _Problems, report: Path | None) -> None:
    """The write-plan rule (engine.media.paths.check_write_plan) over the whole batch: no output, job record or
    report may be an input of any line or the manifest (same path, symlink, hard link), nor another output."""
    from engine.media.paths import PathRole, write_conflicts

    inputs = [PathRole("manifest", manifest)]
    for job in jobs:
        inputs += [PathRole("video", job.video, line=job.line), PathRole("audio", job.audio, line=job.line)]
        if job.settings.face not in FACE_NAMES:
            inputs.append(PathRole("face track", job.settings.face, line=job.line))
    outputs = [PathRole("output", job.output, line=job.line) for job in jobs]
    outputs += [PathRole("job record", sidecar_path(job.output), line=job.line) for job in jobs]
    if report is not None:
        outputs.append(PathRole("--report", report))
    report_conflicts = []
    for conflict in write_conflicts(outputs, inputs):
        out, other = conflict.output, conflict.other
        if out.line is None:  # the report: not a line's fault
            report_conflicts.append(conflict.message())
        elif conflict.kind == "output" and other.line is not None and other.label == out.label:
            problems.add(out.line, f"{out.label} {out.path}: expected a path no other line writes, found the "
                                   f"{other.label} of line {other.line}")
        elif conflict.kind == "input" and other.line is not None:
            problems.add(out.line, f"{out.label} {out.path}: expected a path that is not an input, found the same "
                                   f"file as the {other.label} of line {other.line}; refusing to overwrite it")
        else:
            problems.add(out.line, conflict.message())
    if report_conflicts:
        raise InvalidInputError("; ".join(report_conflicts) + "; nothing was run")


def sidecar_path(output: str | os.PathLike) -> Path:
    """`<output>.job.json`; for an output name too long for that (NAME_MAX), `<name cut>~<hash>.job.json`:
    deterministic, so a re-run finds it again."""
    import hashlib

    from engine.media.paths import fit_name, name_bytes, name_limits

    out = Path(output)
    name = out.name + SIDECAR_SUFFIX
    name_max = name_limits(out.parent)[0]
    if name_bytes(name) <= name_max:
        return out.with_name(name)
    tag = "~" + hashlib.sha1(os.fsencode(out.name)).hexdigest()[:12] + SIDECAR_SUFFIX
    return out.with_name(fit_name(out.name, name_max - name_bytes(tag)) + tag)
