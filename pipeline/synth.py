"""`python -m pipeline.synth`: Generate a dataset in the competition's layout (the command is
pipeline.domain.synth)."""

from pipeline.domain.synth import main

if __name__ == "__main__":
    raise SystemExit(main())
