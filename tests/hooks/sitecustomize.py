"""A test hook, never installed: holds a training job after it saved a given epoch, so that a
test can stop it there whatever this machine's speed (tests/test_slurm.py `hold_training`).

Python imports `sitecustomize` at start-up from the first folder of sys.path that has one; the
tests put this folder first on the PYTHONPATH of the jobs they launch. With
MASKSUITE_TEST_HOLD_AFTER_EPOCH=N and MASKSUITE_TEST_HOLD_FILE=PATH set, a job's first attempt
(Slurm's SLURM_RESTART_COUNT unset or 0) saves epoch N, writes PATH and then waits until a signal
ends it (a requeue's SIGKILL, a handler that requeues and exits); later attempts run unheld.
PATH holds JSON: the process id, whether it runs in a podman container (/run/.containerenv) and
where scontrol is there (null: no Slurm client).
"""

from __future__ import annotations

import os

_EPOCH = os.environ.get("MASKSUITE_TEST_HOLD_AFTER_EPOCH")
_FILE = os.environ.get("MASKSUITE_TEST_HOLD_FILE")

if _EPOCH and _FILE and os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
    import json
    import shutil
    import time
    from pathlib import Path
    from typing import Any

    import pipeline.stages.train as _train

    _save = _train.save

    def _held_save(*args: Any, **kwargs: Any) -> None:
        _save(*args, **kwargs)
        history = args[3]
        if history[-1]["epoch"] == int(_EPOCH):
            where = {"pid": os.getpid(), "container": Path("/run/.containerenv").exists(),
                     "scontrol": shutil.which("scontrol")}  # fmt: skip
            Path(_FILE).write_text(json.dumps(where) + "\n")
            while True:  # signal handlers run between the sleeps
                time.sleep(0.5)

    _train.save = _held_save
