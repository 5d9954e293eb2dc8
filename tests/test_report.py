"""shed_jax.report: HTML report of a run directory built by hand (files written with numpy/json directly)."""
import base64
import json
import re

import numpy as np
import pytest

from shed_jax.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N_RECORDS = 40
K = 6


def _make_run(run_dir, *, with_category=True):
    """A small fake run: 40 records in 6 clusters, values, convergence (T=5), scores, selection."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = np.arange(N_RECORDS, dtype=np.int32) % K
    labels[-1] = -1  # a dropped duplicate
    proxy_index = np.arange(K, dtype=np.int64)
    records = []
    for i in range(N_RECORDS):
        record = {"instruction": f"Question number {i} about topic {labels[i]}", "input": "",
                  "output": f"Answer {i}"}
        if with_category:
            record["category"] = ["math", "geo", "words"][int(labels[i]) % 3]
        records.append(record)
    records[0]["instruction"] = "<script>alert('x')</script> & more"  # proxy of cluster 0
    data_path = run_dir.parent / f"{run_dir.name}_data.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    values = np.array([0.30, 0.10, -0.05, 0.02, -0.20, 0.15])
    stderr = np.array([0.02, 0.03, 0.01, 0.02, 0.04, 0.02])
    config = {"version": 1, "config": {"data": str(data_path), "valid": "valid.jsonl", "n_clusters": K,
                                       "n_permutations": 20, "removal_step": None, "sampler": "qocs",
                                       "ratio": 0.25, "size": None, "seed": 7, "format": "auto",
                                       "field_map": {}, "model": "all-MiniLM-L6-v2", "proxy": "embedding"},
              "resolved": {"n_clusters": K, "removal_step": 1, "n_examples": N_RECORDS}}
    (run_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (run_dir / "values.json").write_text(json.dumps({
        "cluster_values": values.tolist(), "stderr": stderr.tolist(), "n_permutations": 20,
        "n_evaluations": 120, "removal_step": 1, "utility": {"proxy": "embedding"},
        "u_full": 0.8, "u_empty": 0.25}), encoding="utf-8")
    np.savez(run_dir / "clusters.npz", centroids=rng.normal(size=(K, 4)).astype(np.float32), labels=labels,
             proxy_index=proxy_index)
    t = np.array([4, 8, 12, 16, 20])
    traj = values[None, :] + rng.normal(scale=0.05, size=(5, K)) / np.sqrt(t)[:, None]
    np.savez(run_dir / "convergence.npz", n_permutations=t, values=traj,
             stderr=0.1 / np.sqrt(t)[:, None] * np.ones((1, K)))
    selected = np.flatnonzero(np.isin(labels, [0, 5]))[:10]
    rows = [{"index": i, "cluster": int(labels[i]), "is_proxy": bool(i in proxy_index),
             "value": float(values[labels[i]]) if labels[i] >= 0 else None,
             "stderr": float(stderr[labels[i]]) if labels[i] >= 0 else None,
             "selected": bool(i in selected)} for i in range(N_RECORDS)]
    (run_dir / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (run_dir / "selection.json").write_text(json.dumps({"sampler": "qocs", "budget": 10,
                                                        "indices": selected.tolist()}), encoding="utf-8")
    (run_dir / "summary.json").write_text(json.dumps({"n_examples": N_RECORDS, "n_clusters": K,
                                                      "budget": 10, "seconds_total": 1.5,
                                                      "value": {"n_evaluations": 120}}), encoding="utf-8")
    return run_dir, selected


def _images(document):
    payloads = re.findall(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', document)
    assert len(payloads) == document.count("<img")
    return [base64.b64decode(p, validate=True) for p in payloads]


def test_full_report_sections_images_and_escaping(tmp_path):
    run_dir, selected = _make_run(tmp_path / "run")
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    document = path.read_text(encoding="utf-8")
    for section in ('id="config"', 'id="summary"', 'id="values"', 'id="convergence"', 'id="sizes"',
                    'id="composition"', 'id="clusters"', "Highest value", "Lowest value"):
        assert section in document, section
    images = _images(document)
    assert len(images) == 4  # values, convergence, size-vs-value, composition
    assert all(png.startswith(PNG_SIGNATURE) and len(png) > 1000 for png in images)
    # The hostile instruction is escaped, never injected.
    assert "<script>" not in document
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in document
    assert 'class="note"' not in document  # nothing was missing
    # Header shows the configuration; table shows the top cluster's value and its proxy example first.
    assert "qocs" in document and "ratio 0.25" in document and ">7<" in document
    top_table = document.split("Highest value", 1)[1].split("Lowest value", 1)[0]
    first_row = top_table.split("<tr>")[2]
    assert ">0<" in first_row and "0.300 ± 0.020" in first_row and "proxy" in first_row
    assert "Question number 6 about topic 0" in first_row  # a second member of cluster 0
    # Composition counts come from the data + scores: categories of the selected records.
    categories = np.array([["math", "geo", "words"][(i % K) % 3] for i in range(N_RECORDS)])
    n_math_selected = int((categories[selected] == "math").sum())
    assert f"<td>math</td><td class='num'>" in document
    math_row = document.split("<td>math</td>", 1)[1].split("</tr>", 1)[0]
    assert f"<td class='num'>{n_math_selected:,}</td>" in math_row


def test_missing_convergence_gives_note(tmp_path):
    run_dir, _ = _make_run(tmp_path / "run")
    (run_dir / "convergence.npz").unlink()
    document = write_report(run_dir).read_text(encoding="utf-8")
    convergence = document.split('id="convergence"', 1)[1].split("</section>", 1)[0]
    assert 'class="note"' in convergence and "convergence.npz not found" in convergence
    assert len(_images(document)) == 3


def test_missing_optional_pieces_and_custom_out(tmp_path):
    run_dir, _ = _make_run(tmp_path / "run", with_category=False)
    for name in ("summary.json", "selection.json", "scores.jsonl"):
        (run_dir / name).unlink()
    (run_dir / "clusters.npz").write_bytes(b"not a zip file")
    out = tmp_path / "elsewhere" / "r.html"
    out.parent.mkdir()
    assert write_report(run_dir, out=out) == out
    document = out.read_text(encoding="utf-8")
    assert "summary.json not found" in document
    assert "clusters.npz could not be read" in document
    assert "No selection" in document
    assert len(_images(document)) == 2  # values and convergence only
    assert not (run_dir / "report.html").exists()


def test_corrupt_values_and_data_mismatch_are_notes(tmp_path):
    run_dir, _ = _make_run(tmp_path / "run")
    (run_dir / "values.json").write_text("{not json", encoding="utf-8")
    cfg = json.loads((run_dir / "config.json").read_text())
    data = cfg["config"]["data"]
    with open(data, "a", encoding="utf-8") as handle:  # the data changed since the run
        handle.write(json.dumps({"instruction": "extra", "input": "", "output": "x", "category": "geo"}) + "\n")
    document = write_report(run_dir).read_text(encoding="utf-8")
    assert "values.json could not be read" in document
    assert f"has {N_RECORDS + 1} records but the run has {N_RECORDS}" in document
    # Convergence still plots; values-based plots are replaced by notes; composition needs categories.
    assert 'id="convergence"' in document and len(_images(document)) == 1


def test_demo_ground_truth_is_shown(tmp_path):
    from shed_jax.synthetic import make_demo

    demo = make_demo(tmp_path / "data", n_examples=120, n_validation=40, seed=1)
    n = 120
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    labels = np.zeros(n, dtype=np.int32)
    labels[demo.junk_indices] = 1
    (run_dir / "config.json").write_text(json.dumps({"config": {"data": str(demo.train), "seed": 1}}))
    (run_dir / "values.json").write_text(json.dumps({"cluster_values": [0.2, -0.1], "stderr": [0.01, None]}))
    np.savez(run_dir / "clusters.npz", labels=labels,
             proxy_index=np.array([np.flatnonzero(labels == 0)[0], demo.junk_indices[0]]))
    document = write_report(run_dir).read_text(encoding="utf-8")
    assert "junk in input (demo)" in document and f"{100 * len(demo.junk_indices) / n:.1f}%" in document
    assert "tag junk" in document and "100%" in document  # cluster 1 is all junk
    assert "-0.1<" in document  # stderr None -> value shown without "±"


def test_missing_run_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        write_report(tmp_path / "nope")


def test_selection_json_alone_gives_composition(tmp_path):
    run_dir, selected = _make_run(tmp_path / "run")
    (run_dir / "scores.jsonl").unlink()
    document = write_report(run_dir).read_text(encoding="utf-8")
    assert "scores.jsonl not found" in document
    assert len(_images(document)) == 4
    assert f"<div class=\"k\">selected</div><div class=\"v\">{len(selected)}</div>" in document


def test_a_failing_section_leaves_the_rest(tmp_path, monkeypatch):
    import shed_jax.report as report

    def broken(run):
        raise RuntimeError("plot <failed>")

    monkeypatch.setattr(report, "_plot_values", broken)
    run_dir, _ = _make_run(tmp_path / "run")
    document = write_report(run_dir).read_text(encoding="utf-8")
    assert "could not be drawn (RuntimeError: plot &lt;failed&gt;)" in document
    assert len(_images(document)) == 3 and 'id="clusters"' in document
