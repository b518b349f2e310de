"""AWS keys for Slurm jobs in a file, never in the jobs' environment.

sbatch exports the launcher's environment to the job by default, and Slurm keeps it: in the
controller's state files while the job is queued, and for good in the accounting database where
`AccountingStoreFlags=job_env` is set (`sacct --env-vars` shows it). So when the launcher has
static keys in its environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, perhaps
AWS_SESSION_TOKEN), they are written to `<job folder>/aws-credentials` (mode 0600, boto3's shared
credentials file format, profile $AWS_PROFILE or `default`) and sbatch runs without them, with
AWS_SHARED_CREDENTIALS_FILE pointing at that file: boto3 in the job reads the keys from it.
Without static keys (a profile, an instance role) nothing changes.
"""

from __future__ import annotations

import configparser
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The variables that hold static keys: never exported to a job.
STATIC_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
#: boto3's variable naming its shared credentials file.
CREDENTIALS_FILE_VAR = "AWS_SHARED_CREDENTIALS_FILE"
#: The file's name in the job folder.
CREDENTIALS_NAME = "aws-credentials"


def credentials_text(env: dict[str, str]) -> str:
    """boto3's shared credentials file holding the static keys of `env`, in the profile
    $AWS_PROFILE (or `default`)."""
    parser = configparser.ConfigParser(interpolation=None)
    profile = env.get("AWS_PROFILE") or "default"
    parser[profile] = {name.lower(): env[name] for name in STATIC_KEYS if env.get(name)}
    text = io.StringIO()
    parser.write(text)
    return text.getvalue()


def write_private(path: Path, text: str) -> None:
    """Write `path` atomically, readable by its owner only (0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    partial.replace(path)


@contextmanager
def credentials_in_a_file(folder: Path) -> Iterator[Path | None]:
    """Within: os.environ without the static AWS keys (what sbatch exports to the job), and, when
    there were keys, AWS_SHARED_CREDENTIALS_FILE naming the 0600 file in `folder` that holds them
    (yielded; None without keys). The environment is restored on leaving."""
    saved = {name: os.environ[name] for name in (*STATIC_KEYS, CREDENTIALS_FILE_VAR)
             if name in os.environ}  # fmt: skip
    path = None
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        path = folder / CREDENTIALS_NAME
        write_private(path, credentials_text(dict(os.environ)))
        os.environ[CREDENTIALS_FILE_VAR] = str(path)
    for name in STATIC_KEYS:
        os.environ.pop(name, None)
    try:
        yield path
    finally:
        for name in (*STATIC_KEYS, CREDENTIALS_FILE_VAR):
            os.environ.pop(name, None)
        os.environ.update(saved)
