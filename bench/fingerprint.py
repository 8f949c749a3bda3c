"""Behaviour fingerprint: zoo entry ids and ``fashion5`` accuracies from fixed seeds, through the CLI only.

Used to show that a restructuring changed no behaviour: run it on the commit before and after and compare
the JSON. It drives ``python -m edgemvp`` (the CLI is the stable surface), so the same script runs on any
commit. A reduced configuration (a base pre-trained for 0.1 epoch, a 3-task zoo at IFP@30, prunes at J=30
on 100 images per class) so that one run takes minutes on 2 CPU cores, not the default's ~45 min.

    python bench/fingerprint.py --repo . --out /tmp/fp-after.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def _cli(repo: Path, env: dict, *args: str) -> str:
    """Run ``python -m edgemvp ARGS`` with ``repo`` first on the path; return stdout, fail loudly."""
    cmd = [sys.executable, "-m", "edgemvp", *args]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 3):  # 3: over the latency budget, still a finished run
        sys.exit(f"failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-2000:]}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path("."), help="checkout whose edgemvp runs")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    repo = args.repo.resolve()
    work = Path(tempfile.mkdtemp(prefix="fingerprint-"))
    env = dict(os.environ, EDGEMVP_CACHE=str(work / "cache"), PYTHONPATH=str(repo), EDGEMVP_OFFLINE="1",
               HF_HUB_OFFLINE="1")
    _cli(repo, env, "pretrain", "--dataset", "fashion-mnist", "--epochs", "0.1", "--seed", "0")
    _cli(repo, env, "zoo", "build", "--dataset", "fashion-mnist", "--tasks", "3", "--iters", "30",
         "--batch-size", "64", "--seed", "0", "--threads", "2")
    listing = _cli(repo, env, "zoo", "list", "--zoo", str(work / "cache" / "zoos" / "resnet18--fashion-mnist"))
    ids = sorted(set(re.findall(r"\b[0-9a-f]{12,64}\b", listing)))
    result: dict = {"repo_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                                  text=True).stdout.strip(), "entry_ids": ids, "prune": {}}
    zoo = str(work / "cache" / "zoos" / "resnet18--fashion-mnist")
    for method in ("mvp", "random", "ifp", "transfer"):
        out = work / f"run-{method}"
        _cli(repo, env, "prune", "--task", "fashion5", "--device", "jetson", "--zoo", zoo, "--method", method,
             "-j", "30", "--train-per-class", "100", "--seed", "0", "--out", str(out))
        report = json.loads((out / "report.json").read_text())
        result["prune"][method] = {k: report.get(k) for k in ("accuracy", "accuracy_init", "neighbours")
                                   if k in report} or report
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(json.dumps({"entry_ids": ids, **{m: r.get("accuracy") for m, r in result["prune"].items()}}))


if __name__ == "__main__":
    main()
