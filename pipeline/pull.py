"""`python -m pipeline.pull`: copy a run's outputs to a local folder.

The command lives in pipeline.commands.pull; this module keeps the documented name."""

from pipeline.commands.pull import main

if __name__ == "__main__":
    raise SystemExit(main())
