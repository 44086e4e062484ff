"""Read a Label Studio labeling config: tag names, the data key of the image, and the label set.

The config in `label_studio_config/` is the single source of the label set; the rest of the project
asks this module for it instead of repeating it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from components.core.errors import LabelConfigError

# control tag -> (task type, the child tag that lists the label set)
CONTROL_TAGS = {
    "Choices": ("classification", "Choice"),
    "RectangleLabels": ("detection", "Label"),
    "BrushLabels": ("segmentation", "Label"),
    "PolygonLabels": ("segmentation", "Label"),
}
# smart tools (`smart="true"`): a person draws one to ask the mask assistant for an object's outline; they
# prompt, they are not labels, and only a mask config (`BrushLabels`, `PolygonLabels`) may have them
PROMPT_TAGS = ("RectangleLabels", "KeyPointLabels")


@dataclass(frozen=True)
class LabelingConfig:
    """What flywheel needs to know about a labeling config.

    Attributes:
        xml: The config text, as sent to Label Studio.
        from_name: The control tag's `name` (e.g. "label"); results carry it as `from_name`.
        to_name: The object tag's `name` (e.g. "image"); results carry it as `to_name`.
        control_type: The control tag (e.g. "Choices"); results carry it, lower-cased, as `type`.
        data_key: The task data field holding the image URL (`$image` -> "image").
        labels: The label set, in the config's order.
        prompts: The `name`s of the smart tools that prompt the mask assistant (`PROMPT_TAGS`), if any.
    """

    xml: str
    from_name: str
    to_name: str
    control_type: str
    data_key: str
    labels: tuple[str, ...]
    prompts: tuple[str, ...] = ()

    @property
    def result_type(self) -> str:
        """The `type` of a result produced by the control tag ("choices", "rectanglelabels", "brushlabels")."""
        return self.control_type.lower()

    @property
    def task(self) -> str:
        """The task type the control tag asks for ("classification", "detection", "segmentation")."""
        return CONTROL_TAGS[self.control_type][0]


def parse_labeling_config(xml: str, source: str = "labeling config") -> LabelingConfig:
    """Parse a config with one supported control tag (`CONTROL_TAGS`) bound to one `<Image>`, and for masks
    the smart tools that prompt the assistant (`PROMPT_TAGS` with `smart="true"`, the same labels or fewer).

    Args:
        xml: The config text.
        source: Where it came from, for error messages (a path or a project title).

    Returns:
        The tag names, the image data key and the label set.

    Raises:
        LabelConfigError: The XML is malformed, has not exactly one supported control tag bound to an
            `Image`, or no labels.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LabelConfigError(f"{source} is not valid XML ({e}); fix the file and run again.") from e
    images = {el.get("name"): el for el in root.iter("Image")}
    smart = [el for el in root.iter() if el.tag in PROMPT_TAGS and el.get("smart", "").lower() == "true"]
    if not any(el.tag in CONTROL_TAGS and CONTROL_TAGS[el.tag][0] == "segmentation" for el in root.iter()):
        smart = []  # no mask control: a smart tool is the labels themselves (e.g. a detection config's smart rectangle)
    controls = [el for el in root.iter() if el.tag in CONTROL_TAGS and el not in smart]
    if len(controls) != 1 or not images:
        found = ", ".join(f"<{el.tag}>" for el in controls) or "none"
        raise LabelConfigError(
            f"{source} must hold exactly one control tag of {', '.join(f'<{t}>' for t in CONTROL_TAGS)} bound to "
            f"an <Image> (found {found} and {len(images)} <Image>); start from label_studio_config/classification.xml "
            "detection.xml or segmentation.xml."
        )
    control = controls[0]
    to_name = control.get("toName", "")
    if to_name not in images:
        raise LabelConfigError(
            f"{source}: <{control.tag} toName={to_name!r}> names no <Image>; "
            f"images here are {sorted(images)}."
        )
    value = images[to_name].get("value", "")
    if not value.startswith("$"):
        raise LabelConfigError(f'{source}: <Image value="{value}"> must name a task field, like "$image".')
    child = CONTROL_TAGS[control.tag][1]
    labels = tuple(choice.get("value") or "" for choice in control.iter(child))
    if not labels or "" in labels or len(set(labels)) != len(labels):
        raise LabelConfigError(
            f"{source}: <{control.tag}> needs at least one <{child} value=...>, each non-empty and unique "
            f"(found {list(labels)})."
        )
    _check_prompts(smart, control, labels, source)
    return LabelingConfig(
        xml=xml,
        from_name=control.get("name", ""),
        to_name=to_name,
        control_type=control.tag,
        data_key=value[1:],
        labels=labels,
        prompts=tuple(el.get("name", "") for el in smart),
    )


def _check_prompts(smart: list[ET.Element], control: ET.Element, labels: tuple[str, ...], source: str) -> None:
    """Smart tools point at the image the masks are drawn on, with labels the mask control has."""
    for el in smart:
        if el.get("toName") != control.get("toName"):
            raise LabelConfigError(f"{source}: the smart tool <{el.tag} name={el.get('name')!r}> must point at the image the masks are "
                                   f"drawn on (toName={control.get('toName')!r}), not {el.get('toName')!r}.")
        extra = [c.get("value") for c in el.iter("Label") if c.get("value") not in labels]
        if extra:
            raise LabelConfigError(f"{source}: the smart tool <{el.tag} name={el.get('name')!r}> has labels {extra} that "
                                   f"<{control.tag}> lacks; a smart tool's label is the class of the mask it asks for.")


def load_labeling_config(path: str | Path) -> LabelingConfig:
    """Read and parse a config file from `label_studio_config/` (or anywhere).

    Raises:
        LabelConfigError: The file is missing or not a valid config.
    """
    path = Path(path)
    try:
        xml = path.read_text()
    except FileNotFoundError as e:
        known = sorted(p.name for p in path.parent.glob("*.xml")) if path.parent.is_dir() else []
        raise LabelConfigError(
            f"No labeling config at {path}. Known configs there: {known or 'none'}."
        ) from e
    return parse_labeling_config(xml, source=str(path))


def with_labels(config: LabelingConfig, labels: list[str] | tuple[str, ...]) -> LabelingConfig:
    """The same config with its label set replaced, e.g. for a dataset laid out `class_name/image.png`.

    Args:
        config: A parsed config (its tags and layout are kept).
        labels: The new label set, in order.

    Returns:
        A parsed config whose XML lists exactly `labels`.
    """
    root = ET.fromstring(config.xml)
    names = {config.from_name, *config.prompts}  # the smart tools ask for the same classes
    for control in [el for el in root.iter() if el.get("name") in names and el.tag in (*CONTROL_TAGS, *PROMPT_TAGS)]:
        child = CONTROL_TAGS.get(control.tag, ("", "Label"))[1]
        for choice in list(control.iter(child)):
            control.remove(choice)
        for label in labels:
            ET.SubElement(control, child, value=str(label))
    ET.indent(root)
    return parse_labeling_config(ET.tostring(root, encoding="unicode"), source="generated config")
