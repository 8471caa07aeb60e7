"""Time-bounded fuzzing of image loading + preprocessing (the harness of tests/test_fuzz.py, run longer).

    PYTHONPATH=src .venv/bin/python bench/fuzz.py --seconds 120

A worker process loops over random mutated inputs (tests/corpus/fuzzing.py) and checks the property: a
finite (3, 32, 32) tensor or BadImageError, the same from a file and from BytesIO, within --time-bound
seconds. The parent watches it, so a crash of the interpreter (segfault, OOM kill) or a hang in C code is
caught too and the worker restarted. Each distinct failure is minimised and saved under --out as a
reproducer, to become a corpus case (tests/corpus/build.py). Prints inputs tried, findings, elapsed time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))


def _reproducer(data: bytes, limit: int = 400) -> str:
    text = repr(data)
    return text if len(text) <= limit else text[:limit] + f"... ({len(data)} bytes)"


def worker(args: argparse.Namespace) -> int:
    """Run inputs until the deadline; print a JSON line per progress tick and per finding."""
    import torch

    from corpus.fuzzing import build_checker, random_plan

    torch.set_num_threads(1)  # the machine is shared
    warnings.simplefilter("ignore")  # Pillow warns about every corrupt EXIF block; findings are what matter
    if args.mem_limit_gb > 0:  # turn runaway allocations into MemoryError instead of an OOM kill
        lim = int(args.mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    out = Path(args.out)
    check = build_checker(out / "scratch", time_bound=args.time_bound, max_pixels=args.max_pixels)
    rng = random.Random(args.seed)
    current = out / "current.bin"
    tried = ok = bad = 0
    seen: set[str] = set()
    notes: Counter = Counter()  # exception types open_image's last-resort handler turned into BadImageError
    last_tick = time.monotonic()
    while time.time() < args.until:
        plan = random_plan(rng)
        data = plan.render()
        if args.keep_current:  # for the parent, should this input kill or hang the process
            current.write_bytes(data)
            (out / "current.json").write_text(json.dumps({"plan": repr(plan), "ext": plan.ext}))
        res = check(data, plan.ext)
        tried += 1
        for note in res.notes:
            kind = note.split("(", 1)[-1].split(":", 1)[0]
            if kind not in notes:
                (out / f"note-{kind}{plan.ext}").write_bytes(data)
            notes[kind] += 1
        if res.outcome == "ok":
            ok += 1
        elif res.outcome == "bad":
            bad += 1
        else:
            sig = res.finding.signature
            if sig not in seen:
                seen.add(sig)
                small = _minimise(check, data, plan.ext, sig, args.minimise_s)
                name = f"finding-{len(seen):03d}{plan.ext}"
                (out / name).write_bytes(small)
                print(
                    json.dumps(
                        {
                            "finding": str(res.finding),
                            "signature": sig,
                            "file": str(out / name),
                            "plan": repr(plan),
                            "size": len(data),
                            "min_size": len(small),
                            "reproducer": _reproducer(small),
                        }
                    ),
                    flush=True,
                )
        if time.monotonic() - last_tick > 0.5:
            last_tick = time.monotonic()
            print(json.dumps({"tried": tried, "ok": ok, "bad": bad}), flush=True)
    print(
        json.dumps(
            {
                "tried": tried,
                "ok": ok,
                "bad": bad,
                "notes": dict(notes),
                "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            }
        ),
        flush=True,
    )
    return 0


def _minimise(check, data: bytes, ext: str, signature: str, budget_s: float) -> bytes:
    from corpus.fuzzing import minimize

    def same(cand: bytes) -> bool:
        r = check(cand, ext)
        return r.finding is not None and r.finding.signature == signature

    return minimize(data, same, budget_s=budget_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0, help="total wall time (default 120)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    p.add_argument("--time-bound", type=float, default=5.0, help="seconds one input may take (default 5)")
    p.add_argument(
        "--hang-bound",
        type=float,
        default=30.0,
        help="seconds without progress before the parent kills the worker (default 30)",
    )
    p.add_argument("--max-pixels", type=int, default=1 << 22, help="open_image pixel limit while fuzzing")
    p.add_argument("--mem-limit-gb", type=float, default=8.0, help="worker address-space limit, 0 = none")
    p.add_argument("--minimise-s", type=float, default=20.0, help="seconds to spend minimising each finding")
    p.add_argument("--out", default=None, help="folder for findings (default: a new temporary folder)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--until", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--keep-current", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    out = Path(args.out or tempfile.mkdtemp(prefix="synapse7-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    seed = args.seed if args.seed is not None else int(time.time())
    start = time.monotonic()
    until = time.time() + args.seconds
    totals = {"tried": 0, "ok": 0, "bad": 0}
    notes: Counter = Counter()
    findings: list[dict] = []
    restarts, maxrss = 0, 0
    print(f"fuzzing for {args.seconds:g} s, seed {seed}, findings -> {out}", flush=True)
    while time.time() < until - 1:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--keep-current",
            "--out",
            str(out),
            "--until",
            str(until),
            "--seed",
            str(seed + restarts),
            "--time-bound",
            str(args.time_bound),
            "--max-pixels",
            str(args.max_pixels),
            "--mem-limit-gb",
            str(args.mem_limit_gb),
            "--minimise-s",
            str(args.minimise_s),
        ]
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
        )
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        last = {"tried": 0, "ok": 0, "bad": 0}
        last_seen = time.monotonic()
        hung = False
        while True:
            if not sel.select(timeout=1.0):
                if time.monotonic() - last_seen > args.hang_bound + args.minimise_s:
                    hung = True
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                break
            last_seen = time.monotonic()
            msg = json.loads(line)
            if "finding" in msg:
                findings.append(msg)
                print(
                    f"FINDING: {msg['finding']}\n  plan: {msg['plan']}\n  minimal ({msg['min_size']} of "
                    f"{msg['size']} bytes) saved to {msg['file']}:\n  {msg['reproducer']}",
                    flush=True,
                )
            else:
                last = msg
                maxrss = max(maxrss, msg.get("maxrss_mb", 0))
        for k in totals:
            totals[k] += last.get(k, 0)
        notes.update(last.get("notes", {}))
        if hung or proc.returncode != 0:
            what = "hang (no progress)" if hung else f"worker died with code {proc.returncode}"
            data = (out / "current.bin").read_bytes() if (out / "current.bin").exists() else b""
            name = out / f"finding-crash-{restarts:03d}.bin"
            name.write_bytes(data)
            info = (out / "current.json").read_text() if (out / "current.json").exists() else "{}"
            findings.append({"finding": what, "file": str(name), "plan": info})
            print(f"FINDING: {what}; input saved to {name}\n  {info}\n  {_reproducer(data)}", flush=True)
            totals["tried"] += 1
        restarts += 1
        if not hung and proc.returncode == 0:
            break
    elapsed = time.monotonic() - start
    print(
        json.dumps(
            {
                "seconds": round(elapsed, 1),
                "inputs_tried": totals["tried"],
                "decoded_ok": totals["ok"],
                "rejected_bad": totals["bad"],
                "findings": len(findings),
                "worker_restarts": restarts - 1,
                "worker_maxrss_mb": maxrss,
                "handled_decoder_exceptions": dict(notes),
                "inputs_per_s": round(totals["tried"] / max(elapsed, 1e-9), 1),
                "seed": seed,
                "out": str(out),
            }
        )
    )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
