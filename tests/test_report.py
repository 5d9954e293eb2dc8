"""shed_jax.report: HTML report of a run directory built by the pipeline itself (so a change in what the
pipeline writes breaks these tests), then damaged in the ways a user's run directory can be."""
import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import hashing_embed
from shed_jax import run as shed_run
from shed_jax.report import write_report
from shed_jax.run.artifacts import Clusters, Selection, Values

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N_RECORDS = 40
K = 6
CATEGORIES = ("math", "geo", "words")


def _records(with_category: bool):
    records = []
    for i in range(N_RECORDS):
        topic = i % K
        record = {"instruction": f"Question number {i} about topic {topic}: what is {topic} plus {i}?", "input": "",
                  "output": f"The answer to question {i} is {topic + i}."}
        if with_category:
            record["category"] = CATEGORIES[topic % 3]
        records.append(record)
    records[0]["instruction"] = "<script>alert('x')</script> & more"
    records[-1] = dict(records[-2])  # an exact duplicate: dropped, label -1
    return records


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _build(base, *, with_category=True):
    """A real run (hashing embeddings, the real k-means, Shapley engine and embedding proxy)."""
    base.mkdir(parents=True, exist_ok=True)
    data = _write(base / "data.jsonl", _records(with_category))
    valid = _write(base / "valid.jsonl", [{"instruction": f"Held-out question {i}: what is {i} plus 1?", "input": "",
                                           "output": f"It is {i + 1}."} for i in range(12)])
    config = shed_run.RefineConfig(data=str(data), valid=str(valid), output=str(base / "out.jsonl"),
                                   run_dir=str(base / "run"), n_clusters=K, n_permutations=6, ratio=0.25, seed=7,
                                   proxy_options={"steps": 5}, proxies_per_cluster=1)
    with pytest.MonkeyPatch.context() as patch:
        from shed_jax import embed as embed_module

        patch.setattr(embed_module, "embed_texts", lambda texts, **_: hashing_embed(list(texts)))
        shed_run.refine(config, progress=False)
    return base / "run"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("report"))


@pytest.fixture
def run_dir(built, tmp_path):
    """A private copy of the built run directory (tests damage it)."""
    return shutil.copytree(built, tmp_path / "run")


def _images(document):
    payloads = re.findall(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', document)
    assert len(payloads) == document.count("<img")
    return [base64.b64decode(p, validate=True) for p in payloads]


def test_full_report_sections_images_and_escaping(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    document = path.read_text(encoding="utf-8")
    for section in ('id="config"', 'id="summary"', 'id="values"', 'id="convergence"', 'id="sizes"',
                    'id="composition"', 'id="clusters"', "Highest value", "Lowest value"):
        assert section in document, section
    images = _images(document)
    assert len(images) == 4  # values, convergence, size-vs-value, composition
    assert all(png.startswith(PNG_SIGNATURE) and len(png) > 1000 for png in images)
    assert "<script>" not in document  # the hostile instruction is escaped, never injected
    # nothing was missing; the one note says that this tiny run's utility does not move (12 validation items)
    assert document.count('class="note"') == 1 and 'id="verdict"' in document
    assert "qocs" in document and "ratio 0.25" in document and ">7<" in document
    # The top table's first row is the best cluster, with its proxy first.
    values, clusters = Values.load(run_dir), Clusters.load(run_dir)
    best = int(np.argmax(values.cluster_values))
    top_table = document.split("Highest value", 1)[1].split("Lowest value", 1)[0]
    first_row = top_table.split("<tr>")[2]
    assert f">{best}<" in first_row and "proxy" in first_row
    proxy = int(clusters.proxy_index[best])
    proxy_text = _records(True)[proxy]["instruction"]
    assert (proxy_text if "<" not in proxy_text else "&lt;script&gt;") in first_row
    # Composition counts: categories of the selected records (from the selection artifact).
    selected = Selection.load(run_dir).indices
    categories = np.array([r["category"] for r in _records(True)])
    math_row = document.split("<td>math</td>", 1)[1].split("</tr>", 1)[0]
    assert f"<td class='num'>{int((categories[selected] == 'math').sum()):,}</td>" in math_row


def test_the_report_never_reads_the_data_file(run_dir):
    data = json.loads((run_dir / "config.json").read_text())["config"]["data"]
    shutil.move(data, data + ".moved")
    try:
        document = write_report(run_dir).read_text(encoding="utf-8")
    finally:
        shutil.move(data + ".moved", data)
    assert document.count('class="note"') == document.count('id="verdict"') and "Question number" in document


def test_missing_convergence_gives_note(run_dir):
    (run_dir / "convergence.npz").unlink()
    document = write_report(run_dir).read_text(encoding="utf-8")
    convergence = document.split('id="convergence"', 1)[1].split("</section>", 1)[0]
    assert 'class="note"' in convergence and "convergence.npz not found" in convergence
    assert len(_images(document)) == 3


def test_missing_optional_pieces_and_custom_out(tmp_path):
    run_dir = _build(tmp_path / "nocat", with_category=False)
    for name in ("summary.json", "selection.json"):
        (run_dir / name).unlink()
    (run_dir / "clusters.npz").write_bytes(b"not a zip file")
    out = tmp_path / "elsewhere" / "r.html"
    out.parent.mkdir()
    assert write_report(run_dir, out=out) == out
    document = out.read_text(encoding="utf-8")
    assert "clusters.npz: unreadable .npz" in document
    assert "selection.json not found" in document and "No selection" in document
    assert len(_images(document)) == 2  # values and convergence only
    assert (run_dir / "report.html").stat().st_mtime < out.stat().st_mtime  # the run's own report untouched


def test_corrupt_values_and_examples_mismatch_are_notes(run_dir):
    (run_dir / "values.json").write_text("{not json", encoding="utf-8")
    examples = json.loads((run_dir / "examples.json").read_text())
    examples["members"] = examples["members"][:-1]
    (run_dir / "examples.json").write_text(json.dumps(examples))
    document = write_report(run_dir).read_text(encoding="utf-8")
    assert "values.json: not valid JSON" in document
    assert "examples.json does not match clusters.npz" in document
    assert 'id="convergence"' in document and len(_images(document)) == 1


def test_demo_ground_truth_is_shown(tmp_path):
    from shed_jax.run.artifacts import GroundTruth

    run_dir = _build(tmp_path / "gt")
    junk = np.zeros(N_RECORDS, bool)
    labels = Clusters.load(run_dir).labels
    junk[labels == labels[0]] = True  # one whole cluster is "junk"
    GroundTruth(junk, source="test").save(run_dir)
    document = write_report(run_dir).read_text(encoding="utf-8")
    candidates = labels >= 0
    assert "junk in input (demo)" in document and f"{100 * junk[candidates].mean():.1f}%" in document
    assert "tag junk" in document and "100%" in document


def test_missing_run_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        write_report(tmp_path / "nope")


def test_a_failing_section_leaves_the_rest(run_dir, monkeypatch):
    import shed_jax.report._html as report_html

    def broken(run):
        raise RuntimeError("plot <failed>")

    monkeypatch.setattr(report_html, "_plot_values", broken)
    document = write_report(run_dir).read_text(encoding="utf-8")
    assert "could not be drawn (RuntimeError: plot &lt;failed&gt;)" in document
    assert len(_images(document)) == 3 and 'id="clusters"' in document


def _with(values: Values, **changes) -> Values:
    fields = dict(cluster_values=values.cluster_values, stderr=values.stderr, n_permutations=values.n_permutations,
                  n_evaluations=values.n_evaluations, removal_step=values.removal_step, seed=values.seed,
                  utility=values.utility, u_full=values.u_full, u_empty=values.u_empty,
                  proxy_index=values.proxy_index)
    fields.update(changes)
    return Values(*fields.values())


def test_the_page_says_how_many_values_are_beyond_noise(run_dir):
    values = _with(Values.load(run_dir), n_permutations=40)  # significance is stated from 30 permutations on
    values.save(run_dir)
    beyond = int((np.abs(values.cluster_values) > 2 * values.stderr).sum())
    document = write_report(run_dir).read_text(encoding="utf-8")
    assert (f"{beyond:,} of {K:,} cluster values ({100 * beyond / K:.0f}%) lie more than 2 standard errors from "
            "zero (40 permutations)") in document
    _with(values, stderr=np.abs(values.cluster_values) + 1.0).save(run_dir)
    document = write_report(run_dir).read_text(encoding="utf-8")
    assert f"0 of {K} cluster values (0%)" in document and "Most values are within noise" in document


def test_significance_is_not_stated_with_few_permutations(run_dir):
    values = Values.load(run_dir)
    assert values.n_permutations == 6
    document = write_report(run_dir).read_text(encoding="utf-8")
    assert "lie more than 2 standard errors" not in document
    assert "With 6 permutations a standard error is itself too uncertain" in document
    assert "from 30 permutations on" in document


def test_u_full_minus_u_empty_is_shown_with_its_interval(run_dir):
    values = Values.load(run_dir)
    n_valid = values.utility["n_validation"]
    _with(values, u_full=0.9, u_empty=0.5, utility={**values.utility, "metric": "prob"}).save(run_dir)
    document = write_report(run_dir).read_text(encoding="utf-8")
    half = 2 * np.sqrt((0.9 * 0.1 + 0.5 * 0.5) / n_valid)
    assert f"U(full) − U(empty) = 0.9 − 0.5 = 0.4 ± {half:.4g} (2 standard errors, at most, of the {n_valid:,} "\
           "validation items)" in document
    assert 'id="verdict"' not in document


@pytest.mark.parametrize("u_full, u_empty, why", [
    (0.2967, 0.2979, "The utility does not move: with all the proxies it is 0.2967, not above the 0.2979"),
    (0.302, 0.2979, "change cannot be told from noise: with all the proxies it is 0.302 against 0.2979"),
])
def test_a_utility_that_does_not_move_is_said_first_in_plain_words(run_dir, u_full, u_empty, why):
    values = Values.load(run_dir)
    _with(values, u_full=u_full, u_empty=u_empty, n_permutations=64,
          utility={**values.utility, "metric": "prob", "n_validation": 50}).save(run_dir)
    document = write_report(run_dir).read_text(encoding="utf-8")
    headline = document.index(why)
    assert headline < document.index("Run configuration") and headline < document.index("lie more than 2 standard")
    assert why in document
    for change in ("validation set", "--proxy", "--permutations"):
        assert change in document[headline:headline + 1200]


def test_the_report_of_a_directory_without_a_run_is_refused(tmp_path):
    from shed_jax.errors import PipelineError

    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(PipelineError, match="not a shed run directory"):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_hundreds_of_clusters_are_drawn_as_a_ranked_band_not_error_bars(monkeypatch):
    from matplotlib.axes import Axes

    from shed_jax.report._load import ReportData
    from shed_jax.report._plots import _plot_values

    calls = []
    for name in ("errorbar", "fill_between"):
        real = getattr(Axes, name)
        monkeypatch.setattr(Axes, name, lambda self, *a, _real=real, _name=name, **k: calls.append(_name)
                            or _real(self, *a, **k))
    rng = np.random.default_rng(0)
    for k, expected in ((40, "errorbar"), (1000, "fill_between")):
        calls.clear()
        data = ReportData(run_dir=None, values=rng.normal(size=k), stderr=np.full(k, 0.1))
        assert base64.b64decode(_plot_values(data)).startswith(PNG_SIGNATURE)
        assert set(calls) == {expected}, (k, calls)


# ------------------------------------------------------------------------------------------------------
# numbers for people, fonts, log ticks, and the page as a browser draws it (issue 11)
# ------------------------------------------------------------------------------------------------------


def test_cards_show_numbers_for_people(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["seconds_total"] = 72.31
    document = Path(write_report(run_dir, summary=summary)).read_text(encoding="utf-8")
    cards = dict(re.findall(r'<div class="k">([^<]*)</div><div class="v">([^<]*)</div>', document))
    assert cards["run time"] == "1 min 12 s"
    assert "seconds" not in cards and "value range" not in cards
    for key in ("lowest cluster value", "highest cluster value", "utility (no data)"):
        mantissa = re.sub(r"e[-+]\d+$", "", cards[key])
        digits = re.sub(r"[^0-9]", "", mantissa).lstrip("0")
        assert 1 <= len(digits) <= 3, (key, cards[key])  # at most 3 significant digits
    assert "white-space: nowrap" in document.split(".card .v", 1)[1].split("}", 1)[0]


def test_the_css_lists_cjk_capable_fonts_before_the_generic_family(run_dir):
    document = Path(write_report(run_dir)).read_text(encoding="utf-8")
    body_font = document.split("body {", 1)[1].split("}", 1)[0]
    for font in ('"Noto Sans CJK SC"', '"Source Han Sans SC"', '"PingFang SC"', '"Microsoft YaHei"'):
        assert font in body_font
    assert body_font.index('"Noto Sans CJK SC"') < body_font.index("sans-serif;")


@pytest.mark.parametrize("low, high, at_least", [(2.0, 20.0, 5), (2.0, 50.0, 7), (1e-4, 3e-4, 3), (1e-5, 1e-1, 8)])
def test_log_axes_get_enough_labelled_ticks(low, high, at_least):
    from matplotlib.figure import Figure

    from shed_jax.report._plots import _log_ticks

    fig = Figure()
    ax = fig.subplots()
    data = np.geomspace(low, high, 20)
    ax.plot(data, data)
    ax.set_xscale("log")
    _log_ticks(ax.xaxis, data)
    fig.canvas.draw()
    labelled = [t for t in ax.xaxis.get_majorticklabels()
                if t.get_text() and low * 0.999 <= t.get_position()[0] <= high * 1.001]
    assert len(labelled) >= at_least, [t.get_text() for t in labelled]


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no headless Chromium at {CHROMIUM}")
def test_the_page_renders_in_chromium_without_wrapped_cards(run_dir, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_report",
                                                  Path(__file__).resolve().parents[1] / "scripts" / "check_report.py")
    check_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_report)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["seconds_total"] = 4321.0
    report = write_report(run_dir, summary=summary)
    result = check_report.check(Path(report), tmp_path / "page.png", width=1280)
    assert result["cards"] >= 8 and result["wrapped_cards"] == [] and result["overflowing"] == []
    assert result["text_chars"] > 1000 and result["height"] > 1500
    assert all(image["natural"] > 0 for image in result["images"]) and len(result["images"]) >= 3
    png = (tmp_path / "page.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    from PIL import Image

    with Image.open(tmp_path / "page.png") as image:
        assert image.size == (1280, max(200, result["height"]))
        colours = image.convert("L").getextrema()
        assert colours[1] - colours[0] > 100  # not a blank page
    narrow = check_report.measure(Path(report), width=420)  # a phone-sized window: cards still do not wrap
    assert narrow["wrapped_cards"] == [] and narrow["overflowing"] == []
