"""A custom service layer for the Thrift tests (loaded by the worker from ``[[servers.X.layers]]``):
it refuses the methods listed in its options and counts what passes, in a reply header."""

from __future__ import annotations

from typing import Any

from monolake.worker.thrift.errors import UpstreamError


class GuardLayer:
    """Refuses ``options["deny"]`` methods with an error; everything else goes to ``inner``."""

    def __init__(self, inner: Any, deny: set[str]) -> None:
        self.inner = inner
        self.deny = deny
        self.passed = 0

    async def call(self, request: Any, ctx: Any) -> Any:
        if request.head.name in self.deny:
            raise UpstreamError(f"method {request.head.name} refused by the guard layer")
        self.passed += 1
        return await self.inner.call(request, ctx)


class GuardFactory:
    def __init__(self, options: dict) -> None:
        self.deny = set(options.get("deny", []))

    def make(self, inner: Any, previous: Any) -> GuardLayer:
        return GuardLayer(inner, self.deny)
