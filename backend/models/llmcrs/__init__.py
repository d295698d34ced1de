"""LLMCRS: an LLM managing sub-tasks and expert models (`llmcrs`); importing registers it."""

from backend.models.llmcrs.config import SUBTASKS, LLMCRSConfig
from backend.models.llmcrs.model import LLMCRS

__all__ = ["LLMCRS", "SUBTASKS", "LLMCRSConfig"]
