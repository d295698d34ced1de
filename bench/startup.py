"""How long `crs demo` takes to serve its page, cold (empty CRS_HOME) and warm (second start).

    .venv/bin/python -m bench.startup                 # cold then warm, default config
    .venv/bin/python -m bench.startup --runs warm     # warm only (uses the bench's CRS_HOME)

Each run starts ``crs demo`` as a user would, on a free port, and records: seconds until the
page answers HTTP 200 with the app in it; seconds until each model is ready (read from the
in-process backend the demo logs); and the peak resident memory of the demo process and of any
background training child (sampled every 0.5 s). The cold run uses a fresh CRS_HOME, so every
cache (item embeddings, converted GGUF, SASRec checkpoint) is built; the warm run reuses it.
Figures go to stdout and to ``--out`` (default CRS_HOME/bench/startup.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
BACKEND_LINE = re.compile(r"backend serving .* at (http://\S+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss(proc: psutil.Process, peaks: dict[str, float]) -> None:
    """Update ``peaks`` (GB) with the demo process and each child command line's RSS."""
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            name = "demo" if p.pid == proc.pid else " ".join(p.cmdline()[2:5]) or p.name()
            rss = p.memory_info().rss / 2**30
        except psutil.Error:
            continue
        peaks[name] = max(peaks.get(name, 0.0), rss)


def run_once(home: Path, timeout: float) -> dict[str, Any]:
    """Start `crs demo`, wait for the page and for every model; stop it; return the figures."""
    port = free_port()
    env = {**os.environ, "CRS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    log_path = home / "bench-startup.log"
    home.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        demo = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "crs"), "demo", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proc = psutil.Process(demo.pid)
    figures: dict[str, Any] = {"models_ready_s": {}}
    peaks: dict[str, float] = {}
    backend = None
    try:
        while time.perf_counter() - start < timeout:
            peak_rss(proc, peaks)
            if demo.poll() is not None:
                raise RuntimeError(f"crs demo exited with {demo.returncode}; see {log_path}")
            if "page_s" not in figures:
                try:
                    page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                    if page.status_code == 200 and "CRS Arena" in page.text:
                        figures["page_s"] = round(time.perf_counter() - start, 1)
                        print(f"  page up after {figures['page_s']} s", flush=True)
                except httpx.HTTPError:
                    pass
            if backend is None and (found := BACKEND_LINE.search(log_path.read_text())):
                backend = found.group(1)
            if backend is not None:
                models = httpx.get(f"{backend}/models", timeout=5).json()
                for m in models:
                    if (
                        m["status"] in ("ready", "error")
                        and m["name"] not in figures["models_ready_s"]
                    ):
                        seconds = round(time.perf_counter() - start, 1)
                        figures["models_ready_s"][m["name"]] = (
                            seconds if m["status"] == "ready" else f"error: {m['error']}"
                        )
                        print(f"  {m['name']} {m['status']} after {seconds} s", flush=True)
                if "page_s" in figures and len(figures["models_ready_s"]) == len(models):
                    break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"not everything was ready within {timeout:.0f} s; see {log_path}")
    finally:
        demo.terminate()
        try:
            demo.wait(20)
        except subprocess.TimeoutExpired:
            demo.kill()
    figures["peak_rss_gb"] = {k: round(v, 2) for k, v in peaks.items()}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", choices=["cold,warm", "cold", "warm"], default="cold,warm")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    home = Path(tempfile.gettempdir()) / "crs-bench-startup-home"
    results: dict[str, Any] = {"cores": os.cpu_count(), "python": sys.version.split()[0]}
    for run in args.runs.split(","):
        if run == "cold":
            shutil.rmtree(home, ignore_errors=True)
        print(f"{run} start (CRS_HOME={home})", flush=True)
        results[run] = run_once(home, args.timeout)
    out = args.out or Path(os.environ.get("CRS_HOME", Path.home() / ".cache" / "crs-arena"))
    out = out if out.suffix == ".json" else out / "bench" / "startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    for run in ("cold", "warm"):
        if run in results:
            r = results[run]
            slowest = max(
                (v for v in r["models_ready_s"].values() if isinstance(v, float)), default=0
            )
            print(
                f"| {run} start | page {r['page_s']} s | every model ready {slowest} s | "
                f"peak memory {max(r['peak_rss_gb'].values()):.2f} GB per process |"
            )


if __name__ == "__main__":
    main()
