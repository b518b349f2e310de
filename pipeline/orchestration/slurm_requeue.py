"""Requeue a Slurm job from its batch script on the host, so that a job running in a container
(pyxis/enroot, Apptainer) whose image has no Slurm client nor munge can still be requeued.

submitit's own way calls `scontrol requeue` from inside the job, which fails in such an image:
the job ends TIMEOUT, `afterok` is never met and the jobs after it are cancelled. Here:

1. Slurm sends the warning signal to the batch shell only (`--signal=B:USR2@<delay>`); the
   batch shell runs on the host, outside any container.
2. Its trap forwards the signal to the job step (srun forwards it to the task, the container
   runtime to the Python process); an admin's `scancel --signal=USR2 <job>` reaches the step
   directly.
3. The stage's handler (StageJob/InferJob.checkpoint) records "requeued" and asks for a requeue
   by writing the file named by $MASKSUITE_REQUEUE_FILE (in the job folder, which the container
   must mount anyway), then exits.
4. When the step has ended, the batch shell requeues the job with `scontrol requeue` if, and only
   if, that file exists and the job was requeued fewer than `slurm.max_requeues` times. A job
   whose stages are all done ignores the signal and writes nothing, so it is never requeued.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

#: The variable the batch script sets: the file a job writes to ask for a requeue.
REQUEUE_FILE_VAR = "MASKSUITE_REQUEUE_FILE"


def warning_signal_parameter(signal_name: str, delay_s: int) -> str:
    """sbatch's --signal value: `signal_name` to the batch shell only, `delay_s` before the
    time limit."""
    return f"B:{signal_name}@{delay_s}"


def host_requeue_lines(folder: Path, signal_name: str, max_requeues: int) -> list[str]:
    """Lines of the batch script (before submitit's `srun` line) that requeue the job from the
    host: a trap that forwards `signal_name` to the job step, and an `srun` shell function that
    runs the step in the background (bash runs a trap only between commands, never during a
    foreground one) and, once it ended, requeues the job when the step asked for it."""
    request = shlex.quote(str(folder)) + '/requeue-"${SLURM_JOB_ID}"'
    return [
        "# masksuite: requeue from this batch shell on the host, not from inside the job",
        "# (pipeline/orchestration/slurm_requeue.py): a container needs no Slurm client.",
        f"export {REQUEUE_FILE_VAR}={request}",
        f'rm -f "${REQUEUE_FILE_VAR}"',
        'masksuite_step=""',
        "masksuite_forward() {",
        f'  if [ -n "$masksuite_step" ]; then kill -{signal_name} "$masksuite_step"; fi',
        "}",
        f"trap masksuite_forward {signal_name}",
        "masksuite_requeue() {",
        f'  if [ "${{SLURM_RESTART_COUNT:-0}}" -ge {int(max_requeues)} ]; then',
        '    echo "masksuite: job $SLURM_JOB_ID not requeued: requeued $SLURM_RESTART_COUNT'
        f' time(s) already (slurm.max_requeues={int(max_requeues)})" >&2',
        "    return 1",
        "  fi",
        '  echo "masksuite: requeueing job $SLURM_JOB_ID from its batch script" >&2',
        '  command scontrol requeue "$SLURM_JOB_ID"',
        "}",
        "srun() {",
        '  command srun "$@" &',
        "  masksuite_step=$!",
        '  while kill -0 "$masksuite_step" 2>/dev/null; do wait "$masksuite_step"; done',
        '  wait "$masksuite_step"',
        "  local status=$?",
        f'  if [ -e "${REQUEUE_FILE_VAR}" ]; then masksuite_requeue; return; fi',
        "  return $status",
        "}",
    ]


def requeue_requested(reason: str) -> bool:
    """Inside a job started by a batch script of `host_requeue_lines`: ask it to requeue the job
    (write the request file) and return True; elsewhere (a job submitted otherwise) False."""
    path = os.environ.get(REQUEUE_FILE_VAR)
    if not path:
        return False
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(reason + "\n")
    partial.replace(target)
    return True
