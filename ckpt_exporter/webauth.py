"""Basic auth for the exporter's HTTP server, against the web config's bcrypt hashes.

bcrypt is slow on purpose (~100-300 ms at cost 10-12). Three rules keep that cost from being turned
against the scrapes it protects:
- only successes are remembered (an HMAC of user, hash and password under a per-process key, so the
  cache never holds a password): Prometheus' credentials are checked once, and unique bad ones
  cannot push them out of the cache;
- a client has at most one check running; more from it while it runs are refused at once, so one
  address flooding bad passwords holds one core, not every thread or the connection limit;
- at most CONCURRENT_CHECKS run at once (bcrypt releases the GIL), and a check waits only for those.
An unknown user is checked against a hash of the configured cost, so that it takes as long as a wrong
password and user names cannot be found by timing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable

import bcrypt

AUTH_CACHE_SIZE = 256
CONCURRENT_CHECKS = 2


def dummy_hash(hashes: list[str]) -> bytes:
    """A bcrypt hash, of a random password, at the highest cost among `hashes` (their `$2b$NN$`)."""
    cost = max((int(hashed.split("$")[2]) for hashed in hashes), default=12)
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))


class BasicAuth:
    """`check(authorization, client)`: whether the `Authorization` header names a user and password."""

    def __init__(
        self,
        users: dict[str, str],
        cache_size: int = AUTH_CACHE_SIZE,
        checkpw: Callable[[bytes, bytes], bool] = bcrypt.checkpw,
        concurrent_checks: int = CONCURRENT_CHECKS,
    ) -> None:
        self._checkpw = checkpw
        self._users = {user: hashed.encode() for user, hashed in users.items()}
        self._dummy = dummy_hash(list(users.values()))
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self._cache_key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._checking: set[str] = set()  # clients with a check running
        self._checks = threading.BoundedSemaphore(concurrent_checks)

    def check(self, authorization: str | None, client: str = "") -> bool:
        credentials = parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self._users.get(user)
        digest = hmac.new(
            self._cache_key, b"\0".join((user.encode(), hashed or b"", password)), hashlib.sha256
        ).digest()
        with self._lock:
            if digest in self._verified:
                self._verified.move_to_end(digest)
                return True
            if client in self._checking:
                return False  # this client is already waiting for bcrypt: no second core for it
            self._checking.add(client)
        try:
            with self._checks:
                matches = self._verify(password, hashed if hashed is not None else self._dummy)
        finally:
            with self._lock:
                self._checking.discard(client)
        if hashed is None or not matches:
            return False
        with self._lock:
            self._verified[digest] = None
            while len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        return True

    def _verify(self, password: bytes, hashed: bytes) -> bool:
        try:
            return self._checkpw(password, hashed)
        except ValueError:
            return False


def parse_basic(authorization: str | None) -> tuple[str, bytes] | None:
    """(user, password) from `Basic base64(user:password)`; None for anything else."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None
