"""How soon a driver supply drop shows on the built-in dashboard (run by `scripts/bench supply-drop`).

Usage: supply_drop_visibility.py SNAPSHOT_URL CITY FRACTION DROP_AT_S -- SIMULATE_COMMAND...

SIMULATE_COMMAND is `ridepulse simulate ... --supply-drop CITY:FRACTION:{DROP_AT_S}s:END` against
a live job; it prints its `--start`, so the drop begins at start + DROP_AT_S (the simulator
paces event time to the wall clock): from then on the dropped drivers' pings (every 5 s each)
say `offline`. The caller picks DROP_AT_S so the drop falls about 30 s into a minute, when the
open minute's row already counts every driver that pinged in it. Meanwhile this polls the
dashboard's /api/snapshot every 200 ms and follows A(t), the city's available drivers in the
row of the minute the drop falls in (an update row while the minute is open). The baseline B is
the largest A seen in that minute before the drop; the drop is *half visible* at the first poll
where A <= B - FRACTION * B / 2 (half the expected fall: A also moves with drivers starting and
ending trips, so a smaller fall says little). The dropped drivers' offline pings are spread over
the 5 s after the drop begins, so the pings that make half the fall have all been produced by
drop + 2.5 s: the delay from those events to the dashboard is half_visible - (drop + 2.5 s).
Prints both figures.
"""
import datetime
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request


def snapshot(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def main():
    url, city, fraction, drop_at = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    command = sys.argv[sys.argv.index("--") + 1:]
    sim = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    threading.Thread(target=lambda: [lines.append(l) for l in sim.stdout], daemon=True).start()
    start = None
    samples = []  # (wall time, {minute start (s): available drivers of CITY})
    while sim.poll() is None:
        if start is None:
            for line in list(lines):
                m = re.search(r"--start (\S+)", line)
                if m:
                    start = datetime.datetime.fromisoformat(m[1].replace("Z", "+00:00")).timestamp()
        try:
            s = snapshot(url)
            if s.get("ok"):
                rows = {int(r["minute"]): int(r["available_drivers"]) for r in s["supply"] if r["city"] == city}
                samples.append((time.time(), rows))
        except OSError:
            pass
        time.sleep(0.2)
    if start is None:
        sys.exit("the simulator did not print its --start")
    drop = start + drop_at
    minute = int(drop // 60 * 60)
    before = [rows[minute] for t, rows in samples if t < drop and minute in rows]
    if not before:
        sys.exit(f"no row of minute {minute} seen before the drop")
    baseline = max(before)
    half = None
    for t, rows in samples:
        if t >= drop and minute in rows and rows[minute] <= baseline - fraction * baseline / 2:
            half = t
            break
    iso = lambda t: datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    last = [rows[minute] for t, rows in samples if minute in rows][-1]
    print(f"city {city}: {baseline} available drivers in the minute {iso(minute)[:5]} before the drop, {last} at its last update")
    print(f"drop of {fraction:g} of the drivers begins at {iso(drop)} UTC (simulator start + {drop_at:g} s)")
    if half is None:
        print("drop never visible on the dashboard")
        sys.exit(1)
    print(f"half the drop visible at {iso(half)} UTC: {half - drop:.2f} s after the drop began, "
          f"{half - drop - 2.5:.2f} s after its pings were produced")
    print(json.dumps({"city": city, "fraction": fraction, "baseline": baseline, "last": last,
                      "half_visible_after_s": round(half - drop, 2),
                      "after_pings_s": round(half - drop - 2.5, 2), "polls": len(samples)}))


if __name__ == "__main__":
    main()
