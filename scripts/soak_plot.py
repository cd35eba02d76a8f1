"""Plot the soak's per-minute p99 of reads and writes (target/tmp/soak.csv) to a PNG."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

source, target = sys.argv[1], sys.argv[2]
title = sys.argv[3] if len(sys.argv) > 3 else "Soak: p99 per minute"
series = {}
with open(source, newline="") as f:
    rows = list(csv.DictReader(f))
# The last minute holds the few requests sent after the run's last whole minute: a p99 of a
# handful of requests (or none) would only draw a spike.
last = max((int(r["minute"]) for r in rows), default=0)
full = {}
for row in rows:
    full[row["op"]] = max(full.get(row["op"], 0), int(row["requests"]))
for row in rows:
    if int(row["minute"]) == last and int(row["requests"]) * 2 < full[row["op"]]:
        continue
    series.setdefault(row["op"], []).append((int(row["minute"]), float(row["p99_ms"])))

labels = {"Read": "GET setting", "Put": "PUT setting (durable)", "Register": "register repository"}
fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
for op, points in series.items():
    points.sort()
    ax.plot([m for m, _ in points], [p for _, p in points], marker="o", markersize=3, label=labels.get(op, op))
ax.set_xlabel("minute of the soak")
ax.set_ylabel("p99 latency (ms)")
ax.set_title(title, fontsize=10)
ax.grid(True, alpha=0.3)
ax.set_ylim(bottom=0)
ax.legend()
fig.tight_layout()
fig.savefig(target)
print(f"wrote {target}")
