"""Turn a bench run into bench/results/latest.{json,md,png} and the README's table."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"

# Load runs that had failed requests (transport errors or non-2xx answers), as
# "mode c=N: what failed". The load generator counts only 2xx answers as throughput (and in
# the latency); a run with any failure is flagged here, in the report, and the bench exits 1.
# Here, not in run.py: run.py runs as __main__, and bench.run would be a second copy.
FLAGGED: list[str] = []


def flag(note: str) -> None:
    FLAGGED.append(note)


def _f(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def markdown(r: Any) -> str:
    m = r.machine
    lines = [
        f"Run {m['when']}{' (quick)' if r.quick else ''} on {m['cores']} cores ({m['cpu']}), "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, "
        f"PostgreSQL {m['postgres']}, Kafka {m['kafka']}. Load generator, server, "
        "PostgreSQL and Kafka all share the machine.",
        "",
        f"**service/limit ratio: {r.limit_ratio():.2f}** · "
        f"**relay-inside ratio: {r.relay_inside_ratio():.2f}** · "
        f"**commit-to-publish p99 ms: {r.latency['p99_ms']:.1f}** "
        f"(at {r.latency['rate']}/s, {r.latency.get('basis', 'target')}) · "
        f"**relay/raw ratio: {r.relay_ratio():.2f}** · "
        f"service/pgbench on the service's exact SQL: {r.service_ratio():.2f}",
        "",
        *(
            [
                "**FLAGGED: load runs with failed requests (only 2xx answers are counted):** "
                + "; ".join(r.flagged),
                "",
            ]
            if getattr(r, "flagged", None)
            else []
        ),
        "PostgreSQL's limit, pgbench on the minimal registration transaction (nonce, "
        "customer, outbox row; one statement; no trigger): "
        + ", ".join(f"c={p['concurrency']}: {_f(p['tps'])} tx/s" for p in r.limit)
        + ".",
        "",
        "Relay process running vs not, same concurrency, alternating runs (req/s): "
        + "; ".join(f"{_f(wo)} without, {_f(w)} with" for wo, w in r.relay_pairs)
        + ".",
        "",
        "| registrations | concurrency | service req/s | p50 ms | p99 ms | p99.9 ms | errors "
        "| pgbench tx/s (same SQL) | service/pgbench |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for reg, pg in zip(r.registration, r.pgbench, strict=True):
        lines.append(
            f"| API only | {reg['concurrency']} | {_f(reg['rps'])} | {reg['p50_ms']:.1f} "
            f"| {reg['p99_ms']:.1f} | {reg['p999_ms']:.1f} | {reg['errors']} "
            f"| {_f(pg['tps'])} | {reg['rps'] / pg['tps']:.2f} |"
        )
    if r.one_worker:
        w = r.one_worker
        lines.append(
            f"| API only, `--workers 1` | {w['concurrency']} | {_f(w['rps'])} | {w['p50_ms']:.1f} "
            f"| {w['p99_ms']:.1f} | {w['p999_ms']:.1f} | {w['errors']} | | |"
        )
    if r.with_relay:
        w = r.with_relay
        lines.append(
            f"| with the relay process | {w['concurrency']} | {_f(w['rps'])} | {w['p50_ms']:.1f} "
            f"| {w['p99_ms']:.1f} | {w['p999_ms']:.1f} | {w['errors']} | | |"
        )
    rel, lat = r.relay, r.latency
    lines += [
        "",
        "| relay | events/s |",
        "|---|---|",
        f"| raw aiokafka producer, same payloads and settings ({_f(rel['backlog'])} events) "
        f"| {_f(rel['raw_eps'])} |",
        f"| `xcloud relay` draining {_f(rel['backlog'])} outbox rows | {_f(rel['relay_eps'])} |",
    ]
    for label, eps in r.relay_growth.items():
        lines.append(f"| relay with 1,000,000 published rows {label} | {_f(eps)} |")
    lines += [
        "",
        f"Commit-to-publish (outbox insert to broker acknowledgement) at a steady "
        f"{lat['rate']} registrations/s (achieved {_f(lat['achieved_rps'])}/s, "
        f"{_f(lat['events'])} events, {lat['errors']} errors): "
        f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms; "
        f"API p99 {lat['api_p99_ms']:.1f} ms. "
        + (
            f"Nearly idle ({r.latency_idle['rate']}/s): p50 {r.latency_idle['p50_ms']:.1f} ms, "
            f"p99 {r.latency_idle['p99_ms']:.1f} ms."
            if r.latency_idle
            else ""
        ),
        "",
        "| customers | register req/s (c=64) | GET one p50 / p99 ms | list page p50 / p99 ms "
        "| errors |",
        "|---|---|---|---|---|",
    ]
    for g in r.growth:
        lines.append(
            f"| {_f(g['customers'])} | {_f(g['register_rps'])} | {g['get_p50_ms']:.1f} / "
            f"{g['get_p99_ms']:.1f} | {g['list_p50_ms']:.1f} / {g['list_p99_ms']:.1f} "
            f"| {g['errors']} |"
        )
    return "\n".join(lines) + "\n"


def plot(r: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    levels = [str(x["concurrency"]) for x in r.registration]
    width = 0.38
    xs = range(len(levels))
    axes[0].bar(
        [x - width / 2 for x in xs], [x["rps"] for x in r.registration], width, label="xcloud serve"
    )
    axes[0].bar(
        [x + width / 2 for x in xs], [p["tps"] for p in r.pgbench], width, label="pgbench, same SQL"
    )
    axes[0].set_xticks(list(xs), levels)
    axes[0].set_xlabel("concurrency")
    axes[0].set_ylabel("registrations / s")
    axes[0].set_title(f"Registration (service/limit {r.limit_ratio():.2f})")
    axes[0].legend()

    names = ["raw producer", "xcloud relay"] + [f"relay, 1M {k}" for k in r.relay_growth]
    values = [r.relay["raw_eps"], r.relay["relay_eps"], *r.relay_growth.values()]
    axes[1].bar(names, values, color=["gray", "tab:blue", "tab:cyan", "tab:cyan"][: len(names)])
    axes[1].set_ylabel("events / s")
    axes[1].set_title(f"Outbox to Kafka (ratio {r.relay_ratio():.2f})")
    axes[1].tick_params(axis="x", rotation=15)

    sizes = [g["customers"] for g in r.growth]
    axes[2].plot(sizes, [g["get_p99_ms"] for g in r.growth], marker="o", label="GET one p99")
    axes[2].plot(sizes, [g["list_p99_ms"] for g in r.growth], marker="o", label="list page p99")
    axes[2].set_xscale("log")
    axes[2].set_xlabel("customers in the table")
    axes[2].set_ylabel("ms")
    axes[2].set_title("Read latency as data grows")
    axes[2].legend()
    fig.suptitle(
        f"XCloud registry benchmarks, {r.machine['when']}"
        f"{' (quick)' if r.quick else ''}, {r.machine['cores']} cores"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(r: Any, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    name = "quick" if r.quick else "latest"
    table = markdown(r)
    (results / f"{name}.json").write_text(json.dumps(dataclasses.asdict(r), indent=2))
    (results / f"{name}.md").write_text(table)
    plot(r, results / f"{name}.png")
    if not r.quick:  # the README quotes full runs only
        readme = ROOT / "README.md"
        text = readme.read_text()
        block = f"{README_START}\n{table}{README_END}"
        if README_START in text:
            text = re.sub(
                re.escape(README_START) + ".*?" + re.escape(README_END),
                lambda _: block,
                text,
                flags=re.S,
            )
            readme.write_text(text)
