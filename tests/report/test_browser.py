"""Open the report in a real headless browser (Debian's chromium) and check the screenshot shows
the embedded figures. Skipped when no chromium is installed (``apt-get install chromium``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gradbench.report.render import render_report
from gradbench.report.style import estimator_color
from tests.conftest import browser
from tests.report.report_helpers import add_meeting, add_wallclock

BROWSER = browser()
WIDTH, HEIGHT = 1280, 3000


def _screenshot(html: Path, png: Path, profile: Path) -> None:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
           f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={png}", html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]


def _fraction_near(img: np.ndarray, hex_colour: str, tol: float = 0.08) -> float:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    return float((np.abs(img[..., :3] - rgb).max(axis=-1) < tol).mean())


@pytest.mark.needs("chromium")
def test_report_in_headless_chromium(base_run: Path, tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    add_meeting(run)
    add_wallclock(run)
    rep = render_report(run, tmp_path / "report")
    # viewed from another folder: the page must not depend on files beside it
    alone = tmp_path / "alone" / "index.html"
    alone.parent.mkdir()
    shutil.copy(rep.index, alone)
    shot = tmp_path / "shot.png"
    _screenshot(alone, shot, tmp_path / "profile")
    img = mpimg.imread(shot)
    assert img.shape[:2] == (HEIGHT, WIDTH)
    # the estimators' colours only come from the embedded figures: they were decoded and drawn
    for name in ("oracle", "elbo", "iwae"):
        assert _fraction_near(img, estimator_color(name)) > 2e-4, name
    # the page is not blank: a good share of non-white pixels (text, plots, tables)
    assert (img[..., :3].min(axis=-1) < 0.9).mean() > 0.02
    # negative control: the same page with its images removed shows none of the figure colours
    bare = tmp_path / "bare.html"
    text = alone.read_text()
    bare.write_text(re.sub(r'<img src="data:image/png;base64,[^"]+"', '<img src=""', text))
    shot2 = tmp_path / "shot2.png"
    _screenshot(bare, shot2, tmp_path / "profile2")
    img2 = mpimg.imread(shot2)
    assert _fraction_near(img2, estimator_color("iwae")) < 1e-5


PAGE_WIDTH = 1400  # a laptop-size window: the page must fit it without horizontal scrolling
MEASURE = ('<script>window.addEventListener("load", () => {{ const p = document.createElement("pre"); '
           'p.id = "measured"; p.textContent = "SCROLLWIDTH=" + document.documentElement.scrollWidth + " WINDOW=" '
           '+ document.documentElement.clientWidth; document.body.appendChild(p); }});</script>{extra}</body>')


def _page_width(html: Path, tmp: Path, extra: str = "") -> tuple[int, int]:
    """(document scroll width, viewport width) of ``html`` laid out by chromium in a 1400 px window."""
    probe = tmp / f"probe-{html.stem}-{len(extra)}.html"
    probe.write_text(html.read_text().replace("</body>", MEASURE.format(extra=extra)))
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'profile-dom'}",
           f"--window-size={PAGE_WIDTH},1000", "--virtual-time-budget=5000", "--dump-dom", probe.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r"SCROLLWIDTH=(\d+) WINDOW=(\d+)", proc.stdout)
    assert proc.returncode == 0 and found, proc.stderr[-2000:]
    return int(found.group(1)), int(found.group(2))


@pytest.mark.skipif(BROWSER is None, reason="no chromium installed (apt-get install chromium)")
def test_report_has_no_horizontal_overflow_at_1400px(base_run: Path, tmp_path: Path) -> None:
    """The whole report (its widest tables included: they scroll inside their own box) fits a 1400 px window;
    control: the same page with one 2000 px-wide element overflows, so the measurement can tell."""
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    add_meeting(run)
    add_wallclock(run)
    rep = render_report(run, tmp_path / "report", dpi=60)
    scroll, window = _page_width(rep.index, tmp_path)
    assert window <= PAGE_WIDTH and scroll <= window, (scroll, window)
    wide, window = _page_width(rep.index, tmp_path, '<div style="width:2000px">wide</div>')
    assert wide > window, (wide, window)
