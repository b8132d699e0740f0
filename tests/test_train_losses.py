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
