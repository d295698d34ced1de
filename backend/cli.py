"""The `crs` command line: a thin adapter over the data loaders, the registry and the evaluator."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from backend.cli_annotation import annotate, annotators_app, campaigns_app, export, tasks_app
from backend.cli_arena import DbOpt, arena_app, open_db
from backend.cli_common import (
    DataDirOpt,
    DatasetArg,
    MaxStepsOpt,
    SetOpt,
    SkipExistingOpt,
    console,
    fail,
    load_or_fail,
    model_or_fail,
    parse_overrides,
)
from backend.data import DATASETS, DataFormatError
from backend.settings import get_settings

app = typer.Typer(
    help="CRS Arena: demo, annotate and evaluate conversational recommenders.", no_args_is_help=True
)
data_app = typer.Typer(help="Datasets: inspect what a loader reads.", no_args_is_help=True)
train_app = typer.Typer(
    help="Train models whose checkpoints the registry loads.", no_args_is_help=True
)
llm_app = typer.Typer(help="The LLM runtime.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(llm_app, name="llm")


@data_app.command("info")
def data_info(
    dataset: Annotated[str, typer.Argument(help=f"One of: {', '.join(DATASETS)}.")],
    data_dir: DataDirOpt = None,
) -> None:
    """Print counts: dialogues, turns, items, users, turns with a recommendation."""
    ds = load_or_fail(dataset, data_dir)
    table = Table(title=f"{ds.name}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in ds.stats().items():
        table.add_row(key, f"{value:,}")
    console.print(table)


@data_app.command("generate")
def data_generate(
    source: Annotated[
        str,
        typer.Option(help="Dataset whose ratings and catalog to use (or pass --ratings/--items)."),
    ] = "movielens-100k",
    n: Annotated[int, typer.Option(help="Dialogues to attempt (kept + filtered out).")] = 200,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder (default CRS_HOME/data/llm-redial/<source>); a run there resumes."
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="turn: one utterance per LLM call; whole: the paper's one prompt per dialogue."
        ),
    ] = "turn",
    seed: Annotated[int, typer.Option(help="Seed of users, templates, items and sampling.")] = 0,
    batch_size: Annotated[
        int, typer.Option(help="Dialogues written in one batched LLM call.")
    ] = 16,
    llm: Annotated[str | None, typer.Option(help="LLM (default CRS_LLM).")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint (default CRS_LLM_BASE_URL).")
    ] = None,
    ratings: Annotated[
        Path | None,
        typer.Option(help="CSV of user_id,item_id,rating[,timestamp] instead of the source's."),
    ] = None,
    items: Annotated[
        Path | None, typer.Option(help="CSV of id,title[,year,genres,description] for --ratings.")
    ] = None,
    min_interactions: Annotated[
        int, typer.Option(help="Drop users and items with fewer ratings (App. B: 10).")
    ] = 10,
    data_dir: DataDirOpt = None,
    set_: SetOpt = None,
) -> None:
    """Generate LLM-REDIAL-style dialogues from ratings: preprocess, fill templates, write with an LLM, filter."""
    from backend.generate.pipeline import GenerateConfig, generate
    from backend.generate.profiles import (
        PreprocessConfig,
        build_profiles,
        ratings_from_dataset,
        read_items_csv,
        read_ratings_csv,
    )
    from backend.generate.templates import NotEnoughItems
    from backend.llm import LLMError, get_llm

    try:
        if ratings:
            if items is None:
                fail("--ratings needs --items, the catalog the ratings refer to")
            catalog = read_items_csv(items)
            rows = read_ratings_csv(ratings, catalog)
            source = ratings.stem
        else:
            ds = load_or_fail(source, data_dir)
            catalog, rows = ds.catalog, ratings_from_dataset(ds)
        config = GenerateConfig(
            source=source, n=n, seed=seed, mode=mode, batch_size=batch_size, llm=llm or "",
            base_url=base_url or "", **parse_overrides(set_),
        )  # fmt: skip
        profiles = build_profiles(rows, PreprocessConfig(min_interactions=min_interactions))
        console.print(
            f"{len(profiles):,} users with likes after preprocessing "
            f"({sum(len(p.likes) + len(p.might_likes) for p in profiles.values()):,} likes, "
            f"{sum(len(p.dislikes) for p in profiles.values()):,} dislikes)"
        )
        target = out or get_settings().CRS_HOME / "data" / "llm-redial" / source
        model = get_llm(config.llm or None, base_url=config.base_url or None)
        stats = generate(profiles, catalog, model, config, target)
    except (DataFormatError, NotEnoughItems, LLMError, ValueError, TypeError) as err:
        fail(err)
    table = Table(title=f"generated dialogues in {target} (Table 3 of LLM-REDIAL)")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        if not isinstance(value, dict):
            table.add_row(key, f"{value:,}")
    if "act_check" in stats:
        acts = stats["act_check"]
        table.add_row("carry their act: first draft", f"{acts['first_draft']:.1%}")
        table.add_row("carry their act: after rewrites", f"{acts['final']:.1%}")
    for reason, count in stats["filter_counts"].items():
        table.add_row(f"filtered: {reason}", f"{count:,}")
    for split, count in stats["splits"].items():
        table.add_row(f"split: {split}", f"{count:,}")
    console.print(table)
    console.print(f"load it with `--dataset llm-redial --data-dir {target}`")


def already_trained(model: str, target: Path, marker: str) -> bool:
    """For --skip-existing: True (and say so) when ``target/marker`` exists."""
    if (target / marker).exists():
        console.print(
            f"{model} checkpoint already at {target}; skipping (drop --skip-existing to retrain)"
        )
        return True
    return False


@app.command("models")
def models() -> None:
    """List the registered models and their descriptions."""
    from backend.registry import available_models

    for name, cls in available_models().items():
        console.print(f"[bold]{name}[/bold]: {cls.description}")


@train_app.command("sasrec")
def train_sasrec_cmd(
    dataset: DatasetArg = "movielens-100k",
    data_dir: DataDirOpt = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training sequences.")] = 100,
    max_steps: MaxStepsOpt = 0,
    out: Annotated[
        Path | None,
        typer.Option(help="Checkpoint folder (default CRS_HOME/checkpoints/sasrec/<dataset>)."),
    ] = None,
    skip_existing: SkipExistingOpt = False,
    set_: SetOpt = None,
) -> None:
    """Train SASRec on user histories or dialogue item sequences; saves weights, config and metrics."""
    from backend.models.sasrec import SASRecConfig, default_checkpoint, train_sasrec

    if skip_existing and already_trained("sasrec", out or default_checkpoint(dataset), "model.pt"):
        return
    ds = load_or_fail(dataset, data_dir)
    config = SASRecConfig(epochs=epochs, max_steps=max_steps, **parse_overrides(set_))
    path = train_sasrec(ds, config, out)
    metrics = json.loads((path / "metrics.json").read_text())
    last = metrics["train_loss"][-1] if metrics["train_loss"] else {}
    console.print(
        f"saved to {path}: {metrics['steps']} steps in {metrics['seconds']:.1f} s, final loss {last.get('loss', float('nan')):.3f}"
    )
    console.print_json(json.dumps({"valid": metrics["valid"]}))


@train_app.command("latentcrs")
def train_latentcrs_cmd(
    skip_existing: SkipExistingOpt = False,
    set_: SetOpt = None,
) -> None:
    """Train LatentCRS by variational EM on MovieLens-100K's held-out view (the SASRec it reads
    first, when missing); resumes after the last finished epoch."""
    from backend.models.latentcrs.config import LatentCRSConfig
    from backend.models.latentcrs.em import train_latentcrs
    from backend.models.sasrec import SASRecConfig, default_checkpoint, train_sasrec

    try:
        config = LatentCRSConfig(**parse_overrides(set_))
    except (TypeError, ValueError) as err:
        fail(err)
    if skip_existing and already_trained("latentcrs", config.checkpoint_dir(), "model.pt"):
        return
    ds = load_or_fail(config.trained_on, None)
    if not (default_checkpoint(ds.name) / "model.pt").exists():
        console.print(f"training the SASRec it reads first, on {ds.name}")
        train_sasrec(ds, SASRecConfig())
    path = train_latentcrs(ds, config)
    best = json.loads((path / "metrics.json").read_text())["valid_best"]
    console.print(f"saved to {path}; best valid epoch:")
    console.print_json(json.dumps(best))


@train_app.command("retrieval-pop")
def train_retrieval_pop_cmd(
    dataset: DatasetArg = "redial",
    data_dir: DataDirOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder (default CRS_HOME/checkpoints/retrieval-pop/<dataset>)."),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Tune retrieval-pop's popularity weight on the dev split (best mean R@1/10/50)."""
    from backend.models.retrieval import RetrievalPopConfig, tune_popularity_weight

    ds = load_or_fail(dataset, data_dir)
    try:
        path = tune_popularity_weight(ds, RetrievalPopConfig(**parse_overrides(set_)), out_dir=out)
    except (TypeError, ValueError, KeyError) as err:  # a bad --set, or no dev split
        fail(err)
    metrics = json.loads((path / "metrics.json").read_text())
    best = metrics["by_weight"][str(metrics["best_weight"])]
    console.print(
        f"saved to {path}: popularity weight {metrics['best_weight']:g} on {metrics['turns']} "
        f"{metrics['tuned_on']} turns, R@1/10/50 {best['recall@1']:.4f} / {best['recall@10']:.4f} "
        f"/ {best['recall@50']:.4f} (weight 0: {metrics['by_weight']['0.0']['mean']:.4f} mean)"
    )


@train_app.command("llmcrs")
def train_llmcrs_cmd(
    dataset: DatasetArg = "llm-redial",
    data_dir: DataDirOpt = None,
    stage: Annotated[
        str,
        typer.Option(
            help="detection: the supervised warm start of sub-task detection; rlpf: REINFORCE "
            "from CRS performance feedback (§4), from the warm start's adapter when there is one."
        ),
    ] = "detection",
    max_steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Labelled turns per step (detection).")] = 4,
    lr: Annotated[
        float, typer.Option(help="Learning rate (default: 2e-4 detection, 5e-5 rlpf as §5).")
    ] = 0.0,
    lam: Annotated[float, typer.Option(help="λ of the RLPF reward λ·HIT + (1 − λ)·BLEU.")] = 0.5,
    eval_every: Annotated[int, typer.Option(help="Steps between dev evaluations.")] = 50,
    out: Annotated[
        Path | None,
        typer.Option(help="Adapter folder (default CRS_HOME/checkpoints/llmcrs/<dataset>[-rlpf])."),
    ] = None,
    skip_existing: SkipExistingOpt = False,
    set_: SetOpt = None,
) -> None:
    """Train LLMCRS's LLM (LoRA): the detection warm start, or RLPF; resumable."""
    from backend.models.llmcrs.config import LLMCRSConfig, default_adapter
    from backend.models.llmcrs.rlpf import RLPFSettings, train_rlpf
    from backend.models.llmcrs.trainer import TrainSettings, train_llmcrs

    if stage not in ("detection", "rlpf"):
        fail(f"--stage must be detection or rlpf, got {stage!r}")
    suffix = "-rlpf" if stage == "rlpf" else ""
    target = out or default_adapter(dataset + suffix)
    if skip_existing and already_trained("llmcrs", target, "adapter_config.json"):
        return
    try:
        overrides = parse_overrides(set_)
        config = LLMCRSConfig(**overrides)
    except (TypeError, ValueError) as err:
        fail(err)
    ds = load_or_fail(dataset, data_dir)
    try:
        if stage == "detection":
            settings = TrainSettings(
                steps=max_steps, batch_size=batch_size, lr=lr or 2e-4, eval_every=eval_every
            )
            path = train_llmcrs(ds, config, settings, target)
        else:
            from backend.models.llmcrs.model import LLMCRS

            manager = LLMCRS(ds, config)
            rl = RLPFSettings(steps=max_steps, lr=lr or 5e-5, lam=lam, eval_every=eval_every)
            path = train_rlpf(ds, manager, rl, target)
    except ValueError as err:  # no labelled turns
        fail(err)
    metrics = json.loads((path / "metrics.json").read_text())
    if stage == "detection":
        console.print(
            f"saved to {path}: dev detection accuracy {metrics['best_dev_accuracy']:.3f} at step "
            f"{metrics['best_step']} (majority class {metrics['dev_majority_baseline']:.3f})"
        )
    else:
        dev = metrics["dev"]
        console.print(
            f"saved to {path}: dev expected reward {dev[0]['expected_reward']:.4f} -> "
            f"{dev[-1]['expected_reward']:.4f}; reward curve {path / 'reward_curve.html'}"
        )


@train_app.command("llm-rec")
def train_llm_rec_cmd(
    dataset: DatasetArg = "redial",
    data_dir: DataDirOpt = None,
    history: Annotated[
        bool, typer.Option(help="Prompts list the user's history items (Dial. + H. I.).")
    ] = False,
    epochs: Annotated[int, typer.Option(help="Passes over the training turns.")] = 1,
    max_steps: MaxStepsOpt = 0,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 2,
    lr: Annotated[float, typer.Option(help="AdamW learning rate of the LoRA weights.")] = 5e-4,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Adapter folder (default CRS_HOME/checkpoints/llm-rec/<dataset>[-history])."
        ),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """LoRA-fine-tune the LLM recommender (LLM-REDIAL §4.2) on the train split's recommender turns."""
    from backend.models.llm_rec import LLMRecConfig, train_llm_rec

    ds = load_or_fail(dataset, data_dir)
    try:
        config = LLMRecConfig(
            setting="fine-tuned",
            history=history,
            epochs=epochs,
            max_steps=max_steps,
            grad_accum=grad_accum,
            lr=lr,
            **parse_overrides(set_),
        )
        path = train_llm_rec(ds, config, out)
    except (TypeError, ValueError) as err:  # a bad --set key or value, or no training turns
        fail(err)
    metrics = json.loads((path / "metrics.json").read_text())
    console.print(
        f"saved to {path}: {metrics['steps']} steps in {metrics['seconds']:.1f} s "
        f"({metrics['seconds_per_step']:.2f} s/step), dev loss {metrics['dev_loss']['before']:.3f} "
        f"-> {metrics['dev_loss']['after']:.3f}"
    )


@train_app.command("pecrs")
def train_pecrs_cmd(
    dataset: DatasetArg = "redial",
    data_dir: DataDirOpt = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training turns (paper: 10).")] = 10,
    max_steps: MaxStepsOpt = 0,
    batch_size: Annotated[
        int, typer.Option(help="Turns per micro-batch (4 x 2 = the paper's 8, under 4 GB on CPU).")
    ] = 4,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 2,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (paper: 3e-5).")] = 3e-5,
    eval_every: Annotated[
        int, typer.Option(help="Steps between dev evaluations (0 = once per epoch).")
    ] = 0,
    out: Annotated[
        Path | None,
        typer.Option(help="Checkpoint folder (default CRS_HOME/checkpoints/pecrs/<dataset>)."),
    ] = None,
    skip_existing: SkipExistingOpt = False,
    set_: SetOpt = None,
) -> None:
    """Train PECRS (LoRA + heads, recall + rerank + generation losses); keeps the best dev checkpoint."""
    from backend.models.pecrs import PECRSConfig, checkpoint_dir, train_pecrs

    try:
        config = PECRSConfig(
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            grad_accum=grad_accum,
            lr=lr,
            eval_every=eval_every,
            **parse_overrides(set_),
        )
    except (TypeError, ValueError) as err:  # a bad --set key or value
        fail(err)
    if skip_existing and already_trained(
        "pecrs", out or checkpoint_dir(config, dataset), "heads.pt"
    ):
        return
    ds = load_or_fail(dataset, data_dir)
    try:
        path = train_pecrs(ds, config, out)
    except ValueError as err:  # no training turns
        fail(err)
    metrics = json.loads((path / "metrics.json").read_text())
    console.print(
        f"saved to {path}: {metrics['steps']} steps in {metrics['seconds']:.1f} s "
        f"({metrics['seconds_per_step']:.2f} s/step, {metrics['seconds_per_epoch']:.0f} s/epoch), "
        f"{100 * metrics['trainable_fraction']:.1f}% of parameters trained, best dev mean "
        f"R@1/10/50 {metrics['best_dev']:.4f} at step {metrics['best_step']}"
    )


@app.command("simulate")
def simulate_cmd(
    models: Annotated[str, typer.Argument(help="Registered model names, comma-separated.")],
    dataset: DatasetArg = "movielens-100k",
    data_dir: DataDirOpt = None,
    n: Annotated[int, typer.Option(help="Simulated users (each wants one held-out movie).")] = 100,
    max_turns: Annotated[int, typer.Option(help="System turns before the user gives up.")] = 5,
    items_per_turn: Annotated[int, typer.Option(help="Items of a reply the user looks at.")] = 5,
    simulator: Annotated[
        str, typer.Option(help="llm (the local LLM, or CRS_LLM_BASE_URL) or template.")
    ] = "llm",
    seed: Annotated[int, typer.Option(help="Chooses the users and seeds the simulator.")] = 0,
    act_check: Annotated[
        bool,
        typer.Option(help="Rewrite LLM lines that miss their act (the act check of backend.acts)."),
    ] = True,
    battles: Annotated[
        bool,
        typer.Option(
            help="Also pit every pair of MODELS against the same simulated users and "
            "store the verdicts as arena votes of source 'simulated' (shown on the leaderboard)."
        ),
    ] = False,
    db_url: DbOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the figures (JSON) here.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Model config override KEY=VALUE for every model, or MODEL.KEY=VALUE for one "
            "(repeatable).",
        ),
    ] = None,
) -> None:
    """Let a simulated user talk to each MODEL: success within 1/3/5 turns (S@k) and average turns
    (AT). Transcripts go to CRS_HOME/runs/simulate; a stopped run continues with the same command."""
    from itertools import combinations

    from backend.eval.simulate import simulate, simulated_battles
    from backend.simulator import LLMSimulator, SimulatorConfig, TemplateSimulator

    if simulator not in ("llm", "template"):
        fail(f"--simulator must be llm or template, got {simulator!r}")
    ds = load_or_fail(dataset, data_dir)
    if not ds.histories:
        fail(f"{dataset} has no user histories to draw simulated users from; try movielens-100k")
    config = SimulatorConfig(max_turns=max_turns, items_per_turn=items_per_turn, seed=seed)

    def make_simulator():
        if simulator == "llm":
            from backend.acts import get_act_check
            from backend.llm import get_llm

            return LLMSimulator(get_llm(), config, get_act_check().carries if act_check else None)
        return TemplateSimulator(config)

    names = [m.strip() for m in models.split(",") if m.strip()]
    overrides = parse_overrides(set_)
    shared = {k: v for k, v in overrides.items() if "." not in k}
    unknown = {k.split(".", 1)[0] for k in overrides if "." in k} - set(names)
    if unknown:
        fail(f"--set names a model that is not simulated: {', '.join(sorted(unknown))}")

    def settings_of(name: str) -> dict:
        """The shared overrides and those scoped to ``name`` (MODEL.KEY=VALUE)."""
        scoped = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith(f"{name}.")}
        return {**shared, **scoped}

    crs = {name: model_or_fail(name, ds, settings_of(name)) for name in names}
    results: list[dict] = []
    kind = simulator if simulator == "template" or act_check else f"{simulator}-no-act-check"
    for name, model in crs.items():
        # Each set of overrides keeps its own transcripts, so variants of one model resume apart.
        tag = hashlib.sha1(json.dumps(settings_of(name), sort_keys=True).encode()).hexdigest()[:8]
        tag = f"-{tag}" if settings_of(name) else ""
        path = get_settings().CRS_HOME / "runs" / "simulate" / f"{name}{tag}-{ds.name}-{kind}.jsonl"
        figures = simulate(model, ds, make_simulator(), config, n, path)
        results.append({**figures, "transcripts": str(path)})
    if battles:
        engine = open_db(db_url)
        for a, b in combinations(names, 2):
            counts = simulated_battles(engine, crs[a], crs[b], ds, make_simulator, config, n)
            results.append({"battle": [a, b], "votes": counts})
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"wrote {out}")
    console.print_json(json.dumps(results))


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="A registered model name (see `crs models`).")],
    dataset: DatasetArg = "redial",
    data_dir: DataDirOpt = None,
    split: Annotated[str, typer.Option(help="Split to evaluate on.")] = "test",
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N dialogues.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the metrics JSON here.")] = None,
    predictions: Annotated[
        Path | None, typer.Option(help="Write per-turn predictions (JSONL) here.")
    ] = None,
    history: Annotated[bool, typer.Option(help="Give the model the user's history.")] = False,
    batch_size: Annotated[int, typer.Option(help="Turns per model call.")] = 32,
    rec_turns_only: Annotated[
        bool, typer.Option(help="Only system turns whose gold mentions items (LLM-REDIAL §4.2).")
    ] = False,
    ks: Annotated[
        str | None,
        typer.Option(help="Comma-separated K of Recall@K and NDCG@K/MRR@K, e.g. 5,10,50."),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Run MODEL over every recommender turn of a split and report ranking and text metrics."""
    from backend.eval.evaluate import evaluate

    ranks = {}
    if ks:
        try:
            values = [int(k) for k in ks.split(",")]
        except ValueError:
            fail(f"--ks expects comma-separated integers like 5,10,50, got {ks!r}")
        ranks = {"recall_ks": values, "rank_ks": values}
    ds = load_or_fail(dataset, data_dir)
    crs = model_or_fail(model, ds, parse_overrides(set_))
    # A model configured to read histories (llm-rec's history=true) gets them without --history too.
    history = history or getattr(crs.config, "history", False) is True
    # A stopped evaluation continues from here when the same command runs again.
    journal = get_settings().CRS_HOME / "runs" / "eval" / f"{model}-{ds.name}-{split}.jsonl"
    try:
        result = evaluate(
            crs,
            ds,
            split,
            limit=limit,
            batch_size=batch_size,
            use_history=history,
            rec_turns_only=rec_turns_only,
            journal=journal,
            **ranks,
        )
    except KeyError as err:
        fail(err.args[0])
    if out:
        result.save(out)
        console.print(f"wrote {out}")
    if predictions:
        result.write_predictions(predictions)
    console.print_json(json.dumps(result.to_json()))


@app.command("chat")
def chat(
    model: Annotated[str, typer.Argument(help="A registered model name (see `crs models`).")],
    dataset: DatasetArg = "movielens-100k",
    data_dir: DataDirOpt = None,
    user: Annotated[
        str | None, typer.Option(help="A user id whose history the model may use.")
    ] = None,
    top: Annotated[int, typer.Option(help="How many items to print per reply.")] = 5,
    set_: SetOpt = None,
) -> None:
    """Chat with a model in the terminal (empty line or Ctrl-D quits)."""
    from backend.mentions import link_user_turn
    from backend.types import Dialogue, Reply, Turn

    ds = load_or_fail(dataset, data_dir)
    crs = model_or_fail(model, ds, parse_overrides(set_))
    history = ds.histories.get(user) if user else None
    if user and history is None:
        console.print(
            f"[yellow]user {user!r} has no history in {ds.name}; chatting without one[/yellow]"
        )
    dialogue = Dialogue(id="terminal", user_id=user)
    console.print(
        f"[bold]{crs.name}[/bold] on {ds.name} ({len(ds.catalog):,} items). Empty line quits."
    )
    while True:
        try:
            text = console.input("[bold green]you>[/bold green] ").strip()
        except EOFError:
            break
        if not text:
            break
        dialogue.turns.append(link_user_turn(Turn(role="user", text=text), crs.catalog))
        console.print(f"[bold blue]{crs.name}>[/bold blue] ", end="")
        reply: Reply | None = None
        for part in crs.stream(dialogue, history):
            if isinstance(part, Reply):
                reply = part
            else:
                console.print(part, end="", markup=False, highlight=False)
        console.print()
        assert reply is not None
        for rank, item in enumerate(reply.items[:top], start=1):
            console.print(f"  {rank}. {item.title}  [dim]{item.score:.3f}[/dim]")
        dialogue.turns.append(Turn(role="system", text=reply.text, items=reply.item_ids[:1]))


@app.command("serve")
def serve(
    config: Annotated[
        Path, typer.Option("--config", help="Server YAML (see backend/configs/default.yaml).")
    ] = Path("backend/configs/default.yaml"),
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 to expose).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    device: Annotated[
        str | None, typer.Option(help="auto|cuda|cpu; overrides the file's `device`.")
    ] = None,
) -> None:
    """Serve the configured models over HTTP with streaming (the demo's backend)."""
    from backend.server import run_server

    try:
        run_server(config, host=host, port=port, device=device)
    except (FileNotFoundError, ValueError) as err:  # bad config file or dataset
        fail(err)


@app.command("demo")
def demo(
    backend: Annotated[
        str | None, typer.Option(help="URL of a running `crs serve`; default: start one here.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Backend YAML when starting one here.")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 to expose).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the web page.")] = 7860,
    db_url: Annotated[
        str | None,
        typer.Option(help="Database for votes (default CRS_DB_URL or SQLite in CRS_HOME)."),
    ] = None,
) -> None:
    """Start the Gradio demo: Chat, Arena (side by side, blind or named, votes) and Leaderboard."""
    from app.main import launch

    try:
        launch(backend_url=backend, config_path=config, host=host, port=port, db_url=db_url)
    except (FileNotFoundError, ValueError) as err:
        fail(err)


@llm_app.command("serve")
def llm_serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (use --host to expose).")] = 8001,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    model: Annotated[str | None, typer.Option(help="Model spec (default CRS_LLM).")] = None,
) -> None:
    """Serve the local LLM behind an OpenAI-compatible API (chat, completions, embeddings)."""
    import uvicorn

    from backend.llm import get_llm
    from backend.openai_server import create_app

    llm = get_llm(model)
    uvicorn.run(create_app(llm, llm.name), host=host, port=port)


# Human evaluation (backend/cli_annotation.py), listed after the model commands.
app.add_typer(campaigns_app, name="campaigns")
app.add_typer(tasks_app, name="tasks")
app.add_typer(annotators_app, name="annotators")
app.add_typer(arena_app, name="arena")
app.command("annotate")(annotate)
app.command("export")(export)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    app()


if __name__ == "__main__":
    main()
