"""The store's holdout rule: the salt that decides, once and for all, which people are held out.

`<store.root>/holdout.json` holds a random salt, written by the first prepare that needs it and
never changed; every run of the store draws its holdout with it (pipeline.domain.split
`holdout_by_person`), so a person's side is the same every night. Each run records the rule it
used (`rule_id`, a hash of the salt, and the fraction) in its prepare marker; the publish gate
compares a champion only when its holdout contains today's (same salt, a fraction at least as
large): otherwise it may have trained on today's holdout people.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime
from typing import Any, TypedDict

from pipeline.core.errors import StoreError
from pipeline.storage.run_layout import HOLDOUT_RULE_KEY
from pipeline.storage.store import Store


class HoldoutRule(TypedDict):
    """What a run records of the holdout it used (its prepare marker's `holdout`)."""

    #: sha256 of the store's salt, first 16 hex digits (the salt itself stays in holdout.json)
    rule_id: str
    fraction: float
    people: int
    photos: int


def new_salt() -> str:
    """A fresh random salt (128 bits) for a store that has none."""
    return secrets.token_hex(16)


def store_salt(root: Store) -> str:
    """The store's holdout salt, made (random, 128 bits) and written on first use. StoreError
    naming the file when it holds anything but a salt."""
    if not root.exists(HOLDOUT_RULE_KEY):
        root.write_json(
            HOLDOUT_RULE_KEY,
            {
                "salt": new_salt(),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "note": "decides which people every run holds out; changing it moves them all",
            },
        )
    # read back: of two first runs racing, both use the salt that stayed
    record: Any = root.read_json(HOLDOUT_RULE_KEY)
    salt = record.get("salt") if isinstance(record, dict) else None
    if not isinstance(salt, str) or not re.fullmatch(r"[0-9a-f]{16,128}", salt):
        raise StoreError(
            f"{root.uri_of(HOLDOUT_RULE_KEY)} does not hold a salt (16-128 hex digits under "
            f"'salt'): restore it from a backup; deleting it moves every person's side"
        )
    return salt


def rule_id(salt: str) -> str:
    """The id runs record for a salt."""
    return hashlib.sha256(salt.encode()).hexdigest()[:16]


def contains(champion: dict[str, Any] | None, today: HoldoutRule) -> str | None:
    """None when the champion's holdout (its prepare marker's `holdout`) contains today's people,
    so it never trained on them; otherwise why it may have."""
    if not champion or not champion.get("rule_id"):
        return "it was trained before the holdout rule, so it may have trained on these people"
    if champion["rule_id"] != today["rule_id"]:
        return "its holdout was drawn with another salt, so it may have trained on these people"
    if float(champion.get("fraction", 0.0)) < today["fraction"]:
        return (
            f"its holdout was smaller (data.holdout_fraction={champion.get('fraction')} < "
            f"{today['fraction']}), so it trained on some of these people"
        )
    return None
