/*
 * envelope.h — the SMTP envelope of one message, as the server engine,
 * the queue and the client share it.
 *
 * All strings of an envelope live in its pool; envelope_free() releases
 * everything at once.
 */
#ifndef RAMPART_ENVELOPE_H
#define RAMPART_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct pool;

enum rcpt_state {
	RCPT_PENDING = 'P',     /* not yet delivered */
	RCPT_DONE = 'D',        /* delivered (2xx from the next hop) */
	RCPT_FAILED = 'F',      /* permanently failed (5xx), bounce due */
	RCPT_BOUNCED = 'B',     /* failure reported to the sender */
};

struct env_rcpt {
	char *addr;             /* without angle brackets; never NULL */
	char *orcpt;            /* DSN ORCPT= or NULL */
	unsigned notify;        /* DSN NOTIFY= flags (0: default) */
	enum rcpt_state state;
	int last_code;          /* last reply code from a next hop, 0 if none */
	char *last_reply;       /* last reply text or NULL */
};

/* What the client that handed in the message was (XFORWARD attributes). */
struct env_client {
	char *addr;             /* IP address, "" if unknown */
	char *name;             /* reverse name or "unknown" */
	char *helo;
	char *proto;            /* SMTP, ESMTP, ESMTPS, LMTP ... */
	char *login;            /* authenticated identity or NULL */
	int port;
};

struct envelope {
	struct pool *pool;
	char *sender;           /* "" for the null sender */
	bool body_8bit;         /* BODY=8BITMIME */
	bool smtputf8;
	char *ret;              /* DSN RET= or NULL */
	char *envid;            /* DSN ENVID= or NULL */
	struct env_client client;
	char *correlation_id;   /* follows the message through every stage */
	time_t arrival;
	size_t nrcpt, rcpt_cap;
	struct env_rcpt *rcpts;
};

struct envelope *envelope_new(void);
void envelope_free(struct envelope *e);
struct env_rcpt *envelope_add_rcpt(struct envelope *e, const char *addr);
size_t envelope_pending(const struct envelope *e);   /* recipients still RCPT_PENDING */

#endif
