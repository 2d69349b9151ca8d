"""asyncio's private selector-loop members that the io_uring loop overrides and calls, declared
for type checkers.

typeshed describes asyncio's public API only, so ``super()._start_serving(...)`` or
``self._add_callback(...)`` in a subclass look undefined to mypy and pyright. Here they are
declared once, with CPython's signatures (the same in 3.11 to 3.14); at run time
``SelectorLoopBase`` *is* ``asyncio.SelectorEventLoop`` and this module adds nothing.
"""

from __future__ import annotations

import asyncio
import selectors
import socket
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

__all__ = ["SelectorLoopBase"]

if TYPE_CHECKING:

    class SelectorLoopBase(asyncio.SelectorEventLoop):
        _selector: selectors.BaseSelector
        _debug: bool
        _closed: bool
        _transports: weakref.WeakValueDictionary[int, Any]  # fd -> transport, for _ensure_fd_no_transport

        def _add_callback(self, handle: asyncio.Handle) -> None: ...
        def _remove_reader(self, fd: Any) -> bool: ...
        def _remove_writer(self, fd: Any) -> bool: ...
        def _make_socket_transport(self, sock: socket.socket, protocol: Any, waiter: Any = None, *,
                                   extra: dict[str, Any] | None = None,
                                   server: Any = None) -> Any: ...
        def _start_serving(self, protocol_factory: Callable[[], Any], sock: socket.socket,
                           sslcontext: Any = None, server: Any = None, backlog: int = 100,
                           *args: Any) -> None: ...
        def _stop_serving(self, sock: socket.socket) -> None: ...
        async def _accept_connection2(self, protocol_factory: Callable[[], Any],
                                      conn: socket.socket, extra: dict[str, Any],
                                      sslcontext: Any = None, server: Any = None,
                                      *args: Any) -> None: ...

else:
    SelectorLoopBase = asyncio.SelectorEventLoop
