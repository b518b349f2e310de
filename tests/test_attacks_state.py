"""Issue 26: what others can write (file names, stored state, keys) read back as data.

Formula cells in the CSVs people open, a poisoned scheduler.json, junk keys in a shared bucket,
HTML from index.parquet, OmegaConf interpolation in a stored manifest.
"""

from __future__ import annotations

import csv
import html
import io
import logging
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import DictConfig, OmegaConf

from pipeline.commands.infer import main as infer_main
from pipeline.commands.runs import main as runs_main
from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError
from pipeline.ml.images import BadInputs
from pipeline.orchestration.local import run_local
from pipeline.run.state import run_store
from pipeline.storage.store import LocalStore
from tests.conftest import TINY_OVERRIDES

#: What a spreadsheet reads as the start of a formula.
FORMULA_STARTS = ["=", "+", "-", "@", "\t", "\r"]
#: A real competition ImageID: a hex hash, never touched.
REAL_ID = "cbc5c6e168e63498590db46022617123f1fe1268.jpg"
PAYLOAD = "cmd|' -C calc'!A0"
MakeCfg = Callable[..., DictConfig]


def formula_names(suffix: str = ".jpg") -> list[str]:
    """One name per formula start, e.g. `=cmd|' -C calc'!A0.jpg`."""
    return [f"{c}{PAYLOAD}{i}{suffix}" for i, c in enumerate(FORMULA_STARTS)]


def read_csv(data: bytes | Path) -> pd.DataFrame:
    """A CSV as a spreadsheet user's pandas would read it (text kept as text)."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    return pd.read_csv(source, keep_default_na=False)


def assert_neutralised(cells: list[str], raw: list[str]) -> None:
    """Each raw formula-like value is read back as `'` + value."""
    for value in raw:
        assert "'" + value in cells, f"{value!r} not neutralised in {cells}"
        assert value not in cells


# ------------------------------------------------------------------------- 4. CSV formulas


def test_csv_cells_neutralise_text_formulas_and_leave_numbers_and_real_ids() -> None:
    from pipeline.core.csv_cells import csv_bytes  # new in issue 26

    frame = pd.DataFrame(
        {"ImageID": [*formula_names(), REAL_ID, 'a,b"c.jpg'], "ans": [-1, 0, 1, 2, 3, 4, 5, 17]}
    )
    back = read_csv(csv_bytes(frame))
    assert_neutralised(back["ImageID"].tolist(), formula_names())
    assert back["ImageID"].tolist()[-2:] == [REAL_ID, 'a,b"c.jpg']
    assert back["ans"].tolist() == [-1, 0, 1, 2, 3, 4, 5, 17]  # numbers stay numbers


def test_bad_inputs_csv_neutralises_paths_and_reasons() -> None:
    """The writer of prepare's bad_inputs.csv and of infer's bad_inputs/<batch>.csv."""
    bad = BadInputs()
    paths = formula_names(".txt")
    reasons = [f'{c}HYPERLINK("http://evil")' for c in FORMULA_STARTS]
    for path, reason in zip(paths, reasons, strict=True):
        bad.add(path, reason)
    bad.add(f"eval/images/{REAL_ID}", "not a readable image")
    back = read_csv(bad.to_csv())
    assert_neutralised(back["path"].tolist(), paths)
    assert_neutralised(back["reason"].tolist(), reasons)
    assert back["path"].iloc[-1] == f"eval/images/{REAL_ID}"


@pytest.fixture(scope="module")
def formula_run(
    tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DictConfig, dict[str, str]]:
    """A finished run whose first eval images are renamed to formula-like names; returns the
    config and {new name: old name}."""
    root = tmp_path_factory.mktemp("formula")
    data = root / "data"
    shutil.copytree(tiny_dataset, data)
    info = pd.read_csv(data / "eval" / "info.csv", keep_default_na=False)
    renamed = dict(zip(formula_names(), info["ImageID"].iloc[: len(FORMULA_STARTS)], strict=True))
    back = {old: new for new, old in renamed.items()}
    for new, old in renamed.items():
        (data / "eval" / "images" / old).rename(data / "eval" / "images" / new)
    for name in ("info.csv", "ground_truth.csv"):
        if (data / "eval" / name).exists():
            table = pd.read_csv(data / "eval" / name, keep_default_na=False)
            table["ImageID"] = table["ImageID"].map(lambda i: back.get(i, i))
            table.to_csv(data / "eval" / name, index=False, quoting=csv.QUOTE_ALL)  # CR kept
    cfg = load_config([f"data.root={data}", f"store.root={root / 'store'}", *TINY_OVERRIDES])
    run_local(cfg)
    return cfg, renamed


@pytest.mark.slow
def test_the_submission_neutralises_formula_image_ids_and_names_them(
    formula_run: tuple[DictConfig, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    cfg, renamed = formula_run
    submission = read_csv(run_store(cfg).read_bytes("submission.csv"))
    ids = submission["ImageID"].tolist()
    assert_neutralised(ids, list(renamed))
    others = [i for i in ids if not i.startswith("'")]
    assert others and all(not i.startswith(tuple(FORMULA_STARTS)) for i in others)
    assert pd.api.types.is_integer_dtype(submission["ans"])


def test_the_vote_warns_about_each_neutralised_image_id(caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.stages.vote import submission_csv

    frame = pd.DataFrame({"ImageID": [*formula_names(), REAL_ID], "ans": [0, 1, 2, 3, 4, 5, 6]})
    with caplog.at_level(logging.WARNING):
        data = submission_csv(frame, "store/runs/x/submission.csv")
    for name in formula_names():
        assert repr(name) in caplog.text
    assert REAL_ID not in caplog.text
    assert read_csv(data)["ImageID"].iloc[-1] == REAL_ID


@pytest.mark.slow
def test_infer_answers_and_bad_inputs_neutralise_photo_names(
    formula_run: tuple[DictConfig, dict[str, str]], tmp_path: Path
) -> None:
    cfg, renamed = formula_run
    photos = tmp_path / "new"
    photos.mkdir()
    images = Path(cfg.data.root) / "eval" / "images"
    for name in renamed:
        shutil.copy(images / name, photos / name)
    bad_names = formula_names(".txt")
    for name in bad_names:
        (photos / name).write_text("not a photo")
    out = tmp_path / "answers"
    args = [f"infer.input={photos}", f"infer.output={out}", f"store.root={cfg.store.root}"]
    assert infer_main(args) == 0
    (answers,) = (out / "classes").glob("*.csv")
    assert_neutralised(read_csv(answers)["image"].tolist(), list(renamed))
    bad = read_csv(out / "bad_inputs" / answers.name)
    assert_neutralised(bad["path"].tolist(), bad_names)


# ------------------------------------------------------------------- 7. a poisoned scheduler.json


class FakeSlurm:
    """Records the squeue/scancel command lines; squeue answers every id it is asked about."""

    def __init__(self, state: str, reason: str) -> None:
        self.commands: list[list[str]] = []
        self.state, self.reason = state, reason

    def __call__(self, command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(command))
        out = ""
        if command[0] == "squeue":
            (jobs,) = [a.split("=", 1)[1] for a in command if a.startswith("--jobs=")]
            out = "".join(f"{j}|{self.state}|{self.reason}\n" for j in jobs.split(","))
        return subprocess.CompletedProcess(command, 0, out, "")


POISON = ["--partition=gpu", "--user=someone-else"]


@pytest.fixture
def poisoned_run(tmp_path: Path, make_cfg: MakeCfg) -> tuple[DictConfig, str]:
    """A run whose scheduler.json names option-like job ids and logs outside slurm.folder (a
    canary file and /etc/hostname); its vote job (12) is real, with a log under slurm.folder.
    Returns the config and the canary."""
    canary = f"canary-{uuid.uuid4().hex}"
    secret = tmp_path / "secret.txt"
    secret.write_text(f"{canary}\n")
    folder = tmp_path / "slurm"
    (folder / "r1").mkdir(parents=True)
    (folder / "r1" / "12_0_log.err").write_text("the vote job's own log line\n")
    cfg = make_cfg(tmp_path / "data", f"slurm.folder={folder}", "slurm.poll_seconds=0")
    cfg.run_id = "r1"
    jobs = {
        "prepare": {"job_id": POISON[0], "log": str(secret)},
        "train-single": {"job_id": POISON[1], "log": "/etc/hostname"},
        "predict-single": {"job_id": "11", "log": str(folder / "r1" / ".." / ".." / "secret.txt")},
        "vote": {"job_id": "12", "log": str(folder / "r1" / "12_0_log.err")},
    }
    submission = {"cluster": "slurm", "submitted": "2026-01-01T00:00:00+00:00",
                  "folder": str(folder / "r1"), "models": ["single"], "jobs": jobs}  # fmt: skip
    run_store(cfg).write_json("scheduler.json", {"submissions": [submission]})
    return cfg, canary


def hostname() -> str:
    try:
        return Path("/etc/hostname").read_text().strip()
    except OSError:
        return ""


def assert_no_poison(fake: FakeSlurm) -> None:
    for command in fake.commands:
        assert not set(POISON) & set(command), command
        assert not any(p in arg for p in POISON for arg in command), command
        if command[0] == "scancel":
            assert command[1] == "--", command  # ids after `--`: never read as options


def test_a_poisoned_scheduler_json_neither_cancels_others_jobs_nor_prints_files(
    poisoned_run: tuple[DictConfig, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`launch --wait` follows the run: every job is stuck behind a failed dependency, so it
    cancels them and prints the jobs' log tails."""
    from pipeline.orchestration import slurm

    cfg, canary = poisoned_run
    fake = FakeSlurm("PENDING", "DependencyNeverSatisfied")
    monkeypatch.setattr(slurm.subprocess, "run", fake)
    with caplog.at_level(logging.WARNING):
        assert slurm.follow(cfg, run_store(cfg)) == 1
    printed = capsys.readouterr()
    shown = printed.out + printed.err + caplog.text
    assert canary not in shown
    if hostname():
        assert f"    {hostname()}" not in printed.out + printed.err
    assert "the vote job's own log line" in printed.err  # a log under slurm.folder is shown
    assert_no_poison(fake)
    for bad in POISON:
        assert "scheduler.json" in caplog.text and repr(bad) in caplog.text


def test_runs_cancel_only_cancels_valid_job_ids_after_a_double_dash(
    poisoned_run: tuple[DictConfig, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.orchestration import slurm

    cfg, canary = poisoned_run
    fake = FakeSlurm("RUNNING", "None")
    monkeypatch.setattr(slurm.subprocess, "run", fake)
    args = ["cancel", "r1", f"store.root={cfg.store.root}", f"slurm.folder={cfg.slurm.folder}"]
    assert runs_main(args) == 0
    assert_no_poison(fake)
    assert ["scancel", "--", "11", "12"] in fake.commands
    assert runs_main(["status", *args[1:]]) == 0
    printed = capsys.readouterr()
    assert canary not in printed.out + printed.err


def test_slurm_commands_refuse_ids_that_are_not_job_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.orchestration import slurm

    fake = FakeSlurm("RUNNING", "None")
    monkeypatch.setattr(slurm.subprocess, "run", fake)
    for bad in [*POISON, "12;rm", "12 13", "", "_1"]:
        with pytest.raises(ConfigError, match="not a Slurm job id"):
            slurm.cancel_jobs(["12", bad])
        with pytest.raises(ConfigError, match="not a Slurm job id"):
            slurm.queue_states([bad])
    assert fake.commands == []
    slurm.cancel_jobs(["12", "13_4"])
    assert fake.commands == [["scancel", "--", "12", "13_4"]]


# ----------------------------------------------------------------------- 8. junk keys in a store

OLD, NEW = "20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb"


@pytest.fixture
def junk_store(tmp_path: Path, make_cfg: MakeCfg) -> DictConfig:
    """Two runs (NEW is latest, OLD has a checkpoint) and junk folders others left in the bucket:
    `runs/%2e%2e/x.json` and a `%2e%2e` folder in OLD's models and report."""
    cfg = make_cfg(tmp_path / "data", "store.keep_checkpoints=1")
    root = LocalStore(str(cfg.store.root))
    for run_id in (OLD, NEW):
        root.write_json(f"runs/{run_id}/manifest.json", {"run_id": run_id, "config": {}})
        root.write_text(f"runs/{run_id}/report/index.html", "<p>report</p>")
    root.write_bytes(f"runs/{OLD}/models/single/last.pt", b"weights")
    root.write_json("latest.json", {"run_id": NEW})
    junk = Path(str(cfg.store.root))
    for folder in ("runs/%2e%2e", f"runs/{OLD}/models/%2e%2e", f"runs/{NEW}/report/%2e%2e"):
        (junk / folder).mkdir(parents=True)
        (junk / folder / ("last.pt" if "models" in folder else "x.json")).write_text("{}")
    return cfg


def test_junk_run_folders_do_not_stop_runs_list_or_retention(
    junk_store: DictConfig, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.run.history import prune_checkpoints

    cfg = junk_store
    with caplog.at_level(logging.WARNING):
        assert runs_main(["list", f"store.root={cfg.store.root}"]) == 0
    listed = capsys.readouterr().out
    assert OLD in listed and NEW in listed and "%2e%2e" not in listed
    assert "runs/%2e%2e" in caplog.text
    root = LocalStore(str(cfg.store.root))
    assert prune_checkpoints(root, 1) == [f"runs/{OLD}/models/single/last.pt"]
    assert (Path(str(cfg.store.root)) / f"runs/{OLD}/models/%2e%2e/last.pt").exists()


def test_pull_never_writes_outside_its_folder(
    junk_store: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `report/../../…` key is legal on AWS S3; SeaweedFS refuses to store one (InvalidRequest),
    so the run's listing is patched to return it; the `%2e%2e` folder is real."""
    from pipeline.commands.pull import main as pull_main

    cfg = junk_store
    to = tmp_path / "deep" / "pulled"
    listing = LocalStore.sizes

    def with_dotdot(self: LocalStore, prefix: str = "") -> dict[str, int]:
        found = listing(self, prefix)
        if self.uri.endswith(NEW):
            found["report/../../../escaped/evil.html"] = 1  # tmp_path/escaped
        return found

    monkeypatch.setattr(LocalStore, "sizes", with_dotdot)
    code = pull_main(["--run", NEW, "--to", str(to), "--what", "report",
                      f"store.root={cfg.store.root}"])  # fmt: skip
    assert code == 0
    assert (to / "report" / "index.html").read_text() == "<p>report</p>"
    assert not (to / "report" / "%2e%2e").exists()
    assert not (tmp_path / "escaped").exists()


# ------------------------------------------------------------------ 9. HTML from stored data

SCRIPT = "<script>alert(1)</script>"


@pytest.mark.slow
def test_the_run_report_escapes_index_split_values_and_candidate_names(
    formula_run: tuple[DictConfig, dict[str, str]], tmp_path: Path
) -> None:
    """`python -m pipeline.report RUN_ID` on a run whose index.parquet has a split value and
    whose vote.json a candidate name that are HTML (a copy of the run: the fixture is shared)."""
    from pipeline.commands.report import main as report_main

    cfg, _ = formula_run
    store = tmp_path / "store"
    shutil.copytree(str(cfg.store.root), store)
    run = LocalStore(str(store)).child(f"runs/{cfg.run_id}")
    index = pd.read_parquet(io.BytesIO(run.read_bytes("index.parquet")))
    index.loc[index["split"] == "eval", "split"] = SCRIPT
    sink = io.BytesIO()
    index.to_parquet(sink, index=False)
    run.write_bytes("index.parquet", sink.getvalue())
    vote = run.read_json("vote.json")
    vote["candidates"][0]["name"] = f"evil{SCRIPT}$x$"  # `$…$` would be mathtext in a plot
    run.write_json("vote.json", vote)
    assert report_main([cfg.run_id, f"store.root={store}"]) == 0
    page = run.read_text("report/index.html")
    assert "<script" not in page.lower()
    assert html.escape(SCRIPT) in page  # shown, as text


# ------------------------------------------------- 10. a stored config is data, not OmegaConf

SECRET_REF = "${oc.env:AWS_SECRET_ACCESS_KEY}"


@pytest.fixture
def canary(monkeypatch: pytest.MonkeyPatch) -> str:
    value = f"awsSecret{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", value)
    return value


def test_stored_configs_are_read_literally(canary: str) -> None:
    from pipeline.core.stored_config import stored_config  # new in issue 26

    values = [SECRET_REF, "a\\${x}", "\\\\${y}", "plain \\ text", "${", "x${a.b}y${c}", "$5"]
    data = {"model": {"arch": SECRET_REF, "values": values, "n": 3, "f": 0.5, "none": None}}
    cfg = stored_config(data, "runs/x/manifest.json")
    assert cfg.model.arch == SECRET_REF and list(cfg.model["values"]) == values
    assert canary not in str(OmegaConf.to_container(cfg, resolve=True))
    with pytest.raises(ConfigError, match=r"runs/x/manifest\.json"):
        stored_config(["not", "a", "mapping"], "runs/x/manifest.json")


def test_runs_status_never_resolves_a_stored_manifest(
    canary: str,
    make_cfg: MakeCfg,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An older run's manifest (no `models` list): `runs status` reads the suite from its
    config, whose model entry is an interpolation of the secret."""
    cfg = make_cfg(tmp_path / "data")
    config = {"suite": {"models": {"single": SECRET_REF}}, "model": {"arch": SECRET_REF}}
    root = LocalStore(str(cfg.store.root))
    root.write_json("runs/r1/manifest.json", {"run_id": "r1", "config": config})
    with caplog.at_level(logging.DEBUG):
        code = runs_main(["status", "r1", f"store.root={cfg.store.root}"])
    printed = capsys.readouterr()
    assert code == 1 and SECRET_REF in printed.err  # the value, as stored
    assert canary not in printed.out + printed.err + caplog.text


@pytest.mark.slow
def test_infer_never_resolves_the_runs_manifest_nor_instantiates_targets(
    formula_run: tuple[DictConfig, dict[str, str]],
    canary: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """infer on a run whose manifest names the secret as its model's arch, and a Hydra
    `_target_` that would create a file if anything instantiated it."""
    cfg, renamed = formula_run
    store = tmp_path / "store"
    shutil.copytree(str(cfg.store.root), store)
    run = LocalStore(str(store)).child(f"runs/{cfg.run_id}")
    manifest = run.read_json("manifest.json")
    marker = tmp_path / "instantiated"
    manifest["config"]["model"]["arch"] = SECRET_REF
    manifest["config"]["model"]["_target_"] = "pathlib.Path.touch"
    manifest["config"]["model"]["_args_"] = [str(marker)]
    for spec in manifest["config"]["suite"]["models"].values():
        if isinstance(spec, dict):
            spec.pop("arch", None)
    run.write_json("manifest.json", manifest)
    photos = tmp_path / "new"
    photos.mkdir()
    name = next(iter(renamed))
    shutil.copy(Path(cfg.data.root) / "eval" / "images" / name, photos / "photo.jpg")
    args = [f"infer.input={photos}", f"infer.output={tmp_path / 'out'}", f"store.root={store}"]
    with caplog.at_level(logging.DEBUG):
        try:
            code: object = infer_main(args)
        except Exception as e:  # the message must not carry it either
            code = e
    printed = capsys.readouterr()
    assert code != 0 and f"model.arch='{SECRET_REF}'" in printed.err  # the value, as stored
    assert canary not in printed.out + printed.err + caplog.text + str(code)
    assert not marker.exists()


# --------------------------------------------------------------------------- what still holds


def test_no_credential_from_the_environment_in_show_config_dry_run_or_show_jobs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the launcher prints for people to read or pipe to kubectl names the Secrets that hold
    the credentials, never their values."""
    from pipeline.commands.launch import main as launch_main

    secrets = [f"{name}{uuid.uuid4().hex}" for name in ("awsSecret", "awsToken", "wandb")]
    for name, value in zip(
        ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "WANDB_API_KEY"), secrets, strict=True
    ):
        monkeypatch.setenv(name, value)
    roots = ["store.root=s3://mask-runs/test", "data.root=s3://datasets/mask", "suite=single"]
    assert launch_main(["--show-config", *roots]) == 0
    assert launch_main(["--cluster", "k8s", "--dry-run", *roots]) == 0
    run_id = "20261127T000000Z-abc123"
    assert launch_main(["--cluster", "k8s", "--show-jobs", "--resume", run_id, *roots]) == 0
    printed = capsys.readouterr()
    assert "kind: Job" in printed.out
    for value in secrets:
        assert value not in printed.out + printed.err


def test_a_jobs_own_log_is_read_outside_slurm_folder_but_no_other_file_is(tmp_path: Path) -> None:
    """`runs status` run with another slurm.folder than the launch still shows the jobs' logs:
    a regular file named as submitit names that job's log is read wherever it lies; a link so
    named, another job's name, or any other file outside slurm.folder is not."""
    from pipeline.orchestration.status import readable_log

    elsewhere = tmp_path / "launch-folder" / "r1"
    elsewhere.mkdir(parents=True)
    own = elsewhere / "274_0_log.err"
    own.write_text("log\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("secret\n")
    link = elsewhere / "275_0_log.err"
    link.symlink_to(secret)
    folder = (tmp_path / "other-folder").resolve()
    assert readable_log(str(own), folder, "274") == str(own)
    assert readable_log(str(own), folder, "274_0") == str(own)
    assert readable_log(str(own), None, "274") == str(own)
    assert readable_log(str(own), folder, "27") is None  # another job's log
    assert readable_log(str(link), folder, "275") is None  # a link, never followed
    assert readable_log(str(secret), folder, "274") is None
    assert readable_log("/etc/hostname", folder, "274") is None
    assert readable_log(str(secret), tmp_path.resolve(), "274") == str(secret)  # under the folder
