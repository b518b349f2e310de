"""`python -m pipeline.ingest`: bring labelled photos (a CSV) into the competition layout.

The command lives in pipeline.commands.ingest; this module keeps the documented name."""

from pipeline.commands.ingest import main

if __name__ == "__main__":
    raise SystemExit(main())
