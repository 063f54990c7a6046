"""Markdown tables from the JSON records in ``benchmarks/results/`` (for docs and the README).

python -m benchmarks.report results/core_cpu.json [results/full_cpu.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _ms(x):
    if x is None:
        return "–"
    return f"{x * 1e3:.3g}" if x < 1 else f"{x * 1e3:,.0f}"


def machine_line(m):
    pinned = "" if m.get("cpus_usable") in (None, m["nproc"]) else f", pinned to {m['cpus_usable']}"
    return (
        f"{m['platform']} ({m['device']}), {m['cpu']}, {m['nproc']} cores"
        f"{pinned}, "
        f"jax {m['jax']}, {m['date_utc']}, load average at start {', '.join(f'{v:.1f}' for v in m['loadavg_at_start'] or [])}"
    )


def core_tables(rec):
    out = [f"Machine: {machine_line(rec['machine'])}.", ""]
    out.append(
        "| L | n | hvp ms | ihvp ms | ihvp/hvp | factorize ms | F.solve ms | solve/hvp | dense ms (solve alone) | CG ms (its, relres) | relres ihvp | ihvp compile s |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rec["rows"]:
        cg = r["cg"]
        dense = f"{_ms(r['dense']['time_s'])} ({_ms(r['dense_solve']['time_s'])})" if "dense" in r else "–"
        out.append(
            f"| {r['L']} | {r['n']} | {_ms(r['hvp']['time_s'])} | {_ms(r['ihvp']['time_s'])} | "
            f"{r['ihvp']['time_s'] / r['hvp']['time_s']:.1f} | {_ms(r['factorize']['time_s'])} | {_ms(r['solve']['time_s'])} | "
            f"{r['solve']['time_s'] / r['hvp']['time_s']:.2f} | {dense} | {_ms(cg['time_s'])} ({cg['iterations']}"
            f"{'' if cg['converged'] else ', not converged'}, {float(cg['relres']):.1e}) | {float(r['ihvp']['relres']):.1e} | "
            f"{r['ihvp']['compile_s']:.2f} |"
        )
    out += ["", "| target | value | target | met |", "|---|---|---|---|"]
    for k, t in rec["summary"]["targets"].items():
        out.append(f"| {k} | {t['value']:.3g} | {t['target']} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(out)


def main(argv=None):
    for p in argv if argv is not None else sys.argv[1:]:
        rec = json.loads(Path(p).read_text())
        print(f"### {p}\n")
        if "rows" in rec:
            print(core_tables(rec))
        else:
            print(f"Machine: {machine_line(rec['machine'])}.\n")
            print("```json\n" + json.dumps(rec["summary"], indent=1) + "\n```")
        print()


if __name__ == "__main__":
    main()
