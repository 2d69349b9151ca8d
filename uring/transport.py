"""Stream socket transport driven by io_uring: multishot recv in, C-owned sends out.

Why not asyncio's selector transport: readiness + recv/send syscalls per event is exactly what
io_uring removes. Here data arrives as completions in the loop's batch (no Future, no syscall per
read), writes go to C which sends them in order (a large one on an idle conn at once, without a
copy; the rest copied and queued) and resubmits short writes, and the
transport only hears back about errors, drained write buffers and the final "quiesced" event after
which the fd can be closed safely.
"""

from __future__ import annotations

import errno
import os
import socket
import warnings
from asyncio import constants, protocols, transports, trsock
from asyncio.log import logger
from typing import TYPE_CHECKING, Any

from monolake.uring._uring import ffi, lib
from monolake.uring.aio_private import FlowControlTransportBase
from monolake.uring.ring import FAST, K_DRAIN, K_QUIESCED, K_RECV, K_SENDERR

if TYPE_CHECKING:
    from monolake.uring.loop import UringEventLoop

_feed_buffered = protocols._feed_data_to_buffered_proto  # type: ignore[attr-defined]
_EOF = object()  # marker held while reading is paused
_NO_HELD: list[Any] = []  # shared and always empty: _held of a conn with nothing held
_NO_EXTRA: dict[str, Any] = {}  # shared and always empty: _extra until something is kept

mu_conn_send = lib.mu_conn_send
mu_conn_send2 = lib.mu_conn_send2
mu_conn_recv_start = lib.mu_conn_recv_start
mu_conn_recv_stop = lib.mu_conn_recv_stop


def _oserror(res: int) -> OSError:
    code = -res
    exc_type = {
        errno.ECONNRESET: ConnectionResetError,
        errno.EPIPE: BrokenPipeError,
        errno.ECONNABORTED: ConnectionAbortedError,
        errno.ETIMEDOUT: TimeoutError,
    }.get(code, OSError)
    return exc_type(code, os.strerror(code))


class UringSocketTransport(FlowControlTransportBase, transports.Transport):
    """asyncio Transport over a stream socket (TCP or unix), fed by io_uring completions."""

    _start_tls_compatible = True
    # loop.sendfile(): the inherited BaseSelectorEventLoop._sendfile_native waits for our
    # buffer to empty (_make_empty_waiter), then os.sendfile()s on the socket (see the loop)
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    # writelines() sends or copies before it returns, so a view lent for the call may be passed
    writelines_copies = True
    # TCP_NODELAY is set here (tune_transport need not ask for a TransportSocket to set it)
    nodelay_set = True
    _sock: socket.socket | None = None
    _conn: Any = None
    _fast_write = False  # the instance's `write` is a C FastWriter
    _asked = 0  # get_extra_info asked for: 1 peername, 2 sockname
    _lent = False  # reading lent to a splice (lend_reading): the recv stays stopped

    def __init__(
        self,
        loop: UringEventLoop,
        sock: socket.socket,
        protocol: protocols.BaseProtocol,
        waiter: Any = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> None:
        super().__init__(_NO_EXTRA if extra is None else extra, loop)
        self._loop: UringEventLoop = loop
        self._sock = sock
        self._sock_fd = fd = sock.fileno()
        self._token = token = loop._ring.token()
        if server is not None:
            loop._server_attach(server, self)  # before anything that would need undoing
        conn = lib.mu_conn_new(loop._ring.ptr, fd, token << 8)
        if conn == ffi.NULL:
            if server is not None:
                loop._server_detach(server, self)
            raise MemoryError("io_uring conn allocation failed")
        self._conn = conn
        self._arena = loop._ring.arena
        self._readers = loop._readers
        self._recv_ud = (token << 8) | K_RECV
        self._protocol: Any = None
        self._buffered = False
        self._protocol_connected = False
        self._server = server
        self._closing = False
        self._paused = False
        self._eof = False  # write_eof() called
        self._eof_received = False
        # data (and EOF) that arrived while reading was paused; a list only once needed (an
        # idle conn holds none: issue 16 §4)
        self._held: list[Any] = _NO_HELD
        self._conn_lost = 0
        self._write_ok = True  # fast path of write(): open, no EOF written, no error
        self._aborted = False
        # close order (asyncio's): close()/abort() -> connection_lost() on the next iteration
        # (once a graceful close has flushed the buffer); the socket itself is closed when both
        # that has run and C has let go of the fd (QUIESCED), whichever comes last
        self._c_closed = False  # mu_conn_close() called: C accepts no more writes
        self._lost_scheduled = False
        self._lost_done = False
        self._empty_waiter: Any = None  # loop.sendfile() waits for the buffer to empty
        # create_connection(): data waits until the waiter's callbacks (the caller) have run
        self._gated = waiter is not None
        self.set_protocol(protocol)
        self._install_fast_writer()
        loop._handlers[token] = self._event
        loop._conn_transports[token] = self
        loop._transports[fd] = self
        if sock.family != socket.AF_UNIX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(self._wake_waiter, waiter)

    def _install_fast_writer(self) -> None:
        """`write` as a C callable on this instance (see mu_fast.c); the class method stays
        the fallback for everything but a plain bytes write on an open transport."""
        if (
            FAST is not None
            and type(self).write is UringSocketTransport.write
            and self._conn is not None
            and not self._fast_write
        ):
            self._fast_write = True
            # the C callable replaces the method on this instance only
            self.write = FAST.FastWriter(  # type: ignore[method-assign]
                int(ffi.cast("uintptr_t", self._conn)),
                self._high_water,
                self,
                UringSocketTransport.write,
                UringSocketTransport._after_send,
            )

    def _wake_waiter(self, waiter: Any) -> None:
        """Deliver create_connection()'s result; reads arriving from now on wait until the
        caller has run (asyncio: its first read is dispatched after the waiter's callbacks)."""
        _set_result_unless_cancelled(waiter, None)
        self._loop.call_soon(self._ungate)

    def _ungate(self) -> None:
        self._gated = False
        if self._held and not self._paused and not self._closing:
            self._flush_held()
        else:
            self._update_fast_reader()

    # ---- info ----

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else ("closing" if self._closing else "open")
        return (
            f"<UringSocketTransport fd={self._sock_fd} {state} paused={self._paused} "
            f"bufsize={self.get_write_buffer_size()}>"
        )

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """asyncio's keys, looked up when asked. The addresses are not kept while the socket
        is open (an idle conn would hold a dict and a tuple for each; issue 16 §4): each call
        asks the socket, and the socket's close keeps those that were asked for."""
        extra = self._extra
        if name in extra:
            return extra[name]
        sock = self._sock
        if sock is None:
            return default
        try:
            if name == "peername":
                self._asked |= 1
                return sock.getpeername()
            if name == "sockname":
                self._asked |= 2
                return sock.getsockname()
            if name != "socket":
                return default
            value: Any = trsock.TransportSocket(sock)
        except OSError:
            value = None
        if extra is _NO_EXTRA:
            extra = self._extra = {}
        extra[name] = value
        return value

    def set_protocol(self, protocol: protocols.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, protocols.BufferedProtocol)
        self._protocol_connected = True
        self._update_fast_reader()

    def _update_fast_reader(self) -> None:
        """Let the loop call data_received straight from the batch while nothing is special
        (not paused, nothing held, not closing, a plain Protocol); otherwise go via _event.

        A protocol whose ``reads_lent_views`` is true gets a read-only memoryview of the
        receive buffer instead of a bytes copy, valid only during the call (released after:
        it copies what it keeps). Reads that wait (paused, held) still come as bytes."""
        if (
            not self._paused
            and not self._held
            and not self._closing
            and not self._buffered
            and not self._gated
            and not self._lent
            and self._conn is not None
        ):
            proto = self._protocol
            fast = getattr(proto, "fast_reader", None)  # a C reader (uring/mu_native.c)
            if fast is not None:  # a 1-tuple: reads lent as views (it copies what it keeps)
                self._readers[self._recv_ud] = (fast,) if getattr(fast, "reads_lent_views", False) else fast
            elif getattr(proto, "reads_lent_views", False):
                self._readers[self._recv_ud] = (proto.data_received,)
            else:
                self._readers[self._recv_ud] = proto.data_received
        else:
            self._readers.pop(self._recv_ud, None)

    def get_protocol(self) -> protocols.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    def get_write_buffer_size(self) -> int:
        conn = self._conn
        return conn.pending if conn is not None else 0

    # ---- reading ----

    def _start_reading(self) -> None:
        if self._paused or self._closing or self._eof_received or self._conn is None or self._lent:
            return
        rc = mu_conn_recv_start(self._conn)
        if rc < 0:
            self._fatal_error(_oserror(rc), "Fatal error arming recv")

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        self._readers.pop(self._recv_ud, None)
        if self._conn is not None:
            mu_conn_recv_stop(self._conn)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._lent:
            return  # return_reading resumes
        if self._held:
            self._loop.call_soon(self._flush_held)
        else:
            self._update_fast_reader()
            self._start_reading()

    def _flush_held(self) -> None:
        """Deliver what arrived while paused, in order, then resume the recv."""
        while self._held and not self._paused and not self._closing and not self._gated and not self._lent:
            item = self._held.pop(0)
            if item is _EOF:
                self._on_eof()
            else:
                self._deliver(item)
        if not self._held and not self._lent:
            self._held = _NO_HELD  # the list goes (an idle conn keeps none)
            self._update_fast_reader()
            self._start_reading()

    # ---- lending the socket to a splice (uring/splice.py) ----

    def splice_handle(self) -> tuple[int, Any] | None:
        """(fd, C conn) for a splice job on this socket, or None once closing."""
        if self._closing or self._conn is None or self._sock is None:
            return None
        return self._sock_fd, self._conn

    def lend_reading(self) -> bool:
        """Stop the recv for a splice that reads the socket itself, and keep it stopped:
        reads that complete meanwhile are held (``held_size``, ``take_held``), and
        resume_reading only records the wish, until ``return_reading``. False when closing
        or lent already."""
        if self._closing or self._conn is None or self._lent:
            return False
        self._lent = True
        self._readers.pop(self._recv_ud, None)
        mu_conn_recv_stop(self._conn)
        return True

    def held_size(self) -> int:
        """Bytes held (reads that came while paused or lent); -1 if an end of stream is held."""
        n = 0
        for item in self._held:
            if item is _EOF:
                return -1
            n += len(item)
        return n

    def take_held(self) -> bytes:
        """The held bytes, taken (while lent: the splice's caller delivers them itself)."""
        data = b"".join(x for x in self._held if x is not _EOF)
        self._held = [x for x in self._held if x is _EOF] or _NO_HELD
        return data

    def return_reading(self) -> None:
        """The splice is over: reading goes on as the protocol last asked (paused or not)."""
        if not self._lent:
            return
        self._lent = False
        if self._closing or self._paused:
            return
        if self._held:
            self._loop.call_soon(self._flush_held)
        else:
            self._update_fast_reader()
            self._start_reading()

    def _hold(self, item: Any) -> None:
        held = self._held
        if held is _NO_HELD:
            held = self._held = []
        held.append(item)

    def _deliver(self, data: bytes) -> None:
        try:
            if self._buffered:
                _feed_buffered(self._protocol, data)
            else:
                self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _on_eof(self) -> None:
        self._eof_received = True
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    def _event(self, kind: int, res: int, flags: int, off: int) -> None:
        """A completion for this conn (called from the loop's batch dispatch)."""
        if kind == K_RECV:
            if self._closing:
                # reaped in the batch that closed us: asyncio removes its reader in close()
                # and abort(), so nothing (an EOF after a fatal error included) comes after
                return
            if res > 0:
                data = self._arena[off : off + res].tobytes()
                if self._paused or self._held or self._gated or self._lent:
                    self._hold(data)
                    return
                if self._buffered:
                    self._deliver(data)
                    return
                try:
                    self._protocol.data_received(data)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            elif res == 0:
                if self._paused or self._held or self._gated or self._lent:
                    self._hold(_EOF)
                else:
                    self._on_eof()
            else:
                self._fatal_error(_oserror(res), "Fatal read error on socket transport")
        elif kind == K_DRAIN:
            self._on_drain()
        elif kind == K_SENDERR:
            self._fatal_error(_oserror(res), "Fatal write error on socket transport")
        elif kind == K_QUIESCED:
            self._quiesced()

    def _on_drain(self) -> None:
        """The buffer fell to the threshold we asked for: resume the protocol (which may write
        more: after close() too, e.g. the SSL layer's close_notify), then finish a pending
        close or sendfile once it is empty, or ask again."""
        if self._conn is None or self._c_closed:
            return
        self._maybe_resume_protocol()
        conn = self._conn
        if conn is None or self._c_closed:  # the protocol aborted
            return
        if conn.pending == 0 and not conn.error:
            waiter = self._empty_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if self._closing:
                self._conn_lost += 1
                self._c_close(False)
                self._schedule_lost(None)
            return
        self._want_drain()

    def _want_drain(self) -> None:
        """Ask C for a DRAIN event: at the low-water mark while the protocol is paused, at
        empty while a close or a sendfile waits for the flush."""
        conn = self._conn
        if conn is None or self._c_closed:
            return
        if self._protocol_paused:
            conn.notify_below = self._low_water
        elif self._closing or self._empty_waiter is not None:
            conn.notify_below = 0
        else:
            return
        if conn.pending <= conn.notify_below:  # no send completion would report it
            conn.notify_below = -1
            self._loop.call_soon(self._on_drain)

    def _reader_failed(self, exc: BaseException) -> None:
        self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    # ---- writing ----

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._write_ok and type(data) is bytes:
            n = mu_conn_send(self._conn, data, len(data))
            if n > self._high_water or n < 0:  # inline: this is the pure-Python hot path
                self._after_send(n)
            return
        self._write_slow(data)

    def _write_slow(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
            data = bytes(data)
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        conn = self._conn
        # after close() writes are still taken while the buffer flushes (asyncio does the
        # same: the SSL layer writes its close_notify when resumed); after that they are lost
        if self._conn_lost or conn is None or self._c_closed:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        self._after_send(mu_conn_send(conn, data, len(data)))

    def writelines(self, list_of_data: Any) -> None:
        """A (head, body) pair goes out without joining them (one sendmsg when the conn is
        idle, see mu_conn_send2); anything else is joined and written. The body may be a
        memoryview: what the socket does not take at once is copied, so a view lent only for
        the duration of this call (see ``reads_lent_views``) is safe here."""
        if self._write_ok and type(list_of_data) in (list, tuple) and len(list_of_data) == 2:
            a, b = list_of_data
            if type(a) is bytes:
                if type(b) is bytes:
                    self._after_send(mu_conn_send2(self._conn, a, len(a), b, len(b)))
                    return
                if type(b) is memoryview and b.contiguous:
                    self._after_send(mu_conn_send2(self._conn, a, len(a), ffi.from_buffer(b), b.nbytes))
                    return
        self.write(b"".join(list_of_data))

    def _after_send(self, n: int) -> None:
        """The C writer queued data past the high-water mark, or the send was refused."""
        if n > self._high_water:
            self._maybe_pause_protocol()
            if self._protocol_paused and self._conn is not None:
                self._conn.notify_below = self._low_water
        elif n < 0 and n != -errno.EPIPE:
            # the error also arrives as a SENDERR event; count like asyncio does
            self._conn_lost += 1

    def _drop_fast_writer(self) -> None:
        """Back to the Python write() (the C conn is closing or gone)."""
        if self._fast_write:
            self._fast_write = False
            w = self.__dict__.pop("write", None)
            if w is not None:
                w.detach()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        super().set_write_buffer_limits(high, low)
        if self._fast_write:
            fast: Any = self.write  # the C FastWriter (see _install_fast_writer)
            fast.high = self._high_water
        if self._protocol_paused and self._conn is not None:
            self._conn.notify_below = self._low_water

    def _make_empty_waiter(self) -> Any:
        """A future done once everything written so far is sent (loop.sendfile() waits on it
        before sending from the file on the socket itself); write() raises until reset."""
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = waiter = self._loop.create_future()
        self._write_ok = False
        self._drop_fast_writer()
        if self.get_write_buffer_size() == 0:
            waiter.set_result(None)
        else:
            self._want_drain()
        return waiter

    def _reset_empty_waiter(self) -> None:
        self._empty_waiter = None
        if not self._closing and not self._eof and self._conn is not None and not self._conn.error:
            self._write_ok = True
            self._install_fast_writer()

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        self._write_ok = False
        self._drop_fast_writer()
        if self._conn is not None:
            lib.mu_conn_shutdown(self._conn)

    def can_write_eof(self) -> bool:
        return True

    # ---- closing ----

    def close(self) -> None:
        """asyncio's order: stop reading; with nothing buffered, connection_lost() on the next
        iteration; otherwise flush first, still resuming the protocol and taking its writes."""
        if self._closing:
            return
        self._closing = True
        self._held = _NO_HELD
        self._readers.pop(self._recv_ud, None)
        conn = self._conn
        if conn is not None and conn.pending > 0 and not conn.error:
            mu_conn_recv_stop(conn)
            self._want_drain()
            return
        self._conn_lost += 1
        self._c_close(False)
        self._schedule_lost(None)

    def _c_close(self, abort: bool) -> None:
        """Hand the close to C (it flushes or drops its queue, then reports QUIESCED)."""
        self._c_closed = True
        self._write_ok = False
        self._drop_fast_writer()
        if self._conn is not None:
            lib.mu_conn_close(self._conn, 1 if abort else 0)

    def _schedule_lost(self, exc: BaseException | None) -> None:
        if not self._lost_scheduled:
            self._lost_scheduled = True
            self._loop.call_soon(self._call_connection_lost, exc)

    def abort(self) -> None:
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(
                {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
            )
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        """abort() and fatal errors: drop the buffer; connection_lost() on the next iteration
        (a no-op once connection_lost is already on its way, as in asyncio)."""
        if self._lost_scheduled:
            return
        self._aborted = True
        self._conn_lost += 1
        self._closing = True
        self._held = _NO_HELD
        self._readers.pop(self._recv_ud, None)
        self._c_close(True)
        self._schedule_lost(exc)

    def _quiesced(self) -> None:
        """C has no operation left on the fd (and freed its conn): the socket may be closed."""
        self._drop_fast_writer()
        self._conn = None
        self._write_ok = False
        loop = self._loop
        self._readers.pop(self._recv_ud, None)
        loop._handlers.pop(self._token, None)
        loop._conn_transports.pop(self._token, None)
        if self._lost_done:
            self._close_socket()
        else:
            self._schedule_lost(None)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._lost_done = True
            waiter = self._empty_waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError("Connection is closed by peer"))
            if self._conn is None:  # else on QUIESCED: the ring may still reference the fd
                self._close_socket()
            elif exc is not None and self._sock is not None:
                # a fatal error: the peer must see the end now, as with asyncio's close()
                # here, even if the loop stops before the ring lets go of the fd (a failed TLS
                # handshake makes create_connection() raise and run_until_complete() return at
                # once). Not for close() or a plain abort(): those must leave a dup of the
                # socket alive (the pools hand idle connections to the next worker on reload
                # as dups and close or abort their own copy).
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._protocol = None
            server = self._server
            if server is not None:
                self._server = None
                self._loop._server_detach(server, self)

    def _close_socket(self) -> None:
        sock = self._sock
        if sock is not None:
            asked = self._asked
            if asked:  # the addresses asked for stay answerable after the close, as in asyncio
                if self._extra is _NO_EXTRA:
                    self._extra = {}
                for bit, key, ask in ((1, "peername", sock.getpeername), (2, "sockname", sock.getsockname)):
                    if asked & bit:
                        try:
                            self._extra[key] = ask()
                        except OSError:
                            self._extra[key] = None
            self._sock = None
            registry = self._loop._transports
            if registry.get(self._sock_fd) is self:
                del registry[self._sock_fd]
            sock.close()

    def _ring_gone(self) -> None:
        """The loop closed under us: the C conn was freed with the ring (the caller closes the
        socket of a transport whose connection_lost has run)."""
        self._drop_fast_writer()
        self._conn = None
        self._closing = True
        self._c_closed = True
        self._write_ok = False

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            if self._conn is None:  # safe only once the ring no longer references the fd
                self._sock.close()


def _set_result_unless_cancelled(fut: Any, result: Any) -> None:
    if not fut.cancelled():
        fut.set_result(result)
