"""docs/voice-agents.md as printed: its Python blocks run (they build the real objects), its `engine` commands
parse with the real parser, and its latency figures are the committed benchmark JSON's."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO_ROOT

DOC = REPO_ROOT / "docs" / "voice-agents.md"


def _blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_python_blocks_run_as_printed(tmp_path, monkeypatch):
    pytest.importorskip("pipecat", reason="the [pipecat] extra is not installed")
    pytest.importorskip("livekit.agents", reason="the [livekit] extra is not installed")
    from engine.integrations.livekit import LatentSyncVideoGenerator
    from engine.integrations.pipecat import LatentSyncVideoService

    monkeypatch.chdir(tmp_path)  # the blocks name a relative face.mp4: they only construct, nothing is opened
    blocks = _blocks(DOC.read_text())
    assert len(blocks) == 2
    pipecat_ns, livekit_ns = {}, {}
    exec(compile(blocks[0], "voice-agents.md:pipecat", "exec"), pipecat_ns)
    exec(compile(blocks[1], "voice-agents.md:livekit", "exec"), livekit_ns)
    assert isinstance(pipecat_ns["video"], LatentSyncVideoService)
    assert pipecat_ns["video"]._bridge.config.sync.steps == 1
    assert isinstance(livekit_ns["generator"], LatentSyncVideoGenerator)
    options = livekit_ns["options"]
    assert (options.video_width, options.video_height, options.video_fps, options.audio_sample_rate) == \
        (320, 320, 25.0, 16_000)


def test_the_readme_block_runs_as_printed(tmp_path, monkeypatch):
    """The README's "Use it in a voice agent" block builds both integrations' real objects."""
    pytest.importorskip("pipecat", reason="the [pipecat] extra is not installed")
    pytest.importorskip("livekit.agents", reason="the [livekit] extra is not installed")
    from engine.integrations.livekit import LatentSyncVideoGenerator
    from engine.integrations.pipecat import LatentSyncVideoService

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Use it in a voice agent", 1)[1].split("\n## ", 1)[0]
    (block,) = _blocks(section)
    monkeypatch.chdir(tmp_path)  # a relative face.mp4: the objects are built, nothing is opened
    names: dict = {}
    exec(compile(block, "README.md:voice-agent", "exec"), names)
    assert isinstance(names["video"], LatentSyncVideoService)
    assert isinstance(names["generator"], LatentSyncVideoGenerator)


def test_engine_commands_parse_and_figures_come_from_the_json():
    from engine.cli import build_parser

    text = DOC.read_text()
    commands = [line.strip() for line in text.splitlines() if line.strip().startswith("engine ")]
    assert commands
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        assert callable(args.func)
    report = json.loads((REPO_ROOT / "benchmarks" / "results" / "voice_agents_cpu_tiny.json").read_text())
    for path, seconds in report["latency_s_median"].items():
        assert f"| {path} | {seconds:.3f} |" in text
