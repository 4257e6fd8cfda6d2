#!/usr/bin/env python3
"""Summarise a CUDA timeline written by TERN_CUDA_TIMELINE=path.

Each line of the file is one kernel launch: `label t_pre t_wait [phases [grid]]`
(launches beyond the device's records: `label - - - -`), device
global-timer nanoseconds taken by block 0's thread 0 when it reached
pdl_entry() and when its wait for the previous kernel returned; label =
"kernel gx x gy x gz threads", prefixed "G " for the first launch of each
replay of a captured decode graph and "g " for its other launches.

For the graph-replayed launches it prints, per label in step order:
  chain  t_wait(next) - t_wait(this): what the launch adds to the step
         (its own run plus the hand-off to the next kernel)
  early  t_wait - t_pre: how long block 0 sat resident before its wait
         returned (launched early under programmatic dependent launch)
and the median time from a step's last launch to the next step's first
(that launch's run, the read-back and the host's work between steps).
means in microseconds over all replays (a step's last launch, and chains
over 200 µs, are left out), and the median step. Kernels that time their
own phases (block.cu's decode block: five lengths packed in `phases`) get
a line of mean phase lengths. Usage: timeline.py FILE
"""
import sys
from collections import OrderedDict


def realign(recs, grids, extra=()):
    """Labels come from the host's launch order, records from the device.
    When a launch leaves no record the two drift apart; each record's own
    grid (5th column) shows where. Walk both: a label whose grid matches
    the record's names it; otherwise skip the fewest labels (at most 16)
    after which the next three grids match too; failing that the record is
    named "? <grid>". Says how many labels were skipped."""
    if not any(grids):
        return recs
    labels = [r[0] for r in recs] + list(extra)
    n = len(recs)

    def fits(li, ri):
        return li < len(labels) and ri < n and (not grids[ri] or labels[li].endswith(" " + grids[ri]))

    out = []
    j = skipped = unnamed = 0
    for i, (_, pre, wait, ph) in enumerate(recs):
        if not fits(j, i):
            d = next((d for d in range(1, 17) if all(fits(j + d + e, i + e) for e in range(3))), None)
            if d is None:
                unnamed += 1
                out.append(("? " + grids[i], pre, wait, ph))
                j += 1
                continue
            skipped += d
            j += d
        out.append((labels[j] if j < len(labels) else "? " + grids[i], pre, wait, ph))
        j += 1
    if skipped or unnamed:
        print(f"labels realigned to the records' grids: {skipped} labels without a record skipped, "
              f"{unnamed} records left unnamed")
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: timeline.py FILE")
    recs = []
    grids = []
    extra = []
    with open(sys.argv[1]) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 5 and parts[1] == "-":
                extra.append(parts[0])  # a launch's label beyond the records
            elif len(parts) in (3, 4, 5):
                ph = int(parts[3]) if len(parts) >= 4 else 0
                recs.append((parts[0], int(parts[1]), int(parts[2]), ph))
                grids.append(parts[4] if len(parts) == 5 else None)
    if not recs:
        sys.exit("no records")
    recs = realign(recs, grids, extra)
    stats = OrderedDict()
    phases = OrderedDict()
    starts = []
    gaps = []
    for i in range(len(recs) - 1):
        label, pre, wait, ph = recs[i]
        nlabel, _, nwait, _ = recs[i + 1]
        if label.startswith(("G ", "g ")) and nlabel.startswith("G "):
            # A step's last launch to the next step's first: that launch's
            # run, the read-back, and the host's work between the steps.
            gaps.append((nwait - wait, label[2:]))
        if ph:
            # Phases a kernel timed itself (block.cu: 5 × 12 bits, 8 ns units).
            p = phases.setdefault(label, [0, [0.0] * 5])
            p[0] += 1
            for k in range(5):
                p[1][k] += ((ph >> (12 * k)) & 4095) * 8
        if label.startswith("G "):
            starts.append(wait)
        elif not label.startswith("g "):
            continue
        if not nlabel.startswith("g "):
            continue
        chain = nwait - wait
        if not 0 <= chain <= 200_000:
            continue
        s = stats.setdefault(label, [0, 0.0, 0.0])
        s[0] += 1
        s[1] += chain
        s[2] += wait - pre
    steps = sorted(b - a for a, b in zip(starts, starts[1:]) if 0 < b - a < 100_000_000)
    nsteps = max(len(starts), 1)
    print(f"{len(recs)} launches, {len(starts)} graph replays")
    if steps:
        print(f"step (first kernel to first kernel): median {steps[len(steps) // 2] / 1e3:.1f} µs")
    gaps.sort()
    if gaps:
        g, last = gaps[len(gaps) // 2]
        print(f"last launch ({last}) to the next step's first: median {g / 1e3:.1f} µs")
    print(f"{'label':<40} {'n/step':>6} {'chain':>7} {'early':>7} {'µs/step':>8}")
    total = 0.0
    for label, (n, chain, early) in stats.items():
        per_step = chain / nsteps / 1e3
        total += per_step
        print(f"{label[2:]:<40} {n / nsteps:>6.1f} {chain / n / 1e3:>7.2f} {early / n / 1e3:>7.2f} {per_step:>8.1f}")
    print(f"{'sum of chains':<40} {'':>6} {'':>7} {'':>7} {total:>8.1f}")
    for label, (n, sums) in phases.items():
        each = " ".join(f"{v / n / 1e3:.2f}" for v in sums)
        print(f"{label[2:]}: phase lengths A-E (µs, mean of {n}): {each}")


if __name__ == "__main__":
    main()
