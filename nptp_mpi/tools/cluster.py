"""A virtual cluster of boards on one Linux machine: network namespaces, a bridge and `tc` shaping.

    python -m nptp_mpi.tools.cluster up N [--rate 100mbit] [--delay 0] [--shared] [--cpu 0.5,0.5,1,1]
    python -m nptp_mpi.tools.cluster down
    python -m nptp_mpi.tools.cluster status
    python -m nptp_mpi.tools.cluster run [-n N] -- ARGS...      # python -m nptp_mpi ARGS on the boards

Needs root on Linux. Board K is network namespace `nptp-bK` with `lo` up and an `eth0` at 10.213.0.(K+1)/24,
whose other end `nptp-vK` is a port of bridge `nptp-br` (10.213.0.254) in the root namespace, where mpiexec
runs. Processes on a board run in their own UTS namespace with hostname `boardK`
(`hostfiles/launch-in-netns`, MPICH hydra's `-launcher-exec`), so a rank's `socket.gethostname()` is `boardK`.

Shaping (htb: one class at --rate; a netem child adds --delay where the kernel has netem):

* per-link (default), a switched LAN: every board's own egress (`eth0` in its namespace) is shaped at --rate and
  delayed by --delay, and the switch port towards it (`nptp-vK` egress) is shaped at --rate. Each board can send
  and receive at the full rate at once, concurrent transfers between disjoint pairs do not slow each other, a
  board receiving from two others shares its downlink; board-to-board round trip = 2 x delay.
* --shared, one Wi-Fi channel: an ingress filter on every switch port `nptp-vK` redirects each frame a board sends
  (data and ACKs alike) to one ifb device `nptp-air`, which is shaped at --rate (and delayed by --delay). All
  boards' transmissions thus queue in one FIFO and their sum is --rate, whoever sends to whomever: like
  stations sharing one half-duplex radio channel, where only one frame is on the air at a time and every
  station's airtime comes out of the same capacity. Round trip = 2 x delay.

--cpu F0,F1,...: board K's processes get at most FK of one core (cgroup v2 `cpu.max`, or cgroup v1
`cpu.cfs_quota_us` where only v1's cpu controller is mounted), in cgroup `nptp-cluster/bK`. The quota period
is 10 ms (longer only where the 1 ms minimum quota needs it), not the kernel's 100 ms: with 100 ms a board at
0.25 core ran 25 ms and then stood still for 75, so a layer's time depended on where in the period it fell
(32 ms of work at 0.25 core: 10-90% of chunk times 7.6-82 ms with 100 ms, 26-43 ms with 10 ms).
The shares may add up to at most the machine's cores (8 boards x 0.25 on 2 cores), so every board gets its
share. --mem M0,M1,... caps a board's memory (cgroup memory.max, or v1 memory.limit_in_bytes), like a 1 GB
or 2 GB board: a rank beyond it is killed by the kernel's OOM killer, as on the board.

`up` writes `hostfiles/virtual.txt` (MPICH hydra `address:1` lines) and /run/nptp-cluster/state.json. `down`
removes every namespace, link, qdisc and cgroup whose name has the cluster's prefixes, with or without the
state file (after a crash too), ending first the processes still running inside the boards. Ranks are kept
off shared memory (MPIR_CVAR_NOLOCAL=1, UCX_TLS=tcp) so that their bytes cross the shaped links.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOSTFILE = ROOT / "hostfiles" / "virtual.txt"
LAUNCHER = ROOT / "hostfiles" / "launch-in-netns"
STATE_DIR = Path(os.environ.get("NPTP_CLUSTER_STATE", "/run/nptp-cluster"))
STATE = STATE_DIR / "state.json"

BRIDGE = "nptp-br"
AIR = "nptp-air"
SUBNET = "10.213.0"  # private test range, only on our own bridge
BRIDGE_IP = f"{SUBNET}.254"
MAX_BOARDS = 200
NS_RE = re.compile(r"^nptp-b(\d+)$")
LINK_RE = re.compile(r"^nptp-(v\d+|br|air)$")
CGROUP_DIRS = (Path("/sys/fs/cgroup/nptp-cluster"), Path("/sys/fs/cgroup/cpu/nptp-cluster"),
               Path("/sys/fs/cgroup/memory/nptp-cluster"))
MIN_QUOTA_US, PERIOD_US = 1000, 10_000  # the kernel's minimum CFS quota; our period (see the module's text)
RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)$")
DELAY_RE = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)?$")
RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
DELAY_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, None: 1e-3}

# What keeps MPICH (ch4 with UCX or OFI) on TCP sockets through eth0 instead of shared memory.
MPI_ENV = {"MPIR_CVAR_NOLOCAL": "1", "UCX_TLS": "tcp", "FI_PROVIDER": "tcp"}


class ClusterError(Exception):
    """A failure to report in one line (exit code 2)."""


def ns_name(k: int) -> str:
    return f"nptp-b{k}"


def port_name(k: int) -> str:
    return f"nptp-v{k}"


def board_ip(k: int) -> str:
    return f"{SUBNET}.{k + 1}"


def unsupported_reason() -> str | None:
    """Why this machine cannot host the virtual cluster, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "the virtual cluster needs Linux (network namespaces)"
    if os.geteuid() != 0:
        return "the virtual cluster needs root (network namespaces, bridges, tc)"
    for tool in ("ip", "tc", "unshare"):
        if not shutil.which(tool):
            return f"the virtual cluster needs '{tool}' (iproute2 / util-linux), not found on PATH"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces"
    try:
        mpiexec_path()
    except ClusterError as e:
        return str(e)
    return None


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise ClusterError(f"'{' '.join(cmd)}' failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
    return p


def parse_rate(text: str) -> float:
    m = RATE_RE.match(text.strip().lower())
    if not m or float(m[1]) <= 0:
        raise ClusterError(f"--rate {text!r}: give a positive rate like 100mbit, 54mbit, 500kbit or 1gbit")
    return float(m[1]) * RATE_UNITS[m[2]]


def parse_delay(text: str) -> float:
    m = DELAY_RE.match(text.strip().lower())
    if not m:
        raise ClusterError(f"--delay {text!r}: give a delay like 0, 1ms, 500us")
    return float(m[1]) * DELAY_UNITS[m[2]]


def parse_cpu(text: str | None, n: int) -> list[float] | None:
    if text is None:
        return None
    try:
        fracs = [float(x) for x in text.split(",")]
    except ValueError:
        raise ClusterError(f"--cpu {text!r}: give one fraction of a core per board, e.g. 0.5,1") from None
    if len(fracs) == 1:
        fracs *= n
    if len(fracs) != n or any(not 0.01 <= f <= 64 for f in fracs):
        raise ClusterError(f"--cpu {text!r}: give {n} fractions of a core between 0.01 and 64 (or one for all)")
    cores = os.cpu_count() or 1
    if sum(fracs) > cores + 1e-9:
        raise ClusterError(f"--cpu {text!r}: the boards' shares add up to {sum(fracs):g} cores, more than this "
                           f"machine's {cores}; they would not all get their share")
    return fracs


def period_us(frac: float) -> int:
    """The CFS period for a share of a core: PERIOD_US, longer only where the quota would fall below 1 ms."""
    return max(PERIOD_US, -(-MIN_QUOTA_US * 1000 // round(frac * 1000)))


MEM_RE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)b?$")


def parse_mem(text: str | None, n: int) -> list[int] | None:
    """--mem 1g or 512m,1g,…: bytes per board (one value: all boards), at least 64 MB."""
    if text is None:
        return None
    sizes = []
    for part in text.lower().split(","):
        m = MEM_RE.match(part.strip())
        if not m:
            raise ClusterError(f"--mem {text!r}: give sizes like 1g or 512m, one per board (or one for all)")
        sizes.append(int(float(m[1]) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m[2]]))
    sizes = sizes * n if len(sizes) == 1 else sizes
    if len(sizes) != n or min(sizes) < 64 << 20:
        raise ClusterError(f"--mem {text!r}: give {n} sizes of at least 64m (or one for all)")
    return sizes


# --- discovery -----------------------------------------------------------------------------------------


def namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted((n for n in names if NS_RE.match(n)), key=lambda n: int(NS_RE.match(n)[1]))


def links() -> list[str]:
    out = sh("ip", "-o", "link", "show", check=False).stdout
    found = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@", 1)[0]
            if LINK_RE.match(name):
                found.append(name)
    return found


def cgroups() -> list[Path]:
    return [d for d in CGROUP_DIRS if d.is_dir()]


def read_state() -> dict | None:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return None


# --- cgroups --------------------------------------------------------------------------------------------


V1_PROBE = {"cpu": "cpu.cfs_quota_us", "memory": "memory.limit_in_bytes"}
FLAG = {"cpu": "--cpu", "memory": "--mem"}


def cgroup_root(controller: str = "cpu") -> tuple[str, Path]:
    """('v2', /sys/fs/cgroup) or ('v1', /sys/fs/cgroup/<controller>), whichever has that controller writable."""
    v2 = Path("/sys/fs/cgroup")
    try:
        if controller in (v2 / "cgroup.controllers").read_text().split() and os.access(v2, os.W_OK):
            return "v2", v2
    except OSError:
        pass
    v1 = v2 / controller
    if (v1 / V1_PROBE[controller]).exists() and os.access(v1, os.W_OK):
        return "v1", v1
    raise ClusterError(f"{FLAG[controller]} needs a writable cgroup {controller} controller (cgroup v2, or v1's "
                       f"{V1_PROBE[controller]} under /sys/fs/cgroup), not available here")


def limit_files(controller: str, kind: str, limit: float) -> list[tuple[str, str]]:
    """The files that set one board's limit, in the order to write them."""
    if controller == "memory":
        return [("memory.max" if kind == "v2" else "memory.limit_in_bytes", str(int(limit)))]
    period = period_us(limit)
    quota = max(MIN_QUOTA_US, round(limit * period))
    return [("cpu.max", f"{quota} {period}")] if kind == "v2" else \
        [("cpu.cfs_period_us", str(period)), ("cpu.cfs_quota_us", str(quota))]


def make_cgroups(controller: str, limits: list[float]) -> str:
    """A cgroup nptp-cluster/bK per board with its limit (cpu: a fraction of a core; memory: bytes)."""
    kind, base = cgroup_root(controller)
    top = base / "nptp-cluster"
    try:
        top.mkdir(exist_ok=True)
        for d in (base, top) if kind == "v2" else ():
            if controller not in (d / "cgroup.subtree_control").read_text().split():
                (d / "cgroup.subtree_control").write_text(f"+{controller}")
        for k, limit in enumerate(limits):
            d = top / f"b{k}"
            d.mkdir(exist_ok=True)
            for name, value in limit_files(controller, kind, limit):
                (d / name).write_text(value)
    except OSError as e:
        raise ClusterError(f"{FLAG[controller]}: cannot set up cgroup {top} ({e.strerror or e})") from None
    return f"{kind}:{top}"


def remove_cgroup(top: Path) -> None:
    for d in sorted((p for p in top.iterdir() if p.is_dir()), reverse=True):
        kill_pids(int(x) for x in (d / "cgroup.procs").read_text().split())
        d.rmdir()
    top.rmdir()


def kill_pids(pids) -> None:
    pids = [p for p in pids if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.05)
        if not pids:
            return


# --- up / down ------------------------------------------------------------------------------------------


def shape(ns: str | None, dev: str, rate_bits: float, delay_s: float) -> None:
    """htb at rate on dev's egress (inside namespace ns, or in the root one), netem delay under it if asked."""
    pre = ("ip", "netns", "exec", ns) if ns else ()
    rate = f"{int(rate_bits)}bit"
    sh(*pre, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1")
    sh(*pre, "tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", rate, "ceil", rate,
       "quantum", "60000")
    if delay_s > 0:
        p = sh(*pre, "tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "netem", "delay",
               f"{delay_s * 1e6:.0f}us", "limit", "100000", check=False)
        if p.returncode != 0:
            if "unknown" in p.stderr.lower():
                raise ClusterError("--delay needs the kernel's netem qdisc (CONFIG_NET_SCH_NETEM), which this "
                                   "kernel lacks; use --delay 0")
            raise ClusterError(f"tc netem on {dev}: {p.stderr.strip()}")


def up(n: int, rate: str, delay: str, shared: bool, cpu: str | None, mem: str | None = None) -> dict:
    if not 1 <= n <= MAX_BOARDS:
        raise ClusterError(f"up N: N must be between 1 and {MAX_BOARDS}, not {n}")
    rate_bits, delay_s = parse_rate(rate), parse_delay(delay)
    fracs, sizes = parse_cpu(cpu, n), parse_mem(mem, n)
    if fracs is not None:
        cgroup_root("cpu")  # fail before building anything
    if sizes is not None:
        cgroup_root("memory")
    down(quiet=True)
    try:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        if shared:
            sh("ip", "link", "add", AIR, "type", "ifb")
            sh("ip", "link", "set", AIR, "up")
            shape(None, AIR, rate_bits, delay_s)
        for k in range(n):
            ns, port = ns_name(k), port_name(k)
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", port, "master", BRIDGE, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{board_ip(k)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            if shared:
                sh("tc", "qdisc", "add", "dev", port, "handle", "ffff:", "ingress")
                sh("tc", "filter", "add", "dev", port, "parent", "ffff:", "protocol", "all", "u32", "match", "u32",
                   "0", "0", "action", "mirred", "egress", "redirect", "dev", AIR)
            else:
                shape(ns, "eth0", rate_bits, delay_s)
                shape(None, port, rate_bits, 0)
        cg = make_cgroups("cpu", fracs) if fracs is not None else None
        mem_cg = make_cgroups("memory", sizes) if sizes is not None else None
        state = {"boards": [{"board": k, "host": f"board{k}", "namespace": ns_name(k), "address": board_ip(k),
                             "port": port_name(k), "cpu": fracs[k] if fracs else None,
                             "mem_bytes": sizes[k] if sizes else None} for k in range(n)],
                 "bridge": BRIDGE, "bridge_address": BRIDGE_IP, "rate": rate, "rate_bits": rate_bits,
                 "delay": delay, "delay_s": delay_s, "mode": "shared" if shared else "per-link", "cgroup": cg,
                 "memory_cgroup": mem_cg}
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = STATE.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(STATE)
        lines = ["# Virtual boards of `python -m nptp_mpi.tools.cluster up` (generated; MPICH hydra host:slots).\n"]
        lines += [f"{board_ip(k)}:1\n" for k in range(n)]
        tmp = HOSTFILE.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        tmp.replace(HOSTFILE)
        return state
    except BaseException:
        down(quiet=True)
        raise


def down(quiet: bool = False) -> list[str]:
    """Remove everything with the cluster's names, found by prefix (state file or not); returns what went."""
    removed = []
    for ns in namespaces():
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        kill_pids(int(p) for p in pids)
        sh("ip", "netns", "del", ns, check=False)
        removed.append(ns)
    for link in links():
        sh("ip", "link", "del", link, check=False)
        removed.append(link)
    for top in cgroups():
        try:
            remove_cgroup(top)
            removed.append(str(top))
        except OSError as e:
            if not quiet:
                print(f"cluster: could not remove cgroup {top}: {e.strerror or e}", file=sys.stderr)
    for f in (STATE, HOSTFILE):
        f.unlink(missing_ok=True)
    left = namespaces() + links()
    if left:
        raise ClusterError(f"down: could not remove {', '.join(left)}")
    return removed


def status() -> str:
    state = read_state()
    ns_now, links_now, cg_now = namespaces(), links(), cgroups()
    out = []
    if state:
        out.append(f"cluster: {len(state['boards'])} boards, rate {state['rate']}, delay {state['delay']}, "
                   f"{state['mode']}, bridge {state['bridge']} {state['bridge_address']}, hostfile {HOSTFILE}")
        for b in state["boards"]:
            cpu = f"{b['cpu']:g} core" if b["cpu"] is not None else "no cpu limit"
            mem = f"{b['mem_bytes'] / (1 << 20):.0f} MB" if b.get("mem_bytes") else "no memory limit"
            there = "up" if b["namespace"] in ns_now else "MISSING"
            out.append(f"  {b['host']:8} {b['address']:12} {b['namespace']:9} {cpu:14} {mem:16} {there}")
        known = {b["namespace"] for b in state["boards"]}
        stray = [n for n in ns_now if n not in known]
        if stray:
            out.append(f"  not in the state file: {', '.join(stray)} (./run.sh cluster down removes them)")
    elif ns_now or links_now or cg_now:
        out.append("cluster: no state file, but leftovers exist: "
                   + ", ".join(ns_now + links_now + [str(c) for c in cg_now]) + " (./run.sh cluster down removes them)")
    else:
        out.append("cluster: down (no namespaces, links or cgroups)")
    return "\n".join(out)


# --- launching ------------------------------------------------------------------------------------------


def mpiexec_path() -> str:
    """The launcher (tools.launcher), which must be MPICH's hydra: boards are entered with its -launcher-exec."""
    from nptp_mpi.tools.launcher import LauncherError, find

    try:
        launcher = find()
    except LauncherError as e:
        raise ClusterError(str(e)) from None
    if launcher.kind != "mpich":
        raise ClusterError(f"{launcher.describe()} is not MPICH's hydra; the virtual cluster launches with hydra only")
    return launcher.path


def launch_command(cmd: list[str], n: int | None = None) -> tuple[list[str], dict]:
    """(argv, env) of mpiexec running cmd on n ranks (default: one per board) across the boards."""
    state = read_state()
    if not state or not HOSTFILE.exists() or not all(b["namespace"] in namespaces() for b in state["boards"]):
        raise ClusterError("the virtual cluster is not up: ./run.sh cluster up N")
    n = n or len(state["boards"])
    argv = [mpiexec_path(), "-launcher", "ssh", "-launcher-exec", str(LAUNCHER), "-iface", BRIDGE,
            "-f", str(HOSTFILE), "-n", str(n), *cmd]
    env = {**os.environ, **MPI_ENV}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env.setdefault(var, "1")
    return argv, env


def run(n: int | None, args: list[str]) -> int:
    argv, env = launch_command([sys.executable, "-m", "nptp_mpi", *args], n)
    sys.stdout.flush()
    return subprocess.run(argv, env=env).returncode


# --- command line ---------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ClusterError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m nptp_mpi.tools.cluster", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    u = sub.add_parser("up", help="create N boards (tears down an existing cluster first)")
    u.add_argument("n", type=int)
    u.add_argument("--rate", default="100mbit", help="link rate, tc syntax (default 100mbit)")
    u.add_argument("--delay", default="0", help="one-way delay per hop, e.g. 1ms (default 0; needs netem)")
    u.add_argument("--shared", action="store_true", help="one shaped bottleneck for all boards (Wi-Fi)")
    u.add_argument("--cpu", help="fraction of a core per board, e.g. 0.5,0.5,1,1 (one value: all boards); "
                   "they may add up to the machine's cores")
    u.add_argument("--mem", help="memory per board, e.g. 1g or 1g,2g (one value: all boards)")
    sub.add_parser("down", help="remove every board, link, qdisc and cgroup of the cluster")
    sub.add_parser("status", help="boards, addresses, shaping, cpu quotas")
    r = sub.add_parser("run", help="python -m nptp_mpi ARGS on the boards: run [-n N] -- ARGS")
    r.add_argument("-n", "-np", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if argv[:1] == ["run"]:
        if "--" in argv:
            i = argv.index("--")
            argv, rest = argv[:i], argv[i + 1:]
    try:
        if argv[:1] in (["-h"], ["--help"]) or not argv:
            parser().print_help()
            return 0 if argv else 2
        a = parser().parse_args(argv)
        why = unsupported_reason()
        if why:
            raise ClusterError(why)
        lock_dir = STATE_DIR if STATE_DIR.parent.exists() else Path("/tmp")
        lock_dir.mkdir(parents=True, exist_ok=True)
        if a.cmd == "run":
            if a.n is not None and a.n < 1:
                raise ClusterError("-n must be a positive number of ranks")
            return run(a.n, rest)
        with open(lock_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if a.cmd == "up":
                state = up(a.n, a.rate, a.delay, a.shared, a.cpu, a.mem)
                print(f"cluster: {len(state['boards'])} boards up ({state['mode']}, {a.rate}, delay {a.delay}); "
                      f"hostfile {HOSTFILE}")
            elif a.cmd == "down":
                removed = down()
                print(f"cluster: down (removed {len(removed)}: {', '.join(removed) or 'nothing'})")
            else:
                print(status())
        return 0
    except ClusterError as e:
        print(f"cluster: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
