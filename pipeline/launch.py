"""`python -m pipeline.launch`: run a suite.

The command lives in pipeline.commands.launch; this module keeps the documented name."""

from pipeline.commands.launch import main

if __name__ == "__main__":
    raise SystemExit(main())
