#!/usr/bin/env python3
"""Latency percentiles against offered load, hubbub beside seed001, as an SVG.

    scripts/latency_chart.py [--out docs/latency.svg] [--rates 2,5,10,20,40]

For each rate (messages/s per sender; 10 senders, 1,000 clients in one
room) runs `hubbub-load --scenario fanout` once against a fresh hubbub
and a fresh seed001 (alternating), then draws p50/p99 latency against
deliveries/s. Expects target/release/{hubbub,hubbub-load} and /tmp/peers
(scripts/bench.py builds them). Loopback only, bounded runs.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (same directory)

COLORS = {"hubbub": "#1f77b4", "seed001": "#d62728"}


def sweep(rates):
    points = {"hubbub": [], "seed001": []}
    for rate in rates:
        args = ["--scenario", "fanout", "--clients", "1000", "--rooms", "1", "--senders", "10",
                "--rate", str(rate), "--duration", "4"]
        for server in points:
            r = bench.run_one(server, "room", args)
            lat = r.get("latency") or {}
            print(f"rate {rate}/s/sender {server}: {r.get('deliveries_per_s')} deliveries/s "
                  f"p50 {lat.get('p50')} p99 {lat.get('p99')} µs, closed {r.get('server_closed')}",
                  file=sys.stderr, flush=True)
            if lat.get("p99") is not None:
                # x = offered deliveries/s: an overloaded server delivers
                # less than offered, which would fold its line back.
                points[server].append((rate * 10 * 1000, lat["p50"] / 1000, lat["p99"] / 1000))
    return points


def svg(points, path):
    w, h, left, bottom, top, right = 720, 420, 70, 50, 40, 150
    xs = [p[0] for ps in points.values() for p in ps] or [1]
    ys = [p[2] for ps in points.values() for p in ps] or [1]
    # Log latency axis: the seed server's tail spans three decades.
    xmax = max(xs) * 1.05
    lo, hi = 0, max(1, math.ceil(math.log10(max(ys))))
    sx = lambda x: left + (w - left - right) * x / xmax
    sy = lambda y: h - bottom - (h - top - bottom) * (math.log10(max(y, 1)) - lo) / (hi - lo)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">End-to-end latency against offered load</text>',
           f'<text x="{left}" y="34" font-size="11">1 room × 1,000 clients, 10 senders; loopback, 2 cores shared with the generator</text>',
           f'<line x1="{left}" y1="{h-bottom}" x2="{w-right}" y2="{h-bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h-bottom}" stroke="black"/>',
           f'<text x="{(left + w - right) / 2}" y="{h-12}" text-anchor="middle">offered deliveries per second</text>',
           f'<text x="16" y="{(top + h - bottom) / 2}" transform="rotate(-90 16 {(top + h - bottom) / 2})" text-anchor="middle">latency (ms, log scale)</text>']
    for i in range(6):
        x = xmax * i / 5
        out.append(f'<text x="{sx(x)}" y="{h-bottom+16}" text-anchor="middle">{x/1000:.0f}k</text>')
    for e in range(lo, hi + 1):
        y = 10 ** e
        out.append(f'<text x="{left-6}" y="{sy(y)+4}" text-anchor="end">{y:g}</text>')
        out.append(f'<line x1="{left}" y1="{sy(y)}" x2="{w-right}" y2="{sy(y)}" stroke="#eee"/>')
    legend_y = top + 10
    for server, ps in points.items():
        ps = sorted(ps)
        for idx, dash, label in ((1, "4 3", "p50"), (2, "", "p99")):
            pts = " ".join(f"{sx(p[0]):.1f},{sy(p[idx]):.1f}" for p in ps)
            out.append(f'<polyline points="{pts}" fill="none" stroke="{COLORS[server]}" stroke-width="2" stroke-dasharray="{dash}"/>')
            for p in ps:
                out.append(f'<circle cx="{sx(p[0]):.1f}" cy="{sy(p[idx]):.1f}" r="3" fill="{COLORS[server]}"/>')
            out.append(f'<line x1="{w-right+10}" y1="{legend_y}" x2="{w-right+40}" y2="{legend_y}" stroke="{COLORS[server]}" stroke-width="2" stroke-dasharray="{dash}"/>')
            out.append(f'<text x="{w-right+46}" y="{legend_y+4}">{server} {label}</text>')
            legend_y += 20
    out.append("</svg>")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(bench.ROOT, "docs/latency.svg"))
    ap.add_argument("--rates", default="2,5,10,20,40")
    ap.add_argument("--from-json", help="redraw from a saved sweep instead of running one")
    opts = ap.parse_args()
    rates = [int(r) for r in opts.rates.split(",") if r]
    if opts.from_json:
        with open(opts.from_json) as f:
            points = json.load(f)
        svg(points, opts.out)
        print(f"wrote {opts.out}")
        return
    points = sweep(rates)
    with open(os.path.splitext(opts.out)[0] + ".json", "w") as f:
        json.dump(points, f, indent=1)
    svg(points, opts.out)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
