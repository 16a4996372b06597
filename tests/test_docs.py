"""The documentation site: every public module has an API page in the nav, `mkdocs build
--strict` passes (skipped without the `docs` extra), and the example notebooks run (slow)."""

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

import genval

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "examples" / "notebooks").glob("*.ipynb"))


def _public_modules() -> list[str]:
    return [name for name in genval.__all__
            if isinstance(getattr(genval, name), types.ModuleType)]


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    return [p for item in node for p in _nav_pages(item)]


class _Loader(yaml.SafeLoader):
    """Reads mkdocs.yml, whose ``!ENV`` tags a plain safe loader refuses."""


_Loader.add_constructor("!ENV", lambda loader, node: None)


def _mkdocs_config() -> dict:
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)


def test_every_public_module_has_an_api_page_in_the_nav():
    nav = _nav_pages(_mkdocs_config()["nav"])
    missing = []
    for name in _public_modules():
        page = ROOT / "docs" / "api" / f"{name}.md"
        if not page.is_file() or f"::: genval.{name}\n" not in page.read_text():
            missing.append(f"docs/api/{name}.md")
        elif f"api/{name}.md" not in nav:
            missing.append(f"api/{name}.md in the nav of mkdocs.yml")
    assert missing == []
    for page in nav:  # and the nav names only pages that exist
        assert (ROOT / "docs" / page).exists(), page


def test_every_notebook_is_in_the_nav_and_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nav = _nav_pages(_mkdocs_config()["nav"])
    assert len(NOTEBOOKS) >= 2
    for path in NOTEBOOKS:
        assert f"notebooks/{path.name}" in nav, path.name
        book = nbformat.read(path, as_version=4)
        nbformat.validate(book)
        # Outputs are made when the site is built: the stored notebook is the source only.
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in book.cells if c.cell_type == "code"), path.name


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None
                    or importlib.util.find_spec("mkdocstrings") is None
                    or importlib.util.find_spec("mkdocs_jupyter") is None,
                    reason="the docs extra is not installed (pip install -e '.[docs]')")
def test_mkdocs_build_is_strict_clean(tmp_path):
    # Notebooks are rendered without running them here (the slow test below runs them).
    env = {**os.environ, "GENVAL_DOCS_EXECUTE": "false", "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d",
                           str(site)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    wifi = (site / "api" / "wifi" / "index.html").read_text()
    assert "fit_weights" in wifi and "WeightFit" in wifi and "density_std" in wifi
    runs = (site / "api" / "runs" / "index.html").read_text()
    assert "load_run" in runs
    assert (site / "images" / "report.png").is_file()
    assert "images/report.png" in (site / "pipeline" / "index.html").read_text()
    for path in NOTEBOOKS:
        assert (site / "notebooks" / path.stem / "index.html").is_file(), path.name
    # Where a browser is installed: the pages load offline (no font service, no CDN) cleanly.
    sys.path.insert(0, str(Path(__file__).parent))
    from browser_support import Chromium, find_chromium, load_page

    executable = find_chromium()
    if executable is not None:
        with Chromium(executable) as browser:
            for page in ("index.html", "api/wifi/index.html",
                         f"notebooks/{NOTEBOOKS[0].stem}/index.html"):
                report = load_page(browser, site / page, settle=0.1)
                assert report.problems == [], page
                assert all(im["width"] > 0 for im in report.images), page


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_displays_results(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    book = nbformat.read(path, as_version=4)
    # The kernel imports this checkout's genval, installed or not; it runs in tmp_path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    client = nbclient.NotebookClient(book, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    # The results display as tables (genval.display): a fit and a test at least.
    assert any("WeightFit" in h for h in html), "no WeightFit table"
    assert any("GoFResult" in h for h in html), "no GoFResult table"
    assert any("genval run" in h for h in html), "no Run display"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure"
