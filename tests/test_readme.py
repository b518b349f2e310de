"""README's commands run as written after the two set-up commands (issue: the first hour)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from tests.conftest import TINY_OVERRIDES
from tests.seaweed import SeaweedServer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, re.S)
SHELL = "\n".join(code for lang, code in BLOCKS if lang in ("bash", ""))


def commands(pattern: str) -> list[str]:
    return sorted(set(re.findall(pattern, SHELL, re.M)))


def test_the_reader_is_told_to_activate_the_venv_before_any_python_command() -> None:
    first = next(code for lang, code in BLOCKS if "python -m " in code)
    assert first.index("source .venv/bin/activate") < first.index("python -m ")


def test_every_make_target_the_readme_names_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    defined = set(re.findall(r"^([a-z0-9-]+):", makefile, re.M))
    named = set(re.findall(r"`make ([a-z0-9-]+)", README)) | set(commands(r"\bmake ([a-z0-9-]+)"))
    assert named, "README names no make target?"
    assert named <= defined, sorted(named - defined)


@pytest.mark.slow
def test_every_module_the_readme_runs_exists_and_answers_help() -> None:
    modules = commands(r"python -m ([\w.]+)")
    assert {"pipeline.launch", "pipeline.infer", "pipeline.pull", "pipeline.runs"} <= set(modules)
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module
    # the argparse commands answer --help (jobs.* take Hydra overrides only; tests.seaweed starts
    # a server)
    for module in [m for m in modules if m.startswith(("pipeline.", "bench."))]:
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0 and "usage" in done.stdout.lower(), (module, done.stderr)


@pytest.mark.slow
@pytest.mark.s3
def test_the_s3_upload_example_and_launch_run_as_written(
    seaweed: SeaweedServer, tiny_dataset: Path, tmp_path: Path
) -> None:
    text = README[README.index("**Buckets and data.**") :]
    (upload,) = re.findall(r"```python\n(.*?)```", text[: text.index("**A local S3 server")], re.S)
    launch = (
        "python -m pipeline.launch data.root=s3://datasets/mask store.root=s3://mask-runs/nightly"
    )
    assert launch in text
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "generated").symlink_to(tiny_dataset)
    env = {**os.environ, **seaweed.env(), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", upload], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    files = sorted(p for p in tiny_dataset.rglob("*") if p.is_file())
    listed = seaweed.client().list_objects_v2(Bucket="datasets", Prefix="mask/", MaxKeys=5000)
    assert listed["KeyCount"] == len(files)
    # the launch line as written, at test size
    done = subprocess.run([*launch.split(), *TINY_OVERRIDES], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "submission: s3://mask-runs/nightly/runs/" in done.stdout
    keys = boto3.client("s3", endpoint_url=seaweed.endpoint, aws_access_key_id="k",
                        aws_secret_access_key="s", region_name="us-east-1")  # fmt: skip
    assert keys.head_object(Bucket="mask-runs", Key="nightly/latest.json")["ContentLength"] > 0
