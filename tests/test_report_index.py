"""The results index (index.md + static index.html) over every protocol of an output folder, checked as text and,
where a Chromium binary exists, in a real headless browser (images decoded, tables in the DOM, page not blank)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from dplbench.cli import main
from dplbench.report import make_plots
from dplbench.report.index import build_index
from dplbench.workspace import Workspace
from test_report_tables import few_shot_records, toy_b2n_records, write_records

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Workspace:
    """Two protocols with a failed and a missing unit, plots drawn for both, then the index."""
    ws = Workspace.at(tmp_path_factory.mktemp("results"))
    records = write_records(ws.root, toy_b2n_records() + few_shot_records())
    for protocol in ("base2novel", "few_shot"):
        make_plots([r for r in records if r["unit"]["protocol"] == protocol], "all", ws.plots, protocol=protocol,
                   formats=("png",))
    build_index(ws.root)
    return ws


def test_index_merges_every_protocol(results):
    md = results.index_md.read_text(encoding="utf-8")
    html = results.index_html.read_text(encoding="utf-8")
    for text in (md, html):
        assert "base2novel (suite toy" in text and "few_shot (suite toy" in text
        assert f"mlflow ui --backend-store-uri {results.mlflow_uri}" in text
        assert "unit coop/toy_glyphs/shots16/seed2 failed: RuntimeError: CUDA out of memory" in text
        assert "DroPLe / toy_shapes: no result file for seed 3" in text
    # per-variant summary: CoOp has 5 finished and 1 failed result file; an incomplete Average is never a headline
    assert "| CoOp | 5 | 1 | — (hm, Average incomplete) |" in md
    assert "| CLIP | 6 | 0 | 65.00 (hm, Average) |" in md
    assert "![base2novel_base_novel_Average](plots/base2novel_base_novel_Average.png)" in md
    assert "![few_shot_few_shot_Average](plots/few_shot_few_shot_Average.png)" in md
    # self-contained HTML: two tables of results, every plot embedded, no link out of the folder for images
    assert html.count('<table class="results"') == 2
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == len(list(results.plots.glob("*.png"))) == 2


def test_plot_files_go_to_the_longest_matching_protocol():
    from dplbench.report.index import _owner

    protocols = ["long_tail_b2n", "long_tail_b2n_candle"]
    assert _owner("long_tail_b2n_candle_base_novel_Average", protocols) == "long_tail_b2n_candle"
    assert _owner("long_tail_b2n_base_novel_Average", protocols) == "long_tail_b2n"
    assert _owner("few_shot_few_shot_Average", protocols) is None


def test_table_command_writes_the_index(tmp_path, capsys):
    write_records(tmp_path, toy_b2n_records())
    assert main(["table", "protocol=base2novel", f"run.output_dir={tmp_path}", "report.n_boot=50"]) == 0
    ws = Workspace.at(tmp_path)
    assert f"index: {ws.index_html}" in capsys.readouterr().out
    md = ws.index_md.read_text(encoding="utf-8")
    assert "[base2novel.md](tables/base2novel.md)" in md and "No MLflow database" in md


def _chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


# a copy of the page gets this script: it writes each image's decoded size into the DOM for --dump-dom to show
IMAGE_PROBE = """<script>window.addEventListener("load", () => {
  const out = document.createElement("pre"); out.id = "image-probe";
  out.textContent = JSON.stringify([...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.width]));
  document.body.appendChild(out);
});</script>"""


def _browser(binary: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                           "--virtual-time-budget=5000", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(_chromium() is None, reason="no chromium/chrome binary on PATH (apt-get install chromium)")
def test_index_renders_in_headless_chromium(results, tmp_path):
    import numpy as np
    from matplotlib.image import imread

    binary = _chromium()
    probed = tmp_path / "index.html"
    probed.write_text(results.index_html.read_text(encoding="utf-8").replace("</body>", IMAGE_PROBE + "</body>"),
                      encoding="utf-8")
    dom = _browser(binary, "--dump-dom", probed.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('<table class="results"') == 2 and "<td>65.00 ± 0.30</td>" in dom.stdout
    probe = re.search(r'<pre id="image-probe">(.*?)</pre>', dom.stdout, re.S)
    assert probe, "the probe script did not run"
    images = json.loads(probe.group(1).replace("&quot;", '"'))
    assert len(images) == 2
    for alt, complete, natural_width, width in images:
        assert complete and natural_width > 300 and width > 0, (alt, natural_width, width)

    shot = tmp_path / "index.png"
    run = _browser(binary, f"--screenshot={shot}", "--window-size=1280,2400", results.index_html.as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1280)
    # text, table rules and plot colours: far from a blank (single-colour) page
    assert pixels.std() > 0.05 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def test_table_options_from_the_report_section(tmp_path, capsys):
    write_records(tmp_path, toy_b2n_records())
    args = ["table", "protocol=base2novel", f"run.output_dir={tmp_path}", "report.n_boot=50", "report.style=paper",
            "report.decimals=1", "report.formats=[tex]", "stats=none"]
    assert main(args) == 0
    tables = Workspace.at(tmp_path).tables
    assert sorted(p.name for p in tables.iterdir()) == ["base2novel.paper.tex"]
    tex = tables.joinpath("base2novel.paper.tex").read_text()
    assert tex.startswith("% dplbench table tab:base2novel-base2novel-paper: needs \\usepackage{booktabs}")
    assert "Toy Shapes" in tex and "$\\pm$" not in tex and "65.0 &" in tex
    # the default style writes its own files beside the paper ones, never over them
    assert main(["table", "protocol=base2novel", f"run.output_dir={tmp_path}", "report.n_boot=50"]) == 0
    assert sorted(p.name for p in tables.iterdir()) == ["base2novel.csv", "base2novel.md", "base2novel.paper.tex",
                                                        "base2novel.tex"]
    assert tables.joinpath("base2novel.paper.tex").read_text() == tex
    assert "$\\pm$" in tables.joinpath("base2novel.tex").read_text()
    assert "base2novel.paper.tex" in (tmp_path / "index.md").read_text()
    capsys.readouterr()
    for bad in ("report.style=fancy", "report.decimals=-1", "report.formats=[pdf]", "report.std=maybe"):
        assert main(["table", f"run.output_dir={tmp_path}", bad]) == 2
        assert bad.split("=")[0] in capsys.readouterr().err
