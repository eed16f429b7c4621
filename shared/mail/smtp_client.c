/*
 * smtp_client.c — asynchronous SMTP/LMTP client on libevent bufferevents:
 * hop failover, EHLO/LHLO (HELO fallback), STARTTLS or implicit TLS under
 * a TLS policy (may, none, encrypt, verify), AUTH PLAIN/LOGIN, XFORWARD,
 * pipelined commands matched to replies in order, dot-stuffed DATA, LMTP
 * per-recipient replies.
 *
 * Every answer, local or from the server, reaches the caller from the
 * event loop, never from inside an API call.  A busy count held around
 * user callbacks makes abort/quit from a callback safe.  Start hop:
 * random (getrandom) for smtp_client_connect(), a caller-owned counter
 * (struct smtp_rotor) for smtp_client_connect_rotating().
 */
#include "smtp_client.h"
#include "../util/alloc.h"
#include "../util/buf.h"
#include "../util/log.h"
#include "../util/net.h"
#include "../util/sockout.h"
#include "../util/tls.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define REPLY_LINE_MAX   2048          /* bytes of one reply line, CRLF excluded */
#define REPLY_LINES_MAX  100           /* lines of one multi-line reply */
#define CMD_LINE_MAX     512           /* XFORWARD command lines stay below this */
#define XFWD_VALUE_MAX   255           /* encoded XFORWARD attribute value */
#define FAILURES_MAX     2048          /* text collected about failed hops */
#define BODY_CHUNK       (64 * 1024)   /* body bytes stuffed per step */
#define BODY_HIGH        (256 * 1024)  /* stop filling the output above this */
#define BODY_LOW         (64 * 1024)   /* write callback when output drops to this */

#define DEF_CONNECT_MS   10000LL
#define DEF_COMMAND_MS   300000LL
#define DEF_DATA_MS      600000LL
#define CRED_MAX         1024          /* bytes of a user name or password */

enum {
	EXT_PIPELINING = 1 << 0,
	EXT_SIZE = 1 << 1,
	EXT_8BITMIME = 1 << 2,
	EXT_SMTPUTF8 = 1 << 3,
	EXT_STARTTLS = 1 << 4,
	EXT_XFORWARD = 1 << 5,
	EXT_ENHANCED = 1 << 6,
	EXT_AUTH = 1 << 7,
};

/* SASL mechanisms we can use, as offered in the EHLO reply. */
enum {
	MECH_PLAIN = 1 << 0,
	MECH_LOGIN = 1 << 1,
};

/* Where an AUTH exchange stands (phase PH_AUTH). */
enum auth_step {
	AUTH_PLAIN_SENT,    /* AUTH PLAIN <initial response>: 235 expected */
	AUTH_LOGIN_SENT,    /* AUTH LOGIN: 334 (user name) expected */
	AUTH_USER_SENT,     /* 334 (password) expected */
	AUTH_PASS_SENT,     /* 235 expected */
};

/* XFORWARD attributes we can send, in the order we send them. */
static const char *const xfwd_names[] = { "NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN" };
#define XFWD_N (sizeof(xfwd_names) / sizeof(xfwd_names[0]))

enum phase {
	PH_START,        /* nothing tried yet (kick pending) */
	PH_CONNECTING,
	PH_GREETING,
	PH_EHLO,         /* EHLO or LHLO sent */
	PH_HELO,         /* fallback HELO sent */
	PH_STARTTLS,     /* STARTTLS sent */
	PH_TLS,          /* handshake running (after STARTTLS, or implicit TLS) */
	PH_AUTH,         /* AUTH exchange running */
	PH_READY,        /* commands flow */
	PH_DEAD,         /* connection gone (after ready) or all hops failed */
};

enum cmd_kind { CMD_XFORWARD, CMD_MAIL, CMD_RCPT, CMD_DATA, CMD_RSET, CMD_QUIT };

struct cmd {
	struct cmd *next;
	enum cmd_kind kind;
	struct buf line;            /* command with CRLF */
	bool sent;
	bool local;                 /* never sent: answered with reply */
	struct smtp_reply reply;    /* the local answer */
	smtp_client_cb cb;
	smtp_client_data_cb dcb;
	void *arg;
	/* DATA only */
	const char *data;
	size_t len, off;
	int dphase;                 /* 0: awaiting 354, 1: writing body, 2: awaiting final */
	bool no_rcpt;               /* 354 without an accepted RCPT: only "." sent */
	bool bol, pending_cr;       /* dot-stuffing state */
	size_t nexpect, ngot;
	struct smtp_reply *replies;
};

/*
 * Commands go into one FIFO.  An entry is either sent to the server or
 * "local": answered by the client itself (dead connection, SMTPUTF8 not
 * offered, no accepted recipient, ...); local answers are delivered by the
 * kick event in FIFO order.  Server replies go to the oldest sent entry.
 *
 * Deadlines: one timer, armed for connect (connect timeout), greeting,
 * EHLO, STARTTLS, the TLS handshake and each reply (command timeout), and
 * the reply after the final dot (data timeout).  It is re-armed only when
 * a whole reply arrives, so a peer dribbling bytes cannot stretch it.
 * While the body is written, the bufferevent write timeout (command
 * timeout, reset on progress) guards the transfer instead.
 */
struct smtp_client {
	struct event_base *base;

	/* options, copied */
	char **hops;
	size_t nhops;
	bool lmtp;
	char *helo_name;
	struct tls_ctx *tls;
	enum smtp_tls_policy policy;
	char *verify_name;          /* NULL: the hop's name or host */
	struct strlist verify_names; /* n > 0: the certificate must match one of these */
	bool tls_on_connect;
	char *auth_user;            /* NULL: no AUTH */
	char *auth_pass;            /* wiped before it is freed */
	bool auth_plaintext_ok;
	char config_err[256];       /* set: every hop fails with it (451 4.3.5) */
	bool xforward;
	long long connect_ms, command_ms, data_ms;
	char *sid;

	/* connection cycle */
	smtp_client_ready_cb ready;
	void *ready_arg;
	size_t start, tried;        /* current hop: (start + tried) % nhops */
	bool notls;                 /* this attempt is the retry without STARTTLS */
	struct buf failures;
	int last4xx;
	char last4xx_enh[16];
	enum smtp_fault last_fault; /* of the last hop that failed */
	enum smtp_fault last4xx_fault; /* of the hop that gave last4xx */

	/* the connection */
	enum phase phase;
	struct endpoint ep;
	char hop_name[256];         /* "mx.example.net" of "mx.example.net[192.0.2.1]:25", else "" */
	char peer[300];
	struct bufferevent *bev;
	struct sockout wout;        /* plain TCP: commands written at the end of a loop pass */
	bool tls_on;
	char tls_desc[128];
	struct event *timer;
	struct event *kick;

	/* reply being read */
	struct buf line;            /* one reply line */
	struct buf lines;           /* texts of the lines so far, '\n'-separated */
	size_t nlines;
	int rcode;

	/* server extensions */
	unsigned ext;
	unsigned long long size_max;
	unsigned xfwd_attrs;        /* bit i: xfwd_names[i] offered */
	unsigned mechs;             /* MECH_* offered with AUTH */
	struct buf ext_words;       /* " PIPELINING SIZE ... " (upper case) */
	enum auth_step auth_step;
	const char *auth_mech;      /* "PLAIN", "LOGIN", or NULL before AUTH */

	/* commands */
	struct cmd *head, **tailp;
	struct buf out;             /* scratch for stuffed body */
	size_t txn_ok;              /* RCPTs accepted in this transaction (by replies seen) */
	bool api_mail_failed;       /* the last MAIL was refused locally */
	bool srv_txn;               /* a MAIL went out and no RSET or end of data closed it */
	bool mail_failed;           /* the MAIL of this transaction was refused ... */
	struct smtp_reply mail_err; /* ... with this reply, which its RCPTs and DATA get too */

	/* end of life */
	bool dead;
	struct smtp_reply fault;
	bool quitting;
	int busy;
	bool doomed;                /* free at the last release */
	bool aborted;               /* smtp_client_abort(): no more callbacks */
	struct smtp_client_set *set;        /* the caller's, while this client exists */
	struct smtp_client *set_prev, *set_next;
};

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void try_hops(struct smtp_client *c);
static void pump(struct smtp_client *c);
static void rearm(struct smtp_client *c, bool force);

/* ---- small helpers -------------------------------------------------- */

static void reply_vset(struct smtp_reply *r, int code, const char *enh, const char *fmt, va_list ap)
{
	r->code = code;
	snprintf(r->enh, sizeof(r->enh), "%s", enh ? enh : "");
	vsnprintf(r->text, sizeof(r->text), fmt, ap);
	r->fault = SMTP_FAULT_LOCAL;
}

const char *smtp_fault_name(enum smtp_fault f)
{
	switch (f) {
	case SMTP_REPLY: return "reply";
	case SMTP_FAULT_LOCAL: return "local";
	case SMTP_FAULT_CONNECT: return "connect";
	case SMTP_FAULT_TIMEOUT: return "timeout";
	case SMTP_FAULT_LOST: return "lost";
	case SMTP_FAULT_PROTOCOL: return "protocol";
	case SMTP_FAULT_TLS: return "tls";
	case SMTP_FAULT_AUTH: return "auth";
	case SMTP_FAULT_ROUTE: return "route";
	}
	return "?";
}

static void reply_set(struct smtp_reply *r, int code, const char *enh, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void reply_set(struct smtp_reply *r, int code, const char *enh, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	reply_vset(r, code, enh, fmt, ap);
	va_end(ap);
}

static const char *cmd_name(const struct cmd *e)
{
	switch (e->kind) {
	case CMD_XFORWARD: return "XFORWARD";
	case CMD_MAIL: return "MAIL";
	case CMD_RCPT: return "RCPT";
	case CMD_DATA: return e->dphase == 0 ? "DATA" : e->dphase == 1 ? "message body" : "end of data";
	case CMD_RSET: return "RSET";
	case CMD_QUIT: return "QUIT";
	}
	return "?";
}

static const char *phase_name(enum phase p)
{
	switch (p) {
	case PH_START: return "start";
	case PH_CONNECTING: return "connect";
	case PH_GREETING: return "greeting";
	case PH_EHLO: return "EHLO";
	case PH_HELO: return "HELO";
	case PH_STARTTLS: return "STARTTLS";
	case PH_TLS: return "TLS handshake";
	case PH_AUTH: return "AUTH";
	case PH_READY: return "ready";
	case PH_DEAD: return "dead";
	}
	return "?";
}

static void hold(struct smtp_client *c)
{
	c->busy++;
}

static void destroy(struct smtp_client *c);

static void release(struct smtp_client *c)
{
	if (--c->busy == 0 && c->doomed)
		destroy(c);
}

static void kick(struct smtp_client *c)
{
	event_active(c->kick, EV_TIMEOUT, 0);
}

static void arm(struct smtp_client *c, long long ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
	evtimer_add(c->timer, &tv);
}

static void disarm(struct smtp_client *c)
{
	evtimer_del(c->timer);
}

static void conn_close(struct smtp_client *c)
{
	if (c->bev) {
		sockout_forget(&c->wout);
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	disarm(c);
	c->tls_on = false;
	c->tls_desc[0] = '\0';
	buf_reset(&c->line);
	buf_reset(&c->lines);
	c->nlines = 0;
}

static void cmd_free(struct cmd *e)
{
	buf_free(&e->line);
	free(e->replies);
	free(e);
}

/* Credentials are wiped before their memory goes back to the allocator. */
static void free_secret(char *s)
{
	if (s) {
		OPENSSL_cleanse(s, strlen(s));
		free(s);
	}
}

static void destroy(struct smtp_client *c)
{
	if (c->set) {
		c->set->n--;
		if (c->set_prev)
			c->set_prev->set_next = c->set_next;
		else
			c->set->head = c->set_next;
		if (c->set_next)
			c->set_next->set_prev = c->set_prev;
	}
	conn_close(c);
	while (c->head) {
		struct cmd *e = c->head;
		c->head = e->next;
		cmd_free(e);
	}
	event_free(c->timer);
	sockout_free(&c->wout);
	event_free(c->kick);
	for (size_t i = 0; i < c->nhops; i++)
		free(c->hops[i]);
	free(c->hops);
	free(c->helo_name);
	free(c->verify_name);
	strlist_free(&c->verify_names);
	free_secret(c->auth_user);
	free_secret(c->auth_pass);
	free(c->sid);
	buf_free(&c->failures);
	buf_free(&c->line);
	buf_free(&c->lines);
	buf_free(&c->ext_words);
	buf_free(&c->out);
	free(c);
}

static void send_line(struct smtp_client *c, const struct buf *line)
{
	log_debug(c->sid, NULL, "smtp_client_send", "peer=%s cmd=%.*s", c->peer,
		  (int)(line->len >= 2 ? line->len - 2 : line->len), line->data);
	bufferevent_write(c->bev, line->data, line->len);
	sockout_kick(&c->wout);
}

static void send_text(struct smtp_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void send_text(struct smtp_client *c, const char *fmt, ...)
{
	struct buf b = BUF_INIT;
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	buf_puts(&b, "\r\n");
	send_line(c, &b);
	buf_free(&b);
}

/* prefix + base64(raw) + CRLF, sent without the secret ever reaching a log
 * line (shown stands for it) or a buffer that is not wiped. */
static void send_secret(struct smtp_client *c, const char *prefix, const unsigned char *raw, size_t rawlen,
			const char *shown)
{
	size_t plen = strlen(prefix);
	size_t cap = plen + 4 * ((rawlen + 2) / 3) + 3;    /* base64, then NUL or CRLF */
	unsigned char *line = xmalloc(cap);
	memcpy(line, prefix, plen);
	int n = EVP_EncodeBlock(line + plen, raw, (int)rawlen);
	size_t len = plen + (size_t)(n > 0 ? n : 0);
	memcpy(line + len, "\r\n", 2);
	len += 2;
	log_debug(c->sid, NULL, "smtp_client_send", "peer=%s cmd=%s", c->peer, shown);
	bufferevent_write(c->bev, line, len);
	sockout_kick(&c->wout);
	OPENSSL_cleanse(line, cap);
	free(line);
}

/* Address text safe on a command line: no controls, and angle brackets
 * only inside a quoted local part, where RFC 5321 allows them and where
 * our server accepts them ("a>b"@example.com). */
static bool addr_ok(const char *a)
{
	bool quoted = false;
	for (const unsigned char *p = (const unsigned char *)a; *p; p++) {
		if (*p < 0x20 || *p == 0x7f)
			return false;
		if (quoted && *p == '\\' && p[1]) {
			p++;
			if (*p < 0x20 || *p == 0x7f)
				return false;
		} else if (*p == '"') {
			quoted = !quoted;
		} else if (!quoted && (*p == '<' || *p == '>')) {
			return false;
		}
	}
	return !quoted && strlen(a) <= 1000;
}

/* ---- the command FIFO ------------------------------------------------ */

static struct cmd *cmd_new(struct smtp_client *c, enum cmd_kind kind)
{
	struct cmd *e = xcalloc(1, sizeof(*e));
	e->kind = kind;
	buf_init(&e->line);
	e->next = NULL;
	*c->tailp = e;
	c->tailp = &e->next;
	return e;
}

static void cmd_local(struct smtp_client *c, struct cmd *e, const struct smtp_reply *r)
{
	e->local = true;
	e->reply = *r;
	kick(c);
}

static struct cmd *pop_head(struct smtp_client *c)
{
	struct cmd *e = c->head;
	if (e) {
		c->head = e->next;
		if (!c->head)
			c->tailp = &c->head;
		e->next = NULL;
	}
	return e;
}

/* Give entry e its answer.  e is already off the queue; the caller frees. */
static void answer(struct smtp_client *c, struct cmd *e, const struct smtp_reply *r)
{
	(void)c;
	if (e->kind == CMD_DATA) {
		if (!e->dcb)
			return;
		if (e->nexpect > 1 && e->replies) {
			/* LMTP: keep the replies already read, fill the rest */
			for (size_t i = e->ngot; i < e->nexpect; i++)
				e->replies[i] = *r;
			e->dcb(e->arg, e->replies, e->nexpect);
		} else {
			e->dcb(e->arg, r, 1);
		}
		return;
	}
	if (e->cb)
		e->cb(e->arg, r);
}

/* Transaction bookkeeping, in reply order.  When MAIL is refused, the
 * RCPTs and DATA of its transaction get the MAIL's reply rather than the
 * server's "503 need MAIL": a 4xx MAIL refusal must stay a 4xx for every
 * recipient (and a 5xx one names the real reason). */
static void txn_mail_result(struct smtp_client *c, const struct smtp_reply *r)
{
	c->txn_ok = 0;
	c->mail_failed = r->code / 100 != 2;
	if (c->mail_failed)
		c->mail_err = *r;
}

static void txn_end(struct smtp_client *c)
{
	c->txn_ok = 0;
	c->mail_failed = false;
}

/* The reply an RCPT or DATA entry gets, given the transaction state. */
static const struct smtp_reply *txn_reply(struct smtp_client *c, const struct cmd *e, const struct smtp_reply *r)
{
	if ((e->kind == CMD_RCPT || e->kind == CMD_DATA) && c->mail_failed)
		return &c->mail_err;
	return r;
}

/* Answer local entries at the head of the queue, in order. */
static void deliver_locals(struct smtp_client *c)
{
	while (!c->aborted && !c->doomed && c->head && c->head->local) {
		struct cmd *e = pop_head(c);
		struct smtp_reply r = c->dead ? e->reply : *txn_reply(c, e, &e->reply);
		if (e->kind == CMD_MAIL)
			txn_mail_result(c, &r);
		else if (e->kind == CMD_RSET || e->kind == CMD_DATA)
			txn_end(c);
		answer(c, e, &r);
		cmd_free(e);
	}
}

/* ---- faults ------------------------------------------------------------ */

/* The connection is gone after ready: everything queued gets the fault
 * (local entries their own answer), and later calls get it too. */
static void fault(struct smtp_client *c, enum smtp_fault kind, const char *enh, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void fault(struct smtp_client *c, enum smtp_fault kind, const char *enh, const char *fmt, ...)
{
	if (c->dead)
		return;
	char text[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);

	c->dead = true;
	c->phase = PH_DEAD;
	txn_end(c);
	reply_set(&c->fault, 421, enh, "%s (%s)", text, c->peer);
	c->fault.fault = kind;
	if (c->quitting && c->head && c->head->kind == CMD_QUIT && !c->head->next)
		log_debug(c->sid, NULL, "smtp_client_closed", "peer=%s reason=%s", c->peer, text);
	else
		log_warn(c->sid, NULL, "smtp_client_fault", "peer=%s reason=%s", c->peer, text);
	conn_close(c);

	struct cmd *list = c->head;
	c->head = NULL;
	c->tailp = &c->head;
	while (list) {
		struct cmd *e = list;
		list = e->next;
		if (!c->aborted)
			answer(c, e, e->local ? &e->reply : &c->fault);
		cmd_free(e);
	}
	if (c->quitting && !c->head)
		c->doomed = true;
}

/* ---- hop selection and failover ------------------------------------- */

static const char *cur_hop(const struct smtp_client *c)
{
	return c->hops[(c->start + c->tried) % c->nhops];
}

static void note_failure(struct smtp_client *c, enum smtp_fault kind, const char *why, const struct smtp_reply *r)
{
	c->last_fault = kind;
	log_warn(c->sid, NULL, "smtp_client_hop_failed", "hop=%s reason=%s", cur_hop(c), why);
	if (c->failures.len)
		buf_puts(&c->failures, "; ");
	buf_printf(&c->failures, "%s (%s)", cur_hop(c), why);
	if (r && r->code / 100 == 4) {
		c->last4xx = r->code;
		snprintf(c->last4xx_enh, sizeof(c->last4xx_enh), "%s", r->enh);
		c->last4xx_fault = kind;
	}
}

static void all_failed(struct smtp_client *c)
{
	struct smtp_reply err;
	reply_set(&err, c->last4xx ? c->last4xx : 421, c->last4xx_enh[0] ? c->last4xx_enh : "4.4.1",
		  "all next hops failed: %s", c->nhops ? buf_cstr(&c->failures) : "no next hop configured");
	/* the cause goes with the code reported: the hop whose 4xx it is */
	err.fault = !c->nhops ? SMTP_FAULT_LOCAL : c->last4xx ? c->last4xx_fault : c->last_fault;
	log_warn(c->sid, NULL, "smtp_client_all_hops_failed", "hops=%zu reason=%s", c->nhops, err.text);
	c->phase = PH_DEAD;
	c->dead = true;
	c->fault = err;
	c->doomed = true;       /* freed when the callback returns */
	smtp_client_ready_cb cb = c->ready;
	c->ready = NULL;
	if (cb)
		cb(c->ready_arg, NULL, &err);
}

/* A hop found under a host name carries it, Postfix-style:
 * "mx.example.net[192.0.2.1]:25", "mx.example.net[2001:db8::1]:25".  The
 * name goes to name (else ""), the endpoint text ("192.0.2.1:25",
 * "[2001:db8::1]:25", or the hop as it is) to ep.  false: malformed. */
static bool split_hop(const char *hop, char *name, size_t namelen, char *ep, size_t eplen,
		      char *why, size_t whylen)
{
	name[0] = '\0';
	const char *open = strchr(hop, '[');
	if (strncmp(hop, "unix:", 5) == 0 || !open || open == hop) {
		snprintf(ep, eplen, "%s", hop);
		return true;
	}
	size_t nl = (size_t)(open - hop);
	const char *close = strchr(open, ']');
	if (nl >= namelen || !close || (close[1] && close[1] != ':')) {
		snprintf(why, whylen, "bad hop (expected NAME[ADDRESS]:PORT)");
		return false;
	}
	for (size_t i = 0; i < nl; i++) {
		unsigned char ch = (unsigned char)hop[i];
		if (!(isalnum(ch) || ch == '.' || ch == '-' || ch == '_')) {
			snprintf(why, whylen, "bad host name in hop");
			return false;
		}
	}
	char addr[64];
	size_t al = (size_t)(close - open - 1);
	if (al == 0 || al >= sizeof(addr)) {
		snprintf(why, whylen, "bad address in hop");
		return false;
	}
	memcpy(addr, open + 1, al);
	addr[al] = '\0';
	if (!net_is_ip(addr)) {     /* never a name to resolve here */
		snprintf(why, whylen, "hop address is not an IP address");
		return false;
	}
	memcpy(name, hop, nl);
	name[nl] = '\0';
	if (strchr(addr, ':'))
		snprintf(ep, eplen, "[%s]%s", addr, close + 1);
	else
		snprintf(ep, eplen, "%s%s", addr, close + 1);
	return true;
}

/* Start connecting to the current hop.  false: failed at once (noted). */
static bool start_hop(struct smtp_client *c)
{
	char why[256] = "";
	const char *hop = cur_hop(c);
	char eptext[300];

	if (!split_hop(hop, c->hop_name, sizeof(c->hop_name), eptext, sizeof(eptext), why, sizeof(why)) ||
	    !endpoint_parse(eptext, c->lmtp ? 24 : 25, &c->ep, why, sizeof(why))) {
		note_failure(c, SMTP_FAULT_LOCAL, why[0] ? why : "bad address", NULL);
		return false;
	}
	endpoint_format(&c->ep, c->peer, sizeof(c->peer));
	int fd = net_connect_start(&c->ep, why, sizeof(why));
	if (fd < 0) {
		note_failure(c, SMTP_FAULT_CONNECT, why[0] ? why : "connect failed", NULL);
		return false;
	}
	c->bev = bufferevent_socket_new(c->base, fd, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (!c->bev) {
		close(fd);
		note_failure(c, SMTP_FAULT_LOCAL, "cannot create bufferevent", NULL);
		return false;
	}
	bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
	bufferevent_setwatermark(c->bev, EV_WRITE, BODY_LOW, 0);
	if (bufferevent_socket_connect(c->bev, NULL, 0) < 0) {
		conn_close(c);
		note_failure(c, SMTP_FAULT_CONNECT, "connect failed", NULL);
		return false;
	}
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	sockout_attach(&c->wout, c->bev);
	c->phase = PH_CONNECTING;
	c->ext = 0;
	c->size_max = 0;
	c->xfwd_attrs = 0;
	c->mechs = 0;
	c->auth_mech = NULL;
	buf_reset(&c->ext_words);
	arm(c, c->connect_ms);
	log_debug(c->sid, NULL, "smtp_client_connecting", "hop=%s peer=%s tls_retry=%d", hop, c->peer,
		  (int)c->notls);
	return true;
}

/* Try hops from the current one on, until one starts connecting. */
static void try_hops(struct smtp_client *c)
{
	while (c->tried < c->nhops) {
		if (start_hop(c))
			return;
		c->tried++;
		c->notls = false;
	}
	all_failed(c);
}

/* The current hop failed during setup: note it and go on. */
static void hop_fail(struct smtp_client *c, enum smtp_fault kind, const struct smtp_reply *r, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void hop_fail(struct smtp_client *c, enum smtp_fault kind, const struct smtp_reply *r, const char *fmt, ...)
{
	char why[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	conn_close(c);
	note_failure(c, kind, why, r);
	c->tried++;
	c->notls = false;
	try_hops(c);
}

static const char *policy_name(enum smtp_tls_policy p)
{
	switch (p) {
	case TLS_MAY: return "may";
	case TLS_NONE: return "none";
	case TLS_ENCRYPT: return "encrypt";
	case TLS_VERIFY: return "verify";
	}
	return "?";
}

/* No plaintext session may follow a TLS problem. */
static bool tls_required(const struct smtp_client *c)
{
	return c->tls_on_connect || c->policy == TLS_ENCRYPT || c->policy == TLS_VERIFY;
}

/* The TLS handshake failed or could not start.  When TLS is required
 * (implicit TLS, policy encrypt or verify) the hop fails with a 4xx;
 * opportunistic TLS reconnects to the same hop once, without STARTTLS. */
static void tls_failed(struct smtp_client *c, const char *why)
{
	if (tls_required(c)) {
		struct smtp_reply r;
		reply_set(&r, 454, "4.7.5", "TLS handshake failed");
		hop_fail(c, SMTP_FAULT_TLS, &r, "TLS required (%s) but the handshake failed: %s",
			 c->tls_on_connect ? "implicit TLS" : policy_name(c->policy), why);
		return;
	}
	log_warn(c->sid, NULL, "smtp_client_starttls_failed", "peer=%s reason=%s action=%s", c->peer, why,
		 "reconnect_without_tls");
	conn_close(c);
	c->notls = true;
	if (start_hop(c))
		return;
	c->tried++;
	c->notls = false;
	try_hops(c);
}

/* ---- setup dialogue ----------------------------------------------------- */

static const char *helo_name(const struct smtp_client *c)
{
	return c->helo_name ? c->helo_name : "localhost";
}

static void send_ehlo(struct smtp_client *c)
{
	c->ext = 0;
	c->size_max = 0;
	c->xfwd_attrs = 0;
	c->mechs = 0;
	buf_reset(&c->ext_words);
	send_text(c, "%s %s", c->lmtp ? "LHLO" : "EHLO", helo_name(c));
	c->phase = PH_EHLO;
	arm(c, c->command_ms);
}

/* Remember the extensions of an EHLO/LHLO reply (lines after the first). */
static void parse_ehlo(struct smtp_client *c)
{
	const char *p = buf_cstr(&c->lines);
	const char *end = p + c->lines.len;
	bool first = true;

	buf_reset(&c->ext_words);
	buf_putc(&c->ext_words, ' ');
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		if (first) {
			first = false;
			p = le + 1;
			continue;
		}
		/* keyword */
		const char *k = p;
		while (k < le && *k == ' ')
			k++;
		const char *ke = k;
		while (ke < le && *ke != ' ' && *ke != '=')
			ke++;
		size_t kl = (size_t)(ke - k);
		if (kl > 0 && kl < 64) {
			char kw[64];
			for (size_t i = 0; i < kl; i++)
				kw[i] = (char)toupper((unsigned char)k[i]);
			kw[kl] = '\0';
			buf_append(&c->ext_words, kw, kl);
			buf_putc(&c->ext_words, ' ');
			if (strcmp(kw, "PIPELINING") == 0)
				c->ext |= EXT_PIPELINING;
			else if (strcmp(kw, "8BITMIME") == 0)
				c->ext |= EXT_8BITMIME;
			else if (strcmp(kw, "SMTPUTF8") == 0)
				c->ext |= EXT_SMTPUTF8;
			else if (strcmp(kw, "STARTTLS") == 0)
				c->ext |= EXT_STARTTLS;
			else if (strcmp(kw, "ENHANCEDSTATUSCODES") == 0)
				c->ext |= EXT_ENHANCED;
			else if (strcmp(kw, "SIZE") == 0) {
				c->ext |= EXT_SIZE;
				const char *v = ke;
				while (v < le && (*v == ' ' || *v == '='))
					v++;
				unsigned long long n = 0;
				while (v < le && *v >= '0' && *v <= '9' && n < (1ULL << 60))
					n = n * 10 + (unsigned)(*v++ - '0');
				while (v < le && (*v == ' ' || *v == '\t'))
					v++;
				/* "SIZE 1.5e7" or "SIZE 10 MB" is no limit we can
				 * trust: taken as none rather than as 1 or 10, which
				 * would bounce every message */
				c->size_max = v < le ? 0 : n;
			} else if (strcmp(kw, "AUTH") == 0) {
				/* "AUTH PLAIN LOGIN" or the old "AUTH=PLAIN LOGIN" */
				c->ext |= EXT_AUTH;
				const char *v = ke;
				while (v < le) {
					while (v < le && (*v == ' ' || *v == '='))
						v++;
					const char *ve = v;
					while (ve < le && *ve != ' ')
						ve++;
					size_t vl = (size_t)(ve - v);
					if (vl == 5 && strncasecmp(v, "PLAIN", 5) == 0)
						c->mechs |= MECH_PLAIN;
					else if (vl == 5 && strncasecmp(v, "LOGIN", 5) == 0)
						c->mechs |= MECH_LOGIN;
					v = ve;
				}
			} else if (strcmp(kw, "XFORWARD") == 0) {
				c->ext |= EXT_XFORWARD;
				const char *v = ke;
				while (v < le) {
					while (v < le && (*v == ' ' || *v == '='))
						v++;
					const char *ve = v;
					while (ve < le && *ve != ' ')
						ve++;
					for (size_t i = 0; i < XFWD_N; i++)
						if (strlen(xfwd_names[i]) == (size_t)(ve - v) &&
						    strncasecmp(v, xfwd_names[i], (size_t)(ve - v)) == 0)
							c->xfwd_attrs |= 1u << i;
					v = ve;
				}
			}
		}
		p = le + 1;
	}
}

static void become_ready(struct smtp_client *c)
{
	c->phase = PH_READY;
	c->srv_txn = false;
	disarm(c);
	log_info(c->sid, NULL, "smtp_client_connected", "peer=%s proto=%s tls=%s tls_policy=%s auth=%s pipelining=%d",
		 c->peer, c->lmtp ? "LMTP" : (c->ext_words.len ? "ESMTP" : "SMTP"), c->tls_on ? c->tls_desc : "none",
		 policy_name(c->policy), c->auth_mech ? c->auth_mech : "none", (c->ext & EXT_PIPELINING) ? 1 : 0);
	smtp_client_ready_cb cb = c->ready;
	c->ready = NULL;
	if (cb)
		cb(c->ready_arg, c, NULL);
}

static void start_tls(struct smtp_client *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	size_t extra = evbuffer_get_length(in);
	if (extra && !c->tls_on_connect) {
		/* a reply injected before the handshake must not be believed */
		log_warn(c->sid, NULL, "smtp_client_plaintext_after_starttls", "peer=%s bytes=%zu", c->peer, extra);
		evbuffer_drain(in, extra);
	}
	/* With implicit TLS, bytes already here are the server's first TLS
	 * records -- or a plaintext greeting, which then fails the handshake
	 * at once instead of at the timeout. */
	SSL *ssl = SSL_new(tls_ctx_ssl(c->tls));
	if (!ssl) {
		tls_failed(c, "SSL_new failed");
		return;
	}
	/* TLS 1.2 is the floor, whatever context the caller made */
	int minv = SSL_get_min_proto_version(ssl);
	if ((minv == 0 || minv < TLS1_2_VERSION) && SSL_set_min_proto_version(ssl, TLS1_2_VERSION) != 1) {
		SSL_free(ssl);
		tls_failed(c, "cannot set TLS 1.2 as the minimum version");
		return;
	}
	/* The name the certificate must carry, also sent as SNI (not for an
	 * address).  Only the verify policy checks it, whatever the context
	 * says: the others never refuse a certificate.  With verify_names the
	 * certificate may match any of them (SNI: still the hop's name). */
	const char *hop_name = c->hop_name[0] ? c->hop_name : c->ep.is_unix ? NULL : c->ep.host;
	const char *name = c->verify_name ? c->verify_name : hop_name;
	bool ip = name && net_is_ip(name);
	const char *sni = !ip ? name : c->verify_names.n ? c->verify_names.v[0] : NULL;
	if (sni)
		SSL_set_tlsext_host_name(ssl, sni);
	if (c->policy == TLS_VERIFY) {
		SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
		bool ok = false;
		if (c->verify_names.n) {
			SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
			ok = SSL_set1_host(ssl, c->verify_names.v[0]) == 1;
			for (size_t i = 1; ok && i < c->verify_names.n; i++)
				ok = SSL_add1_host(ssl, c->verify_names.v[i]) == 1;
		} else if (!name) {
			SSL_free(ssl);
			tls_failed(c, "no host name to check the certificate against (unix socket hop)");
			return;
		} else if (ip) {
			ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1;
		} else {
			SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
			ok = SSL_set1_host(ssl, name) == 1;
		}
		if (!ok) {
			SSL_free(ssl);
			tls_failed(c, "cannot set the name to check the certificate against");
			return;
		}
	} else {
		SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
		if (name && !ip)
			SSL_set1_host(ssl, name);   /* reported in the log, not enforced */
	}
	sockout_detach(&c->wout);      /* the filter writes from now on */
	struct bufferevent *f = bufferevent_openssl_filter_new(c->base, c->bev, ssl, BUFFEREVENT_SSL_CONNECTING,
							       BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (!f) {
		tls_failed(c, "cannot create TLS bufferevent");
		return;
	}
	c->bev = f;
	bufferevent_openssl_set_allow_dirty_shutdown(f, 1);
	bufferevent_setcb(f, on_read, on_write, on_event, c);
	bufferevent_setwatermark(f, EV_WRITE, BODY_LOW, 0);
	struct timeval tv = { (time_t)(c->command_ms / 1000), (suseconds_t)((c->command_ms % 1000) * 1000) };
	bufferevent_set_timeouts(f, NULL, &tv);
	bufferevent_enable(f, EV_READ | EV_WRITE);
	c->phase = PH_TLS;
	arm(c, c->command_ms);
}

/* AUTH refused (anything but the expected 235 or 334): the hop fails with
 * a 4xx carrying the server's reply, so the caller defers -- an expired or
 * wrong key at the smarthost must never turn mail into bounces. */
static void auth_failed(struct smtp_client *c, const struct smtp_reply *r)
{
	struct smtp_reply e;
	char enh[16] = "4.7.0";
	if (r->enh[0] && r->enh[1] == '.')
		snprintf(enh, sizeof(enh), "4%s", r->enh + 1);
	reply_set(&e, r->code / 100 == 4 ? r->code : 454, enh, "AUTH %s refused", c->auth_mech);
	log_warn(c->sid, NULL, "smtp_client_auth_failed", "peer=%s mech=%s code=%d enh=%s text=%s", c->peer,
		 c->auth_mech, r->code, r->enh, r->text);
	hop_fail(c, SMTP_FAULT_AUTH, &e, "AUTH %s failed: %d %s%s%s", c->auth_mech, r->code, r->enh, r->enh[0] ? " " : "", r->text);
}

/* Credentials, when configured, go only over TLS (unless plaintext is
 * allowed): AUTH PLAIN with an initial response when offered, else AUTH
 * LOGIN.  Without credentials: ready. */
static void start_auth(struct smtp_client *c)
{
	struct smtp_reply r;
	if (!c->auth_user) {
		become_ready(c);
		return;
	}
	if (!c->tls_on && !c->auth_plaintext_ok) {
		reply_set(&r, 454, "4.7.0", "refusing to send credentials in clear text");
		hop_fail(c, SMTP_FAULT_AUTH, &r, "refusing to send credentials in clear text (no TLS with this server)");
		return;
	}
	if (c->mechs & MECH_PLAIN) {
		/* RFC 4616: authzid (empty) NUL authcid NUL passwd */
		size_t ul = strlen(c->auth_user), pl = strlen(c->auth_pass);
		size_t rl = ul + pl + 2;
		unsigned char *raw = xmalloc(rl);
		raw[0] = '\0';
		memcpy(raw + 1, c->auth_user, ul);
		raw[1 + ul] = '\0';
		memcpy(raw + 2 + ul, c->auth_pass, pl);
		c->auth_mech = "PLAIN";
		c->auth_step = AUTH_PLAIN_SENT;
		send_secret(c, "AUTH PLAIN ", raw, rl, "AUTH PLAIN [credentials]");
		OPENSSL_cleanse(raw, rl);
		free(raw);
	} else if (c->mechs & MECH_LOGIN) {
		c->auth_mech = "LOGIN";
		c->auth_step = AUTH_LOGIN_SENT;
		send_text(c, "AUTH LOGIN");
	} else {
		reply_set(&r, 454, "4.7.0", "no usable AUTH mechanism");
		hop_fail(c, SMTP_FAULT_AUTH, &r, "credentials configured but the server offers %s",
			 (c->ext & EXT_AUTH) ? "neither AUTH PLAIN nor AUTH LOGIN" : "no AUTH");
		return;
	}
	c->phase = PH_AUTH;
	arm(c, c->command_ms);
}

static void auth_reply(struct smtp_client *c, const struct smtp_reply *r)
{
	switch (c->auth_step) {
	case AUTH_PLAIN_SENT:
	case AUTH_PASS_SENT:
		if (r->code == 235) {
			log_info(c->sid, NULL, "smtp_client_auth", "peer=%s mech=%s code=%d", c->peer, c->auth_mech,
				 r->code);
			become_ready(c);
			return;
		}
		break;
	case AUTH_LOGIN_SENT:
		if (r->code == 334) {
			send_secret(c, "", (const unsigned char *)c->auth_user, strlen(c->auth_user), "[user name]");
			c->auth_step = AUTH_USER_SENT;
			arm(c, c->command_ms);
			return;
		}
		break;
	case AUTH_USER_SENT:
		if (r->code == 334) {
			send_secret(c, "", (const unsigned char *)c->auth_pass, strlen(c->auth_pass), "[password]");
			c->auth_step = AUTH_PASS_SENT;
			arm(c, c->command_ms);
			return;
		}
		break;
	}
	auth_failed(c, r);
}

/* EHLO (or HELO) answered: STARTTLS as the policy says, then AUTH, then
 * ready.  A required TLS that is not offered fails the hop. */
static void setup_next(struct smtp_client *c)
{
	if (!c->tls_on) {
		if (c->tls && c->policy != TLS_NONE && !c->notls && (c->ext & EXT_STARTTLS)) {
			send_text(c, "STARTTLS");
			c->phase = PH_STARTTLS;
			arm(c, c->command_ms);
			return;
		}
		if (tls_required(c)) {
			struct smtp_reply r;
			reply_set(&r, 454, "4.7.4", "TLS required but not offered");
			hop_fail(c, SMTP_FAULT_TLS, &r, "TLS required (policy %s) but not offered by the server%s",
				 policy_name(c->policy), c->phase == PH_HELO ? " (EHLO refused)" : "");
			return;
		}
	}
	start_auth(c);
}

static void setup_reply(struct smtp_client *c, const struct smtp_reply *r)
{
	switch (c->phase) {
	case PH_GREETING:
		if (r->code / 100 != 2) {
			hop_fail(c, SMTP_REPLY, r, "greeting: %d %s%s%s", r->code, r->enh, r->enh[0] ? " " : "", r->text);
			return;
		}
		send_ehlo(c);
		return;
	case PH_EHLO:
		if (r->code / 100 == 2) {
			parse_ehlo(c);
			setup_next(c);
			return;
		}
		if (r->code / 100 == 5 && !c->lmtp && !c->tls_on) {
			log_info(c->sid, NULL, "smtp_client_helo_fallback", "peer=%s code=%d", c->peer, r->code);
			send_text(c, "HELO %s", helo_name(c));
			c->phase = PH_HELO;
			arm(c, c->command_ms);
			return;
		}
		hop_fail(c, SMTP_REPLY, r, "%s: %d %s%s%s", c->lmtp ? "LHLO" : "EHLO", r->code, r->enh, r->enh[0] ? " " : "",
			 r->text);
		return;
	case PH_HELO:
		if (r->code / 100 != 2) {
			hop_fail(c, SMTP_REPLY, r, "HELO: %d %s%s%s", r->code, r->enh, r->enh[0] ? " " : "", r->text);
			return;
		}
		c->ext = 0;
		c->mechs = 0;
		buf_reset(&c->ext_words);
		setup_next(c);
		return;
	case PH_STARTTLS:
		if (r->code == 220) {
			start_tls(c);
			return;
		}
		if (r->code == 421) {
			hop_fail(c, SMTP_REPLY, r, "STARTTLS: %d %s", r->code, r->text);
			return;
		}
		if (tls_required(c)) {
			struct smtp_reply e;
			reply_set(&e, 454, "4.7.4", "TLS required but STARTTLS refused");
			hop_fail(c, SMTP_FAULT_TLS, &e, "TLS required (policy %s) but STARTTLS refused: %d %s%s%s",
				 policy_name(c->policy), r->code, r->enh, r->enh[0] ? " " : "", r->text);
			return;
		}
		/* opportunistic: carry on in plaintext with what EHLO said */
		log_warn(c->sid, NULL, "smtp_client_starttls_refused", "peer=%s code=%d text=%s", c->peer, r->code,
			 r->text);
		start_auth(c);
		return;
	case PH_AUTH:
		auth_reply(c, r);
		return;
	default:
		return;
	}
}

/* ---- replies after ready ------------------------------------------------ */

static void write_body(struct smtp_client *c, struct cmd *e);

static void complete(struct smtp_client *c, const struct smtp_reply *r)
{
	struct cmd *e = pop_head(c);
	answer(c, e, r);
	cmd_free(e);
}

static void data_reply(struct smtp_client *c, struct cmd *e, const struct smtp_reply *r)
{
	if (e->dphase == 0) {
		if (r->code == 354) {
			c->srv_txn = false;     /* the dot ends the transaction */
			if (c->txn_ok == 0) {
				/* pipelined DATA after every RCPT failed, and the
				 * server said 354 anyway: end it empty and report */
				e->no_rcpt = true;
				e->nexpect = 1;
				e->dphase = 2;
				send_text(c, ".");
				rearm(c, true);
				return;
			}
			e->nexpect = c->lmtp ? c->txn_ok : 1;
			e->replies = xcalloc(e->nexpect, sizeof(*e->replies));
			e->dphase = 1;
			e->bol = true;
			write_body(c, e);
			return;
		}
		if (r->code / 100 == 2 || r->code / 100 == 3) {
			fault(c, SMTP_FAULT_PROTOCOL, "4.4.0", "protocol error: unexpected reply %d to DATA", r->code);
			return;
		}
		struct smtp_reply copy = *txn_reply(c, e, r);
		txn_end(c);
		complete(c, &copy);
		return;
	}
	if (e->dphase == 1) {
		/* a reply while we are still sending: take it as the outcome,
		 * but the stream is out of step now, so drop the connection */
		e->ngot = 0;
		txn_end(c);
		struct cmd *d = pop_head(c);
		answer(c, d, r);
		cmd_free(d);
		if (!c->doomed)
			fault(c, SMTP_FAULT_LOST, "4.4.2", "connection dropped after early reply %d during message transfer", r->code);
		return;
	}
	e->replies = e->replies ? e->replies : xcalloc(1, sizeof(*e->replies));
	e->replies[e->ngot++] = *r;
	if (e->ngot < e->nexpect) {
		rearm(c, true);
		return;
	}
	struct smtp_reply nr;
	reply_set(&nr, 554, "5.5.1", "no valid recipients");
	nr = *txn_reply(c, e, &nr);
	txn_end(c);
	struct cmd *d = pop_head(c);
	if (d->no_rcpt) {
		answer(c, d, &nr);
	} else if (d->dcb) {
		d->dcb(d->arg, d->replies, d->nexpect);
	}
	cmd_free(d);
}

static void ready_reply(struct smtp_client *c, const struct smtp_reply *r)
{
	deliver_locals(c);
	if (c->doomed || c->dead)
		return;
	struct cmd *e = c->head;
	if (!e || !e->sent) {
		if (r->code == 421)
			fault(c, SMTP_REPLY, "4.4.2", "server closing: %d %s", r->code, r->text);
		else
			fault(c, SMTP_FAULT_PROTOCOL, "4.4.0", "protocol error: unexpected reply %d", r->code);
		return;
	}
	/* 3xx answers only DATA (354) and AUTH, which is not read here; a
	 * 3xx to anything else would reach our callers as an outcome that is
	 * neither success nor refusal (proxy mode would pass "354" on as the
	 * answer to RCPT) */
	if (r->code / 100 == 3 && e->kind != CMD_QUIT && !(e->kind == CMD_DATA && e->dphase == 0)) {
		fault(c, SMTP_FAULT_PROTOCOL, "4.4.0", "protocol error: unexpected reply %d", r->code);
		return;
	}
	switch (e->kind) {
	case CMD_XFORWARD:
		if (r->code / 100 != 2)
			log_warn(c->sid, NULL, "smtp_client_xforward_refused", "peer=%s code=%d text=%s", c->peer,
				 r->code, r->text);
		complete(c, r);
		break;
	case CMD_MAIL:
		txn_mail_result(c, r);
		complete(c, r);
		break;
	case CMD_RSET:
		txn_end(c);
		complete(c, r);
		break;
	case CMD_RCPT: {
		struct smtp_reply copy = *txn_reply(c, e, r);
		if (copy.code / 100 == 2)
			c->txn_ok++;
		complete(c, &copy);
		break;
	}
	case CMD_DATA:
		data_reply(c, e, r);
		break;
	case CMD_QUIT:
		pop_head(c);
		cmd_free(e);
		log_debug(c->sid, NULL, "smtp_client_quit", "peer=%s code=%d", c->peer, r->code);
		conn_close(c);
		c->dead = true;
		c->phase = PH_DEAD;
		reply_set(&c->fault, 421, "4.4.2", "connection closed (%s)", c->peer);
		c->fault.fault = SMTP_FAULT_LOST;
		c->doomed = true;
		return;
	}
	if (c->doomed || c->dead)
		return;
	deliver_locals(c);
	if (c->doomed)
		return;
	pump(c);
	rearm(c, true);
}

/* ---- reading ------------------------------------------------------------ */

/* Parse enh code at the start of t: "x.y.z" then space or end. */
static size_t parse_enh(const char *t, size_t n, int code, char enh[16])
{
	size_t i = 0;
	enh[0] = '\0';
	if (n < 5 || t[0] != '0' + code / 100 || t[1] != '.')
		return 0;
	i = 2;
	size_t d = 0;
	while (i < n && t[i] >= '0' && t[i] <= '9' && d < 3)
		i++, d++;
	if (d == 0 || i >= n || t[i] != '.')
		return 0;
	i++;
	d = 0;
	while (i < n && t[i] >= '0' && t[i] <= '9' && d < 3)
		i++, d++;
	if (d == 0 || (i < n && t[i] != ' '))
		return 0;
	memcpy(enh, t, i);
	enh[i] = '\0';
	while (i < n && t[i] == ' ')
		i++;
	return i;
}

/* One line: 0 more to come, 1 reply complete (into r), -1 malformed. */
static int parse_line(struct smtp_client *c, const char *s, size_t n, struct smtp_reply *r, char *why,
		      size_t whylen)
{
	if (memchr(s, '\0', n)) {
		snprintf(why, whylen, "NUL byte in reply");
		return -1;
	}
	if (n < 3 || s[0] < '2' || s[0] > '5' || !isdigit((unsigned char)s[1]) ||
	    !isdigit((unsigned char)s[2]) || (n > 3 && s[3] != ' ' && s[3] != '-')) {
		snprintf(why, whylen, "malformed reply line \"%.40s\"", s);
		return -1;
	}
	int code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
	if (c->nlines > 0 && code != c->rcode) {
		snprintf(why, whylen, "reply code changed from %d to %d within a reply", c->rcode, code);
		return -1;
	}
	if (++c->nlines > REPLY_LINES_MAX) {
		snprintf(why, whylen, "reply longer than %d lines", REPLY_LINES_MAX);
		return -1;
	}
	c->rcode = code;
	const char *t = n > 4 ? s + 4 : s + n;
	size_t tl = n > 4 ? n - 4 : 0;
	buf_append(&c->lines, t, tl);
	buf_putc(&c->lines, '\n');
	if (n > 3 && s[3] == '-')
		return 0;

	memset(r, 0, sizeof(*r));
	r->code = code;
	size_t skip = parse_enh(t, tl, code, r->enh);
	size_t ml = tl - skip;
	if (ml >= sizeof(r->text))
		ml = sizeof(r->text) - 1;
	memcpy(r->text, t + skip, ml);
	r->text[ml] = '\0';
	return 1;
}

static void protocol_error(struct smtp_client *c, const char *why)
{
	if (c->phase < PH_READY) {
		struct smtp_reply r;
		reply_set(&r, 421, "4.4.0", "protocol error");
		hop_fail(c, SMTP_FAULT_PROTOCOL, &r, "protocol error: %s", why);
	} else {
		fault(c, SMTP_FAULT_PROTOCOL, "4.4.0", "protocol error: %s", why);
	}
}

/* Parse and dispatch the complete reply lines buffered on bev. */
static void process_input(struct smtp_client *c, struct bufferevent *bev)
{
	struct evbuffer *in = bufferevent_get_input(bev);
	while (!c->doomed && c->bev == bev && c->phase != PH_CONNECTING && c->phase != PH_TLS) {
		size_t eol_len = 0;
		struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
		if (p.pos < 0) {
			if (evbuffer_get_length(in) > REPLY_LINE_MAX)
				protocol_error(c, "reply line too long");
			break;
		}
		if ((size_t)p.pos > REPLY_LINE_MAX) {
			protocol_error(c, "reply line too long");
			break;
		}
		buf_reset(&c->line);
		buf_append(&c->line, evbuffer_pullup(in, p.pos), (size_t)p.pos);
		evbuffer_drain(in, (size_t)p.pos + eol_len);

		struct smtp_reply r;
		char why[128];
		int rc = parse_line(c, c->line.data, c->line.len, &r, why, sizeof(why));
		if (rc < 0) {
			protocol_error(c, why);
			break;
		}
		if (rc == 0)
			continue;
		log_debug(c->sid, NULL, "smtp_client_reply", "peer=%s code=%d enh=%s text=%s", c->peer, r.code,
			  r.enh, r.text);
		if (c->phase == PH_READY)
			ready_reply(c, &r);
		else if (c->phase < PH_READY)
			setup_reply(c, &r);
		buf_reset(&c->lines);
		c->nlines = 0;
	}
}

static void on_read(struct bufferevent *bev, void *arg)
{
	struct smtp_client *c = arg;
	hold(c);
	process_input(c, bev);
	release(c);
}

/* ---- writing ------------------------------------------------------------ */

/* Dot-stuff p[0..n) into out.  Line ends become CRLF: a bare CR or LF is
 * turned into CRLF too, so no next hop, lenient or strict, can find an
 * end of data inside the message (SMTP smuggling); canonical input is
 * unchanged apart from the stuffing. */
static void stuff(struct cmd *e, const char *p, size_t n, struct buf *out)
{
	size_t i = 0;
	buf_reserve(out, n + n / 16 + 8);
	while (i < n) {
		char ch = p[i];
		if (e->pending_cr) {
			e->pending_cr = false;
			buf_append(out, "\r\n", 2);
			e->bol = true;
			if (ch == '\n') {
				i++;
				continue;
			}
		}
		if (ch == '\r') {
			e->pending_cr = true;
			i++;
			continue;
		}
		if (ch == '\n') {
			buf_append(out, "\r\n", 2);
			e->bol = true;
			i++;
			continue;
		}
		if (e->bol && ch == '.')
			buf_putc(out, '.');
		size_t j = i;
		while (j < n && p[j] != '\r' && p[j] != '\n')
			j++;
		buf_append(out, p + i, j - i);
		e->bol = false;
		i = j;
	}
}

static void write_body(struct smtp_client *c, struct cmd *e)
{
	struct evbuffer *outb = bufferevent_get_output(c->bev);
	while (e->off < e->len && evbuffer_get_length(outb) < BODY_HIGH) {
		size_t n = e->len - e->off;
		if (n > BODY_CHUNK)
			n = BODY_CHUNK;
		buf_reset(&c->out);
		stuff(e, e->data + e->off, n, &c->out);
		e->off += n;
		bufferevent_write(c->bev, c->out.data, c->out.len);
		sockout_kick(&c->wout);
	}
	if (e->off < e->len)
		return;         /* on_write continues */
	buf_reset(&c->out);
	if (e->pending_cr || !e->bol)
		buf_append(&c->out, "\r\n", 2);
	buf_append(&c->out, ".\r\n", 3);
	bufferevent_write(c->bev, c->out.data, c->out.len);
	sockout_kick(&c->wout);
	buf_free(&c->out);
	e->pending_cr = false;
	e->dphase = 2;
	rearm(c, true);
	pump(c);
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct smtp_client *c = arg;
	if (!bev || bev != c->bev)
		return;
	sockout_written(&c->wout);
	if (c->phase != PH_READY)
		return;
	hold(c);
	for (struct cmd *e = c->head; e; e = e->next)
		if (e->kind == CMD_DATA && e->sent && e->dphase == 1) {
			write_body(c, e);
			break;
		}
	release(c);
}

/* A direct write left nothing behind: as the write callback. */
static void wout_drained(void *arg)
{
	struct smtp_client *c = arg;
	on_write(c->bev, c);
}

/* Send what may be sent now.  With PIPELINING everything up to and
 * including the next DATA (or QUIT) goes at once; without it one command
 * at a time.  The body goes only after 354 (write_body).
 *
 * A server-side transaction left open (DATA refused or not sent because
 * no RCPT was accepted, or the caller started over without RSET) is
 * closed with an internal RSET before the next XFORWARD or MAIL, so the
 * next hop never sees a nested MAIL.  An extra RSET after a refused MAIL
 * is harmless. */
static void pump(struct smtp_client *c)
{
	if (c->dead || c->phase != PH_READY || !c->bev)
		return;
	bool pipelining = (c->ext & EXT_PIPELINING) != 0;
	bool outstanding = false;
	struct cmd **link = &c->head;
	for (struct cmd *e = c->head; e; link = &e->next, e = e->next) {
		if (e->local)
			continue;
		if (e->sent) {
			if ((e->kind == CMD_DATA && e->dphase < 2) || e->kind == CMD_QUIT || !pipelining)
				return;
			outstanding = true;
			continue;
		}
		if (e->kind == CMD_DATA && !outstanding && c->txn_ok == 0) {
			/* every RCPT of this transaction is answered and none
			 * was accepted: do not send DATA at all */
			struct smtp_reply r;
			reply_set(&r, 554, "5.5.1", "no valid recipients");
			cmd_local(c, e, &r);
			continue;
		}
		if ((e->kind == CMD_MAIL || e->kind == CMD_XFORWARD) && c->srv_txn) {
			struct cmd *r = xcalloc(1, sizeof(*r));
			r->kind = CMD_RSET;
			buf_puts(&r->line, "RSET\r\n");
			r->next = e;
			*link = r;
			e = r;
		}
		send_line(c, &e->line);
		e->sent = true;
		outstanding = true;
		if (e->kind == CMD_MAIL)
			c->srv_txn = true;
		else if (e->kind == CMD_RSET)
			c->srv_txn = false;
		if (e->kind == CMD_DATA || e->kind == CMD_QUIT || !pipelining)
			break;
	}
	rearm(c, false);
}

/* Deadline for the oldest reply we wait for. */
static void rearm(struct smtp_client *c, bool force)
{
	if (c->phase != PH_READY || c->dead)
		return;
	struct cmd *e = c->head;
	while (e && e->local)
		e = e->next;
	if (!e || !e->sent || (e->kind == CMD_DATA && e->dphase == 1)) {
		disarm(c);
		return;
	}
	if (!force && evtimer_pending(c->timer, NULL))
		return;
	arm(c, (e->kind == CMD_DATA && e->dphase == 2) ? c->data_ms : c->command_ms);
}

/* ---- events and timers -------------------------------------------------- */

/* The OpenSSL errors libevent saw during the handshake, "; "-separated.
 * Besides OpenSSL's error queue libevent records the bare SSL_get_error()
 * code (library 0): it is put in words when there is nothing better. */
static void tls_error_text(struct bufferevent *bev, char *out, size_t outlen, int sockerr)
{
	size_t used = 0;
	unsigned long e;
	const char *bare = NULL;
	out[0] = '\0';
	while ((e = bufferevent_get_openssl_error(bev)) != 0) {
		char one[256];
		if (ERR_GET_LIB(e) == 0) {
			int code = ERR_GET_REASON(e);
			bare = code == SSL_ERROR_SYSCALL ? (sockerr ? strerror(sockerr) : "connection closed during handshake")
			       : code == SSL_ERROR_ZERO_RETURN ? "TLS connection closed by peer"
			       : code == SSL_ERROR_SSL ? "TLS protocol error"
			       : "TLS error";
			continue;
		}
		ERR_error_string_n(e, one, sizeof(one));
		if (strstr(out, one))
			continue;
		int n = snprintf(out + used, outlen - used, "%s%s", used ? "; " : "", one);
		if (n < 0 || (size_t)n >= outlen - used) {
			while (bufferevent_get_openssl_error(bev))
				;
			break;
		}
		used += (size_t)n;
	}
	if (out[0]) {
		return;
	} else if (bare) {
		snprintf(out, outlen, "%s", bare);
	} else if (sockerr) {
		snprintf(out, outlen, "%s", strerror(sockerr));
	} else {
		snprintf(out, outlen, "connection closed during handshake");
	}
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct smtp_client *c = arg;
	int err = EVUTIL_SOCKET_ERROR();
	if (bev != c->bev)
		return;
	hold(c);
	if (c->phase == PH_CONNECTING) {
		if (what & BEV_EVENT_CONNECTED) {
			struct timeval tv = { (time_t)(c->command_ms / 1000),
					      (suseconds_t)((c->command_ms % 1000) * 1000) };
			bufferevent_set_timeouts(bev, NULL, &tv);
			if (c->tls_on_connect) {
				start_tls(c);   /* implicit TLS: the greeting comes inside */
			} else {
				c->phase = PH_GREETING;
				arm(c, c->command_ms);
				process_input(c, bev);  /* a greeting read before this event */
			}
		} else {
			hop_fail(c, SMTP_FAULT_CONNECT, NULL, "connect: %s", err ? strerror(err) : "failed");
		}
	} else if (c->phase == PH_TLS) {
		SSL *ssl = bufferevent_openssl_get_ssl(bev);
		long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_ERR_UNSPECIFIED;
		if ((what & BEV_EVENT_CONNECTED) && c->policy == TLS_VERIFY &&
		    (vr != X509_V_OK || !SSL_get0_peer_certificate(ssl))) {
			/* cannot happen with SSL_VERIFY_PEER; never trust it anyway */
			char why[300];
			snprintf(why, sizeof(why), "certificate not verified: %s",
				 vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "no certificate");
			tls_failed(c, why);
		} else if (what & BEV_EVENT_CONNECTED) {
			c->tls_on = true;
			tls_describe(ssl, c->tls_desc, sizeof(c->tls_desc));
			log_debug(c->sid, NULL, "smtp_client_tls", "peer=%s tls=%s policy=%s verify=%s", c->peer,
				  c->tls_desc, policy_name(c->policy), X509_verify_cert_error_string(vr));
			if (c->tls_on_connect) {
				c->phase = PH_GREETING;
				arm(c, c->command_ms);
				process_input(c, bev);  /* a greeting read with the handshake */
			} else {
				send_ehlo(c);
			}
		} else {
			char why[256], full[512];
			tls_error_text(bev, why, sizeof(why), err);
			if (c->policy == TLS_VERIFY && vr != X509_V_OK)
				snprintf(full, sizeof(full), "%s (certificate: %s)", why,
					 X509_verify_cert_error_string(vr));
			else
				snprintf(full, sizeof(full), "%s", why);
			tls_failed(c, full);
		}
	} else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
		const char *how = (what & BEV_EVENT_TIMEOUT) ? "write timeout"
				  : (what & BEV_EVENT_EOF) ? "connection closed by peer"
				  : err ? strerror(err) : "connection error";
		if (c->phase < PH_READY) {
			hop_fail(c, SMTP_FAULT_LOST, NULL, "%s during %s", how, phase_name(c->phase));
		} else if (c->phase == PH_READY) {
			struct cmd *e = c->head;
			while (e && e->local)
				e = e->next;
			if (e && e->sent)
				fault(c, SMTP_FAULT_LOST, "4.4.2", "connection lost (%s) waiting for reply to %s", how, cmd_name(e));
			else
				fault(c, SMTP_FAULT_LOST, "4.4.2", "connection lost (%s)", how);
		}
	}
	release(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_client *c = arg;
	(void)fd;
	(void)what;
	hold(c);
	switch (c->phase) {
	case PH_CONNECTING:
		hop_fail(c, SMTP_FAULT_TIMEOUT, NULL, "connect timeout after %lld ms", c->connect_ms);
		break;
	case PH_TLS: {
		char why[64];
		snprintf(why, sizeof(why), "handshake timeout after %lld ms", c->command_ms);
		tls_failed(c, why);
		break;
	}
	case PH_GREETING:
	case PH_EHLO:
	case PH_HELO:
	case PH_STARTTLS:
	case PH_AUTH:
		hop_fail(c, SMTP_FAULT_TIMEOUT, NULL, "timeout after %lld ms waiting for %s reply", c->command_ms, phase_name(c->phase));
		break;
	case PH_READY: {
		struct cmd *e = c->head;
		while (e && e->local)
			e = e->next;
		long long ms = (e && e->kind == CMD_DATA && e->dphase == 2) ? c->data_ms : c->command_ms;
		fault(c, SMTP_FAULT_TIMEOUT, "4.4.2", "timeout after %lld ms waiting for reply to %s", ms, e ? cmd_name(e) : "command");
		break;
	}
	default:
		break;
	}
	release(c);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_client *c = arg;
	(void)fd;
	(void)what;
	hold(c);
	if (c->phase == PH_START && c->config_err[0]) {
		c->last4xx = 451;
		snprintf(c->last4xx_enh, sizeof(c->last4xx_enh), "4.3.5");
		c->last_fault = c->last4xx_fault = SMTP_FAULT_LOCAL;
		buf_printf(&c->failures, "configuration error: %s", c->config_err);
		all_failed(c);
	} else if (c->phase == PH_START) {
		try_hops(c);
	} else {
		deliver_locals(c);
		if (!c->doomed) {
			pump(c);
			if (c->quitting && c->dead && !c->head)
				c->doomed = true;
		}
	}
	release(c);
}

/* ---- public API --------------------------------------------------------- */

static unsigned random_start(void)
{
	unsigned r = 0;
	if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r))
		r = (unsigned)getpid() ^ (unsigned)time(NULL) ^ (unsigned)clock();
	return r;
}

void smtp_client_connect_rotating(struct event_base *base, const struct smtp_client_opts *opts,
				  struct smtp_rotor *rotor, smtp_client_ready_cb ready, void *arg)
{
	struct smtp_client *c = xcalloc(1, sizeof(*c));
	c->base = base;
	c->set = opts->set;
	if (c->set) {
		c->set->n++;
		c->set_next = c->set->head;
		if (c->set_next)
			c->set_next->set_prev = c;
		c->set->head = c;
	}
	if (opts->hops && opts->hops->n) {
		c->nhops = opts->hops->n;
		c->hops = xcalloc(c->nhops, sizeof(*c->hops));
		for (size_t i = 0; i < c->nhops; i++)
			c->hops[i] = xstrdup(opts->hops->v[i]);
	}
	c->lmtp = opts->lmtp;
	c->helo_name = opts->helo_name && opts->helo_name[0] ? xstrdup(opts->helo_name) : NULL;
	if (c->helo_name)
		for (char *p = c->helo_name; *p; p++)
			if ((unsigned char)*p <= ' ' || *p == 0x7f)
				*p = '-';
	c->tls = opts->tls;
	c->policy = opts->tls_policy;
	c->verify_name = opts->tls_verify_name && opts->tls_verify_name[0] ? xstrdup(opts->tls_verify_name) : NULL;
	if (opts->tls_verify_names && opts->tls_verify_names->n) {
		c->verify_names.v = xcalloc(opts->tls_verify_names->n, sizeof(char *));
		for (size_t i = 0; i < opts->tls_verify_names->n; i++)
			if (opts->tls_verify_names->v[i] && opts->tls_verify_names->v[i][0])
				c->verify_names.v[c->verify_names.n++] = xstrdup(opts->tls_verify_names->v[i]);
	}
	c->tls_on_connect = opts->tls_on_connect;
	if (opts->auth_user && opts->auth_user[0]) {
		c->auth_user = xstrdup(opts->auth_user);
		c->auth_pass = xstrdup(opts->auth_pass ? opts->auth_pass : "");
	}
	c->auth_plaintext_ok = opts->auth_allow_plaintext;
	if (c->policy != TLS_MAY && c->policy != TLS_NONE && c->policy != TLS_ENCRYPT && c->policy != TLS_VERIFY)
		snprintf(c->config_err, sizeof(c->config_err), "unknown TLS policy %d", (int)c->policy);
	else if (c->tls_on_connect && !c->tls)
		snprintf(c->config_err, sizeof(c->config_err), "implicit TLS needs a TLS client context");
	else if (tls_required(c) && !c->tls)
		snprintf(c->config_err, sizeof(c->config_err), "TLS policy %s needs a TLS client context",
			 policy_name(c->policy));
	else if (c->auth_user && !c->auth_plaintext_ok && !c->tls_on_connect && (!c->tls || c->policy == TLS_NONE))
		snprintf(c->config_err, sizeof(c->config_err),
			 "AUTH credentials need TLS (a TLS context and a policy other than none) "
			 "or auth_allow_plaintext");
	else if (c->auth_user && (strlen(c->auth_user) > CRED_MAX || strlen(c->auth_pass) > CRED_MAX))
		snprintf(c->config_err, sizeof(c->config_err), "AUTH user name or password longer than %d bytes",
			 CRED_MAX);
	c->xforward = opts->xforward;
	c->connect_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : DEF_CONNECT_MS;
	c->command_ms = opts->command_timeout_ms > 0 ? opts->command_timeout_ms : DEF_COMMAND_MS;
	c->data_ms = opts->data_timeout_ms > 0 ? opts->data_timeout_ms : DEF_DATA_MS;
	c->sid = opts->log_sid ? xstrdup(opts->log_sid) : NULL;
	c->ready = ready;
	c->ready_arg = arg;
	if (c->nhops) {
		unsigned s = rotor ? rotor->next++ : random_start();
		c->start = s % c->nhops;
	}
	buf_init(&c->failures);
	buf_set_limit(&c->failures, FAILURES_MAX);
	buf_init(&c->line);
	buf_init(&c->lines);
	buf_set_limit(&c->lines, (size_t)REPLY_LINES_MAX * (REPLY_LINE_MAX + 1) + 1);
	buf_init(&c->ext_words);
	buf_set_limit(&c->ext_words, 8192);
	buf_init(&c->out);
	c->tailp = &c->head;
	c->phase = PH_START;
	c->timer = evtimer_new(base, on_timer, c);
	sockout_init(&c->wout, base, wout_drained, NULL, c);
	c->kick = event_new(base, -1, 0, on_kick, c);
	strcpy(c->peer, "-");
	kick(c);
}

void smtp_client_connect(struct event_base *base, const struct smtp_client_opts *opts,
			 smtp_client_ready_cb ready, void *arg)
{
	smtp_client_connect_rotating(base, opts, NULL, ready, arg);
}

bool smtp_client_has_ext(const struct smtp_client *c, const char *ext)
{
	size_t n = strlen(ext);
	const char *p = buf_cstr(&c->ext_words);
	while (*p) {
		while (*p == ' ')
			p++;
		const char *e = strchr(p, ' ');
		size_t l = e ? (size_t)(e - p) : strlen(p);
		if (l && l == n && strncasecmp(p, ext, n) == 0)
			return true;
		p += l;
	}
	return false;
}

const char *smtp_client_peer(const struct smtp_client *c)
{
	return c->peer;
}

const char *smtp_client_tls(const struct smtp_client *c)
{
	return c->tls_on ? c->tls_desc : NULL;
}

/* xtext (RFC 3461 section 4) of s into b. */
static void xtext(struct buf *b, const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p >= '!' && *p <= '~' && *p != '+' && *p != '=')
			buf_putc(b, (char)*p);
		else
			buf_printf(b, "+%02X", *p);
	}
}

static void queue_xforward(struct smtp_client *c, const struct env_client *cl)
{
	struct buf line = BUF_INIT, attr = BUF_INIT;
	char port[16];
	snprintf(port, sizeof(port), "%d", cl->port);
	const char *vals[XFWD_N] = {
		cl->name && cl->name[0] && strcasecmp(cl->name, "unknown") != 0 ? cl->name : NULL,
		cl->addr && cl->addr[0] ? cl->addr : NULL,
		cl->port > 0 ? port : NULL,
		cl->proto && cl->proto[0] ? cl->proto : NULL,
		cl->helo && cl->helo[0] ? cl->helo : NULL,
		cl->login && cl->login[0] ? cl->login : NULL,
	};
	for (size_t i = 0; i < XFWD_N; i++) {
		if (!(c->xfwd_attrs & (1u << i)))
			continue;
		buf_reset(&attr);
		buf_printf(&attr, " %s=", xfwd_names[i]);
		size_t vstart = attr.len;
		if (vals[i])
			xtext(&attr, vals[i]);
		if (!vals[i] || attr.len - vstart > XFWD_VALUE_MAX) {
			buf_truncate(&attr, vstart);
			buf_puts(&attr, "[UNAVAILABLE]");
		}
		/* "XFORWARD" + attributes + CRLF must stay below 512 */
		if (line.len && line.len + attr.len + 2 >= CMD_LINE_MAX) {
			struct cmd *e = cmd_new(c, CMD_XFORWARD);
			buf_append(&e->line, line.data, line.len);
			buf_puts(&e->line, "\r\n");
			buf_reset(&line);
		}
		if (!line.len)
			buf_puts(&line, "XFORWARD");
		buf_append(&line, attr.data, attr.len);
	}
	if (line.len) {
		struct cmd *e = cmd_new(c, CMD_XFORWARD);
		buf_append(&e->line, line.data, line.len);
		buf_puts(&e->line, "\r\n");
	}
	buf_free(&line);
	buf_free(&attr);
}

void smtp_client_mail(struct smtp_client *c, const struct envelope *env, size_t size,
		      smtp_client_cb cb, void *arg)
{
	struct smtp_reply r;
	c->api_mail_failed = true;
	if (c->dead) {
		struct cmd *e = cmd_new(c, CMD_MAIL);
		e->cb = cb;
		e->arg = arg;
		cmd_local(c, e, &c->fault);
		return;
	}
	const char *sender = env->sender ? env->sender : "";
	bool bad = false;
	if (!addr_ok(sender)) {
		reply_set(&r, 553, "5.1.7", "bad sender address syntax");
		bad = true;
	} else if (env->smtputf8 && !(c->ext & EXT_SMTPUTF8)) {
		reply_set(&r, 553, "5.6.7", "next hop %s does not support SMTPUTF8", c->peer);
		bad = true;
	} else if ((c->ext & EXT_SIZE) && c->size_max && size > c->size_max) {
		reply_set(&r, 552, "5.3.4", "message size %zu exceeds the limit %llu of %s", size, c->size_max,
			  c->peer);
		bad = true;
	}
	if (bad) {
		struct cmd *e = cmd_new(c, CMD_MAIL);
		e->cb = cb;
		e->arg = arg;
		log_info(c->sid, NULL, "smtp_client_mail_refused", "peer=%s code=%d enh=%s text=%s", c->peer, r.code,
			 r.enh, r.text);
		cmd_local(c, e, &r);
		return;
	}
	c->api_mail_failed = false;
	if (c->xforward && (c->ext & EXT_XFORWARD) && c->xfwd_attrs)
		queue_xforward(c, &env->client);
	struct cmd *e = cmd_new(c, CMD_MAIL);
	e->cb = cb;
	e->arg = arg;
	buf_printf(&e->line, "MAIL FROM:<%s>", sender);
	if ((c->ext & EXT_SIZE) && size > 0)
		buf_printf(&e->line, " SIZE=%zu", size);
	/* Without 8BITMIME at the next hop an 8-bit body is sent as it is:
	 * RFC 6152 would have us convert or bounce, but servers accept it
	 * in practice and a bounce would lose mail for a formality. */
	if (env->body_8bit && (c->ext & EXT_8BITMIME))
		buf_puts(&e->line, " BODY=8BITMIME");
	if (env->smtputf8 && (c->ext & EXT_SMTPUTF8))
		buf_puts(&e->line, " SMTPUTF8");
	buf_puts(&e->line, "\r\n");
	pump(c);
}

void smtp_client_rcpt(struct smtp_client *c, const char *addr, smtp_client_cb cb, void *arg)
{
	struct cmd *e = cmd_new(c, CMD_RCPT);
	e->cb = cb;
	e->arg = arg;
	struct smtp_reply r;
	if (c->dead) {
		cmd_local(c, e, &c->fault);
		return;
	}
	if (c->api_mail_failed) {
		reply_set(&r, 503, "5.5.1", "no mail transaction: MAIL was not sent");
		cmd_local(c, e, &r);
		return;
	}
	if (!addr_ok(addr)) {
		reply_set(&r, 553, "5.1.3", "bad recipient address syntax");
		cmd_local(c, e, &r);
		return;
	}
	buf_printf(&e->line, "RCPT TO:<%s>\r\n", addr);
	pump(c);
}

void smtp_client_data(struct smtp_client *c, const char *data, size_t len, smtp_client_data_cb cb, void *arg)
{
	struct cmd *e = cmd_new(c, CMD_DATA);
	e->dcb = cb;
	e->arg = arg;
	e->data = data;
	e->len = len;
	if (c->dead) {
		cmd_local(c, e, &c->fault);
		return;
	}
	if (c->api_mail_failed) {
		struct smtp_reply r;
		reply_set(&r, 554, "5.5.1", "no valid recipients");
		cmd_local(c, e, &r);
		return;
	}
	buf_puts(&e->line, "DATA\r\n");
	pump(c);
}

void smtp_client_rset(struct smtp_client *c, smtp_client_cb cb, void *arg)
{
	struct cmd *e = cmd_new(c, CMD_RSET);
	e->cb = cb;
	e->arg = arg;
	c->api_mail_failed = false;
	if (c->dead) {
		cmd_local(c, e, &c->fault);
		return;
	}
	buf_puts(&e->line, "RSET\r\n");
	pump(c);
}

void smtp_client_quit(struct smtp_client *c)
{
	if (!c)
		return;
	c->quitting = true;
	if (c->dead) {
		if (!c->head) {
			c->doomed = true;
			if (c->busy == 0)
				destroy(c);
		}
		/* else on_kick answers the local entries, then frees */
		return;
	}
	struct cmd *e = cmd_new(c, CMD_QUIT);
	buf_puts(&e->line, "QUIT\r\n");
	pump(c);
}

void smtp_client_abort(struct smtp_client *c)
{
	if (!c)
		return;
	c->doomed = true;
	c->aborted = true;
	conn_close(c);
	if (c->busy == 0)
		destroy(c);
}

void smtp_client_set_abort(struct smtp_client_set *s)
{
	struct smtp_client *next;
	for (struct smtp_client *c = s->head; c; c = next) {
		next = c->set_next;
		smtp_client_abort(c);
	}
}

bool smtp_client_reusable(const struct smtp_client *c)
{
	return !c->dead && !c->doomed && !c->quitting && !c->aborted && c->phase == PH_READY && !c->head;
}

void smtp_client_set_log_id(struct smtp_client *c, const char *sid)
{
	free(c->sid);
	c->sid = sid ? xstrdup(sid) : NULL;
}
