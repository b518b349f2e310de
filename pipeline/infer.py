"""`python -m pipeline.infer`: Classify new photos with a finished run (the command is
pipeline.commands.infer)."""

from pipeline.commands.infer import main

if __name__ == "__main__":
    raise SystemExit(main())
