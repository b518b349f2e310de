"""`python -m pipeline.synth`: generate a dataset in the competition's layout.

The command lives in pipeline.tools.synth; this module keeps the documented name."""

from pipeline.tools.synth import main

if __name__ == "__main__":
    raise SystemExit(main())
