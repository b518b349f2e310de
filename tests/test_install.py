"""The install routes of the Makefile: which torch `make install` pins, and TORCH=v100 for V100
clusters (the v100 venv itself is built and tested by `make test-v100`, part of `make test`)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    """`make -n ARGS` in a throw-away venv path: prints the recipe, runs nothing."""
    return subprocess.run(["make", "-n", "install", "VENV=/nonexistent/venv", *args], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip


def pins(route: str) -> dict[str, str]:
    lines = (REPO / "constraints" / f"torch-{route}.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_torch_v100_pins_the_last_build_with_v100_kernels_and_the_default_the_newest() -> None:
    # 2.10.0 (CUDA 12.8): V100 kernels, and not affected by GHSA-63cw-57p8-fm3p (<= 2.9.1).
    assert pins("v100") == {"torch": "2.10.0", "torchvision": "0.25.0"}
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


# ------------------------------------------------------------------- the image's dependency lock


def project_dependencies() -> set[str]:
    """Names of pyproject.toml's runtime dependencies, normalised (PEP 503)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {
        normalise(re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0]) for dep in project["dependencies"]
    }


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_entries() -> dict[str, list[str]]:
    """requirements/image.lock as {name==version [; marker]: its hashes}."""
    entries: dict[str, list[str]] = {}
    current = ""
    for line in (REPO / "requirements" / "image.lock").read_text().splitlines():
        text = line.strip().rstrip("\\").strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("--hash="):
            entries[current].append(text.removeprefix("--hash="))
        else:
            current = text
            entries[current] = []
    return entries


def test_the_image_lock_pins_every_dependency_with_hashes_and_leaves_torch_to_the_base() -> None:
    entries = lock_entries()
    locked = {normalise(entry.split("==")[0]) for entry in entries}
    assert project_dependencies() - {"torch", "torchvision"} <= locked, "run `make lock`"
    assert {"torch", "torchvision"}.isdisjoint(locked)  # the base image's (pinned by its tag)
    assert "setuptools" in locked  # the build backend: the image builds without isolation
    for entry, hashes in entries.items():
        assert re.fullmatch(r"[a-z0-9-]+==[^ ;]+( ; .+)?", entry), entry
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), entry
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--require-hashes --no-deps -r requirements/image.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps --no-build-isolation ." in dockerfile
    base = re.search(r"^FROM (\S+)", dockerfile, re.M)
    assert base and base.group(1).startswith(f"pytorch/pytorch:{pins('v100')['torch']}-")


def test_the_minimum_versions_are_past_the_known_advisories() -> None:
    """pyproject.toml admits no torch with a torch.load weights_only bypass (GHSA-63cw-57p8-fm3p,
    <= 2.9.1), no pyarrow with CVE-2023-47248 (< 14.0.1), no pillow before 12.3's fixes."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    minimum = {
        normalise(dep.split(">=")[0]): dep.split(">=")[1].split(",")[0]
        for dep in project["dependencies"]
        if ">=" in dep
    }
    assert tuple(map(int, minimum["torch"].split("."))) >= (2, 10)
    assert tuple(map(int, minimum["pyarrow"].split("."))) >= (14, 0, 1)
    assert tuple(map(int, minimum["pillow"].split("."))) >= (12, 3)
