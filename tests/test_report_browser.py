"""The HTML report in a real headless browser: it loads offline with no console error and
every figure decodes (skipped where no Chromium is installed; `.ci/run` installs it)."""

import struct
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

import genval as gv  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from browser_support import Chromium, find_chromium, load_page  # noqa: E402

# Every stage on KDE members, sizes cut to seconds (as tests/test_runs.py).
TINY = {"quiet": True, "data": {"generate": {"n_events": 800}},
        "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
        "members": {"kind": "kde", "n_members": 3, "kde": {"bandwidth": 0.15}},
        "sample": {"n_events": 300},
        "coverage": {"n_datasets": 3, "n_events": 200, "n_generated": 400},
        "gof": {"n_kernels": 10, "n_toys": 6, "pool_size": 2000, "n_pools": 2},
        "report": {"formats": ["png"], "dpi": 40, "pool_size": 2000}}


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium to test the report in (apt-get install chromium, or set "
                    "GENVAL_CHROMIUM)")
    with Chromium(executable) as chromium:
        yield chromium


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def test_report_loads_offline_without_errors_and_every_figure_renders(browser, tmp_path):
    run = gv.run(config=TINY, run_dir=tmp_path / "run")
    html = run.report_path.read_text()
    shot = tmp_path / "report.png"
    page = load_page(browser, run.report_path, screenshot=shot)
    assert page.problems == []
    assert page.title == "genval report"
    # Every <img> of the file is in the page and decoded to a picture with pixels.
    assert len(page.images) == html.count("<img") >= 6  # marginals, 3 nulls, coverage, ŵ
    blank = [im["alt"] for im in page.images if not (im["complete"] and im["width"] > 0
                                                      and im["height"] > 0)]
    assert blank == []
    assert {"Null distribution, ensemble with uncertainty (paper Fig. 2)",
            "Coverage of the first moment per feature (paper Fig. 3)"} <= {
        im["alt"] for im in page.images}
    # The screenshot is the whole page.
    assert _png_size(shot) == (1200, page.height) and page.height > 900


def test_the_check_sees_what_a_broken_page_does(browser, tmp_path):
    # The same check on a page with each fault it looks for: it must report all of them.
    page = tmp_path / "broken.html"
    page.write_text("<html><head><title>broken</title></head><body>"
                    "<img alt='missing' src='missing.png'>"
                    "<img alt='remote' src='https://example.invalid/x.png'>"
                    "<script>console.error('boom'); undefinedFunction();</script>"
                    "</body></html>")
    report = load_page(browser, page)
    assert report.console_errors == ["console.error: boom"]
    assert len(report.exceptions) == 1 and "undefinedFunction" in report.exceptions[0]
    assert report.external_requests == ["https://example.invalid/x.png"]
    assert any("missing.png" in e for e in report.log_errors)
    assert {im["alt"] for im in report.images if im["width"] == 0} == {"missing", "remote"}
