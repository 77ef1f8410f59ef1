"""Turn a pytest-benchmark JSON file into the ratio tables of BENCHMARKS.md.

    python bench/report.py bench/csr.json

One table row per group; columns are each peer's median time and the ratio
peer_time / sparsenet_time (> 1 means sparsenet is faster), plus sparsenet's useful GFLOP/s.
"""
import collections
import json
import sys


def main(path):
    with open(path) as f:
        benchmarks = json.load(f)["benchmarks"]
    groups = collections.defaultdict(dict)
    flops = {}
    for b in benchmarks:
        peer = b["extra_info"].get("peer", b["param"])
        groups[b["group"]][peer] = b["stats"]["median"]
        if "useful_flop" in b["extra_info"]:
            flops[b["group"]] = b["extra_info"]["useful_flop"]
    peers = list(dict.fromkeys(p for g in groups.values() for p in g))
    head = ["group"] + [f"{p} ms" for p in peers] + ["sparsenet GFLOP/s"] + [f"{p}/ours" for p in peers if p != "sparsenet"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, times in groups.items():
        ours = times.get("sparsenet")
        row = [name] + [f"{times[p] * 1e3:.3f}" if p in times else "" for p in peers]
        row.append(f"{flops[name] / ours / 1e9:.1f}" if ours and name in flops else "")
        row += [f"{times[p] / ours:.2f}" if ours and p in times else "" for p in peers if p != "sparsenet"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
