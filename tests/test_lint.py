"""The tree passes the project's lint (``make lint``): ruff's checks and its formatting, with pyproject's settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def ruff() -> str:
    beside_python = Path(sys.executable).parent / "ruff"
    found = str(beside_python) if beside_python.exists() else shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: pip install -e '.[dev]'")
    return found


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff(args):
    result = subprocess.run([ruff(), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"ruff {' '.join(args)} failed (run `make lint`):\n{result.stdout[-4000:]}"


#: An API the code uses -> the first torch release that has it (from the torch release notes).
TORCH_APIS = {
    r"from torch\.distributed\.fsdp import [^\n]*fully_shard": (
        2,
        6,
    ),  # FSDP2 public path (2.4-2.5: _composable)
    r"enable_gqa=": (2, 5),  # grouped-query attention inside scaled_dot_product_attention
    r"from torch\.nn\.attention import [^\n]*sdpa_kernel": (2, 3),
    r"\.compile\(": (2, 2),  # nn.Module.compile
}


def test_torch_floor_is_the_first_release_with_the_apis_used():
    import re

    spec = re.search(r'"torch>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert spec, "pyproject.toml pins a torch floor"
    floor = tuple(int(part) for part in spec.group(1).split(".")[:2])
    sources = "\n".join(p.read_text() for p in sorted((ROOT / "ouro").rglob("*.py")))
    used = {pattern: version for pattern, version in TORCH_APIS.items() if re.search(pattern, sources)}
    assert used, "the table matches the code"
    assert floor == max(used.values()), (
        f"torch floor {floor}; the APIs used need {max(used.values())}: {used}"
    )
