/*
 * smtp_client.h — asynchronous SMTP/LMTP client on libevent, used by the
 * queue's delivery agent and by proxy mode.
 *
 * A next hop is a list of "host:port", "[ipv6]:port" or "unix:/path"
 * addresses; a hop found under a host name (an MX) may carry that name,
 * Postfix-style, "mx.example.net[192.0.2.1]:25" or
 * "mx.example.net[2001:db8::1]:25": the address is connected to, the name
 * is sent as SNI and is the name a verified certificate must match.  smtp_client_connect() tries them in order, starting at a
 * rotating index so several clients spread over equal hops, and fails over
 * to the next one when a connection is refused, times out, or the greeting
 * is not 2xx.  After the greeting it sends EHLO (LHLO for LMTP), does
 * STARTTLS as the TLS policy says (by default opportunistically, when
 * offered and a TLS context is given), authenticates when credentials are
 * configured, and reports ready.  With tls_on_connect the TLS handshake
 * comes first, before the greeting (implicit TLS, port 465, RFC 8314).
 *
 * Every failure of a hop during setup -- TLS required but not offered or
 * failed, certificate not verified, AUTH refused -- is a 4xx: the caller
 * defers and retries, it never bounces because of the next hop's setup.
 *
 * Commands may be issued back to back: with PIPELINING they are written at
 * once and their replies matched in order; without it the client sends one
 * at a time.  Every command has a deadline; a timeout or a lost connection
 * answers every outstanding command with a 4xx reply (code 421, 4.4.2), so
 * a caller never waits forever and never mistakes a fault for a 5xx.
 */
#ifndef RAMPART_SMTP_CLIENT_H
#define RAMPART_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include "../util/config.h"
#include "envelope.h"

struct event_base;
struct tls_ctx;
struct smtp_client;

/* Where a reply came from: the server's own words, or a fault found here
 * (and of which kind), so callers count and log failures by their cause
 * without reading the text. */
enum smtp_fault {
	SMTP_REPLY = 0,         /* the server's reply */
	SMTP_FAULT_LOCAL,       /* refused or impossible here (configuration, limits) */
	SMTP_FAULT_CONNECT,     /* no connection: refused, unreachable, bad address */
	SMTP_FAULT_TIMEOUT,     /* a deadline passed (connect, reply, data) */
	SMTP_FAULT_LOST,        /* the connection closed or broke */
	SMTP_FAULT_PROTOCOL,    /* the server broke the protocol */
	SMTP_FAULT_TLS,         /* TLS required by the policy and not achieved */
	SMTP_FAULT_AUTH,        /* our credentials were refused or could not be sent */
	SMTP_FAULT_ROUTE,       /* no next hop for the domain (null MX, no address, DNS
				   failure); set by routing, not by the client */
};
const char *smtp_fault_name(enum smtp_fault f);   /* "reply", "local", "connect", ... */

struct smtp_reply {
	int code;               /* 3-digit code; 421 for a local fault */
	char enh[16];           /* enhanced status "x.y.z" or "" */
	char text[512];         /* text of the last line (after code and enh), bounded */
	enum smtp_fault fault;  /* for "all next hops failed": that of the hop whose
				   code is reported (the last 4xx reply), else the
				   last hop's */
};

/* Outbound TLS policy of a connection (zero is today's default, MAY).
 *   TLS_MAY      STARTTLS when offered and a TLS context is given; a
 *                failed handshake is retried once on the same hop in
 *                plaintext; a refused STARTTLS carries on in plaintext.
 *                The certificate is not checked.
 *   TLS_NONE     never STARTTLS.
 *   TLS_ENCRYPT  TLS is required: no STARTTLS in the EHLO reply, STARTTLS
 *                refused, or a failed handshake fail the hop with
 *                454 4.7.4 / 4.7.5, never a plaintext fallback.  The
 *                certificate is not checked.
 *   TLS_VERIFY   as ENCRYPT, and the chain must verify against the
 *                context's trust anchors (tls_client_new(ca_file, ...)) and
 *                the certificate must match one of tls_verify_names when
 *                given, else tls_verify_name, else the hop's name
 *                (NAME[ADDRESS]:PORT), else the hop's host (an IP literal
 *                is matched against IP SANs); else 454 4.7.5.  SNI
 *                carries tls_verify_name, else the hop's name or host,
 *                else the first of tls_verify_names (never an IP).
 * ENCRYPT and VERIFY need opts.tls; without it every hop fails 451 4.3.5
 * at once (configuration error, nothing connected).  Whatever the context,
 * TLS 1.2 is the lowest version offered. */
enum smtp_tls_policy {
	TLS_MAY = 0,
	TLS_NONE,
	TLS_ENCRYPT,
	TLS_VERIFY,
};

struct smtp_client_opts {
	const struct strlist *hops;
	bool lmtp;
	const char *helo_name;
	struct tls_ctx *tls;            /* NULL: no STARTTLS */
	enum smtp_tls_policy tls_policy;
	const char *tls_verify_name;    /* name to check the certificate against (and
					 * SNI); NULL: the hop's name or host */
	const struct strlist *tls_verify_names; /* VERIFY: the certificate must match one
					 * of these DNS names (a leading '.': any name
					 * below it); NULL or empty: as above.  Copied. */
	bool tls_on_connect;            /* implicit TLS (port 465): handshake before the
					 * greeting; needs opts.tls; no plaintext fallback
					 * whatever the policy (NONE and MAY then mean: TLS
					 * without checking the certificate) */
	/* AUTH (RFC 4954) after EHLO, after STARTTLS when TLS is used: PLAIN
	 * (RFC 4616, initial response) when offered, else LOGIN.  NULL or ""
	 * auth_user: no AUTH.  Credentials are never sent without TLS unless
	 * auth_allow_plaintext is set (else the hop fails 454 4.7.0).  A server
	 * without PLAIN or LOGIN, and any reply but 235 (535, 534, 454, ...),
	 * fail the hop with a 4xx (the server's 4xx code, else 454; enhanced
	 * code 4.x.y from the server's x.y, else 4.7.0) whose text has the
	 * server's reply.  Credentials with no way to TLS (no opts.tls or policy
	 * NONE, no tls_on_connect) and no auth_allow_plaintext are a
	 * configuration error: 451 4.3.5, nothing connected.  Credentials never
	 * appear in log lines. */
	const char *auth_user;
	const char *auth_pass;          /* NULL: "" */
	bool auth_allow_plaintext;
	bool xforward;                  /* send XFORWARD when the server offers it */
	long long connect_timeout_ms;   /* default 10 s */
	long long command_timeout_ms;   /* default 300 s */
	long long data_timeout_ms;      /* final reply after the dot; default 600 s */
	const char *log_sid;            /* session or queue id for log lines */
	struct smtp_client_set *set;    /* if set: the client is in it while it exists (until
					 * freed, QUIT included) */
};

/* The clients one owner has alive: counted, so the owner can wait for
 * them to end, and all aborted at once when it cannot wait any longer
 * (a shutdown).  Zero-initialise it. */
struct smtp_client_set {
	unsigned n;
	struct smtp_client *head;
};
/* smtp_client_abort for every client of the set. */
void smtp_client_set_abort(struct smtp_client_set *s);

/* ready: c is non-NULL when connected, greeted (and authenticated, with
 * credentials); otherwise err says why
 * every hop failed (always a 4xx code) and nothing needs freeing. */
typedef void (*smtp_client_ready_cb)(void *arg, struct smtp_client *c, const struct smtp_reply *err);
typedef void (*smtp_client_cb)(void *arg, const struct smtp_reply *r);
/* DATA outcome: SMTP gives one reply (n == 1); LMTP one per recipient
 * accepted at RCPT, in RCPT order.  If DATA itself was refused, n == 1. */
typedef void (*smtp_client_data_cb)(void *arg, const struct smtp_reply *r, size_t n);

/* Starts at a random hop (getrandom), so clients spread over equal hops
 * without sharing state. */
void smtp_client_connect(struct event_base *base, const struct smtp_client_opts *opts,
			 smtp_client_ready_cb ready, void *arg);

/* Round robin owned by the caller (e.g. one per next-hop list in a
 * delivery agent): each connect starts at hop next % n and increments
 * next.  Zero-initialise it; it is not locked (one event loop). */
struct smtp_rotor {
	unsigned next;
};
void smtp_client_connect_rotating(struct event_base *base, const struct smtp_client_opts *opts,
				  struct smtp_rotor *rotor, smtp_client_ready_cb ready, void *arg);

bool smtp_client_has_ext(const struct smtp_client *c, const char *ext);  /* "PIPELINING", ... */
const char *smtp_client_peer(const struct smtp_client *c);               /* hop it reached */
/* "TLSv1.3 TLS_AES_256_GCM_SHA384" after STARTTLS or implicit TLS, NULL in
 * plaintext. */
const char *smtp_client_tls(const struct smtp_client *c);

/* MAIL FROM (with SIZE, BODY=8BITMIME, SMTPUTF8 as the envelope and the
 * server allow), preceded by XFORWARD of env->client when enabled.
 * Answered locally, without sending: 553 5.6.7 when the envelope needs
 * SMTPUTF8 and the server lacks it, 552 5.3.4 when size exceeds the
 * server's SIZE limit, 553 5.1.7 for a sender with control characters.
 * When MAIL is refused, locally or by the server, the RCPTs and DATA of
 * that transaction get the MAIL's reply (not the server's "503 need
 * MAIL"), so a 4xx refusal stays a 4xx for every recipient.
 * Local answers, like all answers, come from the event loop, never from
 * inside the call. */
void smtp_client_mail(struct smtp_client *c, const struct envelope *env, size_t size,
		      smtp_client_cb cb, void *arg);
void smtp_client_rcpt(struct smtp_client *c, const char *addr, smtp_client_cb cb, void *arg);
/* Sends DATA; after 354 sends data (canonical CRLF text, not yet
 * dot-stuffed; the client stuffs it and appends CRLF.CRLF).  The data must
 * stay valid until cb runs.  A bare CR or LF in data is sent as CRLF.
 * When no RCPT of the transaction was accepted the answer is 554 5.5.1:
 * without sending DATA if that is known in time, else (pipelined DATA
 * answered 354) after sending an empty message end ".". */
void smtp_client_data(struct smtp_client *c, const char *data, size_t len,
		      smtp_client_data_cb cb, void *arg);
void smtp_client_rset(struct smtp_client *c, smtp_client_cb cb, void *arg);
/* True when the connection is up, idle and ready for another MAIL: a
 * caller may keep it for the next message (connection reuse). */
bool smtp_client_reusable(const struct smtp_client *c);
/* The session or queue id on the client's log lines from now on. */
void smtp_client_set_log_id(struct smtp_client *c, const char *sid);
/* Polite end: QUIT, then close and free (no callback). */
void smtp_client_quit(struct smtp_client *c);
/* Close now and free; outstanding callbacks are NOT called. */
void smtp_client_abort(struct smtp_client *c);

#endif
