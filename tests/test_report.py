"""`ovbench report` on a toyland run: both files, the study tables and provenance in them, and
an HTML page that loads nothing from elsewhere."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

from cli_process import TRAINABLE, assert_one_error_line, ovbench


class Resources(HTMLParser):
    """Every URL the page would fetch: src/href attributes and url(...) in styles."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.images = 0

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)
        self.images += tag == "img"


def test_report_on_a_toyland_run(tmp_path):
    home = tmp_path / "home"
    run = ovbench(home, "run", "--method", TRAINABLE, "--run-id", "toy", "-q", "train.iters=3")
    assert run.returncode == 0, run.stderr
    out = tmp_path / "report"
    proc = ovbench(home, "report", "--out", str(out), "--resamples", "100")
    assert proc.returncode == 0, proc.stderr
    markdown = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    records = [json.loads(line) for line in (home / "results.jsonl").read_text().splitlines()]
    for text in (markdown, page):
        assert "Table 2" in text and "toyland-urban" in text
        assert "Per-class IoU" in text and "seen" in text
        for record in records:  # provenance: every record's run, hash and code version
            assert record["run_id"] in text and record["config_hash"] in text and record["code_version"] in text
        assert "45.75" in text  # the published GSNet row, as its own table (another benchmark)
        assert re.search(r"\[\d+\.\d\d, \d+\.\d\d\]", text)  # bootstrap intervals in the cells
    parser = Resources()
    parser.feed(page)
    assert all(url.startswith("data:") for url in parser.urls), parser.urls
    assert parser.images >= 1 and (out / "figures" / "compare.png").is_file()  # the figure, embedded
    assert "![" in markdown and "figures/compare.png" in markdown
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert page.startswith("<!DOCTYPE html>")


def test_report_of_an_empty_store_is_one_error_line(tmp_path):
    proc = ovbench(tmp_path / "home", "report", "--out", str(tmp_path / "r"))
    assert_one_error_line(proc, "nothing to report", "is empty")
    assert not (tmp_path / "r").exists()
