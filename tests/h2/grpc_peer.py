"""A real grpcio server with generic handlers (raw bytes in and out, no generated code): the
gRPC upstream for tests/h2/test_upstream_grpc.py.

``python -m tests.h2.grpc_peer --port P [--cert CHAIN --key KEY]``. ``/test.Echo/Unary`` answers the message reversed
with trailing metadata ``x-echo-len``; the message ``fail`` aborts with PERMISSION_DENIED,
``no entry`` and trailing metadata ``x-detail: custom``. ``/test.Echo/Stream`` (server
streaming) sends the message back N times, N = its first byte.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from concurrent import futures

import grpc  # type: ignore[import-untyped]  # grpcio ships no types; no stubs in the lint extra


def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"fail":
        context.set_trailing_metadata((("x-detail", "custom"),))
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "no entry")
    context.set_trailing_metadata((("x-echo-len", str(len(request))),))
    return request[::-1]


def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for _ in range(request[0] if request else 0):
        yield request
    context.set_trailing_metadata((("x-sent", str(request[0] if request else 0)),))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", help="PEM chain: serve TLS (grpcio offers ALPN h2 only)")
    ap.add_argument("--key")
    args = ap.parse_args()
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)],
    )
    server.add_generic_rpc_handlers((handler,))
    if args.cert:
        with open(args.cert, "rb") as c, open(args.key, "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        server.add_secure_port(f"127.0.0.1:{args.port}", creds)
    else:
        server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
