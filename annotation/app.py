"""The CRS Arena annotation app: ``streamlit run annotation/app.py`` (or ``crs annotate``).

Annotators arrive through a personal link, ``?token=...``; without a valid token the app shows
a message and nothing else. Admins (role "admin") also get the admin pages. The database is
``CRS_DB_URL`` (default: SQLite under ``CRS_HOME``), migrated on first use.
"""

from __future__ import annotations

import streamlit as st
from sqlalchemy import Engine

from annotation import admin, annotate, display
from backend.settings import get_settings
from db.annotation import authenticate
from db.session import init_db

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
    engine = _engine(get_settings().db_url)
    annotator = authenticate(engine, st.query_params.get("token"))
    if annotator is None:
        st.error(INVALID_LINK)
        st.stop()

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
