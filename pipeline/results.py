"""`python -m pipeline.results`: The results table of a finished run (the command is
pipeline.commands.results)."""

from pipeline.commands.results import main

if __name__ == "__main__":
    raise SystemExit(main())
