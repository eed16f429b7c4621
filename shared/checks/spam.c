/*
 * spam.c — the anti-spam score (Maraboli DM23, DM24): at the end of the
 * message, the scored rules of rules_file (shared/mail/spamrules) plus
 * the Bayesian classifier's opinion (shared/mail/bayes, its counts in the
 * state store) make one score, and the score decides:
 *
 *   always             X-Spam-Score and X-Spam-Status ("Yes|No,
 *                      score=S required=T tests=RULE,...,BAYES_NN
 *                      bayes=P"); the message's own X-Spam-* fields are
 *                      removed (a forged "No" must not reach the filters
 *                      downstream)
 *   >= tag_score       X-Spam-Flag: YES, and subject_tag before the Subject
 *   >= quarantine_score  kept in the quarantine (0: never)
 *   >= reject_score    554 5.7.1 (0: never; run the stages in proxy mode
 *                      and the original client gets it at SMTP time)
 *
 * The Bayesian part adds bayes_points * (2p - 1): from -bayes_points
 * (certainly ham) to +bayes_points (certainly spam); nothing before the
 * classifier has been trained on both kinds.  When the state store cannot
 * answer, the rules alone decide (logged, "bayes=unavailable"), unless
 * failure_action is tempfail.  With autolearn, a message scoring at least
 * autolearn_spam (or at most autolearn_ham) is learned as spam (ham).
 * DNS lists add their weights too (dnslist.h syntax): dnsbl_sites for the
 * original client's address (XFORWARD from the stage before), uribl_sites
 * for the domains of the message's links (of each link's host the last
 * two labels, then three, then four: three names at most, the shortest
 * first; max_uri_domains of them in all), once per list; a list that has
 * not answered within dns_timeout counts nothing.
 * Every decision is one log line (spam.result: score, rules, Bayes,
 * DNS lists, action) and the scores are a histogram on /metrics.
 */
#include "check.h"
#include "dnslist.h"
#include "spam.h"
#include "../mail/bayes.h"
#include "../mail/bayes_db.h"
#include "../mail/header.h"
#include "../mail/mime.h"
#include "../mail/msgtext.h"
#include "../mail/spamrules.h"
#include "../util/alloc.h"
#include "../util/buf.h"
#include "../util/dns.h"
#include "../util/log.h"
#include "../util/metrics.h"
#include "../util/rx.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>

#define HITS_SHOWN 40
#define MAX_LISTS 16
#define URI_NAMES 3             /* names of one link looked up in uribl_sites */

#define P(f) offsetof(struct spam_params, f)
static const struct param_def spam_param_defs[] = {
	{ "rules_file", PT_STR, "", 0, 0, NULL, P(rules_file),
	  "scored rules, one per line: KIND NAME /PATTERN/FLAGS SCORE [DESCRIPTION] (KIND: header:FIELD, header:*, body, uri)" },
	{ "bayes", PT_BOOL, "yes", 0, 0, NULL, P(bayes), "ask the Bayesian classifier (counts in the state store)" },
	{ "bayes_points", PT_NUMBER, "5.5", 0, 100, NULL, P(bayes_points),
	  "what the classifier adds at most: bayes_points * (2p - 1), p its spam probability (5.5: alone it tags from p = 0.955 on)" },
	{ "tag_score", PT_NUMBER, "5", -100, 1000, NULL, P(tag_score), "X-Spam-Flag: YES and the subject tag from this score on" },
	{ "subject_tag", PT_STR, "[SPAM]", 0, 0, NULL, P(subject_tag), "put before the Subject of tagged mail (empty: leave it)" },
	{ "quarantine_score", PT_NUMBER, "0", 0, 1000, NULL, P(quarantine_score), "quarantine from this score on (0: never)" },
	{ "reject_score", PT_NUMBER, "0", 0, 1000, NULL, P(reject_score), "refuse (554 5.7.1) from this score on (0: never)" },
	{ "autolearn", PT_BOOL, "no", 0, 0, NULL, P(autolearn), "learn what scores at the extremes (autolearn_spam, autolearn_ham)" },
	{ "autolearn_spam", PT_NUMBER, "12", -100, 1000, NULL, P(autolearn_spam), "learned as spam from this score on" },
	{ "autolearn_ham", PT_NUMBER, "-2", -1000, 100, NULL, P(autolearn_ham), "learned as ham at this score or below" },
	{ "failure_action", PT_ENUM, "continue", 0, 0, "continue|tempfail", P(failure_action),
	  "the state store cannot answer: score with the rules alone (continue), or 451 4.7.1 (tempfail)" },
	{ "max_text", PT_SIZE, "256k", 1024, 64LL << 20, NULL, P(max_text), "decoded text of a message the rules and the classifier read" },
	{ "dnsbl_sites", PT_LIST, "", 0, MAX_LISTS, NULL, P(dnsbl_sites),
	  "DNS lists of the original client's address, each DOMAIN[=FILTER][*WEIGHT]: the weight is added when it lists the client" },
	{ "uribl_sites", PT_LIST, "", 0, MAX_LISTS, NULL, P(uribl_sites),
	  "DNS lists of the domains of the message's links (URIBL/SURBL), each DOMAIN[=FILTER][*WEIGHT], once per list" },
	{ "dns_timeout", PT_TIME, "3s", 100, 60000, NULL, P(dns_timeout), "longest wait for the DNS lists; one that has not answered counts nothing" },
	{ "max_uri_domains", PT_INT, "10", 1, 100, NULL, P(max_uri_domains), "link domains looked up per message" },
	PARAM_END
};

const struct param_set spam_params_set = {
	"check.spam", "anti-spam score: scored rules and the Bayesian classifier", spam_param_defs,
	sizeof(struct spam_params)
};

struct run;

struct spam_check {
	const struct spam_params *p;
	struct spamrules *rules;
	struct rx_scratch *scratch;
	struct state *st;
	struct dns *dns;
	struct event_base *base;
	struct dnslist_site dnsbl[MAX_LISTS], uribl[MAX_LISTS];
	size_t ndnsbl, nuribl;
	struct run *runs;               /* waiting for the classifier */
	struct metric *m_score, *m_actions;
};

struct toks {
	char **t;
	size_t n, cap;
};

struct dnsq {
	struct run *r;
	bool uri;                       /* a uribl_sites query, else dnsbl_sites */
	size_t site;
	bool out;
};

struct run {
	struct run *prev, *next;
	struct spam_check *c;
	struct check_ctx *ctx;
	struct check_call *call;
	struct msgtext text;
	struct toks toks;
	struct bayes_token *bt;
	struct bayes_db_lookup *lookup;
	double rules_score;
	struct spamrule_hit hits[HITS_SHOWN];
	size_t nhits;
	unsigned cut;
	/* what is still out: the classifier's lookup and the DNS queries */
	unsigned pending;
	bool bayes_ok;
	double p;
	long long nspam, nham;
	struct dnsq *q;
	size_t nq;
	struct event *timer;
	bool dnsbl_hit[MAX_LISTS], uribl_hit[MAX_LISTS];
};

static void add_tok(void *arg, const char *tok, size_t len)
{
	struct toks *l = arg;
	if (l->n == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 256;
		l->t = xrealloc(l->t, l->cap * sizeof(*l->t));
	}
	l->t[l->n++] = xmemdup(tok, len + 1);
}

static void run_free(struct run *r)
{
	struct spam_check *c = r->c;
	if (r->prev)
		r->prev->next = r->next;
	else if (c->runs == r)
		c->runs = r->next;
	if (r->next)
		r->next->prev = r->prev;
	for (size_t i = 0; i < r->toks.n; i++)
		free(r->toks.t[i]);
	free(r->toks.t);
	free(r->bt);
	msgtext_free(&r->text);
	if (r->q) {
		for (size_t i = 0; i < r->nq; i++)
			if (r->q[i].out)
				dns_cancel(c->dns, &r->q[i]);
		free(r->q);
	}
	if (r->timer)
		event_free(r->timer);
	free(r);
}

static void learned(void *arg, bool ok, const char *why)
{
	(void)arg;
	if (!ok)
		log_warn(NULL, NULL, "spam.autolearn_failed", "reason=%s", why);
}

/* The message's own X-Spam-* fields go; ours come. */
static void replace_headers(struct check_ctx *ctx)
{
	check_ctx_remove_all(ctx, "X-Spam-Score");
	check_ctx_remove_all(ctx, "X-Spam-Status");
	check_ctx_remove_all(ctx, "X-Spam-Flag");
}

/* Subject with subject_tag before it (the field as it came, once). */
static void tag_subject(struct spam_check *c, struct check_ctx *ctx)
{
	const char *tag = c->p->subject_tag;
	if (!tag || !*tag || !ctx->data)
		return;
	struct hdr_field f;
	for (size_t pos = 0; hdr_next(ctx->data, ctx->header_bytes, &pos, &f);) {
		if (!hdr_is(&f, "Subject"))
			continue;
		const char *v = f.value;
		size_t n = f.value_len;
		while (n && (*v == ' ' || *v == '\t')) {
			v++;
			n--;
		}
		size_t tl = strlen(tag);
		if (n >= tl && strncmp(v, tag, tl) == 0)
			return;         /* tagged already (an earlier stage, a resend) */
		char *nv = xasprintf("%s %.*s", tag, (int)n, v);
		check_ctx_remove_header(ctx, "Subject", 1);
		check_ctx_add_header(ctx, "Subject", nv);
		free(nv);
		return;
	}
	check_ctx_add_header(ctx, "Subject", tag);
}

enum spam_action spam_decide(const struct spam_params *P, double rules_score, bool bayes_ok, double p,
			     long long nspam, long long nham, struct spam_outcome *o)
{
	o->bayes_used = P->bayes && bayes_ok && nspam > 0 && nham > 0;
	o->bayes_points = o->bayes_used ? P->bayes_points * (2.0 * p - 1.0) : 0;
	o->score = rules_score + o->bayes_points;
	if (P->bayes && !bayes_ok && P->failure_action == 1)
		o->action = SPAM_TEMPFAIL;
	else if (P->reject_score > 0 && o->score >= P->reject_score)
		o->action = SPAM_REJECT;
	else if (P->quarantine_score > 0 && o->score >= P->quarantine_score)
		o->action = SPAM_QUARANTINE;
	else if (o->score >= P->tag_score)
		o->action = SPAM_TAG;
	else
		o->action = SPAM_NONE;
	return o->action;
}

const char *spam_action_name(enum spam_action a)
{
	static const char *const n[] = { "none", "tag", "quarantine", "reject", "tempfail" };
	return n[a];
}

const char *spam_bayes_rule(double p)
{
	return p < 0.01 ? "BAYES_00" : p < 0.05 ? "BAYES_05" : p < 0.20 ? "BAYES_20" : p < 0.40 ? "BAYES_40"
	       : p < 0.60 ? "BAYES_50" : p < 0.80 ? "BAYES_60" : p < 0.95 ? "BAYES_80" : p < 0.99 ? "BAYES_95"
	       : "BAYES_99";
}

static void decide(struct run *r, bool bayes_ok, double p, long long nspam, long long nham)
{
	struct spam_check *c = r->c;
	const struct spam_params *P = c->p;
	struct check_ctx *ctx = r->ctx;
	double lists = 0;
	for (size_t i = 0; i < c->ndnsbl; i++)
		if (r->dnsbl_hit[i])
			lists += c->dnsbl[i].weight;
	for (size_t i = 0; i < c->nuribl; i++)
		if (r->uribl_hit[i])
			lists += c->uribl[i].weight;
	struct spam_outcome o;
	spam_decide(P, r->rules_score + lists, bayes_ok, p, nspam, nham, &o);
	bool bayes_used = o.bayes_used;
	double bayes_pts = o.bayes_points, score = o.score;
	const char *action = spam_action_name(o.action);
	struct verdict v = { .kind = V_CONTINUE };
	if (o.action == SPAM_TEMPFAIL) {
		v.kind = V_TEMPFAIL;
		v.code = 451;
		snprintf(v.enh, sizeof(v.enh), "4.7.1");
		snprintf(v.reason, sizeof(v.reason), "Spam filter temporarily unavailable; try again later");
	} else if (o.action == SPAM_REJECT) {
		v.kind = V_REJECT;
		v.code = 554;
		snprintf(v.enh, sizeof(v.enh), "5.7.1");
		snprintf(v.reason, sizeof(v.reason), "Message rejected as spam (score %.1f)", score);
	} else if (o.action == SPAM_QUARANTINE) {
		v.kind = V_QUARANTINE;
		snprintf(v.reason, sizeof(v.reason), "spam (score %.1f)", score);
	}
	bool spam = score >= P->tag_score;
	struct buf tests = BUF_INIT;
	for (size_t i = 0; i < r->nhits; i++)
		buf_printf(&tests, "%s%s", i ? "," : "", r->hits[i].name);
	for (size_t i = 0; i < c->ndnsbl; i++)
		if (r->dnsbl_hit[i])
			buf_printf(&tests, "%sDNSBL(%s)", tests.len ? "," : "", c->dnsbl[i].domain);
	for (size_t i = 0; i < c->nuribl; i++)
		if (r->uribl_hit[i])
			buf_printf(&tests, "%sURIBL(%s)", tests.len ? "," : "", c->uribl[i].domain);
	if (bayes_used)
		buf_printf(&tests, "%s%s", tests.len ? "," : "", spam_bayes_rule(p));
	if (v.kind != V_REJECT && v.kind != V_TEMPFAIL) {
		replace_headers(ctx);
		char val[64];
		snprintf(val, sizeof(val), "%.1f", score);
		check_ctx_add_header(ctx, "X-Spam-Score", val);
		struct buf st = BUF_INIT;
		buf_printf(&st, "%s, score=%.1f required=%.1f tests=%s", spam ? "Yes" : "No", score, P->tag_score,
			   tests.len ? buf_cstr(&tests) : "none");
		if (P->bayes && bayes_used)
			buf_printf(&st, " bayes=%.4f", p);
		else if (P->bayes)
			buf_puts(&st, bayes_ok ? " bayes=untrained" : " bayes=unavailable");
		check_ctx_add_header(ctx, "X-Spam-Status", buf_cstr(&st));
		buf_free(&st);
		if (spam) {
			check_ctx_add_header(ctx, "X-Spam-Flag", "YES");
			tag_subject(c, ctx);
		}
	}
	log_info(ctx->sid, ctx->qid, "spam.result", "score=%.2f rules=%.2f lists=%.2f bayes=%s bayes_points=%.2f "
		 "tests=%s action=%s limited=%u", score, r->rules_score, lists,
		 !P->bayes ? "off" : bayes_used ? "used" : bayes_ok ? "untrained" : "unavailable", bayes_pts,
		 tests.len ? buf_cstr(&tests) : "none", action, r->cut);
	buf_free(&tests);
	if (c->m_score) {
		metric_observe(c->m_score, NULL, score);
		char l[64];
		snprintf(l, sizeof(l), "action=\"%s\"", action);
		metric_inc(c->m_actions, l);
	}
	if (P->autolearn && bayes_ok && c->st && v.kind != V_TEMPFAIL &&
	    (score >= P->autolearn_spam || score <= P->autolearn_ham)) {
		bool as_spam = score >= P->autolearn_spam;
		log_info(ctx->sid, ctx->qid, "spam.autolearn", "as=%s score=%.2f", as_spam ? "spam" : "ham", score);
		bayes_db_learn(c->st, r->toks.t, r->toks.n, as_spam, 1, learned, NULL);
	}
	struct check_call *call = r->call;
	run_free(r);
	check_done(call, &v);
}

/* One thing came back; the last one decides. */
static void one_done(struct run *r)
{
	if (--r->pending > 0)
		return;
	decide(r, r->bayes_ok, r->p, r->nspam, r->nham);
}

static void looked_up(void *arg, bool ok, long long nspam, long long nham, const char *why)
{
	struct run *r = arg;
	r->lookup = NULL;
	r->bayes_ok = ok;
	r->p = 0.5;
	r->nspam = nspam;
	r->nham = nham;
	if (!ok) {
		log_warn(r->ctx->sid, r->ctx->qid, "spam.bayes_unavailable", "reason=%s failure_action=%s", why,
			 r->c->p->failure_action ? "tempfail" : "continue");
	} else {
		struct bayes_result res;
		bayes_score(r->bt, r->toks.n, nspam, nham, NULL, &res);
		r->p = res.score;
	}
	one_done(r);
}

static void dns_answered(void *arg, const struct dns_result *res)
{
	struct dnsq *q = arg;
	struct run *r = q->r;
	struct spam_check *c = r->c;
	q->out = false;
	const struct dnslist_site *s = q->uri ? &c->uribl[q->site] : &c->dnsbl[q->site];
	if (res->status == DNS_OK) {
		for (size_t k = 0; k < res->n; k++)
			if (res->rr[k].type == 1 && dnslist_pass(s, res->rr[k].text)) {
				if (q->uri)
					r->uribl_hit[q->site] = true;
				else
					r->dnsbl_hit[q->site] = true;
				break;
			}
	} else if (res->status == DNS_TEMPFAIL || res->status == DNS_BOGUS) {
		log_warn(r->ctx->sid, r->ctx->qid, "spam.dns_error", "list=%s status=%s", s->domain,
			 dns_status_name(res->status));
	}
	one_done(r);
}

/* dns_timeout: what has not answered counts nothing. */
static void dns_late(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct run *r = arg;
	size_t late = 0;
	for (size_t i = 0; i < r->nq; i++)
		if (r->q[i].out) {
			dns_cancel(r->c->dns, &r->q[i]);
			r->q[i].out = false;
			late++;
		}
	if (!late)
		return;
	log_warn(r->ctx->sid, r->ctx->qid, "spam.dns_timeout", "queries=%zu timeout_ms=%lld", late,
		 r->c->p->dns_timeout);
	r->pending -= (unsigned)late - 1;
	one_done(r);            /* the last of them */
}

static bool add_domain(char (*doms)[256], size_t *n, size_t max, const char *d)
{
	for (size_t i = 0; i < *n; i++)
		if (strcmp(doms[i], d) == 0)
			return true;
	if (*n >= max)
		return false;
	snprintf(doms[(*n)++], 256, "%s", d);
	return true;
}

/* The DNS list queries of a message; how many were started. */
static void start_lists(struct run *r)
{
	struct spam_check *c = r->c;
	if (!c->dns || (!c->ndnsbl && !c->nuribl))
		return;
	char rev[80] = "";
	bool client = c->ndnsbl && r->ctx->client && r->ctx->client->addr &&
		      dnslist_reversed(r->ctx->client->addr, rev, sizeof(rev));
	size_t maxd = (size_t)c->p->max_uri_domains;
	char (*doms)[256] = xcalloc(maxd, 256);
	size_t nd = 0;
	for (const char *u = c->nuribl ? msgtext_url(&r->text, NULL) : NULL; u && nd < maxd; u = msgtext_url(&r->text, u)) {
		char host[256];
		if (!mime_url_host(u, strlen(u), host, sizeof(host)) || strspn(host, "0123456789.") == strlen(host) ||
		    strchr(host, ':') || !strchr(host, '.'))
			continue;
		/* the shortest names first (the last two labels, then three, ...
		 * up to the host), URI_NAMES of them at most: a deep host must not
		 * use up max_uri_domains before the next link */
		size_t names = 0, dots = 0;
		for (size_t i = strlen(host); i-- > 0 && names < URI_NAMES && nd < maxd;)
			if (host[i] == '.' && ++dots >= 2) {
				add_domain(doms, &nd, maxd, host + i + 1);
				names++;
			}
		if (names < URI_NAMES)
			add_domain(doms, &nd, maxd, host);
	}
	r->nq = (client ? c->ndnsbl : 0) + nd * c->nuribl;
	if (!r->nq) {
		free(doms);
		return;
	}
	r->q = xcalloc(r->nq, sizeof(*r->q));
	size_t k = 0;
	for (size_t i = 0; client && i < c->ndnsbl; i++, k++) {
		r->q[k] = (struct dnsq){ r, false, i, false };
		char name[400];
		snprintf(name, sizeof(name), "%s.%s", rev, c->dnsbl[i].domain);
		if (dns_query(c->dns, name, 1, dns_answered, &r->q[k])) {
			r->q[k].out = true;
			r->pending++;
		}
	}
	for (size_t d = 0; d < nd; d++)
		for (size_t i = 0; i < c->nuribl; i++, k++) {
			r->q[k] = (struct dnsq){ r, true, i, false };
			char name[600];
			snprintf(name, sizeof(name), "%s.%s", doms[d], c->uribl[i].domain);
			if (dns_query(c->dns, name, 1, dns_answered, &r->q[k])) {
				r->q[k].out = true;
				r->pending++;
			}
		}
	free(doms);
	if (r->pending && c->base) {
		r->timer = evtimer_new(c->base, dns_late, r);
		struct timeval tv = { (time_t)(c->p->dns_timeout / 1000), (suseconds_t)(c->p->dns_timeout % 1000) * 1000 };
		evtimer_add(r->timer, &tv);
	}
}

static void spam_message(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct spam_check *c = inst;
	if (!ctx->data) {
		check_continue(call);
		return;
	}
	struct run *r = xcalloc(1, sizeof(*r));
	r->c = c;
	r->ctx = ctx;
	r->call = call;
	r->next = c->runs;
	if (r->next)
		r->next->prev = r;
	c->runs = r;
	msgtext_build(&r->text, ctx->data, ctx->len, (size_t)c->p->max_text, 0);
	r->rules_score = spamrules_eval(c->rules, ctx->data, &r->text, c->scratch, r->hits, HITS_SHOWN, &r->nhits,
					&r->cut);
	r->bayes_ok = true;
	r->p = 0.5;
	r->pending = 1;         /* this call's own share, given back at the end */
	start_lists(r);
	if (c->p->bayes) {
		struct bayes_tok_opts o = { .max_text = (size_t)c->p->max_text };
		bayes_tokens_of(ctx->data, &r->text, &o, add_tok, &r->toks);
		if (c->st) {
			r->bt = xcalloc(r->toks.n ? r->toks.n : 1, sizeof(*r->bt));
			for (size_t i = 0; i < r->toks.n; i++)
				r->bt[i].tok = r->toks.t[i];
			r->pending++;
			r->lookup = bayes_db_lookup(c->st, r->bt, r->toks.n, looked_up, r);
		} else {
			r->bayes_ok = false;
			log_warn(ctx->sid, ctx->qid, "spam.bayes_unavailable", "reason=%s failure_action=%s",
				 "no state store", c->p->failure_action ? "tempfail" : "continue");
		}
	}
	one_done(r);
}

/* Shutdown: the lookups still out are cancelled (the store's callbacks
 * would come after the sessions are gone); the chain frees the calls. */
static void spam_stop(void *inst)
{
	struct spam_check *c = inst;
	while (c->runs) {
		struct run *r = c->runs;
		bayes_db_lookup_cancel(r->lookup);
		run_free(r);
	}
}

static void spam_free(void *inst)
{
	struct spam_check *c = inst;
	if (!c)
		return;
	spam_stop(c);
	spamrules_free(c->rules);
	rx_scratch_free(c->scratch);
	free(c);
}

static void *spam_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	const struct spam_params *p = params;
	struct spam_check *c = xcalloc(1, sizeof(*c));
	c->p = p;
	if (p->rules_file && *p->rules_file) {
		char w[600];
		c->rules = spamrules_load(p->rules_file, w, sizeof(w));
		if (!c->rules) {
			snprintf(why, whylen, "rules_file: %s", w);
			free(c);
			return NULL;
		}
	}
	if (p->autolearn && p->autolearn_ham >= p->autolearn_spam) {
		snprintf(why, whylen, "autolearn_ham (%g) must be below autolearn_spam (%g)", p->autolearn_ham,
			 p->autolearn_spam);
		spamrules_free(c->rules);
		free(c);
		return NULL;
	}
	for (int k = 0; k < 2; k++) {
		const struct strlist *l = k ? &p->uribl_sites : &p->dnsbl_sites;
		struct dnslist_site *sites = k ? c->uribl : c->dnsbl;
		size_t *n = k ? &c->nuribl : &c->ndnsbl;
		for (size_t i = 0; i < l->n && i < MAX_LISTS; i++)
			if (!dnslist_parse(l->v[i], &sites[(*n)++])) {
				snprintf(why, whylen, "%s: '%s': expected DOMAIN[=FILTER][*WEIGHT]",
					 k ? "uribl_sites" : "dnsbl_sites", l->v[i]);
				spamrules_free(c->rules);
				free(c);
				return NULL;
			}
	}
	if ((c->ndnsbl || c->nuribl) && env->base && !env->dns) {
		snprintf(why, whylen, "dnsbl_sites and uribl_sites need the process's resolver");
		spamrules_free(c->rules);
		free(c);
		return NULL;
	}
	c->dns = env->dns;
	c->base = env->base;
	c->scratch = rx_scratch_new();
	c->st = env->state;
	if (env->metrics) {
		static const double bounds[] = { -5, -2, 0, 2, 4, 5, 6, 8, 10, 15, 20, 30 };
		c->m_score = metrics_histogram(env->metrics, "rampart_spam_score", "Anti-spam scores of messages.",
					       bounds, sizeof(bounds) / sizeof(bounds[0]));
		c->m_actions = metrics_counter(env->metrics, "rampart_spam_actions_total",
					       "Anti-spam decisions, by action (none, tag, quarantine, reject, tempfail).");
	}
	return c;
}

const struct check_def check_spam = {
	.name = "spam",
	.doc = "anti-spam score at end of message: scored rules plus the Bayesian classifier; tag, quarantine or reject",
	.params = &spam_params_set,
	.init = spam_init,
	.free = spam_free,
	.stop = spam_stop,
	.hooks = { [PHASE_MESSAGE] = spam_message },
	.needs_state = true,
};
