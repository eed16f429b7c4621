#!/usr/bin/python3
"""peer_smtp.py — scripted SMTP/LMTP peer for tests/unit/test_smtp_client.

Listens on 127.0.0.1 (an ephemeral port) or on a unix socket, prints the
port (0 for unix) on stdout once it accepts, and serves connections until
it is killed.  It records what the client sent into --dir:

  cmds        one line per command: "<conn>\t<batch>\t<command line>";
              batch counts the reads of that connection, so commands that
              arrived in one read (pipelined) share a batch number
  raw.<conn>  every byte received on connection <conn> (after TLS)
  body.<n>    the n-th message exactly as on the wire, stuffing and the
              final ".\r\n" included
  tls.<conn>  exists when connection <conn> completed STARTTLS (or the
              implicit TLS handshake); it holds the TLS version
  tlsfail.<conn>  the server's reason when that handshake failed
  sni.<conn>  the server name the client sent (SNI), if any
  auth.<conn> one line per AUTH exchange: "<mech> <user> <password> ok|fail"

Behaviour is chosen with options (see --help).  Reply texts use "|" to
separate the lines of a multi-line reply.  AUTH PLAIN (with or without an
initial response) and AUTH LOGIN are served when an --ext line starting
with AUTH offers them; --auth-user/--auth-pass are the credentials that
pass, --auth-reply forces the reply to every AUTH.  With --aiosmtpd it runs
aiosmtpd instead (a third-party server, STARTTLS capable) and stores each
message's envelope and content in aio.<n>.

Needs only the standard library, except for --aiosmtpd (Debian package
python3-aiosmtpd; run with /usr/bin/python3).
"""
import argparse
import base64
import binascii
import os
import signal
import socket
import ssl
import sys
import threading
import time
import warnings

ARGS = None
LOCK = threading.Lock()
COUNTERS = {"conn": 0, "msg": 0}


def record(name, data, mode="ab"):
    with LOCK:
        with open(os.path.join(ARGS.dir, name), mode) as f:
            f.write(data)


def tls_context(num):
    """Server context for connection num: --tls certificate, --tls-max cap,
    SNI recorded."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ARGS.tls[0], ARGS.tls[1])
    if ARGS.tls_max:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if ARGS.tls_max == "1.1":
                # TLS 1.1 needs the legacy ciphers and security level 0
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
                ctx.minimum_version = ssl.TLSVersion.TLSv1_1
                ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            elif ARGS.tls_max == "1.2":
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            else:
                ctx.maximum_version = ssl.TLSVersion.TLSv1_3

    def sni(sock, name, c):
        if name:
            record("sni.%d" % num, name.encode(), "wb")
        return None

    ctx.sni_callback = sni
    return ctx


def parse_map(items):
    out = {}
    for it in items:
        addr, _, reply = it.partition("=")
        out[addr.lower()] = reply
    return out


def reply_lines(text):
    """'550 5.1.1 a|550 5.1.1 b' -> b'550-5.1.1 a\\r\\n550 5.1.1 b\\r\\n'"""
    parts = text.split("|")
    out = b""
    for i, p in enumerate(parts):
        if i < len(parts) - 1 and len(p) >= 4 and p[3] == " ":
            p = p[:3] + "-" + p[4:]
        out += p.encode() + b"\r\n"
    return out


class Conn:
    def __init__(self, sock, num):
        self.sock = sock
        self.num = num
        self.batch = 0
        self.buf = b""
        self.tls = False
        self.rcpts = []
        self.mail_ok = False
        self.authed = False
        self.out = b""

    def start_tls(self):
        """Server side of a handshake; False (reason recorded) if it failed."""
        try:
            self.sock = tls_context(self.num).wrap_socket(self.sock, server_side=True)
        except (OSError, ssl.SSLError) as e:
            record("tlsfail.%d" % self.num, str(e).encode(), "wb")
            return False
        self.tls = True
        record("tls.%d" % self.num, (self.sock.version() or "TLS").encode() + b"\n", "wb")
        return True

    def read_line(self):
        """Next command line (recorded in cmds), None at end of input."""
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                text = line.decode("utf-8", "replace")
                record("cmds", ("%d\t%d\t%s\n" % (self.num, self.batch, text)).encode())
                return text
            self.flush()
            data = self.recv()
            if not data:
                return None
            self.buf += data

    def auth_offered(self):
        return any(e.upper().startswith("AUTH") for e in ARGS.ext)

    def auth(self, text):
        """AUTH PLAIN [initial-response] or AUTH LOGIN; False: connection gone."""
        parts = text.split()
        mech = parts[1].upper() if len(parts) > 1 else ""
        if self.authed:
            self.say("503 5.5.1 Error: already authenticated")
            return True
        if mech == "PLAIN":
            if len(parts) > 2:
                resp = parts[2]
            else:
                self.say("334 ")
                resp = self.read_line()
                if resp is None:
                    return False
            if resp == "*":
                self.say("501 5.7.0 Authentication cancelled")
                return True
            try:
                fields = base64.b64decode(resp, validate=True).split(b"\0")
                if len(fields) != 3:
                    raise ValueError("not authzid NUL authcid NUL passwd")
                user, pw = fields[1], fields[2]
            except (binascii.Error, ValueError):
                self.say("501 5.5.2 Error: malformed AUTH PLAIN response")
                return True
        elif mech == "LOGIN":
            got = []
            for challenge in ("334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"):
                self.say(challenge)
                resp = self.read_line()
                if resp is None:
                    return False
                if resp == "*":
                    self.say("501 5.7.0 Authentication cancelled")
                    return True
                try:
                    got.append(base64.b64decode(resp, validate=True))
                except binascii.Error:
                    self.say("501 5.5.2 Error: malformed AUTH LOGIN response")
                    return True
            user, pw = got
        else:
            self.say("504 5.5.4 Error: unsupported mechanism")
            return True
        ok = (ARGS.auth_reply is None and ARGS.auth_user is not None and
              user == ARGS.auth_user.encode() and pw == (ARGS.auth_pass or "").encode())
        record("auth.%d" % self.num, b"%s %s %s %s\n" % (mech.encode(), user, pw, b"ok" if ok else b"fail"))
        if ARGS.auth_reply:
            self.say(ARGS.auth_reply)
        elif ok:
            self.authed = True
            self.say("235 2.7.0 Authentication successful")
        else:
            self.say("535 5.7.8 Error: authentication failed")
        return True

    def recv(self):
        if ARGS.batch_delay:
            time.sleep(ARGS.batch_delay)
        try:
            data = self.sock.recv(65536)
        except (OSError, ssl.SSLError):
            return b""
        if data:
            self.batch += 1
            record("raw.%d" % self.num, data)
        return data

    def flush(self):
        if self.out:
            try:
                self.sock.sendall(self.out)
            except OSError:
                pass
            self.out = b""

    def say(self, text):
        self.out += reply_lines(text)

    def sink_forever(self):
        """Stall: read and discard until the client gives up."""
        while self.recv():
            pass

    def read_body(self):
        """Body up to and including CRLF.CRLF (or a lone '.' line first)."""
        while True:
            if self.buf.startswith(b".\r\n"):
                end = 3
                break
            i = self.buf.find(b"\r\n.\r\n")
            if i >= 0:
                end = i + 5
                break
            data = self.recv()
            if not data:
                return None
            self.buf += data
        body, self.buf = self.buf[:end], self.buf[end:]
        with LOCK:
            COUNTERS["msg"] += 1
            n = COUNTERS["msg"]
        record("body.%d" % n, body, "wb")
        return body

    def ehlo_reply(self):
        if ARGS.ehlo_reply:
            return ARGS.ehlo_reply
        lines = ["250 peer.test"]
        for e in ARGS.ext:
            if e.upper() == "STARTTLS" and self.tls:
                continue
            lines.append("250 " + e)
        return "|".join(lines)

    def serve(self):
        if ARGS.implicit_tls and not self.start_tls():
            return
        if ARGS.stall_on and ARGS.stall_on.upper() == "GREETING":
            self.sink_forever()
            return
        self.say(ARGS.greeting)
        self.flush()
        if ARGS.greeting.startswith("421"):
            return
        rcpt_map = parse_map(ARGS.rcpt_reply)
        lmtp_map = parse_map(ARGS.lmtp_reply)
        while True:
            i = self.buf.find(b"\r\n")
            if i < 0:
                self.flush()
                data = self.recv()
                if not data:
                    return
                self.buf += data
                continue
            line, self.buf = self.buf[:i], self.buf[i + 2:]
            text = line.decode("utf-8", "replace")
            record("cmds", ("%d\t%d\t%s\n" % (self.num, self.batch, text)).encode())
            verb = text.split(" ", 1)[0].upper()
            if ARGS.stall_on and verb == ARGS.stall_on.upper():
                self.flush()
                self.sink_forever()
                return
            if ARGS.bad_reply_on and verb == ARGS.bad_reply_on.upper():
                self.out += b"this is not an SMTP reply\r\n"
                continue
            if verb in ("EHLO", "LHLO"):
                if ARGS.lmtp != (verb == "LHLO"):
                    self.say("500 5.5.1 wrong greeting command")
                else:
                    self.say(self.ehlo_reply())
            elif verb == "HELO":
                self.say("250 peer.test")
            elif verb == "STARTTLS" and ARGS.tls and not self.tls:
                self.say("220 2.0.0 ready to start TLS")
                self.flush()
                self.buf = b""
                if ARGS.tls_garbage:
                    try:
                        self.sock.sendall(b"garbage, not a TLS record\r\n")
                    except OSError:
                        pass
                    return
                if not self.start_tls():
                    return
                self.rcpts = []
                self.mail_ok = False
                self.authed = False
            elif verb == "STARTTLS":
                self.say("454 4.7.0 TLS not available")
            elif verb == "AUTH" and self.auth_offered():
                if not self.auth(text):
                    return
            elif verb == "XFORWARD":
                self.say("250 2.0.0 Ok")
            elif verb == "MAIL":
                self.rcpts = []
                if self.mail_ok:
                    self.say("503 5.5.1 Error: nested MAIL command")
                elif ARGS.auth_required and not self.authed:
                    self.say("530 5.7.0 Authentication required")
                elif ARGS.mail_reply:
                    self.say(ARGS.mail_reply)
                else:
                    self.mail_ok = True
                    self.say("250 2.1.0 Ok")
            elif verb == "RCPT" and not self.mail_ok:
                self.say("503 5.5.1 Error: need MAIL command")
            elif verb == "RCPT":
                a = text[text.find("<") + 1:text.rfind(">")].lower()
                r = rcpt_map.get(a, "250 2.1.5 Ok")
                if r.startswith("2"):
                    self.rcpts.append(a)
                self.say(r)
            elif verb == "DATA" and not self.mail_ok:
                self.say("503 5.5.1 Error: need RCPT command")
            elif verb == "DATA":
                if not self.rcpts and not ARGS.always_354:
                    self.say("554 5.5.1 Error: no valid recipients")
                    continue
                self.say("354 End data with <CR><LF>.<CR><LF>")
                self.flush()
                if ARGS.drop_in_data:
                    while not self.buf:
                        data = self.recv()
                        if not data:
                            break
                        self.buf += data
                    self.sock.close()
                    return
                if self.read_body() is None:
                    return
                if ARGS.stall_after_body:
                    self.sink_forever()
                    return
                if ARGS.lmtp_partial and ARGS.lmtp and self.rcpts:
                    a = self.rcpts[0]
                    self.say(lmtp_map.get(a, "250 2.0.0 <%s> delivered" % a))
                    self.flush()
                    return
                if not self.rcpts:
                    self.say("554 5.5.1 Error: no valid recipients")
                elif ARGS.lmtp:
                    for a in self.rcpts:
                        self.say(lmtp_map.get(a, "250 2.0.0 <%s> delivered" % a))
                else:
                    self.say("250 2.0.0 Ok: queued")
                self.rcpts = []
                self.mail_ok = False
            elif verb in ("RSET", "NOOP"):
                if verb == "RSET":
                    self.mail_ok = False
                self.rcpts = []
                self.say("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.say("221 2.0.0 Bye")
                self.flush()
                return
            else:
                self.say("502 5.5.2 Error: command not recognized")


def handle(sock, num):
    c = Conn(sock, num)
    try:
        c.serve()
    finally:
        try:
            c.sock.close()
        except OSError:
            pass


def run_scripted(lsock):
    while True:
        s, _ = lsock.accept()
        s.setblocking(True)
        with LOCK:
            COUNTERS["conn"] += 1
            num = COUNTERS["conn"]
        threading.Thread(target=handle, args=(s, num), daemon=True).start()


def run_aiosmtpd(lsock):
    import asyncio
    from aiosmtpd.smtp import SMTP

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            with LOCK:
                COUNTERS["msg"] += 1
                n = COUNTERS["msg"]
            head = "MAIL %s\n" % envelope.mail_from
            for r in envelope.rcpt_tos:
                head += "RCPT %s\n" % r
            head += "TLS %s\n\n" % ("yes" if session.ssl else "no")
            record("aio.%d" % n, head.encode() + envelope.content, "wb")
            return "250 2.0.0 Ok: stored"

    ctx = None
    if ARGS.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ARGS.tls[0], ARGS.tls[1])
    handler = Handler()

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="aio.test", tls_context=ctx,
                         require_starttls=False, enable_SMTPUTF8=True),
            sock=lsock)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def main():
    global ARGS
    ap = argparse.ArgumentParser(description="scripted SMTP/LMTP peer")
    ap.add_argument("--dir", required=True, help="where to record what the client sent")
    ap.add_argument("--unix", help="listen on this unix socket path instead of TCP")
    ap.add_argument("--greeting", default="220 peer.test ESMTP scripted peer")
    ap.add_argument("--ext", action="append", default=[], help="EHLO keyword line (repeat)")
    ap.add_argument("--lmtp", action="store_true", help="expect LHLO, one reply per RCPT after DATA")
    ap.add_argument("--ehlo-reply", help="reply to EHLO/LHLO instead of the extension list")
    ap.add_argument("--mail-reply", help="refuse MAIL with this reply")
    ap.add_argument("--rcpt-reply", action="append", default=[], help="addr=reply for RCPT")
    ap.add_argument("--lmtp-reply", action="append", default=[], help="addr=reply after DATA (LMTP)")
    ap.add_argument("--stall-on", help="stop answering when this command arrives (GREETING: never greet)")
    ap.add_argument("--bad-reply-on", help="answer this command with a malformed line")
    ap.add_argument("--stall-after-body", action="store_true", help="no reply after the final dot")
    ap.add_argument("--lmtp-partial", action="store_true",
                    help="LMTP: reply for the first recipient only, then close")
    ap.add_argument("--drop-in-data", action="store_true", help="close after the first body bytes")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"),
                    help="certificate for STARTTLS (offer it with --ext STARTTLS; without --tls it gets 454)")
    ap.add_argument("--tls-garbage", action="store_true", help="answer the handshake with garbage")
    ap.add_argument("--implicit-tls", action="store_true",
                    help="TLS handshake on connect, before the greeting (port 465 style; needs --tls)")
    ap.add_argument("--tls-max", choices=("1.1", "1.2", "1.3"),
                    help="highest TLS version (1.1: only TLS 1.1, legacy ciphers)")
    ap.add_argument("--auth-user", help="user name AUTH accepts")
    ap.add_argument("--auth-pass", help="password AUTH accepts")
    ap.add_argument("--auth-reply", help="reply to every AUTH with this, whatever the credentials")
    ap.add_argument("--auth-required", action="store_true", help="530 to MAIL before a successful AUTH")
    ap.add_argument("--batch-delay", type=float, default=0.0, help="seconds to sleep before each read")
    ap.add_argument("--always-354", action="store_true", help="354 to DATA even without recipients")
    ap.add_argument("--aiosmtpd", action="store_true", help="run aiosmtpd instead")
    ARGS = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    if ARGS.aiosmtpd:
        import aiosmtpd.smtp  # noqa: F401  fail before announcing a port
    if ARGS.unix:
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(ARGS.unix)
        except FileNotFoundError:
            pass
        lsock.bind(ARGS.unix)
        port = 0
    else:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", 0))
        port = lsock.getsockname()[1]
    lsock.listen(16)
    sys.stdout.write("%d\n" % port)
    sys.stdout.flush()
    if ARGS.aiosmtpd:
        run_aiosmtpd(lsock)
    else:
        run_scripted(lsock)


if __name__ == "__main__":
    main()
