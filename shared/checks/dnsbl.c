/*
 * dnsbl.c — DNS block and allow lists of client addresses (Maraboli DM20).
 *
 * At CONNECT the client's address is looked up in every configured list
 * at once, through the process's resolver (shared/util/dns).  Each list
 * has a weight (negative for an allow list, a DNSWL) and may filter the
 * answers it counts by address ("=127.0.0.[2..11]"); the client's score
 * is the sum of the weights of the lists whose answers pass.  A score at
 * or above the threshold is refused (554 5.7.1, or 421 with action
 * tempfail), or only recorded and written into an X-Rampart-DNSBL header
 * with action tag.  Either way the score stays in the session
 * (ctx->dnsbl_score, ctx->dnswl) for later checks: greylisting may let
 * DNSWL-listed clients through.
 *
 * Lists that do not answer within the timeout, or answer with an error,
 * count nothing: a DNSBL is advice, and a dead list must not stop mail.
 * Each is logged and counted (rampart_dnsbl_errors_total).  Clients on
 * the local allow list (check "lists") are not looked up.
 *
 * sites entries, as Postfix's postscreen_dnsbl_sites:
 *     DOMAIN[=FILTER][*WEIGHT]
 * FILTER is an IPv4 address whose octets may be a number, "[a..b]" or a
 * list "[a;b;c]" (a list item may itself be a range): 127.0.0.2,
 * 127.0.0.[2..11], 127.0.[0..255].[1;3].  No filter: any address answer.
 * WEIGHT defaults to 1.
 */
#include "check.h"
#include "dnslist.h"
#include "../util/alloc.h"
#include "../util/dns.h"
#include "../util/log.h"
#include "../util/metrics.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#define MAX_SITES    32

struct dnsbl_params {
	struct strlist sites;
	long long threshold;
	int action;                 /* 0 reject, 1 tempfail, 2 tag */
	long long timeout;
};

static const struct param_def dnsbl_param_defs[] = {
	{ "sites", PT_LIST, "", 0, 0, NULL, offsetof(struct dnsbl_params, sites),
	  "lists, each DOMAIN[=FILTER][*WEIGHT], e.g. zen.spamhaus.org=127.0.0.[2..11]*3 "
	  "list.dnswl.org=127.0.[0..255].[1..3]*-5" },
	{ "threshold", PT_INT, "1", -1000, 1000, NULL, offsetof(struct dnsbl_params, threshold),
	  "score at which a client is refused (or tagged)" },
	{ "action", PT_ENUM, "reject", 0, 0, "reject|tempfail|tag", offsetof(struct dnsbl_params, action),
	  "what a listed client gets: 554 5.7.1, 421 4.7.1, or only a header" },
	{ "timeout", PT_TIME, "3s", 100, 60000, NULL, offsetof(struct dnsbl_params, timeout),
	  "longest wait for the lists; a list that has not answered counts nothing" },
	PARAM_END
};

static const struct param_set dnsbl_params_set = {
	"check.dnsbl", "DNS block and allow lists (DNSBL/DNSWL) of client addresses, with weights",
	dnsbl_param_defs, sizeof(struct dnsbl_params)
};

struct dnsbl {
	const struct dnsbl_params *p;
	struct dns *dns;
	struct event_base *base;
	struct dnslist_site sites[MAX_SITES];
	size_t nsites;
	struct metric *m_hits, *m_errors;
};

/* ---- the check -------------------------------------------------------- */

static void dnsbl_free(void *inst)
{
	free(inst);
}

static void *dnsbl_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	const struct dnsbl_params *p = params;
	if (p->sites.n > MAX_SITES) {
		snprintf(why, whylen, "sites: %zu lists, at most %d", p->sites.n, MAX_SITES);
		return NULL;
	}
	struct dnsbl *b = xcalloc(1, sizeof(*b));
	b->p = p;
	b->dns = env->dns;
	b->base = env->base;
	for (size_t i = 0; i < p->sites.n; i++)
		if (!dnslist_parse(p->sites.v[i], &b->sites[b->nsites++])) {
			snprintf(why, whylen, "sites: '%s': expected DOMAIN[=FILTER][*WEIGHT], e.g. "
				 "zen.example.org=127.0.0.[2..11]*2 (weight a non-zero integer)", p->sites.v[i]);
			free(b);
			return NULL;
		}
	if (env->metrics) {
		b->m_hits = metrics_counter(env->metrics, "rampart_dnsbl_hits_total",
					    "Client lookups a DNS list answered with a listing that counts, by list.");
		b->m_errors = metrics_counter(env->metrics, "rampart_dnsbl_errors_total",
					      "DNS list lookups that failed or timed out (counted as not listed), by list.");
	}
	return b;
}

/* One client's lookups: one query per list, each with its own
 * argument so that those still out can be cancelled when the verdict is
 * given (timeout) and the lookup freed at once. */
struct lookup;

struct query {
	struct lookup *lk;
	size_t site;
	bool out;                   /* started, not answered */
};

struct lookup {
	struct dnsbl *b;
	struct check_ctx *ctx;
	struct check_call *call;
	char ip[64];
	struct event *timer;
	struct query q[MAX_SITES];
	int score;
	bool dnswl;
	char listed[200];
};

static void label(struct dnsbl *b, struct metric *m, size_t site)
{
	if (!m)
		return;
	char l[300];
	snprintf(l, sizeof(l), "list=\"%s\"", b->sites[site].domain);
	metric_inc(m, l);
}

/* Every list answered, or the time is up: give the verdict, cancel what
 * is still out, free the lookup. */
static void decide(struct lookup *lk)
{
	struct dnsbl *b = lk->b;
	for (size_t i = 0; i < b->nsites; i++)
		if (lk->q[i].out) {
			log_warn(lk->ctx->sid, NULL, "dnsbl.timeout", "list=%s client=%s timeout_ms=%lld",
				 b->sites[i].domain, lk->ip, b->p->timeout);
			label(b, b->m_errors, i);
			dns_cancel(b->dns, &lk->q[i]);
		}
	if (lk->timer)
		event_free(lk->timer);
	struct check_ctx *ctx = lk->ctx;
	struct check_call *call = lk->call;
	int score = lk->score;
	char listed[200], ip[64];
	snprintf(listed, sizeof(listed), "%s", lk->listed);
	snprintf(ip, sizeof(ip), "%s", lk->ip);
	ctx->dnsbl_score = score;
	ctx->dnswl = lk->dnswl;
	snprintf(ctx->dnsbl_listed, sizeof(ctx->dnsbl_listed), "%s", listed);
	free(lk);
	if (score < b->p->threshold || !listed[0] || b->p->action == 2)
		check_continue(call);
	else if (b->p->action == 1)
		check_reject(call, 421, "4.7.1", "Service unavailable; client [%s] listed by %s; try again later", ip,
			     listed);
	else
		check_reject(call, 554, "5.7.1", "Service unavailable; client [%s] blocked using %s", ip, listed);
}

static void on_answer(void *arg, const struct dns_result *r)
{
	struct query *q = arg;
	struct lookup *lk = q->lk;
	struct dnsbl *b = lk->b;
	const struct dnslist_site *s = &b->sites[q->site];
	q->out = false;
	if (r->status == DNS_OK) {
		for (size_t k = 0; k < r->n; k++) {
			if (r->rr[k].type != 1 || !dnslist_pass(s, r->rr[k].text))
				continue;
			lk->score += s->weight;
			if (s->weight < 0)
				lk->dnswl = true;
			size_t l = strlen(lk->listed);
			snprintf(lk->listed + l, sizeof(lk->listed) - l, "%s%s(%+d)", l ? " " : "", s->domain, s->weight);
			label(b, b->m_hits, q->site);
			break;
		}
	} else if (r->status == DNS_TEMPFAIL || r->status == DNS_BOGUS) {
		log_warn(lk->ctx->sid, NULL, "dnsbl.error", "list=%s client=%s status=%s", s->domain, lk->ip,
			 dns_status_name(r->status));
		label(b, b->m_errors, q->site);
	}
	for (size_t k = 0; k < b->nsites; k++)
		if (lk->q[k].out)
			return;
	decide(lk);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	decide(arg);
}

static void dnsbl_connect(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct dnsbl *b = inst;
	char rev[80];
	ctx->dnsbl_score = 0;
	ctx->dnswl = false;
	ctx->dnsbl_listed[0] = '\0';
	if (!b->nsites || !b->dns || ctx->client_allowed || !ctx->client || !ctx->client->addr ||
	    !dnslist_reversed(ctx->client->addr, rev, sizeof(rev))) {
		check_continue(call);
		return;
	}
	struct lookup *lk = xcalloc(1, sizeof(*lk));
	lk->b = b;
	lk->ctx = ctx;
	lk->call = call;
	snprintf(lk->ip, sizeof(lk->ip), "%s", ctx->client->addr);
	size_t out = 0;
	for (size_t i = 0; i < b->nsites; i++) {
		char name[400];
		snprintf(name, sizeof(name), "%s.%s", rev, b->sites[i].domain);
		lk->q[i].lk = lk;
		lk->q[i].site = i;
		if (dns_query(b->dns, name, 1, on_answer, &lk->q[i])) {
			lk->q[i].out = true;
			out++;
		} else {
			log_warn(ctx->sid, NULL, "dnsbl.error", "list=%s client=%s status=%s", b->sites[i].domain,
				 lk->ip, "query not started");
			label(b, b->m_errors, i);
		}
	}
	/* answers come later from the loop (never inside dns_query) */
	if (!out) {
		decide(lk);
		return;
	}
	if (b->base) {
		lk->timer = evtimer_new(b->base, on_timeout, lk);
		struct timeval tv = { (time_t)(b->p->timeout / 1000), (suseconds_t)(b->p->timeout % 1000) * 1000 };
		evtimer_add(lk->timer, &tv);
	}
}

/* tag: the score goes into the message's header */
static void dnsbl_message(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct dnsbl *b = inst;
	if (b->nsites && ctx->dnsbl_listed[0]) {
		char v[300];
		snprintf(v, sizeof(v), "score=%d; threshold=%lld; listed=%s", ctx->dnsbl_score, b->p->threshold,
			 ctx->dnsbl_listed);
		check_ctx_add_header(ctx, "X-Rampart-DNSBL", v);
	}
	check_continue(call);
}

const struct check_def check_dnsbl = {
	.name = "dnsbl",
	.doc = "DNS block and allow lists of client addresses, weighted, with a threshold",
	.params = &dnsbl_params_set,
	.init = dnsbl_init,
	.free = dnsbl_free,
	.hooks = {
		[PHASE_CONNECT] = dnsbl_connect,
		[PHASE_MESSAGE] = dnsbl_message,
	},
};
