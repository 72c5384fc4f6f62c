#!/usr/bin/env bash
# Re-makes docs/gallery.png and docs/mlflow-run.png from a small run on synthetic panels
# (needs `make browser-test` once: Debian's chromium and Playwright). About 3 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
bin=$PWD/.venv/bin
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" PREFECT_HOME="$work/prefect"
echo '{"train": {"epochs": 10, "members": 1}, "model": {"head_steps": 0}}' > "$work/small.json"
(cd "$work" && "$bin/panelscan" synth --out raw --n 240 --seed 0 \
  && "$bin/panelscan" pipeline --raw raw --labels raw/labels.csv --workdir work --config small.json \
  && "$bin/panelscan" synth --out inbox/2026-12-07 --n 60 --seed 1 \
  && "$bin/panelscan" nightly --inbox inbox --workdir work --date 2026-12-07 --config small.json)
shot() { chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="$2" \
  --virtual-time-budget=30000 --screenshot="$3" "$1" 2>/dev/null; }
# the gallery mid-review: near-threshold images shown, three decisions made (Playwright: make browser-test)
"$bin/python" - "$work/work/reports/2026-12-07/index.html" docs/gallery.png <<'PY'
import sys
from pathlib import Path
from playwright.sync_api import sync_playwright
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto(Path(sys.argv[1]).as_uri())
    page.check("#near")
    rows = page.locator("tbody tr")
    for i, label in enumerate(("crack", "false_alarm", "loose_connector")):
        rows.nth(i).locator(f"button[data-label={label}]").click()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=sys.argv[2])
    browser.close()
PY
"$bin/mlflow" ui --backend-store-uri "$MLFLOW_TRACKING_URI" --port 5077 >/dev/null 2>&1 &
for _ in $(seq 60); do curl -sf http://127.0.0.1:5077/health >/dev/null && break; sleep 1; done
run=$("$bin/python" -c "import mlflow; r = mlflow.search_runs(experiment_names=['panel-train']).iloc[0]; print(r.experiment_id, r.run_id)")
shot "http://127.0.0.1:5077/#/experiments/${run% *}/runs/${run#* }" 1400,1000 docs/mlflow-run.png
echo "wrote docs/gallery.png docs/mlflow-run.png"
