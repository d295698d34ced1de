"""The `crs` CLI through typer's runner, and the README contract (every command and setting documented)."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend.cli import app
from backend.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures"
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
runner = CliRunner()


def test_data_info_prints_counts():
    result = runner.invoke(app, ["data", "info", "redial", "--data-dir", str(FIXTURES / "redial")])
    assert result.exit_code == 0, result.output
    assert re.search(r"dialogues\s+│\s+\d+", result.output)
    assert "turns_with_recommendation" in result.output


def test_malformed_file_gives_one_clear_line_not_a_traceback(tmp_path):
    bad = tmp_path / "redial"
    bad.mkdir()
    for f in (FIXTURES / "redial").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    with (bad / "test_data.jsonl").open("a") as f:
        f.write('{"messages": [\n')
    result = runner.invoke(app, ["data", "info", "redial", "--data-dir", str(bad)])
    assert result.exit_code == 2
    assert "test_data.jsonl:" in result.output and "invalid JSON" in result.output
    assert "Traceback" not in result.output


def test_eval_writes_the_documented_json(tmp_path):
    out = tmp_path / "pop.json"
    args = [
        "eval",
        "popularity",
        "--dataset",
        "redial",
        "--data-dir",
        str(FIXTURES / "redial"),
        "--split",
        "test",
    ]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report) == {"model", "dataset", "split", "n", "metrics", "config", "seconds"}
    assert report["model"] == "popularity" and report["n"] > 0
    for key in (
        "recall@1",
        "recall@10",
        "recall@50",
        "ndcg@10",
        "mrr@10",
        "coverage",
        "bleu-1",
        "distinct-2",
        "item-f1",
    ):
        assert key in report["metrics"]


def test_eval_unknown_split_and_model_fail_cleanly():
    base = ["--dataset", "redial", "--data-dir", str(FIXTURES / "redial")]
    result = runner.invoke(app, ["eval", "popularity", *base, "--split", "nope"])
    assert result.exit_code == 2 and "no split 'nope'" in result.output
    result = runner.invoke(app, ["eval", "nope", *base])
    assert result.exit_code == 2 and "unknown model" in result.output


@pytest.mark.parametrize(
    "command",
    [
        "data info",
        "models",
        "chat",
        "train sasrec",
        "train llm-rec",
        "eval",
        "serve",
        "demo",
        "llm serve",
        "tasks create",
        "tasks import",
        "tasks assign",
        "annotators add",
        "annotate",
        "export",
    ],
)
def test_every_command_is_in_the_readme(command):
    assert f"crs {command}" in README


@pytest.mark.parametrize("name", Settings.names())
def test_every_setting_is_in_the_readme(name):
    assert f"`{name}`" in README
