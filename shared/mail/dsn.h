/*
 * dsn.h — delivery status notifications (RFC 3461, RFC 3464, RFC 6522):
 * the "failed" bounce and the "delayed" warning the queue sends back to
 * a message's envelope sender, as a complete multipart/report message.
 *
 * The builder is pure: it reads the envelope and the original message and
 * writes the report into a buffer; sending it (with the null sender, so a
 * report is never bounced again) is the caller's job.
 */
#ifndef RAMPART_DSN_H
#define RAMPART_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct buf;
struct envelope;
struct env_rcpt;

/* Recipient NOTIFY= flags as the SMTP engine stores them in env_rcpt.notify
 * (0: not given, the MTA's default of FAILURE and DELAY applies). */
#define DSN_NOTIFY_NEVER   1u
#define DSN_NOTIFY_SUCCESS 2u
#define DSN_NOTIFY_FAILURE 4u
#define DSN_NOTIFY_DELAY   8u

/* Bounds of one report. */
#define DSN_MAX_RCPTS       1000            /* recipients listed; the rest are counted */
#define DSN_RETURN_MAX      (1024 * 1024)   /* default cap for RET=FULL */
#define DSN_HEADERS_MAX     (256 * 1024)    /* original header section returned */

enum dsn_kind { DSN_FAILED, DSN_DELAYED };

struct dsn_input {
	enum dsn_kind kind;
	const char *reporting_mta;      /* our host name (required) */
	const char *postmaster;         /* From: address; NULL: MAILER-DAEMON@reporting_mta */
	const struct envelope *env;     /* sender is the report's To:; ret, envid,
					 * arrival and the recipients are read */
	const size_t *rcpts;            /* indices into env->rcpts this report is about */
	size_t nrcpts;
	const char *message;            /* the original message (CRLF lines) */
	size_t len;
	time_t now;                     /* Date: of the report */
	const char *remote_mta;         /* optional: the next hop that answered */
	time_t retry_until;             /* DSN_DELAYED: when the queue gives up; 0: unknown */
	size_t return_max;              /* RET=FULL cap in bytes; 0: DSN_RETURN_MAX */
	const char *to;                 /* optional: send the report here instead of the
					 * envelope sender (a postmaster copy by site
					 * policy); the null-sender and NOTIFY rules
					 * then do not apply */
};

/* True if the recipient asked for (or by default gets) a report of this
 * kind: not NOTIFY=NEVER, and FAILURE resp. DELAY among its flags when
 * NOTIFY was given at all. */
bool dsn_wanted(const struct env_rcpt *r, enum dsn_kind kind);

/*
 * Build the report for the listed recipients of in->env.  Returns false,
 * with the reason in why and out untouched, when no report must be sent —
 * the null sender (never bounce a bounce), or no listed recipient wants
 * this kind of report — or when the input is unusable (no host name, an
 * index out of range, out's limit reached).  Otherwise appends a complete
 * RFC 5322 message with CRLF lines to out and returns true; recipients
 * that declined the report are left out of it.
 *
 * The report carries 8-bit bytes only when the original (or an SMTPUTF8
 * address) does: send it with BODY=8BITMIME when dsn_is_8bit() says so,
 * and with SMTPUTF8 when the original envelope had it.
 */
bool dsn_build(const struct dsn_input *in, struct buf *out, char *why, size_t whylen);

/* True if p[0..n) holds a byte above 127. */
bool dsn_is_8bit(const char *p, size_t n);

#endif
