"""`python -m bench.cold_start_switch`: when should "Label next" stop picking typical images and start
picking uncertain ones?

Offline, on the pretrained backbone (the same SimCLR recipe as the loop, 60 epochs on 1,000 MNIST
digits; 500 held out): a labeler takes 20 images at a time from "Label next" up to 200 labels; after
each block the model is trained again (backbone frozen below 40 labels, then at lr/10, as the loop
does) and scored on the held-out images. "Label next" is the loop's own code: `rank_typical` (TypiClust
on the pretrained embeddings) while fewer than `switch` images are labeled, then `rank_for_labeling`
(margin uncertainty x k-center on the model's embeddings). switch = 0 starts with 20 random images
(2 per class is not knowable before labeling). Mean of 3 seeds. About 12 minutes on 2 cores.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.pretrain_choice import data, embed, fit_head, simclr
from components.networks.architectures import ConvNet4
from components.learning.selection import rank_for_labeling, rank_typical
from components.tasks.classification import margin_uncertainty

SWITCHES = (0, 50, 100, 1000)
BLOCK, BUDGET = 20, 200


def run(state: dict, features: np.ndarray, pool, pool_y, held, held_y, switch: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    labeled: list[int] = []
    scores = []
    net = None
    while len(labeled) < BUDGET:
        rest = np.setdiff1d(np.arange(len(pool)), labeled)
        if not labeled and switch == 0:
            block = rng.choice(rest, BLOCK, replace=False).tolist()
        elif len(labeled) < switch:
            block = rest[rank_typical(features[rest], features[labeled], BLOCK, seed=seed)[:BLOCK]].tolist()
        else:
            assert net is not None
            with torch.no_grad():
                probabilities = torch.softmax(net(pool[rest]), 1).numpy()
                model_features = net.features(pool).numpy()
            order = rank_for_labeling(margin_uncertainty(probabilities), model_features[rest], model_features[labeled], BLOCK, 4)
            block = rest[order[:BLOCK]].tolist()
        labeled += block
        torch.manual_seed(seed)
        net = fit_head(state, "frozen" if len(labeled) < 40 else "lr/10", pool[labeled], torch.tensor(pool_y[labeled]).long())
        with torch.no_grad():
            scores.append(float((net(held).argmax(1).numpy() == held_y).mean()))
    return scores


def main() -> None:
    torch.set_num_threads(2)
    pool, pool_y, held, held_y = data()
    backbone = ConvNet4(10).features
    simclr(backbone, 128, pool, "strong", 0.2, 60)
    state = backbone.state_dict()
    features = embed(backbone, pool)
    print("labels: " + " ".join(f"{n:5d}" for n in range(BLOCK, BUDGET + 1, BLOCK)), flush=True)
    for switch in SWITCHES:
        curves = np.array([run(state, features, pool, pool_y, held, held_y, switch, seed) for seed in range(3)])
        print(f"switch {switch:4d}: " + " ".join(f"{v:.3f}" for v in curves.mean(0)), flush=True)


if __name__ == "__main__":
    main()
