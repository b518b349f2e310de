"""`python -m pipeline.synth`: generate a dataset in the competition's layout.

The command lives in pipeline.domain.synth; this module keeps the documented name."""

from pipeline.domain.synth import main

if __name__ == "__main__":
    raise SystemExit(main())
