"""A static type check of the TensorRT modules against the real TensorRT 10 API (``tensorrt-stubs``).

The TensorRT code cannot run here; mypy with NVIDIA's API stubs checks every call it makes (names,
arguments, return types). CI installs the stubs (``pip install --no-deps tensorrt-stubs``; their
dependency would pull real TensorRT) and repairs their known defects (``.ci/repair_tensorrt_stubs.py``)
before the tests; elsewhere this skips with the reason. The check is shown to catch calls that
TensorRT 10 removed (``execute_async_v2``, ``Builder.build_engine``).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = ["rpl_perception/backends/tensorrt_build.py", "rpl_perception/backends/tensorrt_backend.py"]


def _stubs_ready() -> str:
    """'' when mypy and repaired stubs are installed, else why not."""
    if importlib.util.find_spec("mypy") is None:
        return "mypy is not installed (pip install mypy)"
    spec = importlib.util.find_spec("tensorrt")
    folders = list(spec.submodule_search_locations or []) if spec else []
    stub = next((Path(f) for f in folders if (Path(f) / "__init__.pyi").is_file()), None)
    if stub is None:
        return "tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs==10.13.0.35.1)"
    if not (stub / "py.typed").is_file():
        return f"tensorrt-stubs in {stub} is not repaired (python .ci/repair_tensorrt_stubs.py)"
    return ""


pytestmark = pytest.mark.skipif(bool(_stubs_ready()), reason=_stubs_ready() or "ready")


def mypy(tmp_path_factory, *extra):
    # a cache of its own per run: mypy's cache does not notice a shadow file
    cache = tmp_path_factory.mktemp("mypy-cache")
    command = [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
               "--no-error-summary", "--show-error-codes", f"--cache-dir={cache}", *extra, *MODULES]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def test_tensorrt_modules_match_the_tensorrt_10_api(tmp_path_factory):
    code, output = mypy(tmp_path_factory)
    assert code == 0, output


@pytest.mark.parametrize("module, call, removed, error", [
    ("tensorrt_backend.py", "self.context.execute_async_v3(", "self.context.execute_async_v2(",
     '"IExecutionContext" has no attribute "execute_async_v2"'),
    ("tensorrt_build.py", "builder.build_serialized_network(", "builder.build_engine(",
     '"Builder" has no attribute "build_engine"'),
])
def test_the_check_catches_a_removed_call(tmp_path_factory, tmp_path, module, call, removed, error):
    source = REPO / "rpl_perception" / "backends" / module
    text = source.read_text()
    assert call in text
    shadow = tmp_path / module
    shadow.write_text(text.replace(call, removed))
    code, output = mypy(tmp_path_factory, "--shadow-file", str(source.relative_to(REPO)), str(shadow))
    assert code == 1 and error in output, output
