"""AWS keys never travel in a Slurm job's environment (pipeline/orchestration/slurm_credentials.py):
sbatch exports the launcher's environment, Slurm keeps it (its state files; the accounting
database with AccountingStoreFlags=job_env). The jobs read the keys from a 0600 file instead.

Nothing is faked: the local Slurm cluster and a real SeaweedFS S3 server (tests/seaweed.py).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from pipeline.commands.runs import main as runs_main
from pipeline.orchestration.slurm_credentials import credentials_in_a_file
from pipeline.storage.store import open_store
from tests.test_slurm import (
    check_submission,
    launch,
    overrides,
    run_id_of,
    slurm_cluster,  # noqa: F401 (a fixture)
    submitted_jobs,
)


def state_save_location() -> Path:
    """slurmctld's StateSaveLocation: where it keeps a queued job's script and environment."""
    shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    (line,) = [x for x in shown.splitlines() if x.startswith("StateSaveLocation")]
    return Path(line.split("=", 1)[1].strip())


def test_the_keys_go_to_a_private_file_and_leave_the_environment_for_submission_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t/with+chars%")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok3n")
    monkeypatch.setenv("AWS_PROFILE", "nightly")
    monkeypatch.delenv("AWS_SHARED_CREDENTIALS_FILE", raising=False)
    with credentials_in_a_file(tmp_path / "run") as path:
        assert path == tmp_path / "run" / "aws-credentials"
        assert os.environ["AWS_SHARED_CREDENTIALS_FILE"] == str(path)
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(
            os.environ
        )
        import boto3

        credentials = boto3.Session().get_credentials()  # what a job's boto3 finds
        assert credentials.access_key == "AKIDEXAMPLE"
        assert credentials.secret_key == "s3cr3t/with+chars%" and credentials.token == "tok3n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s3cr3t/with+chars%"  # the launcher's, back
    assert "AWS_SHARED_CREDENTIALS_FILE" not in os.environ

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with credentials_in_a_file(tmp_path / "other") as path:  # no keys: nothing written
        assert path is None and "AWS_SESSION_TOKEN" not in os.environ
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.s3
def test_aws_keys_never_reach_a_jobs_environment_and_the_jobs_still_use_s3(
    slurm_cluster: None,  # noqa: F811 (the fixture imported above)
    tiny_dataset: Path,
    s3_root: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Launched with the keys in the environment (s3_root sets them): the environment Slurm
    keeps for each queued job, its batch script, `scontrol show job -d`, submitit's pickles and
    the logs hold no secret; the run still reads and writes the S3 store."""
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    args = overrides(tiny_dataset, s3_root, tmp_path)
    code, out, err = launch(capsys, *args, "++slurm.extra={begin: now+3600}")  # held: queued
    assert code == 0, out + err
    held_run, held = run_id_of(out), sorted(set(submitted_jobs(out).values()))
    try:
        for job in {j.split("_")[0] for j in held}:
            (job_dir,) = state_save_location().glob(f"hash.*/job.{job}")
            environment = (job_dir / "environment").read_bytes()
            assert secret not in environment and b"AWS_ACCESS_KEY_ID=" not in environment
            assert b"AWS_SHARED_CREDENTIALS_FILE=" in environment
            for command in (["scontrol", "show", "job", "-d", job],
                            ["scontrol", "write", "batch_script", job, "-"]):  # fmt: skip
                shown = subprocess.run(command, capture_output=True, check=True).stdout
                assert shown and secret not in shown, command
    finally:
        runs_main(["cancel", held_run, f"store.root={s3_root}"])
        capsys.readouterr()

    code, out, err = launch(capsys, "--wait", "--force", *args)
    assert code == 0, out + err
    run_id = run_id_of(out)
    check_submission(open_store(s3_root).child(f"runs/{run_id}"), tiny_dataset)
    folder = tmp_path / "slurm" / run_id
    credentials = folder / "aws-credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600 and secret in credentials.read_bytes()
    written = [p for p in (tmp_path / "slurm").rglob("*") if p.is_file() and p != credentials]
    assert any(p.suffix == ".pkl" for p in written) and any(p.suffix == ".err" for p in written)
    assert [p for p in written if secret in p.read_bytes() and p.name != "aws-credentials"] == []
