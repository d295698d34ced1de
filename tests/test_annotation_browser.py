"""End to end in a real browser: `crs annotate` in a subprocess, two annotators in Chromium, export.

Tasks are imported from a JSONL file with `crs tasks import` (no model needed), annotators get
their links from `crs annotators add`, both annotate in headless Chromium, and `crs export` writes
the tables. Screenshots go to ``test-artifacts/`` like the demo's.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, _free_port
from tests.test_studies import STUDY

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)"
)
CRS = str(Path(sys.executable).parent / "crs")
CONTEXT = [
    {"role": "user", "text": "Hi! I loved Heat (1995). Any other crime films?"},
    {"role": "system", "text": "Have you seen The Usual Suspects (1995)?"},
    {"role": "user", "text": "Yes, great. Something newer?"},
]


def crs(*args: str) -> str:
    result = subprocess.run([CRS, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@contextmanager
def serving_annotate(db_url: str, port: int, log: Path) -> Iterator[str]:
    """`crs annotate` on ``port`` until the block ends; yields its base URL.

    Stopping it must stop its Streamlit child too: nothing may be left serving afterwards.
    """
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [CRS, "annotate", "--port", str(port), "--db-url", db_url],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"crs annotate did not start:\n{log.read_text()}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    for _ in range(40):
        try:
            httpx.get(f"{base}/_stcore/health", timeout=1)
        except httpx.HTTPError:
            return
        time.sleep(0.5)
    pytest.fail("the Streamlit child of `crs annotate` outlived it")


def task_rows() -> list[dict]:
    rows = []
    for k, (a, b) in enumerate(
        [("Try Inside Man (2006).", "Watch Toy Story."), ("The Town (2010)!", "Heat.")]
    ):
        base = {"context_id": f"c{k}", "source": "redial", "context": CONTEXT}
        rows.append({**base, "system_a": "retrieval", "response_a": a, "items_a": [a]})
        rows.append({**base, "system_a": "popularity", "response_a": b, "items_a": [b]})
        rows.append(
            {
                **base,
                "system_a": "retrieval",
                "response_a": a,
                "system_b": "popularity",
                "response_b": b,
            }
        )
    return rows


@pytest.fixture(scope="module")
def annotate_app(tmp_path_factory):
    """A campaign with 6 tasks, two annotators' links, and `crs annotate` serving it."""
    tmp = tmp_path_factory.mktemp("annotate")
    db_url = f"sqlite:///{tmp / 'crs.sqlite'}"
    tasks = tmp / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(r) + "\n" for r in task_rows()))
    crs(
        "tasks",
        "import",
        str(tasks),
        "--campaign",
        "e2e",
        "--template",
        "llm-redial",
        "--db-url",
        db_url,
    )
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    links = {}
    for name in ("alice", "bob"):
        out = crs("annotators", "add", name, "--campaign", "e2e", "--url", base, "--db-url", db_url)
        links[name] = re.search(r"(http://\S+token=\S+)", out).group(1)
    with serving_annotate(db_url, port, tmp / "annotate.log"):
        yield db_url, links, tmp


def annotate(page, link: str, n_tasks: int, rng: random.Random, shot: str) -> None:
    """Open ``link`` and answer ``n_tasks`` tasks by clicking one option per question."""
    page.goto(link)
    page.get_by_role("button", name=re.compile("^Start")).click()
    for k in range(n_tasks):
        page.get_by_role("heading", name=re.compile(rf"^Task {k + 1} of")).wait_for()
        submit = page.get_by_role("button", name=re.compile("^Submit"))
        submit.wait_for()  # rendered last: the whole task is on the page
        # A person reads first. Clicks within about a second of a task appearing can miss the
        # server (no rerun happens, Submit stays disabled, nothing wrong is stored).
        page.wait_for_timeout(1500)
        names = page.get_by_role("radiogroup").evaluate_all(
            "groups => groups.map(g => g.getAttribute('aria-label'))"
        )
        for name in names:  # one question per criterion, found by its title
            group = page.get_by_role("radiogroup", name=name, exact=True)
            options = group.locator('[data-testid="stRadioOption"]')
            options.first.wait_for()
            choice = options.nth(rng.randrange(options.count()))
            # Like a person, click again if a click during a rerun did not register.
            for _ in range(3):
                choice.click()
                page.wait_for_timeout(500)
                if group.locator("input:checked").count():
                    break
            assert group.locator("input:checked").count() == 1, f"{name}: the click did not stick"
        page.wait_for_function(
            "() => [...document.querySelectorAll('button')].some("
            "b => b.innerText.startsWith('Submit') && !b.disabled)"
        )
        if k == 0:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        progress = page.get_by_text(re.compile(r"\d+ done ·")).first.inner_text()
        submit.click()
        page.get_by_text(re.compile(rf"^{int(progress.split()[0]) + 1} done ·")).first.wait_for()


def test_two_annotators_annotate_in_chromium_then_export(annotate_app):
    from playwright.sync_api import sync_playwright

    db_url, links, tmp = annotate_app
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        for seed, name in enumerate(links):
            page = browser.new_page(viewport={"width": 1280, "height": 1200})
            page.set_default_timeout(60_000)
            annotate(page, links[name], 3, random.Random(seed), f"annotate-{name}")
            page.close()
        page = browser.new_page()
        page.goto(links["alice"].split("?")[0] + "?token=wrong")
        page.get_by_text(re.compile("link", re.I)).first.wait_for()
        assert "Heat" not in page.content()  # a wrong token sees no task text
        browser.close()

    out = tmp / "export"
    crs("export", "--campaign", "e2e", "--out", str(out), "--db-url", db_url)
    judgments = pd.read_parquet(out / "judgments.parquet")
    assert sorted(judgments["annotator"].unique()) == ["alice", "bob"]
    # 3 tasks each; a rating task has 4 criteria, a pairwise task 1.
    per_task = judgments.groupby(["annotator", "task_id"]).size()
    assert len(per_task) == 6 and set(per_task) <= {1, 4}
    assert (out / "paper_table.md").read_text().count("|") > 4


# --- a study defined from a file, taken through a crowd link --------------------------------------

STUDY_FILE = {
    **STUDY,
    "name": "crowd-study",
    "randomize_order": False,
    "crowd": {"tasks_per_worker": 4},
}
LONG_CONTEXT = [
    {"role": "user" if k % 2 == 0 else "system", "text": f"Turn {k}: " + "words " * 60}
    for k in range(8)
]


def study_rows() -> list[dict]:
    base = {"source": "crowd", "context": LONG_CONTEXT}
    return [
        {
            **base,
            "context_id": "practice",
            "system_a": "practice",
            "response_a": "PRACTICE: a flawless, fitting answer. Rate its fluency 5.",
            "stage": "onboarding",
            "gold": {"fluency": 5},
            "feedback": "Flawless English is a 5 for fluency.",
        },
        {**base, "context_id": "c1", "system_a": "retrieval", "response_a": "Try Inside Man."},
        {**base, "context_id": "c2", "system_a": "popularity", "response_a": "Watch Toy Story."},
        {**base, "context_id": "c4", "system_a": "popularity", "response_a": "Try Heat (1995)."},
        {
            **base,
            "context_id": "c3",
            "system_a": "retrieval",
            "response_a": "The Town (2010)!",
            "system_b": "popularity",
            "response_b": "Heat.",
        },
    ]


def click_option(page, question: str, option: str) -> None:
    """Click ``option`` of the radio group labelled ``question`` until it sticks."""
    group = page.get_by_role("radiogroup", name=question, exact=True)
    choice = group.locator('[data-testid="stRadioOption"]').filter(has_text=option).first
    for _ in range(3):
        choice.click()
        page.wait_for_timeout(500)
        if choice.locator("input:checked").count():
            return
    raise AssertionError(f"{question}: clicking {option!r} did not stick")


def submit_when_ready(page) -> None:
    page.wait_for_function(
        "() => [...document.querySelectorAll('button')].some("
        "b => b.innerText.startsWith('Submit') && !b.disabled)"
    )
    page.get_by_role("button", name=re.compile("^Submit")).click()


def test_a_crowd_worker_takes_a_study_defined_from_a_file(tmp_path):
    from playwright.sync_api import sync_playwright

    db_url = f"sqlite:///{tmp_path / 'crs.sqlite'}"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # Finishing sends the worker to the completion URL: here a page of the app's own server.
    spec = {**STUDY_FILE, "completion_url": f"{base}/_stcore/health"}
    (tmp_path / "study.json").write_text(json.dumps(spec))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(r) + "\n" for r in study_rows()))
    crs("campaigns", "create", str(tmp_path / "study.json"), "--db-url", db_url)
    crs("tasks", "import", str(tasks), "--campaign", "crowd-study", "--db-url", db_url)
    with serving_annotate(db_url, port, tmp_path / "annotate.log"), sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.set_default_timeout(60_000)
        page.goto(f"{base}/?campaign=crowd-study&PROLIFIC_PID=5f1c0ffee&STUDY_ID=s1&SESSION_ID=x")
        page.get_by_role("button", name=re.compile("^Start")).click()

        # Onboarding: a practice task, then the expected answer and why.
        page.get_by_role("heading", name=re.compile("^Practice task 1 of 1")).wait_for()
        page.wait_for_timeout(1500)
        click_option(page, "Fluency — How fluent is it?", "Perfect")
        click_option(page, "Relevance — Does it fit the request?", "Fits")
        submit_when_ready(page)
        page.get_by_text("Correct!").wait_for()
        page.get_by_text("Flawless English is a 5 for fluency.").wait_for()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "annotate-onboarding.png"), full_page=True)
        page.get_by_role("button", name=re.compile("^Continue")).click()

        # Real tasks: the optional criterion once left out, once "can't judge".
        for k, humour in enumerate(["A little", None, "Can't judge", "pairwise"]):
            heading = page.get_by_role("heading", name=re.compile(rf"^Task {k + 2} of 5"))
            heading.wait_for()
            page.wait_for_timeout(1000)
            # Each task starts at its top: the heading is on screen, not far above it.
            box = heading.bounding_box()
            assert box is not None and 0 <= box["y"] < 720, f"task {k + 2} opened at {box}"
            page.wait_for_timeout(1500)
            if humour != "pairwise":
                click_option(page, "Fluency — How fluent is it?", "Fluent")
                click_option(page, "Relevance — Does it fit the request?", "Partly")
                if humour:
                    click_option(page, "Humour — Is it funny? (optional)", humour)
            else:
                click_option(page, "Preference", "Left is better")
            if k == 0:
                page.screenshot(path=str(ARTIFACTS / "annotate-study.png"), full_page=True)
            submit_when_ready(page)

        page.get_by_text("C0DE42").wait_for()
        page.screenshot(path=str(ARTIFACTS / "annotate-complete.png"), full_page=True)
        page.wait_for_url(f"{base}/_stcore/health", timeout=30_000)
        browser.close()

    out = tmp_path / "export"
    crs("export", "--campaign", "crowd-study", "--out", str(out), "--db-url", db_url)
    judgments = pd.read_parquet(out / "judgments.parquet")
    assert set(judgments["annotator"]) == {"prolific:5f1c0ffee"}
    assert sorted(judgments["criterion"].unique()) == [
        "fluency",
        "humour",
        "preference",
        "relevance",
    ]
    assert (judgments["criterion"] == "humour").sum() == 1  # left out once, N/A once
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dropped_judgments"]["not_applicable"] == 1
    assert judgments["seconds"].notna().all() and (judgments["seconds"] > 0).all()
    times = pd.read_csv(out / "time_on_task.csv")
    assert "prolific:5f1c0ffee" in set(times["name"])
    assert metrics["dropped_judgments"]["gold_tasks"] == 2
