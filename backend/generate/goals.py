"""The 8 primary goals and 30 sub-goals of LLM-REDIAL (§2.4.1, Table 6), as data.

``text`` is the sub-goal as the paper's template writes it, with its slots; ``instruction`` is
our wording of what the speaker does, used when one utterance is written at a time. ``{item}``
and ``{review}`` there stand for the utterance's item and its review text. (Table 6 swaps the
descriptions of the two greetings and lists Chit-Chat twice; here one greeting is per feedback
kind and the two Chit-Chats are the user's and the agent's.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Speaker = Literal["user", "system"]

SLOTS: tuple[str, ...] = (
    "USER_HIS_LIKES",
    "USER_HIS_LIKES_REVIEW",
    "USER_HIS_DISLIKES",
    "USER_HIS_DISLIKES_REVIEW",
    "USER_MIGHT_LIKES",
    "OTHER_REVIEW",
    "OTHER_HISLIKES_REVIEW",
    "OTHER_DISLIKES_REVIEW",
    "OTHER_MIGHTLIKES_REVIEW",
)
SLOT_RE = re.compile(r"\[([A-Z][A-Z_]+)\]")


@dataclass(frozen=True)
class Goal:
    key: str
    primary: str
    speaker: Speaker
    text: str
    instruction: str

    @property
    def slots(self) -> list[str]:
        return SLOT_RE.findall(self.text)


def _g(key: str, primary: str, speaker: Speaker, text: str, instruction: str) -> Goal:
    return Goal(key, primary, speaker, text, instruction)


GOALS: dict[str, Goal] = {
    g.key: g
    for g in (
        _g("greet_dislikes", "Greeting", "user",
           "Greeting with [USER_HIS_DISLIKES] and [USER_HIS_DISLIKES_REVIEW]",
           "Say hello and tell the agent you recently watched {item} and did not enjoy it ({review})."),
        _g("greet_likes", "Greeting", "user",
           "Greeting with [USER_HIS_LIKES] and [USER_HIS_LIKES_REVIEW]",
           "Say hello and tell the agent you recently watched {item} and loved it ({review})."),
        _g("ask_rec", "Ask", "user", "Ask for recommendation",
           "Ask the agent to recommend a movie."),
        _g("ask_detail", "Ask", "user", "Ask for item detail",
           "Ask for more details about {item}."),
        _g("ask_preference", "Ask", "system", "Ask for user's preference",
           "Ask what kind of movie the user would like to watch."),
        _g("ask_more", "Ask", "system", "Ask if need more recommend",
           "Ask whether the user would like more recommendations."),
        _g("respond_other_review", "Respond", "system", "Responds with [OTHER_REVIEW]",
           "Reply using what other viewers say about {item}: {review}"),
        _g("respond_simply", "Respond", "system", "Response simply but not rigidly",
           "Reply simply and politely."),
        _g("respond_detail", "Respond", "system", "Responds in detail",
           "Answer in detail about {item}: {review}"),
        _g("respond_mood", "Respond", "system", "Responds according to the user's mood",
           "Reply in a way that fits the user's mood."),
        _g("rec_might_likes", "Recommend", "system", "Recommend [USER_MIGHT_LIKES]",
           "Recommend {item}."),
        _g("rec_his_likes", "Recommend", "system", "Recommend [USER_HIS_LIKES]",
           "Recommend {item}."),
        _g("rec_his_dislikes", "Recommend", "system", "Recommend [USER_HIS_DISLIKES]",
           "Recommend {item}."),
        _g("accept_no_reason", "Feedback", "user", "Accept recommendation without reason",
           "Accept the recommendation of {item}."),
        _g("accept_reason", "Feedback", "user", "Accept recommendation with reason",
           "Accept the recommendation of {item} and say why it appeals to you."),
        _g("express_interest", "Feedback", "user", "Express interest",
           "Say that {item} sounds interesting."),
        _g("reject_no_reason", "Feedback", "user", "Reject recommendation without reason",
           "Politely turn down {item}."),
        _g("chitchat_user", "Chit-Chat", "user", "Chit-Chat",
           "Make some small talk about movies."),
        _g("chitchat_system", "Chit-Chat", "system", "Chit-Chat",
           "Make some small talk about movies."),
        _g("lead_to_rec", "Talk", "system", "Lead the conversation to recommend",
           "Steer the conversation towards a recommendation."),
        _g("lead_to_end", "Talk", "user", "Lead the conversation to end",
           "Start wrapping up the conversation."),
        _g("intro_dislikes_review", "Talk", "system", "Introduce based on [OTHER_DISLIKES_REVIEW]",
           "Describe {item} using what others say: {review}"),
        _g("intro_likes_review", "Talk", "system", "Introduce based on [OTHER_HISLIKES_REVIEW]",
           "Describe {item} using what others say: {review}"),
        _g("intro_mightlikes_review", "Talk", "system",
           "Introduce based on [OTHER_MIGHTLIKES_REVIEW]",
           "Describe {item} using what others say: {review}"),
        _g("accept_thanks", "Talk", "user", "Accept and express gratitude",
           "Accept {item} and thank the agent."),
        _g("reject_thanks", "Talk", "user", "Reject and express gratitude",
           "Turn down {item} and thank the agent."),
        _g("thanks", "Talk", "user", "Express gratitude", "Thank the agent."),
        _g("end", "Talk", "system", "End the conversation reasonably",
           "Say goodbye and end the conversation."),
        _g("reason_seen", "Reason", "user", "Have seen the movie before",
           "Give as the reason that you have already seen {item}."),
        _g("reason_dislike_review", "Reason", "user", "[USER_HIS_DISLIKES_REVIEW]",
           "Give as the reason that you did not like {item} ({review})."),
    )
}  # fmt: skip

PRIMARY_GOALS: tuple[str, ...] = tuple(dict.fromkeys(g.primary for g in GOALS.values()))
