"""Part C of ``sift demo``: the plot, the JSON, the summary table and the README text.

The reading is written from the numbers (gains, spread, where they differ), not from a template
that assumes uncertainty sampling wins: the demo exists to find out.
"""

from __future__ import annotations

import json
from pathlib import Path

from demo.experiment import CurvePoint, ExperimentResult
from demo.loop import LoopResult, VersionResult

NAMES = {"uncertainty": "uncertainty (smallest top-2 margin)", "random": "random"}
COLORS = {"uncertainty": "#1f77b4", "random": "#ff7f0e"}


def plot(exp: ExperimentResult, path: Path) -> Path:
    """Accuracy and macro-F1 against labels, mean over seeds with the min-max range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for ax, metric, title in ((axes[0], "accuracy", "accuracy"), (axes[1], "macro_f1", "macro-F1")):
        for strategy, points in exp.curves.items():
            x = [p.labels for p in points]
            mean = [getattr(p, f"{metric}_mean") for p in points]
            lo = [getattr(p, f"{metric}_min") for p in points]
            hi = [getattr(p, f"{metric}_max") for p in points]
            ax.plot(x, mean, marker="o", ms=3, color=COLORS.get(strategy), label=NAMES.get(strategy, strategy))
            ax.fill_between(x, lo, hi, color=COLORS.get(strategy), alpha=0.18, linewidth=0)
        ax.set_xlabel("labelled texts")
        ax.set_ylabel(f"test {title}")
        ax.grid(alpha=0.3)
    c = exp.config
    fig.suptitle(f"{c.corpus}: {len(c.seeds)} seeds, {c.initial_labels} random seed labels + {c.rounds}×{c.batch} "
                 f"queried; MiniLM {c.num_hidden_layers} layers, max_length {c.max_length}; test n={exp.test_size} "
                 "(shaded: min-max over seeds)", fontsize=9)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(p: CurvePoint, metric: str) -> str:
    return f"{getattr(p, f'{metric}_mean'):.3f} ± {getattr(p, f'{metric}_std'):.3f}"


def table(exp: ExperimentResult) -> str:
    """Markdown table: per label count, both arms (mean ± std over seeds)."""
    unc, rnd = exp.curves.get("uncertainty", []), exp.curves.get("random", [])
    lines = ["| labels | uncertainty acc | random acc | uncertainty macro-F1 | random macro-F1 |",
             "|---:|---:|---:|---:|---:|"]
    for u, r in zip(unc, rnd, strict=False):
        lines.append(f"| {u.labels} | {_fmt(u, 'accuracy')} | {_fmt(r, 'accuracy')} | "
                     f"{_fmt(u, 'macro_f1')} | {_fmt(r, 'macro_f1')} |")
    return "\n".join(lines)


def plot_loop(loop: LoopResult, path: Path) -> Path:
    """Served macro-F1 per product round, per arm: mean over seeds, min-max shaded (part A's style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for arm, points in loop.curves.items():
        x = [p.round for p in points]
        ax.plot(x, [p.macro_f1_mean for p in points], marker="o", ms=3, color=COLORS.get(arm), label=LOOP_NAMES[arm])
        ax.fill_between(x, [p.macro_f1_min for p in points], [p.macro_f1_max for p in points],
                        color=COLORS.get(arm), alpha=0.18, linewidth=0)
    c = loop.config
    ax.set_xticks(range(c.rounds + 1))
    ax.set_xlabel(f"review round ({c.labels_per_round} reviewed labels each; 0 = seed model)")
    ax.set_ylabel("test macro-F1 of the served version")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"through the product: {len(c.seeds)} seeds per arm, {c.seed_labels} seed labels; "
                 f"test n={c.test_size} (shaded: min-max over seeds)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


LOOP_NAMES = {"uncertainty": "uncertainty: confidence routing", "random": "random: audit sample only"}


def loop_table(loop: LoopResult) -> str:
    """Served macro-F1 per round: mean ± std [min-max] over seeds per arm, and the training labels."""
    arms = list(loop.curves)
    head = " | ".join(f"{a} macro-F1 | {a} labels" for a in arms)
    lines = [f"| round | {head} |", "|---:|" + "---:|---:|" * len(arms)]
    for rnd in range(min(len(v) for v in loop.curves.values())):
        cells = []
        for a in arms:
            p = loop.curves[a][rnd]
            cells.append(f"{p.macro_f1_mean:.3f} ± {p.macro_f1_std:.3f} [{p.macro_f1_min:.3f}–{p.macro_f1_max:.3f}] | "
                         f"{p.labels_mean:.0f}")
        lines.append(f"| {rnd} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(v: VersionResult) -> str:
    status = {"promoted": "promoted", "not_promoted": "kept champion"}.get(v.job_status, v.job_status)
    if v.gain is None or v.gain_interval is None:
        return status
    lo, hi = v.gain_interval
    return f"{status}: {v.gain:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def verdict_table(loop: LoopResult) -> str:
    """Each retrain job's promotion verdict: macro-F1 gain over the champion on the classifier's
    evaluation set, with the gate's bootstrap interval."""
    rounds = loop.config.rounds
    lines = ["| arm | seed | " + " | ".join(f"round {r}" for r in range(1, rounds + 1)) + " |",
             "|---|---:|" + "---|" * rounds]
    for a in sorted(loop.arms, key=lambda a: (a.arm != "uncertainty", a.seed)):
        lines.append(f"| {a.arm} | {a.seed} | " + " | ".join(_verdict(v) for v in a.versions[1:]) + " |")
    return "\n".join(lines)


def loop_reading(loop: LoopResult) -> str:
    """What the product loop showed, from its numbers."""
    if len(loop.curves) < 2:
        return "Only one arm ran through the product; no comparison."
    u, r = loop.curves["uncertainty"], loop.curves["random"]
    gaps = [a.macro_f1_mean - b.macro_f1_mean for a, b in zip(u[1:], r[1:], strict=False)]
    spread = max(u[-1].macro_f1_std, r[-1].macro_f1_std)
    by = {(a.arm, a.seed): a for a in loop.arms}
    seeds = loop.config.seeds
    wins = sum(by[("uncertainty", s)].versions[-1].macro_f1 > by[("random", s)].versions[-1].macro_f1 for s in seeds)
    jobs = [v for a in loop.arms for v in a.versions[1:]]
    promoted = sum(v.job_status == "promoted" for v in jobs)

    def conf(arm: str) -> float:
        cs = [c for a in loop.arms if a.arm == arm for rd in a.rounds for c in rd.answered_confidence if c == c]
        return sum(cs) / max(1, len(cs))

    out = [f"Through the running product, served macro-F1 after {len(u) - 1} rounds: uncertainty "
           f"{u[-1].macro_f1_mean:.3f} ± {u[-1].macro_f1_std:.3f}, random {r[-1].macro_f1_mean:.3f} ± "
           f"{r[-1].macro_f1_std:.3f} (from {u[0].macro_f1_mean:.3f} for the shared seed models; mean ± std over "
           f"{len(seeds)} seeds). Uncertainty serves the better model at the end in {wins} of {len(seeds)} seeds; "
           f"the round-by-round gap (uncertainty − random) runs from {min(gaps):+.3f} to {max(gaps):+.3f} against "
           f"a final seed spread of {spread:.3f}.",
           f"The reviewer saw what the routing chose: the mean model confidence of the answered texts was "
           f"{conf('uncertainty'):.2f} in the uncertainty arm and {conf('random'):.2f} in the random arm (audit "
           f"sample, ordered by a random draw). {promoted} of {len(jobs)} retrain jobs were promoted; the others "
           "kept the champion serving because the gate's interval did not clear it (table above: gain in macro-F1 "
           "over the champion on the classifier's evaluation set, with its bootstrap interval)."]
    return "\n\n".join(out)


def _big_share(exp: ExperimentResult) -> dict[str, float]:
    """Per strategy, the share of queried texts from the two most frequent test labels."""
    big = sorted(exp.test_counts, key=lambda k: -exp.test_counts[k])[:2]
    out = {}
    for strategy in exp.curves:
        rounds = [r for a in exp.arms if a.strategy == strategy for r in a.rounds[1:]]
        total = sum(sum(r.queried_labels.values()) for r in rounds)
        hits = sum(r.queried_labels.get(b, 0) for r in rounds for b in big)
        if total:
            out[f"{strategy} ({' + '.join(big)})"] = hits / total
    return out


def reading(exp: ExperimentResult) -> str:
    """An honest, number-driven reading of the result."""
    unc, rnd = exp.curves.get("uncertainty", []), exp.curves.get("random", [])
    if not unc or not rnd:
        return "Only one arm was run; no comparison."
    last_u, last_r = unc[-1], rnd[-1]
    gaps_acc = [u.accuracy_mean - r.accuracy_mean for u, r in zip(unc[1:], rnd[1:], strict=False)]
    gaps_f1 = [u.macro_f1_mean - r.macro_f1_mean for u, r in zip(unc[1:], rnd[1:], strict=False)]
    spread = max(last_u.accuracy_std, last_r.accuracy_std)
    arms = {(a.seed, a.strategy): a for a in exp.arms}
    wins = sum(arms[(s, "uncertainty")].rounds[-1].macro_f1 > arms[(s, "random")].rounds[-1].macro_f1
               for s in exp.config.seeds if (s, "uncertainty") in arms and (s, "random") in arms)
    minority = [lb for lb, n in exp.test_counts.items() if n < 0.05 * exp.test_size]
    top2 = sorted(exp.test_counts, key=lambda k: -exp.test_counts[k])[:2]
    top2_share = sum(exp.test_counts[k] for k in top2) / max(1, exp.test_size)
    out = [
        f"At {last_u.labels} labels uncertainty sampling reaches accuracy {_fmt(last_u, 'accuracy')} and macro-F1 "
        f"{_fmt(last_u, 'macro_f1')}; random sampling {_fmt(last_r, 'accuracy')} and {_fmt(last_r, 'macro_f1')} "
        f"(mean ± std over {len(exp.config.seeds)} seeds). Uncertainty has the higher final macro-F1 in {wins} of "
        f"{len(exp.config.seeds)} seeds.",
        f"Across the query rounds the mean accuracy gap (uncertainty − random) runs from {min(gaps_acc):+.3f} to "
        f"{max(gaps_acc):+.3f}, the macro-F1 gap from {min(gaps_f1):+.3f} to {max(gaps_f1):+.3f}; the seed-to-seed "
        f"spread of final accuracy is about {spread:.3f}.",
    ]
    share = _big_share(exp)
    if share:
        out.append("Of the queried texts, the two largest topics make up "
                   + "; ".join(f"{v:.0%} for {k}" for k, v in share.items())
                   + " (their share of the pool is about the random figure).")
    if max(gaps_f1) > 2 * spread and gaps_f1[-1] > 0:
        out.append(
            f"Why: the corpus is imbalanced ({' and '.join(top2)} are {top2_share:.0%} of the test texts; "
            + ", ".join(minority or ["the small topics"]) + " are under 5% each). "
            "Random labels mostly repeat the big classes, so the small ones stay "
            "under-learnt and macro-F1 lags. The smallest top-2 margin picks texts the model confuses between two "
            "topics — disproportionately the small ones and the boundary cases — so the same budget buys more "
            "information. Accuracy moves less than macro-F1 because the big classes dominate it.")
    elif abs(gaps_acc[-1]) <= spread and abs(gaps_f1[-1]) <= spread:
        out.append(
            "Why the arms are close: with a small, shallow model and few optimiser steps per round, scores are noisy "
            "(the seed spread is as large as the gap), and margin sampling queries from a model that is itself weak "
            "in the first rounds (the cold-start problem), so its early picks are not much better informed than "
            "random ones. At this budget the demo does not show a clear separation; it shows uncertainty is not worse.")
    else:
        out.append(
            "Why: the gap changes sign or size across rounds; margin sampling concentrates on boundary texts, which "
            "helps the classes the model confuses and can cost the classes it already separates. Read the per-round "
            "numbers in results.json rather than one headline.")
    return "\n\n".join(out)


def _gate_level(loop: LoopResult) -> str:
    levels = {v.gate_confidence for a in loop.arms for v in a.versions if v.gate_confidence}
    return "/".join(f"{x:.0%}" for x in sorted(levels)) or "the gate's"


def markdown(exp: ExperimentResult, loop: LoopResult | None, plot_dir: str, wall_s: float) -> str:
    c = exp.config
    retrain = "warm start from the previous round" if c.warm_start else "fresh each round"
    loop_s = (f", product loop {loop.seconds / 60:.1f} min incl. {loop.stack_start_seconds:.0f} s stack start; "
              f"load average {loop.load_before[0]:.1f} at its start, {loop.load_after[0]:.1f} at its end"
              if loop else "")
    parts = [
        "## The loop learns (`sift demo`): does routing by uncertainty beat random labelling?",
        "",
        f"![accuracy vs labels]({plot_dir}accuracy.png)",
        "",
        f"**Setup.** {c.corpus}, {len(exp.labels)} topics; a fixed, held-out test set of {exp.test_size} texts "
        f"(never queried, never trained on) and a pool of {exp.pool_size}. Per seed ({', '.join(map(str, c.seeds))}): "
        f"{c.initial_labels} random seed labels shared by both arms, then {c.rounds} rounds of {c.batch} labels "
        f"chosen by the smallest top-2 margin (what Sift's review queue orders by) or at random; after each round "
        f"the model is retrained with the product's `fine_tune` ({retrain}; "
        f"MiniLM cut to {c.num_hidden_layers} layers, max_length {c.max_length}, ≥{c.min_steps} steps, "
        f"lr {c.learning_rate:g}, head lr {c.head_learning_rate:g}) and scored with the product's `evaluate`.",
        "",
        table(exp),
        "",
    ]
    if loop is not None:
        lc = loop.config
        parts += [
            "### The loop through the product: uncertainty vs random routing",
            "",
            f"![served macro-F1 per round]({plot_dir}loop.png)",
            "",
            f"`sift demo` part B: one local stack (SeaweedFS, Tansu, MLflow, Label Studio), the API under uvicorn, "
            f"the review and reconcile workers and {lc.retrain_workers} retrain workers. Each (arm, seed) is its own "
            f"classifier, side by side on the stack: {len(lc.seeds)} seeds × {{uncertainty, random}}; both arms of a "
            f"seed start from the same seed model ({lc.seed_labels} random labels, ≥{lc.min_per_label} per topic) and "
            f"see the same traffic. Pool texts are streamed to `/classify` until {lc.labels_per_round} review tasks "
            f"wait; the *uncertainty* arm routes confidence < {lc.threshold} (window ordered by the smallest top-2 "
            f"margin), the *random* arm routes nothing by confidence and audits {lc.sample_rate:.0%} of its traffic "
            "(`review_sample_rate`, window ordered by a uniform draw). A simulated reviewer answers "
            f"{lc.labels_per_round} tasks per round through the Label Studio API; the reviewed labels trigger a "
            f"retrain job ({lc.epochs} epochs, warm and fresh candidates, the bootstrap promotion gate), the API "
            "hot-swaps a promoted version, and the version `/classify` answers with is scored on the held-out test "
            f"set ({lc.test_size} texts) with the product's `evaluate` (in-process on the registry's artifact: "
            "classifying the test set through the API would route its texts to review and leak test labels).",
            "",
            loop_table(loop),
            "",
            "Promotion verdicts (gain in macro-F1 over the champion on the classifier's evaluation set, "
            f"{_gate_level(loop)} bootstrap interval):",
            "",
            verdict_table(loop),
            "",
            "**Reading (product loop).** " + loop_reading(loop),
            "",
        ]
    parts += ["**Reading (offline experiment).** " + reading(exp), "",
              f"Wall time on this machine ({exp.machine.get('cpus')} CPUs, torch {exp.machine.get('torch')}): "
              f"{wall_s / 60:.1f} min in all (experiment {exp.seconds / 60:.1f} min"
              f"{loop_s}). Raw numbers: `results.json`. Re-run: `sift demo` (or `make demo`)."]
    return "\n".join(parts) + "\n"


def write_results(out_dir: Path, exp: ExperimentResult, loop: LoopResult | None, wall_s: float) -> dict[str, Path]:
    """In ``out_dir``: ``results.json`` (per-round numbers, no texts), ``accuracy.png``, ``README.md`` (shown
    when browsing the folder) and ``readme-section.md`` (the same text with repository-root paths, for the README)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot(exp, out_dir / "accuracy.png")
    if loop is not None:
        plot_loop(loop, out_dir / "loop.png")
    data = {"wall_seconds": round(wall_s, 1), "experiment": exp.model_dump(mode="json"),
            "loop": loop.model_dump(mode="json") if loop else None}
    res = out_dir / "results.json"
    res.write_text(json.dumps(data, indent=1, default=str) + "\n")
    md = out_dir / "README.md"
    md.write_text(markdown(exp, loop, "", wall_s))
    section = out_dir / "readme-section.md"
    root_rel = out_dir.as_posix().strip("/") if not out_dir.is_absolute() else out_dir.name
    section.write_text(markdown(exp, loop, f"{root_rel}/", wall_s)
                       .replace("`results.json`", f"`{root_rel}/results.json`"))
    return {"plot": png, "results": res, "markdown": md, "readme_section": section}


def rebuild(out_dir: Path) -> dict[str, Path]:
    """Re-render plot and text from an existing ``results.json`` (no training)."""
    data = json.loads((out_dir / "results.json").read_text())
    exp = ExperimentResult.model_validate(data["experiment"])
    if not any(r.queried_labels for a in exp.arms for r in a.rounds[1:]):  # results from before that field
        from demo.corpora import load_corpus
        from demo.experiment import split_corpus

        c = exp.config
        pool, _ = split_corpus(load_corpus(c.corpus, "train"), load_corpus(c.corpus, "test"), c.pool_size, c.test_size)
        for a in exp.arms:
            for r in a.rounds[1:]:
                r.queried_labels = {}
                for i in r.queried:
                    r.queried_labels[pool[i].label] = r.queried_labels.get(pool[i].label, 0) + 1
    loop = None
    if data.get("loop"):
        try:
            loop = LoopResult.model_validate(data["loop"])
        except ValueError:  # a one-pass loop from before the multi-arm one: not comparable, dropped
            loop = None
    return write_results(out_dir, exp, loop, float(data["wall_seconds"]))
