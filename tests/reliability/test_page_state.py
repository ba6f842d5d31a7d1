"""Page state survives a reload: the chosen dataset is in the address (query parameters), per session."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")


def sidebar_dataset(app: AppTest) -> str:
    return " ".join(caption.value for caption in app.sidebar.caption)


def test_the_chosen_dataset_is_kept_in_the_address_and_restored_from_it(workspace):
    chooser = AppTest.from_file(APP, default_timeout=180)
    chooser.switch_page("views/data.py")
    chooser.run()
    chooser.selectbox[0].set_value("hh_rlhf").run()
    assert chooser.query_params["dataset"] == ["hh_rlhf"] or chooser.query_params["dataset"] == "hh_rlhf"
    assert "hh_rlhf" in sidebar_dataset(chooser)

    reloaded = AppTest.from_file(APP, default_timeout=180)  # a new session, as after a reload
    reloaded.query_params["dataset"] = "hh_rlhf"
    reloaded.switch_page("views/data.py")
    reloaded.run()
    assert "hh_rlhf" in sidebar_dataset(reloaded)

    other = AppTest.from_file(APP, default_timeout=180)  # another visitor: the default, not someone else's choice
    other.switch_page("views/data.py")
    other.run()
    assert "ultrafeedback" in sidebar_dataset(other)


def test_a_crafted_address_cannot_point_at_a_server_path(workspace):
    app = AppTest.from_file(APP, default_timeout=180)
    app.query_params["upload"] = "../../../../etc/passwd"
    app.query_params["dataset"] = "/etc/passwd"
    app.switch_page("views/data.py")
    app.run()
    assert "ultrafeedback" in sidebar_dataset(app) and "passwd" not in sidebar_dataset(app)
