"""``pcmjax results``: the summary table of a study's output folder."""

from __future__ import annotations

from pcmjax.montecarlo import load_results


def run(args) -> int:
    """Print the table of a finished or interrupted study in ``args.folder``."""
    res = load_results(args.folder, partial=True)
    if res.meta.get("partial"):
        print(f"interrupted run: {res.meta['partial']} instances finished (run the study again to complete it)\n")
    print(res.table(args.metric))
    return 0
