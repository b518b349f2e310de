"""The names of torchvision's classification models, without importing torch when it can.

Importing torchvision (and with it torch) takes seconds, and the configuration check needs only
the names, to answer `model.arch=resnet99` with the closest ones. The list depends only on the
installed torchvision, so it is kept in a small JSON file per torchvision version in the user's
cache folder (`$XDG_CACHE_HOME/masksuite`, else `~/.cache/masksuite`): the first check of a
machine imports torchvision and writes it; the next ones read it (`--show-config` in about a
second). A cache that cannot be read or written (a read-only home) only costs the import.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def cache_file() -> Path | None:
    """Where the names of the installed torchvision's models are kept; None without one."""
    try:
        installed = version("torchvision")
    except PackageNotFoundError:
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "masksuite" / f"torchvision-{installed}-classification-models.json"


def read_names(path: Path) -> list[str] | None:
    """The names a cache file holds: a JSON list of identifiers; None when it holds anything
    else or cannot be read."""
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(names, list) or not names:
        return None
    if not all(isinstance(n, str) and n.isidentifier() for n in names):
        return None
    return sorted(names)


def write_names(path: Path, names: list[str]) -> None:
    """Writes the names atomically (a temporary file renamed into place); errors are ignored."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps(names), encoding="utf-8")
        os.replace(temp, path)
    except OSError:
        return


def classification_archs() -> list[str]:
    """Names of torchvision's classification models (sorted), from the cache when it holds them
    for the installed torchvision, else by importing torchvision (and caching them)."""
    path = cache_file()
    cached = read_names(path) if path is not None else None
    if cached is not None:
        return cached
    import torchvision

    names = sorted(torchvision.models.list_models(module=torchvision.models))
    if path is not None:
        write_names(path, names)
    return names
