"""Basic auth against bcrypt hashes: what is remembered, who waits for whom, what an unknown user costs.

BasicAuth takes its bcrypt check as an argument: the tests count and hold the checks with it, so that
nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import base64
import threading

import bcrypt

from ckpt_exporter.webauth import BasicAuth, dummy_hash

PASSWORD = "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # cost 4: fast tests


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class CountingCheck:
    """bcrypt.checkpw, recording each (password, hash); `hold` makes checks of one password wait."""

    def __init__(self, hold: bytes | None = None) -> None:
        self.calls: list[tuple[bytes, bytes]] = []
        self.hold = hold
        self.holding = threading.Event()
        self.release = threading.Event()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.calls.append((password, hashed))
        if password == self.hold:
            self.holding.set()
            self.release.wait(10)
        return bcrypt.checkpw(password, hashed)


def test_a_success_is_checked_once_and_failures_every_time() -> None:
    check = CountingCheck()
    auth = BasicAuth({"prometheus": HASH}, checkpw=check)
    assert [auth.check(basic("prometheus", PASSWORD)) for _ in range(50)] == [True] * 50
    assert [auth.check(basic("prometheus", "nope")) for _ in range(3)] == [False] * 3
    assert [password for password, _ in check.calls] == [PASSWORD.encode()] + [b"nope"] * 3


def test_malformed_headers_never_reach_bcrypt() -> None:
    check = CountingCheck()
    auth = BasicAuth({"prometheus": HASH}, checkpw=check)
    for garbage in (None, "", "Bearer x", "Basic !!!", "Basic " + "bm9jb2xvbg==", "basic"):
        assert auth.check(garbage) is False
    assert check.calls == []


def test_unique_bad_credentials_do_not_push_out_the_good_ones() -> None:
    check = CountingCheck()
    auth = BasicAuth({"prometheus": HASH}, cache_size=4, checkpw=check)
    assert auth.check(basic("prometheus", PASSWORD))
    for n in range(20):
        assert not auth.check(basic("prometheus", f"guess-{n}"))
        assert not auth.check(basic(f"user-{n}", PASSWORD))
    calls = len(check.calls)
    assert auth.check(basic("prometheus", PASSWORD))
    assert len(check.calls) == calls  # still remembered: no bcrypt for Prometheus


def test_a_client_flooding_bad_passwords_holds_one_check_and_others_go_on() -> None:
    check = CountingCheck(hold=b"flood")
    auth = BasicAuth({"prometheus": HASH}, checkpw=check)
    attacker = threading.Thread(target=auth.check, args=(basic("prometheus", "flood"), "10.0.0.66"))
    attacker.start()
    try:
        assert check.holding.wait(5)
        # More from the same client while its check runs: refused at once, no bcrypt.
        assert [auth.check(basic("prometheus", "flood"), "10.0.0.66") for _ in range(10)] == [False] * 10
        assert auth.check(basic("prometheus", PASSWORD), "10.0.0.66") is False
        assert len(check.calls) == 1
        # Prometheus, from its own address, is checked meanwhile (one global lock would queue it).
        result: list[bool] = []
        scrape = threading.Thread(
            target=lambda: result.append(auth.check(basic("prometheus", PASSWORD), "10.0.0.2"))
        )
        scrape.start()
        scrape.join(5)
        assert result == [True]
    finally:
        check.release.set()
        attacker.join(5)
    assert auth.check(basic("prometheus", PASSWORD), "10.0.0.66") is True  # its check ended: its turn again


def test_an_unknown_user_is_checked_against_a_hash_of_the_configured_cost() -> None:
    check = CountingCheck()
    slower = bcrypt.hashpw(b"other", bcrypt.gensalt(5)).decode()
    auth = BasicAuth({"prometheus": HASH, "grafana": slower}, checkpw=check)
    assert auth.check(basic("nobody", PASSWORD)) is False
    assert auth.check(basic("nobody", "x")) is False
    assert [hashed[:7] for _, hashed in check.calls] == [b"$2b$05$", b"$2b$05$"]
    assert check.calls[0][1] not in (HASH.encode(), slower.encode())


def test_the_dummy_hash_has_the_highest_configured_cost() -> None:
    assert dummy_hash([HASH])[:7] == b"$2b$04$"
    assert dummy_hash([HASH, bcrypt.hashpw(b"x", bcrypt.gensalt(6)).decode()])[:7] == b"$2b$06$"
