/*
 * fuzz_dsn.c — libFuzzer target: the bounce and delay reports
 * (shared/mail/dsn.c) built from what others control: the remote MTA's
 * reply text, the ENVID and ORCPT a client gave, the recipient address,
 * the remote MTA's name and the original message.  Input: a flags byte,
 * then those five fields and the message, separated by NUL bytes.
 * Checks besides the sanitizers: the report is CRLF lines only; the
 * report's own header and its delivery-status part have no line over
 * 998 octets, and every line of the status part is a field we write, a
 * continuation or a blank line, with one Action per reported recipient
 * (no text from the outside can add a field).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "mail/dsn.h"
#include "mail/envelope.h"
#include "util/alloc.h"
#include "util/buf.h"

static const char *FIELDS[] = {
	"Reporting-MTA:", "Original-Envelope-Id:", "Arrival-Date:", "Original-Recipient:", "Final-Recipient:",
	"Action:", "Status:", "Remote-MTA:", "Diagnostic-Code:", "Will-Retry-Until:", NULL,
};

/* The next NUL-separated field of data[*pos..size), as a string. */
static char *field(struct pool *p, const uint8_t *data, size_t size, size_t *pos)
{
	size_t i = *pos;
	while (i < size && data[i])
		i++;
	char *s = pool_alloc(p, i - *pos + 1);
	memcpy(s, data + *pos, i - *pos);
	s[i - *pos] = '\0';
	*pos = i < size ? i + 1 : size;
	return s;
}

/* A check failed: say which, show the report (its first 8 KiB), stop. */
static void fail(const char *what, const char *r, size_t n)
{
	fprintf(stderr, "fuzz_dsn: %s; the report:\n%.*s\n", what, (int)(n < 8192 ? n : 8192), r);
	abort();
}

static void check_report(const char *r, size_t n, size_t nrcpt)
{
	/* CRLF lines only */
	for (size_t i = 0; i < n; i++) {
		if (r[i] == '\r' && (i + 1 >= n || r[i + 1] != '\n'))
			fail("a bare CR", r, n);
		if (r[i] == '\n' && (i == 0 || r[i - 1] != '\r'))
			fail("a bare LF", r, n);
	}
	if (n < 2 || r[n - 2] != '\r' || r[n - 1] != '\n')
		fail("no CRLF at the end", r, n);
	const char *b = strstr(r, "boundary=\"");
	if (!b)
		fail("no boundary", r, n);
	b += 10;
	const char *e = strchr(b, '"');
	if (!e || e - b > 70)
		fail("a bad boundary", r, n);
	char delim[80], head[200];
	snprintf(delim, sizeof(delim), "\r\n--%.*s", (int)(e - b), b);
	/* the report's header section, and its status part: found by the
	 * boundary, which is in none of the content (a reply's text may
	 * well say "Content-Type: message/delivery-status") */
	snprintf(head, sizeof(head), "%s\r\nContent-Description: Delivery report\r\n"
		 "Content-Type: message/delivery-status\r\n", delim);
	const char *hend = strstr(r, "\r\n\r\n");
	const char *st = strstr(r, head);
	if (!hend || !st)
		fail("no header end or no status part", r, n);
	st = strstr(st, "\r\n\r\n");
	if (!st)
		fail("no status part body", r, n);
	st += 4;
	const char *stend = strstr(st, delim);
	if (!stend)
		fail("no end of the status part", r, n);
	size_t actions = 0;
	for (const char *l = r; l < hend;) {
		const char *le = strstr(l, "\r\n");
		if (le - l > 998)
			fail("a header line over 998 octets", r, n);
		l = le + 2;
	}
	for (const char *l = st; l < stend;) {
		const char *le = strstr(l, "\r\n");
		if (!le || le > stend)
			le = stend;
		size_t len = (size_t)(le - l);
		if (len > 998)
			fail("a status line over 998 octets", r, n);
		if (len && l[0] != ' ' && l[0] != '\t') {
			bool known = false;
			for (int k = 0; FIELDS[k]; k++)
				if (len >= strlen(FIELDS[k]) && strncmp(l, FIELDS[k], strlen(FIELDS[k])) == 0)
					known = true;
			if (!known)
				fail("a field we do not write (put there from outside?)", r, n);
			if (strncmp(l, "Action:", 7) == 0)
				actions++;
		}
		l = le + 2;
	}
	if (actions != nrcpt)
		fail("not one Action per reported recipient", r, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_quiet_logs();
	if (size < 1)
		return 0;
	unsigned b = data[0];
	size_t pos = 1;
	struct envelope *env = envelope_new();
	struct pool *p = env->pool;
	char *reply = field(p, data, size, &pos);
	char *envid = field(p, data, size, &pos);
	char *orcpt = field(p, data, size, &pos);
	char *addr = field(p, data, size, &pos);
	char *remote = field(p, data, size, &pos);
	size_t mlen = size - pos;
	char *msg = malloc(mlen ? mlen : 1);        /* exact size: a read past it is caught */
	memcpy(msg, data + pos, mlen);

	env->sender = pool_strdup(p, "sender@example.net");
	env->envid = (b & 0x01) ? envid : NULL;
	env->ret = pool_strdup(p, (b & 0x02) ? "FULL" : "HDRS");
	env->smtputf8 = b & 0x04;
	env->arrival = 1700000000;
	struct env_rcpt *r = envelope_add_rcpt(env, *addr ? addr : "user@example.org");
	r->orcpt = (b & 0x08) ? orcpt : NULL;
	r->last_code = (b & 0x10) ? 550 : (b & 0x20) ? 451 : 0;
	r->last_reply = *reply ? reply : NULL;
	r->notify = (b & 0x40) ? DSN_NOTIFY_DELAY : 0;
	struct env_rcpt *r2 = envelope_add_rcpt(env, "other@example.org");
	r2->last_code = 554;
	r2->last_reply = pool_strdup(p, "5.7.1 refused");
	size_t list[2] = { 0, 1 };
	struct dsn_input in = {
		.kind = (b & 0x80) ? DSN_DELAYED : DSN_FAILED,
		.reporting_mta = "mx.fuzz.test",
		.env = env,
		.rcpts = list,
		.nrcpts = 2,
		.message = msg,
		.len = mlen,
		.now = 1700000100,
		.remote_mta = *remote ? remote : NULL,
		.retry_until = 1700400000,
		.return_max = 4096,
	};
	struct buf out = BUF_INIT;
	char why[256];
	if (dsn_build(&in, &out, why, sizeof(why))) {
		size_t n = 1;           /* the second recipient always wants both kinds */
		if (dsn_wanted(r, in.kind))
			n++;
		check_report(out.data, out.len, n);
	} else if (!why[0]) {
		abort();
	}
	buf_free(&out);
	free(msg);
	envelope_free(env);
	return 0;
}
