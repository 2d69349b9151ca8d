"""asyncio's private selector-loop and transport members that the io_uring loop and transport
override and call, declared for type checkers.

typeshed describes asyncio's public API only, so ``super()._start_serving(...)`` or
``self._add_callback(...)`` in a subclass look undefined to mypy and pyright. Here they are
declared once, with CPython's signatures (the same in 3.11 to 3.14); at run time
``SelectorLoopBase`` *is* ``asyncio.SelectorEventLoop``, ``FlowControlTransportBase`` *is*
``asyncio.transports._FlowControlMixin``, and this module adds nothing.
"""

from __future__ import annotations

import asyncio
import selectors
import socket
import weakref
from asyncio import transports
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

__all__ = ["FlowControlTransportBase", "SelectorLoopBase"]

if TYPE_CHECKING:

    class SelectorLoopBase(asyncio.SelectorEventLoop):
        _selector: selectors.BaseSelector
        _debug: bool
        _closed: bool
        _transports: weakref.WeakValueDictionary[int, Any]  # fd -> transport, for _ensure_fd_no_transport

        def _add_callback(self, handle: asyncio.Handle) -> None: ...
        def _remove_reader(self, fd: Any) -> bool: ...
        def _remove_writer(self, fd: Any) -> bool: ...
        def _make_socket_transport(
            self,
            sock: socket.socket,
            protocol: Any,
            waiter: Any = None,
            *,
            extra: dict[str, Any] | None = None,
            server: Any = None,
        ) -> Any: ...
        def _start_serving(
            self,
            protocol_factory: Callable[[], Any],
            sock: socket.socket,
            sslcontext: Any = None,
            server: Any = None,
            backlog: int = 100,
            *args: Any,
        ) -> None: ...
        def _stop_serving(self, sock: socket.socket) -> None: ...
        async def _accept_connection2(
            self,
            protocol_factory: Callable[[], Any],
            conn: socket.socket,
            extra: dict[str, Any],
            sslcontext: Any = None,
            server: Any = None,
            *args: Any,
        ) -> None: ...

    class FlowControlTransportBase(transports._FlowControlMixin):
        """The write-buffer flow control (high/low water, pause/resume of the protocol)."""

        _extra: dict[str, Any]
        _protocol_paused: bool
        _high_water: int
        _low_water: int

        def _maybe_pause_protocol(self) -> None: ...
        def _maybe_resume_protocol(self) -> None: ...
        def _set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

else:
    SelectorLoopBase = asyncio.SelectorEventLoop
    FlowControlTransportBase = transports._FlowControlMixin
