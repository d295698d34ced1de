"""Start the annotation app: ``streamlit run annotation/app.py`` in a child process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

APP = Path(__file__).resolve().parent / "app.py"
REPO = APP.parents[1]


def launch(db_url: str | None, port: int, host: str) -> None:
    """Serve the annotation app on ``host:port`` until it stops (Ctrl+C stops both processes).

    ``db_url`` is handed to the app as ``CRS_DB_URL`` (None keeps the environment's setting).
    ``CRS_ANNOTATE_URL``, the base of the personal links the admin page prints, defaults to this
    address when it is not set (set it to the public address when annotators are elsewhere).
    """
    env = dict(os.environ)
    if db_url:
        env["CRS_DB_URL"] = db_url
    # Links need an address a browser can open: "0.0.0.0" (every interface) is not one.
    shown_host = "localhost" if host in ("0.0.0.0", "::", "127.0.0.1") else host
    env.setdefault("CRS_ANNOTATE_URL", f"http://{shown_host}:{port}")
    # `streamlit run` puts only annotation/ on sys.path; the app imports `annotation`, `db` and
    # `backend` from the repository root, also when the project is not pip-installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        # Annotators need no "Deploy" button or developer menu.
        "--client.toolbarMode",
        "viewer",
        # Tracebacks go to the log, never to an annotator's page.
        "--client.showErrorDetails",
        "none",
    ]
    log.info("annotation app at http://%s:%d", host, port)
    child = subprocess.Popen(command, env=env)
    # Stopping `crs annotate` (SIGTERM from a test, a service manager) stops Streamlit too.
    previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        returncode = child.wait()
    except KeyboardInterrupt:
        child.terminate()
        child.wait(timeout=20)
        log.info("annotation app stopped")
        return
    finally:
        signal.signal(signal.SIGTERM, previous)
    if returncode not in (0, -signal.SIGTERM):
        raise RuntimeError(
            f"streamlit exited with status {returncode}; its output above says why "
            f"(is port {port} already in use? pick another with --port)"
        )
