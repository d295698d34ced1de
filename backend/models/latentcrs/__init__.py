"""LatentCRS: collaborative intents bridging behaviour and language (`latentcrs`); importing
registers it."""

from backend.models.latentcrs.config import LatentCRSConfig
from backend.models.latentcrs.recommender import LatentCRS

__all__ = ["LatentCRS", "LatentCRSConfig"]
