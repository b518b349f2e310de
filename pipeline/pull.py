"""`python -m pipeline.pull`: Copy a run's outputs to a local folder (the command is
pipeline.commands.pull)."""

from pipeline.commands.pull import main

if __name__ == "__main__":
    raise SystemExit(main())
