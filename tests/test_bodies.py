"""ckpt_exporter.bodies: a response body decoded within its cap, whatever the encoding layers."""

from __future__ import annotations

import gzip
import json
import zlib

import httpx
import pytest

from ckpt_exporter.api import ApiClient
from ckpt_exporter.bodies import MAX_JSON_VALUES, BadEncoding, BoundedBody, TooLarge, json_values_at_most
from ckpt_exporter.models import ApiError
from tests.hostile_api import gzip_bomb

CAP = 1 << 20
DOCUMENT = b'{"object": "list", "data": [], "has_more": false}' * 100


def read(encoding: str, data: bytes, chunk: int = 7, cap: int = CAP) -> bytes:
    body = BoundedBody(200, encoding, cap)
    for start in range(0, len(data), chunk):
        body.feed(data[start : start + chunk])
    return body.body()


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("", DOCUMENT),
        ("identity", DOCUMENT),
        ("gzip", gzip.compress(DOCUMENT)),
        ("x-gzip", gzip.compress(DOCUMENT)),
        ("GZip", gzip.compress(DOCUMENT)),
        ("deflate", zlib.compress(DOCUMENT)),
        ("deflate", zlib.compress(DOCUMENT)[2:-4]),  # raw deflate, as some servers send it
        ("gzip, identity", gzip.compress(DOCUMENT)),
    ],
)
def test_one_layer_of_gzip_or_deflate_decodes_exactly(encoding: str, data: bytes) -> None:
    assert read(encoding, data) == DOCUMENT


@pytest.mark.parametrize("encoding", ["gzip, gzip", "deflate, gzip", "br", "zstd", "compress"])
def test_stacked_or_unasked_encodings_are_refused_before_decoding(encoding: str) -> None:
    with pytest.raises(BadEncoding) as refused:
        BoundedBody(200, encoding, CAP)
    assert str(refused.value) == f"Content-Encoding {encoding!r}: only one of gzip, deflate is read"


def test_a_gzip_bomb_stops_at_the_cap_without_inflating_the_rest() -> None:
    bomb = gzip_bomb(1 << 30, layers=1)  # 1 GiB of zeros in about 1 MB
    body = BoundedBody(200, "gzip", CAP)
    with pytest.raises(TooLarge) as over:
        for start in range(0, len(bomb), 65536):
            body.feed(bomb[start : start + 65536])
    assert body.size == CAP + 1  # never a byte more decoded than the cap allows, plus one
    assert str(over.value) == f"the response is larger than {CAP} bytes (at least {CAP + 1})"


def test_a_body_that_does_not_decode_is_a_bad_encoding() -> None:
    with pytest.raises(BadEncoding) as bad:
        read("gzip", b"not gzip at all")
    assert str(bad.value).startswith("the gzip body does not decode (")


def test_an_identity_body_over_the_cap_is_too_large() -> None:
    with pytest.raises(TooLarge):
        read("", b"x" * (CAP + 1), chunk=65536)


@pytest.mark.parametrize(
    ("document", "values"),
    [
        # the object, data's list, the item, its id, metrics, x's list, 1, 2, None, "s", has_more
        ({"data": [{"id": "a,b:c[", "metrics": {"x": [1, 2]}}, None, "s"], "has_more": False}, 11),
        ([], 1),
        ([[], {}, "", 0], 5),
        ({"a": {"b": {"c": {}}}}, 4),
    ],
)
def test_the_json_values_bound_is_never_below_the_values_held(document: object, values: int) -> None:
    assert json_values_at_most(json.dumps(document).encode()) >= values


async def test_a_body_of_too_many_json_values_is_refused_before_it_is_parsed() -> None:
    """`[{},{},...]` of 8 MB would take some 200 MB parsed: too_large, nothing parsed."""
    body = b"[" + b"{}," * MAX_JSON_VALUES + b"{}]"
    http = httpx.AsyncClient(
        base_url="https://api.test/v1/",
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=body)),
    )
    async with http:
        client = ApiClient(http, max_retries=0)
        with pytest.raises(ApiError) as refused:
            await client.get_json("checkpoints", "fine_tuning/jobs/ftjob-1/checkpoints", job="ftjob-1")
    assert refused.value.reason == "too_large"
    assert (
        str(refused.value)
        == f"the response holds up to {MAX_JSON_VALUES + 2} JSON values, over {MAX_JSON_VALUES}"
    )
