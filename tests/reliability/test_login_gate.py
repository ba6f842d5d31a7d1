"""The login gate: loopback by default, sharing refused without a login, the password asked before any page."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import access, launch

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "dashboard" / "app.py")


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    monkeypatch.delenv(access.PASSWORD_ENV, raising=False)
    return tmp_path / "secrets.toml"  # absent: no [auth]


def test_loopback_is_the_default_everywhere():
    assert 'address = "127.0.0.1"' in (REPO / ".streamlit" / "config.toml").read_text()
    assert "HOST    ?= 127.0.0.1" in (REPO / "Makefile").read_text()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "", "::"])
def test_binding_beyond_loopback_is_refused_without_a_login(no_login, host):
    with pytest.raises(access.BindRefused, match=access.PASSWORD_ENV):
        access.check_bind(host, no_login)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_login(no_login, host):
    access.check_bind(host, no_login)


def test_a_password_or_an_oidc_section_allows_sharing(no_login, monkeypatch):
    no_login.write_text('[auth]\nredirect_uri = "http://x:8501/oauth2callback"\ncookie_secret = "s"\n')
    access.check_bind("0.0.0.0", no_login)
    no_login.write_text("[other]\nkey = 1\n")
    with pytest.raises(access.BindRefused):
        access.check_bind("0.0.0.0", no_login)
    monkeypatch.setenv(access.PASSWORD_ENV, "open sesame")
    access.check_bind("0.0.0.0", no_login)


def test_the_launcher_refuses_before_starting_streamlit(no_login, monkeypatch, capsys):
    monkeypatch.setattr(access, "SECRETS_FILE", no_login)
    monkeypatch.setattr(launch, "check_bind", lambda host: access.check_bind(host, no_login))
    started = []
    monkeypatch.setattr(launch.os, "execv", lambda *args: started.append(args))

    assert launch.main(["--host", "0.0.0.0"]) == 2
    assert not started and "refusing to listen on '0.0.0.0'" in capsys.readouterr().err
    assert launch.main(["--port", "8600"]) == 0  # no --host: loopback
    assert started and started[0][1][-4:] == ["--server.address", "127.0.0.1", "--server.port", "8600"]


def test_the_password_is_asked_before_any_page_renders(monkeypatch):
    monkeypatch.setenv(access.PASSWORD_ENV, "correct horse")
    app = AppTest.from_file(APP, default_timeout=180).run()
    assert [field.label for field in app.text_input] == ["Password"]
    assert [title.value for title in app.title] == ["Margin Lab"]  # no page title, no sidebar dataset
    assert not app.sidebar.caption

    app.text_input[0].input("wrong")
    app.button[0].click().run()
    assert [error.value for error in app.error] == ["Wrong password."] and not app.sidebar.caption

    app.text_input[0].input("correct horse")
    app.button[0].click().run()
    assert not app.error and app.sidebar.caption  # the app itself now renders
    assert "Password" not in [field.label for field in app.text_input]
