"""docs/quality.md and its plot from the benchmark's results (written by run_all; rerun alone with
`python -m bench.quality.report RESULTS_DIR`)."""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.quality.methods import METHODS

GROUPS = ("head", "medium", "tail")
COLUMNS = ("mAP", "mAP_head", "mAP_medium", "mAP_tail")
PLOT_METHODS = ("zero_shot", "linear_probe", "coop", "dval", "full", "loss_bce")
DOCS = Path(__file__).resolve().parents[2] / "docs"
PLOT_NAME = "quality_ap_vs_frequency.png"


@dataclass
class Cell:
    values: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    def text(self) -> str:
        if not self.values:
            return "–"
        return f"{self.mean:.1f}" if len(self.values) == 1 else f"{self.mean:.1f} ± {self.std:.1f}"


def load_results(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results_dir.glob("*/*/seed-*/result.json"))]


def cells(results: list[dict], setting: str, method: str) -> dict[str, Cell]:
    rows = [r for r in results if r["setting"] == setting and r["method"] == method]
    return {c: Cell([r["test"][c] for r in rows if r["test"][c] is not None]) for c in COLUMNS}


def per_tag_ap(results: list[dict], setting: str, method: str) -> np.ndarray:
    rows = [r["test"]["ap"] for r in results if r["setting"] == setting and r["method"] == method]
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float).mean(axis=0) \
        if rows else np.array([])


def verdict(a: Cell, b: Cell) -> tuple[str, float]:
    """How `a` compares with `b`: better/worse when the means differ by more than their seed spread."""
    diff = a.mean - b.mean
    spread = math.sqrt(a.std ** 2 + b.std ** 2)
    if abs(diff) <= max(spread, 0.05):
        return "no clear difference", diff
    return ("better" if diff > 0 else "worse"), diff


def claims(results: list[dict], setting: str = "long-tailed") -> list[str]:
    """The paper's claims, each checked on our numbers, in plain words."""
    have = {r["method"] for r in results if r["setting"] == setting}
    checks = [
        ("full", "zero_shot", "HP-DVAL vs zero-shot CLIP (paper: beats it, most on head and tail)"),
        ("full", "coop", "HP-DVAL vs CoOp-style prompt tuning (paper: beats it)"),
        ("full", "linear_probe", "HP-DVAL vs a linear probe"),
        ("full", "zero_shot_cos", "HP-DVAL vs zero-shot scored per tag as `tagger` scores (raw cosine)"),
        ("dval", "zero_shot_cos", "DVAL (stage 1) vs zero-shot with the same per-tag scoring: does aligning the "
                                  "image tower help?"),
        ("hpt", "coop", "HPT only vs CoOp: do the dual view and hierarchical prompts help without stage 1?"),
        ("dval_hpt", "dval", "adding HPT (stage 2) to DVAL (paper: helps)"),
        ("full", "dval_hpt", "adding semantic consistency L_sc (paper: helps)"),
        ("full", "full_global", "dual view vs the global view alone (paper: the local view helps)"),
        ("full", "joint", "sequential stages vs joint training (paper: sequential is better, 93.06 vs 90.51 VOC-LT)"),
        ("full", "loss_bce", "DB* vs BCE (paper: DB* is better)"),
        ("full", "loss_asl", "DB* vs ASL (paper: DB* is better)"),
        ("full", "loss_db", "DB* vs DB (paper: the head-class weight helps)"),
    ]
    lines = []
    for a, b, what in checks:
        if a not in have or b not in have:
            continue
        ca, cb = cells(results, setting, a), cells(results, setting, b)
        total, diff = verdict(ca["mAP"], cb["mAP"])
        parts = []
        for g in GROUPS:
            v, d = verdict(ca[f"mAP_{g}"], cb[f"mAP_{g}"])
            parts.append(f"{g} {d:+.1f} ({v})")
        lines.append(f"- **{what}**: {METHODS[a].label} is **{total}** than {METHODS[b].label} "
                     f"({diff:+.1f} mAP; {', '.join(parts)})."
                     .replace("is **no clear difference** than", "shows **no clear difference** from"))
    return lines


def findings(results: list[dict], task: dict, setting: str = "long-tailed") -> list[str]:
    """Plain statements read off the numbers: who wins, and the mechanisms the numbers point at."""
    means = {m: cells(results, setting, m)["mAP"] for m in MAIN}
    means = {m: c for m, c in means.items() if c.values}
    if not means:
        return []
    order = sorted(means, key=lambda m: -means[m].mean)
    lines = [f"- Best on the long-tailed test set: **{METHODS[order[0]].label}** ({means[order[0]].mean:.1f} mAP)"
             + (f"; HP-DVAL as specified ranks {order.index('full') + 1} of {len(order)} ({means['full'].mean:.1f})."
                if "full" in means else ".")]
    if "zero_shot" in means and "zero_shot_cos" in means and means["zero_shot"].mean > means["zero_shot_cos"].mean + 2:
        lines.append(
            f"- The stand-in's cosines carry a per-photo offset: ranking raw cosines gives "
            f"{means['zero_shot_cos'].mean:.1f} mAP, CLIP's softmax over the tags {means['zero_shot'].mean:.1f}. "
            "`tagger` scores every tag on its own (a photo's tags are not exclusive), so every `tagger train` "
            "method starts from the raw-cosine level and has to learn the offset away.")
    if "full" in means and "loss_bce" in means and means["loss_bce"].mean > means["full"].mean:
        counts = np.array(task["expected_train_counts"], dtype=float)
        weight = counts / counts.max()
        tail = [w for w, g in zip(weight, task["groups"]) if g == "tail"]
        lines.append(
            f"- DB*'s head-class weight w_c = n_c / max n scales each tag's positive term by "
            f"{weight.min():.2f}–1 here ({min(tail):.2f}–{max(tail):.2f} for tail tags), so the positives of "
            f"rare tags barely count; with BCE the same method reaches {means['loss_bce'].mean:.1f} mAP "
            f"(vs {means['full'].mean:.1f}).")
    if "full" in means and "full_global" in means and means["full_global"].mean > means["full"].mean:
        lines.append(f"- The local (patch) view does not pay here: the same method with the global view alone "
                     f"(α = 1) reaches {means['full_global'].mean:.1f} mAP (vs {means['full'].mean:.1f}).")
    return lines


def table(results: list[dict], setting: str, methods: list[str]) -> list[str]:
    lines = ["| method | mAP | head | medium | tail | seeds |", "|---|---|---|---|---|---|"]
    for m in methods:
        c = cells(results, setting, m)
        if not c["mAP"].values:
            continue
        lines.append(f"| {METHODS[m].label} | " + " | ".join(c[k].text() for k in COLUMNS)
                     + f" | {len(c['mAP'].values)} |")
    return lines


def few_shot_table(results: list[dict], settings: list[str], methods: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for m in methods:
        row = [cells(results, s, m)["mAP"].text() for s in settings]
        if any(t != "–" for t in row):
            lines.append(f"| {METHODS[m].label} | " + " | ".join(row) + " |")
    return lines


def plot(results: list[dict], task: dict, path: Path, setting: str = "long-tailed") -> bool:
    """Per-tag test AP against the tag's training photos for the main methods: one marker per tag, and
    a bar across each frequency group at the group's mean. False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    counts = np.array(task["expected_train_counts"], dtype=float)
    groups = np.array(task["groups"])
    spans = {"tail": (counts.min() * 0.9, 20), "medium": (20, 100), "head": (100, counts.max() * 1.1)}
    fig, ax = plt.subplots(figsize=(8, 4.6), dpi=100)
    markers = "osD^v*P"
    methods = [m for m in PLOT_METHODS if per_tag_ap(results, setting, m).size]
    for i, m in enumerate(methods):
        ap = per_tag_ap(results, setting, m)
        colour = f"C{i}"
        # a small horizontal offset per method keeps markers of one tag apart on the log axis
        jitter = 1.0 + 0.025 * (i - (len(methods) - 1) / 2)
        ax.scatter(counts * jitter, ap, s=14, marker=markers[i % len(markers)], color=colour, alpha=0.55, linewidths=0)
        for g, (lo, hi) in spans.items():
            chosen = ap[groups == g]
            if chosen.size and not np.all(np.isnan(chosen)):
                ax.plot([lo, hi], [np.nanmean(chosen)] * 2, color=colour, linewidth=2.2,
                        label=METHODS[m].label if g == "tail" else None)
    for edge in (20, 100):
        ax.axvline(edge, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(counts.min() * 0.85, counts.max() * 1.15)
    top = ax.get_ylim()[1]
    for g, (lo, hi) in spans.items():
        ax.text(np.sqrt(lo * hi), top, g, ha="center", va="bottom", fontsize=9, color="grey")
    ax.set_xlabel("training photos of the tag (log scale)")
    ax.set_ylabel("test AP (%), mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


MAIN = ["zero_shot", "zero_shot_cos", "linear_probe", "coop", "hpt", "dval", "dval_hpt", "full", "full_global", "joint",
        "loss_bce", "loss_asl", "loss_db"]
FEW_SHOT = ["zero_shot", "linear_probe", "coop", "full", "loss_bce"]


def write_report(results_dir: Path, out: Path = DOCS / "quality.md") -> Path:
    run = json.loads((results_dir / "run.json").read_text())
    results = load_results(results_dir)
    task, vlm = run["task"], run["vlm"]
    plotted = plot(results, task, out.parent / PLOT_NAME)
    few = [s for s in run["settings"] if s != "long-tailed"]
    zs = vlm["zero_shot"]
    zs_images = next(iter(zs.values()))["images"]
    groups = {g: [t for t, gg in zip(task["tags"], task["groups"]) if gg == g] for g in GROUPS}
    timing = run.get("timing", {})
    lines = [
        "# Quality: HP-DVAL against its baselines",
        "",
        "Regenerate everything (stand-in VLM, data, every method and seed, this page and its plot) with:",
        "",
        "```",
        f"python -m bench.quality.run_all{' --quick' if run['quick'] else ''}",
        "```",
        "",
        f"Last run{' (quick)' if run['quick'] else ''}: {run['finished']}, {run['machine']}; "
        f"{timing.get('jobs_run', 0)} training jobs; wall time **{timing.get('wall_s', 0) / 60:.1f} min**, "
        f"CPU time {timing.get('cpu_s', 0) / 60:.1f} min with {timing.get('threads', '?')} torch threads "
        f"(the machine was shared with other work: load average {timing.get('load_start', '?')} at the start, "
        f"{timing.get('load_end', '?')} at the end). `tagger train` runs with `--device auto`, so a GPU is used "
        "when present.",
        "",
        "No real pretrained weights or photos can be downloaded here, so this is a controlled, synthetic "
        "benchmark: it shows whether the method's parts do what they should on a long-tailed task when "
        "starting from a vision-language model, not what it scores on VOC or COCO. For the paper's datasets "
        "use `bench/quality/reproduce_lt.py` (below).",
        "",
        "## Summary",
        "",
        *findings(results, task),
        "",
        "## Setup",
        "",
        f"- **Stand-in VLM.** open_clip `bench/quality/vlm.json` (ViT, {vlm['model']}) pretrained "
        f"contrastively from scratch on {vlm['config']['n_scenes']:,} generated scenes with 1–"
        f"{vlm['config']['max_objects']} objects and web-like captions (\"a picture of a small red ball on "
        "the left and a green tree.\"), every kind equally often; "
        f"{vlm['config']['epochs']} epochs, batch {vlm['config']['batch_size']} ({vlm['pretrain_s'] / 60:.1f} min).",
        f"- **Zero-shot check** (\"a photo of a {{tag}}.\", CLS view, {zs_images} held-out scenes each): "
        + "; ".join(f"{name}: mAP **{v['mAP']:.1f}** with CLIP's softmax over tags "
                    f"({v.get('mAP_cosine', float('nan')):.1f} ranking raw cosines) vs chance {v['chance_mAP']:.1f}, "
                    "top-1 precision "
                    f"{v['top1_precision']:.1f} vs chance {v['chance_top1']:.1f}" for name, v in zs.items())
        + ". Well above chance, and lower on the photo style: the domain gap fine-tuning has to close.",
        f"- **Long-tailed task.** {len(task['tags'])} tags (object kinds) on {task['config']['n_pool']} photos in "
        "the downstream style (smaller objects, clutter, overlap, ~60% typical colours); photos per tag follow "
        f"a power law n_r = {task['config']['n_max']}·((r+{task['config']['shift']:g})/"
        f"{1 + task['config']['shift']:g})^−{task['config']['exponent']:g}: "
        f"{', '.join(str(n) for n in task['pool_counts'])}. `tagger train` holds out "
        f"{task['config']['val_fraction']:.0%} (stratified) for validation. Groups by training photos "
        f"(DESIGN §5): head {len(groups['head'])} ({', '.join(groups['head'])}), medium {len(groups['medium'])}, "
        f"tail {len(groups['tail'])} ({', '.join(groups['tail'])}).",
        f"- **Test set.** {task['config']['n_test']} photos, balanced: every tag on exactly "
        f"{task['config']['test_positives']}. Never seen by training or selection.",
        "- **Few-shot.** K-shot pools with every tag on exactly 2K photos; `--val-fraction 0.5` gives about K "
        "to train and K to validate; a new pool per seed.",
        f"- **Schedules.** Long-tailed: {run['schedules']['long-tailed']}; "
        + "; ".join(f"{s}: {run['schedules'][s]}" for s in few)
        + ". Epochs are fixed in advance; the stage-1 learning rates shown are the ones selected on validation "
        "(below). "
        "The paper's 1e-5 barely moves a tiny tower in 30 epochs, so larger rates are tried.",
        f"- **Seeds.** {', '.join(str(s) for s in run['seeds'])}: the split, initialisation, order and "
        "augmentation change; mean ± standard deviation over seeds. Zero-shot has no seed.",
        "- **Selection.** Every choice (checkpoint epoch, linear-probe weight decay, thresholds, the "
        "schedules) uses the validation split; the test split is only scored.",
        "",
        "## Selection on validation",
        "",
        f"The stage-1 learning rate is picked per setting by the validation mAP of "
        f"{METHODS[run['selection']['method']].label}, seed {run['selection']['seed']} (the test split is not scored "
        "for these runs); every method of that setting that trains the image tower then uses it. Validation mAP:",
        "",
        *selection_table(run["selection"]["settings"]),
        "",
        "## Long-tailed task: test mAP (%)",
        "",
        *table(results, "long-tailed", MAIN),
        "",
    ]
    if plotted:
        lines += [f"![per-tag test AP against training photos]({PLOT_NAME})", "",
                  "Per-tag test AP (markers, mean over seeds) against the tag's training photos; the bars are "
                  "each method's mean over the tail, medium and head groups (dotted boundaries at 20 and 100).", ""]
    lines += ["## What the numbers say", "",
              "A difference counts only when the means differ by more than the seeds' combined standard "
              "deviation; otherwise it is reported as no clear difference.", "",
              *claims(results), ""]
    if few:
        lines += ["## Few-shot: test mAP (%)", "", *few_shot_table(results, few, FEW_SHOT), ""]
        for setting in few:
            wanted = ("HP-DVAL vs zero-shot CLIP", "HP-DVAL vs CoOp", "HP-DVAL vs a linear probe", "DB* vs BCE")
            lines += [c.replace("- **", f"- **{setting}: ", 1) for c in claims(results, setting)
                      if any(w in c for w in wanted)]
        lines.append("")
    lines += [
        "## Methods", "",
        "| method | how it is run |", "|---|---|",
        *[f"| {m.label} | {'`tagger train ' + ' '.join(m.args) + '`' if m.kind == 'tagger' else _custom(m)} |"
          for m in METHODS.values()],
        "",
        "Not implemented: LMPT (the paper's strongest baseline) — it needs a caption-derived text branch "
        "that `tagger` does not have.",
        "",
        "## The paper's datasets",
        "",
        "With VOC2007/VOC2012 or COCO 2017 and the VOC-LT / COCO-LT split files of the "
        "Distribution-Balanced-loss release (as LMPT ships them: `APPENDIX/VOCdevkit/voc_lt_{train,test}.txt`, "
        "`voc_labels.txt`, `longtail2012/class_{freq,split}.pkl`; COCO likewise under `APPENDIX/coco/`, with list "
        "paths relative to `--root`), on a GPU:",
        "",
        "```",
        "python bench/quality/reproduce_lt.py --dataset voc-lt --root /data/voc --appendix /data/appendix",
        "python bench/quality/reproduce_lt.py --dataset coco-lt --root /data/coco --appendix /data/appendix",
        "```",
        "",
        "It trains with `tagger train` (ViT-B-16, batch 32, lr 1e-5, 20 epochs by default) and prints our "
        "mAP total/head/medium/tail beside the paper's (VOC-LT 93.06/86.36/92.83/98.58, COCO-LT "
        "76.19/72.05/75.98/79.12). Not run here: no GPU, no datasets.",
        "",
    ]
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def selection_table(settings: dict) -> list[str]:
    lrs = sorted({r["lr"] for sel in settings.values() for r in sel["rows"]})
    lines = ["| setting | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    for name, sel in settings.items():
        by_lr = {r["lr"]: r["val"].get("mAP") for r in sel["rows"]}
        cells_ = [f"**{_num(by_lr.get(lr))}**" if lr == sel["chosen_lr"] else _num(by_lr.get(lr)) for lr in lrs]
        lines.append(f"| {name} | " + " | ".join(cells_) + " |")
    return lines


def _num(v) -> str:
    return "–" if v is None else f"{v:.1f}"


def _custom(method) -> str:
    where = "bench/quality/methods.py: "
    if method.kind == "zero_shot":
        how = ("softmax over the tags at CLIP's learned temperature" if method.args == ("softmax",)
               else "each tag ranked by its raw cosine")
        return where + f"no training; cosine of the CLS embedding to \"a photo of a {{tag}}.\", {how}"
    return where + {"linear_probe": "logistic regression (BCE) on frozen CLS embeddings, weight decay picked on "
                                    "validation",
                    "joint": "stage 1 and stage 2 trained together (student, γ and both contexts; "
                             "L_cls + L_kd + L_sc)"}[method.kind]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.report", description=__doc__.split("\n")[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--out", type=Path, default=DOCS / "quality.md")
    args = parser.parse_args(argv)
    print(write_report(args.results_dir, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
