"""Thrift proxy (``proxy_type = "thrift"``) and HTTP-to-Thrift gateway (``"http_thrift"``).

The proxy never decodes a message body: it reads the message head (method name, type,
seqid) for routing and seqid remapping and passes the payload through. Modules:

- ``message``: message-head parsing, seqid rewrite, TApplicationException replies
- ``ttheader``: TTHeader decode/encode
- ``scan``: message boundaries of unframed binary streams
- ``framing``: per-connection incremental deframer (framed / TTHeader / unframed / auto)
- ``pool``: pooled, pipelining upstream connections with timeouts and ejection
- ``server``: the proxy's ServerHandle and downstream protocol
- ``gateway``: HTTP JSON -> Thrift gateway
"""
