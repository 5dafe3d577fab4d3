"""Human-readable reports of an evaluation summary (summary.py): Markdown (report.md, with the
histogram as reward_histogram.svg next to it) and one self-contained HTML page (report.html, the
SVG inline). The histogram is plain SVG written here, so reports need no plotting library."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

MAX_TASK_ROWS = 200


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def histogram_svg(edges: Sequence[float], counts: Sequence[int], *, width: int = 560, height: int = 220) -> str:
    """A bar chart of the reward histogram (summary["histogram"]) as a standalone SVG document."""
    left, right, top, bottom = 48, 12, 14, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    if not counts:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no finished rollouts</text></svg>')
        return "\n".join(parts)
    peak = max(counts) or 1
    bar_w = plot_w / len(counts)
    for i, c in enumerate(counts):
        h = plot_h * c / peak
        x, y = left + i * bar_w, top + plot_h - h
        label = f"{edges[i]:.3g} – {edges[i + 1]:.3g}: {c}"
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(1.0, bar_w - 2):.1f}" height="{h:.1f}" '
            f'fill="#4878cf"><title>{html.escape(label)}</title></rect>'
        )
    base = top + plot_h
    parts.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="black"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="black"/>')
    for value, anchor, x in ((edges[0], "start", left), (edges[-1], "end", left + plot_w)):
        parts.append(f'<text x="{x}" y="{base + 14}" text-anchor="{anchor}">{value:.3g}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">reward</text>')
    parts.append(f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{peak}</text>')
    parts.append(f'<text x="{left - 6}" y="{base}" text-anchor="end">0</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _sections(summary: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by both renderings."""
    counts, reward, errors, tokens = summary["counts"], summary["reward"], summary["errors"], summary["tokens"]
    overview = [
        ["rollouts", _fmt(counts["trajectories"]) + (f" of {counts['expected']}" if counts.get("expected") else "")],
        ["tasks", _fmt(counts["tasks"])],
        ["finished", _fmt(counts["finished"])],
        ["errored", _fmt(counts["errored"])],
        ["mean reward", _fmt(reward["mean"])],
        ["reward std / min / max", " / ".join(_fmt(reward[k]) for k in ("std", "min", "max"))],
    ]
    overview += [
        [f"pass@{k}", f"{_fmt(v)} ({summary['pass_at_k_tasks'][k]} tasks)"] for k, v in summary["pass_at_k"].items()
    ]
    overview.append(["pass threshold (reward ≥)", _fmt(summary["pass_threshold"])])
    sections = [("Overview", ["", "value"], overview)]
    if summary.get("by_env"):
        ks = sorted({k for e in summary["by_env"].values() for k in e["pass_at_k"]}, key=int)
        rows = [
            [
                env,
                str(e["trajectories"]),
                str(e["tasks"]),
                str(e["errored"]),
                _fmt(e["reward_mean"]),
                *(_fmt(e["pass_at_k"].get(k)) for k in ks),
            ]
            for env, e in summary["by_env"].items()
        ]
        header = ["environment", "rollouts", "tasks", "errored", "mean reward", *(f"pass@{k}" for k in ks)]
        sections.append(("Environments", header, rows))
    if summary["rewards"] or summary["metrics"]:
        rows = [[name, _fmt(v), "reward function"] for name, v in summary["rewards"].items()]
        rows += [[name, _fmt(v), "metric"] for name, v in summary["metrics"].items()]
        sections.append(("Reward functions and metrics (means over finished rollouts)", ["name", "mean", "kind"], rows))
    if errors["total"]:
        rows = [[e["source"], e["reason"], str(e["count"]), e["message"]] for e in errors["examples"]]
        sections.append((f"Errors ({errors['total']})", ["source", "reason", "count", "message"], rows))
    stop_rows = [[reason, str(n)] for reason, n in counts["stop_reasons"].items()]
    sections.append(("Stop reasons", ["reason", "rollouts"], stop_rows))
    token_rows = [
        ["prompt tokens (all model calls)", _fmt(tokens["prompt"])],
        ["completion tokens", _fmt(tokens["completion"])],
        ["model calls", _fmt(tokens["model_calls"])],
        ["completion tokens per rollout", _fmt(tokens["mean_completion_per_rollout"], 1)],
        ["turns per rollout", _fmt(tokens["mean_turns"], 2)],
    ]
    sections.append(("Tokens", ["", "value"], token_rows))
    timing_rows = [
        [part, *(_fmt(stats.get(k)) for k in ("mean", "p50", "p90", "p99", "max"))]
        for part, stats in summary["timing_s"].items()
        if stats
    ]
    sections.append(("Timings per rollout (s)", ["part", "mean", "p50", "p90", "p99", "max"], timing_rows))
    task_rows = [
        [
            t["task_id"],
            str(t["rollouts"]),
            str(t["errored"]),
            _fmt(t["mean_reward"]),
            _fmt(t["max_reward"]),
            f"{t['passed']}/{t['rollouts'] - t['errored']}",
        ]
        for t in summary["tasks"][:MAX_TASK_ROWS]
    ]
    shown = "" if len(summary["tasks"]) <= MAX_TASK_ROWS else f", first {MAX_TASK_ROWS} shown"
    sections.append(
        (
            f"Tasks ({len(summary['tasks'])}{shown})",
            ["task", "rollouts", "errored", "mean reward", "max reward", "passed"],
            task_rows,
        )
    )
    return sections


def _title(summary: dict[str, Any]) -> str:
    run = summary.get("run", {})
    return f"Evaluation {run.get('run_id', '')}: {run.get('env', '?')} with {run.get('model', '?')}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(summary: dict[str, Any], histogram_file: str | None = None) -> str:
    lines = [f"# {_title(summary)}", ""]
    run = summary.get("run", {})
    if run:
        lines += [", ".join(f"{k}: `{v}`" for k, v in run.items() if isinstance(v, str | int | float)), ""]
    for title, header, rows in _sections(summary):
        lines += [f"## {title}", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        lines.append("")
        if title == "Overview" and histogram_file:
            lines += ["## Reward histogram", "", f"![reward histogram]({histogram_file})", ""]
    return "\n".join(lines)


def render_html(summary: dict[str, Any]) -> str:
    esc = html.escape
    body = [f"<h1>{esc(_title(summary))}</h1>"]
    run = summary.get("run", {})
    if run:
        items = "".join(
            f"<li><b>{esc(k)}</b>: <code>{esc(str(v))}</code></li>"
            for k, v in run.items()
            if isinstance(v, str | int | float)
        )
        body.append(f"<ul>{items}</ul>")
    for title, header, rows in _sections(summary):
        body.append(f"<h2>{esc(title)}</h2><table><tr>{''.join(f'<th>{esc(h)}</th>' for h in header)}</tr>")
        body += [f"<tr>{''.join(f'<td>{esc(c)}</td>' for c in row)}</tr>" for row in rows]
        body.append("</table>")
        if title == "Overview":
            hist = summary["histogram"]
            body.append("<h2>Reward histogram</h2>" + histogram_svg(hist["edges"], hist["counts"]))
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:2px 8px;"
        "text-align:left;vertical-align:top}th{background:#f3f3f3}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(_title(summary))}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


__all__ = ["histogram_svg", "render_html", "render_markdown"]
