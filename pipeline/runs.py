"""`python -m pipeline.runs`: look at and manage runs.

The command lives in pipeline.commands.runs; this module keeps the documented name."""

from pipeline.commands.runs import main

if __name__ == "__main__":
    raise SystemExit(main())
