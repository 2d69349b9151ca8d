"""The worker's GC policy (monolake.worker.gcpolicy): young collections are rare, cycles are
still collected. Run in a fresh interpreter so this process's collector is left alone."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import gc, json
from monolake.worker.gcpolicy import GEN0_THRESHOLD, apply_gc_policy

before = gc.get_threshold()
apply_gc_policy()
after = gc.get_threshold()
runs = []
gc.callbacks.append(lambda phase, info: phase == "stop" and runs.append(info["collected"]))

class Node:
    def __init__(self):
        self.me = self  # a cycle: only the collector frees it

# acyclic churn, as a proxied request makes: freed by refcounting, no collection due
for _ in range(5 * GEN0_THRESHOLD):
    t = [{"a": (1, [2])}]
acyclic_runs = len(runs)
# cyclic garbage past the threshold: collected
for _ in range(3 * GEN0_THRESHOLD):
    Node()
print(json.dumps({"before": before, "after": after, "acyclic_runs": acyclic_runs,
                  "collected": sum(runs)}))
"""


def test_young_collections_are_rare_and_cycles_are_still_collected() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    doc = json.loads(out)
    from monolake.worker.gcpolicy import GEN0_THRESHOLD

    assert doc["after"] == [GEN0_THRESHOLD, doc["before"][1], doc["before"][2]]
    assert doc["acyclic_runs"] == 0
    assert doc["collected"] >= 2 * GEN0_THRESHOLD  # the Node cycles (2 objects each) went
