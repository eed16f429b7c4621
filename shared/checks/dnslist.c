/*
 * dnslist.c — DNS list sites and their answers (dnslist.h).
 */
#include "dnslist.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool parse_num(const char **pp, unsigned *out)
{
	const char *p = *pp;
	unsigned v = 0;
	if (!isdigit((unsigned char)*p))
		return false;
	while (isdigit((unsigned char)*p)) {
		v = v * 10 + (unsigned)(*p++ - '0');
		if (v > 255)
			return false;
	}
	*out = v;
	*pp = p;
	return true;
}

/* One octet: N, [a..b], [a;b;c..d] */
static bool parse_octet(const char **pp, struct dnslist_octet *o)
{
	const char *p = *pp;
	o->n = 0;
	if (*p != '[') {
		if (!parse_num(&p, &o->lo[0]))
			return false;
		o->hi[0] = o->lo[0];
		o->n = 1;
		*pp = p;
		return true;
	}
	p++;
	for (;;) {
		if (o->n == DNSLIST_RANGES || !parse_num(&p, &o->lo[o->n]))
			return false;
		o->hi[o->n] = o->lo[o->n];
		if (p[0] == '.' && p[1] == '.') {
			p += 2;
			if (!parse_num(&p, &o->hi[o->n]) || o->hi[o->n] < o->lo[o->n])
				return false;
		}
		o->n++;
		if (*p == ';') {
			p++;
			continue;
		}
		if (*p != ']')
			return false;
		*pp = p + 1;
		return true;
	}
}

bool dnslist_parse(const char *e, struct dnslist_site *s)
{
	memset(s, 0, sizeof(*s));
	s->weight = 1;
	const char *end = e + strcspn(e, "=*");
	size_t dl = (size_t)(end - e);
	if (dl == 0 || dl >= sizeof(s->domain))
		return false;
	memcpy(s->domain, e, dl);
	for (size_t i = 0; i < dl; i++) {
		unsigned char c = (unsigned char)s->domain[i];
		if (!isalnum(c) && c != '-' && c != '.' && c != '_')
			return false;
	}
	const char *p = end;
	if (*p == '=') {
		p++;
		s->filtered = true;
		for (int i = 0; i < 4; i++) {
			if (i && *p++ != '.')
				return false;
			if (!parse_octet(&p, &s->oct[i]))
				return false;
		}
	}
	if (*p == '*') {
		char *q;
		long w = strtol(p + 1, &q, 10);
		if (q == p + 1 || w < -1000 || w > 1000 || w == 0)
			return false;
		s->weight = (int)w;
		p = q;
	}
	return *p == '\0';
}

bool dnslist_pass(const struct dnslist_site *s, const char *addr)
{
	struct in_addr a;
	if (inet_pton(AF_INET, addr, &a) != 1)
		return false;               /* DNSBL answers are IPv4 */
	const unsigned char *b = (const unsigned char *)&a.s_addr;
	if (!s->filtered)
		return b[0] == 127;         /* anything else is a list's error page or wildcard */
	for (int i = 0; i < 4; i++) {
		bool ok = false;
		for (size_t k = 0; k < s->oct[i].n && !ok; k++)
			ok = b[i] >= s->oct[i].lo[k] && b[i] <= s->oct[i].hi[k];
		if (!ok)
			return false;
	}
	return true;
}

bool dnslist_reversed(const char *ip, char *out, size_t len)
{
	unsigned char a[16];
	if (inet_pton(AF_INET, ip, a) == 1) {
		snprintf(out, len, "%u.%u.%u.%u", a[3], a[2], a[1], a[0]);
		return true;
	}
	if (inet_pton(AF_INET6, ip, a) != 1)
		return false;
	static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	if (memcmp(a, mapped, 12) == 0) {
		snprintf(out, len, "%u.%u.%u.%u", a[15], a[14], a[13], a[12]);
		return true;
	}
	static const char hex[] = "0123456789abcdef";
	if (len < 64)
		return false;
	char *o = out;
	for (int i = 15; i >= 0; i--) {
		*o++ = hex[a[i] & 15];
		*o++ = '.';
		*o++ = hex[a[i] >> 4];
		*o++ = i ? '.' : '\0';
	}
	return true;
}

