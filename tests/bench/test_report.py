"""Targets, number formatting and the three output formats of the benchmark report."""

from __future__ import annotations

import json

import pytest

from bench import report as report_lib
from bench.report import Report, Target


def sample() -> Report:
    report = Report(mode="full", machine={"summary": "AMD EPYC, 2 CPUs", "cpu": "AMD EPYC"})
    report.add("1. Input pipeline", "first epoch", 61.234, "img/s", "4750 PNGs")
    report.add("1. Input pipeline", "cached / first", 123.4, "x")
    report.add("3. End to end", "guide recipe", 7265.0, "s", "extrapolated | 20 epochs")
    report.add("3. End to end", "peak RSS", None, "GiB")
    report.targets.append(Target("cached vs first", 123.4, ">=", 10, "x"))
    report.targets.append(Target("peak RSS", 7.5, "<=", 6, "GiB", "decoded copies"))
    report.targets.append(Target("GPU utilisation", None, ">=", 90, "%", "no GPU"))
    report.not_measured.append("GPU figures: no GPU")
    return report


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (Target("a", 10.0, ">=", 10, "x"), "PASS"),
        (Target("a", 9.99, ">=", 10, "x"), "MISS"),
        (Target("a", 6.0, "<=", 6, "GiB"), "PASS"),
        (Target("a", 6.01, "<=", 6, "GiB"), "MISS"),
        (Target("a", None, ">=", 90, "%"), "N/A"),
        (Target("a", float("nan"), ">=", 90, "%"), "N/A"),
    ],
)
def test_target_status_compares_the_figure_with_the_threshold(target: Target, status: str):
    assert target.status == status


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (12345.6, "12,346"), (123.4, "123"), (12.34, "12.3"), (1.234, "1.23"),
     (0.01234, "0.0123"), (0.0, "0")],
)  # fmt: skip
def test_values_print_with_three_significant_figures(value: float | None, text: str):
    assert report_lib.format_value(value) == text


def test_durations_read_in_the_largest_sensible_unit():
    assert report_lib.format_duration(7265) == "2 h 01 min"
    assert report_lib.format_duration(450) == "7.5 min"
    assert report_lib.format_duration(42) == "42 s"


def test_text_table_groups_by_section_and_lists_targets_and_gaps():
    text = report_lib.format_text(sample())
    assert "[1. Input pipeline]" in text and "[3. End to end]" in text
    assert "7,265 (2 h 01 min)" in text
    assert "PASS  cached vs first: 123 x (target >= 10 x)" in text
    assert "MISS  peak RSS: 7.50 GiB (target <= 6 GiB); decoded copies" in text
    assert "N/A   GPU utilisation" in text
    assert "- GPU figures: no GPU" in text


def test_markdown_escapes_pipes_and_marks_status_in_bold():
    markdown = report_lib.format_markdown(sample())
    assert "| guide recipe | 7,265 (2 h 01 min) | s | extrapolated \\| 20 epochs |" in markdown
    assert "| **MISS** | peak RSS | 7.50 GiB | <= 6 GiB | decoded copies |" in markdown
    assert "- **cpu**: AMD EPYC" in markdown


def test_json_keeps_every_figure_and_writes_missing_values_as_null():
    report = sample()
    report.add("x", "nan figure", float("nan"), "%")
    payload = json.loads(report_lib.to_json(report))
    assert payload["figures"][0] == {
        "section": "1. Input pipeline", "name": "first epoch", "value": 61.234, "unit": "img/s",
        "how": "4750 PNGs",
    }  # fmt: skip
    assert payload["figures"][-1]["value"] is None
    assert [t["status"] for t in payload["targets"]] == ["PASS", "MISS", "N/A"]


def test_images_per_dollar_is_rate_times_an_hour_over_the_hourly_price():
    assert report_lib.images_per_dollar(100.0, 0.5916) == pytest.approx(100 * 3600 / 0.5916)
    assert report_lib.images_per_dollar(100.0, None) is None
    assert report_lib.images_per_dollar(None, 0.5) is None


def test_ratio_is_none_when_a_side_is_missing_or_zero():
    assert report_lib.ratio(30.0, 10.0) == 3.0
    assert report_lib.ratio(None, 10.0) is None
    assert report_lib.ratio(3.0, 0.0) is None


def test_a_saved_json_report_reads_back_to_the_same_report():
    report = sample()
    assert report_lib.from_json(report_lib.to_json(report)) == report


def _run_of(cpu: str, flags: str, mode: str, date: str, figure: float) -> Report:
    report = Report(mode=mode, machine={"cpu": cpu, "simd flags": flags, "date (UTC)": date})
    report.add("1. Input pipeline", "first epoch", figure, "img/s")
    return report


HEADER = "# Benchmarks\n\nintro\n\n"


def test_the_page_keeps_the_last_run_of_each_kind_of_machine():
    avx2 = _run_of("AMD EPYC", "avx2 fma", "full", "2026-11-27 14:01", 100.0)
    bf16 = _run_of("AMD EPYC", "avx512f avx512_bf16 avx2 fma", "full", "2026-12-02 06:11", 168.0)
    page = report_lib.merge_docs("", avx2, HEADER)
    page = report_lib.merge_docs(page, bf16, HEADER)
    assert page.startswith(HEADER)
    assert page.count("<!-- bench run: ") == 2
    assert "## AMD EPYC, avx2 fma: full run, 2026-11-27 14:01" in page
    assert "## AMD EPYC, avx512f avx512_bf16 avx2 fma: full run, 2026-12-02 06:11" in page
    assert "### Machine (full run)" in page and "| first epoch | 168 | img/s |  |" in page
    # A newer run of one kind replaces that kind's only.
    again = _run_of("AMD EPYC", "avx2 fma", "full", "2026-12-03 09:00", 120.0)
    page = report_lib.merge_docs(page, again, HEADER)
    assert page.count("<!-- bench run: ") == 2
    assert "| first epoch | 100 |" not in page
    assert "| first epoch | 120 |" in page and "| first epoch | 168 |" in page


def test_a_scale_run_sits_beside_the_full_run_until_a_newer_full_run_replaces_it():
    full = _run_of("AMD EPYC", "avx2 fma", "full", "2026-12-01 10:00", 100.0)
    scale_run = _run_of("AMD EPYC", "avx2 fma", "scale", "2026-12-02 10:00", 300.0)
    page = report_lib.merge_docs(report_lib.merge_docs("", full, HEADER), scale_run, HEADER)
    assert page.index("full run, 2026-12-01") < page.index("`--scale` run, 2026-12-02")
    older_full = _run_of("AMD EPYC", "avx2 fma", "full", "2026-11-30 10:00", 90.0)
    assert "`--scale` run" in report_lib.merge_docs(page, older_full, HEADER)
    newer_full = _run_of("AMD EPYC", "avx2 fma", "full", "2026-12-03 10:00", 110.0)
    page = report_lib.merge_docs(page, newer_full, HEADER)
    assert "`--scale` run" not in page and page.count("<!-- bench run: ") == 1


def test_markdown_headings_go_one_level_down_inside_a_machines_part():
    markdown = report_lib.format_markdown(sample(), level=3)
    assert "### Machine (full run)" in markdown and "### 1. Input pipeline" in markdown
    assert "\n## " not in markdown
