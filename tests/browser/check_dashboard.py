"""Drives headless Chromium (Debian's chromium + chromedriver, W3C WebDriver over plain HTTP)
against a running `ridepulse dashboard`, the way an ops engineer looks at it.

Usage: check_dashboard.py DASHBOARD_URL CLICKHOUSE_URL DATABASE SCREENSHOT SQL_FILE
                          DOWN_URL HOSTILE_CITY SUPPLY_SQL_FILE KNOWN_ROWS_JSON
                          DOCS_URL DOCS_DATABASE -- MORE_EVENTS_COMMAND...

0. Opens DOCS_URL (a dashboard over a realistic simulator run in DOCS_DATABASE), shows
   bratislava (its surge and driver drop) by clicking its legend entry, hovers a point of
   the busiest city's requests (its legend value must equal ClickHouse's count for that
   city and minute) and saves a full-page screenshot to SCREENSHOT.
1. Opens DASHBOARD_URL, waits for live data on the page, then checks that every number of the "cities in the
   last hour" table equals what ClickHouse returns for SQL_FILE (the same city and window),
   and that the freshness shown is ClickHouse's now() minus its newest event time.
   HOSTILE_CITY (a city of some of the events: markup whose `onerror` sets window.__pwned)
   must appear as exactly that text in the table and in the chart legends, with no `img`,
   no `onerror` attribute and no window.__pwned coming out of it.
   The supply-and-demand table equals what ClickHouse returns for SUPPLY_SQL_FILE, row for
   row in its order (cities under pressure first); exactly the rows above the pressure
   threshold (or with riders waiting and no driver available) are highlighted; the pressure
   chart draws its threshold; HOSTILE_CITY is text there too.
   The charts (uPlot, read through window.ridepulseCharts): each city chart draws exactly
   the five cities with the most events in ClickHouse's city table, the others greyed in its
   legend; a real click on a city's legend entry hides it on every chart (showing a hidden
   one shows it everywhere), it stays so across redraws, and a second click restores it; a
   real mouse move onto bratislava's point at a known minute of KNOWN_ROWS_JSON (the supply
   rows the test inserted) shows exactly its pressure and waiting riders in the legend,
   with the minute's end as the time.
2. Runs MORE_EVENTS_COMMAND (which writes new events through the pipeline, and a newer
   supply row for kosice with no driver available) and, without reloading, waits until the
   page shows the new numbers (again equal to ClickHouse's) and kosice first in the supply
   table.
3. Opens DOWN_URL (a dashboard whose ClickHouse is unreachable) and checks the notice.
Prints what it saw; exits non-zero on the first failure.
"""
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

CHROMIUM = os.environ.get("RIDEPULSE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("RIDEPULSE_CHROMEDRIVER", "/usr/bin/chromedriver")
INTEGER_COLUMNS = ["requests", "completions", "cancellations", "unique_riders", "events"]


def fail(message):
    print(f"FAIL {message}", flush=True)
    sys.exit(1)


def call(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["value"]
    except urllib.error.HTTPError as error:
        fail(f"webdriver {method} {url}: {error.read().decode()[:500]}")


class Browser:
    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{self.base}/status", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1900"]},
        }}}
        self.session = call("POST", f"{self.base}/session", caps)["sessionId"]
        self.url = f"{self.base}/session/{self.session}"

    def open(self, url):
        call("POST", f"{self.url}/url", {"url": url})

    def js(self, script, *args):
        return call("POST", f"{self.url}/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self, path):
        png = base64.b64decode(call("GET", f"{self.url}/screenshot"))
        with open(path, "wb") as out:
            out.write(png)

    def close(self):
        try:
            call("DELETE", self.url)
        finally:
            self.driver.kill()


READ_PAGE = """
const rows = {};
for (const tr of document.querySelectorAll('#cities tbody tr')) {
  const cells = {};
  for (const td of tr.querySelectorAll('td')) cells[td.dataset.col] = td.textContent;
  rows[tr.dataset.city] = {cells, highlighted: tr.classList.contains('over-threshold')};
}
return {
  updates: Number(document.getElementById('updated').dataset.updates),
  freshness: document.getElementById('freshness').dataset.seconds,
  notice: document.getElementById('notice').hidden ? null : document.getElementById('notice').textContent,
  rows,
  charts: [...(window.ridepulseCharts || new Map()).values()].reduce((n, c) => n + c.plot.series.length - 1, 0),
  thresholdLines: thresholds('chart-cancel'),
};
"""

# The uPlot instances of the page (app.js keeps them in window.ridepulseCharts by element id).
CHARTS_JS = """
const plotOf = (id) => { const c = (window.ridepulseCharts || new Map()).get(id); return c ? c.plot : null; };
const thresholds = (id) => { const p = plotOf(id); return p ? p.series.filter((s) => s.label === 'threshold').length : 0; };
const cityCharts = () => [...(window.ridepulseCharts || new Map()).entries()].filter(([, c]) => c.spec.cities);
"""
READ_PAGE = CHARTS_JS + READ_PAGE


# Where a data value can surface on the page, and whether any markup came out of one.
READ_HOSTILE = """
const city = arguments[0];
const row = [...document.querySelectorAll('#cities tbody tr')].find((tr) => tr.dataset.city === city);
const cell = row ? row.querySelector('td[data-col="city"]') : null;
const labels = [...document.querySelectorAll('.chart .u-legend .u-label')];
return {
  cell: cell ? cell.textContent : null,
  legends: labels.filter((t) => t.textContent === city).length,
  series: cityCharts().reduce((n, [, c]) => n + c.plot.series.filter((s) => s.label === city).length, 0),
  pwned: typeof window.__pwned,
  images: document.querySelectorAll('img').length,
  handlers: document.querySelectorAll('[onerror]').length,
  chartChildren: document.querySelectorAll('.chart .u-legend .u-label *').length,
};
"""
READ_HOSTILE = CHARTS_JS + READ_HOSTILE


def check_hostile(browser, city, when):
    """The hostile city is shown as text, and nothing came out of it (checked after a few
    redraws, so that an injected image has had time to fail and run its handler)."""
    start = browser.js(READ_PAGE)["updates"]
    deadline = time.time() + 30
    while browser.js(READ_PAGE)["updates"] < start + 2 and time.time() < deadline:
        time.sleep(0.3)
    seen = browser.js(READ_HOSTILE, city)
    if seen["pwned"] != "undefined":
        fail(f"{when}: a city name ran script on the page (window.__pwned is {seen['pwned']}): {seen}")
    if seen["images"] or seen["handlers"] or seen["chartChildren"]:
        fail(f"{when}: a city name became markup on the page: {seen}")
    if seen["cell"] != city:
        fail(f"{when}: the city table shows {seen['cell']!r}, not the city {city!r}: {seen}")
    if seen["legends"] < 1 or seen["series"] < 1:
        fail(f"{when}: the charts do not label the city {city!r} as text: {seen}")
    print(f"ok   {when}: the city {city!r} is text in the table, {seen['legends']} legends and "
          f"{seen['series']} series; no img, no handler, window.__pwned undefined", flush=True)


READ_SUPPLY = """
const rows = [];
for (const tr of document.querySelectorAll('#supply tbody tr[data-city]')) {
  const cells = {};
  for (const td of tr.querySelectorAll('td')) cells[td.dataset.col] = td.textContent;
  rows.push({city: tr.dataset.city, cells, highlighted: tr.classList.contains('over-threshold')});
}
const series = (id) => { const p = plotOf(id); return p ? p.series.filter((s, i) => i > 0 && s.label !== 'threshold').length : 0; };
return {
  updates: Number(document.getElementById('updated').dataset.updates),
  rows,
  threshold: document.getElementById('pressure-threshold').textContent,
  pressureThresholdLines: thresholds('chart-pressure'),
  series: {available: series('chart-available'), waiting: series('chart-waiting'), pressure: series('chart-pressure')},
  images: document.querySelectorAll('img').length,
};
"""
READ_SUPPLY = CHARTS_JS + READ_SUPPLY


# Which cities each chart draws (its shown series), by chart id.
READ_SHOWN = CHARTS_JS + """
const out = {};
for (const [id, c] of cityCharts()) {
  out[id] = {
    shown: c.plot.series.filter((s, i) => i > 0 && s.show && c.spec.names.includes(s.label)).map((s) => s.label),
    hidden: c.plot.series.filter((s, i) => i > 0 && !s.show && c.spec.names.includes(s.label)).map((s) => s.label),
    off: [...c.plot.root.querySelectorAll('.u-legend tr.u-series.u-off .u-label')].map((l) => l.textContent),
  };
}
return out;
"""

# The legend entry (its label cell, which uPlot listens on) of a series of a chart.
LEGEND_ENTRY = CHARTS_JS + """
const p = plotOf(arguments[0]);
const row = [...p.root.querySelectorAll('.u-legend tr.u-series')].find((tr) => tr.querySelector('.u-label').textContent === arguments[1]);
return row ? row.querySelector('th') : null;
"""

# Puts the cursor's target for (x, y) of a series in view and returns its viewport point.
POINT_OF = CHARTS_JS + """
const [id, label, x, scroll] = arguments;
const p = plotOf(id);
if (scroll) p.root.scrollIntoView({block: 'center'});
const i = p.series.findIndex((s, k) => k > 0 && s.label === label);
const at = p.data[0].indexOf(x);
if (i < 0 || at < 0) return {missing: {series: i, at, xs: p.data[0]}};
const rect = p.over.getBoundingClientRect();
return {x: Math.round(rect.left + p.valToPos(x, 'x')), y: Math.round(rect.top + p.valToPos(p.data[i][at], 'y')), shown: p.series[i].show};
"""

# The legend's live values of a chart: label -> value text.
LEGEND_VALUES = CHARTS_JS + """
const p = plotOf(arguments[0]);
const out = {};
for (const tr of p.root.querySelectorAll('.u-legend tr.u-series')) {
  out[tr.querySelector('.u-label').textContent] = tr.querySelector('.u-value').textContent;
}
return out;
"""


def click(browser, element, what):
    if not element:
        fail(f"{what}: no such legend entry")
    (key,) = [k for k in element if k.startswith("element-")]
    call("POST", f"{browser.url}/element/{element[key]}/click", {})


def hover(browser, x, y):
    call("POST", f"{browser.url}/actions", {"actions": [{
        "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
        "actions": [{"type": "pointerMove", "duration": 0, "origin": "viewport", "x": x, "y": y}]}]})
    call("DELETE", f"{browser.url}/actions")


def wait_for_redraws(browser, n):
    start = browser.js(READ_PAGE)["updates"]
    deadline = time.time() + 30
    while browser.js(READ_PAGE)["updates"] < start + n and time.time() < deadline:
        time.sleep(0.2)


def check_default_cities(browser, expected):
    """Every city chart draws the same cities by default: the five with the most events in
    the last hour (ClickHouse's city table), the others listed but hidden."""
    busiest = [r["city"] for r in sorted(expected, key=lambda r: (-int(r["events"]), r["city"]))]
    top = set(busiest[:5])
    shown = browser.js(READ_SHOWN)
    for chart, seen in shown.items():
        want = top & set(seen["shown"] + seen["hidden"])
        if set(seen["shown"]) != want or set(seen["off"]) != set(seen["hidden"]):
            fail(f"default cities of {chart}: shown {seen['shown']}, want {sorted(want)} "
                 f"(the five busiest: {busiest[:5]}); greyed in the legend {seen['off']}")
    requests = shown["chart-requests"]
    if len(requests["shown"]) != 5 or not requests["hidden"]:
        fail(f"chart-requests: shown {requests['shown']}, hidden {requests['hidden']}")
    print(f"ok   every chart draws the five busiest cities {busiest[:5]} by default; "
          f"{len(requests['hidden'])} more listed in the legend, hidden", flush=True)
    return busiest


def check_toggle(browser, chart, city, shown_before):
    """Clicking the city's legend entry hides it (shows it if hidden) on every chart, it stays
    so across redraws, and a second click brings the first state back."""
    for click_no, want in [(1, not shown_before), (2, shown_before)]:
        click(browser, browser.js(LEGEND_ENTRY, chart, city), f"{chart} {city}")
        wait_for_redraws(browser, 2)
        for other, seen in browser.js(READ_SHOWN).items():
            listed = seen["shown"] + seen["hidden"]
            if city not in listed:
                continue
            now = city in seen["shown"]
            if now != want or (city in seen["off"]) == want:
                fail(f"click {click_no} on {city!r} in {chart}'s legend: on {other} shown={now} "
                     f"(greyed {city in seen['off']}), want shown={want}")
    print(f"ok   clicking {city!r} in {chart}'s legend {'hides' if shown_before else 'shows'} it on "
          f"every chart (kept across redraws); clicking again {'shows' if shown_before else 'hides'} it",
          flush=True)


def check_hover(browser, chart, city, x, want, digits):
    """Hovering the city's point at time x shows its value (and the time) in the legend."""
    want_text = f"{want:,.{digits}f}"
    want_time = time.strftime("%H:%M UTC", time.gmtime(x))
    seen = None
    for _ in range(10):
        point = browser.js(POINT_OF, chart, city, x, True)
        if "missing" in point:
            fail(f"hover {chart}: no point of {city!r} at {x}: {point['missing']}")
        if not point["shown"]:
            fail(f"hover {chart}: {city!r} is hidden")
        hover(browser, point["x"], point["y"])
        seen = browser.js(LEGEND_VALUES, chart)
        times = [v for k, v in seen.items() if k != city and v.endswith(" UTC")]
        if seen.get(city) == want_text and want_time in times:
            print(f"ok   hovering {chart} at {want_time} shows {city!r} = {seen[city]} "
                  f"(the row the test inserted: {want_text})", flush=True)
            return
        time.sleep(0.3)
    fail(f"hover {chart} at {want_time}: legend shows {seen}, want {city!r} = {want_text}")


def docs_screenshot(browser, url, ch_url, database, path):
    """The screenshot for docs/dashboard.png: a realistic run, the whole page, bratislava
    shown, one point of the busiest city's requests hovered (its value checked against
    ClickHouse)."""
    browser.open(url)
    deadline = time.time() + 60
    while browser.js(READ_PAGE)["updates"] < 2 or browser.js(READ_SUPPLY)["series"]["pressure"] == 0:
        if time.time() > deadline:
            fail(f"docs dashboard: no data drawn: {browser.js(READ_PAGE)}")
        time.sleep(0.3)
    height = browser.js("return document.documentElement.scrollHeight")
    call("POST", f"{browser.url}/window/rect", {"width": 1400, "height": height + 40})
    wait_for_redraws(browser, 1)
    shown = browser.js(READ_SHOWN)["chart-requests"]["shown"]
    city = shown[0]
    if "bratislava" not in shown:
        click(browser, browser.js(LEGEND_ENTRY, "chart-requests", "bratislava"), "docs bratislava")
    xs = browser.js(CHARTS_JS + "return plotOf('chart-requests').data[0];")
    minute = xs[len(xs) * 2 // 3]
    (row,) = clickhouse(ch_url, database, f"""
        SELECT countIf(event_type = 'requested') AS requests FROM ride_events FINAL
        WHERE is_late = 0 AND city = '{city}' AND toUInt32(toStartOfMinute(timestamp)) = {minute}""")
    browser.js("window.scrollTo(0, 0)")
    point = browser.js(POINT_OF, "chart-requests", city, minute, False)
    hover(browser, point["x"], point["y"])
    seen = browser.js(LEGEND_VALUES, "chart-requests")
    if seen.get(city) != f"{int(row['requests']):,}":
        fail(f"docs dashboard: hovering {city!r} at {minute} shows {seen}, ClickHouse {row}")
    browser.screenshot(path)
    call("POST", f"{browser.url}/window/rect", {"width": 1400, "height": 1900})
    print(f"ok   realistic run: hovering {city!r}'s requests at "
          f"{time.strftime('%H:%M', time.gmtime(minute))} shows {seen[city]} (ClickHouse: "
          f"{row['requests']}); full-page screenshot ({height} px) {path}", flush=True)


def compare_supply(page, expected, threshold):
    """The supply table equals ClickHouse's rows, in the same order, highlights included."""
    cities = [r["city"] for r in page["rows"]]
    if cities != [r["city"] for r in expected]:
        return f"order differs: page {cities} vs ClickHouse {[r['city'] for r in expected]}"
    for shown, row in zip(page["rows"], expected):
        cells = shown["cells"]
        if cells["city"] != row["city"]:
            return f"{row['city']}: the city cell shows {cells['city']!r}"
        if cells["minute"] != row["minute"][11:16]:
            return f"{row['city']}.minute: page {cells['minute']} vs ClickHouse {row['minute']}"
        for col in ["waiting_riders", "available_drivers", "on_trip_drivers", "rides_in_progress", "requests"]:
            if number(cells[col]) != float(row[col]):
                return f"{row['city']}.{col}: page {cells[col]} vs ClickHouse {row[col]}"
        if row["pressure"] is None:
            if cells["pressure"] != "–":
                return f"{row['city']}.pressure: page {cells['pressure']} vs ClickHouse null"
        elif abs(number(cells["pressure"]) - float(row["pressure"])) > 0.005:
            return f"{row['city']}.pressure: page {cells['pressure']} vs ClickHouse {row['pressure']}"
        pressured = (row["available_drivers"] == 0 and row["waiting_riders"] > 0) if row["pressure"] is None \
            else float(row["pressure"]) > threshold
        if shown["highlighted"] != pressured:
            return f"{row['city']}: highlighted {shown['highlighted']}, under pressure {pressured}"
    return None


def wait_until_supply_equal(browser, ch_url, database, sql, first_city, what):
    deadline = time.time() + 60
    problem = "no rows yet"
    while time.time() < deadline:
        page = browser.js(READ_SUPPLY)
        if page["rows"] and (first_city is None or page["rows"][0]["city"] == first_city):
            expected = clickhouse(ch_url, database, sql)
            problem = compare_supply(page, expected, float(page["threshold"]))
            if problem is None:
                return page, expected
        elif page["rows"]:
            problem = f"first city {page['rows'][0]['city']!r}, waiting for {first_city!r}"
        time.sleep(0.5)
    fail(f"{what}: the supply table never matched ClickHouse: {problem}")


def clickhouse(url, database, sql):
    params = urllib.parse.urlencode({"database": database, "default_format": "JSON",
                                     "output_format_json_quote_64bit_integers": 0})
    request = urllib.request.Request(f"{url}/?{params}", data=sql.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["data"]


def number(text):
    return float(text.replace(",", ""))


def compare(page, expected):
    """Every number of every city row on the page equals ClickHouse's."""
    if set(page["rows"]) != {r["city"] for r in expected}:
        return f"cities differ: page {sorted(page['rows'])} vs ClickHouse {sorted(r['city'] for r in expected)}"
    for row in expected:
        cells = page["rows"][row["city"]]["cells"]
        for col in INTEGER_COLUMNS:
            if number(cells[col]) != float(row[col]):
                return f"{row['city']}.{col}: page {cells[col]} vs ClickHouse {row[col]}"
        if abs(number(cells["completion_rate_pct"]) - float(row["completion_rate_pct"])) > 0.05:
            return f"{row['city']}.completion_rate_pct: page {cells['completion_rate_pct']} vs {row['completion_rate_pct']}"
        if row["avg_fare"] is not None and abs(number(cells["avg_fare"]) - float(row["avg_fare"])) > 0.005:
            return f"{row['city']}.avg_fare: page {cells['avg_fare']} vs {row['avg_fare']}"
    return None


def wait_until_equal(browser, ch_url, database, sql, after_updates, what):
    deadline = time.time() + 60
    problem = "no update yet"
    while time.time() < deadline:
        page = browser.js(READ_PAGE)
        if page["updates"] > after_updates and page["rows"]:
            # The page and this query see ClickHouse at slightly different moments: retry
            # until both describe the same state.
            expected = clickhouse(ch_url, database, sql)
            problem = compare(page, expected)
            if problem is None:
                return page, expected
        time.sleep(0.5)
    fail(f"{what}: the page never matched ClickHouse: {problem}")


def main():
    dash_url, ch_url, database, screenshot, sql_file, down_url, hostile, supply_file, known_file = sys.argv[1:10]
    known = json.load(open(known_file))
    docs_url, docs_database = sys.argv[10:12]
    more_events = sys.argv[sys.argv.index("--") + 1:]
    sql = open(sql_file).read().strip().rstrip(";")
    supply_sql = open(supply_file).read().strip().rstrip(";")
    browser = Browser()
    try:
        docs_screenshot(browser, docs_url, ch_url, docs_database, screenshot)
        browser.open(dash_url)
        page, expected = wait_until_equal(browser, ch_url, database, sql, 0, "first load")
        print(f"ok   page matches ClickHouse for {len(expected)} cities after {page['updates']} updates", flush=True)
        city_rows = expected
        (fresh,) = clickhouse(ch_url, database,
                              "SELECT (toUInt64(now()) * 1000 - max(timestamp_ms)) / 1000 AS s FROM ride_events")
        if abs(float(page["freshness"]) - float(fresh["s"])) > 5:
            fail(f"freshness: page {page['freshness']} s vs ClickHouse {fresh['s']} s")
        print(f"ok   freshness {page['freshness']} s (ClickHouse: {fresh['s']} s)", flush=True)
        check_hostile(browser, hostile, "first load")
        if page["charts"] < 6 or page["thresholdLines"] != 1:
            fail(f"charts: {page['charts']} series drawn, {page['thresholdLines']} threshold lines")
        print(f"ok   {page['charts']} chart series, threshold line drawn", flush=True)
        supply, expected = wait_until_supply_equal(browser, ch_url, database, supply_sql, None, "first load")
        highlighted = [r["city"] for r in supply["rows"] if r["highlighted"]]
        if supply["threshold"] != "2" or supply["pressureThresholdLines"] != 1:
            fail(f"pressure threshold: {supply['threshold']!r}, {supply['pressureThresholdLines']} lines drawn")
        if min(supply["series"].values()) < len(expected) or supply["images"]:
            fail(f"supply charts: {supply}")
        if hostile not in highlighted or supply["rows"][0]["city"] != "bratislava":
            fail(f"supply: under pressure {highlighted}, first {supply['rows'][0]['city']!r}")
        print(f"ok   supply table matches ClickHouse in its order {[r['city'] for r in supply['rows']]}, "
              f"highlighted {highlighted}, pressure threshold 2 drawn, series {supply['series']}", flush=True)
        busiest = check_default_cities(browser, city_rows)
        check_toggle(browser, "chart-requests", busiest[0], True)
        check_toggle(browser, "chart-requests", busiest[-1], False)
        # A known supply row at a middle minute, plotted at the minute's end (SPEC §5); its city
        # is drawn first if it is not among the busiest.
        row = next(r for r in known if r["city"] == "bratislava" and r["minute"] == known[0]["minute"] + 180)
        if "bratislava" not in busiest[:5]:
            click(browser, browser.js(LEGEND_ENTRY, "chart-pressure", "bratislava"), "chart-pressure bratislava")
        check_hover(browser, "chart-pressure", "bratislava", row["minute"] + 60, row["pressure"], 2)
        check_hover(browser, "chart-waiting", "bratislava", row["minute"] + 60, row["waiting_riders"], 0)
        if "bratislava" not in busiest[:5]:
            click(browser, browser.js(LEGEND_ENTRY, "chart-pressure", "bratislava"), "chart-pressure bratislava")

        before = page
        subprocess.run(more_events, check=True, stdout=subprocess.DEVNULL)
        deadline = time.time() + 90
        while True:
            page, expected = wait_until_equal(browser, ch_url, database, sql, before["updates"], "after new events")
            grown = [c for c in page["rows"] if c in before["rows"] and
                     number(page["rows"][c]["cells"]["events"]) > number(before["rows"][c]["cells"]["events"])]
            if grown:
                break
            if time.time() > deadline:
                fail("the page did not show the new events")
            time.sleep(0.5)
        print(f"ok   without a reload the page shows the new events ({len(grown)} cities grew, "
              f"{page['updates']} updates) and still matches ClickHouse", flush=True)
        supply, _ = wait_until_supply_equal(browser, ch_url, database, supply_sql, "kosice", "after new events")
        if not supply["rows"][0]["highlighted"]:
            fail(f"kosice, riders waiting and no driver available, is not highlighted: {supply['rows'][0]}")
        print(f"ok   without a reload kosice (no driver available) moved to the top of the supply "
              f"table: {[r['city'] for r in supply['rows']]}", flush=True)
        check_hostile(browser, hostile, "after new events")

        browser.open(down_url)
        deadline = time.time() + 30
        while True:
            page = browser.js(READ_PAGE)
            if page["notice"] and "ClickHouse is not answering" in page["notice"]:
                break
            if time.time() > deadline:
                fail(f"no notice while ClickHouse is unreachable: {page}")
            time.sleep(0.3)
        print(f"ok   unreachable ClickHouse: notice shown: {page['notice'][:120]}", flush=True)
    finally:
        browser.close()


if __name__ == "__main__":
    main()
