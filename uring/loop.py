"""The io_uring event loop: asyncio's selector loop with the ring underneath.

Why a SelectorEventLoop subclass: everything asyncio builds on a selector (call_soon/call_later,
run_in_executor, signals, sock_* coroutines, pipes, subprocesses, start_tls, create_connection /
create_server / create_unix_server) keeps working unchanged on a selector emulated with io_uring
polls, while stream sockets take a fast path (multishot accept and recv, C-owned sends) with no
syscall, Future or selector registration per read or write. Each iteration makes exactly one
``io_uring_enter`` (submit + wait + reap) and walks the completion batch once.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import os
import selectors
import socket
from asyncio import base_events, constants, trsock
from asyncio.log import logger
from collections.abc import Callable
from time import monotonic
from typing import Any

from monolake.uring._uring import ffi, lib
from monolake.uring.aio_private import SelectorLoopBase
from monolake.uring.busypoll import spin
from monolake.uring.ring import F_MORE, FAST, K_ACCEPT, Ring
from monolake.uring.selector import POLLIN, UringSelector
from monolake.uring.transport import UringSocketTransport

_STREAM_FAMILIES = {socket.AF_INET, socket.AF_INET6, socket.AF_UNIX}
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# asyncio >= 3.13 passes the transport to Server._attach/_detach
_SERVER_TAKES_TRANSPORT = (
    len(
        inspect.signature(base_events.Server._attach).parameters  # type: ignore[attr-defined]  # private
    )
    > 1
)


class _Listener:
    """A listening socket served from the ring.

    Default ("poll"): a multishot, non-exclusive POLLIN and accept4() until EAGAIN, like epoll
    loops do. "multishot": IORING_OP_ACCEPT multishot, one CQE per connection; its poll is
    EPOLLEXCLUSIVE, so on a socket shared with other processes (reload hand-over) a wake-up
    taken by a ring that then stops accepting is lost for the others. Use it only for sockets
    this process alone accepts on.
    """

    __slots__ = (
        "loop",
        "sock",
        "fd",
        "token",
        "protocol_factory",
        "sslcontext",
        "server",
        "ssl_kwargs",
        "stopping",
        "family",
        "proto",
        "multishot",
        "fdbuf",
        "errbuf",
        "more",
        "owned",
    )

    BATCH = 64

    def __init__(
        self,
        loop: UringEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], Any],
        sslcontext: Any,
        server: Any,
        ssl_kwargs: dict[str, Any],
        multishot: bool,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.proto = sock.proto
        self.token = 0
        self.protocol_factory = protocol_factory
        self.sslcontext = sslcontext
        self.server = server
        self.ssl_kwargs = ssl_kwargs
        self.stopping = False
        self.multishot = multishot
        self.fdbuf = ffi.new("int[]", self.BATCH)
        self.errbuf = ffi.new("int *")
        self.more: Any = None  # a scheduled continuation of a long accept run
        self.owned = False  # created by this loop's create_server: no other process listens on it

    def arm(self) -> None:
        loop = self.loop
        if self.stopping or loop._ring.closed:
            return
        self.token = loop._ring.token()
        loop._handlers[self.token] = self.event
        ud = (self.token << 8) | K_ACCEPT
        if self.multishot:
            lib.mu_accept(loop._ring.ptr, self.fd, ud)
        else:
            lib.mu_poll_multishot(loop._ring.ptr, self.fd, POLLIN, ud)

    def event(self, kind: int, res: int, flags: int, off: int) -> None:
        loop = self.loop
        final = not flags & F_MORE
        if final:
            loop._handlers.pop(self.token, None)
        if res >= 0 and not self.stopping:
            if self.multishot:
                self.accepted(res)
            else:
                self.accept_ready()
        elif res >= 0 and self.multishot:
            os.close(res)  # accepted while stopping: not ours to serve any more
        elif -res in _ACCEPT_RESOURCE_ERRORS and not self.stopping:
            self.resource_error(-res)
            if final:
                loop.call_later(constants.ACCEPT_RETRY_DELAY, self.arm)
            return
        if final:
            if self.stopping:
                self.sock.close()
                loop._stopping_listeners.pop(self.token, None)
            else:
                self.arm()  # the kernel ended the multishot (e.g. an error): take it up again

    def accept_ready(self) -> None:
        """Accept what is queued (bounded per call, like asyncio's backlog loop)."""
        self.more = None
        if self.stopping:
            return
        n = lib.mu_accept_many(self.fd, self.fdbuf, self.BATCH, self.errbuf)
        for i in range(n):
            self.accepted(self.fdbuf[i])
        err = self.errbuf[0]
        if err:
            # the queue was not drained and the poll is edge-triggered: try again later, as
            # asyncio does (out of descriptors: after a delay, so the loop does not spin)
            if err in _ACCEPT_RESOURCE_ERRORS:
                self.resource_error(err)
            self.pause()
        elif n == self.BATCH:
            self.more = self.loop.call_soon(self.accept_ready)

    def accepted(self, fd: int) -> None:
        try:
            conn = socket.socket(self.family, socket.SOCK_STREAM, self.proto, fileno=fd)
        except OSError:
            os.close(fd)
            return
        self.loop._accepted(self, conn)

    def resource_error(self, code: int) -> None:
        self.loop.call_exception_handler(
            {
                "message": "socket.accept() out of system resource",
                "exception": OSError(code, os.strerror(code)),
                "socket": trsock.TransportSocket(self.sock),
            }
        )

    def pause(self) -> None:
        loop = self.loop
        if self.token in loop._handlers:
            loop._handlers.pop(self.token, None)
            lib.mu_cancel(loop._ring.ptr, (self.token << 8) | K_ACCEPT)
        loop.call_later(constants.ACCEPT_RETRY_DELAY, self.arm)

    def stop(self) -> None:
        """Cancel the poll/accept; the socket is closed on the final completion (the ring holds
        a reference to it until then, so closing it now could keep it accepting).

        A socket this loop created stops listening at once, as asyncio's close() does:
        shutdown() on a listening socket ends the listen (a connect is refused from now on)
        without waiting for the ring. Not for a socket passed in (sock=...): other processes
        may be accepting on it (reload hand-over), and shutdown would stop them too."""
        self.stopping = True
        if self.more is not None:
            self.more.cancel()
        loop = self.loop
        if self.owned:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected/listening any more: nothing to stop
        if loop._ring.closed or self.token not in loop._handlers:
            self.sock.close()
            return
        loop._stopping_listeners[self.token] = self
        lib.mu_cancel(loop._ring.ptr, (self.token << 8) | K_ACCEPT)


class UringEventLoop(SelectorLoopBase):
    """asyncio event loop driven by io_uring (see the module docstring)."""

    _selector: _LoopSelector  # the one __init__ hands to asyncio

    def __init__(
        self,
        entries: int = 1024,
        setup_flags: str | None = None,
        accept_mode: str = "poll",
        **ring_kwargs: Any,
    ) -> None:
        try:
            if accept_mode not in ("poll", "multishot"):
                raise ValueError(f"accept_mode must be 'poll' or 'multishot', got {accept_mode!r}")
            self._multishot_accept = accept_mode == "multishot"
            self._ring = Ring(entries, setup_flags, **ring_kwargs)
        except BaseException:
            self._closed = True  # BaseEventLoop.__del__ looks at it
            raise
        self._handlers: dict[int, Callable[[int, int, int, int], None]] = {}
        # recv user_data -> protocol.data_received, for transports in the plain state; a
        # 1-tuple (data_received,) for a protocol that reads views lent for the call only
        self._readers: dict[int, Any] = {}
        self._conn_transports: dict[int, UringSocketTransport] = {}
        self._listeners: dict[int, _Listener] = {}
        self._stopping_listeners: dict[int, _Listener] = {}
        # listening sockets create_server/create_unix_server made here: fd -> (id(sock), pid)
        self._owned_sockets: dict[int, tuple[int, int]] = {}
        self._arena_view = self._ring.arena
        selector = _LoopSelector(self._ring, self._handlers, self._on_selector_ready)
        if FAST is not None:  # runs the ring and dispatches the batch in one C call
            selector._run = self._ring.dispatcher(self._readers, self._handlers, self._on_reader_error)
        super().__init__(selector)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} running={self.is_running()} closed={self.is_closed()} "
            f"flags={self._ring.setup_flags} entries={self._ring.entries}>"
        )

    @property
    def runtime_detail(self) -> str:
        return f"io_uring entries={self._ring.entries} flags={self._ring.setup_flags}"

    @property
    def busy_poll(self) -> float:
        """Seconds the loop keeps polling (not sleeping) after events; 0 = off."""
        return self._selector.busy_poll

    @busy_poll.setter
    def busy_poll(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"busy_poll must be >= 0 seconds, got {seconds!r}")
        self._selector.busy_poll = float(seconds)

    # ---- the iteration: one ring run, one walk over the batch ----

    def _process_events(self, batch: Any) -> None:
        if type(batch) is int:  # the C path: select() already ran and dispatched the batch
            return
        handlers = self._handlers
        readers = self._readers
        arena = self._arena_view
        it = iter(batch)
        for ud, res, flags, off in zip(it, it, it, it, strict=False):  # flat quadruples
            if res > 0:
                # hot path: data for a plain Protocol goes straight to data_received
                reader = readers.get(ud)
                if reader is not None:
                    try:
                        if type(reader) is tuple:
                            with arena[off : off + res].toreadonly() as view:  # lent for the call
                                reader[0](view)
                        else:
                            reader(arena[off : off + res].tobytes())
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        t = self._conn_transports.get(ud >> 8)
                        if t is not None:
                            t._reader_failed(exc)
                    continue
            h = handlers.get(ud >> 8)
            if h is not None:
                h(ud & 255, res, flags, off)

    def _on_reader_error(self, ud: int, exc: BaseException) -> None:
        t = self._conn_transports.get(ud >> 8)
        if t is not None:
            t._reader_failed(exc)

    def _on_selector_ready(self, key: selectors.SelectorKey, mask: int) -> None:
        reader, writer = key.data
        if mask & selectors.EVENT_READ and reader is not None:
            if reader._cancelled:
                self._remove_reader(key.fileobj)
            else:
                self._add_callback(reader)
        if mask & selectors.EVENT_WRITE and writer is not None:
            if writer._cancelled:
                self._remove_writer(key.fileobj)
            else:
                self._add_callback(writer)

    # BaseEventLoop._run_once calls self._selector.select(timeout) and hands the result to
    # _process_events: our _LoopSelector returns the raw completion batch instead of keys.

    def _write_to_self(self) -> None:
        """call_soon_threadsafe's wake-up: an eventfd write (the ring polls it)."""
        efd = self._ring.efd
        if efd < 0:
            return
        try:
            os.eventfd_write(efd, 1)
        except OSError:
            if self._debug:
                logger.debug("Fail to write the io_uring wake-up eventfd", exc_info=True)

    # ---- stream sockets: the fast path ----

    def _make_socket_transport(
        self,
        sock: socket.socket,
        protocol: Any,
        waiter: Any = None,
        *,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> Any:
        if sock.family in _STREAM_FAMILIES and sock.type == socket.SOCK_STREAM:
            return UringSocketTransport(self, sock, protocol, waiter, extra, server)
        return super()._make_socket_transport(sock, protocol, waiter, extra=extra, server=server)

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: Any,
        sslcontext: Any,
        waiter: Any = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        **kwargs: Any,
    ) -> Any:
        from asyncio import sslproto

        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname, **kwargs
        )
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    def _start_serving(
        self,
        protocol_factory: Callable[[], Any],
        sock: socket.socket,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        *args: Any,
    ) -> None:
        if sock.family not in _STREAM_FAMILIES or sock.fileno() in self._listeners:
            if sock.fileno() in self._listeners:
                return
            super()._start_serving(protocol_factory, sock, sslcontext, server, backlog, *args)
            return
        names = ("ssl_handshake_timeout", "ssl_shutdown_timeout")
        ssl_kwargs = dict(zip(names, args, strict=False))  # args may stop short of names
        listener = _Listener(
            self, sock, protocol_factory, sslcontext, server, ssl_kwargs, self._multishot_accept
        )
        listener.owned = self._owned_sockets.pop(sock.fileno(), None) == (id(sock), os.getpid())
        self._listeners[listener.fd] = listener
        listener.arm()

    async def create_server(
        self,
        protocol_factory: Callable[[], Any],
        host: Any = None,
        port: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """asyncio's, remembering which listening sockets it created (see _Listener.stop)."""
        return await self._create_owned(super().create_server, protocol_factory, host, port, *args, **kwargs)

    async def create_unix_server(
        self, protocol_factory: Callable[[], Any], path: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        return await self._create_owned(super().create_unix_server, protocol_factory, path, *args, **kwargs)

    async def _create_owned(self, create: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run asyncio's create_*server without starting it, note the sockets it made (not a
        passed-in ``sock``), then start serving as asyncio would have."""
        start = kwargs.pop("start_serving", True)
        server = await create(*args, start_serving=False, **kwargs)
        if kwargs.get("sock") is None:
            for sock in server._sockets or ():
                self._owned_sockets[sock.fileno()] = (id(sock), os.getpid())
        if start:
            server._start_serving()
            await asyncio.sleep(0)  # as asyncio does: let the loop start accepting
        return server

    def _accepted(self, listener: _Listener, conn: socket.socket) -> None:
        conn.setblocking(False)  # the fd already is (SOCK_NONBLOCK): this syncs the object
        if listener.sslcontext:
            self.create_task(
                self._accept_connection2(
                    listener.protocol_factory,
                    conn,
                    {},
                    listener.sslcontext,
                    listener.server,
                    *listener.ssl_kwargs.values(),
                )
            )
            return
        protocol = None
        try:
            protocol = listener.protocol_factory()
            UringSocketTransport(self, conn, protocol, None, None, listener.server)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            conn.close()
            self.call_exception_handler(
                {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                    "protocol": protocol,
                }
            )

    def _stop_serving(self, sock: socket.socket) -> None:
        self._owned_sockets.pop(sock.fileno(), None)
        listener = self._listeners.pop(sock.fileno(), None)
        if listener is None:
            super()._stop_serving(sock)
            return
        listener.stop()

    def _server_attach(self, server: Any, transport: Any) -> None:
        if _SERVER_TAKES_TRANSPORT:
            server._attach(transport)
        else:
            server._attach()

    def _server_detach(self, server: Any, transport: Any) -> None:
        if _SERVER_TAKES_TRANSPORT:
            server._detach(transport)
        else:
            server._detach()

    # ---- closing ----

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        super().close()
        # transports still open: their C conns go with the ring (their sockets stay with them,
        # except those whose connection_lost has run and only waited for the ring to let go)
        gone = list(self._conn_transports.values())
        for t in gone:
            t._ring_gone()
        self._conn_transports.clear()
        left = self._ring.close()
        if left:
            logger.warning("io_uring loop closed with %d operations still in flight", left)
        for t in gone:
            if t._lost_done:
                t._close_socket()
        for listener in list(self._stopping_listeners.values()):
            listener.sock.close()
        self._stopping_listeners.clear()
        self._listeners.clear()
        self._handlers.clear()
        self._readers.clear()


class _LoopSelector(UringSelector):
    """The selector the loop owns: ``select()`` returns the completion batch itself (with the C
    fast path, the event count of a batch it already dispatched; else the flat list).

    Busy polling (``busy_poll`` seconds, 0 = off): for that long after the last batch of events,
    a wait that would sleep polls the ring with a zero timeout instead, so a reply arriving
    shortly after a request is reaped without the idle-exit and wake-up cost of a sleeping core
    (see monolake.uring.busypoll). Past the window the wait sleeps as usual.
    """

    busy_poll = 0.0
    _last_events = 0.0
    _run: Any = None  # the loop's C run-and-dispatch (Ring.dispatcher), else the Python path

    def select(self, timeout: float | None = None) -> Any:  # type: ignore[override]
        if self._rearm:
            self.arm_pending()
        run = self._run or self._ring.run
        if not self.busy_poll:
            return run(timeout)
        batch, timeout = spin(run, timeout, self._last_events + self.busy_poll)
        if not batch:
            batch = run(timeout)
        if batch:
            self._last_events = monotonic()
        return batch


def new_event_loop(
    entries: int = 1024, setup_flags: str | None = None, accept_mode: str = "poll", **ring_kwargs: Any
) -> UringEventLoop:
    """A new io_uring loop; ``asyncio.Runner(loop_factory=new_event_loop)`` works.

    ``setup_flags``: None = the best the kernel supports (probed); ``accept_mode``: see _Listener.
    """
    return UringEventLoop(entries, setup_flags, accept_mode, **ring_kwargs)
