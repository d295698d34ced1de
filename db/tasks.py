"""Annotation tasks: from model outputs on dataset contexts, or imported from CSV / JSONL files.

Both paths build `TaskRecord`s (a context, one response to rate or two to compare, an optional
gold answer) and store them with `add_tasks`. Every record is checked first and every problem is
listed; then the tasks are written in short chunks (so annotators' submits never wait seconds for
the write lock) as one `TaskImport`, which is assigned only once complete and undone, campaign
included, if anything fails. Storing the same record twice is a no-op.

Import file schema (JSONL: one object per line; CSV: one row per task, a header row first):

| field | required | meaning |
|---|---|---|
| `context_id` | yes | the context's id in its source, e.g. `redial-20001:4` (text or a whole number); the same id with different text is a different context |
| `source` | no (default `import`) | where the context comes from (dataset name) |
| `context` | yes | the dialogue so far: a list of `{"role": "user"/"system", "text": …}` (a JSON string in CSV), or plain text with one `User: …` / `System: …` line per turn |
| `system_a`, `response_a` | yes | the (first) system's name and response text |
| `version_a` | no | that system's version |
| `items_a` | no | recommended items: a list of titles or `{"item_id", "title"}` objects (JSON in CSV) |
| `system_b`, `response_b`, `version_b`, `items_b` | for pairwise | the second response; a row with `response_b` is a pairwise task |
| `gold` | no | attention check: `{"criterion": expected answer}` (JSON in CSV) |
| `stage` | no (default `main`) | `onboarding`: a gold task answered before the real ones, as qualification |
| `feedback` | no | onboarding: the explanation shown after the annotator answers |

Text fields must hold text: a list, object or number where text belongs is an error, not
silently turned into a string (`context_id` and `version_*` also take whole numbers). Files are
UTF-8, with or without a byte-order mark (as Excel saves "CSV UTF-8").
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session
from tqdm.auto import tqdm

from backend.types import Dialogue, Reply, ScoredItem, Turn
from db.campaigns import CampaignSpec, campaign_from_spec, criteria_for
from db.campaigns import template as builtin_template
from db.content import store_context, store_response
from db.schema import Campaign, Task, TaskImport
from db.session import get_engine, get_or_create, session_scope

if TYPE_CHECKING:
    from backend.registry import CRSModel

log = logging.getLogger(__name__)

REFERENCE_SYSTEM = "human"  # the dataset's real response, when asked for as a system
ATTENTION_RATING = "ATTENTION CHECK: please give this response the lowest score on every question."
ATTENTION_PAIRWISE = "ATTENTION CHECK: please choose this response on every question."


# Tasks written per transaction: a chunk holds SQLite's write lock for well under a second.
IMPORT_CHUNK = 50
# Between chunks the importer steps aside, so that submits waiting for the lock get it first
# (SQLite's busy wait polls; without a gap the importer takes the lock straight back).
IMPORT_PAUSE_S = 0.05
STAGES = ("main", "onboarding")


class TaskFileError(ValueError):
    """Tasks that cannot be imported; ``problems`` holds one ``file:line: problem`` per bad row."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
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
    stage: str = "main"  # "onboarding": qualification before the real tasks
    feedback: str | None = None  # shown after an onboarding task is answered

    @property
    def kind(self) -> str:
        return "rating" if self.response_b is None else "pairwise"


# ----------------------------------------------------------------------------- storing


def check_record(record: TaskRecord, criteria: Sequence[dict[str, Any]], campaign: str) -> None:
    """Raise ValueError if ``criteria`` (a campaign's) cannot judge the record or its gold is off."""
    by_name = {c["name"]: c for c in criteria if c["kind"] == record.kind}
    if not by_name:
        kinds = sorted({c["kind"] for c in criteria})
        raise ValueError(
            f"campaign {campaign!r} has no {record.kind} criteria (its task kinds: {', '.join(kinds)})"
        )
    if record.response_b is not None and (
        (record.response_a.system, record.response_a.version)
        == (record.response_b.system, record.response_b.version)
    ):
        raise ValueError(
            f"both responses come from {record.response_a.system!r}; compare two systems"
        )
    if record.stage not in STAGES:
        raise ValueError(f"stage {record.stage!r}; use one of {', '.join(STAGES)}")
    if record.stage == "onboarding" and not record.gold:
        raise ValueError("an onboarding task needs a gold answer to give feedback on")
    for name, expected in (record.gold or {}).items():
        if name not in by_name:
            raise ValueError(f"gold names criterion {name!r}; this task has {', '.join(by_name)}")
        scale = by_name[name]["scale"]
        allowed = scale if record.kind == "pairwise" else list(range(scale[0], scale[1] + 1))
        if expected not in allowed:
            raise ValueError(f"gold {name}={expected!r} is not one of {allowed}")


def add_tasks(
    engine: Engine | None,
    campaign_name: str,
    records: Sequence[TaskRecord],
    *,
    spec: CampaignSpec | None = None,
    template_name: str = "custom",
    origin: str = "",
    chunk_size: int = IMPORT_CHUNK,
) -> int:
    """Store ``records`` as tasks of ``campaign_name``; returns how many are new.

    The campaign must exist unless ``spec`` is given, which creates it (as ``template_name``).
    Every record is checked before anything is written and a ``TaskFileError`` lists every
    problem. Then one ``TaskImport`` writes the tasks ``chunk_size`` at a time; its tasks are
    assigned only once it is done, and if writing fails they are deleted again, with the campaign
    when this import created it. Systems, contexts and responses are shared between tasks.
    """
    engine = engine or get_engine()
    with session_scope(engine, write=False) as session:
        existing = session.scalars(select(Campaign).where(Campaign.name == campaign_name)).first()
        if existing is None and spec is None:
            raise LookupError(f"no campaign {campaign_name!r}; create it first (crs tasks create)")
        criteria = existing.criteria if existing is not None else spec.stored_criteria()  # type: ignore[union-attr]
    problems = []
    for record in records:
        try:
            check_record(record, criteria, campaign_name)
        except ValueError as err:
            problems.append(f"{record.origin}: {err}" if record.origin else str(err))
    if problems:
        raise TaskFileError(origin or campaign_name, problems)

    with session_scope(engine) as session:
        campaign = session.scalars(select(Campaign).where(Campaign.name == campaign_name)).first()
        created_campaign = campaign is None
        if campaign is None:
            campaign = campaign_from_spec(session, spec, campaign_name, template_name)  # type: ignore[arg-type]
            session.flush()
        batch = TaskImport(
            campaign_id=campaign.id, created_campaign=created_campaign, origin=origin
        )
        session.add(batch)
        session.flush()
        import_id, campaign_id = batch.id, campaign.id
        last = session.scalar(
            select(func.max(Task.position)).where(Task.campaign_id == campaign_id)
        )
    position = -1 if last is None else last
    created_tasks = 0
    try:
        for start in range(0, len(records), chunk_size):
            with session_scope(engine) as session:
                for record in records[start : start + chunk_size]:
                    position += 1
                    created_tasks += _store(session, campaign_id, import_id, position, record)
            time.sleep(IMPORT_PAUSE_S)
        with session_scope(engine) as session:
            session.get(TaskImport, import_id).status = "done"  # type: ignore[union-attr]
    except BaseException:
        _undo_import(engine, import_id, chunk_size)
        raise
    log.info("campaign %s: %d new task(s) of %d", campaign_name, created_tasks, len(records))
    return created_tasks


def _store(
    session: Session, campaign_id: int, import_id: int, position: int, record: TaskRecord
) -> bool:
    """Store one record's context, responses and task; True when the task is new."""
    context = store_context(
        session, record.source, record.context_id, record.context.model_dump(mode="json")
    )
    responses = [
        store_response(
            session,
            context.id,
            answer.system,
            answer.version,
            answer.text,
            [i.model_dump(mode="json") for i in answer.items],
            answer.trace,
        )
        for answer in (record.response_a, record.response_b)
        if answer is not None
    ]
    _, created = get_or_create(
        session,
        Task,
        defaults={
            "position": position,
            "gold": record.gold,
            "stage": record.stage,
            "feedback": record.feedback,
            "import_id": import_id,
        },
        campaign_id=campaign_id,
        kind=record.kind,
        context_id=context.id,
        response_a_id=responses[0].id,
        response_b_id=responses[1].id if len(responses) > 1 else None,
    )
    return created


def _undo_import(engine: Engine, import_id: int, chunk_size: int) -> None:
    """Delete what import ``import_id`` wrote, in chunks, and the campaign if it made it."""
    log.warning("task import %d failed; removing its tasks", import_id)
    while True:
        with session_scope(engine) as session:
            ids = session.scalars(
                select(Task.id).where(Task.import_id == import_id).limit(chunk_size * 4)
            ).all()
            if not ids:
                break
            session.execute(delete(Task).where(Task.id.in_(ids)))
    with session_scope(engine) as session:
        batch = session.get(TaskImport, import_id)
        if batch is None:
            return
        batch.status = "failed"
        campaign_id = batch.campaign_id
        has_tasks = session.scalar(select(func.count()).where(Task.campaign_id == campaign_id))
        if batch.created_campaign and not has_tasks:
            session.execute(delete(TaskImport).where(TaskImport.campaign_id == campaign_id))
            session.execute(delete(Campaign).where(Campaign.id == campaign_id))


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
    template: str | None = None,
    overlap: int | None = None,
    spec: CampaignSpec | None = None,
) -> tuple[int, int]:
    """Read ``path`` and store its tasks in ``campaign``; returns ``(rows read, new tasks)``.

    A new campaign is made from ``spec`` (a campaign file's), else from the built-in ``template``
    (default "presales"), with ``overlap`` annotators per task if given. An existing campaign
    keeps its protocol; naming another template for it is an error. Nothing is stored, the
    campaign included, unless every row can be imported.
    """
    records = read_task_file(path)
    engine = engine or get_engine()
    with session_scope(engine, write=False) as session:
        existing = session.scalars(select(Campaign).where(Campaign.name == campaign)).first()
    if existing is not None:
        if template is not None and existing.template != template:
            raise ValueError(
                f"campaign {campaign!r} already exists with template {existing.template!r}; "
                f"pick another name for a {template!r} campaign"
            )
        return len(records), add_tasks(engine, campaign, records, origin=str(path))
    if spec is None:
        spec = builtin_template(template or "presales").model_copy()
        template_name = template or "presales"
    else:
        template_name = "custom"
    if overlap is not None:
        if overlap < 1:
            raise ValueError(f"overlap is {overlap}; every task needs at least one annotator")
        spec = spec.model_copy(update={"overlap": overlap})
    created = add_tasks(
        engine, campaign, records, spec=spec, template_name=template_name, origin=str(path)
    )
    return len(records), created


def _decoded_lines(path: Path, problems: list[str]) -> list[str]:
    """The file's lines as text; every line that is not UTF-8 is a problem with its number."""
    lines = []
    for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)  # Excel's "CSV UTF-8" starts with a BOM
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            problems.append(
                f"{path}:{number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                f"{err.start + 1}); save the file as UTF-8 (Excel: 'CSV UTF-8')"
            )
            lines.append(raw.decode("utf-8", errors="replace"))
    return lines


def _rows(path: Path, suffix: str, problems: list[str]) -> Iterable[tuple[int, dict[str, Any]]]:
    bad_encoding = len(problems)
    lines = _decoded_lines(path, problems)
    if len(problems) > bad_encoding:
        return  # the rest would only repeat the encoding problem in other words
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO("".join(lines), newline=""))
        for row in reader:
            if None in row:  # more cells than header names
                problems.append(f"{path}:{reader.line_num}: more cells than columns")
                continue
            yield reader.line_num, row
        return
    for line, text in enumerate(lines, start=1):
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


def _text(row: dict[str, Any], name: str, default: str = "", ids: bool = False) -> str:
    """Field ``name`` as text; a list, object or number is an error (a whole number for ids)."""
    value = row.get(name, default)
    if isinstance(value, str):
        return value
    if ids and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    kind = {list: "a list", dict: "an object", bool: "true/false"}.get(type(value), "a number")
    raise ValueError(f"{name} must be text, not {kind} ({json.dumps(value)[:40]})")


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
            system=_text(row, f"system_{side}"),
            version=_text(row, f"version_{side}", ids=True),
            text=_text(row, f"response_{side}"),
            items=_items(items, f"items_{side}"),
        )

    context_id = _text(row, "context_id", ids=True)
    feedback = _text(row, "feedback") or None
    return TaskRecord(
        source=_text(row, "source", "import"),
        context_id=context_id,
        context=_context(row["context"], context_id),
        response_a=answer("a"),  # type: ignore[arg-type]  # required field, checked above
        response_b=answer("b"),
        gold=gold,
        origin=origin,
        stage=_text(row, "stage", "main"),
        feedback=feedback,
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
