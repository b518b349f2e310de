"""`python -m pipeline.runs`: Look at and manage runs (the command is pipeline.commands.runs)."""

from pipeline.commands.runs import main

if __name__ == "__main__":
    raise SystemExit(main())
