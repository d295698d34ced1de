"""Crowdsourcing links: a worker from Prolific (or any platform) annotates without an invitation.

A campaign with ``crowd:`` in its file accepts links such as::

    https://annotate.example.org/?campaign=my-study&PROLIFIC_PID={{%PROLIFIC_PID%}}
        &STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}

(or ``&worker=ID`` for another platform). The first visit creates the worker's annotator, named
after the platform id, and assigns them a batch of tasks; later visits resume it. When every task
is answered the app shows the campaign's completion code and sends them to its completion URL.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Engine

from db.annotation import assign_tasks, hash_token
from db.campaigns import campaign_setting, find_campaign
from db.schema import Annotator, Event
from db.session import get_or_create, session_scope

log = logging.getLogger(__name__)

# Platform ids are short tokens; anything else in a link is refused rather than stored.
_WORKER_ID = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")


class CrowdLinkError(ValueError):
    """A crowd link that cannot start work; the message is for the worker."""


@dataclass(frozen=True)
class CrowdVisit:
    """Who arrived through a crowd link, as the query string says."""

    campaign: str
    platform: str
    worker_id: str
    study_id: str | None = None
    session_id: str | None = None


def parse_link(params: Mapping[str, str]) -> CrowdVisit | None:
    """The crowd visit a page's query parameters describe, or None when it is not a crowd link."""
    worker, platform = params.get("PROLIFIC_PID"), "prolific"
    if not worker:
        worker, platform = params.get("worker"), params.get("platform") or "external"
    campaign = params.get("campaign")
    if not worker and not campaign:
        return None
    if not worker or not campaign:
        raise CrowdLinkError(
            "This study link is incomplete. Please open it again from the study's page."
        )
    for value in (worker, platform):
        if not _WORKER_ID.match(value):
            raise CrowdLinkError("This study link has an invalid worker id. Please open it again.")
    return CrowdVisit(
        campaign=campaign,
        platform=platform,
        worker_id=worker,
        study_id=params.get("STUDY_ID"),
        session_id=params.get("SESSION_ID"),
    )


def crowd_annotator(engine: Engine | None, visit: CrowdVisit) -> Annotator:
    """The worker's annotator, created with a batch of the campaign's tasks on the first visit.

    Each visit is logged (with the platform's study and session ids) so that payments can be
    matched to work. Raises ``CrowdLinkError`` when the campaign takes no crowd workers.
    """
    with session_scope(engine, write=False) as session:
        try:
            campaign = find_campaign(session, visit.campaign)
        except LookupError:
            raise CrowdLinkError("This study does not exist or has ended.") from None
        crowd = campaign_setting(campaign, "crowd")
    if crowd is None:
        raise CrowdLinkError("This study does not take sign-ups through a link.")
    external_id = f"{visit.platform}:{visit.worker_id}"
    with session_scope(engine) as session:
        annotator, created = get_or_create(
            session,
            Annotator,
            # A token nobody knows: crowd workers come back through their platform link.
            defaults={"name": external_id, "token_hash": hash_token(secrets.token_urlsafe(24))},
            external_id=external_id,
        )
        session.add(
            Event(
                annotator_id=annotator.id,
                kind="crowd-visit",
                payload={
                    "campaign": campaign.name,
                    "study_id": visit.study_id,
                    "session_id": visit.session_id,
                    "new": created,
                },
            )
        )
    if created:
        added = assign_tasks(
            engine, campaign.id, annotators=[annotator.id], limit=crowd.get("tasks_per_worker")
        )
        log.info("crowd worker %s joined %r with %d tasks", external_id, campaign.name, added)
    return annotator


@dataclass(frozen=True)
class Completion:
    """What a finished annotator is given: a code to paste and where to go."""

    code: str | None
    url: str | None


def completion(engine: Engine | None, campaign: str | int) -> Completion | None:
    """The campaign's completion code and URL, or None when it has neither."""
    with session_scope(engine, write=False) as session:
        target = find_campaign(session, campaign)
        code = campaign_setting(target, "completion_code")
        url = campaign_setting(target, "completion_url")
    return Completion(code, url) if code or url else None
