"""Annotation tasks: from model outputs on dataset contexts, or imported from CSV / JSONL files.

Both paths build `TaskRecord`s (a context, one response to rate or two to compare, an optional
attention-check answer) and store them with `add_tasks` in one transaction, so a bad file or a
crashed run stores nothing. Storing the same record twice is a no-op.

Import file schema (JSONL: one object per line; CSV: one row per task, a header row first):

| field | required | meaning |
|---|---|---|
| `context_id` | yes | the context's id in its source, e.g. `redial-20001:4` |
| `source` | no (default `import`) | where the context comes from (dataset name) |
| `context` | yes | the dialogue so far: a list of `{"role": "user"/"system", "text": …}` (a JSON string in CSV), or plain text with one `User: …` / `System: …` line per turn |
| `system_a`, `response_a` | yes | the (first) system's name and response text |
| `version_a` | no | that system's version |
| `items_a` | no | recommended items: a list of titles or `{"item_id", "title"}` objects (JSON in CSV) |
| `system_b`, `response_b`, `version_b`, `items_b` | for pairwise | the second response; a row with `response_b` is a pairwise task |
| `gold` | no | attention check: `{"criterion": expected answer}` (JSON in CSV) |
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import Engine, func, select
from tqdm.auto import tqdm

from backend.types import Dialogue, Reply, ScoredItem, Turn
from db.campaigns import create_campaign, criteria_for
from db.schema import Campaign, Context, Response, System, Task
from db.session import get_or_create, session_scope

if TYPE_CHECKING:
    from backend.registry import CRSModel

log = logging.getLogger(__name__)

REFERENCE_SYSTEM = "human"  # the dataset's real response, when asked for as a system
ATTENTION_RATING = "ATTENTION CHECK: please give this response the lowest score on every question."
ATTENTION_PAIRWISE = "ATTENTION CHECK: please choose this response on every question."


class TaskFileError(ValueError):
    """An import file has bad rows; ``problems`` holds one ``file:line: problem`` per row."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        shown = problems[:20]
        more = f"\n… and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(
            f"{path}: {len(problems)} bad row(s), nothing was imported:\n" + "\n".join(shown) + more
        )
        self.problems = problems


@dataclass
class SystemResponse:
    """One system's answer in one context."""

    system: str
    text: str
    items: list[ScoredItem]
    version: str = ""
    trace: list[dict[str, Any]] | None = None


@dataclass
class TaskRecord:
    """What one task shows: a context, one (rating) or two (pairwise) responses, maybe a gold answer."""

    source: str
    context_id: str
    context: Dialogue
    response_a: SystemResponse
    response_b: SystemResponse | None = None
    gold: dict[str, Any] | None = None
    origin: str = ""  # "file:line" for imported rows, so errors point at the row

    @property
    def kind(self) -> str:
        return "rating" if self.response_b is None else "pairwise"


# ----------------------------------------------------------------------------- storing


def check_record(record: TaskRecord, campaign: Campaign) -> None:
    """Raise ValueError if the campaign has no criteria for the record's kind or its gold is off."""
    criteria = {c["name"]: c for c in criteria_for(campaign, record.kind)}
    if not criteria:
        raise ValueError(
            f"campaign {campaign.name!r} has no {record.kind} criteria "
            f"(its task kinds: {', '.join(campaign.task_kinds)})"
        )
    if record.response_b is not None and (
        (record.response_a.system, record.response_a.version)
        == (record.response_b.system, record.response_b.version)
    ):
        raise ValueError(
            f"both responses come from {record.response_a.system!r}; compare two systems"
        )
    for name, expected in (record.gold or {}).items():
        if name not in criteria:
            raise ValueError(f"gold names criterion {name!r}; this task has {', '.join(criteria)}")
        scale = criteria[name]["scale"]
        allowed = scale if record.kind == "pairwise" else list(range(scale[0], scale[1] + 1))
        if expected not in allowed:
            raise ValueError(f"gold {name}={expected!r} is not one of {allowed}")


def add_tasks(engine: Engine | None, campaign_name: str, records: Sequence[TaskRecord]) -> int:
    """Store ``records`` as tasks of ``campaign_name`` in one transaction; returns how many are new.

    Every record is checked before anything is written. Systems, contexts and responses are shared
    between tasks (a context answered by three systems is stored once).
    """
    created_tasks = 0
    with session_scope(engine) as session:
        campaign = session.scalars(select(Campaign).where(Campaign.name == campaign_name)).first()
        if campaign is None:
            raise LookupError(f"no campaign {campaign_name!r}; create it first (crs tasks create)")
        for record in records:
            try:
                check_record(record, campaign)
            except ValueError as err:
                raise ValueError(f"{record.origin}: {err}" if record.origin else str(err)) from None
        position = session.scalar(
            select(func.max(Task.position)).where(Task.campaign_id == campaign.id)
        )
        position = -1 if position is None else position
        for record in records:
            context, _ = get_or_create(
                session,
                Context,
                defaults={"dialogue": record.context.model_dump(mode="json")},
                source=record.source,
                external_id=record.context_id,
            )
            responses = [
                _response(session, context.id, r)
                for r in (record.response_a, record.response_b)
                if r is not None
            ]
            position += 1
            _, created = get_or_create(
                session,
                Task,
                defaults={"position": position, "gold": record.gold},
                campaign_id=campaign.id,
                kind=record.kind,
                context_id=context.id,
                response_a_id=responses[0].id,
                response_b_id=responses[1].id if len(responses) > 1 else None,
            )
            created_tasks += created
    log.info("campaign %s: %d new task(s) of %d", campaign_name, created_tasks, len(records))
    return created_tasks


def _response(session, context_id: int, answer: SystemResponse) -> Response:
    system, _ = get_or_create(session, System, name=answer.system, version=answer.version)
    response, _ = get_or_create(
        session,
        Response,
        defaults={
            "text": answer.text,
            "items": [i.model_dump(mode="json") for i in answer.items],
            "trace": answer.trace or [],
        },
        context_id=context_id,
        system_id=system.id,
    )
    return response


# ----------------------------------------------------------------------------- from model outputs


def sample_contexts(
    dialogues: Sequence[Dialogue],
    n: int,
    seed: int = 0,
    recommendation_turns_only: bool = True,
    allowed: set[tuple[str, int]] | None = None,
) -> list[tuple[Dialogue, int]]:
    """``n`` random (dialogue, system turn index) pairs; the model answers ``dialogue.prefix(i)``.

    By default only turns where the real recommender named an item: the moments a CRS is judged on.
    ``allowed`` keeps only those (dialogue id, turn) pairs, e.g. the turns saved outputs answered.
    """
    turns = [
        (d, i)
        for d in dialogues
        for i, t in enumerate(d.turns)
        if i > 0
        and t.role == "system"
        and (t.items or not recommendation_turns_only)
        and (allowed is None or (d.id, i) in allowed)
    ]
    if not turns:
        raise ValueError("the split has no recommender turns to sample from")
    return random.Random(seed).sample(turns, min(n, len(turns)))


def as_response(system: str, version: str, reply: Reply, top: int = 5) -> SystemResponse:
    """A model's `Reply` as a stored response: text, the top items, the trace."""
    return SystemResponse(
        system=system,
        version=version,
        text=reply.text,
        items=reply.items[:top],
        trace=[step.model_dump(mode="json") for step in reply.trace],
    )


def reference_response(dialogue: Dialogue, index: int, titles: dict[str, str]) -> SystemResponse:
    """The dataset's real turn ``index``, as the "human" system."""
    turn = dialogue.turns[index]
    items = [ScoredItem(item_id=i, score=0.0, title=titles.get(i, i)) for i in turn.items]
    return SystemResponse(system=REFERENCE_SYSTEM, text=turn.text, items=items)


def records_from_outputs(
    source: str,
    contexts: Sequence[tuple[Dialogue, int]],
    outputs: dict[str, list[SystemResponse]],
    kinds: Iterable[str],
) -> list[TaskRecord]:
    """Rating tasks for every response and/or pairwise tasks for every pair of systems per context.

    ``outputs[system][k]`` answers ``contexts[k]``. Pairs are ordered as the systems are given;
    the annotation app randomises the screen sides per annotator.
    """
    kinds = set(kinds)
    records = []
    for k, (dialogue, index) in enumerate(contexts):
        context = dialogue.prefix(index)
        context_id = f"{dialogue.id}:{index}"
        answers = [outputs[system][k] for system in outputs]
        if "rating" in kinds:
            records += [TaskRecord(source, context_id, context, answer) for answer in answers]
        if "pairwise" in kinds:
            records += [
                TaskRecord(source, context_id, context, a, b)
                for a, b in itertools.combinations(answers, 2)
            ]
    return records


def attention_checks(
    source: str,
    contexts: Sequence[tuple[Dialogue, int]],
    campaign: Campaign,
    n: int,
    kinds: Iterable[str],
    seed: int = 0,
) -> list[TaskRecord]:
    """``n`` instructed-response tasks per kind: the response itself says what the right answer is.

    Rating checks expect the lowest score on every rating criterion; pairwise checks put the
    instruction in response A and a real-looking response in B and expect "A" everywhere.
    """
    rng = random.Random(seed)
    kinds = set(kinds)
    records = []
    for k in range(n):
        dialogue, index = rng.choice(list(contexts))
        context, context_id = dialogue.prefix(index), f"attention-{k}:{dialogue.id}:{index}"
        if "rating" in kinds:
            gold = {c["name"]: c["scale"][0] for c in criteria_for(campaign, "rating")}
            check = SystemResponse(system="attention-check", text=ATTENTION_RATING, items=[])
            records.append(TaskRecord("attention", context_id, context, check, gold=gold))
        if "pairwise" in kinds:
            gold = {c["name"]: "A" for c in criteria_for(campaign, "pairwise")}
            check = SystemResponse(system="attention-check", text=ATTENTION_PAIRWISE, items=[])
            other = SystemResponse(
                system=REFERENCE_SYSTEM, text=dialogue.turns[index].text, items=[]
            )
            records.append(TaskRecord("attention", context_id, context, check, other, gold=gold))
    return records


def run_systems(
    models: dict[str, CRSModel], contexts: Sequence[tuple[Dialogue, int]], batch_size: int = 16
) -> dict[str, list[SystemResponse]]:
    """Each model's responses to every context, with a progress bar per model."""
    outputs: dict[str, list[SystemResponse]] = {}
    prefixes = [dialogue.prefix(i) for dialogue, i in contexts]
    for name, model in models.items():
        answers: list[SystemResponse] = []
        with tqdm(total=len(prefixes), desc=f"responses {name}", unit="context") as bar:
            for start in range(0, len(prefixes), batch_size):
                chunk = prefixes[start : start + batch_size]
                for reply in model.respond_batch(chunk):
                    answers.append(as_response(name, model.version, reply))
                bar.update(len(chunk))
        outputs[name] = answers
    return outputs


# ----------------------------------------------------------------------------- from files


def read_task_file(path: Path | str) -> list[TaskRecord]:
    """Parse a CSV or JSONL task file (schema in the module docstring); all errors at once."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ValueError(
            f"{path}: import reads .csv or .jsonl files, not {suffix or 'no suffix'!r}"
        )
    records, problems = [], []
    for line, row in _rows(path, suffix, problems):
        try:
            records.append(_record(row, from_csv=suffix == ".csv", origin=f"{path}:{line}"))
        except (ValueError, ValidationError, TypeError) as err:
            problems.append(f"{path}:{line}: {_one_line(err)}")
    if problems:
        raise TaskFileError(path, problems)
    if not records:
        raise TaskFileError(path, [f"{path}: the file has no tasks"])
    return records


def import_task_file(
    engine: Engine | None,
    path: Path | str,
    campaign: str,
    template: str = "presales",
    overlap: int | None = None,
) -> tuple[int, int]:
    """Read ``path`` and store its tasks in ``campaign`` (created from ``template`` if new).

    Returns ``(rows read, new tasks)``. Any bad row or a row the campaign cannot judge raises
    before anything is stored.
    """
    records = read_task_file(path)
    create_campaign(engine, campaign, template, overlap=overlap)
    return len(records), add_tasks(engine, campaign, records)


def _rows(path: Path, suffix: str, problems: list[str]) -> Iterable[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as f:
        if suffix == ".csv":
            reader = csv.DictReader(f)
            for row in reader:
                if None in row:  # more cells than header names
                    problems.append(f"{path}:{reader.line_num}: more cells than columns")
                    continue
                yield reader.line_num, row
            return
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                problems.append(f"{path}:{line}: not JSON ({err.msg}); was the file cut short?")
                continue
            if not isinstance(row, dict):
                problems.append(f"{path}:{line}: expected a JSON object, got {type(row).__name__}")
                continue
            yield line, row


def _record(row: dict[str, Any], from_csv: bool, origin: str) -> TaskRecord:
    row = {k: v for k, v in row.items() if v not in (None, "")}
    missing = [k for k in ("context_id", "context", "system_a", "response_a") if k not in row]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    if ("response_b" in row) != ("system_b" in row):
        raise ValueError("a pairwise row needs both system_b and response_b")
    gold = _json_cell(row["gold"], "gold") if "gold" in row and from_csv else row.get("gold")
    if gold is not None and not isinstance(gold, dict):
        raise ValueError('gold must be an object like {"relevance": 1}')

    def answer(side: str) -> SystemResponse | None:
        if f"response_{side}" not in row:
            return None
        items = row.get(f"items_{side}", [])
        if from_csv and isinstance(items, str):
            items = _json_cell(items, f"items_{side}")
        return SystemResponse(
            system=str(row[f"system_{side}"]),
            version=str(row.get(f"version_{side}", "")),
            text=str(row[f"response_{side}"]),
            items=_items(items, f"items_{side}"),
        )

    return TaskRecord(
        source=str(row.get("source", "import")),
        context_id=str(row["context_id"]),
        context=_context(row["context"], str(row["context_id"])),
        response_a=answer("a"),  # type: ignore[arg-type]  # required field, checked above
        response_b=answer("b"),
        gold=gold,
        origin=origin,
    )


def _context(value: Any, context_id: str) -> Dialogue:
    if isinstance(value, str) and value.lstrip().startswith("["):
        value = _json_cell(value, "context")
    if isinstance(value, str):
        turns = []
        for raw in value.splitlines():
            if not raw.strip():
                continue
            speaker, sep, text = raw.partition(":")
            role = {"user": "user", "system": "system"}.get(speaker.strip().lower())
            if not sep or role is None:
                raise ValueError(
                    f"context line {raw[:40]!r} should start with 'User:' or 'System:'"
                )
            turns.append(Turn(role=role, text=text.strip()))
        return Dialogue(id=context_id, turns=turns)
    if isinstance(value, dict):
        value = value.get("turns")
    if not isinstance(value, list):
        raise ValueError("context must be a list of turns or 'User: …' / 'System: …' lines")
    return Dialogue(id=context_id, turns=[Turn.model_validate(t) for t in value])


def _items(value: Any, name: str) -> list[ScoredItem]:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list of titles or {{item_id, title}} objects")
    items = []
    for entry in value:
        if isinstance(entry, str):
            items.append(ScoredItem(item_id=entry, score=0.0, title=entry))
        elif isinstance(entry, dict) and "item_id" in entry:
            items.append(ScoredItem.model_validate({"score": 0.0, **entry}))
        else:
            raise ValueError(f"{name}: {entry!r} is neither a title nor an object with item_id")
    return items


def _json_cell(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} is not valid JSON ({err.msg})") from None


def _one_line(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else first["msg"]
    return str(err)
