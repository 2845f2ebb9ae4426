#!/usr/bin/env python3
"""Prints the compatibility matrix from the suite's JSON lines.

    print_matrix.py [MATRIX.jsonl] [--markdown]

Default file: $AV_COMPAT_MATRIX, else build/compat-matrix.jsonl. One row per
(client, mode); when a pair was recorded more than once, a single failure
makes the row fail. Exit status 1 when any row failed or the file is empty.
"""
import json
import os
import sys
from pathlib import Path


def load(path):
    rows = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        key = (r["client"], r["mode"])
        cur = rows.get(key)
        if cur is None:
            rows[key] = dict(r)
            continue
        cur["ok"] = cur["ok"] and r["ok"]
        for side in ("agent", "origin"):
            vals = set(cur[side].split("+")) | set(r[side].split("+"))
            vals.discard("-")
            cur[side] = "+".join(sorted(vals)) or "-"
        if r.get("note") and r["note"] not in cur.get("note", ""):
            cur["note"] = "; ".join(x for x in (cur.get("note"), r["note"]) if x)
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0].lower(), k[1]))]


def main(argv):
    md = "--markdown" in argv
    args = [a for a in argv if a != "--markdown"]
    path = args[0] if args else os.environ.get(
        "AV_COMPAT_MATRIX", str(Path(__file__).resolve().parents[2] / "build" /
                                "compat-matrix.jsonl"))
    if not Path(path).exists():
        print(f"print_matrix: no matrix at {path}")
        return 1
    rows = load(path)
    head = ["client", "mode", "result", "agent side", "origin side", "note"]
    table = [[r["client"], r["mode"], "pass" if r["ok"] else "FAIL", r["agent"], r["origin"],
              r.get("note", "")] for r in rows]
    if md:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for t in table:
            print("| " + " | ".join(t) + " |")
    else:
        w = [max(len(str(x)) for x in col) for col in zip(head, *table)]
        for t in [head] + table:
            print("  ".join(str(x).ljust(n) for x, n in zip(t, w)).rstrip())
    failed = sum(1 for r in rows if not r["ok"])
    if not md:
        print(f"\n{len(rows) - failed} passed, {failed} failed")
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
