"""The spectrum notebook (``notebooks/spectrum.ipynb``) at a size of your choosing, recorded.

    python -m benchmarks.spectrum_at_scale                 # DEPTH = 5000: n = 100,027 parameters
    python -m benchmarks.spectrum_at_scale --depth 1000

Runs the very cells of the notebook (exact ``λ_min``/``λ_max``, the exact histogram and negative
count, stochastic Lanczos quadrature with matfree for the same time, the figures) with its
``DEPTH`` replaced, and writes the executed notebook to
``results/spectrum_n<n>_<platform>.ipynb`` and its figures' numbers to the ``.json`` beside it.
The dense check is skipped above its ``DENSE_MAX_N``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

import nbclient
import nbformat

from . import common

HERE = pathlib.Path(__file__).parent
NOTEBOOK = HERE.parent / "notebooks" / "spectrum.ipynb"

# Appended to the executed notebook: the numbers its cells computed, as JSON on stdout.
RECORD = """
import json as _json
print(_json.dumps({
    "n": int(n), "depth": DEPTH, "width": WIDTH, "batch": BATCH, "classes": CLASSES,
    "exact": {"lambda_min": lam_min, "lambda_max": lam_max, "negative": n_neg,
              "seconds_extremes_with_compile": t_eig, "seconds_histogram_compiled": t_counts,
              "histogram_edges": [float(e) for e in grid], "histogram": [int(c) for c in hist]},
    "slq": {"probes": len(ritz), "lanczos_steps": LANCZOS_STEPS, "seconds": t_slq,
            "lambda_min": float(ritz.min()), "lambda_max": float(ritz.max()), "negative": float(slq_neg),
            "histogram": [float(c) for c in slq_hist]},
    "seconds_per_hvp": t_hvp, "seconds_per_exact_count": t_count,
}))
"""


def run(depth: int) -> dict:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if c.cell_type == "code" and "DEPTH =" in c.source)
    params.source = re.sub(r"^DEPTH = \d+", f"DEPTH = {depth}", params.source, flags=re.M)
    nb.cells.append(nbformat.v4.new_code_cell(RECORD))
    client = nbclient.NotebookClient(nb, timeout=3600, kernel_name="python3")
    client.execute(cwd=str(NOTEBOOK.parent))
    record = json.loads(nb.cells[-1].outputs[-1]["text"])
    nb.cells.pop()  # the executed notebook as a reader would have run it
    name = f"spectrum_n{record['n']}"
    nbformat.write(nb, common.result_path(name, "ipynb"))
    record["machine"] = common.machine()  # this process's view; the kernel ran on the same host
    print("wrote", common.write_json(record, name), "and the executed notebook beside it")
    return record


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=5000)
    r = run(ap.parse_args().depth)
    e, s = r["exact"], r["slq"]
    print(f"n = {r['n']}: exact λ_min {e['lambda_min']:.6f}, λ_max {e['lambda_max']:.6f}, {e['negative']} negative "
          f"(histogram {e['seconds_histogram_compiled']:.1f} s); SLQ {s['probes']} probes in {s['seconds']:.1f} s: "
          f"λ_min {s['lambda_min']:.6f}, λ_max {s['lambda_max']:.6f}, {s['negative']:.0f} negative")


if __name__ == "__main__":
    main()
