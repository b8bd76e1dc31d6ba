#!/usr/bin/env python3
"""Helpers of bench/run.sh: read one load run's output, and print the final table.

  benchlib.py perfdhcp PERIOD FILE...  -> one tab-separated line of the step's figures
                                          (FIELDS), from one or more perfdhcp reports
  benchlib.py loadgen FILE              -> the same, from `hive-loadgen --json`
  benchlib.py report STEPS_TSV EXTRA_TSV -> the Markdown tables of the whole run
  benchlib.py timed CPU_FILE CMD [ARG...] -> runs CMD, then writes the CPU seconds (user +
                                          system) it used to CPU_FILE; exits with its status

Only the Python standard library, so the benchmark needs nothing beyond Debian's python3.
"""
import json
import re
import statistics
import sys

# What one load run yields, in this order.
FIELDS = [
    "offered",  # exchanges started per second (what the generator managed to send)
    "dora",  # completed DORA per second
    "incomplete",  # % of started exchanges without an ACK
    "do_avg", "do_max", "ra_avg", "ra_max",  # ms
    "started", "completed",
    "gen_cpu",  # CPU seconds the load generator process(es) used (user + system)
]


def perfdhcp_blocks(text):
    """The "key: number" lines of perfdhcp's two statistics blocks."""
    blocks = {}
    for name in ("DISCOVER-OFFER", "REQUEST-ACK"):
        head = "***Statistics for: %s***" % name
        vals = {}
        if head in text:
            body = text.split(head, 1)[1].split("***", 1)[0]
            for line in body.splitlines():
                if ":" not in line:
                    continue
                k, v = line.split(":", 1)
                num = re.match(r"\s*(-?[\d.]+)", v)
                if num:
                    vals[k.strip()] = float(num.group(1))
        blocks[name] = vals
    return blocks["DISCOVER-OFFER"], blocks["REQUEST-ACK"]


def parse_perfdhcp(texts, period):
    """perfdhcp's final reports (one per perfdhcp process of the step), added up.

    perfdhcp's own "Rate" divides by the run time plus the -W wait; DORA/s here is the ACKs
    received over the sending period, as for hive-loadgen. Delays: averages weighted by the
    replies received, maxima of the maxima."""
    started = completed = offers = 0.0
    do_sum = ra_sum = do_max = ra_max = 0.0
    for text in texts:
        do, ra = perfdhcp_blocks(text)
        started += do.get("sent packets", 0.0)
        completed += ra.get("received packets", 0.0)
        o = do.get("received packets", 0.0)
        a = ra.get("received packets", 0.0)
        offers += o
        do_sum += do.get("avg delay", 0.0) * o
        ra_sum += ra.get("avg delay", 0.0) * a
        do_max = max(do_max, do.get("max delay", 0.0))
        ra_max = max(ra_max, ra.get("max delay", 0.0))
    return {
        "started": started,
        "completed": completed,
        "offered": started / period,
        "dora": completed / period,
        "incomplete": (started - completed) * 100.0 / started if started else 100.0,
        "do_avg": do_sum / offers if offers else 0.0,
        "do_max": do_max,
        "ra_avg": ra_sum / completed if completed else 0.0,
        "ra_max": ra_max,
    }


def gen_cpu(paths):
    """CPU seconds written by `timed` next to each generator output (PATH.cpu), added up."""
    total = 0.0
    for path in paths:
        try:
            with open(path + ".cpu") as f:
                total += float(f.read().strip() or 0.0)
        except (OSError, ValueError):
            pass
    return total


def timed(cpu_file, argv):
    import resource
    import subprocess
    try:
        rc = subprocess.call(argv)
    except OSError as e:
        sys.stderr.write("benchlib.py timed: %s: %s\n" % (argv[0], e))
        rc = 127
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(cpu_file, "w") as f:
        f.write("%.3f\n" % (u.ru_utime + u.ru_stime))
    return rc


def parse_loadgen(text):
    j = json.loads(text.strip().splitlines()[-1])
    return {
        "offered": j["offered_per_s"],
        "dora": j["dora_per_s"],
        "incomplete": j["incomplete_pct"],
        "do_avg": j["discover_offer_ms"]["avg"],
        "do_max": j["discover_offer_ms"]["max"],
        "ra_avg": j["request_ack_ms"]["avg"],
        "ra_max": j["request_ack_ms"]["max"],
        "started": j["started"],
        "completed": j["completed"],
    }


def emit(d):
    print("\t".join("%.4f" % float(d[k]) for k in FIELDS))


def read_tsv(path):
    rows = []
    with open(path) as f:
        head = f.readline().rstrip("\n").split("\t")
        for line in f:
            if line.strip():
                rows.append(dict(zip(head, line.rstrip("\n").split("\t"))))
    return rows


def fmt(x, nd=0):
    if x is None:
        return "-"
    return ("{:,.%df}" % nd).format(x)


def paired_ratios(res, names):
    """Each ratio round by round, and their median. The rounds are interleaved (bench/run.sh):
    round n of two servers ran minutes apart, in the same phase of the machine, so a ratio of
    one round's figures is less exposed to the machine's drift than the ratio of two medians."""
    pairs = [("hive3", "hive1", "3 nodes / 1 node"),
             ("hive1", "kea-memfile", "1 node / Kea memfile"),
             ("hive1", "kea-pgsql", "1 node / Kea PostgreSQL")]
    lines = []
    for a, b, label in pairs:
        if a not in res or b not in res or len(res[a]["maxes"]) != len(res[b]["maxes"]):
            continue
        per = [x / y for x, y in zip(res[a]["maxes"], res[b]["maxes"]) if y > 0]
        if per:
            lines.append("| %s | %.2f | %s |" % (label, statistics.median(per),
                                                   " / ".join("%.2f" % v for v in per)))
    if lines:
        print("Ratios of the maxima round by round (round n of each server ran in the same "
              "pass over the servers):\n")
        print("| ratio | median of the rounds | rounds |")
        print("|---|---|---|")
        print("\n".join(lines))
        print()


def report(steps_path, extra_path, period=5.0):
    steps = read_tsv(steps_path)
    extra = {(r["server"], r["tool"]): r for r in read_tsv(extra_path)}
    order = ["hive1", "hive3", "kea-memfile", "kea-pgsql", "kea-capped"]
    names = {"hive1": "hive, 1 node", "hive3": "hive, 3 nodes", "kea-memfile": "Kea memfile",
             "kea-pgsql": "Kea PostgreSQL", "kea-capped": "Kea memfile, CPU capped"}
    tools = []
    for r in steps:
        if r["tool"] not in tools:
            tools.append(r["tool"])
    for tool in tools:
        res = {}
        for server in order:
            rows = [r for r in steps if r["server"] == server and r["tool"] == tool and r["kind"] == "search"]
            if not rows:
                continue
            rounds = sorted({int(r["round"]) for r in rows})
            maxes, best_rows, genbound = [], [], False
            for rd in rounds:
                passing = [r for r in rows if int(r["round"]) == rd and r["pass"] == "1"]
                if any(r["pass"] == "gen" for r in rows if int(r["round"]) == rd):
                    genbound = True
                if passing:
                    b = max(passing, key=lambda r: float(r["rate"]))
                    maxes.append(float(b["rate"]))
                    best_rows.append(b)
                else:
                    maxes.append(0.0)
            med = statistics.median(maxes)
            # Figures of the round(s) whose maximum is the median one.
            at = [r for r in best_rows if float(r["rate"]) == med] or best_rows

            def m(key, rows_=at):
                vals = [float(r[key]) for r in rows_ if r.get(key) not in (None, "", "-")]
                return statistics.median(vals) if vals else None

            dora = m("dora")
            cpu_node = m("cpu_node_s")
            cpu_all = m("cpu_server_s")
            cpu_core = m("cpu_core_s")
            ev = m("evalsha")
            cmds = m("commands")
            done = m("completed")
            x = extra.get((server, tool), {})
            drops = m("rcvbuf_drops")
            res[server] = {
                "drops": drops,
                "max": med, "maxes": maxes, "gen": genbound, "dora": dora,
                "inc": m("incomplete"), "do_avg": m("do_avg"), "do_max": m("do_max"),
                "ra_avg": m("ra_avg"), "ra_max": m("ra_max"),
                "cpu_node": cpu_node * 1000.0 / done if cpu_node is not None and done else None,
                "cpu_all": cpu_all * 1000.0 / done if cpu_all is not None and done else None,
                "cpu_core": cpu_core * 1000.0 / done if cpu_core is not None and done else None,
                "evalsha": ev / done if ev is not None and done and server.startswith("hive") else None,
                "cmds": cmds / done if cmds is not None and done and server.startswith("hive") else None,
                "half_do": float(x["half_do_avg"]) if x.get("half_do_avg") not in (None, "", "-") else None,
                "rss": float(x["rss_mib"]) if x.get("rss_mib") not in (None, "", "-") else None,
                "leases": x.get("leases", "-"),
            }
        print("### Load generator: %s\n" % tool)
        print("| server | max DORA/s (median) | rounds | DORA/s at max | incomplete % | D-O avg / max ms "
              "| R-A avg / max ms | x Kea memfile | x Kea PostgreSQL | D-O avg at max/2 ms "
              "| node CPU s / 1000 DORA | server side CPU s / 1000 DORA "
              "| server core busy s / 1000 DORA | EVALSHA / DORA "
              "| Redis commands / DORA | peak RSS MiB (leases in store) | UDP buffer drops at max |")
        print("|" + "---|" * 17)
        base_m = res.get("kea-memfile", {}).get("max")
        base_p = res.get("kea-pgsql", {}).get("max")
        for server in order:
            if server not in res:
                continue
            r = res[server]
            ge = ">= " if r["gen"] else ""
            ratio = lambda b: "%.2f" % (r["max"] / b) if b else "-"
            print("| %s | %s%s | %s | %s | %s | %s / %s | %s / %s | %s | %s | %s | %s | %s | %s | %s | %s | %s (%s) | %s |" % (
                names[server], ge, fmt(r["max"]), " / ".join(fmt(v) for v in r["maxes"]), fmt(r["dora"]),
                fmt(r["inc"], 2), fmt(r["do_avg"], 2), fmt(r["do_max"], 1), fmt(r["ra_avg"], 2),
                fmt(r["ra_max"], 1), ratio(base_m), ratio(base_p), fmt(r["half_do"], 2),
                fmt(r["cpu_node"], 3), fmt(r["cpu_all"], 3), fmt(r["cpu_core"], 3),
                fmt(r["evalsha"], 2), fmt(r["cmds"], 1),
                fmt(r["rss"], 1), r["leases"], fmt(r["drops"])))
        print()
        if any(r["gen"] for r in res.values()):
            print("`>=`: the load generator could not send faster; the server's maximum is higher.\n")
        paired_ratios(res, names)
    # Validation: the two generators on Kea memfile, and on Kea memfile held to a share of its
    # core (kea-capped: its maximum then lies below perfdhcp's own), each that ran.
    for valid_on in [v for v in ("kea-memfile", "kea-capped") if any(r["server"] == v for r in steps)]:
        if len(tools) < 2:
            break
        vals = {}
        for tool in tools:
            rows = [r for r in steps if r["server"] == valid_on and r["tool"] == tool and r["kind"] == "search"]
            maxes = []
            for rd in sorted({int(r["round"]) for r in rows}):
                p = [float(r["rate"]) for r in rows if int(r["round"]) == rd and r["pass"] == "1"]
                maxes.append(max(p) if p else 0.0)
            if maxes:
                vals[tool] = statistics.median(maxes)
        if "perfdhcp" in vals and "loadgen" in vals and vals["perfdhcp"]:
            d = (vals["loadgen"] - vals["perfdhcp"]) * 100.0 / vals["perfdhcp"]
            print("### Validation on %s\n" % names[valid_on])
            print("perfdhcp max %s DORA/s, hive-loadgen max %s DORA/s: difference %+.1f %% (%s, target within ~10 %%)\n"
                  % (fmt(vals["perfdhcp"]), fmt(vals["loadgen"]), d, "ok" if abs(d) <= 10.0 else "NOT within 10 %"))
            # How busy each generator's core was in its first failing step: a generator near
            # 100 % found its own limit there, not Kea's.
            for tool in tools:
                fails = [r for r in steps if r["server"] == valid_on and r["tool"] == tool
                         and r["kind"] == "search" and r["pass"] != "1" and r.get("gen_cpu")]
                if fails:
                    r = min(fails, key=lambda r: float(r["rate"]))
                    busy = float(r["gen_cpu"]) * 100.0 / period if period else 0.0
                    print("%s's core in its first failed step on %s (%s/s): %.0f %% busy%s\n"
                          % (tool, names[valid_on], fmt(float(r["rate"])), busy,
                             " (the generator's own limit)" if busy >= 90.0 else ""))
    # The generators' own cost: CPU seconds per 1,000 DORA at each server's maximum. A
    # generator's cost per DORA falls as its rate rises (more datagrams per system call), so
    # what one core of it drives is judged at the highest rate it ran: 1,000 divided by its
    # CPU per 1,000 DORA on the server that took the most.
    gen, top = {}, {}
    for tool in tools:
        for server in order:
            rows = [r for r in steps if r["server"] == server and r["tool"] == tool
                    and r["kind"] == "search" and r["pass"] == "1" and r.get("gen_cpu")]
            if not rows:
                continue
            best = max(rows, key=lambda r: float(r["rate"]))
            done = float(best["completed"])
            cpu = float(best["gen_cpu"])
            if done and cpu:
                gen.setdefault(tool, {})[server] = cpu * 1000.0 / done
                if float(best["rate"]) > top.get(tool, (0.0, None))[0]:
                    top[tool] = (float(best["rate"]), server)
    if gen:
        print("### Load generators: CPU per 1,000 DORA at each server's maximum\n")
        print("| generator | " + " | ".join(names[s] for s in order)
              + " | DORA/s one core drives (at its highest rate) |")
        print("|" + "---|" * (len(order) + 2))
        cap = {}
        for tool in tools:
            per = gen.get(tool, {})
            if not per:
                continue
            cap[tool] = 1000.0 / per[top[tool][1]]
            print("| %s | %s | %s (%s, %s/s) |" % (tool, " | ".join(
                fmt(per.get(s), 3) + " s" if s in per else "-" for s in order), fmt(cap[tool]),
                names[top[tool][1]], fmt(top[tool][0])))
        print()
        if cap.get("perfdhcp") and cap.get("loadgen"):
            x = cap["loadgen"] / cap["perfdhcp"]
            print("hive-loadgen drives %.1fx what perfdhcp drives from one core (%s, target >= 3x).\n"
                  % (x, "ok" if x >= 3.0 else "NOT 3x"))


def main():
    cmd = sys.argv[1]
    if cmd in ("perfdhcp", "loadgen"):
        try:
            if cmd == "perfdhcp":
                texts = []
                for path in sys.argv[3:]:
                    with open(path) as f:
                        texts.append(f.read())
                d = parse_perfdhcp(texts, float(sys.argv[2]))
                d["gen_cpu"] = gen_cpu(sys.argv[3:])
            else:
                with open(sys.argv[2]) as f:
                    d = parse_loadgen(f.read())
                d["gen_cpu"] = gen_cpu(sys.argv[2:3])
        except (ValueError, KeyError, IndexError, AttributeError, OSError):
            d = {k: 0.0 for k in FIELDS}
            d["incomplete"] = 100.0
        emit(d)
    elif cmd == "timed" and len(sys.argv) > 3:
        sys.exit(timed(sys.argv[2], sys.argv[3:]))
    elif cmd == "report":
        report(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 5.0)
    else:
        sys.exit("usage: benchlib.py perfdhcp PERIOD FILE... | loadgen FILE | report STEPS EXTRA"
                 " | timed CPU_FILE CMD...")


if __name__ == "__main__":
    main()
