"""The startup hook's cost at interpreter start: measured, printed, and held under 10 ms.

Each run is a fresh interpreter started without ``site`` (``-S``) that then processes site-packages itself
(``site.main()``), timed in-process: once with every ``.pth`` file, once skipping ``nnunet_ext_autoload.pth``.
The hook's cost is the median of the differences of interleaved pairs of runs (process start-up noise stays
outside the timed span; load on the machine shifts both runs of a pair alike). The time of the hook alone
(``exec`` of the ``.pth`` line after everything else) is printed beside it. Run
``pytest -s tests/test_startup_hook.py`` to see the numbers.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap

from nnunet_ext.install_hook import PTH_LINE, PTH_NAME

RUNS = 21
BUDGET_MS = 10.0

_SITE_TIMING = textwrap.dedent(
    """
    import time
    start = time.perf_counter()
    import site
    if {skip_hook}:
        addpackage = site.addpackage
        site.addpackage = lambda d, name, known: known if name == {pth_name!r} else addpackage(d, name, known)
    site.main()
    site_ms = (time.perf_counter() - start) * 1000
    if {skip_hook}:
        start = time.perf_counter()
        exec({pth_line!r})
        print(site_ms, (time.perf_counter() - start) * 1000)
    else:
        import sys
        assert any(type(f).__name__ == "_FindObjectsPatcher" for f in sys.meta_path)
        print(site_ms, 0.0)
    """
)


def _site_ms(skip_hook: bool) -> tuple[float, float]:
    """(ms to process site-packages, ms of the hook line run on its own) in a fresh interpreter."""
    code = _SITE_TIMING.format(skip_hook=skip_hook, pth_name=PTH_NAME, pth_line=PTH_LINE)
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    site_ms, hook_ms = (float(value) for value in result.stdout.split())
    return site_ms, hook_ms


def test_startup_hook_costs_under_10_ms():
    with_hook, without_hook, hook_alone = [], [], []
    for _ in range(RUNS):
        with_hook.append(_site_ms(skip_hook=False)[0])
        site_ms, hook_ms = _site_ms(skip_hook=True)
        without_hook.append(site_ms)
        hook_alone.append(hook_ms)
    difference = statistics.median(a - b for a, b in zip(with_hook, without_hook))
    alone = statistics.median(hook_alone)
    print(
        f"\nstartup hook cost (median of {RUNS} interpreter starts): site-packages processing "
        f"{statistics.median(with_hook):.2f} ms with the hook, {statistics.median(without_hook):.2f} ms without "
        f"(median difference {difference:.2f} ms); the hook line alone {alone:.2f} ms"
    )
    assert alone < BUDGET_MS
    assert difference < BUDGET_MS
