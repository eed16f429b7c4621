#!/usr/bin/python3
# rfc7208.py — convert the RFC 7208 SPF test suite (pyspf's YAML, shipped by
# the Debian package python3-spf) into the line format the C runner reads
# (tests/unit/test_spf_rfc7208.c).  Converted at test time from the installed
# file, so nothing of the suite is copied into this tree.
#
#   rfc7208.py [SUITE.yml[.gz]] > OUT
#
# Output, one record per line, fields separated by tabs (a backslash escapes
# a backslash, a tab "\t" or a newline "\n" inside a field):
#   S  description                     a scenario: its zone follows
#   Z  local-data line                 "name TTL IN TYPE data" (dns_local_data)
#   T  name host mailfrom helo results has_exp explanation
#                                      a test; results: the acceptable ones,
#                                      space separated, the first preferred
#
# Zone semantics follow pyspf's test driver (testspf.py): SPF records are
# given as TXT when the name has no TXT of its own ("TXT: NONE" means none),
# only TXT is queried (RFC 7208 3.1), and TIMEOUT makes every query of that
# name for a type it has no record of fail.  A timeout is written as a
# malformed record (RFC 3597 generic data that does not decode as its type),
# which the resolver answers as a temporary error, as it would a broken
# server's answer.
import gzip
import sys

import yaml

SUITE = "/usr/share/doc/python3-spf/rfc7208-tests.yml.gz"
TTL = 300
# Types the SPF check queries, with rdata that cannot decode as that type.
BROKEN = {"A": r"\# 1 00", "AAAA": r"\# 1 00", "MX": r"\# 1 00", "PTR": r"\# 1 05", "TXT": r"\# 1 05"}


def esc(field):
    return str(field).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def line(*fields):
    sys.stdout.write("\t".join(esc(f) for f in fields) + "\n")


def fqdn(name):
    """A name as zone-file text: absolute, special bytes as \\DDD."""
    name = str(name)
    name = name if name.endswith(".") else name + "."
    return "".join(c if 0x20 < ord(c) < 0x7f and c not in '"();\\' else "\\%03d" % ord(c) for c in name)


def label_ok(name):
    return all(0 < len(l) < 64 for l in name.rstrip(".").split(".")) and len(name.rstrip(".")) <= 253


def txt_rdata(value):
    """TXT strings as zone-file text: each quoted, split at 255 octets,
    every byte outside printable ASCII (and " and \\) escaped as \\DDD."""
    if isinstance(value, str):
        value = [value]
    if not value:
        # No strings at all: illegal, and unbound's local data answers
        # SERVFAIL for it; one empty string is the nearest it serves.
        return '""'
    out = []
    for s in value:
        b = s.encode("utf-8")
        chunks = [b[i:i + 255] for i in range(0, len(b), 255)] or [b""]
        for c in chunks:
            t = "".join(chr(x) if 0x20 <= x < 0x7f and x not in (0x22, 0x5c) else "\\%03d" % x for x in c)
            out.append('"%s"' % t)
    return " ".join(out)


def zone_lines(name, rrs):
    has = set()
    txt_given = any(isinstance(r, dict) and "TXT" in r for r in rrs)
    timeout = False
    lines = []
    for r in rrs:
        if not isinstance(r, dict):
            if r == "TIMEOUT":
                timeout = True
            continue
        for t, v in r.items():
            if t == "SPF":
                if txt_given:
                    continue        # pyspf duplicates SPF into TXT only without TXT
                t = "TXT"
            if t == "TXT" and v == "NONE":
                continue
            if t == "TIMEOUT" or v == "TIMEOUT":
                continue
            if t == "TXT":
                data = txt_rdata(v)
            elif t == "MX":
                data = "%d %s" % (v[0], fqdn(v[1]) if v[1] else ".")
            elif t in ("PTR", "CNAME"):
                data = fqdn(v)
            else:
                data = str(v)
            has.add(t)
            lines.append("%s %d IN %s %s" % (fqdn(name), TTL, t, data))
    if timeout:
        for t, data in BROKEN.items():
            if t not in has:
                lines.append("%s %d IN %s %s" % (fqdn(name), TTL, t, data))
    return lines


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else SUITE
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        docs = list(yaml.safe_load_all(f))
    for d in docs:
        line("S", d.get("description", ""))
        seen = set()
        for name, rrs in d.get("zonedata", {}).items():
            if not label_ok(str(name)):
                continue            # no server could serve it: never answered
            for l in zone_lines(name, rrs):
                if l.lower() not in seen:
                    seen.add(l.lower())
                    line("Z", l)
        for tname, t in d["tests"].items():
            res = t["result"]
            res = res if isinstance(res, list) else [res]
            exp = t.get("explanation")
            line("T", tname, t["host"], t.get("mailfrom", ""), t.get("helo", ""), " ".join(res),
                 "1" if exp is not None else "0", exp if exp is not None else "")


if __name__ == "__main__":
    main()
