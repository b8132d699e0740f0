"""Bagged per-tag thresholds: what `tagger train` calibrates on validation and ships in the model."""
import numpy as np
import pytest

pytest.importorskip("torch")  # train/ is the training extra

from train.metrics import (
    DEFAULT_THRESHOLD,
    bagged_thresholds,
    calibrate_thresholds,
    calibrated_thresholds,
    f1_summary,
    pooled_thresholds,
)


def _draw(rng, n: int, tags: int, prevalence: float, separation: float):
    """Sigmoid scores whose logits are N(-3, 1) for a tag's negatives and N(-3 + separation, 1) for its positives."""
    y = rng.random((n, tags)) < prevalence
    z = np.where(y, separation, 0.0) + rng.normal(0.0, 1.0, (n, tags)) - 3.0
    return 1.0 / (1.0 + np.exp(-z)), y


def test_bagged_thresholds_write_better_tags_on_new_photos_when_validation_is_small():
    # 60 independent tags, each with about 4 positives among 200 validation photos (a rare tag's lot),
    # then judged on 20,000 new photos from the same distributions. One split's max-F1 cut sits under
    # its lowest-scoring positive; averaging the cut over resamples gives a better F1 where it matters.
    rng = np.random.default_rng(0)
    val_scores, val_y = _draw(rng, 200, 60, 0.02, 2.5)
    new_scores, new_y = _draw(rng, 20000, 60, 0.02, 2.5)
    single, _ = calibrate_thresholds(val_scores, val_y)
    bagged = bagged_thresholds(val_scores, val_y, seed=0)
    f1_single = f1_summary(new_scores, new_y, single)["f1_macro"]
    f1_bagged = f1_summary(new_scores, new_y, bagged)["f1_macro"]
    assert f1_bagged > f1_single + 1.0, (f1_single, f1_bagged)


def test_bagged_thresholds_are_deterministic_and_keep_the_default_without_a_positive():
    rng = np.random.default_rng(1)
    scores, y = _draw(rng, 120, 5, 0.1, 2.0)
    y[:, 4] = False  # a tag with no validation positive
    first = bagged_thresholds(scores, y, seed=3)
    assert np.array_equal(first, bagged_thresholds(scores, y, seed=3))
    assert not np.array_equal(first, bagged_thresholds(scores, y, seed=4))
    assert first[4] == DEFAULT_THRESHOLD
    assert np.all((first > 0) & (first < 1))


def test_one_positive_is_cut_below_it_and_a_clean_split_stays_clean():
    # One positive: every resample that holds it cuts between it and a lower score, so the bagged
    # threshold still keeps that photo in.
    scores = np.array([[0.9], [0.3], [0.2], [0.1]])
    y = np.array([[1], [0], [0], [0]])
    assert 0.1 < bagged_thresholds(scores, y, seed=0)[0] < 0.9
    # Positives and negatives far apart: the bagged cut separates them on the validation photos too.
    scores = np.array([[0.95], [0.9], [0.85], [0.2], [0.15], [0.1]])
    y = np.array([[1], [1], [1], [0], [0], [0]])
    t = bagged_thresholds(scores, y, seed=0)[0]
    assert f1_summary(scores, y, [t])["f1"][0] == pytest.approx(100.0)


def test_bagged_parent_thresholds_still_know_what_the_children_bring():
    # As the single calibration (tests/test_hierarchy.py): the parent's own scores add nothing, the
    # child's photos are the parent's positives, so each resample sets the parent's cut above its scores.
    labels = ["Animals", "Animals|Dog"]
    targets = np.array([[1, 1]] * 3 + [[0, 0]] * 9)
    scores = np.array([[0.2, 0.9], [0.1, 0.8], [0.15, 0.85]] + [[0.6 + 0.01 * i, 0.1 + 0.01 * i] for i in range(9)])
    aware = bagged_thresholds(scores, targets, labels, seed=0)
    blind = bagged_thresholds(scores, targets, seed=0)
    assert aware[0] > scores[:, 0].max() > blind[0]
    assert f1_summary(scores, targets, aware, labels)["f1"][0] == pytest.approx(100.0)


def test_a_resample_counted_by_weights_cuts_where_the_resampled_photos_would():
    # bagged_thresholds counts each photo as often as a resample draws it instead of copying photos;
    # each resample's cut must be the one calibrate_thresholds finds on the copied photos, ties
    # (rounded scores) and a parent calibrated after its children included.
    from train.metrics import _max_f1_cuts

    rng = np.random.default_rng(2)
    labels = ["Animals", "Animals|Dog", "Animals|Cat", "Car"]
    n = 60
    dog, cat = rng.random(n) < 0.15, rng.random(n) < 0.1
    targets = np.stack([dog | cat | (rng.random(n) < 0.05), dog, cat, rng.random(n) < 0.2], axis=1)
    scores = np.round(np.clip(0.3 * targets + rng.random((n, 4)) * 0.7, 0, 1), 2)  # rounded: many ties
    counts = rng.multinomial(n, np.full(n, 1 / n), size=20)
    cuts, f1s = _max_f1_cuts(scores, targets, labels, counts.astype(float))
    for row, count in enumerate(counts):
        idx = np.repeat(np.arange(n), count)
        expected, expected_f1 = calibrate_thresholds(scores[idx], targets[idx], labels)
        assert np.allclose(f1s[row], expected_f1, equal_nan=True), row
        # A parent left to its children's photos is cut above every validation score, not only above
        # the resample's (the copied photos' calibration does not know the others).
        children_only = np.isclose(expected, np.nextafter(scores[idx].max(axis=0), np.inf))
        assert np.allclose(cuts[row][~children_only], expected[~children_only]), row
        assert np.all(cuts[row][children_only] > scores[:, children_only].max(axis=0)), row


def test_a_parent_left_to_its_children_stays_above_every_validation_score():
    # One positive, found by the child alone; the parent's own scores (all under 0.5) rank a negative
    # highest. Only the resamples holding the positive vote, all for "above the parent's scores": the
    # bagged cut must be exactly that, not its logit round trip (which can land on the top score).
    labels = ["A", "A|x"]
    n = 30
    targets = np.zeros((n, 2), bool)
    targets[0] = True
    scores = np.zeros((n, 2))
    scores[:, 0], scores[:, 1] = np.linspace(0.05, 0.46, n), 0.1
    scores[0] = (0.01, 0.9)
    bagged = bagged_thresholds(scores, targets, labels, seed=0)
    assert bagged[0] > scores[:, 0].max()
    assert f1_summary(scores, targets, bagged, labels)["f1"][0] == pytest.approx(100.0)
    # A resample without the parent's top-scored photo cuts above that photo too: every resample that
    # leaves the parent to its children agrees on the cut.
    from train.metrics import _max_f1_cuts
    cuts, _ = _max_f1_cuts(scores, targets, labels, np.ones((1, n)) - np.eye(n)[[n - 1]])
    assert cuts[0, 0] > scores[:, 0].max()


def test_a_carried_threshold_lets_through_as_many_photos_as_before():
    # Catches: a threshold carried by value (the refit's scores sit elsewhere), or by a share computed
    # on one model and applied to the other the wrong way round.
    from train.metrics import carried_thresholds
    rng = np.random.default_rng(0)
    before = rng.random((50, 3))
    after = before ** 3  # the same order, every score lower: the validated cuts would pass fewer photos
    t = np.array([0.7, 0.2, 1.5])  # the third passes nothing (a parent left to its children)
    out = carried_thresholds(t, before, after)
    for c in range(3):
        assert (after[:, c] >= out[c]).sum() == (before[:, c] >= t[c]).sum()
    assert (after[:, 0] >= t[0]).sum() < (before[:, 0] >= t[0]).sum()  # kept by value it would pass fewer
    ranked = np.sort(after[:, 0])[::-1]
    kept = int((before[:, 0] >= t[0]).sum())
    assert out[0] == pytest.approx((ranked[kept - 1] + ranked[kept]) / 2)  # halfway to the next photo



def _logit(p):
    return np.log(p) - np.log1p(-p)


def test_pooled_thresholds_lean_on_the_group_where_a_tag_has_few_validation_positives():
    # Two tail tags (5 and 8 training photos) and two head tags (300, 500). Cuts in logit space: tail -1
    # and -3 (medians -2), head 1 and 2 (1.5). n / (n + 4) of each tag's own cut, the rest its group's.
    own = 1 / (1 + np.exp(-np.array([-1.0, -3.0, 1.0, 2.0, 0.0])))
    val_positives = [1, 4, 100, 0, 0]
    train_positives = [5, 8, 300, 500, 3]
    pooled = _logit(pooled_thresholds(own, val_positives, train_positives))
    assert pooled[0] == pytest.approx(0.2 * -1 + 0.8 * -2)  # 1 positive: a fifth its own
    assert pooled[1] == pytest.approx(0.5 * -3 + 0.5 * -2)  # 4 positives: half and half
    assert pooled[2] == pytest.approx(100 / 104 * 1 + 4 / 104 * 1.0)  # the head's median is its one calibrated tag
    # No validation positive: not DEFAULT_THRESHOLD (0.5 wrote almost nothing for rare tags) but the
    # median of the calibrated tags of its group, else of all calibrated tags.
    assert pooled[4] == pytest.approx(-2.0)
    assert pooled[3] == pytest.approx(1.0)
    # Nothing calibrated anywhere: the defaults stay.
    assert np.allclose(pooled_thresholds(np.full(3, DEFAULT_THRESHOLD), [0, 0, 0], [5, 50, 500]), DEFAULT_THRESHOLD)


def test_pooled_thresholds_write_better_tags_than_each_tag_alone_on_new_photos():
    # 60 rare tags of one frequency group whose positives separate from their negatives by 1.5 to 3.5
    # logits, each with 1 to 4 validation positives among 200 photos, judged on 20,000 new photos. Each
    # tag's own bagged cut rests on its few positives; pooled toward the group's median it writes better
    # tags. (Pooling off, `pool` 0, is the bagged cut itself.)
    rng = np.random.default_rng(2)
    separation = rng.uniform(1.5, 3.5, 60)
    def draw(n):
        y = rng.random((n, 60)) < 0.012
        z = np.where(y, separation, 0.0) + rng.normal(0.0, 1.0, (n, 60)) - 3.0
        return 1.0 / (1.0 + np.exp(-z)), y
    val_scores, val_y = draw(200)
    new_scores, new_y = draw(20000)
    train_positives = np.full(60, 10)
    bagged = bagged_thresholds(val_scores, val_y, seed=0)
    has = val_y.any(axis=0)
    assert np.allclose(pooled_thresholds(bagged, val_y.sum(axis=0), train_positives, pool=0)[has], bagged[has])
    pooled = calibrated_thresholds(val_scores, val_y, None, train_positives, seed=0)
    f1_bagged = f1_summary(new_scores, new_y, bagged)["f1_macro"]
    f1_pooled = f1_summary(new_scores, new_y, pooled)["f1_macro"]
    assert f1_pooled > f1_bagged + 1.0, (f1_bagged, f1_pooled)
