"""The package imports with core dependencies only, and the CLI answers --help."""

import subprocess
import sys


def test_import_engine_without_extras():
    code = (
        "import sys, engine, engine.errors, engine.constants;"
        "bad=[m for m in ('tensorrt','triton','pycuda','ray','onnxruntime') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "engine", "--help"], check=True, capture_output=True, text=True)
    assert "engine" in out.stdout
