"""Services, factories, layers and the stack builder.

- A *service* answers ``await service.call(request, ctx)``.
- A *factory* builds the innermost service: ``factory.make(previous) -> Service``.
- A *layer factory* wraps an inner service: ``layer.make(inner, previous) -> Service``.
- ``FactoryStack(innermost).push(layer)...`` builds the onion; the last pushed is outermost
  (as in Monolake's ``FactoryStack``).

Every factory has a ``key`` that names its service within the stack, so the previous version of
each service can be found again on reload: in-process that is the live instance with the same
key, across processes the state it exported (see ``state.py``).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

from monolake.worker.service.state import NO_FDS, Exported, FdSource

STACK_STATE_VERSION = 1


@runtime_checkable
class Service(Protocol):
    """Anything with ``async call(request, ctx) -> response``."""

    async def call(self, request: Any, ctx: Any) -> Any: ...


class ServiceFactory(Protocol):
    """Builds the innermost service of a stack from its config and its previous version."""

    key: str

    def make(self, previous: Any) -> Service: ...


class LayerFactory(Protocol):
    """Builds a service that wraps ``inner`` (a middleware), from its previous version."""

    key: str

    def make(self, inner: Service, previous: Any) -> Service: ...


class ServiceStack:
    """A built stack: the outermost service to call, and every service by key (for export)."""

    def __init__(self, entry: Service, services: dict[str, Service]) -> None:
        self.entry = entry
        self.services = services

    async def call(self, request: Any, ctx: Any) -> Any:
        return await self.entry.call(request, ctx)

    def export_state(self, fds: list[int]) -> dict:
        """``{"version", "services": {key: {"version", "data"}}}`` for every Stateful service."""
        out: dict[str, dict] = {}
        for key, svc in self.services.items():
            export = getattr(svc, "export_state", None)
            if export is None:
                continue
            out[key] = {"version": getattr(svc, "state_version", 1), "data": export(fds)}
        return {"version": STACK_STATE_VERSION, "services": out}

    async def aclose(self) -> None:
        for svc in self.services.values():
            closer = getattr(svc, "aclose", None)
            if closer is not None:
                await closer()


class FactoryStack:
    """Collects an innermost factory and layers; ``make(previous)`` builds a ``ServiceStack``."""

    def __init__(self, innermost: ServiceFactory) -> None:
        self._innermost = innermost
        self._layers: list[LayerFactory] = []

    def push(self, layer: LayerFactory) -> FactoryStack:
        """Wrap everything pushed so far; the last layer pushed is the outermost."""
        self._layers.append(layer)
        return self

    @property
    def keys(self) -> list[str]:
        return [self._innermost.key, *(layer.key for layer in self._layers)]

    def make(self, previous: ServiceStack | dict | None, fds: FdSource = NO_FDS) -> ServiceStack:
        """Build every service, handing each the previous version found under its key.

        ``previous`` is the live previous ``ServiceStack`` (in-place reload), the dict its
        ``export_state`` produced in the previous generation, or None.
        """
        keys = self.keys
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate service keys in stack: {keys}")
        services: dict[str, Service] = {}
        svc = self._innermost.make(_previous_for(previous, self._innermost.key, fds))
        services[self._innermost.key] = svc
        for layer in self._layers:
            svc = layer.make(svc, _previous_for(previous, layer.key, fds))
            services[layer.key] = svc
        return ServiceStack(svc, services)


def _previous_for(previous: ServiceStack | dict | None, key: str, fds: FdSource) -> Any:
    if previous is None:
        return None
    if isinstance(previous, ServiceStack):
        return previous.services.get(key)
    if isinstance(previous, dict) and previous.get("version") == STACK_STATE_VERSION:
        rec = previous.get("services", {}).get(key)
        if rec is not None:
            return Exported(version=rec["version"], data=rec["data"], fds=fds)
    return None


def load_layer_factory(target: str, options: dict, key: str) -> LayerFactory:
    """Import ``"package.module:attr"`` and call it with ``options`` to get a layer factory.

    ``attr`` is a class or function taking the options table; the result must have
    ``make(inner, previous)``. Its ``key`` (how its previous version is found on reload) is
    set to ``key``: the target and its occurrence number, stable when other layers move.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"layer factory {target!r}: expected 'package.module:attr'")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    factory = obj(dict(options))
    if not callable(getattr(factory, "make", None)):
        raise TypeError(f"layer factory {target!r} returned {type(factory).__name__} without make()")
    try:
        factory.key = key
    except AttributeError as exc:
        raise TypeError(f"layer factory {target!r}: cannot set its key") from exc
    return factory


def push_config_layers(stack: FactoryStack, layers: Any) -> FactoryStack:
    """Push a server's ``[[servers.NAME.layers]]`` (the config lists them outermost first).

    Keys are ``"<factory>#<n>"`` (the n-th use of that factory), so a layer's state is found
    again on reload even when other layers are added or moved.
    """
    seen: dict[str, int] = {}
    keyed = []
    for layer in layers:
        n = seen[layer.factory] = seen.get(layer.factory, 0) + 1
        keyed.append((layer, f"{layer.factory}#{n}"))
    for layer, key in reversed(keyed):
        stack.push(load_layer_factory(layer.factory, layer.options, key=key))
    return stack
