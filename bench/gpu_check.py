"""`python -m bench.gpu_check OUT [--scale full|tiny] [--device cuda|cpu] [--budget-s S]`

The one prepared check on a GPU machine (docs/speed.md "GPU figures"; `make gpu-check`). It runs
once, in at most `--budget-s` seconds (default 480: 8 minutes on one H100/H200), and leaves one
JSON file per step under OUT, each naming the device, torch version, precision, image size and
the command, plus `summary.json` with every step's state:

1. `throughput-<precision>.json`: `python -m bench.throughput` at the competition's 512×384, the
   seed-style baseline and ours in the same run, eager and `--compile`, for bf16 and for fp16 (the
   V100 path: fp16 autocast + GradScaler);
2. `decode.json`: nvJPEG (torchvision's `decode_jpeg` on the device, as pipeline.ml.resident does)
   against the CPU decoder on the same generated photos: maximum and mean pixel difference of the
   raw decode and of the decoded-and-resized tensors training uses, and images/s each way;
3. `placement.json`: training images/s with the images resident on the GPU against pinned host
   memory (what `train.gpu_memory_budget=0` forces), alternated over rounds;
4. `suite-<precision>.json`: a whole `suite=seed` run on a full-size generated dataset (2,700 +
   1,800 people, generated with all cores) at 512×384 with a fixed number of epochs a model, timed
   per stage, ending in a submission; fp16 too when the budget allows.

A step that fails is recorded (`status: failed` with the error's last lines) and the next step
still runs, so one run on a borrowed machine brings back everything that worked. Steps that would
start too close to the end of the budget are recorded as `skipped`. `--scale tiny --device cpu`
runs the same code at a tiny size on a CPU (tests/test_gpu_check.py), so the one GPU run does not
fail on a typo.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from bench.throughput import Ours, make_photos, timed
from pipeline.ml.device import Runtime, pick_device, pick_precision
from pipeline.ml.resident import load_resident
from pipeline.storage.shards import encode_shard
from pipeline.storage.store import open_store

#: Seconds kept back at the end of the budget for writing the summary.
RESERVE_S = 15.0


@dataclass(frozen=True)
class Scale:
    """How big each step is."""

    size: tuple[int, int]  # H, W of the training input
    bench_images: int  # photos bench.throughput generates
    rounds: int  # its rounds (baseline and ours alternated)
    compile: bool  # also measure torch.compile in bench.throughput
    decode_images: int  # photos of the decode and placement steps
    people: int  # suite run: training people (7 photos each)
    eval_people: int  # suite run: evaluation people
    photo_size: tuple[int, int]  # size the generator draws the photos at
    epochs: int  # suite run: epochs a model (no early stopping in suite=seed)
    suite_estimate_s: float  # a suite run's expected length, to decide whether fp16's fits


SCALES = {
    # One H100/H200: ~2.5 min of throughput, ~0.5 min of decode and placement, ~5 min suite.
    "full": Scale((512, 384), 2048, 2, True, 512, 2700, 1800, (512, 384), 10, 300.0),
    # A 2-core CPU in a test: the same code paths in about a minute.
    "tiny": Scale((64, 48), 48, 1, False, 24, 24, 8, (64, 48), 1, 60.0),
}


def device_info(device: torch.device) -> dict[str, Any]:
    """What every result file names: the device, torch and CUDA versions, the host."""
    info: dict[str, Any] = {
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=torch.cuda.get_device_name(device),
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
        )
    else:
        info["gpu"] = None
    return info


class Check:
    """Runs steps against one deadline and writes each step's JSON file under `out`."""

    def __init__(self, out: Path, device: torch.device, budget_s: float):
        self.out, self.device = out, device
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.info = device_info(device)
        self.steps: list[dict[str, Any]] = []

    def left(self) -> float:
        """Seconds left before the summary must be written."""
        return self.deadline - RESERVE_S - time.monotonic()

    def step(
        self, name: str, work: Callable[[float], dict[str, Any]], *, needs_s: float,
        command: str, precision: str | None, size: Sequence[int],
    ) -> dict[str, Any]:  # fmt: skip
        """Run `work(timeout_s)` when `needs_s` seconds are left; record what happened."""
        record: dict[str, Any] = {
            "step": name,
            "command": command,
            "precision": precision,
            "size": list(size),
            **self.info,
        }
        left = self.left()
        if left < needs_s:
            reason = f"{left:.0f} s left, the step needs ~{needs_s:.0f} s"
            record.update(status="skipped", reason=reason)
        else:
            t0 = time.monotonic()
            try:
                record.update(work(left), status="ok")
            except Exception as exc:  # a failed step is a result too; the next one still runs
                lines = traceback.format_exception(exc)
                record.update(status="failed", error="".join(lines)[-3000:])
            record["seconds"] = round(time.monotonic() - t0, 1)
        took = f" in {record['seconds']:.0f} s" if "seconds" in record else ""
        print(f"gpu-check: {name}: {record['status']}{took}", flush=True)
        write_json(self.out / f"{name}.json", record)
        self.steps.append(record)
        return record

    def summary(self) -> dict[str, Any]:
        summary = {
            **self.info,
            "seconds": round(time.monotonic() - self.started, 1),
            "steps": {s["step"]: s["status"] for s in self.steps},
        }
        write_json(self.out / "summary.json", summary)
        return summary


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON atomically (a half-written result never looks complete)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def run_command(argv: list[str], timeout_s: float, log: Path) -> str:
    """Run `argv` with its output teed to `log`; return the output, raise on failure or timeout."""
    with log.open("w") as sink:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        fired = threading.Event()

        def stop() -> None:
            fired.set()
            proc.kill()

        watchdog = threading.Timer(max(timeout_s, 1.0), stop)
        watchdog.start()
        lines: list[str] = []
        try:
            for line in proc.stdout:
                sink.write(line)
                sink.flush()
                lines.append(line)
            code = proc.wait()
        finally:
            watchdog.cancel()
    if fired.is_set():
        raise TimeoutError(f"{' '.join(argv[1:4])} … ran past {timeout_s:.0f} s; see {log.name}")
    if code != 0:
        raise RuntimeError(f"exit {code}: {''.join(lines[-20:])}")
    return "".join(lines)


def throughput(scale: Scale, device: str, precision: str, work: Path) -> Callable[[float], dict]:
    argv = [
        sys.executable, "-m", "bench.throughput", "--device", device, "--precision", precision,
        "--size", *map(str, scale.size), "--images", str(scale.bench_images),
        "--rounds", str(scale.rounds), *(["--compile"] if scale.compile else []),
    ]  # fmt: skip

    def work_fn(timeout_s: float) -> dict[str, Any]:
        output = run_command(argv, timeout_s, work / f"throughput-{precision}.log")
        return json.loads(output.strip().splitlines()[-1])

    work_fn.command = "python " + " ".join(argv[1:])  # type: ignore[attr-defined]
    return work_fn


def pixel_difference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    diff = (a.to(torch.int16) - b.to(torch.int16)).abs()
    return {"max": int(diff.max()), "mean": round(float(diff.float().mean()), 4)}


def decode(scale: Scale, rt: Runtime, work: Path) -> dict[str, Any]:
    """nvJPEG (on rt.device) against the CPU decoder, raw and as training sees the images."""
    folder = work / "decode"
    folder.mkdir(exist_ok=True)
    paths, _ = make_photos(folder, scale.decode_images, seed=1)
    raw = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    cpu_s = timed(rt.device, lambda: [decode_jpeg(r, mode=ImageReadMode.RGB) for r in raw])
    on_cpu = [decode_jpeg(r, mode=ImageReadMode.RGB) for r in raw]
    dev_s = timed(rt.device, lambda: decode_jpeg(raw, mode=ImageReadMode.RGB, device=rt.device))
    on_dev = decode_jpeg(raw, mode=ImageReadMode.RGB, device=rt.device)
    raw_diff = pixel_difference(torch.stack(on_cpu), torch.stack([d.cpu() for d in on_dev]))

    store = open_store(str(folder / "store"))
    store.write_bytes("shard.parquet", encode_shard([(p.name, p.read_bytes()) for p in paths]))
    ids = [p.name for p in paths]
    resident = {}
    for dev in {torch.device("cpu"), rt.device}:
        resident[dev.type] = load_resident(
            store, ids, ["shard.parquet"] * len(ids), scale.size, device=dev, threads=rt.threads,
            placement="device" if dev.type == "cuda" else "host",
        ).images.cpu()  # fmt: skip
    return {
        "images": len(paths),
        "photo_size": [int(on_cpu[0].shape[1]), int(on_cpu[0].shape[2])],
        "gpu_decoder": rt.device.type == "cuda",
        "raw_decode_difference": raw_diff,
        "resized_difference": pixel_difference(resident["cpu"], resident[rt.device.type]),
        "cpu_decode_img_s": round(len(raw) / cpu_s, 1),
        "device_decode_img_s": round(len(raw) / dev_s, 1),
    }


def placement(scale: Scale, rt: Runtime, work: Path) -> dict[str, Any]:
    """Training images/s with the images on the GPU against pinned host memory, alternated."""
    folder = work / "placement"
    folder.mkdir(exist_ok=True)
    paths, labels = make_photos(folder, scale.decode_images * 4, seed=2)
    store = open_store(str(folder / "store"))
    store.write_bytes("shard.parquet", encode_shard([(p.name, p.read_bytes()) for p in paths]))
    ids = [p.name for p in paths]
    kinds = ("device", "pinned") if rt.device.type == "cuda" else ("host",)
    sides = {k: Ours(store, ids, labels, scale.size, rt, k, 64, 256) for k in kinds}
    for side in sides.values():
        side.warm_up()
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(max(2, scale.rounds)):
        for kind, side in sides.items():
            rates[kind].append(len(ids) / timed(rt.device, side.train_epoch))
    result: dict[str, Any] = {
        "images": len(ids),
        "placements": {k: sides[k].images.placement for k in kinds},
        **{f"train_{k}_img_s": round(float(np.median(v)), 1) for k, v in rates.items()},
    }
    if len(kinds) == 2:
        result["pinned_over_device"] = round(
            result["train_pinned_img_s"] / result["train_device_img_s"], 3
        )
    return result


def suite(
    scale: Scale, device: str, precision: str, data: Path, work: Path
) -> Callable[[float], dict[str, Any]]:
    store = work / f"store-{precision}"
    argv = [
        sys.executable, "-m", "pipeline.launch", "suite=seed", f"data.root={data}",
        f"store.root={store}", "train.image_size=[{},{}]".format(*scale.size),
        f"train.epochs={scale.epochs}", f"train.device={device}", f"train.precision={precision}",
        "tracking.mode=disabled",
    ]  # fmt: skip

    def work_fn(timeout_s: float) -> dict[str, Any]:
        t0 = time.monotonic()
        generate_s = 0.0
        if not (data / "train" / "train.csv").exists():
            run_command(
                [sys.executable, "-m", "pipeline.synth", str(data), "--people", str(scale.people),
                 "--eval-people", str(scale.eval_people), "--size", *map(str, scale.photo_size),
                 "--seed", "0"],
                timeout_s, work / "synth.log",
            )  # fmt: skip
            generate_s = time.monotonic() - t0
        t1 = time.monotonic()
        run_command(argv, timeout_s - generate_s, work / f"suite-{precision}.log")
        launch_s = time.monotonic() - t1
        latest = json.loads((store / "latest.json").read_text())
        run = store / "runs" / latest["run_id"]
        manifest = json.loads((run / "manifest.json").read_text())
        vote = json.loads((run / "vote.json").read_text())
        submission = (run / "submission.csv").read_text().strip().splitlines()
        stages = {k: v["seconds"] for k, v in sorted(manifest["stages"].items())}
        return {
            "run_id": latest["run_id"],
            "generate_s": round(generate_s, 1),
            "launch_s": round(launch_s, 1),
            "stages_s": stages,
            "train_s": round(sum(v for k, v in stages.items() if k.startswith("train-")), 1),
            "people": scale.people,
            "eval_people": scale.eval_people,
            "epochs": scale.epochs,
            "members": vote["members"],
            "voted": vote.get("voted", vote["members"]),
            "submitted": vote.get("submitted", "vote"),
            "method": vote.get("method"),
            "val_macro_f1": round(vote["ensemble"]["val_macro_f1"], 4),
            # held-out scores: the generator writes the eval folder's answers
            "eval_macro_f1": round(vote["eval"]["macro_f1"], 4) if "eval" in vote else None,
            "submission_rows": len(submission) - 1,
        }

    work_fn.command = "python " + " ".join(argv[1:])  # type: ignore[attr-defined]
    return work_fn


def run_check(out: Path, scale_name: str, device_name: str, budget_s: float) -> dict[str, Any]:
    """Every step in order against one budget; returns the summary."""
    scale = SCALES[scale_name]
    device = pick_device(device_name)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, device, budget_s)
    # A CPU takes `auto`: an explicit bf16 is refused where oneDNN's bf16 kernels go wrong for
    # the small inputs of the tiny scale (pipeline.stages.predict.probe_precision).
    precisions = ("bf16", "fp16") if device.type == "cuda" else ("auto",)
    threads = len(os.sched_getaffinity(0))
    rt = Runtime(device, pick_precision("bf16", device), threads)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        for precision in precisions:
            work_fn = throughput(scale, device.type, precision, work)
            check.step(f"throughput-{precision}", work_fn, needs_s=30, command=work_fn.command,
                       precision=precision, size=scale.size)  # fmt: skip
        for name, fn in (("decode", decode), ("placement", placement)):
            check.step(name, lambda _t, fn=fn: fn(scale, rt, work), needs_s=20,
                       command=f"python -m bench.gpu_check ({name} step)", precision=rt.precision,
                       size=scale.size)  # fmt: skip
        data = work / "data"
        for i, precision in enumerate(precisions):
            work_fn = suite(scale, device.type, precision, data, work)
            # The first suite run takes what is left; a second only when a whole one fits.
            needs = 30.0 if i == 0 else scale.suite_estimate_s
            check.step(f"suite-{precision}", work_fn, needs_s=needs, command=work_fn.command,
                       precision=precision, size=scale.size)  # fmt: skip
        for log in work.glob("*.log"):
            (out / log.name).write_text(log.read_text()[-20000:])
    return check.summary()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", type=Path, help="folder for the result files (created)")
    p.add_argument("--scale", choices=sorted(SCALES), default="full")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--budget-s", type=float, default=480.0, help="seconds for the whole check")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.gpu_check: --device cuda but torch sees no CUDA device "
              f"(torch {torch.__version__}); run it on a GPU machine or pass --device cpu",
              file=sys.stderr)  # fmt: skip
        return 2
    summary = run_check(args.out, args.scale, args.device, args.budget_s)
    print(json.dumps(summary))
    return 0 if all(s != "failed" for s in summary["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
