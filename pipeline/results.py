"""`python -m pipeline.results`: the results table of a finished run.

The command lives in pipeline.commands.results; this module keeps the documented name."""

from pipeline.commands.results import main

if __name__ == "__main__":
    raise SystemExit(main())
