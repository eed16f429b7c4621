/*
 * stage.c — the server skeleton shared by every stage program.
 *
 * Wires together: rampart.conf ([global] and the instance's section), the
 * logger, the metrics listener, the SMTP/LMTP engine, the check chain,
 * and what happens to an accepted message:
 *   - the stage's own delivery (the store),
 *   - queue mode: written to the durable spool and fsync'd before the 250,
 *     then delivered to the next hops by the queue's delivery agent,
 *   - proxy mode: the client's transaction is relayed to the next hop as it
 *     happens and the next hop's replies are passed back.
 * It may reach: its listen sockets, its spool, its next hops.
 */
#include "stage.h"
#include "dsn.h"
#include "header.h"
#include "ledger.h"
#include "queue.h"
#include "state.h"
#include "smtp_client.h"
#include "../checks/chain.h"
#include "../checks/shared.h"
#include "../util/alloc.h"
#include "../util/dns.h"
#include "../util/fs.h"
#include "../util/id.h"
#include "../util/log.h"
#include "../util/metrics.h"
#include "../util/net.h"
#include "../util/tls.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

/* ---- parameters -------------------------------------------------------- */

#define SRV(f) offsetof(struct server_config, f)
const struct param_def server_param_defs[] = {
	{ "listen", PT_LIST, "", 1, 0, NULL, SRV(listen), "addresses to listen on (host:port, [v6]:port, unix:/path)" },
	{ "listen_tls", PT_LIST, "", 0, 0, NULL, SRV(listen_tls), "addresses to listen on with implicit TLS (port 465, RFC 8314); needs tls_cert" },
	{ "hostname", PT_STR, "localhost", 1, 0, NULL, SRV(hostname), "name in the banner, EHLO and Received headers" },
	{ "local_domains", PT_LIST, "", 0, 0, NULL, SRV(local_domains), "domains this site receives mail for" },
	{ "checks", PT_LIST, "relay limits", 0, 0, NULL, SRV(checks), "checks to run, in order ([check.NAME] sections configure them)" },
	{ "mode", PT_ENUM, "queue", 0, 0, "queue|proxy", SRV(mode), "queue: 250 after fsync, deliver later; proxy: relay the transaction live" },
	{ "next_hops", PT_LIST, "", 0, 0, NULL, SRV(next_hops), "next stage: host:port list tried in order with failover" },
	{ "next_protocol", PT_ENUM, "smtp", 0, 0, "smtp|lmtp", SRV(next_protocol), "protocol spoken to the next hops" },
	{ "local_next_hops", PT_LIST, "", 0, 0, NULL, SRV(local_next_hops), "queue mode: where mail for local_domains goes instead of next_hops (the store; the rest goes on, e.g. to the outgoing stage)" },
	{ "local_next_protocol", PT_ENUM, "lmtp", 0, 0, "smtp|lmtp", SRV(local_next_protocol), "protocol spoken to local_next_hops" },
	{ "next_xforward", PT_BOOL, "yes", 0, 0, NULL, SRV(next_xforward), "send XFORWARD (original client) to next hops that offer it" },
	{ "next_tls", PT_BOOL, "yes", 0, 0, NULL, SRV(next_tls), "use STARTTLS with next hops that offer it (opportunistic)" },
	{ "next_idle_timeout", PT_TIME, "2s", 0, 300000, NULL, SRV(next_idle_timeout), "keep a connection to a next hop open this long for the next message (0: one per message)" },
	{ "spool_dir", PT_STR, "", 0, 0, NULL, SRV(spool_dir), "queue directory (default: state_dir/spool/INSTANCE)" },
	{ "metrics_listen", PT_STR, "", 0, 0, NULL, SRV(metrics_listen), "host:port for Prometheus /metrics (empty: off)" },
	{ "max_message_size", PT_SIZE, "25m", 1024, 1LL << 32, NULL, SRV(max_message_size), "largest message accepted (SIZE)" },
	{ "max_line_length", PT_SIZE, "64k", 1000, 1 << 20, NULL, SRV(max_line_length), "longest text line in a message (RFC 5321 says 1000; real mail is sloppier)" },
	{ "max_header_size", PT_SIZE, "64k", 1000, 1 << 20, NULL, SRV(max_header_size), "largest header field, folded lines included" },
	{ "max_headers", PT_INT, "1000", 10, 100000, NULL, SRV(max_headers), "most header fields in a message" },
	{ "max_recipients", PT_INT, "1000", 1, 100000, NULL, SRV(max_recipients), "most recipients per transaction" },
	{ "max_connections", PT_INT, "1000", 1, 1000000, NULL, SRV(max_connections), "most concurrent client connections" },
	{ "max_connections_per_client", PT_INT, "50", 0, 1000000, NULL, SRV(max_connections_per_client), "most concurrent connections from one client address (0: no limit; xforward_hosts and xclient_hosts are exempt)" },
	{ "max_connections_per_network", PT_INT, "0", 0, 1000000, NULL, SRV(max_connections_per_network), "most concurrent connections from one network (see network_prefix4/6; 0: no limit)" },
	{ "network_prefix4", PT_INT, "24", 1, 32, NULL, SRV(network_prefix4), "IPv4 prefix length of a client's network for max_connections_per_network" },
	{ "data_rate_limit", PT_SIZE, "0", 0, 1LL << 32, NULL, SRV(data_rate_limit), "bytes per second one client session may send (0: no limit); a faster client is read more slowly" },
	{ "network_prefix6", PT_INT, "64", 1, 128, NULL, SRV(network_prefix6), "IPv6 prefix length of a client's network for max_connections_per_network" },
	{ "max_errors", PT_INT, "10", 1, 1000, NULL, SRV(max_errors), "bad commands before 421 and disconnect" },
	{ "command_timeout", PT_TIME, "300s", 1000, 3600000, NULL, SRV(command_timeout), "deadline for each command line" },
	{ "data_timeout", PT_TIME, "300s", 1000, 3600000, NULL, SRV(data_timeout), "deadline for each read during DATA" },
	{ "greet_pause", PT_TIME, "0", 0, 60000, NULL, SRV(greet_pause), "wait before the banner; clients talking first are refused" },
	{ "shutdown_timeout", PT_TIME, "10s", 0, 3600000, NULL, SRV(shutdown_timeout), "on SIGTERM: how long sessions and deliveries in progress may finish before the rest are cut (a cut session gets no 250: its client sends again)" },
	{ "retry_min", PT_TIME, "60s", 10, 86400000, NULL, SRV(retry_min), "first retry delay of a deferred message" },
	{ "retry_max", PT_TIME, "1h", 10, 604800000, NULL, SRV(retry_max), "longest retry delay (exponential backoff)" },
	{ "queue_lifetime", PT_TIME, "5d", 5000, 7776000000LL, NULL, SRV(queue_lifetime), "maximum time a message stays queued" },
	{ "dsn", PT_BOOL, "yes", 0, 0, NULL, SRV(dsn), "send a delivery status notification (RFC 3464) to the sender when a recipient fails for good" },
	{ "double_bounce_recipient", PT_STR, "", 0, 0, NULL, SRV(double_bounce_recipient), "where failures of mail sent with the null sender (bounces themselves) are reported, e.g. postmaster@example.org (empty: logged and dropped; a bounce is never bounced to its null sender)" },
	{ "delay_warning", PT_TIME, "4h", 0, 7776000000LL, NULL, SRV(delay_warning), "tell the sender (a delay DSN, once) when a message is still undelivered after this long (0: never)" },
	{ "max_deliveries", PT_INT, "100", 1, 10000, NULL, SRV(max_deliveries), "concurrent deliveries from the queue" },
	{ "destination_concurrency", PT_INT, "20", 1, 10000, NULL, SRV(destination_concurrency), "concurrent deliveries to one destination (recipient domain, or the next hops as a whole)" },
	{ "tls_cert", PT_STR, "", 0, 0, NULL, SRV(tls_cert), "PEM certificate chain for STARTTLS (empty: no STARTTLS)" },
	{ "tls_key", PT_STR, "", 0, 0, NULL, SRV(tls_key), "PEM private key for STARTTLS" },
	{ "received_hide_client", PT_BOOL, "no", 0, 0, NULL, SRV(received_hide_client), "leave the client's name and address out of the Received header this stage adds (privacy of submitting users)" },
	{ "xforward_hosts", PT_LIST, "", 0, 0, NULL, SRV(xforward_hosts), "previous stages (CIDR) whose XFORWARD is trusted" },
	{ "xclient_hosts", PT_LIST, "", 0, 0, NULL, SRV(xclient_hosts), "proxies (CIDR) allowed to use XCLIENT" },
	{ "user", PT_STR, "", 0, 0, NULL, SRV(user), "drop to this user after binding (when started as root)" },
	PARAM_END
};

#define GLB(f) offsetof(struct global_config, f)
static const struct param_def global_param_defs[] = {
	{ "state_dir", PT_STR, "/var/lib/rampart", 1, 0, NULL, GLB(state_dir), "where spools and state live" },
	{ "log_level", PT_ENUM, "info", 0, 0, "debug|info|warn|error", GLB(log_level), "least severe level logged" },
	{ "log_syslog", PT_BOOL, "no", 0, 0, NULL, GLB(log_syslog), "log to syslog instead of standard error" },
	{ "dns_local_data", PT_STR, "", 0, 0, NULL, GLB(dns_local_data), "file of DNS records answered locally (labs, tests)" },
	{ "dns_local_only", PT_BOOL, "no", 0, 0, NULL, GLB(dns_local_only), "answer only from dns_local_data, never query the network" },
	PARAM_END
};

const struct param_set global_param_set = {
	"global", "settings shared by every program", global_param_defs, sizeof(struct global_config)
};

const struct param_set *stage_param_set(const struct stage_def *def)
{
	size_t ns = 0, nd = 0;
	while (server_param_defs[ns].name)
		ns++;
	while (def->params && def->params[nd].name)
		nd++;
	struct param_def *t = xcalloc(ns + nd + 1, sizeof(*t));
	memcpy(t, server_param_defs, ns * sizeof(*t));
	for (size_t i = 0; def->default_checks && i < ns; i++)
		if (strcmp(t[i].name, "checks") == 0)
			t[i].def = def->default_checks;
	if (nd)
		memcpy(t + ns, def->params, nd * sizeof(*t));
	struct param_set *set = xcalloc(1, sizeof(*set));
	set->stage = def->name;
	set->doc = def->doc;
	set->params = t;
	set->size = def->config_size;
	return set;
}

void stage_param_set_free(const struct param_set *set)
{
	if (!set)
		return;
	free((void *)set->params);
	free((void *)set);
}

/* ---- the process ------------------------------------------------------- */

struct stage;

/* Everything built from one reading of the configuration.  Sessions keep
 * the generation they started with until they end (SIGHUP-safe). */
struct generation {
	int refs;
	struct generation *prev, *next;         /* every live generation (stage.gens) */
	struct config *cfg;
	struct global_config g;
	void *conf;                     /* the stage's struct (begins with server_config) */
	const struct server_config *sc;
	struct chain *chain;
	void *state;                    /* the stage's own state */
	struct check_env env;
};

struct stage {
	const struct stage_def *def;
	const struct param_set *set;
	const char *config_path;
	const char *instance;
	struct event_base *base;
	struct generation *gen;
	struct generation *gens;        /* gen and the older ones sessions still use */
	struct smtp_server *server;
	struct tls_ctx *tls;
	struct tls_ctx *client_tls;     /* opportunistic STARTTLS to next hops */
	struct queue *queue;
	struct metrics *metrics;
	struct dns *dns;
	struct state *state;            /* opened with the first generation whose checks need it */
	struct check_shared *shared;    /* checks' long-lived objects (an antivirus engine) */
	struct ledger *ledger;          /* per-sender accounting (def->accounting) */
	char *ledger_path;
	unsigned ticks;
	struct metric *m_events;
	struct metric *m_sessions, *m_messages, *m_rejects, *m_deliveries, *m_deferrals, *m_bounces;
	struct event *sig_hup, *sig_term, *sig_int, *sig_usr1;
	struct event *drain_timer;
	long drain_left_ms;
	struct event *tick_timer;
	char pidfile[1100];
	struct dest **dests;            /* per-destination concurrency, DEST_BUCKETS chains */
	struct idle_conn *idle;         /* next-hop connections kept for reuse */
	struct smtp_client_set clients; /* next-hop clients alive (QUIT in progress included) */
	size_t nidle;
	char hostname[256];
};

static void gen_unref(struct stage *st, struct generation *g)
{
	if (!g || --g->refs > 0)
		return;
	if (g->prev)
		g->prev->next = g->next;
	else if (st->gens == g)
		st->gens = g->next;
	if (g->next)
		g->next->prev = g->prev;
	chain_free(g->chain);
	if (g->state && st->def->free)
		st->def->free(g->state);
	config_release(st->set, g->conf);
	free(g->conf);
	config_release(&global_param_set, &g->g);
	config_free(g->cfg);
	free(g);
}

static struct generation *gen_load(struct stage *st, bool dry, char *why, size_t whylen)
{
	struct config_error err;
	struct config *cfg = config_parse_file(st->config_path, &err);
	if (!cfg) {
		snprintf(why, whylen, "%s", err.msg);
		return NULL;
	}
	struct generation *g = xcalloc(1, sizeof(*g));
	g->refs = 1;
	g->next = st->gens;
	if (g->next)
		g->next->prev = g;
	st->gens = g;
	g->cfg = cfg;
	g->conf = xcalloc(1, st->set->size);
	if (!config_bind(cfg, "global", &global_param_set, &g->g, &err) ||
	    !config_bind(cfg, st->instance, st->set, g->conf, &err)) {
		snprintf(why, whylen, "%s", err.msg);
		g->chain = NULL;
		gen_unref(st, g);
		return NULL;
	}
	g->sc = g->conf;
	const struct server_config *sc = g->sc;
	if (!st->def->deliver && !st->def->route && sc->next_hops.n == 0) {
		snprintf(why, whylen, "%s: [%s] next_hops: expected at least one host:port for the next stage",
			 st->config_path, st->instance);
		gen_unref(st, g);
		return NULL;
	}
	for (size_t i = 0; i < sc->next_hops.n; i++) {
		struct endpoint ep;
		char w[128];
		if (!endpoint_parse(sc->next_hops.v[i], 25, &ep, w, sizeof(w))) {
			snprintf(why, whylen, "%s: [%s] next_hops: '%s': %s", st->config_path, st->instance,
				 sc->next_hops.v[i], w);
			gen_unref(st, g);
			return NULL;
		}
	}
	if ((st->def->submission || sc->listen_tls.n) && !*sc->tls_cert) {
		snprintf(why, whylen, "%s: [%s] tls_cert: expected a certificate: %s", st->config_path, st->instance,
			 st->def->submission ? "a submission stage requires TLS before AUTH" : "listen_tls needs one");
		gen_unref(st, g);
		return NULL;
	}
	for (size_t i = 0; i < sc->xforward_hosts.n + sc->xclient_hosts.n; i++) {
		const char *n = i < sc->xforward_hosts.n ? sc->xforward_hosts.v[i] : sc->xclient_hosts.v[i - sc->xforward_hosts.n];
		struct cidr c;
		if (!cidr_parse(n, &c)) {
			snprintf(why, whylen, "%s: [%s] xforward_hosts/xclient_hosts: '%s' is not a network (e.g. 127.0.0.0/8)",
				 st->config_path, st->instance, n);
			gen_unref(st, g);
			return NULL;
		}
	}
	g->env.stage = st->def->name;
	g->env.instance = st->instance;
	g->env.hostname = sc->hostname;
	g->env.local_domains = &sc->local_domains;
	g->env.accounts_file = config_str(st->set, g->conf, "accounts_file");
	g->env.max_message_size = sc->max_message_size;
	g->env.max_recipients = (unsigned)sc->max_recipients;
	g->env.metrics = st->metrics;
	g->env.dns = st->dns;
	g->env.base = st->base;
	g->env.shared = dry ? NULL : st->shared;
	/* The state store: [state], checked always; opened once, by the first
	 * generation whose checks use it (a change needs a restart). */
	struct state_config scfg;
	memset(&scfg, 0, sizeof(scfg));
	if (!config_bind(cfg, "state", &state_param_set, &scfg, &err)) {
		snprintf(why, whylen, "%s", err.msg);
		gen_unref(st, g);
		return NULL;
	}
	bool want_state = st->def->needs_state;
	for (size_t i = 0; i < sc->checks.n; i++) {
		const struct check_def *d = check_find(sc->checks.v[i]);
		if (d && d->needs_state)
			want_state = true;
	}
	if (want_state && !dry && !st->state) {
		char swhy[512] = "";
		scfg.state_dir = g->g.state_dir;
		scfg.metrics = st->metrics;
		st->state = state_open(&scfg, st->base, swhy, sizeof(swhy));
		if (!st->state) {
			config_release(&state_param_set, &scfg);
			snprintf(why, whylen, "%s: [state] %s", st->config_path, swhy);
			gen_unref(st, g);
			return NULL;
		}
		log_info(NULL, NULL, "state.opened", "backend=%s", state_backend_name(st->state));
	}
	config_release(&state_param_set, &scfg);
	g->env.state = st->state;
	if (dry && st->def->validate) {
		char swhy[512] = "";
		if (!st->def->validate(g->conf, &g->g, swhy, sizeof(swhy))) {
			snprintf(why, whylen, "%s: [%s] %s", st->config_path, st->instance, swhy);
			gen_unref(st, g);
			return NULL;
		}
	} else if (!dry && st->def->init) {
		char swhy[512] = "";
		struct stage_env senv = { &g->g, st->instance, st->base, st->dns, st->metrics, st->state };
		g->state = st->def->init(g->conf, &senv, swhy, sizeof(swhy));
		if (!g->state) {
			snprintf(why, whylen, "%s: [%s] %s", st->config_path, st->instance, swhy);
			gen_unref(st, g);
			return NULL;
		}
	}
	char cwhy[512];
	g->chain = chain_new(cfg, &sc->checks, &g->env, cwhy, sizeof(cwhy));
	if (!g->chain) {
		snprintf(why, whylen, "%s: [%s] checks: %s", st->config_path, st->instance, cwhy);
		gen_unref(st, g);
		return NULL;
	}
	return g;
}

/* ---- per-session glue between the engine, the chain and forwarding ---- */

struct sess {
	struct stage *st;
	struct generation *gen;
	struct smtp_session *s;
	struct check_ctx ctx;
	enum smtp_hook_kind kind;
	/* proxy mode */
	struct smtp_client *client;     /* kept across the session's transactions while reusable */
	bool client_in_txn;             /* MAIL of this transaction sent on it */
	bool client_failed;
	size_t proxied_rcpts;           /* RCPTs accepted by the next hop */
	bool *rcpt_ok;                  /* per envelope recipient: accepted by next hop */
	size_t rcpt_ok_cap;
	char *out_data;                 /* message as sent on (headers added) */
	size_t out_len;
	char *quarantine;               /* a check quarantined the transaction: why */
};

static void fill_ctx(struct sess *x)
{
	struct smtp_session *s = x->s;
	struct smtp_txn *t = smtp_session_txn(s);
	struct check_ctx *c = &x->ctx;
	c->sid = smtp_session_id(s);
	c->qid = t ? t->qid : NULL;
	c->client = t ? &t->env->client : smtp_session_client(s);
	c->tls = smtp_session_tls(s);
	c->helo = smtp_session_client(s)->helo;
	c->env = t ? t->env : NULL;
	c->declared_size = t ? t->declared_size : -1;
	c->data = t ? t->data.data : NULL;
	c->len = t ? t->data.len : 0;
	c->header_bytes = t ? t->header_bytes : 0;
	c->pool = t ? t->env->pool : NULL;
}

static void reply_verdict(struct sess *x, const struct verdict *v)
{
	switch (v->kind) {
	case V_TEMPFAIL:
	case V_REJECT:
		if (x->st->ledger) {
			const struct env_client *c = x->ctx.client;
			ledger_rejected(x->st->ledger, x->ctx.env ? x->ctx.env->sender : NULL, c ? c->login : NULL);
		}
		if (x->st->m_rejects) {
			char l[160];
			snprintf(l, sizeof(l), "check=\"%s\",code=\"%d\"", v->check ? v->check : "", v->code);
			metric_inc(x->st->m_rejects, l);
		}
		smtp_session_reply(x->s, v->code, v->enh, v->reason);
		break;
	default:
		smtp_session_reply(x->s, 0, NULL, NULL);
	}
}

/* A value for a header: control characters (an XCLIENT NAME of "a+0Db")
 * must not start a header line of their own. */
static const char *header_safe(char *out, size_t outlen, const char *in)
{
	size_t i = 0;
	for (; in && in[i] && i + 1 < outlen; i++) {
		unsigned char c = (unsigned char)in[i];
		out[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
	}
	out[i] = '\0';
	return out;
}

/* The Received header and the correlation id, then the message. */
static char *build_outgoing(struct sess *x, size_t *len)
{
	struct smtp_txn *t = smtp_session_txn(x->s);
	const struct env_client *conn = smtp_session_client(x->s);
	struct buf b = BUF_INIT;
	char date[64];
	time_t now = time(NULL);
	struct tm tm;
	localtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
	/* Correlation id: kept from a previous stage, else this queue id.
	 * Only a previous stage's id is believed; from the Internet it is
	 * just another header. */
	const char *cid = NULL;
	const char *hdr = t->data.data;
	size_t hlen = t->header_bytes;
	char cidbuf[64] = "";
	struct hdr_field f;
	for (size_t pos = 0; hdr && smtp_session_trusted(x->s) && hdr_next(hdr, hlen, &pos, &f); ) {
		if (!hdr_is(&f, "X-Rampart-Id"))
			continue;
		size_t j = 0, k = 0;
		while (j < f.value_len && f.value[j] == ' ')
			j++;
		while (j < f.value_len && k < sizeof(cidbuf) - 1 && !strchr(" \t\r\n", f.value[j]))
			cidbuf[k++] = f.value[j++];
		cidbuf[k] = '\0';
		if (k)
			cid = cidbuf;
		break;
	}
	t->env->correlation_id = pool_strdup(t->env->pool, cid ? cid : t->qid);
	/* Received describes this hop: the connected client (XFORWARD's
	 * original client is in the previous stage's header and the logs). */
	char h1[300], h2[300], h3[80];
	const char *login = smtp_session_login(x->s);
	if (x->gen->sc->received_hide_client)
		buf_puts(&b, "Received:");      /* RFC 5322 3.6.7: the from clause is not required */
	else
		buf_printf(&b, "Received: from %s (%s [%s])", header_safe(h1, sizeof(h1), *conn->helo ? conn->helo : "unknown"),
			   header_safe(h2, sizeof(h2), conn->name), header_safe(h3, sizeof(h3), conn->addr));
	if (login)
		buf_printf(&b, "\r\n\t(Authenticated sender: %s)", header_safe(h1, sizeof(h1), login));
	buf_printf(&b, "\r\n\tby %s (Rampart) with %s id %s", x->gen->sc->hostname, smtp_session_proto(x->s), t->qid);
	if (smtp_session_tls(x->s) && *smtp_session_tls_info(x->s))
		buf_printf(&b, "\r\n\t(%s)", smtp_session_tls_info(x->s));
	if (t->env->nrcpt == 1)
		buf_printf(&b, "\r\n\tfor <%s>", t->env->rcpts[0].addr);
	buf_printf(&b, "; %s\r\n", date);
	if (!cid)
		buf_printf(&b, "X-Rampart-Id: %s\r\n", t->qid);
	for (size_t i = 0; i < x->ctx.nadd; i++)
		buf_printf(&b, "%s: %s\r\n", x->ctx.add[i].name, x->ctx.add[i].value);
	if (!x->ctx.ndel) {
		buf_append(&b, t->data.data, t->data.len);
		return buf_steal(&b, len);
	}
	/* The fields the checks removed are left out. */
	unsigned *seen = xcalloc(x->ctx.ndel, sizeof(*seen));   /* fields so far named as del[i] */
	size_t pos = 0, kept = 0;
	while (hdr_next(hdr, hlen, &pos, &f)) {
		bool drop = false;
		for (size_t i = 0; i < x->ctx.ndel; i++)
			if (hdr_is(&f, x->ctx.del[i].name) && ++seen[i] == x->ctx.del[i].index)
				drop = true;
		if (drop) {
			buf_append(&b, hdr + kept, f.off - kept);
			kept = f.off + f.len;
		}
	}
	free(seen);
	buf_append(&b, t->data.data + kept, t->data.len - kept);
	return buf_steal(&b, len);
}

/* -- queue mode -- */

/* The spool took the message (ok) or could not: the client's answer.
 * A quarantined message gets the same 250 as any other. */
static void spooled(struct sess *x, bool ok, const char *qid, bool quarantined)
{
	struct smtp_txn *t = smtp_session_txn(x->s);
	if (ok) {
		if (x->st->m_messages)
			metric_inc(x->st->m_messages, quarantined ? "result=\"quarantined\"" : "result=\"queued\"");
		if (quarantined) {
			log_info(smtp_session_id(x->s), qid, "message.quarantined", "from=%s nrcpt=%zu size=%zu reason=%s",
				 t ? t->env->sender : "", t ? t->env->nrcpt : 0, x->out_len, x->quarantine ? x->quarantine : "");
		} else {
			if (t && x->st->ledger)
				ledger_accepted(x->st->ledger, t->env->sender, t->env->client.login, t->env->nrcpt, x->out_len);
			if (t && x->st->def->accepted && x->gen->state)
				x->st->def->accepted(x->gen->state, t->env, x->out_len);
			log_info(smtp_session_id(x->s), qid, "message.queued", "from=%s nrcpt=%zu size=%zu correlation=%s",
				 t ? t->env->sender : "", t ? t->env->nrcpt : 0, x->out_len,
				 t ? t->env->correlation_id : "");
		}
		char text[128];
		snprintf(text, sizeof(text), "Ok: queued as %s", qid);
		if (!smtp_session_closed(x->s))
			smtp_session_reply(x->s, 250, "2.0.0", text);
	} else {
		if (x->st->m_messages)
			metric_inc(x->st->m_messages, "result=\"queue_error\"");
		if (!smtp_session_closed(x->s))
			smtp_session_reply(x->s, 451, "4.3.0", "Temporary failure: cannot queue the message, try again later");
	}
	free(x->out_data);
	x->out_data = NULL;
	smtp_session_unref(x->s);
}

static void queued(void *arg, bool ok, const char *qid)
{
	spooled(arg, ok, qid, false);
}

/* -- proxy mode -- */

/* A next hop's refusal is passed on as it is (it means something: unknown
 * user, mailbox full ...), except a 421: that closes the next hop's
 * connection, not the client's, and says nothing the client needs. */
static void proxy_fail_reply(struct sess *x, const struct smtp_reply *r)
{
	if (r->code == 421) {
		smtp_session_reply(x->s, 451, "4.4.1", "Next hop unavailable, try again later");
		return;
	}
	smtp_session_reply(x->s, r->code, r->enh, r->text);
}

static void proxy_rcpt_done(void *arg, const struct smtp_reply *r)
{
	struct sess *x = arg;
	struct smtp_txn *t = smtp_session_txn(x->s);
	if (!smtp_session_closed(x->s) && t) {
		if (r->code >= 200 && r->code < 300) {
			x->proxied_rcpts++;
			x->rcpt_ok[t->env->nrcpt - 1] = true;
			smtp_session_reply(x->s, 0, NULL, NULL);
		} else {
			proxy_fail_reply(x, r);
		}
	}
	smtp_session_unref(x->s);
}

static void proxy_send_rcpt(struct sess *x)
{
	struct smtp_txn *t = smtp_session_txn(x->s);
	if (t->env->nrcpt > x->rcpt_ok_cap) {
		size_t old = x->rcpt_ok_cap;
		x->rcpt_ok_cap = t->env->nrcpt * 2;
		x->rcpt_ok = xrealloc(x->rcpt_ok, x->rcpt_ok_cap * sizeof(bool));
		memset(x->rcpt_ok + old, 0, (x->rcpt_ok_cap - old) * sizeof(bool));
	}
	x->rcpt_ok[t->env->nrcpt - 1] = false;
	smtp_client_rcpt(x->client, t->env->rcpts[t->env->nrcpt - 1].addr, proxy_rcpt_done, x);
}

static void proxy_mail_done(void *arg, const struct smtp_reply *r)
{
	struct sess *x = arg;
	/* A MAIL refusal shows up in the RCPT replies that follow (they get
	 * 503 from the next hop); log it here. */
	if (r->code >= 300)
		log_warn(smtp_session_id(x->s), NULL, "proxy.mail_refused", "code=%d text=%s", r->code, r->text);
}

static void proxy_ready(void *arg, struct smtp_client *c, const struct smtp_reply *err)
{
	struct sess *x = arg;
	struct smtp_txn *t = smtp_session_txn(x->s);
	if (!c) {
		x->client_failed = true;
		log_warn(smtp_session_id(x->s), t ? t->qid : NULL, "proxy.next_hop_unavailable", "code=%d reason=%s",
			 err->code, err->text);
		if (!smtp_session_closed(x->s))
			smtp_session_reply(x->s, 451, "4.4.1", "Next hop unavailable, try again later");
		smtp_session_unref(x->s);
		return;
	}
	if (smtp_session_closed(x->s) || !t) {
		smtp_client_quit(c);
		smtp_session_unref(x->s);
		return;
	}
	x->client = c;
	x->client_in_txn = true;
	smtp_client_mail(c, t->env, t->declared_size > 0 ? (size_t)t->declared_size : 0, proxy_mail_done, x);
	proxy_send_rcpt(x);   /* keeps the session reference */
}

/* Client options from one generation of the configuration: its
 * parameters and its stage state (AUTH, TLS policy) together. */
static struct smtp_client_opts client_opts(struct stage *st, const struct generation *gen, const char *sid,
					   const char *domain)
{
	const struct server_config *sc = gen->sc;
	struct smtp_client_opts o = { 0 };
	o.hops = &sc->next_hops;
	o.lmtp = sc->next_protocol == NEXT_LMTP;
	o.helo_name = sc->hostname;
	o.tls = sc->next_tls ? st->client_tls : NULL;
	o.xforward = sc->next_xforward;
	o.connect_timeout_ms = 10000;
	o.command_timeout_ms = 300000;
	o.data_timeout_ms = 600000;
	o.log_sid = sid;
	o.set = &st->clients;
	if (domain && *domain && sc->local_next_hops.n && strlist_contains(&sc->local_domains, domain))
		o.lmtp = sc->local_next_protocol == NEXT_LMTP;
	if (st->def->client_opts && gen->state)
		st->def->client_opts(gen->state, domain ? domain : "", &o);
	return o;
}

static void proxy_rcpt(struct sess *x)
{
	smtp_session_ref(x->s);
	if (x->client && !x->client_in_txn && !smtp_client_reusable(x->client)) {
		smtp_client_quit(x->client);    /* closed by the next hop while idle: a new one */
		x->client = NULL;
	}
	if (x->client && !x->client_in_txn) {
		/* the connection of the session's previous message */
		struct smtp_txn *t = smtp_session_txn(x->s);
		smtp_client_set_log_id(x->client, smtp_session_id(x->s));
		x->client_in_txn = true;
		smtp_client_mail(x->client, t->env, t->declared_size > 0 ? (size_t)t->declared_size : 0, proxy_mail_done, x);
	}
	if (x->client) {
		proxy_send_rcpt(x);
		return;
	}
	if (x->client_failed) {
		smtp_session_reply(x->s, 451, "4.4.1", "Next hop unavailable, try again later");
		smtp_session_unref(x->s);
		return;
	}
	struct smtp_client_opts o = client_opts(x->st, x->gen, smtp_session_id(x->s), NULL);
	smtp_client_connect(x->st->base, &o, proxy_ready, x);
}

static void proxy_data_done(void *arg, const struct smtp_reply *r, size_t n)
{
	struct sess *x = arg;
	struct smtp_txn *t = smtp_session_txn(x->s);
	if (smtp_session_closed(x->s) || !t) {
		smtp_session_unref(x->s);
		return;
	}
	const char *sid = smtp_session_id(x->s);
	if (smtp_session_lmtp(x->s) || n <= 1) {
		/* SMTP next hop (one reply), or we are LMTP too: pass through. */
		if (smtp_session_lmtp(x->s)) {
			struct smtp_reply_line *rl = xcalloc(t->env->nrcpt, sizeof(*rl));
			for (size_t i = 0, k = 0; i < t->env->nrcpt; i++) {
				const struct smtp_reply *src = x->rcpt_ok[i] && k < n ? &r[k++] : &r[0];
				rl[i].code = src->code;
				snprintf(rl[i].enh, sizeof(rl[i].enh), "%s", src->enh);
				snprintf(rl[i].text, sizeof(rl[i].text), "%s", src->text);
			}
			smtp_session_replies(x->s, rl, t->env->nrcpt);
			free(rl);
		} else {
			log_info(sid, t->qid, "proxy.relayed", "code=%d next=%s text=%s", r[0].code,
				 x->client ? smtp_client_peer(x->client) : "", r[0].text);
			if (x->st->m_messages)
				metric_inc(x->st->m_messages, r[0].code < 300 ? "result=\"relayed\"" : "result=\"next_hop_refused\"");
			proxy_fail_reply(x, &r[0]);
		}
		smtp_session_unref(x->s);
		return;
	}
	/* LMTP next hop, SMTP client: one reply per recipient must become one.
	 * All alike: pass it on.  Mixed: the accepted ones are delivered, so
	 * the others are queued here for retry (never lost, never doubled). */
	size_t okn = 0;
	for (size_t i = 0; i < n; i++)
		if (r[i].code >= 200 && r[i].code < 300)
			okn++;
	if (okn == 0 || okn == n) {
		if (x->st->m_messages)
			metric_inc(x->st->m_messages, okn ? "result=\"relayed\"" : "result=\"next_hop_refused\"");
		/* None accepted: any temporary failure makes the whole answer
		 * temporary, so no recipient is failed for good by mistake. */
		const struct smtp_reply *pick = &r[0];
		for (size_t i = 0; i < n && !okn; i++)
			if (r[i].code >= 400 && r[i].code < 500) {
				pick = &r[i];
				break;
			}
		proxy_fail_reply(x, pick);
		smtp_session_unref(x->s);
		return;
	}
	struct envelope *rest = envelope_new();
	rest->sender = pool_strdup(rest->pool, t->env->sender);
	rest->body_8bit = t->env->body_8bit;
	rest->smtputf8 = t->env->smtputf8;
	rest->client = t->env->client;
	rest->correlation_id = t->env->correlation_id;
	for (size_t i = 0, k = 0; i < t->env->nrcpt; i++) {
		if (!x->rcpt_ok[i])
			continue;
		const struct smtp_reply *ri = &r[k++];
		if (ri->code >= 200 && ri->code < 300)
			continue;
		struct env_rcpt *nr = envelope_add_rcpt(rest, t->env->rcpts[i].addr);
		nr->last_code = ri->code;
		log_info(sid, t->qid, "proxy.partial_queued", "rcpt=%s code=%d text=%s", nr->addr, ri->code, ri->text);
	}
	if (!x->st->queue) {
		envelope_free(rest);
		smtp_session_reply(x->s, 451, "4.3.0", "Partial delivery and no queue to finish it");
		smtp_session_unref(x->s);
		return;
	}
	queue_submit(x->st->queue, rest, x->out_data, x->out_len, queued, x);  /* queued() unrefs */
	envelope_free(rest);
}

static void proxy_message(struct sess *x)
{
	smtp_session_ref(x->s);
	if (!x->client || x->proxied_rcpts == 0) {
		smtp_session_reply(x->s, 451, "4.4.1", "Next hop unavailable, try again later");
		smtp_session_unref(x->s);
		return;
	}
	smtp_client_data(x->client, x->out_data, x->out_len, proxy_data_done, x);
}

/* -- local delivery (store) -- */

static void deliver_local(struct sess *x)
{
	struct smtp_txn *t = smtp_session_txn(x->s);
	size_t n = t->env->nrcpt;
	struct stage_delivery d = { 0 };
	d.sid = smtp_session_id(x->s);
	d.qid = t->qid;
	d.env = t->env;
	d.data = x->out_data;
	d.len = x->out_len;
	d.codes = xcalloc(n, sizeof(int));
	d.texts = xcalloc(n, sizeof(*d.texts));
	x->st->def->deliver(x->gen->state, &d);
	struct smtp_reply_line *rl = xcalloc(n, sizeof(*rl));
	for (size_t i = 0; i < n; i++) {
		rl[i].code = d.codes[i] ? d.codes[i] : 451;
		const char *txt = d.texts[i][0] ? d.texts[i] : "4.3.0 delivery not attempted";
		/* "x.y.z text" -> enh + text */
		const char *sp = strchr(txt, ' ');
		if (sp && sp - txt < (long)sizeof(rl[i].enh) && txt[1] == '.') {
			snprintf(rl[i].enh, sizeof(rl[i].enh), "%.*s", (int)(sp - txt), txt);
			snprintf(rl[i].text, sizeof(rl[i].text), "%s", sp + 1);
		} else {
			snprintf(rl[i].text, sizeof(rl[i].text), "%s", txt);
		}
		if (x->st->m_deliveries)
			metric_inc(x->st->m_deliveries, rl[i].code < 300 ? "result=\"delivered\"" :
				   rl[i].code < 500 ? "result=\"deferred\"" : "result=\"failed\"");
	}
	free(d.codes);
	free(d.texts);
	free(x->out_data);
	x->out_data = NULL;
	if (smtp_session_lmtp(x->s)) {
		smtp_session_replies(x->s, rl, n);
	} else {
		/* SMTP in front of a local delivery: all alike or tempfail. */
		int code = rl[0].code;
		for (size_t i = 1; i < n; i++)
			if (rl[i].code != code)
				code = 451;
		if (code == rl[0].code)
			smtp_session_reply(x->s, code, rl[0].enh, rl[0].text);
		else
			smtp_session_reply(x->s, 451, "4.3.0", "Partial local delivery failure");
	}
	free(rl);
}

/* -- the message is complete: hand it on -- */

static void quarantined(void *arg, bool ok, const char *qid)
{
	spooled(arg, ok, qid, true);
}

/* The message, complete and prepared (signed), goes on: to the spool's
 * quarantine/ when a check quarantined it (queue and proxy mode alike,
 * durably before the 250; a release sends it on as it is), else to the
 * store, the next hop or the queue.  A delivering stage (the store) has
 * no spool: it delivers a quarantined message marked with an
 * X-Rampart-Quarantine header, and says so in the log. */
static void message_ready(struct sess *x)
{
	struct smtp_session *s = x->s;
	if (x->quarantine && x->st->queue) {
		struct smtp_txn *t = smtp_session_txn(s);
		smtp_session_ref(s);
		queue_quarantine(x->st->queue, t->env, x->out_data, x->out_len, x->quarantine, quarantined, x);
		return;
	}
	if (x->quarantine) {
		log_warn(smtp_session_id(s), smtp_session_txn(s)->qid, "message.quarantine_marked", "reason=%s",
			 x->quarantine);
		char h[300];
		struct buf b = BUF_INIT;
		buf_printf(&b, "X-Rampart-Quarantine: %s\r\n", header_safe(h, sizeof(h), x->quarantine));
		buf_append(&b, x->out_data, x->out_len);
		free(x->out_data);
		x->out_data = buf_steal(&b, &x->out_len);
	}
	if (x->st->def->deliver) {
		deliver_local(x);
	} else if (x->gen->sc->mode == MODE_PROXY) {
		proxy_message(x);
	} else {
		struct smtp_txn *t = smtp_session_txn(s);
		smtp_session_ref(s);
		queue_submit(x->st->queue, t->env, x->out_data, x->out_len, queued, x);
	}
}

static void prepared(void *arg, bool ok, struct buf *add, const char *why)
{
	struct sess *x = arg;
	struct smtp_session *s = x->s;
	struct smtp_txn *t = smtp_session_txn(s);
	if (smtp_session_closed(s) || !t) {
		smtp_session_unref(s);
		return;
	}
	if (!ok) {
		log_error(smtp_session_id(s), t->qid, "message.prepare_failed", "error=%s", why ? why : "");
		smtp_session_reply(s, 451, "4.3.0", "Temporary local problem, try again later");
	} else {
		if (add && add->len) {
			struct buf b = BUF_INIT;
			buf_append(&b, add->data, add->len);
			buf_append(&b, x->out_data, x->out_len);
			free(x->out_data);
			x->out_data = buf_steal(&b, &x->out_len);
		}
		message_ready(x);
	}
	smtp_session_unref(s);
}

/* -- chain results -- */

static void after_chain(void *arg, const struct verdict *v)
{
	struct sess *x = arg;
	struct smtp_session *s = x->s;
	if (smtp_session_closed(s)) {
		smtp_session_unref(s);
		return;
	}
	if (v->kind == V_TEMPFAIL || v->kind == V_REJECT) {
		if (x->kind == SMTP_HOOK_MESSAGE && smtp_session_lmtp(s)) {
			struct smtp_txn *t = smtp_session_txn(s);
			struct smtp_reply_line *rl = xcalloc(t->env->nrcpt, sizeof(*rl));
			for (size_t i = 0; i < t->env->nrcpt; i++) {
				rl[i].code = v->code;
				snprintf(rl[i].enh, sizeof(rl[i].enh), "%s", v->enh);
				snprintf(rl[i].text, sizeof(rl[i].text), "%s", v->reason);
			}
			smtp_session_replies(s, rl, t->env->nrcpt);
			free(rl);
		} else {
			reply_verdict(x, v);
		}
		smtp_session_unref(s);
		return;
	}
	if (v->kind == V_DISCARD && x->kind == SMTP_HOOK_MESSAGE) {
		struct smtp_txn *t = smtp_session_txn(s);
		log_info(smtp_session_id(s), t->qid, "message.discarded", "reason=%s", v->reason);
		smtp_session_reply(s, 250, "2.0.0", "Ok");
		smtp_session_unref(s);
		return;
	}
	if (v->kind == V_QUARANTINE && !x->quarantine) {
		/* before the end of the message: the transaction goes on and
		 * its message is quarantined when complete */
		struct smtp_txn *t = smtp_session_txn(s);
		x->quarantine = xasprintf("check %s: %s", v->check ? v->check : "", v->reason);
		if (x->kind != SMTP_HOOK_MESSAGE)
			log_info(smtp_session_id(s), t ? t->qid : NULL, "message.quarantine_pending", "reason=%s",
				 x->quarantine);
	}
	const struct server_config *sc = x->gen->sc;
	switch (x->kind) {
	case SMTP_HOOK_RCPT:
		if (!x->st->def->deliver && sc->mode == MODE_PROXY) {
			proxy_rcpt(x);
			break;
		}
		smtp_session_reply(s, 0, NULL, NULL);
		break;
	case SMTP_HOOK_MESSAGE: {
		x->out_data = build_outgoing(x, &x->out_len);
		if (x->st->def->prepare) {
			/* The stage's last look (DKIM signing) may run on another
			 * thread; the session waits, referenced. */
			smtp_session_ref(s);
			struct smtp_txn *t = smtp_session_txn(s);
			x->st->def->prepare(x->gen->state, t->env, x->out_data, x->out_len, prepared, x);
			break;
		}
		message_ready(x);
		break;
	}
	default:
		smtp_session_reply(s, 0, NULL, NULL);
	}
	smtp_session_unref(s);
}

static const enum check_phase phase_of[] = {
	[SMTP_HOOK_CONNECT] = PHASE_CONNECT, [SMTP_HOOK_HELO] = PHASE_HELO, [SMTP_HOOK_MAIL] = PHASE_MAIL,
	[SMTP_HOOK_RCPT] = PHASE_RCPT, [SMTP_HOOK_DATA] = PHASE_DATA, [SMTP_HOOK_MESSAGE] = PHASE_MESSAGE,
};

/* Over SMTP the header checks run at the end of the message, then the
 * message checks unless a header check decided. */
static void after_headers(void *arg, const struct verdict *v)
{
	struct sess *x = arg;
	if (v->kind != V_CONTINUE || smtp_session_closed(x->s)) {
		after_chain(x, v);
		return;
	}
	chain_run(x->gen->chain, PHASE_MESSAGE, &x->ctx, after_chain, x);
}

/* An AUTH check in flight holds the session and the configuration
 * generation it began with (a reload does not free its accounts). */
struct auth_call {
	struct stage *st;
	struct generation *gen;
	struct smtp_session *s;
};

static void authenticated(void *arg, int code, const char *enh, const char *text)
{
	struct auth_call *c = arg;
	if (code == 0)          /* the stage's "accepted" is the engine's explicit 2xx */
		smtp_session_reply(c->s, 235, "2.7.0", "Authentication successful");
	else
		smtp_session_reply(c->s, code, enh, text);
	smtp_session_unref(c->s);
	gen_unref(c->st, c->gen);
	free(c);
}

static void on_hook(void *arg, struct smtp_session *s, enum smtp_hook_kind kind)
{
	struct stage *st = arg;
	if (kind == SMTP_HOOK_AUTH) {
		if (!st->def->authenticate) {
			smtp_session_reply(s, 454, "4.7.0", "Temporary authentication failure");
			return;
		}
		struct auth_call *c = xcalloc(1, sizeof(*c));
		c->st = st;
		c->gen = st->gen;
		c->gen->refs++;
		c->s = s;
		smtp_session_ref(s);
		st->def->authenticate(c->gen->state, smtp_session_id(s), smtp_session_client(s)->addr,
				      smtp_session_auth_user(s), smtp_session_auth_password(s), authenticated, c);
		return;
	}
	struct sess *x = smtp_session_data(s);
	if (!x) {
		x = xcalloc(1, sizeof(*x));
		x->st = st;
		x->gen = st->gen;
		x->gen->refs++;
		x->s = s;
		smtp_session_set_data(s, x);
		if (st->m_sessions)
			metric_inc(st->m_sessions, NULL);
	}
	x->kind = kind;
	fill_ctx(x);
	if (kind == SMTP_HOOK_MAIL)
		check_ctx_clear_headers(&x->ctx);
	smtp_session_ref(s);
	if (kind == SMTP_HOOK_MESSAGE)
		chain_run(x->gen->chain, PHASE_HEADERS, &x->ctx, after_headers, x);
	else
		chain_run(x->gen->chain, phase_of[kind], &x->ctx, after_chain, x);
}

static void on_txn_end(void *arg, struct smtp_session *s)
{
	(void)arg;
	struct sess *x = smtp_session_data(s);
	if (!x)
		return;
	check_ctx_clear_headers(&x->ctx);
	free(x->out_data);
	x->out_data = NULL;
	free(x->quarantine);
	x->quarantine = NULL;
	x->proxied_rcpts = 0;
	/* A next-hop connection whose transaction ended is kept for the
	 * session's next message; an unfinished transaction is abandoned. */
	if (x->client && !smtp_client_reusable(x->client)) {
		smtp_client_quit(x->client);
		x->client = NULL;
	}
	x->client_in_txn = false;
	x->client_failed = false;
}

static void on_event(void *arg, struct smtp_session *s, const char *name)
{
	(void)s;
	struct stage *st = arg;
	char l[96];
	snprintf(l, sizeof(l), "event=\"%s\"", name);
	metric_inc(st->m_events, l);
}

static void on_session_end(void *arg, struct smtp_session *s)
{
	struct stage *st = arg;
	struct sess *x = smtp_session_data(s);
	if (!x)
		return;
	if (x->client && smtp_client_reusable(x->client))
		smtp_client_quit(x->client);
	else if (x->client)
		smtp_client_abort(x->client);
	check_ctx_clear_headers(&x->ctx);
	free(x->out_data);
	free(x->quarantine);
	free(x->rcpt_ok);
	gen_unref(st, x->gen);
	free(x);
}

/* ---- the queue's delivery agent ---------------------------------------- */

/* -- connections kept open between deliveries -- */

struct idle_conn {
	struct stage *st;
	struct generation *gen;     /* the configuration it was opened with */
	char *key;                  /* conn_key() of what it was opened with */
	struct smtp_client *c;
	struct event *timer;
	struct idle_conn *next;
};

static void idle_remove(struct stage *st, struct idle_conn *ic)
{
	for (struct idle_conn **pp = &st->idle; *pp; pp = &(*pp)->next)
		if (*pp == ic) {
			*pp = ic->next;
			break;
		}
	st->nidle--;
	event_free(ic->timer);
	gen_unref(st, ic->gen);
	free(ic->key);
	free(ic);
}

static void idle_expired(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct idle_conn *ic = arg;
	smtp_client_quit(ic->c);
	idle_remove(ic->st, ic);
}

static void hops_key(const struct strlist *hops, char *out, size_t n)
{
	out[0] = '\0';
	for (size_t i = 0; i < hops->n; i++)
		snprintf(out + strlen(out), n - strlen(out), "%s%s", i ? " " : "", hops->v[i]);
}

/* What a kept connection must have been opened with to serve again: the
 * hops, and everything about how it was set up (protocol, TLS context and
 * policy, the names its certificate was checked against, the AUTH user).
 * A connection opened under one domain's policy never serves a domain
 * with a stricter one, even when both have the same MX hosts. */
static char *conn_key(const struct smtp_client_opts *o)
{
	struct buf b = BUF_INIT;
	for (size_t i = 0; i < o->hops->n; i++)
		buf_printf(&b, "%s%s", i ? " " : "", o->hops->v[i]);
	buf_printf(&b, "|%s|%p|%d|%d|%s|%s|", o->lmtp ? "lmtp" : "smtp", (void *)o->tls, (int)o->tls_policy,
		   o->tls_on_connect, o->tls_verify_name ? o->tls_verify_name : "",
		   o->auth_user ? o->auth_user : "");
	for (size_t i = 0; o->tls_verify_names && i < o->tls_verify_names->n; i++)
		buf_printf(&b, "%s,", o->tls_verify_names->v[i]);
	char *key = xstrdup(buf_cstr(&b));
	buf_free(&b);
	return key;
}

static void idle_put(struct stage *st, struct generation *g, struct smtp_client *c, const char *key)
{
	long long ms = g->sc->next_idle_timeout;
	if (ms <= 0 || g != st->gen || st->drain_timer || !smtp_client_reusable(c) ||
	    st->nidle >= (size_t)g->sc->max_deliveries) {
		smtp_client_quit(c);
		return;
	}
	struct idle_conn *ic = xcalloc(1, sizeof(*ic));
	ic->st = st;
	ic->gen = g;
	g->refs++;
	ic->c = c;
	ic->key = xstrdup(key);
	ic->timer = evtimer_new(st->base, idle_expired, ic);
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	evtimer_add(ic->timer, &tv);
	ic->next = st->idle;
	st->idle = ic;
	st->nidle++;
}

static struct smtp_client *idle_get(struct stage *st, const char *key)
{
	for (struct idle_conn *ic = st->idle, *next; ic; ic = next) {
		next = ic->next;
		if (strcmp(ic->key, key) != 0)
			continue;
		struct smtp_client *c = ic->c;
		bool current = ic->gen == st->gen;
		idle_remove(st, ic);
		if (current && smtp_client_reusable(c))
			return c;
		smtp_client_quit(c);
	}
	return NULL;
}

static void idle_close_all(struct stage *st)
{
	while (st->idle) {
		smtp_client_quit(st->idle->c);
		idle_remove(st, st->idle);
	}
}

/* -- one delivery attempt of one queued message --
 *
 * The pending recipients are split into groups with one destination
 * each: the next hops (or smarthost) as a whole, or, when the stage
 * routes by domain, one group per recipient domain.  Groups are delivered
 * one after the other, each in one transaction; every recipient gets its
 * own result; then the queue is told. */

struct dgroup {
	size_t *rcpt;            /* envelope indexes */
	size_t n;
	char domain[256];        /* "" when not routed by domain */
};

struct delivery {
	struct stage *st;
	struct queue_item *it;
	struct generation *gen;
	const char *data;
	size_t len;
	struct dgroup *groups;
	size_t ngroups, cur;
	struct strlist hops;     /* of the current group (routed), else unused */
	bool routed;
	/* the current group's transaction */
	struct smtp_client *c;
	bool reused;             /* c came from the idle pool */
	bool stale;              /* ... and turned out to be closed: start over */
	size_t nsent, nreplied;
	bool *accepted;
	char *conn_key;          /* conn_key() of the current group's connection */
	struct dest *dest;       /* the current group's destination, while it counts there */
	struct delivery *wnext;  /* waiting for that destination */
};

static void dlv_ready(void *arg, struct smtp_client *c, const struct smtp_reply *err);
static void group_start(struct delivery *d);
static void group_route(struct delivery *d);

/* Free what the delivery holds, not the queue item. */
static void delivery_free(struct delivery *d)
{
	gen_unref(d->st, d->gen);
	for (size_t i = 0; i < d->ngroups; i++)
		free(d->groups[i].rcpt);
	free(d->groups);
	strlist_free(&d->hops);
	free(d->accepted);
	free(d->conn_key);
	free(d);
}

static void delivery_release(struct delivery *d)
{
	queue_item_done(d->st->queue, d->it);
	delivery_free(d);
}

/* -- per-destination concurrency --
 *
 * At most destination_concurrency groups are delivered to one destination
 * (the recipient domain when the stage routes by domain, else the next
 * hops as a whole) at once.  A message whose first group finds its
 * destination full is parked (queue_item_park: its delivery slot goes to
 * mail for other destinations, nothing is recorded, no attempt counted)
 * and made due again when a group to that destination ends.  A message
 * part-way through its groups waits instead, keeping its slot.  The tick
 * re-checks every destination, so nothing stays parked by mistake. */

#define DEST_BUCKETS 1024

struct parked {
	struct queue_item *it;
	struct parked *next;
};

struct dest {
	struct dest *next;                      /* hash chain */
	struct stage *st;
	unsigned active;                        /* groups being delivered */
	struct delivery *wait_head, *wait_tail; /* part-way messages, slots kept */
	struct parked *park_head, *park_tail;   /* parked messages */
	bool waking;                            /* dest_wake() scheduled or running */
	char key[300];
};

static unsigned dest_hash(const char *k)
{
	unsigned h = 2166136261u;
	for (; *k; k++)
		h = (h ^ (unsigned char)*k) * 16777619u;
	return h % DEST_BUCKETS;
}

static struct dest *dest_get(struct stage *st, const char *key)
{
	if (!st->dests)
		st->dests = xcalloc(DEST_BUCKETS, sizeof(*st->dests));
	struct dest **b = &st->dests[dest_hash(key)];
	for (struct dest *x = *b; x; x = x->next)
		if (strcmp(x->key, key) == 0)
			return x;
	struct dest *x = xcalloc(1, sizeof(*x));
	x->st = st;
	snprintf(x->key, sizeof(x->key), "%s", key);
	x->next = *b;
	*b = x;
	return x;
}

/* Forget a destination nothing refers to any more. */
static void dest_maybe_free(struct dest *x)
{
	if (x->active || x->wait_head || x->park_head || x->waking)
		return;
	struct dest **pp = &x->st->dests[dest_hash(x->key)];
	while (*pp && *pp != x)
		pp = &(*pp)->next;
	if (*pp)
		*pp = x->next;
	free(x);
}

static unsigned dest_limit(const struct stage *st)
{
	return (unsigned)st->gen->sc->destination_concurrency;
}

static void dest_wake_cb(evutil_socket_t fd, short what, void *arg);

static void dest_schedule_wake(struct dest *x)
{
	static const struct timeval now = { 0, 0 };
	if (x->waking)
		return;
	x->waking = true;
	if (event_base_once(x->st->base, -1, EV_TIMEOUT, dest_wake_cb, x, &now) < 0)
		log_fatal(NULL, NULL, "stage.event_failed", "what=%s", "event_base_once");
}

/* Room at a destination: waiting messages first (they hold slots), then
 * as many parked ones as there is room for are made due. */
static void dest_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct dest *x = arg;
	struct stage *st = x->st;
	unsigned limit = dest_limit(st);
	while (x->wait_head && x->active < limit) {
		struct delivery *d = x->wait_head;
		x->wait_head = d->wnext;
		if (!x->wait_head)
			x->wait_tail = NULL;
		d->wnext = NULL;
		x->active++;
		d->dest = x;
		group_route(d);         /* x stays: waking is still set */
	}
	for (unsigned room = limit > x->active ? limit - x->active : 0; x->park_head && room; room--) {
		struct parked *p = x->park_head;
		x->park_head = p->next;
		if (!x->park_head)
			x->park_tail = NULL;
		if (st->queue)
			queue_item_unpark(st->queue, p->it);
		free(p);
	}
	x->waking = false;
	if (x->wait_head && x->active < limit)
		dest_schedule_wake(x);
	dest_maybe_free(x);
}

/* The current group ends: its place at the destination is free. */
static void dest_release(struct delivery *d)
{
	struct dest *x = d->dest;
	if (!x)
		return;
	d->dest = NULL;
	x->active--;
	if (x->wait_head || x->park_head)
		dest_schedule_wake(x);
	else
		dest_maybe_free(x);
}

/* The tick: every destination with room and someone waiting is woken. */
static void dest_tick(struct stage *st)
{
	if (!st->dests || !st->gen)
		return;
	for (size_t b = 0; b < DEST_BUCKETS; b++)
		for (struct dest *x = st->dests[b]; x; x = x->next)
			if ((x->wait_head || x->park_head) && x->active < dest_limit(st))
				dest_schedule_wake(x);
}

/* At exit, after queue_close(): parked items are the queue's (gone);
 * waiting deliveries were abandoned by it. */
static void dest_free_all(struct stage *st)
{
	if (!st->dests)
		return;
	for (size_t b = 0; b < DEST_BUCKETS; b++)
		while (st->dests[b]) {
			struct dest *x = st->dests[b];
			st->dests[b] = x->next;
			while (x->park_head) {
				struct parked *p = x->park_head;
				x->park_head = p->next;
				free(p);
			}
			while (x->wait_head) {
				struct delivery *d = x->wait_head;
				x->wait_head = d->wnext;
				delivery_free(d);
			}
			free(x);
		}
	free(st->dests);
	st->dests = NULL;
}

/* -- the maximum lifetime -- */

static long long wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Past queue_lifetime, every recipient still pending fails with 5.4.7 here
 * (so the sender is told below), before the queue would expire it on its
 * own.  Checked before an attempt and again after it, on the same clock
 * as the queue's schedule.  Returns true if the message has expired. */
static bool expire_pending(struct delivery *d)
{
	struct envelope *e = queue_item_envelope(d->it);
	long long age_ms = wall_ms() - (long long)e->arrival * 1000;
	if (age_ms < d->gen->sc->queue_lifetime)
		return false;
	for (size_t k = 0; k < d->ngroups; k++)
		for (size_t i = 0; i < d->groups[k].n; i++) {
			struct env_rcpt *r = &e->rcpts[d->groups[k].rcpt[i]];
			if (r->state != RCPT_PENDING)
				continue;
			char text[600];
			snprintf(text, sizeof(text), "554 5.4.7 Delivery time expired (last attempt: %s)",
				 r->last_reply ? r->last_reply : "none");
			queue_item_result(d->it, d->groups[k].rcpt[i], 554, text);
		}
	log_warn(NULL, queue_item_id(d->it), "delivery.expired", "age_s=%lld", age_ms / 1000);
	return true;
}

/* -- telling the sender: failed recipients, and delays -- */

/* Queue a report to the sender of d's message, with the null sender (a
 * report is never answered by another); cb gets the outcome. */
static void submit_report(struct delivery *d, const char *to, const struct buf *report, queue_submit_cb cb)
{
	struct envelope *e = queue_item_envelope(d->it);
	struct envelope *de = envelope_new();
	de->sender = pool_strdup(de->pool, "");
	de->body_8bit = dsn_is_8bit(report->data, report->len);
	de->smtputf8 = e->smtputf8;
	de->client.addr = pool_strdup(de->pool, "127.0.0.1");
	de->client.name = pool_strdup(de->pool, "localhost");
	de->client.proto = pool_strdup(de->pool, "DSN");
	envelope_add_rcpt(de, to);
	de->rcpts[0].notify = DSN_NOTIFY_NEVER;
	queue_submit(d->st->queue, de, report->data, report->len, cb, d);
	envelope_free(de);
}

static void dsn_queued(void *arg, bool ok, const char *qid)
{
	struct delivery *d = arg;
	struct envelope *e = queue_item_envelope(d->it);
	for (size_t i = 0; i < e->nrcpt; i++) {
		if (e->rcpts[i].state != RCPT_FAILED)
			continue;
		if (ok)
			queue_item_bounced(d->it, i);
	}
	if (ok)
		log_info(NULL, queue_item_id(d->it), "dsn.queued", "dsn_queue_id=%s to=%s", qid,
			 e->sender[0] ? e->sender : d->gen->sc->double_bounce_recipient);
	else
		log_error(NULL, queue_item_id(d->it), "dsn.queue_failed", "reason=%s",
			  "the report could not be queued; the message stays in failed/");
	delivery_release(d);
}

/* Recipients that failed for good get one report to the sender, queued
 * durably like any message before the original lets go of them. */
static void failure_reports(struct delivery *d)
{
	struct envelope *e = queue_item_envelope(d->it);
	size_t *failed = xcalloc(e->nrcpt ? e->nrcpt : 1, sizeof(size_t));
	size_t nf = 0;
	for (size_t i = 0; i < e->nrcpt; i++)
		if (e->rcpts[i].state == RCPT_FAILED)
			failed[nf++] = i;
	if (!nf || !d->gen->sc->dsn) {
		free(failed);
		delivery_release(d);
		return;
	}
	struct dsn_input in = { 0 };
	in.kind = DSN_FAILED;
	in.reporting_mta = d->gen->sc->hostname;
	in.env = e;
	in.rcpts = failed;
	in.nrcpts = nf;
	in.message = d->data;
	in.len = d->len;
	in.now = time(NULL);
	/* A bounce that fails is never bounced to its null sender: reported
	 * to the postmaster when the site says where, else logged.  Reports
	 * made here (proto DSN) never get one: no loop when the postmaster's
	 * own address fails. */
	const char *to = e->sender;
	bool ours = e->client.proto && strcmp(e->client.proto, "DSN") == 0;
	if (!e->sender[0] && *d->gen->sc->double_bounce_recipient && !ours)
		to = in.to = d->gen->sc->double_bounce_recipient;
	struct buf report = BUF_INIT;
	char why[256] = "";
	bool built = dsn_build(&in, &report, why, sizeof(why));
	free(failed);
	if (!built) {
		/* No report is due (null sender: never bounce a bounce; NOTIFY). */
		log_info(NULL, queue_item_id(d->it), "dsn.not_sent", "reason=%s sender=%s", why, e->sender);
		for (size_t i = 0; i < e->nrcpt; i++)
			queue_item_bounced(d->it, i);
		buf_free(&report);
		delivery_release(d);
		return;
	}
	submit_report(d, to, &report, dsn_queued);
	buf_free(&report);
}

static void delay_dsn_queued(void *arg, bool ok, const char *qid)
{
	struct delivery *d = arg;
	struct envelope *e = queue_item_envelope(d->it);
	if (ok) {
		queue_item_set_warned(d->it);
		log_info(NULL, queue_item_id(d->it), "dsn.delay_queued", "dsn_queue_id=%s to=%s", qid, e->sender);
	} else {
		log_error(NULL, queue_item_id(d->it), "dsn.queue_failed", "reason=%s",
			  "the delay warning could not be queued; tried again after the next attempt");
	}
	failure_reports(d);
}

/* Still undelivered after delay_warning: the sender is told once (RFC
 * 3464 "delayed", with the time the queue gives up), for the recipients
 * still pending that did not decline it.  True if a warning is on its
 * way (delay_dsn_queued goes on from there). */
static bool delay_warning(struct delivery *d)
{
	const struct server_config *sc = d->gen->sc;
	struct envelope *e = queue_item_envelope(d->it);
	if (!sc->dsn || sc->delay_warning <= 0 || queue_item_warned(d->it) || !e->sender[0])
		return false;
	long long age_ms = wall_ms() - (long long)e->arrival * 1000;
	if (age_ms < sc->delay_warning)
		return false;
	size_t *pending = xcalloc(e->nrcpt ? e->nrcpt : 1, sizeof(size_t));
	size_t np = 0;
	for (size_t i = 0; i < e->nrcpt; i++)
		if (e->rcpts[i].state == RCPT_PENDING)
			pending[np++] = i;
	if (!np) {
		free(pending);
		return false;
	}
	struct dsn_input in = { 0 };
	in.kind = DSN_DELAYED;
	in.reporting_mta = sc->hostname;
	in.env = e;
	in.rcpts = pending;
	in.nrcpts = np;
	in.message = d->data;
	in.len = d->len;
	in.now = time(NULL);
	in.retry_until = e->arrival + (time_t)(sc->queue_lifetime / 1000);
	struct buf report = BUF_INIT;
	char why[256] = "";
	bool built = dsn_build(&in, &report, why, sizeof(why));
	free(pending);
	if (!built) {
		/* declined (NOTIFY): not asked again for this message */
		log_info(NULL, queue_item_id(d->it), "dsn.delay_not_sent", "reason=%s sender=%s", why, e->sender);
		queue_item_set_warned(d->it);
		buf_free(&report);
		return false;
	}
	log_info(NULL, queue_item_id(d->it), "dsn.delay_warning", "age_s=%lld pending=%zu to=%s",
		 age_ms / 1000, np, e->sender);
	submit_report(d, e->sender, &report, delay_dsn_queued);
	buf_free(&report);
	return true;
}

/* The attempt is over: expiry, then the reports due, then the queue. */
static void delivery_finish(struct delivery *d)
{
	expire_pending(d);
	if (!delay_warning(d))
		failure_reports(d);
}

/* The current group is done: keep its connection for reuse, go on. */
static void group_done(struct delivery *d)
{
	dest_release(d);
	if (d->c)
		idle_put(d->st, d->gen, d->c, d->conn_key);
	d->c = NULL;
	free(d->conn_key);
	d->conn_key = NULL;
	d->reused = d->stale = false;
	d->nsent = d->nreplied = 0;
	strlist_free(&d->hops);
	d->cur++;
	if (d->cur < d->ngroups)
		group_start(d);
	else
		delivery_finish(d);
}

static void dlv_reply_text(const struct smtp_reply *r, char *out, size_t n)
{
	snprintf(out, n, "%d %s%s%s", r->code, r->enh, *r->enh ? " " : "", r->text);
}

static void dlv_result(struct delivery *d, size_t ri, const struct smtp_reply *r, const char *relay)
{
	char text[600];
	dlv_reply_text(r, text, sizeof(text));
	queue_item_result(d->it, ri, r->code, text);
	struct envelope *e = queue_item_envelope(d->it);
	const char *status = r->code >= 200 && r->code < 300 ? "sent" : r->code >= 500 ? "failed" : "deferred";
	char event[32];
	snprintf(event, sizeof(event), "delivery.%s", status);
	log_info(NULL, queue_item_id(d->it), event,
		 "rcpt=%s relay=%s code=%d reply=%s tls=%s delay_s=%.3f status=%s attempt=%u cause=%s",
		 e->rcpts[ri].addr, relay ? relay : "", r->code, text,
		 d->c && smtp_client_tls(d->c) ? smtp_client_tls(d->c) : "",
		 (double)(wall_ms() - (long long)e->arrival * 1000) / 1000.0, status,
		 queue_item_attempts(d->it) + 1, smtp_fault_name(r->fault));
	if (d->st->m_deliveries) {
		char label[40];
		snprintf(label, sizeof(label), "reason=\"%s\"", smtp_fault_name(r->fault));
		if (r->code >= 200 && r->code < 300)
			metric_inc(d->st->m_deliveries, NULL);
		else
			metric_inc(r->code >= 500 ? d->st->m_bounces : d->st->m_deferrals, label);
	}
	if (d->st->ledger)
		ledger_outcome(d->st->ledger, e->sender, e->client.login, r->code);
	if (d->st->def->outcome && d->gen->state)
		d->st->def->outcome(d->gen->state, e, ri, r, text);
}

/* The whole current group gets this reply (no connection, route failure). */
static void group_fail(struct delivery *d, const struct smtp_reply *r)
{
	struct dgroup *g = &d->groups[d->cur];
	for (size_t i = 0; i < g->n; i++)
		dlv_result(d, g->rcpt[i], r, NULL);
	group_done(d);
}

static void dlv_data_done(void *arg, const struct smtp_reply *r, size_t n)
{
	struct delivery *d = arg;
	struct dgroup *g = &d->groups[d->cur];
	for (size_t i = 0, k = 0; i < d->nsent; i++) {
		if (!d->accepted[i])
			continue;
		const struct smtp_reply *ri = (n > 1 && k < n) ? &r[k++] : &r[0];
		dlv_result(d, g->rcpt[i], ri, smtp_client_peer(d->c));
	}
	group_done(d);
}

static void dlv_rcpt_done(void *arg, const struct smtp_reply *r)
{
	struct delivery *d = arg;
	struct dgroup *g = &d->groups[d->cur];
	size_t i = d->nreplied++;
	/* A kept connection the next hop closed meanwhile: the first reply
	 * is a 421; try once more on a fresh connection. */
	if (d->reused && i == 0 && r->code == 421)
		d->stale = true;
	if (d->stale) {
		if (d->nreplied < d->nsent)
			return;
		smtp_client_abort(d->c);
		d->c = NULL;
		d->reused = d->stale = false;
		d->nsent = d->nreplied = 0;
		struct smtp_client_opts o = client_opts(d->st, d->gen, queue_item_id(d->it), d->groups[d->cur].domain);
		if (d->routed)
			o.hops = &d->hops;
		smtp_client_connect(d->st->base, &o, dlv_ready, d);
		return;
	}
	d->accepted[i] = r->code >= 200 && r->code < 300;
	if (!d->accepted[i])
		dlv_result(d, g->rcpt[i], r, smtp_client_peer(d->c));
	if (d->nreplied < d->nsent)
		return;
	size_t ok = 0;
	for (size_t k = 0; k < d->nsent; k++)
		ok += d->accepted[k];
	if (!ok) {
		group_done(d);
		return;
	}
	smtp_client_data(d->c, d->data, d->len, dlv_data_done, d);
}

static void dlv_mail_done(void *arg, const struct smtp_reply *r)
{
	(void)arg; (void)r;   /* a refused MAIL shows in the RCPT replies */
}

static void dlv_ready(void *arg, struct smtp_client *c, const struct smtp_reply *err)
{
	struct delivery *d = arg;
	if (!c) {
		log_info(NULL, queue_item_id(d->it), "delivery.no_connection", "domain=%s code=%d reason=%s",
			 d->groups[d->cur].domain, err->code, err->text);
		group_fail(d, err);
		return;
	}
	d->c = c;
	struct dgroup *g = &d->groups[d->cur];
	struct envelope *e = queue_item_envelope(d->it);
	d->nsent = g->n;
	d->nreplied = 0;
	memset(d->accepted, 0, g->n * sizeof(bool));
	smtp_client_mail(c, e, d->len, dlv_mail_done, d);
	for (size_t i = 0; i < g->n; i++)
		smtp_client_rcpt(c, e->rcpts[g->rcpt[i]].addr, dlv_rcpt_done, d);
}

/* Connect for the current group: a kept connection to the same hops, or
 * a new one. */
static void group_connect(struct delivery *d)
{
	struct smtp_client_opts o = client_opts(d->st, d->gen, queue_item_id(d->it), d->groups[d->cur].domain);
	o.hops = d->routed ? &d->hops : &d->gen->sc->next_hops;
	free(d->conn_key);
	d->conn_key = conn_key(&o);
	struct smtp_client *c = idle_get(d->st, d->conn_key);
	if (c) {
		d->reused = true;
		smtp_client_set_log_id(c, queue_item_id(d->it));
		dlv_ready(d, c, NULL);
		return;
	}
	if (d->routed) {
		/* MX order matters: always from the best hop. */
		struct smtp_rotor first = { 0 };
		smtp_client_connect_rotating(d->st->base, &o, &first, dlv_ready, d);
	} else {
		smtp_client_connect(d->st->base, &o, dlv_ready, d);
	}
}

static void routed(void *arg, const struct strlist *hops, const struct smtp_reply *err)
{
	struct delivery *d = arg;
	if (!hops) {
		group_fail(d, err);
		return;
	}
	strlist_free(&d->hops);
	d->hops.n = hops->n;
	d->hops.v = xcalloc(hops->n ? hops->n : 1, sizeof(char *));
	for (size_t i = 0; i < hops->n; i++)
		d->hops.v[i] = xstrdup(hops->v[i]);
	group_connect(d);
}

static void group_route(struct delivery *d)
{
	const struct server_config *sc = d->gen->sc;
	const char *domain = d->groups[d->cur].domain;
	if (!d->routed)
		group_connect(d);
	else if (d->st->def->route)
		d->st->def->route(d->gen->state, domain, routed, d);
	else    /* local_next_hops: local domains to their own hops */
		routed(d, strlist_contains(&sc->local_domains, domain) ? &sc->local_next_hops : &sc->next_hops, NULL);
}

/* Take a place at the group's destination, or park or wait for one. */
static void group_start(struct delivery *d)
{
	struct stage *st = d->st;
	char key[300];
	if (d->routed)
		snprintf(key, sizeof(key), "%s", d->groups[d->cur].domain);
	else
		hops_key(&d->gen->sc->next_hops, key, sizeof(key));
	for (char *k = key; *k; k++)
		*k = (char)tolower((unsigned char)*k);
	struct dest *x = dest_get(st, key);
	if (x->active < (unsigned)d->gen->sc->destination_concurrency) {
		x->active++;
		d->dest = x;
		group_route(d);
		return;
	}
	log_debug(NULL, queue_item_id(d->it), d->cur == 0 ? "delivery.parked" : "delivery.waiting",
		  "destination=%s active=%u", key, x->active);
	if (d->cur > 0) {
		if (x->wait_tail)
			x->wait_tail->wnext = d;
		else
			x->wait_head = d;
		x->wait_tail = d;
		return;
	}
	struct parked *p = xcalloc(1, sizeof(*p));
	p->it = d->it;
	if (x->park_tail)
		x->park_tail->next = p;
	else
		x->park_head = p;
	x->park_tail = p;
	struct queue_item *it = d->it;
	delivery_free(d);
	queue_item_park(st->queue, it);
}

static void deliver_item(void *arg, struct queue_item *it)
{
	struct stage *st = arg;
	struct delivery *d = xcalloc(1, sizeof(*d));
	d->st = st;
	d->it = it;
	d->gen = st->gen;
	d->gen->refs++;
	d->data = queue_item_data(it, &d->len);
	d->routed = st->def->route ? !(st->def->route_all && st->def->route_all(d->gen->state))
				   : d->gen->sc->local_next_hops.n > 0;
	struct envelope *e = queue_item_envelope(it);
	d->groups = xcalloc(e->nrcpt ? e->nrcpt : 1, sizeof(*d->groups));
	d->accepted = xcalloc(e->nrcpt ? e->nrcpt : 1, sizeof(bool));
	for (size_t i = 0; i < e->nrcpt; i++) {
		if (e->rcpts[i].state != RCPT_PENDING)
			continue;
		const char *at = strrchr(e->rcpts[i].addr, '@');
		const char *dom = d->routed && at ? at + 1 : "";
		struct dgroup *g = NULL;
		for (size_t k = 0; k < d->ngroups && !g; k++)
			if (strcasecmp(d->groups[k].domain, dom) == 0)
				g = &d->groups[k];
		if (!g) {
			g = &d->groups[d->ngroups++];
			snprintf(g->domain, sizeof(g->domain), "%s", dom);
			g->rcpt = xcalloc(e->nrcpt, sizeof(size_t));
		}
		g->rcpt[g->n++] = i;
	}
	if (!d->ngroups) {
		delivery_finish(d);
		return;
	}
	/* Past the maximum lifetime: no more tries; the sender is told. */
	if (expire_pending(d)) {
		delivery_finish(d);
		return;
	}
	group_start(d);
}

/* ---- signals, start-up ------------------------------------------------- */

static void server_opts_from(const struct server_config *sc, struct stage *st, struct smtp_server_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->lmtp = st->def->lmtp;
	o->hostname = sc->hostname;
	o->max_message_size = sc->max_message_size;
	o->max_recipients = (unsigned)sc->max_recipients;
	o->max_data_line = (size_t)sc->max_line_length;
	o->max_header_size = (size_t)sc->max_header_size;
	o->max_headers = (size_t)sc->max_headers;
	o->command_timeout_ms = sc->command_timeout;
	o->data_timeout_ms = sc->data_timeout;
	o->greet_pause_ms = sc->greet_pause;
	o->max_errors = (unsigned)sc->max_errors;
	o->max_connections = (unsigned)sc->max_connections;
	o->max_connections_per_client = (unsigned)sc->max_connections_per_client;
	o->max_connections_per_network = (unsigned)sc->max_connections_per_network;
	o->net4_prefix = (unsigned)sc->network_prefix4;
	o->net6_prefix = (unsigned)sc->network_prefix6;
	o->data_rate_limit = sc->data_rate_limit;
	o->tls = st->tls;
	if (st->def->submission) {
		o->tls_required = true;
		o->auth = st->def->authenticate != NULL;
		o->auth_required = true;
	}
	o->xforward_hosts = &sc->xforward_hosts;
	o->xclient_hosts = &sc->xclient_hosts;
}

static void on_sighup(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct stage *st = arg;
	char why[1024];
	struct generation *g = gen_load(st, false, why, sizeof(why));
	if (!g) {
		log_error(NULL, NULL, "config.reload_failed", "error=%s", why);
		return;
	}
	/* Listen addresses, the spool and the certificate paths are fixed at
	 * start-up (the certificate files themselves are re-read below). */
	struct generation *old = st->gen;
	const struct server_config *a = old->sc, *b = g->sc;
	if (strcmp(a->spool_dir, b->spool_dir) || strcmp(a->tls_cert, b->tls_cert) || strcmp(a->tls_key, b->tls_key) ||
	    strcmp(a->metrics_listen, b->metrics_listen) || a->listen.n != b->listen.n ||
	    a->listen_tls.n != b->listen_tls.n ||
	    strcmp(old->g.state_dir, g->g.state_dir) || old->g.log_syslog != g->g.log_syslog)
		log_warn(NULL, NULL, "config.restart_needed",
			 "reason=%s", "listen, spool_dir, state_dir, tls_cert/tls_key paths, metrics_listen or log_syslog changed; they take effect at the next start");
	for (size_t i = 0; i < a->listen.n && i < b->listen.n; i++)
		if (strcmp(a->listen.v[i], b->listen.v[i]))
			log_warn(NULL, NULL, "config.restart_needed", "reason=%s", "listen changed");
	st->gen = g;
	enum log_level lv = (enum log_level)g->g.log_level;
	log_set_level(lv);
	if (st->tls && !tls_ctx_reload(st->tls, why, sizeof(why)))
		log_error(NULL, NULL, "tls.reload_failed", "error=%s", why);
	struct smtp_server_opts o;
	server_opts_from(g->sc, st, &o);
	smtp_server_set_opts(st->server, &o);
	gen_unref(st, old);
	log_info(NULL, NULL, "config.reloaded", "path=%s", st->config_path);
}

/* Shutdown: stop taking mail, let messages in flight finish (a 250 is
 * sent only once a message is safe), then leave; at most 10 s. */
static void drain_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct stage *st = arg;
	size_t sessions = smtp_server_sessions(st->server);
	size_t deliveries = (st->queue ? queue_active(st->queue) : 0) + st->clients.n;
	st->drain_left_ms -= 50;
	if ((sessions == 0 && deliveries == 0) || st->drain_left_ms <= 0) {
		if (sessions || deliveries)
			log_warn(NULL, NULL, "stage.drain_timeout", "sessions=%zu deliveries=%zu", sessions, deliveries);
		event_base_loopexit(st->base, NULL);
		return;
	}
	struct timeval tv = { 0, 50000 };
	evtimer_add(st->drain_timer, &tv);
}

static void on_sigterm(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct stage *st = arg;
	if (st->drain_timer)
		return;     /* already stopping */
	log_info(NULL, NULL, "stage.stopping", "sessions=%zu", smtp_server_sessions(st->server));
	smtp_server_drain(st->server);
	if (st->queue)
		queue_pause(st->queue);
	idle_close_all(st);
	st->drain_left_ms = st->gen->sc->shutdown_timeout;
	st->drain_timer = evtimer_new(st->base, drain_tick, st);
	drain_tick(-1, 0, st);
}

static void on_sigusr1(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct stage *st = arg;
	if (st->queue)
		queue_flush_now(st->queue);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct stage *st = arg;
	if (st->def->tick && st->gen->state)
		st->def->tick(st->gen->state);
	dest_tick(st);
	/* the ledger is saved every 10 s, and at exit: counts survive restarts */
	if (st->ledger && ++st->ticks % 10 == 0) {
		char why[512];
		if (!ledger_save(st->ledger, st->ledger_path, why, sizeof(why)))
			log_error(NULL, NULL, "ledger.save_failed", "error=%s", why);
	}
}

static double gauge_sessions(void *arg)
{
	return (double)smtp_server_sessions(((struct stage *)arg)->server);
}

static double gauge_queue_size(void *arg)
{
	struct queue_stats qs;
	queue_get_stats(((struct stage *)arg)->queue, &qs);
	return (double)qs.messages;
}

static double gauge_queue_age(void *arg)
{
	struct queue_stats qs;
	queue_get_stats(((struct stage *)arg)->queue, &qs);
	return qs.oldest ? difftime(time(NULL), qs.oldest) : 0;
}

static double gauge_queue_failed(void *arg)
{
	struct queue_stats qs;
	queue_get_stats(((struct stage *)arg)->queue, &qs);
	return (double)qs.failed_msgs;
}

static double gauge_queue_quarantined(void *arg)
{
	struct queue_stats qs;
	queue_get_stats(((struct stage *)arg)->queue, &qs);
	return (double)qs.quarantined_msgs;
}

static void drop_privileges(const char *user)
{
	if (!user || !*user || geteuid() != 0)
		return;
	struct passwd *pw = getpwnam(user);
	if (!pw)
		log_fatal(NULL, NULL, "config.bad_user", "user=%s reason=%s", user, "no such user");
	if (setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0)
		log_fatal(NULL, NULL, "privileges.drop_failed", "user=%s error=%s", user, strerror(errno));
	log_info(NULL, NULL, "privileges.dropped", "user=%s", user);
}

/* state_dir/run/INSTANCE.pid, so rampartctl can signal a flush. */
static void write_pidfile(struct stage *st, const char *state_dir)
{
	char dir[1024];
	snprintf(dir, sizeof(dir), "%s/run", state_dir);
	fs_mkdir_p(dir, 0755);
	snprintf(st->pidfile, sizeof(st->pidfile), "%s/%s.pid", dir, st->instance);
	FILE *f = fopen(st->pidfile, "w");
	if (!f) {
		log_warn(NULL, NULL, "pidfile.write_failed", "path=%s error=%s", st->pidfile, strerror(errno));
		st->pidfile[0] = '\0';
		return;
	}
	fprintf(f, "%ld\n", (long)getpid());
	fclose(f);
}

static void remove_pidfile(struct stage *st)
{
	if (!st->pidfile[0])
		return;
	FILE *f = fopen(st->pidfile, "r");
	long pid = 0;
	if (f) {
		if (fscanf(f, "%ld", &pid) != 1)
			pid = 0;
		fclose(f);
	}
	if (pid == (long)getpid())
		unlink(st->pidfile);
}

bool stage_config_check(const struct stage_def *def, const char *path, const char *instance, char *why,
			size_t whylen)
{
	struct stage st = { 0 };
	st.def = def;
	st.set = stage_param_set(def);
	st.config_path = path;
	st.instance = instance;
	struct generation *g = gen_load(&st, true, why, whylen);
	bool ok = g != NULL;
	gen_unref(&st, g);
	stage_param_set_free(st.set);
	return ok;
}

static void usage(const char *prog, const struct stage_def *def)
{
	fprintf(stderr,
		"usage: %s -c rampart.conf [-n instance] [-t]\n"
		"  %s\n"
		"  -c FILE   configuration file (default /etc/rampart/rampart.conf)\n"
		"  -n NAME   instance, the section of the file to use (default %s)\n"
		"  -t        check the configuration and exit\n",
		prog, def->doc, def->name);
}

int stage_main(const struct stage_def *def, int argc, char **argv)
{
	struct stage st_ = { 0 }, *st = &st_;
	st->def = def;
	st->config_path = "/etc/rampart/rampart.conf";
	st->instance = def->name;
	bool test_only = false;
	int opt;
	while ((opt = getopt(argc, argv, "c:n:th")) != -1) {
		switch (opt) {
		case 'c': st->config_path = optarg; break;
		case 'n': st->instance = optarg; break;
		case 't': test_only = true; break;
		default: usage(argv[0], def); return opt == 'h' ? 0 : 2;
		}
	}
	log_init(def->name, st->instance);
	st->set = stage_param_set(def);
	signal(SIGPIPE, SIG_IGN);
	evthread_use_pthreads();
	/* The changelist folds the enable/disable pairs of one loop turn
	 * (a reply written and flushed at once) into no epoll_ctl at all. */
	struct event_config *ecfg = event_config_new();
	event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	st->base = event_base_new_with_config(ecfg);
	event_config_free(ecfg);
	if (!st->base)
		log_fatal(NULL, NULL, "event.init_failed", "error=%s", strerror(errno));
	st->metrics = metrics_new(def->name, st->instance);

	char why[1024];
	/* One resolver for the process, shared by every check; its settings
	 * are read once, before the checks are built (a reload keeps it). */
	struct config_error perr;
	struct config *pre = config_parse_file(st->config_path, &perr);
	struct global_config g0;
	if (pre && config_bind(pre, "global", &global_param_set, &g0, &perr)) {
		/* the checks built next log at the configured level already */
		log_set_level((enum log_level)g0.log_level);
		struct dns_opts dopts = { 0 };
		dopts.local_data = *g0.dns_local_data ? g0.dns_local_data : NULL;
		dopts.local_only = g0.dns_local_only;
		st->dns = dns_new(st->base, &dopts, why, sizeof(why));
		config_release(&global_param_set, &g0);
		if (!st->dns) {
			fprintf(stderr, "%s: %s: [global] dns_local_data: %s\n", def->name, st->config_path, why);
			config_free(pre);
			return 1;
		}
	}
	config_free(pre);
	st->shared = check_shared_new();
	st->gen = gen_load(st, test_only, why, sizeof(why));
	if (!st->gen || test_only) {
		if (!st->gen) {
			fprintf(stderr, "%s: configuration error: %s\n", def->name, why);
			log_error(NULL, NULL, "config.error", "error=%s", why);
		} else {
			printf("%s: configuration OK\n", st->config_path);
		}
		gen_unref(st, st->gen);
		check_shared_free(st->shared);
		state_close(st->state);
		dns_free(st->dns);
		metrics_free(st->metrics);
		event_base_free(st->base);
		stage_param_set_free(st->set);
		return st->gen ? 0 : 1;
	}
	if (def->accounting) {
		st->ledger = ledger_new(100000);
		st->ledger_path = xasprintf("%s/ledger.%s", st->gen->g.state_dir, st->instance);
		if (!ledger_load(st->ledger, st->ledger_path, why, sizeof(why))) {
			/* the next save rewrites the file: the lines that did not
			 * load are kept aside, not lost */
			char *aside = xasprintf("%s.bad", st->ledger_path);
			bool kept = rename(st->ledger_path, aside) == 0;
			log_warn(NULL, NULL, "ledger.load_failed", "error=%s kept=%s", why, kept ? aside : "no");
			free(aside);
			if (kept && !ledger_save(st->ledger, st->ledger_path, why, sizeof(why)))
				log_warn(NULL, NULL, "ledger.save_failed", "error=%s", why);
		}
	}

	const struct server_config *sc = st->gen->sc;
	log_set_level((enum log_level)st->gen->g.log_level);
	log_set_syslog(st->gen->g.log_syslog);

	/* Room for many connections (each is a descriptor). */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	st->m_sessions = metrics_counter(st->metrics, "rampart_sessions_total", "SMTP/LMTP sessions that sent a command.");
	metrics_gauge_cb(st->metrics, "rampart_sessions_active", "Sessions open now.", NULL, gauge_sessions, st);
	st->m_messages = metrics_counter(st->metrics, "rampart_messages_total", "Messages accepted, by result.");
	st->m_rejects = metrics_counter(st->metrics, "rampart_rejects_total", "Commands refused by a check, by check and code.");
	st->m_events = metrics_counter(st->metrics, "rampart_smtp_events_total",
				       "Protocol faults the SMTP engine refused or noticed, by kind.");
	st->m_deliveries = metrics_counter(st->metrics, "rampart_deliveries_total", "Recipients delivered.");
	st->m_deferrals = metrics_counter(st->metrics, "rampart_deferrals_total",
					  "Recipients deferred (4xx or unreachable), by cause: reply (the next hop's 4xx), "
					  "connect, timeout, lost, protocol, tls, auth, route, local.");
	st->m_bounces = metrics_counter(st->metrics, "rampart_failures_total",
					"Recipients failed permanently (5xx), by cause (reply: the next hop's 5xx; route: "
					"no way to the domain, e.g. null MX).");
	/* Present from the start (at 0), so rates and sums work at once. */
	metric_add(st->m_deliveries, NULL, 0);
	metric_add(st->m_deferrals, "reason=\"reply\"", 0);
	metric_add(st->m_bounces, "reason=\"reply\"", 0);
	metric_add(st->m_sessions, NULL, 0);

	if (*sc->tls_cert) {
		st->tls = tls_server_new(sc->tls_cert, *sc->tls_key ? sc->tls_key : sc->tls_cert, why, sizeof(why));
		if (!st->tls) {
			fprintf(stderr, "%s: %s: [%s] tls_cert: %s\n", def->name, st->config_path, st->instance, why);
			return 1;
		}
	}

	st->client_tls = tls_client_new(NULL, false, why, sizeof(why));
	if (!st->client_tls)
		log_warn(NULL, NULL, "tls.client_unavailable", "error=%s", why);

	/* The spool: queue mode, or proxy mode's fallback for partial results. */
	if (!def->deliver) {
		char spool[1024];
		if (*sc->spool_dir)
			snprintf(spool, sizeof(spool), "%s", sc->spool_dir);
		else
			snprintf(spool, sizeof(spool), "%s/spool/%s", st->gen->g.state_dir, st->instance);
		if (fs_mkdir_p(spool, 0700) != 0) {
			fprintf(stderr, "%s: cannot create spool %s: %s\n", def->name, spool, strerror(errno));
			log_fatal(NULL, NULL, "queue.open_failed", "dir=%s error=%s", spool, strerror(errno));
		}
		struct queue_opts qo = { 0 };
		qo.dir = spool;
		qo.retry_min_ms = sc->retry_min;
		qo.retry_max_ms = sc->retry_max;
		qo.lifetime_ms = sc->queue_lifetime;
		qo.max_active = (unsigned)sc->max_deliveries;
		qo.log_id = st->instance;
		st->queue = queue_open(st->base, &qo, why, sizeof(why));
		if (!st->queue) {
			fprintf(stderr, "%s: spool %s: %s\n", def->name, spool, why);
			log_fatal(NULL, NULL, "queue.open_failed", "dir=%s error=%s", spool, why);
		}
		metrics_gauge_cb(st->metrics, "rampart_queue_messages", "Messages in the queue.", NULL, gauge_queue_size, st);
		metrics_gauge_cb(st->metrics, "rampart_queue_failed_messages",
				 "Messages kept in failed/: a recipient failed permanently (see rampartctl queue list).",
				 NULL, gauge_queue_failed, st);
		metrics_gauge_cb(st->metrics, "rampart_queue_quarantined_messages",
				 "Messages a check quarantined, kept in quarantine/ (rampartctl quarantine list).", NULL,
				 gauge_queue_quarantined, st);
		metrics_gauge_cb(st->metrics, "rampart_queue_oldest_seconds", "Age of the oldest queued message.", NULL,
				 gauge_queue_age, st);
	}

	struct smtp_server_opts so;
	server_opts_from(sc, st, &so);
	struct smtp_server_hooks hooks = { st, on_hook, on_txn_end, on_session_end, on_event };
	st->server = smtp_server_new(st->base, &so, &hooks);
	for (size_t i = 0; i < sc->listen.n + sc->listen_tls.n; i++) {
		bool implicit = i >= sc->listen.n;
		const char *addr = implicit ? sc->listen_tls.v[i - sc->listen.n] : sc->listen.v[i];
		struct endpoint ep;
		if (!endpoint_parse(addr, implicit ? 465 : 25, &ep, why, sizeof(why))) {
			fprintf(stderr, "%s: %s: [%s] %s: '%s': %s\n", def->name, st->config_path, st->instance,
				implicit ? "listen_tls" : "listen", addr, why);
			return 1;
		}
		int fd = net_listen(&ep, 1024, why, sizeof(why));
		if (fd < 0 || !(implicit ? smtp_server_listen_fd_tls : smtp_server_listen_fd)(st->server, fd, why, sizeof(why))) {
			fprintf(stderr, "%s: cannot listen on %s: %s\n", def->name, addr, why);
			log_fatal(NULL, NULL, "listen.failed", "address=%s error=%s", addr, why);
		}
		log_info(NULL, NULL, "listen", "address=%s protocol=%s tls=%s", addr, def->lmtp ? "lmtp" : "smtp",
			 implicit ? "implicit" : st->tls ? "starttls" : "no");
	}
	if (*sc->metrics_listen) {
		int port = 0;
		if (!metrics_listen(st->metrics, st->base, sc->metrics_listen, &port, why, sizeof(why))) {
			fprintf(stderr, "%s: metrics_listen %s: %s\n", def->name, sc->metrics_listen, why);
			log_fatal(NULL, NULL, "metrics.listen_failed", "address=%s error=%s", sc->metrics_listen, why);
		}
	}
	write_pidfile(st, st->gen->g.state_dir);
	drop_privileges(sc->user);

	st->sig_hup = evsignal_new(st->base, SIGHUP, on_sighup, st);
	st->sig_term = evsignal_new(st->base, SIGTERM, on_sigterm, st);
	st->sig_int = evsignal_new(st->base, SIGINT, on_sigterm, st);
	st->sig_usr1 = evsignal_new(st->base, SIGUSR1, on_sigusr1, st);
	evsignal_add(st->sig_hup, NULL);
	evsignal_add(st->sig_term, NULL);
	evsignal_add(st->sig_int, NULL);
	evsignal_add(st->sig_usr1, NULL);

	if (st->queue)
		queue_start(st->queue, deliver_item, st);
	if (def->tick || st->queue || st->ledger) {
		st->tick_timer = event_new(st->base, -1, EV_PERSIST, on_tick, st);
		struct timeval one = { 1, 0 };
		event_add(st->tick_timer, &one);
	}
	log_info(NULL, NULL, "stage.started", "mode=%s config=%s", def->deliver ? "deliver" : sc->mode == MODE_PROXY ? "proxy" : "queue",
		 st->config_path);
	event_base_dispatch(st->base);

	/* The checks' worker threads (and the stage's) end before the
	 * sessions whose messages they may be reading; then pending commits
	 * answer their sessions; then sessions go. */
	for (struct generation *g = st->gens; g; g = g->next) {
		chain_stop(g->chain);
		if (g->state && def->stop)
			def->stop(g->state);
	}
	if (st->queue)
		queue_close(st->queue);
	st->queue = NULL;
	smtp_server_free(st->server);
	idle_close_all(st);
	smtp_client_set_abort(&st->clients);     /* cut by the shutdown: QUITs, deliveries */
	dest_free_all(st);
	gen_unref(st, st->gen);
	check_shared_free(st->shared);
	if (st->ledger) {
		if (!ledger_save(st->ledger, st->ledger_path, why, sizeof(why)))
			log_error(NULL, NULL, "ledger.save_failed", "error=%s", why);
		ledger_free(st->ledger);
		free(st->ledger_path);
	}
	state_close(st->state);
	tls_ctx_free(st->tls);
	tls_ctx_free(st->client_tls);
	dns_free(st->dns);
	event_free(st->sig_hup);
	event_free(st->sig_term);
	event_free(st->sig_int);
	event_free(st->sig_usr1);
	if (st->drain_timer)
		event_free(st->drain_timer);
	if (st->tick_timer)
		event_free(st->tick_timer);
	metrics_free(st->metrics);
	event_base_free(st->base);
	stage_param_set_free(st->set);
	remove_pidfile(st);
	log_info(NULL, NULL, "stage.stopped", "instance=%s", st->instance);
	return 0;
}
