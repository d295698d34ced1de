"""The LLM ⇄ CRS pre-sales study (Tables 1-4) on ReDial and LLM-REDIAL, end to end and resumable.

    python scripts/presales_study.py            # the README's tables (hours on 2 CPU cores)
    python scripts/presales_study.py --smoke    # the same wiring on a few examples (minutes)

Order: the examples (silver labels, 20 candidates); the CRS and the LLM on all of train (the
no-collaboration rows) and on each fold's complement (cross-fitting); the partners' predictions,
out of fold on train and from the full model on dev/test, checked for leaks; CRS→LLM (the LLM
tuned with the CRS's outputs in its input, §3.4) and LLM→CRS (the CRS trained with ``[LLM]``
hints and the LLM's pick fused by Eq. 4, §3.5); test predictions of every variant; the score-mix
baseline; the figures with the paper's beside them in results/presales-study.json. Every stage
skips what is done, so the same command continues after a stop.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from backend.catalog import Catalog
from backend.data import load_dataset
from backend.eval.study import write_summary
from backend.models.popularity import item_counts
from backend.models.presales import crossfit
from backend.models.presales.crs import CRSConfig, build_crs, train_crs
from backend.models.presales.evaluate import (
    attribute_options,
    crs_predict,
    llm_predict_batch,
    majority_predictions,
    partner_text,
    pick_of,
    run_predictions,
    score_task,
)
from backend.models.presales.llm import LLMConfig, LLMPartner, train_llm
from backend.models.presales.paper import PAPER
from backend.models.presales.report import markdown
from backend.models.presales.schema import TASKS, Example
from backend.models.presales.silver import build_examples
from backend.registry import save_run_files
from backend.settings import get_settings

DATASETS = ("redial", "llm-redial")
log = logging.getLogger("presales")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="a few examples and steps: the wiring")
    p.add_argument("--train", default="150,50", help="train examples per task: ReDial,LLM-REDIAL")
    p.add_argument("--dev", default="24,8")
    p.add_argument("--test", default="150,50")
    p.add_argument("--steps", type=int, default=160, help="full-model steps (folds: half)")
    p.add_argument("--stage1", type=int, default=40, help="CRS recommendation-only steps")
    p.add_argument(
        "--only",
        choices=("crs", "llm", "crs2llm", "llm2crs"),
        help="one part: a partner's three runs and predictions, or one collaboration (after its "
        "partner); e.g. two processes side by side with OMP_NUM_THREADS=1, then the whole "
        "command again for the rest and the tables",
    )
    p.add_argument(
        "--markdown", action="store_true", help="print the README tables from --out and stop"
    )
    p.add_argument("--out", type=Path, default=Path("results/presales-study.json"))
    return p.parse_args()


def caps(text: str) -> dict[str, int]:
    return dict(zip(DATASETS, map(int, text.split(",")), strict=True))


def examples_for(split: str, per: dict[str, int], seed: int) -> list[Example]:
    out = []
    for name in DATASETS:
        drawn = build_examples(load_dataset(name), split, per[name], seed)
        out += [e for task in TASKS for e in drawn[task]]
    return out


def by_task(examples: list[Example]) -> dict[str, list[Example]]:
    return {t: [e for e in examples if e.task == t] for t in TASKS}


class Study:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        name = "smoke" if args.smoke else "study"
        self.root = get_settings().CRS_HOME / "presales" / name
        self.root.mkdir(parents=True, exist_ok=True)
        datasets = {n: load_dataset(n) for n in DATASETS}
        self.catalogs: dict[str, Catalog] = {n: d.catalog for n, d in datasets.items()}
        self.counts = {n: item_counts(d) for n, d in datasets.items()}  # the CRS's prior
        cache = self.root / "examples.jsonl"
        settings = {"train": args.train, "dev": args.dev, "test": args.test}
        if cache.is_file() and json.loads(cache.read_text().splitlines()[0]) == settings:
            rows = [json.loads(line) for line in cache.read_text().splitlines()[1:]]
            self.examples = [Example.from_json(r) for r in rows]
        else:
            began = time.perf_counter()
            self.examples = (
                examples_for("train", caps(args.train), 0)
                + examples_for("dev", caps(args.dev), 1)
                + examples_for("test", caps(args.test), 2)
            )
            lines = [json.dumps(settings)] + [json.dumps(e.to_json()) for e in self.examples]
            cache.write_text("\n".join(lines) + "\n")
            log.info("examples built in %.0f s", time.perf_counter() - began)
        self.split = {
            s: [e for e in self.examples if e.split == s] for s in ("train", "dev", "test")
        }
        self.options = attribute_options(self.split["train"])
        self.crs_cfg = CRSConfig(stage1_steps=args.stage1, stage2_steps=args.steps)
        self.llm_cfg = LLMConfig(steps=args.steps)

    # --- training

    def crs(
        self, partner: crossfit.Partner | None, hints: dict | None = None, name: str = ""
    ) -> Path:
        fold = partner.fold if partner else None
        name = name or (partner.name if partner else "crs-full")
        out = self.root / name
        if (out / "heads.pt").is_file():
            return out
        cfg = self.crs_cfg
        if fold is not None:
            cfg = replace(
                cfg, stage1_steps=cfg.stage1_steps // 2, stage2_steps=cfg.stage2_steps // 2
            )
        if hints:
            cfg = replace(cfg, fusion=True, hints=True)
        train = by_task(crossfit.training_examples(self.split["train"], fold))
        began = time.perf_counter()
        dev = by_task(self.split["dev"])
        record = train_crs(train, dev, self.catalogs, cfg, out, hints, self.counts)
        self._written(out, partner, {"cfg": cfg.__dict__}, record, began)
        return out

    def llm(
        self, partner: crossfit.Partner | None, crs_outputs: dict | None = None, name: str = ""
    ) -> Path:
        fold = partner.fold if partner else None
        name = name or (partner.name if partner else "llm-full")
        out = self.root / name
        if (out / "metrics.json").is_file():
            return out
        cfg = self.llm_cfg if fold is None else replace(self.llm_cfg, steps=self.llm_cfg.steps // 2)
        train = by_task(crossfit.training_examples(self.split["train"], fold))
        began = time.perf_counter()
        record = train_llm(train, by_task(self.split["dev"]), self.catalogs, cfg, out, crs_outputs)
        self._written(out, partner, {"cfg": cfg.__dict__}, record, began)
        return out

    def _written(self, out: Path, partner, config: dict, record: dict, began: float) -> None:
        if partner is not None:
            (out / "train_units.json").write_text(partner.units_json())
        record["total_seconds"] = time.perf_counter() - began
        save_run_files(out, config, record)

    # --- predictions

    def crs_predictions(
        self, folder: Path, examples: list[Example], tag: str, hints: dict | None = None
    ) -> dict:
        hints = hints or {}
        net = build_crs(self.catalogs, self.crs_cfg, folder)
        net.eval()

        def predict(chunk: list[Example]) -> list[dict]:
            out = []
            for e in chunk:
                text, pick = hints.get(e.example_id, ("", None))
                with torch.no_grad():
                    out.append(crs_predict(net, e, self.options, text, pick))
            return out

        return run_predictions(
            self.root / "predictions" / f"{tag}.jsonl",
            {"model": str(folder)},
            examples,
            predict,
            desc=tag,
        )

    def llm_predictions(
        self, folder: Path, examples: list[Example], tag: str, crs_outputs: dict | None = None
    ) -> dict:
        llm = LLMPartner(self.llm_cfg, folder)
        ordered = sorted(examples, key=lambda e: TASKS.index(e.task))

        def predict(chunk: list[Example]) -> list[dict]:
            out: dict[str, dict] = {}
            for task in TASKS:
                part = [e for e in chunk if e.task == task]
                if part:
                    preds = llm_predict_batch(
                        llm, part, self.catalogs, self.options, crs_outputs or {}
                    )
                    out.update({e.example_id: p for e, p in zip(part, preds, strict=True)})
            return [out[e.example_id] for e in chunk]

        return run_predictions(
            self.root / "predictions" / f"{tag}.jsonl",
            {"model": str(folder)},
            ordered,
            predict,
            desc=tag,
        )

    def partner_rows(self, role: str) -> list[dict[str, Any]]:
        """Out-of-fold train predictions and full-model dev/test ones, with provenance, checked."""
        path = self.root / f"partners-{role}.json"
        models = crossfit.partners(role, self.split["train"])
        if path.is_file():
            rows = json.loads(path.read_text())
        else:
            rows = []
            for model in models:
                folder = self.crs(model) if role == "crs" else self.llm(model)
                mine = [e for e in self.examples if crossfit.predictor(e, models) is model]
                run = self.crs_predictions if role == "crs" else self.llm_predictions
                preds = run(folder, mine, f"{model.name}")
                rows += [crossfit.provenance(e, model, preds[e.example_id]) for e in mine]
            path.write_text(json.dumps(rows))
        crossfit.check(rows, self.examples, models)
        for model in models:  # the units each checkpoint says it trained on agree
            saved = json.loads((self.root / model.name / "train_units.json").read_text())
            assert set(saved["units"]) == set(model.units), model.name
        return rows

    # --- the study

    def crs_outputs(self, crs_rows: list[dict[str, Any]]) -> dict[str, str]:
        """The CRS's outputs as the LLM reads them (§3.4), by example id."""
        by_id = {e.example_id: e for e in self.examples}
        return {
            r["example_id"]: partner_text(by_id[r["example_id"]], r["output"]) for r in crs_rows
        }

    def llm_hints(self, llm_rows: list[dict[str, Any]]) -> dict[str, tuple[str, str | None]]:
        """The LLM's outputs as the CRS reads them (§3.5): the [LLM] text and its pick."""
        by_id = {e.example_id: e for e in self.examples}
        return {
            r["example_id"]: (
                partner_text(by_id[r["example_id"]], r["output"]),
                pick_of(by_id[r["example_id"]], r["output"]),
            )
            for r in llm_rows
        }

    def crs2llm(self, crs_rows: list[dict[str, Any]]) -> tuple[dict, dict]:
        """CRS→LLM trained on out-of-fold CRS outputs; its dev and test predictions."""
        crs_out = self.crs_outputs(crs_rows)
        folder = self.llm(None, crs_out, name="llm-crs2llm")
        dev = self.llm_predictions(folder, self.split["dev"], "llm-crs2llm-dev", crs_out)
        return dev, self.llm_predictions(folder, self.split["test"], "llm-crs2llm-test", crs_out)

    def llm2crs(self, llm_rows: list[dict[str, Any]]) -> tuple[dict, dict]:
        """LLM→CRS trained with out-of-fold LLM hints and picks; its dev and test predictions."""
        hints = self.llm_hints(llm_rows)
        folder = self.crs(None, hints, name="crs-llm2crs")
        dev = self.crs_predictions(folder, self.split["dev"], "crs-llm2crs-dev", hints)
        return dev, self.crs_predictions(folder, self.split["test"], "crs-llm2crs-test", hints)

    def run(self) -> dict[str, Any]:
        crs_rows = self.partner_rows("crs")
        llm_rows = self.partner_rows("llm")
        crs2llm_dev, crs2llm_test = self.crs2llm(crs_rows)
        llm2crs_dev, llm2crs_test = self.llm2crs(llm_rows)
        preds = {
            "LLM": {r["example_id"]: r["output"] for r in llm_rows if r["split"] == "test"},
            "CRS": {r["example_id"]: r["output"] for r in crs_rows if r["split"] == "test"},
            "CRS→LLM": crs2llm_test,
            "LLM→CRS": llm2crs_test,
        }
        self.select(crs_rows, llm_rows, crs2llm_dev, llm2crs_dev)
        self.catalog_mode(preds)
        preds["score mix"] = self.score_mix(preds["CRS"], preds["LLM"])
        preds["majority / chance"] = majority_predictions(
            self.split["train"], self.split["test"], self.options
        )
        self.write_outputs(preds)
        return self.tables(preds)

    def catalog_mode(self, preds: dict[str, dict]) -> None:
        """Recommendation over the whole catalog (Table 3's second block), added to ``preds`` as
        each prediction's ``catalog`` ranking. The CRS ranks every film. An LLM cannot read a
        catalog, so its 20 lettered candidates are the CRS's top 20, shuffled: they hold the gold
        only where the CRS put it (the 20-candidate sets hold it by construction and would leak
        it). CRS→LLM reads the CRS's scores of those 20; LLM→CRS fuses the LLM's pick among them."""
        rec = [e for e in self.split["test"] if e.task == "recommend"]
        short = []
        for e in rec:
            top = preds["CRS"][e.example_id]["catalog"][:20]
            random.Random(e.example_id).shuffle(top)
            short.append(replace(e, candidates=top))
        crs_short = self.crs_predictions(self.root / "crs-full", short, "crs-full-catalog")
        llm_short = self.llm_predictions(self.root / "llm-full", short, "llm-full-catalog")
        crs_text = {e.example_id: partner_text(e, crs_short[e.example_id]) for e in short}
        crs2llm = self.llm_predictions(
            self.root / "llm-crs2llm", short, "llm-crs2llm-catalog", crs_text
        )
        picks = {e.example_id: ("", pick_of(e, llm_short[e.example_id])) for e in short}
        llm2crs = self.crs_predictions(self.root / "crs-llm2crs", rec, "crs-llm2crs-catalog", picks)
        for e in rec:
            key = e.example_id
            preds["LLM"][key] = {**preds["LLM"][key], "catalog": llm_short[key]["ranking"]}
            preds["CRS→LLM"][key] = {**preds["CRS→LLM"][key], "catalog": crs2llm[key]["ranking"]}
            preds["LLM→CRS"][key] = {**preds["LLM→CRS"][key], "catalog": llm2crs[key]["catalog"]}

    def select(self, crs_rows, llm_rows, crs2llm_dev: dict, llm2crs_dev: dict) -> None:
        """The variant the demo serves, by the rule fixed before any test figure: the best dev
        mean of understanding F1, elicitation F1, recommendation accuracy and Dist-1."""
        dev = self.split["dev"]
        preds = {
            "llm": {r["example_id"]: r["output"] for r in llm_rows if r["split"] == "dev"},
            "crs": {r["example_id"]: r["output"] for r in crs_rows if r["split"] == "dev"},
            "crs2llm": crs2llm_dev,
            "llm2crs": llm2crs_dev,
        }
        keys = {"understand": "f1", "elicit": "f1", "recommend": "accuracy", "generate": "dist1"}
        self.dev_scores = {
            variant: {
                task: score_task(task, [e for e in dev if e.task == task], rows)[key]
                for task, key in keys.items()
            }
            for variant, rows in preds.items()
        }
        rule = {v: sum(s.values()) / len(s) for v, s in self.dev_scores.items()}
        self.served = max(rule, key=rule.__getitem__)
        served = {"variant": self.served, "dev_mean": rule, "options": self.options}
        (self.root / "served.json").write_text(json.dumps(served, indent=2))

    def score_mix(self, crs: dict, llm: dict) -> dict:
        """p = α CRS + (1-α) LLM over the 20 candidates (softmax of each), α chosen on dev —
        an inference-time baseline, not a collaboration; the other tasks take the CRS's output."""
        alpha = self.mix_alpha()
        by_id = {e.example_id: e for e in self.split["test"]}
        return {
            key: mixed(by_id[key], c, llm[key], alpha) if by_id[key].task == "recommend" else c
            for key, c in crs.items()
        }

    def mix_alpha(self) -> float:
        dev = [e for e in self.split["dev"] if e.task == "recommend"]
        crs = {
            r["example_id"]: r["output"]
            for r in json.loads((self.root / "partners-crs.json").read_text())
        }
        llm = {
            r["example_id"]: r["output"]
            for r in json.loads((self.root / "partners-llm.json").read_text())
        }
        best = (-1.0, 1.0)
        for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
            preds = {
                e.example_id: mixed(e, crs[e.example_id], llm[e.example_id], alpha) for e in dev
            }
            acc = score_task("recommend", dev, preds)["accuracy"] if dev else 0.0
            best = max(best, (acc, alpha))
        self.alpha = best[1]
        return best[1]

    def write_outputs(self, preds: dict[str, dict]) -> None:
        """Generation outputs per variant as `crs eval --predictions` rows, for `crs tasks create
        --outputs` (the human evaluation of Table 4)."""
        folder = self.root / "outputs"
        folder.mkdir(exist_ok=True)
        for variant, rows in preds.items():
            if variant.startswith("majority"):
                continue
            slug = {
                "LLM": "llm",
                "CRS": "crs",
                "CRS→LLM": "crs2llm",
                "LLM→CRS": "llm2crs",
                "score mix": "mix",
            }[variant]
            lines = []
            for e in self.split["test"]:
                if e.task == "generate" and e.example_id in rows:
                    lines.append(
                        json.dumps(
                            {
                                "dataset": e.dataset,
                                "dialogue_id": e.dialogue_id,
                                "turn": e.turn,
                                "text": rows[e.example_id]["text"],
                                "top10": e.items[:10],
                            }
                        )
                    )
            (folder / f"presales-{slug}.jsonl").write_text("\n".join(lines) + "\n")

    def tables(self, preds: dict[str, dict]) -> dict[str, Any]:
        test = self.split["test"]
        groups = {
            "redial": [e for e in test if e.dataset == "redial"],
            "llm-redial": [e for e in test if e.dataset == "llm-redial"],
            "all": test,
        }
        tables: dict[str, Any] = {}
        for variant, rows in preds.items():
            tables[variant] = {}
            for task in TASKS:
                if variant.startswith("majority") and task == "generate":
                    continue
                tables[variant][task] = {
                    g: score_task(task, [e for e in es if e.task == task], rows)
                    for g, es in groups.items()
                }
        return {
            "tables": tables,
            "mix_alpha": self.alpha,
            "dev_selection": {"scores": self.dev_scores, "served": self.served},
            "examples": {
                s: {t: len([e for e in es if e.task == t]) for t in TASKS}
                for s, es in self.split.items()
            },
            "options": self.options,
            "training_seconds": {
                p.name: training_seconds(json.loads((p / "metrics.json").read_text()))
                for p in sorted(self.root.iterdir())
                if (p / "metrics.json").is_file()
            },
            "paper": PAPER,
            "settings": vars(self.args) | {"out": str(self.args.out)},
        }


def training_seconds(record: dict[str, Any]) -> float:
    """Seconds of training steps, summed over every process that resumed the run."""
    stages = [record[k] for k in ("stage1", "stage2") if k in record] or [record]
    return round(sum(stage["seconds"] for stage in stages), 1)


def mixed(example: Example, crs: dict, llm: dict, alpha: float) -> dict:
    """The candidates ranked by α softmax(CRS) + (1-α) softmax(LLM) (scores in candidate order)."""

    def soft(scores: list[float]) -> list[float]:
        peak = max(scores)
        weights = [math.exp(s - peak) for s in scores]
        return [w / sum(weights) for w in weights]

    c, m = soft(crs["scores"]), soft(llm["scores"])
    mix = [alpha * a + (1 - alpha) * b for a, b in zip(c, m, strict=True)]
    order = sorted(range(len(mix)), key=lambda i: -mix[i])
    return {
        "text": crs["text"] if alpha >= 0.5 else llm["text"],
        "ranking": [example.candidates[i] for i in order],
        "scores": [round(x, 5) for x in mix],
    }


def main() -> None:
    args = parse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.smoke:
        args.train, args.dev, args.test, args.steps, args.stage1 = "12,4", "4,2", "6,2", 8, 4
        args.out = get_settings().CRS_HOME / "presales" / "smoke" / "presales-study.json"
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return
    study = Study(args)
    if args.only in ("crs", "llm"):
        study.partner_rows(args.only)
        return
    if args.only == "crs2llm":
        study.crs2llm(study.partner_rows("crs"))
        return
    if args.only == "llm2crs":
        study.llm2crs(study.partner_rows("llm"))
        return
    write_summary(args.out, study.run())


if __name__ == "__main__":
    main()
