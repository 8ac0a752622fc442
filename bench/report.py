"""The benchmark's results as data, the targets as PASS/MISS, and their text, Markdown and JSON.

Pure functions of plain values: no timing, no TensorFlow, so the formatting is unit tested.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Comparison = Literal[">=", "<="]


@dataclass(frozen=True)
class Figure:
    """One measured (or derived) number, with how it was obtained."""

    section: str
    name: str
    value: float | None
    unit: str
    how: str = ""


@dataclass(frozen=True)
class Target:
    """A goal from issue 6: `figure comparison threshold`; None when it could not be measured."""

    name: str
    figure: float | None
    comparison: Comparison
    threshold: float
    unit: str
    why: str = ""

    @property
    def status(self) -> str:
        if self.figure is None or math.isnan(self.figure):
            return "N/A"
        ok = (
            self.figure >= self.threshold
            if self.comparison == ">="
            else self.figure <= self.threshold
        )
        return "PASS" if ok else "MISS"


@dataclass
class Report:
    mode: str
    machine: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    not_measured: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, section: str, name: str, value: float | None, unit: str, how: str = "") -> None:
        self.figures.append(Figure(section, name, value, unit, how))

    def value(self, name: str) -> float | None:
        """The value of the figure called `name` (None when absent or unmeasured)."""
        for figure in self.figures:
            if figure.name == name:
                return figure.value
        return None


def format_value(value: float | None) -> str:
    """Three significant figures, thousands separated; '-' for a figure that was not measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    return f"{value:.3g}"


def format_duration(seconds: float | None) -> str:
    """'2 h 05 min', '7.5 min' or '42 s'."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds >= 3600:
        hours, rest = divmod(round(seconds), 3600)
        return f"{hours} h {rest // 60:02d} min"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.2f} s"


def _by_section(figures: list[Figure]) -> list[Figure]:
    """Figures grouped by section in section order ("1. ...", "2. ..."), each in its own order."""
    return sorted(figures, key=lambda f: f.section)


def _cell(figure: Figure) -> str:
    text = format_value(figure.value)
    if figure.unit == "s" and figure.value is not None and figure.value >= 120:
        text += f" ({format_duration(figure.value)})"
    return text


def target_line(target: Target) -> str:
    figure = format_value(target.figure)
    line = (
        f"{target.status:4}  {target.name}: {figure} {target.unit} "
        f"(target {target.comparison} {target.threshold:g} {target.unit})"
    )
    return f"{line}; {target.why}" if target.why else line


def format_text(report: Report) -> str:
    """A fixed-width table for the terminal, grouped by section, then the targets."""
    figures = _by_section(report.figures)
    rows = [(f.name, _cell(f), f.unit, f.how) for f in figures]
    widths = [
        max([len(r[i]) for r in rows] + [len(h)]) for i, h in enumerate(("figure", "value", "unit"))
    ]
    lines = [f"benchmark ({report.mode}) on {report.machine.get('summary', 'this machine')}"]
    section = None
    for figure, row in zip(figures, rows, strict=True):
        if figure.section != section:
            section = figure.section
            lines.append(f"\n[{section}]")
        name, value, unit, how = row
        lines.append(
            f"  {name:<{widths[0]}}  {value:>{widths[1]}}  {unit:<{widths[2]}}  {how}".rstrip()
        )
    lines.append("\n[targets]")
    lines += [f"  {target_line(t)}" for t in report.targets]
    if report.not_measured:
        lines.append("\n[not measured]")
        lines += [f"  - {item}" for item in report.not_measured]
    if report.notes:
        lines.append("\n[notes]")
        lines += [f"  - {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def format_markdown(report: Report, level: int = 2) -> str:
    """The same report as Markdown tables (docs/BENCHMARKS.md, bench/results/latest.md), its
    headings at `level` (2: `##`)."""
    heading = "#" * level
    lines = [f"{heading} Machine ({report.mode} run)", ""]
    for key, value in report.machine.items():
        if key != "summary":
            lines.append(f"- **{key}**: {_md_escape(str(value))}")
    section = None
    for figure in _by_section(report.figures):
        if figure.section != section:
            section = figure.section
            lines += [
                "",
                f"{heading} {section}",
                "",
                "| figure | value | unit | how |",
                "|---|---:|---|---|",
            ]
        lines.append(
            f"| {_md_escape(figure.name)} | {_cell(figure)} | {figure.unit} | "
            f"{_md_escape(figure.how)} |"
        )
    lines += [
        "",
        f"{heading} Targets",
        "",
        "| status | target | figure | goal | why |",
        "|---|---|---:|---|---|",
    ]
    for t in report.targets:
        lines.append(
            f"| **{t.status}** | {_md_escape(t.name)} | {format_value(t.figure)} {t.unit} | "
            f"{t.comparison} {t.threshold:g} {t.unit} | {_md_escape(t.why)} |"
        )
    if report.not_measured:
        lines += ["", f"{heading} Not measured", ""]
        lines += [f"- {_md_escape(i)}" for i in report.not_measured]
    if report.notes:
        lines += ["", f"{heading} Notes", ""] + [f"- {_md_escape(n)}" for n in report.notes]
    return "\n".join(lines) + "\n"


# --- docs/BENCHMARKS.md: the latest run of each kind of machine -------------------------------

# Each run on the page starts with this line; the page is the record (no JSON is kept).
BLOCK = re.compile(r"^<!-- bench run: kind=(?P<kind>.*); mode=(?P<mode>\w+); "
                   r"date=(?P<date>[^;]*) -->$", re.MULTILINE)  # fmt: skip


def machine_kind(machine: dict[str, Any]) -> str:
    """What makes two machines' figures comparable: the CPU and its SIMD flags (an AVX2 and an
    AVX512_BF16 EPYC run the job at different precisions)."""
    return f"{machine.get('cpu', 'unknown CPU')}, {machine.get('simd flags') or 'no SIMD flags'}"


def docs_block(report: Report) -> str:
    """One run's part of the page: its marker, a title naming the machine, the report."""
    kind, date = machine_kind(report.machine), report.machine.get("date (UTC)", "")
    what = "full run" if report.mode == "full" else f"`--{report.mode}` run"
    return (
        f"<!-- bench run: kind={kind}; mode={report.mode}; date={date} -->\n"
        f"## {_md_escape(kind)}: {what}, {date}\n\n{format_markdown(report, level=3)}"
    )


def merge_docs(page: str, report: Report, header: str) -> str:
    """The page with `report`'s run in place of the last of its kind and mode; the other
    kinds' runs stay. A full run includes the scale part, so it also replaces an older `--scale`
    run of its kind."""
    blocks: dict[tuple[str, str], tuple[str, str]] = {}
    marks = list(BLOCK.finditer(page))
    ends = [mark.start() for mark in marks[1:]] + [len(page)] * bool(marks)
    for mark, end in zip(marks, ends, strict=True):
        key = (mark["kind"], mark["mode"])
        blocks[key] = (mark["date"], page[mark.start() : end].rstrip() + "\n")
    kind, date = machine_kind(report.machine), report.machine.get("date (UTC)", "")
    blocks[(kind, report.mode)] = (date, docs_block(report))
    if report.mode == "full" and blocks.get((kind, "scale"), (date,))[0] <= date:
        blocks.pop((kind, "scale"), None)
    ordered = sorted(blocks, key=lambda key: (key[0], key[1] != "full", key[1]))
    return header + "\n".join(blocks[key][1] for key in ordered)


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def to_json(report: Report) -> str:
    payload = {
        "version": 1,
        "mode": report.mode,
        "machine": report.machine,
        "figures": [asdict(f) for f in report.figures],
        "targets": [{**asdict(t), "status": t.status} for t in report.targets],
        "not_measured": report.not_measured,
        "notes": report.notes,
    }
    return json.dumps(_finite(payload), indent=1, allow_nan=False, default=str) + "\n"


def from_json(text: str) -> Report:
    """The Report a to_json text holds (to re-render docs from a saved run)."""
    payload = json.loads(text)
    return Report(
        mode=payload["mode"],
        machine=payload["machine"],
        figures=[Figure(**f) for f in payload["figures"]],
        targets=[
            Target(**{k: v for k, v in t.items() if k != "status"}) for t in payload["targets"]
        ],
        not_measured=payload["not_measured"],
        notes=payload["notes"],
    )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def images_per_dollar(images_per_second: float | None, usd_per_hour: float | None) -> float | None:
    """Images trained per dollar of VM time: img/s x 3600 s/h / ($/h)."""
    if images_per_second is None or not usd_per_hour:
        return None
    return images_per_second * 3600.0 / usd_per_hour
