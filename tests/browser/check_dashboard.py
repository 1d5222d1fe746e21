"""Drives headless Chromium (Debian's chromium + chromedriver, W3C WebDriver over plain HTTP)
against a running `ridepulse dashboard`, the way an ops engineer looks at it.

Usage: check_dashboard.py DASHBOARD_URL CLICKHOUSE_URL DATABASE SCREENSHOT SQL_FILE
                          DOWN_URL HOSTILE_CITY SUPPLY_SQL_FILE -- MORE_EVENTS_COMMAND...

1. Waits for live data on the page, then checks that every number of the "cities in the
   last hour" table equals what ClickHouse returns for SQL_FILE (the same city and window),
   and that the freshness shown is ClickHouse's now() minus its newest event time.
   HOSTILE_CITY (a city of some of the events: markup whose `onerror` sets window.__pwned)
   must appear as exactly that text in the table and in the chart legends, with no `img`,
   no `onerror` attribute and no window.__pwned coming out of it.
   The supply-and-demand table equals what ClickHouse returns for SUPPLY_SQL_FILE, row for
   row in its order (cities under pressure first); exactly the rows above the pressure
   threshold (or with riders waiting and no driver available) are highlighted; the pressure
   chart draws its threshold; HOSTILE_CITY is text there too.
2. Saves a screenshot to SCREENSHOT.
3. Runs MORE_EVENTS_COMMAND (which writes new events through the pipeline, and a newer
   supply row for kosice with no driver available) and, without reloading, waits until the
   page shows the new numbers (again equal to ClickHouse's) and kosice first in the supply
   table.
4. Opens DOWN_URL (a dashboard whose ClickHouse is unreachable) and checks the notice.
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
  charts: [...document.querySelectorAll('.chart svg path')].length,
  thresholdLines: document.querySelectorAll('#chart-cancel .threshold').length,
};
"""


# Where a data value can surface on the page, and whether any markup came out of one.
READ_HOSTILE = """
const city = arguments[0];
const row = [...document.querySelectorAll('#cities tbody tr')].find((tr) => tr.dataset.city === city);
const cell = row ? row.querySelector('td[data-col="city"]') : null;
const texts = [...document.querySelectorAll('.chart svg text')];
return {
  cell: cell ? cell.textContent : null,
  legends: texts.filter((t) => t.textContent === city).length,
  series: [...document.querySelectorAll('.chart svg path')].filter((p) => p.getAttribute('data-series') === city).length,
  pwned: typeof window.__pwned,
  images: document.querySelectorAll('img').length,
  handlers: document.querySelectorAll('[onerror]').length,
  chartChildren: [...document.querySelectorAll('.chart svg *')].filter((n) => n.namespaceURI !== 'http://www.w3.org/2000/svg').length,
};
"""


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
const series = (id) => document.querySelectorAll(`#${id} svg path`).length;
return {
  updates: Number(document.getElementById('updated').dataset.updates),
  rows,
  threshold: document.getElementById('pressure-threshold').textContent,
  pressureThresholdLines: document.querySelectorAll('#chart-pressure .threshold').length,
  series: {available: series('chart-available'), waiting: series('chart-waiting'), pressure: series('chart-pressure')},
  images: document.querySelectorAll('img').length,
};
"""


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
    dash_url, ch_url, database, screenshot, sql_file, down_url, hostile, supply_file = sys.argv[1:9]
    more_events = sys.argv[sys.argv.index("--") + 1:]
    sql = open(sql_file).read().strip().rstrip(";")
    supply_sql = open(supply_file).read().strip().rstrip(";")
    browser = Browser()
    try:
        browser.open(dash_url)
        page, expected = wait_until_equal(browser, ch_url, database, sql, 0, "first load")
        print(f"ok   page matches ClickHouse for {len(expected)} cities after {page['updates']} updates", flush=True)
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
        browser.screenshot(screenshot)
        print(f"ok   screenshot {screenshot}", flush=True)

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
