#!/bin/sh
# Issue 15's measurements in one command (run from the repository root, ideally on an idle machine):
# the curve through the engine's default index at 100 k, 300 k and 1 M faces (3 M with CURVE_3M=1: ~10 GB RAM
# while the data is drawn, ~6 min to draw and ~15 min in all the first time; the data are cached after), then the
# 1 M search with the options of RESULTS.md ("A 128-bit lead code") that are not the default: the scan keeping
# ~20,000 instead of ~30,000, a 192-bit lead keeping ~10,000, and the layout before the lead code (256 of 512
# random bits scanned), then a burst of 50 searches
# with and without arrival-order scheduling on the 20 k-face end-to-end gallery (built by bench/e2e.py on first use), then the end-to-end run at 1 M.
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
for n in 100000 300000 1000000 ${CURVE_3M:+3000000}; do
  uptime
  $PY bench/search.py --n "$n" --candidates 1000,2000,500 | tail -1
done
uptime
$PY bench/search.py --n 1000000 --prefilter 20000 | tail -1
$PY bench/search.py --n 1000000 --codes lead192 --prefilter 10000 | tail -1
$PY bench/search.py --n 1000000 --codes random512 | tail -1
uptime
[ -d "${SIGHTLINE_BENCH_CACHE:-$HOME/.cache/sightline-bench}/e2e-20000" ] || $PY bench/e2e.py --n 20000 --searches 5 --officers 2 --per-officer 1 --burst 0 >/dev/null
$PY bench/burst.py --n 20000 --burst 50 | tail -3
uptime
$PY bench/e2e.py --n 1000000 --burst 50 | tail -1
