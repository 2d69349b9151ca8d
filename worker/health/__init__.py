"""Active health checks of route upstreams (issue 15 §2): probes on their own connections,
rise/fall state per endpoint per worker, and the flag the balancers consult next to passive
ejection. ``watch_http`` / ``watch_thrift`` start checking a route; ``report`` is what the
heartbeat carries to the master (``monolaked status``, ``/metrics``)."""

from monolake.worker.health.group import HealthGroup, report
from monolake.worker.health.members import watch_http, watch_thrift

__all__ = ["HealthGroup", "report", "watch_http", "watch_thrift"]
