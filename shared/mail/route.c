/*
 * route.c — recipient domain (or smarthost list) to ordered next hops.
 *
 * A lookup is a small state machine driven by resolver callbacks: the MX
 * query, then one A and one AAAA query per host, all at once; when the
 * last answer is in, the hops are put in order and handed to the caller.
 * Outcomes known without DNS (address literals, bad domains) are handed
 * over from an event of the lookup's own, so the callback never runs
 * inside route_lookup().  The resolver cannot cancel a query, so a
 * cancelled lookup only stops caring and is freed when its last answer
 * comes back.
 */
#include "route.h"
#include "../util/alloc.h"
#include "../util/config.h"
#include "../util/dns.h"
#include "../util/log.h"
#include "../util/net.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

enum { T_A = 1, T_MX = 15, T_AAAA = 28 };

struct route_host;

/* The argument of one resolver query. */
struct rq {
	struct route_lookup *l;
	struct route_host *h;   /* NULL for the MX query */
};

/* Addresses of one family for a host. */
struct fam {
	bool asked;
	enum dns_status st;
	bool secure;
	size_t n;
	char **addr;
};

struct route_host {
	char *name;
	int port;
	int pref;
	bool literal;           /* name is an address: v4 or v6 holds it, no query */
	struct rq q4, q6;
	struct fam v4, v6;
};

struct route_lookup {
	struct event_base *base;
	struct dns *dns;
	char *domain;
	int port;
	enum route_family family;
	size_t max_hops;
	char **self;
	size_t nself;
	char *log_id;
	unsigned *live;
	route_cb cb;
	void *arg;

	enum route_via via;
	unsigned pending;       /* resolver answers still owed to us */
	bool cancelled;
	bool in_cb;
	struct event *deliver;  /* hands over outcomes decided without DNS */
	struct rq mxq;
	bool mx_secure;
	unsigned ttl;           /* smallest TTL seen in positive answers */
	bool have_ttl;
	uint64_t rnd;           /* shuffle state, seeded per lookup */

	struct route_host *hosts;
	size_t nhosts;

	bool failed;            /* decided: code/enh/text below */
	int code;
	char enh[16];
	char text[256];
};

/* ---- small helpers ------------------------------------------------------- */

static const char *lid(const struct route_lookup *l)
{
	return l->log_id;
}

static void fail(struct route_lookup *l, int code, const char *enh, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void fail(struct route_lookup *l, int code, const char *enh, const char *fmt, ...)
{
	l->failed = true;
	l->code = code;
	snprintf(l->enh, sizeof(l->enh), "%s", enh);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(l->text, sizeof(l->text), fmt, ap);
	va_end(ap);
}

static void note_ttl(struct route_lookup *l, const struct dns_result *r)
{
	for (size_t i = 0; i < r->n; i++) {
		if (!l->have_ttl || r->rr[i].ttl < l->ttl)
			l->ttl = r->rr[i].ttl;
		l->have_ttl = true;
	}
}

static bool is_temp(enum dns_status st)
{
	return st == DNS_TEMPFAIL || st == DNS_BOGUS;
}

/* splitmix64: a per-lookup generator, seeded from getrandom. */
static uint64_t next_rand(struct route_lookup *l)
{
	uint64_t z = (l->rnd += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void seed_rand(struct route_lookup *l)
{
	if (getrandom(&l->rnd, sizeof(l->rnd), GRND_NONBLOCK) != (ssize_t)sizeof(l->rnd)) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		l->rnd = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^
			 (uint64_t)getpid() ^ (uint64_t)(uintptr_t)l;
	}
}

/* Length of a name without one final dot. */
static size_t name_len(const char *s)
{
	size_t n = strlen(s);
	return n > 1 && s[n - 1] == '.' ? n - 1 : n;
}

static bool same_name(const char *a, const char *b)
{
	size_t na = name_len(a), nb = name_len(b);
	return na == nb && strncasecmp(a, b, na) == 0;
}

/* A domain we can ask the DNS about: ASCII letters, digits, '-' and '_'
 * in dot-separated labels of 1..63, 253 at most (final dot not counted). */
static bool domain_ok(const char *d, size_t n)
{
	if (n == 0 || n > 253)
		return false;
	size_t label = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)d[i];
		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_'))
			return false;
		if (++label > 63)
			return false;
	}
	return label > 0;
}

/* An IP address as text, in canonical form, with its family (4 or 6);
 * 0 if it is not one. */
static int ip_canon(const char *s, char *out, size_t outlen)
{
	unsigned char a[16];
	if (inet_pton(AF_INET, s, a) == 1)
		return inet_ntop(AF_INET, a, out, (socklen_t)outlen) ? 4 : 0;
	if (inet_pton(AF_INET6, s, a) == 1)
		return inet_ntop(AF_INET6, a, out, (socklen_t)outlen) ? 6 : 0;
	return 0;
}

/* "[192.0.2.1]", "[IPv6:2001:db8::1]" (RFC 5321 4.1.3; a bare IPv6 is
 * accepted too) into its address; 0 if malformed. */
static int parse_literal(const char *d, size_t n, char *out, size_t outlen)
{
	if (n < 3 || d[0] != '[' || d[n - 1] != ']' || n - 2 >= 64)
		return 0;
	char inner[64];
	memcpy(inner, d + 1, n - 2);
	inner[n - 2] = '\0';
	const char *p = inner;
	bool tagged6 = strncasecmp(p, "IPv6:", 5) == 0;
	if (tagged6)
		p += 5;
	int fam = ip_canon(p, out, outlen);
	if (tagged6 && fam != 6)
		return 0;
	return fam;
}

static bool family_allows(const struct route_lookup *l, int fam)
{
	if (fam == 4)
		return l->family != ROUTE_IPV6_ONLY;
	return l->family != ROUTE_IPV4_ONLY;
}

static const char *family_words(const struct route_lookup *l)
{
	switch (l->family) {
	case ROUTE_IPV4_ONLY: return " (IPv4 only)";
	case ROUTE_IPV6_ONLY: return " (IPv6 only)";
	default:              return "";
	}
}

static void fam_add(struct fam *f, const char *addr)
{
	f->addr = xrealloc(f->addr, (f->n + 1) * sizeof(*f->addr));
	f->addr[f->n++] = xstrdup(addr);
}

static void fam_clear(struct fam *f)
{
	for (size_t i = 0; i < f->n; i++)
		free(f->addr[i]);
	free(f->addr);
	f->addr = NULL;
	f->n = 0;
}

/* ---- lifetime ------------------------------------------------------------ */

static void lookup_free(struct route_lookup *l)
{
	for (size_t i = 0; i < l->nhosts; i++) {
		free(l->hosts[i].name);
		fam_clear(&l->hosts[i].v4);
		fam_clear(&l->hosts[i].v6);
	}
	free(l->hosts);
	for (size_t i = 0; i < l->nself; i++)
		free(l->self[i]);
	free(l->self);
	if (l->deliver)
		event_free(l->deliver);
	free(l->domain);
	free(l->log_id);
	if (l->live)
		(*l->live)--;
	free(l);
}

static void finish(struct route_lookup *l);

static void on_deliver(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	finish(arg);
}

/* Hand the outcome over on the next turn of the loop. */
static void schedule(struct route_lookup *l)
{
	event_active(l->deliver, EV_TIMEOUT, 1);
}

static struct route_lookup *lookup_new(struct event_base *base, struct dns *dns, const char *what,
				       const struct route_opts *opts, route_cb cb, void *arg)
{
	struct route_lookup *l = xcalloc(1, sizeof(*l));
	l->base = base;
	l->dns = dns;
	l->cb = cb;
	l->arg = arg;
	l->domain = xstrdup(what ? what : "");
	l->port = 25;
	if (opts) {
		l->family = opts->family;
		l->max_hops = opts->max_hops;
		l->log_id = opts->log_id ? xstrdup(opts->log_id) : NULL;
		l->live = opts->live;
		if (opts->self_names && opts->self_names->n) {
			l->self = xcalloc(opts->self_names->n, sizeof(*l->self));
			for (size_t i = 0; i < opts->self_names->n; i++)
				l->self[l->nself++] = xstrdup(opts->self_names->v[i]);
		}
	}
	if (l->max_hops == 0)
		l->max_hops = ROUTE_MAX_HOPS_DEFAULT;
	if (l->live)
		(*l->live)++;
	l->deliver = event_new(base, -1, 0, on_deliver, l);
	if (!l->deliver)
		log_fatal(lid(l), NULL, "route_event", "domain=%s error=%s", l->domain,
			  "cannot create an event");
	seed_rand(l);
	return l;
}

/* ---- building the outcome ----------------------------------------------- */

static bool hop_seen(const struct route_hop *hops, size_t n, const char *addr, int port)
{
	for (size_t i = 0; i < n; i++)
		if (hops[i].port == port && strcmp(hops[i].addr, addr) == 0)
			return true;
	return false;
}

static void add_fam(struct route_lookup *l, const struct route_host *h, const struct fam *f,
		    struct route_hop *hops, size_t *n)
{
	bool secure = f->secure;
	if (l->via == ROUTE_VIA_MX || l->via == ROUTE_VIA_IMPLICIT_MX)
		secure = secure && l->mx_secure;
	if (h->literal)
		secure = false;
	for (size_t i = 0; i < f->n && *n < l->max_hops; i++) {
		if (hop_seen(hops, *n, f->addr[i], h->port))
			continue;
		struct route_hop *hp = &hops[(*n)++];
		snprintf(hp->host, sizeof(hp->host), "%s", h->name);
		snprintf(hp->addr, sizeof(hp->addr), "%s", f->addr[i]);
		hp->port = h->port;
		hp->pref = h->pref;
		hp->secure = secure;
	}
}

/* Why no host gave an address (called when none did). */
static void explain_none(struct route_lookup *l)
{
	bool temp = false, nx = false;
	const char *temp_host = NULL;
	for (size_t i = 0; i < l->nhosts; i++) {
		const struct route_host *h = &l->hosts[i];
		const struct fam *f[2] = { &h->v4, &h->v6 };
		for (int k = 0; k < 2; k++) {
			if (!f[k]->asked)
				continue;
			if (is_temp(f[k]->st)) {
				temp = true;
				if (!temp_host)
					temp_host = h->name;
			}
			if (f[k]->st == DNS_NXDOMAIN)
				nx = true;
		}
	}
	const char *fw = family_words(l);
	switch (l->via) {
	case ROUTE_VIA_IMPLICIT_MX:
		if (temp)
			fail(l, 451, "4.4.3", "%s: no MX, and the address lookup failed temporarily", l->domain);
		else if (nx)
			fail(l, 550, "5.1.2", "%s: domain does not exist", l->domain);
		else
			fail(l, 550, "5.1.2", "%s: domain has no MX and no address%s", l->domain, fw);
		break;
	case ROUTE_VIA_SMARTHOST:
		if (temp)
			fail(l, 451, "4.4.3", "%s: smarthost %s: DNS temporary failure", l->domain,
			     temp_host);
		else
			fail(l, 451, "4.4.4", "%s: no smarthost has an address%s", l->domain, fw);
		break;
	default:
		if (temp)
			fail(l, 451, "4.4.3", "%s: no MX host resolved; DNS temporary failure for %s",
			     l->domain, temp_host);
		else
			fail(l, 550, "5.4.4", "%s: no MX host has an address%s", l->domain, fw);
		break;
	}
}

static void finish(struct route_lookup *l)
{
	struct route_result res;
	memset(&res, 0, sizeof(res));
	res.via = l->via;
	if (!l->failed) {
		size_t cap = l->max_hops;
		res.hops = xcalloc(cap, sizeof(*res.hops));
		for (size_t i = 0; i < l->nhosts && res.n < cap; i++) {
			const struct route_host *h = &l->hosts[i];
			bool v6first = l->family == ROUTE_IPV6_FIRST;
			add_fam(l, h, v6first ? &h->v6 : &h->v4, res.hops, &res.n);
			add_fam(l, h, v6first ? &h->v4 : &h->v6, res.hops, &res.n);
		}
		if (res.n == 0)
			explain_none(l);
	}
	if (l->failed) {
		free(res.hops);
		res.hops = NULL;
		res.n = 0;
		res.code = l->code;
		snprintf(res.enh, sizeof(res.enh), "%s", l->enh);
		snprintf(res.text, sizeof(res.text), "%s", l->text);
		log_info(lid(l), NULL, "route_failed", "domain=%s code=%d enh=%s reason=%s",
			 l->domain, res.code, res.enh, res.text);
	} else {
		res.ttl = l->have_ttl ? l->ttl : 0;
		snprintf(res.text, sizeof(res.text), "%s: %zu hop%s", l->domain, res.n,
			 res.n == 1 ? "" : "s");
		log_debug(lid(l), NULL, "route_done", "domain=%s hops=%zu first=%s first_addr=%s ttl=%u",
			  l->domain, res.n, res.hops[0].host, res.hops[0].addr, res.ttl);
	}
	if (l->cb) {
		l->in_cb = true;
		l->cb(l->arg, &res);
	}
	free(res.hops);
	lookup_free(l);
}

/* ---- address lookups ----------------------------------------------------- */

static void on_addr(void *arg, const struct dns_result *r)
{
	struct rq *q = arg;
	struct route_lookup *l = q->l;
	struct route_host *h = q->h;
	l->pending--;
	if (l->cancelled) {
		if (l->pending == 0)
			lookup_free(l);
		return;
	}
	bool v6 = q == &h->q6;
	struct fam *f = v6 ? &h->v6 : &h->v4;
	f->st = r->status;
	f->secure = r->secure;
	if (r->status == DNS_OK) {
		int want = v6 ? T_AAAA : T_A;
		for (size_t i = 0; i < r->n; i++)
			if (r->rr[i].type == want && r->rr[i].text)
				fam_add(f, r->rr[i].text);
		note_ttl(l, r);
	} else if (r->status != DNS_NODATA) {
		log_info(lid(l), NULL, "route_host_lookup", "domain=%s host=%s type=%s status=%s",
			 l->domain, h->name, v6 ? "AAAA" : "A", dns_status_name(r->status));
	}
	if (l->pending == 0)
		finish(l);
}

static void ask(struct route_lookup *l, struct route_host *h, bool v6)
{
	struct fam *f = v6 ? &h->v6 : &h->v4;
	struct rq *q = v6 ? &h->q6 : &h->q4;
	q->l = l;
	q->h = h;
	f->asked = true;
	if (dns_query(l->dns, h->name, v6 ? T_AAAA : T_A, on_addr, q)) {
		l->pending++;
	} else {
		f->st = DNS_TEMPFAIL;
		log_warn(lid(l), NULL, "route_query_failed", "domain=%s host=%s type=%s", l->domain,
			 h->name, v6 ? "AAAA" : "A");
	}
}

/* Start the A/AAAA queries of every host that needs them; when none is
 * under way the outcome is ready (from_loop: already in a loop callback). */
static void resolve_hosts(struct route_lookup *l, bool from_loop)
{
	for (size_t i = 0; i < l->nhosts; i++) {
		struct route_host *h = &l->hosts[i];
		if (h->literal)
			continue;
		if (l->family != ROUTE_IPV6_ONLY)
			ask(l, h, false);
		if (l->family != ROUTE_IPV4_ONLY)
			ask(l, h, true);
	}
	if (l->pending == 0) {
		if (from_loop)
			finish(l);
		else
			schedule(l);
	}
}

/* ---- MX ------------------------------------------------------------------- */

struct mx {
	const char *name;
	int pref;
};

static int mx_cmp(const void *a, const void *b)
{
	const struct mx *x = a, *y = b;
	return (x->pref > y->pref) - (x->pref < y->pref);
}

static bool is_self(const struct route_lookup *l, const char *name)
{
	for (size_t i = 0; i < l->nself; i++)
		if (same_name(l->self[i], name))
			return true;
	return false;
}

static void on_mx(void *arg, const struct dns_result *r)
{
	struct rq *q = arg;
	struct route_lookup *l = q->l;
	l->pending--;
	if (l->cancelled) {
		if (l->pending == 0)
			lookup_free(l);
		return;
	}
	switch (r->status) {
	case DNS_NXDOMAIN:
		fail(l, 550, "5.1.2", "%s: domain does not exist", l->domain);
		finish(l);
		return;
	case DNS_TEMPFAIL:
		fail(l, 451, "4.4.3", "%s: MX lookup failed temporarily", l->domain);
		finish(l);
		return;
	case DNS_BOGUS:
		fail(l, 451, "4.4.3", "%s: MX lookup failed DNSSEC validation", l->domain);
		finish(l);
		return;
	case DNS_NODATA:
	case DNS_OK:
		break;
	}
	l->mx_secure = r->secure;

	size_t n = 0;
	struct mx *mx = xcalloc(r->n ? r->n : 1, sizeof(*mx));
	for (size_t i = 0; i < r->n; i++)
		if (r->rr[i].type == T_MX && r->rr[i].text)
			mx[n++] = (struct mx){ r->rr[i].text, r->rr[i].pref };

	if (n == 0) {
		/* RFC 5321 5.1: no MX, the domain itself, preference 0. */
		free(mx);
		log_debug(lid(l), NULL, "route_implicit_mx", "domain=%s", l->domain);
		l->via = ROUTE_VIA_IMPLICIT_MX;
		l->hosts = xcalloc(1, sizeof(*l->hosts));
		l->nhosts = 1;
		l->hosts[0].name = xstrdup(l->domain);
		l->hosts[0].port = l->port;
		resolve_hosts(l, true);
		return;
	}
	note_ttl(l, r);
	if (n == 1 && strcmp(mx[0].name, ".") == 0) {
		if (mx[0].pref != 0)
			log_info(lid(l), NULL, "route_null_mx_pref", "domain=%s pref=%d", l->domain,
				 mx[0].pref);
		free(mx);
		fail(l, 556, "5.1.10", "%s: domain does not accept mail (null MX, RFC 7505)",
		     l->domain);
		finish(l);
		return;
	}

	/* Best preference first; a name listed twice keeps its best. */
	qsort(mx, n, sizeof(*mx), mx_cmp);
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(mx[i].name, ".") == 0 || strlen(mx[i].name) >= sizeof(((struct route_hop *)0)->host)) {
			log_info(lid(l), NULL, "route_mx_skipped", "domain=%s host=%s pref=%d", l->domain,
				 mx[i].name, mx[i].pref);
			continue;
		}
		bool dup = false;
		for (size_t j = 0; j < k && !dup; j++)
			dup = same_name(mx[j].name, mx[i].name);
		if (!dup)
			mx[k++] = mx[i];
	}
	n = k;

	/* RFC 5321 5.1: ourselves and every MX no better are not candidates. */
	for (size_t i = 0; i < n; i++) {
		if (is_self(l, mx[i].name)) {
			log_info(lid(l), NULL, "route_mx_self", "domain=%s host=%s pref=%d", l->domain,
				 mx[i].name, mx[i].pref);
			int cut = mx[i].pref;
			size_t j = 0;
			while (j < n && mx[j].pref < cut)
				j++;
			n = j;
			if (n == 0) {
				fail(l, 554, "5.4.6", "%s: mail loops back to myself (MX %s)", l->domain,
				     mx[i].name);
				free(mx);
				finish(l);
				return;
			}
			break;
		}
	}

	/* Equal preferences in random order (Fisher-Yates per run). */
	for (size_t s = 0; s < n;) {
		size_t e = s + 1;
		while (e < n && mx[e].pref == mx[s].pref)
			e++;
		for (size_t i = e - 1; i > s; i--) {
			size_t j = s + (size_t)(next_rand(l) % (uint64_t)(i - s + 1));
			struct mx t = mx[i];
			mx[i] = mx[j];
			mx[j] = t;
		}
		s = e;
	}

	if (n == 0) {
		free(mx);
		fail(l, 550, "5.4.4", "%s: no usable MX host", l->domain);
		finish(l);
		return;
	}
	if (n > l->max_hops)
		n = l->max_hops;
	log_debug(lid(l), NULL, "route_mx", "domain=%s mx=%zu best=%s pref=%d", l->domain, n,
		  mx[0].name, mx[0].pref);
	l->via = ROUTE_VIA_MX;
	l->hosts = xcalloc(n, sizeof(*l->hosts));
	for (size_t i = 0; i < n; i++) {
		struct route_host *h = &l->hosts[l->nhosts++];
		h->name = xstrndup(mx[i].name, name_len(mx[i].name));
		h->pref = mx[i].pref;
		h->port = l->port;
	}
	free(mx);
	resolve_hosts(l, true);
}

/* ---- public API ------------------------------------------------------------ */

struct route_lookup *route_lookup(struct event_base *base, struct dns *dns, const char *domain,
				  int port, const struct route_opts *opts, route_cb cb, void *arg)
{
	struct route_lookup *l = lookup_new(base, dns, domain, opts, cb, arg);
	l->port = port > 0 && port <= 65535 ? port : 25;
	size_t n = strlen(l->domain);

	if (n > 0 && l->domain[0] == '[') {
		char addr[64];
		int fam = parse_literal(l->domain, n, addr, sizeof(addr));
		l->via = ROUTE_VIA_LITERAL;
		if (!fam) {
			fail(l, 550, "5.1.2", "%s: malformed address literal", l->domain);
		} else if (!family_allows(l, fam)) {
			fail(l, 550, "5.4.4", "%s: address literal of an unusable family%s", l->domain,
			     family_words(l));
		} else {
			l->hosts = xcalloc(1, sizeof(*l->hosts));
			l->nhosts = 1;
			struct route_host *h = &l->hosts[0];
			h->name = xstrdup(l->domain);
			h->port = l->port;
			h->literal = true;
			fam_add(fam == 4 ? &h->v4 : &h->v6, addr);
		}
		schedule(l);
		return l;
	}
	if (n > 1 && l->domain[n - 1] == '.')
		l->domain[--n] = '\0';
	if (!domain_ok(l->domain, n)) {
		bool ascii = true;
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)l->domain[i] >= 0x80)
				ascii = false;
		/* A name we cannot even ask about: never log it raw. */
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)l->domain[i] < 0x20 || l->domain[i] == 0x7f)
				l->domain[i] = '?';
		fail(l, 550, "5.1.2", "%s: %s", l->domain,
		     ascii ? "not a valid domain name" : "not an ASCII domain (IDN needs A-labels)");
		schedule(l);
		return l;
	}
	l->mxq.l = l;
	if (!dns_query(dns, l->domain, T_MX, on_mx, &l->mxq)) {
		log_warn(lid(l), NULL, "route_query_failed", "domain=%s host=%s type=MX", l->domain,
			 l->domain);
		fail(l, 451, "4.4.3", "%s: cannot start the MX lookup", l->domain);
		schedule(l);
		return l;
	}
	l->pending++;
	return l;
}

struct route_lookup *route_smarthosts(struct event_base *base, struct dns *dns, const char *domain,
				      const struct endpoint *hosts, size_t n,
				      const struct route_opts *opts, route_cb cb, void *arg)
{
	struct route_lookup *l = lookup_new(base, dns, domain ? domain : "", opts, cb, arg);
	l->via = ROUTE_VIA_SMARTHOST;
	l->hosts = xcalloc(n ? n : 1, sizeof(*l->hosts));
	bool any_name_bad = false;
	for (size_t i = 0; i < n; i++) {
		const struct endpoint *e = &hosts[i];
		char name[256], addr[64];
		snprintf(name, sizeof(name), "%s", e->host);
		size_t len = strlen(name);
		if (len > 1 && name[0] == '[' && name[len - 1] == ']') {
			memmove(name, name + 1, len - 2);
			name[len - 2] = '\0';
			len -= 2;
		}
		int fam = e->is_unix ? 0 : ip_canon(name, addr, sizeof(addr));
		if (!fam && len > 1 && name[len - 1] == '.')
			name[--len] = '\0';
		if (e->is_unix || (!fam && !domain_ok(name, len))) {
			log_warn(lid(l), NULL, "route_smarthost_unusable", "domain=%s host=%s port=%d",
				 l->domain, e->host, e->port);
			any_name_bad = true;
			continue;
		}
		struct route_host *h = &l->hosts[l->nhosts++];
		h->name = xstrdup(name);
		h->port = e->port > 0 && e->port <= 65535 ? e->port : 25;
		h->pref = (int)i;
		if (fam) {
			h->literal = true;
			if (family_allows(l, fam))
				fam_add(fam == 4 ? &h->v4 : &h->v6, addr);
		}
	}
	if (l->nhosts == 0) {
		fail(l, 451, "4.3.5", "%s: no usable smarthost configured%s", l->domain,
		     any_name_bad ? " (unix: or malformed entries)" : "");
		schedule(l);
		return l;
	}
	resolve_hosts(l, false);
	return l;
}

void route_cancel(struct route_lookup *l)
{
	if (!l || l->in_cb || l->cancelled)
		return;
	l->cancelled = true;
	event_del(l->deliver);
	log_debug(lid(l), NULL, "route_cancelled", "domain=%s pending=%u", l->domain, l->pending);
	if (l->pending == 0)
		lookup_free(l);
}

void route_result_hops(const struct route_result *r, struct strlist *out)
{
	if (!r || !out || r->n == 0)
		return;
	out->v = xrealloc(out->v, (out->n + r->n) * sizeof(*out->v));
	for (size_t i = 0; i < r->n; i++) {
		const struct route_hop *h = &r->hops[i];
		if (strchr(h->addr, ':'))
			out->v[out->n++] = xasprintf("[%s]:%d", h->addr, h->port);
		else
			out->v[out->n++] = xasprintf("%s:%d", h->addr, h->port);
	}
}

void route_result_copy(struct route_result *dst, const struct route_result *src)
{
	*dst = *src;
	dst->hops = src->n ? xmemdup(src->hops, src->n * sizeof(*src->hops)) : NULL;
}

void route_result_clear(struct route_result *r)
{
	if (!r)
		return;
	free(r->hops);
	memset(r, 0, sizeof(*r));
}
