"""report.html: what a training run learned, per tag, with the validation photos that show why.

One self-contained page in the run folder (plots and thumbnails inlined as data: URIs, no script,
nothing fetched), written at the end of `tagger train` and rebuilt by `tagger report RUN`:

- a table of the vocabulary: training/validation photos, group, AP, precision and recall at the
  calibrated threshold, the threshold (the figures of metrics.json, not recomputed);
- plots: AP against training photos, precision-recall curves of the worst ten and the tail tags,
  validation mAP per epoch of both stages;
- per tag, thumbnails of validation photos: the most confident hits, the most confident false alarms,
  and the positives it missed (lowest scores first): a weak tag often turns out to be wrong labels.

Everything comes from the run folder: metrics.json, dataset.json and val_scores.npy (recomputed from
best.pt for runs made before it existed).
"""
from __future__ import annotations

import base64
import datetime as _dt
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagger.atomic import write_atomic
from tagger.errors import ImageError
from tagger.thumbnails import make_thumbnail
from train import runs

THUMB_SIZE = 112  # px, longer side: enough to tell a wrong label, small enough for 1,000 photos inline
THUMBS_PER_LIST = 6
WORST_TAGS = 10
MAX_PR_CURVES = 24
GROUP_COLOURS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728"}


@dataclass
class TagRow:
    tag: str
    group: str
    train_positives: int
    val_positives: int
    ap: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    threshold: float
    hits: list[tuple[int, float]] = field(default_factory=list)  # (validation row, score)
    false_alarms: list[tuple[int, float]] = field(default_factory=list)
    misses: list[tuple[int, float]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # "hits"/"false_alarms"/"misses" -> photos in all


def write_report(run_dir: str | Path) -> Path:
    """Build RUN_DIR/report.html from the run's files; returns its path."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    run_dir = Path(run_dir)
    metrics = runs.read_json(run_dir / runs.METRICS)
    dataset = runs.read_json(run_dir / runs.DATASET)
    runs.check_aligned(run_dir, dataset["labels"], metrics)  # rows are joined by position
    scores = load_val_scores(run_dir, dataset)
    labels = list(dataset["labels"])
    targets = val_targets(dataset)
    rows = tag_rows(metrics, scores, targets)

    photos = [Path(entry["path"]) for entry in dataset["val"]]
    thumbs = _thumbnails(photos, sorted({i for r in rows for i, _ in r.hits + r.false_alarms + r.misses}))
    env = Environment(loader=PackageLoader("train", "templates"), autoescape=select_autoescape(["html"]))
    html = env.get_template("report.html").render(
        name=runs.read_json(run_dir / runs.CONFIG).get("name", run_dir.name),
        run_dir=str(run_dir.resolve()), metrics=metrics, rows=rows, labels=labels, photos=photos,
        thumbs=thumbs, fmt=_fmt,
        plots={"ap_vs_photos": plot_ap_vs_photos(rows), "pr_curves": plot_pr_curves(rows, scores, targets, labels),
               "history": plot_history(metrics)},
        generated=_dt.datetime.now().astimezone().isoformat(timespec="seconds"))
    out = run_dir / runs.REPORT
    write_atomic(out, html.encode("utf-8"))
    return out


def load_val_scores(run_dir: Path, dataset: dict) -> np.ndarray:
    """The validated model's scores on the validation photos: saved by `tagger train`, else computed from
    its checkpoint (best.pt, or validated.pt after a refit, whose best.pt has seen these photos)."""
    path = run_dir / runs.VAL_SCORES
    if path.is_file():
        scores = np.load(path)
        if scores.shape == (len(dataset["val"]), len(dataset["labels"])):
            return scores
    import torch

    from train.model import score_images

    run = runs.load_run(run_dir, runs.validated_checkpoint(run_dir).name)
    images = run.validation_images()
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), 64):
            parts.append(score_images(run.parts, torch.from_numpy(images[start:start + 64])).numpy())
    scores = np.concatenate(parts) if parts else np.zeros((0, len(run.labels)), np.float32)
    runs.save_val_scores(run_dir, scores)
    return scores


def val_targets(dataset: dict) -> np.ndarray:
    index = {t: i for i, t in enumerate(dataset["labels"])}
    targets = np.zeros((len(dataset["val"]), len(index)), np.uint8)
    for row, entry in enumerate(dataset["val"]):
        targets[row, [index[t] for t in entry["tags"]]] = 1
    return targets


def tag_rows(metrics: dict, scores: np.ndarray, targets: np.ndarray) -> list[TagRow]:
    """One row per tag: metrics.json's figures, and which validation photos to show for it."""
    from train.metrics import precision_recall, predictions

    thresholds = np.array([t["threshold"] for t in metrics["tags"]])
    labels = [t["tag"] for t in metrics["tags"]]
    # Runs from before metrics.json held precision/recall: the same function computes them here.
    precision, recall = precision_recall(scores, targets, thresholds, labels)
    predicted = predictions(scores, thresholds, labels)  # as `tagger tag` decides: children bring parents
    rows = []
    for c, t in enumerate(metrics["tags"]):
        s, y, thr, p = scores[:, c], targets[:, c].astype(bool), t["threshold"], predicted[:, c]
        masks = {"hits": y & p, "false_alarms": ~y & p, "misses": y & ~p}
        rows.append(TagRow(
            tag=t["tag"], group=t["group"], train_positives=t["train_positives"], val_positives=t["val_positives"],
            ap=t["ap"], precision=t.get("precision", precision[c]), recall=t.get("recall", recall[c]), f1=t.get("f1"),
            threshold=thr,
            hits=_pick(s, masks["hits"], descending=True),
            false_alarms=_pick(s, masks["false_alarms"], descending=True),
            misses=_pick(s, masks["misses"], descending=False),
            counts={kind: int(mask.sum()) for kind, mask in masks.items()}))
    return rows


def _pick(scores: np.ndarray, mask: np.ndarray, descending: bool) -> list[tuple[int, float]]:
    rows = np.flatnonzero(mask)
    order = np.argsort(-scores[rows] if descending else scores[rows], kind="stable")
    return [(int(rows[i]), float(scores[rows[i]])) for i in order[:THUMBS_PER_LIST]]


def _thumbnails(photos: list[Path], rows: list[int]) -> dict[int, str | None]:
    """Validation row -> base64 JPEG (None when the photo can no longer be read: moved, deleted)."""
    out: dict[int, str | None] = {}
    for row in rows:
        try:
            out[row] = base64.b64encode(make_thumbnail(photos[row], THUMB_SIZE, quality=75)).decode("ascii")
        except (ImageError, OSError):
            out[row] = None
    return out


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


# -- plots (matplotlib, rendered to inline PNG) --------------------------------------------------------

def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display needed, and never a window from a training run
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=(width, height), dpi=100, squeeze=False)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_ap_vs_photos(rows: list[TagRow]) -> str:
    fig, axes = _figure(7, 4.2)
    ax = axes[0, 0]
    for group, colour in GROUP_COLOURS.items():
        pts = [(r.train_positives, r.ap, r.tag) for r in rows if r.group == group and r.ap is not None]
        if pts:
            ax.scatter([max(p[0], 1) for p in pts], [p[1] for p in pts], c=colour, label=group, s=28)
        for n, ap, tag in pts:
            ax.annotate(tag, (max(n, 1), ap), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("training photos with the tag (log scale)")
    ax.set_ylabel("validation AP (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(title="group", loc="lower right")
    return _png(fig)


def pr_curve_tags(rows: list[TagRow]) -> list[int]:
    """The tags whose curves matter most: the worst ten by AP and every tail tag, worst first."""
    measured = [i for i, r in enumerate(rows) if r.ap is not None]
    worst = sorted(measured, key=lambda i: rows[i].ap)[:WORST_TAGS]
    tail = [i for i in measured if rows[i].group == "tail"]
    return sorted(set(worst) | set(tail), key=lambda i: rows[i].ap)[:MAX_PR_CURVES]


def plot_pr_curves(rows: list[TagRow], scores: np.ndarray, targets: np.ndarray, labels: list[str]) -> str | None:
    chosen = pr_curve_tags(rows)
    if not chosen:
        return None
    cols = min(4, len(chosen))
    n_rows = math.ceil(len(chosen) / cols)
    fig, axes = _figure(3.0 * cols, 2.6 * n_rows, n_rows, cols)
    axes = axes.ravel()
    for ax, c in zip(axes, chosen):
        precision, recall = _pr_points(scores[:, c], targets[:, c].astype(bool))
        ax.plot(recall, precision, color=GROUP_COLOURS[rows[c].group])
        at = scores[:, c] >= rows[c].threshold
        y = targets[:, c].astype(bool)
        if at.any():  # the operating point `tagger tag` uses
            ax.plot([100 * (at & y).sum() / y.sum()], [100 * (at & y).sum() / at.sum()], "ko", ms=4)
        ax.set_title(f"{labels[c]} (AP {_fmt(rows[c].ap)}, {rows[c].group})", fontsize=8)
        ax.set_xlim(0, 102)
        ax.set_ylim(0, 102)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(chosen):]:
        ax.axis("off")
    fig.supxlabel("recall (%)", fontsize=9)
    fig.supylabel("precision (%)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _pr_points(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(y[order])
    ranks = np.arange(1, len(order) + 1)
    return 100 * hits / ranks, 100 * hits / max(1, int(y.sum()))


def plot_history(metrics: dict) -> str | None:
    history = [h for h in metrics.get("history", []) if h.get("mAP") is not None]
    if not history:
        return None
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure(7, 3.6)
    ax = axes[0, 0]
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    x = np.arange(1, len(history) + 1)
    for stage, style in ((1, "-o"), (2, "-s")):
        pts = [(i, h["mAP"]) for i, h in zip(x, history) if h["stage"] == stage]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, ms=3, label=f"stage {stage}")
    before = metrics.get("before_training", {}).get("mAP")
    if before is not None:
        ax.axhline(before, color="grey", ls="--", lw=1, label="before training")
    ax.set_xlabel("epoch (stage 1, then stage 2)")
    ax.set_ylabel("validation mAP (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)
