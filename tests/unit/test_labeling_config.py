from pathlib import Path

import pytest

from components.core.errors import LabelConfigError
from components.core.labeling_config import load_labeling_config, parse_labeling_config, with_labels

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]

CONFIG = """<View><Image name="img" value="$photo"/>
<Choices name="cls" toName="img"><Choice value="cat"/><Choice value="dog"/></Choices></View>"""


def test_reads_tags_and_labels_from_the_config():
    config = parse_labeling_config(CONFIG)
    assert (config.from_name, config.to_name, config.data_key) == ("cls", "img", "photo")
    assert config.labels == ("cat", "dog")
    assert config.result_type == "choices"


def test_shipped_classification_config(classification_config):
    assert classification_config.labels == tuple(str(d) for d in range(10))
    assert classification_config.data_key == "image"


@pytest.mark.parametrize(
    "xml, message",
    [
        ("<View><Image", "not valid XML"),
        ('<View><Image name="i" value="$i"/></View>', "exactly one control tag of <Choices>"),
        ('<View><Image name="i" value="$i"/><Choices name="c" toName="x"><Choice value="a"/></Choices></View>', "names no <Image>"),
        ('<View><Image name="i" value="i"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>', "must name a task field"),
        ('<View><Image name="i" value="$i"/><Choices name="c" toName="i"></Choices></View>', "at least one <Choice"),
        ('<View><Image name="i" value="$i"/><Choices name="c" toName="i"><Choice value="a"/><Choice value="a"/></Choices></View>', "unique"),
    ],
)
def test_bad_configs_say_what_is_wrong(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_labeling_config(xml)


def test_missing_config_file_lists_known_ones(tmp_path):
    (tmp_path / "classification.xml").write_text(CONFIG)
    with pytest.raises(LabelConfigError, match=r"No labeling config .*classification\.xml"):
        load_labeling_config(tmp_path / "detection.xml")


def test_with_labels_replaces_the_label_set_only():
    config = with_labels(parse_labeling_config(CONFIG), ["ant", "bee", "cow"])
    assert config.labels == ("ant", "bee", "cow")
    assert (config.from_name, config.to_name, config.data_key) == ("cls", "img", "photo")


SMART = """<View><Image name="img" value="$image"/>
<BrushLabels name="mask" toName="img"><Label value="cat"/><Label value="dog"/></BrushLabels>
<RectangleLabels name="box" toName="img" smart="true" smartOnly="true"><Label value="cat"/><Label value="dog"/></RectangleLabels>
<KeyPointLabels name="click" toName="img" smart="true"><Label value="cat"/></KeyPointLabels></View>"""


def test_smart_tools_prompt_the_assistant_and_are_not_the_labels():
    config = parse_labeling_config(SMART)
    assert (config.from_name, config.control_type, config.labels) == ("mask", "BrushLabels", ("cat", "dog"))
    assert config.prompts == ("box", "click")


@pytest.mark.parametrize("name", ["segmentation.xml", "photo_segmentation.xml", "segmentation_polygon.xml"])
def test_shipped_mask_configs_have_the_assistant(name):
    config = load_labeling_config(ROOT / "label_studio_config" / name)
    assert config.prompts == ("box_prompt", "click_prompt")


@pytest.mark.parametrize(
    "xml, message",
    [
        (SMART.replace("BrushLabels", "Choices").replace("<Label value=\"cat\"/><Label value=\"dog\"/></Choices>",
                                                          "<Choice value=\"cat\"/><Choice value=\"dog\"/></Choices>"), "exactly one control tag"),
        (SMART.replace('<KeyPointLabels name="click" toName="img"', '<KeyPointLabels name="click" toName="other"'), "must point at the image"),
        (SMART.replace('<Label value="cat"/></KeyPointLabels>', '<Label value="cow"/></KeyPointLabels>'), r"labels \['cow'\]"),
        (SMART.replace(' smart="true" smartOnly="true"', ""), "exactly one control tag"),
    ],
)
def test_bad_smart_tools_say_what_is_wrong(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_labeling_config(xml)


def test_with_labels_gives_the_smart_tools_the_same_labels():
    config = with_labels(parse_labeling_config(SMART), ["ant", "bee"])
    assert config.labels == ("ant", "bee") and config.prompts == ("box", "click")
    assert parse_labeling_config(config.xml).prompts == ("box", "click")


def test_a_detection_configs_own_smart_rectangle_is_its_labels():
    xml = """<View><Image name="img" value="$image"/>
<RectangleLabels name="box" toName="img" smart="true"><Label value="cat"/></RectangleLabels></View>"""
    config = parse_labeling_config(xml)
    assert (config.from_name, config.task, config.prompts) == ("box", "detection", ())
