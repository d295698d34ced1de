"""LLM ⇄ CRS collaboration on four pre-sales tasks (understanding, needs elicitation,
recommendation, response generation), after "Large Language Models and Conversational
Recommender Systems: A Collaborative Approach for Pre-sales Dialogue" (`presales`; importing
registers it; see docs/models.md)."""

from backend.models.presales.model import Presales, PresalesConfig

__all__ = ["Presales", "PresalesConfig"]
