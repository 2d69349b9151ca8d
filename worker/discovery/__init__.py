"""Upstream discovery: host names and SRV records resolved per worker, kept fresh by TTL.

``dns`` does the lookups (dnspython), ``watch`` caches one name's answer and refreshes it in
the background, ``sources`` turns a configured upstream into its current targets. The HTTP
balancer (worker/http/upstream.py) owns the sources of its route. See docs/configuration.md
(``[resolver]``) and docs/architecture.md (discovery).
"""

from monolake.worker.discovery.watch import REGISTRY, configure

__all__ = ["REGISTRY", "configure"]
