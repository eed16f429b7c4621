/*
 * rampart-out — stage F, the only stage that talks to the Internet, and
 * the anti-loss relay applications hand their mail to.
 *
 * Queue mode always: a message is fsync'd before the 250 and from then on
 * delivered or bounced, never lost.  Delivery goes to a smarthost list
 * (next_hops) when one is configured, otherwise by the recipient domain's
 * MX records (shared/mail/route.c) through the process's resolver.
 * It may reach: its listen sockets, its spool, DNS, and any Internet MX
 * or the configured smarthosts.
 */
#include "mail/dkim_sign.h"
#include "mail/route.h"
#include "mail/stage.h"
#include "mail/tls_policy.h"
#include "util/alloc.h"
#include "util/log.h"
#include "util/metrics.h"
#include "util/net.h"
#include "util/tls.h"
#include "util/workers.h"

#include <ctype.h>
#include <unistd.h>
#include <event2/event.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct out_config {
	struct server_config srv;
	int mx_family;
	long long smtp_port;
	int tls_policy;
	struct strlist tls_policy_domains;
	char *tls_ca_file;
	int smarthost_tls;
	bool smarthost_implicit_tls;
	char *smarthost_user;
	char *smarthost_password_file;
	char *dkim_keytable;
};

/* The order of the choices is level_of[]'s. */
#define TLS_CHOICES "may|none|encrypt|verify"
static const enum tls_level level_of[] = { TLS_LEVEL_MAY, TLS_LEVEL_NONE, TLS_LEVEL_ENCRYPT, TLS_LEVEL_VERIFY };

#define P(f) offsetof(struct out_config, f)
static const struct param_def out_params[] = {
	{ "mx_address_family", PT_ENUM, "ipv4-first", 0, 0, "ipv4-first|ipv6-first|ipv4-only|ipv6-only", P(mx_family),
	  "which addresses of an MX host to try first (or only)" },
	{ "smtp_port", PT_INT, "25", 1, 65535, NULL, P(smtp_port),
	  "port of the MX hosts found by DNS (25; labs and tests use another)" },
	{ "tls_policy", PT_ENUM, "may", 0, 0, TLS_CHOICES, P(tls_policy),
	  "TLS towards MX hosts without a tls_policy_domains entry: may (opportunistic), none, "
	  "encrypt (required, certificate not checked), verify (required; chain checked against tls_ca_file, "
	  "name against the MX host name); a required TLS that fails defers the mail (4xx)" },
	{ "tls_policy_domains", PT_LIST, "", 0, 0, NULL, P(tls_policy_domains),
	  "per destination, overriding tls_policy: DEST:LEVEL[:match=NAME]...[:ca=/path/ca.pem] entries; "
	  "DEST example.com (that domain) or .example.com (the domains below it; the exact entry wins, then "
	  "the closest parent); LEVEL none|may|encrypt|verify; verify only: match= a name the certificate may "
	  "carry instead of the MX host name (repeatable, up to 8), ca= a CA file instead of tls_ca_file" },
	{ "tls_ca_file", PT_STR, "", 0, 0, NULL, P(tls_ca_file),
	  "CA certificates (PEM) for every verify policy without its own ca= (tls_policy, tls_policy_domains, "
	  "smarthost_tls); empty: the system store" },
	{ "smarthost_tls", PT_ENUM, "may", 0, 0, TLS_CHOICES, P(smarthost_tls),
	  "TLS towards the smarthosts (next_hops): may, none, encrypt, or verify (certificate and name checked)" },
	{ "smarthost_implicit_tls", PT_BOOL, "no", 0, 0, NULL, P(smarthost_implicit_tls),
	  "the smarthosts speak TLS from the first byte (port 465, RFC 8314)" },
	{ "smarthost_user", PT_STR, "", 0, 0, NULL, P(smarthost_user),
	  "AUTH user at the smarthosts (empty: no AUTH); credentials only ever go over TLS" },
	{ "dkim_keytable", PT_STR, "", 0, 0, NULL, P(dkim_keytable),
	  "DKIM key table: 'DOMAIN SELECTOR rsa-sha256|ed25519-sha256 KEYFILE' lines; mail From those domains is signed" },
	{ "smarthost_password_file", PT_STR, "", 0, 0, NULL, P(smarthost_password_file),
	  "file holding the AUTH password or API key (first line), readable by rampart only" },
	PARAM_END
};

/* One verifying TLS client context per CA file a verify policy can name. */
struct ca_ctx {
	const char *file;               /* the policy table's string; "" the system store */
	struct tls_ctx *ctx;
};

struct out {
	struct event_base *base;
	struct dns *dns;
	const struct out_config *c;
	const struct server_config *sc;
	struct route_opts ropts;
	int port;
	struct tls_policy_table *tls;   /* outbound TLS policy (mail/tls_policy.h) */
	struct ca_ctx *cas;             /* for verify */
	size_t ncas;
	struct tls_ctx *plain_ctx;      /* encrypt (or implicit TLS) with next_tls = no */
	char *password;
	struct workers *dkim;           /* signing threads, keys checked at start-up */
	struct metric *m_msgs, *m_rcpts, *m_bytes, *m_auth_fail, *m_tls_fail;
};

static enum smtp_tls_policy client_policy(enum tls_level l)
{
	switch (l) {
	case TLS_LEVEL_NONE: return TLS_NONE;
	case TLS_LEVEL_MAY: return TLS_MAY;
	case TLS_LEVEL_ENCRYPT: return TLS_ENCRYPT;
	case TLS_LEVEL_VERIFY: return TLS_VERIFY;
	}
	return TLS_VERIFY;      /* never weaker than asked */
}

static struct tls_policy_table *policy_table(const struct out_config *c, char *why, size_t whylen)
{
	struct tls_policy_config pc = {
		.mx_default = level_of[c->tls_policy],
		.smarthost = level_of[c->smarthost_tls],
		.ca_file = c->tls_ca_file,
		.entries = &c->tls_policy_domains,
	};
	return tls_policy_new(&pc, why, whylen);
}

/* A verifying client context for every CA file of the table; false with
 * why naming the parameter when one does not load. */
static bool load_cas(const struct tls_policy_table *t, const char *global_ca, struct ca_ctx **cas, size_t *ncas,
		     char *why, size_t whylen)
{
	size_t n = tls_policy_ca_count(t);
	*cas = xcalloc(n ? n : 1, sizeof(**cas));
	*ncas = 0;
	for (size_t i = 0; i < n; i++) {
		const char *file = tls_policy_ca_file(t, i);
		char w[400];
		struct tls_ctx *ctx = tls_client_new(*file ? file : NULL, true, w, sizeof(w));
		if (!ctx) {
			if (!*file)
				snprintf(why, whylen, "tls_ca_file is empty, and the system CA store: %s", w);
			else if (strcmp(file, global_ca) == 0)
				snprintf(why, whylen, "tls_ca_file: %s", w);
			else
				snprintf(why, whylen, "tls_policy_domains: ca=%s: %s", file, w);
			return false;
		}
		(*cas)[*ncas].file = file;
		(*cas)[(*ncas)++].ctx = ctx;
	}
	return true;
}

static void free_cas(struct ca_ctx *cas, size_t n)
{
	for (size_t i = 0; i < n; i++)
		tls_ctx_free(cas[i].ctx);
	free(cas);
}

static struct tls_ctx *ca_ctx_of(const struct out *o, const char *file)
{
	for (size_t i = 0; i < o->ncas; i++)
		if (strcmp(o->cas[i].file, file) == 0)
			return o->cas[i].ctx;
	return NULL;    /* cannot happen: the table named every file */
}

/* The password: the first line of a file, read once at start-up. */
static char *read_secret(const char *path, char *why, size_t whylen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(why, whylen, "smarthost_password_file: %s: %s", path, strerror(errno));
		return NULL;
	}
	char line[1100];
	char *r = fgets(line, sizeof(line), f);
	fclose(f);
	if (!r) {
		snprintf(why, whylen, "smarthost_password_file: %s: empty", path);
		return NULL;
	}
	line[strcspn(line, "\r\n")] = '\0';
	if (!*line) {
		snprintf(why, whylen, "smarthost_password_file: %s: empty first line", path);
		return NULL;
	}
	char *p = xstrdup(line);
	memset(line, 0, sizeof(line));
	return p;
}

static bool check_config(const struct out_config *c, struct out *o, char *why, size_t whylen)
{
	if (c->srv.mode != MODE_QUEUE) {
		snprintf(why, whylen, "mode: the outgoing stage works in queue mode only (it must never lose mail)");
		return false;
	}
	struct tls_policy_table *t = policy_table(c, why, whylen);
	if (!t)
		return false;
	if (o)
		o->tls = t;
	else
		tls_policy_free(t);
	if (*c->smarthost_user && !*c->smarthost_password_file) {
		snprintf(why, whylen, "smarthost_user is set: smarthost_password_file must name the file with the password");
		return false;
	}
	if (*c->smarthost_user && c->srv.next_hops.n == 0) {
		snprintf(why, whylen, "smarthost_user is set but next_hops (the smarthosts) is empty");
		return false;
	}
	if (*c->smarthost_user && level_of[c->smarthost_tls] == TLS_LEVEL_NONE && !c->smarthost_implicit_tls) {
		snprintf(why, whylen, "smarthost_tls = none with smarthost_user: credentials are never sent in clear text");
		return false;
	}
	return true;
}

static void out_free(void *state);

/* -- DKIM signing on worker threads --
 *
 * An RSA-2048 signature costs about 0.3 ms of CPU, several times what
 * the rest of a message costs here, so signing runs on its own threads
 * (shared/util/workers), one signer each (a signer serves one thread at
 * a time), and the event loop goes on serving sessions meanwhile.
 * Finished jobs come back through an eventfd; at the end the threads
 * sign what is still queued before they stop. */

#define SIGN_THREADS 2

struct sign_job {
	struct workers_job link;        /* first: the pool's */
	const char *msg;
	size_t len;
	struct buf add;
	bool ok;
	char why[256];
	void (*done)(void *arg, bool ok, struct buf *add, const char *why);
	void *arg;
};

static void *signer_init(void *owner, size_t i, char *why, size_t whylen)
{
	(void)i;
	struct out *o = owner;
	char dwhy[512];
	struct dkim_signer *signer = dkim_signer_new(o->c->dkim_keytable, dwhy, sizeof(dwhy));
	if (!signer)
		snprintf(why, whylen, "dkim_keytable: %s", dwhy);
	return signer;
}

static void signer_fini(void *owner, void *state)
{
	(void)owner;
	dkim_signer_free(state);
}

static void sign_run(void *owner, void *state, struct workers_job *job)
{
	(void)owner;
	struct sign_job *j = (struct sign_job *)job;
	int n = dkim_sign_message(state, j->msg, j->len, &j->add, j->why, sizeof(j->why));
	j->ok = n >= 0;
}

static void sign_discard(struct workers_job *job)
{
	struct sign_job *j = (struct sign_job *)job;
	buf_free(&j->add);
	free(j);
}

static void sign_done(struct workers_job *job)
{
	struct sign_job *j = (struct sign_job *)job;
	char why[300];
	snprintf(why, sizeof(why), "DKIM signing failed: %s", j->why);
	j->done(j->arg, j->ok, &j->add, j->ok ? NULL : why);
	sign_discard(job);
}

/* Jobs not handed back at the end belong to sessions that are gone by
 * now (a generation is freed only when no session uses it). */
static const struct workers_def signers = {
	.name = "dkim",
	.drain = true,
	.init = signer_init,
	.fini = signer_fini,
	.run = sign_run,
	.done = sign_done,
	.discard = sign_discard,
};

static void *out_init(const void *config, const struct stage_env *env, char *why, size_t whylen)
{
	const struct out_config *c = config;
	struct out *o = xcalloc(1, sizeof(*o));
	o->c = c;
	if (!check_config(c, o, why, whylen)) {
		out_free(o);
		return NULL;
	}
	if (env->metrics) {
		o->m_msgs = metrics_counter(env->metrics, "rampart_sender_messages_total", "Messages accepted, by sender domain.");
		o->m_rcpts = metrics_counter(env->metrics, "rampart_sender_recipients_total", "Recipients accepted, by sender domain.");
		o->m_bytes = metrics_counter(env->metrics, "rampart_sender_bytes_total", "Bytes accepted, by sender domain.");
		o->m_auth_fail = metrics_counter(env->metrics, "rampart_smarthost_auth_failures_total",
						 "Deliveries deferred because the smarthost refused our credentials.");
		metric_add(o->m_auth_fail, NULL, 0);
		o->m_tls_fail = metrics_counter(env->metrics, "rampart_tls_policy_failures_total",
						"Deliveries deferred because TLS required by the policy failed, "
						"by level, policy source and reason.");
	}
	if (!load_cas(o->tls, c->tls_ca_file, &o->cas, &o->ncas, why, whylen)) {
		out_free(o);
		return NULL;
	}
	if (!c->srv.next_tls && (tls_policy_any_required(o->tls) || c->smarthost_implicit_tls)) {
		/* next_tls = no turns opportunistic TLS off, not a required one */
		o->plain_ctx = tls_client_new(NULL, false, why, whylen);
		if (!o->plain_ctx) {
			out_free(o);
			return NULL;
		}
	}
	if (*c->smarthost_user) {
		o->password = read_secret(c->smarthost_password_file, why, whylen);
		if (!o->password) {
			out_free(o);
			return NULL;
		}
	}
	if (*c->dkim_keytable) {
		o->dkim = workers_new(env->base, SIGN_THREADS, &signers, o, why, whylen);
		if (!o->dkim) {
			out_free(o);
			return NULL;
		}
	}
	o->base = env->base;
	o->dns = env->dns;
	o->sc = &c->srv;
	o->ropts.family = (enum route_family)c->mx_family;
	o->ropts.self_names = NULL;
	o->port = (int)c->smtp_port;
	return o;
}

static bool out_validate(const void *config, const struct global_config *g, char *why, size_t whylen)
{
	(void)g;
	const struct out_config *c = config;
	if (!check_config(c, NULL, why, whylen))
		return false;
	struct tls_policy_table *t = policy_table(c, why, whylen);
	struct ca_ctx *cas = NULL;
	size_t ncas = 0;
	bool ok = t && load_cas(t, c->tls_ca_file, &cas, &ncas, why, whylen);
	free_cas(cas, ncas);
	tls_policy_free(t);
	if (!ok)
		return false;
	if (*c->smarthost_user) {
		char *p = read_secret(c->smarthost_password_file, why, whylen);
		if (!p)
			return false;
		free(p);
	}
	if (*c->dkim_keytable) {
		char dwhy[512];
		struct dkim_signer *d = dkim_signer_new(c->dkim_keytable, dwhy, sizeof(dwhy));
		if (!d) {
			snprintf(why, whylen, "dkim_keytable: %s", dwhy);
			return false;
		}
		dkim_signer_free(d);
	}
	return true;
}

/* Shutdown: a signature being made reads the message. */
static void out_stop(void *state)
{
	struct out *o = state;
	workers_free(o->dkim);
	o->dkim = NULL;
}

static void out_free(void *state)
{
	struct out *o = state;
	free_cas(o->cas, o->ncas);
	tls_ctx_free(o->plain_ctx);
	tls_policy_free(o->tls);
	workers_free(o->dkim);
	if (o->password) {
		memset(o->password, 0, strlen(o->password));
		free(o->password);
	}
	free(o);
}

/* -- accounting -- */

static void out_accepted(void *state, const struct envelope *env, size_t bytes)
{
	struct out *o = state;
	if (o->m_msgs) {
		char labels[400];
		struct buf b = BUF_INIT;
		const char *at = strrchr(env->sender, '@');
		metrics_escape_label(&b, at ? at + 1 : "");
		snprintf(labels, sizeof(labels), "sender_domain=\"%s\"", buf_cstr(&b));
		buf_free(&b);
		metric_inc(o->m_msgs, labels);
		metric_add(o->m_rcpts, labels, (double)env->nrcpt);
		metric_add(o->m_bytes, labels, (double)bytes);
	}
}

/* Why a TLS the policy required failed (smtp_client's SMTP_FAULT_TLS),
 * in more detail, from the text it wrote ("454 4.7.x all next hops
 * failed: HOP (TLS required ...)"); NULL: not such a failure. */
static const char *tls_failure_reason(const struct smtp_reply *r, const char *reply)
{
	if (r->fault != SMTP_FAULT_TLS || !reply)
		return NULL;
	if (strstr(reply, "hostname mismatch") || strstr(reply, "IP address mismatch"))
		return "name_mismatch";
	if (strstr(reply, "certificate"))
		return "certificate";
	if (strstr(reply, "not offered"))
		return "not_offered";
	if (strstr(reply, "STARTTLS refused"))
		return "starttls_refused";
	return "handshake";
}

static void out_outcome(void *state, const struct envelope *env, size_t rcpt, const struct smtp_reply *r,
			const char *reply)
{
	struct out *o = state;
	if (o->m_auth_fail && r->fault == SMTP_FAULT_AUTH)
		metric_inc(o->m_auth_fail, NULL);
	const char *reason = tls_failure_reason(r, reply);
	if (reason && rcpt < env->nrcpt) {
		const char *addr = env->rcpts[rcpt].addr;
		const char *at = strrchr(addr, '@');
		struct tls_policy_query q = { .domain = at ? at + 1 : "", .smarthost = o->sc->next_hops.n > 0 };
		struct tls_policy p;
		tls_policy_lookup(o->tls, &q, &p);
		log_warn(NULL, NULL, "tls.policy_failed",
			 "rcpt=%s correlation_id=%s policy=%s source=%s entry=%s reason=%s reply=%s", addr,
			 env->correlation_id ? env->correlation_id : "", tls_level_name(p.level), p.source, p.entry,
			 reason, reply);
		if (o->m_tls_fail) {
			char labels[200];
			snprintf(labels, sizeof(labels), "level=\"%s\",source=\"%s\",reason=\"%s\"",
				 tls_level_name(p.level), p.source, reason);
			metric_inc(o->m_tls_fail, labels);
		}
	}
}

/* Sign what leaves from our domains, once, before it is queued. */
static void out_prepare(void *state, const struct envelope *env, const char *msg, size_t len,
			void (*done)(void *arg, bool ok, struct buf *add, const char *why), void *arg)
{
	(void)env;
	struct out *o = state;
	if (!o->dkim) {
		done(arg, true, NULL, NULL);
		return;
	}
	struct sign_job *j = xcalloc(1, sizeof(*j));
	j->msg = msg;
	j->len = len;
	j->done = done;
	j->arg = arg;
	workers_submit(o->dkim, &j->link);     /* no max_waiting: always taken */
}

/* TLS policy and AUTH for one connection: domain is the recipient
 * domain, "" for the smarthosts. */
static void out_client_opts(void *state, const char *domain, struct smtp_client_opts *opts)
{
	struct out *o = state;
	const struct out_config *c = o->c;
	struct tls_policy_query q = { .domain = domain, .smarthost = !*domain };
	struct tls_policy p;
	tls_policy_lookup(o->tls, &q, &p);
	opts->tls_policy = client_policy(p.level);
	if (q.smarthost)
		opts->tls_on_connect = c->smarthost_implicit_tls;
	if (p.level == TLS_LEVEL_VERIFY) {
		/* chain against the policy's CA file, name against the match
		 * names or else the host connected to (smtp_client.h) */
		opts->tls = ca_ctx_of(o, p.ca_file);
		opts->tls_verify_names = p.match;
	} else if (!opts->tls && (p.level == TLS_LEVEL_ENCRYPT || opts->tls_on_connect)) {
		opts->tls = o->plain_ctx;
	}
	log_debug(opts->log_sid, NULL, "tls.policy", "domain=%s policy=%s source=%s entry=%s ca=%s match=%zu",
		  domain, tls_level_name(p.level), p.source, p.entry,
		  p.level == TLS_LEVEL_VERIFY ? (*p.ca_file ? p.ca_file : "system") : "",
		  p.match ? p.match->n : 0);
	if (q.smarthost && o->password) {
		opts->auth_user = c->smarthost_user;
		opts->auth_pass = o->password;
	}
}

/* -- routing -- */

struct route_req {
	void (*done)(void *arg, const struct strlist *hops, const struct smtp_reply *err);
	void *arg;
};

/* A plain host name (what smtp_client accepts in front of "[address]"). */
static bool plain_host(const char *h)
{
	if (!*h || net_is_ip(h))
		return false;
	for (const char *p = h; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-' && *p != '_')
			return false;
	return true;
}

/* The hops for smtp_client, each with the host name it was found under
 * ("mx.example.net[192.0.2.1]:25"): that name is sent as SNI and is the
 * name a verify policy checks the certificate against.  Address literals
 * stay bare. */
static void named_hops(const struct route_result *r, struct strlist *out)
{
	out->v = xcalloc(r->n ? r->n : 1, sizeof(char *));
	for (size_t i = 0; i < r->n; i++) {
		const struct route_hop *h = &r->hops[i];
		bool v6 = strchr(h->addr, ':') != NULL;
		if (r->via != ROUTE_VIA_LITERAL && plain_host(h->host))
			out->v[out->n++] = xasprintf("%s[%s]:%d", h->host, h->addr, h->port);
		else
			out->v[out->n++] = xasprintf(v6 ? "[%s]:%d" : "%s:%d", h->addr, h->port);
	}
}

static void routed(void *arg, const struct route_result *r)
{
	struct route_req *q = arg;
	if (r->code) {
		struct smtp_reply err = { .code = r->code, .fault = SMTP_FAULT_ROUTE };
		snprintf(err.enh, sizeof(err.enh), "%s", r->enh);
		snprintf(err.text, sizeof(err.text), "%s", r->text);
		q->done(q->arg, NULL, &err);
	} else {
		struct strlist hops = { 0 };
		named_hops(r, &hops);
		q->done(q->arg, &hops, NULL);
		strlist_free(&hops);
	}
	free(q);
}

static void out_route(void *state, const char *domain,
		      void (*done)(void *arg, const struct strlist *hops, const struct smtp_reply *err), void *arg)
{
	struct out *o = state;
	struct route_req *q = xcalloc(1, sizeof(*q));
	q->done = done;
	q->arg = arg;
	route_lookup(o->base, o->dns, domain, o->port, &o->ropts, routed, q);
}

/* A smarthost list (next_hops) replaces MX routing. */
static bool out_route_all(void *state)
{
	struct out *o = state;
	return o->sc->next_hops.n > 0;
}

const struct stage_def out_stage = {
	.name = "out",
	.doc = "stage F: outgoing mail to the Internet or a smarthost (the anti-loss relay)",
	.params = out_params,
	.config_size = sizeof(struct out_config),
	.lmtp = false,
	.init = out_init,
	.free = out_free,
	.stop = out_stop,
	.validate = out_validate,
	.route = out_route,
	.route_all = out_route_all,
	.client_opts = out_client_opts,
	.prepare = out_prepare,
	.accepted = out_accepted,
	.outcome = out_outcome,
	.accounting = true,
};
