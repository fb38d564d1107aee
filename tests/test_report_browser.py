"""The report as a person sees it: rendered in headless Chromium, every image loads and nothing
is wider than the window. Skipped, with the reason, where no Chromium is installed (on Debian:
``apt-get install chromium``)."""

import json
import re
import shutil
import subprocess

import pytest
from conftest import tiny_moco_fit, write_cifar

from contrastlab.app.cli import main
from contrastlab.app.report import write_report

BROWSER = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium / google-chrome on PATH")


def rendered_check(page, width: int) -> dict:
    """The page's own check (``report.PAGE_CHECK``) after headless Chromium loaded it."""
    command = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},900"]
    command += ["--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="page-check" hidden="">(.*?)</pre>', dom, re.S)
    assert found, f"the page's check did not run: {dom[-500:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


def test_the_report_of_a_tiny_run_renders_whole(tmp_path):
    write_cifar(tmp_path / "data", structured=True)
    runs = []
    for name, extra in (("a", []), ("b", ["--model.temperature", "0.2"])):
        main(tiny_moco_fit(tmp_path / name, tmp_path / "data", 2, *extra))
        runs.append(tmp_path / name)
    page = write_report(runs, tmp_path / "report")
    for width in (1400, 800):  # a desktop window and a narrow one
        check = rendered_check(page, width)
        assert check["broken"] == [] and check["images"] >= 6, check
        assert check["overflow"] is False, f"wider than a {width}-px window"
