"""``mechscope serve`` at scale: page and API latency over a store of 10,000 runs and a dictionary
dashboard of 16,384 latents, measured against a real server on 127.0.0.1 in one run.

    python benchmarks/web.py [--runs 10000] [--latents 16384] [--requests 40] [--browser]

The runs are real run folders (a marker and a small JSON result each, registered through
``RunStore.register``); the dictionary is a ``features.jsonl`` of the size and shape ``mechscope
sae dashboard`` writes (10 top contexts and 12 quantile samples of 16 tokens, a 30-bin histogram,
10 promoted and 10 suppressed tokens, an explanation with a score, 8 nearest latents per latent),
with explanations drawn from a fixed vocabulary so a search word matches about 1% of them.
Latency: median and 95th percentile of ``--requests`` sequential requests over one keep-alive
connection (the session cookie set first). ``--browser`` also times full page loads (to the
``load`` event, scripts drawn) in Debian's headless Chromium. The target from issue 16: feature
search under ~100 ms on this machine.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mechscope.autointerp.backends.server import background_server, listen
from mechscope.files import MARKER
from mechscope.store import RunStore
from mechscope.web import Guard, create_app

TOKEN = "benchmark-token"
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fi")
KINDS = ("patch", "circuit", "explain", "diff", "audit", "sae dashboard", "trace", "probe")


def vocabulary(size: int, rng: random.Random) -> list[str]:
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def make_runs(root: Path, count: int, words: list[str], rng: random.Random) -> list[Path]:
    """``count`` finished run folders, each with a marker and a result that has a prompt."""
    folders = []
    for index in range(count):
        folder = root / f"run-{index:05d}"
        folder.mkdir(parents=True)
        prompt = " ".join(rng.choice(words) for _ in range(8))
        (folder / "result.json").write_text(json.dumps({"prompt": prompt, "scores": [rng.random() for _ in range(20)]}))
        marker = {"kind": rng.choice(KINDS), "outputs": ["result.json"], "complete": True,
                  "options": {"task": rng.choice(["ioi", "induction", "sentiment"]), "n": rng.randint(4, 64),
                              "seed": index, "model": "smollm2-135m-instruct"}}
        (folder / MARKER).write_text(json.dumps(marker))
        folders.append(folder)
    return folders


def make_dictionary(folder: Path, latents: int, words: list[str], rng: random.Random) -> None:
    """A dashboard run folder with a features.jsonl of ``latents`` latents."""
    folder.mkdir(parents=True)

    def window() -> dict:
        values = [round(rng.random(), 5) for _ in range(16)]
        return {"tokens": [" " + rng.choice(words) for _ in range(16)], "values": values, "at": 12}

    lines = [json.dumps({"format": "mechscope-features", "version": 1, "hook": "blocks.10.hook_resid_post",
                         "d_sae": latents, "architecture": "topk", "model": "smollm2-135m-instruct",
                         "contexts": 1024, "tokens_per_context": 127})]
    for latent in range(latents):
        edges = sorted(rng.random() * 10 for _ in range(31))
        explanation = f"{rng.choice(words)} and {rng.choice(words)} near {rng.choice(words)}"
        lines.append(json.dumps({
            "latent": latent, "density": round(rng.random() * 0.01, 6), "max_activation": round(rng.random() * 20, 4),
            "histogram": {"edges": edges, "counts": [rng.randint(0, 500) for _ in range(30)]},
            "top": [window() for _ in range(10)],
            "quantiles": [{"band": f"{q / 4:.2f}-{(q + 1) / 4:.2f} of max", "contexts": [window() for _ in range(3)]}
                          for q in range(4)],
            "promoted": [[rng.choice(words), round(rng.random(), 3)] for _ in range(10)],
            "suppressed": [[rng.choice(words), -round(rng.random(), 3)] for _ in range(10)],
            "explanation": {"text": explanation, "scores": {"detection": {"value": 0.7, "low": 0.6, "high": 0.8,
                                                                          "above_chance": True}}},
            "nearest": [{"latent": rng.randrange(latents), "cosine": round(rng.random(), 3)} for _ in range(8)]}))
    (folder / "features.jsonl").write_text("\n".join(lines) + "\n")
    marker = {"kind": "sae dashboard", "outputs": ["features.jsonl"], "complete": True,
              "options": {"latents": list(range(latents)), "sae": str(folder / "no-such-sae"), "contexts": 1024}}
    (folder / MARKER).write_text(json.dumps(marker))


def timed(client: httpx.Client, paths: list[str]) -> tuple[float, float]:
    """(median, 95th percentile) milliseconds of GET ``paths`` (each must answer 200)."""
    seconds = []
    for path in paths:
        started = time.perf_counter()
        response = client.get(path)
        seconds.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise SystemExit(f"{path} answered {response.status_code}: {response.text[:300]}")
    seconds.sort()
    return 1000 * statistics.median(seconds), 1000 * seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))]


def browser_loads(url: str, pages: dict[str, str], repeats: int) -> dict[str, float]:
    """Median milliseconds from navigation to the load event, per page, in headless Chromium."""
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("--browser needs Debian's chromium (apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]
    results = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=flags)
        page = browser.new_context(base_url=url).new_page()
        page.goto(f"/?token={TOKEN}")
        for name, path in pages.items():
            loads = []
            for _ in range(repeats):
                page.goto(path, wait_until="load")
                loads.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd"))
            results[name] = statistics.median(loads)
        browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--latents", type=int, default=16_384)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--browser", action="store_true", help="also time page loads in headless Chromium")
    args = parser.parse_args()
    rng = random.Random(0)
    words = vocabulary(300, rng)
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        started = time.perf_counter()
        folders = make_runs(root / "runs", args.runs, words, rng)
        make_dictionary(root / "dictionary", args.latents, words, rng)
        print(f"wrote {args.runs:,} run folders and a {args.latents:,}-latent features.jsonl "
              f"({(root / 'dictionary' / 'features.jsonl').stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        store_path = root / "runs.sqlite"
        with RunStore(store_path) as store:
            started = time.perf_counter()
            for folder in folders:
                store.register(folder)
            registered = time.perf_counter() - started
            started = time.perf_counter()
            dictionary = store.register(root / "dictionary")
            indexed = time.perf_counter() - started
        print(f"registered {args.runs:,} runs in {registered:.1f} s ({1000 * registered / args.runs:.2f} ms each); "
              f"indexed {args.latents:,} features in {indexed:.1f} s", flush=True)
        sock = listen("127.0.0.1", 0)
        guard = Guard.for_address("127.0.0.1", sock.getsockname()[1], token=TOKEN)
        n = args.requests
        latents = [rng.randrange(args.latents) for _ in range(n)]
        queries = [rng.choice(words) for _ in range(n)]
        with background_server(create_app(store_path, guard), sock=sock) as url:
            with httpx.Client(base_url=url, timeout=60) as client:
                client.get(f"/?token={TOKEN}")
                rows = [
                    ("runs page (100 newest of all)", ["/"] * n),
                    ("runs page, full-text search", [f"/?q={q}" for q in queries]),
                    ("API: runs search", [f"/api/runs?search={q}" for q in queries]),
                    ("run page", [f"/runs/{rng.randint(1, args.runs)}" for _ in range(n)]),
                    ("dictionary page (first 100 features)", [f"/runs/{dictionary.id}"] * n),
                    ("dictionary page, feature search", [f"/runs/{dictionary.id}?fq={q}" for q in queries]),
                    ("API: feature search", [f"/api/runs/{dictionary.id}/features?search={q}" for q in queries]),
                    ("API: feature search, prefix", [f"/api/runs/{dictionary.id}/features?search={q[:3]}*"
                                                     for q in queries]),
                    ("feature page", [f"/runs/{dictionary.id}/features/{i}" for i in latents]),
                    ("API: one feature", [f"/api/runs/{dictionary.id}/features/{i}" for i in latents]),
                ]
                for path in {path for _, paths in rows for path in paths[:1]}:
                    client.get(path)  # first touches (SQLite pages, the file's cache) are not the steady state
                print(f"\n{'request':40s} {'median ms':>10s} {'p95 ms':>8s}")
                measured = {}
                for name, paths in rows:
                    median, p95 = timed(client, paths)
                    measured[name] = median
                    print(f"{name:40s} {median:10.1f} {p95:8.1f}")
                target = measured["API: feature search"]
                print(f"\nfeature search over {args.latents:,} latents: median {target:.1f} ms "
                      f"({'under' if target < 100 else 'OVER'} the ~100 ms target)")
            if args.browser:
                loads = browser_loads(url, {"runs page": "/", "dictionary page": f"/runs/{dictionary.id}",
                                            "feature page (plotly histogram)":
                                                f"/runs/{dictionary.id}/features/{latents[0]}"}, max(3, n // 8))
                print(f"\n{'page load in Chromium (to the load event)':48s} {'median ms':>10s}")
                for name, milliseconds in loads.items():
                    print(f"{name:48s} {milliseconds:10.1f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
