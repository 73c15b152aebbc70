#!/usr/bin/env python3
"""The benchmark driver behind ci/bench: starts every contestant on 127.0.0.1, runs the workloads
side by side in one run, stops what it started, prints a markdown table and writes it to
bench/results/.

Contestants: the module (splice, and transform_splice off), nginx static sendfile, nginx +
fcgiwrap (fastcgi_buffering on and off), nginx + uWSGI running a Python WSGI app, the standalone
splice and read/write relays, and the posix_spawn ceiling. Every one runs the same producer
(`transform-bench produce N`: vmsplice into its stdout pipe), one exec per request: fcgiwrap runs
it as a CGI program (under a name ending in .cgi it writes its own CGI header).

Workloads: W1 one 1 GiB stream; W2 small responses under wrk, and beside it, in the same rounds,
W2s: W2's program sandboxed (transform_sandbox_paths + transform_sandbox_syscalls default; with
transform_cgroup too when nginx accepts it; and, in a full run, each namespace of
transform_sandbox_namespaces); W3 a slow client (20 MB/s); W4 200 concurrent 16 MiB streams;
W5 W2 with a worker inflated to 1 GiB; W6 process once, serve forever:
(a) 100 identical cold requests at once for a program of ~100 ms writing 200 KiB (which counts its
runs in a file), on the module with transform_store + transform_lock behind try_files, the module
behind proxy_cache + proxy_cache_lock, and fcgiwrap behind fastcgi_cache + fastcgi_cache_lock,
each round in a fresh nginx (fresh store and caches) on fresh URLs, with one lone cold request of
each for reference; (b) the same URL again under wrk against nginx serving the same file
statically, and W1 with and without transform_store; W7 a response filter: /bin/cat over a
static file and over a proxied response, on the module's transform_filter, on Apache's
mod_ext_filter (Apache run by the driver with a configuration of its own) and on the ceiling
(transform_exec /bin/cat FILE): throughput, CPU per GiB with the cat's, and the worker's RSS under
a slow client; W8 a program kept alive: a 200x150 thumbnail of a 1 MB JPEG with PIL (the same
Python code everywhere, Debian's /usr/bin/python3 and python3-pil) under wrk, on the module's
transform_pool (examples/pool/transformer.py's loop), transform_exec (python3 per request), uWSGI
(a WSGI app) and fcgiwrap (a CGI per request), each behind an nginx of its own with one worker;
and 16 bytes from a pooled program (C, bench/pool16.c; and Python) against W2's program spawned
per request: requests/s, CPU per request, every contestant's responses checked first (a JPEG of
200x150, or the exact 16 bytes). Every load is bounded in time. Every workload counts errors;
the run exits with status 1 when a contestant erred. W1t: W1 over TLS 1.3, HTTP/1.1 and HTTP/2
(curl; one nginx with one worker, the module against a static file of the same size on the same
server: MB/s and the worker's CPU). W9: thousands of streams: (a) wrk's keep-alive connections
(50..2000) fetching 4 MiB streams on the module's two transports, nginx static and the standalone
relay-mt (a thread per connection, a program per request: the limit of spawning per request);
(b) slow clients (64 KiB/s) on the module's two transports and nginx proxy_pass to a static
nginx: worker RSS and kernel pipe memory per stream; a small request's p99 meanwhile in both.
`--only w8` (or any list of w1, w1t, w2..w9) runs some workloads only.

CPU: every server runs in a cgroup of its own (cgroup v2, or v1 cpuacct), whose counter includes
every process in it, also the children nobody reaps (fcgiwrap ignores SIGCHLD, so their time never
reaches its cutime); a self-check at start proves it. RSS: sampled over every process in the
contestant's cgroups (the /proc tree of its servers without cgroups).
"""

import argparse
import datetime
import glob
import hashlib
import json
import math
import os
import platform
import pwd
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target/release/transform-bench")
MODULE = os.path.join(ROOT, "target/release/libngx_http_transform_module.so")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
GIB = 1 << 30
MIB = 1 << 20
# The workloads, for --only (w6 is W6a and W6b).
WORKLOADS = ["w1", "w1t", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9"]
# wrk's connections in W2 and W5, and the spawns in flight of the posix_spawn ceiling.
WRK_CONNS = 8
# The environment of the backends (fcgiwrap, uWSGI), as a service manager (systemd) gives them.
SERVICE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def nginx_binary():
    found = sorted(glob.glob(os.path.join(ROOT, "target/release/build/nginx-sys-*/out/objs/nginx")))
    if not found:
        sys.exit("bench: no nginx binary under target/release (cargo build --release first)")
    return max(found, key=os.path.getmtime)


def tool(name):
    found = shutil.which(name) or shutil.which(name, path=SERVICE_ENV["PATH"])
    if not found:
        sys.exit(f"bench: {name} not found")
    return found


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=10.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- process accounting

def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def tree(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def own_cpu(pid):
    """The scheduler's run time of every thread of `pid` (seconds), None once it is gone."""
    own = 0.0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                own += int(f.read().split()[0]) / 1e9
    except OSError:
        return None
    return own


def cpu_times():
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def steal_since(before):
    """Percent of the machine's CPU time the hypervisor took since `before` (a shared VM's
    neighbours): a run with much of it is not comparable to others."""
    now = cpu_times()
    d = [b - a for a, b in zip(before, now)]
    return 100.0 * d[7] / max(sum(d), 1)


def rss_kib(pid):
    """Resident set size (the same figure as VmRSS), 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


def temp_bytes(pids, dirs):
    """Bytes in the files that `pids` hold open under `dirs`, or unlinked (nginx unlinks its
    temporary files at once, so only the open descriptors show them)."""
    total = 0
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                deleted = target.endswith(" (deleted)") and not target.startswith("/memfd:")
                if deleted or any(target.startswith(d + "/") for d in dirs):
                    total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
            except OSError:
                pass
    return total


# A process that ignores SIGCHLD, as fcgiwrap does, with children that burn CPU: the kernel reaps
# them itself, so their time never reaches the parent's cutime (printed); the cgroup must see it.
SELF_CHECK = """
import os, signal, sys, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
n, secs = int(sys.argv[1]), float(sys.argv[2])
for _ in range(n):
    if os.fork() == 0:
        end = time.process_time() + secs
        while time.process_time() < end:
            pass
        os._exit(0)
try:
    while True:
        os.wait()  # with SIGCHLD ignored: returns ECHILD once every child is gone
except ChildProcessError:
    pass
t = os.times()
print(t.children_user + t.children_system)
"""


class Cgroups:
    """A cgroup per server of the run, under a cgroup of the run's own (cgroup v2, or v1's
    cpuacct hierarchy), below the driver's own cgroup. A cgroup's CPU counter sums every process
    that ran in it, however it ended and whoever reaped it. Without a writable cgroup, `dir` is
    None: programs' CPU is then not reported, and processes are found by walking /proc."""

    def __init__(self, enabled=True):
        self.dir = self.method = self.counter = None
        self.groups = []
        self.check = None
        for method, base, counter in self.candidates() if enabled else ():
            d = os.path.join(base, f"transform-bench-{os.getpid()}")
            try:
                os.mkdir(d)
            except OSError as e:
                log(f"no {method} cgroup under {base}: {e}")
                continue
            self.dir, self.method, self.counter = d, method, counter
            try:
                check = self.self_check()
            except (OSError, ValueError, subprocess.SubprocessError) as e:
                check = {"error": str(e)}
            if check.get("cgroup_s", 0.0) >= 0.95 * check.get("burnt_s", 1.0):
                self.check = check
                log(f"CPU from {method} ({d}): self-check {self.check_text()}")
                return
            log(f"{method} cgroup failed its self-check ({check}): not used")
            self.cleanup()
            self.dir = self.method = self.counter = None
            self.groups = []
        log("no usable cgroup: programs' CPU is not reported")

    @staticmethod
    def candidates():
        mounts = []  # (filesystem type, root, mount point, super options)
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, right = line.split(" - ", 1)
                left, right = left.split(), right.split()
                mounts.append((right[0], left[3], left[4], right[2] if len(right) > 2 else ""))
        own = {}  # controllers ("" for cgroup v2) -> the driver's cgroup
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                own[controllers] = path

        def at(root, mount, path):
            if root != "/":
                if not (path + "/").startswith(root.rstrip("/") + "/"):
                    return None
                path = path[len(root.rstrip("/")):]
            d = os.path.join(mount, path.lstrip("/"))
            return d if os.path.isdir(d) else None

        out = []
        for fstype, root, mount, _ in mounts:
            if fstype == "cgroup2" and "" in own:
                d = at(root, mount, own[""])
                if d:
                    out.append(("cgroup v2 cpu.stat usage_usec", d, "cpu.stat"))
        for fstype, root, mount, opts in mounts:
            if fstype == "cgroup" and "cpuacct" in opts.split(","):
                for controllers, path in own.items():
                    if "cpuacct" in controllers.split(","):
                        d = at(root, mount, path)
                        if d:
                            out.append(("cgroup v1 cpuacct.usage", d, "cpuacct.usage"))
        return out

    def wrap(self, name, argv):
        """`argv`, started in cgroup `name` (a shell joins it, then execs `argv`)."""
        if not self.dir:
            return list(argv)
        d = os.path.join(self.dir, name)
        if name not in self.groups:
            os.makedirs(d, exist_ok=True)
            self.groups.append(name)
        join = 'echo $$ > "$0" && exec "$@"'
        return ["/bin/sh", "-c", join, os.path.join(d, "cgroup.procs"), *argv]

    def usage(self, name):
        """CPU seconds of every process that ever ran in cgroup `name`."""
        with open(os.path.join(self.dir, name, self.counter)) as f:
            text = f.read()
        if self.counter == "cpu.stat":
            for line in text.splitlines():
                key, value = line.split()
                if key == "usage_usec":
                    return int(value) / 1e6
            raise ValueError("no usage_usec in cpu.stat")
        return int(text) / 1e9

    def pids(self, name):
        try:
            with open(os.path.join(self.dir, name, "cgroup.procs")) as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def self_check(self):
        n, secs = 3, 0.1
        argv = self.wrap("self-check", [sys.executable, "-c", SELF_CHECK, str(n), str(secs)])
        before = self.usage("self-check")
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
        return {"burnt_s": n * secs, "parent_cutime_s": float(out),
                "cgroup_s": self.usage("self-check") - before}

    def check_text(self):
        c = self.check
        return (f"children burning {c['burnt_s']:.2f} s under a parent that ignores SIGCHLD: "
                f"{c['parent_cutime_s']:.2f} s in the parent's cutime, {c['cgroup_s']:.2f} s in "
                "the cgroup")

    def cleanup(self):
        """Kills by pid what is left in the run's cgroups (nothing, if every server stopped),
        then removes them."""
        if not self.dir:
            return
        for name in self.groups:
            end = time.time() + 10
            while True:
                left = self.pids(name)
                if not left:
                    break
                if time.time() > end:
                    log(f"cgroup {name}: processes {left} do not die")
                    break
                log(f"cgroup {name}: killing leftover processes {left}")
                for p in left:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
            try:
                os.rmdir(os.path.join(self.dir, name))
            except OSError as e:
                log(f"cgroup {name}: {e}")
        try:
            os.rmdir(self.dir)
        except OSError as e:
            log(f"cgroup {self.dir}: {e}")


class Measure:
    """CPU time and memory of one contestant over one load. Its processes are those in its
    servers' cgroups (nginx's, plus fcgiwrap's or uWSGI's; the relay's; without cgroups, the /proc
    trees of their top processes). The server processes are those that exist when the load starts
    (nginx's master and workers, fcgiwrap's and uWSGI's processes, the relay); the programs are
    all the others (the producers, and whatever forks them, from the fork on).

    - server CPU: the scheduler's run time of the server processes over the load;
    - programs' CPU: the growth of the cgroups' CPU counters, less the server CPU;
    - RSS: the summed RSS of the contestant's processes, sampled every 50 ms: its peak growth over
      the sum before the load, for the server processes and for all processes;
    - temporary files: the bytes the server processes hold in nginx's temporary directories."""

    INTERVAL = 0.05
    nice = None  # the sampling thread's

    def __init__(self, con, dirs=(), sample=True):
        self.con, self.dirs = con, dirs
        self.server = con.pids()
        self.own0 = {p: own_cpu(p) for p in self.server}
        self.total0 = con.cpu_total()
        self.base_rss = sum(rss_kib(p) for p in self.server)
        self.peak_server = self.peak_all = self.base_rss
        self.peak_temp = 0
        self.stop = threading.Event()
        self.thread = None
        if sample:
            self.thread = threading.Thread(target=self.run, daemon=True)
            self.thread.start()

    def run(self):
        # Under load the sampler competes with every process of the contestant: without a high
        # priority it would sample a long run more often than a short one.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -20)
            Measure.nice = -20
        except OSError:
            Measure.nice = os.getpriority(os.PRIO_PROCESS, 0)
        server = set(self.server)
        while not self.stop.is_set():
            rss = {p: rss_kib(p) for p in self.con.pids()}
            self.peak_server = max(self.peak_server,
                                   sum(v for p, v in rss.items() if p in server))
            self.peak_all = max(self.peak_all, sum(rss.values()))
            if self.dirs:
                self.peak_temp = max(self.peak_temp, temp_bytes(self.server, self.dirs))
            self.stop.wait(self.INTERVAL)

    def finish(self):
        self.stop.set()
        if self.thread:
            self.thread.join()
        server_cpu = 0.0
        for p in self.server:
            after = own_cpu(p)
            if after is not None and self.own0[p] is not None:
                server_cpu += after - self.own0[p]
        total = self.con.cpu_total()
        programs = None if total is None else max(total - self.total0 - server_cpu, 0.0)
        return {"server_cpu": server_cpu, "programs_cpu": programs,
                "server_rss_mib": (self.peak_server - self.base_rss) / 1024.0,
                "all_rss_mib": (self.peak_all - self.base_rss) / 1024.0,
                "peak_temp": self.peak_temp}


# ---------------------------------------------------------------- servers

class Servers:
    """Everything the run starts, each server in a cgroup of its own, stopped by pid at the end.

    Sizing, for every contestant alike: nginx runs one worker per online CPU, and so does uWSGI
    (processes, each with enough threads for the largest concurrency of the run); fcgiwrap serves
    one request per process, so it preforks as many processes as the largest concurrency of the
    run. nginx buffers fcgiwrap's and uWSGI's responses in 8 buffers of 64 KiB, as the module's
    buffered transport does. Every backend gets a service's environment (PATH only)."""

    def __init__(self, cgroups, concurrency):
        self.cg = cgroups
        self.dir = tempfile.mkdtemp(prefix="transform-bench-")
        os.chmod(self.dir, 0o755)  # nginx workers (nobody when started as root) read in it
        self.procs = []
        self.nginx = nginx_binary()
        self.nginx_prefixes = []
        self.workers = os.sysconf("SC_NPROCESSORS_ONLN")
        self.concurrency = concurrency
        self.fcgi_children = concurrency
        self.uwsgi_threads = math.ceil(concurrency / self.workers)

    def spawn(self, group, argv, env=None, **kw):
        p = subprocess.Popen(self.cg.wrap(group, argv), env=env, stdin=subprocess.DEVNULL,
                             start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self):
        # Each one leads a process group of its own (fcgiwrap's preforked processes, uWSGI's
        # workers): the whole group is stopped.
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            end = time.time() + 10
            while time.time() < end and group_alive(p.pid):
                time.sleep(0.05)
            if group_alive(p.pid):
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def config(self):
        return {"nginx_workers": self.workers, "fcgiwrap_processes": self.fcgi_children,
                "uwsgi_processes": self.workers, "uwsgi_threads": self.uwsgi_threads}

    def start_backends(self):
        d = self.dir
        # fcgiwrap runs the producer itself as the CGI program: under a name ending in .cgi it
        # writes its own CGI header, then the body (one exec per request, as for the module).
        self.cgi_program = os.path.join(d, "produce.cgi")
        os.symlink(BENCH, self.cgi_program)
        self.fcgi_sock = os.path.join(d, "fcgiwrap.sock")
        self.fcgiwrap = self.spawn(
            "fcgiwrap",
            [tool("fcgiwrap"), "-c", str(self.fcgi_children), "-s", "unix:" + self.fcgi_sock],
            env=SERVICE_ENV, stderr=subprocess.DEVNULL)
        # uWSGI running a WSGI app that spawns the producer and returns its stdout in 64 KiB reads.
        app = os.path.join(d, "app.py")
        with open(app, "w") as f:
            f.write(f"""import subprocess

def application(environ, start_response):
    p = subprocess.Popen([{BENCH!r}, "produce", environ.get("QUERY_STRING", "0")],
                         stdout=subprocess.PIPE, bufsize=0)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def body():
        try:
            while True:
                chunk = p.stdout.read(65536)
                if not chunk:
                    break
                yield chunk
        finally:
            p.stdout.close()
            p.wait()
    return body()
""")
        self.uwsgi_sock = os.path.join(d, "uwsgi.sock")
        self.uwsgi = self.spawn(
            "uwsgi",
            [tool("uwsgi"), "--plugin", "python3", "--socket", self.uwsgi_sock, "--wsgi-file", app,
             "--master", "--processes", str(self.workers), "--threads", str(self.uwsgi_threads),
             "--enable-threads", "--disable-logging", "--die-on-term", "--listen", "1024",
             "--chmod-socket=666"],
            env=SERVICE_ENV, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(d, "uwsgi.log"), "w"))
        # The standalone relays.
        self.relay_ports = {}
        for mode in ("splice", "rw"):
            port = free_port()
            self.relay_ports[mode] = port
            setattr(self, "relay_" + mode,
                    self.spawn("relay-" + mode,
                               [BENCH, "relay", str(port), mode, BENCH, "produce", "0"]))
        for port in self.relay_ports.values():
            wait_port(port)
        end = time.time() + 10
        while not (os.path.exists(self.fcgi_sock) and os.path.exists(self.uwsgi_sock)):
            if time.time() > end:
                raise RuntimeError("fcgiwrap or uwsgi did not start")
            time.sleep(0.05)
        os.chmod(self.fcgi_sock, 0o666)

    def start_nginx(self, name, inflate_mb=0):
        prefix = os.path.join(self.dir, name)
        os.makedirs(os.path.join(prefix, "logs"))
        html = os.path.join(prefix, "html")
        os.makedirs(html)
        port = free_port()
        conf = f"""
load_module {MODULE};
worker_processes {self.workers};
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    # W4 runs 200 programs at once, unevenly spread over the workers: above the default 64.
    transform_max_programs 256;
    sendfile on;
    tcp_nopush on;
    root {self.dir}/static;
    # As the module's buffered transport: 8 buffers of 64 KiB.
    fastcgi_buffer_size 64k;
    fastcgi_buffers 8 64k;
    uwsgi_buffer_size 64k;
    uwsgi_buffers 8 64k;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location ~ ^/module/(\\d+)$ {{ transform_exec {BENCH} produce $1; }}
        location ~ ^/buffered/(\\d+)$ {{ transform_splice off; transform_exec {BENCH} produce $1; }}
        location ~ ^/module-write/(\\d+)$ {{ transform_exec {BENCH} produce $1 write; }}
        location ~ ^/buffered-write/(\\d+)$ {{
            transform_splice off; transform_exec {BENCH} produce $1 write; }}
        {self.w2s_locations() if name == "main" else ""}
        location /static/ {{ }}
        {self.fcgi_location("/fcgi/", "on")}
        {self.fcgi_location("/fcgi-off/", "off")}
        location ~ ^/uwsgi/(\\d+)$ {{
            uwsgi_pass unix:{self.uwsgi_sock};
            uwsgi_param QUERY_STRING $1;
            uwsgi_param REQUEST_METHOD $request_method;
            uwsgi_param REQUEST_URI $request_uri;
            uwsgi_param PATH_INFO $uri;
            uwsgi_param SERVER_PROTOCOL $server_protocol;
            uwsgi_param SERVER_NAME $server_name;
            uwsgi_param SERVER_PORT $server_port;
        }}
    }}
}}
"""
        env = dict(os.environ)
        if inflate_mb:
            env["LD_PRELOAD"] = os.path.join(self.dir, "inflate.so")
            env["BENCH_INFLATE_MB"] = str(inflate_mb)
        inst = self.launch_nginx(name, prefix, conf, port, env)
        inst["temp"] = [os.path.join(prefix, t) for t in
                        ("fastcgi_temp", "uwsgi_temp", "proxy_temp", "client_body_temp")]
        return inst

    def w2s_locations(self):
        """W2s: W2's location once per sandbox row that nginx accepted (see w2s_rows), on the
        main nginx only (one nginx with transform_cgroup at a time)."""
        return "\n        ".join(
            f"location ~ ^{r['path']}(\\d+)$ {{ {r['directives']} "
            f"transform_exec {BENCH} produce $1; }}"
            for r in getattr(self, "w2s", []) if r["available"])

    def launch_nginx(self, name, prefix, conf, port, env=None):
        """Starts nginx with `conf` in `prefix`, in the cgroup nginx-`name`; returns once it
        listens on `port`."""
        with open(os.path.join(prefix, "nginx.conf"), "w") as f:
            f.write(conf)
        self.nginx_prefixes.append(prefix)
        group = "nginx-" + name
        subprocess.run(self.cg.wrap(group, [self.nginx, "-p", prefix, "-c",
                                            os.path.join(prefix, "nginx.conf")]),
                       env=env, check=True, timeout=60)
        master = None
        end = time.time() + 10  # the daemonized master writes its pid file a little later
        while master is None:
            try:
                with open(os.path.join(prefix, "nginx.pid")) as f:
                    master = int(f.read())
            except (OSError, ValueError):
                if time.time() > end:
                    raise
                time.sleep(0.05)
        wait_port(port)
        return {"port": port, "master": master, "prefix": prefix, "group": group}

    def fcgi_location(self, path, buffering):
        # A new connection per request: fcgiwrap serves one connection per process at a time, so
        # connections kept open by nginx (fastcgi_keep_conn) would hold its processes idle.
        return f"""location ~ ^{path}(\\d+)$ {{
            fastcgi_pass unix:{self.fcgi_sock};
            fastcgi_buffering {buffering};
            fastcgi_param SCRIPT_FILENAME {self.cgi_program};
            fastcgi_param QUERY_STRING $1;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param GATEWAY_INTERFACE CGI/1.1;
        }}"""

    def start_w6(self, tag):
        """W6's nginx, with a fresh prefix (store, caches, run counts) for round `tag`: the three
        herd contestants side by side, each with its own copy of the program (which counts its
        runs in a file of its own), a static copy for W6b, and W1 with and without
        transform_store."""
        prefix = os.path.join(self.dir, f"w6-{tag}")
        for sub in ("logs", "html/w6/static"):
            os.makedirs(os.path.join(prefix, sub))
        # Written by nginx's workers (nobody when started as root): the store, the run counts.
        for sub in ("html/store", "w1store"):
            os.makedirs(os.path.join(prefix, sub))
            os.chmod(os.path.join(prefix, sub), 0o777)
        counts, programs = {}, {}
        for key in ("store", "proxy", "fastcgi"):
            counts[key] = os.path.join(prefix, f"runs-{key}")
            with open(counts[key], "w"):
                pass
            os.chmod(counts[key], 0o666)
            # The same work for every contestant: count the run, ~100 ms of work, then 200 KiB
            # written as most programs write (write(2)); the CGI program prints its header first.
            cgi = ("printf 'Content-Type: application/octet-stream\\r\\n\\r\\n'\n"
                   if key == "fastcgi" else "")
            programs[key] = os.path.join(prefix, f"w6-{key}" + (".cgi" if cgi else ".sh"))
            with open(programs[key], "w") as f:
                f.write(f"#!/bin/sh\necho run >> {counts[key]}\nsleep {W6_WORK_S}\n{cgi}"
                        f"exec {BENCH} produce {W6_BYTES} write\n")
            os.chmod(programs[key], 0o755)
        port, backend = free_port(), free_port()
        conf = f"""
load_module {MODULE};
worker_processes {self.workers};
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    root {prefix}/html;
    transform_lock_zone w6:1m;
    transform_temp_path {prefix}/transform_temp;
    proxy_cache_path {prefix}/proxy_cache levels=1:2 keys_zone=w6proxy:10m;
    fastcgi_cache_path {prefix}/fastcgi_cache levels=1:2 keys_zone=w6fastcgi:10m;
    # As the other contestants' buffers: 8 of 64 KiB.
    proxy_buffer_size 64k;
    proxy_buffers 8 64k;
    fastcgi_buffer_size 64k;
    fastcgi_buffers 8 64k;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        # The recommended recipe: the stored file when it is there, else one program per key.
        location /w6/store/ {{ try_files /store$uri @w6make; }}
        location @w6make {{
            transform_exec {programs["store"]};
            transform_store $document_root/store$uri;
            transform_lock on;
        }}
        # Today's recipe: proxy_cache in front of the module, through a loopback hop.
        location /w6/proxy/ {{
            proxy_pass http://127.0.0.1:{backend};
            proxy_cache w6proxy;
            proxy_cache_valid 200 1d;
            proxy_cache_lock on;
        }}
        location /w6/fastcgi/ {{
            fastcgi_pass unix:{self.fcgi_sock};
            fastcgi_cache w6fastcgi;
            fastcgi_cache_key $request_uri;
            fastcgi_cache_valid 200 1d;
            fastcgi_cache_lock on;
            fastcgi_param SCRIPT_FILENAME {programs["fastcgi"]};
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param GATEWAY_INTERFACE CGI/1.1;
        }}
        location /w6/static/ {{ }}
        location ~ ^/w1/(\\d+)$ {{ transform_exec {BENCH} produce $1; }}
        location ~ ^/w1-store/(\\d+)$ {{
            root {prefix}/w1store;
            transform_exec {BENCH} produce $1;
            transform_store on;
        }}
    }}
    server {{
        listen 127.0.0.1:{backend};
        location /w6/proxy/ {{ transform_exec {programs["proxy"]}; }}
    }}
}}
"""
        inst = self.launch_nginx("w6", prefix, conf, port)
        wait_port(backend)
        inst.update({"counts": counts, "backend": backend})
        return inst

    def stop_w6(self, inst):
        """Stops W6's nginx and removes its prefix; returns the [alert], [crit] and [emerg]
        lines of its error log (nginx's complaints, at its stop too)."""
        self.stop_nginx_at(inst["prefix"])
        try:
            with open(os.path.join(inst["prefix"], "logs", "error.log")) as f:
                bad = [line.rstrip("\n") for line in f
                       if any(level in line for level in ("[alert]", "[crit]", "[emerg]"))]
        except OSError as e:
            bad = [f"no error log: {e}"]
        shutil.rmtree(inst["prefix"], ignore_errors=True)
        return bad

    def stop_nginx(self):
        for prefix in list(self.nginx_prefixes):
            self.stop_nginx_at(prefix)

    def stop_nginx_at(self, prefix):
        """Stops the nginx running in `prefix` (graceful quit, then fast shutdown)."""
        self.nginx_prefixes.remove(prefix)
        try:
            with open(os.path.join(prefix, "nginx.pid")) as f:
                master = int(f.read())
            os.kill(master, signal.SIGQUIT)
        except (OSError, ValueError):
            return
        end = time.time() + 15
        while time.time() < end and os.path.exists(f"/proc/{master}"):
            time.sleep(0.05)
        if os.path.exists(f"/proc/{master}"):
            os.kill(master, signal.SIGTERM)
            end = time.time() + 10
            while time.time() < end and os.path.exists(f"/proc/{master}"):
                time.sleep(0.05)

    def make_static(self, sizes):
        os.makedirs(os.path.join(self.dir, "static", "static"), exist_ok=True)
        for n in sizes:
            path = os.path.join(self.dir, "static", "static", str(n))
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    subprocess.run([BENCH, "produce", str(n)], stdout=f, check=True, timeout=120)

    def build_inflate(self):
        src = os.path.join(ROOT, "bench", "inflate.c")
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", os.path.join(self.dir, "inflate.so"),
                        src], check=True, timeout=60)

    # ------------------------------------------------------------ W7: a response filter

    def make_w7_files(self, sizes):
        """W7's two sources, random bytes (a filter that drops, repeats or reorders any piece
        changes the SHA-256), written to disk before the load (fsync: no writeback during it):
        {source: (path, size, sha256)}."""
        www = os.path.join(self.dir, "w7", "www")
        os.makedirs(www)
        for d in (os.path.dirname(www), www):
            os.chmod(d, 0o755)  # nginx's workers and Apache's processes run as nobody
        out = {}
        for source, n in (("static", sizes["w7"]), ("proxied", sizes["w7_proxy"])):
            path = os.path.join(www, f"{source}-{n}")
            h = hashlib.sha256()
            with open(path, "wb") as f:
                left = n
                while left:
                    piece = os.urandom(min(left, MIB))
                    h.update(piece)
                    f.write(piece)
                    left -= len(piece)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(path, 0o644)
            out[source] = (path, n, h.hexdigest())
        self.w7_www = www
        return out

    def start_w7_nginx(self, kind, files, upstream_port=None):
        """W7's nginx servers, each in a cgroup of its own: `upstream` serves the files (the
        origin of the proxied source; its CPU is no contestant's), `filter` the module's
        transform_filter on both sources, `exec` the ceiling (transform_exec /bin/cat FILE),
        `plain` the filter's locations without the filter (for reference).
        Returns the instance, or raises RuntimeError with nginx's complaint."""
        prefix = os.path.join(self.dir, f"w7-{kind}")
        os.makedirs(os.path.join(prefix, "logs"))
        port = free_port()
        www = self.w7_www
        if kind == "upstream":
            server = f"location / {{ root {www}; }}"
        elif kind in ("filter", "plain"):
            cat = ("\n            transform_filter /bin/cat;\n            transform_filter_types *;"
                   if kind == "filter" else "")
            server = f"""location /w7/filter/ {{
            alias {www}/;{cat}
        }}
        location /w7/proxy/ {{
            proxy_pass http://127.0.0.1:{upstream_port}/;{cat}
        }}"""
        else:
            server = "\n        ".join(
                f"location = /w7/exec/{os.path.basename(p)} {{ transform_exec /bin/cat {p}; }}"
                for p, _, _ in files.values())
        conf = f"""
{"" if kind == "upstream" else f"load_module {MODULE};"}
worker_processes {self.workers};
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    # proxy_buffering on (the default), in 8 buffers of 64 KiB as the other contestants' (and
    # Apache's ProxyIOBufferSize below).
    proxy_buffer_size 64k;
    proxy_buffers 8 64k;
    server {{
        listen 127.0.0.1:{port};
        {server}
    }}
}}
"""
        path = os.path.join(prefix, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        # nginx -t first: a configuration it refuses (a directive it does not know) is said in
        # the report, not only on the terminal.
        t = subprocess.run([self.nginx, "-t", "-q", "-p", prefix, "-c", path],
                           capture_output=True, text=True, timeout=60)
        if t.returncode != 0:
            said = [line for line in t.stderr.splitlines() if "[emerg]" in line] or \
                [line for line in t.stderr.splitlines() if line.strip()]
            raise RuntimeError(f"nginx ({kind}) refused its configuration: "
                               + (said[-1] if said else f"exit status {t.returncode}"))
        try:
            inst = self.launch_nginx(f"w7-{kind}", prefix, conf, port)
        except (subprocess.SubprocessError, OSError, RuntimeError) as e:
            raise RuntimeError(f"nginx ({kind}) did not start: {nginx_complaint(prefix) or e}")
        inst["temp"] = [os.path.join(prefix, t) for t in ("proxy_temp", "client_body_temp")]
        return inst

    def start_w7_apache(self, upstream_port):
        """Apache 2.4 with mod_ext_filter on the same file and, through mod_proxy, the same
        upstream, run in the foreground by nobody (when the run is root's) with a configuration
        of its own. Sizing as nginx's: the event MPM with one process per CPU (StartServers =
        ServerLimit = the CPUs, never more, never fewer: spare-thread limits that never start
        or stop one), each with 25 threads (W7 runs one request at a time); sendfile and mmap on
        (the default; nginx has sendfile on); no access log (nginx has access_log off);
        keep-alive on (the default; every client of W7 sends Connection: close); mod_proxy reads
        the upstream in 64 KiB (ProxyIOBufferSize, as nginx's proxy_buffers of 64 KiB). Returns
        the instance, or raises RuntimeError saying why it did not start."""
        binary = shutil.which("apache2", path=SERVICE_ENV["PATH"])
        if not binary:
            raise RuntimeError("apache2 is not installed (ci/bench installs it with "
                               "BENCH_PACKAGES of ci/lib.sh)")
        modules = "/usr/lib/apache2/modules"
        d = os.path.join(self.dir, "w7-apache")
        os.makedirs(d)
        drop = []
        if os.geteuid() == 0:  # unprivileged: its own files are nobody's
            nobody = pwd.getpwnam("nobody")
            os.chown(d, nobody.pw_uid, nobody.pw_gid)
            drop = [tool("setpriv"), f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                    "--clear-groups", "--"]
        port = free_port()
        threads = 25
        load = "\n".join(f"LoadModule {m}_module {modules}/mod_{m}.so" for m in
                         ("mpm_event", "authz_core", "alias", "ext_filter", "proxy", "proxy_http"))
        conf = f"""
ServerRoot {d}
ServerName localhost
Listen 127.0.0.1:{port}
PidFile {d}/httpd.pid
DefaultRuntimeDir {d}
ErrorLog {d}/error.log
LogLevel warn
{load}
StartServers {self.workers}
ServerLimit {self.workers}
ThreadsPerChild {threads}
MaxRequestWorkers {self.workers * threads}
MinSpareThreads {threads}
MaxSpareThreads {self.workers * threads}
MaxConnectionsPerChild 0
EnableSendfile On
EnableMMAP On
ProxyIOBufferSize 65536
ExtFilterDefine catfilter mode=output cmd="/bin/cat"
Alias /w7/filter/ {self.w7_www}/
<Directory {self.w7_www}>
    Require all granted
    SetOutputFilter catfilter
</Directory>
<Location /w7/proxy/>
    ProxyPass http://127.0.0.1:{upstream_port}/
    SetOutputFilter catfilter
</Location>
"""
        path = os.path.join(d, "httpd.conf")
        with open(path, "w") as f:
            f.write(conf)
        out = open(os.path.join(d, "stderr"), "w")
        p = self.spawn("apache-w7", [*drop, binary, "-DFOREGROUND", "-f", path], env=SERVICE_ENV,
                       stdout=out, stderr=out)
        end = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                pass
            if p.poll() is not None or time.time() > end:
                tail = ""
                for name in ("stderr", "error.log"):
                    try:
                        with open(os.path.join(d, name)) as f:
                            tail += f.read()[-600:]
                    except OSError:
                        pass
                raise RuntimeError(f"apache2 did not start (exit status {p.poll()}): "
                                   + " | ".join(tail.strip().splitlines()[-4:]))
            time.sleep(0.05)
        self.apache_dir = d
        return {"port": port, "proc": p, "group": "apache-w7", "dir": d}


    # ------------------------------------------------------------ W8: a program kept alive

    def make_w8_files(self):
        """W8's directory (read by nginx's workers, nobody when the run is root's): the picture
        (made here, deterministically), the contestants' Python files (bench/w8_*.py, and
        examples/pool/transformer.py whose loop the pooled one runs), compiled once so that a
        Python started per request does not compile them each time, and the C 16-byte pooled
        program. Returns {"dir", "image", "image_bytes", "pool16"} ("pool16" None and
        "pool16_error" when gcc could not build it); raises RuntimeError when PIL is missing."""
        d = os.path.join(self.dir, "w8")
        os.makedirs(d)
        os.chmod(d, 0o755)
        probe = subprocess.run([W8_PYTHON, "-c", "import PIL.Image"], capture_output=True,
                               text=True, timeout=60)
        if probe.returncode != 0:
            raise RuntimeError(f"{W8_PYTHON} has no PIL (python3-pil; ci/bench installs it with "
                               "BENCH_PACKAGES of ci/lib.sh): "
                               + (probe.stderr.strip().splitlines() or ["?"])[-1])
        for src in ("bench/w8_thumb.py", "bench/w8_pool.py", "bench/w8_exec.py",
                    "bench/w8_cgi.py", "bench/w8_wsgi.py", "examples/pool/transformer.py"):
            dst = os.path.join(d, os.path.basename(src))
            shutil.copyfile(os.path.join(ROOT, src), dst)
            os.chmod(dst, 0o755)
        subprocess.run([W8_PYTHON, "-m", "compileall", "-q", d], check=True, timeout=60)
        image = os.path.join(d, "photo.jpg")
        made = subprocess.run([W8_PYTHON, os.path.join(d, "w8_thumb.py"), "make", image],
                              capture_output=True, text=True, timeout=120, check=True)
        os.chmod(image, 0o644)
        out = {"dir": d, "image": image, "image_bytes": os.path.getsize(image),
               "image_made": made.stdout.strip(), "pool16": None, "pool16_error": ""}
        pool16 = os.path.join(d, "pool16")
        built = subprocess.run(["gcc", "-O2", "-o", pool16, os.path.join(ROOT, "bench", "pool16.c")],
                               capture_output=True, text=True, timeout=60)
        if built.returncode == 0:
            out["pool16"] = pool16
        else:
            out["pool16_error"] = "gcc could not build bench/pool16.c: " + \
                (built.stderr.strip().splitlines() or ["?"])[-1]
        self.w8 = out
        return out

    def start_w8_backends(self):
        """W8's uWSGI (the WSGI app, loaded once, in W8_PROCESSES processes of one thread: as many
        as the pool's) and fcgiwrap (WRK_CONNS preforked processes, one CGI each), each in a
        cgroup of its own. Returns {name: problem} for those that did not start."""
        d = self.w8["dir"]
        problems = {}
        self.w8_uwsgi_sock = os.path.join(d, "uwsgi.sock")
        self.w8_uwsgi = self.spawn(
            "uwsgi-w8",
            [tool("uwsgi"), "--plugin", "python3", "--socket", self.w8_uwsgi_sock,
             "--wsgi-file", os.path.join(d, "w8_wsgi.py"), "--master",
             "--processes", str(W8_PROCESSES), "--disable-logging", "--die-on-term",
             "--listen", "1024", "--chmod-socket=666", "--env", f"W8_IMAGE={self.w8['image']}"],
            env=SERVICE_ENV, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "uwsgi-w8.log"), "w"))
        self.w8_fcgi_sock = os.path.join(d, "fcgiwrap.sock")
        self.w8_fcgiwrap = self.spawn(
            "fcgiwrap-w8",
            [tool("fcgiwrap"), "-c", str(WRK_CONNS), "-s", "unix:" + self.w8_fcgi_sock],
            env=SERVICE_ENV, stderr=subprocess.DEVNULL)
        for name, sock, proc in ((W8_UWSGI, self.w8_uwsgi_sock, self.w8_uwsgi),
                                 (W8_FCGI, self.w8_fcgi_sock, self.w8_fcgiwrap)):
            end = time.time() + 10
            while not os.path.exists(sock):
                if proc.poll() is not None or time.time() > end:
                    problems[name] = (f"{'uWSGI' if proc is self.w8_uwsgi else 'fcgiwrap'} did "
                                      f"not start (exit status {proc.poll()})")
                    break
                time.sleep(0.05)
        if os.path.exists(self.w8_fcgi_sock):
            os.chmod(self.w8_fcgi_sock, 0o666)
        return problems

    def w8_conf(self, name):
        """(nginx workers, http-level lines, the /w8 location) of W8 contestant `name`."""
        d, image, py = self.w8["dir"], self.w8["image"], W8_PYTHON
        if name == W8_POOL:
            return (1, f"transform_pool thumb {py} {d}/w8_pool.py {image} "
                       f"processes={W8_PROCESSES};",
                    "location = /w8 { transform_pass thumb; }")
        if name == W8_EXEC:
            return (1, "", f"location = /w8 {{ transform_exec {py} {d}/w8_exec.py {image}; "
                           "transform_type image/jpeg; }")
        if name == W8_UWSGI:
            return (1, "", f"""location = /w8 {{
            uwsgi_pass unix:{self.w8_uwsgi_sock};
            uwsgi_param REQUEST_METHOD $request_method;
            uwsgi_param REQUEST_URI $request_uri;
            uwsgi_param PATH_INFO $uri;
            uwsgi_param QUERY_STRING $query_string;
            uwsgi_param SERVER_PROTOCOL $server_protocol;
            uwsgi_param SERVER_NAME $server_name;
            uwsgi_param SERVER_PORT $server_port;
        }}""")
        if name == W8_FCGI:
            return (1, "", f"""location = /w8 {{
            fastcgi_pass unix:{self.w8_fcgi_sock};
            fastcgi_param SCRIPT_FILENAME {d}/w8_cgi.py;
            fastcgi_param W8_IMAGE {image};
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param GATEWAY_INTERFACE CGI/1.1;
        }}""")
        if name == W8_P16:
            if not self.w8["pool16"]:
                raise RuntimeError(self.w8["pool16_error"])
            return (self.workers, f"transform_pool p16 {self.w8['pool16']} "
                                  f"processes={W8_PROCESSES};",
                    "location = /w8 { transform_pass p16; }")
        if name == W8_P16_PY:
            return (self.workers, f"transform_pool p16py {py} {d}/w8_pool.py 16 "
                                  f"processes={W8_PROCESSES};",
                    "location = /w8 { transform_pass p16py; }")
        if name == W8_W2:
            return (self.workers, "", f"location = /w8 {{ transform_exec {BENCH} produce 16; }}")
        raise ValueError(name)

    def start_w8_nginx(self, name):
        """The nginx of W8 contestant `name` (each its own, in a cgroup of its own). Returns the
        instance, or raises RuntimeError with nginx's complaint (a directive this build does not
        know: the contestant cannot run)."""
        workers, http_extra, location = self.w8_conf(name)
        tag = "w8-" + re.sub(r"[^a-z0-9]+", "-", W8_TAGS[name])
        prefix = os.path.join(self.dir, tag)
        os.makedirs(os.path.join(prefix, "logs"))
        port = free_port()
        conf = f"""
load_module {MODULE};
worker_processes {workers};
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {http_extra}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        {location}
    }}
}}
"""
        path = os.path.join(prefix, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        t = subprocess.run([self.nginx, "-t", "-q", "-p", prefix, "-c", path],
                           capture_output=True, text=True, timeout=60)
        if t.returncode != 0:
            said = [line for line in t.stderr.splitlines() if "[emerg]" in line] or \
                [line for line in t.stderr.splitlines() if line.strip()]
            raise RuntimeError("nginx refused its configuration: "
                               + (said[-1] if said else f"exit status {t.returncode}"))
        try:
            inst = self.launch_nginx(tag, prefix, conf, port)
        except (subprocess.SubprocessError, OSError, RuntimeError) as e:
            raise RuntimeError(f"nginx did not start: {nginx_complaint(prefix) or e}")
        inst["workers"] = workers
        return inst

def nginx_workers(master):
    return children(master)


def nginx_complaint(prefix):
    """The last [emerg], [alert] or [crit] line of the error log in `prefix`, or ""."""
    try:
        with open(os.path.join(prefix, "logs", "error.log")) as f:
            bad = [line.strip() for line in f
                   if any(level in line for level in ("[alert]", "[crit]", "[emerg]"))]
    except OSError:
        return ""
    return bad[-1] if bad else ""


# ---------------------------------------------------------------- workloads

def get(url, conns=1, rate=None, expect=None, timeout=600):
    argv = [BENCH, "get", url, "--conns", str(conns)]
    if rate:
        argv += ["--rate", str(rate)]
    if expect is not None:
        argv += ["--expect", str(expect)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True).stdout
    return json.loads(out)


def wrk_errors(out):
    """wrk's errors in its output: its socket errors (connect, read, write, timeout) and its
    responses with a status other than 2xx or 3xx; and the first of them, as a line."""
    errors, first_error = 0, ""
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
        first_error = m.group(0)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
        first_error = (first_error + "; " if first_error else "") + m.group(0)
    return errors, first_error


def wrk(url, seconds, conns=WRK_CONNS, timeout_s=None):
    """wrk's figures; errors are its socket errors (connect, read, write, timeout) and its
    responses with a status other than 2xx or 3xx. `timeout_s`: wrk's --timeout (a response
    slower than it counts as a timeout error; 2 s when None, wrk's default)."""
    argv = ["wrk", "-t", "1", "-c", str(conns), "-d", f"{seconds}s", "--latency"]
    if timeout_s:
        argv += ["--timeout", f"{timeout_s}s"]
    out = subprocess.run(argv + [url], capture_output=True, text=True,
                         timeout=seconds + (timeout_s or 0) + 60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in ", out).group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    p99_ms = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors, first_error = wrk_errors(out)
    return {"rps": rps, "requests": requests, "p99_ms": p99_ms, "errors": errors,
            "first_error": first_error}


class Contestant:
    """A URL, and the servers behind it: their cgroups, and their top processes (to walk /proc
    without cgroups)."""

    def __init__(self, cg, name, base, path, groups, roots, temp=()):
        self.cg, self.name, self.base, self.path = cg, name, base, path
        self.groups, self.roots, self.temp = groups, roots, temp

    def url(self, n):
        return f"{self.base}{self.path}{n}"

    def pids(self):
        if self.cg.dir:
            return sorted({p for g in self.groups for p in self.cg.pids(g)})
        return sorted({p for r in self.roots() for p in tree(r)})

    def cpu_total(self):
        return sum(self.cg.usage(g) for g in self.groups) if self.cg.dir else None


def run(args, cg):
    quick = args.quick
    sizes = {
        "w1": 256 * MIB if quick else GIB,
        "w1_rounds": 1 if quick else 3,
        "w2_seconds": 3 if quick else 10,
        "quick": quick,
        "w3": 64 * MIB if quick else GIB,
        "w4_conns": 50 if quick else 200,
        "w4": 4 * MIB if quick else 16 * MIB,
        "wrk_rounds": 1 if quick else 3,
        "w6_rounds": 1 if quick else 3,
        "w7": 64 * MIB if quick else GIB,
        "w7_proxy": 32 * MIB if quick else 256 * MIB,
        "w7_rounds": 2 if quick else 4,
        "w7_slow_s": 1 if quick else 3,
        # The slow client's runs: (contestant, source).
        "w7_slow": [(W7_FILTER, "static"), (W7_FILTER, "proxied"), (W7_APACHE, "static")] +
                   ([] if quick else [(W7_APACHE, "proxied"), (W7_EXEC, "static")]),
        "w8_seconds": 3 if quick else 10,
        "w8_rounds": 1 if quick else 3,
        "w1t": 256 * MIB if quick else GIB,
        "w1t_rounds": 1 if quick else 5,
        # quick: one point (CI's time; the curve's low end is the full run's).
        "w9_points": [200] if quick else [50, 200, 500, 1000, 2000],
        "w9_seconds": 4 if quick else 10,
        "w9_warmup": 1 if quick else 2,
        "w9_slow_conns": 200 if quick else 2000,
        "w9_slow_seconds": 4 if quick else 15,
    }
    only = args.only
    s = Servers(cg, max(WRK_CONNS, sizes["w4_conns"]))
    results = {"sizes": sizes, "config": s.config(), "only": sorted(only), "steal": {}}
    try:
        if only & {"w1", "w2", "w3", "w4", "w5", "w6"}:
            run_w1_to_w6(s, cg, sizes, only, results)
        if "w7" in only:
            before = cpu_times()
            s.w7_alerts = []
            try:
                results["w7"], results["w7_slow"], results["w7_problems"] = w7(s, cg, sizes)
            finally:
                results["w7_alerts"] = s.w7_alerts
            results["apache"] = apache_version()
            results["steal"]["w7"] = steal_since(before)
            log(f"W7: {results['steal']['w7']:.1f}% of the CPU time stolen by the host")
        if "w8" in only:
            before = cpu_times()
            s.w8_alerts = []
            try:
                results["w8"], results["w8_problems"], results["w8_setup"] = w8(s, cg, sizes)
            finally:
                results["w8_alerts"] = s.w8_alerts
            results["w8_sizing"] = {"nginx_workers_thumbnails": 1,
                                    "nginx_workers_16_bytes": s.workers,
                                    "pool_processes_per_worker": W8_PROCESSES,
                                    "uwsgi_processes": W8_PROCESSES, "uwsgi_threads": 1,
                                    "fcgiwrap_processes": WRK_CONNS}
            results["steal"]["w8"] = steal_since(before)
            log(f"W8: {results['steal']['w8']:.1f}% of the CPU time stolen by the host")
        if "w1t" in only:
            before = cpu_times()
            results["w1t"], results["w1t_alerts"] = w1t(s, sizes)
            results["steal"]["w1t"] = steal_since(before)
            log(f"W1t: {results['steal']['w1t']:.1f}% of the CPU time stolen by the host")
        if "w9" in only:
            before = cpu_times()
            s.w9_alerts = []
            try:
                results["w9"], results["w9_slow"], _ = w9(s, cg, sizes)
            finally:
                results["w9_alerts"] = s.w9_alerts
            results["steal"]["w9"] = steal_since(before)
            log(f"W9: {results['steal']['w9']:.1f}% of the CPU time stolen by the host")
        results["method"] = method(cg)
    finally:
        s.stop_nginx()
        s.stop()
    return results


def run_w1_to_w6(s, cg, sizes, only, results):
    """W1..W6 (those in `only`), on the main nginx, its inflated twin and the backends."""
    s.build_inflate()
    s.start_backends()
    s.make_static({sizes["w1"], sizes["w4"]})
    s.w2s = w2s_rows(s, sizes) if "w2" in only else []
    main = s.start_nginx("main")
    big = s.start_nginx("inflated", inflate_mb=1024)
    base = f"http://127.0.0.1:{main['port']}"
    ng = main["group"]
    master = lambda: [main["master"]]  # noqa: E731

    def con(name, path, groups=(), roots=lambda: [], temp=main["temp"]):
        return Contestant(cg, name, base, path, [ng, *groups], lambda: master() + roots(),
                          temp)
    c = {
        "module (splice)": con("module (splice)", "/module/"),
        "module (buffered)": con("module (buffered)", "/buffered/"),
        "module (splice), write() producer": con("module (splice), write() producer",
                                                 "/module-write/"),
        "module (buffered), write() producer": con("module (buffered), write() producer",
                                                   "/buffered-write/"),
        "nginx static sendfile": con("nginx static sendfile", "/static/"),
        "fcgiwrap (buffering on)": con("fcgiwrap (buffering on)", "/fcgi/", ["fcgiwrap"],
                                       lambda: [s.fcgiwrap.pid]),
        "fcgiwrap (buffering off)": con("fcgiwrap (buffering off)", "/fcgi-off/",
                                        ["fcgiwrap"], lambda: [s.fcgiwrap.pid]),
        "uWSGI Python app": con("uWSGI Python app", "/uwsgi/", ["uwsgi"],
                                lambda: [s.uwsgi.pid]),
        "standalone splice relay": Contestant(
            cg, "standalone splice relay", f"http://127.0.0.1:{s.relay_ports['splice']}", "/",
            ["relay-splice"], lambda: [s.relay_splice.pid]),
        "standalone read/write relay": Contestant(
            cg, "standalone read/write relay", f"http://127.0.0.1:{s.relay_ports['rw']}", "/",
            ["relay-rw"], lambda: [s.relay_rw.pid]),
    }
    w2s_check(s, c, con, base, main)
    for w, fn in (("w1", lambda: w1(s, c, sizes)), ("w2", lambda: w2(cg, c, sizes, s.w2s)),
                  ("w3", lambda: w3(c, sizes)), ("w4", lambda: w4(c, sizes)),
                  ("w5", lambda: w5(sizes, main, big))):
        if w not in only:
            continue
        before = cpu_times()
        results[w] = fn()
        if w == "w2":
            results["w2s"] = w2s_result(results["w2"], s.w2s)
        results["steal"][w] = steal_since(before)
        log(f"{w.upper()}: {results['steal'][w]:.1f}% of the CPU time stolen by the host")
    if "w6" in only:
        before = cpu_times()
        results["w6a"], results["w6b"], results["w6_alerts"] = w6(s, cg, sizes)
        results["steal"]["w6"] = steal_since(before)
        log(f"W6: {results['steal']['w6']:.1f}% of the CPU time stolen by the host")


def method(cg):
    if cg.dir:
        cpu = (f"every server runs in a cgroup of its own ({cg.method}); a contestant's CPU is the "
               "growth of its servers' cgroups' counters over the load (nginx's, plus fcgiwrap's "
               "or uWSGI's), which count every process that ran in them, also children nobody "
               "reaps; server CPU is the scheduler's run time of the processes that existed "
               "before the load (nginx's master and workers, fcgiwrap's and uWSGI's processes, "
               "the relay), programs' CPU the rest (the programs, from the fork that starts "
               f"them). Self-check: {cg.check_text()}")
    else:
        cpu = ("no usable cgroup: server CPU is the scheduler's run time of the processes that "
               "existed before the load; programs' CPU is not reported")
    where = ("every process in the contestant's cgroups" if cg.dir else
             "every process in the /proc trees of the contestant's servers")
    rss = (f"summed RSS of {where} (nginx's master and workers, fcgiwrap's or uWSGI's processes, "
           "the relay, and the programs they run), sampled every 50 ms by a thread at nice "
           f"{Measure.nice}: peak growth over the sum before the load, for the server processes "
           "(those that existed before it) and for all")
    return {"cpu": cpu, "rss": rss, "self_check": cg.check}


def relay_for(s, c, n):
    """Points the relays at an n-byte producer (they take the producer's argv at start)."""
    for mode in ("splice", "rw"):
        old = getattr(s, "relay_" + mode)
        old.terminate()
        old.wait(timeout=10)
        port = free_port()
        s.relay_ports[mode] = port
        setattr(s, "relay_" + mode, s.spawn("relay-" + mode, [BENCH, "relay", str(port), mode,
                                                              BENCH, "produce", str(n)]))
        wait_port(port)
    c["standalone splice relay"].base = f"http://127.0.0.1:{s.relay_ports['splice']}"
    c["standalone read/write relay"].base = f"http://127.0.0.1:{s.relay_ports['rw']}"


def stream_once(con, n, conns=1, rate=None, dirs=()):
    """`conns` GETs of n bytes at once; bytes are those received, errors the responses that
    failed or came short."""
    m = Measure(con, dirs)
    try:
        r = get(con.url(n), conns=conns, rate=rate, expect=n)
        time.sleep(0.2)  # the last programs exit
    finally:
        figures = m.finish()
    r.update(figures)
    return r


def per(value, unit, scale=1.0):
    """value * scale / unit; None for a figure not measured, or with nothing to divide by."""
    return None if value is None or unit <= 0 else value * scale / unit


def median(values):
    values = list(values)
    return None if any(v is None for v in values) else statistics.median(values)


def errors_of(rs):
    errors = sum(r["errors"] for r in rs)
    first = next((r["first_error"] for r in rs if r.get("first_error")), "")
    return {"errors": errors, "first_error": first}


W1_NAMES = ["module (splice)", "module (buffered)", "nginx static sendfile",
            "fcgiwrap (buffering on)", "fcgiwrap (buffering off)", "uWSGI Python app",
            "standalone splice relay", "standalone read/write relay"]


def w1(s, c, sizes):
    n = sizes["w1"]
    relay_for(s, c, n)
    runs = {name: [] for name in W1_NAMES}
    for _ in range(sizes["w1_rounds"]):
        for name in W1_NAMES:  # alternated: each round runs every contestant once
            r = stream_once(c[name], n)
            runs[name].append(r)
            log(f"W1 {name}: {r['bytes'] / r['seconds'] / 1e6:.0f} MB/s, {r['errors']} errors")
    out = {}
    for name, rs in runs.items():
        out[name] = {
            "mb_s": statistics.median(r["bytes"] / r["seconds"] / 1e6 for r in rs),
            "server_cpu_per_gib": median(per(r["server_cpu"], r["bytes"], GIB) for r in rs),
            "programs_cpu_per_gib": median(per(r["programs_cpu"], r["bytes"], GIB) for r in rs),
            **errors_of(rs),
        }
    return out


# W2s: W2's location (the plain module row of W2 is its reference) with the sandbox.
W2S_PLAIN = "module (splice)"
W2S_SANDBOX = "module + sandbox (Landlock + seccomp default)"
W2S_CGROUP = "module + sandbox + cgroup (pids.max, memory.max)"
# The cgroup's limits: far above what the 16-byte producer takes.
W2S_CGROUP_LIMITS = "pids.max=64 memory.max=64m"
# transform_sandbox_namespaces, full runs only: a worker that is not root (nobody, when nginx
# starts as root) needs `user` with any other, so each is measured with `user`, and `user` alone.
W2S_NAMESPACES = ["user", "user pid", "user ipc", "user uts", "user mount", "user net"]


def sandbox_paths():
    """transform_sandbox_paths for the producer, as narrow as the recipe's: its file, the
    directories of the libraries and loader ldd names, the loader's cache."""
    paths = {BENCH, "/etc/ld.so.cache"}
    out = subprocess.run(["ldd", BENCH], capture_output=True, text=True, timeout=30).stdout
    for m in re.finditer(r"(/\S+)", out):
        if os.path.exists(m.group(1)):
            paths.add(os.path.dirname(os.path.realpath(m.group(1))))
    return sorted(p for p in paths if os.path.exists(p))


def nginx_accepts(s, directives):
    """Whether `nginx -t` accepts `directives` in a location (None), else its complaint."""
    prefix = tempfile.mkdtemp(prefix="w2s-", dir=s.dir)
    os.makedirs(os.path.join(prefix, "logs"))
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""load_module {MODULE};
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
events {{}}
http {{ server {{ listen 127.0.0.1:{free_port()};
    location / {{ {directives} transform_exec {BENCH} produce 16; }} }} }}
""")
    p = subprocess.run([s.nginx, "-t", "-p", prefix, "-c", conf], capture_output=True, text=True,
                       timeout=60)
    shutil.rmtree(prefix, ignore_errors=True)
    if p.returncode == 0:
        return None
    said = [ln for ln in p.stderr.splitlines() if "[emerg]" in ln]
    if not said:  # a handler that failed without a message
        return (f"`nginx -t` fails without naming why ({directives.split()[-3]}...: "
                f"{' '.join(p.stderr.split())[-120:]})").replace(prefix, "...")
    return re.sub(r"^.*?\[emerg\] \d+#\d+: ", "", said[0]).replace(prefix, "...")


def w2s_rows(s, sizes):
    """W2s's rows (beside W2's plain module row): each a path on the main nginx and the
    directives of its location, available once nginx accepted them."""
    sandbox = (f"transform_sandbox_paths {' '.join(sandbox_paths())}; "
               "transform_sandbox_syscalls default;")
    rows = [{"name": W2S_SANDBOX, "path": "/w2s-sandbox/", "directives": sandbox},
            {"name": W2S_CGROUP, "path": "/w2s-cgroup/",
             "directives": f"{sandbox} transform_cgroup {W2S_CGROUP_LIMITS};"}]
    if not sizes["quick"]:
        for i, ns in enumerate(W2S_NAMESPACES):
            rows.append({"name": f"module + namespaces {ns}", "path": f"/w2s-ns{i}/",
                         "directives": f"transform_sandbox_namespaces {ns};", "namespaces": ns})
    for r in rows:
        why = nginx_accepts(s, r["directives"])
        r["available"], r["why"] = why is None, why and f"nginx -t refuses it: {why}"
        if why:
            log(f"W2s {r['name']}: n/a, {r['why']}")
    return rows


def w2s_check(s, c, con, base, main):
    """Each available W2s row answers the 16 bytes once before it is measured (a contestant of
    the main nginx, as W2's module row); a row that does not is dropped with the reason (and the
    error log's last line)."""
    for r in s.w2s:
        if not r["available"]:
            continue
        try:
            got = get(f"{base}{r['path']}16", expect=16, timeout=30)
            ok = got.get("errors", 1) == 0
        except (subprocess.SubprocessError, ValueError) as e:
            ok, got = False, str(e)
        if ok:
            c[r["name"]] = con(r["name"], r["path"])
            continue
        last = ""
        try:
            with open(os.path.join(main["prefix"], "logs/error.log")) as f:
                last = f.read().strip().splitlines()[-1]
        except (OSError, IndexError):
            pass
        r["available"] = False
        r["why"] = f"its check request failed ({got}); error log: {last}"
        log(f"W2s {r['name']}: n/a, {r['why']}")


def w2s_result(w2r, rows):
    """W2s's figures, taken out of W2's (they ran in its rounds): each row's, with the plain
    module row as the reference, and why a row did not run."""
    out = {"plain": W2S_PLAIN, "limits": W2S_CGROUP_LIMITS, "rows": {}, "not_run": {},
           "directives": {}}
    for r in rows:
        out["directives"][r["name"]] = r["directives"]
        if r["name"] in w2r:
            out["rows"][r["name"]] = w2r.pop(r["name"])
        else:
            out["not_run"][r["name"]] = r["why"] or "not measured"
    return out


def w2(cg, c, sizes, w2s=()):
    t = sizes["w2_seconds"]
    runs = {}
    sandboxed = [r["name"] for r in w2s if r["available"]]
    for _ in range(sizes["wrk_rounds"]):  # alternated rounds, medians reported
        for name in ["module (splice)", "fcgiwrap (buffering on)", "uWSGI Python app",
                     *sandboxed]:
            m = Measure(c[name], sample=False)
            try:
                r = wrk(c[name].url(16), t)
            finally:
                r_cpu = m.finish()
            r.update(r_cpu)
            runs.setdefault(name, []).append(r)
            log(f"W2 {name}: {r['rps']:.0f} req/s, p99 {r['p99_ms']:.2f} ms, {r['errors']} errors")
        # The ceiling: as many spawns in flight as wrk has connections.
        argv = cg.wrap("ceiling", [BENCH, "spawn", str(t), str(WRK_CONNS), BENCH, "produce", "16"])
        before = cg.usage("ceiling") if cg.dir else None
        line = subprocess.run(argv, capture_output=True, text=True, timeout=t + 60,
                              check=True).stdout.split()
        f = dict(zip(line[::2], line[1::2]))
        own = float(f["self_cpu_s"])
        runs.setdefault("posix_spawn ceiling", []).append({
            "rps": float(f["spawns_per_s"]), "p99_ms": float(f["p99_ms"]),
            "requests": int(f["requests"]), "errors": 0, "first_error": "", "server_cpu": own,
            "programs_cpu": None if before is None else max(cg.usage("ceiling") - before - own, 0)})
        log(f"W2 posix_spawn ceiling: {f['spawns_per_s']} /s")
    return {name: {"rps": statistics.median(r["rps"] for r in rs),
                   "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                   "server_cpu_ms_per_req": median(per(r["server_cpu"], r["requests"], 1000)
                                                   for r in rs),
                   "programs_cpu_ms_per_req": median(per(r["programs_cpu"], r["requests"], 1000)
                                                     for r in rs),
                   **errors_of(rs)}
            for name, rs in runs.items()}


def w3(c, sizes):
    n = sizes["w3"]
    out = {}
    for name in ("module (splice)", "module (buffered)", "fcgiwrap (buffering on)",
                 "fcgiwrap (buffering off)", "uWSGI Python app"):
        con = c[name]
        r = stream_once(con, n, rate=20_000_000, dirs=con.temp)
        out[name] = {"server_rss_mib": r["server_rss_mib"], "all_rss_mib": r["all_rss_mib"],
                     "temp_bytes": r["peak_temp"], "mb_s": r["bytes"] / r["seconds"] / 1e6,
                     **errors_of([r])}
        log(f"W3 {name}: RSS +{r['server_rss_mib']:.1f} MiB (+{r['all_rss_mib']:.1f} MiB with "
            f"the programs), temp {r['peak_temp']} B, {r['errors']} errors")
    return out


def w4(c, sizes):
    n, conns = sizes["w4"], sizes["w4_conns"]
    out = {}
    for name in ("module (splice)", "module (buffered)", "module (splice), write() producer",
                 "module (buffered), write() producer", "nginx static sendfile",
                 "fcgiwrap (buffering on)", "fcgiwrap (buffering off)", "uWSGI Python app"):
        con = c[name]
        r = stream_once(con, n, conns=conns, dirs=con.temp)
        out[name] = {"mb_s": r["bytes"] / r["seconds"] / 1e6,
                     "server_rss_mib": r["server_rss_mib"], "all_rss_mib": r["all_rss_mib"],
                     "server_cpu_per_gib": per(r["server_cpu"], r["bytes"], GIB),
                     "programs_cpu_per_gib": per(r["programs_cpu"], r["bytes"], GIB),
                     **errors_of([r])}
        log(f"W4 {name}: {out[name]['mb_s']:.0f} MB/s, {r['errors']} errors")
    return out


def w5(sizes, main, big):
    t = sizes["w2_seconds"]
    runs = {"normal": [], "inflated": []}
    rss = {}
    for _ in range(sizes["wrk_rounds"]):
        for label, inst in (("normal", main), ("inflated", big)):
            r = wrk(f"http://127.0.0.1:{inst['port']}/module/16", t)
            runs[label].append(r)
            rss[label] = max(rss_kib(p) for p in nginx_workers(inst["master"])) / 1024.0
            log(f"W5 {label} worker ({rss[label]:.0f} MiB): {r['rps']:.0f} req/s, "
                f"{r['errors']} errors")
    return {label: {"rps": statistics.median(r["rps"] for r in rs), "worker_rss_mib": rss[label],
                    **errors_of(rs)}
            for label, rs in runs.items()}


# ---------------------------------------------------------------- W6: store and lock

W6_BYTES = 200 * 1024
W6_WORK_S = 0.1
W6_HERD = 100
# W6a's contestants: (name, URL path prefix, run count); the last one runs no program, it shows
# what delivering the bytes costs (to 100 clients at once: the floor of any herd's latency).
W6A = [("module, transform_store + transform_lock", "/w6/store/", "store"),
       ("module behind proxy_cache + proxy_cache_lock", "/w6/proxy/", "proxy"),
       ("fcgiwrap + fastcgi_cache + fastcgi_cache_lock", "/w6/fastcgi/", "fastcgi"),
       ("nginx static, a file of the same bytes (no program)", "/w6/static/", None)]


def parse_response(raw):
    """(status, body) of one whole HTTP/1.1 response (Content-Length, chunked, or delimited by
    the close); ValueError when it is cut or malformed."""
    status, _, body = parse_response_full(raw)
    return status, body


def parse_response_full(raw):
    """As parse_response: (status, {lower-case header name: value}, body)."""
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        raise ValueError(f"no complete header in {len(raw)} bytes")
    lines = bytes(raw[:head_end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    pos = head_end + 4
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                raise ValueError(f"cut after {len(body)} body bytes (chunked)")
            size = int(bytes(raw[pos:eol]).split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                if bytes(raw[pos:pos + 2]) != b"\r\n":
                    raise ValueError("no CRLF after the last chunk")
                return status, headers, bytes(body)
            if len(raw) < pos + size + 2 or bytes(raw[pos + size:pos + size + 2]) != b"\r\n":
                raise ValueError(f"cut after {len(body)} body bytes (chunked)")
            body += raw[pos:pos + size]
            pos += size + 2
    if "content-length" in headers:
        n = int(headers["content-length"])
        if len(raw) - pos < n:
            raise ValueError(f"cut: {len(raw) - pos} of {n} body bytes")
        return status, headers, bytes(raw[pos:pos + n])
    return status, headers, bytes(raw[pos:])


def herd(port, path, n, expect, timeout=60):
    """n identical GETs at once, each on a connection of its own (all connected before the first
    is sent; `Connection: close`, so the response ends with the connection), every response
    checked byte for byte: latencies (seconds from its send to its end, of the good responses)
    and errors. One thread, epoll, each response received into a buffer of its own with no
    other copy: the client must not be what is measured (a 100-response herd of a 200 KiB static
    file takes it a few milliseconds)."""
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    errs, conns = [], []
    for _ in range(n):
        try:
            conns.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        except OSError as e:
            errs.append(f"connect: {e}")
    sel = selectors.DefaultSelector()
    state = {}  # socket -> [buffer, length, start, end]
    try:
        for c in conns:  # everything ready (and the buffers' pages touched) before a request
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ)
            state[c] = [bytearray(b"\0" * (len(expect) + 65536)), 0, None, None]
        for c in conns:
            state[c][2] = time.monotonic()
            c.sendall(request)  # a few dozen bytes: the socket buffer takes them at once
        deadline = time.monotonic() + timeout
        left = len(conns)
        while left and time.monotonic() < deadline:
            for key, _ in sel.select(max(deadline - time.monotonic(), 0)):
                c = key.fileobj
                st = state[c]
                if st[1] == len(st[0]):
                    st[0].extend(bytes(len(st[0])))
                try:
                    got = c.recv_into(memoryview(st[0])[st[1]:])
                except BlockingIOError:
                    continue
                except OSError as e:
                    errs.append(f"receive: {e}")
                    got = 0
                if got:
                    st[1] += got
                    continue
                st[3] = time.monotonic()
                sel.unregister(c)
                left -= 1
        lat = []
        for c, (buf, length, start, end) in state.items():
            if end is None:
                errs.append(f"no end after {timeout} s")
                continue
            try:
                status, body = parse_response(buf[:length])
            except ValueError as e:
                errs.append(str(e))
                continue
            if status != 200:
                errs.append(f"status {status}")
            elif body != expect:
                errs.append(f"a body of {len(body)} bytes, not the {len(expect)} expected")
            else:
                lat.append(end - start)
    finally:
        sel.close()
        for c in conns:
            c.close()
    return {"latencies": sorted(lat), "errors": len(errs), "first_error": errs[0] if errs else ""}


def percentile(sorted_values, q):
    """Nearest-rank percentile of sorted values; None for none."""
    if not sorted_values:
        return None
    return sorted_values[max(math.ceil(q * len(sorted_values)) - 1, 0)]


def runs_of(inst, key):
    if key is None:  # no program
        return 0
    with open(inst["counts"][key]) as f:
        return sum(1 for _ in f)


def w6(s, cg, sizes):
    """W6a: a herd of W6_HERD identical cold requests, and one lone cold request, per contestant,
    each round in a fresh nginx (fresh store and caches) on fresh URLs; W6b, in the last round's
    nginx: the herd's URL again under wrk (a stored file, a cache hit) against nginx serving the
    same file statically, and W1 with and without transform_store."""
    expect = b"x" * W6_BYTES
    a = {name: {"runs": [], "lone_ms": [], "p50_ms": [], "p99_ms": [], "errors": 0,
                "first_error": ""} for name, _, _ in W6A}
    b, alerts = {}, []
    rounds = sizes["w6_rounds"]
    for rnd in range(rounds):
        inst = s.start_w6(rnd)
        try:
            for name in (f"lone-{rnd}", f"herd-{rnd}"):
                with open(os.path.join(inst["prefix"], "html", "w6", "static", name), "wb") as f:
                    f.write(expect)
            order = W6A[rnd % len(W6A):] + W6A[:rnd % len(W6A)]  # who goes first rotates
            for name, path, key in order:
                before = runs_of(inst, key)
                r = herd(inst["port"], f"{path}lone-{rnd}", 1, expect)
                runs = runs_of(inst, key) - before
                lone = r["latencies"][0] * 1000 if r["latencies"] else None
                a[name]["lone_ms"].append(lone)
                w6_errors(a[name], r, runs, 1 if key else 0)
                log(f"W6a {name}: a lone cold request {fmt(lone, 1)} ms, {runs} run(s)")
            for name, path, key in order:
                before = runs_of(inst, key)
                r = herd(inst["port"], f"{path}herd-{rnd}", W6_HERD, expect)
                time.sleep(0.2)  # a program still starting has counted itself by now
                runs = runs_of(inst, key) - before
                lat = r["latencies"]
                p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
                p50, p99 = (None if p is None else p * 1000 for p in (p50, p99))
                x = a[name]
                x["runs"].append(runs if key else None)
                x["p50_ms"].append(p50)
                x["p99_ms"].append(p99)
                w6_errors(x, r, runs, None)
                log(f"W6a {name}: {W6_HERD} identical cold requests: {runs} program run(s), p50 "
                    f"{fmt(p50, 1)} ms, p99 {fmt(p99, 1)} ms, {r['errors']} errors")
            if rnd == rounds - 1:
                b = w6b(s, cg, sizes, inst, rnd)
        finally:
            alerts += s.stop_w6(inst)
    for line in alerts:
        log(f"W6 nginx: {line}")
    for x in a.values():
        x["lone_ms"] = median(x["lone_ms"])
        x["p50_ms"] = median(x["p50_ms"])
        x["p99_ms"] = median(x["p99_ms"])
    return a, b, alerts


def w6_errors(x, r, runs, want_runs):
    """Adds a load's errors to contestant x's (with a lone request's program runs, which must be
    as wanted: a herd's are reported, not counted as errors)."""
    x["errors"] += r["errors"]
    x["first_error"] = x["first_error"] or r["first_error"]
    if want_runs is not None and runs != want_runs:
        x["errors"] += 1
        x["first_error"] = x["first_error"] or f"a lone request ran {runs} programs"


W6B_STORED = "module, stored file (try_files)"
W6B_STATIC = "nginx static (a copy of the file)"
W6B_W1 = "W1, module (splice)"
W6B_W1_STORE = "W1, module (splice) with transform_store on"
W6B_DD = "the same bytes written to a file by dd (no nginx, no client)"


def w6b(s, cg, sizes, inst, rnd):
    port, prefix = inst["port"], inst["prefix"]
    base = f"http://127.0.0.1:{port}"
    t = sizes["w2_seconds"]
    # nginx's own static handler on a copy of the stored file (the same bytes, elsewhere).
    stored = os.path.join(prefix, "html", "store", "w6", "store", f"herd-{rnd}")
    static = os.path.join(prefix, "html", "w6", "static", f"stored-{rnd}")
    out = {}
    try:
        shutil.copyfile(stored, static)
    except OSError as e:
        out[W6B_STORED] = {"errors": 1, "first_error": f"no stored file: {e}", "rps": None,
                           "p99_ms": None, "runs": None}
        log(f"W6b: no stored file to serve: {e}")
        return out
    warm = [(W6B_STORED, f"/w6/store/herd-{rnd}", "store"),
            (W6B_STATIC, f"/w6/static/stored-{rnd}", None),
            ("proxy_cache hit", f"/w6/proxy/herd-{rnd}", "proxy"),
            ("fastcgi_cache hit", f"/w6/fastcgi/herd-{rnd}", "fastcgi")]
    runs = {name: [] for name, _, _ in warm}
    for _ in range(sizes["wrk_rounds"]):
        for name, path, key in warm:
            before = runs_of(inst, key)
            r = wrk(base + path, t)
            r["runs"] = runs_of(inst, key) - before
            runs[name].append(r)
            log(f"W6b {name}: {r['rps']:.0f} req/s, p99 {r['p99_ms']:.2f} ms, {r['runs']} program "
                f"run(s), {r['errors']} errors")
    for name, rs in runs.items():
        e = errors_of(rs)
        ran = sum(r["runs"] for r in rs)
        if ran:  # a warm URL must not run its program again
            e["errors"] += ran
            e["first_error"] = e["first_error"] or f"the program ran {ran} times"
        out[name] = {"rps": statistics.median(r["rps"] for r in rs),
                     "p99_ms": statistics.median(r["p99_ms"] for r in rs), "runs": ran, **e}
    # W1 with and without transform_store, alternated, and what the file system takes at the
    # time: the same bytes written to a file of the store's directory by dd (no nginx).
    n = sizes["w1"]
    group = inst["group"]
    pair = [Contestant(cg, W6B_W1, base, "/w1/", [group], lambda: [inst["master"]]),
            Contestant(cg, W6B_W1_STORE, base, "/w1-store/", [group], lambda: [inst["master"]])]
    w1runs = {name: [] for name in (W6B_W1, W6B_W1_STORE, W6B_DD)}
    for _ in range(sizes["w1_rounds"]):
        for con in pair:
            r = stream_once(con, n)
            if con.path == "/w1-store/":
                # Published once the program exited: it may come just after the response.
                path = os.path.join(prefix, "w1store", "w1-store", str(n))
                end = time.time() + 5
                while not os.path.exists(path) and time.time() < end:
                    time.sleep(0.05)
                size = os.path.getsize(path) if os.path.exists(path) else None
                if size != n:
                    r["errors"] += 1
                    r["first_error"] = r.get("first_error") or (
                        "no stored file" if size is None else
                        f"the stored file has {size} bytes, not {n}")
                if size is not None:
                    os.unlink(path)
            w1runs[con.name].append(r)
            log(f"W6b {con.name}: {r['bytes'] / r['seconds'] / 1e6:.0f} MB/s, {r['errors']} "
                "errors")
        path = os.path.join(prefix, "w1store", "dd")
        start = time.monotonic()
        done = subprocess.run(["sh", "-c", f'"$0" produce {n} | dd of="$1" bs=1M 2>/dev/null',
                               BENCH, path], timeout=600)
        took = time.monotonic() - start
        size = os.path.getsize(path) if os.path.exists(path) else 0
        if os.path.exists(path):
            os.unlink(path)
        bad = done.returncode != 0 or size != n
        w1runs[W6B_DD].append({"bytes": size, "seconds": took, "errors": int(bad),
                               "first_error": f"dd wrote {size} bytes" if bad else "",
                               "server_cpu": None})
        log(f"W6b {W6B_DD}: {size / took / 1e6:.0f} MB/s")
    for name, rs in w1runs.items():
        out[name] = {"mb_s": statistics.median(r["bytes"] / r["seconds"] / 1e6 for r in rs),
                     "server_cpu_per_gib": median(per(r["server_cpu"], r["bytes"], GIB)
                                                  for r in rs),
                     **errors_of(rs)}
    return out


# ---------------------------------------------------------------- W7: a response filter

W7_FILTER = "module transform_filter /bin/cat"
W7_APACHE = "Apache mod_ext_filter /bin/cat"
W7_EXEC = "module transform_exec /bin/cat FILE (ceiling)"
# For reference: what nginx does with the source alone (sendfile; proxy_pass), no filter.
W7_PLAIN = "nginx without a filter (reference)"
W7_NAMES = [W7_FILTER, W7_APACHE, W7_EXEC, W7_PLAIN]
W7_SOURCES = ["static", "proxied"]
# The slow client: a receive buffer this small (set before connect), a read of 64 KiB every
# 10 ms; it closes after sizes["w7_slow_s"] seconds.
W7_SLOW_RCVBUF = 16 * 1024
W7_SLOW_READ = 64 * 1024
W7_SLOW_PAUSE = 0.01
CLK_TCK = os.sysconf("SC_CLK_TCK")


def w7_label(source, sizes):
    if source == "static":
        return f"{sizes['w7'] // MIB} MiB static file"
    return f"{sizes['w7_proxy'] // MIB} MiB proxied response"


def w7_path(name, source, files):
    """The URL path of `source` on contestant `name`: the filter and Apache serve the file (an
    alias) or proxy the upstream through /bin/cat (the reference, without it); the ceiling runs
    /bin/cat on the file."""
    base = os.path.basename(files[source][0])
    if name == W7_EXEC:
        return f"/w7/exec/{base}"
    return f"/w7/filter/{base}" if source == "static" else f"/w7/proxy/{base}"


def stat_cpu(pids):
    """{pid: (own, reaped children's)} CPU seconds from /proc/<pid>/stat: utime+stime, and
    cutime+cstime."""
    out = {}
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        ut, st, cut, cst = (int(x) for x in fields[11:15])  # fields 14..17 of proc(5)
        out[p] = ((ut + st) / CLK_TCK, (cut + cst) / CLK_TCK)
    return out


class W7Measure:
    """A contestant's CPU over one W7 load, the cat programs' included: with cgroups, Measure's
    (server CPU: the run time of the processes that existed before the load; programs' CPU: the
    rest of the cgroup's growth, the cat from its fork); without, the server processes'
    /proc/<pid>/stat, whose cutime+cstime is the cat programs they reaped (nginx's worker and
    Apache's process both wait for their filter program)."""

    def __init__(self, con):
        # Sampled: the temporary files (nginx spools a proxied response the filter cannot take
        # as fast as the upstream sends it, with proxy_buffering on).
        self.m = Measure(con, con.temp, sample=bool(con.temp))
        self.stat0 = stat_cpu(self.m.server)

    def finish(self):
        f = self.m.finish()
        if f["programs_cpu"] is None:
            stat1 = stat_cpu(self.m.server)
            f["programs_cpu"] = sum(stat1[p][1] - self.stat0[p][1] for p in stat1
                                    if p in self.stat0)
        return f


def w7_fetch(url, timeout=60):
    """One GET read to its end by a plain client (Connection: close): (status, framing, body
    bytes, the body's SHA-256); ValueError when the body is cut or its framing is broken."""
    hostport, path = url[len("http://"):].split("/", 1)
    host, port = hostport.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
                     .encode())
        f = sock.makefile("rb", buffering=MIB)
        status = int(f.readline().split()[1])
        headers = {}
        while True:
            line = f.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, v = line.decode("latin-1").split(":", 1)
            headers[k.strip().lower()] = v.strip()
        h, total = hashlib.sha256(), 0

        def take(n):
            nonlocal total
            while n:
                piece = f.read(min(n, MIB))
                if not piece:
                    raise ValueError(f"cut after {total} body bytes")
                h.update(piece)
                total += len(piece)
                n -= len(piece)

        if "chunked" in headers.get("transfer-encoding", "").lower():
            framing = "chunked"
            while True:
                line = f.readline()
                if not line.endswith(b"\r\n"):
                    raise ValueError(f"cut after {total} body bytes (chunked)")
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        line = f.readline()
                        if line == b"\r\n":
                            break
                        if not line:
                            raise ValueError("no CRLF after the last chunk")
                    break
                take(size)
                if f.read(2) != b"\r\n":
                    raise ValueError(f"no CRLF after a chunk, at {total} body bytes")
        elif "content-length" in headers:
            framing = "Content-Length"
            take(int(headers["content-length"]))
        else:
            framing = "close"
            while True:
                piece = f.read(MIB)
                if not piece:
                    break
                h.update(piece)
                total += len(piece)
    return status, framing, total, h.hexdigest()


def w7_verify(url, n, sha):
    """The whole body, checked: its length and its SHA-256 against the file's."""
    try:
        status, framing, total, digest = w7_fetch(url)
    except (OSError, ValueError) as e:
        return {"errors": 1, "first_error": f"checked GET: {e}", "framing": None, "sha": "n/a"}
    err = ""
    if status != 200:
        err = f"status {status}"
    elif total != n:
        err = f"a body of {total} bytes, not {n}"
    elif digest != sha:
        err = "the body's SHA-256 is not the file's"
    return {"errors": int(bool(err)), "first_error": err, "framing": framing,
            "sha": "n/a" if status != 200 or total != n else ("ok" if digest == sha else "differs")}


def w7_once(con, url, n):
    m = W7Measure(con)
    try:
        r = get(url, expect=n)
        time.sleep(0.2)  # the cat exits
    finally:
        figures = m.finish()
    r.update(figures)
    return r


def response_prefix(raw):
    """(status, the body's first bytes) of the start of a response (chunked or not)."""
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        raise ValueError(f"no complete header in {len(raw)} bytes")
    lines = bytes(raw[:head_end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    chunked = any(line.lower().startswith("transfer-encoding:") and "chunked" in line.lower()
                  for line in lines[1:])
    pos = head_end + 4
    if not chunked:
        return status, bytes(raw[pos:])
    body = bytearray()
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            break
        size = int(bytes(raw[pos:eol]).split(b";")[0], 16)
        if size == 0:
            break
        start = eol + 2
        body += raw[start:start + size]
        if len(raw) < start + size + 2:
            break
        pos = start + size + 2
    return status, bytes(body)


def w7_slow(con, url, path, seconds):
    """A client reading slowly (W7_SLOW_*) for `seconds`, then closing: the RSS of each of the
    contestant's server processes (those that exist before it: nginx's master and workers,
    Apache's processes; not the cat), sampled every 10 ms by a high-priority thread, its peak
    growth over its RSS before (the largest: the process serving the client), the peak of the
    temporary files they hold, and what the client got (checked against the file's first bytes);
    then whether the cat went away after the client did."""
    server = con.pids()
    before = {p: rss_kib(p) for p in server}
    peak = dict(before)
    peak_temp = 0
    stop = threading.Event()

    def sample():
        nonlocal peak_temp
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -20)
        except OSError:
            pass
        while not stop.is_set():
            for p in server:
                peak[p] = max(peak[p], rss_kib(p))
            if con.temp:
                peak_temp = max(peak_temp, temp_bytes(server, con.temp))
            stop.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    raw, err = bytearray(), ""
    hostport, rest = url[len("http://"):].split("/", 1)
    start = time.monotonic()
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, W7_SLOW_RCVBUF)
            sock.settimeout(10)
            host, port = hostport.rsplit(":", 1)
            sock.connect((host, int(port)))
            sock.sendall(f"GET /{rest} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
                         .encode())
            while time.monotonic() - start < seconds:
                piece = sock.recv(W7_SLOW_READ)
                if not piece:
                    break
                raw += piece
                time.sleep(W7_SLOW_PAUSE)
    except OSError as e:
        err = f"slow client: {e}"
    took = time.monotonic() - start
    time.sleep(0.2)  # what the server does once the client is gone counts too
    stop.set()
    sampler.join()
    # The client went away: its cat must go too.
    end = time.time() + 3
    left = [p for p in con.pids() if p not in before]
    while left and time.time() < end:
        time.sleep(0.05)
        left = [p for p in con.pids() if p not in before]
    if not err:
        try:
            status, body = response_prefix(raw)
            with open(path, "rb") as f:
                want = f.read(len(body))
            if status != 200:
                err = f"status {status}"
            elif not body:
                err = "no body byte received"
            elif body != want:
                err = f"the first {len(body)} body bytes are not the file's"
        except ValueError as e:
            err = str(e)
    growth = max((peak[p] - before[p] for p in server), default=0) / 1024.0
    return {"rss_growth_mib": growth, "peak_temp": peak_temp, "bytes": len(raw),
            "mb_s": len(raw) / took / 1e6, "left": len(left), "errors": int(bool(err)),
            "first_error": err}


def w7(s, cg, sizes):
    """W7: a response filter: /bin/cat over a static file and over a proxied response (from an
    upstream nginx of its own, in a cgroup of its own: its CPU is no contestant's), on the
    module's transform_filter, on Apache's mod_ext_filter (mod_proxy for the proxied one), and
    on the ceiling: transform_exec /bin/cat FILE. Each response is first read whole and its
    SHA-256 checked against the file's, then the contestants run in alternating rounds (the
    order reversed every other round; medians reported), then a slow client reads the filtered
    responses."""
    files = s.make_w7_files(sizes)
    prefixes = []
    try:
        return w7_run(s, cg, sizes, files, prefixes)
    finally:
        # Stopped together (a graceful quit takes nginx a second or two), then nginx's
        # complaints are read, at its stop too.
        stops = [threading.Thread(target=s.stop_nginx_at, args=(prefix,)) for prefix in prefixes
                 if prefix in s.nginx_prefixes]
        for t in stops:
            t.start()
        for t in stops:
            t.join()
        alerts = []
        for prefix in prefixes:
            try:
                with open(os.path.join(prefix, "logs", "error.log")) as f:
                    alerts += [f"{os.path.basename(prefix)}: {line.rstrip()}" for line in f
                               if any(x in line for x in ("[alert]", "[crit]", "[emerg]"))]
            except OSError:
                pass
        for line in alerts:
            log(f"W7 nginx: {line}")
        s.w7_alerts = alerts


def w7_run(s, cg, sizes, files, prefixes):
    problems = {}  # contestant (or "upstream") -> why it could not run
    cons = {}
    up_port = None
    try:
        up = s.start_w7_nginx("upstream", files)
        prefixes.append(up["prefix"])
        up_port = up["port"]
    except RuntimeError as e:
        problems["upstream"] = str(e)
        up_port = free_port()  # nothing listens: the proxied source errs everywhere
    starts = ((W7_FILTER, lambda: s.start_w7_nginx("filter", files, up_port)),
              (W7_APACHE, lambda: s.start_w7_apache(up_port)),
              (W7_EXEC, lambda: s.start_w7_nginx("exec", files)),
              (W7_PLAIN, lambda: s.start_w7_nginx("plain", files, up_port)))
    for name, start in starts:
        try:
            inst = start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            problems[name] = str(e)
            log(f"W7 {name}: COULD NOT RUN: {e}")
            continue
        base = f"http://127.0.0.1:{inst['port']}"
        if "prefix" in inst:
            prefixes.append(inst["prefix"])
        if name == W7_APACHE:
            cons[name] = Contestant(cg, name, base, "", [inst["group"]],
                                    lambda p=inst["proc"].pid: [p])
        else:
            cons[name] = Contestant(cg, name, base, "", [inst["group"]],
                                    lambda m=inst["master"]: [m], inst["temp"])
    checked, runs = {}, {}
    for source in W7_SOURCES:
        path, n, sha = files[source]
        for name in W7_NAMES:
            if name in cons:
                v = w7_verify(cons[name].base + w7_path(name, source, files), n, sha)
                checked[(source, name)] = v
                log(f"W7 {name}, {w7_label(source, sizes)}: checked GET: {v['framing']}, SHA-256 "
                    f"{v['sha']}{', ' + v['first_error'] if v['errors'] else ''}")
    for rnd in range(sizes["w7_rounds"]):
        order = W7_NAMES if rnd % 2 == 0 else W7_NAMES[::-1]
        for source in W7_SOURCES:
            path, n, sha = files[source]
            for name in order:
                if name not in cons:
                    continue
                r = w7_once(cons[name], cons[name].base + w7_path(name, source, files), n)
                runs.setdefault((source, name), []).append(r)
                log(f"W7 {name}, {w7_label(source, sizes)}: {r['bytes'] / r['seconds'] / 1e6:.0f}"
                    f" MB/s, {r['errors']} errors")
    out = {}
    for source in W7_SOURCES:
        for name in W7_NAMES:
            row = {"source": source, "contestant": name, "mb_s": None, "cpu_per_gib": None,
                   "server_cpu_per_gib": None, "programs_cpu_per_gib": None, "peak_temp": None,
                   "framing": None, "sha": "n/a", "errors": 0, "first_error": ""}
            why = problems.get(name) or (problems.get("upstream") if source == "proxied" and
                                         name != W7_EXEC else None)
            if name not in cons:
                row.update(errors=1, first_error=f"did not run: {why}")
            else:
                rs = runs.get((source, name), [])
                v = checked[(source, name)]
                e = errors_of(rs + [v])
                total = [None if r["programs_cpu"] is None else r["server_cpu"] + r["programs_cpu"]
                         for r in rs]
                row.update(
                    mb_s=statistics.median(r["bytes"] / r["seconds"] / 1e6 for r in rs),
                    cpu_per_gib=median(per(t, r["bytes"], GIB) for t, r in zip(total, rs)),
                    server_cpu_per_gib=median(per(r["server_cpu"], r["bytes"], GIB) for r in rs),
                    programs_cpu_per_gib=median(per(r["programs_cpu"], r["bytes"], GIB)
                                                for r in rs),
                    # nginx's temporary files (Apache's mod_proxy spools nothing)
                    peak_temp=max(r["peak_temp"] for r in rs) if cons[name].temp else None,
                    framing=v["framing"], sha=v["sha"], **e)
            out[f"{name}, {w7_label(source, sizes)}"] = row
    slow = {}
    for name, source in sizes["w7_slow"]:
        key = f"{name}, {w7_label(source, sizes)}"
        if name not in cons:
            slow[key] = {"source": source, "contestant": name, "rss_growth_mib": None,
                         "peak_temp": None, "bytes": 0, "mb_s": None, "left": None, "errors": 1,
                         "first_error": f"did not run: {problems.get(name)}"}
            continue
        path = files[source][0]
        r = w7_slow(cons[name], cons[name].base + w7_path(name, source, files), path,
                    sizes["w7_slow_s"])
        if r["left"] and name != W7_APACHE:  # the module must stop the program of a client gone
            r["errors"] += 1
            r["first_error"] = r["first_error"] or (
                f"{r['left']} program(s) still running 3 s after the client went away")
        r.update(source=source, contestant=name)
        slow[key] = r
        log(f"W7 slow client, {key}: RSS +{r['rss_growth_mib']:.1f} MiB, temp {r['peak_temp']} "
            f"B, {r['mb_s']:.1f} MB/s, {r['left']} program(s) left, {r['errors']} errors"
            f"{' (' + r['first_error'] + ')' if r['errors'] else ''}")
    return out, slow, problems


# ---------------------------------------------------------------- W8: a program kept alive

# Debian's Python, whose python3-pil W8 uses (not a python3 found first on PATH, e.g. pyenv's).
W8_PYTHON = "/usr/bin/python3"
# The Python processes of the pool (processes=N in the single worker of its nginx) and of uWSGI.
W8_PROCESSES = 2
W8_THUMB = (200, 150)
W8_16 = b"x" * 16  # what transform-bench produce 16 writes, and the pooled 16-byte programs
W8_POOL = "module transform_pool (Python + PIL, kept alive)"
W8_EXEC = "module transform_exec (python3 per request)"
W8_UWSGI = "uWSGI (the WSGI app in-process), uwsgi_pass"
W8_FCGI = "fcgiwrap (a CGI per request), fastcgi_pass"
W8_P16 = "module transform_pool, 16 bytes (C, kept alive)"
W8_P16_PY = "module transform_pool, 16 bytes (Python, kept alive)"
W8_W2 = "W2's program: transform_exec produce 16 (per request)"
W8_THUMBS = [W8_POOL, W8_EXEC, W8_UWSGI, W8_FCGI]
W8_SIXTEEN = [W8_P16, W8_P16_PY, W8_W2]
W8_NAMES = W8_THUMBS + W8_SIXTEEN
W8_POOLED = {W8_POOL, W8_P16, W8_P16_PY}
# Short names: the nginx prefixes and cgroups (nginx-w8-...).
W8_TAGS = {W8_POOL: "pool", W8_EXEC: "exec", W8_UWSGI: "uwsgi", W8_FCGI: "fcgiwrap",
           W8_P16: "pool16", W8_P16_PY: "pool16-python", W8_W2: "w2"}
# Requests at once in the check before the timed rounds (the pool starts its processes then).
W8_CHECK_CONNS = 4
# wrk's --timeout: a contestant that starts python3 per request answers 8 connections in
# about a second on 2 cores, near wrk's default of 2 s; slow is measured, not an error.
W8_WRK_TIMEOUT_S = 10


def jpeg_size(data):
    """(width, height) of a whole baseline or progressive JPEG; ValueError otherwise."""
    if data[:2] != b"\xff\xd8":
        raise ValueError(f"not a JPEG (starts {data[:4].hex()})")
    if data[-2:] != b"\xff\xd9":
        raise ValueError("a JPEG without its end marker (cut?)")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                      0xCF):
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return w, h
        if marker == 0xDA:
            break
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    raise ValueError("a JPEG without a frame header")


def w8_fetch(port, path, timeout=30):
    """One GET (Connection: close) read whole: (status, headers, body); ValueError/OSError."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                     .encode())
        raw = bytearray()
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            raw += piece
    return parse_response_full(raw)


def w8_check_one(name, port):
    """'' when one response of contestant `name` is right (a 200; a JPEG of W8_THUMB, typed
    image/jpeg; or exactly W8_16), else what is wrong; and the body's length."""
    try:
        status, headers, body = w8_fetch(port, "/w8")
    except (OSError, ValueError) as e:
        return f"checked GET: {e}", 0
    if status != 200:
        return f"checked GET: status {status}", len(body)
    if name in W8_SIXTEEN:
        return ("" if body == W8_16 else f"checked GET: {len(body)} bytes, not the 16 x "
                f"expected ({body[:32]!r})"), len(body)
    if headers.get("content-type") != "image/jpeg":
        return f"checked GET: Content-Type {headers.get('content-type')!r}", len(body)
    try:
        size = jpeg_size(body)
    except ValueError as e:
        return f"checked GET: {e}", len(body)
    if size != W8_THUMB:
        return f"checked GET: a {size[0]}x{size[1]} JPEG, not {W8_THUMB[0]}x{W8_THUMB[1]}", \
            len(body)
    return "", len(body)


def w8_check(name, port):
    """W8_CHECK_CONNS requests at once, each checked (w8_check_one): (errors, first error,
    body bytes)."""
    results = [None] * W8_CHECK_CONNS

    def one(k):
        results[k] = w8_check_one(name, port)
    threads = [threading.Thread(target=one, args=(k,)) for k in range(W8_CHECK_CONNS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad = [err for err, _ in results if err]
    return len(bad), (bad[0] if bad else ""), max(n for _, n in results)


def pool_processes(master):
    """The pids of the processes the workers of nginx `master` run (the pool's, when idle)."""
    return sorted(p for w in children(master) for p in children(w))


class W8Measure:
    """CPU over one W8 load: nginx's (the scheduler's run time of its master and workers), and
    with cgroups the contestant's whole (the growth of its cgroups' counters: nginx, the pool's
    processes or the programs it starts, uWSGI's processes, fcgiwrap and its CGIs); the programs'
    is the difference. Also what the rest of the machine took meanwhile (a shared machine: a
    build elsewhere disturbs the figures): the busy CPU time of /proc/stat less the contestant's,
    wrk's and this driver's, in percent of the machine's (with cgroups only)."""

    def __init__(self, con, master):
        self.con = con
        self.nginx = [master] + children(master)
        self.nginx0 = {p: own_cpu(p) for p in self.nginx}
        self.total0 = con.cpu_total()
        self.stat0, self.wall0 = cpu_times(), time.monotonic()
        self.ru0 = [resource.getrusage(w) for w in (resource.RUSAGE_CHILDREN,
                                                     resource.RUSAGE_SELF)]

    def finish(self):
        nginx = 0.0
        for p, before in self.nginx0.items():
            after = own_cpu(p)
            if after is not None and before is not None:
                nginx += after - before
        total = self.con.cpu_total()
        total = None if total is None else total - self.total0
        wall = time.monotonic() - self.wall0
        d = [b - a for a, b in zip(self.stat0, cpu_times())]
        busy = (sum(d) - d[3] - d[4]) / CLK_TCK  # all but idle and iowait (steal included)
        ours = sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in
                   zip(self.ru0, (resource.getrusage(w) for w in (resource.RUSAGE_CHILDREN,
                                                                 resource.RUSAGE_SELF))))
        others = None if total is None else max(busy - total - ours, 0.0)
        return {"nginx_cpu": nginx, "total_cpu": total,
                "programs_cpu": None if total is None else max(total - nginx, 0.0),
                "others_cpu_pct": per(others, wall * (os.cpu_count() or 1), 100.0)}


def w8(s, cg, sizes):
    """W8: a program kept alive. A 200x150 thumbnail of a 1 MB JPEG with PIL, the same code in
    every contestant (bench/w8_thumb.py): the module's pool (examples/pool/transformer.py's loop
    around it), transform_exec (python3 per request), uWSGI (a WSGI app) and fcgiwrap (a CGI per
    request); and 16 bytes from a pooled program (C, and Python) against W2's 16-byte program
    spawned per request. Each contestant has an nginx of its own (in a cgroup of its own); each
    is checked (W8_CHECK_CONNS requests at once, every response verified) before alternating
    timed rounds under wrk (the order reversed every other round; medians reported), each load
    preceded by the same check as a warm-up."""
    problems, cons, insts = {}, {}, {}
    setup = {}
    try:
        files = s.make_w8_files()
        setup = {k: files[k] for k in ("image_bytes", "image_made")}
        log(f"W8 picture: {files['image_made']}")
        problems.update(s.start_w8_backends())
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        for name in W8_NAMES:
            problems[name] = f"W8 could not be set up: {e}"
        log(f"W8: COULD NOT RUN: {e}")
    backend = {W8_UWSGI: ("uwsgi-w8", lambda: [s.w8_uwsgi.pid]),
               W8_FCGI: ("fcgiwrap-w8", lambda: [s.w8_fcgiwrap.pid])}
    for name in W8_NAMES:
        if name in problems:
            continue
        try:
            inst = s.start_w8_nginx(name)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            problems[name] = str(e)
            log(f"W8 {name}: COULD NOT RUN: {e}")
            continue
        insts[name] = inst
        groups, roots = [inst["group"]], [lambda m=inst["master"]: [m]]
        if name in backend:
            groups.append(backend[name][0])
            roots.append(backend[name][1])
        cons[name] = Contestant(cg, name, f"http://127.0.0.1:{inst['port']}", "/w8", groups,
                                lambda rs=tuple(roots): [p for r in rs for p in r()])
    try:
        return w8_run(s, sizes, problems, cons, insts) + (setup,)
    finally:
        stops = [threading.Thread(target=s.stop_nginx_at, args=(inst["prefix"],))
                 for inst in insts.values() if inst["prefix"] in s.nginx_prefixes]
        for t in stops:
            t.start()
        for t in stops:
            t.join()
        alerts = []
        for inst in insts.values():
            try:
                with open(os.path.join(inst["prefix"], "logs", "error.log")) as f:
                    alerts += [f"{os.path.basename(inst['prefix'])}: {line.rstrip()}" for line in f
                               if any(x in line for x in ("[alert]", "[crit]", "[emerg]"))]
            except OSError:
                pass
        for line in alerts:
            log(f"W8 nginx: {line}")
        s.w8_alerts = alerts


def w8_run(s, sizes, problems, cons, insts):
    t, rounds = sizes["w8_seconds"], sizes["w8_rounds"]
    checked = {}
    for name in W8_NAMES:
        if name not in cons:
            continue
        errors, first, nbytes = w8_check(name, insts[name]["port"])
        checked[name] = {"errors": errors, "first_error": first, "body_bytes": nbytes}
        log(f"W8 {name}: checked {W8_CHECK_CONNS} GETs at once: "
            + (f"{errors} wrong, first: {first}" if errors else f"right ({nbytes} bytes)"))
    timed = [n for n in W8_NAMES if n in cons and not checked[n]["errors"]]
    runs = {}
    for rnd in range(rounds):
        for name in (timed if rnd % 2 == 0 else timed[::-1]):
            con, master = cons[name], insts[name]["master"]
            # Warm-up, untimed, for every contestant alike: W8_CHECK_CONNS requests at once,
            # checked. A pool starts its processes again here: wrk ends its run with requests in
            # flight, and the module kills a pooled process whose client went away (and
            # idle_timeout retires the idle ones between rounds).
            warm_errors, warm_first, _ = w8_check(name, insts[name]["port"])
            before = pool_processes(master) if name in W8_POOLED else None
            # The pool's processes a second before wrk stops (not after: see above).
            late = []
            snap = threading.Timer(max(t - 1.0, 0.5), lambda: late.append(pool_processes(master)))
            m = W8Measure(con, master)
            if before is not None:
                snap.start()
            try:
                r = wrk(con.base + con.path, t, timeout_s=W8_WRK_TIMEOUT_S)
            finally:
                snap.cancel()
                r.update(m.finish())
            if warm_errors:
                r["errors"] += warm_errors
                r["first_error"] = r["first_error"] or f"warm-up: {warm_first}"
            if before is not None:
                # A worker may start processes it had not needed yet (up to processes=N), but
                # nothing retires one during the load: a process gone is a process replaced.
                during = late[0] if late else pool_processes(master)
                r["processes"] = len(during)
                gone = sorted(set(before) - set(during))
                if gone:
                    r["errors"] += 1
                    r["first_error"] = r["first_error"] or (
                        f"pool processes {gone} were replaced during the load ({before} -> "
                        f"{during})")
            runs.setdefault(name, []).append(r)
            log(f"W8 {name}: {r['rps']:.0f} req/s, p99 {r['p99_ms']:.2f} ms, "
                f"{fmt(per(r['total_cpu'], r['requests'], 1e6), 0)} CPU us/req, "
                f"{r['errors']} errors; other processes took {fmt(r['others_cpu_pct'], 1)}% of "
                "the machine")
    out = {}
    for name in W8_NAMES:
        row = {"rps": None, "p99_ms": None, "cpu_us_per_req": None, "nginx_us_per_req": None,
               "programs_us_per_req": None, "processes": None, "body_bytes": None,
               "others_cpu_pct": None, "errors": 0, "first_error": ""}
        if name not in cons:
            row.update(errors=1, first_error=f"did not run: {problems.get(name)}")
        else:
            rs = runs.get(name, [])
            e = errors_of(rs + [checked[name]])
            row.update(body_bytes=checked[name]["body_bytes"], **e)
            if rs:
                row.update(
                    rps=statistics.median(r["rps"] for r in rs),
                    p99_ms=statistics.median(r["p99_ms"] for r in rs),
                    cpu_us_per_req=median(per(r["total_cpu"], r["requests"], 1e6) for r in rs),
                    nginx_us_per_req=median(per(r["nginx_cpu"], r["requests"], 1e6) for r in rs),
                    programs_us_per_req=median(per(r["programs_cpu"], r["requests"], 1e6)
                                               for r in rs),
                    processes=max(r["processes"] for r in rs) if name in W8_POOLED else None,
                    rounds_rps=[r["rps"] for r in rs],
                    # the worst round: a disturbed one shows
                    others_cpu_pct=None if any(r["others_cpu_pct"] is None for r in rs) else
                    max(r["others_cpu_pct"] for r in rs))
        out[name] = row
    return out, problems


# ---------------------------------------------------------------- report
# ---------------------------------------------------------------- W1t: W1 over TLS and HTTP/2

W1T_PROTOCOLS = [("HTTP/1.1 + TLS 1.3", "--http1.1", "1.1"), ("HTTP/2 + TLS 1.3", "--http2", "2")]
W1T_MODULE = "module (transform_exec)"
W1T_STATIC = "nginx static file"


def make_cert(d):
    """A self-signed P-256 certificate and key in `d`: (certificate, key)."""
    crt, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run([tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt, "-days", "2",
                    "-subj", "/CN=localhost"], check=True, timeout=60, capture_output=True)
    return crt, key


def proc_cpu(pid):
    """(own utime + stime, reaped children's cutime + cstime) of `pid`, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = [int(x) for x in fields[11:15]]
    return (ticks[0] + ticks[1]) / CLK_TCK, (ticks[2] + ticks[3]) / CLK_TCK


def curl_get(url, flag, version, n):
    """One GET with curl (-k, the protocol of `flag`), body dropped: bytes, seconds, errors (a
    failed transfer, a status other than 200, a size other than `n`, another protocol than
    `version`)."""
    limit = max(60, n / 20e6)
    argv = ["curl", "-sk", flag, "-o", "/dev/null", "--max-time", f"{limit:.0f}", "-w",
            "%{size_download} %{time_total} %{http_code} %{http_version}", url]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=limit + 30)
    try:
        size, secs, code, got = p.stdout.split()
        size, secs = int(size), float(secs)
    except ValueError:
        size, secs, code, got = 0, 0.0, "?", "?"
    bad = ""
    if p.returncode != 0:
        bad = f"curl exit status {p.returncode}"
    elif code != "200":
        bad = f"status {code}"
    elif size != n:
        bad = f"{size} bytes, not {n}"
    elif got != version:
        bad = f"HTTP/{got}, not HTTP/{version}"
    return {"bytes": size, "seconds": secs, "errors": 1 if bad else 0, "first_error": bad}


def w1t(s, sizes):
    """W1t: one stream of W1's size over TLS 1.3 (HTTP/1.1, and HTTP/2), the module against nginx
    serving a file of the same size from the same server (one nginx, one worker: its CPU is the
    figure), client curl; rounds alternate the contestants."""
    n = sizes["w1t"]
    s.make_static({n})
    prefix = os.path.join(s.dir, "w1t")
    os.makedirs(os.path.join(prefix, "logs"))
    crt, key = make_cert(prefix)
    port = free_port()
    conf = f"""
load_module {MODULE};
worker_processes 1;
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    root {s.dir}/static;
    server {{
        listen 127.0.0.1:{port} ssl backlog=1024;
        http2 on;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        location ~ ^/module/(\\d+)$ {{ transform_exec {BENCH} produce $1; }}
        location /static/ {{ }}
    }}
}}
"""
    inst = s.launch_nginx("w1t", prefix, conf, port)
    out, alerts = {}, []
    try:
        worker = nginx_workers(inst["master"])[0]
        base = f"https://127.0.0.1:{port}"
        paths = {W1T_MODULE: f"/module/{n}", W1T_STATIC: f"/static/{n}"}
        for proto, flag, version in W1T_PROTOCOLS:
            runs = {name: [] for name in paths}
            for _ in range(sizes["w1t_rounds"]):
                for name, path in paths.items():  # A B A B
                    own0, kids0 = proc_cpu(worker)
                    r = curl_get(base + path, flag, version, n)
                    time.sleep(0.2)  # the program exits, the worker reaps it
                    own1, kids1 = proc_cpu(worker)
                    r.update(worker_cpu=own1 - own0, programs_cpu=kids1 - kids0)
                    runs[name].append(r)
                    log(f"W1t {name}, {proto}: {r['bytes'] / max(r['seconds'], 1e-9) / 1e6:.0f} "
                        f"MB/s, worker CPU {r['worker_cpu']:.2f} s, {r['errors']} errors")
            for name, rs in runs.items():
                out[f"{name}, {proto}"] = {
                    "contestant": name, "protocol": proto,
                    "mb_s": statistics.median(r["bytes"] / max(r["seconds"], 1e-9) / 1e6
                                              for r in rs),
                    "worker_cpu_per_gib": median(per(r["worker_cpu"], r["bytes"], GIB)
                                                 for r in rs),
                    "programs_cpu_per_gib": median(per(r["programs_cpu"], r["bytes"], GIB)
                                                   for r in rs),
                    **errors_of(rs)}
    finally:
        s.stop_nginx_at(prefix)
        alerts = nginx_alerts(prefix, "w1t")
    return out, alerts


def nginx_alerts(prefix, tag):
    """The [alert], [crit] and [emerg] lines of the error log in `prefix`."""
    try:
        with open(os.path.join(prefix, "logs", "error.log")) as f:
            return [f"{tag}: {line.rstrip()}" for line in f
                    if any(x in line for x in ("[alert]", "[crit]", "[emerg]"))]
    except OSError:
        return []


# ---------------------------------------------------------------- W9: thousands of streams

W9_BYTES = 4 * MIB
W9_SMALL = "/module/16"
W9_SLOW_RATE = 64 * 1024
# W9b's streams: longer than the clients read (they close after w9_slow_seconds), so the
# programs are still writing when the memory is sampled. On loopback a 4 MiB stream fits in the
# sockets' buffers and its program ends at once.
W9_SLOW_BYTES = 256 * MIB
# W9b's sockets: the servers' send buffer (nginx `listen ... sndbuf=`, on a port of its own) and
# the clients' receive buffer, fixed so that 2000 connections stay within the kernel's tcp_mem
# (autotuned, both ends grow to MiBs and the kernel resets connections: "TCP: out of memory").
W9_SLOW_SNDBUF = 128 * 1024
W9_SLOW_RCVBUF = 64 * 1024
W9_SPLICE, W9_BUFFERED = "module (splice)", "module (buffered)"
W9_STATIC, W9_RELAY = "nginx static file", "standalone relay (relay-mt), vmsplicing producer"
# The same relay run as root, whose pipes no per-user budget limits (for reference: nginx's
# workers do not run as root).
W9_RELAY_ROOT = "standalone relay as root (no pipe budget)"
W9_PROXY = "nginx proxy_pass to a static nginx"
F_GETPIPE_SZ = 1032


def tcp_mem_kib():
    """The kernel's memory in TCP buffers, every socket of the machine (/proc/net/sockstat)."""
    with open("/proc/net/sockstat") as f:
        m = re.search(r"^TCP:.* mem (\d+)", f.read(), re.M)
    return int(m.group(1)) * PAGE_KIB if m else 0


def w9_conf(s, prefix, port, body, slow_port):
    # 65536 descriptors asked, as the hard limit allows (setrlimit above it fails).
    nofile = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    return f"""
{"" if "transform_exec" not in body else f"load_module {MODULE};"}
worker_processes {s.workers};
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
worker_rlimit_nofile {nofile};
events {{ worker_connections 16384; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    root {s.dir}/static;
    {"transform_max_programs 4096;" if "transform_exec" in body else ""}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        listen 127.0.0.1:{slow_port} backlog=4096 sndbuf={W9_SLOW_SNDBUF};
        {body}
    }}
}}
"""


def start_w9_nginx(s, kind, origin=None):
    """W9's nginx servers, each in a cgroup of its own: `main` (the module's two transports and
    the static file), `origin` (a static nginx) and `proxy` (proxy_pass to `origin`, nginx's
    default proxy buffers; /module/16 for the small request)."""
    prefix = os.path.join(s.dir, f"w9-{kind}")
    os.makedirs(os.path.join(prefix, "logs"))
    port, slow_port = free_port(), free_port()
    small = f"location = {W9_SMALL} {{ transform_exec {BENCH} produce 16; }}"
    body = {
        "main": f"""location ~ ^/module/(\\d+)$ {{ transform_exec {BENCH} produce $1; }}
        location ~ ^/buffered/(\\d+)$ {{ transform_splice off; transform_exec {BENCH} produce $1; }}
        location /static/ {{ }}""",
        "origin": "location /static/ { }",
        # (No temporary files: 2000 slow clients would have it spool 2000 streams to disk; its
        # memory is its proxy_buffers either way, and the rest waits in the origin's socket as
        # the module's waits in the pipe.)
        "proxy": f"""location /static/ {{ proxy_pass http://127.0.0.1:{origin};
                                          proxy_max_temp_file_size 0; }}
        {small}""",
    }[kind]
    inst = s.launch_nginx(f"w9-{kind}", prefix, w9_conf(s, prefix, port, body, slow_port), port)
    inst["slow_port"] = slow_port
    inst["temp"] = [os.path.join(prefix, "proxy_temp")]
    return inst


class SmallProbe:
    """A client doing sequential GETs of 16 bytes from the module (keep-alive, 20 ms apart)
    while a load runs: latency p99 and max, errors (failed, not 200, not 16 bytes)."""

    PAUSE = 0.02

    def __init__(self, port):
        self.port = port
        self.times, self.errors, self.first_error = [], 0, ""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        import http.client
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -20)
        except OSError:
            pass
        conn = None
        while not self.stop.is_set():
            t = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("GET", W9_SMALL)
                resp = conn.getresponse()
                body = resp.read()
                self.times.append((time.perf_counter() - t) * 1000)
                if resp.status != 200 or len(body) != 16:
                    raise OSError(f"status {resp.status}, {len(body)} bytes")
            except (OSError, http.client.HTTPException) as e:
                self.errors += 1
                self.first_error = self.first_error or f"small request: {e}"
                if conn is not None:
                    conn.close()
                conn = None
            self.stop.wait(self.PAUSE)
        if conn is not None:
            conn.close()

    def finish(self):
        self.stop.set()
        self.thread.join()
        t = sorted(self.times)
        return {"p99_ms": percentile(t, 0.99) if t else None, "max_ms": t[-1] if t else None,
                "small_requests": len(t), "small_errors": self.errors,
                "small_first_error": self.first_error}


WRK_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def wrk_stream(url, seconds, conns):
    """wrk over `conns` keep-alive connections for `seconds` (--timeout 30 s): bytes read,
    seconds, requests, errors (socket errors, non-2xx/3xx)."""
    threads = min(2, conns)
    argv = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s", "--timeout", "30s",
            url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120,
                         check=True).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m), ([\d.]+)(B|KB|MB|GB|TB) read", out)
    secs = float(m.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(3)]
    read = float(m.group(4)) * WRK_UNITS[m.group(5)]
    errors, first_error = wrk_errors(out)
    return {"bytes": read, "seconds": secs, "requests": int(m.group(1)), "errors": errors,
            "first_error": first_error}


def pipe_stats(pids):
    """For each process of `pids` whose stdout is a pipe: (bytes held, capacity), read through
    /proc/PID/fd/1 opened for reading (as root: the same pipe)."""
    import fcntl
    import termios
    out = []
    for pid in pids:
        try:
            fd = os.open(f"/proc/{pid}/fd/1", os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if not (os.fstat(fd).st_mode & 0o170000 == 0o010000):  # S_ISFIFO
                continue
            buf = bytearray(4)
            fcntl.ioctl(fd, termios.FIONREAD, buf)
            out.append((int.from_bytes(buf, sys.byteorder), fcntl.fcntl(fd, F_GETPIPE_SZ)))
        except OSError:
            pass
        finally:
            os.close(fd)
    return out


def as_workers_user():
    """The prefix that runs a command as nginx's workers run when the bench is root (`nobody`):
    the relay's pipes then share the per-user pipe budget (fs.pipe-user-pages-soft) as the
    workers' do; root's pipes are not limited."""
    if os.geteuid() != 0:
        return []
    pw = pwd.getpwnam("nobody")
    return [tool("setpriv"), f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]


def w9(s, cg, sizes):
    """W9: (a) the concurrency curve: wrk's keep-alive connections fetching 4 MiB streams, on the
    module's two transports, nginx static and the standalone relay; (b) slow clients reading
    long streams at 64 KiB/s, on the module's two transports and nginx proxy_pass; a small
    request's latency meanwhile."""
    s.make_static({W9_BYTES, W9_SLOW_BYTES})
    prefixes = []
    try:
        main = start_w9_nginx(s, "main")
        prefixes.append(main["prefix"])
        origin = start_w9_nginx(s, "origin")
        prefixes.append(origin["prefix"])
        proxy = start_w9_nginx(s, "proxy", origin=origin["port"])
        prefixes.append(proxy["prefix"])
        relay_port = free_port()
        relay = s.spawn("relay-mt", as_workers_user() + [BENCH, "relay-mt", str(relay_port),
                                                         "splice", BENCH, "produce", "{}"])
        wait_port(relay_port)
        root_port = free_port()
        relay_root = s.spawn("relay-mt-root", [BENCH, "relay-mt", str(root_port), "splice",
                                               BENCH, "produce", "{}"])
        wait_port(root_port)
        base = f"http://127.0.0.1:{main['port']}"
        mroots = lambda: [main["master"]]  # noqa: E731
        cons = {
            W9_SPLICE: Contestant(cg, W9_SPLICE, base, "/module/", [main["group"]], mroots),
            W9_BUFFERED: Contestant(cg, W9_BUFFERED, base, "/buffered/", [main["group"]],
                                    mroots),
            W9_STATIC: Contestant(cg, W9_STATIC, base, "/static/", [main["group"]], mroots),
            W9_RELAY: Contestant(cg, W9_RELAY, f"http://127.0.0.1:{relay_port}", "/relay/",
                                 ["relay-mt"], lambda: [relay.pid]),
            W9_RELAY_ROOT: Contestant(cg, W9_RELAY_ROOT, f"http://127.0.0.1:{root_port}",
                                      "/relay/", ["relay-mt-root"], lambda: [relay_root.pid]),
            W9_PROXY: Contestant(cg, W9_PROXY, f"http://127.0.0.1:{proxy['port']}", "/static/",
                                 [proxy["group"]], lambda: [proxy["master"]],
                                 temp=proxy["temp"]),
        }
        # Every contestant's bytes checked first: 4 streams of exactly 4 MiB each.
        checks = {}
        for name, con in cons.items():
            r = get(con.url(W9_BYTES), conns=4, expect=W9_BYTES, timeout=120)
            checks[name] = r
            if r["errors"]:
                log(f"W9 check {name}: {r['errors']} errors, first: {r['first_error']}")
        curve = w9_curve(s, sizes, cons, main, checks)
        slow = w9_slow(s, sizes, cons, {W9_SPLICE: main, W9_BUFFERED: main, W9_PROXY: proxy},
                       checks)
        return curve, slow, []
    finally:
        for prefix in prefixes:
            if prefix in s.nginx_prefixes:
                s.stop_nginx_at(prefix)
        s.w9_alerts = [a for p in prefixes for a in nginx_alerts(p, os.path.basename(p))]
        for line in s.w9_alerts:
            log(f"W9 nginx: {line}")


def w9_curve(s, sizes, cons, main, checks):
    out = {}
    for name in (W9_SPLICE, W9_BUFFERED, W9_STATIC, W9_RELAY, W9_RELAY_ROOT):
        c = checks[name]
        out[name] = {"points": {}, "errors": c["errors"],
                     "first_error": c["first_error"] and f"check: {c['first_error']}"}
    t = sizes["w9_seconds"]
    for conns in sizes["w9_points"]:
        for name in (W9_SPLICE, W9_BUFFERED, W9_STATIC, W9_RELAY, W9_RELAY_ROOT):
            con = cons[name]
            url = con.url(W9_BYTES)
            wrk_stream(url, sizes["w9_warmup"], conns)  # connections made, programs warm
            time.sleep(0.5)  # the warm-up's cut streams end
            m = Measure(con, sample=False)
            probe = SmallProbe(main["port"])
            try:
                r = wrk_stream(url, t, conns)
            finally:
                lat = probe.finish()
                cpu = m.finish()
            time.sleep(0.5)
            row = {"mb_s": r["bytes"] / max(r["seconds"], 1e-9) / 1e6, "requests": r["requests"],
                   "wrk_errors": r["errors"],
                   "server_cpu_per_gib": per(cpu["server_cpu"], r["bytes"], GIB),
                   "programs_cpu_per_gib": per(cpu["programs_cpu"], r["bytes"], GIB), **lat,
                   "errors": r["errors"] + lat["small_errors"],
                   "first_error": r["first_error"] or lat["small_first_error"]}
            out[name]["points"][str(conns)] = row
            out[name]["errors"] += row["errors"]
            out[name]["first_error"] = out[name]["first_error"] or row["first_error"]
            log(f"W9 {conns} connections, {name}: {row['mb_s']:.0f} MB/s, small request p99 "
                f"{fmt(row['p99_ms'], 1)} ms, {row['errors']} errors")
    return out


def w9_slow(s, sizes, cons, insts, checks):
    n, secs = sizes["w9_slow_conns"], sizes["w9_slow_seconds"]
    out = {}
    for name in (W9_SPLICE, W9_BUFFERED, W9_PROXY):
        con, inst = cons[name], insts[name]
        workers = nginx_workers(inst["master"])
        server = {inst["master"], *workers}
        before = sum(rss_kib(p) for p in workers)
        tcp0 = tcp_mem_kib()
        url = f"http://127.0.0.1:{inst['slow_port']}{con.path}{W9_SLOW_BYTES}"
        argv = [BENCH, "get", url, "--conns", str(n), "--rate", str(W9_SLOW_RATE),
                "--expect", str(W9_SLOW_BYTES), "--for", str(secs), "--rcvbuf",
                str(W9_SLOW_RCVBUF)]
        probe = SmallProbe(insts[W9_SPLICE]["port"] if name != W9_PROXY else inst["port"])
        start = time.time()
        client = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        rss, pipes, temp, programs, tcp = [], [], 0, [], []
        try:
            # The plateau: the last third, every connection made and its buffers full.
            while time.time() < start + secs * 2 / 3:
                time.sleep(0.1)
            while time.time() < start + secs - 0.5:
                rss.append(sum(rss_kib(p) for p in workers))
                tcp.append(tcp_mem_kib())
                others = [p for p in con.pids() if p not in server]
                programs.append(len(others))
                if name != W9_PROXY:
                    pipes = pipe_stats(others)  # the last sample's
                else:
                    temp = max(temp, temp_bytes(workers, con.temp))
                time.sleep(0.5)
            got, _ = client.communicate(timeout=secs + 120)
            r = json.loads(got)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
            lat = probe.finish()
        held = [h for h, _ in pipes]
        caps = {}
        for _, c in pipes:
            caps[c] = caps.get(c, 0) + 1
        plateau = statistics.median(rss) if rss else before
        c = checks[name]
        row = {"streams": n, "ok": r["ok"], "cut": r.get("cut", 0), "bytes": r["bytes"],
               "worker_rss_kib_per_stream": (plateau - before) / n,
               "tcp_kib_per_stream": ((statistics.median(tcp) if tcp else tcp0) - tcp0) / n,
               "worker_rss_before_mib": before / 1024, "worker_rss_plateau_mib": plateau / 1024,
               "programs": statistics.median(programs) if programs else 0,
               "pipes": len(pipes),
               "pipe_held_kib": statistics.mean(held) / 1024 if held else None,
               "pipe_capacity_kib": statistics.mean(c for _, c in pipes) / 1024 if pipes else None,
               "pipe_capacities": {str(k): v for k, v in sorted(caps.items())},
               "temp_bytes": temp, **lat,
               "errors": r["errors"] + lat["small_errors"] + c["errors"],
               "first_error": (r["first_error"] or lat["small_first_error"] or
                               (c["first_error"] and f"check: {c['first_error']}"))}
        out[name] = row
        log(f"W9 slow, {name}: {r['ok']}/{n} ok, worker RSS {row['worker_rss_kib_per_stream']:.1f} "
            f"KiB/stream, pipes {caps}, temp {temp} B, small p99 {fmt(row['p99_ms'], 1)} ms, "
            f"{row['errors']} errors")
        time.sleep(1.0)  # the cut streams end, their programs exit
    return out


def verdict(ok):
    return "met" if ok else "**missed**"


def fmt(value, digits):
    return "n/a" if value is None else f"{value:.{digits}f}"


def erred(res):
    """(workload, contestant, errors, first error) of every contestant that erred."""
    out = []
    for w in ("w1", "w1t", "w2", "w2s", "w3", "w4", "w5", "w6a", "w6b", "w7", "w7_slow", "w8",
              "w9", "w9_slow"):
        rows = res.get(w, {})
        if w == "w2s":
            rows = rows.get("rows", {})
        for name, r in rows.items():
            if r["errors"]:
                out.append((w.upper().replace("_SLOW", " slow client"), name, r["errors"],
                            r["first_error"]))
    for w in ("w1t", "w6", "w7", "w8", "w9"):
        if res.get(f"{w}_alerts"):
            out.append((w.upper(), "nginx's error log ([alert], [crit], [emerg] lines)",
                        len(res[f"{w}_alerts"]), res[f"{w}_alerts"][0]))
    return out


def report(res):
    s = res["sizes"]
    lines = []
    add = lines.append
    targets = []
    # A contestant that erred may have moved nothing.
    ratio = lambda a, b: math.nan if a is None or b is None else a / max(b, 1e-9)  # noqa: E731

    def who(name, r):  # a contestant that erred is flagged
        return f"{name} (**erred**)" if r["errors"] else name

    cfg, m = res["config"], res["method"]
    add("Method:\n")
    if "w1" in res or "w4" in res:
        add(f"- sizing: nginx {cfg['nginx_workers']} workers; uWSGI {cfg['uwsgi_processes']} "
            f"processes x {cfg['uwsgi_threads']} threads; fcgiwrap {cfg['fcgiwrap_processes']} "
            "processes (one request each); fcgiwrap runs the producer as its CGI program (it "
            "writes its own header): one exec per request for every contestant")
    add(f"- CPU: {m['cpu']}")
    if any(w in res for w in ("w1", "w2", "w3", "w4", "w5", "w6a")):
        add(f"- RSS: {m['rss']}")
    add("- errors: failed or short responses (W1, W3, W4, W7: bytes and MB/s are those "
        "received; W7 also a body whose SHA-256 is not the file's); wrk's socket errors and "
        "non-2xx/3xx responses (W2, W5, W8; W8 also a wrong response in its check)")
    if "w1t" in res:
        add("- W1t: curl -sk --http1.1|--http2 (a failed transfer, a status other than 200, a "
            "size other than asked or another protocol is an error); the worker's CPU is its "
            "utime+stime from /proc/PID/stat over the stream, programs' CPU its cutime+cstime")
    if "w9" in res:
        add(f"- W9: nginx {cfg['nginx_workers']} workers, worker_connections 16384, "
            "worker_rlimit_nofile 65536 (or the hard limit, when lower), transform_max_programs "
            "4096, backlog 4096; every "
            "contestant first serves 4 streams checked for their exact size; W9a errors are "
            "wrk's (socket errors, non-2xx) and the small request's (failed, not 200, not 16 "
            "bytes); MB/s is wrk's bytes read over its seconds; server and programs CPU from "
            "the cgroups as above (the static file shares the module's nginx: the small "
            "request's CPU is in its figure). W9b: `transform-bench get --rate 65536 --for S "
            f"--rcvbuf {W9_SLOW_RCVBUF // 1024}k` of {W9_SLOW_BYTES // MIB} MiB streams (longer "
            "than the run: the programs are still writing when sampled; a connection still "
            "healthy at S counts as ok) to a listen socket of their own with sndbuf="
            f"{W9_SLOW_SNDBUF // 1024}k (autotuned, both ends of 2000 connections outgrow the "
            "kernel's tcp_mem and it resets some), the proxy without temporary files "
            "(proxy_max_temp_file_size 0: its memory is its proxy_buffers either way); worker RSS: the sum of the "
            "contestant nginx's workers' RSS, median of samples every 0.5 s over the last "
            "third, less the sum before, over the streams; pipes: each program's stdout pipe "
            "opened through /proc/PID/fd/1 (FIONREAD held, F_GETPIPE_SZ capacity), last "
            "sample; kernel TCP buffers: /proc/net/sockstat's TCP mem (every "
            "socket, both ends) over the plateau less before, over the streams; the relay runs "
            "as nginx's workers do (nobody, when the bench runs as root), so that its pipes "
            "share the per-user pipe budget (fs.pipe-user-pages-soft) as theirs do")
    add("")
    if res.get("only") and set(res["only"]) != set(WORKLOADS):
        add(f"Workloads of this run: {', '.join(w.upper() for w in res['only'])} (`--only`).\n")
    steal = ", ".join(f"{w.upper()} {v:.1f}%" for w, v in res["steal"].items())
    add(f"CPU time taken by the hypervisor (steal) during each workload: {steal}. Figures from a "
        "workload with more than a few percent are disturbed.\n")
    if "w1" in res:
        w1r = res["w1"]
        relay = w1r["standalone splice relay"]
        mod = w1r["module (splice)"]
        add(f"### W1: one stream of {s['w1'] // MIB} MiB (median of {s['w1_rounds']})\n")
        add("| contestant | MB/s | x module | server CPU s/GiB | programs CPU s/GiB | errors |")
        add("|---|---:|---:|---:|---:|---:|")
        for name, r in w1r.items():
            add(f"| {who(name, r)} | {r['mb_s']:.0f} | {r['mb_s'] / max(mod['mb_s'], 1e-9):.2f} "
                f"| {fmt(r['server_cpu_per_gib'], 3)} | {fmt(r['programs_cpu_per_gib'], 3)} | "
                f"{r['errors']} |")
        add("")
        fc, uw = w1r["fcgiwrap (buffering on)"], w1r["uWSGI Python app"]
        targets += [
            ("W1 throughput >= 0.9x splice relay", ratio(mod["mb_s"], relay["mb_s"]), 0.9, ">="),
            ("W1 server CPU/GiB <= 1.2x splice relay",
             ratio(mod["server_cpu_per_gib"], relay["server_cpu_per_gib"]), 1.2, "<="),
            ("W1 throughput >= 2x fcgiwrap (buffering on)", ratio(mod["mb_s"], fc["mb_s"]), 2.0,
             ">="),
            ("W1 throughput >= 2x fcgiwrap (buffering off)",
             ratio(mod["mb_s"], w1r["fcgiwrap (buffering off)"]["mb_s"]), 2.0, ">="),
            ("W1 throughput >= 2x uWSGI app", ratio(mod["mb_s"], uw["mb_s"]), 2.0, ">="),
        ]
    if "w2" in res:
        w2r = res["w2"]
        add(f"### W2: a 16-byte program under wrk ({WRK_CONNS} connections, {s['w2_seconds']} s, "
            f"median of {s['wrk_rounds']})\n")
        add("| contestant | requests/s | p99 ms | server CPU ms/req | programs CPU ms/req | "
            "errors |")
        add("|---|---:|---:|---:|---:|---:|")
        for name, r in w2r.items():
            add(f"| {who(name, r)} | {r['rps']:.0f} | {r['p99_ms']:.2f} | "
                f"{fmt(r['server_cpu_ms_per_req'], 3)} | {fmt(r['programs_cpu_ms_per_req'], 3)} "
                f"| {r['errors']} |")
        add("")
        w2m = w2r["module (splice)"]["rps"]
        targets += [
            ("W2 requests/s >= 1.5x fcgiwrap", ratio(w2m, w2r["fcgiwrap (buffering on)"]["rps"]),
             1.5, ">="),
            ("W2 requests/s >= 0.8x posix_spawn ceiling",
             ratio(w2m, w2r["posix_spawn ceiling"]["rps"]), 0.8, ">="),
        ]
        if "w2s" in res:
            targets += report_w2s(res, add, who, ratio)
    if "w3" in res:
        w3r = res["w3"]
        add(f"### W3: a client reading {s['w3'] // MIB} MiB at 20 MB/s\n")
        add("| contestant | server RSS growth MiB | RSS growth with programs MiB | peak temp-file "
            "bytes | MB/s received | errors |")
        add("|---|---:|---:|---:|---:|---:|")
        for name, r in w3r.items():
            add(f"| {who(name, r)} | {r['server_rss_mib']:.1f} | {r['all_rss_mib']:.1f} | "
                f"{r['temp_bytes']} | {r['mb_s']:.1f} | {r['errors']} |")
        add("")
        w3m = w3r["module (splice)"]
        targets += [
            ("W3 server RSS growth <= 2 MiB (module, splice)", w3m["server_rss_mib"], 2.0, "<="),
            ("W3 server RSS growth <= 2 MiB (module, buffered)",
             w3r["module (buffered)"]["server_rss_mib"], 2.0, "<="),
            ("W3 no temp files (module)",
             w3m["temp_bytes"] + w3r["module (buffered)"]["temp_bytes"], 0, "<="),
        ]
    if "w4" in res:
        w4r = res["w4"]
        add(f"### W4: {s['w4_conns']} concurrent streams of {s['w4'] // MIB} MiB\n")
        add("| contestant | MB/s received | errors | server RSS growth MiB | RSS growth with "
            "programs MiB | server CPU s/GiB | programs CPU s/GiB |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        for name, r in w4r.items():
            add(f"| {who(name, r)} | {r['mb_s']:.0f} | {r['errors']} | "
                f"{r['server_rss_mib']:.1f} | {r['all_rss_mib']:.1f} | "
                f"{fmt(r['server_cpu_per_gib'], 3)} | {fmt(r['programs_cpu_per_gib'], 3)} |")
        add("")
        targets.append(("W4 zero errors (module, every variant)",
                        sum(r["errors"] for name, r in w4r.items() if name.startswith("module")),
                        0, "<="))
    if "w5" in res:
        w5r = res["w5"]
        add(f"### W5: W2 on the module with a normal and a 1 GiB worker (median of "
            f"{s['wrk_rounds']})\n")
        add("| worker | worker RSS MiB | requests/s | errors |")
        add("|---|---:|---:|---:|")
        for name, r in w5r.items():
            add(f"| {who(name, r)} | {r['worker_rss_mib']:.0f} | {r['rps']:.0f} | {r['errors']} |")
        add("")
        targets.append(("W5 1 GiB worker >= 0.9x normal",
                        ratio(w5r["inflated"]["rps"], w5r["normal"]["rps"]), 0.9, ">="))
    if "w6a" in res:
        w6a, w6b = res["w6a"], res["w6b"]
        add(f"### W6a: {W6_HERD} identical cold requests for a program of ~{W6_WORK_S * 1000:.0f} "
            f"ms writing {W6_BYTES // 1024} KiB (median of {s['w6_rounds']} rounds, fresh store, "
            "caches and URLs each)\n")
        add("| contestant | program runs per herd | lone cold request ms | herd p50 ms | herd p99 "
            "ms | p99 / lone | errors |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        for name, r in w6a.items():
            runs = ", ".join("n/a" if n is None else str(n) for n in r["runs"])
            # Without a program, a lone request is a fraction of a millisecond: no ratio to read.
            of_lone = fmt(ratio(r["p99_ms"], r["lone_ms"]), 2) if "n/a" not in runs else "n/a"
            add(f"| {who(name, r)} | {runs} | {fmt(r['lone_ms'], 1)} | {fmt(r['p50_ms'], 1)} | "
                f"{fmt(r['p99_ms'], 1)} | {of_lone} | {r['errors']} |")
        add("")
        static = w6b.get(W6B_STATIC, {}).get("rps")
        add(f"### W6b: the herd's URL again, warm, under wrk ({WRK_CONNS} connections, "
            f"{s['w2_seconds']} s, median of {s['wrk_rounds']})\n")
        add("| contestant | requests/s | x nginx static | p99 ms | program runs | errors |")
        add("|---|---:|---:|---:|---:|---:|")
        for name, r in w6b.items():
            if "rps" in r:
                add(f"| {who(name, r)} | {fmt(r['rps'], 0)} | {fmt(ratio(r['rps'], static), 2)} "
                    f"| {fmt(r['p99_ms'], 2)} | {r['runs'] if r['runs'] is not None else 'n/a'} "
                    f"| {r['errors']} |")
        add("")
        without = w6b.get(W6B_W1, {}).get("mb_s")
        add(f"### W6b: W1 ({s['w1'] // MIB} MiB) with and without transform_store (median of "
            f"{s['w1_rounds']})\n")
        add("| contestant | MB/s | x without store | server CPU s/GiB | errors |")
        add("|---|---:|---:|---:|---:|")
        for name, r in w6b.items():
            if "mb_s" in r:
                add(f"| {who(name, r)} | {r['mb_s']:.0f} | {fmt(ratio(r['mb_s'], without), 2)} | "
                    f"{fmt(r['server_cpu_per_gib'], 3)} | {r['errors']} |")
        add("")
        mine = w6a[W6A[0][0]]
        # The round farthest from one run.
        worst = max(mine["runs"], key=lambda n: abs(n - 1)) if mine["runs"] else math.nan
        targets += [
            ("W6a exactly 1 program run per herd (module, store + lock; the worst round)", worst,
             1, "=="),
            ("W6a herd p99 <= 1.3x a lone cold request (module, store + lock)",
             ratio(mine["p99_ms"], mine["lone_ms"]), 1.3, "<="),
            ("W6b warm stored file >= 0.9x nginx static",
             ratio(w6b.get(W6B_STORED, {}).get("rps"), static), 0.9, ">="),
            ("W6b W1 with transform_store on >= 0.8x without",
             ratio(w6b.get(W6B_W1_STORE, {}).get("mb_s"), without), 0.8, ">="),
        ]
    if "w7" in res:
        targets += report_w7(res, add, who, ratio)
    if "w8" in res:
        targets += report_w8(res, add, who, ratio)
    if "w1t" in res:
        targets += report_w1t(res, add, who, ratio)
    if "w9" in res:
        targets += report_w9(res, add, who, ratio)
    add("### Targets\n")
    add("| target | figure | verdict |")
    add("|---|---:|---|")
    for name, value, limit, how, *why in targets:
        if value is None:  # not measured: why
            add(f"| {name} | n/a | not run: {why[0] if why else '?'} |")
            continue
        ok = {">=": value >= limit, "<=": value <= limit, "==": value == limit}[how]
        shown = str(value) if isinstance(value, int) else fmt(None if math.isnan(value) else
                                                              value, 2)
        add(f"| {name} | {shown} | {verdict(ok)} |")
    add("")
    add("### Errors\n")
    bad = erred(res)
    if not bad:
        add("No contestant erred in any workload.")
    for w, name, n, first in bad:
        add(f"- {w} {name}: {n} errors, first: {first or '?'}")
    return "\n".join(lines) + "\n"

def report_w1t(res, add, who, ratio):
    """W1t's table; returns its targets."""
    s, rows = res["sizes"], res["w1t"]
    add(f"### W1t: one stream of {s['w1t'] // MIB} MiB over TLS 1.3, HTTP/1.1 and HTTP/2 (curl, "
        f"one nginx worker, median of {s['w1t_rounds']}, contestants alternated)\n")
    add("| protocol | contestant | MB/s | x nginx static | worker CPU s/GiB | programs CPU s/GiB "
        "| errors |")
    add("|---|---|---:|---:|---:|---:|---:|")
    targets = []
    for proto, _, _ in W1T_PROTOCOLS:
        static = rows.get(f"{W1T_STATIC}, {proto}")
        for name in (W1T_MODULE, W1T_STATIC):
            r = rows.get(f"{name}, {proto}")
            if r is None:
                continue
            add(f"| {proto} | {who(name, r)} | {r['mb_s']:.0f} | "
                f"{fmt(nan_none(ratio(r['mb_s'], static and static['mb_s'])), 2)} | "
                f"{fmt(r['worker_cpu_per_gib'], 3)} | {fmt(r['programs_cpu_per_gib'], 3)} | "
                f"{r['errors']} |")
        mod = rows.get(f"{W1T_MODULE}, {proto}")
        targets.append((f"W1t {proto}: module >= 0.95x nginx static file",
                        ratio(mod and mod["mb_s"], static and static["mb_s"]), 0.95, ">="))
    add("")
    return targets


def report_w9(res, add, who, ratio):
    """W9's tables; returns its targets."""
    s, curve, slow = res["sizes"], res["w9"], res["w9_slow"]
    add(f"### W9a: keep-alive connections fetching {W9_BYTES // MIB} MiB streams (wrk, "
        f"{s['w9_seconds']} s after {s['w9_warmup']} s of warm-up, one run; a small request "
        f"({W9_SMALL}, sequential, {SmallProbe.PAUSE * 1000:.0f} ms apart) on the module "
        "meanwhile)\n")
    add("| connections | contestant | MB/s | x relay | errors | server CPU s/GiB | programs CPU "
        "s/GiB | small requests | small request p99 ms | max ms |")
    add("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst = {W9_SPLICE: math.inf, W9_BUFFERED: math.inf}
    small_p99 = []
    for conns in s["w9_points"]:
        relay = curve[W9_RELAY]["points"].get(str(conns))
        for name, rs in curve.items():
            r = rs["points"].get(str(conns))
            if r is None:
                continue
            x = ratio(r["mb_s"], relay and relay["mb_s"])
            if name in worst:
                worst[name] = min(worst[name], x)
            if r["p99_ms"] is not None:
                small_p99.append(r["p99_ms"])
            add(f"| {conns} | {who(name, r)} | {r['mb_s']:.0f} | {fmt(nan_none(x), 2)} | "
                f"{r['errors']} | {fmt(r['server_cpu_per_gib'], 3)} | "
                f"{fmt(r['programs_cpu_per_gib'], 3)} | {r['small_requests']} | "
                f"{fmt(r['p99_ms'], 1)} | {fmt(r['max_ms'], 1)} |")
    add("")
    add(f"### W9b: {s['w9_slow_conns']} slow clients, each reading a {W9_SLOW_BYTES // MIB} MiB stream "
        f"at {W9_SLOW_RATE // 1024} KiB/s for {s['w9_slow_seconds']} s (figures: median of "
        "samples over the last third)\n")
    add("| contestant | streams ok | errors | worker RSS growth KiB/stream | kernel TCP buffers "
        "KiB/stream | programs alive | pipe bytes held KiB/stream | pipe capacity KiB/stream | "
        "pipes by capacity (bytes: pipes) | proxy temp MiB | small request p99 ms | max ms |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for name, r in slow.items():
        caps = ", ".join(f"{k}: {v}" for k, v in r["pipe_capacities"].items()) or "n/a"
        if r["p99_ms"] is not None:
            small_p99.append(r["p99_ms"])
        add(f"| {who(name, r)} | {r['ok']}/{r['streams']} | {r['errors']} | "
            f"{r['worker_rss_kib_per_stream']:.1f} | {r['tcp_kib_per_stream']:.0f} | "
            f"{r['programs']:.0f} | {fmt(r['pipe_held_kib'], 1)} | "
            f"{fmt(r['pipe_capacity_kib'], 1)} | {caps} | "
            f"{fmt(r['temp_bytes'] / MIB, 1) if name == W9_PROXY else 'n/a'} | "
            f"{fmt(r['p99_ms'], 1)} | {fmt(r['max_ms'], 1)} |")
    add("")
    proxy = slow.get(W9_PROXY, {}).get("worker_rss_kib_per_stream")
    # Growth per stream near zero (or below) for the proxy: the ratio is against 1 KiB at least.
    floor = None if proxy is None else max(proxy, 1.0)
    targets = [
        ("W9 zero errors (module, both transports, curve and slow clients)",
         sum(curve[n]["errors"] + slow.get(n, {}).get("errors", 0)
             for n in (W9_SPLICE, W9_BUFFERED)), 0, "<="),
        ("W9a module (splice) >= 1.0x standalone relay (the worst point)",
         nan_none(worst[W9_SPLICE]), 1.0, ">="),
        ("W9a module (buffered) >= 1.0x standalone relay (the worst point)",
         nan_none(worst[W9_BUFFERED]), 1.0, ">="),
        ("W9 small request p99 < 100 ms (the worst point, curve and slow clients)",
         max(small_p99) if small_p99 else None, 100.0, "<="),
    ]
    for name in (W9_SPLICE, W9_BUFFERED):
        mine = slow.get(name, {}).get("worker_rss_kib_per_stream")
        targets.append((f"W9b {name} worker RSS per stream <= 2x nginx proxy's",
                        None if mine is None or floor is None else mine / floor, 2.0, "<=",
                        "no figure"))
    return targets


def cpu_us(r):
    """CPU per request of a W2 row, server's and programs', in microseconds (None without the
    programs' CPU: no usable cgroup)."""
    if r["server_cpu_ms_per_req"] is None or r["programs_cpu_ms_per_req"] is None:
        return None
    return (r["server_cpu_ms_per_req"] + r["programs_cpu_ms_per_req"]) * 1000


def report_w2s(res, add, who, ratio):
    """W2s's table (W2's program sandboxed, measured in W2's rounds); returns its targets."""
    s, w2s = res["sizes"], res["w2s"]
    plain = res["w2"][w2s["plain"]]
    add(f"### W2s: W2's program sandboxed ({WRK_CONNS} connections, {s['w2_seconds']} s, median "
        f"of {s['wrk_rounds']}, in W2's rounds)\n")
    add("Each row is W2's location with sandbox directives added (the directives are in the JSON "
        "results): `transform_sandbox_paths` with the producer's file, the directories of its "
        "libraries and `/etc/ld.so.cache`, and `transform_sandbox_syscalls default`; then also "
        f"`transform_cgroup {w2s['limits']}`; and (full runs) "
        "`transform_sandbox_namespaces`, each namespace with `user` (nginx's workers are not "
        "root). Overhead per spawn: the row's CPU per request (nginx's and the programs') less "
        "the plain row's, and the time per request of the whole machine (1/requests per second) "
        "less the plain row's.\n")
    add("| contestant | requests/s | x plain | p99 ms | CPU us/req (all) | overhead us/spawn "
        "(CPU) | overhead us/req (1/rps) | errors |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|")
    base_cpu = cpu_us(plain)

    def row(name, r):
        cpu = cpu_us(r)
        over = None if cpu is None or base_cpu is None else cpu - base_cpu
        wall = 1e6 / max(r["rps"], 1e-9) - 1e6 / max(plain["rps"], 1e-9)
        add(f"| {who(name, r)} | {r['rps']:.0f} | "
            f"{fmt(nan_none(ratio(r['rps'], plain['rps'])), 2)} | {r['p99_ms']:.2f} | "
            f"{fmt(cpu, 0)} | {fmt(over, 0)} | {fmt(wall, 0)} | {r['errors']} |")
    row(f"{w2s['plain']} (plain, W2's row)", plain)
    for name, r in w2s["rows"].items():
        row(name, r)
    add("")
    for name, why in w2s["not_run"].items():
        add(f"- {name}: n/a, {why}")
    user = w2s["rows"].get("module + namespaces user")
    if user and cpu_us(user) is not None and base_cpu is not None:
        each = []
        for ns in W2S_NAMESPACES[1:]:
            r = w2s["rows"].get(f"module + namespaces {ns}")
            if r and cpu_us(r) is not None:
                each.append(f"{ns.split()[-1]} {cpu_us(r) - cpu_us(user):.0f}")
        add(f"- each namespace's own CPU per spawn (us, over `user` alone, which costs "
            f"{cpu_us(user) - base_cpu:.0f} over plain): " + ", ".join(each))
    if w2s["not_run"] or user:
        add("")
    targets = []
    for name, limit in ((W2S_SANDBOX, 0.85), (W2S_CGROUP, 0.75)):
        label = f"W2s {name.removeprefix('module + ')} >= {limit}x plain (requests/s)"
        r = w2s["rows"].get(name)
        if r:
            targets.append((label, ratio(r["rps"], plain["rps"]), limit, ">="))
        else:
            targets.append((label, None, limit, ">=", w2s["not_run"].get(name, "not measured")))
    return targets


def report_w7(res, add, who, ratio):
    """W7's tables; returns its targets."""
    s, w7r, slow, problems = res["sizes"], res["w7"], res["w7_slow"], res["w7_problems"]
    add(f"### W7: a response filter, /bin/cat over a {s['w7'] // MIB} MiB static file and a "
        f"{s['w7_proxy'] // MIB} MiB proxied response (median of {s['w7_rounds']}, the order "
        "reversed every other round)\n")
    apache = res.get("apache", "?")
    apache = apache.replace("/", " ") if apache.startswith("Apache/") else f"Apache ({apache})"
    add(f"The module's `transform_filter /bin/cat` (`transform_filter_types *`; the proxied "
        "response through `proxy_pass` with `proxy_buffering on`, 8 buffers of 64 KiB); "
        f"{apache} with mod_ext_filter (`ExtFilterDefine catfilter mode=output "
        "cmd=\"/bin/cat\"`, `SetOutputFilter catfilter`; mod_proxy + mod_proxy_http, "
        "`ProxyIOBufferSize 65536`), the event MPM with one process per CPU (as nginx's workers), "
        "25 threads each, run by nobody in the foreground with a configuration of its own; the "
        "ceiling: `transform_exec /bin/cat FILE` on the same bytes; for reference, nginx "
        "without a filter (the same locations: sendfile, proxy_pass). The proxied source is an "
        "upstream nginx of its own (its CPU is no contestant's). Every response is read whole "
        "once and its SHA-256 checked against the file's before the timed rounds; a timed round "
        "counts the bytes. CPU per GiB: the contestant's server processes and its cat programs "
        "(nginx's master and workers, or Apache's processes; its cgroup, or without one "
        "/proc/<pid>/stat utime+stime+cutime+cstime). Apache's filtered static file keeps the "
        "file's Content-Length (right for cat, whose output is as long).\n")
    for name, why in problems.items():
        add(f"**{name} COULD NOT RUN: {why}. Its figures are missing; it counts as an error.**\n")
    add("| contestant | source | MB/s | x filter | CPU s/GiB (server + cat) | x filter | of which "
        "cat s/GiB | peak temp-file bytes | framing | body SHA-256 | errors |")
    add("|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|")
    by = {(r["source"], r["contestant"]): r for r in w7r.values()}
    for source in W7_SOURCES:
        mine = by[(source, W7_FILTER)]
        for name in W7_NAMES:
            r = by[(source, name)]
            add(f"| {who(name, r)} | {w7_label(source, s)} | {fmt(r['mb_s'], 0)} | "
                f"{fmt(nan_none(ratio(r['mb_s'], mine['mb_s'])), 2)} | "
                f"{fmt(r['cpu_per_gib'], 3)} | "
                f"{fmt(nan_none(ratio(r['cpu_per_gib'], mine['cpu_per_gib'])), 2)} | "
                f"{fmt(r['programs_cpu_per_gib'], 3)} | "
                f"{'n/a' if r['peak_temp'] is None else r['peak_temp']} | "
                f"{r['framing'] or 'n/a'} | {r['sha']} | {r['errors']} |")
    add("")
    add(f"### W7: a slow client ({W7_SLOW_READ // 1024} KiB read every "
        f"{W7_SLOW_PAUSE * 1000:.0f} ms, SO_RCVBUF {W7_SLOW_RCVBUF // 1024} KiB, for "
        f"{s['w7_slow_s']} s, then it closes)\n")
    add("RSS: each server process's VmRSS sampled every 10 ms; growth: the largest peak over its "
        "RSS before (the process serving the client: nginx's worker, Apache's process), without "
        "the cat. Programs left: filter programs still running 3 s after the client went away "
        "(an error for the module).\n")
    add("| contestant | source | worker RSS growth MiB | peak temp-file bytes | MB/s received | "
        "programs left | errors |")
    add("|---|---|---:|---:|---:|---:|---:|")
    for r in slow.values():
        temp, left = (("n/a" if r[k] is None else r[k]) for k in ("peak_temp", "left"))
        add(f"| {who(r['contestant'], r)} | {w7_label(r['source'], s)} | "
            f"{fmt(r['rss_growth_mib'], 1)} | {temp} | {fmt(r['mb_s'], 1)} | {left} | "
            f"{r['errors']} |")
    add("")
    targets = []
    for source in W7_SOURCES:
        mine, apache, ceiling = (by[(source, n)] for n in (W7_FILTER, W7_APACHE, W7_EXEC))
        label = w7_label(source, s)
        targets += [
            (f"W7 filter throughput >= 2x Apache mod_ext_filter ({label})",
             ratio(mine["mb_s"], apache["mb_s"]), 2.0, ">="),
            (f"W7 filter CPU/GiB <= 0.5x Apache mod_ext_filter ({label})",
             ratio(mine["cpu_per_gib"], apache["cpu_per_gib"]), 0.5, "<="),
            (f"W7 filter throughput >= 0.7x transform_exec ceiling ({label})",
             ratio(mine["mb_s"], ceiling["mb_s"]), 0.7, ">="),
        ]
    for r in slow.values():
        if r["contestant"] == W7_FILTER:
            targets.append((f"W7 worker RSS growth <= 2 MiB, slow client (filter, "
                            f"{w7_label(r['source'], s)})",
                            math.nan if r["rss_growth_mib"] is None else r["rss_growth_mib"],
                            2.0, "<="))
    return targets


def report_w8(res, add, who, ratio):
    """W8's tables; returns its targets."""
    s, w8r, problems = res["sizes"], res["w8"], res.get("w8_problems", {})
    z, setup = res.get("w8_sizing", {}), res.get("w8_setup", {})
    t, rounds = s["w8_seconds"], s["w8_rounds"]
    mb = setup.get("image_bytes", 0) / 1e6
    add(f"### W8: a program kept alive: a {W8_THUMB[0]}x{W8_THUMB[1]} thumbnail of a "
        f"{mb:.2f} MB JPEG with PIL, under wrk ({WRK_CONNS} connections, {t} s, --timeout "
        f"{W8_WRK_TIMEOUT_S} s, median of {rounds}, the order reversed every other round)\n")
    add(f"The same Python code in every contestant (bench/w8_thumb.py: `Image.thumbnail`, which "
        f"decodes at a reduced scale, then a quality-85 JPEG), run by {W8_PYTHON} with Debian's "
        f"python3-pil, on a deterministic photo-like picture ({setup.get('image_made', '?')}). "
        f"The pool: `transform_pool thumb {W8_PYTHON} w8_pool.py photo.jpg "
        f"processes={z.get('pool_processes_per_worker')}` (examples/pool/transformer.py's loop "
        "around the same function); transform_exec: `python3 w8_exec.py photo.jpg` per request "
        "(the interpreter and PIL loaded each time); uWSGI: the same function as a WSGI app, "
        f"loaded once, {z.get('uwsgi_processes')} processes of {z.get('uwsgi_threads')} thread, "
        f"behind `uwsgi_pass`; fcgiwrap: a CGI per request ({z.get('fcgiwrap_processes')} "
        "preforked processes), behind `fastcgi_pass`. Sizing (2 cores): each contestant has an "
        f"nginx of its own with {z.get('nginx_workers_thumbnails')} worker, so that the pool "
        "holds as many Python processes as uWSGI and as the machine has cores, and the "
        "per-request contestants may run up to wrk's 8 at once: every contestant can keep both "
        "cores busy, behind one nginx worker. Every contestant is first checked: "
        f"{W8_CHECK_CONNS} requests at once, each response a 200, `image/jpeg`, a whole JPEG of "
        f"{W8_THUMB[0]}x{W8_THUMB[1]} (or exactly the 16 bytes); the same again, untimed, "
        "before each timed load (a warm-up for every contestant alike: wrk ends a run with "
        "requests in flight, and the module kills a pooled process whose client went away, so "
        "the pool starts its processes again there, not in the timing). CPU per request: the "
        "contestant's cgroups (nginx, the pool's processes or the programs it starts, uWSGI's "
        "processes, fcgiwrap and its CGIs), and of that nginx's master and workers; programs: "
        "the rest. Others' CPU: what the rest of the machine took during the load (the busy "
        "time of /proc/stat less the contestant's, wrk's and the driver's), in percent of its "
        f"{os.cpu_count()} cores; a round with more than a few percent was disturbed (a build "
        "elsewhere).\n")
    for name, why in problems.items():
        add(f"**{name} COULD NOT RUN: {why}. Its figures are missing; it counts as an "
            "error.**\n")

    def table(names, ref, label):
        add(f"| contestant | requests/s | x {label} | p99 ms | CPU us/req (all) | nginx us/req | "
            "programs us/req | others' CPU % (worst round) | errors |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in names:
            r = w8r[name]
            add(f"| {who(name, r)} | {fmt(r['rps'], 0)} | "
                f"{fmt(nan_none(ratio(r['rps'], w8r[ref]['rps'])), 2)} | {fmt(r['p99_ms'], 1)} | "
                f"{fmt(r['cpu_us_per_req'], 0)} | {fmt(r['nginx_us_per_req'], 0)} | "
                f"{fmt(r['programs_us_per_req'], 0)} | {fmt(r.get('others_cpu_pct'), 1)} | "
                f"{r['errors']} |")
        add("")
    table(W8_THUMBS, W8_POOL, "pool")
    add(f"#### W8: 16 bytes from a program kept alive against W2's program spawned per request "
        f"({z.get('nginx_workers_16_bytes')} nginx workers as in W2; each pool "
        f"processes={z.get('pool_processes_per_worker')}, per worker; the same wrk)\n")
    add("The C pooled program is bench/pool16.c (the module's cost with next to nothing "
        "behind it); the Python one the thumbnail pool's loop answering 16 bytes. W2's program "
        "(`transform-bench produce 16`, transform_exec) is measured here again, side by side.\n")
    table(W8_SIXTEEN, W8_W2, "W2")
    pool = w8r[W8_POOL]["rps"]
    pairs = [("pool / uWSGI", pool, w8r[W8_UWSGI]["rps"]),
             ("pool / transform_exec", pool, w8r[W8_EXEC]["rps"]),
             ("pool / fcgiwrap", pool, w8r[W8_FCGI]["rps"]),
             ("pooled 16 bytes (C) / W2", w8r[W8_P16]["rps"], w8r[W8_W2]["rps"]),
             ("pooled 16 bytes (Python) / W2", w8r[W8_P16_PY]["rps"], w8r[W8_W2]["rps"])]
    add("| requests/s ratio | figure |")
    add("|---|---:|")
    for label, a, b in pairs:
        add(f"| {label} | {fmt(nan_none(ratio(a, b)), 2)} |")
    add("")
    return [
        ("W8 pool >= 1.0x uWSGI (thumbnails, requests/s)",
         ratio(pool, w8r[W8_UWSGI]["rps"]), 1.0, ">="),
        ("W8 pool >= 3x transform_exec (thumbnails, requests/s)",
         ratio(pool, w8r[W8_EXEC]["rps"]), 3.0, ">="),
        ("W8 pooled 16-byte program (C) >= 5x W2's spawned per request",
         ratio(w8r[W8_P16]["rps"], w8r[W8_W2]["rps"]), 5.0, ">="),
    ]


def nan_none(value):
    return None if value is None or math.isnan(value) else value


def machine():
    def first(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nginx_v = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True).stderr.strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": first(["sh", "-c", "free -g | awk '/Mem:/{print $2\" GiB\"}'"]),
        "kernel": platform.release(),
        "nginx": nginx_v.replace("nginx version: ", ""),
        "fcgiwrap": first(["sh", "-c", "dpkg-query -W -f='${Version}' fcgiwrap"]),
        "uwsgi": first(["uwsgi", "--version"]),
        "wrk": first(["sh", "-c", "dpkg-query -W -f='${Version}' wrk"]),
        "apache2": apache_version(),
        "python3-pil": first(["sh", "-c", "dpkg-query -W -f='${Version}' python3-pil"]) or
        "not installed",
    }


def apache_version():
    try:
        out = subprocess.run([shutil.which("apache2", path=SERVICE_ENV["PATH"]) or "apache2", "-v"],
                             capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "not installed"
    m = re.search(r"Server version:\s*(\S+)", out)
    return m.group(1) if m else "?"


def workloads(text):
    """--only's argument: workloads separated by commas (w1, w1t, w2..w9; w6 is W6a and W6b,
    w9 is W9a and W9b)."""
    chosen = {w.strip().lower() for w in text.split(",") if w.strip()}
    unknown = chosen - set(WORKLOADS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {', '.join(sorted(unknown)) or '(none)'}; choose among "
            + ", ".join(WORKLOADS))
    return chosen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    ap.add_argument("--no-cgroups", action="store_true",
                    help="measure as on a machine without a usable cgroup (no programs' CPU)")
    ap.add_argument("--only", type=workloads, default=set(WORKLOADS), metavar="W1,W8",
                    help="run these workloads only (e.g. --only w8); the results file is named "
                         "after them")
    args = ap.parse_args()
    # A terminated run still stops what it started (the finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = machine()
    cg = Cgroups(enabled=not args.no_cgroups)
    try:
        res = run(args, cg)
    finally:
        cg.cleanup()
    mode = "quick" if args.quick else "full"
    head = [f"## Benchmark ({mode} run), {info['date']}\n"]
    for k in ("cpu", "memory", "kernel", "nginx", "fcgiwrap", "uwsgi", "wrk", "apache2",
              "python3-pil"):
        head.append(f"- {k}: {info[k]}")
    partial = args.only != set(WORKLOADS)
    only = ",".join(w for w in WORKLOADS if w in args.only)
    head.append("- command: `ci/bench" + (" --quick" if args.quick else "") +
                (f" --only {only}" if partial else "") + "`\n")
    text = "\n".join(head) + "\n" + report(res)
    print(text)
    outdir = os.path.join(ROOT, "bench", "results")
    os.makedirs(outdir, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M")
    path = os.path.join(outdir, f"{stamp}-{mode}" + (f"-{only.replace(',', '-')}" if partial
                                                      else "") + ".md")
    with open(path, "w") as f:
        f.write(text)
    with open(path[:-3] + ".json", "w") as f:
        json.dump({"machine": info, "results": res}, f, indent=1)
    log(f"results written to {os.path.relpath(path, ROOT)}")
    bad = erred(res)
    if bad:
        log(f"{len(bad)} contestant(s) erred: " + "; ".join(f"{w} {n}" for w, n, _, _ in bad))
        sys.exit(1)


if __name__ == "__main__":
    main()
