/*
 * smtp_server.c — SMTP/LMTP server engine on libevent.
 *
 * One struct smtp_session per connection, one struct smtp_txn per mail
 * transaction.  Input is read from a bufferevent: command lines are bounded
 * and dispatched from a table with per-command flags; message data is run
 * through a byte-wise state machine that ends only at CRLF.CRLF, rejects
 * bare CR and bare LF (no SMTP smuggling), un-stuffs dots and bounds the
 * message and its header section.  Every state change goes through
 * enter_state(), which logs it.  Policy lives in the hooks (smtp_server.h).
 */
#include "smtp_server.h"
#include "address.h"
#include "sasl.h"
#include "../util/alloc.h"
#include "../util/id.h"
#include "../util/log.h"
#include "../util/net.h"
#include "../util/sockout.h"
#include "../util/tls.h"

#include <ctype.h>
#include <limits.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

/* A client that pipelines without reading its replies is not served
 * further until the replies it has are under OUT_LOW bytes. */
#define OUT_HIGH (64 * 1024)
#define OUT_LOW (16 * 1024)
/* Input read ahead of what has been processed, at most (the read
 * high-water mark: a client sending faster waits in the kernel). */
#define IN_HIGH (256 * 1024)

enum state {
	ST_GREET_PAUSE,     /* connected, banner not yet sent */
	ST_COMMAND,         /* reading commands */
	ST_DATA,            /* reading message data */
	ST_HOOK,            /* a hook is running; input paused */
	ST_CLOSING,         /* flushing the last reply, then close */
};

static const char *state_names[] = { "greet_pause", "command", "data", "hook", "closing" };

/* What to do when the pending hook answers. */
enum pending {
	PEND_NONE,
	PEND_CONNECT,
	PEND_HELO,
	PEND_MAIL,
	PEND_RCPT,
	PEND_DATA,
	PEND_MESSAGE,
	PEND_AUTH,
};

/* Where an AUTH exchange is (RFC 4954): waiting for the client's next
 * base64 line, or not in one. */
enum sasl_step { SASL_NONE, SASL_PLAIN, SASL_LOGIN_USER, SASL_LOGIN_PASS };

/* A listening socket and how its connections begin. */
struct listener {
	struct smtp_server *srv;
	struct evconnlistener *l;
	bool implicit_tls;
};

struct smtp_server {
	struct event_base *base;
	struct smtp_server_opts opts;
	struct smtp_server_hooks hooks;
	struct listener listeners[16];
	size_t nlisteners;
	size_t nsessions;
	struct smtp_session *sessions;      /* doubly linked, for free() */
	bool draining;                      /* shutting down: no new commands */
	struct conn_count **counts;         /* per client and per network, CONN_BUCKETS chains */
	/* data_rate_limit: the bucket configuration sessions share, and
	 * those of earlier settings, kept while sessions may still use them */
	struct ev_token_bucket_cfg *rate_cfg;
	long long rate_cfg_rate;
	struct ev_token_bucket_cfg **old_rate_cfgs;
	size_t nold_rate_cfgs;
};

/* Connections now open per client address and per network. */
#define CONN_BUCKETS 1024
struct conn_count {
	struct conn_count *next;
	unsigned n;
	char key[64];                       /* "192.0.2.7" or "net:192.0.2.0/24" */
};
static void conn_put(struct smtp_server *srv, struct conn_count *c);

struct smtp_session {
	struct smtp_server *srv;
	struct smtp_session *prev, *next;
	struct conn_count *by_client, *by_net;  /* counted here (NULL: exempt or no limit) */
	char id[ID_LEN + 1];
	struct bufferevent *bev;
	struct event *timer;                /* greet pause */
	struct event *close_wake;           /* closing: the socket below a TLS filter has drained */
	struct evbuffer *under_out;         /* ... watched by under_cb */
	struct evbuffer_cb_entry *under_cb;
	struct sockout out;                 /* plain TCP: replies written at the end of a loop pass */
	enum state state;
	enum state resume_state;            /* state to return to after a hook */
	enum pending pending;
	int refs;
	bool closed;                        /* connection gone or closing */
	bool in_hook_call;                  /* hook running synchronously */
	bool hook_answered;
	bool processing;                    /* inside process_input() */
	bool helo_seen;
	bool refused;               /* greeted with 554: only QUIT (RFC 5321 3.1) */
	bool banner_sent;
	bool esmtp;
	bool tls;
	bool xforward_ok, xclient_ok;
	/* SMTP AUTH */
	enum sasl_step sasl;
	const char *sasl_mech;
	struct sasl_creds *creds;           /* presented, while the AUTH hook runs */
	char *login;                        /* authenticated identity (pool) */
	char tls_info[128];
	struct env_client client;           /* strings owned by pool */
	struct pool *pool;                  /* session-lifetime strings */
	char helo_arg[256];
	unsigned errors;
	struct smtp_txn *txn;
	/* pending hook's answer */
	int reply_code;
	char reply_enh[16];
	char reply_text[512];
	struct smtp_reply_line *replies;
	size_t nreplies;
	/* DATA state machine */
	int dstate;
	bool bare_lf, bare_cr;
	bool crlf_before;                   /* this line began after a CRLF (a "." here may end DATA) */
	bool in_headers;
	size_t line_len;
	size_t cur_header;
	bool header_overflow;
	bool line_overflow;
	/* XFORWARD attributes for the next transaction */
	struct env_client xf;
	bool xf_set;
	bool discarding;                    /* dropping the rest of an over-long line */
	bool out_blocked;                   /* replies piled up: wait for the client to read */
	bool eof;                           /* the client will send no more (half-close) */
	void *user;                         /* the hooks' per-session data */
};

/* ---- small helpers ----------------------------------------------------- */

static void set_deadlines(struct smtp_session *s);

static void enter_state(struct smtp_session *s, enum state st, const char *why)
{
	if (s->state == st)
		return;
	log_debug(s->id, s->txn ? s->txn->qid : NULL, "smtp.state", "from=%s to=%s why=%s",
		  state_names[s->state], state_names[st], why);
	s->state = st;
	set_deadlines(s);
}

static void session_free(struct smtp_session *s);

/* Deadlines: reading a command or message data has its own; while a hook
 * runs the client is waiting for us, so there is no read deadline then
 * (the hook's own work has deadlines of its own); writing always has one. */
static void set_deadlines(struct smtp_session *s)
{
	if (!s->bev)
		return;
	const struct smtp_server_opts *o = &s->srv->opts;
	long long rms = s->state == ST_DATA ? o->data_timeout_ms : o->command_timeout_ms;
	struct timeval r = { rms / 1000, (rms % 1000) * 1000 };
	struct timeval w = { o->command_timeout_ms / 1000, (o->command_timeout_ms % 1000) * 1000 };
	bufferevent_set_timeouts(s->bev, s->state == ST_HOOK ? NULL : &r, &w);
}

void smtp_session_ref(struct smtp_session *s)
{
	s->refs++;
}

void smtp_session_unref(struct smtp_session *s)
{
	if (--s->refs == 0)
		session_free(s);
}

static void send_raw(struct smtp_session *s, const char *p, size_t n)
{
	if (s->bev && !s->closed) {
		bufferevent_write(s->bev, p, n);
		sockout_kick(&s->out);
	}
}

/* One reply line; text may contain '\n' for a multi-line reply. */
static void reply(struct smtp_session *s, int code, const char *enh, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void reply_v(struct smtp_session *s, int code, const char *enh, const char *text)
{
	struct buf b = BUF_INIT;
	const char *p = text;
	do {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		buf_printf(&b, "%03d%c", code, nl ? '-' : ' ');
		if (enh && *enh)
			buf_printf(&b, "%s ", enh);
		/* Never let a CR or LF from a hook's text break the framing,
		 * nor pass on other control bytes (a next hop's reply in proxy
		 * mode is a hook's text): RFC 5321 textstring is HT and
		 * printable characters. */
		for (size_t i = 0; i < n; i++) {
			unsigned char ch = (unsigned char)p[i];
			buf_putc(&b, ch == '\r' ? ' ' : (ch < 0x20 && ch != '\t') || ch == 0x7f ? '?' : (char)ch);
		}
		buf_puts(&b, "\r\n");
		p = nl ? nl + 1 : NULL;
	} while (p);
	send_raw(s, b.data, b.len);
	if (code >= 400)
		log_info(s->id, s->txn ? s->txn->qid : NULL, "smtp.reply", "code=%d enh=%s text=%s",
			 code, enh ? enh : "", text);
	buf_free(&b);
}

static void reply(struct smtp_session *s, int code, const char *enh, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *text = xvasprintf(fmt, ap);
	va_end(ap);
	reply_v(s, code, enh, text);
	free(text);
}

/* Closing: every byte of the last reply is on its way.  After STARTTLS
 * the session writes to a TLS filter whose encrypted output still sits in
 * the socket's own bufferevent below it: that one must drain too.  Its
 * callbacks are the filter's, so a callback on its output buffer says
 * when it has emptied, through an event (never from inside libevent's
 * write, where the session cannot be freed). */
static void close_wake_cb(evutil_socket_t fd, short what, void *arg);
static void under_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct smtp_session *s = arg;
	if (info->n_deleted && evbuffer_get_length(buf) == 0 && s->close_wake)
		event_active(s->close_wake, EV_WRITE, 1);
}

static void closing_check(struct smtp_session *s)
{
	if (s->closed)
		return;
	struct bufferevent *under = bufferevent_get_underlying(s->bev);
	bool drained = evbuffer_get_length(bufferevent_get_output(s->bev)) == 0 &&
		       (!under || evbuffer_get_length(bufferevent_get_output(under)) == 0);
	if (drained) {
		s->closed = true;
		smtp_session_unref(s);  /* the connection's reference */
		return;
	}
	if (under && evbuffer_get_length(bufferevent_get_output(s->bev)) == 0 && !s->close_wake) {
		s->close_wake = event_new(s->srv->base, -1, 0, close_wake_cb, s);
		s->under_out = bufferevent_get_output(under);
		s->under_cb = evbuffer_add_cb(s->under_out, under_drained, s);
	}
	/* else the write callback looks again */
}

static void close_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	closing_check(arg);
}

static void close_after_flush(struct smtp_session *s, const char *why)
{
	if (s->state == ST_CLOSING || !s->bev)
		return;
	enter_state(s, ST_CLOSING, why);
	bufferevent_disable(s->bev, EV_READ);
	bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
	sockout_kick(&s->out);  /* replies held for a pipelined group go now */
	closing_check(s);
}

static bool ip_in(const struct strlist *nets, const char *ip)
{
	return nets && nets->n && cidr_list_match(nets, ip);
}

static void note(struct smtp_server *srv, struct smtp_session *s, const char *name)
{
	if (srv->hooks.event)
		srv->hooks.event(srv->hooks.arg, s, name);
}

/* ---- transactions ------------------------------------------------------ */

static void txn_end(struct smtp_session *s)
{
	if (!s->txn)
		return;
	s->xf_set = false;     /* XFORWARD applies to one transaction */
	if (s->srv->hooks.txn_end)
		s->srv->hooks.txn_end(s->srv->hooks.arg, s);
	envelope_free(s->txn->env);
	buf_free(&s->txn->data);
	free(s->txn);
	s->txn = NULL;
}

static void copy_client(struct pool *p, struct env_client *dst, const struct env_client *src)
{
	dst->addr = pool_strdup(p, src->addr ? src->addr : "");
	dst->name = pool_strdup(p, src->name ? src->name : "unknown");
	dst->helo = pool_strdup(p, src->helo ? src->helo : "");
	dst->proto = pool_strdup(p, src->proto ? src->proto : "SMTP");
	dst->login = src->login ? pool_strdup(p, src->login) : NULL;
	dst->port = src->port;
}

static struct smtp_txn *txn_begin(struct smtp_session *s)
{
	struct smtp_txn *t = xcalloc(1, sizeof(*t));
	id_new(t->qid);
	t->env = envelope_new();
	t->declared_size = -1;
	buf_init(&t->data);
	buf_set_limit(&t->data, (size_t)s->srv->opts.max_message_size);
	/* The client as the next stage should see it: XFORWARD from a
	 * trusted hop overrides the connection's own identity. */
	copy_client(t->env->pool, &t->env->client, s->xf_set ? &s->xf : &s->client);
	if (!s->xf_set)
		t->env->client.proto = pool_strdup(t->env->pool, smtp_session_proto(s));
	s->txn = t;
	return t;
}

/* ---- hooks ------------------------------------------------------------- */

static void process_input(struct smtp_session *s);
static void finish_pending(struct smtp_session *s);
static void install_callbacks(struct smtp_session *s);

/* After a hook: read again, and go on with input already buffered
 * (pipelined commands) unless process_input() is below us on the stack. */
static void resume_reading(struct smtp_session *s)
{
	if (s->closed || !s->bev || (s->state != ST_COMMAND && s->state != ST_DATA))
		return;
	if (!s->processing)
		process_input(s);
	if (s->eof && !s->processing && (s->state == ST_COMMAND || s->state == ST_DATA))
		close_after_flush(s, "client half-closed");
}

static void run_hook(struct smtp_session *s, enum smtp_hook_kind kind, enum pending p)
{
	s->resume_state = s->state == ST_HOOK ? ST_COMMAND : s->state;
	enter_state(s, ST_HOOK, "hook");
	s->pending = p;
	s->reply_code = 0;
	s->reply_enh[0] = s->reply_text[0] = '\0';
	free(s->replies);
	s->replies = NULL;
	s->nreplies = 0;
	s->hook_answered = false;
	/* Input stays enabled: what the client pipelines meanwhile waits in
	 * the input buffer (bounded by its high-water mark) and a hang-up is
	 * noticed at once.  on_read() ignores input while a hook runs. */
	s->in_hook_call = true;
	smtp_session_ref(s);
	s->srv->hooks.hook(s->srv->hooks.arg, s, kind);
	s->in_hook_call = false;
	if (s->hook_answered) {
		finish_pending(s);
		resume_reading(s);
	}
	smtp_session_unref(s);
}

static void answer(struct smtp_session *s)
{
	if (s->closed || s->state == ST_CLOSING)
		return;
	if (s->in_hook_call)
		return;         /* run_hook() finishes when the hook returns */
	smtp_session_ref(s);
	finish_pending(s);
	resume_reading(s);
	smtp_session_unref(s);
}

void smtp_session_reply(struct smtp_session *s, int code, const char *enh, const char *text)
{
	if (s->closed || s->state == ST_CLOSING)
		return;     /* the client is gone or being sent away */
	if (s->pending == PEND_NONE || s->hook_answered)
		log_panic(s->id, NULL, "smtp.hook_reply_unexpected", "code=%d", code);
	s->reply_code = code;
	snprintf(s->reply_enh, sizeof(s->reply_enh), "%s", enh ? enh : "");
	snprintf(s->reply_text, sizeof(s->reply_text), "%s", text ? text : "");
	s->hook_answered = true;
	answer(s);
}

void smtp_session_replies(struct smtp_session *s, const struct smtp_reply_line *r, size_t n)
{
	if (s->closed || s->state == ST_CLOSING)
		return;
	if (s->pending != PEND_MESSAGE || s->hook_answered)
		log_panic(s->id, NULL, "smtp.hook_reply_unexpected", "n=%zu", n);
	s->replies = xmemdup(r, n * sizeof(*r));
	s->nreplies = n;
	s->reply_code = n ? r[0].code : 451;
	if (n) {
		snprintf(s->reply_enh, sizeof(s->reply_enh), "%s", r[0].enh);
		snprintf(s->reply_text, sizeof(s->reply_text), "%s", r[0].text);
	}
	s->hook_answered = true;
	answer(s);
}

/* Send the hook's answer, or the default reply when it had no objection. */
static bool hook_objected(struct smtp_session *s)
{
	if (s->reply_code == 0 || (s->reply_code >= 200 && s->reply_code < 300))
		return false;
	reply_v(s, s->reply_code, s->reply_enh, s->reply_text[0] ? s->reply_text : "Rejected");
	if (s->reply_code == 421) {
		close_after_flush(s, "hook 421");
	} else if (++s->errors >= s->srv->opts.max_errors) {
		/* A client that keeps being refused (a dictionary attack on
		 * RCPT, a spammer retrying senders) is sent away. */
		note(s->srv, s, "too_many_errors");
		reply(s, 421, "4.7.0", "%s Too many errors, closing connection", s->srv->opts.hostname);
		log_warn(s->id, s->txn ? s->txn->qid : NULL, "smtp.too_many_errors", "errors=%u client=%s", s->errors,
			 s->client.addr);
		close_after_flush(s, "too many errors");
	}
	return true;
}

static void default_or_hook(struct smtp_session *s, int code, const char *enh, const char *text)
{
	if (s->reply_code >= 200 && s->reply_code < 300 && s->reply_text[0])
		reply_v(s, s->reply_code, s->reply_enh[0] ? s->reply_enh : enh, s->reply_text);
	else
		reply_v(s, code, enh, text);
}

static void send_banner(struct smtp_session *s)
{
	s->banner_sent = true;
	const struct smtp_server_opts *o = &s->srv->opts;
	reply(s, 220, NULL, "%s %s", o->hostname, o->banner_text ? o->banner_text : (o->lmtp ? "LMTP" : "ESMTP"));
}

static void finish_pending(struct smtp_session *s)
{
	enum pending p = s->pending;
	s->pending = PEND_NONE;
	if (s->state == ST_HOOK)
		enter_state(s, s->resume_state, "hook answered");
	if (s->closed || s->state == ST_CLOSING)
		return;
	struct smtp_txn *t = s->txn;
	switch (p) {
	case PEND_NONE:
		break;
	case PEND_CONNECT:
		if (hook_objected(s)) {
			/* 421: closed at once.  554: RFC 5321 3.1 — the server
			 * waits for QUIT and answers 503 to anything else (each
			 * one an error, so max_errors still ends it). */
			if (s->reply_code != 421 && s->state != ST_CLOSING) {
				s->refused = true;
				enter_state(s, ST_COMMAND, "connect refused, waiting for QUIT");
			} else {
				close_after_flush(s, "connect refused");
			}
			return;
		}
		send_banner(s);
		enter_state(s, ST_COMMAND, "banner sent");
		break;
	case PEND_HELO:
		if (hook_objected(s)) {
			s->helo_seen = false;
			return;
		}
		if (s->esmtp) {
			const struct smtp_server_opts *o = &s->srv->opts;
			struct buf b = BUF_INIT;
			buf_printf(&b, "%s\nPIPELINING\nSIZE %lld\n8BITMIME\nENHANCEDSTATUSCODES\nSMTPUTF8",
				   o->hostname, o->max_message_size);
			if (o->tls && !s->tls)
				buf_puts(&b, "\nSTARTTLS");
			if (o->auth && s->tls && !s->login)
				buf_puts(&b, "\nAUTH PLAIN LOGIN");
			if (s->xforward_ok)
				buf_puts(&b, "\nXFORWARD NAME ADDR PORT PROTO HELO LOGIN SOURCE IDENT");
			if (s->xclient_ok)
				buf_puts(&b, "\nXCLIENT NAME ADDR PORT PROTO HELO LOGIN");
			reply_v(s, 250, NULL, b.data);
			buf_free(&b);
		} else {
			reply(s, 250, NULL, "%s", s->srv->opts.hostname);
		}
		break;
	case PEND_MAIL:
		if (hook_objected(s)) {
			txn_end(s);
			return;
		}
		default_or_hook(s, 250, "2.1.0", "Ok");
		break;
	case PEND_RCPT:
		if (hook_objected(s)) {
			/* Drop the candidate recipient. */
			t->env->nrcpt--;
			t->nrcpt_rejected++;
			return;
		}
		default_or_hook(s, 250, "2.1.5", "Ok");
		break;
	case PEND_DATA:
		if (hook_objected(s))
			return;
		reply(s, 354, NULL, "End data with <CR><LF>.<CR><LF>");
		s->dstate = 0;
		s->crlf_before = true;
		s->bare_cr = s->bare_lf = false;
		s->in_headers = true;
		s->line_len = 0;
		s->cur_header = 0;
		s->header_overflow = false;
		s->line_overflow = false;
		enter_state(s, ST_DATA, "354");
		break;
	case PEND_AUTH: {
		char user[SASL_FIELD_MAX];
		snprintf(user, sizeof(user), "%s", s->creds ? s->creds->user : "");
		if (s->creds) {
			sasl_creds_wipe(s->creds);
			free(s->creds);
			s->creds = NULL;
		}
		/* an explicit yes only: a hook that forgot to answer, or said
		 * "go on", does not log anyone in */
		if (s->reply_code >= 200 && s->reply_code < 300) {
			s->login = pool_strdup(s->pool, user);
			s->client.login = s->login;
			log_info(s->id, NULL, "smtp.auth", "result=ok mech=%s user=%s client=%s", s->sasl_mech, user,
				 s->client.addr);
			reply(s, 235, "2.7.0", "Authentication successful");
			break;
		}
		if (s->reply_code < 400 || s->reply_code > 599) {
			log_error(s->id, NULL, "smtp.auth_hook_unanswered", "code=%d user=%s", s->reply_code, user);
			s->reply_code = 454;
			snprintf(s->reply_enh, sizeof(s->reply_enh), "4.7.0");
			snprintf(s->reply_text, sizeof(s->reply_text), "Temporary authentication failure");
		}
		log_warn(s->id, NULL, "smtp.auth", "result=failed mech=%s user=%s code=%d client=%s", s->sasl_mech, user,
			 s->reply_code, s->client.addr);
		note(s->srv, s, s->reply_code >= 500 ? "auth_failed" : "auth_tempfail");
		hook_objected(s);
		break;
	}
	case PEND_MESSAGE:
		if (s->srv->opts.lmtp) {
			/* Exactly one reply per accepted recipient, in order. */
			bool close = false;
			for (size_t i = 0; i < t->env->nrcpt; i++) {
				int code;
				const char *enh, *text;
				if (s->nreplies) {
					if (i < s->nreplies) {
						code = s->replies[i].code;
						enh = s->replies[i].enh;
						text = s->replies[i].text;
					} else {
						code = 451; enh = "4.3.0"; text = "Internal error: no outcome for this recipient";
					}
				} else if (s->reply_code) {
					code = s->reply_code;
					enh = s->reply_enh;
					text = s->reply_text[0] ? s->reply_text : "Ok";
				} else {
					code = 451; enh = "4.3.0"; text = "Internal error: message not handled";
				}
				reply_v(s, code, enh, text);
				close |= code == 421;
			}
			if (close)
				close_after_flush(s, "hook 421");
		} else if (s->reply_code == 0) {
			reply(s, 451, "4.3.0", "Internal error: message not handled");
		} else {
			reply_v(s, s->reply_code, s->reply_enh, s->reply_text[0] ? s->reply_text : "Ok");
			if (s->reply_code == 421)
				close_after_flush(s, "hook 421");
		}
		txn_end(s);
		s->xf_set = false;
		break;
	}
}

/* ---- commands ---------------------------------------------------------- */

enum {
	CF_PRE_HELO = 1 << 0,   /* allowed before HELO/EHLO */
	CF_SMTP_ONLY = 1 << 1,  /* not in LMTP */
	CF_LMTP_ONLY = 1 << 2,  /* only in LMTP */
	CF_NO_ARG = 1 << 3,     /* takes no argument */
	CF_COUNT = 1 << 4,      /* errors in it count towards max_errors */
};

struct command {
	const char *name;
	unsigned flags;
	void (*fn)(struct smtp_session *s, char *arg);
};

static void bad_command(struct smtp_session *s, int code, const char *enh, const char *text)
{
	reply_v(s, code, enh, text);
	note(s->srv, s, code == 503 ? "bad_sequence" : strstr(text, "not recognized") ? "unknown_command" :
	     strstr(text, "too long") ? "line_too_long" : strstr(text, "NUL") ? "nul_byte" :
	     strstr(text, "control character") ? "control_character" : "syntax");
	if (++s->errors >= s->srv->opts.max_errors) {
		note(s->srv, s, "too_many_errors");
		reply(s, 421, "4.7.0", "%s Too many errors, closing connection", s->srv->opts.hostname);
		log_warn(s->id, NULL, "smtp.too_many_errors", "errors=%u client=%s", s->errors, s->client.addr);
		close_after_flush(s, "too many errors");
	}
}

static void reset_session_for_helo(struct smtp_session *s)
{
	txn_end(s);
	s->xf_set = false;
}

static void do_helo_common(struct smtp_session *s, char *arg, bool esmtp)
{
	if (!*arg) {
		bad_command(s, 501, "5.5.4", "Syntax: HELO/EHLO hostname");
		return;
	}
	if (strlen(arg) >= sizeof(s->helo_arg)) {
		/* a domain is at most 255 octets (RFC 5321 4.5.3.1.2): a
		 * longer name would reach the checks and Received cut */
		bad_command(s, 501, "5.5.4", "Syntax: HELO/EHLO hostname too long");
		return;
	}
	reset_session_for_helo(s);
	snprintf(s->helo_arg, sizeof(s->helo_arg), "%s", arg);
	s->client.helo = s->helo_arg;
	s->helo_seen = true;
	s->esmtp = esmtp;
	run_hook(s, SMTP_HOOK_HELO, PEND_HELO);
}

static void cmd_helo(struct smtp_session *s, char *arg) { do_helo_common(s, arg, false); }
static void cmd_ehlo(struct smtp_session *s, char *arg) { do_helo_common(s, arg, true); }
static void cmd_lhlo(struct smtp_session *s, char *arg) { do_helo_common(s, arg, true); }

/* MAIL SIZE= (RFC 1870): 1 to 20 digits, nothing else; a value past
 * what fits is as large as can be (refused as too big, not as bad). */
static bool size_value(const char *v, long long *size)
{
	size_t k = strspn(v, "0123456789");
	if (k == 0 || k > 20 || v[k])
		return false;
	unsigned long long n;
	*size = parse_digits(&v, (unsigned long long)LLONG_MAX, &n) ? (long long)n : LLONG_MAX;
	return true;
}

/* An xtext value (RFC 3461 4) of at most max characters once decoded. */
static bool xtext_ok(const char *v, size_t max)
{
	char out[SMTP_PARAM_VALUE_MAX];
	return xtext_decode(v, out, sizeof(out)) && strlen(out) <= max;
}

/* ORCPT=addr-type;xtext (RFC 3461 4.2): an atom, ';', an xtext of at most
 * 500 characters. */
static bool orcpt_ok(const char *v)
{
	const char *semi = strchr(v, ';');
	if (!semi || semi == v)
		return false;
	for (const char *p = v; p < semi; p++)
		if (!isalnum((unsigned char)*p) && *p != '-')
			return false;
	return xtext_ok(semi + 1, 500);
}

/* NOTIFY=NEVER, or SUCCESS, FAILURE and DELAY separated by commas (RFC
 * 3461 4.1): flags into *notify (1 NEVER, 2, 4, 8); false when malformed
 * (an empty item, an unknown word, NEVER with another). */
static bool notify_value(const char *v, unsigned *notify)
{
	unsigned n = 0;
	for (const char *w = v;;) {
		size_t len = strcspn(w, ",");
		if (len == 5 && strncasecmp(w, "NEVER", 5) == 0) n |= 1;
		else if (len == 7 && strncasecmp(w, "SUCCESS", 7) == 0) n |= 2;
		else if (len == 7 && strncasecmp(w, "FAILURE", 7) == 0) n |= 4;
		else if (len == 5 && strncasecmp(w, "DELAY", 5) == 0) n |= 8;
		else return false;
		if (!w[len])
			break;
		w += len + 1;
	}
	if ((n & 1) && n != 1)
		return false;
	*notify = n;
	return true;
}

static void cmd_mail(struct smtp_session *s, char *arg)
{
	if (s->txn) {
		bad_command(s, 503, "5.5.1", "Error: nested MAIL command");
		return;
	}
	if (strncasecmp(arg, "FROM:", 5) != 0) {
		bad_command(s, 501, "5.5.4", "Syntax: MAIL FROM:<address>");
		return;
	}
	struct smtp_path path;
	char why[128];
	enum addr_error e = smtp_parse_path(arg + 5, true, &path, why, sizeof(why));
	if (e != ADDR_OK) {
		bad_command(s, 501, e == ADDR_PARAM_SYNTAX || e == ADDR_TOO_MANY_PARAMS ? "5.5.4" : "5.1.7", why);
		return;
	}
	if (!path.domain && path.addr[0]) {
		bad_command(s, 501, "5.1.7", "Sender address must have a domain");
		return;
	}
	if (path.nparams && !s->esmtp) {
		bad_command(s, 555, "5.5.4", "MAIL parameters need EHLO");
		return;
	}
	long long size = -1;
	bool body8 = false, utf8 = false;
	const char *ret = NULL, *envid = NULL;
	for (size_t i = 0; i < path.nparams; i++) {
		const struct smtp_param *p = &path.params[i];
		if (strcmp(p->key, "SIZE") == 0) {
			if (!size_value(p->value, &size)) {
				bad_command(s, 501, "5.5.4", "Bad SIZE parameter");
				return;
			}
		} else if (strcmp(p->key, "BODY") == 0) {
			if (strcasecmp(p->value, "8BITMIME") == 0)
				body8 = true;
			else if (strcasecmp(p->value, "7BIT") != 0) {
				bad_command(s, 501, "5.5.4", "Unsupported BODY type");
				return;
			}
		} else if (strcmp(p->key, "SMTPUTF8") == 0 && !*p->value) {
			utf8 = true;
		} else if (strcmp(p->key, "RET") == 0 &&
			   (strcasecmp(p->value, "FULL") == 0 || strcasecmp(p->value, "HDRS") == 0)) {
			ret = p->value;
		} else if (strcmp(p->key, "ENVID") == 0 && *p->value) {
			if (!xtext_ok(p->value, 100)) {
				bad_command(s, 501, "5.5.4", "Bad ENVID parameter");
				return;
			}
			envid = p->value;
		} else {
			bad_command(s, 555, "5.5.4", "Unsupported option in MAIL command");
			return;
		}
	}
	if (path.utf8 && !utf8) {
		bad_command(s, 553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
		return;
	}
	if (size > s->srv->opts.max_message_size) {
		reply(s, 552, "5.3.4", "Message size exceeds fixed maximum message size (%lld)",
		      s->srv->opts.max_message_size);
		return;
	}
	struct smtp_txn *t = txn_begin(s);
	smtp_addr_normalize(path.addr);
	t->env->sender = pool_strdup(t->env->pool, path.addr);
	t->env->body_8bit = body8;
	t->env->smtputf8 = utf8;
	t->env->ret = ret ? pool_strdup(t->env->pool, ret) : NULL;
	t->env->envid = envid ? pool_strdup(t->env->pool, envid) : NULL;
	t->declared_size = size;
	log_info(s->id, t->qid, "smtp.mail", "from=%s size=%lld client=%s", t->env->sender, size,
		 t->env->client.addr);
	run_hook(s, SMTP_HOOK_MAIL, PEND_MAIL);
}

static void cmd_rcpt(struct smtp_session *s, char *arg)
{
	struct smtp_txn *t = s->txn;
	if (!t) {
		bad_command(s, 503, "5.5.1", "Error: need MAIL command");
		return;
	}
	if (strncasecmp(arg, "TO:", 3) != 0) {
		bad_command(s, 501, "5.5.4", "Syntax: RCPT TO:<address>");
		return;
	}
	struct smtp_path path;
	char why[128];
	enum addr_error e = smtp_parse_path(arg + 3, false, &path, why, sizeof(why));
	if (e != ADDR_OK) {
		bad_command(s, 501, e == ADDR_PARAM_SYNTAX || e == ADDR_TOO_MANY_PARAMS ? "5.5.4" : "5.1.3", why);
		return;
	}
	if (path.utf8 && !t->env->smtputf8) {
		bad_command(s, 553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
		return;
	}
	if (t->env->nrcpt >= s->srv->opts.max_recipients) {
		note(s->srv, s, "too_many_recipients");
		reply(s, 452, "4.5.3", "Error: too many recipients");
		return;
	}
	const char *orcpt = NULL;
	unsigned notify = 0;
	for (size_t i = 0; i < path.nparams; i++) {
		const struct smtp_param *p = &path.params[i];
		if (strcmp(p->key, "NOTIFY") == 0 && *p->value) {
			if (!notify_value(p->value, &notify)) {
				bad_command(s, 501, "5.5.4", "Bad NOTIFY parameter");
				return;
			}
		} else if (strcmp(p->key, "ORCPT") == 0 && *p->value) {
			if (!orcpt_ok(p->value)) {
				bad_command(s, 501, "5.5.4", "Bad ORCPT parameter");
				return;
			}
			orcpt = p->value;
		} else {
			bad_command(s, 555, "5.5.4", "Unsupported option in RCPT command");
			return;
		}
	}
	if (path.domain)
		smtp_addr_normalize(path.addr);
	struct env_rcpt *r = envelope_add_rcpt(t->env, path.addr);
	r->notify = notify;
	r->orcpt = orcpt ? pool_strdup(t->env->pool, orcpt) : NULL;
	run_hook(s, SMTP_HOOK_RCPT, PEND_RCPT);
}

static void cmd_data(struct smtp_session *s, char *arg)
{
	(void)arg;
	struct smtp_txn *t = s->txn;
	if (!t) {
		bad_command(s, 503, "5.5.1", "Error: need MAIL command");
		return;
	}
	if (t->env->nrcpt == 0) {
		if (t->nrcpt_rejected && !s->srv->opts.lmtp)
			reply(s, 554, "5.5.1", "Error: no valid recipients");
		else if (t->nrcpt_rejected)
			reply(s, 503, "5.5.1", "Error: no valid recipients");
		else
			bad_command(s, 503, "5.5.1", "Error: need RCPT command");
		return;
	}
	run_hook(s, SMTP_HOOK_DATA, PEND_DATA);
}

static void cmd_rset(struct smtp_session *s, char *arg)
{
	(void)arg;
	txn_end(s);
	s->xf_set = false;
	reply(s, 250, "2.0.0", "Ok");
}

static void cmd_noop(struct smtp_session *s, char *arg)
{
	(void)arg;
	reply(s, 250, "2.0.0", "Ok");
}

static void cmd_quit(struct smtp_session *s, char *arg)
{
	(void)arg;
	reply(s, 221, "2.0.0", "Bye");
	close_after_flush(s, "QUIT");
}

static void cmd_vrfy(struct smtp_session *s, char *arg)
{
	(void)arg;
	reply(s, 252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery");
}

static void cmd_help(struct smtp_session *s, char *arg)
{
	(void)arg;
	reply(s, 214, "2.0.0", "See RFC 5321");
}

static void cmd_http(struct smtp_session *s, char *arg)
{
	(void)arg;
	log_warn(s->id, NULL, "smtp.http_command", "client=%s", s->client.addr);
	note(s->srv, s, "http_command");
	reply(s, 521, "5.7.0", "Error: this is an SMTP server, not a web proxy");
	close_after_flush(s, "HTTP command");
}

static void cmd_starttls(struct smtp_session *s, char *arg)
{
	if (*arg) {
		bad_command(s, 501, "5.5.4", "Syntax: STARTTLS");
		return;
	}
	if (!s->srv->opts.tls) {
		bad_command(s, 502, "5.5.1", "Error: command not implemented");
		return;
	}
	if (s->tls) {
		bad_command(s, 503, "5.5.1", "Error: TLS already active");
		return;
	}
	if (s->txn) {
		bad_command(s, 503, "5.5.1", "Error: STARTTLS inside a transaction");
		return;
	}
	SSL *ssl = SSL_new(tls_ctx_ssl(s->srv->opts.tls));
	if (!ssl) {
		reply(s, 454, "4.7.0", "TLS not available due to temporary reason");
		return;
	}
	reply(s, 220, "2.0.0", "Ready to start TLS");
	/* RFC 3207 / CVE-2011-0411: plaintext pipelined after STARTTLS is
	 * discarded, never read as if it came through TLS. */
	struct evbuffer *in = bufferevent_get_input(s->bev);
	size_t junk = evbuffer_get_length(in);
	if (junk) {
		log_warn(s->id, NULL, "smtp.starttls_injection", "discarded=%zu client=%s", junk, s->client.addr);
		note(s->srv, s, "starttls_injection");
		evbuffer_drain(in, junk);
	}
	sockout_detach(&s->out);       /* the 220 goes out in the clear, then the filter writes */
	struct bufferevent *tb = bufferevent_openssl_filter_new(
		bufferevent_get_base(s->bev), s->bev, ssl, BUFFEREVENT_SSL_ACCEPTING,
		BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (!tb) {
		SSL_free(ssl);
		close_after_flush(s, "TLS setup failed");
		return;
	}
	/* The new bufferevent owns the old one now. */
	s->bev = tb;
	install_callbacks(s);
	s->tls = true;
	s->helo_seen = false;
	s->esmtp = false;
	s->xf_set = false;
}

/* A PORT attribute: a decimal port number, 0 to 65535, nothing else. */
static bool port_value(const char *v, int *port)
{
	unsigned long long n;
	if (!parse_digits(&v, 65535, &n) || *v)
		return false;
	*port = (int)n;
	return true;
}

/* XFORWARD NAME=... ADDR=... (Postfix XFORWARD_README); trusted hops only. */
static void cmd_xforward(struct smtp_session *s, char *arg)
{
	if (!s->xforward_ok) {
		bad_command(s, 550, "5.7.0", "Error: insufficient authorization");
		return;
	}
	if (s->txn) {
		bad_command(s, 503, "5.5.1", "Error: XFORWARD inside a transaction");
		return;
	}
	if (!s->xf_set) {
		copy_client(s->pool, &s->xf, &s->client);
		s->xf.login = NULL;
		s->xf_set = true;
	}
	char *sv;
	for (char *w = strtok_r(arg, " ", &sv); w; w = strtok_r(NULL, " ", &sv)) {
		char *eq = strchr(w, '=');
		char val[256];
		if (!eq || !xtext_decode(eq + 1, val, sizeof(val))) {
			bad_command(s, 501, "5.5.4", "Bad XFORWARD attribute");
			return;
		}
		*eq = '\0';
		bool unavailable = strcasecmp(val, "[UNAVAILABLE]") == 0 || strcasecmp(val, "[TEMPUNAVAIL]") == 0;
		if (strcasecmp(w, "NAME") == 0)
			s->xf.name = pool_strdup(s->pool, unavailable ? "unknown" : val);
		else if (strcasecmp(w, "ADDR") == 0) {
			const char *a = val;
			if (strncasecmp(a, "IPV6:", 5) == 0)
				a += 5;
			if (!unavailable && !net_is_ip(a)) {
				bad_command(s, 501, "5.5.4", "Bad XFORWARD ADDR");
				return;
			}
			s->xf.addr = pool_strdup(s->pool, unavailable ? "" : a);
		} else if (strcasecmp(w, "PORT") == 0) {
			int port = 0;
			if (!unavailable && !port_value(val, &port)) {
				bad_command(s, 501, "5.5.4", "Bad XFORWARD PORT");
				return;
			}
			s->xf.port = port;
		} else if (strcasecmp(w, "PROTO") == 0)
			s->xf.proto = pool_strdup(s->pool, unavailable ? "SMTP" : val);
		else if (strcasecmp(w, "HELO") == 0)
			s->xf.helo = pool_strdup(s->pool, unavailable ? "" : val);
		else if (strcasecmp(w, "LOGIN") == 0)
			s->xf.login = unavailable ? NULL : pool_strdup(s->pool, val);
		else if (strcasecmp(w, "SOURCE") == 0 || strcasecmp(w, "IDENT") == 0)
			; /* accepted, not used */
		else {
			bad_command(s, 501, "5.5.4", "Bad XFORWARD attribute name");
			return;
		}
	}
	reply(s, 250, "2.0.0", "Ok");
}

/* XCLIENT ADDR=... NAME=...: a trusted proxy (or a test) presents another
 * client.  The session starts over as if that client had connected. */
static void cmd_xclient(struct smtp_session *s, char *arg)
{
	if (!s->xclient_ok) {
		bad_command(s, 550, "5.7.0", "Error: insufficient authorization");
		return;
	}
	if (s->txn) {
		bad_command(s, 503, "5.5.1", "Error: XCLIENT inside a transaction");
		return;
	}
	struct env_client c;
	copy_client(s->pool, &c, &s->client);
	char *sv;
	for (char *w = strtok_r(arg, " ", &sv); w; w = strtok_r(NULL, " ", &sv)) {
		char *eq = strchr(w, '=');
		char val[256];
		if (!eq || !xtext_decode(eq + 1, val, sizeof(val))) {
			bad_command(s, 501, "5.5.4", "Bad XCLIENT attribute");
			return;
		}
		*eq = '\0';
		bool unavailable = strcasecmp(val, "[UNAVAILABLE]") == 0 || strcasecmp(val, "[TEMPUNAVAIL]") == 0;
		if (strcasecmp(w, "ADDR") == 0) {
			const char *a = val;
			if (strncasecmp(a, "IPV6:", 5) == 0)
				a += 5;
			if (!unavailable && !net_is_ip(a)) {
				bad_command(s, 501, "5.5.4", "Bad XCLIENT ADDR");
				return;
			}
			c.addr = pool_strdup(s->pool, unavailable ? "" : a);
		} else if (strcasecmp(w, "NAME") == 0)
			c.name = pool_strdup(s->pool, unavailable ? "unknown" : val);
		else if (strcasecmp(w, "PORT") == 0) {
			int port = 0;
			if (!unavailable && !port_value(val, &port)) {
				bad_command(s, 501, "5.5.4", "Bad XCLIENT PORT");
				return;
			}
			c.port = port;
		} else if (strcasecmp(w, "PROTO") == 0)
			c.proto = pool_strdup(s->pool, val);
		else if (strcasecmp(w, "HELO") == 0)
			c.helo = pool_strdup(s->pool, unavailable ? "" : val);
		else if (strcasecmp(w, "LOGIN") == 0)
			c.login = unavailable ? NULL : pool_strdup(s->pool, val);
		else if (strcasecmp(w, "DESTADDR") == 0 || strcasecmp(w, "DESTPORT") == 0)
			;
		else {
			bad_command(s, 501, "5.5.4", "Bad XCLIENT attribute name");
			return;
		}
	}
	log_info(s->id, NULL, "smtp.xclient", "proxy=%s client=%s name=%s", s->client.addr, c.addr, c.name);
	s->client = c;
	s->helo_seen = false;
	s->esmtp = false;
	s->xf_set = false;
	/* The new client is no longer the trusted proxy. */
	s->xforward_ok = ip_in(s->srv->opts.xforward_hosts, c.addr);
	s->xclient_ok = ip_in(s->srv->opts.xclient_hosts, c.addr);
	run_hook(s, SMTP_HOOK_CONNECT, PEND_CONNECT);
}

/* ---- SMTP AUTH (RFC 4954) ---------------------------------------------- */

static void auth_fail(struct smtp_session *s, int code, const char *enh, const char *text)
{
	s->sasl = SASL_NONE;
	if (s->creds) {
		sasl_creds_wipe(s->creds);
		free(s->creds);
		s->creds = NULL;
	}
	bad_command(s, code, enh, text);
}

/* The credentials are complete: the hook checks them. */
static void auth_check(struct smtp_session *s)
{
	s->sasl = SASL_NONE;
	run_hook(s, SMTP_HOOK_AUTH, PEND_AUTH);
}

/* One base64 line of an exchange in progress ("*" cancels it). */
static void auth_continue(struct smtp_session *s, const char *line)
{
	if (strcmp(line, "*") == 0) {
		auth_fail(s, 501, "5.7.0", "Authentication cancelled");
		return;
	}
	unsigned char raw[3 * SASL_FIELD_MAX + 4];
	size_t len;
	const char *why = NULL;
	if (!sasl_decode(line, raw, sizeof(raw), &len)) {
		OPENSSL_cleanse(raw, sizeof(raw));
		auth_fail(s, 501, "5.5.2", "Cannot decode the response (base64 expected)");
		return;
	}
	bool ok = true;
	switch (s->sasl) {
	case SASL_PLAIN:
		ok = sasl_plain(raw, len, s->creds, &why);
		break;
	case SASL_LOGIN_USER:
		ok = sasl_login_field(raw, len, s->creds->user, true, &why);
		break;
	case SASL_LOGIN_PASS:
		ok = sasl_login_field(raw, len, s->creds->pass, false, &why);
		break;
	case SASL_NONE:
		break;
	}
	OPENSSL_cleanse(raw, sizeof(raw));
	if (!ok) {
		char text[128];
		snprintf(text, sizeof(text), "Malformed %s response: %s", s->sasl_mech, why);
		auth_fail(s, 501, "5.5.2", text);
		return;
	}
	if (s->sasl == SASL_LOGIN_USER) {
		s->sasl = SASL_LOGIN_PASS;
		reply(s, 334, NULL, "UGFzc3dvcmQ6");           /* "Password:" */
		return;
	}
	/* An authorization identity other than the user's own would be
	 * acting for someone else: not offered. */
	if (*s->creds->authzid && strcmp(s->creds->authzid, s->creds->user) != 0) {
		auth_fail(s, 535, "5.7.8", "Authentication failed: authorization identity not allowed");
		return;
	}
	auth_check(s);
}

static void cmd_auth(struct smtp_session *s, char *arg)
{
	const struct smtp_server_opts *o = &s->srv->opts;
	if (!o->auth || !s->esmtp) {
		bad_command(s, 503, "5.5.1", "Error: authentication not enabled");
		return;
	}
	if (!s->tls) {
		bad_command(s, 538, "5.7.11", "Encryption required for requested authentication mechanism");
		return;
	}
	if (s->login) {
		bad_command(s, 503, "5.5.1", "Error: already authenticated");
		return;
	}
	if (s->txn) {
		bad_command(s, 503, "5.5.1", "Error: AUTH not allowed during a mail transaction");
		return;
	}
	char *initial = strchr(arg, ' ');
	if (initial)
		*initial++ = '\0';
	if (strcasecmp(arg, "PLAIN") == 0) {
		s->sasl_mech = "PLAIN";
		s->sasl = SASL_PLAIN;
	} else if (strcasecmp(arg, "LOGIN") == 0) {
		s->sasl_mech = "LOGIN";
		s->sasl = SASL_LOGIN_USER;
	} else {
		bad_command(s, 504, "5.5.4", "Unrecognized authentication type");
		return;
	}
	s->creds = xcalloc(1, sizeof(*s->creds));
	if (initial && *initial) {
		/* RFC 4954 4: "=" is an empty initial response */
		auth_continue(s, strcmp(initial, "=") == 0 ? "" : initial);
		return;
	}
	reply(s, 334, NULL, "%s", s->sasl == SASL_PLAIN ? "" : "VXNlcm5hbWU6");   /* "Username:" */
}

static const struct command commands[] = {
	{ "HELO", CF_PRE_HELO | CF_SMTP_ONLY, cmd_helo },
	{ "EHLO", CF_PRE_HELO | CF_SMTP_ONLY, cmd_ehlo },
	{ "LHLO", CF_PRE_HELO | CF_LMTP_ONLY, cmd_lhlo },
	{ "MAIL", CF_COUNT, cmd_mail },
	{ "RCPT", CF_COUNT, cmd_rcpt },
	{ "DATA", CF_NO_ARG | CF_COUNT, cmd_data },
	{ "RSET", CF_PRE_HELO | CF_NO_ARG, cmd_rset },
	{ "NOOP", CF_PRE_HELO, cmd_noop },
	{ "QUIT", CF_PRE_HELO | CF_NO_ARG, cmd_quit },
	{ "VRFY", CF_PRE_HELO | CF_COUNT, cmd_vrfy },
	{ "HELP", CF_PRE_HELO, cmd_help },
	{ "STARTTLS", CF_COUNT, cmd_starttls },
	{ "AUTH", CF_COUNT | CF_SMTP_ONLY, cmd_auth },
	{ "XFORWARD", CF_COUNT, cmd_xforward },
	{ "XCLIENT", CF_PRE_HELO | CF_COUNT, cmd_xclient },
	{ "GET", CF_PRE_HELO, cmd_http },
	{ "POST", CF_PRE_HELO, cmd_http },
	{ "CONNECT", CF_PRE_HELO, cmd_http },
	{ "USER-AGENT:", CF_PRE_HELO, cmd_http },
	{ "HOST:", CF_PRE_HELO, cmd_http },
};

static void shutdown_reply(struct smtp_session *s)
{
	reply(s, 421, "4.3.2", "%s Service shutting down, try again later", s->srv->opts.hostname);
	close_after_flush(s, "shutdown");
}

/* Before TLS on a listener that requires it: only what leads to TLS. */
static bool allowed_before_tls(void (*fn)(struct smtp_session *, char *))
{
	return fn == cmd_ehlo || fn == cmd_helo || fn == cmd_starttls || fn == cmd_noop || fn == cmd_rset ||
	       fn == cmd_quit || fn == cmd_xclient || fn == cmd_http;
}

/* A line over max_line: refused, and an AUTH exchange it was part of
 * ends (else the client's next command would be read as its base64). */
static void line_too_long(struct smtp_session *s)
{
	if (s->sasl != SASL_NONE)
		auth_fail(s, 500, "5.5.2", "Error: line too long");
	else
		bad_command(s, 500, "5.5.2", "Error: line too long");
}

static void dispatch(struct smtp_session *s, char *line, size_t len)
{
	if (s->srv->draining) {
		s->sasl = SASL_NONE;
		shutdown_reply(s);
		return;
	}
	if (s->sasl != SASL_NONE) {
		if (memchr(line, '\0', len)) {
			auth_fail(s, 501, "5.5.2", "Cannot decode the response (base64 expected)");
			return;
		}
		auth_continue(s, line);
		return;
	}
	if (memchr(line, '\0', len)) {
		bad_command(s, 500, "5.5.2", "Error: NUL byte in command");
		return;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)line[i];
		if ((c < 0x20 && c != '\t') || c == 0x7f) {
			bad_command(s, 500, "5.5.2", "Error: control character in command");
			return;
		}
	}
	char *sp = line;
	while (*sp && *sp != ' ')
		sp++;
	size_t nlen = (size_t)(sp - line);
	char *arg = sp;
	while (*arg == ' ')
		arg++;
	/* Trailing spaces are tolerated. */
	size_t alen = strlen(arg);
	while (alen && arg[alen - 1] == ' ')
		arg[--alen] = '\0';
	const struct command *c = NULL;
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strlen(commands[i].name) == nlen && strncasecmp(commands[i].name, line, nlen) == 0) {
			c = &commands[i];
			break;
		}
	bool lmtp = s->srv->opts.lmtp;
	if (!c || (lmtp && (c->flags & CF_SMTP_ONLY)) || (!lmtp && (c->flags & CF_LMTP_ONLY))) {
		log_info(s->id, NULL, "smtp.unknown_command", "command=%.*s", (int)(nlen > 32 ? 32 : nlen), line);
		bad_command(s, 500, "5.5.2", "Error: command not recognized");
		return;
	}
	if ((c->flags & CF_NO_ARG) && *arg) {
		bad_command(s, 501, "5.5.4", "Syntax error: no parameters allowed");
		return;
	}
	if (s->refused && c->fn != cmd_quit) {
		bad_command(s, 503, "5.5.1", "Error: this session was refused; send QUIT");
		return;
	}
	if (!(c->flags & CF_PRE_HELO) && !s->helo_seen) {
		bad_command(s, 503, "5.5.1", lmtp ? "Error: send LHLO first" : "Error: send HELO/EHLO first");
		return;
	}
	if (s->srv->opts.tls_required && !s->tls && !allowed_before_tls(c->fn) && c->fn != cmd_auth) {
		bad_command(s, 530, "5.7.0", "Must issue a STARTTLS command first");
		return;
	}
	if (c->fn == cmd_mail && s->srv->opts.auth_required && !s->client.login) {
		bad_command(s, 530, "5.7.0", "Authentication required");
		return;
	}
	c->fn(s, arg);
}

/* ---- message data ------------------------------------------------------ */

enum dstate { D_LINE_START, D_IN_LINE, D_CR, D_DOT, D_DOT_CR };

static void data_line_end(struct smtp_session *s)
{
	struct smtp_txn *t = s->txn;
	if (s->line_len == 0 && s->in_headers)
		s->in_headers = false;      /* blank line (bare-LF path) */
	if (!s->in_headers && !t->header_bytes)
		t->header_bytes = t->data.len;
	s->line_len = 0;
}

/* Account a byte of the header section; called at the start of a line. */
static void header_line_start(struct smtp_session *s, unsigned char c)
{
	struct smtp_txn *t = s->txn;
	if (!s->in_headers)
		return;
	if (c == ' ' || c == '\t') {
		/* continuation of the current field */
	} else if (c != '\r' && c != '\n') {
		t->header_count++;
		s->cur_header = 0;
		if (t->header_count > s->srv->opts.max_headers)
			s->header_overflow = true;
	}
}

static inline void data_put(struct smtp_session *s, const char *p, size_t n)
{
	struct buf *b = &s->txn->data;
	if (b->overflow)
		return;
	buf_append(b, p, n);
	if (s->in_headers) {
		s->cur_header += n;
		if (s->cur_header > s->srv->opts.max_header_size)
			s->header_overflow = true;
	}
}

/* Consume message data from the input; true when CRLF.CRLF was seen.
 * *used is set to the number of bytes consumed. */
static bool data_scan(struct smtp_session *s, const unsigned char *p, size_t n, size_t *used)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = p[i];
		switch (s->dstate) {
		case D_LINE_START:
			if (c == '.') {     /* the end, or a dot-stuffed line: decided next */
				s->dstate = D_DOT;
				i++;
				continue;
			}
			header_line_start(s, c);
			s->dstate = D_IN_LINE;
			continue;   /* reprocess c */
		case D_IN_LINE: {
			/* Fast path: copy a run of ordinary bytes. */
			size_t j = i;
			while (j < n && p[j] != '\r' && p[j] != '\n')
				j++;
			if (j > i) {
				data_put(s, (const char *)p + i, j - i);
				s->line_len += j - i;
				if (s->line_len > s->srv->opts.max_data_line)
					s->line_overflow = true;
				i = j;
				continue;
			}
			if (c == '\r') {
				s->dstate = D_CR;
			} else {     /* bare LF */
				s->bare_lf = true;
				data_put(s, "\n", 1);
				data_line_end(s);
				s->dstate = D_LINE_START;
				s->crlf_before = false;
			}
			i++;
			continue;
		}
		case D_CR:
			if (c == '\n') {
				if (s->in_headers && s->line_len == 0)
					s->in_headers = false;   /* the blank line: header section done */
				data_put(s, "\r\n", 2);
				data_line_end(s);
				s->dstate = D_LINE_START;
				s->crlf_before = true;
				i++;
			} else {     /* bare CR */
				s->bare_cr = true;
				data_put(s, "\r", 1);
				s->line_len++;
				s->dstate = D_IN_LINE;
			}
			continue;
		case D_DOT:
			if (c == '\r') {
				s->dstate = D_DOT_CR;
				i++;
				continue;
			}
			/* Dot-stuffed line: drop the first dot. */
			header_line_start(s, c);
			s->dstate = D_IN_LINE;
			continue;
		case D_DOT_CR:
			/* End of data only at CRLF "." CRLF: not after a bare LF. */
			if (c == '\n' && s->crlf_before) {
				*used = i + 1;
				return true;
			}
			if (c == '\n') {
				data_put(s, ".\r\n", 3);
				data_line_end(s);
				s->dstate = D_LINE_START;
				s->crlf_before = true;
				i++;
				continue;
			}
			/* ".\r" followed by something else: a bare CR. */
			s->bare_cr = true;
			data_put(s, "\r", 1);
			s->line_len++;
			s->dstate = D_IN_LINE;
			continue;
		}
	}
	*used = n;
	return false;
}

static void data_complete(struct smtp_session *s)
{
	struct smtp_txn *t = s->txn;
	if (s->in_headers)
		t->header_bytes = t->data.len;
	enter_state(s, ST_COMMAND, "end of data");
	const char *why = NULL;
	int code = 0;
	const char *enh = NULL;
	if (s->bare_lf || s->bare_cr) {
		note(s->srv, s, s->bare_lf ? "bare_lf" : "bare_cr");
		code = 550; enh = "5.5.2";
		why = s->bare_lf ? "Message contains bare LF (RFC 5321 2.3.8); rejected"
				 : "Message contains bare CR (RFC 5321 2.3.8); rejected";
	} else if (t->data.overflow) {
		note(s->srv, s, "message_too_big");
		code = 552; enh = "5.3.4";
		why = "Message size exceeds fixed maximum message size";
	} else if (s->header_overflow) {
		note(s->srv, s, "header_limit");
		code = 552; enh = "5.3.4";
		why = "Message header section exceeds limits";
	} else if (s->line_overflow) {
		note(s->srv, s, "line_too_long");
		code = 554; enh = "5.6.0";
		why = "Message contains a line longer than the limit";
	}
	if (code) {
		log_warn(s->id, t->qid, "smtp.message_rejected", "reason=%s size=%zu", why, t->data.len);
		size_t n = s->srv->opts.lmtp ? t->env->nrcpt : 1;
		for (size_t i = 0; i < n; i++)
			reply_v(s, code, enh, why);
		txn_end(s);
		return;
	}
	log_debug(s->id, t->qid, "smtp.data_received", "size=%zu headers=%zu", t->data.len, t->header_count);
	run_hook(s, SMTP_HOOK_MESSAGE, PEND_MESSAGE);
}

/* ---- input ------------------------------------------------------------- */

static void process_input(struct smtp_session *s)
{
	if (s->processing || !s->bev)
		return;
	s->processing = true;
	smtp_session_ref(s);
	struct evbuffer *in = bufferevent_get_input(s->bev);
	struct evbuffer *out = bufferevent_get_output(s->bev);
	while (!s->closed && (s->state == ST_COMMAND || s->state == ST_DATA)) {
		if (s->state == ST_COMMAND && evbuffer_get_length(out) > OUT_HIGH) {
			s->out_blocked = true;
			break;
		}
		if (s->state == ST_DATA) {
			struct evbuffer_iovec v;
			if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
				break;
			size_t used = 0;
			bool end = data_scan(s, v.iov_base, v.iov_len, &used);
			evbuffer_drain(in, used);
			if (end)
				data_complete(s);
			continue;
		}
		size_t max = s->srv->opts.max_line;
		struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF);
		size_t avail = evbuffer_get_length(in);
		if (eol.pos < 0) {
			if (avail > max) {
				/* Over-long line: drop what we have, and the rest
				 * up to its end, then answer once. */
				evbuffer_drain(in, avail);
				s->discarding = true;
			}
			break;
		}
		size_t len = (size_t)eol.pos;
		if (s->discarding || len > max + 1) {
			evbuffer_drain(in, len + 1);
			s->discarding = false;
			line_too_long(s);
			continue;
		}
		char *line = xmalloc(len + 1);
		evbuffer_remove(in, line, len + 1);
		line[len] = '\0';
		if (len && line[len - 1] == '\r')
			line[--len] = '\0';
		if (len > max)
			line_too_long(s);
		else
			dispatch(s, line, len);
		OPENSSL_cleanse(line, len);      /* AUTH lines carry credentials */
		free(line);
	}
	s->processing = false;
	smtp_session_unref(s);
}

static void on_read(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct smtp_session *s = arg;
	bool early = s->state == ST_GREET_PAUSE ||
		     (s->state == ST_HOOK && s->pending == PEND_CONNECT && !s->banner_sent && s->srv->opts.greet_pause_ms > 0);
	if (early) {
		/* Talked before the banner: a bot that does not wait. */
		log_warn(s->id, NULL, "smtp.pregreet", "client=%s", s->client.addr);
		note(s->srv, s, "pregreet");
		struct evbuffer *in = bufferevent_get_input(s->bev);
		evbuffer_drain(in, evbuffer_get_length(in));
		if (s->timer)
			event_del(s->timer);
		reply(s, 554, "5.5.1", "%s Error: talked before the greeting", s->srv->opts.hostname);
		close_after_flush(s, "pregreet");
		return;
	}
	if (s->state == ST_HOOK)
		return;     /* kept until the hook answers */
	/* libevent 2.1 reads 4 KiB at a time: when that much came, read the
	 * rest of what the socket has now (a command line or a short message
	 * came whole, and a read would only meet EAGAIN) */
	size_t have = evbuffer_get_length(bufferevent_get_input(s->bev));
	if (have >= 4096 && have < IN_HIGH)
		sockout_fill(&s->out, IN_HIGH - have);
	process_input(s);
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct smtp_session *s = arg;
	sockout_written(&s->out);
	size_t pending = evbuffer_get_length(bufferevent_get_output(bev));
	if (s->state == ST_CLOSING && !s->closed) {
		if (pending == 0)
			closing_check(s);
		return;
	}
	if (s->out_blocked && pending <= OUT_LOW) {
		s->out_blocked = false;
		process_input(s);
	}
}

/* A direct write left nothing behind: as the write callback. */
static void out_drained(void *arg)
{
	struct smtp_session *s = arg;
	on_write(s->bev, s);
}

/* The replies to a pipelined group go out together, as Postfix's smtpd
 * sends them: while a hook answers one command and the client's next
 * commands wait in the input, what is queued waits too (the client reads
 * none of it before the whole group is answered).  answer() and
 * close_after_flush() kick again. */
static bool out_hold(void *arg)
{
	struct smtp_session *s = arg;
	return s->state == ST_HOOK && !s->closed && s->bev &&
	       evbuffer_get_length(bufferevent_get_input(s->bev)) > 0;
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	struct smtp_session *s = arg;
	if (what & BEV_EVENT_CONNECTED) {   /* TLS handshake done */
		SSL *ssl = bufferevent_openssl_get_ssl(s->bev);
		if (ssl) {
			tls_describe(ssl, s->tls_info, sizeof(s->tls_info));
			log_info(s->id, NULL, "smtp.tls", "tls=%s", s->tls_info);
		}
		return;
	}
	if (s->closed)
		return;
	const char *why = (what & BEV_EVENT_TIMEOUT) ? "timeout" : (what & BEV_EVENT_EOF) ? "disconnect" : "error";
	if (what & BEV_EVENT_ERROR) {
		unsigned long e = bufferevent_get_openssl_error(s->bev);
		if (e) {
			char eb[256];
			ERR_error_string_n(e, eb, sizeof(eb));
			log_info(s->id, NULL, "smtp.tls_error", "error=%s", eb);
		}
	}
	if ((what & BEV_EVENT_TIMEOUT) && s->state != ST_CLOSING) {
		note(s->srv, s, "timeout");
		reply(s, 421, "4.4.2", "%s Error: timeout exceeded", s->srv->opts.hostname);
		log_info(s->id, s->txn ? s->txn->qid : NULL, "smtp.timeout", "state=%s", state_names[s->state]);
		close_after_flush(s, "timeout");
		return;
	}
	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && s->state != ST_DATA &&
	    s->state != ST_CLOSING) {
		/* Half-close: the client sent all it will send.  Answer what
		 * it sent (a hook may still be running), then close. */
		s->eof = true;
		bufferevent_disable(s->bev, EV_READ);
		if (s->state == ST_COMMAND || s->state == ST_GREET_PAUSE) {
			smtp_session_ref(s);
			if (s->state == ST_COMMAND)
				process_input(s);
			if (s->state == ST_COMMAND || s->state == ST_GREET_PAUSE)
				close_after_flush(s, "client half-closed");
			smtp_session_unref(s);
		}
		return;
	}
	log_info(s->id, s->txn ? s->txn->qid : NULL, "smtp.lost_connection", "why=%s state=%s", why,
		 state_names[s->state]);
	s->closed = true;
	if (s->state != ST_CLOSING)
		enter_state(s, ST_CLOSING, why);
	smtp_session_unref(s);
}

/* The shared bucket for the current data_rate_limit. */
static void rate_cfg_update(struct smtp_server *srv)
{
	long long rate = srv->opts.data_rate_limit;
	if (rate == srv->rate_cfg_rate)
		return;
	if (srv->rate_cfg) {
		srv->old_rate_cfgs = xrealloc(srv->old_rate_cfgs, (srv->nold_rate_cfgs + 1) * sizeof(*srv->old_rate_cfgs));
		srv->old_rate_cfgs[srv->nold_rate_cfgs++] = srv->rate_cfg;
		srv->rate_cfg = NULL;
	}
	srv->rate_cfg_rate = rate;
	if (rate > 0) {
		size_t r = rate > (long long)EV_RATE_LIMIT_MAX ? (size_t)EV_RATE_LIMIT_MAX : (size_t)rate;
		srv->rate_cfg = ev_token_bucket_cfg_new(r, r, EV_RATE_LIMIT_MAX, EV_RATE_LIMIT_MAX, NULL);
		if (!srv->rate_cfg)
			log_fatal(NULL, NULL, "smtp.rate_limit_failed", "rate=%lld", rate);
	}
}

static void install_callbacks(struct smtp_session *s)
{
	if (s->srv->rate_cfg)
		bufferevent_set_rate_limit(s->bev, s->srv->rate_cfg);
	bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, IN_HIGH);
	bufferevent_setwatermark(s->bev, EV_WRITE, OUT_LOW, 0);
	set_deadlines(s);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	/* Plain TCP without a bandwidth limit (that one counts in the
	 * bufferevent's own writes): replies go out directly. */
	if (!s->srv->rate_cfg && !s->tls)
		sockout_attach(&s->out, s->bev);
}

static void greet_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct smtp_session *s = arg;
	if (s->state != ST_GREET_PAUSE || s->closed)
		return;
	run_hook(s, SMTP_HOOK_CONNECT, PEND_CONNECT);
}

static void session_free(struct smtp_session *s)
{
	struct smtp_server *srv = s->srv;
	txn_end(s);
	if (srv->hooks.session_end)
		srv->hooks.session_end(srv->hooks.arg, s);
	log_info(s->id, NULL, "smtp.disconnect", "client=%s errors=%u", s->client.addr, s->errors);
	if (s->timer)
		event_free(s->timer);
	if (s->under_cb)
		evbuffer_remove_cb_entry(s->under_out, s->under_cb);
	if (s->close_wake)
		event_free(s->close_wake);
	sockout_free(&s->out);
	if (s->bev)
		bufferevent_free(s->bev);
	if (s->prev)
		s->prev->next = s->next;
	else
		srv->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	srv->nsessions--;
	conn_put(srv, s->by_client);
	conn_put(srv, s->by_net);
	free(s->replies);
	if (s->creds) {
		sasl_creds_wipe(s->creds);
		free(s->creds);
	}
	pool_free(s->pool);
	free(s);
}

static unsigned conn_hash(const char *k)
{
	unsigned h = 2166136261u;
	for (; *k; k++)
		h = (h ^ (unsigned char)*k) * 16777619u;
	return h % CONN_BUCKETS;
}

static struct conn_count *conn_get(struct smtp_server *srv, const char *key)
{
	if (!srv->counts)
		srv->counts = xcalloc(CONN_BUCKETS, sizeof(*srv->counts));
	struct conn_count **b = &srv->counts[conn_hash(key)];
	for (struct conn_count *c = *b; c; c = c->next)
		if (strcmp(c->key, key) == 0)
			return c;
	struct conn_count *c = xcalloc(1, sizeof(*c));
	snprintf(c->key, sizeof(c->key), "%s", key);
	c->next = *b;
	*b = c;
	return c;
}

static void conn_put(struct smtp_server *srv, struct conn_count *c)
{
	if (!c || --c->n > 0)
		return;
	struct conn_count **pp = &srv->counts[conn_hash(c->key)];
	while (*pp && *pp != c)
		pp = &(*pp)->next;
	if (*pp)
		*pp = c->next;
	free(c);
}

/* "net:192.0.2.0/24" for ip with the configured prefixes; false if ip is
 * not an address. */
static bool net_key(const struct smtp_server_opts *o, const char *ip, char *out, size_t len)
{
	char n[INET6_ADDRSTRLEN + 8];
	if (!net_prefix(ip, (int)o->net4_prefix, (int)o->net6_prefix, n, sizeof(n)))
		return false;
	return (size_t)snprintf(out, len, "net:%s", n) < len;
}

/* The per-client and per-network limits at accept: NULL if within them
 * (and counted in s), else the refusal. */
static const char *conn_limits(struct smtp_server *srv, struct smtp_session *s, const char *ip)
{
	const struct smtp_server_opts *o = &srv->opts;
	if ((!o->max_connections_per_client && !o->max_connections_per_network) || !*ip ||
	    ip_in(o->xforward_hosts, ip) || ip_in(o->xclient_hosts, ip))
		return NULL;
	char nk[64];
	struct conn_count *cc = o->max_connections_per_client ? conn_get(srv, ip) : NULL;
	struct conn_count *nc = o->max_connections_per_network && net_key(o, ip, nk, sizeof(nk)) ? conn_get(srv, nk) : NULL;
	const char *why = NULL;
	if (cc && cc->n >= o->max_connections_per_client)
		why = "421 4.7.0 Too many connections from your address, try again later\r\n";
	else if (nc && nc->n >= o->max_connections_per_network)
		why = "421 4.7.0 Too many connections from your network, try again later\r\n";
	if (why) {
		/* undo the lookups' zero entries */
		if (cc) {
			cc->n++;
			conn_put(srv, cc);
		}
		if (nc) {
			nc->n++;
			conn_put(srv, nc);
		}
		return why;
	}
	if (cc)
		cc->n++;
	if (nc)
		nc->n++;
	s->by_client = cc;
	s->by_net = nc;
	return NULL;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	(void)l; (void)salen;
	const struct listener *li = arg;
	struct smtp_server *srv = li->srv;
	if (srv->nsessions >= srv->opts.max_connections) {
		static const char msg[] = "421 4.3.2 Too many connections, try again later\r\n";
		ssize_t w = write(fd, msg, sizeof(msg) - 1);
		(void)w;
		log_warn(NULL, NULL, "smtp.connection_limit", "sessions=%zu", srv->nsessions);
		note(srv, NULL, "connection_limit");
		close(fd);
		return;
	}
	struct smtp_session *s = xcalloc(1, sizeof(*s));
	s->srv = srv;
	s->refs = 1;        /* the connection's reference */
	s->pool = pool_new(1024);
	id_new(s->id);
	char ip[64] = "";
	int port = 0;
	if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)
		net_addr_text(sa, ip, sizeof(ip), &port);
	else
		snprintf(ip, sizeof(ip), "127.0.0.1");   /* unix socket: local */
	const char *over = conn_limits(srv, s, ip);
	if (over) {
		ssize_t w = write(fd, over, strlen(over));
		(void)w;
		log_warn(s->id, NULL, "smtp.client_connection_limit", "client=%s reason=%.*s", ip,
			 (int)strlen(over) - 2, over);
		note(srv, NULL, "client_connection_limit");
		close(fd);
		pool_free(s->pool);
		free(s);
		return;
	}
	s->client.addr = pool_strdup(s->pool, ip);
	s->client.name = pool_strdup(s->pool, "unknown");
	s->client.helo = pool_strdup(s->pool, "");
	s->client.proto = pool_strdup(s->pool, srv->opts.lmtp ? "LMTP" : "SMTP");
	s->client.port = port;
	s->xforward_ok = ip_in(srv->opts.xforward_hosts, ip);
	s->xclient_ok = ip_in(srv->opts.xclient_hosts, ip);
	s->next = srv->sessions;
	if (s->next)
		s->next->prev = s;
	srv->sessions = s;
	srv->nsessions++;
	sockout_init(&s->out, srv->base, out_drained, out_hold, s);
	/* Replies are small and often answer pipelined commands: send them
	 * at once instead of waiting for the client's delayed ACK. */
	int one = 1;
	if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	SSL *ssl = NULL;
	if (li->implicit_tls && (!srv->opts.tls || (ssl = SSL_new(tls_ctx_ssl(srv->opts.tls))) == NULL)) {
		/* never plaintext on a TLS port */
		s->bev = NULL;
	} else if (li->implicit_tls) {
		/* Implicit TLS: the handshake first; the banner waits in the
		 * output until it is done. */
		s->bev = bufferevent_openssl_socket_new(srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
							BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
		ssl = NULL;     /* the bufferevent's now, freed by libevent even when it failed */
		s->tls = true;
	} else {
		s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
	}
	if (!s->bev) {
		if (ssl)
			SSL_free(ssl);
		close(fd);
		log_error(s->id, NULL, "smtp.accept_failed", "client=%s tls=%s", ip, li->implicit_tls ? "implicit" : "no");
		s->closed = true;
		smtp_session_unref(s);
		return;
	}
	s->state = ST_GREET_PAUSE;
	install_callbacks(s);
	log_info(s->id, NULL, "smtp.connect", "client=%s port=%d", ip, port);
	if (srv->opts.greet_pause_ms > 0) {
		s->timer = evtimer_new(srv->base, greet_timer, s);
		struct timeval tv = { srv->opts.greet_pause_ms / 1000, (srv->opts.greet_pause_ms % 1000) * 1000 };
		evtimer_add(s->timer, &tv);
	} else {
		run_hook(s, SMTP_HOOK_CONNECT, PEND_CONNECT);
	}
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
	(void)l; (void)arg;
	/* EMFILE and friends: log and go on; libevent retries on the next event. */
	log_error(NULL, NULL, "smtp.accept_error", "error=%s", strerror(errno));
}

/* ---- server ------------------------------------------------------------ */

static void set_defaults(struct smtp_server_opts *o)
{
	if (!o->hostname)
		o->hostname = "localhost";
	if (o->max_message_size <= 0)
		o->max_message_size = 10 * 1024 * 1024;
	if (!o->max_recipients)
		o->max_recipients = 1000;
	if (!o->max_line)
		o->max_line = 2048;
	if (!o->max_data_line)
		o->max_data_line = 64 * 1024;
	if (!o->max_header_size)
		o->max_header_size = 64 * 1024;
	if (!o->max_headers)
		o->max_headers = 1000;
	if (o->command_timeout_ms <= 0)
		o->command_timeout_ms = 300000;
	if (o->data_timeout_ms <= 0)
		o->data_timeout_ms = 300000;
	if (!o->max_errors)
		o->max_errors = 10;
	if (!o->max_connections)
		o->max_connections = 1000;
	if (!o->net4_prefix || o->net4_prefix > 32)
		o->net4_prefix = 24;
	if (!o->net6_prefix || o->net6_prefix > 128)
		o->net6_prefix = 64;
}

struct smtp_server *smtp_server_new(struct event_base *base, const struct smtp_server_opts *opts,
				    const struct smtp_server_hooks *hooks)
{
	struct smtp_server *srv = xcalloc(1, sizeof(*srv));
	srv->base = base;
	srv->opts = *opts;
	set_defaults(&srv->opts);
	srv->hooks = *hooks;
	rate_cfg_update(srv);
	return srv;
}

void smtp_server_set_opts(struct smtp_server *srv, const struct smtp_server_opts *opts)
{
	srv->opts = *opts;
	set_defaults(&srv->opts);
	rate_cfg_update(srv);
}

static bool listen_on(struct smtp_server *srv, int fd, bool implicit_tls, char *why, size_t whylen)
{
	if (srv->nlisteners == sizeof(srv->listeners) / sizeof(srv->listeners[0])) {
		snprintf(why, whylen, "too many listeners");
		return false;
	}
	if (implicit_tls && !srv->opts.tls) {
		snprintf(why, whylen, "implicit TLS needs a certificate and key");
		return false;
	}
	struct listener *li = &srv->listeners[srv->nlisteners];
	li->srv = srv;
	li->implicit_tls = implicit_tls;
	li->l = evconnlistener_new(srv->base, on_accept, li, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
	if (!li->l) {
		snprintf(why, whylen, "cannot listen: %s", strerror(errno));
		return false;
	}
	evconnlistener_set_error_cb(li->l, on_accept_error);
	srv->nlisteners++;
	return true;
}

bool smtp_server_listen_fd(struct smtp_server *srv, int fd, char *why, size_t whylen)
{
	return listen_on(srv, fd, false, why, whylen);
}

bool smtp_server_listen_fd_tls(struct smtp_server *srv, int fd, char *why, size_t whylen)
{
	return listen_on(srv, fd, true, why, whylen);
}

void smtp_server_stop_listening(struct smtp_server *srv)
{
	for (size_t i = 0; i < srv->nlisteners; i++)
		evconnlistener_free(srv->listeners[i].l);
	srv->nlisteners = 0;
}

void smtp_server_drain(struct smtp_server *srv)
{
	smtp_server_stop_listening(srv);
	srv->draining = true;
	for (struct smtp_session *s = srv->sessions, *n; s; s = n) {
		n = s->next;
		if (s->closed || s->processing)
			continue;
		if (s->state == ST_COMMAND || s->state == ST_GREET_PAUSE) {
			smtp_session_ref(s);
			shutdown_reply(s);
			smtp_session_unref(s);
		}
	}
}

size_t smtp_server_sessions(const struct smtp_server *srv)
{
	return srv->nsessions;
}

void smtp_server_free(struct smtp_server *srv)
{
	if (!srv)
		return;
	smtp_server_stop_listening(srv);
	while (srv->sessions) {
		struct smtp_session *s = srv->sessions;
		s->closed = true;
		s->refs = 1;
		smtp_session_unref(s);
	}
	free(srv->counts);      /* every entry went with its last session */
	if (srv->rate_cfg)
		ev_token_bucket_cfg_free(srv->rate_cfg);
	for (size_t i = 0; i < srv->nold_rate_cfgs; i++)
		ev_token_bucket_cfg_free(srv->old_rate_cfgs[i]);
	free(srv->old_rate_cfgs);
	free(srv);
}

/* ---- accessors --------------------------------------------------------- */

const char *smtp_session_id(const struct smtp_session *s) { return s->id; }
bool smtp_session_trusted(const struct smtp_session *s)
{
	return s->xforward_ok;
}

const char *smtp_session_proto(const struct smtp_session *s)
{
	if (s->srv->opts.lmtp)
		return s->tls ? "LMTPS" : "LMTP";
	if (!s->esmtp)
		return "SMTP";
	if (s->login)
		return s->tls ? "ESMTPSA" : "ESMTPA";
	return s->tls ? "ESMTPS" : "ESMTP";
}

const char *smtp_session_login(const struct smtp_session *s) { return s->login; }
const char *smtp_session_auth_user(const struct smtp_session *s) { return s->creds ? s->creds->user : NULL; }
const char *smtp_session_auth_password(const struct smtp_session *s) { return s->creds ? s->creds->pass : NULL; }
const char *smtp_session_auth_mech(const struct smtp_session *s) { return s->sasl_mech; }
struct smtp_txn *smtp_session_txn(struct smtp_session *s) { return s->txn; }
const struct env_client *smtp_session_client(const struct smtp_session *s) { return &s->client; }
bool smtp_session_tls(const struct smtp_session *s) { return s->tls; }
const char *smtp_session_tls_info(const struct smtp_session *s) { return s->tls_info; }
bool smtp_session_lmtp(const struct smtp_session *s) { return s->srv->opts.lmtp; }
void *smtp_session_data(const struct smtp_session *s) { return s->user; }
void smtp_session_set_data(struct smtp_session *s, void *p) { s->user = p; }
bool smtp_session_closed(const struct smtp_session *s) { return s->closed || s->state == ST_CLOSING; }
