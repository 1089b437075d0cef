"""`regionsync policy report`: the residency map, rendered in a real browser.

The page is built from the shipped policy with a row filter added, against the live
schema of a region, and opened in headless Chromium; the assertions read the DOM Chromium
built, cell by cell, and a screenshot is kept as the test's artefact (copied to
$REGIONSYNC_ARTEFACTS when that is set).
"""

from __future__ import annotations

import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

from tests.fix_browser import dump_dom, screenshot
from tests.fix_daemons import write_config
from tests.fix_pg import ROOT, Mesh
from tests.integration.helpers import cli

EU_RULE = "      to: [eu-*]\n"


class Cells(HTMLParser):
    """Every map cell's data attributes and text; the change list; the policy hash."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str, str], dict[str, str]] = {}
        self.changes: list[tuple[str, str]] = []
        self.sha = ""
        self._open: dict[str, str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if (tag == "td" and "data-state" in a) or (tag == "li" and "data-risk" in a) or \
                a.get("id") == "policy-sha":
            self._open, self._text = {"tag": tag, **a}, []

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._open is None or tag != self._open["tag"]:
            return
        a, text = self._open, "".join(self._text).strip()
        self._open = None
        if tag == "td":
            self.cells[(a["data-table"], a["data-column"], a["data-region"])] = {
                "state": a["data-state"], "title": a["title"], "text": text}
        elif tag == "li":
            self.changes.append((a["data-risk"], text))
        else:
            self.sha = text


def _policies(tmp_path: Path) -> tuple[Path, Path]:
    """The shipped policy with the EU contact rule filtered to Irish and Swedish people;
    and a risky edit of it (the medical classification of implant_serial removed)."""
    filtered = tmp_path / "filtered"
    shutil.copytree(ROOT / "policies", filtered, ignore=shutil.ignore_patterns("examples"))
    text = (filtered / "regionsync.yaml").read_text()
    assert EU_RULE in text
    (filtered / "regionsync.yaml").write_text(text.replace(
        EU_RULE, EU_RULE + "      rows: \"address1_country in ('IE', 'SE')\"\n"))
    risky = tmp_path / "risky"
    shutil.copytree(filtered, risky)
    text = (risky / "regionsync.yaml").read_text()
    (risky / "regionsync.yaml").write_text(text.replace(
        "contact.implant_serial: [medical, device]", "contact.implant_serial: [device]"))
    return filtered, risky


def test_the_residency_map_in_a_browser(mesh: Mesh, tmp_path: Path) -> None:
    filtered, risky = _policies(tmp_path)
    cfg = write_config(tmp_path / "west.yaml", "eu-west", mesh.urls["eu-west"],
                       {"eu-north": mesh.urls["eu-north"], "us-east": mesh.urls["us-east"]},
                       policy_dir=filtered)
    page = tmp_path / "report.html"
    made = cli("policy", "report", "--config", str(cfg), "--against",
               str(ROOT / "policies" / "examples" / "shared-mesh"), "-o", str(page))
    assert made.returncode == 0, made.stdout + made.stderr
    dom = Cells()
    dom.feed(dump_dom(page, tmp_path / "profile"))
    cells = dom.cells

    def cell(table: str, column: str, region: str) -> dict[str, str]:
        return cells[(table, column, region)]

    # every column of the live schema, for both destinations (the home region is not one)
    assert {r for _, _, r in cells} == {"eu-north", "us-east"}
    assert ("medicalcase", "diagnosis", "us-east") in cells
    # medical data stays home everywhere, and says why
    for region in ("eu-north", "us-east"):
        for table, column in (("contact", "medical_notes"), ("contact", "implant_serial"),
                              ("medicalcase", "diagnosis")):
            c = cell(table, column, region)
            assert c["state"] == "home" and "stays home" in c["text"], (table, column, c)
        assert "never leaves its region (medical)" in cell("contact", "medical_notes",
                                                           region)["title"]
    # EU contact details: to eu-north for matching rows only (the filter in words), never
    # to us-east
    email = cell("contact", "emailaddress1", "eu-north")
    assert email["state"] == "filtered"
    assert "only rows where address1_country is one of 'IE', 'SE'" in email["title"]
    assert "regionsync.yaml:" in email["title"]
    assert cell("contact", "emailaddress1", "us-east")["state"] == "home"
    assert cell("contact", "lastname", "us-east")["state"] == "crosses"
    assert cell("account", "name", "us-east")["state"] == "crosses"
    assert dom.sha and dom.sha in made.stdout
    # what changed against the open example: contact details stop crossing to us-east
    assert ("normal", "- contact.emailaddress1 → us-east") in dom.changes
    width, height = screenshot(page, tmp_path / "profile", tmp_path / "report.png")
    assert (width, height) == (1100, 1400)
    assert (tmp_path / "report.png").stat().st_size > 20_000      # a page, not a blank
    if os.environ.get("REGIONSYNC_ARTEFACTS"):
        shutil.copy(tmp_path / "report.png", os.environ["REGIONSYNC_ARTEFACTS"])

    # a weakened protection is marked HIGH RISK, first in the list
    risky_page = tmp_path / "risky.html"
    done = cli("policy", "report", "--config", str(cfg), "--policy-dir", str(risky),
               "--against", str(filtered), "-o", str(risky_page))
    assert done.returncode == 0, done.stdout + done.stderr
    dom = Cells()
    dom.feed(dump_dom(risky_page, tmp_path / "profile"))
    assert dom.changes[0][0] == "high"
    assert "classification of contact.implant_serial loses medical" in dom.changes[0][1]
    assert dom.cells[("contact", "implant_serial", "eu-north")]["state"] == "home"


def test_the_markdown_report(tmp_path: Path) -> None:
    out = cli("policy", "report", "--policy-dir", str(ROOT / "policies"), "--regions",
              "eu-north,us-east", "--format", "markdown")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "| table | column | eu-north | us-east |" in lines
    assert "| contact | `emailaddress1` (personal) | ✔ | ✖ |" in lines
    assert "| contact | `medical_notes` (medical) | ✖ | ✖ |" in lines
