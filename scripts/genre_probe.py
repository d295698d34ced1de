"""Does a model read a genre request? Genre P@5 on the demo's catalog (issue 14's probe).

    python scripts/genre_probe.py pecrs --set trained_on=redial --set generate=false
    python scripts/genre_probe.py retrieval

Each of MovieLens's 18 genres is asked for in two phrasings (unlike the README's examples);
P@5 is the share of the five films shown that carry the genre asked for. The README's example
requests are asked too, with the five films shown. Writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from backend.cli_common import parse_overrides
from backend.data import load_dataset
from backend.registry import create_model
from backend.types import Dialogue, Turn

PHRASINGS = (
    "Can you recommend a good {genre} movie?",
    "I feel like watching something {genre} tonight.",
)
EXAMPLES = (
    "I'm in the mood for a scary horror film tonight.",
    "Something funny for the whole family?",
    "A romantic comedy from the 1990s, please.",
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    dataset = load_dataset(args.dataset)
    model = create_model(args.model, dataset, parse_overrides(args.overrides))

    def shown(text: str) -> list:
        reply = model.respond(Dialogue(id="probe", turns=[Turn(role="user", text=text)]))
        return [dataset.catalog[s.item_id] for s in reply.items[:5]]

    genres = sorted({g for item in dataset.catalog for g in item.genres})
    per_genre = {
        genre: statistics.mean(
            sum(genre in item.genres for item in shown(p.format(genre=genre.lower()))) / 5
            for p in PHRASINGS
        )
        for genre in genres
    }
    examples = {
        text: [f"{item.display_title} [{', '.join(item.genres)}]" for item in shown(text)]
        for text in EXAMPLES
    }
    report = {
        "model": args.model,
        "overrides": args.overrides,
        "version": getattr(model, "version", ""),
        "genre_p_at_5": round(statistics.mean(per_genre.values()), 3),
        "per_genre": per_genre,
        "examples": examples,
    }
    print(json.dumps(report, indent=2))
    out = args.out or Path("results") / f"genre-probe-{args.model}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
