"""Every command README.md and docs/*.md print, checked as printed, so no page can show a command that does not work.

What is extracted, from each page: each line of its shell code blocks (```bash / sh / shell / console; `\\`
continuations joined, `&&`, `;` and `|` split into separate commands), the first column of command tables, and every
inline code span in the text that starts with `engine `, `python ` or `benchmarks/`. The same command printed in
several places is checked once.

What is checked, for every command, with no exception:
- `engine ...` (or `python -m engine ...`): the whole command line parses with the real `engine` parser (block and
  table forms, placeholders such as `V` or `DIR` included, optional `[...]` parts included); inline mentions must
  name an existing subcommand and only options it has.
- `python benchmarks/X.py ...` (or `benchmarks/X.py ...` inline): the script exists and its own argparse accepts the
  arguments (run in a subprocess whose `parse_args` exits right after parsing; no benchmark work runs).
- `pip install ...`: every extra it names exists in pyproject.toml; a pinned torch matches `.ci/run`.
- `python -m pytest ...`: the same arguments as `.ci/run`'s test command; the markers it selects are declared.
- `python3 -m venv` / `. VENV/bin/activate`: accepted as set-up. Any other program fails the test until it is
  added to EXTERNAL_PROGRAMS (printed for people, not checked here) or given a check, so a new kind of command
  cannot slip in unchecked.

What is also run (RUNS below): the printed forms of `engine doctor`, `eval`, `build` and `convert` on every test
run, and the longer ones (`run`, `eval --sweep`, `export`, `bench`, `avatar prepare`) under the `slow` marker. Each
runs in-process from the repository root, as printed, except for the substitutions listed with it and made for the
reason given there: the official weights cannot be downloaded in tests (so `--model M` and the default model
become `tiny-random`), evaluator weights neither (`--random-weights`), outputs go to a temporary folder (never into
the repository), placeholders become tiny inputs (demo1 cut to 1 s at 540x960, with its own speech), and long
settings are cut (1 denoising step, no guidance) so the whole file costs well under two minutes of CI time.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
# Pages that parallel work adds to docs/: the lead removes each from here once its commands pass these checks.
PAGES_NOT_YET_CHECKED: tuple[str, ...] = ()  # pages not yet held to these checks (none)
DOCUMENTS = [README, *(p for p in sorted(DOCS.glob("*.md")) if p.name not in PAGES_NOT_YET_CHECKED)]
DEMO_MEDIA = REPO_ROOT / "examples" / "media"  # the demo clip the README's commands use, shipped in the repository
CI_SCRIPT = REPO_ROOT / ".ci" / "run"
PYPROJECT = REPO_ROOT / "pyproject.toml"
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
# Programs the README may print for people (an HTTP probe, a GPU query, ...): not checked here.
EXTERNAL_PROGRAMS = ("curl", "wget", "nvidia-smi", "docker", "git", "cd", "export", "ls", "mkdir", "cp", "mv",
                     "cat", "kill", "ray")
INLINE_START = re.compile(r"^(engine |python3? |benchmarks/\S+\.py)")


# ----------------------------------------------------------------------------------------------- extraction
@dataclass(frozen=True)
class Printed:
    """One command as the README prints it."""

    argv: tuple[str, ...]
    where: str  # e.g. "README.md:27 (code block)"
    kind: str  # "block" | "table" | "inline"

    @property
    def text(self) -> str:
        return " ".join(self.argv)


def _lineno(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _split_commands(line: str) -> list[list[str]]:
    """A shell line -> its simple commands (split at && ; || |), env assignments in front dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    out = []
    for argv in commands:
        while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", argv[0]):
            argv = argv[1:]
        if argv:
            out.append(argv)
    return out


def _optional_parts(text: str) -> str:
    """`engine build --model M [--frames 16]` -> the command with the optional parts included."""
    return re.sub(r"\[([^\[\]]*--[^\[\]]*)\]", r"\1", text)


def extract(text: str, name: str = "README.md") -> list[Printed]:
    """Every command printed in `text` (a page called `name`)."""
    found: list[Printed] = []
    blocks = list(re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S))
    for block in blocks:
        lang = block.group(1).lower()
        body = block.group(2)
        if lang not in SHELL_LANGUAGES and not (lang == "" and re.search(r"^\$ ", body, re.M)):
            continue
        start = _lineno(text, block.start(2))
        logical, first = "", None
        for k, raw in enumerate(body.splitlines()):
            line = raw.strip()
            if lang == "console" or lang == "":
                if not line.startswith("$ ") and not logical:
                    continue  # output, not a command
                line = line[2:] if line.startswith("$ ") else line
            first = start + k if not logical else first
            if line.endswith("\\"):
                logical += line[:-1] + " "
                continue
            logical += line
            for argv in _split_commands(logical):
                found.append(Printed(tuple(argv), f"{name}:{first} (code block)", "block"))
            logical = ""
    outside = text
    for block in reversed(blocks):  # inline spans only from the text outside code blocks
        outside = outside[:block.start()] + "\n" * block.group(0).count("\n") + outside[block.end():]
    table_spans = set()  # first cells of command tables (header "| command | ..."): whole command lines
    for table in re.finditer(r"(?:^\|.*\n?)+", outside, re.M):
        if table.group(0).split("|")[1].strip().lower() not in ("command", "commands"):
            continue  # other tables mention commands in prose ("`engine run` once per job"): inline references
        for m in re.finditer(r"^\|\s*`([^`]+)`", table.group(0), re.M):
            table_spans.add(table.start() + m.start(1))
            if INLINE_START.match(m.group(1)):
                for argv in _split_commands(_optional_parts(m.group(1))):
                    line = _lineno(text, table.start() + m.start())
                    found.append(Printed(tuple(argv), f"{name}:{line} (table)", "table"))
    for m in re.finditer(r"`([^`]+)`", outside):
        span = " ".join(m.group(1).split())
        if m.start(1) in table_spans or not INLINE_START.match(span):
            continue
        for argv in _split_commands(_optional_parts(span)):
            found.append(Printed(tuple(argv), f"{name}:{_lineno(text, m.start())} (text)", "inline"))
    return found


def _once(printed: list[Printed]) -> list[Printed]:
    """The same command printed in several places (as text, or as a block) is checked once, where it first appears."""
    seen, out = set(), []
    for p in printed:
        if (p.argv, p.kind) not in seen:
            seen.add((p.argv, p.kind))
            out.append(p)
    return out


PRINTED = _once([p for page in DOCUMENTS
                 for p in extract(page.read_text(encoding="utf-8"), page.relative_to(REPO_ROOT).as_posix())])


def _id(p: Printed) -> str:
    return f"{p.where.split(' ')[0]} {p.text}"[:120]


# ----------------------------------------------------------------------------------------------- classification
def engine_args(argv: tuple[str, ...]) -> list[str] | None:
    """The arguments after `engine` for `engine ...` / `python -m engine ...`, else None."""
    if argv[0] == "engine":
        return list(argv[1:])
    if argv[0] in ("python", "python3") and argv[1:3] == ("-m", "engine"):
        return list(argv[3:])
    return None


def script_of(argv: tuple[str, ...]) -> tuple[str, list[str]] | None:
    if argv[0] in ("python", "python3") and len(argv) > 1 and argv[1].endswith(".py"):
        return argv[1], list(argv[2:])
    if argv[0].endswith(".py"):
        return argv[0], list(argv[1:])
    return None


def kind_of(argv: tuple[str, ...]) -> str:
    if engine_args(argv) is not None:
        return "engine"
    if script_of(argv) is not None:
        return "script"
    if argv[0] in ("pip", "pip3") or argv[:3] in (("python", "-m", "pip"), ("python3", "-m", "pip")):
        return "pip"
    if argv[0] in ("python", "python3") and argv[1:3] == ("-m", "pytest"):
        return "pytest"
    if argv[0] in ("python", "python3") and argv[1:3] == ("-m", "venv"):
        return "venv"
    if argv[0] in (".", "source") and len(argv) == 2 and argv[1].endswith("/bin/activate"):
        return "venv"
    if argv[0] == "bash" and len(argv) >= 2 and argv[1].endswith(".sh"):
        return "shell-script"
    if argv[0] in EXTERNAL_PROGRAMS:
        return "external"
    return "unknown"


def test_the_readme_prints_commands_and_every_one_is_of_a_known_kind():
    assert any(engine_args(p.argv) == ["doctor"] for p in PRINTED)  # the extraction finds the CLI table
    assert sum(p.kind == "block" for p in PRINTED) >= 5  # and the quick start's code block
    unknown = [f"{p.where}: {p.text}" for p in PRINTED if kind_of(p.argv) == "unknown"]
    assert not unknown, ("the README prints commands this test does not know; add the program to EXTERNAL_PROGRAMS "
                         f"(not checked) or give it a check: {unknown}")


def test_the_quick_start_is_two_commands_the_main_job_and_the_tests():
    """The developers' guide: two commands on a fresh machine, one sets up and runs the main job, one sets up and
    runs the tests (exactly CI's test command)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quick start"):]
    section = section[:section.index("\n## ", 1)]
    block = re.search(r"^```bash\n(.*?)^```", section, re.M | re.S).group(1)
    lines = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) == 2, lines
    main_job, tests = (_split_commands(line) for line in lines)
    assert kind_of(tuple(main_job[0])) == "venv" and kind_of(tuple(tests[0])) == "venv"  # each from nothing
    assert engine_args(tuple(main_job[-1]))[0] == "run"
    assert kind_of(tuple(tests[-1])) == "pytest"


# ----------------------------------------------------------------------------------------------- parse checks
def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _options(parser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def check_engine_reference(args: list[str]) -> None:
    """Inline text: the subcommand path exists and every --option named belongs to it."""
    from engine.cli import build_parser

    parser, path = build_parser(), []
    for token in args:
        if token.startswith("-"):
            break
        choices = _subparsers(parser)
        if not choices:
            break
        assert token in choices, f"`engine {' '.join(path + [token])}`: no such subcommand (have {sorted(choices)})"
        parser, path = choices[token], path + [token]
    known = _options(parser)
    for token in args:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert flag in known, f"`engine {' '.join(path)}` has no option {flag} (has {sorted(known)})"


def check_engine_parses(args: list[str], capsys) -> None:
    from engine.cli import build_parser

    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            pytest.fail(f"`engine {' '.join(args)}` does not parse: {capsys.readouterr().err.strip()}")


PARSE_ONLY = """
import argparse, os, runpy, sys
original = argparse.ArgumentParser.parse_args
def parse_and_stop(self, args=None, namespace=None):
    original(self, args, namespace)  # exits 2 on a bad command line
    sys.stdout.flush()
    os._exit(0)
argparse.ArgumentParser.parse_args = parse_and_stop
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path[:0] = [os.path.dirname(os.path.abspath(script)), "."]  # as `python script.py` would see it
runpy.run_path(script, run_name="__main__")
sys.exit("the script finished without parsing its arguments with argparse")
"""


def check_script_parses(script: str, args: list[str]) -> None:
    path = REPO_ROOT / script
    assert path.is_file(), f"the README prints {script}, which does not exist"
    done = subprocess.run([sys.executable, "-c", PARSE_ONLY, script, *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"`{script} {' '.join(args)}` does not parse: {done.stderr.strip()[-800:]}"


def _ci_line(pattern: str) -> list[str]:
    for line in CI_SCRIPT.read_text().splitlines():
        if re.search(pattern, line) and not line.lstrip().startswith("#"):
            return shlex.split(line)
    raise AssertionError(f".ci/run: expected a line matching {pattern!r}")


def check_pip(argv: tuple[str, ...]) -> None:
    import tomllib

    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for token in argv:
        m = re.fullmatch(r"(?:-e\s*)?\.?\[([^\]]+)\]", token.replace('"', ""))
        if m:
            missing = [e for e in m.group(1).split(",") if e.strip() not in extras]
            assert not missing, f"`{' '.join(argv)}`: pyproject.toml has no extra {missing} (has {sorted(extras)})"
        if token.startswith("torch=="):
            ci = [t for t in _ci_line(r"pip install .*torch==") if t.startswith("torch==")]
            assert ci == [token], f"the README pins {token}, .ci/run {ci}"


def check_pytest(argv: tuple[str, ...], inline: bool = False) -> None:
    """The printed test command is .ci/run's; a pytest line in the text selects declared markers and real files."""
    import tomllib

    if not inline:
        ci = _ci_line(r"python -m pytest")
        assert list(argv) == ci, f"the README's test command {list(argv)} differs from .ci/run's {ci}"
    for path in (a for a in argv[argv.index("pytest") + 1:] if a.startswith("tests/")):
        assert list(REPO_ROOT.glob(path.split("::")[0])), f"`{' '.join(argv)}`: no test file matches {path}"
    markers = {m.split(":")[0].strip() for m in tomllib.loads(PYPROJECT.read_text())["tool"]["pytest"]["ini_options"]
               ["markers"]}  # fmt: skip
    options = argv[argv.index("pytest") + 1:]
    for expr in (options[i + 1] for i, t in enumerate(options[:-1]) if t == "-m"):
        for word in re.findall(r"[A-Za-z_]+", expr):
            assert word in markers | {"not", "and", "or"}, f"marker {word!r} is not declared in pyproject.toml"


@pytest.mark.parametrize("printed", PRINTED, ids=_id)
def test_printed_command_parses(printed: Printed, capsys):
    argv, kind = printed.argv, kind_of(printed.argv)
    if kind == "engine":
        args = engine_args(argv)
        if printed.kind == "inline":
            check_engine_reference(args)
        else:
            check_engine_parses(args, capsys)
    elif kind == "script":
        script, args = script_of(argv)
        if printed.kind == "inline" and not args:
            assert (REPO_ROOT / script).is_file(), f"the README names {script}, which does not exist"
        else:
            check_script_parses(script, args)
    elif kind == "pip":
        check_pip(argv)
    elif kind == "pytest":
        check_pytest(argv, inline=printed.kind == "inline")
    elif kind == "shell-script":  # ours: it exists and bash parses it (tests/test_gpu_check.py runs gpu_remote.sh)
        script = REPO_ROOT / argv[1]
        assert script.is_file(), f"{printed.where}: {argv[1]} does not exist"
        subprocess.run(["bash", "-n", str(script)], check=True)
    elif kind in ("venv", "external"):
        pass  # set-up steps and other programs: nothing of ours to check
    else:
        pytest.fail(f"{printed.where}: unknown command {printed.text}")


def test_documented_run_options_exist():
    """The `engine run` options paragraph (docs/cli.md): every --option it names is an option of `engine run`."""
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    paragraph = text[text.index("`engine run` options:"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    flags = re.findall(r"`(--[a-z][a-z-]*)", paragraph)
    assert len(flags) >= 10
    check_engine_reference(["run", *flags])


# ----------------------------------------------------------------------------------------------- running them
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tiny stand-ins for the printed placeholders: the shipped demo1 cut to 1 s at 540x960 with its own speech."""
    from engine.media import cut_clip

    root = tmp_path_factory.mktemp("readme")
    clip = root / "clip.mp4"
    cut_clip(DEMO_MEDIA / "demo1_video.mp4", clip, seconds=1.0, size=(540, 960))
    return {"clip": clip, "root": root}


def _swap(args: list[str], option: str, value: str | None) -> list[str]:
    """Set `option` to `value` (None: drop it), appending it when absent."""
    out, i, done = [], 0, False
    while i < len(args):
        if args[i] == option:
            takes_value = i + 1 < len(args) and not args[i + 1].startswith("--")
            i += 2 if takes_value else 1
            if value is not None and not done:
                out += [option, value] if value != "" else [option]
            done = True
            continue
        out.append(args[i])
        i += 1
    if not done and value is not None:
        out += [option, value] if value != "" else [option]
    return out


def _outputs_to(args: list[str], folder: Path, options=("--output", "--out", "--json", "--report")) -> list[str]:
    """Every output into `folder` (keeping its name; a table placeholder such as `O` becomes `O.mp4`)."""
    for option in options:
        if option in args:
            name = Path(args[args.index(option) + 1]).name
            if option == "--output" and not Path(name).suffix:
                name += ".mp4"
            args = _swap(args, option, str(folder / name))
    return args


def _placeholders(args: list[str], clip: Path) -> list[str]:
    """Table placeholders -> the tiny clip (V, A, OUT.mp4, SPEECH, REF.mp4, ...)."""
    names = {"V", "A", "OUT.mp4", "SPEECH", "REF.mp4"}
    return [str(clip) if a in names else a for a in args]


def shrink_run(args, tmp, clip):
    """`engine run` as printed on demo1, shrunk: --model tiny-random (official weights cannot be downloaded in tests),
    a 1 s cut of demo1 (its own speech), 1 step and no guidance, the output in a temporary folder."""
    args = _placeholders(_outputs_to(args, tmp), clip)
    args = [str(clip) if a.endswith(("demo1_video.mp4", "demo1_audio.wav")) else a for a in args]
    for option, value in (("--model", "tiny-random"), ("--steps", "1"), ("--guidance", "1"), ("--no-progress", "")):
        args = _swap(args, option, value)
    return args, lambda: any(tmp.glob("*.mp4"))


def shrink_eval(args, tmp, clip):
    """`engine eval` as printed; placeholders become the 1 s demo1 clip; --random-weights because the evaluator's
    SyncNet weights cannot be downloaded in tests; --sweep also gets tiny-random, one cheap setting and --no-plot."""
    args = _placeholders(_outputs_to(args, tmp), clip)
    args = _swap(_swap(args, "--random-weights", ""), "--no-progress", "")
    if "--sweep" in args:
        for option, value in (("--model", "tiny-random"), ("--baseline", "steps=1+guidance=1.0"),
                              ("--settings", "steps=1+guidance=1.0+seed=2"), ("--out", str(tmp / "sweep")),
                              ("--no-ssim", ""), ("--no-plot", "")):
            args = _swap(args, option, value)
        return args, lambda: (tmp / "sweep" / "sweep.json").is_file()
    return args, None


def shrink_model(args, tmp, clip):
    """`--model M` -> tiny-random (official weights cannot be downloaded in tests); outputs to a temporary folder."""
    args = _outputs_to(_swap(args, "--model", "tiny-random"), tmp)
    return args, None


def shrink_bench(args, tmp, clip):
    """`engine bench` as printed (its default model is tiny-random) on one network, one timed call, the torch
    backend (a full bench exports every network and times four backends: many minutes on a CPU)."""
    for option, value in (("--networks", "audio_encoder"), ("--backends", "torch"), ("--iters", "1"),
                          ("--warmup", "0"), ("--out", str(tmp / "bench.json")), ("--no-progress", "")):
        args = _swap(args, option, value)
    return args, lambda: (tmp / "bench.json").is_file()


def shrink_avatar(args, tmp, clip):
    """`engine avatar prepare` on the 1 s demo1 clip with tiny-random, into a temporary folder."""
    args = _swap(_placeholders(args, clip), "--out", str(tmp / "avatar"))
    return _swap(args, "--model", "tiny-random"), lambda: (tmp / "avatar").is_dir()


def expect_build(args, tmp, clip):
    """`engine build` as printed (--model M -> tiny-random): without TensorRT and a GPU it must stop at once with
    exit 7, naming the [trt] extra and `engine export` as the alternative."""
    return _outputs_to(_swap(args, "--model", "tiny-random"), tmp), None


@dataclass(frozen=True)
class Run:
    shrink: object  # (args, tmp, clip) -> (args, check or None)
    slow: bool
    expect_code: int = 0


RUNS = {  # subcommand path -> how its printed forms run
    ("doctor",): Run(lambda args, tmp, clip: (args, None), slow=False),  # exactly as printed
    ("eval",): Run(shrink_eval, slow=False),
    ("build",): Run(expect_build, slow=False, expect_code=7),
    ("convert",): Run(shrink_model, slow=False),
    ("export",): Run(shrink_model, slow=True),
    ("run",): Run(shrink_run, slow=True),
    ("bench",): Run(shrink_bench, slow=True),
    ("avatar", "prepare"): Run(shrink_avatar, slow=True),
    # serve (a long-running server: tests/test_stream_server.py runs it) and any subcommand not listed here: the
    # parse check above only
}


def _path(args: list[str]) -> tuple[str, ...]:
    words = []
    for a in args:
        if a.startswith("-"):
            break
        words.append(a)
    for n in range(len(words), 0, -1):
        if tuple(words[:n]) in RUNS:
            return tuple(words[:n])
    return tuple(words[:1])


def _runnable() -> list:
    params, seen = [], set()
    for p in PRINTED:
        args = engine_args(p.argv)
        if args is None or p.kind == "inline":
            continue
        key = _path(args)
        sweep = key == ("eval",) and "--sweep" in args
        if key not in RUNS or p.text in seen:
            continue
        seen.add(p.text)
        slow = RUNS[key].slow or sweep
        params.append(pytest.param(p, key, id=_id(p), marks=[pytest.mark.slow] if slow else []))
    return params


@pytest.mark.parametrize("printed, key", _runnable())
def test_printed_command_runs(printed: Printed, key, inputs, tmp_path, monkeypatch, capsys):
    import torch

    from engine.cli import main

    run = RUNS[key]
    if key == ("build",) and torch.cuda.is_available():
        pytest.skip("a GPU is present: `engine build` would build real engines (tests/test_trt_build.py covers it)")
    args, check = run.shrink(engine_args(printed.argv), tmp_path, inputs["clip"])
    monkeypatch.chdir(REPO_ROOT)  # the printed relative paths (examples/media/...) are from the repository root
    code = main(args)
    out, err = capsys.readouterr()
    assert code == run.expect_code, f"`engine {' '.join(args)}` exited {code}: {err[-2000:]}"
    assert "Traceback" not in err
    if key == ("build",):
        assert '".[trt]"' in err and "engine export" in err, err
    if check is not None:
        assert check(), f"`engine {' '.join(args)}` did not write what it should: {out[-500:]} {err[-500:]}"
    assert not any(REPO_ROOT.glob("*.mp4")), "a README command wrote into the repository"


def test_readme_extraction_handles_what_other_sections_may_print():
    """Continuations, chains, pipes, env prefixes, console prompts, optional parts, new subcommands."""
    text = """
```bash
HF_HUB_OFFLINE=1 engine run --video a.mp4 \\
  --audio b.wav --output c.mp4 && engine doctor   # a comment
python benchmarks/throughput.py --quick --out F | cat
```

```console
$ engine batch --ray --jobs jobs.json
some output line
```

| command | what |
|---|---|
| `engine serve --ray [--port 8765]` | x |

| mode | s |
|---|---|
| `engine run` once per job | 3 |

See `engine eval --sweep` and `benchmarks/unet.py --device cuda`.
"""
    got = [(p.kind, p.argv) for p in extract(text)]
    assert got == [
        ("block", ("engine", "run", "--video", "a.mp4", "--audio", "b.wav", "--output", "c.mp4")),
        ("block", ("engine", "doctor")),
        ("block", ("python", "benchmarks/throughput.py", "--quick", "--out", "F")),
        ("block", ("cat",)),
        ("block", ("engine", "batch", "--ray", "--jobs", "jobs.json")),
        ("table", ("engine", "serve", "--ray", "--port", "8765")),
        ("inline", ("engine", "run")),
        ("inline", ("engine", "eval", "--sweep")),
        ("inline", ("benchmarks/unet.py", "--device", "cuda")),
    ]
    assert kind_of(("cat",)) == "external" and kind_of(("frobnicate",)) == "unknown"
    with pytest.raises(AssertionError, match="no such subcommand"):
        check_engine_reference(["frobnicate"])
    with pytest.raises(AssertionError, match="has no option --warp"):
        check_engine_reference(["run", "--warp"])
