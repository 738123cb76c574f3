"""`ovbench report`: the study's tables and figures from the results store, in one Markdown and
one self-contained HTML file.

What goes in, for the chosen benchmark: Table 2 with the published rows and deltas, Tables 3
and 4 and the size table where their runs exist, 95% bootstrap intervals over images where
the records have per-image counts, the figures (method comparison; size curve when at least
two sizes exist), per-class IoU with seen / unseen per evaluation set, and a provenance table
naming, for every number, its run id, config hash, code version, seed, hardware and time.

``report.md`` refers to the figures as files in ``figures/`` beside it; ``report.html`` embeds
them (PNG as data URIs) and its style sheet, so it opens offline with nothing fetched.
Everything is written atomically; a failure leaves no half-written report.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ovbench.errors import OvbenchError
from ovbench.fileio import atomic_write_text

__all__ = ["write_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .5em}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.paper td{color:#555;background:#fafafa}tr.Δ td{color:#036;font-style:italic}tr.retrained td{color:#666}
ul.notes{font-size:.85em;color:#555}img{max-width:100%;border:1px solid #ddd}code{background:#f4f4f4;padding:0 .2em}
""".strip()

_KIND_INTROS = {
    "main": "Table 2: every method and protocol on the benchmark's evaluation sets.",
    "ablation": "Table 3: GSNet's component ablations.",
    "trainset": "Table 4: GSNet trained on other training sets.",
    "size": "The numbers behind Fig. 5: GSNet against training-set size.",
}


def write_report(out_dir: str | Path, *, store_path: str | Path | None = None, benchmark: str | None = None,
                 resamples: int = 1000, console=None) -> list[Path]:
    """Write ``out_dir/report.md``, ``out_dir/report.html`` and ``out_dir/figures/``; returns
    the paths written."""
    from ovbench.registry import benchmark_names, load_benchmark
    from ovbench.results.reported import load_reported
    from ovbench.results.store import ResultStore, code_version
    from ovbench.results.study import build_study_tables, render_study_table, render_study_table_html, row_provenance

    store = ResultStore(store_path)
    records = store.read()
    if not records:
        raise OvbenchError(f"nothing to report: the results store {store.path} is empty (run `ovbench run` first)")
    specs = {name: load_benchmark(name) for name in benchmark_names()}
    study = load_reported()
    common: dict[str, Any] = dict(
        benchmark_sets={n: s.eval_sets for n, s in specs.items()},
        benchmark_train_sets={n: s.train_set for n, s in specs.items()}, benchmark=benchmark, study=study,
        store_path=store.path, resamples=resamples,
    )

    sections: list[tuple[str, str, list]] = []  # (kind, intro, tables)
    for kind in ("main", "ablation", "trainset", "size"):
        try:
            tables = build_study_tables(records, kind, with_reported=True, ci=True, **common)
        except OvbenchError:
            continue  # no runs of this kind: the section is left out, not printed empty
        if any(t.rows and t.benchmark != study.benchmark for t in tables) or any(
                row.source == "ovbench" for t in tables for row in t.rows):
            sections.append((kind, _KIND_INTROS[kind], tables))
    if not sections:
        raise OvbenchError("nothing to report: no records match (try --benchmark)")
    bench = sections[0][2][0].benchmark
    try:
        classes = build_study_tables(records, "classes", **common)
    except OvbenchError:
        classes = []

    out_dir = Path(out_dir)
    figures = _figures(records, bench, out_dir / "figures", common["benchmark_sets"], console)
    provenance = _provenance([row for _, _, tables in sections for t in tables for row in t.rows], row_provenance)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    header = {"generated": generated, "ovbench": code_version(), "store": str(store.path),
              "records": str(len(records)), "benchmark": bench}

    # ---- markdown
    md = [f"# ovbench report: {bench}", "", *(f"- {key}: `{value}`" for key, value in header.items()), ""]
    for kind, intro, tables in sections:
        md += [f"## {tables[0].title.split(' - ')[0]}", "", intro, ""]
        md += [render_study_table(t, "markdown") for t in tables]
    if figures:
        md += ["## Figures", ""]
        for title, png, _svg in figures:
            md += [f"### {title}", "", f"![{title}](figures/{png.name})", ""]
    if classes:
        md += ["## Per-class IoU, seen and unseen classes", ""]
        md += [render_study_table(t, "markdown") for t in classes]
    md += ["## Provenance", "", "Every reproduced number above comes from these records.", "",
           _markdown_rows(provenance), ""]

    # ---- html
    body = [f"<h1>ovbench report: {html.escape(bench)}</h1><ul>"
            + "".join(f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in header.items()) + "</ul>"]
    for kind, intro, tables in sections:
        body.append(f"<h2>{html.escape(tables[0].title.split(' - ')[0])}</h2><p>{html.escape(intro)}</p>")
        body += [render_study_table_html(t) for t in tables]
    if figures:
        body.append("<h2>Figures</h2>")
        for title, png, _svg in figures:
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            body.append(f"<h3>{html.escape(title)}</h3><img alt=\"{html.escape(title)}\" src=\"data:image/png;base64,{data}\">")
    if classes:
        body.append("<h2>Per-class IoU, seen and unseen classes</h2>")
        body += [render_study_table_html(t) for t in classes]
    body.append("<h2>Provenance</h2><p>Every reproduced number above comes from these records.</p>" + _html_rows(provenance))
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ovbench report: {html.escape(bench)}"
            f"</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")

    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md_path, "\n".join(md))
    atomic_write_text(html_path, page)
    return [md_path, html_path, *[path for _, png, svg in figures for path in (png, svg)]]


_PROVENANCE_COLUMNS = ("run_id", "eval_set", "seed", "iterations", "config_hash", "code_version", "hardware", "timestamp")


def _provenance(rows, row_provenance) -> list[dict[str, Any]]:
    seen: set[tuple] = set()
    out = []
    for row in rows:
        if row.source != "ovbench":
            continue
        for entry in row_provenance(row):
            key = (entry["run_id"], entry["eval_set"])
            if key not in seen:
                seen.add(key)
                out.append({"row": " / ".join(v for v in row.labels.values() if v), **entry})
    return out


def _markdown_rows(entries: list[dict[str, Any]]) -> str:
    columns = ("row", *_PROVENANCE_COLUMNS)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(e.get(c, "")).replace("|", "\\|") for c in columns) + " |" for e in entries]
    return "\n".join(lines)


def _html_rows(entries: list[dict[str, Any]]) -> str:
    columns = ("row", *_PROVENANCE_COLUMNS)
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(e.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for e in entries)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figures(records: list[dict], benchmark: str, folder: Path, benchmark_sets, console) -> list[tuple[str, Path, Path]]:
    """(title, png, svg) of each figure the records support: the methods compared per set, and
    the size curve of each method trained at two or more training-set sizes."""
    from ovbench.results import plots

    figures: list[tuple[str, Path, Path]] = []
    on_benchmark = [r for r in records if r.get("benchmark") == benchmark]
    main = [r for r in on_benchmark if "/" not in str(r.get("method"))]
    try:
        data = plots.compare_data(main, benchmark=benchmark, benchmark_sets=benchmark_sets)
    except OvbenchError as exc:
        if console is not None:
            console.print(f"report: no comparison figure ({exc})", highlight=False, markup=False)
    else:
        png, svg = plots.save_figure(plots.compare_figure(data), folder / "compare", "compare")
        figures.append((f"mIoU per evaluation set on {benchmark}", png, svg))
    trained = {(r.get("method"), r.get("protocol")) for r in on_benchmark if isinstance(r.get("train_size"), int)}
    for method, protocol in sorted(trained, key=str):
        sizes = {r.get("train_size") for r in on_benchmark if (r.get("method"), r.get("protocol")) == (method, protocol)}
        if len(sizes) < 2:
            continue
        try:
            data = plots.size_data(on_benchmark, method=method, protocol=protocol, benchmark=benchmark,
                                   benchmark_sets=benchmark_sets)
        except OvbenchError as exc:
            if console is not None:
                console.print(f"report: no size figure for {method} ({exc})", highlight=False, markup=False)
            continue
        stem = f"size-{str(method).replace('/', '-')}-{protocol}"
        png, svg = plots.save_figure(plots.size_figure(data), folder / stem, stem)
        figures.append((f"{method} ({protocol}): mIoU against training-set size", png, svg))
    return figures
