import pytest

from components.core.errors import LabelConfigError
from components.core.labeling_config import load_labeling_config, parse_labeling_config, with_labels

pytestmark = pytest.mark.unit

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
