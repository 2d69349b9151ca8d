"""scripts/chart.py: the PNG chart helper of the benchmark scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import chart  # noqa: E402

pytest.importorskip("matplotlib")

RESULTS = [
    {"server": "monolake", "body_size": 0, "rps": 41000.0},
    {"server": "nginx", "body_size": 0, "rps": 52000},
    {"server": "python", "body_size": 0, "rps": 9000.5},
    {"server": "monolake", "body_size": 16384, "rps": 30000.0},
    {"server": "nginx", "body_size": 16384, "rps": 45000.0},
    {"server": "monolake", "body_size": 1024, "rps": 39000.0},  # out of order, python missing
    {"server": "nginx", "body_size": 1024, "rps": 50000.0},
]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_write_chart_draws_every_bar(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn: list[tuple[str, list[float]]] = []
    real_bar = matplotlib.axes.Axes.bar

    def spy(self, x, height, *args, **kwargs):
        drawn.append((kwargs["label"], list(height)))
        return real_bar(self, x, height, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    out = chart.write_chart(RESULTS, tmp_path / "img" / "proxy.png", "HTTP proxy", "2 workers")
    width, height = png_size(out)
    assert width > 600 and height > 400
    assert drawn == [
        ("monolake", [41000.0, 39000.0, 30000.0]),
        ("nginx", [52000.0, 50000.0, 45000.0]),
        ("python", [9000.5]),
    ]


CPU_RESULTS = [
    {"server": "nginx", "body_size": 100, "rps": 50000.0, "cpu_us_per_req": 17.0},
    {"server": "monolake", "body_size": 100, "rps": 30000.0, "cpu_us_per_req": 30.0},
    {"server": "nginx", "body_size": 1 << 20, "rps": 900.0, "cpu_us_per_req": 560.0},
    {"server": "monolake", "body_size": 1 << 20, "rps": 800.0, "cpu_us_per_req": 650.0},
]


def test_cpu_panel_next_to_rps(tmp_path, monkeypatch):
    """Rows with cpu_us_per_req get a second panel with the CPU bars; a 1 MiB row next to a
    100 B one puts both panels on a log scale (the 100 B bars would vanish otherwise)."""
    import matplotlib.axes

    drawn: list[tuple[int, str, list[float]]] = []
    scales: dict[int, str] = {}
    real_bar, real_scale = matplotlib.axes.Axes.bar, matplotlib.axes.Axes.set_yscale

    def spy(self, x, height, *args, **kwargs):
        drawn.append((id(self), kwargs["label"], list(height)))
        return real_bar(self, x, height, *args, **kwargs)

    def spy_scale(self, value, *args, **kwargs):
        scales[id(self)] = value
        return real_scale(self, value, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    monkeypatch.setattr(matplotlib.axes.Axes, "set_yscale", spy_scale)
    out = chart.write_chart(CPU_RESULTS, tmp_path / "proxy.png", "HTTP proxy")
    width, height = png_size(out)
    assert width > 1200 and height > 400  # two panels side by side
    panels = list(dict.fromkeys(ax for ax, _, _ in drawn))
    assert len(panels) == 2
    by_panel = [[(label, h) for ax, label, h in drawn if ax == panel] for panel in panels]
    assert by_panel[0] == [("nginx", [50000.0, 900.0]), ("monolake", [30000.0, 800.0])]
    assert by_panel[1] == [("nginx", [17.0, 560.0]), ("monolake", [30.0, 650.0])]
    assert scales == {panels[0]: "log", panels[1]: "log"}
    assert chart.tabulate(CPU_RESULTS).cpu[("monolake", 100)] == 30.0


def test_no_cpu_no_second_panel(tmp_path):
    assert chart.tabulate(RESULTS).cpu == {}
    assert png_size(chart.write_chart(RESULTS, tmp_path / "x.png", "t"))[0] < 1200


def test_table_and_labels():
    table = chart.tabulate(RESULTS)
    assert table.servers == ["monolake", "nginx", "python"]
    assert table.sizes == [0, 1024, 16384]
    assert [chart.human_size(s) for s in (0, 1024, 1536, 1 << 20)] == ["0 B", "1 KiB", "1.5 KiB", "1 MiB"]
    assert chart.human_rate(41234) == "41k" and chart.human_rate(1500) == "1.5k"
    assert chart.colours(["monolake (io_uring)", "nginx"])["monolake (io_uring)"] == chart.COLOURS["monolake"]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "no results"),
        ([{"server": "a", "rps": 1}], "expected server, body_size and rps"),
        ([{"server": "a", "body_size": -1, "rps": 1}], "body_size"),
        ([{"server": "a", "body_size": 1, "rps": "fast"}], "rps"),
        ([{"server": "a", "body_size": 1, "rps": 1, "cpu_us_per_req": float("nan")}], "cpu_us_per_req"),
        (
            [{"server": "a", "body_size": 1, "rps": 1}, {"server": "a", "body_size": 1, "rps": 2}],
            "a second result",
        ),
    ],
)
def test_bad_results_are_refused(rows, message, tmp_path):
    with pytest.raises(chart.ChartError, match=message):
        chart.write_chart(rows, tmp_path / "x.png", "t")
    assert not (tmp_path / "x.png").exists()


def test_cli_from_json(tmp_path):
    source = tmp_path / "results.json"
    source.write_text(json.dumps({"title": "from the file", "results": RESULTS}))
    out = tmp_path / "chart.png"
    script = REPO / "scripts" / "chart.py"
    done = subprocess.run(
        [sys.executable, str(script), "--from-json", str(source), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert png_size(out)[0] > 600
    source.write_text(json.dumps({"rows": []}))
    bad = subprocess.run(
        [sys.executable, str(script), "--from-json", str(source), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "expected a list of results" in bad.stderr
