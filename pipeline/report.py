"""`python -m pipeline.report`: (Re)write a finished run's report (the command is
pipeline.commands.report)."""

from pipeline.commands.report import main

if __name__ == "__main__":
    raise SystemExit(main())
