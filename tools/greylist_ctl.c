/*
 * greylist_ctl.c — `rampartctl greylist list|allow|purge` (see
 * greylist_ctl.h): the triplets, auto-allow counters and manual allows of
 * check "greylist", explained with the check's parameters.
 *
 * FILTER (list, purge) picks entries:
 *   192.0.2.7, 192.0.2.0/24, 2001:db8::/48
 *                       entries of the clients in (or around) that range:
 *                       networks (net:) and addresses (ip:) that overlap it
 *   example.org         the SPF-keyed client spf:example.org
 *   net:..., spf:..., ip:...
 *                       exactly that client key
 *   user@example.org    triplets with that sender or recipient
 *   gl:...              every key that begins so (as list prints them)
 * purge without FILTER removes what greylisting learnt (triplets and
 * auto-allow counters) and keeps the manual allows (purge gl:m: removes
 * those).
 *
 * allow CLIENT: an address (ip:), a network of the configured prefix
 * length (net:; wider ranges belong in [check.lists] allow_clients), or a
 * domain whose SPF-authorised mail is not greylisted (spf:).  No expiry.
 *
 * The state API is asynchronous: each operation runs on a private event
 * loop until its callback has.  list and purge do not create a missing
 * LMDB file (nothing is stored yet); allow does, and when run as root
 * gives the new files to the owner of their directory, so that the
 * daemons (an unprivileged user) can still open them.
 */
#include "greylist_ctl.h"
#include "checks/greylist.h"
#include "mail/stage.h"
#include "mail/state.h"
#include "state_ctl.h"
#include "checks/chain.h"
#include "util/alloc.h"
#include "util/config.h"
#include "util/log.h"
#include "util/net.h"

#include <event2/event.h>

#include <ctype.h>
#include <signal.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct ctl {
	struct state_ctl sc;            /* sc.st NULL: the LMDB file does not exist yet */
	struct greylist_params gp;      /* from sc.section */
};

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "3d 4h", "5m 2s", "0s": the two largest units (rounded up to seconds). */
static void dur_text(long long ms, char *out, size_t outlen)
{
	state_ctl_duration(ms <= 0 ? 0 : (ms + 999) / 1000, out, outlen);
}

static void time_text(long long ms, char *out, size_t outlen)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	if (ms <= 0 || !gmtime_r(&t, &tm) || !strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(out, outlen, "?");
}

/* ---- keys and filters ------------------------------------------------------ */

/* "gl:t:CLIENT|SENDER|RECIPIENT", "gl:a:CLIENT", "gl:m:CLIENT". */
struct parsed {
	char type;                  /* 't', 'a', 'm'; 0: not a greylist key */
	char client[GL_CLIENT_MAX];
	char sender[STATE_KEY_MAX + 1];
	char rcpt[STATE_KEY_MAX + 1];
};

static void parse_key(const char *key, struct parsed *p)
{
	memset(p, 0, sizeof(*p));
	if (strncmp(key, "gl:", 3) != 0 || !key[3] || key[4] != ':' || !strchr("tam", key[3]))
		return;
	const char *rest = key + 5;
	if (key[3] != 't') {
		snprintf(p->client, sizeof(p->client), "%s", rest);
		p->type = key[3];
		return;
	}
	const char *b1 = strchr(rest, '|');
	const char *b2 = b1 ? strchr(b1 + 1, '|') : NULL;
	if (!b2)
		return;
	snprintf(p->client, sizeof(p->client), "%.*s", (int)(b1 - rest), rest);
	snprintf(p->sender, sizeof(p->sender), "%.*s", (int)(b2 - b1 - 1), b1 + 1);
	snprintf(p->rcpt, sizeof(p->rcpt), "%s", b2 + 1);
	p->type = 't';
}

enum fkind { F_ALL, F_RAW, F_CLIENT, F_NET, F_ADDR };

struct filter {
	enum fkind kind;
	char text[STATE_KEY_MAX + 1];   /* F_RAW: key prefix; F_CLIENT: client key */
	struct cidr net;                /* F_NET */
	char sender[GL_ADDR_MAX + 1];   /* F_ADDR: the address as a sender ... */
	char rcpt[GL_ADDR_MAX + 1];     /* ... and as a recipient */
};

static bool domain_like(const char *s)
{
	if (!*s || strlen(s) > 253 || !strchr(s, '.'))
		return false;
	for (const char *p = s; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-' && *p != '_')
			return false;
	return true;
}

static bool filter_parse(const struct ctl *c, const char *text, struct filter *f)
{
	memset(f, 0, sizeof(*f));
	if (!text || !*text) {
		f->kind = F_ALL;
		return true;
	}
	if (strncmp(text, "gl:", 3) == 0) {
		f->kind = F_RAW;
		snprintf(f->text, sizeof(f->text), "%s", text);
		return true;
	}
	if (strncasecmp(text, "net:", 4) == 0 || strncasecmp(text, "ip:", 3) == 0 || strncasecmp(text, "spf:", 4) == 0) {
		f->kind = F_CLIENT;
		snprintf(f->text, sizeof(f->text), "%s", text);
		for (char *p = f->text; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		return true;
	}
	if (strchr(text, '@')) {
		f->kind = F_ADDR;
		gl_canon_addr(text, true, c->gp.subaddress_separator, f->sender, sizeof(f->sender));
		gl_canon_addr(text, false, c->gp.subaddress_separator, f->rcpt, sizeof(f->rcpt));
		return true;
	}
	if (cidr_parse(text, &f->net)) {
		f->kind = F_NET;
		return true;
	}
	if (domain_like(text) && gl_domain_key(text, f->text, sizeof(f->text))) {
		f->kind = F_CLIENT;
		return true;
	}
	fprintf(stderr, "rampartctl: greylist: '%s': expected an address or network (192.0.2.7, 192.0.2.0/24), a "
		"domain, a client key (net:..., spf:..., ip:...), a sender or recipient address, or a key prefix gl:...\n",
		text);
	return false;
}

/* Networks a and b overlap: one holds the other. */
static bool overlap(const struct cidr *a, const struct cidr *b)
{
	if (a->family != b->family)
		return false;
	int bits = a->prefix < b->prefix ? a->prefix : b->prefix;
	for (int i = 0; i < bits; i++) {
		uint8_t m = (uint8_t)(0x80u >> (i % 8));
		if ((a->addr[i / 8] & m) != (b->addr[i / 8] & m))
			return false;
	}
	return true;
}

static bool filter_match(const struct filter *f, const char *key, const struct parsed *p)
{
	struct cidr n;
	switch (f->kind) {
	case F_ALL:
		return true;
	case F_RAW:
		return strncmp(key, f->text, strlen(f->text)) == 0;
	case F_CLIENT:
		return p->type && strcmp(p->client, f->text) == 0;
	case F_NET:
		if (strncmp(p->client, "net:", 4) == 0 && cidr_parse(p->client + 4, &n))
			return overlap(&n, &f->net);
		if (strncmp(p->client, "ip:", 3) == 0 && cidr_parse(p->client + 3, &n))
			return overlap(&n, &f->net);
		return false;
	case F_ADDR:
		return p->type == 't' && (strcmp(p->sender, f->sender) == 0 || strcmp(p->rcpt, f->rcpt) == 0);
	}
	return false;
}

/* ---- list ------------------------------------------------------------------ */

struct lister {
	struct ctl *c;
	const struct filter *f;
	long long now;
	size_t waiting, passed, counters, auto_allowed, manual, other;
};

static void describe(struct lister *l, const struct state_entry *e, const struct parsed *p)
{
	const struct greylist_params *gp = &l->c->gp;
	char a[64], b[64], t[64];
	if (e->ttl_ms >= 0)
		dur_text(e->ttl_ms, t, sizeof(t));
	else
		snprintf(t, sizeof(t), "never");
	if (p->type == 't') {
		struct gl_triplet tv;
		if (!gl_triplet_parse(e->value, &tv)) {
			l->other++;
			printf("%s  (not a triplet: %s)\n", e->key, e->value);
			return;
		}
		time_text(tv.first_ms, a, sizeof(a));
		if (tv.passed_ms == 0) {
			l->waiting++;
			long long left = gp->delay - (l->now - tv.first_ms);
			if (left > 0)
				dur_text(left, b, sizeof(b));
			printf("%s  waiting: first seen %s, a retry passes %s%s, forgotten in %s\n", e->key, a,
			       left > 0 ? "in " : "now", left > 0 ? b : "", t);
		} else {
			l->passed++;
			dur_text(tv.passed_ms - tv.first_ms, b, sizeof(b));
			printf("%s  passed: first seen %s, retried after %s, expires in %s\n", e->key, a, b, t);
		}
		return;
	}
	if (p->type == 'a') {
		l->counters++;
		char *end;
		errno = 0;
		long long n = strtoll(e->value, &end, 10);
		if (errno || end == e->value || *end) {
			printf("%s  (not a counter: %s)\n", e->key, e->value);
			return;
		}
		if (gp->auto_allow_after > 0 && n >= gp->auto_allow_after) {
			l->auto_allowed++;
			printf("%s  auto-allowed: %lld triplets passed (%lld needed), expires in %s\n", e->key, n,
			       gp->auto_allow_after, t);
		} else if (gp->auto_allow_after > 0) {
			printf("%s  %lld of %lld triplets passed for auto-allow, expires in %s\n", e->key, n,
			       gp->auto_allow_after, t);
		} else {
			printf("%s  %lld triplets passed (auto_allow_after = 0: never auto-allowed), expires in %s\n",
			       e->key, n, t);
		}
		return;
	}
	if (p->type == 'm') {
		l->manual++;
		time_text(strtoll(e->value, NULL, 10), a, sizeof(a));
		printf("%s  allowed by hand since %s, %s%s\n", e->key, a, e->ttl_ms >= 0 ? "expires in " : "no expiry",
		       e->ttl_ms >= 0 ? t : "");
		return;
	}
	l->other++;
	printf("%s  (not a greylist entry)\n", e->key);
}

static void list_entry(void *arg, const struct state_entry *e)
{
	struct lister *l = arg;
	struct parsed p;
	parse_key(e->key, &p);
	if (filter_match(l->f, e->key, &p))
		describe(l, e, &p);
}

static int list(struct ctl *c, const struct filter *f)
{
	struct lister l = { .c = c, .f = f, .now = now_ms() };
	if (c->sc.st && !state_ctl_scan(&c->sc, "gl:", list_entry, NULL, &l))
		return 1;
	printf("%zu triplet%s (%zu waiting, %zu passed), %zu auto-allow counter%s (%zu auto-allowed), "
	       "%zu manual allow%s\n", l.waiting + l.passed, l.waiting + l.passed == 1 ? "" : "s", l.waiting, l.passed,
	       l.counters, l.counters == 1 ? "" : "s", l.auto_allowed, l.manual, l.manual == 1 ? "" : "s");
	return 0;
}

/* ---- purge ----------------------------------------------------------------- */

struct purger {
	struct ctl *c;
	const struct filter *f;
	char **keys;                /* this page's matches */
	size_t n;
	size_t deleted, kept_manual;
	bool failed;
};

static void purge_entry(void *arg, const struct state_entry *e)
{
	struct purger *pg = arg;
	struct parsed p;
	parse_key(e->key, &p);
	if (!filter_match(pg->f, e->key, &p))
		return;
	if (pg->f->kind == F_ALL && p.type == 'm') {
		pg->kept_manual++;
		return;
	}
	if (pg->n < STATE_SCAN_MAX)
		pg->keys[pg->n++] = xstrdup(e->key);
}

/* Delete the page's matches (all at once, then wait for them). */
static bool purge_page(void *arg)
{
	struct purger *pg = arg;
	struct ctl *c = pg->c;
	struct state_ctl_op *w = xcalloc(pg->n ? pg->n : 1, sizeof(*w));
	for (size_t i = 0; i < pg->n; i++)
		state_del(c->sc.st, pg->keys[i], state_ctl_done, &w[i]);
	for (size_t i = 0; i < pg->n; i++) {
		if (!state_ctl_wait(&c->sc, &w[i], "del"))
			pg->failed = true;
		else if (w[i].status == STATE_OK)
			pg->deleted++;
		free(pg->keys[i]);
	}
	free(w);
	pg->n = 0;
	return !pg->failed;
}

static int purge(struct ctl *c, const struct filter *f)
{
	struct purger pg = { .c = c, .f = f };
	pg.keys = xcalloc(STATE_SCAN_MAX, sizeof(*pg.keys));
	bool ok = !c->sc.st || state_ctl_scan(&c->sc, f->kind == F_RAW ? f->text : "gl:", purge_entry, purge_page, &pg);
	for (size_t i = 0; i < pg.n; i++)
		free(pg.keys[i]);
	free(pg.keys);
	printf("%zu entr%s deleted", pg.deleted, pg.deleted == 1 ? "y" : "ies");
	if (pg.kept_manual)
		printf(", %zu manual allow%s kept (purge gl:m: removes them)", pg.kept_manual,
		       pg.kept_manual == 1 ? "" : "s");
	printf("\n");
	return ok && !pg.failed ? 0 : 1;
}

/* ---- allow ----------------------------------------------------------------- */

static int allow(struct ctl *c, const char *text)
{
	char client[GL_CLIENT_MAX];
	struct cidr n;
	const struct greylist_params *gp = &c->gp;
	if (strchr(text, '@')) {
		fprintf(stderr, "rampartctl: greylist allow: '%s' is an e-mail address; allow a client: an address, "
			"a network, or a domain whose SPF-authorised mail is let through\n", text);
		return 1;
	}
	if (cidr_parse(text, &n)) {
		int want = n.family == AF_INET ? (int)gp->ipv4_prefix : (int)gp->ipv6_prefix;
		int full = n.family == AF_INET ? 32 : 128;
		bool ok;
		if (!strchr(text, '/') || n.prefix == full) {
			char ip[64];
			snprintf(ip, sizeof(ip), "%.*s", (int)strcspn(text, "/"), text);
			ok = gl_ip_key(ip, client, sizeof(client));
		} else if (n.prefix == want) {
			char ip[64];
			snprintf(ip, sizeof(ip), "%.*s", (int)strcspn(text, "/"), text);
			ok = gl_net_key(ip, gp, client, sizeof(client));
		} else {
			fprintf(stderr, "rampartctl: greylist allow: '%s': greylisting keys clients by /%d networks "
				"([%s] %s); allow one address, a /%d, or put wider networks in [check.lists] "
				"allow_clients\n", text, want, c->sc.section, n.family == AF_INET ? "ipv4_prefix" :
				"ipv6_prefix", want);
			return 1;
		}
		if (!ok) {
			fprintf(stderr, "rampartctl: greylist allow: '%s': not an address\n", text);
			return 1;
		}
	} else if (strncasecmp(text, "spf:", 4) == 0 ? gl_domain_key(text + 4, client, sizeof(client)) :
		   domain_like(text) && gl_domain_key(text, client, sizeof(client))) {
		/* a domain */
	} else {
		fprintf(stderr, "rampartctl: greylist allow: '%s': expected an address (192.0.2.7), a network "
			"(192.0.2.0/%lld) or a domain (example.org)\n", text, gp->ipv4_prefix);
		return 1;
	}
	char key[STATE_KEY_MAX + 1], value[32];
	snprintf(key, sizeof(key), GL_MANUAL "%s", client);
	snprintf(value, sizeof(value), "%lld", now_ms());
	struct state_ctl_op w = { 0 };
	state_set(c->sc.st, key, value, strlen(value), 0, state_ctl_done, &w);
	if (!state_ctl_wait(&c->sc, &w, "set"))
		return 1;
	printf("%s: allowed, no expiry (rampartctl greylist purge %s removes it)\n", key, key);
	if (strncmp(client, "spf:", 4) == 0)
		printf("  mail whose sender domain (or, for bounces, HELO name) passes SPF for %s is not greylisted\n",
		       client + 4);
	return 0;
}

int greylist_ctl_main(const char *config_path, const char *instance, int argc, char **argv)
{
	const char *op = argc >= 1 ? argv[0] : "";
	bool ok_args = (strcmp(op, "list") == 0 && argc <= 2) || (strcmp(op, "purge") == 0 && argc <= 2) ||
		       (strcmp(op, "allow") == 0 && argc == 2);
	if (!ok_args) {
		fprintf(stderr, "usage: rampartctl [-c rampart.conf] [-n instance] greylist list [FILTER] | "
			"allow CLIENT | purge [FILTER]\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);       /* a Redis that goes away is an error, not a crash */
	struct ctl c;
	if (!state_ctl_open(&c.sc, config_path, instance, "greylist", &greylist_params_set, &c.gp, NULL, NULL,
			    strcmp(op, "allow") == 0))
		return 1;
	int rc;
	struct filter f;
	if (strcmp(op, "allow") == 0)
		rc = allow(&c, argv[1]);
	else if (!filter_parse(&c, argc > 1 ? argv[1] : NULL, &f))
		rc = 2;
	else if (strcmp(op, "list") == 0)
		rc = list(&c, &f);
	else
		rc = purge(&c, &f);
	state_ctl_close(&c.sc);
	return rc;
}
