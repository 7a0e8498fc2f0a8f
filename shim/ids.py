"""Event ids exactly as the Inngest server makes them.

`x-inngest-event-id-seed: <millis>,<base64 of 10 bytes>` is sent once per `send()` and reused on
every retry. Event i (1-based) of the request gets ULID(millis, entropy with bytes 6-9, read as a
big-endian uint32, plus i, wrapping at 2**32), as the Inngest server's own seeded-id function
does. A missing or invalid seed gives a random ULID (docs/event-api-protocol.md, "Ids").
"""

from __future__ import annotations

import base64
import binascii
import re

from ulid import ULID

_MILLIS_RE = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.ParseInt accepts
_INT64_MAX = 2**63 - 1
_ULID_MAX_MILLIS = 2**48 - 1


def parse_seed(header: str | None) -> tuple[int, bytes] | None:
    """(millis, entropy) from the header, or None when the Inngest server would ignore it."""
    if not header:
        return None
    parts = header.split(",")
    if len(parts) != 2 or not _MILLIS_RE.fullmatch(parts[0]):
        return None
    # Over 19 significant digits is past int64 (and Python's int() refuses 4300+ of them).
    if len(parts[0].lstrip("+-").lstrip("0")) > 19:
        return None
    millis = int(parts[0])
    if millis <= 0 or millis > _INT64_MAX:
        return None
    if len(parts[1]) > 24:  # 10 bytes are 16 base64 characters; don't decode a long header
        return None
    try:
        entropy = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(entropy) != 10:
        return None
    return millis, entropy


def seeded_id(seed: tuple[int, bytes], index: int) -> str | None:
    """The ULID of the `index`-th event (1-based) of a request sent with `seed`."""
    millis, entropy = seed
    if millis > _ULID_MAX_MILLIS:  # ulid.New fails: the server falls back to a random id
        return None
    counter = (int.from_bytes(entropy[6:10], "big") + index) % 2**32
    mixed = entropy[:6] + counter.to_bytes(4, "big")
    return str(ULID.from_bytes(millis.to_bytes(6, "big") + mixed))


def event_ids(header: str | None, count: int) -> list[str]:
    """One id per event of a request, in order."""
    seed = parse_seed(header)
    ids = []
    for index in range(1, count + 1):
        derived = seeded_id(seed, index) if seed else None
        ids.append(derived or str(ULID()))
    return ids
