"""Engine cost without sockets: a client and a server session exchanging GET/200 in batches.

Run: ``python -m tests.h2.bench_sessions [requests]``. Prints microseconds per exchange (both
sessions together, one process), the number quoted in docs/http2.md. Not collected by pytest.
"""

from __future__ import annotations

import sys
import time

from monolake.worker.h2 import H2ClientSession, H2ServerSession
from monolake.worker.h2.events import DataReceived, RequestReceived

REQ = [
    (":method", "GET"),
    (":scheme", "http"),
    (":authority", "127.0.0.1"),
    (":path", "/"),
    ("user-agent", "h2load"),
    ("accept", "*/*"),
]


def exchange(n: int, batch: int = 100) -> float:
    s, c = H2ServerSession(), H2ClientSession()
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    done = 0
    start = time.perf_counter()
    while done < n:
        for _ in range(batch):
            c.send_request(REQ, end_stream=True)
        for ev in s.receive_data(c.data_to_send()):
            if isinstance(ev, RequestReceived):
                s.send_headers(ev.stream_id, [(":status", "200"), ("content-length", "5")])
                s.send_data(ev.stream_id, b"hello", end_stream=True)
        for ev in c.receive_data(s.data_to_send()):
            if isinstance(ev, DataReceived):
                c.acknowledge_received_data(ev.stream_id, ev.flow_controlled_length)
                done += 1
        s.pop_events()
        c.pop_events()
    return (time.perf_counter() - start) / done * 1e6


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    sys.stdout.write(f"{exchange(n):.1f} us per exchange (client + server sessions)\n")
