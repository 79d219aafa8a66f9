#!/usr/bin/env bash
# UI check on loopback, for real: start a Prefect server on a free port, run the kaggle-lora flow
# against it (tiny model, offline demo), check through the REST API that the run Completed and
# published every artifact, then take headless-Chromium screenshots of the flow run page, its
# Artifacts tab (V2 only: V1 has no URL for it) and the learning-curve plot, in the default V2 UI
# (/v2/...) and the V1 UI that the old deep links (/runs/..., /artifacts/...) open; check
# that they are real (PNG, not blank) and that the rendered pages name the run, say Completed and
# embed the SVG plot. Stops every process it started (by pid, never by name).
#
#   scripts/ui_check.sh                         # ~1-2 minutes on 2 cores
#   UI_CHECK_OUT=DIR scripts/ui_check.sh        # screenshots and ui_check.json in DIR
#   EPOCHS=1 CHROMIUM=/path/to/chromium scripts/ui_check.sh
#
# Needs Chromium (Debian: apt-get install -y chromium). Writes OUT/ui_check.json: the run id and
# name, the artifact keys and types found through the API, and the screenshot files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python)}"
# the flows import the package of this checkout, whichever copy is installed
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
EPOCHS="${EPOCHS:-2}"  # 2 epochs: the plot shows lines, not just points; still seconds with --tiny
[ -x "$CHROMIUM" ] || { echo "FAILED: no Chromium at $CHROMIUM (apt-get install -y chromium, or set CHROMIUM=...)"; exit 1; }
WORK="$(mktemp -d -t kaggle-lora-ui-XXXXXX)"
OUT="${UI_CHECK_OUT:-$WORK/screenshots}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
. scripts/_prefect_server.sh
fail() { echo "FAILED: $*"; exit 1; }
start=$(date +%s)
start_server

echo "flow: demo, tiny model, $EPOCHS epoch(s)"
timeout 900 "$PY" flows/submit.py --competition demo --tiny --epochs "$EPOCHS" --work-dir "$WORK/run" \
  --json-out "$WORK/summary.json" >"$WORK/flow.log" 2>&1 || { tail -40 "$WORK/flow.log"; fail "flows/submit.py failed"; }
echo "flow done in $(( $(date +%s) - start )) s"

# --- the API: the run, its state, its artifacts --------------------------------------------------
"$PY" - "$BASE" "$WORK/summary.json" "$OUT/ui_check.json" <<'EOF' || fail "API check (see above)"
import base64, json, re, sys, urllib.request, xml.etree.ElementTree as ET

base, summary_path, out = sys.argv[1:]

def post(path, body):
    req = urllib.request.Request(base + "/api" + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)

def die(msg):
    print("FAILED:", msg)
    sys.exit(1)

runs = post("/flow_runs/filter", {"flows": {"name": {"any_": ["kaggle-lora"]}}, "sort": "START_TIME_DESC", "limit": 5})
if len(runs) != 1:
    die(f"expected one kaggle-lora flow run on the fresh server, found {len(runs)}")
run = runs[0]
if run["state_type"] != "COMPLETED":
    die(f"flow run {run['name']} is {run['state_type']}, not COMPLETED")
arts = post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}, "sort": "CREATED_DESC", "limit": 200})
by_key = {a["key"]: a for a in arts if a["key"]}
types = sorted({a["type"] for a in arts})
print(f"flow run {run['name']} ({run['id']}): {run['state_name']}; {len(arts)} artifacts, types {types}")
for key in sorted(by_key):
    print(f"  {key:28s} {by_key[key]['type']:9s} {by_key[key]['id']}")

slug = "demo"
expected = {  # key -> (type, text the data must contain)
    f"{slug}-data-profile": ("markdown", "train"),
    f"{slug}-settings": ("markdown", "Settings"),
    f"{slug}-cv": ("table", "valid"),
    f"{slug}-blend": ("table", "weight"),
    f"{slug}-learning-curve": ("markdown", "train loss"),
    f"{slug}-learning-curve-plot": ("markdown", "data:image/svg+xml;base64,"),
    f"{slug}-submission": ("markdown", "public score"),  # the check, the Kaggle ref and the score
}
missing = [k for k in expected if k not in by_key]
if missing:
    die(f"artifacts missing: {missing}; found keys {sorted(by_key)}")
for key, (kind, text) in expected.items():
    a = by_key[key]
    data = a["data"] if isinstance(a["data"], str) else json.dumps(a["data"])
    if a["type"] != kind or text not in data:
        die(f"artifact {key} is {a['type']} (want {kind}) or lacks {text!r}: {data[:200]!r}")
summary = json.load(open(summary_path))
public = summary.get("public_score")
if public is None or str(public) not in by_key[f"{slug}-submission"]["data"]:
    die(f"the submission artifact does not show the public score {public!r} of the run summary")
progress = [a for a in arts if a["type"] == "progress"]
if not progress or not all(float(a["data"]) >= 100.0 for a in progress):
    die(f"progress artifacts missing or not at 100%: {[a['data'] for a in progress]}")
m = re.search(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", by_key[f"{slug}-learning-curve-plot"]["data"])
svg = ET.fromstring(base64.b64decode(m.group(1)))
lines = [p for p in svg.iter("{http://www.w3.org/2000/svg}polyline") if p.get("data-panel") == "train_loss"]
cv = by_key[f"{slug}-cv"]["data"]
n_folds = len(json.loads(cv) if isinstance(cv, str) else cv)  # one CV row per adapter
if len(lines) != n_folds:
    die(f"the plot has {len(lines)} train-loss lines for {n_folds} folds")
json.dump({"flow_run_id": run["id"], "flow_run_name": run["name"], "state": run["state_name"],
           "artifact_keys": sorted(by_key), "artifact_types": types, "progress_artifacts": len(progress),
           "plot_artifact_id": by_key[f"{slug}-learning-curve-plot"]["id"], "public_score": public,
           "folds": n_folds}, open(out, "w"), indent=1)
print(f"OK: the API shows all {len(expected)} keyed artifacts, {len(progress)} progress artifact(s) at 100%, "
      f"a {n_folds}-line plot, public score {public}")
EOF

RUN_ID="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["flow_run_id"])' "$OUT/ui_check.json")"
PLOT_ID="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["plot_artifact_id"])' "$OUT/ui_check.json")"

# --- the UI: screenshots and rendered DOM --------------------------------------------------------
chrome() {  # chrome <extra flag> <url>; a new empty profile each time
  local profile
  profile="$(mktemp -d "$WORK/chrome-profile-XXXXXX")"
  timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --disable-quic --user-data-dir="$profile" \
    --window-size=1400,1000 --virtual-time-budget=15000 "$1" "$2" 2>>"$WORK/chromium.log"
}
PAGES=(
  "v2-flow-run|$BASE/v2/runs/flow-run/$RUN_ID"
  "v2-flow-run-artifacts|$BASE/v2/runs/flow-run/$RUN_ID?tab=Artifacts"
  "v2-learning-curve-plot|$BASE/v2/artifacts/artifact/$PLOT_ID"
  "v1-flow-run|$BASE/runs/flow-run/$RUN_ID"
  "v1-learning-curve-plot|$BASE/artifacts/artifact/$PLOT_ID"
)
for page in "${PAGES[@]}"; do
  name="${page%%|*}" url="${page#*|}"
  chrome --screenshot="$OUT/$name.png" "$url" >/dev/null || fail "chromium could not screenshot $url (see $WORK/chromium.log)"
  chrome --dump-dom "$url" >"$OUT/$name.html" || fail "chromium could not render $url (see $WORK/chromium.log)"
done

"$PY" - "$OUT" <<'EOF' || fail "screenshot check (see above)"
import json, struct, sys, zlib
from pathlib import Path

out = Path(sys.argv[1])
info = json.loads((out / "ui_check.json").read_text())

def png_stats(path):
    """(width, height, distinct colours, share of the most common colour) from the PNG itself."""
    raw = path.read_bytes()
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"FAILED: {path} is not a PNG")
    pos, idat, head = 8, b"", None
    while pos < len(raw):
        n, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    w, h, depth, ctype = head[:4]
    if depth != 8 or ctype not in (2, 6):
        raise SystemExit(f"FAILED: {path}: unexpected PNG format depth={depth} colour type={ctype}")
    bpp = 3 if ctype == 2 else 4
    data, stride = zlib.decompress(idat), w * bpp
    prev, counts = bytearray(stride), {}
    for y in range(h):
        f, line = data[y * (stride + 1)], bytearray(data[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):  # undo the PNG row filters
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 4 == 0:  # every 4th row is plenty for a colour census
            for x in range(0, stride, bpp * 2):
                px = bytes(line[x:x + 3])
                counts[px] = counts.get(px, 0) + 1
        prev = line
    return w, h, len(counts), max(counts.values()) / sum(counts.values())

problems, shots = [], {}
for png in sorted(out.glob("*.png")):
    w, h, colours, top = png_stats(png)
    shots[png.name] = {"width": w, "height": h, "colours": colours, "top_colour_share": round(top, 3), "bytes": png.stat().st_size}
    print(f"  {png.name:30s} {w}x{h} {colours:5d} colours, most common {top:.0%}, {png.stat().st_size} bytes")
    if (w, h) != (1400, 1000) or colours < 50 or top > 0.97:
        problems.append(f"{png.name} looks blank or wrong ({w}x{h}, {colours} colours, {top:.0%} one colour)")
name = info["flow_run_name"]
for page in ("v2-flow-run", "v1-flow-run"):
    dom = (out / f"{page}.html").read_text()
    if name not in dom or "Completed" not in dom:
        problems.append(f"{page}: the rendered page lacks the run name {name!r} or 'Completed'")
for page in ("v2-learning-curve-plot", "v1-learning-curve-plot"):
    dom = (out / f"{page}.html").read_text()
    if 'src="data:image/svg+xml;base64,' not in dom:
        problems.append(f"{page}: the rendered artifact page has no <img> with the SVG plot")
dom = (out / "v2-flow-run-artifacts.html").read_text()  # (V1 ignores ?tab=, so only V2 has this page)
if "demo-learning-curve-plot" not in dom:
    problems.append("v2-flow-run-artifacts: the Artifacts tab does not list demo-learning-curve-plot")
info["screenshots"] = shots
(out / "ui_check.json").write_text(json.dumps(info, indent=1))
if problems:
    print("FAILED:\n  " + "\n  ".join(problems))
    sys.exit(1)
print("OK: screenshots are real and the pages show the run, its state and the plot")
EOF

echo "screenshots in $OUT:"
ls -1 "$OUT"/*.png
echo "OK: UI check passed in $(( $(date +%s) - start )) s"
