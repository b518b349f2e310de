"""The GPU check (bench/gpu_check.sh, `make gpu-check`) run at a tiny size on this CPU.

No GPU is on the test machines: this runs every step of the one prepared GPU run through the
same code at a tiny size, so that run does not fail on a typo, and checks what each result file
must say. The figures themselves come from a GPU machine (docs/speed.md "GPU figures").
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[1]
NAMED = ("step", "status", "command", "precision", "size", "device_type", "torch", "gpu")


@pytest.mark.slow
def test_tiny_check_on_cpu_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "results"
    # as on the GPU machine: none of the packages it lacks beyond the wheels of make gpu-wheels
    absent = tmp_path / "absent"
    for module in ("wandb", "submitit", "kubernetes", "duckdb"):
        (absent / module).mkdir(parents=True)
        (absent / module / "__init__.py").write_text(f"raise ImportError('no {module} there')")
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", str(out), "--scale", "tiny", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path),
             "PYTHONPATH": str(absent)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == {
        "throughput-auto": "ok", "decode": "ok", "placement": "ok", "suite-auto": "ok",
    }  # fmt: skip
    for step in summary["steps"]:
        record = json.loads((out / f"{step}.json").read_text())
        assert all(record.get(k) is not None for k in NAMED if k != "gpu"), record
        assert record["size"] == [64, 48] and record["torch"] == torch.__version__
        assert record["command"].startswith("python -m ")

    bench = json.loads((out / "throughput-auto.json").read_text())
    assert bench["train_img_s"] > 0 and bench["baseline_train_img_s"] > 0
    assert bench["train_ratio"] == pytest.approx(
        bench["train_img_s"] / bench["baseline_train_img_s"], rel=0.01
    )
    decode = json.loads((out / "decode.json").read_text())
    assert decode["photo_size"] == [512, 384] and decode["gpu_decoder"] is False
    # one decoder on both sides on a CPU: any difference would be a bug in the comparison
    assert decode["raw_decode_difference"] == {"max": 0, "mean": 0.0}
    suite = json.loads((out / "suite-auto.json").read_text())
    trains = [s for s in suite["stages_s"] if s.startswith("train-")]
    assert len(trains) == 13 and {"prepare", "vote"} <= set(suite["stages_s"])
    assert suite["submission_rows"] == 8 * 7 and len(suite["voted"]) == 5
    assert suite["members"] == (suite["voted"][:1] if suite["submitted"] == "best_member" else
                                suite["voted"])  # fmt: skip
    assert 0.0 <= suite["val_macro_f1"] <= 1.0 and suite["eval_macro_f1"] is not None
    assert (out / "suite-auto.log").read_text().count("prepare done") == 1


def test_steps_past_the_budget_are_skipped_not_failed(tmp_path: Path) -> None:
    started = time.monotonic()
    summary = gpu_check.run_check(tmp_path, "tiny", "cpu", budget_s=gpu_check.RESERVE_S + 1)
    assert time.monotonic() - started < 30  # nothing ran
    assert set(summary["steps"].values()) == {"skipped"}
    record = json.loads((tmp_path / "suite-auto.json").read_text())
    assert record["status"] == "skipped" and "left" in record["reason"]


def test_a_failed_step_is_recorded_and_the_next_one_runs(tmp_path: Path) -> None:
    check = gpu_check.Check(tmp_path, torch.device("cpu"), budget_s=300)

    def broken(_timeout: float) -> dict:
        raise RuntimeError("nvjpeg exploded")

    first = check.step("decode", broken, needs_s=0, command="x", precision="bf16", size=(8, 6))
    second = check.step("placement", lambda _t: {"images": 3}, needs_s=0, command="y",
                        precision="bf16", size=(8, 6))  # fmt: skip
    assert first["status"] == "failed" and "nvjpeg exploded" in first["error"]
    assert second["status"] == "ok" and second["images"] == 3
    on_disk = json.loads((tmp_path / "decode.json").read_text())
    assert on_disk["status"] == "failed"
    assert check.summary()["steps"] == {"decode": "failed", "placement": "ok"}
    assert not list(tmp_path.glob("*.tmp"))


def test_a_command_past_its_time_is_stopped(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="ran past 1 s"):
        gpu_check.run_command(["sleep", "30"], 1.0, tmp_path / "log")
    assert time.monotonic() - started < 10
    with pytest.raises(RuntimeError, match="exit 3"):
        gpu_check.run_command(["sh", "-c", "echo oops; exit 3"], 10.0, tmp_path / "log")
    assert (tmp_path / "log").read_text() == "oops\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine with no GPU")
def test_cuda_asked_on_a_machine_without_it_says_so(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "torch sees no CUDA device" in proc.stderr and "--device cpu" in proc.stderr
    assert not (tmp_path / "out").exists()
