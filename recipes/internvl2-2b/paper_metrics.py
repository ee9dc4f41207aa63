"""The paper's three metrics from lmms-eval results, the baseline check and the deltas.

SleighVL's paper reports MME, RealWorldQA and OCRBench. lmms-eval writes one
``*_results.json`` per run; InternVL2's official evaluation uses 6 tiles for MME and RealWorldQA
and 24 for OCRBench, and lmms-eval's ``max_tiles`` is one value per run, so a model is evaluated
in two runs (see README.md, "Baseline, training and evaluation") and both files are given here::

    python recipes/internvl2-2b/paper_metrics.py \\
        --baseline eval/base6/*_results.json eval/base24/*_results.json \\
        --trained eval/run6/*_results.json eval/run24/*_results.json

Scores, from lmms-eval's metrics: MME = ``mme_perception_score`` + ``mme_cognition_score``;
RealWorldQA = 100 x ``exact_match``; OCRBench = 1000 x ``ocrbench_accuracy`` (lmms-eval
reports the fraction of its 1,000 items). With ``--baseline`` alone it checks the re-measured
InternVL2-2B against the published 1876.8 / 57.3 / 784 within ``TOLERANCE``; with ``--trained``
too it prints each metric's delta and the paper's (SleighVL: +36.2 / +0.5 / +19). The exit
status is 1 when the baseline is outside the tolerance (``--no-check`` to report only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

#: Published scores (InternVL2-2B: its model card / the paper's baseline row; SleighVL: the paper).
PUBLISHED = {
    "InternVL2-2B": {"mme": 1876.8, "realworldqa": 57.3, "ocrbench": 784.0},
    "SleighVL": {"mme": 1913.0, "realworldqa": 57.8, "ocrbench": 803.0},
}
#: How far a re-measured InternVL2-2B may sit from the published numbers and still count as the
#: same model. Greedy evaluation of the same weights has no sampling noise; what remains is the
#: harness (lmms-eval vs VLMEvalKit prompts and answer matching) and kernels. These bounds are
#: our judgement, not calibrated: about 1.5% of MME, 1 point of RealWorldQA, 10 OCRBench items.
TOLERANCE = {"mme": 30.0, "realworldqa": 1.0, "ocrbench": 10.0}
#: task -> (lmms-eval metric names summed, scale)
METRICS = {
    "mme": (("mme_perception_score", "mme_cognition_score"), 1.0),
    "realworldqa": (("exact_match",), 100.0),
    "ocrbench": (("ocrbench_accuracy",), 1000.0),
}
#: lmms-eval names a value ``metric,filter``; where a metric has several filters, this order decides.
FILTER_ORDER = ("flexible-extract", "none")


def _metric(task_results: Mapping[str, Any], metric: str, where: str) -> float:
    keys = [k for k in task_results if k == metric or k.startswith(metric + ",")]
    if not keys:
        raise SystemExit(f"{where}: no `{metric}` in its results (found: {', '.join(sorted(task_results))})")
    if len(keys) > 1:
        ranked = sorted(keys, key=lambda k: FILTER_ORDER.index(k.split(",", 1)[1]) if "," in k and k.split(",", 1)[1] in FILTER_ORDER else len(FILTER_ORDER))
        keys = ranked[:1]
    return float(task_results[keys[0]])


def paper_scores(results_files: Sequence[str | Path]) -> dict[str, float]:
    """MME, RealWorldQA and OCRBench from lmms-eval results files; each task must appear once.

    Raises:
        SystemExit: a file is unreadable, a task is missing or given twice, a metric is absent.
    """
    found: dict[str, tuple[Mapping[str, Any], str]] = {}
    for f in results_files:
        try:
            data = json.loads(Path(f).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{f}: cannot read lmms-eval results ({exc})") from exc
        for task, values in (data.get("results") or {}).items():
            if task in METRICS:
                if task in found:
                    raise SystemExit(f"{task} appears in both {found[task][1]} and {f}; give each task once")
                found[task] = (values, str(f))
    missing = [t for t in METRICS if t not in found]
    if missing:
        raise SystemExit(f"no results for {', '.join(missing)} in {', '.join(map(str, results_files))}")
    scores = {}
    for task, (names, scale) in METRICS.items():
        values, where = found[task]
        scores[task] = scale * sum(_metric(values, name, where) for name in names)
    return scores


def baseline_problems(scores: Mapping[str, float]) -> list[str]:
    """Metrics where a re-measured InternVL2-2B is further from the published one than ``TOLERANCE``."""
    ref = PUBLISHED["InternVL2-2B"]
    return [
        f"{task}: {scores[task]:.1f} vs published {ref[task]:.1f} (tolerance ±{TOLERANCE[task]:g})"
        for task in METRICS
        if abs(scores[task] - ref[task]) > TOLERANCE[task]
    ]


def report(
    baseline: Mapping[str, float], trained: Mapping[str, float] | None = None, published: bool = True
) -> str:
    """The table: published, baseline (and trained, delta, the paper's delta).

    With ``published=False`` (a host the paper did not train, such as LLaVA-NeXT) the columns of
    InternVL2-2B's and SleighVL's published numbers are left out.
    """
    ref, paper = PUBLISHED["InternVL2-2B"], PUBLISHED["SleighVL"]
    head = f"{'metric':<12}" + (f"{'published':>10}" if published else "") + f"{'baseline':>10}"
    if trained is not None:
        head += f"{'trained':>10}{'delta':>9}" + (f"{'paper':>8}" if published else "")
    lines = [head]
    for task in METRICS:
        line = f"{task:<12}" + (f"{ref[task]:>10.1f}" if published else "") + f"{baseline[task]:>10.1f}"
        if trained is not None:
            line += f"{trained[task]:>10.1f}{trained[task] - baseline[task]:>+9.1f}"
            line += f"{paper[task] - ref[task]:>+8.1f}" if published else ""
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", nargs="+", required=True, help="lmms-eval *_results.json of the baseline")
    parser.add_argument("--trained", nargs="+", help="lmms-eval *_results.json of the trained model")
    parser.add_argument("--no-check", action="store_true", help="report only; do not fail on the baseline check")
    parser.add_argument(
        "--reference",
        choices=("InternVL2-2B", "none"),
        default="InternVL2-2B",
        help="published numbers to compare with; `none` for a host the paper did not train (no check, no columns)",
    )
    args = parser.parse_args(argv)
    base = paper_scores(args.baseline)
    trained = paper_scores(args.trained) if args.trained else None
    print(report(base, trained, published=args.reference != "none"))
    if args.reference == "none":
        return 0
    problems = baseline_problems(base)
    if problems:
        print("baseline differs from the published InternVL2-2B:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 0 if args.no_check else 1
    print("baseline matches the published InternVL2-2B within the tolerance")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
