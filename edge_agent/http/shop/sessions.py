"""Device sessions of the shop page: an id and a token verifiable without a lookup.

``POST /v1/shop/session`` mints a device id ``web-`` + 26 random base32
characters and its token, ``base64url(HMAC-SHA256(key, "shop-session:" +
device))``.  The key is ``{data_dir}/session.key`` (32 random bytes, mode
0600, beside ``pseudonym.key``; back both up together).  Nothing is stored:
a token is checked by recomputing it, so sessions survive a restart, and
rotating the key (delete the file) ends every session at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

from sync.pseudonym import load_or_create_secret

PREFIX = "web-"
KEY_FILE = "session.key"


class Sessions:
    __slots__ = ("_key",)

    def __init__(self, key: bytes):
        self._key = key

    @classmethod
    def load(cls, data_dir: Path) -> "Sessions":
        return cls(load_or_create_secret(Path(data_dir) / KEY_FILE))

    def token(self, device: str) -> str:
        digest = hmac.new(self._key, b"shop-session:" + device.encode("utf-8", "surrogateescape"),
                          hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def new(self) -> tuple[str, str]:
        """A fresh ``(device, token)``."""
        device = PREFIX + base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()
        return device, self.token(device)

    def verify(self, device: str, token: str | None) -> bool:
        """True when ``token`` is ``device``'s (only ``web-`` devices have sessions)."""
        if not token or not device.startswith(PREFIX) or len(device) > 64:
            return False
        # bytes that are no UTF-8 (kept as surrogates by the header's decoding) are a wrong token
        return hmac.compare_digest(token.encode("utf-8", "surrogateescape"), self.token(device).encode())
