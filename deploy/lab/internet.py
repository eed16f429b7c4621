#!/usr/bin/python3
"""deploy/lab/internet.py — the lab's "Internet": a catch-all SMTP
receiver that accepts every message and writes it, with its envelope,
under a directory (one file per message and recipient domain).

    internet.py --listen 127.0.0.1:2626 --dir .lab/outbound

Runs on Debian's python3 with python3-aiosmtpd.  Only for the lab and
tests: it accepts anything from anyone on the address it is given."""

import argparse
import asyncio
import os
import signal
import time

from aiosmtpd.controller import Controller


class Catchall:
    def __init__(self, outdir):
        self.outdir = outdir
        self.n = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        domains = sorted({r.rsplit("@", 1)[-1].lower() for r in envelope.rcpt_tos})
        for dom in domains:
            d = os.path.join(self.outdir, dom)
            os.makedirs(d, exist_ok=True)
            name = "%d.%d.%d.eml" % (time.time() * 1000, os.getpid(), self.n)
            tmp = os.path.join(d, "." + name)
            with open(tmp, "wb") as f:
                sender = (envelope.mail_from or "").strip("<>")
                f.write(("X-Lab-Envelope-From: <%s>\r\n" % sender).encode())
                for r in envelope.rcpt_tos:
                    if r.rsplit("@", 1)[-1].lower() == dom:
                        f.write(("X-Lab-Envelope-To: <%s>\r\n" % r).encode())
                f.write(envelope.original_content or envelope.content)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, os.path.join(d, name))
        return "250 2.0.0 Accepted by the lab Internet"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1:2626")
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    os.makedirs(a.dir, exist_ok=True)
    ctl = Controller(Catchall(a.dir), hostname=host, port=int(port), decode_data=False,
                     server_hostname="internet.lab")
    ctl.start()
    stop = asyncio.new_event_loop()
    done = asyncio.Event()

    def bye(*_):
        stop.call_soon_threadsafe(done.set)
    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGINT, bye)
    print("lab internet listening on %s, writing to %s" % (a.listen, a.dir), flush=True)
    stop.run_until_complete(done.wait())
    ctl.stop()


if __name__ == "__main__":
    main()
