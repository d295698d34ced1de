"""The CRS Arena annotation app: ``streamlit run annotation/app.py`` (or ``crs annotate``).

Annotators arrive through a personal link, ``?token=...``, or a crowd link
(``?campaign=…&PROLIFIC_PID=…``, see ``db.crowd``); without either the app shows a message and
nothing else. Admins (role "admin") also get the admin pages. The database is ``CRS_DB_URL``
(default: SQLite under ``CRS_HOME``), migrated on first use. An unexpected error is logged with
its traceback and shown as a plain sentence: no traceback ever reaches the page.
"""

from __future__ import annotations

import logging

import streamlit as st
from sqlalchemy import Engine
from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException

from annotation import admin, annotate, display
from backend.settings import get_settings
from db.annotation import authenticate
from db.crowd import CrowdLinkError, crowd_annotator, parse_link
from db.session import init_db

log = logging.getLogger(__name__)
SOMETHING_WENT_WRONG = (
    "Something went wrong on our side and this page could not be shown. Your saved answers are "
    "safe. Please reload the page in a moment; if it happens again, tell the study's organisers."
)
INVALID_LINK = (
    "This link is not valid. Open the personal link you were sent, or ask the study's "
    "organisers for a new one."
)


@st.cache_resource(show_spinner=False)
def _engine(url: str) -> Engine:
    # One engine (and migration check) per process and URL, shared by every browser session.
    return init_db(url)


def main() -> None:
    st.set_page_config(page_title="CRS Arena annotation", page_icon="📝", layout="wide")
    try:
        _page()
    except (RerunException, StopException):
        raise  # Streamlit's own control flow (st.rerun, st.stop)
    except Exception:
        log.exception("annotation page failed")
        st.error(SOMETHING_WENT_WRONG)


def _page() -> None:
    engine = _engine(get_settings().db_url)
    try:
        visit = parse_link(st.query_params.to_dict())
        annotator = (
            crowd_annotator(engine, visit)
            if visit is not None
            else authenticate(engine, st.query_params.get("token"))
        )
    except CrowdLinkError as err:
        st.error(str(err))
        return
    if annotator is None:
        st.error(INVALID_LINK)
        return

    st.sidebar.markdown(f"Signed in as **{display.plain(annotator.name)}**")
    if annotator.role == "admin":
        mode = st.sidebar.radio("Page", ["Admin", "Annotate"], key="mode")
        if mode == "Admin":
            admin.page(engine)
            return
    annotate.page(engine, annotator)


# Streamlit runs this file as __main__; the guard keeps a multiprocessing child that re-imports
# the main module (spawn) from starting the app.
if __name__ == "__main__":
    main()
