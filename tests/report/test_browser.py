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
