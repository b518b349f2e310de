"""`python -m jobs.infer [overrides]`: classify new photos here (see pipeline.stages.infer); the
command of the Slurm and Kubernetes infer jobs."""

from pipeline.commands.infer import main

if __name__ == "__main__":
    raise SystemExit(main(["--cluster", "local", *__import__("sys").argv[1:]]))
