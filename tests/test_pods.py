"""The container image and a whole run's pods, run from it as Kubernetes would run them.

Real: the image (`make image`: the unchanged Dockerfile, on the stand-in base where the real one
cannot be pulled), every pod's container run by podman under its own pod spec (tests/kubelet.py
derives the options from the manifests: command and args with $(VAR) expansion, env from the
ConfigMap and the example Secret, uid/gid 10001, read-only root filesystem, emptyDirs as tmpfs,
capabilities dropped, CPU and memory limits, the launcher's service-account token,
JOB_COMPLETION_INDEX), the S3 server (SeaweedFS on loopback) and the official Kubernetes client
in the launcher pod. Simulated: the API server and the Job controller (tests/fake_apiserver.py),
since none can run here; pods share the host's network.
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pipeline.commands.launch import main as launch_main
from pipeline.core.config import load_config
from pipeline.orchestration.k8s import FINGERPRINT_LABEL, render_jobs
from pipeline.run.state import code_version
from pipeline.storage.store import open_store
from tests.conftest import TINY_OVERRIDES
from tests.fake_apiserver import FakeApiServer
from tests.kubelet import IMAGE, REPO, PodRun, podman_env, run_pod
from tests.seaweed import SeaweedServer, upload_tree

pytestmark = pytest.mark.image

#: The tiny test run, minus a fixed thread count: the pods size their threads from their limit.
POD_OVERRIDES = [o for o in TINY_OVERRIDES if not o.startswith("train.num_threads")]
RUN_ID = "20261128T000000Z-0d0d0d"
#: The V100 route's pins, which the image's base brings (Dockerfile FROM).
V100_PINS = Path(__file__).resolve().parents[1] / "constraints" / "torch-v100.txt"


@pytest.fixture(scope="session")
def image() -> str:
    """The suite's image, built by `make image` (part of `make test`); missing fails the test."""
    done = subprocess.run(["podman", "image", "exists", IMAGE], env=podman_env())
    assert done.returncode == 0, f"image {IMAGE} is not built: run `make image` first"
    return IMAGE


def s3_secrets(seaweed: SeaweedServer) -> dict[str, dict[str, str]]:
    """The example Secret (k8s/examples/s3-secret.yaml) filled in with the test server's keys."""
    secret = yaml.safe_load((REPO / "k8s/examples/s3-secret.yaml").read_text())
    keys = {k: v for k, v in seaweed.env().items() if k in secret["stringData"]}
    assert set(keys) == set(secret["stringData"])
    return {secret["metadata"]["name"]: keys}


def stage_pod(s3_root: str, *overrides: str) -> dict[str, Any]:
    """The pod spec of the rendered prepare Job, for commands run under the stage pods' contract."""
    cfg = load_config([f"data.root={s3_root}/data", f"store.root={s3_root}/store",
                       f"k8s.image={IMAGE}", *overrides])  # fmt: skip
    cfg.run_id = RUN_ID
    return copy.deepcopy(render_jobs(cfg)[0]["spec"]["template"]["spec"])


@pytest.mark.s3
def test_the_image_brings_the_bases_torch_and_runs_under_the_pod_contract(
    image: str, s3_root: str, seaweed: SeaweedServer
) -> None:
    probe = """
import json, os, shutil, sys, torch, torchvision, pipeline, jobs.model
def writable(path):
    try:
        open(os.path.join(path, "probe"), "w").close()
        return True
    except OSError:
        return False
print(json.dumps({
    "python": sys.version_info[:2], "torch": torch.__version__,
    "torchvision": torchvision.__version__, "arch": torch._C._cuda_getArchFlags(),
    "uid": os.getuid(), "gid": os.getgid(), "package": pipeline.__file__,
    "compilers": [c for c in ("cc", "gcc", "g++", "c++") if shutil.which(c)],
    "writable": {p: writable(p) for p in ("/", "/opt/conda", "/scratch", "/tmp", "/var/tmp")},
    "cpu_limit": os.environ.get("MASKSUITE_CPU_LIMIT"),
    "code_version": __import__("pipeline.run.state").run.state.code_version(),
}))
"""
    pod = stage_pod(s3_root)
    pod["containers"][0]["command"] = ["python", "-c", probe]
    ran = run_pod(pod, secrets=s3_secrets(seaweed))
    assert ran.exit_code == 0, ran.log
    facts = json.loads(ran.log.strip().splitlines()[-1])
    assert facts["python"] == [3, 11]
    v100 = dict(line.split("==") for line in V100_PINS.read_text().splitlines() if "==" in line)
    assert facts["torch"].startswith(v100["torch"] + "+cu128")
    assert facts["torchvision"].startswith(v100["torchvision"])
    assert "sm_70" in facts["arch"].split()  # V100 kernels
    assert (facts["uid"], facts["gid"]) == (10001, 10001)
    assert facts["package"].startswith("/opt/conda/lib/python3.11/site-packages/")
    assert facts["compilers"] == []  # as the real base: hence train.compile is refused
    assert facts["writable"] == {"/": False, "/opt/conda": False, "/scratch": True,
                                 "/tmp": True, "/var/tmp": False}  # fmt: skip
    assert facts["cpu_limit"] == "8"  # the prepare pod's limits.cpu, through the downward API
    assert facts["code_version"] == code_version()  # the commit the image was built from


@pytest.mark.s3
def test_compile_is_refused_in_the_image_before_any_training(
    image: str, s3_root: str, seaweed: SeaweedServer
) -> None:
    overrides = [f"data.root={s3_root}/data", f"store.root={s3_root}/store", f"k8s.image={image}",
                 f"k8s.s3.endpoint={seaweed.endpoint}", *POD_OVERRIDES,
                 "train.compile=true"]  # fmt: skip
    cfg = load_config(overrides)
    cfg.run_id = RUN_ID
    train = render_jobs(cfg, overrides)[1]
    ran = run_pod(train["spec"]["template"]["spec"], secrets=s3_secrets(seaweed),
                  extra_env={"JOB_COMPLETION_INDEX": "0"})  # fmt: skip
    assert ran.exit_code == 1, ran.log
    error = [line for line in ran.log.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "train.compile=true needs a C++ compiler" in error[0], ran.log
    assert "decoded" not in ran.log  # refused before any image was decoded
    run = open_store(f"{s3_root}/store").child(f"runs/{RUN_ID}")
    assert run.list("models") == []
    assert "needs a C++ compiler" in run.read_json("jobs/train-single.json")["error"]


def cronjob_launcher(configmap: dict[str, str], extra: list[str]) -> dict[str, Any]:
    """The nightly CronJob's launcher pod with `configmap` as the ConfigMap's data; `extra`
    overrides are appended to its command, as k8s/40-configmap.yaml tells users to."""
    cron = yaml.safe_load((REPO / "k8s/50-cronjob.yaml").read_text())
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod["containers"][0]["command"] += extra
    cm = yaml.safe_load((REPO / "k8s/40-configmap.yaml").read_text())
    assert set(configmap) == set(cm["data"]), "the test fills in every key of the ConfigMap"
    return pod


def dry_run_launcher(capsys: pytest.CaptureFixture[str], overrides: list[str]) -> dict[str, Any]:
    """The launcher Job that `--dry-run` prints for `kubectl apply -f -`."""
    capsys.readouterr()
    assert launch_main(["--cluster", "k8s", "--dry-run", *overrides]) == 0
    (job,) = yaml.safe_load_all(capsys.readouterr().out)
    assert job["kind"] == "Job"
    return job["spec"]["template"]["spec"]


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.parametrize("launcher", ["cronjob", "dry-run"])
def test_a_whole_run_of_pods_from_the_image_ends_in_a_submission(
    launcher: str,
    image: str,
    tiny_dataset: Path,
    s3_root: str,
    seaweed: SeaweedServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upload_tree(tiny_dataset, f"{s3_root}/data")
    secrets = s3_secrets(seaweed)
    # Test size, a quick poll, and a train pod limited to one CPU (its threads must follow).
    extra = [*POD_OVERRIDES, "k8s.poll_seconds=1", "k8s.resources.train.limits.cpu=1"]
    configmap = {
        "DATA_ROOT": f"{s3_root}/data",
        "STORE_ROOT": f"{s3_root}/store",
        "SUITE": "single",
        "S3_ENDPOINT": seaweed.endpoint,
        "IMAGE": image,
        "S3_CREDENTIALS": "masksuite-s3",
        "NODE_SELECTOR": "{}",
        "TOLERATIONS": "[]",
        "TRAIN_NODE_SELECTOR": "{}",
        "TRAIN_TOLERATIONS": "[]",
    }
    if launcher == "cronjob":
        # a second model, so that the Indexed Job has two indexes
        pod = cronjob_launcher(configmap, [*extra, "+suite.models.mask={task: mask}"])
        models = ["single", "mask"]
    else:
        pod = dry_run_launcher(capsys, [
            f"data.root={s3_root}/data", f"store.root={s3_root}/store",
            f"k8s.s3.endpoint={seaweed.endpoint}", f"k8s.image={image}", *extra,
        ])  # fmt: skip
        models = ["single"]

    def run_stage_pod(job: dict[str, Any], index: int | None) -> PodRun:
        env = {**server.pod_env()}
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        name = f"{job['metadata']['name']}-{index or 0}"
        return run_pod(job["spec"]["template"]["spec"], pod_name=name, secrets=secrets,
                       extra_env=env)  # fmt: skip

    with FakeApiServer(tmp_path, run_stage_pod) as server:
        ran = run_pod(pod, pod_name=f"launcher-{launcher}", secrets=secrets,
                      configmaps={"masksuite-config": configmap}, extra_env=server.pod_env(),
                      token_dir=server.token_dir, image=image)  # fmt: skip
    stage_logs = "\n".join(f"--- {name} [{index}]: exit {p.exit_code}\n{p.log[-2000:]}"
                           for name, index, p in server.pods)  # fmt: skip
    assert ran.exit_code == 0, f"launcher:\n{ran.log[-4000:]}\n{stage_logs}"
    assert all(p.exit_code == 0 for _, _, p in server.pods), stage_logs
    assert server.unauthorized == 0  # the launcher used its service-account token

    # The launcher read data.root (the fingerprint) and created the three Jobs, in order, each
    # labelled with that fingerprint; the Indexed Job ran one pod per model.
    jobs = list(server.jobs.values())
    assert [j["metadata"]["labels"]["masksuite/stage"] for j in jobs] == ["prepare", "train",
                                                                          "vote"]  # fmt: skip
    run_id = jobs[0]["metadata"]["annotations"]["masksuite/run-id"]
    run = open_store(f"{s3_root}/store").child(f"runs/{run_id}")
    fingerprint = run.read_json("fingerprint.json")
    assert fingerprint["files"] > 0
    assert {j["metadata"]["labels"][FINGERPRINT_LABEL] for j in jobs} == {
        fingerprint["sha256"][:40]
    }
    train_pods = [(index, p) for name, index, p in server.pods if name.endswith("-train")]
    assert sorted(index for index, _ in train_pods) == list(range(len(models)))
    for _, p in train_pods:
        assert "1 CPU thread(s)" in p.log, p.log[-3000:]  # limits.cpu=1, on a 2-core machine

    # ... ending in a submission in the store, and latest.json moved to the run.
    submission = pd.read_csv(io.BytesIO(run.read_bytes("submission.csv")))
    info = pd.read_csv(tiny_dataset / "eval" / "info.csv")
    assert submission["ImageID"].tolist() == info["ImageID"].tolist()
    assert submission["ans"].between(0, 17).all()
    stages = {k.removeprefix("stages/").removesuffix(".json") for k in run.list("stages")}
    per_model = {f"{stage}-{m}" for m in models for stage in ("train", "predict")}
    assert stages == {"prepare", "vote", "publish", *per_model}
    latest = open_store(f"{s3_root}/store").read_json("latest.json")
    assert latest["run_id"] == run_id


@pytest.mark.slow
@pytest.mark.s3
def test_a_training_pod_records_w_and_b_offline_under_its_scratch_volume(
    image: str, tiny_dataset: Path, s3_root: str, seaweed: SeaweedServer
) -> None:
    """Tracking on (W&B offline, no key): the training pod writes W&B's files under /scratch, the
    only writable volume, as uid 10001 with a read-only root filesystem. A working directory that
    the runtime created root-owned made W&B's relative `tracking.dir` unwritable, and tracking
    was switched off with a warning. The prepare pod runs first (the train pod reads its output);
    the train pod's command is wrapped so that it lists its W&B files before the volume goes."""
    upload_tree(tiny_dataset, f"{s3_root}/data")
    tracked = [o for o in POD_OVERRIDES if not o.startswith("tracking.mode")]
    overrides = [f"data.root={s3_root}/data", f"store.root={s3_root}/store", f"k8s.image={image}",
                 f"k8s.s3.endpoint={seaweed.endpoint}", "suite=single", *tracked,
                 "tracking.mode=offline"]  # fmt: skip
    cfg = load_config(overrides)
    cfg.run_id = RUN_ID
    prepare, train, _ = render_jobs(cfg, overrides)
    secrets = s3_secrets(seaweed)
    ran = run_pod(prepare["spec"]["template"]["spec"], secrets=secrets)
    assert ran.exit_code == 0, ran.log[-3000:]

    pod = train["spec"]["template"]["spec"]
    main = pod["containers"][0]
    listing = 'python "$@" && find /scratch -name "*.wandb" -path "*offline-run-*"'
    main["command"] = ["sh", "-c", listing, "sh", *main["command"][1:]]
    ran = run_pod(pod, secrets=secrets, extra_env={"JOB_COMPLETION_INDEX": "0"})
    assert ran.exit_code == 0, ran.log[-3000:]
    assert "W&B tracking off" not in ran.log, ran.log[-3000:]
    files = [line for line in ran.log.splitlines() if line.endswith(".wandb")]
    assert files and all(f.startswith("/scratch/") for f in files), ran.log[-3000:]
    run = open_store(f"{s3_root}/store").child(f"runs/{RUN_ID}")
    assert run.list("models")  # the model was trained and stored
