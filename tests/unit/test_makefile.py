"""``make run`` installs only the ``[service]`` extra; ``make test`` adds ``[dev]`` to the
same venv, in either order (``make -n`` in a copy: nothing is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.package_walk import ROOT


def plan(clone: Path, target: str) -> str:
    """What ``make`` would run for ``target`` (with a fake python, never a real venv)."""
    done = subprocess.run(
        ["make", "-n", target, "PYTHON=python3"],
        cwd=clone,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def touch_venv(clone: Path, *stamps: str) -> None:
    bin_dir = clone / ".venv" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "python").touch()
    for stamp in stamps:
        (clone / ".venv" / stamp).touch()


def test_run_installs_the_service_extra_only(clone: Path) -> None:
    """The first ``make run`` installed ``[dev]`` (79 packages: mypy, schemathesis,
    matplotlib), silently, before serving anything. It now creates the venv and installs
    ``[service]`` with pip's progress (no ``--quiet``), saying so first."""
    steps = plan(clone, "run")
    assert "-m venv .venv" in steps
    assert "-e '.[service]'" in steps
    assert "[dev]" not in steps
    assert "--quiet" not in steps
    assert "==> installing penny_cache[service]" in steps


def test_run_then_test_then_run_share_one_venv(clone: Path) -> None:
    """After ``make run``, ``make test`` adds ``[dev]`` to the same venv without making
    it again; after that ``make run`` installs nothing (``[dev]`` holds ``[service]``)."""
    touch_venv(clone, ".service-stamp")
    steps = plan(clone, "test")
    assert "-m venv" not in steps
    assert "-e '.[dev]'" in steps
    touch_venv(clone, ".dev-stamp", ".service-stamp")
    steps = plan(clone, "run")
    assert "pip install" not in steps
    assert "penny-cache run" in steps


def test_test_first_then_run_installs_nothing_more(clone: Path) -> None:
    """``make test`` first (the CI order): its stamp also stands for ``[service]``."""
    steps = plan(clone, "test")
    assert "-e '.[dev]'" in steps
    assert "touch .venv/.dev-stamp .venv/.service-stamp" in steps
