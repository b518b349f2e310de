"""`python -m pipeline.report`: (re)write a finished run's report.

The command lives in pipeline.commands.report; this module keeps the documented name."""

from pipeline.commands.report import main

if __name__ == "__main__":
    raise SystemExit(main())
