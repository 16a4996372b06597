"""CITATION.cff and the README's BibTeX agree with each other and with the package version."""

import re
from pathlib import Path

import yaml

import genval

ROOT = Path(__file__).resolve().parents[1]


def _bibtex() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"```bibtex\n(.*?)```", readme, flags=re.S).group(1)


def test_citation_file_is_current():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["version"] == genval.__version__
    bib = re.sub(r"\s+", " ", _bibtex())
    for paper in [cff["preferred-citation"], *cff["references"]]:
        # The same title (BibTeX braces and math aside) and every author, in both files.
        title = re.sub(r"[{}$]", "", paper["title"])
        assert title in re.sub(r"[{}$]", "", bib), title
        for author in paper["authors"]:
            assert f"{author['family-names']}, {author['given-names']}" in bib
    assert f"version = {{{genval.__version__}}}" in bib


def test_bibtex_entries_are_well_formed():
    bib = _bibtex()
    entries = re.findall(r"@(\w+)\{(\w+),(.*?)\n\}", bib, flags=re.S)
    assert [key for _, key, _ in entries] == ["badaracco_genval", "benevedes_thaler_wifi",
                                               "genval"]
    for _, key, body in entries:
        assert body.count("{") == body.count("}"), key
        fields = set(re.findall(r"(\w+)\s*=\s*\{", body))
        assert {"title", "author"} <= fields, key
