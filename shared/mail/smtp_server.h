/*
 * smtp_server.h — the SMTP (RFC 5321) and LMTP (RFC 2033) server engine.
 *
 * The engine speaks the protocol and nothing else: it parses and bounds
 * input, keeps the session (connection, HELO, TLS, client identity) apart
 * from the transaction (envelope and message), dispatches commands from a
 * table, and enforces the protocol's own rules (order, syntax, bounds,
 * deadlines, no SMTP smuggling).  Every policy decision — relaying,
 * limits, checks — and what to do with a message are the caller's, through
 * the hooks below; the engine never knows what a check is.
 *
 * Hooks are asynchronous: the engine stops reading the client while a hook
 * runs, and the hook answers later with smtp_session_reply() (or
 * smtp_session_replies() for an LMTP message).  A hook may answer before it
 * returns.  A hook that answers 2xx (or 0 = "no objection") lets the
 * engine go on with its default reply.
 */
#ifndef RAMPART_SMTP_SERVER_H
#define RAMPART_SMTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include "../util/buf.h"
#include "../util/config.h"
#include "envelope.h"

struct event_base;
struct tls_ctx;
struct smtp_server;
struct smtp_session;

struct smtp_txn {
	char qid[32];               /* assigned at MAIL; on every log line of the transaction */
	struct envelope *env;
	long long declared_size;    /* MAIL SIZE=, -1 if not given */
	struct buf data;            /* message as received (dot-unstuffed, CRLF lines) */
	size_t header_count;
	size_t header_bytes;        /* size of the header section */
	size_t nrcpt_rejected;
};

enum smtp_hook_kind {
	SMTP_HOOK_CONNECT,          /* before the banner (and after XCLIENT) */
	SMTP_HOOK_HELO,
	SMTP_HOOK_MAIL,
	SMTP_HOOK_RCPT,             /* the candidate is txn->env->rcpts[nrcpt-1] */
	SMTP_HOOK_DATA,             /* DATA command, before 354 */
	SMTP_HOOK_MESSAGE,          /* complete message received; answer = final reply(ies) */
	SMTP_HOOK_AUTH,             /* AUTH credentials presented (smtp_session_auth_user/
				     * _password): only a 2xx accepts (235); 535 refuses,
				     * 454 is a temporary failure; anything else (0, the
				     * "go on" of other hooks, included) refuses */
};

struct smtp_server_hooks {
	void *arg;
	/* Called for every kind above; must end in smtp_session_reply[ies]. */
	void (*hook)(void *arg, struct smtp_session *s, enum smtp_hook_kind kind);
	/* Transaction ends (RSET, new MAIL after the end, QUIT, disconnect). */
	void (*txn_end)(void *arg, struct smtp_session *s);
	/* Session ends (always called once, for any reason). */
	void (*session_end)(void *arg, struct smtp_session *s);
	/* Something the engine itself refused or noticed, for counting:
	 * "syntax", "bad_sequence", "unknown_command", "line_too_long",
	 * "nul_byte", "too_many_errors", "pregreet", "timeout", "bare_lf",
	 * "bare_cr", "message_too_big", "header_limit", "too_many_recipients",
	 * "http_command", "starttls_injection", "connection_limit".  s may be
	 * NULL (connection_limit).  Optional. */
	void (*event)(void *arg, struct smtp_session *s, const char *name);
};

struct smtp_server_opts {
	bool lmtp;
	const char *hostname;           /* banner and EHLO name */
	const char *banner_text;        /* after "220 hostname "; default "ESMTP" */
	long long max_message_size;     /* hard bound and SIZE advertised */
	unsigned max_recipients;        /* hard bound per transaction */
	size_t max_line;                /* command line bound (default 2048) */
	size_t max_data_line;           /* message text line bound (default 64 KiB) */
	size_t max_header_size;         /* one header field incl. folding (default 64 KiB) */
	size_t max_headers;             /* header fields per message (default 1000) */
	long long command_timeout_ms;   /* each command read (default 300 s) */
	long long data_timeout_ms;      /* each read during DATA (default 300 s) */
	long long greet_pause_ms;       /* wait before the banner; talkers are refused */
	unsigned max_errors;            /* bad commands before 421 and disconnect (default 10) */
	unsigned max_connections;       /* process-wide cap (default 1000) */
	/* Concurrent connections from one client address, and from one
	 * network (IPv4 /net4_prefix, IPv6 /net6_prefix); 0: no limit.
	 * Clients in xforward_hosts or xclient_hosts (previous stages,
	 * trusted proxies) are not limited.  Over a limit: 421 4.7.0. */
	unsigned max_connections_per_client;
	unsigned max_connections_per_network;
	unsigned net4_prefix, net6_prefix;      /* default 24, 64 */
	/* Bytes per second one session may send us (a token bucket with one
	 * second of burst, libevent's rate limiting); 0: no limit.  A client
	 * faster than that is read more slowly (TCP pushes back), not
	 * refused. */
	long long data_rate_limit;
	struct tls_ctx *tls;            /* NULL: no STARTTLS */
	/* Submission (RFC 6409, RFC 8314).  tls_required: nothing but EHLO,
	 * STARTTLS, NOOP, RSET and QUIT before TLS (530 5.7.0).  auth: AUTH
	 * PLAIN and LOGIN are offered, over TLS only (never in plaintext:
	 * 538 5.7.11).  auth_required: no MAIL without authentication
	 * (530 5.7.0). */
	bool tls_required;
	bool auth;
	bool auth_required;
	const struct strlist *xforward_hosts;   /* CIDRs allowed to send XFORWARD */
	const struct strlist *xclient_hosts;    /* CIDRs allowed to send XCLIENT */
};

struct smtp_server *smtp_server_new(struct event_base *base, const struct smtp_server_opts *opts,
				    const struct smtp_server_hooks *hooks);
/* Start accepting on an already-listening socket (net_listen). */
bool smtp_server_listen_fd(struct smtp_server *srv, int fd, char *why, size_t whylen);
/* The same with implicit TLS (port 465, RFC 8314): the TLS handshake
 * comes first, then the banner; needs opts.tls. */
bool smtp_server_listen_fd_tls(struct smtp_server *srv, int fd, char *why, size_t whylen);
/* Replace the options (SIGHUP); sessions in progress keep running. */
void smtp_server_set_opts(struct smtp_server *srv, const struct smtp_server_opts *opts);
/* Stop accepting; existing sessions finish. */
void smtp_server_stop_listening(struct smtp_server *srv);
/* Shutting down: stop accepting, answer 421 to idle sessions and to the
 * next command of busy ones (a message being received or handed on is
 * finished first). */
void smtp_server_drain(struct smtp_server *srv);
size_t smtp_server_sessions(const struct smtp_server *srv);
void smtp_server_free(struct smtp_server *srv);     /* closes every session */

/* Per-session accessors for hooks. */
const char *smtp_session_id(const struct smtp_session *s);
struct smtp_txn *smtp_session_txn(struct smtp_session *s);        /* NULL outside a transaction */
/* The connected client (after XCLIENT, the presented one); XFORWARD
 * attributes are in the transaction's envelope instead. */
const struct env_client *smtp_session_client(const struct smtp_session *s);
/* The client is a previous stage (in xforward_hosts): what it says about
 * the message (XFORWARD, the correlation id) is believed. */
bool smtp_session_trusted(const struct smtp_session *s);
/* "SMTP", "ESMTP", "ESMTPS" or "LMTP": how this session talks. */
const char *smtp_session_proto(const struct smtp_session *s);
bool smtp_session_tls(const struct smtp_session *s);
/* The identity the client authenticated as (AUTH), or NULL. */
const char *smtp_session_login(const struct smtp_session *s);
/* During the AUTH hook only: what the client presented, and the
 * mechanism ("PLAIN", "LOGIN").  The password is wiped after the hook
 * answers. */
const char *smtp_session_auth_user(const struct smtp_session *s);
const char *smtp_session_auth_password(const struct smtp_session *s);
const char *smtp_session_auth_mech(const struct smtp_session *s);
const char *smtp_session_tls_info(const struct smtp_session *s);  /* "" without TLS */
bool smtp_session_lmtp(const struct smtp_session *s);
void *smtp_session_data(const struct smtp_session *s);
void smtp_session_set_data(struct smtp_session *s, void *p);
/* Keep the session object alive across an asynchronous hook even if the
 * client goes away; replies to a closed session are dropped. */
void smtp_session_ref(struct smtp_session *s);
void smtp_session_unref(struct smtp_session *s);
bool smtp_session_closed(const struct smtp_session *s);

/* Answer the pending hook: code 0 means "no objection" (the engine's
 * default reply follows); otherwise the reply is sent as given (enh may be
 * NULL).  A 421 reply closes the session after it is sent. */
void smtp_session_reply(struct smtp_session *s, int code, const char *enh, const char *text);
/* LMTP message hook: one reply per accepted recipient, in order. */
struct smtp_reply_line {
	int code;
	char enh[16];
	char text[512];
};
void smtp_session_replies(struct smtp_session *s, const struct smtp_reply_line *r, size_t n);

#endif
