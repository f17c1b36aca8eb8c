"""`geeps lab`: the simulated hosts of a running `geeps run --lab` job.

    geeps lab status                       # running labs, their hosts and traffic
    geeps lab cut worker-1 [--for 5]       # cut a host's link (for 5 s, then restore)
    geeps lab restore worker-1
    geeps lab replace server-1             # the host lost for good; a fresh one takes its address
    geeps lab loss server-0 10             # drop 10% of the host's packets each way (0: none)
    geeps lab rate worker-0 50mbit         # a straggler by network (none: unshaped)
    geeps lab clean                        # remove what killed runs left behind

Every command takes --lab-id ID when more than one lab runs. Needs root, ip and tc
(and nft for loss).
"""
from __future__ import annotations

import argparse
import sys
import time

from geeps.lab import netns
from geeps.lab import topology as T

MAX_CUT_S = 3600.0      # a timed cut is a fault for a test or a demo, not a way to park a job


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geeps lab", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, text in (("status", "running labs, hosts and bytes moved"),
                       ("clean", "remove labs whose owner died, and stray links")):
        sub.add_parser(name, help=text)
    c = sub.add_parser("cut", help="cut a host's link")
    c.add_argument("host")
    c.add_argument("--for", dest="seconds", type=float, default=None,
                   help="restore the link after this many seconds (default: stay cut)")
    r = sub.add_parser("restore", help="bring a cut link back")
    r.add_argument("host")
    rp = sub.add_parser("replace", help="lose a host for good (its processes killed, its "
                                        "link deleted) and bring up a fresh one with its "
                                        "name and address")
    rp.add_argument("host")
    lo = sub.add_parser("loss", help="drop a percentage of a host's packets")
    lo.add_argument("host")
    lo.add_argument("percent")
    ra = sub.add_parser("rate", help="set a host's link rate both ways")
    ra.add_argument("host")
    ra.add_argument("rate", help="e.g. 50mbit, or none")
    for s in (c, r, rp, lo, ra):
        s.add_argument("--lab-id", default=None)
    sub.choices["status"].add_argument("--lab-id", default=None)
    return p


def _status(lab_id: str | None) -> int:
    found = [lab for owner, lab in netns.labs() if lab_id in (None, lab.id)]
    if not found:
        print("no lab is running")
        return 0
    for lab in found:
        link = lab.link.rate or "unshaped"
        print(f"lab {lab.id}: {len(lab.hosts)} hosts on {lab.bridge} ({link}, "
              f"{lab.link.loss:g}% loss); the launcher reaches them from {lab.gateway}")
        moved = netns.traffic(lab)
        for h in lab.hosts:
            t = moved.get(h.name, {})
            print(f"  {h.name:<12} {h.ip:<15} sent {t.get('sent', 0):>14,} B  "
                  f"received {t.get('received', 0):>14,} B")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.cmd == "status":
            return _status(args.lab_id)
        netns.check_tools()
        if args.cmd == "clean":
            removed = netns.clean()
            print("\n".join(f"removed {r}" for r in removed) or "nothing to remove")
            return 0
        lab = netns.find(args.lab_id)
        if args.cmd == "cut":
            if args.seconds is not None and not 0 < args.seconds <= MAX_CUT_S:
                raise T.LabSpecError(f"--for {args.seconds:g}: between 0 and {MAX_CUT_S:g} s")
            netns.cut(lab, args.host)
            if args.seconds is None:
                print(f"cut {args.host}'s link (geeps lab restore {args.host} brings it back)")
                return 0
            print(f"cut {args.host}'s link for {args.seconds:g} s", flush=True)
            try:
                time.sleep(args.seconds)    # the fault's length, not a synchronization
            finally:
                netns.restore(lab, args.host)
            print(f"restored {args.host}'s link")
        elif args.cmd == "restore":
            netns.restore(lab, args.host)
            print(f"restored {args.host}'s link")
        elif args.cmd == "replace":
            pids = netns.replace(lab, args.host)
            print(f"replaced {args.host}: the old host and its {len(pids)} processes are "
                  "gone; a fresh one has its address")
        elif args.cmd == "loss":
            netns.set_loss(lab, args.host, T.loss_percent(args.percent))
            print(f"{args.host} drops {T.loss_percent(args.percent):g}% of its packets each way")
        elif args.cmd == "rate":
            rate = None if args.rate.lower() == "none" else args.rate
            netns.set_rate(lab, args.host, rate)
            print(f"{args.host}'s link: {rate or 'unshaped'} each way")
        return 0
    except (netns.LabError, T.LabSpecError) as e:
        print(f"geeps lab: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
