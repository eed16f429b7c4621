"""tests/bench/benchlib.py — what the benchmark scripts share.

Processes and their CPU from /proc, ports, the processes a run started
(stopped by PID at the end), smtp-sink as the final destination, and a
private Postfix instance relaying to it (the peer most benchmarks compare
with).  Standard library only, for /usr/bin/python3; everything listens on
127.0.0.1 or on unix sockets in the run's own directory.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

SMTP_SINK = "/usr/sbin/smtp-sink"
POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A failure that ends the part of the benchmark it happened in."""


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# /proc

def proc_table():
    """{pid: (ppid, cpu_ticks)} for every process; cpu = utime+stime+cutime+cstime."""
    t = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
        except OSError:
            continue
        f = s[s.rindex(")") + 2:].split()
        t[int(d)] = (int(f[1]), int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]))
    return t


def tree(root, table=None):
    """root and all its descendants (by parent pid) that are alive now."""
    table = table if table is not None else proc_table()
    if root not in table:
        return set(), table
    kids = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        todo.extend(kids.get(p, ()))
    return out, table


def cpu_by_part(parts):
    """{name: CPU ticks} of each part's process tree (parts: {name: root
    pid}).  Each live process counts utime+stime plus cutime+cstime (its
    reaped children), so the CPU of a Postfix daemon that exited in between
    is still counted, in its parent."""
    table = proc_table()
    return {name: sum(table[p][1] for p in tree(root, table)[0]) for name, root in parts.items()}


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------
# ports and processes

def free_ports(k):
    socks, ports = [], []
    for _ in range(k):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_listen(port, timeout, proc=None):
    """True once 127.0.0.1:port accepts a connection; False on timeout or
    when proc (a Popen) exits first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def wait_unix(path, timeout, proc=None):
    """True once the unix socket path accepts a connection."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(path)
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Procs:
    """Processes this run started; stopped by PID at the end."""

    def __init__(self):
        self.procs = []          # (name, Popen)

    def start(self, name, argv, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(argv, **kw)
        self.procs.append((name, p))
        return p

    def stop(self, p, sig=signal.SIGTERM, grace=10):
        if p.poll() is not None:
            return
        try:
            p.send_signal(sig)
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                p.kill()
            except ProcessLookupError:
                pass
            p.wait(5)
        except ProcessLookupError:
            pass

    def stop_all(self):
        for name, p in reversed(self.procs):
            try:
                self.stop(p)
            except Exception as e:                      # keep cleaning up
                log("could not stop %s (pid %d): %s" % (name, p.pid, e))


def tail(path, n=1500):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def run(argv, what, timeout=300, **kw):
    """Run a setup command; BenchError with its output when it fails."""
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, **kw)
    except (OSError, subprocess.SubprocessError) as e:
        raise BenchError("%s: %s" % (what, e))
    out = p.stdout.decode("utf-8", "replace").strip()
    if p.returncode != 0:
        raise BenchError("%s failed (exit %d): %s" % (what, p.returncode, out[-1500:]))
    return out


# --------------------------------------------------------------------------
# smtp-sink: the final destination

class Sink:
    def __init__(self, procs, tmp, port, drain_timeout=120):
        self.port = port
        self.drain_timeout = drain_timeout
        self.out = os.path.join(tmp, "sink.counter")
        self.err = os.path.join(tmp, "sink.err")
        argv = [SMTP_SINK, "-c", "-m", "1000", "-h", "sink.bench.test"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        argv += ["127.0.0.1:%d" % port, "1000"]
        with open(self.out, "wb") as o, open(self.err, "wb") as e:
            self.proc = procs.start("sink", argv, stdout=o, stderr=e)
        if not wait_listen(port, 10, self.proc):
            raise BenchError("smtp-sink did not start: %s" % tail(self.err))

    def count(self):
        """Messages the sink has received: the last mesg=N of smtp-sink -c's
        counter line (rewritten, CR-terminated, after every message)."""
        try:
            with open(self.out, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 256))
                m = re.findall(rb"mesg=(\d+)", f.read())
        except OSError:
            return 0
        return int(m[-1]) if m else 0

    def wait(self, want, alive_fn=None):
        """Wait until the sink has counted want messages; the time it did."""
        end = time.monotonic() + self.drain_timeout
        while True:
            got = self.count()
            if got >= want:
                return time.monotonic()
            if time.monotonic() > end:
                raise BenchError("drain timeout: the sink is at %d, %d short after %d s"
                                 % (got, want - got, self.drain_timeout))
            if alive_fn is not None and not alive_fn():
                raise BenchError("a server died; the sink is %d short" % (want - got))
            time.sleep(0.01)


# --------------------------------------------------------------------------
# a private Postfix instance

class PrivatePostfix:
    """A private Postfix instance under tmp/postfix: accepts mail for
    domain from 127.0.0.0/8 on 127.0.0.1:port and relays it to the sink,
    with no DNS and no TLS; main_extra is appended to its main.cf (a milter,
    for instance).  The stock master.cf, with chroot off.  The daemons run
    as user postfix: what they reach must be reachable by it."""

    def __init__(self, tmp, sink_port, domain, main_extra="", what="benchmark"):
        self.top = os.path.join(tmp, "postfix")
        self.etc = os.path.join(self.top, "etc")
        self.queue = os.path.join(self.top, "queue")
        self.data = os.path.join(self.top, "data")
        self.maillog = os.path.join(self.top, "maillog")
        self.port, = free_ports(1)
        self.master = None
        self.started = False
        self.checked = False
        os.makedirs(self.etc)
        os.makedirs(self.queue, 0o755)
        main = """\
# rampart {what}: private Postfix instance (generated)
compatibility_level = 3.6
queue_directory = {q}
data_directory = {d}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = relay.{dom}
mydomain = {dom}
myorigin = $mydomain
mydestination =
relay_domains = {dom}
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink}
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtp_tls_security_level = none
smtpd_tls_security_level = none
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file = {log}
maillog_file_prefixes = {top}
""".format(what=what, q=self.queue, d=self.data, dom=domain, sink=sink_port, log=self.maillog, top=self.top)
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(main + main_extra)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(self.master_cf())

    def master_cf(self):
        """The stock master.cf, with chroot n everywhere and the smtp inet
        service moved to 127.0.0.1:PORT."""
        src = "/etc/postfix/master.cf"
        if not os.path.exists(src):
            src = "/usr/share/postfix/master.cf.dist"
        out = []
        with open(src) as f:
            for line in f:
                w = line.split()
                if line[:1] not in ("#", " ", "\t", "\n") and len(w) >= 8:
                    if w[0] == "smtp" and w[1] == "inet":
                        w[0] = "127.0.0.1:%d" % self.port
                    w[4] = "n"
                    line = " ".join(w[:7]) + " " + " ".join(w[7:]) + "\n"
                out.append(line)
        text = "".join(out)
        if not re.search(r"^postlog\s+unix-dgram", text, re.M):
            text += "postlog unix-dgram n - n - 1 postlogd\n"
        if "127.0.0.1:%d" % self.port not in text:
            text += "127.0.0.1:%d inet n - n - - smtpd\n" % self.port
        return text

    def pf(self, *args):
        p = subprocess.run([POSTFIX, "-c", self.etc] + list(args), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        return p.returncode, p.stdout.decode("utf-8", "replace").strip()

    def start(self):
        if not self.checked:
            rc, out = self.pf("check")
            if rc != 0:
                raise BenchError("postfix check failed: %s\n%s" % (out, tail(self.maillog)))
            self.checked = True
        rc, out = self.pf("start")
        self.started = True
        if rc != 0:
            raise BenchError("postfix start failed: %s\n%s" % (out, tail(self.maillog)))
        pidf = os.path.join(self.queue, "pid", "master.pid")
        self.master = None
        end = time.monotonic() + 10
        while time.monotonic() < end and self.master is None:
            try:
                with open(pidf) as f:
                    self.master = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        if self.master is None or not wait_listen(self.port, 10):
            raise BenchError("postfix did not listen on 127.0.0.1:%d:\n%s" % (self.port, tail(self.maillog)))

    def alive(self):
        return self.master is not None and alive(self.master)

    def stop(self):
        if not self.started:
            return
        self.started = False
        self.pf("stop")
        if self.master is not None:
            end = time.monotonic() + 10
            while time.monotonic() < end and alive(self.master):
                time.sleep(0.05)
            if alive(self.master):
                # our own master (pid from this instance's pid file): force it
                for p in tree(self.master)[0]:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass

    @staticmethod
    def version():
        try:
            p = subprocess.run([POSTCONF, "-h", "-d", "mail_version"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10)
            return "Postfix " + p.stdout.decode().strip()
        except (OSError, subprocess.SubprocessError):
            return "Postfix ?"
