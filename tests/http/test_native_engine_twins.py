"""mu_nx.c's decisions against their Python twins (worker/http/native_engine.py): which request
heads C serves (and their spans), which response heads it relays (and the facts it takes from
them), and the client head it writes. Generated heads from a seeded mutator, bounded."""

from __future__ import annotations

import random

import pytest

from monolake.worker.http import native_engine as ne
from tests.fuzz.nx_target import c_request, c_response, lib, py_response

pytestmark = pytest.mark.skipif(
    lib is None or not hasattr(lib, "mu_nx_parse_request"), reason="no io_uring extension"
)

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /k/ok?q=1 HTTP/1.1\r\nHost: t.example:8080\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n",
    b"HEAD /a/b HTTP/1.1\r\nhost: A.b\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\nX:  v  \r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcd",  # "d" is the next request's
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nab",  # an upload: 1 byte to come
    b"PUT /u HTTP/1.1\r\nHost: a\r\nContent-Length: 50331648\r\n\r\n",  # all of it to come
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # pipelined
]
RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 503 Busy\r\nConnection: close\r\nTE: x\r\nUPPER: V \r\nContent-Length: 2\r\n\r\nno",
]
ALPHABET = b" \t\r\n:/?%#.-AaZz09\x00\x7f\x80;,=@HTTP/1.0GETHEADPOSTHostContent-LengthTransfer-Encodingchunkedclosekeep-alive"


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            del b[min(i, len(b) - 1)]
        elif op == 1:
            b[i:i] = bytes([rng.choice(ALPHABET)])
        elif op == 2:
            words = [
                b"Host: x\r\n",
                b"Content-Length: 3\r\n",
                b"Connection: close\r\n",
                b"\r\n",
                b"X: \x80\r\n",
            ]
            b[i:i] = rng.choice(words)
        elif b:
            j = min(i, len(b) - 1)
            b[j] = rng.choice(ALPHABET)
    return bytes(b)


@pytest.mark.parametrize("data", REQUESTS)
def test_request_examples(data: bytes) -> None:
    assert isinstance(ne.parse_request(data), ne.ParsedRequest)
    assert c_request(data) == ne.parse_request(data)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1234567890123456\r\n\r\nab",  # 16 digits
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
        b"OPTIONS / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET /%41 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a/../b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n X: folded\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: \x80\r\n\r\n",
    ],
)
def test_request_declined(data: bytes) -> None:
    assert isinstance(ne.parse_request(data), str)
    assert c_request(data) == ne.parse_request(data)


def test_request_upload_spans() -> None:
    """An upload that spans reads: what is here of its body, what is still to come."""
    head = b"PUT /u HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"
    for have in range(12):
        data = head + b"x" * have
        want = ne.parse_request(data)
        assert isinstance(want, ne.ParsedRequest)
        assert (want.total, want.body_missing) == (len(head) + min(have, 10), max(0, 10 - have))
        assert c_request(data) == want


def test_request_generated() -> None:
    rng = random.Random(1313)
    served = 0
    for n in range(4000):
        data = mutate(rng, REQUESTS[n % len(REQUESTS)])
        want = ne.parse_request(data)
        assert c_request(data) == want, data
        served += isinstance(want, ne.ParsedRequest)
    assert 100 < served < 3900  # both sides of the decision were exercised


@pytest.mark.parametrize("data", RESPONSES)
@pytest.mark.parametrize("head_only", [False, True])
def test_response_examples(data: bytes, head_only: bool) -> None:
    assert c_response(data, head_only) == py_response(data, head_only)


def test_response_client_head() -> None:
    data = RESPONSES[3]
    r = py_response(data, False)
    assert r[1] == b"HTTP/1.1 503 Busy\r\nupper: V\r\ncontent-length: 2\r\n\r\n"
    assert r[0].keep_alive is False


def test_response_generated() -> None:
    rng = random.Random(1314)
    relayed = 0
    for n in range(4000):
        data = mutate(rng, RESPONSES[n % len(RESPONSES)])
        head_only = n % 7 == 0
        want = py_response(data, head_only)
        assert c_response(data, head_only) == want, data
        relayed += isinstance(want, tuple)
    assert 100 < relayed < 3900
