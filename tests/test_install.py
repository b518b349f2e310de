"""The install routes of the Makefile: which torch `make install` pins, and TORCH=v100 for V100
clusters (the v100 venv itself is built and tested by `make test-v100`, part of `make test`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    """`make -n ARGS` in a throw-away venv path: prints the recipe, runs nothing."""
    return subprocess.run(["make", "-n", "install", "VENV=/nonexistent/venv", *args], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip


def pins(route: str) -> dict[str, str]:
    lines = (REPO / "constraints" / f"torch-{route}.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_torch_v100_pins_the_cuda_12_6_build_and_the_default_the_newest() -> None:
    assert pins("v100") == {"torch": "2.7.1", "torchvision": "0.22.1"}
    assert pins("default") == {"torch": "2.14.1", "torchvision": "0.29.1"}
    for route in ("default", "v100"):
        result = make_dry_run(f"TORCH={route}")
        assert result.returncode == 0, result.stderr
        assert f"-c constraints/torch-{route}.txt -e '.[dev]'" in result.stdout, result.stdout
    assert "torch-default.txt" in make_dry_run().stdout  # TORCH left out


def test_an_unknown_torch_route_is_refused_with_the_valid_ones() -> None:
    result = make_dry_run("TORCH=a100")
    assert result.returncode != 0
    assert "TORCH=a100 is not a torch build we pin; valid: default v100" in result.stderr
