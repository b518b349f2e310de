"""The suite's Jobs on every Kubernetes release it supports (1.28 to the current one).

What is faked: the API server and its Job controller (tests/fake_apiserver.py; no API server can
run here). Each release's defaulting, field dropping and retry rules for the fields the suite
sets are written down, with their sources, in tests/k8s_versions.py. What is real: the Jobs as
the suite renders them, the launcher's driver and the official `kubernetes` client over HTTPS.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes import client

from pipeline.core.config import load_config, model_specs
from pipeline.orchestration.k8s import launch_k8s, render_jobs
from tests.fake_apiserver import FakeApiServer
from tests.k8s_versions import GATES, MAX_INT32, admit_job
from tests.kubelet import PodRun

RUN_ID = "20261206T020000Z-vers01"
#: The model of the seed suite (index 2) whose every pod fails, e.g. a bug in its architecture.
BROKEN_INDEX = 2


def config(*overrides: str) -> Any:
    cfg = load_config(["data.root=s3://datasets/mask", "store.root=s3://mask-runs/test",
                       "k8s.poll_seconds=0", *overrides])  # fmt: skip
    cfg.run_id = RUN_ID
    return cfg


@pytest.mark.parametrize("version", sorted(GATES))
def test_every_rendered_job_is_accepted_and_keeps_what_the_release_supports(version: str) -> None:
    """Every field the suite sets is valid on 1.28 and later (podFailurePolicy: beta, on from
    1.26; completionMode Indexed: GA 1.24); the per-index fields are kept from 1.29 on only."""
    for suite in ("single", "seed"):
        for job in render_jobs(config(f"suite={suite}")):
            kubernetes_validate.validate(job, f"{version}.0", strict=True)
            stored = admit_job(job, version)  # raises for a Job the release would refuse
            spec = stored["spec"]
            assert spec["podFailurePolicy"] == job["spec"]["podFailurePolicy"]
            assert spec["backoffLimit"] == job["spec"]["backoffLimit"]  # explicit on every Job
            if spec["completionMode"] == "Indexed":
                kept = GATES[version]["JobBackoffLimitPerIndex"]
                assert ("backoffLimitPerIndex" in spec) == kept
                assert ("maxFailedIndexes" in spec) == kept


def test_on_1_28_an_unset_backoff_limit_beside_the_per_index_one_is_unbounded() -> None:
    """The rule the fix is for: defaulting (defaults.go) sees backoffLimitPerIndex and sets
    backoffLimit to MaxInt32, then PrepareForCreate (gate off) drops backoffLimitPerIndex."""
    train = render_jobs(config())[1]
    del train["spec"]["backoffLimit"]
    stored = admit_job(train, "1.28")["spec"]
    assert stored["backoffLimit"] == MAX_INT32 and "backoffLimitPerIndex" not in stored
    assert admit_job(train, "1.29")["spec"]["backoffLimitPerIndex"] == 2


def broken_model(job: dict[str, Any], index: int | None) -> PodRun:
    """The pods of a cluster where one model (index BROKEN_INDEX of the train Job) always fails."""
    failing = job["metadata"]["name"].endswith("-train") and index == BROKEN_INDEX
    return PodRun(job["metadata"]["name"], 1 if failing else 0, "")


def broken_pods(server: FakeApiServer) -> int:
    return sum(1 for name, index, _ in server.pods
               if name.endswith("-train") and index == BROKEN_INDEX)  # fmt: skip


@pytest.mark.parametrize("version", sorted(GATES))
def test_a_model_that_always_fails_gets_its_retries_and_no_more_on_every_release(
    tmp_path: Path, version: str, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """One model of the seed suite fails in every pod. The launcher asks the API server (a
    dry-run create) whether it keeps backoffLimitPerIndex: from 1.29 on, the model's index gets
    backoff_limit_per_index + 1 pods; on 1.28 (dropped) the Job gets backoff_limit_per_index
    failed pods in all. The code as it was retried the model on 1.28 until the Job's deadline
    (here: the fake's `max_pods`, DeadlineExceeded)."""
    cfg = config("suite=seed")
    per_index = int(cfg.k8s.backoff_limit_per_index)
    with FakeApiServer(tmp_path / "api", broken_model, version=version, max_pods=200) as server:
        api = client.BatchV1Api(server.api_client())
        assert client.VersionApi(api.api_client).get_code().minor == version.split(".")[1]
        with caplog.at_level(logging.WARNING, logger="pipeline.orchestration.k8s"):
            assert launch_k8s(cfg, api=api, sleep=lambda s: server.threads[-1].join(1)) == 1
    err = capsys.readouterr().err
    assert "DeadlineExceeded" not in err, f"{broken_pods(server)} pods of the broken model"
    assert broken_pods(server) == per_index + 1
    assert server.dry_runs == [f"masksuite-{RUN_ID.lower()}-train"]
    broken = list(model_specs(cfg))[BROKEN_INDEX]
    if GATES[version]["JobBackoffLimitPerIndex"]:
        assert f"train failed at index {BROKEN_INDEX} (model {broken!r})" in err
        assert "drops backoffLimitPerIndex" not in caplog.text
    else:
        # the Job names no failed index there: the launcher reads it from the failed pods
        assert f"train failed at index {BROKEN_INDEX} (model {broken!r})" in err
        assert "BackoffLimitExceeded" in err
        assert "drops backoffLimitPerIndex (Kubernetes older than 1.29" in caplog.text


def test_the_train_job_applied_as_rendered_on_1_28_is_bounded_too(tmp_path: Path) -> None:
    """`--show-jobs | kubectl apply -f -` (no launcher to ask the server): the rendered Job's own
    backoffLimit bounds the broken model's pods by every failure the per-index limits allow."""
    cfg = config("suite=seed")
    count, per_index = len(model_specs(cfg)), int(cfg.k8s.backoff_limit_per_index)
    with FakeApiServer(tmp_path / "api", broken_model, version="1.28", max_pods=200) as server:
        api = client.BatchV1Api(server.api_client())
        api.create_namespaced_job("masksuite", render_jobs(cfg)[1])
        server.threads[-1].join(timeout=60)
        status = api.read_namespaced_job(f"masksuite-{RUN_ID.lower()}-train", "masksuite").status
    assert status.conditions[0].reason == "BackoffLimitExceeded"
    assert broken_pods(server) == count * (per_index + 1) + 1
