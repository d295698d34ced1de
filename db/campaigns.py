"""Annotation campaigns: the papers' evaluation protocols as templates, and creating campaigns.

A campaign's ``criteria`` say what annotators judge. Rating criteria apply to rating tasks (one
response), pairwise criteria to pairwise tasks (two responses of the same context). Templates:

* ``presales`` — informativeness and relevance, 1–5 (the pre-sales paper, Appendix D / Table 4);
* ``llm-redial`` — fluency, informativeness, logic and coherence, 0–2 (LLM-REDIAL §3.3 and the
  rating scheme of its Appendix D.1), plus a pairwise "overall" comparison;
* ``pecrs`` — pairwise fluency and relevancy with a tie option (PECRS Table 4);
* ``arena`` — one pairwise "overall" criterion, for rounds exported from the demo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from db.arena import ARENA_CRITERION
from db.schema import Campaign
from db.session import find_by_ref, get_or_create, session_scope

POLICIES = ("round-robin", "random", "least-done")


def rating(name: str, low: int, high: int, labels: dict[int, str], rubric: str) -> dict[str, Any]:
    """A rating criterion on the integer scale ``low..high``; ``labels`` explain each point."""
    if set(labels) != set(range(low, high + 1)):
        raise ValueError(f"criterion {name!r}: give a label for every point {low}..{high}")
    return {
        "name": name,
        "kind": "rating",
        "scale": [low, high],
        "labels": {str(k): v for k, v in labels.items()},
        "rubric": rubric,
    }


def pairwise(name: str, question: str, rubric: str) -> dict[str, Any]:
    """A pairwise criterion: A better, B better or tie."""
    return {
        "name": name,
        "kind": "pairwise",
        "scale": ["A", "B", "tie"],
        "labels": {
            "A": f"Response A is better ({question})",
            "B": f"Response B is better ({question})",
            "tie": "About the same",
        },
        "rubric": rubric,
    }


@dataclass(frozen=True)
class CampaignTemplate:
    """A ready-made protocol: criteria, task kinds, annotators per task and guidelines."""

    name: str
    description: str
    criteria: list[dict[str, Any]]
    overlap: int = 3
    guidelines: str = ""
    task_kinds: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        kinds = sorted({c["kind"] for c in self.criteria})
        object.__setattr__(self, "task_kinds", kinds)


_COMMON_GUIDELINES = """\
You will read the start of a conversation between a **user** looking for a movie and a
**recommender system**, and then the system's next response.

- Judge the response as the next turn of *this* conversation: what the user asked for, what they
  said they liked or disliked.
- Judge each criterion on its own; a response can be fluent and still irrelevant.
- Recommended items are listed under the response; a response that names films the user already
  mentioned is not recommending anything new.
- Some tasks are attention checks whose response tells you what to answer. Please follow them.
- Take your time. You can go back and change an answer; the latest answer counts.
"""

PRESALES = CampaignTemplate(
    name="presales",
    description="Informativeness and relevance of each response, 1–5 (pre-sales paper, Table 4).",
    criteria=[
        rating(
            "informativeness",
            1,
            5,
            {
                1: "No information about the items at all",
                2: "A little information, mostly vague",
                3: "Some useful information about the items",
                4: "Clear, useful information about the items",
                5: "Rich, specific information, as much as a good human seller gives",
            },
            "How much does the response tell the user about the recommended items (genre, plot, "
            "people, why it fits), compared with what a good human recommender would say?",
        ),
        rating(
            "relevance",
            1,
            5,
            {
                1: "Unrelated to the conversation",
                2: "Barely related",
                3: "Partly fits what the user asked for",
                4: "Fits what the user asked for",
                5: "Fits exactly, taking the whole conversation into account",
            },
            "How well does the response fit the user's request and the conversation so far?",
        ),
    ],
    guidelines=_COMMON_GUIDELINES,
)

# The scale points follow LLM-REDIAL Appendix D.1 (0 poor, 1 normal, 2 good), in our own words.
LLM_REDIAL = CampaignTemplate(
    name="llm-redial",
    description=(
        "Fluency, informativeness, logic and coherence, 0–2, and an overall pairwise preference "
        "(LLM-REDIAL §3.3, Appendix D.1; agreement reported as Kendall's W)."
    ),
    criteria=[
        rating(
            "fluency",
            0,
            2,
            {
                0: "Poor: grammar, spelling or wording problems make it hard to understand",
                1: "Normal: some errors or awkward wording, but understandable",
                2: "Good: fluent and clear, no noticeable errors",
            },
            "Is the response written in correct, natural English and easy to understand?",
        ),
        rating(
            "informativeness",
            0,
            2,
            {
                0: "Poor: a generic 'safe' reply, or one that repeats itself",
                1: "Normal: some information, but shallow; the user would need to ask more",
                2: "Good: rich, detailed information that answers and adds relevant content",
            },
            "Does the response carry real information rather than a safe, generic answer?",
        ),
        rating(
            "logic",
            0,
            2,
            {
                0: "Poor: unrelated to the request, or contradicts itself",
                1: "Normal: somewhat related or reasonable, with some logical gaps",
                2: "Good: reasonable and logically related to what the user asked",
            },
            "Is the response consistent, reasonable and in line with common sense?",
        ),
        rating(
            "coherence",
            0,
            2,
            {
                0: "Poor: no clear connection to the conversation so far",
                1: "Normal: mostly connected, with occasional breaks",
                2: "Good: follows on smoothly from the conversation",
            },
            "Does the response follow on from the previous turns?",
        ),
        pairwise(
            "overall",
            "overall quality",
            "Taking all four aspects together, which response is the better next turn?",
        ),
    ],
    guidelines=_COMMON_GUIDELINES,
)

PECRS = CampaignTemplate(
    name="pecrs",
    description="Pairwise fluency and relevancy with a tie option (PECRS Table 4, three raters).",
    criteria=[
        pairwise(
            "fluency",
            "more fluent",
            "Which response reads more naturally and correctly? Ignore which films it names.",
        ),
        pairwise(
            "relevancy",
            "more relevant",
            "Which response fits the conversation and the user's wishes better, including the "
            "films it recommends?",
        ),
    ],
    guidelines=_COMMON_GUIDELINES,
)

ARENA = CampaignTemplate(
    name="arena",
    description="Arena rounds exported from the demo: which of two responses is better overall.",
    criteria=[ARENA_CRITERION],
    guidelines=_COMMON_GUIDELINES,
)

TEMPLATES: dict[str, CampaignTemplate] = {t.name: t for t in (PRESALES, LLM_REDIAL, PECRS, ARENA)}


def template(name: str) -> CampaignTemplate:
    """The template called ``name``; the error lists the others."""
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
    """Create campaign ``name`` from a template, or return it if it exists with that template.

    ``overlap`` (annotators per task) defaults to the template's. An existing campaign of another
    template is an error rather than a silent mix of protocols.
    """
    proto = template(template_name)
    if assignment_policy not in POLICIES:
        raise ValueError(
            f"assignment policy {assignment_policy!r}; use one of {', '.join(POLICIES)}"
        )
    if overlap is not None and overlap < 1:
        raise ValueError(f"overlap is {overlap}; every task needs at least one annotator")
    with session_scope(engine) as session:
        campaign, created = get_or_create(
            session,
            Campaign,
            defaults={
                "template": proto.name,
                "description": description if description is not None else proto.description,
                "criteria": proto.criteria,
                "task_kinds": proto.task_kinds,
                "overlap": overlap or proto.overlap,
                "assignment_policy": assignment_policy,
                "guidelines": guidelines if guidelines is not None else proto.guidelines,
            },
            name=name,
        )
    if not created and campaign.template != proto.name:
        raise ValueError(
            f"campaign {name!r} already exists with template {campaign.template!r}; "
            f"pick another name for a {proto.name!r} campaign"
        )
    return campaign


def list_campaigns(engine: Engine | None) -> list[Campaign]:
    """Every campaign, oldest first."""
    with session_scope(engine, write=False) as session:
        return list(session.scalars(select(Campaign).order_by(Campaign.id)))


def find_campaign(session: Session, ref: str | int) -> Campaign:
    """Campaign ``ref`` (name or id) inside an open session; LookupError lists the others."""
    return find_by_ref(session, Campaign, ref, "campaign")


def criteria_for(campaign: Campaign, kind: str) -> list[dict[str, Any]]:
    """The criteria a task of ``kind`` ("rating" or "pairwise") is judged on, in campaign order."""
    return [c for c in campaign.criteria if c["kind"] == kind]
