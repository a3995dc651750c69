"""Opaque ids and redemption codes (random; no clock)."""

from __future__ import annotations

import os
import secrets

CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L
CODE_LEN = 10


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LEN))


def new_offer_id() -> str:
    return "o_" + os.urandom(8).hex()  # secrets.token_hex(8), without its two calls
