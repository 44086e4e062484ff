"""`flywheel bench strategy`: boxes, masks drawn by hand, or masks with the assistant, on the demo set, in
annotation hours.

Runs `flywheel strategy --dataset digit-masks` with params.yaml's `strategy` section (published costs
per object: a box by extreme clicking 7 s, a polygon mask 79 s; with the assistant, what a simulated
person spends: the box, a look, correction clicks, drawing by hand when clicks fail) and records the
comparison: its plot beside bench/RESULTS.md, the sentences it printed, and `strategy_report` in
bench/results.json.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from bench.results import BENCH, record
from components.studies import strategy
from components.studies.datasets import SEGMENTATION
from components.core.params import load_params
from components.production.assist import seconds_with_assistant

ROOT = Path(__file__).resolve().parents[1]
COUNT = 1300  # images of the demo set: 300 held out, 1,000 to label


def main(echo=print) -> None:
    params = load_params(ROOT / "params.yaml")
    costs, mask_costs = params.strategy.seconds_per_object, params.strategy.mask_costs()
    items = strategy.from_dataset(
        SEGMENTATION, ROOT / ".flywheel" / "bench" / "strategy", COUNT, costs, progress=echo,
        assisted=lambda image, target: seconds_with_assistant(image, target, mask_costs, params.images.max_pixels),
    )
    pool, held_out = strategy.split(items, params.strategy.held_out)
    labels = [str(d) for d in range(10)]
    echo(f"{len(pool)} images to label, {len(held_out)} held out; budgets {params.strategy.hours} h")
    points, _ = strategy.compare(pool, held_out, labels, params.strategy, params.architectures, progress=echo)
    per_mask = sum(i.seconds["assisted"] for i in pool) / sum(len(json.loads(i.target)["boxes"]) for i in pool)
    publish(points, len(pool), len(held_out), per_mask, echo)


def publish(points: list[strategy.StrategyPoint], pool: int, held_out: int, per_mask: float | None, echo=print) -> None:
    """Judge the measured points and record them: plot, sentences, `strategy_report`."""
    params = load_params(ROOT / "params.yaml")
    costs = params.strategy.seconds_per_object
    verdicts = strategy.judge(points, params.strategy)
    strategy.write(points, verdicts, BENCH / "strategy", f"{SEGMENTATION}: boxes, masks, masks with the assistant; costs per object "
                   f"{dict(costs)} s", {**costs, "assisted_per_mask": per_mask})
    chosen = verdicts[params.strategy.metric]
    figures = {"strategy_report": {
        "metric": chosen.metric, "target": chosen.target, "sooner": chosen.sooner, "sentence": chosen.sentence,
        "hours": {k: (list(v) if v else None) for k, v in chosen.hours.items()},
        "hours_saved": list(chosen.hours_saved) if chosen.hours_saved else None,
        "assisted_seconds_per_mask": None if per_mask is None else round(per_mask, 2),
    }}
    rows = "\n".join(
        f"| {strategy.NAMES[p.strategy]} | {p.hours:.2f} | {p.images} | {p.scores['box_map50']:.3f} | {p.scores['mask_map50']:.3f} |" for p in points
    )
    sentences = "\n".join(f"- **{strategy.METRICS[m]}** (target {v.target:g}): {v.sentence}" for m, v in verdicts.items())
    mask_costs = params.strategy.mask_costs()
    simulated = f"{per_mask:.1f} s per mask on average over the {pool} images" if per_mask else "not measured"
    markdown = f"""## Boxes, masks, or masks with the assistant? (`flywheel bench strategy`)

Measured {datetime.now(UTC):%Y-%m-%d} on this machine (2 cores, no GPU). The demo set with exact
instance masks (`{SEGMENTATION}`, {pool} images to label in one fixed order, {held_out}
held out at random), labeled as boxes (CenterNet) and as instance masks (mask CenterNet; its boxes are the
masks' tight boxes), and as masks made with the mask assistant (the same masks, so the same model, on more
images per hour), each trained from scratch ({params.strategy.train.steps} steps, the loop's
training) on what {params.strategy.hours} hours of annotation buy: a box costs
{costs['boxes']:g} s (extreme clicking, Papadopoulos et al., ICCV 2017; 34.5 s drawn the classic way), a
polygon mask {costs['masks']:g} s (COCO, Lin et al., ECCV 2014). A mask with the assistant costs what a
simulated person spends on it: the box ({mask_costs.box:g} s), a look at GrabCut's mask ({mask_costs.verify:g} s), a
click where it is most wrong ({mask_costs.click:g} s each; Xu et al., CVPR 2016's protocol) until mask IoU >= 0.8, and
after {mask_costs.max_clicks} clicks the mask drawn by hand ({mask_costs.draw:g} s more): {simulated}. The simulated
person knows the true mask (an oracle, as in the interactive-segmentation literature), a click's seconds
include looking at the new mask, and a mask accepted at IoU >= 0.8 counts as theirs: the assisted strategy
trains on the true masks, as masks drawn by hand do. GrabCut answers throughout; the project's mask head
answers instead once it measures better on boxes (`flywheel bench assist` times both). Every model is scored on the same
held-out images by box mAP@0.5 and mask mAP@0.5 (a box model's mask is its box, filled). Curves
`ceiling - scale * hours^-exponent` per strategy; the hours to the target come with 80% intervals
from {strategy.BOOTSTRAPS} parametric bootstrap refits, and a strategy is called sooner only when at least
{strategy.SURE:.0%} of refits agree. The team's metric in params.yaml is `{params.strategy.metric}`.

What `flywheel strategy` printed:

{sentences}

| strategy | annotation hours | images | held-out box mAP@0.5 | held-out mask mAP@0.5 |
|---|---|---|---|---|
{rows}

![boxes, masks, masks with the assistant](strategy/strategy.png)

One seed per point; the image set has no image-level class (1-4 digits per image), so the third
strategy of the issue, image-level classes, does not apply to it. `python -m bench.strategy
--republish` judges the points saved in `bench/strategy/strategy.json` again (after a change to the
verdict, without retraining).
"""
    record(figures, "strategy", markdown)
    echo(markdown)


if __name__ == "__main__":
    import sys

    if "--republish" in sys.argv:
        saved = json.loads((BENCH / "strategy" / "strategy.json").read_text())
        points = [strategy.StrategyPoint(**p) for p in saved["points"]]
        pool = len(strategy.split(list(range(COUNT)), load_params(ROOT / "params.yaml").strategy.held_out)[0])
        publish(points, pool, COUNT - pool, saved["costs"].get("assisted_per_mask"))
    else:
        main()
