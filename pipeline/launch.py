"""`python -m pipeline.launch`: Run a suite (the command is pipeline.commands.launch)."""

from pipeline.commands.launch import main

if __name__ == "__main__":
    raise SystemExit(main())
