"""python -m pipeline.ingest LABELS.csv DEST [--append] [--eval EVAL.csv] [--strict]

Bring your own labelled photos into the competition layout that `data.root` reads, in a local
folder or an S3 prefix (DEST: a folder or s3://bucket/prefix; the S3 settings are the usual
AWS_* variables).

LABELS.csv (a path or s3:// URI) has the header path,person,gender,age,mask (race optional)
and one row per photo:
    path     the photo: relative to the CSV's folder (to its prefix on S3), absolute, or s3://…
    person   any id of the person; 6 digits (000123) are kept as the layout's id, any other
             id is given the next free 6-digit one (train/ingest_ids.csv maps them)
    gender   male or female
    age      a whole number of years (1..120)
    mask     wear, incorrect or not_worn (or a photo name of the layout: mask1..mask5,
             incorrect_mask, normal)
    race     optional (letters; default --race)
A person has up to 5 wear photos (mask1..mask5, in the CSV's order), 1 incorrect and 1 not_worn:
more is an error, fewer a warning (an error with --strict). One person's rows must agree on
gender and age. Every photo must be a JPEG or PNG (told by its first bytes) that decodes.
Every problem is reported, one line each with the CSV line, before anything is written; photos
are copied byte for byte, and train/train.csv is written last, so a layout is never half-made.

DEST gets the competition layout: train/train.csv (id,gender,race,age,path),
train/images/<id>_<gender>_<race>_<age>/{mask1..mask5,incorrect_mask,normal}.<jpg|jpeg|png>,
train/ingest_ids.csv (person,id,folder), eval/info.csv and eval/images/.
EVAL.csv (optional, a `path` column): unlabelled photos for eval/ (named by content); without
it a new layout gets an eval/info.csv that lists none (runs then make an empty submission).
--append adds new people to the layout already at DEST (an id or person already there is an
error); eval/ is left alone unless --eval is given. Then train: python -m pipeline.launch
data.root=DEST. Exit status: 0 done, 1 problems (nothing written), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.core.logs import setup_logging
from pipeline.domain.ingest_plan import DEFAULT_RACE

USAGE = (
    "python -m pipeline.ingest LABELS.csv DEST [--append] [--eval EVAL.csv] [--strict] "
    "[--race RACE] [--workers N]"
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.ingest",
        usage=USAGE,
        description=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("labels", metavar="LABELS.csv", help="the labelled photos (path or s3:// URI)")
    p.add_argument("dest", metavar="DEST", help="the layout's folder or s3://bucket/prefix")
    p.add_argument("--append", action="store_true", help="add new people to the layout at DEST")
    p.add_argument("--eval", metavar="EVAL.csv", help="unlabelled photos (a `path` column)")
    p.add_argument("--strict", action="store_true",
                   help="a person without all 7 photos is an error, not a warning")  # fmt: skip
    p.add_argument("--race", default=DEFAULT_RACE,
                   help=f"race in folder names when the CSV has none ({DEFAULT_RACE})")  # fmt: skip
    p.add_argument("--workers", type=int, default=8, help="photos read at once (default 8)")
    return p


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What a user wants to read after an ingest."""
    verb = "appended" if summary["appended"] else "ingested"
    lines = [f"warning: {w}" for w in summary["warnings"]]
    lines.append(
        f"{verb} {summary['people']} people ({summary['photos']} photos, "
        f"{summary['eval_photos']} eval photos) into {summary['destination']}"
    )
    if summary["new_ids"]:
        lines.append(f"  {summary['new_ids']} people got a new 6-digit id (train/ingest_ids.csv)")
    lines.append(f"  train on it: python -m pipeline.launch data.root={summary['destination']}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.ingest LABELS.csv DEST [options]`; returns the exit status."""
    args = parser().parse_args(argv)
    setup_logging()
    # Imported here: the photo checks load torch, which `--help` need not wait for.
    from pipeline.stages.ingest import ingest

    try:
        summary = ingest(
            args.labels,
            args.dest,
            append=args.append,
            eval_csv=args.eval,
            strict=args.strict,
            race=args.race,
            workers=args.workers,
        )
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(summary)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
