"""A layer that misbehaves on purpose (loaded from the config by the tests)."""

from __future__ import annotations

from typing import Any


class Faulty:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def call(self, request: Any, ctx: Any) -> Any:
        if request.path.endswith("/raise"):
            raise RuntimeError("boom")
        if request.path.endswith("/none"):
            return None
        return await self.inner.call(request, ctx)


class FaultyFactory:
    key = "faulty"

    def __init__(self, options: dict) -> None:
        self.options = options

    def make(self, inner: Any, previous: Any) -> Faulty:
        return Faulty(inner)
