import pytest

from components.core.errors import SettingsError
from components.core.params import load_params
from components.core.settings import load_settings
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def test_defaults_are_the_embedded_stack(tmp_path):
    settings = load_settings(environ={}, cwd=tmp_path)
    assert settings.workspace == (tmp_path / ".flywheel").resolve()
    assert settings.label_studio_url == "http://127.0.0.1:8080"
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert settings.prefect_api_url == "http://127.0.0.1:4200/api"
    assert settings.external == frozenset()
    assert settings.label_studio_api_key == ""


def test_env_beats_dotenv_beats_workspace_credentials(tmp_path):
    (tmp_path / ".env").write_text("LABEL_STUDIO_URL=http://ls.team:8080/\nMLFLOW_TRACKING_URI=http://from-dotenv\n")
    (tmp_path / ".flywheel").mkdir()
    (tmp_path / ".flywheel" / "credentials.env").write_text("LABEL_STUDIO_API_KEY=from-workspace\n")
    settings = load_settings(environ={"MLFLOW_TRACKING_URI": "http://from-env"}, cwd=tmp_path)
    assert settings.label_studio_url == "http://ls.team:8080"
    assert settings.mlflow_tracking_uri == "http://from-env"
    assert settings.label_studio_api_key == "from-workspace"
    assert settings.external == {"label_studio", "mlflow"}


def test_api_key_never_shows_in_repr(tmp_path):
    settings = load_settings(environ={"LABEL_STUDIO_API_KEY": "s3cret-token"}, cwd=tmp_path)
    assert "s3cret-token" not in repr(settings)


def test_bad_port_says_which_key(tmp_path):
    with pytest.raises(SettingsError, match="FLYWHEEL_MLFLOW_PORT='abc'"):
        load_settings(environ={"FLYWHEEL_MLFLOW_PORT": "abc"}, cwd=tmp_path)


def test_project_params_parse():
    params = load_params(ROOT / "params.yaml")
    assert params.project.config.name == "classification.xml" and params.project.id is None  # found by title


def test_a_registry_name_mlflow_could_not_search_for_is_refused_up_front(tmp_path):
    """A quote in a model name broke MLflow's filter string mid-run, after training (found attaching a
    team's project whose title became the name)."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["registry"]["model_name"] = "team's model"
    raw["project"]["config"] = str(ROOT / raw["project"]["config"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SettingsError, match="registry.model_name"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    "text, message",
    [
        ("project: [unclosed", "not valid YAML"),
        ("project:\n  title: x\n  config: c.xml\n  colour: red\n", "project.colour"),
        ("project:\n  title: x\n  config: c.xml\ndemo:\n  limit: -1\n", "demo.limit"),
        ("demo:\n  limit: 5\n", "missing project, demo.dataset, demo.detection, demo.segmentation, poll, "),
        ("project:\n  title: x\n  config: c.xml\n", "missing demo, poll, data, snapshot, validate, images, train, "),
        ("- just\n- a list\n", "must be a mapping of sections"),
    ],
)
def test_broken_params_name_the_key(tmp_path, text, message):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_params(tmp_path / "params.yaml")


def test_a_section_left_out_is_an_error_naming_it_not_a_silent_default(tmp_path):
    import yaml

    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    del shipped["train"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shipped))
    with pytest.raises(SettingsError, match=r"missing train \(every section and key is required\)"):
        load_params(tmp_path / "params.yaml")


def test_missing_params_file(tmp_path):
    with pytest.raises(SettingsError, match="No .*params.yaml"):
        load_params(tmp_path / "params.yaml")


def test_team_profile_puts_the_data_in_postgres_and_a_bucket(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "credentials.env").write_text("FLYWHEEL_POSTGRES_PASSWORD=pw\nAWS_ACCESS_KEY_ID=k\nAWS_SECRET_ACCESS_KEY=s\n")
    env = {"FLYWHEEL_WORKSPACE": str(tmp_path / "ws"), "FLYWHEEL_PROFILE": "team", "FLYWHEEL_POSTGRES_PORT": "6543"}
    settings = load_settings(environ=env, cwd=tmp_path)
    assert settings.team and settings.dvc_remote == "s3://flywheel/dvc" and settings.mlflow_artifacts == "s3://flywheel/mlflow"
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000" and not {"postgres", "object_store"} & settings.external
    assert settings.database_url("mlflow", "psycopg") == "postgresql+psycopg://flywheel:pw@127.0.0.1:6543/mlflow"
    assert settings.client_env()["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9000"
    assert "pw" not in repr(settings) and "AWS_SECRET" not in repr(settings) and "'s'" not in repr(settings)


def test_team_profile_on_a_teams_own_servers_is_configuration_only(tmp_path):
    env = {"FLYWHEEL_WORKSPACE": str(tmp_path / "ws"), "FLYWHEEL_PROFILE": "team",
           "FLYWHEEL_POSTGRES_URL": "postgresql://u:p@db.internal:5432", "AWS_ENDPOINT_URL_S3": "http://minio.internal:9000",
           "FLYWHEEL_DVC_REMOTE": "s3://team-bucket/dvc"}
    settings = load_settings(environ=env, cwd=tmp_path)
    assert {"postgres", "object_store"} <= settings.external
    assert settings.dvc_remote == "s3://team-bucket/dvc" and settings.s3_endpoint_url == "http://minio.internal:9000"
    from components.adapters import stack

    assert [s.name for s in stack.infrastructure(settings)] == []  # nothing of theirs is started here


def test_a_workspace_keeps_its_profile(tmp_path):
    from components.adapters import stack
    from components.core.errors import StackError

    stack.choose_profile(tmp_path / "ws", "team")
    assert load_settings(environ={"FLYWHEEL_WORKSPACE": str(tmp_path / "ws")}, cwd=tmp_path).team
    with pytest.raises(StackError, match="runs the team profile"):
        stack.choose_profile(tmp_path / "ws", "embedded")
    with pytest.raises(SettingsError, match="FLYWHEEL_PROFILE='big'"):
        load_settings(environ={"FLYWHEEL_WORKSPACE": str(tmp_path / "ws"), "FLYWHEEL_PROFILE": "big"}, cwd=tmp_path)


def test_before_the_first_model_one_change_is_enough_and_the_registry_is_asked_only_then():
    poll = load_params(ROOT / "params.yaml").poll.model_copy(update={"min_new_annotations": 10})
    asked = []

    def has_model(answer: bool):
        return lambda: asked.append(answer) or answer

    assert poll.enough_changes(10, has_model(True)) and asked == []  # enough either way: nobody asked
    assert not poll.enough_changes(0, has_model(False)) and asked == []  # nothing changed: nothing to version
    assert poll.enough_changes(1, has_model(False)) and asked == [False]  # no model yet: one change brings the first
    assert not poll.enough_changes(9, has_model(True))  # a model: wait for ten


@pytest.mark.parametrize(
    "growth, labeled, at_last_scratch, due",
    [
        (0, 500, 20, False),  # off
        (2, 39, 20, False),  # not doubled yet
        (2, 40, 20, True),  # doubled since the last model from scratch
        (2, 80, 40, True),
        (1.5, 59, 40, False),
        (1.5, 60, 40, True),
        (2, 16, None, True),  # no model from scratch among the project's last 100: one now
    ],
)
def test_the_background_retrain_is_due_when_the_labeled_set_grew_by_growth(growth, labeled, at_last_scratch, due):
    params = load_params(ROOT / "params.yaml")
    retrain = params.retrain.model_copy(update={"growth": growth})
    assert retrain.due(labeled, at_last_scratch) is due


def test_a_growth_that_does_not_grow_is_refused_with_what_to_write(tmp_path):
    import yaml

    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    shipped["retrain"]["growth"] = 0.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shipped))
    with pytest.raises(SettingsError, match=r"retrain.growth is 0.5: 0 \(off\), or more than 1"):
        load_params(tmp_path / "params.yaml")
