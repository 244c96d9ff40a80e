"""The dashboard's SVG charts, read back as XML: bars per bucket, lines broken at gaps, a nice
y-axis maximum, tooltips, 15-minute ticks, escaping and the empty state."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest

from outbox.dashboard.charts import bar_chart, line_chart

NS = {"svg": "http://www.w3.org/2000/svg"}
START = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
END = START + dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)


def at(minute: int) -> dt.datetime:
    return START + minute * MINUTE


def bars(points: dict[dt.datetime, float], label: str = "Throughput") -> ET.Element:
    return ET.fromstring(
        bar_chart(points, start=START, end=END, step=MINUTE, label=label, unit="events/min")
    )


def lag_svg(points: dict[dt.datetime, float]) -> str:
    return line_chart(points, start=START, end=END, step=MINUTE, label="Lag", unit="lag")


def lines(points: dict[dt.datetime, float]) -> ET.Element:
    return ET.fromstring(lag_svg(points))


def height(rect: ET.Element) -> float:
    return float(rect.attrib["height"])


def y_labels(svg: ET.Element) -> list[str]:
    """The y-axis labels from bottom to top."""
    texts = svg.findall("svg:text[@text-anchor='end']", NS)
    return [t.text or "" for t in sorted(texts, key=lambda t: -float(t.attrib["y"]))]


def test_one_bar_per_bucket_with_heights_proportional_to_values() -> None:
    svg = bars({at(0): 100.0, at(1): 400.0, at(59): 50.0})
    rects = svg.findall("svg:rect[@class='bar']", NS)
    assert len(rects) == 60
    assert height(rects[1]) == pytest.approx(4 * height(rects[0]), abs=0.2)
    assert height(rects[0]) == pytest.approx(2 * height(rects[59]), abs=0.2)
    assert float(rects[0].attrib["x"]) < float(rects[1].attrib["x"]) < float(rects[59].attrib["x"])


def test_a_missing_bucket_is_a_zero_height_bar() -> None:
    rects = bars({at(0): 10.0, at(2): 10.0}).findall("svg:rect[@class='bar']", NS)
    assert height(rects[1]) == 0
    assert height(rects[0]) > 0
    assert rects[1].findtext("svg:title", namespaces=NS) == "10:01 UTC: 0 events/min"


@pytest.mark.parametrize(
    ("peak", "labels"),
    [
        (730.0, ["0", "250", "500", "750", "1k"]),
        (1500.0, ["0", "500", "1k", "1.5k", "2k"]),
        (3_400_000.0, ["0", "2.5M", "5M"]),
        (0.4, ["0", "0.25", "0.5", "0.75", "1"]),
    ],
)
def test_the_y_axis_tops_at_a_nice_maximum(peak: float, labels: list[str]) -> None:
    svg = bars({at(5): peak})
    assert y_labels(svg) == labels
    assert len(svg.findall("svg:line[@class='grid']", NS)) == len(labels) - 1


def test_the_tallest_bar_reaches_its_share_of_the_nice_maximum() -> None:
    svg = bars({at(5): 730.0})
    top_line = min(float(line.attrib["y1"]) for line in svg.findall("svg:line[@class='grid']", NS))
    bar = svg.findall("svg:rect[@class='bar']", NS)[5]
    baseline = float(bar.attrib["y"]) + height(bar)
    assert height(bar) == pytest.approx(0.73 * (baseline - top_line), abs=0.2)


def test_tooltips_carry_the_utc_time_and_the_formatted_value() -> None:
    local = dt.timezone(dt.timedelta(hours=2))
    svg = bars({at(42).astimezone(local): 1234.0})
    titles = [r.findtext("svg:title", namespaces=NS) for r in svg.findall("svg:rect", NS)]
    assert titles[42] == "10:42 UTC: 1,234 events/min"
    assert svg.attrib["aria-label"] == "Throughput: peak 1,234 events/min at 10:42 UTC"


def test_x_ticks_every_fifteen_minutes() -> None:
    svg = bars({at(0): 1.0})
    ticks = svg.findall("svg:text[@text-anchor='middle']", NS)
    assert [t.text for t in ticks] == ["10:00", "10:15", "10:30", "10:45", "11:00"]
    xs = [float(t.attrib["x"]) for t in ticks]
    assert xs[1] - xs[0] == pytest.approx(xs[4] - xs[3], abs=0.2)


def test_x_ticks_follow_the_clock_for_an_unaligned_longer_window() -> None:
    start = dt.datetime(2024, 5, 1, 9, 7, tzinfo=dt.UTC)
    end, step = start + dt.timedelta(hours=6), dt.timedelta(minutes=5)
    svg = ET.fromstring(
        bar_chart({start: 1.0}, start=start, end=end, step=step, label="T", unit="x")
    )
    assert len(svg.findall("svg:rect[@class='bar']", NS)) == 72
    ticks = [t.text for t in svg.findall("svg:text[@text-anchor='middle']", NS)]
    assert ticks == ["10:00", "12:00", "14:00"]


def test_text_is_escaped() -> None:
    svg_text = bar_chart(
        {at(0): 1.0}, start=START, end=END, step=MINUTE, label="<script>x</script>", unit="a&b"
    )
    assert "<script>" not in svg_text
    svg = ET.fromstring(svg_text)
    assert svg.findtext("svg:title", "", NS).startswith("<script>x</script>: ")
    assert svg.findall("svg:rect", NS)[0].findtext("svg:title", "", NS).endswith("1 a&b")


@pytest.mark.parametrize("points", [{}, {at(3): 0.0}])
def test_bars_without_events_show_the_empty_text(points: dict[dt.datetime, float]) -> None:
    svg = bars(points)
    assert svg.findtext("svg:text[@class='empty']", namespaces=NS) == "no events in this period"
    assert not svg.findall("svg:rect", NS)
    assert svg.findall("svg:line[@class='grid']", NS)


def test_a_line_breaks_into_two_segments_around_a_gap() -> None:
    svg = lines({at(m): 2.0 for m in range(10) if m != 4})
    segments = svg.findall("svg:polyline[@class='line']", NS)
    assert [len(s.attrib["points"].split()) for s in segments] == [4, 5]
    assert len(svg.findall("svg:circle[@class='dot']", NS)) == 9


def test_a_lone_point_is_a_dot_without_a_line() -> None:
    svg = lines({at(0): 1.0, at(1): 1.0, at(30): 4.2})
    assert len(svg.findall("svg:polyline", NS)) == 1
    dots = svg.findall("svg:circle[@class='dot']", NS)
    assert [d.findtext("svg:title", namespaces=NS) for d in dots][-1] == "10:30 UTC: 4.2s lag"


def test_lag_is_formatted_as_a_duration() -> None:
    svg = lines({at(0): 0.35, at(1): 190.0})
    assert y_labels(svg) == ["0s", "50s", "1m40s", "2m30s", "3m20s"]
    titles = [d.findtext("svg:title", namespaces=NS) for d in svg.findall("svg:circle", NS)]
    assert titles == ["10:00 UTC: 350ms lag", "10:01 UTC: 3m10s lag"]
    circles = svg.findall("svg:circle", NS)
    assert float(circles[0].attrib["cy"]) > float(circles[1].attrib["cy"])


def test_lines_without_points_show_the_empty_text() -> None:
    svg = lines({})
    assert svg.findtext("svg:text[@class='empty']", namespaces=NS) == "no deliveries in this period"
    assert not svg.findall("svg:polyline", NS)
    assert not svg.findall("svg:circle", NS)


def test_output_is_deterministic_and_rounded() -> None:
    points = {at(m): m * 1.37 for m in range(0, 60, 3)}
    first = lag_svg(points)
    assert first == lag_svg(dict(reversed(points.items())))
    for dot in ET.fromstring(first).findall("svg:circle", NS):
        assert len(dot.attrib["cy"].partition(".")[2]) == 1
