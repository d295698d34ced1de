"""Annotation campaigns: a study defined in a file (``CampaignSpec``), built-in protocols, creation.

A campaign file (YAML or JSON) says what annotators judge and how the study runs::

    name: my-study
    guidelines: "Markdown shown before the first task"   # or guidelines_file: guide.md
    overlap: 3                      # annotators per task
    criteria:
      - name: fluency
        kind: likert                # a rating on 1..N (scale: 5) or low..high (scale: [0, 2])
        question: How fluent is the response?
        scale: 5
        labels: [Hard to read, Awkward, OK, Fluent, Perfect]    # one per point
        rubric: Judge the language only.
        required: true              # false: a submission may leave it unanswered
        allow_na: false             # true: offer "Can't judge / N/A"
      - name: preference
        kind: pairwise              # A / B / tie between two responses
        question: better overall
    onboarding: {pass_required: 2}  # pass 2 onboarding (gold) tasks before the real ones
    randomize_order: true           # a seeded order per annotator (attention checks interleaved)
    seed: 0
    min_seconds: 5                  # judgments faster than this are flagged in exports
    completion_code: C1A2B3         # shown when an annotator finishes
    completion_url: https://app.prolific.com/submissions/complete?cc=C1A2B3
    crowd: {tasks_per_worker: 10}   # accept crowd links (?campaign=…&PROLIFIC_PID=…)

The built-in protocols are such files in ``db/templates/``:

* ``presales`` — informativeness and relevance, 1–5 (the pre-sales paper, Appendix D / Table 4);
* ``llm-redial`` — fluency, informativeness, logic and coherence, 0–2 (LLM-REDIAL §3.3 and the
  rating scheme of its Appendix D.1), plus a pairwise "overall" comparison;
* ``pecrs`` — pairwise fluency and relevancy with a tie option (PECRS Table 4);
* ``arena`` — one pairwise "overall" criterion, for rounds exported from the demo;
* ``crs-arena`` — this project's protocol: fluency, informativeness, relevance 1–5, and a pairwise
  preference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from db.schema import Campaign, TaskImport
from db.session import find_by_ref, get_or_create, session_scope

POLICIES = ("round-robin", "random", "least-done")
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
NA_LABEL = "Can't judge / N/A"
NOT_APPLICABLE = "n/a"  # the stored answer of "can't judge"


class CampaignFileError(ValueError):
    """A campaign file (or spec) that cannot define a study; the message names file and field."""


class CriterionSpec(BaseModel):
    """One question annotators answer per task."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[\w][\w .\-]*$")]
    kind: Literal["likert", "rating", "pairwise"]
    question: str = ""
    # likert: N (points 1..N) or [low, high]; pairwise: always A / B / tie.
    scale: int | tuple[int, int] | None = None
    # likert: one label per point, low to high (or {point: label}); pairwise: {A, B, tie: label}.
    labels: list[str] | dict[str, str] | None = None
    rubric: str = ""
    required: bool = True
    allow_na: bool = False

    @field_validator("kind")
    @classmethod
    def _one_rating_kind(cls, kind: str) -> str:
        return "rating" if kind == "likert" else kind

    @model_validator(mode="after")
    def _scale_and_labels(self) -> CriterionSpec:
        if self.kind == "pairwise":
            if self.scale is not None:
                raise ValueError("a pairwise criterion has no scale (its answers are A, B, tie)")
            extra = set(self.labels or {}) - {"A", "B", "tie"}
            if isinstance(self.labels, list) or extra:
                raise ValueError("pairwise labels are a mapping of A, B and tie to their text")
            return self
        if self.scale is None:
            raise ValueError("a likert criterion needs a scale: N points (1..N) or [low, high]")
        low, high = (1, self.scale) if isinstance(self.scale, int) else self.scale
        if high - low < 1 or high - low > 20:
            raise ValueError(f"scale {low}..{high} should have 2 to 21 points")
        points = list(range(low, high + 1))
        labels = self.labels
        if isinstance(labels, dict):
            labels = [labels.get(str(p), "") for p in points]
        if labels is None or len(labels) != len(points) or not all(str(x).strip() for x in labels):
            raise ValueError(f"give a label for every point {low}..{high} ({len(points)} labels)")
        self.scale = (low, high)
        self.labels = [str(x) for x in labels]
        return self

    def stored(self) -> dict[str, Any]:
        """The criterion as ``Campaign.criteria`` keeps it (labels keyed by the answer text)."""
        if self.kind == "pairwise":
            what = f" ({self.question})" if self.question else ""
            labels = {
                "A": f"Response A is better{what}",
                "B": f"Response B is better{what}",
                "tie": "About the same",
                **(self.labels or {}),
            }
            scale: list[Any] = ["A", "B", "tie"]
        else:
            low, high = self.scale  # type: ignore[misc]  # set by the validator
            labels = dict(zip(map(str, range(low, high + 1)), self.labels or [], strict=True))
            scale = [low, high]
        return {
            "name": self.name,
            "kind": self.kind,
            "scale": scale,
            "labels": labels,
            "question": self.question,
            "rubric": self.rubric,
            "required": self.required,
            "allow_na": self.allow_na,
        }


class OnboardingSpec(BaseModel):
    """Qualification: the campaign's onboarding tasks come first, with feedback after each."""

    model_config = ConfigDict(extra="forbid")

    pass_required: Annotated[int, Field(ge=1)] = Field(
        description="Onboarding tasks to answer correctly before the real tasks open."
    )


class CrowdSpec(BaseModel):
    """Crowd links: ``?campaign=NAME&PROLIFIC_PID=…`` (or ``&worker=…``) create a worker."""

    model_config = ConfigDict(extra="forbid")

    tasks_per_worker: Annotated[int, Field(ge=1)] | None = None


class CampaignSpec(BaseModel):
    """A whole study as a file defines it (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    description: str = ""
    guidelines: str = ""
    guidelines_file: str | None = None
    overlap: Annotated[int, Field(ge=1)] = 3
    assignment_policy: Literal["round-robin", "random", "least-done"] = "round-robin"
    criteria: Annotated[list[CriterionSpec], Field(min_length=1)]
    onboarding: OnboardingSpec | None = None
    randomize_order: bool = True
    seed: int = 0
    min_seconds: Annotated[float, Field(ge=0)] | None = None
    completion_code: str | None = None
    completion_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    crowd: CrowdSpec | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> CampaignSpec:
        names = [c.name for c in self.criteria]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"criterion names must be unique; repeated: {', '.join(twice)}")
        return self

    @property
    def task_kinds(self) -> list[str]:
        return sorted({c.kind for c in self.criteria})

    def stored_criteria(self) -> list[dict[str, Any]]:
        return [c.stored() for c in self.criteria]

    def settings(self) -> dict[str, Any]:
        """What ``Campaign.settings`` keeps: everything but the columns of its own."""
        return self.model_dump(
            mode="json",
            include={
                "onboarding",
                "randomize_order",
                "seed",
                "min_seconds",
                "completion_code",
                "completion_url",
                "crowd",
            },
        )


def parse_spec(data: Any, where: str = "campaign", base_dir: Path | None = None) -> CampaignSpec:
    """A ``CampaignSpec`` from parsed YAML/JSON; errors name ``where`` and every bad field."""
    if not isinstance(data, dict):
        raise CampaignFileError(
            f"{where}: expected a mapping with criteria, got {type(data).__name__}"
        )
    try:
        spec = CampaignSpec.model_validate(data)
    except ValidationError as err:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        ]
        raise CampaignFileError(f"{where}: " + "; ".join(problems)) from None
    if spec.guidelines_file:
        path = (base_dir or Path.cwd()) / spec.guidelines_file
        try:
            spec.guidelines = path.read_text(encoding="utf-8")
        except OSError as err:
            raise CampaignFileError(
                f"{where}: guidelines_file {spec.guidelines_file!r} cannot be read ({err.strerror})"
            ) from None
        spec.guidelines_file = None
    return spec


def load_spec(path: Path | str) -> CampaignSpec:
    """Read a campaign file (.yaml, .yml or .json)."""
    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise CampaignFileError(f"{path}: a campaign file is .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CampaignFileError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise CampaignFileError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise CampaignFileError(f"{path}: not valid {path.suffix[1:].upper()} ({err})") from None
    return parse_spec(data, str(path), path.parent)


def _load_templates() -> dict[str, CampaignSpec]:
    specs = [load_spec(path) for path in sorted(TEMPLATE_DIR.glob("*.yaml"))]
    return {spec.name: spec for spec in specs if spec.name}


TEMPLATES: dict[str, CampaignSpec] = _load_templates()


def template(name: str) -> CampaignSpec:
    """The built-in protocol called ``name``; the error lists the others."""
    if name not in TEMPLATES:
        raise KeyError(f"unknown campaign template {name!r}; choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def create_campaign(
    engine: Engine | None,
    name: str,
    template_name: str = "presales",
    *,
    overlap: int | None = None,
    assignment_policy: str = "round-robin",
    description: str | None = None,
    guidelines: str | None = None,
) -> Campaign:
    """Create campaign ``name`` from a built-in template, or return it if it has that template.

    ``overlap`` (annotators per task) defaults to the template's. An existing campaign of another
    template is an error rather than a silent mix of protocols.
    """
    spec = template(template_name).model_copy()
    if assignment_policy not in POLICIES:
        raise ValueError(
            f"assignment policy {assignment_policy!r}; use one of {', '.join(POLICIES)}"
        )
    if overlap is not None and overlap < 1:
        raise ValueError(f"overlap is {overlap}; every task needs at least one annotator")
    spec.overlap = overlap or spec.overlap
    spec.assignment_policy = assignment_policy  # type: ignore[assignment]
    spec.description = description if description is not None else spec.description
    spec.guidelines = guidelines if guidelines is not None else spec.guidelines
    with session_scope(engine) as session:
        return campaign_from_spec(session, spec, name, template_name)


def create_campaign_from_file(
    engine: Engine | None, path: Path | str, name: str | None = None
) -> Campaign:
    """Create the campaign a file defines (its ``name``, or ``name`` here); same file = no-op."""
    spec = load_spec(path)
    chosen = name or spec.name
    if not chosen:
        raise CampaignFileError(
            f"{path}: give the campaign a name (name: … in the file, or --name)"
        )
    with session_scope(engine) as session:
        return campaign_from_spec(session, spec, chosen, "custom")


def campaign_from_spec(
    session: Session, spec: CampaignSpec, name: str, template_name: str
) -> Campaign:
    """Campaign ``name`` as ``spec`` defines it, inside a write session; created if missing.

    An existing campaign is returned when its protocol (template and criteria) is the same, so
    re-running a command is harmless; a different protocol under the same name is an error.
    """
    criteria = spec.stored_criteria()
    campaign, created = get_or_create(
        session,
        Campaign,
        defaults={
            "template": template_name,
            "description": spec.description,
            "criteria": criteria,
            "task_kinds": spec.task_kinds,
            "overlap": spec.overlap,
            "assignment_policy": spec.assignment_policy,
            "guidelines": spec.guidelines,
            "settings": spec.settings(),
        },
        name=name,
    )
    if not created and campaign.template != template_name:
        raise ValueError(
            f"campaign {name!r} already exists with template {campaign.template!r}; "
            f"pick another name for a {template_name!r} campaign"
        )
    if not created and template_name == "custom" and campaign.criteria != criteria:
        raise ValueError(
            f"campaign {name!r} already exists with other criteria; pick another name "
            "(criteria cannot change once a study has started)"
        )
    return campaign


def list_campaigns(engine: Engine | None) -> list[Campaign]:
    """Every campaign, oldest first, except those an unfinished import is still creating."""
    unfinished = select(TaskImport.campaign_id).where(
        TaskImport.created_campaign.is_(True), TaskImport.status != "done"
    )
    with session_scope(engine, write=False) as session:
        query = select(Campaign).where(Campaign.id.not_in(unfinished)).order_by(Campaign.id)
        return list(session.scalars(query))


def find_campaign(session: Session, ref: str | int) -> Campaign:
    """Campaign ``ref`` (name or id) inside an open session; LookupError lists the others."""
    return find_by_ref(session, Campaign, ref, "campaign")


def criteria_for(campaign: Campaign, kind: str) -> list[dict[str, Any]]:
    """The criteria a task of ``kind`` ("rating" or "pairwise") is judged on, in campaign order."""
    return [c for c in campaign.criteria if c["kind"] == kind]


def campaign_setting(campaign: Campaign, key: str, default: Any = None) -> Any:
    """One of ``Campaign.settings`` (campaigns made before settings existed have none)."""
    return (campaign.settings or {}).get(key, default)


def pass_required(campaign: Campaign) -> int:
    """Correct onboarding answers a campaign requires before its real tasks (0: no onboarding)."""
    return (campaign_setting(campaign, "onboarding") or {}).get("pass_required", 0)
