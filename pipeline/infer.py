"""`python -m pipeline.infer`: classify new photos with a finished run.

The command lives in pipeline.commands.infer; this module keeps the documented name."""

from pipeline.commands.infer import main

if __name__ == "__main__":
    raise SystemExit(main())
