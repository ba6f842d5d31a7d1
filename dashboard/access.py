"""Who may open the dashboard: everyone on loopback, only people who log in anywhere else.

Two ways to log in, either enough:

- a shared password in ``$MARGIN_LAB_PASSWORD``, asked for before any page renders and compared in constant
  time (``hmac.compare_digest``); it is kept in the session, never shown or written anywhere;
- Streamlit's own OIDC login (``st.login``), when ``.streamlit/secrets.toml`` has an ``[auth]`` section.

`check_bind` is the launcher's rule (``python -m dashboard.launch``, ``make demo``): binding beyond loopback
without a login configured is refused. `require_login` is the app's: it applies the login in every session,
and refuses to show anything when the server listens beyond loopback with no login configured.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

PASSWORD_ENV = "MARGIN_LAB_PASSWORD"
SECRETS_FILE = Path(__file__).resolve().parent.parent / ".streamlit" / "secrets.toml"
LOOPBACK_NAMES = ("localhost", "")
LOGGED_IN_KEY = "_margin_lab_logged_in"


class BindRefused(Exception):
    """Listening beyond loopback without a login: the message says how to configure one."""


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``; an empty address (Streamlit's "all interfaces") is not loopback."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False


def shared_password() -> str | None:
    return os.environ.get(PASSWORD_ENV) or None


def oidc_configured(secrets_file: Path = SECRETS_FILE) -> bool:
    """Whether the secrets file has an ``[auth]`` section for ``st.login``."""
    try:
        secrets = tomllib.loads(secrets_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return isinstance(secrets.get("auth"), dict) and bool(secrets["auth"])


def login_configured(secrets_file: Path = SECRETS_FILE) -> bool:
    return shared_password() is not None or oidc_configured(secrets_file)


def check_bind(host: str, secrets_file: Path = SECRETS_FILE) -> None:
    """`BindRefused` when ``host`` is beyond loopback and no login is configured."""
    if is_loopback(host) or login_configured(secrets_file):
        return
    raise BindRefused(
        f"refusing to listen on {host!r} without a login: anyone on the network could read files, start jobs and "
        f"delete runs. Set {PASSWORD_ENV} (a shared password) or add an [auth] section for st.login to "
        f"{secrets_file}, or keep the default HOST=127.0.0.1. See docs/security.md."
    )


def password_matches(typed: str, expected: str) -> bool:
    return hmac.compare_digest(typed.encode("utf-8"), expected.encode("utf-8"))


def require_login() -> None:
    """Stop this rerun unless the visitor may see the app (call before anything else renders)."""
    import streamlit as st

    password = shared_password()
    if password is not None:
        if not st.session_state.get(LOGGED_IN_KEY):
            _password_form(password)
            st.stop()
        return
    if oidc_configured():
        if not st.user.is_logged_in:
            st.title("Margin Lab")
            st.button("Log in", on_click=st.login, type="primary")
            st.stop()
        return
    if not is_loopback(st.get_option("server.address")):
        st.error(f"This dashboard listens beyond loopback with no login configured. Set {PASSWORD_ENV} and restart.")
        st.stop()


def _password_form(password: str) -> None:
    import streamlit as st

    st.title("Margin Lab")
    with st.form("login"):
        typed = st.text_input("Password", type="password")
        if st.form_submit_button("Log in", type="primary"):
            if password_matches(typed, password):
                st.session_state[LOGGED_IN_KEY] = True
                st.rerun()
            st.error("Wrong password.")
