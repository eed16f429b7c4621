"""Integration test helpers: start real Rampart binaries on loopback with a
generated configuration, talk to them with real clients, and look at what
landed on disk.  Run by run.py with /usr/bin/python3 (Debian's Python)."""

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD = os.environ.get("RAMPART_BUILD") or os.path.join(REPO, "build")


class TestFailure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10.0, proc=None, log=None):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise TestFailure("process exited with %s before listening on %d; log:\n%s"
                              % (proc.returncode, port, tail(log)))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TestFailure("nothing listens on port %d; log:\n%s" % (port, tail(log)))


def tail(path, n=30):
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


class Lab:
    """A private pipeline in a temporary directory."""

    def __init__(self, name="lab"):
        self.dir = tempfile.mkdtemp(prefix="rampart-it-%s-" % name)
        self.procs = {}
        self.ports = {}
        self.sections = {}
        self.sections["global"] = {"state_dir": self.path("state"), "log_level": "info"}
        os.makedirs(self.path("mail"))
        os.makedirs(self.path("log"))
        with open(self.path("users"), "w") as f:
            f.write("alice@example.test 10m\nbob@example.test\npostmaster@example.test\n")
        self.sections["check.users"] = {"users_file": self.path("users")}

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def add_store(self, name="store", **kw):
        port = free_port()
        self.ports[name] = port
        sec = {
            "listen": "127.0.0.1:%d" % port,
            "hostname": "store.example.test",
            "local_domains": "example.test",
            "checks": "users",
            "mail_root": self.path("mail"),
            "users_file": self.path("users"),
            "xforward_hosts": "127.0.0.0/8",
        }
        sec.update(kw)
        self.sections[name] = sec
        return port

    def add_mx(self, name="mx", next_hops=None, **kw):
        port = free_port()
        self.ports[name] = port
        sec = {
            "listen": "127.0.0.1:%d" % port,
            "hostname": "mx.example.test",
            "local_domains": "example.test",
            "checks": "relay limits users",
            "mode": "queue",
            "next_hops": next_hops or "127.0.0.1:%d" % self.ports["store"],
            "next_protocol": "lmtp",
            "retry_min": "1s",
            "retry_max": "2s",
            "xclient_hosts": "127.0.0.1/32",
        }
        sec.update(kw)
        self.sections[name] = sec
        return port

    def add_out(self, name="out", **kw):
        port = free_port()
        self.ports[name] = port
        sec = {
            "listen": "127.0.0.1:%d" % port,
            "hostname": "out.example.test",
            "local_domains": "example.test",
            "checks": "relay limits",
            "mode": "queue",
            "retry_min": "1s",
            "retry_max": "2s",
        }
        sec.update(kw)
        self.sections[name] = sec
        return port

    def add_internet(self, name="internet"):
        """The lab's Internet: a catch-all receiver (deploy/lab/internet.py)."""
        port = free_port()
        self.ports[name] = port
        os.makedirs(self.path("outbound"), exist_ok=True)
        log = self.path("log", name + ".log")
        p = subprocess.Popen(["/usr/bin/python3", os.path.join(REPO, "deploy", "lab", "internet.py"),
                              "--listen", "127.0.0.1:%d" % port, "--dir", self.path("outbound")],
                             stdout=open(log, "ab"), stderr=subprocess.STDOUT)
        self.procs[name] = p
        wait_port(port, proc=p, log=log)
        return port

    def dns(self, records):
        path = self.path("dns.txt")
        with open(path, "w") as f:
            f.write("\n".join(records) + "\n")
        self.sections["global"]["dns_local_data"] = path
        self.sections["global"]["dns_local_only"] = "yes"

    def outbound(self, domain):
        d = self.path("outbound", domain)
        if not os.path.isdir(d):
            return []
        out = []
        for n in sorted(os.listdir(d)):
            if n.startswith("."):
                continue
            with open(os.path.join(d, n), "rb") as f:
                out.append(f.read())
        return out

    def wait_outbound(self, domain, count, timeout=20.0):
        end = time.time() + timeout
        while time.time() < end:
            m = self.outbound(domain)
            if len(m) >= count:
                return m
            time.sleep(0.05)
        raise TestFailure("%s received %d messages, expected %d; logs:\n%s" %
                          (domain, len(self.outbound(domain)), count, self.all_logs()))

    def write_config(self, extra=""):
        with open(self.path("rampart.conf"), "w") as f:
            for sec, kv in self.sections.items():
                f.write("[%s]\n" % sec)
                for k, v in kv.items():
                    f.write("%s = %s\n" % (k, v))
                f.write("\n")
            f.write(extra)
        return self.path("rampart.conf")

    def start(self, name, binary=None, wait=True, env=None):
        self.write_config()
        stage = name.split(".")[0]
        binary = binary or "rampart-%s" % stage
        log = self.path("log", name + ".log")
        e = dict(os.environ)
        if env:
            e.update(env)
        p = subprocess.Popen([os.path.join(BUILD, binary), "-c", self.path("rampart.conf"), "-n", name],
                             stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=e)
        self.procs[name] = p
        if wait:
            try:
                wait_port(self.ports[name], proc=p, log=log)
            except TestFailure:
                # Nothing of this lab may outlive a failed start.
                for other in list(self.procs):
                    self.stop(other)
                raise
        return p

    def log(self, name):
        return tail(self.path("log", name + ".log"), 100000)

    def stop(self, name, sig=signal.SIGTERM):
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p

    def kill9(self, name):
        return self.stop(name, signal.SIGKILL)

    def close(self):
        errors = []
        for name in list(self.procs):
            p = self.stop(name)
            # A sanitizer report or a crash makes the test fail.
            if p is not None and p.returncode not in (0, None, -signal.SIGKILL) and name != "internet":
                errors.append("%s exited with %s" % (name, p.returncode))
        for name in os.listdir(self.path("log")):
            text = tail(self.path("log", name), 100000)
            if "ERROR: AddressSanitizer" in text or "runtime error:" in text or "LeakSanitizer" in text:
                errors.append("sanitizer report in %s:\n%s" % (name, text[-3000:]))
        if not errors and not os.environ.get("KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise TestFailure("; ".join(errors) + " (lab kept in %s)" % self.dir)

    def maildir(self, user, domain="example.test"):
        d = self.path("mail", domain, user, "Maildir", "new")
        if not os.path.isdir(d):
            return []
        out = []
        for n in sorted(os.listdir(d)):
            with open(os.path.join(d, n), "rb") as f:
                out.append(f.read())
        return out

    def wait_mail(self, user, count, timeout=15.0):
        end = time.time() + timeout
        while time.time() < end:
            m = self.maildir(user)
            if len(m) >= count:
                return m
            time.sleep(0.05)
        raise TestFailure("%s has %d messages, expected %d; logs:\n%s" %
                          (user, len(self.maildir(user)), count, self.all_logs()))

    def all_logs(self):
        out = []
        for name in sorted(os.listdir(self.path("log"))):
            out.append("--- %s\n%s" % (name, tail(self.path("log", name), 40)))
        return "\n".join(out)

    def ctl(self, *args):
        return subprocess.run([os.path.join(BUILD, "rampartctl"), "-c", self.path("rampart.conf")] + list(args),
                              capture_output=True, text=True, timeout=30)

    def xclient(self, addr, name="mx", helo="client.example.org"):
        """A raw session with stage name whose client is addr (XCLIENT, from
        the trusted test network): (Raw, code and text of the XCLIENT reply,
        which is the new session's greeting); EHLO helo after a 220."""
        r = Raw(self.ports[name])
        check(r.banner[0] == 220, "banner: %r" % (r.banner,))
        check(r.cmd("EHLO test.example")[0] == 250, "EHLO")
        code, text, _ = r.cmd("XCLIENT ADDR=%s NAME=[UNAVAILABLE] HELO=%s" % (addr, helo))
        if code == 220:
            check(r.cmd("EHLO " + helo)[0] == 250, "EHLO after XCLIENT")
        return r, code, text


class Redis:
    """A private redis-server on a free loopback port, its files and its log
    (log/redis.log) in lab's directory."""

    def __init__(self, lab):
        self.port = free_port()
        log = lab.path("log", "redis.log")
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", lab.dir, "--daemonize", "no"],
                                     stdout=open(log, "ab"), stderr=subprocess.STDOUT)
        end = time.time() + 10
        while time.time() < end:
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
                s.sendall(b"PING\r\n")
                ok = s.recv(64).startswith(b"+PONG")
                s.close()
                if ok:
                    return
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        raise AssertionError("redis-server did not start:\n%s" % tail(log))

    def kill(self):
        """SIGKILL, unless it has already ended."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def mx_pair_in_redis(name, checks, sections):
    """A lab whose stages keep their state in a private Redis (with a short
    timeout), started: a store, and two MX instances running checks, mx
    (serving /metrics) and mx.b; sections: more configuration sections
    ({"check.NAME": {...}}).  (lab, redis, mx's metrics port); if starting
    fails, both are stopped."""
    lab = Lab(name)
    redis = Redis(lab)
    try:
        lab.sections["state"] = {"backend": "redis", "redis_server": "127.0.0.1:%d" % redis.port,
                                 "redis_timeout": "500ms"}
        lab.add_store()
        mport = free_port()
        lab.add_mx(checks=checks, metrics_listen="127.0.0.1:%d" % mport)
        lab.add_mx("mx.b", checks=checks)
        lab.sections.update(sections)
        for stage in ("store", "mx", "mx.b"):
            lab.start(stage)
    except BaseException:
        redis.kill()
        lab.close()
        raise
    return lab, redis, mport


def metrics(port):
    """The text of a stage's /metrics on port."""
    return urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()


class Raw:
    """A raw SMTP conversation, for inputs a well-behaved client never sends."""

    def __init__(self, port, greet=True, timeout=10):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        if greet:
            self.banner = self.reply()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.s.sendall(data)

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed; got %r" % self.buf)
            self.buf += chunk
        ln, self.buf = self.buf.split(b"\n", 1)
        return ln.rstrip(b"\r").decode(errors="replace")

    def reply(self):
        """One (possibly multi-line) reply: (code, text of the last line, all lines)."""
        lines = []
        while True:
            ln = self.line()
            lines.append(ln)
            if len(ln) < 4 or ln[3] != "-":
                break
        return int(lines[-1][:3]), lines[-1][4:], lines

    def cmd(self, c):
        self.send(c + "\r\n")
        return self.reply()

    def closed(self, timeout=5):
        """True if the server closes the connection (after any pending data)."""
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
                self.buf += d
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.s.close()


def send_mail(port, sender, rcpts, body, helo="client.example.org", **kw):
    """Send with smtplib; returns the dict of refused recipients."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=30) as c:
        return c.sendmail(sender, rcpts, body, **kw)


def message(subject="test", body="Hello.\r\n", extra=""):
    return ("From: sender@example.org\r\nTo: alice@example.test\r\nSubject: %s\r\n"
            "Message-ID: <%s@example.org>\r\n%s\r\n%s" % (subject, subject.replace(" ", "."), extra, body))
