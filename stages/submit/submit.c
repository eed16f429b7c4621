/*
 * rampart-submit — stage B, where the site's users and applications hand
 * in their mail (RFC 6409 on 587 with STARTTLS, RFC 8314 on 465 with
 * implicit TLS).
 *
 * TLS comes before anything else and AUTH (PLAIN, LOGIN) before MAIL,
 * always (the skeleton's "submission" flag); credentials are checked
 * against the accounts file by shared/mail/authn (worker threads, a
 * brute-force defence in the state store).  Everything else is a check of
 * the chain: relay (authenticated users may relay), sender ownership,
 * per-account limits.  Accepted mail goes to next_hops; with
 * local_next_hops (a server parameter), mail for local_domains goes
 * there instead (the store, over LMTP) — queue mode.
 * It may reach: its listen sockets, its spool, the accounts file, the
 * state store, its next hops.
 */
#include "mail/authn.h"
#include "mail/passdb.h"
#include "mail/stage.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/metrics.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct submit_config {
	struct server_config srv;
	char *accounts_file;
	long long auth_workers;
	long long auth_delay_after;
	long long auth_max_failures;
	long long auth_failure_delay;
	long long auth_lockout;
	int auth_failure_mode;          /* 0 tempfail, 1 continue */
	long long auth_cache_ttl;
	long long auth_cache_size;
	char *dovecot_auth_socket;
	long long dovecot_auth_timeout;
	int account_metrics;            /* 0 apps, 1 all, 2 none */
};

#define P(f) offsetof(struct submit_config, f)
static const struct param_def submit_params[] = {
	{ "accounts_file", PT_STR, "", 0, 0, NULL, P(accounts_file),
	  "the accounts that may authenticate: NAME:HASH[:app] [senders=...] lines (rampartctl user add|passwd|del); "
	  "with dovecot_auth_socket optional (then it only marks applications, locked accounts and owned senders)" },
	{ "dovecot_auth_socket", PT_STR, "", 0, 0, NULL, P(dovecot_auth_socket),
	  "check passwords with Dovecot instead: its auth-client socket, e.g. /run/dovecot/auth-client "
	  "(a unix_listener the rampart user may open)" },
	{ "dovecot_auth_timeout", PT_TIME, "10s", 100, 600000, NULL, P(dovecot_auth_timeout),
	  "how long Dovecot may take to answer (then 454 4.7.0)" },
	{ "auth_workers", PT_INT, "2", 1, 64, NULL, P(auth_workers),
	  "threads checking passwords (crypt(3) is slow by design)" },
	{ "auth_delay_after", PT_INT, "3", 1, 1000, NULL, P(auth_delay_after),
	  "failed authentications (per client address or account) after which each failure is answered after auth_failure_delay" },
	{ "auth_max_failures", PT_INT, "10", 1, 10000, NULL, P(auth_max_failures),
	  "failed authentications (per client address or account) after which AUTH is refused (454 4.7.0) until auth_lockout has passed" },
	{ "auth_failure_delay", PT_TIME, "2s", 0, 60000, NULL, P(auth_failure_delay),
	  "how long a repeated failure waits for its answer" },
	{ "auth_lockout", PT_TIME, "15m", 1000, 86400000, NULL, P(auth_lockout),
	  "how long failed authentications are remembered (from the first); rampartctl authfail reset clears them" },
	{ "auth_failure_mode", PT_ENUM, "tempfail", 0, 0, "tempfail|continue", P(auth_failure_mode),
	  "when the state store cannot count failures: tempfail (454 4.7.0) or continue (check the password, uncounted)" },
	{ "auth_cache_ttl", PT_TIME, "15m", 0, 86400000, NULL, P(auth_cache_ttl),
	  "how long a password that checked out is remembered (as an HMAC, never the password) so that the next "
	  "login costs no crypt(3); 0: check every time" },
	{ "auth_cache_size", PT_INT, "10000", 1, 10000000, NULL, P(auth_cache_size),
	  "accounts the authentication cache holds" },
	{ "account_metrics", PT_ENUM, "apps", 0, 0, "apps|all|none", P(account_metrics),
	  "which accounts get their own series on /metrics (rampart_account_*): the applications, every account (one "
	  "series per user: mind Prometheus at large sites), or none; rampartctl stats users has them all anyway" },
	PARAM_END
};

struct submit {
	const struct submit_config *c;
	struct authn *authn;
	struct metric *m_app_msgs, *m_app_rcpts, *m_app_bytes;
};

static void *submit_init(const void *config, const struct stage_env *env, char *why, size_t whylen)
{
	const struct submit_config *c = config;
	struct authn_opts o = {
		.accounts_file = c->accounts_file,
		.workers = (unsigned)c->auth_workers,
		.delay_after = (unsigned)c->auth_delay_after,
		.max_failures = (unsigned)c->auth_max_failures,
		.failure_delay_ms = c->auth_failure_delay,
		.lockout_ms = c->auth_lockout,
		.fail_open = c->auth_failure_mode == 1,
		.cache_ttl_ms = c->auth_cache_ttl,
		.dovecot_socket = c->dovecot_auth_socket,
		.dovecot_timeout_ms = c->dovecot_auth_timeout,
		.cache_size = (size_t)c->auth_cache_size,
	};
	char w[512] = "";
	struct authn *a = authn_new(&o, env->base, env->state, env->metrics, w, sizeof(w));
	if (!a) {
		snprintf(why, whylen, "accounts_file: %s", w);
		return NULL;
	}
	struct submit *s = xcalloc(1, sizeof(*s));
	s->c = c;
	s->authn = a;
	if (env->metrics) {
		s->m_app_msgs = metrics_counter(env->metrics, "rampart_account_messages_total",
						"Messages accepted, by account (account_metrics says which accounts).");
		s->m_app_rcpts = metrics_counter(env->metrics, "rampart_account_recipients_total",
						 "Recipients accepted, by account.");
		s->m_app_bytes = metrics_counter(env->metrics, "rampart_account_bytes_total",
						 "Bytes accepted, by account.");
	}
	return s;
}

static void submit_free(void *state)
{
	struct submit *s = state;
	if (!s)
		return;
	authn_free(s->authn);
	free(s);
}

static void submit_tick(void *state)
{
	struct submit *s = state;
	authn_tick(s->authn);
}

static bool submit_validate(const void *config, const struct global_config *g, char *why, size_t whylen)
{
	(void)g;
	const struct submit_config *c = config;
	struct authn_opts o = { .accounts_file = c->accounts_file, .dovecot_socket = c->dovecot_auth_socket };
	char w[512] = "";
	struct authn *a = authn_new(&o, NULL, NULL, NULL, w, sizeof(w));
	if (!a) {
		snprintf(why, whylen, "accounts_file: %s", w);
		return false;
	}
	authn_free(a);
	return true;
}

/* -- AUTH -- */

struct auth_wait {
	void (*done)(void *arg, int code, const char *enh, const char *text);
	void *arg;
};

static void checked(void *arg, const struct authn_outcome *o)
{
	struct auth_wait *w = arg;
	switch (o->result) {
	case AUTHN_OK:
		w->done(w->arg, 0, NULL, NULL);
		break;
	case AUTHN_BAD:
		w->done(w->arg, 535, "5.7.8", "Authentication credentials invalid");
		break;
	case AUTHN_LOCKED_OUT:
		w->done(w->arg, 454, "4.7.0", "Too many failed authentications, try again later");
		break;
	case AUTHN_TEMPFAIL:
		w->done(w->arg, 454, "4.7.0", "Temporary authentication failure");
		break;
	}
	free(w);
}

static void submit_authenticate(void *state, const char *sid, const char *ip, const char *user, const char *password,
				void (*done)(void *arg, int code, const char *enh, const char *text), void *arg)
{
	struct submit *s = state;
	struct auth_wait *w = xcalloc(1, sizeof(*w));
	w->done = done;
	w->arg = arg;
	authn_check(s->authn, sid, ip, user, password, checked, w);
}

/* -- accounting: every account in the ledger (rampartctl stats users);
 * on /metrics the applications (few and named), or every account, or
 * none (account_metrics) -- */

static void submit_accepted(void *state, const struct envelope *env, size_t bytes)
{
	struct submit *s = state;
	const char *login = env->client.login;
	const struct passdb *db = authn_accounts(s->authn);
	const struct passdb_account *a = login && db ? passdb_find(db, login) : NULL;
	bool app = a && a->app;
	if (!login || !s->m_app_msgs || s->c->account_metrics == 2 || (s->c->account_metrics == 0 && !app))
		return;
	struct buf b = BUF_INIT;
	metrics_escape_label(&b, a ? a->name : login);
	char labels[400];
	snprintf(labels, sizeof(labels), "account=\"%s\",app=\"%s\"", buf_cstr(&b), app ? "yes" : "no");
	buf_free(&b);
	metric_inc(s->m_app_msgs, labels);
	metric_add(s->m_app_rcpts, labels, (double)env->nrcpt);
	metric_add(s->m_app_bytes, labels, (double)bytes);
}

const struct stage_def submit_stage = {
	.name = "submit",
	.doc = "stage B: mail from the site's users and applications (587 STARTTLS, 465 TLS; AUTH required)",
	.params = submit_params,
	.config_size = sizeof(struct submit_config),
	.lmtp = false,
	.default_checks = "relay limits sender_login quota",
	.submission = true,
	.needs_state = true,
	.accounting = true,
	.init = submit_init,
	.free = submit_free,
	.tick = submit_tick,
	.validate = submit_validate,
	.authenticate = submit_authenticate,
	.accepted = submit_accepted,
};
