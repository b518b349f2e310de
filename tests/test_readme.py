"""README's and docs/'s commands run as written after the two set-up commands (issue: the first
hour); the front page stays short and every link between the pages leads somewhere (issue 27)."""

from __future__ import annotations

import importlib.util
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from tests.conftest import TINY_OVERRIDES
from tests.seaweed import SeaweedServer

ROOT = Path(__file__).resolve().parents[1]
#: The front page, then every page of docs/: their command blocks are checked the same way.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEXTS = {page.relative_to(ROOT).as_posix(): page.read_text() for page in PAGES}
README = TEXTS["README.md"]
FENCED = re.compile(r"```(\w*)\n(.*?)```", re.S)
BLOCKS = [block for text in TEXTS.values() for block in FENCED.findall(text)]
SHELL = "\n".join(code for lang, code in BLOCKS if lang in ("bash", "sh", ""))
#: At most this many bytes on the front page (issue 27: "under about 15 KB").
README_MAX_BYTES = 15_000


def commands(pattern: str, shell: str = SHELL) -> list[str]:
    return sorted(set(re.findall(pattern, shell, re.M)))


def page_blocks(name: str) -> list[tuple[str, str]]:
    """The (language, code) blocks of one page (`docs/slurm.md`), in order."""
    return FENCED.findall(TEXTS[name])


def test_the_reader_is_told_to_activate_the_venv_before_any_python_command() -> None:
    first = next(code for lang, code in FENCED.findall(README) if "python -m " in code)
    assert first.index("source .venv/bin/activate") < first.index("python -m ")


def test_every_make_target_the_readme_names_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    defined = set(re.findall(r"^([a-z0-9-]+):", makefile, re.M))
    prose = "\n".join(TEXTS.values())
    named = set(re.findall(r"`make ([a-z0-9-]+)", prose)) | set(commands(r"\bmake ([a-z0-9-]+)"))
    assert {"demo", "test"} <= set(re.findall(r"\bmake ([a-z0-9-]+)", README)), "the two commands"
    assert named <= defined, sorted(named - defined)


@pytest.mark.slow
def test_every_module_the_readme_runs_exists_and_answers_help() -> None:
    front = "\n".join(code for lang, code in FENCED.findall(README) if lang in ("bash", ""))
    front_modules = set(commands(r"python -m ([\w.]+)", front))
    assert {"pipeline.launch", "pipeline.infer", "pipeline.pull", "pipeline.runs"} <= front_modules
    modules = commands(r"python -m ([\w.]+)")
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
    storage = TEXTS["docs/storage.md"]
    text = storage[storage.index("**Buckets and data.**") :]
    (upload,) = re.findall(r"```python\n(.*?)```", text[: text.index("**A local S3 server")], re.S)
    launch = (
        "python -m pipeline.launch data.root=s3://datasets/mask store.root=s3://mask-runs/nightly"
    )
    assert launch in text and launch in README
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


def test_the_front_page_is_short() -> None:
    size = len(README.encode())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes: move detail into docs/"


def anchors(text: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens,
    `-1`, `-2` … after a repeated one."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCED.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug if slug not in counts else f"{slug}-{counts[slug]}")
        counts[slug] = counts.get(slug, 0) + 1
    return found


def relative_links(text: str) -> list[str]:
    """Markdown link targets outside code that are not URLs (`docs/slurm.md#nightly`, `#run`)."""
    prose = re.sub(r"`[^`\n]*`", "", FENCED.sub("", text))
    targets = re.findall(r"\]\(([^)\s]+)\)", prose)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_every_relative_link_resolves_to_a_file_and_its_heading() -> None:
    broken = []
    for name, text in TEXTS.items():
        for target in relative_links(text):
            path, _, anchor = target.partition("#")
            file = (ROOT / name).parent / path if path else ROOT / name
            if not file.exists():
                broken.append(f"{name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
                broken.append(f"{name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
    assert {f"docs/{p.name}" for p in PAGES[1:]} <= set(relative_links(README)), "README links each"


def test_no_example_shows_a_development_machines_paths() -> None:
    found = [f"{name}: {hit}" for name, text in TEXTS.items()
             for hit in re.findall(r"/work/\S*|/tmp/pytest\S*|/root/\S*", text)]  # fmt: skip
    assert not found, found


def test_the_nightly_env_file_snippet_makes_its_private_folder(tmp_path: Path) -> None:
    """docs/slurm.md's env-file lines, as a new user pastes them: the folder did not exist."""
    (block,) = [code for _, code in page_blocks("docs/slurm.md") if "nightly.env <<" in code]
    lines = block[: block.index("sbatch slurm/nightly.sbatch")].splitlines()[:-1]
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["bash", "-euc", "umask 022\n" + "\n".join(lines)], env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    folder = tmp_path / ".config" / "masksuite"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "nightly.env").stat().st_mode) == 0o600
    assert "MASKSUITE_OVERRIDES=" in (folder / "nightly.env").read_text()
