"""`python -m bench.throughput [--device cpu|cuda] [--size H W] [--images N] [--compile]`

Training and prediction throughput of ResNet-18 (18 classes) two ways, in the same run, on the
same generated photos (512×384 JPEGs, the real data's size):

- baseline: the competition's baseline code — a Dataset that opens each file with PIL and applies
  torchvision transforms (Resize, ToTensor, Normalize) in a DataLoader with one worker per core,
  fp32 model, every epoch decoding every image again;
- ours: the project's own path — images decoded once at the input size into resident uint8 tensors
  (pipeline.ml.resident), batches augmented on the device, precision and memory layout picked by the
  device (pipeline.ml.device; bf16 autocast + channels_last where the hardware has it), the training
  step of pipeline.stages.train and the prediction loop of pipeline.stages.predict.

Each round times, in turn: a training epoch of the baseline and of ours, then a prediction job
each way over all the photos — the baseline's DataLoader decoding them, ours decoding them once
into memory and predicting (both without test-time flip; ours with the flip, run in the same
forward pass, is reported as `predict_tta_img_s`, and without the decode as
`predict_model_img_s`). Rounds alternate so a load that comes and goes on a shared machine hits
both sides; the figures are medians over rounds, ratios the median of per-round ratios. Both
sides are warmed up by one training batch first. The last line of output is one JSON object with
every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from pipeline.ml.augment import BatchAugment
from pipeline.ml.device import Runtime, pick_device, pick_precision
from pipeline.ml.inference import for_inference, predict_probs, probe_precision
from pipeline.ml.losses import build_loss
from pipeline.ml.resident import ResidentImages, image_bytes, load_resident, plan_placement
from pipeline.stages.train import train_one_epoch
from pipeline.storage.shards import encode_shard
from pipeline.storage.store import open_store
from pipeline.tools.synth import encode_image, plan_dataset, render_person

SOURCE_SIZE = (512, 384)
NUM_CLASSES = 18
#: The baseline code's normalisation (the competition's starter kit).
SEED_MEAN, SEED_STD = (0.548, 0.504, 0.479), (0.237, 0.247, 0.246)


def make_photos(folder: Path, count: int, seed: int = 0) -> tuple[list[Path], list[int]]:
    """Render `count` generated 512×384 face photos as JPEG files; returns paths and labels."""
    people, _ = plan_dataset(max(1, -(-count // 7)), 0, seed)
    paths: list[Path] = []
    rng = np.random.default_rng(seed)

    def render(person: Any) -> list[tuple[str, bytes]]:
        return [
            (f"{person.pid}_{stem}.jpg", encode_image(img, ".jpg"))
            for stem, img in render_person(person, seed, SOURCE_SIZE)
        ]

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for photos in pool.map(render, people):
            for name, data in photos:
                path = folder / name
                path.write_bytes(data)
                paths.append(path)
    paths = paths[:count]
    return paths, rng.integers(0, NUM_CLASSES, len(paths)).tolist()


class SeedDataset(Dataset):
    """The baseline's dataset: PIL open + convert + transforms for every item of every epoch."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], size: Sequence[int]):
        self.paths, self.labels = list(paths), list(labels)
        self.transform = transforms.Compose(
            [
                transforms.Resize(tuple(size), Image.BILINEAR),
                transforms.ToTensor(),
                transforms.Normalize(mean=SEED_MEAN, std=SEED_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = Image.open(self.paths[i]).convert("RGB")
        return self.transform(image), self.labels[i]


def sync(device: torch.device) -> None:
    """Wait for queued device work so wall-clock timings are true."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Any) -> float:
    """Seconds `work()` takes, device work included."""
    sync(device)
    started = time.perf_counter()
    work()
    sync(device)
    return time.perf_counter() - started


def new_model(device: torch.device, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    if channels_last:
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


class Baseline:
    """The competition's baseline loop: files → PIL → transforms → DataLoader → fp32 model."""

    def __init__(self, dataset: SeedDataset, device: torch.device, batch: int, eval_batch: int,
                 workers: int):  # fmt: skip
        common = {"num_workers": workers, "persistent_workers": workers > 0}
        self.train_loader = DataLoader(dataset, batch_size=batch, shuffle=True, **common)
        self.eval_loader = DataLoader(dataset, batch_size=eval_batch, **common)
        self.device = device
        self.model = new_model(device, channels_last=False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.criterion = torch.nn.CrossEntropyLoss()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(self.device), y.to(self.device)
        loss = self.criterion(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def train_epoch(self) -> None:
        self.model.train()
        for x, y in self.train_loader:
            self.step(x, y)

    @torch.no_grad()
    def predict(self) -> None:
        self.model.eval()
        for x, _ in self.eval_loader:
            self.model(x.to(self.device)).softmax(dim=1).cpu()

    def warm_up(self) -> None:
        x, y = next(iter(self.train_loader))
        self.model.train()
        self.step(x, y)


class Ours:
    """The project's path: decode once (pipeline.ml.resident), train_one_epoch, predict_probs."""

    def __init__(self, store: Any, ids: list[str], labels: list[int], size: tuple[int, int],
                 rt: Runtime, placement: str, batch: int, eval_batch: int,
                 compile_model: bool = False):  # fmt: skip
        self.store, self.ids, self.size, self.rt, self.placement = store, ids, size, rt, placement
        self.targets = torch.tensor(labels)
        self.model = new_model(rt.device, channels_last=True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)
        self.step_model = torch.compile(self.model) if compile_model else self.model
        self.eval_batch = eval_batch
        self.inference_model = for_inference(new_model(rt.device, channels_last=True))
        cfg = OmegaConf.create({"balanced_sampling": False, "batch_size": batch})
        cfg.center_crop = None
        self.train_kwargs = {
            "rt": rt,
            "train_cfg": cfg,
            "num_classes": NUM_CLASSES,
            "augment": BatchAugment(hflip=True),
            "loss_fn": build_loss({"ce": 1.0}, num_classes=NUM_CLASSES),
            "generator": torch.Generator().manual_seed(0),
        }
        self.images = self.decode()

    def decode(self) -> ResidentImages:
        return load_resident(
            self.store,
            self.ids,
            ["shard.parquet"] * len(self.ids),
            self.size,
            device=self.rt.device,
            threads=self.rt.threads,
            placement=self.placement,
        )

    def train_epoch(self) -> None:
        train_one_epoch(
            self.step_model, self.optimizer, self.images, self.targets, **self.train_kwargs
        )

    def predict(self, tta: bool = False, decode: bool = True) -> None:
        """A prediction job: decode the images once, then predict them all."""
        images = self.decode() if decode else self.images
        predict_probs(
            self.inference_model,
            images,
            device=self.rt.device,
            precision=self.rt.precision,
            batch_size=self.eval_batch,
            tta_flip=tta,
        )

    def warm_up(self) -> None:
        n = self.train_kwargs["train_cfg"].batch_size
        warm = ResidentImages(self.images.images[:n], self.rt.device)
        train_one_epoch(
            self.step_model, self.optimizer, warm, self.targets[:n], **self.train_kwargs
        )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = pick_device(args.device)
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    size = tuple(args.size)
    workers = args.workers if args.workers is not None else min(threads, 16)
    say = print if not args.quiet else (lambda *a, **k: None)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        paths, labels = make_photos(folder, args.images)
        say(f"generated {len(paths)} photos of 512x384 in {time.perf_counter() - t0:.1f} s")

        # Ours: the images packed as the prepare stage packs them, decoded once into memory.
        store = open_store(str(folder / "store"))
        store.write_bytes("shard.parquet", encode_shard([(p.name, p.read_bytes()) for p in paths]))
        rt = Runtime(device, pick_precision(args.precision, device), threads)
        rt = probe_precision(new_model(device, True), size, rt)
        placement = plan_placement(image_bytes(len(paths), size), device, args.gpu_budget)
        ids = [p.name for p in paths]
        ours = Ours(store, ids, labels, size, rt, placement, args.batch_size, args.eval_batch_size)
        base = Baseline(
            SeedDataset(paths, labels, size), device, args.batch_size, args.eval_batch_size, workers
        )
        decode_s = timed(device, ours.decode)
        say(f"ours: decoded once at {list(size)}: {len(paths) / decode_s:.0f} images/s "
            f"({ours.images.placement} memory, {rt.precision})")  # fmt: skip
        base.warm_up()
        ours.warm_up()

        # Rounds alternate baseline and ours, so a load that comes and goes on a shared machine
        # hits both; figures are medians over the rounds.
        n = len(paths)
        rows: dict[str, list[float]] = {k: [] for k in ("bt", "ot", "bp", "op", "om", "tta")}
        for r in range(1, args.rounds + 1):
            rows["bt"].append(n / timed(device, base.train_epoch))
            rows["ot"].append(n / timed(device, ours.train_epoch))
            rows["bp"].append(n / timed(device, base.predict))
            rows["op"].append(n / timed(device, ours.predict))
            rows["om"].append(n / timed(device, lambda: ours.predict(decode=False)))
            rows["tta"].append(n / timed(device, lambda: ours.predict(tta=True)))
            say(
                f"round {r}: train baseline {rows['bt'][-1]:7.1f}  ours {rows['ot'][-1]:7.1f} | "
                f"predict baseline {rows['bp'][-1]:7.1f}  ours {rows['op'][-1]:7.1f} images/s"
            )
        med = {k: float(np.median(v)) for k, v in rows.items()}
        train_ratios = [o / b for o, b in zip(rows["ot"], rows["bt"], strict=True)]
        predict_ratios = [o / b for o, b in zip(rows["op"], rows["bp"], strict=True)]
        result: dict[str, Any] = {}
        if args.compile:
            compiled = Ours(store, ids, labels, size, rt, placement, args.batch_size,
                            args.eval_batch_size, compile_model=True)  # fmt: skip
            compile_s = timed(device, compiled.warm_up)
            compiled_img_s = [n / timed(device, compiled.train_epoch) for _ in range(args.rounds)]
            result["train_compiled_img_s"] = round(float(np.median(compiled_img_s)), 1)
            result["compile_s"] = round(compile_s, 1)
            result["train_compiled_ratio"] = round(result["train_compiled_img_s"] / med["bt"], 2)
            say(f"ours compiled: {result['train_compiled_img_s']} images/s "
                f"(compiling took {compile_s:.0f} s)")  # fmt: skip
    return {
        "device": device_name(device),
        "device_type": device.type,
        "size": list(size),
        "images": len(paths),
        "precision": rt.precision,
        "placement": placement,
        "torch": torch.__version__,
        "threads": threads,
        "loader_workers": workers,
        "rounds": args.rounds,
        "train_img_s": round(med["ot"], 1),
        "baseline_train_img_s": round(med["bt"], 1),
        "train_ratio": round(float(np.median(train_ratios)), 2),
        "predict_img_s": round(med["op"], 1),
        "baseline_predict_img_s": round(med["bp"], 1),
        "predict_ratio": round(float(np.median(predict_ratios)), 2),
        "predict_model_img_s": round(med["om"], 1),
        "predict_tta_img_s": round(med["tta"], 1),
        "decode_img_s": round(n / decode_s, 1),
        **result,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="input size (default: 128 96 on cpu, 512 384 on cuda)")  # fmt: skip
    p.add_argument("--images", type=int, default=None,
                   help="photos generated (default: 448 on cpu, 4096 on cuda)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds: a training epoch and a prediction job each way")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    p.add_argument("--workers", type=int, default=None, help="baseline DataLoader workers")
    p.add_argument("--gpu-budget", type=float, default=0.5, help="train.gpu_memory_budget")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile")
    p.add_argument("--quiet", action="store_true", help="print only the JSON line")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    on_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.size = args.size or ([512, 384] if on_gpu else [128, 96])
    args.images = args.images or (4096 if on_gpu else 448)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
