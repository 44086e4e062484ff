"""The detectors: output shapes, images with no objects, jitter, and a loss that goes down."""

import pytest
import torch

from components.networks.detectors import DETECTORS, build_detector, jitter, keep_confident
from components.core.errors import SettingsError

pytestmark = pytest.mark.model
SIZE = 64


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [34.0, 20.0, 60.0, 50.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]


@pytest.mark.parametrize("name", sorted(set(DETECTORS) - {"fasterrcnn_mobilenet"}))  # torchvision's: test_pretrained_detectors
def test_forward_loss_decode_and_embed_shapes(name):
    torch.manual_seed(0)
    net = build_detector(name, num_classes=3, options={"width": 8, "head_width": 8})
    outputs = net(torch.rand(2, 3, SIZE, SIZE))
    assert outputs["heatmap"].shape == (2, 3, SIZE // 4, SIZE // 4)
    loss = net.loss(outputs, _targets())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    detections = net.eval().decode(net(torch.rand(2, 3, SIZE, SIZE)), score_threshold=0.0, max_detections=7)
    assert len(detections) == 2
    for detection in detections:
        assert detection["boxes"].shape == (7, 4) and detection["labels"].shape == detection["scores"].shape == (7,)
        assert torch.all(detection["scores"][:-1] >= detection["scores"][1:])
        assert detection["labels"].max() < 3
    assert net.embed(outputs).shape[0] == 2 and net.embed(outputs).ndim == 2


def test_a_batch_without_objects_trains_and_decodes_to_nothing_confident():
    net = build_detector("centernet", 3, {"width": 8, "head_width": 8})
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    outputs = net(torch.rand(2, 3, SIZE, SIZE))
    loss = net.loss(outputs, empty)
    assert torch.isfinite(loss)
    loss.backward()
    detections = net.eval().decode(net(torch.rand(2, 3, SIZE, SIZE)), score_threshold=1.1)
    assert [len(d["boxes"]) for d in detections] == [0, 0]


def test_decode_is_deterministic_and_keep_confident_drops_overlapping_second_guesses():
    net = build_detector("centernet", 3, {"width": 8, "head_width": 8}).eval()
    outputs = net(torch.rand(1, 3, SIZE, SIZE))
    first, second = net.decode(outputs)[0], net.decode(outputs)[0]
    assert all(torch.equal(first[k], second[k]) for k in first)
    detections = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 11.0], [30.0, 30.0, 40.0, 40.0]]),
        "scores": torch.tensor([0.9, 0.6, 0.2]),
        "labels": torch.tensor([1, 2, 1]),
    }
    kept = keep_confident(detections, score_threshold=0.3)
    assert kept["labels"].tolist() == [1] and kept["scores"].tolist() == [pytest.approx(0.9)]


def test_a_few_steps_lower_the_loss_on_a_tiny_set():
    torch.manual_seed(0)
    net = build_detector("centernet", 3, {"width": 8, "head_width": 16})
    images, targets = torch.rand(2, 3, SIZE, SIZE), _targets()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = net.loss(net(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_jitter_moves_boxes_with_the_pixels_and_keeps_them_inside():
    image = torch.zeros(3, SIZE, SIZE)
    image[:, 10:20, 30:50] = 1.0
    boxes = torch.tensor([[30.0, 10.0, 50.0, 20.0]])
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        moved, moved_target = jitter(image, {"boxes": boxes}, generator)
        moved_boxes = moved_target["boxes"]
        assert moved.shape == image.shape
        x1, y1, x2, y2 = moved_boxes[0].tolist()
        assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
        # The bright patch is still under its box: most of its ink lies inside.
        ink = moved.sum(0)
        inside = ink[round(y1) : round(y2), round(x1) : round(x2)].sum()
        assert inside > 0.9 * ink.sum()
    empty, nothing = jitter(image, {"boxes": torch.zeros(0, 4)}, generator)
    assert empty.shape == image.shape and nothing["boxes"].shape == (0, 4)


def test_unknown_detector_and_option_say_what_to_fix():
    with pytest.raises(SettingsError, match="Unknown detector 'yolo'"):
        build_detector("yolo", 3)
    with pytest.raises(SettingsError, match="architectures.centernet .* option"):
        build_detector("centernet", 3, {"depth": 9})


def test_a_detector_registered_before_its_trunk_was_a_backbone_loads_with_its_own_input_scale():
    from components.networks.detectors import CenterNet

    trained = CenterNet(3)
    old = {(k.removeprefix("features.")): v for k, v in trained.state_dict().items() if k != "input_std"}  # the old names
    loaded = CenterNet(3)
    loaded.load_state_dict(old)  # strict, as the registry loads
    assert float(loaded.input_std) == 0.25  # what it was trained on
    assert all(torch.equal(a, b) for a, b in zip(loaded.features.state_dict().values(), trained.features.state_dict().values()))
    assert float(CenterNet(3).input_std) == 0.5  # a new one: as self-supervised pretraining normalises


def test_copy_paste_puts_a_labeled_object_where_nothing_is_labeled_with_its_box_and_mask():
    from components.networks.detectors import copy_paste

    images = torch.zeros(2, 3, 64, 64)
    images[0, :, 10:20, 10:30] = 1.0
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:20, 10:30] = True
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 30.0, 20.0]]), "labels": torch.tensor([2]), "masks": masks},
               {"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([1]), "masks": torch.zeros(1, 64, 64, dtype=torch.bool)}]
    targets[1]["masks"][0, :8, :8] = True
    pasted_images, pasted = copy_paste(images, targets, torch.Generator().manual_seed(0), probability=1.0)
    assert pasted[1]["labels"].tolist()[0] == 1 and 2 in pasted[1]["labels"].tolist()  # its own object kept, one pasted
    k = pasted[1]["labels"].tolist().index(2)
    x1, y1, x2, y2 = pasted[1]["boxes"][k].int().tolist()
    assert pasted[1]["masks"][k].sum() == (x2 - x1) * (y2 - y1)  # a solid rectangle stays one, rescaled
    assert (pasted_images[1, :, pasted[1]["masks"][k]] == 1.0).all()  # the donor's pixels under its mask
    assert torch.equal(pasted[1]["boxes"][0], targets[1]["boxes"][0])  # nothing covered, nothing moved
    assert not (pasted[1]["masks"][k] & targets[1]["masks"][0]).any()
    assert copy_paste(images, targets, torch.Generator(), probability=0.0)[1] is targets  # off: untouched


def test_a_detectors_trunk_is_a_backbone_pretraining_and_label_next_can_use():
    from components.learning.pretraining import build_network, embed_with
    from components.networks.backbones import backbone_of, load_backbone

    for name in ("centernet", "mask_centernet"):
        trunk = backbone_of(build_network(name, 4, {}))
        assert trunk is not None and trunk(torch.rand(2, 3, 64, 64)).shape == (2, 64)  # one vector per image
        state = trunk.state_dict()
        assert load_backbone(build_network(name, 7, {}), state)  # fits whatever the classes
        vectors = embed_with(state, name, {}, 4, torch.rand(3, 3, 64, 64))
        assert vectors.shape == (3, 64) and abs(float((vectors**2).sum(axis=1).mean()) - 1.0) < 1e-5


def test_train_copy_paste_reaches_the_training_step_of_boxes_and_masks(monkeypatch):
    from components.tasks import object_training
    from components.tasks.detection import Detection
    from components.tasks.segmentation import Segmentation

    seen = []
    real = object_training.copy_paste
    monkeypatch.setattr(object_training, "copy_paste", lambda *a: seen.append(a[-1]) or real(*a))  # a spy, the real function runs
    for task in (Detection(), Segmentation()):
        name = "centernet" if task.builds("centernet") else "mask_centernet"
        module = task.module(name, {"width": 8, "head_width": 8}, ["a", "b", "c"], 0.01, augment=True, copy_paste=0.5)
        targets = _targets()
        if isinstance(task, Segmentation):
            targets = [{**t, "masks": torch.zeros(len(t["boxes"]), SIZE, SIZE, dtype=torch.bool)} for t in targets]
            for k, box in enumerate(targets[0]["boxes"].int().tolist()):
                targets[0]["masks"][k, box[1] : box[3], box[0] : box[2]] = True
        loss = module.training_step(module.augmented((torch.rand(2, 3, SIZE, SIZE), targets)), 0)
        assert torch.isfinite(loss)
    assert seen == [0.5, 0.5]
    # and Lightning augments each training batch on the CPU, before moving it to the device
    import lightning as L

    module = Detection().module("centernet", {"width": 8, "head_width": 8}, ["a", "b", "c"], 0.01, augment=True, copy_paste=0.25)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([(torch.rand(2, 3, SIZE, SIZE), _targets())] * 2, batch_size=None))
    assert seen[2:] == [0.25, 0.25]
