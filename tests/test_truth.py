"""Scores split by what the generator of a diverse synthetic dataset knows: the ceiling of its annotation and
where a model's errors are (edge_mer.eval.truth, the second table of the recipe and recognition benchmarks)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from edge_mer.data.synthetic import MANIFEST
from edge_mer.errors import UserError
from edge_mer.eval.truth import (
    SampleTruth,
    amplitude_bands,
    breakdown,
    breakdown_of,
    ceiling,
    coded_aus,
    coded_reference,
    errors_table,
    misread_of,
    misread_tables,
    other_draw,
    pattern_errors,
    patterns_table,
    read_truth,
    rendered_faces,
    save_runs,
)
from edge_mer.synth.faces import photo_names

NAMES = ("negative", "positive", "surprise")


@pytest.fixture(scope="module")
def draw(tmp_path_factory):
    """A diverse composite whose 27 composite samples hold 3 mislabelled and 3 ambiguous ones (seed 4)."""
    out = tmp_path_factory.mktemp("truth") / "diverse"
    run_cli("synth", "dataset", "--layout", "megc2019", "--diverse", "--subjects", "6", "--clips-per-subject", "5",
            "--seed", "4", "--size", "128x96", "--fps", "40", "--quiet", "--out", str(out), check=True)
    clips = [c for c in json.loads((out / MANIFEST).read_text())["clips"] if c["composite"]]
    ids = [f"{c['dataset']}/{c['subject']}/{c['clip']}" for c in clips]
    labels = [NAMES.index(c["composite"]) for c in clips]
    return out, clips, ids, labels


def test_the_ceiling_is_what_a_model_that_reads_every_face_right_scores(draw):
    out, clips, ids, labels = draw
    truth = read_truth(out)
    wrong = sum(c["note"] == "mislabelled" for c in clips)
    assert wrong == 3 and sum(c["note"] == "ambiguous" for c in clips) == 3
    outside = 0
    for i, c in zip(ids, clips):
        assert (truth[i].shown != c["composite"]) == (c["note"] == "mislabelled")
        outside += truth[i].shown == ""  # the face shows "others", coded as a composite class
    assert outside == 1
    top = ceiling(truth, ids, labels, NAMES)
    # the one outside the composite counts as read right: the ceiling is an upper bound
    assert top["accuracy"] == pytest.approx(1 - (wrong - outside) / len(ids))
    assert top["uf1"] < 1.0


def test_the_breakdown_counts_each_kind_of_sample_and_splits_the_clean_ones_by_strength(draw, tmp_path):
    out, clips, ids, labels = draw
    truth = read_truth(out)
    bands = amplitude_bands(truth, ids)
    assert bands[0] < bands[1]
    oracle = [NAMES.index(truth[i].shown) if truth[i].shown else y for i, y in zip(ids, labels)]
    got = breakdown(truth, ids, labels, oracle, bands)
    assert got["clean"] == [21, 21] and got["ambiguous"] == [3, 3] and got["mislabelled"] == [1, 3]
    assert sum(got[k][1] for k in ("weak", "middle", "strong")) == 21
    assert min(got[k][1] for k in ("weak", "middle", "strong")) >= 6  # thirds
    # a model that always answers "negative"
    always = breakdown(truth, ids, labels, [0] * len(ids), bands)
    assert always["clean"][0] == sum(y == 0 for y, c in zip(labels, clips) if not c["note"])

    # from a run's predictions.csv, as train writes it
    lines = ["id,subject,truth,prediction,p_negative,p_positive,p_surprise"]
    lines += [f"{i},{i.rsplit('/', 1)[0]},{y},{p},0.3,0.3,0.4" for i, y, p in zip(ids, labels, oracle)]
    (tmp_path / "predictions.csv").write_text("\n".join(lines) + "\n")
    assert breakdown_of(tmp_path / "predictions.csv", out) == got
    assert breakdown_of(tmp_path / "predictions.csv", tmp_path) is None  # not a synthetic dataset
    assert breakdown_of(tmp_path / "missing.csv", out) is None

    table = errors_table({"oracle": [got, got], "negative": [always]}, ceiling(truth, ids, labels, NAMES), bands)
    rows = {line.split(" | ")[0].strip("| "): line for line in table if line.startswith("| ") and "---" not in line}
    assert rows["oracle"].startswith("| oracle | 1.000 | 1.000 | 0.333 |")
    assert f"weak < {bands[0]} px" in "\n".join(table) and "its ceiling" in "\n".join(table)
    coded = coded_reference(truth, ids, labels, NAMES)
    caption = errors_table({"oracle": [got]}, None, bands, coded)[2]
    assert "its ceiling" not in caption and f"scores UF1 {coded['uf1']:.4f}" in caption


def test_each_sample_carries_its_dataset_and_coded_action_units_in_one_spelling(draw):
    out, clips, ids, _ = draw
    truth = read_truth(out)
    for i, c in zip(ids, clips):
        assert truth[i].dataset == c["dataset"]
        assert truth[i].aus.split("+") == sorted(c["aus"].split("+"), key=lambda a: (int(a.lstrip("RL")), a))
    assert coded_aus("R14+12") == "12+R14" and coded_aus("5 + 1, 2") == "1+2+5" and coded_aus("") == ""
    assert coded_aus("L12+R12+4") == "4+L12+R12"


def _coded(dataset: str, aus: str, shown: str, note: str = "clean") -> SampleTruth:
    return SampleTruth(shown, note, 1.0, dataset, aus)


def test_the_coded_reference_names_each_sample_by_what_the_other_samples_with_its_codes_are_annotated():
    """How far the coded action units decide the class: each sample named by the class the other samples of its
    dataset with the same codes are annotated as most often; its shown class where none has them or on a tie."""
    rows = [("samm", "12", "positive", "positive")] * 3 + [
        ("samm", "12", "negative", "positive"),  # mislabelled: the others say positive -> wrong
        ("samm", "R12", "negative", "negative"),  # alone with its codes: named by what it shows -> right
        ("casme2", "R12", "positive", "positive"),  # the same codes in another dataset are another group
        ("smic", "1+2+5", "surprise", "surprise"), ("smic", "1+2+5", "surprise", "surprise"),
        ("smic", "1+2+5", "negative", "negative"),  # fear that lost its brow lowerer looks like surprise -> wrong
        ("smic", "4", "negative", "negative"), ("smic", "4", "positive", "positive"),  # each other's -> both wrong
    ]
    truth = {f"s/{k}": _coded(d, a, shown) for k, (d, a, _, shown) in enumerate(rows)}
    ids, labels = list(truth), [NAMES.index(label) for _, _, label, _ in rows]
    ref = coded_reference(truth, ids, labels, NAMES)
    assert ref["accuracy"] == pytest.approx(7 / 11)
    assert ceiling(truth, ids, labels, NAMES)["accuracy"] == pytest.approx(10 / 11)  # all but the mislabelled

    # the patterns a model misreads most: the one that always answers "positive"
    counts = pattern_errors(truth, ids, labels, [1] * len(ids), NAMES)
    assert counts[("smic", "1+2+5", "surprise", "clean")] == [2, 2, 0, 2, 0]
    assert counts[("samm", "12", "positive", "clean")] == [3, 0, 0, 0, 0]
    pooled = pattern_errors(truth, ids, labels, labels, NAMES, into=pattern_errors(truth, ids, labels, [1] * 11,
                                                                                  NAMES))
    assert pooled[("smic", "1+2+5", "surprise", "clean")] == [4, 2, 0, 2, 0]  # a perfect run adds none wrong
    table = patterns_table(pooled, NAMES, top=3)
    assert table[2] == "| smic | 1+2+5 | surprise | clean | 2 | 4 | positive 2 |"
    assert len(table) == 5 and all("| 0 |" not in line for line in table)
    assert len(patterns_table(pattern_errors(truth, ids, labels, labels, NAMES), NAMES)) == 2  # nothing wrong


def test_a_run_keeps_what_it_misreads_by_pattern_and_by_subject_and_its_seeds_pool(draw, tmp_path):
    """A run's predictions.csv gives the patterns and the subjects it reads wrong, the subjects with the gain and
    asymmetry the generator drew for them; the tables pool several runs, most wrong first."""
    out, _, ids, labels = draw
    styles = json.loads((out / MANIFEST).read_text())["subject_styles"]
    victim = ids[0].rsplit("/", 1)[0]  # every sample of the first subject read as the next class, the rest right
    pred = [(y + 1) % 3 if i.startswith(victim + "/") else y for i, y in zip(ids, labels)]
    lines = ["id,subject,truth,prediction,p_negative,p_positive,p_surprise"]
    lines += [f"{i},{i.rsplit('/', 1)[0]},{y},{p},0.3,0.3,0.4" for i, y, p in zip(ids, labels, pred)]
    (tmp_path / "predictions.csv").write_text("\n".join(lines) + "\n")
    got = misread_of(tmp_path / "predictions.csv", out, NAMES)
    assert got is not None and misread_of(tmp_path / "missing.csv", out, NAMES) is None
    n = sum(i.startswith(victim + "/") for i in ids)
    rows = {row[0]: row for row in got["subjects"]}
    assert len(rows) == len({i.rsplit("/", 1)[0] for i in ids})
    assert rows[victim] == [victim, n, n, round(styles[victim]["gain"], 3), round(styles[victim]["asymmetry"], 3)]
    assert sum(row[2] for row in got["subjects"]) == n  # nobody else is wrong
    assert sum(row[5] for row in got["patterns"]) == n and sum(row[4] for row in got["patterns"]) == len(ids)
    assert json.loads(json.dumps(got)) == got  # kept in a results file as it is

    table = misread_tables([got, got], NAMES)
    subjects = [line for line in table if line.startswith(f"| {victim} |")]
    assert subjects == [f"| {victim} | {2 * n} | {2 * n} | {styles[victim]['gain']:.2f} | "
                        f"{styles[victim]['asymmetry']:.2f} |"]
    assert sum(line.startswith("| ") and line.split(" | ")[0] != "| subject" and "---" not in line
               and line.count("|") == 6 for line in table) == 1  # only the subject that was wrong is listed
    wrong_patterns = [line for line in table if line.count("|") == 8 and "---" not in line][1:]
    assert sum(int(line.split(" | ")[4]) for line in wrong_patterns) == 2 * n


def test_predictions_of_another_dataset_are_refused(draw):
    out = draw[0]
    with pytest.raises(UserError, match="not in the dataset's manifest"):
        breakdown(read_truth(out), ["casme2/sub99/EP01"], [0], [0], (0.5, 1.0))
    with pytest.raises(UserError, match="not a synthetic dataset's manifest"):
        read_truth(out / "CASME2")


def test_a_results_table_keeps_to_the_photographs_of_its_draw(draw, tmp_path):
    """The recipe and recognition benchmarks resume from their JSON: runs on a draw from the first two
    photographs and runs on this one are refused in one table, with the file and both sets of photographs named."""
    out = draw[0]
    assert rendered_faces(out) == photo_names() and len(photo_names()) >= 4
    old = {"runs": {"recipe/0": {"uf1": 0.8}}}  # a results file from before the draw named its photographs
    why = other_draw(old, out, tmp_path / "recipe.json")
    assert why is not None and "recipe.json" in why and "astronaut, hopper;" in why and "biden" in why
    assert other_draw({**old, "faces": photo_names()}, out, tmp_path / "recipe.json") is None
    assert other_draw({"runs": {}}, out, tmp_path / "recipe.json") is None  # nothing to mix


def test_two_benchmark_processes_on_one_results_file_keep_each_others_runs(tmp_path):
    """Two benchmark processes write one results file (each loaded it before the other's run finished): every save
    keeps the runs the other saved in the meantime, and a run the saver holds replaces its older record."""
    path = tmp_path / "recognition.json"
    first = {"runs": {"ststnet/0": {"uf1": 0.82}}}
    second = json.loads(json.dumps(first))  # the second process starts from the same file
    save_runs(path, first)
    first["runs"]["ststnet_regions/2"] = {"uf1": 0.85}
    save_runs(path, first)
    second["runs"]["ststnet_regions/head-removed/1"] = {"uf1": 0.88}
    second["runs"]["ststnet/0"] = {"uf1": 0.83}  # retrained by the second process
    save_runs(path, second)
    runs = json.loads(path.read_text())["runs"]
    assert runs == {"ststnet/0": {"uf1": 0.83}, "ststnet_regions/2": {"uf1": 0.85},
                    "ststnet_regions/head-removed/1": {"uf1": 0.88}}
