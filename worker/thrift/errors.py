"""Errors of the Thrift data path, split by what the caller must do about them."""

from __future__ import annotations


class FrameError(Exception):
    """The byte stream cannot be parsed (malformed or oversized frame): close the connection."""


class UpstreamError(Exception):
    """An upstream could not answer a request (connect failure, closed, protocol error).

    ``timeout`` tells a deadline expiry from a failure, because callers map them differently
    (a TApplicationException either way for the proxy; 504 vs 502 for the gateway).
    """

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout
