"""Summarise a mutmut run (scripts/mutation.sh): mutants per module by outcome, survivors that
are not explained as equivalent in scripts/mutation_equivalent.txt, each with its diff.

    python scripts/mutation_report.py [GLOB ...]   # the globs the run was given
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTCOME = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", None: "not run"}
TIMEOUTS = {24, -24, 36, 152, 255}


def equivalents(path: Path) -> dict[str, str]:
    """{mutant name: why it cannot change a result}; lines `name  # reason`."""
    out = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        name, _, why = line.partition("#")
        if name.strip():
            out[name.strip()] = why.strip()
    return out


def outcomes(globs: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for meta in (ROOT / "mutants").rglob("*.meta"):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in codes.items():
            if not globs or any(fnmatch.fnmatch(name, g) for g in globs):
                found[name] = "timeout" if code in TIMEOUTS else OUTCOME.get(code, "suspicious")
    return found


def diff(name: str) -> str:
    r = subprocess.run(
        [str(Path(sys.executable).parent / "mutmut"), "show", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return "\n".join(x for x in r.stdout.splitlines() if x[:2] in ("- ", "+ "))


def main(globs: list[str]) -> int:
    found = outcomes(globs)
    known = equivalents(ROOT / "scripts/mutation_equivalent.txt")
    by_module: dict[str, Counter] = defaultdict(Counter)
    open_survivors = []
    for name, outcome in sorted(found.items()):
        module = name.split(".x")[0]  # "pkg.mod.x_func__mutmut_3", "pkg.mod.xǁClassǁm__..."
        if outcome == "survived" and name in known:
            outcome = "equivalent"
        elif outcome == "survived":
            open_survivors.append(name)
        by_module[module][outcome] += 1
    cols = ["killed", "equivalent", "survived", "timeout", "no tests", "not run", "suspicious"]
    print("| module | mutants | " + " | ".join(cols) + " | score |")
    print("|---" * (len(cols) + 3) + "|")
    total: Counter = Counter()
    for module, c in sorted(by_module.items()):
        total += c
        tested = c["killed"] + c["survived"] + c["timeout"]
        score = f"{100 * (c['killed'] + c['timeout']) / tested:.0f} %" if tested else "-"
        row = " | ".join(str(c[k]) for k in cols)
        print(f"| {module} | {sum(c.values())} | {row} | {score} |")
    tested = total["killed"] + total["survived"] + total["timeout"]
    score = 100 * (total["killed"] + total["timeout"]) / max(tested, 1)
    row = " | ".join(str(total[k]) for k in cols)
    print(f"| **all** | {sum(total.values())} | {row} | {score:.0f} % |")
    print("\nscore = (killed + timeout) / (killed + survived + timeout); equivalent mutants aside")
    in_scope = {n for n in known if not globs or any(fnmatch.fnmatch(n, g) for g in globs)}
    stale = sorted(in_scope - set(found))
    if stale:
        print(f"\n{len(stale)} entries of mutation_equivalent.txt name no mutant (code changed):")
        print("\n".join(f"  {n}" for n in stale))
    print(f"\n{len(open_survivors)} surviving mutants not explained as equivalent:")
    for name in open_survivors:
        print(f"\n{name}\n{diff(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
