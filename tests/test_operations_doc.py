"""docs/operations.md has a section for every runbook link: the alert rules', the README's and its own."""

from __future__ import annotations

import re

import yaml

from tests.helpers import REPO

DOC = REPO / "docs" / "operations.md"


def anchors() -> set[str]:
    """GitHub's anchors for the headings: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_every_alert_runbook_has_its_section() -> None:
    rules = yaml.safe_load((REPO / "helm" / "ckpt-exporter" / "files" / "alerts.yaml").read_text())
    urls = {rule["annotations"]["runbook_url"] for group in rules["groups"] for rule in group["rules"]}
    wanted = {url.split("docs/operations.md#", 1)[1] for url in urls}
    assert wanted == {
        "ckptexporterdown",
        "ckptexporterjobdown",
        "ckptexporterapierrors",
        "ckptexporternonewcheckpoint",
        "ckptexportervalidlossrising",
        "ckptexportertraininglossdiverging",
        "ckptexporteroverfitting",
        "ckptexporterrewardgap",
        "ckptexportergradererrors",
        "ckptexporterrewardflat",
    }
    assert wanted <= anchors(), wanted - anchors()


def test_links_into_the_page_resolve() -> None:
    texts = [
        DOC.read_text(),
        (REPO / "README.md").read_text(),
        (REPO / "config" / "example.yaml").read_text(),
    ]
    links = {m for text in texts for m in re.findall(r"operations\.md#([\w\-]+)", text)}
    links |= set(re.findall(r"\]\(#([\w\-]+)\)", DOC.read_text()))
    assert "serving-metrics-over-tls-and-basic-auth" in links
    assert links <= anchors(), links - anchors()
