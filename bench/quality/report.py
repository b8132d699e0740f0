"""docs/quality.md and its plot from the benchmark's results (written by run_all; rerun alone with
`python -m bench.quality.report RESULTS_DIR`)."""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.quality.methods import (
    ABLATIONS,
    ALTERNATIVES,
    BASELINES,
    DERIVED,
    FEW_SHOT_ABLATIONS,
    METHODS,
    SIDE_ABLATIONS,
)

GROUPS = ("head", "medium", "tail")
COLUMNS = ("mAP", "mAP_head", "mAP_medium", "mAP_tail")
# What a user gets written: test F1 (macro) with each tag cut at its threshold calibrated on validation,
# and the macro precision and recall behind it. Zero-shot has no validation split to calibrate on.
WRITTEN = ("f1_macro", "precision_macro", "recall_macro")
PLOT_METHODS = ("zero_shot", "linear_probe", "coop", "plain_ft", "default")
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
    return [json.loads(p.read_text()) for p in sorted(results_dir.glob("*/*/*/seed-*/result.json"))]


def cells(results: list[dict], task: str, setting: str, method: str, seeds=None) -> dict[str, Cell]:
    """The method's test columns over its seeds (or over `seeds` only)."""
    rows = [r for r in results if r["task"] == task and r["setting"] == setting and r["method"] == method
            and (seeds is None or r["seed"] in seeds)]
    return {c: Cell([r["test"][c] for r in rows if r["test"].get(c) is not None]) for c in (*COLUMNS, *WRITTEN)}


def per_tag_ap(results: list[dict], task: str, setting: str, method: str) -> np.ndarray:
    rows = [r["test"]["ap"] for r in results if r["task"] == task and r["setting"] == setting and r["method"] == method]
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float).mean(axis=0) \
        if rows else np.array([])


def verdict(a: Cell, b: Cell) -> tuple[str, float]:
    """How `a` compares with `b`: better/worse when the means differ by more than their seed spread."""
    diff = a.mean - b.mean
    spread = math.sqrt(a.std ** 2 + b.std ** 2)
    if abs(diff) <= max(spread, 0.05):
        return "no clear difference", diff
    return ("better" if diff > 0 else "worse"), diff


def _compare(a: dict[str, Cell], b: dict[str, Cell]) -> str:
    total, diff = verdict(a["mAP"], b["mAP"])
    parts = [f"{g} {d:+.1f} ({v})" for g in GROUPS if a[f"mAP_{g}"].values and b[f"mAP_{g}"].values
             for v, d in [verdict(a[f"mAP_{g}"], b[f"mAP_{g}"])]]
    return f"**{total}** ({diff:+.1f} mAP; {', '.join(parts)})"


def target_checks(results: list[dict], task: str) -> list[str]:
    """The targets, each checked: the default beats every baseline by >= 3 mAP overall and on the tail
    (long-tailed), and is never below zero-shot and above the linear probe (1- and 5-shot)."""
    lines = []
    default = cells(results, task, "long-tailed", "default")
    if default["mAP"].values:
        base = {m: cells(results, task, "long-tailed", m) for m in ("zero_shot", "linear_probe", "coop", "plain_ft")}
        base = {m: c for m, c in base.items() if c["mAP"].values}
        for column, what in (("mAP", "overall"), ("mAP_tail", "tail")):
            if not base or not default[column].values:
                continue
            best = max(base, key=lambda m: base[m][column].mean)
            margin = default[column].mean - base[best][column].mean
            lines.append(f"- long-tailed, {what}: default {default[column].text()} vs the best baseline "
                         f"({METHODS[best].label}) {base[best][column].text()}: {margin:+.1f} "
                         f"({'meets' if margin >= 3 else 'misses'} the +3 target).")
    for setting in ("1-shot", "5-shot"):
        d = cells(results, task, setting, "default")["mAP"]
        z = cells(results, task, setting, "zero_shot")["mAP"]
        lp = cells(results, task, setting, "linear_probe")["mAP"]
        if not d.values or not z.values:
            continue
        worst = min(d.values)
        lines.append(f"- {setting}: default {d.text()} (worst seed {worst:.1f}) vs zero-shot {z.mean:.1f}: "
                     f"{'never below' if worst >= z.mean else '**below** on some seed'}"
                     + (f"; vs linear probe {lp.text()}: {'beats it' if d.mean > lp.mean else '**does not** beat it'}"
                        if lp.values else "") + ".")
    return lines


def ablation_lines(results: list[dict], task: str, methods=ABLATIONS, setting: str = "long-tailed") -> list[str]:
    """Each method against its reference (the default, or the default's validated model for a method run
    without the refit) on the same seeds (mean over them; a difference counts past the seeds' spread; a
    one-seed side ablation is compared with the reference's run on that seed)."""
    lines = []
    for m in methods:
        c = cells(results, task, setting, m)
        seeds = sorted({r["seed"] for r in results if r["task"] == task and r["setting"] == setting and r["method"] == m})
        reference = METHODS[m].reference
        default = cells(results, task, setting, reference, seeds)
        if c["mAP"].values and default["mAP"].values:
            on = "" if len(seeds) > 1 else f" (seed {seeds[0]} only)"
            against = "the default" if reference == "default" else "the default's validated model (no refit either)"
            lines.append(f"- **{METHODS[m].label}** vs {against}{'' if setting == 'long-tailed' else ', ' + setting}"
                         f"{on}: {_compare(c, default)}{_seed_by_seed(results, task, setting, m, reference)}.")
    return lines


def _seed_by_seed(results: list[dict], task: str, setting: str, method: str, reference: str = "default") -> str:
    """The paired view the spread rule does not take: a seed shares its split, pool and start between
    the two runs, so a part that moves every seed the same way shows here before it shows in the means."""
    def by_seed(m):
        return {r["seed"]: r["test"]["mAP"] for r in results
                if r["task"] == task and r["setting"] == setting and r["method"] == m}
    stats = paired(by_seed(reference), by_seed(method))
    if stats["seeds"] < 2:
        return ""
    return (f"; seed by seed {stats['min']:+.1f} to {stats['max']:+.1f}, lower on {stats['lower']} and higher on "
            f"{stats['higher']} of {stats['seeds']}")


def paired(default: dict[int, float], ablated: dict[int, float]) -> dict:
    """Seed-by-seed differences ablated − default over the seeds both have: their mean, standard error,
    range, and how many went each way (a difference within 0.05 counts as neither)."""
    seeds = sorted(set(default) & set(ablated))
    diffs = np.array([ablated[s] - default[s] for s in seeds], dtype=float)
    if not seeds:
        return {"seeds": 0}
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else math.nan
    return {"seeds": len(seeds), "default": float(np.mean([default[s] for s in seeds])),
            "ablated": float(np.mean([ablated[s] for s in seeds])), "diff": float(diffs.mean()), "se": se,
            "min": float(diffs.min()), "max": float(diffs.max()),
            "lower": int((diffs < -0.05).sum()), "higher": int((diffs > 0.05).sum())}


def table(results: list[dict], task: str, setting: str, methods: list[str]) -> list[str]:
    lines = ["| method | mAP | head | medium | tail | seeds | F1 at its thresholds | precision / recall |",
             "|---|---|---|---|---|---|---|---|"]
    for m in methods:
        c = cells(results, task, setting, m)
        if not c["mAP"].values:
            continue
        pr = "–" if not c["precision_macro"].values else \
            f"{c['precision_macro'].mean:.1f} / {c['recall_macro'].mean:.1f}"
        lines.append(f"| {METHODS[m].label} | " + " | ".join(c[k].text() for k in COLUMNS)
                     + f" | {len(c['mAP'].values)} | {c['f1_macro'].text()} | {pr} |")
    return lines


def few_shot_table(results: list[dict], task: str, settings: list[str], methods: list[str],
                   column: str = "mAP") -> list[str]:
    lines = ["| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for m in methods:
        row = [cells(results, task, s, m)[column].text() for s in settings]
        if any(t != "–" for t in row):
            lines.append(f"| {METHODS[m].label} | " + " | ".join(row) + " |")
    return lines


def plot(results: list[dict], tasks: dict, path: Path, setting: str = "long-tailed") -> bool:
    """Per-tag test AP against the tag's training photos for the main methods: one marker per tag, and
    a bar across each frequency group at the group's mean. False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.8), dpi=90, squeeze=False)
    markers = "osD^v*P"
    for ax, (name, info) in zip(axes[0], tasks.items()):
        design = info["design"]
        counts = np.array(design["expected_train_counts"], dtype=float)
        groups = np.array(design["groups"])
        spans = {"tail": (counts.min() * 0.9, 20), "medium": (20, 100), "head": (100, counts.max() * 1.1)}
        methods = [m for m in PLOT_METHODS if per_tag_ap(results, name, setting, m).size]
        for i, m in enumerate(methods):
            ap = per_tag_ap(results, name, setting, m)
            colour = f"C{i}"
            # a small horizontal offset per method keeps markers of one tag apart on the log axis
            jitter = 1.0 + 0.025 * (i - (len(methods) - 1) / 2)
            ax.scatter(counts * jitter, ap, s=12, marker=markers[i % len(markers)], color=colour, alpha=0.5,
                       linewidths=0)
            for g, (lo, hi) in spans.items():
                chosen = ap[groups == g]
                if chosen.size and not np.all(np.isnan(chosen)):
                    ax.plot([lo, hi], [np.nanmean(chosen)] * 2, color=colour, linewidth=2.2,
                            label=METHODS[m].label.strip("*") if g == "tail" else None)
        for edge in (20, 100):
            ax.axvline(edge, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlim(counts.min() * 0.85, counts.max() * 1.15)
        ax.set_title(info["title"], fontsize=10)
        ax.set_xlabel("training photos of the tag (log scale)")
        ax.set_ylabel("test AP (%), mean over seeds")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


LONG_TAILED_ROWS = [*BASELINES, "default", *DERIVED, *ALTERNATIVES]
FEW_SHOT_ROWS = ["zero_shot", "linear_probe", "coop", "plain_ft", "default", *DERIVED, *ALTERNATIVES]


def write_report(results_dir: Path, out: Path = DOCS / "quality.md") -> Path:
    run = json.loads((results_dir / "run.json").read_text())
    results = load_results(results_dir)
    tasks, vlm = run["tasks"], run["vlm"]
    plotted = plot(results, tasks, out.parent / PLOT_NAME)
    few = [s for s in run["settings"] if s != "long-tailed"]
    zs = vlm["zero_shot"]
    zs_images = next(iter(zs.values()))["images"]
    timing = run.get("timing", {})
    lines = [
        "# Quality: what `tagger train` gives, against zero-shot CLIP and the usual baselines",
        "",
        "Regenerate everything (stand-in VLM, both tasks, every method and seed, this page and its plot) with:",
        "",
        "```",
        f"python -m bench.quality.run_all{' --quick' if run['quick'] else ''}",
        "```",
        "",
        f"Last run{' (quick)' if run['quick'] else ''}: {run['finished']}, {run['machine']}; "
        f"{timing.get('jobs_run', 0)} training jobs; wall time **{timing.get('wall_s', 0) / 60:.1f} min**, "
        f"CPU time {timing.get('cpu_s', 0) / 60:.1f} min, " + _jobs_text(timing) + " "
        f"(load average {timing.get('load_start', '?')} at the start, {timing.get('load_end', '?')} at the end). "
        "`tagger train` runs with `--device auto`, so a GPU is used when present. The VLM pretraining "
        f"({vlm['pretrain_s'] / 60:.1f} min) is cached between runs and "
        + ("included in" if timing.get("vlm_pretrained_in_this_run", True) else "not part of") + " this wall time."
        + "".join(f" Then `python -m bench.quality.run_all --methods {','.join(a['methods'])} --settings "
                  f"{','.join(a['settings'])}` added {a['timing']['jobs_run']} jobs to it ({a['finished']}, "
                  f"{a['timing']['wall_s'] / 60:.1f} min wall, load average {a['timing']['load_start']} at the start)."
                  for a in run.get("added", [])),
        "",
        "Which choices these numbers drove, and where the paper's claims did not hold here: "
        "`docs/training.md`.",
        "",
        "No real pretrained weights or photos can be downloaded here, so this is a controlled, synthetic "
        "benchmark: a tiny CLIP pretrained here on captioned scenes stands in for a web-pretrained one, and "
        "two tagging tasks in its world stand in for a photographer's catalog. It shows whether training "
        "pays and which parts of the method do, not what the method scores on VOC or COCO (for those, "
        "`bench/quality/reproduce_lt.py`, below).",
        "",
        "## Targets",
        "",
        "Every `tagger train` row runs with the defaults a user gets (epochs, batch size and learning rate "
        "are picked by the trainer from the number of training photos; the few-shot settings only pass "
        "`--val-fraction 0.5`). Test split only scored; mean ± sd over seeds. mAP scores how each tag "
        "ranks the test photos, which is what the targets are set on; the tables also give what a user "
        "gets written: test F1 (macro over tags) with every tag cut at the threshold calibrated on the "
        "run's validation split (bagged max-F1 cuts pooled within frequency groups, `docs/training.md` \"Thresholds\"; a chosen child brings "
        "its parents, as `tagger tag` decides), and the macro precision and recall behind it.",
        "",
    ]
    for name, info in tasks.items():
        lines += [f"{info['title']}:", "", *target_checks(results, name), ""]
    lines += [
        "## Setup",
        "",
        f"- **Stand-in VLM.** open_clip `bench/quality/vlm.json` (ViT, {vlm['model']}) pretrained "
        f"contrastively from scratch on {vlm['config']['n_scenes']:,} generated scenes with 1–"
        f"{vlm['config']['max_objects']} objects and web-like captions (\"a picture of a small red ball on "
        "the left and a green tree.\"), every kind equally often; "
        f"{vlm['config']['epochs']} epochs, batch {vlm['config']['batch_size']} ({vlm['pretrain_s'] / 60:.1f} min).",
        f"- **Zero-shot check** (\"a photo of a {{tag}}.\", CLS view, {zs_images} held-out scenes each): "
        + "; ".join(f"{name}: mAP **{v['mAP']:.1f}** with CLIP's softmax over tags "
                    f"({v.get('mAP_cosine', float('nan')):.1f} ranking raw cosines) vs chance {v['chance_mAP']:.1f}"
                    for name, v in zs.items()) + ".",
    ]
    for name, info in tasks.items():
        d = info["design"]
        counts = d["pool_counts"]
        groups = {g: sum(1 for x in d["groups"] if x == g) for g in GROUPS}
        lines.append(
            f"- **{info['title']}.** {len(d['tags'])} tags on {d['config']['n_pool']} long-tailed photos "
            f"(photos per tag {max(counts)} down to {min(counts)}: {max(counts) / min(counts):.0f}:1; groups by "
            f"expected training photos: head {groups['head']}, medium {groups['medium']}, tail {groups['tail']}); "
            f"test set of {d['config']['n_test']} photos, balanced ({d['config']['test_positives']} per "
            + ("leaf tag" if "definitions" in d else "tag") + "); few-shot pools with every "
            + ("leaf " if "definitions" in d else "") + "tag on 2K photos, a new pool per seed."
            + (" Tags are `kind|colour kind` and `kind|size kind` (`car|red car`), the parent positive when any "
               "child is." if "definitions" in d else " Tags are object kinds."))
    lines += [
        f"- **Seeds.** {', '.join(str(s) for s in run['seeds'])}: the split, initialisation, order and "
        "augmentation change. Zero-shot has no seed.",
        "- **Selection.** Every choice inside `tagger train` (checkpoint, WiSE-FT mix, thresholds) and the "
        "linear probe's weight decay uses the validation split; the test split is only scored.",
        "",
    ]
    for name, info in tasks.items():
        rows = LONG_TAILED_ROWS + ([*ABLATIONS, *SIDE_ABLATIONS] if info["ablations"] else [])
        lines += [f"## {info['title']}: long-tailed, test mAP (%)", "", *table(results, name, "long-tailed", rows), ""]
        refit = [line for s in ["long-tailed", *few] for line in ablation_lines(results, name, DERIVED, s)]
        if refit:
            lines += ["The refit (the validated pick trained again on the validation photos too; every trained "
                      "baseline refits as well), against the default's validated model from the same job:", "", *refit, ""]
        alternatives = [line for s in ["long-tailed", *few] for line in ablation_lines(results, name, ALTERNATIVES, s)]
        if alternatives:
            lines += ["The default without its free branch (one tower, held by L_kd), against the default's "
                      "validated model:", "", *alternatives, ""]
        if info["ablations"]:
            lines += ["Each ablation changes one thing in the default and, like the alternative above, runs without the "
                      "refit, so it is compared with the default's validated model (`no_refit`, same jobs as the "
                      "default). A difference counts only when the means differ by more than the seeds' combined "
                      "standard deviation; an ablation run on one seed (seeds column 1) is compared with the "
                      "reference's run on that seed.", "",
                      *ablation_lines(results, name, [*ABLATIONS, *SIDE_ABLATIONS]), ""]
        if "definitions" in info["design"]:
            lines += ["Hierarchy-aware choices: tagging closes its decisions over the tree (a child brings its "
                      "parents; per-tag AP does not see it, F1 does); path-carrying prompts, a parent ≥ child "
                      "consistency loss and tree-masked attention in the Query2Label head were each measured on "
                      "this task (seed 0) and dropped: `docs/training.md`, \"Hierarchy-aware tagging\".", ""]
        if few:
            ablated = list(FEW_SHOT_ABLATIONS) if info["ablations"] else []
            lines += [f"### {info['title']}: few-shot, test mAP (%)", "",
                      *few_shot_table(results, name, few, FEW_SHOT_ROWS + ablated), "",
                      "Test F1 (macro, %) at each run's calibrated thresholds, what gets written:", "",
                      *few_shot_table(results, name, few, FEW_SHOT_ROWS + ablated, "f1_macro"), ""]
            few_ablations = [line for s in few for line in ablation_lines(results, name, ablated, s)]
            if few_ablations:
                lines += ["The parts that act on the prompts, ablated where photos are few (`FEW_SHOT_ABLATIONS`):",
                          "", *few_ablations, ""]
    if plotted:
        lines += [f"![per-tag test AP against training photos]({PLOT_NAME})", "",
                  "Per-tag test AP (markers, mean over seeds) against the tag's training photos, long-tailed "
                  "setting; the bars are each method's mean over the tail, medium and head groups (dotted "
                  "boundaries at 20 and 100).", ""]
    lines += [
        "## Methods", "",
        "| method | how it is run |", "|---|---|",
        *[f"| {m.label} | {('`tagger train ' + ' '.join(m.args) + '`').replace(' `', '`') if m.kind == 'tagger' else _custom(m)} |"
          for m in METHODS.values()],
        "",
        "Not implemented: LMPT (the paper's strongest baseline): it needs a caption-derived text branch "
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
        "It trains with `tagger train` and prints our mAP total/head/medium/tail beside the paper's (VOC-LT "
        "93.06/86.36/92.83/98.58, COCO-LT 76.19/72.05/75.98/79.12). Not run here: no GPU, no datasets.",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def _num(v) -> str:
    return "–" if v is None else f"{v:.1f}"


def _custom(method) -> str:
    where = "bench/quality/methods.py: "
    if method.kind == "zero_shot":
        how = ("softmax over the tags at CLIP's learned temperature" if method.args == ("softmax",)
               else "each tag ranked by its raw cosine")
        return where + f"no training; cosine of the CLS embedding to \"a photo of a {{tag}}.\", {how}"
    if method.kind == "validated":
        return "the `tagger train` default's own jobs: their validated.pt, the pick before the refit"
    return where + ("logistic regression (BCE) on frozen CLS embeddings, weight decay picked on validation, "
                    "then refit on training and validation photos")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality.report", description=__doc__.split("\n")[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--out", type=Path, default=DOCS / "quality.md")
    args = parser.parse_args(argv)
    print(write_report(args.results_dir, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def _jobs_text(timing: dict) -> str:
    workers, threads = timing.get("workers", 1), timing.get("threads", "?")
    if workers > 1:
        return f"{workers} jobs side by side of {threads} torch thread{'s' if threads != 1 else ''} each"
    return f"one job at a time with {threads} torch threads"
