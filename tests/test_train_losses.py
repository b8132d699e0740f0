"""DB*, DB, ASL, BCE against direct NumPy formulas; metrics and the stratified split."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train.losses import ASLLoss, DBConfig, DBLoss, class_bias, make_loss  # noqa: E402
from train.metrics import average_precision, calibrate_thresholds, f1_summary, map_summary  # noqa: E402
from train.split import stratified_split  # noqa: E402


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x):
    return np.log1p(np.exp(x))


def db_numpy(z, y, counts, n_images, head_weight, alpha_r=0.1, beta=10.0, mu=0.2, kappa=0.05, lam=2.0, gamma=2.0):
    """The DB* formula written out element by element, nothing shared with train.losses."""
    counts = np.asarray(counts, dtype=np.float64)
    total = 0.0
    b, c = z.shape
    for i in range(b):
        pos_inv = sum(1.0 / counts[k] for k in range(c) if y[i, k])
        for k in range(c):
            ratio = (1.0 / counts[k]) / pos_inv if pos_inv > 0 else 1.0
            r = alpha_r + _sigmoid(beta * (ratio - mu))
            bias = -kappa * math.log(n_images / counts[k] - 1.0)
            zb = z[i, k] + bias
            if y[i, k]:
                w = counts[k] / counts.max() if head_weight else 1.0
                p = _sigmoid(zb)
                total += r * w * (1 - p) ** gamma * -math.log(p)
            else:
                q = _sigmoid(lam * zb)  # probability of the wrong (positive) answer on the scaled logit
                total += r * (q ** gamma) * -math.log(1 - q) / lam
    return total / (b * c)


@pytest.mark.parametrize("head_weight", [True, False])
def test_db_loss_matches_numpy_formula(head_weight):
    rng = np.random.default_rng(0)
    counts = [120, 40, 9, 3, 1]
    z = rng.normal(0, 3, (6, 5))
    y = (rng.random((6, 5)) < 0.35).astype(np.float64)
    y[0] = 0  # an image without any positive tag
    loss = DBLoss(counts, 200, head_weight=head_weight)(torch.tensor(z, dtype=torch.float64).float(),
                                                       torch.tensor(y).float())
    assert float(loss) == pytest.approx(db_numpy(z, y, counts, 200, head_weight), rel=1e-4)


def test_db_focal_term_is_element_wise():
    counts, n = [50, 50], 100
    loss = DBLoss(counts, n, config=DBConfig(focal_gamma=2.0))
    # One confident-correct and one badly wrong positive: an element-wise focal term keeps the second
    # almost whole and shrinks the first; a batch-mean focal factor (the public codes' bug) would not.
    z = torch.tensor([[8.0, -8.0]])
    y = torch.tensor([[1.0, 1.0]])
    no_focal = DBLoss(counts, n, config=DBConfig(focal_gamma=0.0))
    both = float(loss(z, y))
    easy_only = float(loss(z[:, :1], y[:, :1])) / 2
    hard_only = both - easy_only
    assert easy_only < 1e-6
    plain_hard = float(no_focal(z, y)) - float(no_focal(z[:, :1], y[:, :1])) / 2
    assert hard_only == pytest.approx(plain_hard * _sigmoid(8.0 - 0.0) ** 2, rel=1e-3)


def test_rebalance_bias_and_head_weight_follow_class_counts():
    counts, n = [100, 10, 2], 200
    loss = DBLoss(counts, n)
    # υ_c = −κ·log(N/n_c − 1): rarer tags get a lower prior logit.
    expected_bias = [-0.05 * math.log(n / c - 1) for c in counts]
    assert np.allclose(loss.class_bias.numpy(), expected_bias, atol=1e-6)
    assert loss.class_bias[0] > loss.class_bias[1] > loss.class_bias[2]
    # w_c = n_c / max n
    assert np.allclose(loss.pos_weight.numpy(), [1.0, 0.1, 0.02])
    assert np.allclose(DBLoss(counts, n, head_weight=False).pos_weight.numpy(), 1.0)
    # r: an image whose only positive is the rare tag weights that tag highly; next to a rare tag,
    # a head tag's share of the sampling probability is small, so its r falls toward α_r.
    r = loss.rebalance_weight(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]]))
    share = (1 / 100) / (1 / 100 + 1 / 2)
    assert float(r[0, 2]) == pytest.approx(0.1 + _sigmoid(10 * (1 - 0.2)), rel=1e-5)
    assert float(r[1, 0]) == pytest.approx(0.1 + _sigmoid(10 * (share - 0.2)), rel=1e-5)
    assert float(r[1, 0]) < float(r[1, 2])
    # Counts of 0 or N stay finite.
    assert torch.isfinite(class_bias([0, 200], 200)).all()


def test_asl_and_bce_match_formulas():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (4, 3))
    y = (rng.random((4, 3)) < 0.5).astype(np.float64)
    p = _sigmoid(z)
    pm = np.maximum(p - 0.05, 0)
    asl = -(y * np.log(p) + (1 - y) * pm ** 4 * np.log(1 - pm)).mean()
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    zt, yt = torch.tensor(z).float(), torch.tensor(y).float()
    assert float(ASLLoss(3)(zt, yt)) == pytest.approx(asl, rel=1e-4)
    assert float(make_loss("bce", [1, 1, 1], 4)(zt, yt)) == pytest.approx(bce, rel=1e-4)
    assert torch.equal(make_loss("asl", [1, 2, 3], 9).class_bias, torch.zeros(3))
    with pytest.raises(ValueError):
        make_loss("focal", [1], 2)


def test_average_precision_and_map_groups():
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(average_precision(np.array([0.1, 0.2]), np.array([0, 0])))
    # Ties give no credit: a constant scorer gets the positives' base rate, not 1.
    assert average_precision(np.ones(4), np.array([1, 0, 0, 0])) == pytest.approx(0.25)
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.7], [0.1, 0.3, 0.2]])
    targets = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    summary = map_summary(scores, targets, train_counts=[150, 30, 5])
    assert summary["mAP_head"] == 100.0 and summary["mAP_medium"] == 100.0 and summary["mAP_tail"] == 100.0
    assert summary["mAP"] == 100.0
    summary = map_summary(scores[:, :1], targets[:, :1], train_counts=[5])
    assert summary["mAP_head"] is None and summary["mAP_tail"] == 100.0


def test_thresholds_maximise_f1():
    scores = np.array([[0.9], [0.8], [0.4], [0.35], [0.1]])
    targets = np.array([[1], [1], [0], [1], [0]])
    thresholds, f1 = calibrate_thresholds(scores, targets)
    # Cutting at 0.35 keeps all 3 positives and one negative: F1 = 6/7, the best possible here.
    assert f1[0] == pytest.approx(6 / 7)
    assert 0.1 < thresholds[0] <= 0.35
    assert f1_summary(scores, targets, thresholds)["f1"][0] == pytest.approx(100 * 6 / 7, abs=1e-3)
    # No positive on validation: the default threshold.
    assert calibrate_thresholds(np.array([[0.3]]), np.array([[0]]))[0][0] == 0.5


def test_split_is_deterministic_and_puts_every_tag_on_both_sides():
    rng = np.random.default_rng(0)
    p = 0.5 * np.arange(1, 11) ** -1.3
    targets = rng.random((300, 10)) < p
    train, val = stratified_split(targets, 0.2, seed=3)
    again = stratified_split(targets, 0.2, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == 300
    assert abs(len(val) - 60) <= 3
    counts = targets.sum(axis=0)
    val_counts = targets[val].sum(axis=0)
    for n, v in zip(counts, val_counts):
        if n >= 2:
            assert 1 <= v <= n - 1
        assert abs(v - 0.2 * n) <= max(1.5, 0.1 * n)


def test_class_bias_keeps_counts_half_a_photo_inside_the_dataset():
    # A tag on no photo or on every photo would have an infinite prior; n_c is held to [0.5, N − 0.5],
    # so the bias is the formula's value there, not merely finite.
    n = 200
    bias = class_bias([0, n, 1], n, kappa=0.05).numpy()
    assert bias[0] == pytest.approx(-0.05 * math.log(n / 0.5 - 1), rel=1e-6)
    assert bias[1] == pytest.approx(-0.05 * math.log(n / (n - 0.5) - 1), rel=1e-6)
    assert bias[2] == pytest.approx(-0.05 * math.log(n - 1), rel=1e-6)
    # One photo: the tag is as likely as not (ratio 1), no shift either way.
    assert float(class_bias([1], 1)) == 0.0


def test_db_loss_takes_kappa_and_the_official_bias_scaling_from_its_config():
    counts, n = [100, 10, 2], 200
    base = class_bias(counts, n, kappa=0.05)
    assert torch.allclose(DBLoss(counts, n, config=DBConfig(kappa=0.2)).class_bias, 4 * base, atol=1e-6)
    # The official code initialises υ divided by λ (neg_scale 2 in its COCO settings).
    official = make_loss("db-official", counts, n)
    assert torch.allclose(official.class_bias, base / 2, atol=1e-6)
    assert torch.allclose(make_loss("db", counts, n).class_bias, base, atol=1e-6)


def test_rebalance_weight_of_a_photo_without_positives_takes_ratio_one():
    loss = DBLoss([100, 10, 2], 200)
    r = loss.rebalance_weight(torch.zeros(1, 3))
    assert torch.allclose(r, torch.full((1, 3), 0.1 + _sigmoid(10 * (1 - 0.2))), atol=1e-6)


def test_head_weight_when_every_tag_is_on_a_single_photo():
    # w_c = n_c / max n, with max n held at 1 or more: counts of one give weight one, not one half.
    assert torch.equal(DBLoss([1, 1], 4).pos_weight, torch.ones(2))


def test_frequency_groups_start_at_their_minimum_counts():
    from train.metrics import frequency_group

    assert [frequency_group(n) for n in (100, 99, 20, 19, 0)] == ["head", "medium", "medium", "tail", "tail"]


def test_map_summary_lists_each_tags_ap_in_percent():
    scores = np.array([[0.9, 0.8, 0.1], [0.8, 0.7, 0.2], [0.7, 0.9, 0.3]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    summary = map_summary(scores, targets, train_counts=[150, 30, 5])
    # Tag 0: positives at ranks 1 and 3 -> (1 + 2/3) / 2; tag 1: ranks 1 and 3 -> the same; tag 2: none.
    assert summary["ap"] == [83.333, 83.333, None]
    assert summary["mAP"] == 83.333 and summary["mAP_head"] == 83.333 and summary["mAP_tail"] is None


def test_f1_summary_counts_per_tag_macro_and_micro():
    scores = np.array([[0.9, 0.8, 0.9], [0.6, 0.3, 0.1], [0.4, 0.2, 0.1], [0.2, 0.1, 0.1]])
    targets = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    # Tag 0 cut at 0.6 (a score equal to the threshold is a prediction): tp 1, fp 1, fn 1 -> F1 1/2.
    # Tag 1: tp 1 -> F1 1. Tag 2 has no positive: no F1 of its own, but its false positive counts in micro.
    summary = f1_summary(scores, targets, np.array([0.6, 0.5, 0.5]))
    assert summary["f1"] == [50.0, 100.0, None]
    assert summary["f1_macro"] == 75.0
    assert summary["f1_micro"] == round(100 * 4 / 7, 3)  # tp 2, fp 2, fn 1
    nothing = f1_summary(np.array([[0.1]]), np.array([[0]]), np.array([0.5]))
    assert nothing["f1_macro"] is None and nothing["f1_micro"] is None and nothing["f1"] == [None]


def test_thresholds_sit_halfway_to_the_next_lower_score():
    # Best F1 cuts after 0.35; the threshold is halfway to 0.1, so a slightly lower score still passes.
    scores = np.array([[0.9], [0.8], [0.4], [0.35], [0.1]])
    thresholds, _ = calibrate_thresholds(scores, np.array([[1], [1], [0], [1], [0]]))
    assert thresholds[0] == pytest.approx(0.225)
    # The cut after the second-lowest score: halfway to the lowest.
    thresholds, _ = calibrate_thresholds(np.array([[0.9], [0.5], [0.1]]), np.array([[1], [1], [0]]))
    assert thresholds[0] == pytest.approx(0.3)
    # Cut after the lowest score: 1e-3 below it stands in for the next one, never below 0.
    thresholds, _ = calibrate_thresholds(np.array([[0.9], [0.7]]), np.array([[1], [1]]))
    assert thresholds[0] == pytest.approx(0.6995)
    thresholds, _ = calibrate_thresholds(np.array([[0.0005]]), np.array([[1]]))
    assert thresholds[0] == pytest.approx(0.00025)


def test_thresholds_never_split_tied_scores_and_skip_only_tags_without_positives():
    # Tag 0 has no positive: default threshold, no F1. Tag 1: the two 0.6 scores are all in or all out;
    # taking both (F1 4/5) beats stopping after 0.9 (2/3), and the cut sits halfway to 0.2.
    scores = np.array([[0.3, 0.9], [0.2, 0.6], [0.9, 0.6], [0.1, 0.2]])
    targets = np.array([[0, 1], [0, 1], [0, 0], [0, 0]])
    thresholds, f1 = calibrate_thresholds(scores, targets)
    assert thresholds[0] == 0.5 and math.isnan(f1[0])
    assert thresholds[1] == pytest.approx(0.4) and f1[1] == pytest.approx(4 / 5)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_split_refuses_a_validation_fraction_outside_zero_to_one(fraction):
    with pytest.raises(ValueError, match="between 0 and 1"):
        stratified_split(np.ones((10, 1)), fraction)


def test_split_gives_a_small_tag_one_photo_each_side_at_least():
    # Per tag: two photos -> one each side; three at 20% -> one to validation (0.6 rounded up), three
    # at 90% -> one kept for training (2.7 held to 2); one photo -> wherever it falls, never twice.
    targets = np.zeros((40, 3), bool)
    targets[[0, 1], 0] = True
    targets[[2, 3, 4], 1] = True
    targets[5, 2] = True
    train, val = stratified_split(targets, 0.2, seed=1)
    assert targets[val].sum(axis=0)[:2].tolist() == [1, 1]
    assert sorted([*train, *val]) == list(range(40))
    many = np.zeros((40, 1), bool)
    many[[0, 1, 2], 0] = True
    train, val = stratified_split(many, 0.9, seed=1)
    assert many[val].sum() == 2 and many[train].sum() == 1


def test_make_loss_maps_each_name_to_its_configuration():
    counts, n = [100, 10, 2], 200
    dbstar, db, official = (make_loss(name, counts, n) for name in ("dbstar", "db", "db-official"))
    assert torch.allclose(dbstar.pos_weight, torch.tensor([1.0, 0.1, 0.02]))  # DB*: head-weighted positives
    assert torch.equal(db.pos_weight, torch.ones(3)) and torch.equal(official.pos_weight, torch.ones(3))
    assert dbstar.config == DBConfig() and db.config == DBConfig() and official.config.pos_scale == 5.0
    assert torch.allclose(dbstar.class_bias, class_bias(counts, n))
    for name in ("bce", "asl"):  # no prior shift: the model adds zeros at inference
        assert torch.equal(make_loss(name, counts, n).class_bias, torch.zeros(3))
    with pytest.raises(ValueError, match="unknown loss 'focal'; choose one of bce, dbstar, db, db-official, asl"):
        make_loss("focal", counts, n)


def test_asl_focuses_positives_when_gamma_pos_is_set():
    z = torch.tensor([[2.0, -1.0]])
    p = torch.sigmoid(z)
    loss = ASLLoss(2, gamma_pos=1.0)(z, torch.ones(1, 2))
    assert float(loss) == pytest.approx(float(-((1 - p) * torch.log(p)).mean()), rel=1e-6)
