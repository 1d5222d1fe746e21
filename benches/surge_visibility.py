"""How soon a demand surge shows on the built-in dashboard (run by `scripts/bench surge`).

Usage: surge_visibility.py SNAPSHOT_URL CITY FACTOR -- SIMULATE_COMMAND...

SIMULATE_COMMAND is `ridepulse simulate ... --surge CITY:FACTOR:60s:END` against a live job;
it prints its `--start`, so the surge's first event is produced at start + 60 s (the
simulator paces event time to the wall clock). Meanwhile this polls the dashboard's
/api/snapshot every 200 ms and follows S(t), the city's ride requests counted on the page
since the run began. Before the surge S grows at the base rate r; the surge is *visible*
at the first poll where S grew by more than 3 r over the last second (half way to the
surge's FACTOR x r). Prints the surge's start, when it became visible, the difference, and
the rates seen.
"""
import datetime
import json
import re
import subprocess
import sys
import time
import urllib.request


def snapshot(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def main():
    url, city, factor = sys.argv[1], sys.argv[2], float(sys.argv[3])
    command = sys.argv[sys.argv.index("--") + 1:]
    began = time.time()
    sim = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    start = None
    samples = []  # (wall time, requests of CITY on the page since the run began)
    first_minute = int(began // 60 * 60)
    line_buffer = []

    import threading

    def read_output():
        for line in sim.stdout:
            line_buffer.append(line)

    threading.Thread(target=read_output, daemon=True).start()
    while sim.poll() is None:
        if start is None:
            for line in line_buffer:
                m = re.search(r"--start (\S+)", line)
                if m:
                    start = datetime.datetime.fromisoformat(m[1].replace("Z", "+00:00")).timestamp()
        try:
            s = snapshot(url)
            if s.get("ok"):
                total = sum(r["requests"] for r in s["requests_per_minute"]
                            if r["city"] == city and r["minute"] >= first_minute)
                samples.append((time.time(), total))
        except OSError:
            pass
        time.sleep(0.2)
    if start is None:
        sys.exit("the simulator did not print its --start")
    surge_at = start + 60
    base = [(t, v) for t, v in samples if began + 20 <= t <= surge_at - 5]
    if len(base) < 2:
        sys.exit("not enough samples before the surge")
    rate = (base[-1][1] - base[0][1]) / (base[-1][0] - base[0][0])
    visible = None
    for i, (t, v) in enumerate(samples):
        if t < surge_at:
            continue
        earlier = [p for p in samples[:i] if p[0] <= t - 1.0]
        if not earlier:
            continue
        t0, v0 = earlier[-1]
        if (v - v0) / (t - t0) > 3 * rate:
            visible = t
            break
    after = [(t, v) for t, v in samples if surge_at + 10 <= t <= surge_at + 40]
    surge_rate = (after[-1][1] - after[0][1]) / (after[-1][0] - after[0][0]) if len(after) > 1 else float("nan")
    iso = lambda t: datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    print(f"city {city}: base {rate:.1f} requests/s on the page, during the {factor:g}x surge {surge_rate:.1f} requests/s")
    print(f"surge's first events produced at {iso(surge_at)} UTC (simulator start + 60 s)")
    if visible is None:
        print("surge never visible on the dashboard")
        sys.exit(1)
    print(f"visible on the dashboard at {iso(visible)} UTC: {visible - surge_at:.2f} s after the events were produced")
    print(json.dumps({"city": city, "base_rps": round(rate, 2), "surge_rps": round(surge_rate, 2),
                      "visible_after_s": round(visible - surge_at, 2), "polls": len(samples)}))


if __name__ == "__main__":
    main()
