"""Differential fuzz targets for the native (C) HTTP/1.1 parsers in uring/mu_http.c.

Each target feeds one input, split at the same points, to the native parser and to its twin:
httptools (llhttp) driven by the very callback code the worker runs on that path (the server
connection core's (RequestReader) ``on_url`` / ``on_header`` / ``on_headers_complete``, the upstream connection's
``on_header`` / ``on_headers_complete`` with ``split_response_headers``), so both sides end in
the same ``on_request_head`` / response-head shape. The outcomes (the heads with their fields,
the body bytes, completions, and how the input ended: accepted, refused, upgraded) must agree,
except for the strictness choices that :func:`known_difference` names, each one listed in
docs/http.md ("Where native and llhttp differ").

Targets: ``request`` (the request parser), ``response`` (the response parser), ``chunked`` (the
chunked decoder, behind a fixed chunked head, on both sides of the proxy; also against itself
with chunk payloads skipped as a splice skips them: ``check_skipping``). A disagreement
raises :class:`Disagreement`; an input the native parser crashes on (under the sanitizer build)
kills the process. Driven by tests/fuzz/run.py (atheris) and replayed by
tests/fuzz/test_corpus.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

from monolake.worker.http import parser as hp
from monolake.worker.http.client import UpstreamConnection
from monolake.worker.http.connection import _NO_LIST, RequestReader, _split_absolute
from monolake.worker.http.parser import HeadLimits, ParseError, UpgradeRequested

# large enough that the limits never decide a fuzz input (they are tested at their edges in
# tests/http/test_head_limits.py); what is compared here is the grammar
MAX_HEAD = 1 << 20
MAX_URI = 1 << 20
REQUEST_LIMITS = HeadLimits(MAX_HEAD, MAX_HEAD, 256, 431)
RESPONSE_LIMITS = HeadLimits(MAX_HEAD, MAX_HEAD, 256, 502)

CHUNKED_REQUEST_HEAD = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKED_RESPONSE_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


class Disagreement(AssertionError):
    """The native parser and its twin read one input differently."""


@dataclass
class Outcome:
    """What a parser made of an input: its events, then how the input ended."""

    events: list[tuple] = field(default_factory=list)
    end: str = "ok"  # "ok" (all taken, maybe mid-message), "error", "upgrade"
    status: int = 0  # the answer for an error
    detail: str = ""
    grammar: bool = False  # the error is llhttp's own (not a ParseError of shared code)

    def body(self, data: bytes) -> None:
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)
        elif data:
            self.events.append(("body", bytes(data)))

    def done(self) -> None:
        self.events.append(("done",))


def _feed(parser: Any, data: bytes, cuts: list[int], out: Outcome) -> Outcome:
    last = 0
    try:
        for c in [*cuts, len(data)]:
            if c > last:
                parser.feed_data(data[last:c])
            last = max(last, c)
    except UpgradeRequested as exc:
        out.end, out.detail = "upgrade", repr(exc.rest)
    except ParseError as exc:
        out.end, out.status, out.detail = "error", exc.status, str(exc)
    except httptools.HttpParserError as exc:
        cause = exc.__context__
        if isinstance(cause, ParseError):  # raised by our callback code inside llhttp
            out.end, out.status, out.detail = "error", cause.status, str(cause)
        else:  # llhttp's own grammar: the protocol answers 400
            out.end, out.status, out.detail, out.grammar = "error", 400, str(exc), True
    return out


# -- requests ------------------------------------------------------------------------------


def _head_checks(method: str, target: str, version: str, host: bytes | None) -> None:
    """The refusals RequestReader.on_request_head (worker/http/connection.py) makes of every head, whichever parser
    made it (it needs a whole server runtime to call, so they are restated here): a version
    other than 1.x, a 1.1 head without Host, CONNECT, a target that is not origin-form,
    absolute http(s) or ``OPTIONS *``. llhttp refuses some of these itself (an HTTP/0.9 line it
    reads as version 0.9), native leaves them to the protocol; both end in the same answer."""
    if version[:2] != "1.":
        raise ParseError(f"unsupported HTTP version {version}", 505 if version >= "2" else 400)
    if host is None and version == "1.1":
        raise ParseError("missing Host header")
    if method == "CONNECT":
        raise ParseError("CONNECT is not supported", 405)
    low = target[:8].lower()
    if low[:7] == "http://" or low == "https://":
        _split_absolute(target)  # the protocol's own check of the authority
    elif not (target[:1] == "/" or (target == "*" and method == "OPTIONS")):
        raise ParseError("invalid request target")


class _NativeRequest:
    def __init__(self, out: Outcome) -> None:
        self.out = out

    def on_request_head(
        self,
        method: str,
        target: str,
        version: str,
        headers: list,
        host: bytes | None,
        length: int | None,
        flags: int,
    ) -> None:
        _head_checks(method, target, version, host)
        self.out.events.append(("head", method, target, version, list(headers), host, length, flags))
        if not (flags & hp.CHUNKED) and not length:
            self.out.done()  # complete with its head (see mu_http.c)

    def on_body(self, data: bytes) -> None:
        self.out.body(data)

    def on_trailers(self, fields: list) -> None:
        self.out.events.append(("trailers", list(fields)))

    def on_message_complete(self) -> None:
        self.out.done()


class _RtStub:
    """The few ServerRuntime fields the protocol's parser callbacks read."""

    max_uri = MAX_URI
    head_limits = REQUEST_LIMITS
    header_timeout = 60.0


class _TwinRequest:
    """httptools' callbacks through the server protocol's own code (not a copy of it)."""

    on_message_begin = RequestReader.on_message_begin
    on_url = RequestReader.on_url
    on_header = RequestReader.on_header
    on_headers_complete = RequestReader.on_headers_complete

    def __init__(self, out: Outcome) -> None:
        self.out = out
        self.settings = _RtStub()
        self.phase = -1  # never IDLE: no deadline bookkeeping
        self.clock = time.monotonic
        self.parser: Any = None
        self.receiving: Any = None  # on_header: a field while a body arrives is a trailer
        self._trailers: list = _NO_LIST

    def on_request_head(
        self,
        method: str,
        target: str,
        version: str,
        headers: list,
        host: bytes | None,
        length: int | None,
        flags: int,
    ) -> None:
        _head_checks(method, target, version, host)
        self.out.events.append(("head", method, target, version, list(headers), host, length, flags))
        self._head_size = 0  # as RequestReader.on_request_head: a trailer section counts anew
        self.receiving = True if flags & hp.CHUNKED or length else None

    def on_body(self, data: bytes) -> None:
        self.out.body(data)

    def on_message_complete(self) -> None:
        self.receiving = None
        if self._trailers:  # what RequestReader collected from on_header (httptools' trailers)
            self.out.events.append(("trailers", self._trailers))
        self._trailers = _NO_LIST
        self.out.done()


def run_native_request(data: bytes, cuts: list[int]) -> Outcome:
    out = Outcome()
    return _feed(
        hp.native.RequestParser(_NativeRequest(out), MAX_HEAD, MAX_URI, MAX_HEAD, 256), data, cuts, out
    )


def run_twin_request(data: bytes, cuts: list[int]) -> Outcome:
    out = Outcome()
    twin = _TwinRequest(out)
    twin.parser = hp.new_request_parser("httptools", twin, REQUEST_LIMITS, MAX_URI)
    return _feed(twin.parser, data, cuts, out)


# -- responses -----------------------------------------------------------------------------


def _response_event(
    status: int, reason: bytes | None, headers: list, keep_alive: bool, length: int | None, chunked: bool
) -> tuple:
    # a close-delimited body ends the connection, whatever Connection said (client.py does the
    # same: _UNTIL_CLOSE turns keep-alive off)
    until_close = not chunked and length is None and status not in (204, 304) and status >= 200
    return ("head", status, reason or b"", list(headers), keep_alive and not until_close, length, chunked)


class _NativeResponse:
    def __init__(self, out: Outcome) -> None:
        self.out = out

    def on_response(
        self,
        status: int,
        reason: bytes,
        headers: list,
        keep_alive: bool,
        length: int | None,
        chunked: bool,
        body: Any,
    ) -> None:
        self.out.events.append(_response_event(status, reason, headers, keep_alive, length, chunked))
        if body is not None:
            self.out.body(bytes(body))
            self.out.done()

    def on_body(self, data: bytes) -> None:
        self.out.body(data)

    def on_trailers(self, fields: list) -> None:
        self.out.events.append(("trailers", list(fields)))

    def on_message_complete(self) -> None:
        self.out.done()


class _PoolStub:
    head_limits = RESPONSE_LIMITS


class _TwinResponse:
    """httptools' callbacks through the upstream connection's own head code."""

    on_message_begin = UpstreamConnection.on_message_begin
    on_status = UpstreamConnection.on_status
    on_header = UpstreamConnection.on_header
    on_headers_complete = UpstreamConnection.on_headers_complete

    def __init__(self, out: Outcome) -> None:
        self.out = out
        self.pool = _PoolStub()
        self._finished = False
        self._via = False
        self._interim = False
        self._headers: list = []
        self._trailers: list | None = None
        self._head_size = 0
        self._reason = b""
        self._parser: Any = None

    def _response_head(
        self,
        status: int,
        reason: bytes | None,
        headers: list,
        keep_alive: bool,
        length: int | None,
        chunked: bool,
    ) -> None:
        self.out.events.append(_response_event(status, reason, headers, keep_alive, length, chunked))

    def on_body(self, data: bytes) -> None:
        self.out.body(data)

    def on_message_complete(self) -> None:
        if self._interim:  # the end of a skipped 1xx (see on_headers_complete)
            self._interim = False
            return
        if self._trailers:  # what UpstreamConnection.on_header collected (httptools' trailers)
            self.out.events.append(("trailers", self._trailers))
        self._trailers = None
        self.out.done()


def run_native_response(data: bytes, cuts: list[int]) -> Outcome:
    out = Outcome()
    return _feed(
        hp.native.ResponseParser(_NativeResponse(out), False, 0, False, MAX_HEAD, MAX_HEAD, 256),
        data,
        cuts,
        out,
    )


def run_twin_response(data: bytes, cuts: list[int]) -> Outcome:
    out = Outcome()
    twin = _TwinResponse(out)
    twin._parser = hp.new_response_parser("httptools", twin, "GET", False, RESPONSE_LIMITS)
    return _feed(twin._parser, data, cuts, out)


# -- comparing ----------------------------------------------------------------------------


def _crlf_head(data: bytes) -> bytes:
    """``data`` with the bare LFs of its first head made CRLF (the rest left alone)."""
    ends = [e + n for e, n in ((data.find(b"\n\n"), 2), (data.find(b"\n\r\n"), 3)) if e >= 0]
    cut = min(ends) if ends else len(data)
    return data[:cut].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + data[cut:]


def _crlf_all(data: bytes) -> bytes:
    """``data`` with every bare LF made CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _complete_head(data: bytes) -> bytes:
    """``data`` with its last head ended (an empty line appended)."""
    return data + b"\r\n\r\n"


def _encode_target(data: bytes) -> bytes:
    """``data`` with the non-ASCII bytes of its request lines percent-encoded."""
    lines = data.split(b"\r\n")
    out = []
    for line in lines:
        parts = line.split(b" ")
        if len(parts) == 3 and parts[2].startswith(b"HTTP/"):
            parts[1] = b"".join(b"%%%02X" % c if c >= 0x80 else bytes([c]) for c in parts[1])
        out.append(b" ".join(parts))
    return b"\r\n".join(out)


# the methods llhttp knows (it refuses any other token)
LLHTTP_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)


def _known_methods(data: bytes) -> bytes:
    """``data`` with an extension method (a token llhttp does not know) made GET."""
    lines = data.split(b"\r\n")
    for i, line in enumerate(lines):
        parts = line.split(b" ")
        if len(parts) == 3 and parts[2].startswith(b"HTTP/") and parts[0] not in LLHTTP_METHODS:
            lines[i] = b" ".join([b"GET", *parts[1:]])
    return b"\r\n".join(lines)


def _clean_reason(data: bytes) -> bytes:
    """``data`` with control characters dropped from its status lines."""
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if line.lstrip(b"\r").startswith(b"HTTP/"):
            lines[i] = bytes(c for c in line if (c >= 0x20 and c != 0x7F) or c in b"\t\r")
    return b"\n".join(lines)


def _strip_chunk_ext(data: bytes, trailers: bool = False) -> bytes:
    """``data`` with the extensions of its chunk-size lines removed (and the whitespace before
    them), or (``trailers``) its trailer fields, as far as the chunked framing after the first
    head can be followed; the extensions of the chunked messages after it too (see
    ``_next_chunked``)."""
    pos = data.find(b"\r\n\r\n")
    if pos < 0:
        return data
    pos += 4
    out = [data[:pos]]
    while True:
        nl = data.find(b"\r\n", pos)
        last = nl < 0  # an unfinished last line is rewritten as far as it goes
        line = data[pos:] if last else data[pos:nl]
        size_part, semi, _ext = line.partition(b";")
        try:
            size = int(size_part.rstrip(b" \t"), 16)
        except ValueError:
            break
        if last:
            out.append(size_part.rstrip(b" \t") if semi else line)
            pos = len(data)
            break
        out.append(size_part.rstrip(b" \t") if semi else line)
        out.append(b"\r\n")
        pos = nl + 2
        if size == 0:
            end = data.find(b"\r\n\r\n", pos - 2)
            if trailers:  # an unfinished trailer section is dropped and ended too
                pos = end + 4 if end >= 0 else len(data)
                out.append(b"\r\n")
            elif end >= 0 and (nxt := _next_chunked(data[end + 4 :])) >= 0:
                cut = end + 4 + nxt
                return b"".join(out) + data[pos:cut] + _strip_chunk_ext(data[cut:])
            break
        out.append(data[pos : pos + size + 2])
        pos += size + 2
    out.append(data[pos:])
    return b"".join(out)


def _next_chunked(rest: bytes) -> int:
    """Where the next chunked message after a chunked one starts in ``rest`` (the bytes after
    its end), skipping messages without a chunked body (bodiless, or a Content-Length body),
    or -1: so the rewrites follow the chunked framing of every message they can find."""
    pos = 0
    for _ in range(64):  # bounded: a fuzz input holds few messages
        end = rest.find(b"\r\n\r\n", pos)
        if end < 0:
            return -1
        head = rest[pos:end].lower()
        if b"chunked" in head:
            return pos
        m = re.search(rb"content-length[ \t]*:[ \t]*([0-9]{1,9})\r", head + b"\r")
        pos = end + 4 + (int(m.group(1)) if m else 0)
    return -1


_FRAMING_TRAILER = re.compile(rb"(?i)(?:content-length|transfer-encoding|connection|upgrade)[ \t]*:")


def _drop_framing_trailers(data: bytes) -> bytes:
    """``data`` without the trailer lines whose names llhttp reads as framing or connection
    fields (Content-Length, Transfer-Encoding, Connection, Upgrade), as far as the chunked
    framing after the first head can be followed, and in the chunked messages after it."""
    start = _trailer_start(data)
    if start < 0:
        return data
    end = data.find(b"\r\n\r\n", start - 2)
    section = data[start : end + 2] if end >= 0 else data[start:]
    kept = b"\r\n".join(ln for ln in section.split(b"\r\n") if not _FRAMING_TRAILER.match(ln))
    if end < 0:
        return data[:start] + kept
    rest = data[end + 4 :]
    nxt = _next_chunked(rest)
    if nxt < 0:
        return data[:start] + kept + b"\r\n" + rest
    return data[:start] + kept + b"\r\n" + rest[:nxt] + _drop_framing_trailers(rest[nxt:])


def _trailer_start(data: bytes) -> int:
    """The offset of the trailer section after the first head's chunked body, or -1."""
    pos = data.find(b"\r\n\r\n")
    if pos < 0:
        return -1
    pos += 4
    while True:
        nl = data.find(b"\r\n", pos)
        if nl < 0:
            return -1
        try:
            size = int(data[pos:nl], 16)
        except ValueError:
            return -1
        pos = nl + 2
        if size == 0:
            return pos
        pos += size + 2


def _drop_empty_lines(data: bytes) -> bytes:
    """``data`` without the runs of CR and LF before a message (at the start, or after the
    empty line of a head or a trailer section, before a letter or at the end)."""
    data = data.lstrip(b"\r\n")
    return re.sub(rb"(\r?\n\r?\n)[\r\n]+(?=[A-Za-z]|$)", rb"\1", data)


def _single_spaces(data: bytes) -> bytes:
    """``data`` with runs of spaces in its request lines made one."""
    return re.sub(rb"(?m)^([^\r\n ]+) +([^\r\n ]+) +(HTTP/)", rb"\1 \2 \3", data)


def _one_content_length(data: bytes) -> bytes:
    """``data`` with a repeated equal Content-Length line of a head dropped."""
    out: list[bytes] = []
    seen: set[tuple[bytes, bytes]] = set()
    for line in data.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        key = (name.lower(), value.strip(b" \t"))
        if not line:
            seen = set()
        elif sep and name.lower() == b"content-length":
            if key in seen:
                continue
            seen.add(key)
        out.append(line)
    return b"\r\n".join(out)


def _version_11(data: bytes) -> bytes:
    """``data`` with the versions of its request lines made 1.1."""
    return re.sub(rb"(?m)( HTTP/)[0-9]\.[0-9](\r?)$", rb"\g<1>1.1\2", data)


# The documented strictness choices (docs/http.md, "Where native and llhttp differ"): the name,
# the kinds it concerns, and a rewrite of the input after which it no longer applies.
KNOWN: list[tuple[str, tuple[str, ...], Callable[[bytes], bytes]]] = [
    # responses: native takes bare-LF line ends in a head (as nginx does); llhttp refuses them
    ("response-bare-lf", ("response",), _crlf_head),
    ("response-bare-lf", ("response",), _crlf_all),
    # responses: native takes a Content-Length repeated with the same value (RFC 9110 §8.6
    # allows it; nginx too); llhttp refuses any second one (requests: both refuse)
    ("response-repeated-content-length", ("response",), _one_content_length),
    # a head with two faults, one of them its version: native checks the fields as it reads
    # them (a bad Transfer-Encoding: 400), the protocol the version after (505); on the
    # httptools path the protocol's version check runs first
    ("two-faults-version", ("request",), _version_11),
    # request lines: native wants exactly one SP between its parts (RFC 9112 §3); llhttp
    # takes runs of them
    ("request-line-spaces", ("request",), _single_spaces),
    # requests: native refuses a bare LF anywhere in a head or chunk line, also as the empty
    # line before a request line; llhttp skips such an empty line
    ("request-bare-lf", ("request",), _crlf_all),
    # native checks a head when its empty line is in; llhttp as each byte comes: an input that
    # ends inside a bad head is refused by llhttp and still incomplete for native (which
    # refuses it as soon as the head ends: no byte of it is forwarded before)
    ("late-head-check", ("request", "response"), _complete_head),
    # request targets: native takes raw non-ASCII bytes (as nginx does, for clients that send
    # UTF-8 unencoded); llhttp refuses them
    ("target-non-ascii", ("request",), _encode_target),
    # methods: native takes any token (RFC 9110 §9.1: the set is open; 501 is the server's
    # answer); llhttp refuses the ones it does not list
    ("extension-method", ("request",), _known_methods),
    # reason phrases: native refuses control characters, DEL included (RFC 9112 §4: HTAB, SP,
    # VCHAR, obs-text); llhttp takes them
    ("reason-control-chars", ("response",), _clean_reason),
    # chunk extensions: native skips them whole, checking only for control characters (as
    # nginx does; they are never forwarded: the body is re-framed); llhttp checks their
    # token / quoted-string grammar. Native also takes BWS before the ";" (RFC 9112 §7.1.1),
    # which llhttp refuses: the rewrite drops both
    ("chunk-extension-grammar", ("request", "response"), _strip_chunk_ext),
    # trailer fields: both report them (the proxy then drops the framing and connection ones:
    # keep_trailers); llhttp also applies its head rules to them, refusing a Content-Length or
    # Transfer-Encoding trailer and reading Connection / Upgrade tokens there
    ("trailer-framing-fields", ("request", "response"), _drop_framing_trailers),
    # empty lines before a message: native skips CRLF pairs before a request, nothing else;
    # llhttp skips any run of CR and LF, before a request or a response
    ("empty-lines-between-messages", ("request", "response"), _drop_empty_lines),
]


def _upgrade_without_connection(native: Outcome, twin: Outcome) -> bool:
    """A 101 whose Connection does not name upgrade: native tunnels it (the status decides,
    RFC 9110 §15.2.2); httptools raises a plain parse error (a 502)."""
    heads = [e for e in native.events if e[0] == "head"]
    return (
        native.end == "upgrade"
        and twin.end == "error"
        and "Upgrade" in twin.detail
        and bool(heads)
        and heads[-1][1] == 101
    )


def _chunk_size_bound(native: Outcome, twin: Outcome) -> bool:
    """native bounds a chunk size to 15 significant hex digits (< 2^60); llhttp to 64 bits."""
    return native.end == "error" and native.detail == "chunk size too large"


def _http09_line(native: Outcome, twin: Outcome) -> bool:
    """A request line without HTTP/x.y: native refuses it as soon as its line end is in (400,
    see mu_http.c); llhttp reads it as HTTP/0.9 and the protocol refuses the head, maybe for
    another fault first (an unsupported Expect: 417), or it waits for more."""
    if not (native.end == "error" and native.detail.startswith("invalid request line")):
        return False
    if twin.end == "error":  # refused by both, llhttp maybe for the head's other fault
        return True
    # or llhttp still waits for the rest of that line's message
    return native.detail.endswith("HTTP/0.9 request?)") and twin.events == _completed(native.events)


def _data_after_close(native: Outcome, twin: Outcome) -> bool:
    """Bytes after a message that does not keep the connection (HTTP/1.0 without keep-alive,
    an interim 1xx of HTTP/1.0 included): llhttp refuses them; native parses them as the next
    message (skipping an interim response), and the connection is closed after the answer, or
    never reused, either way."""
    if not (twin.end == "error" and "Data after `Connection: close`" in twin.detail):
        return False
    done = _completed(twin.events)  # what llhttp completed, native read alike
    return native.events[: len(done)] == done


def _response_version(native: Outcome, twin: Outcome) -> bool:
    """Responses: native takes HTTP/1.0 and 1.1 only (502 otherwise); llhttp any d.d."""
    return native.end == "error" and native.detail == "unsupported HTTP version"


def _status_below_100(native: Outcome, twin: Outcome) -> bool:
    """A status code under 100 (``050``): native refuses it (RFC 9110 §15: 100-599, the first
    digit 1-5); llhttp takes any three digits."""
    heads = [e for e in twin.events if e[0] == "head"]
    return native.end == "error" and native.detail == "invalid status line" and any(h[1] < 100 for h in heads)


def _interim_with_body(native: Outcome, twin: Outcome) -> bool:
    """A 1xx with a Content-Length: native skips the head alone (a 1xx has no content, RFC
    9110 §15.2) and reads what follows as the next response; llhttp reads a body for it
    (which the upstream connection drops: it belongs to no response)."""
    orphan = any(
        e[0] == "body" and (i == 0 or twin.events[i - 1][0] not in ("head", "body"))
        for i, e in enumerate(twin.events)
    )
    return orphan and native.end != "upgrade"


def _response_te_not_chunked(native: Outcome, twin: Outcome) -> bool:
    """A response Transfer-Encoding other than exactly ``chunked`` (or two of them): native
    refuses it (502); llhttp reads such a body until close (and the proxy would pass on a
    coding whose header it dropped as hop-by-hop)."""
    return native.end == "error" and native.detail in (
        "unsupported Transfer-Encoding",
        "duplicate Transfer-Encoding",
    )


def _bytes_after_response(native: Outcome, twin: Outcome) -> bool:
    """Empty lines after a complete response: native refuses them as a bad status line (the
    connection is then not reused: see client.py's unsolicited bytes); llhttp skips them."""
    return (
        native.end == "error"
        and native.detail == "invalid status line"
        and twin.end == "ok"
        and _completed(native.events) == twin.events
    )


# differences no rewrite can take away: the name, the kinds, the test of the two outcomes
PREDICATES: list[tuple[str, tuple[str, ...], Callable[[Outcome, Outcome], bool]]] = [
    ("upgrade-without-connection", ("response",), _upgrade_without_connection),
    ("chunk-size-bound", ("request", "response"), _chunk_size_bound),
    ("response-transfer-coding", ("response",), _response_te_not_chunked),
    ("http09-request-line", ("request",), _http09_line),
    ("data-after-close", ("request", "response"), _data_after_close),
    ("response-version", ("response",), _response_version),
    ("status-below-100", ("response",), _status_below_100),
    ("interim-with-body", ("response",), _interim_with_body),
    ("bytes-after-response", ("response",), _bytes_after_response),
]


def known_difference(kind: str, data: bytes, seed: int, native: Outcome, twin: Outcome) -> str | None:
    """The documented strictness choice(s) that explain a disagreement, or None. Checked, not
    assumed: the input is rewritten so the choice no longer applies (each alone, then
    all in turn), and then both parsers must agree; the few that no rewrite
    removes are recognised from the two outcomes (PREDICATES)."""
    name = _predicate(kind, native, twin)
    if name is not None:
        return name
    rules = [r for r in KNOWN if kind in r[1]]
    # late-head-check applies to what native still holds once the others are undone: last
    rules.sort(key=lambda r: r[0] == "late-head-check")
    # each rewrite alone, then all of them in turn (KNOWN's order), each prefix tried: a
    # linear number of runs, cheap enough for a fuzz loop that meets known differences often
    tries = [[r] for r in rules] + [rules[:n] for n in range(2, len(rules) + 1)]
    for chain in tries:
        fixed = data
        for name, _kinds, rewrite in chain:
            if name == "late-head-check" and not _pending_for_native(kind, fixed, seed):
                break
            fixed = rewrite(fixed)
        else:
            if fixed == data:
                continue
        if fixed == data:
            continue
        n2, t2 = _outcomes(kind, fixed, seed)
        if _same(kind, n2, t2) or _predicate(kind, n2, t2) is not None:
            return "+".join(r[0] for r in chain)
    return None


def _pending_for_native(kind: str, data: bytes, seed: int) -> bool:
    """late-head-check applies only where llhttp refused what native still holds."""
    native, twin = _outcomes(kind, data, seed)
    return native.end == "ok" and twin.end == "error"


def _predicate(kind: str, native: Outcome, twin: Outcome) -> str | None:
    for name, kinds, test in PREDICATES:
        if kind in kinds and test(native, twin):
            return name
    return None


def _outcomes(kind: str, data: bytes, seed: int) -> tuple[Outcome, Outcome]:
    runs = RUNS[kind]
    cuts = split_points(data, seed)
    return runs[0](data, cuts), runs[1](data, cuts)


def _same(kind: str, native: Outcome, twin: Outcome) -> bool:
    a, b = native.events, twin.events
    if native.end == "upgrade":  # an upgrade's own completion means nothing (the tunnel starts)
        a = a[:-1] if a[-1:] == [("done",)] else a
        b = b[:-1] if b[-1:] == [("done",)] else b
    if native.end == twin.end == "error":
        # what counts is the messages completed before the refusal: a head llhttp reported
        # before refusing its framing (an unknown Transfer-Encoding) is refused all the same,
        # before any body byte
        a, b = _completed(a), _completed(b)
    if a != b or native.end != twin.end:
        return False
    # a request error's status is the client's answer, compared where both sides raised it
    # from the same check (the protocol's code); a line llhttp's grammar refuses may have a
    # second fault native reports first (an unknown method and HTTP/7.1: 400 or 505). Every
    # response error is a 502 (the upstream connection turns any parse failure into one)
    return not (
        kind.endswith("request")
        and native.end == "error"
        and not twin.grammar
        and native.status != twin.status
    )


def _completed(events: list[tuple]) -> list[tuple]:
    done = [i for i, e in enumerate(events) if e == ("done",)]
    return events[: done[-1] + 1] if done else []


def compare(kind: str, data: bytes, seed: int) -> None:
    """Raise Disagreement unless both read ``data`` alike (or a known difference explains it)."""
    native, twin = _outcomes(kind, data, seed)
    if _same(kind, native, twin) or known_difference(kind, data, seed, native, twin):
        return
    raise Disagreement(f"{kind} input {data!r} (split seed {seed}):\n  native: {native}\n  twin:   {twin}")


def split_points(data: bytes, seed: int) -> list[int]:
    """Deterministic cut points from a seed byte: 0 = one read, else up to 8 cuts."""
    if not seed or len(data) < 2:
        return []
    n = seed % 8 + 1
    step = max(1, len(data) // (n + 1))
    return sorted({min(len(data) - 1, (i + 1) * step + (seed >> 3) % step) for i in range(n)})


RUNS = {
    "request": (run_native_request, run_twin_request),
    "response": (run_native_response, run_twin_response),
}
PREFIX = {
    "chunked-request": (CHUNKED_REQUEST_HEAD, "request"),
    "chunked-response": (CHUNKED_RESPONSE_HEAD, "response"),
}


def _feed_skipping(parser: Any, data: bytes, cuts: list[int], seed: int, out: Outcome) -> Outcome:
    """``_feed``, but at every cut inside a chunk's payload part of the rest of it goes around
    the parser (``skip_chunk``, what a splice does: worker/http/splice_relay.py), those bytes
    put into the body events in their place."""
    pos, rng = 0, seed or 1
    try:
        for c in [*cuts, len(data)]:
            if c > pos:
                parser.feed_data(data[pos:c])
                pos = c
            left = parser.chunk_left()
            if left:
                rng = (rng * 1103515245 + 12345) & 0x7FFFFFFF
                k = min(left, len(data) - pos, rng % (left + 1))
                parser.skip_chunk(k)
                out.body(data[pos : pos + k])
                pos += k
        if pos < len(data):
            parser.feed_data(data[pos:])
    except UpgradeRequested as exc:
        out.end, out.detail = "upgrade", repr(exc.rest)
    except ParseError as exc:
        out.end, out.status, out.detail = "error", exc.status, str(exc)
    return out


def check_skipping(kind: str, data: bytes, seed: int) -> None:
    """The native parser with chunk payloads skipped must read ``data`` as without."""
    cuts = split_points(data, seed)
    plain = RUNS[kind][0](data, cuts)
    out = Outcome()
    if kind == "request":
        parser = hp.native.RequestParser(_NativeRequest(out), MAX_HEAD, MAX_URI, MAX_HEAD, 256)
    else:
        parser = hp.native.ResponseParser(_NativeResponse(out), False, 0, False, MAX_HEAD, MAX_HEAD, 256)
    skipped = _feed_skipping(parser, data, cuts, seed, out)
    if (skipped.events, skipped.end, skipped.status) != (plain.events, plain.end, plain.status):
        raise Disagreement(
            f"{kind} input {data!r} (split seed {seed}) with chunks skipped:\n"
            f"  skipped: {skipped}\n  plain:   {plain}"
        )


def check(kind: str, data: bytes, seed: int = 0) -> None:
    """One differential check of ``data`` for target ``kind``, split as ``seed`` says (a
    chunked one also against itself with chunk payloads skipped: ``check_skipping``)."""
    if kind in PREFIX:
        head, kind = PREFIX[kind]
        data = head + data
        check_skipping(kind, data, seed)
    elif kind not in RUNS:
        raise ValueError(kind)
    compare(kind, data, seed)


TARGETS: dict[str, Callable[[bytes], None]] = {}


def _target(kinds: tuple[str, ...]) -> Callable[[bytes], None]:
    def one_input(raw: bytes) -> None:
        """Fuzzer entry: the first byte picks the split, the rest is the input."""
        if not raw:
            return
        for kind in kinds:
            check(kind, raw[1:], raw[0])

    return one_input


TARGETS["request"] = _target(("request",))
TARGETS["response"] = _target(("response",))
TARGETS["chunked"] = _target(("chunked-request", "chunked-response"))

# the native exchange's decisions (route match, upstream head): tests/fuzz/native_targets.py
from tests.fuzz.native_targets import TARGETS as _NATIVE_TARGETS  # noqa: E402

TARGETS.update(_NATIVE_TARGETS)
# the native engine's head decisions (uring/mu_nx.c): tests/fuzz/nx_target.py
from tests.fuzz.nx_target import TARGETS as _NX_TARGETS  # noqa: E402

TARGETS.update(_NX_TARGETS)
# the native Thrift relay's frame decision (uring/mu_thrift_frame.c): tests/fuzz/thrift_target.py
from tests.fuzz.thrift_target import TARGETS as _THRIFT_TARGETS  # noqa: E402

TARGETS.update(_THRIFT_TARGETS)
