/*
 * ratelimit_ctl.c — `rampartctl ratelimit show|reset|list` (see
 * ratelimit_ctl.h): the buckets of check "ratelimit", explained with the
 * rule that fills them.
 *
 * The state API is asynchronous: each operation is issued on a private
 * event loop that runs until its callback has. A store that is not there
 * yet (no LMDB file: no stage has used it) holds no bucket; it is not
 * created here, so that a root-run rampartctl never leaves a file the
 * daemons' user cannot open.
 */
#include "ratelimit_ctl.h"
#include "checks/ratelimit.h"
#include "mail/stage.h"
#include "mail/state.h"
#include "state_ctl.h"
#include "checks/chain.h"
#include "util/alloc.h"
#include "util/config.h"
#include "util/log.h"

#include <event2/event.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ctl {
	struct state_ctl sc;            /* sc.st NULL: the LMDB file does not exist yet */
	struct ratelimit_params rp;     /* from sc.section */
	struct rl_rule rules[RL_NKINDS];
};

/* The rules of rp (state_ctl_open's valid). */
static bool load_rules(void *arg, const char *path)
{
	struct ctl *c = arg;
	char why[512] = "";
	if (rl_rules_load(&c->rp, c->rules, why, sizeof(why)))
		return true;
	fprintf(stderr, "rampartctl: %s: [%s] %s\n", path, c->sc.section, why);
	return false;
}

/* A stored bucket: "TOKENS TIME_MS" (state.h). */
static bool parse_bucket(const char *v, double *tokens)
{
	long long ts;
	char end;
	return sscanf(v, "%lf %lld%c", tokens, &ts, &end) == 2 && *tokens >= 0 && ts >= 0;
}

static void dur_text(double ms, char *out, size_t outlen)
{
	long long s = (long long)(ms / 1000.0);
	if ((double)s * 1000.0 < ms)
		s++;
	state_ctl_duration(s, out, outlen);
}

/* "KIND:VALUE" -> kind and canonical value. */
static bool parse_key(struct ctl *c, const char *text, enum rl_kind *kind, char *value, size_t vlen)
{
	const char *colon = strchr(text, ':');
	if (!colon || !rl_kind_parse(text, (size_t)(colon - text), kind)) {
		fprintf(stderr, "rampartctl: ratelimit: '%s': expected KIND:VALUE, KIND one of client, network, sender, "
			"sender_domain, login, recipient, client_rcpt (e.g. client:192.0.2.7, sender:a@example.org)\n", text);
		return false;
	}
	char raw[400];
	snprintf(raw, sizeof(raw), "%s", colon + 1);
	if (*kind == RL_NETWORK)
		raw[strcspn(raw, "/")] = '\0';      /* 192.0.2.0/24: the configured prefix applies */
	bool ok = *kind == RL_SENDER_DOMAIN ? rl_canon_domain(raw, value, vlen) : rl_canon(*kind, raw, &c->rp, value, vlen);
	if (!ok) {
		fprintf(stderr, "rampartctl: ratelimit: '%s': not a %s\n", colon + 1,
			*kind == RL_CLIENT || *kind == RL_NETWORK || *kind == RL_CLIENT_RCPT ? "client address" :
			*kind == RL_SENDER_DOMAIN ? "sender address or domain" : "value to key on");
		return false;
	}
	return true;
}

/* Time left of one exact key (a scan: get does not tell it); -1 none, -2 error. */
struct ttl_find {
	const char *key;
	long long ttl;
};

static void ttl_entry(void *arg, const struct state_entry *e)
{
	struct ttl_find *f = arg;
	if (strcmp(e->key, f->key) == 0)
		f->ttl = e->ttl_ms;
}

/* The scan goes on until the key is found. */
static bool ttl_page(void *arg)
{
	const struct ttl_find *f = arg;
	return f->ttl == -1;
}

static long long key_ttl(struct ctl *c, const char *key)
{
	struct ttl_find f = { key, -1 };
	if (!state_ctl_scan(&c->sc, key, ttl_entry, ttl_page, &f))
		return -2;
	return f.ttl;
}

/* quiet: print nothing for a kind without rule or bucket (show ADDRESS). */
static int show(struct ctl *c, enum rl_kind kind, const char *value, bool quiet, bool *printed)
{
	char key[STATE_KEY_MAX + 1], per[32], d[64];
	snprintf(key, sizeof(key), "rl:%s:%s", rl_kind_name(kind), value);
	const struct rl_rule *r = &c->rules[kind];
	const char *unit = kind == RL_RECIPIENT || kind == RL_CLIENT_RCPT ? "recipient" : "message";
	struct state_ctl_op w = { 0 };
	if (c->sc.st) {
		state_get(c->sc.st, key, state_ctl_done, &w);
		if (!state_ctl_wait(&c->sc, &w, "get"))
			return 1;
	} else {
		w.status = STATE_NOTFOUND;
	}
	if (quiet && !r->count && w.status == STATE_NOTFOUND)
		return 0;
	if (*printed)
		printf("\n");
	*printed = true;
	printf("bucket   %s\n", key);
	if (r->count) {
		rl_period_text(r->period_ms, per, sizeof(per));
		dur_text((double)r->period_ms / (double)r->count, d, sizeof(d));
		printf("rule     %s:%lld/%s from [%s]: %lld %ss at once, then one every %s\n", rl_kind_name(kind),
		       r->count, per, c->sc.section, r->count, unit, d);
	} else {
		printf("rule     none: [%s] has no %s rule; nothing is limited by this bucket\n", c->sc.section,
		       rl_kind_name(kind));
	}
	if (w.status == STATE_NOTFOUND) {
		if (r->count)
			printf("tokens   %lld of %lld (no bucket: full)\nnext     allowed\n", r->count, r->count);
		else
			printf("tokens   no bucket\n");
		return 0;
	}
	if (!r->count) {
		printf("stored   %s (tokens, time in ms)\n", w.value);
		return 0;
	}
	/* Refilled to now, by the store's own clock: a take of nothing. */
	double rate = (double)r->count * 1000.0 / (double)r->period_ms;
	struct state_ctl_op t = { 0 };
	state_take(c->sc.st, key, rate, (double)r->count, 0, state_ctl_done, &t);
	if (!state_ctl_wait(&c->sc, &t, "take"))
		return 1;
	double tokens = t.tokens;
	printf("tokens   %.2f of %lld\n", tokens, r->count);
	if (tokens + 1e-9 >= (double)r->count) {
		printf("full     yes\n");
	} else {
		dur_text(((double)r->count - tokens) * 1000.0 / rate, d, sizeof(d));
		printf("full in  %s\n", d);
	}
	if (tokens + 1e-9 >= 1.0) {
		long long more = (long long)(tokens + 1e-9);
		printf("next     allowed (%lld more %s%s now)\n", more, unit, more == 1 ? "" : "s");
	} else {
		dur_text((1.0 - tokens) * 1000.0 / rate, d, sizeof(d));
		printf("next     limited: the next %s gets 451 4.7.1 \"Rate limit exceeded for %s %s (%lld per %s)\" "
		       "for %s more\n", unit, rl_kind_name(kind), value, r->count, per, d);
	}
	return 0;
}

/* The spam-trap block of a client (check traps), when there is one. */
static int show_trap(struct ctl *c, const char *ip, bool *printed)
{
	char key[128];
	if (*printed)
		printf("\n");
	*printed = true;
	snprintf(key, sizeof(key), "trap:%s", ip);
	if (!c->sc.st) {
		printf("trap     not blocked\n");
		return 0;
	}
	struct state_ctl_op w = { 0 };
	state_get(c->sc.st, key, state_ctl_done, &w);
	if (!state_ctl_wait(&c->sc, &w, "get"))
		return 1;
	if (w.status == STATE_NOTFOUND) {
		printf("trap     not blocked\n");
		return 0;
	}
	long long ttl = key_ttl(c, key);
	if (ttl == -2)
		return 1;
	char d[64] = "?";
	if (ttl >= 0)
		dur_text((double)ttl, d, sizeof(d));
	printf("trap     blocked (554 5.7.1) for sending to spam trap <%s>, for %s more (check traps, key %s)\n", w.value,
	       ttl >= 0 ? d : "ever", key);
	return 0;
}

static int reset(struct ctl *c, enum rl_kind kind, const char *value)
{
	char key[STATE_KEY_MAX + 1];
	snprintf(key, sizeof(key), "rl:%s:%s", rl_kind_name(kind), value);
	struct state_ctl_op w = { 0 };
	if (c->sc.st) {
		state_del(c->sc.st, key, state_ctl_done, &w);
		if (!state_ctl_wait(&c->sc, &w, "del"))
			return 1;
	} else {
		w.status = STATE_NOTFOUND;
	}
	if (w.status == STATE_OK)
		printf("%s: reset (the bucket is full again)\n", key);
	else
		printf("%s: no bucket (already full)\n", key);
	return 0;
}

/* Lift the spam-trap block of a client (check traps: key trap:ADDRESS). */
static int lift_trap(struct ctl *c, const char *addr)
{
	char ip[128], key[STATE_KEY_MAX + 1];
	if (!rl_canon_ip(addr, ip, sizeof(ip))) {
		fprintf(stderr, "rampartctl: ratelimit reset trap:%s: expected a client address\n", addr);
		return 1;
	}
	snprintf(key, sizeof(key), "trap:%s", ip);
	struct state_ctl_op w = { .status = STATE_NOTFOUND };
	if (c->sc.st) {
		state_del(c->sc.st, key, state_ctl_done, &w);
		if (!state_ctl_wait(&c->sc, &w, "del"))
			return 1;
	}
	printf("%s: %s\n", key, w.status == STATE_OK ? "block lifted" : "not blocked");
	return 0;
}

struct lister {
	struct ctl *c;
	size_t n, limited;
};

static void list_entry(void *arg, const struct state_entry *e)
{
	struct lister *l = arg;
	struct ctl *c = l->c;
	/* rl:KIND:VALUE */
	const char *k = e->key + 3;
	const char *colon = strchr(k, ':');
	enum rl_kind kind;
	double tokens;
	l->n++;
	if (!colon || !rl_kind_parse(k, (size_t)(colon - k), &kind) || !parse_bucket(e->value, &tokens)) {
		printf("%-60s (not a bucket)\n", e->key);
		return;
	}
	const struct rl_rule *r = &c->rules[kind];
	if (!r->count) {
		printf("%-60s %10.2f        (no %s rule)\n", e->key, tokens, rl_kind_name(kind));
		return;
	}
	/* The bucket expires 1s after it is full again: its time to live says
	 * how far it is from full, by the store's clock. */
	double rate = (double)r->count * 1000.0 / (double)r->period_ms;
	if (e->ttl_ms >= 0) {
		double from_full = (double)(e->ttl_ms > 1000 ? e->ttl_ms - 1000 : 0) * rate / 1000.0;
		double now = (double)r->count - from_full;
		if (now > tokens)
			tokens = now;
	}
	if (tokens > (double)r->count)
		tokens = (double)r->count;
	bool limited = tokens + 1e-9 < 1.0;
	if (limited)
		l->limited++;
	printf("%-60s %10.2f of %-8lld%s\n", e->key, tokens, r->count, limited ? " limited" : "");
}

static int list(struct ctl *c, const char *kindname)
{
	char prefix[64] = "rl:";
	if (kindname) {
		enum rl_kind kind;
		if (!rl_kind_parse(kindname, strlen(kindname), &kind)) {
			fprintf(stderr, "rampartctl: ratelimit list: unknown kind '%s'\n", kindname);
			return 2;
		}
		snprintf(prefix, sizeof(prefix), "rl:%s:", rl_kind_name(kind));
	}
	struct lister l = { c, 0, 0 };
	if (c->sc.st && !state_ctl_scan(&c->sc, prefix, list_entry, NULL, &l))
		return 1;
	printf("%zu bucket%s, %zu limited\n", l.n, l.n == 1 ? "" : "s", l.limited);
	return 0;
}

int ratelimit_ctl_main(const char *config_path, const char *instance, int argc, char **argv)
{
	if (argc < 1 || (strcmp(argv[0], "list") != 0 && argc != 2) || argc > 2) {
		fprintf(stderr, "usage: rampartctl [-c rampart.conf] [-n instance] ratelimit show KIND:VALUE | "
			"show ADDRESS | reset KIND:VALUE | reset trap:ADDRESS | list [KIND]\n");
		return 2;
	}
	const char *op = argv[0];
	if (strcmp(op, "show") != 0 && strcmp(op, "reset") != 0 && strcmp(op, "list") != 0) {
		fprintf(stderr, "rampartctl: ratelimit: unknown subcommand '%s' (show, reset, list)\n", op);
		return 2;
	}
	struct ctl c;
	if (!state_ctl_open(&c.sc, config_path, instance, "ratelimit", &ratelimit_params_set, &c.rp, load_rules, &c,
			    false))
		return 1;
	int rc = 0;
	if (strcmp(op, "list") == 0) {
		rc = list(&c, argc > 1 ? argv[1] : NULL);
	} else {
		enum rl_kind kind;
		char value[400];
		const char *colon = strchr(argv[1], ':');
		enum rl_kind k0;
		bool bare = strcmp(op, "show") == 0 && (!colon || !rl_kind_parse(argv[1], (size_t)(colon - argv[1]), &k0));
		bool printed = false;
		if (bare && rl_canon_ip(argv[1], value, sizeof(value))) {
			/* Everything that may stop one client. */
			const enum rl_kind kinds[] = { RL_CLIENT, RL_NETWORK, RL_CLIENT_RCPT };
			for (size_t i = 0; i < 3 && rc == 0; i++) {
				char v[400];
				if (rl_canon(kinds[i], argv[1], &c.rp, v, sizeof(v)))
					rc = show(&c, kinds[i], v, true, &printed);
			}
			if (rc == 0)
				rc = show_trap(&c, value, &printed);
		} else if (bare && strchr(argv[1], '@')) {
			const enum rl_kind kinds[] = { RL_SENDER, RL_SENDER_DOMAIN, RL_RECIPIENT };
			for (size_t i = 0; i < 3 && rc == 0; i++) {
				char v[400];
				if (rl_canon(kinds[i], argv[1], &c.rp, v, sizeof(v)))
					rc = show(&c, kinds[i], v, true, &printed);
			}
			if (rc == 0 && !printed)
				printf("no rule and no bucket for %s\n", argv[1]);
		} else if (strcmp(op, "reset") == 0 && strncmp(argv[1], "trap:", 5) == 0) {
			rc = lift_trap(&c, argv[1] + 5);
		} else if (!parse_key(&c, argv[1], &kind, value, sizeof(value))) {
			rc = 1;
		} else if (strcmp(op, "show") == 0) {
			rc = show(&c, kind, value, false, &printed);
			if (rc == 0 && (kind == RL_CLIENT || kind == RL_CLIENT_RCPT))
				rc = show_trap(&c, value, &printed);
		} else {
			rc = reset(&c, kind, value);
		}
	}
	state_ctl_close(&c.sc);
	return rc;
}
