"""The HTML report of a real two-round run: its plots are PNGs, its pairs are the run's, it is one
self-contained file, and headless Chromium renders it with every image loaded."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import sys
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rationale_loop.views import plots
from rationale_loop.views.html_report import write_report
from rationale_loop.run.rundir import read_rounds
from rationale_loop.run.records import Generation, JsonlRecords, Pair, read_jsonl

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT_IDS = ("plot-accuracy", "plot-pairs", "plot-rates", "plot-ranking", "plot-loss", "plot-lengths")
PLOTS = {
    "accuracy": lambda run: plots.accuracy_png(read_rounds(run)),
    "pairs": lambda run: plots.pairs_png(read_rounds(run)),
    "rates": lambda run: plots.rates_png(read_rounds(run)),
    "ranking": lambda run: plots.ranking_png(read_rounds(run)),
    "loss": lambda run: plots.loss_png(plots.train_histories(run, [0, 1, 2])),
    "lengths": lambda run: plots.lengths_png(*plots.all_pair_lengths(run, [1, 2])),
}
# Appended to a copy of the report only (the report has no script): after the load event, the body
# records how many images decoded, which --dump-dom then shows.
IMAGES_LOADED_PROBE = (
    "<script>addEventListener('load', () => { const images = [...document.images];"
    " document.body.dataset.imagesLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length"
    " + '/' + images.length; });</script>"
)


class Dom(HTMLParser):
    """What the tests look at in a page: elements by id, the rounds of the .pair elements, text chunks."""

    def __init__(self, page: str):
        super().__init__()
        self.by_id: dict[str, tuple[str, dict[str, str]]] = {}
        self.pair_rounds: list[str] = []
        self.texts: list[str] = []
        self.body: dict[str, str] = {}
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = {name: value or "" for name, value in attrs}
        if "id" in attrs:
            self.by_id[attrs["id"]] = (tag, attrs)
        if "pair" in attrs.get("class", "").split():
            self.pair_rounds.append(attrs.get("data-round", ""))
        if tag == "body":
            self.body = attrs

    def handle_data(self, data):
        self.texts.append(data)


def png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG_SIGNATURE)
    return struct.unpack(">II", png[16:24])  # the IHDR chunk: width, height


def embedded_png(dom: Dom, plot_id: str) -> bytes:
    tag, attrs = dom.by_id[plot_id]
    assert tag == "img" and attrs.get("alt")
    prefix = "data:image/png;base64,"
    assert attrs["src"].startswith(prefix)
    return base64.b64decode(attrs["src"][len(prefix):])


@pytest.fixture(scope="module")
def report(two_round_run, tmp_path_factory) -> Path:
    # Written beside the run, not into it: other tests share the run and expect it as the loop left it.
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert write_report(two_round_run, out) == out
    return out


# -- plots ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PLOTS)
def test_each_plot_is_a_png(two_round_run, name):
    width, height = png_size(PLOTS[name](two_round_run))
    assert 300 <= width <= 2000 and 200 <= height <= 2000


def test_pair_lengths_are_the_token_counts_of_the_paired_samples(two_round_run):
    chosen, rejected = plots.pair_lengths(two_round_run, 1)
    round_dir = two_round_run / "round_01"
    pairs = list(JsonlRecords(round_dir / "pairs.jsonl", Pair))
    tokens = {(g.question_id, g.sample_index): g.num_tokens for g in JsonlRecords(round_dir / "generations.jsonl", Generation)}
    assert chosen == [tokens[(p.question_id, p.chosen_sample_index)] for p in pairs]
    assert rejected == [tokens[(p.question_id, p.rejected_sample_index)] for p in pairs]


# -- the page as written -------------------------------------------------------------------------------
def test_report_has_the_table_every_plot_and_the_pairs_of_both_rounds(report, two_round_run):
    page = report.read_text()
    dom = Dom(page)
    for plot_id in PLOT_IDS:
        png_size(embedded_png(dom, plot_id))
    assert {"1", "2"} <= set(dom.pair_rounds)
    first = next(read_jsonl(two_round_run / "round_02" / "pairs.jsonl"))
    assert first["chosen"] in dom.texts and first["rejected"] in dom.texts
    assert 'class="rounds"' in page and "0 (SFT)" in dom.texts


def test_report_table_shows_each_rounds_diagnostics(report, two_round_run):
    """Whether each round's ranking reached the weights, with the accuracy's standard error."""
    from rationale_loop.views.report import format_value, standard_error

    texts = Dom(report.read_text()).texts
    for title in ("own pairs ranked right before", "ranked right after", "margin s_c - s_r before", "mean s_c (chosen) before",
                  "rank term, first step", "rank term, last step", "optimizer steps", "train items"):
        assert title in texts, title
    for k in (1, 2):
        metrics = json.loads((two_round_run / f"round_{k:02d}" / "metrics.json").read_text())
        for key in ("pairs_ranked_right_before", "pairs_ranked_right_after", "pair_margin_before", "chosen_score_after", "rank_term_last"):
            assert metrics[key] is not None and format_value(metrics[key]) in texts, (k, key)
        error = standard_error(metrics["eval_accuracy"], metrics["eval_questions"])
        assert f"{format_value(metrics['eval_accuracy'])} ± {error:.3f}" in texts


def test_report_is_self_contained_without_scripts(report):
    page = report.read_text()
    assert "<script" not in page and "<link" not in page and "http://" not in page and "https://" not in page
    for _, attrs in Dom(page).by_id.values():
        assert attrs.get("src", "data:").startswith("data:")


def test_pairs_shown_are_the_first_n_of_each_round(two_round_run, tmp_path):
    page = write_report(two_round_run, tmp_path / "three.html", pairs_per_round=3).read_text()
    dom = Dom(page)
    assert dom.pair_rounds == ["1"] * 3 + ["2"] * 3
    for k in (1, 2):
        for row in list(read_jsonl(two_round_run / f"round_{k:02d}" / "pairs.jsonl"))[:3]:
            assert row["chosen"] in dom.texts
    assert write_report(two_round_run, tmp_path / "again.html", pairs_per_round=3).read_text() == page


def test_model_output_is_escaped(two_round_run, tmp_path):
    run = tmp_path / "hostile"
    shutil.copytree(two_round_run / "round_00", run / "round_00", ignore=shutil.ignore_patterns("checkpoint"))
    shutil.copytree(two_round_run / "round_01", run / "round_01", ignore=shutil.ignore_patterns("checkpoint"))
    rows = read_rounds(two_round_run)[:2]
    (run / "rounds.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    pairs = list(read_jsonl(run / "round_01" / "pairs.jsonl"))
    pairs[0]["chosen"] = "<script>alert('x')</script> & <b>bold</b>"
    (run / "round_01" / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    page = write_report(run).read_text()
    assert "<script" not in page and "<b>bold</b>" not in page
    assert escape(pairs[0]["chosen"]) in page


def test_a_run_with_only_sft_has_plots_and_no_pairs(two_round_run, tmp_path):
    run = tmp_path / "sft_only"
    shutil.copytree(two_round_run / "round_00", run / "round_00", ignore=shutil.ignore_patterns("checkpoint"))
    (run / "rounds.jsonl").write_text(json.dumps(read_rounds(two_round_run)[0]) + "\n")
    dom = Dom(write_report(run).read_text())
    for plot_id in PLOT_IDS:
        png_size(embedded_png(dom, plot_id))
    assert dom.pair_rounds == []


def test_the_ranking_plot_says_no_round_mined_a_pair_and_an_sft_only_run_has_no_round_yet(two_round_run):
    rows = read_rounds(two_round_run)
    unpaired = [rows[0], *({**row, "pairs": 0, "pairs_ranked_right_before": None, "pairs_ranked_right_after": None} for row in rows[1:])]
    for shown, note in ((unpaired, plots.NO_PAIRS), (rows[:1], plots.NO_ROUNDS_YET)):
        assert [text.get_text() for text in plots.ranking_figure(shown).axes[0].texts] == [note]


def test_the_chain_table_says_chain_checking_is_off_and_shows_its_steps_when_on(report, two_round_run, tmp_path):
    from rationale_loop.views.html_report import EMPTY_TABLES

    title = "Arithmetic steps of the samples (verify.chain)"
    texts = Dom(report.read_text()).texts
    assert EMPTY_TABLES[title] in texts and title not in texts, "the small run checks no steps"
    run = tmp_path / "chain"
    shutil.copytree(two_round_run, run, ignore=shutil.ignore_patterns("checkpoint"))
    rows = [{**row, "steps_checked": 40 + row["round"]} if row["round"] else row for row in read_rounds(two_round_run)]
    (run / "rounds.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    texts = Dom(write_report(run).read_text()).texts
    assert title in texts and EMPTY_TABLES[title] not in texts and "41" in texts and "42" in texts


def test_a_run_with_no_finished_round_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no finished round"):
        write_report(tmp_path / "empty")
    assert not (tmp_path / "empty" / "report.html").exists()


def test_report_command_writes_the_page_and_says_where(two_round_run, tmp_path):
    run = tmp_path / "runs" / "cli"
    shutil.copytree(two_round_run, run, ignore=shutil.ignore_patterns("checkpoint"))
    done = subprocess.run([sys.executable, "-m", "rationale_loop", "report", f"output_root={run.parent}", "run=cli"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"wrote {run / 'report.html'}" in done.stdout
    assert "plot-accuracy" in (run / "report.html").read_text()


# -- rendered in headless Chromium ---------------------------------------------------------------------
@pytest.fixture(scope="session")  # session-scoped, so that it skips before the run is trained
def chromium():
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium not found: `make test` installs Debian's chromium (apt-get install chromium)")
    return binary


def run_chromium(binary: str, page: Path, profile: Path, *options: str) -> str:
    """Headless Chromium on a local file with a throwaway profile; nothing is fetched from the network."""
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
               *options, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_chromium_loads_every_image_and_shows_the_pairs(chromium, report, two_round_run, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", IMAGES_LOADED_PROBE + "</body>"))
    dom = Dom(run_chromium(chromium, probe, tmp_path / "profile", "--dump-dom"))
    assert dom.body.get("data-images-loaded") == f"{len(PLOT_IDS)}/{len(PLOT_IDS)}"
    width, height = png_size(embedded_png(dom, "plot-accuracy"))
    assert 300 <= width <= 2000 and 200 <= height <= 2000
    assert dom.pair_rounds.count("1") > 0 and dom.pair_rounds.count("2") > 0
    first = next(read_jsonl(two_round_run / "round_01" / "pairs.jsonl"))
    assert first["chosen"] in dom.texts


def test_chromium_screenshot_is_not_blank(chromium, report, tmp_path):
    import matplotlib.image

    shot = tmp_path / "shot.png"
    run_chromium(chromium, report, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,4000")
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (4000, 1280)
    assert pixels.std() > 0.01


# After layout, the body records the page's and the widest rounds table's width against the window's.
WIDTHS_PROBE = (
    "<script>addEventListener('load', () => { const tables = [...document.querySelectorAll('table.rounds')];"
    " document.body.dataset.widths = [window.innerWidth, document.documentElement.scrollWidth,"
    " Math.max(...tables.map(t => t.getBoundingClientRect().right)), tables.length].join(' '); });</script>"
)


def test_rounds_tables_fit_a_1400_pixel_window_with_every_column(chromium, report, tmp_path):
    from rationale_loop.views.html_report import EMPTY_TABLES, ROUND_TABLES
    from rationale_loop.run.rundir import ROUND_SUMMARY_KEYS

    page = report.read_text()
    # The small run checks no arithmetic steps: that table is a line saying so (the chain table test).
    said_off = {key for title, keys in ROUND_TABLES if title in EMPTY_TABLES for key in keys}
    for key in ROUND_SUMMARY_KEYS[1:]:
        assert f'<td class="{key}">' in page or key in said_off, key
    probe = tmp_path / "widths.html"
    probe.write_text(page.replace("</body>", WIDTHS_PROBE + "</body>"))
    dom = Dom(run_chromium(chromium, probe, tmp_path / "profile", "--window-size=1400,900", "--dump-dom"))
    window, scroll, right, tables = (float(v) for v in dom.body["data-widths"].split())
    assert window == 1400 and tables >= 2
    assert scroll <= window and right <= window, dom.body["data-widths"]
