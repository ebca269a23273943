"""MEGC metrics on pooled predictions, against values computed by hand; LOSO folds and the MEGC log."""

from __future__ import annotations

import numpy as np
import pytest

from edge_mer.eval.metrics import averaged, confusion, per_group, scores
from edge_mer.eval.protocol import loso_folds, megc_log

NAMES = ("negative", "positive", "surprise")


def test_hand_computed_scores():
    truth = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    s = scores(truth, pred, NAMES)
    assert s.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # F1: 2*2/(4+0+1) = 0.8, 2*1/(2+1+1) = 0.5, 2*1/(2+1+0) = 2/3
    assert s.f1 == pytest.approx({"negative": 0.8, "positive": 0.5, "surprise": 2 / 3})
    assert s.uf1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # recall: 2/3, 1/2, 1/1
    assert s.uar == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert s.accuracy == pytest.approx(4 / 6)
    assert s.absent == []


def test_the_seeds_probabilities_averaged_read_a_class_neither_seed_may_name():
    truth = [0, 1, 2, 1]
    a = np.array([[0.6, 0.4, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2]])
    b = np.array([[0.1, 0.9, 0.0], [0.3, 0.6, 0.1], [0.0, 0.2, 0.8], [0.0, 0.9, 0.1]])
    both = averaged(truth, [a, b], NAMES)
    # means: [0.35, 0.65, 0], [0.25, 0.65, 0.1], [0.05, 0.15, 0.8], [0.25, 0.6, 0.15] -> 1, 1, 2, 1
    assert both.scores.confusion == [[0, 1, 0], [0, 2, 0], [0, 0, 1]]
    assert both.shared == pytest.approx(2 / 4)  # a answers 0, 1, 2, 0; b 1, 1, 2, 1
    assert averaged(truth, [a], NAMES).shared == 1.0
    assert averaged(truth, [a], NAMES).scores == scores(truth, a.argmax(1), NAMES)
    with pytest.raises(ValueError, match="no run"):
        averaged(truth, [], NAMES)


def test_pooled_not_averaged_over_folds():
    # fold A has no surprise sample at all; the pooled score still counts surprise once, over all folds
    fold_a = ([0, 1, 1], [0, 1, 0])
    fold_b = ([0, 2, 2], [0, 2, 1])
    pooled = scores(fold_a[0] + fold_b[0], fold_a[1] + fold_b[1], NAMES)
    # pooled confusion: negative 2/2 right, positive 1 of 2 (1 -> negative), surprise 1 of 2 (1 -> positive)
    # F1 neg = 4/(4+1+0) = 0.8; F1 pos = 2/(2+1+1) = 0.5; F1 sur = 2/(2+0+1) = 2/3
    assert pooled.uf1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    a = scores(*fold_a, NAMES)
    b = scores(*fold_b, NAMES)
    assert a.absent == ["surprise"]  # said, not hidden
    assert pooled.uf1 != pytest.approx((a.uf1 + b.uf1) / 2)


def test_absent_class_that_was_predicted_counts_as_zero():
    s = scores([0, 0, 1], [0, 2, 1], NAMES)
    assert s.f1["surprise"] == 0.0 and s.recall["surprise"] is None
    assert s.uf1 == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert s.uar == pytest.approx((0.5 + 1.0) / 2) and s.absent == ["surprise"]


def test_absent_and_never_predicted_class_is_named():
    s = scores([0, 1], [0, 1], NAMES)
    assert s.f1["surprise"] is None and s.absent == ["surprise"]
    assert s.uf1 == 1.0 and s.uar == 1.0


def test_confusion_rejects_bad_labels():
    with pytest.raises(ValueError):
        confusion([0, 3], [0, 1], 3)
    with pytest.raises(ValueError):
        confusion([0, 1], [0], 3)


def test_per_dataset_scores():
    groups = ["casme2", "casme2", "samm", "samm"]
    out = per_group([0, 1, 2, 2], [0, 1, 2, 0], groups, NAMES)
    assert set(out) == {"casme2", "samm"}
    assert out["casme2"].accuracy == 1.0 and out["samm"].accuracy == 0.5


def test_loso_folds_leave_each_subject_out_once():
    subjects = ["casme2/sub01", "samm/006", "casme2/sub01", "smic/s1", "samm/006"]
    folds = loso_folds(subjects)
    assert [f.subject for f in folds] == ["casme2/sub01", "samm/006", "smic/s1"]
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested.tolist()) == list(range(5))
    for f in folds:
        assert not set(f.train) & set(f.test)
        assert all(subjects[i] == f.subject for i in f.test)
        assert all(subjects[i] != f.subject for i in f.train)


def test_megc_log_format():
    ids = ["casme2/sub01/EP02_01f", "samm/006/006_1_2", "casme2/sub01/EP03_02"]
    subjects = ["casme2/sub01", "samm/006", "casme2/sub01"]
    log = megc_log(loso_folds(subjects), ids, [1, 0, 2], [1, 0, 0])
    assert log == "casme2 sub01\nEP02_01f 1 1\nEP03_02 2 0\nsamm 006\n006_1_2 0 0\n"


def test_confusion_png(tmp_path):
    pytest.importorskip("matplotlib")
    from edge_mer.eval.metrics import plot_confusion

    plot_confusion([[3, 1, 0], [0, 2, 0], [1, 0, 4]], NAMES, str(tmp_path / "cm.png"), "test")
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
