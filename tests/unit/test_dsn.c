/*
 * test_dsn.c — unit tests for mail/dsn: delivery status notifications,
 * checked with a real MIME parser (Python's email package, run as a child
 * process on the report written to a temporary file) and byte by byte.
 *
 * Environment: RAMPART_TEST_PYTHON (default /usr/bin/python3, Debian's).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "mail/dsn.h"
#include "mail/envelope.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "testutil.h"

#define HOST    "out.example.test"
#define ARRIVAL ((time_t)1700000000)
#define NOW     (ARRIVAL + 3600)

static const char MSG[] =
	"Received: from client.example.test (client.example.test [192.0.2.7])\r\n"
	"\tby mx.example.test with ESMTP; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
	"From: Alice <alice@example.test>\r\n"
	"To: bob@example.net, carol@example.org, dave@example.com\r\n"
	"Subject: Quarterly figures\r\n"
	"Message-ID: <q3-figures@example.test>\r\n"
	"Date: Tue, 14 Nov 2023 22:13:19 +0000\r\n"
	"\r\n"
	"Body line one.\r\n"
	"BODY-MARKER-12345\r\n";

/* The parser's view of a report, one key=value line each (values unfolded). */
static const char PY_SCRIPT[] =
	"import sys, re, email\n"
	"from email import policy\n"
	"from email.utils import parsedate_to_datetime\n"
	"sys.stdout.reconfigure(errors='backslashreplace')\n"
	"raw = open(sys.argv[1], 'rb').read()\n"
	"m = email.message_from_bytes(raw, policy=policy.compat32)\n"
	"def out(k, v):\n"
	"    print('%s=%s' % (k, re.sub(r'\\r?\\n(?=[ \\t])', '', str(v))))\n"
	"def stamp(k, v):\n"
	"    try: out(k + '.epoch', int(parsedate_to_datetime(v).timestamp()))\n"
	"    except Exception as e: out(k + '.epoch', 'bad')\n"
	"out('type', m.get_content_type())\n"
	"out('report-type', m.get_param('report-type'))\n"
	"for h in ('From', 'To', 'Subject', 'Auto-Submitted', 'MIME-Version', 'Message-ID',\n"
	"          'Content-Transfer-Encoding', 'Bcc'):\n"
	"    if m[h] is not None: out('h.' + h, m[h])\n"
	"stamp('date', m['Date'])\n"
	"out('defects', len(m.defects))\n"
	"b = m.get_boundary().encode()\n"
	"out('boundary-delims', raw.count(b'\\r\\n--' + b))\n"
	"out('boundary-total', raw.count(b))\n"
	"parts = m.get_payload()\n"
	"out('nparts', len(parts))\n"
	"for i, p in enumerate(parts):\n"
	"    out('part%d.type' % i, p.get_content_type())\n"
	"    out('part%d.defects' % i, len(p.defects))\n"
	"    if p['Content-Transfer-Encoding']: out('part%d.cte' % i, p['Content-Transfer-Encoding'])\n"
	"    if p.get_content_charset(): out('part%d.charset' % i, p.get_content_charset())\n"
	"t = parts[0].get_payload(decode=True).decode(parts[0].get_content_charset() or 'ascii')\n"
	"out('textmax', max(len(l.rstrip('\\r')) for l in t.split('\\n')))\n"
	"out('text', ' '.join(t.split()))\n"
	"ds = parts[1].get_payload()\n"
	"out('nblocks', len(ds))\n"
	"for j, blk in enumerate(ds):\n"
	"    out('ds%d.keys' % j, ','.join(blk.keys()))\n"
	"    for k, v in blk.items():\n"
	"        out('ds%d.%s' % (j, k), v)\n"
	"        if k in ('Arrival-Date', 'Will-Retry-Until'): stamp('ds%d.%s' % (j, k), v)\n"
	"p3 = parts[2]\n"
	"if p3.get_content_type() == 'message/rfc822':\n"
	"    inner = p3.get_payload()[0]\n"
	"    for k, v in inner.items(): out('orig.' + k, v)\n"
	"    body = inner.get_payload()\n"
	"    if isinstance(body, list):\n"
	"        out('orig.nparts', len(body))\n"
	"        body = ''\n"
	"    out('orig.body', ' '.join(body.split())[:200])\n"
	"    out('orig.bodylen', len(body))\n"
	"else:\n"
	"    h = email.message_from_bytes(p3.get_payload(decode=True), policy=policy.compat32)\n"
	"    for k, v in h.items(): out('orig.' + k, v)\n"
	"    out('orig.bodylen', len(h.get_payload()))\n";

struct fx {
	char dir[512];
	struct envelope *env;
	struct buf out;
	char *py;               /* parser output, "\n"-prefixed */
	char *val;              /* the last value val() returned */
	struct buf scratch;     /* parser output, unfolded report */
	struct buf msg;         /* a test's original or reply text */
	/* all freed by teardown, so a failed test leaks nothing */
	size_t *idx;
};

static int setup(void **state)
{
	struct fx *f = xcalloc(1, sizeof(*f));
	assert_int_equal(tu_mkdtemp(f->dir, sizeof(f->dir), "dsn"), 0);
	buf_init(&f->out);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	envelope_free(f->env);
	buf_free(&f->out);
	free(f->py);
	free(f->val);
	free(f->idx);
	buf_free(&f->scratch);
	buf_free(&f->msg);
	if (!getenv("RAMPART_TEST_KEEP"))
		tu_rmtree(f->dir);
	free(f);
	return 0;
}

/* alice sent to carol (delivered), bob (failed: 550 5.1.1) and dave
 * (still pending). */
static struct envelope *mkenv(struct fx *f)
{
	struct envelope *e = envelope_new();
	e->sender = pool_strdup(e->pool, "alice@example.test");
	e->arrival = ARRIVAL;
	struct env_rcpt *r = envelope_add_rcpt(e, "carol@example.org");
	r->state = RCPT_DONE;
	r->last_code = 250;
	r->last_reply = pool_strdup(e->pool, "250 2.0.0 Ok: queued as 4SbXYZ");
	r = envelope_add_rcpt(e, "bob@example.net");
	r->state = RCPT_FAILED;
	r->last_code = 550;
	r->last_reply = pool_strdup(e->pool,
				    "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown");
	r = envelope_add_rcpt(e, "dave@example.com");
	r->last_code = 451;
	r->last_reply = pool_strdup(e->pool, "451 4.7.1 Greylisted, try again later");
	f->env = e;
	return e;
}

static struct dsn_input mkin(const struct envelope *e, enum dsn_kind kind, const size_t *idx,
			     size_t n)
{
	struct dsn_input in;
	memset(&in, 0, sizeof(in));
	in.kind = kind;
	in.reporting_mta = HOST;
	in.env = e;
	in.rcpts = idx;
	in.nrcpts = n;
	in.message = MSG;
	in.len = sizeof(MSG) - 1;
	in.now = NOW;
	in.remote_mta = "mx.example.net";
	return in;
}

static void build_ok(struct fx *f, const struct dsn_input *in)
{
	char why[256];
	memset(why, 'x', sizeof(why));
	buf_reset(&f->out);
	if (!dsn_build(in, &f->out, why, sizeof(why)))
		fail_msg("dsn_build refused: %s", why);
	assert_string_equal(why, "");
}

/* Every line ends in CRLF, no bare CR or LF, no NUL, none over 998 octets. */
static void check_lines(const char *p, size_t n)
{
	size_t col = 0;
	assert_true(n >= 2 && p[n - 2] == '\r' && p[n - 1] == '\n');
	for (size_t i = 0; i < n; i++) {
		assert_true(p[i] != '\0');
		if (p[i] == '\r') {
			assert_true(i + 1 < n && p[i + 1] == '\n');
			i++;
			col = 0;
			continue;
		}
		assert_true(p[i] != '\n');
		col++;
		if (col > 998)
			fail_msg("line over 998 octets at offset %zu", i);
	}
}

/* The report with folding undone (CRLF before white space removed), in
 * f->scratch. */
static const char *unfolded(struct fx *f)
{
	buf_reset(&f->scratch);
	for (size_t i = 0; i < f->out.len; i++) {
		if (f->out.data[i] == '\r' && i + 2 < f->out.len && f->out.data[i + 1] == '\n' &&
		    (f->out.data[i + 2] == ' ' || f->out.data[i + 2] == '\t')) {
			i++;
			continue;
		}
		buf_putc(&f->scratch, f->out.data[i]);
	}
	return buf_cstr(&f->scratch);
}

static size_t count(const char *hay, const char *needle)
{
	size_t n = 0;
	for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	return n;
}

/* Run the parser on the report in f->out; its output into f->py. */
static const char *parse(struct fx *f)
{
	char report[600], script[600], cmd[1800];
	snprintf(report, sizeof(report), "%s/report.eml", f->dir);
	snprintf(script, sizeof(script), "%s/check.py", f->dir);
	FILE *fp = fopen(report, "wb");
	assert_non_null(fp);
	assert_int_equal(fwrite(f->out.data, 1, f->out.len, fp), f->out.len);
	assert_int_equal(fclose(fp), 0);
	fp = fopen(script, "w");
	assert_non_null(fp);
	fputs(PY_SCRIPT, fp);
	assert_int_equal(fclose(fp), 0);

	const char *py = getenv("RAMPART_TEST_PYTHON");
	snprintf(cmd, sizeof(cmd), "'%s' '%s' '%s' 2>&1", py && *py ? py : "/usr/bin/python3", script,
		 report);
	fp = popen(cmd, "r");
	assert_non_null(fp);
	struct buf *o = &f->scratch;
	buf_reset(o);
	buf_putc(o, '\n');
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof(chunk), fp)) > 0)
		buf_append(o, chunk, n);
	int st = pclose(fp);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "%s\n", buf_cstr(o));
		fail_msg("parser failed (status %d), output above", st);
	}
	free(f->py);
	f->py = buf_steal(o, NULL);
	return f->py;
}

/* The parser's value for key (first occurrence), or NULL; valid until the
 * next call. */
static const char *val(struct fx *f, const char *key)
{
	char pat[256];
	snprintf(pat, sizeof(pat), "\n%s=", key);
	const char *p = strstr(f->py, pat);
	if (!p)
		return NULL;
	p += strlen(pat);
	const char *e = strchr(p, '\n');
	size_t n = e ? (size_t)(e - p) : strlen(p);
	free(f->val);
	f->val = xstrndup(p, n);
	return f->val;
}

static void expect(struct fx *f, const char *key, const char *want)
{
	const char *got = val(f, key);
	if (!got)
		fail_msg("parser output lacks %s (want \"%s\"):%s", key, want, f->py);
	if (strcmp(got, want) != 0)
		fail_msg("%s: got \"%s\", want \"%s\"", key, got, want);
}

static void expect_has(struct fx *f, const char *key, const char *part)
{
	const char *got = val(f, key);
	if (!got || !strstr(got, part))
		fail_msg("%s: \"%s\" does not contain \"%s\"", key, got ? got : "(missing)", part);
}

static void expect_none(struct fx *f, const char *key)
{
	const char *v = val(f, key);
	if (v)
		fail_msg("unexpected %s=%s", key, v);
}

static void expect_num(struct fx *f, const char *key, long long want)
{
	char w[32];
	snprintf(w, sizeof(w), "%lld", want);
	expect(f, key, w);
}

static void expect_structure(struct fx *f, const char *part3)
{
	expect(f, "type", "multipart/report");
	expect(f, "report-type", "delivery-status");
	expect(f, "defects", "0");
	expect(f, "nparts", "3");
	expect(f, "part0.type", "text/plain");
	expect(f, "part1.type", "message/delivery-status");
	expect(f, "part2.type", part3);
	expect(f, "part0.defects", "0");
	expect(f, "part1.defects", "0");
	expect(f, "part2.defects", "0");
	expect(f, "boundary-delims", "4");      /* three parts and the close */
	expect(f, "boundary-total", "5");       /* ... and the parameter */
	expect(f, "h.Auto-Submitted", "auto-replied");
	expect(f, "h.MIME-Version", "1.0");
	expect_num(f, "date.epoch", NOW);
}

/* ---- the tests --------------------------------------------------------- */

static void test_failed_report(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 1 };
	struct envelope *e = mkenv(f);
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 1);
	build_ok(f, &in);
	check_lines(f->out.data, f->out.len);
	assert_false(dsn_is_8bit(f->out.data, f->out.len));
	assert_null(strstr(f->out.data, "BODY-MARKER"));         /* headers only by default */

	parse(f);
	expect_structure(f, "text/rfc822-headers");
	expect(f, "h.Subject", "Undelivered Mail Returned to Sender");
	expect(f, "h.From", "Mail Delivery System <MAILER-DAEMON@" HOST ">");
	expect(f, "h.To", "<alice@example.test>");
	expect_none(f, "h.Content-Transfer-Encoding");
	expect_has(f, "h.Message-ID", "@" HOST ">");
	expect(f, "part0.charset", "us-ascii");
	expect_none(f, "part0.cte");

	expect(f, "nblocks", "2");
	expect(f, "ds0.keys", "Reporting-MTA,Arrival-Date");
	expect(f, "ds0.Reporting-MTA", "dns; " HOST);
	expect_num(f, "ds0.Arrival-Date.epoch", ARRIVAL);
	expect(f, "ds1.keys", "Final-Recipient,Action,Status,Remote-MTA,Diagnostic-Code");
	expect(f, "ds1.Final-Recipient", "rfc822; bob@example.net");
	expect(f, "ds1.Action", "failed");
	expect(f, "ds1.Status", "5.1.1");
	expect(f, "ds1.Remote-MTA", "dns; mx.example.net");
	expect(f, "ds1.Diagnostic-Code",
	       "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown");

	expect(f, "orig.Subject", "Quarterly figures");
	expect(f, "orig.Message-ID", "<q3-figures@example.test>");
	expect_has(f, "orig.Received", "by mx.example.test with ESMTP");
	expect(f, "orig.bodylen", "0");

	expect_has(f, "text", "<bob@example.net> The mail server mx.example.net said: 550 5.1.1");
	expect_has(f, "text", "User unknown");
	expect_has(f, "text", "its header section is attached");
	const char *t = val(f, "text");
	assert_null(strstr(t, "carol"));
	assert_null(strstr(t, "dave"));
	assert_true(atoi(val(f, "textmax")) <= 76);
}

static void test_null_sender(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 1 };
	struct envelope *e = mkenv(f);
	e->sender = pool_strdup(e->pool, "");
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 1);
	char why[256] = "";
	assert_false(dsn_build(&in, &f->out, why, sizeof(why)));
	assert_non_null(strstr(why, "null sender"));
	assert_int_equal(f->out.len, 0);
	in.kind = DSN_DELAYED;
	assert_false(dsn_build(&in, &f->out, why, sizeof(why)));
	assert_int_equal(f->out.len, 0);
	/* a why buffer is optional */
	assert_false(dsn_build(&in, &f->out, NULL, 0));
}

static void test_postmaster_copy(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 1 };
	struct envelope *e = mkenv(f);
	e->sender = pool_strdup(e->pool, "");
	e->rcpts[1].notify = DSN_NOTIFY_NEVER;
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 1);
	in.to = "postmaster@example.test";
	in.postmaster = "mailer-daemon@example.test";
	build_ok(f, &in);
	parse(f);
	expect_structure(f, "text/rfc822-headers");
	expect(f, "h.To", "<postmaster@example.test>");
	expect(f, "h.From", "Mail Delivery System <mailer-daemon@example.test>");
	expect(f, "ds1.Final-Recipient", "rfc822; bob@example.net");
}

static void test_notify_never(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 1 };
	struct envelope *e = mkenv(f);
	e->rcpts[1].notify = DSN_NOTIFY_NEVER;
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 1);
	char why[256] = "";
	assert_false(dsn_build(&in, &f->out, why, sizeof(why)));
	assert_non_null(strstr(why, "NOTIFY"));
	assert_int_equal(f->out.len, 0);
	in.kind = DSN_DELAYED;
	assert_false(dsn_build(&in, &f->out, why, sizeof(why)));
	assert_int_equal(f->out.len, 0);
	assert_false(dsn_wanted(&e->rcpts[1], DSN_FAILED));
	assert_false(dsn_wanted(&e->rcpts[1], DSN_DELAYED));
}

static void test_notify_flags(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 1 };
	struct envelope *e = mkenv(f);
	struct env_rcpt *r = &e->rcpts[1];
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 1);
	char why[256];

	/* SUCCESS only: no failure report, no delay warning */
	r->notify = DSN_NOTIFY_SUCCESS;
	assert_false(dsn_build(&in, &f->out, why, sizeof(why)));
	in.kind = DSN_DELAYED;
	assert_false(dsn_build(&in, &f->out, why, sizeof(why)));
	assert_int_equal(f->out.len, 0);

	/* FAILURE: a failure report, no delay warning */
	r->notify = DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE;
	assert_false(dsn_build(&in, &f->out, why, sizeof(why)));
	in.kind = DSN_FAILED;
	build_ok(f, &in);

	/* DELAY: a delay warning, no failure report */
	r->notify = DSN_NOTIFY_DELAY;
	assert_false(dsn_build(&in, &f->out, why, sizeof(why)));
	in.kind = DSN_DELAYED;
	build_ok(f, &in);

	/* default (not given): both */
	r->notify = 0;
	assert_true(dsn_wanted(r, DSN_FAILED));
	assert_true(dsn_wanted(r, DSN_DELAYED));
}

static void test_mixed_notify(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 0, 1, 2 };
	struct envelope *e = mkenv(f);
	e->rcpts[0].notify = DSN_NOTIFY_NEVER;
	e->rcpts[2].notify = DSN_NOTIFY_SUCCESS;
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 3);
	build_ok(f, &in);
	assert_int_equal(count(f->out.data, "Final-Recipient:"), 1);
	assert_non_null(strstr(f->out.data, "Final-Recipient: rfc822; bob@example.net\r\n"));
	assert_null(strstr(f->out.data, "<carol@"));
	assert_null(strstr(f->out.data, "<dave@"));
	assert_null(strstr(f->out.data, "; carol@"));
	assert_null(strstr(f->out.data, "; dave@"));
}

static void test_delayed(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 2 };
	struct envelope *e = mkenv(f);
	e->ret = pool_strdup(e->pool, "FULL");       /* RET applies to failures only */
	struct dsn_input in = mkin(e, DSN_DELAYED, idx, 1);
	in.retry_until = ARRIVAL + 5 * 86400;
	in.postmaster = "postmaster@example.test";
	build_ok(f, &in);
	check_lines(f->out.data, f->out.len);
	assert_null(strstr(f->out.data, "BODY-MARKER"));
	parse(f);
	expect_structure(f, "text/rfc822-headers");
	expect(f, "h.Subject", "Delayed Mail (still being retried)");
	expect(f, "h.From", "Mail Delivery System <postmaster@example.test>");
	expect(f, "ds1.keys", "Final-Recipient,Action,Status,Remote-MTA,Diagnostic-Code,Will-Retry-Until");
	expect(f, "ds1.Final-Recipient", "rfc822; dave@example.com");
	expect(f, "ds1.Action", "delayed");
	expect(f, "ds1.Status", "4.7.1");
	expect(f, "ds1.Diagnostic-Code", "smtp; 451 4.7.1 Greylisted, try again later");
	expect_num(f, "ds1.Will-Retry-Until.epoch", ARRIVAL + 5 * 86400);
	expect_has(f, "text", "still trying");
	expect_has(f, "text", "need not send the message again");
	expect(f, "orig.Subject", "Quarterly figures");

	/* without a retry limit: no Will-Retry-Until */
	in.retry_until = 0;
	build_ok(f, &in);
	assert_null(strstr(f->out.data, "Will-Retry-Until"));
	/* a failure report never has one */
	in.kind = DSN_FAILED;
	in.retry_until = ARRIVAL + 86400;
	build_ok(f, &in);
	assert_null(strstr(f->out.data, "Will-Retry-Until"));
	assert_non_null(strstr(f->out.data, "Action: failed\r\nStatus: 4.7.1\r\n"));
}

static void test_ret_full(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 1 };
	struct envelope *e = mkenv(f);
	e->ret = pool_strdup(e->pool, "FULL");
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 1);
	build_ok(f, &in);
	check_lines(f->out.data, f->out.len);
	parse(f);
	expect_structure(f, "message/rfc822");
	expect(f, "orig.Subject", "Quarterly figures");
	expect(f, "orig.From", "Alice <alice@example.test>");
	expect(f, "orig.body", "Body line one. BODY-MARKER-12345");
	expect_has(f, "text", "it is attached");

	/* RET=HDRS: headers only */
	e->ret = pool_strdup(e->pool, "HDRS");
	build_ok(f, &in);
	assert_null(strstr(f->out.data, "BODY-MARKER"));
	assert_non_null(strstr(f->out.data, "Content-Type: text/rfc822-headers\r\n"));
}

static void test_ret_full_capped(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 1 };
	struct envelope *e = mkenv(f);
	e->ret = pool_strdup(e->pool, "FULL");

	/* 1.5 MB: over the default cap of 1 MB */
	struct buf *big = &f->msg;
	buf_append(big, MSG, sizeof(MSG) - 1);
	while (big->len < 1536 * 1024)
		buf_puts(big, "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n");
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 1);
	in.message = big->data;
	in.len = big->len;
	build_ok(f, &in);
	assert_true(f->out.len < 16 * 1024);
	assert_null(strstr(f->out.data, "BODY-MARKER"));
	parse(f);
	expect_structure(f, "text/rfc822-headers");
	expect(f, "orig.Subject", "Quarterly figures");
	expect_has(f, "text", "larger than the 1048576 bytes this system returns, so only its header "
			      "section is attached");

	/* a site's own cap, at and just over the limit */
	in.message = MSG;
	in.len = sizeof(MSG) - 1;
	in.return_max = in.len;
	build_ok(f, &in);
	assert_non_null(strstr(f->out.data, "Content-Type: message/rfc822\r\n"));
	assert_non_null(strstr(f->out.data, "BODY-MARKER-12345\r\n"));
	in.return_max = in.len - 1;
	build_ok(f, &in);
	assert_null(strstr(f->out.data, "Content-Type: message/rfc822\r\n"));
	assert_null(strstr(f->out.data, "BODY-MARKER"));
}

static void test_envid_orcpt(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 0, 1, 2 };
	struct envelope *e = mkenv(f);
	e->envid = pool_strdup(e->pool, "QQ314159+2Bx");
	e->rcpts[0].orcpt = pool_strdup(e->pool, "rfc822;carol+2Bfilter@example.org");
	e->rcpts[1].orcpt = pool_strdup(e->pool, "rfc822;odd+0Aname@example.net");  /* LF inside */
	e->rcpts[2].orcpt = pool_strdup(e->pool, "no-type-here");                  /* malformed */
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 3);
	build_ok(f, &in);
	check_lines(f->out.data, f->out.len);
	parse(f);
	expect_structure(f, "text/rfc822-headers");
	expect(f, "nblocks", "4");
	expect(f, "ds0.Original-Envelope-Id", "QQ314159+x");
	/* decoded when that is printable ... */
	expect(f, "ds1.Original-Recipient", "rfc822;carol+filter@example.org");
	expect(f, "ds1.Final-Recipient", "rfc822; carol@example.org");
	/* ... kept encoded when it is not */
	expect(f, "ds2.Original-Recipient", "rfc822;odd+0Aname@example.net");
	expect(f, "ds2.Final-Recipient", "rfc822; bob@example.net");
	expect(f, "ds3.keys", "Final-Recipient,Action,Status,Remote-MTA,Diagnostic-Code");

	/* a malformed ENVID is kept as given (sanitised) */
	e->envid = pool_strdup(e->pool, "bad+zzid");
	build_ok(f, &in);
	assert_non_null(strstr(f->out.data, "Original-Envelope-Id: bad+zzid\r\n"));
}

static void test_diagnostic_sanitised(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 1 };
	struct envelope *e = mkenv(f);
	struct buf *r = &f->msg;
	buf_puts(r, "550 5.7.1 bad\r\nInjected-Header: evil\r\n\r\nX-Body: yes\rmore\nlines\t\x01 end");
	for (int i = 0; i < 40; i++)
		buf_puts(r, " policy-words");
	buf_putc(r, ' ');
	for (int i = 0; i < 1200; i++)
		buf_putc(r, 'w');
	e->rcpts[1].last_reply = pool_strdup(e->pool, r->data);
	e->sender = pool_strdup(e->pool, "alice@example.test>\r\nBcc: victim@example.net");
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 1);
	in.remote_mta = "mx.example.net\r\nEvil: 1";
	build_ok(f, &in);
	check_lines(f->out.data, f->out.len);
	assert_null(strstr(f->out.data, "\r\nInjected-Header"));
	assert_null(strstr(f->out.data, "\r\nX-Body"));
	assert_null(strstr(f->out.data, "\r\nEvil"));
	assert_null(strstr(f->out.data, "\r\nBcc"));
	/* the long reply is folded, and cut */
	assert_non_null(strstr(f->out.data, "\r\n policy-words"));
	assert_non_null(strstr(unfolded(f), "www ...\r\n"));

	parse(f);
	expect_structure(f, "text/rfc822-headers");
	expect_none(f, "h.Bcc");
	expect(f, "h.To", "<alice@example.test> Bcc: victim@example.net>");
	expect(f, "nblocks", "2");
	expect(f, "ds1.keys", "Final-Recipient,Action,Status,Remote-MTA,Diagnostic-Code");
	expect(f, "ds1.Status", "5.7.1");
	expect(f, "ds1.Remote-MTA", "dns; mx.example.net--Evil:-1");
	expect_has(f, "ds1.Diagnostic-Code",
		   "smtp; 550 5.7.1 bad Injected-Header: evil X-Body: yes more lines ? end policy-words");
	expect_has(f, "text", "bad Injected-Header: evil X-Body: yes more lines");

	/* a word longer than a line is split, still within 998 octets */
	buf_reset(r);
	buf_puts(r, "550 ");
	for (int i = 0; i < 1200; i++)
		buf_putc(r, 'z');
	e->rcpts[1].last_reply = pool_strdup(e->pool, r->data);
	build_ok(f, &in);
	check_lines(f->out.data, f->out.len);
	parse(f);
	expect_structure(f, "text/rfc822-headers");
	const char *d = val(f, "ds1.Diagnostic-Code");
	assert_non_null(d);
	/* cut at 1000 bytes, "..." added, split once (one space more) */
	assert_int_equal(strlen(d), strlen("smtp; 550 ") + 1000 + 1 + strlen(" ..."));
	assert_non_null(strstr(f->out.data, "zzz\r\n zzz"));
}

static void test_status_derivation(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 1 };
	struct envelope *e = mkenv(f);
	struct env_rcpt *r = &e->rcpts[1];
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 1);
	static const struct {
		enum dsn_kind kind;
		int code;
		const char *reply;
		const char *status, *diag;      /* diag NULL: no Diagnostic-Code */
		bool remote;
	} cases[] = {
		{ DSN_FAILED, 550, "550 User unknown", "5.0.0", "smtp; 550 User unknown", true },
		{ DSN_FAILED, 550, "550-5.2.2 mailbox full", "5.2.2", "smtp; 550 5.2.2 mailbox full", true },
		{ DSN_FAILED, 554, "554 5.1.1234 not an enhanced code", "5.0.0",
		  "smtp; 554 5.1.1234 not an enhanced code", true },
		{ DSN_FAILED, 0, "4.4.7 message expired in queue", "4.4.7",
		  "X-Rampart; 4.4.7 message expired in queue", false },
		/* the queue's own reason with a code left from an earlier try */
		{ DSN_FAILED, 451, "4.4.7 message expired in queue", "4.4.7",
		  "X-Rampart; 4.4.7 message expired in queue", false },
		{ DSN_FAILED, 0, NULL, "5.0.0", NULL, false },
		{ DSN_FAILED, 554, NULL, "5.0.0", "smtp; 554", true },
		{ DSN_FAILED, 552, "Message too big", "5.0.0", "smtp; 552 Message too big", true },
		{ DSN_DELAYED, 0, "connect to mx.example.net[192.0.2.1]:25: Connection refused", "4.0.0",
		  "X-Rampart; connect to mx.example.net[192.0.2.1]:25: Connection refused", false },
		{ DSN_DELAYED, 421, "421 Service not available", "4.0.0", "smtp; 421 Service not available", true },
	};
	char want[1200];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		in.kind = cases[i].kind;
		r->last_code = cases[i].code;
		r->last_reply = cases[i].reply ? pool_strdup(e->pool, cases[i].reply) : NULL;
		build_ok(f, &in);
		snprintf(want, sizeof(want), "\r\nStatus: %s\r\n", cases[i].status);
		if (!strstr(f->out.data, want))
			fail_msg("case %zu: no %s", i, want);
		if (cases[i].diag) {
			snprintf(want, sizeof(want), "\r\nDiagnostic-Code: %s\r\n", cases[i].diag);
			if (!strstr(unfolded(f), want))
				fail_msg("case %zu: no %s", i, want);
		} else {
			assert_null(strstr(f->out.data, "Diagnostic-Code:"));
		}
		assert_true(!strstr(f->out.data, "Remote-MTA:") == !cases[i].remote);
	}
}

static void test_boundary_unique(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 1 };
	struct envelope *e = mkenv(f);
	e->ret = pool_strdup(e->pool, "FULL");
	/* an original that itself is MIME, with boundary-like lines */
	static const char mime[] =
		"From: alice@example.test\r\n"
		"Subject: nested\r\n"
		"MIME-Version: 1.0\r\n"
		"Content-Type: multipart/mixed; boundary=\"=_rampart_\"\r\n"
		"\r\n"
		"--=_rampart_\r\n"
		"Content-Type: text/plain\r\n"
		"\r\n"
		"--=_rampart_0123456789abcdef\r\n"
		"--=_rampart_--\r\n";
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 1);
	in.message = mime;
	in.len = sizeof(mime) - 1;
	char seen[64] = "";
	for (int i = 0; i < 200; i++) {
		build_ok(f, &in);
		const char *b = strstr(f->out.data, "boundary=\"");
		assert_non_null(b);
		b += strlen("boundary=\"");
		const char *q = strchr(b, '"');
		assert_non_null(q);
		char boundary[64];
		assert_true(q - b > 10 && (size_t)(q - b) < sizeof(boundary));
		memcpy(boundary, b, (size_t)(q - b));
		boundary[q - b] = '\0';
		assert_int_equal(count(f->out.data, boundary), 5);
		assert_string_not_equal(boundary, seen);
		memcpy(seen, boundary, sizeof(seen));
	}
	parse(f);
	expect_structure(f, "message/rfc822");
	expect(f, "orig.Subject", "nested");
}

static void test_8bit_and_odd_originals(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 1 };
	struct envelope *e = mkenv(f);
	e->ret = pool_strdup(e->pool, "FULL");
	struct buf *m = &f->msg;
	buf_puts(m, "From: =?utf-8?q?J=C3=B6rg?= <joerg@example.test>\n");        /* bare LF */
	buf_puts(m, "Subject: Gr\xc3\xbc\xc3\x9f" "e aus K\xf6ln\r\n");          /* UTF-8, Latin-1 */
	buf_puts(m, "X-Long: ");
	for (int i = 0; i < 1500; i++)
		buf_putc(m, 'a' + i % 26);
	buf_puts(m, "\r\nX-Bare-CR: yes\rX-After: 1\r\n");
	buf_puts(m, "\r\nbody with a NUL ");
	buf_putc(m, '\0');
	buf_puts(m, " inside\nand a last line without a newline");
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 1);
	in.message = m->data;
	in.len = m->len;
	build_ok(f, &in);
	check_lines(f->out.data, f->out.len);
	assert_true(dsn_is_8bit(f->out.data, f->out.len));
	assert_non_null(strstr(f->out.data, "Subject: Gr\xc3\xbc\xc3\x9f" "e aus K\xf6ln\r\n"));
	parse(f);
	expect_structure(f, "message/rfc822");
	expect(f, "h.Content-Transfer-Encoding", "8bit");
	expect(f, "part2.cte", "8bit");
	expect(f, "part0.charset", "us-ascii");
	expect(f, "orig.From", "=?utf-8?q?J=C3=B6rg?= <joerg@example.test>");
	expect(f, "orig.X-Bare-CR", "yes");
	expect(f, "orig.X-After", "1");
	expect_has(f, "orig.Subject", "Gr");
	const char *x = val(f, "orig.X-Long");
	assert_non_null(x);
	assert_int_equal(strlen(x), 1501);      /* split once: one space more */
	expect(f, "orig.body", "body with a NUL inside and a last line without a newline");

	/* headers only, 8-bit: text/rfc822-headers with 8bit */
	e->ret = NULL;
	build_ok(f, &in);
	check_lines(f->out.data, f->out.len);
	parse(f);
	expect_structure(f, "text/rfc822-headers");
	expect(f, "part2.cte", "8bit");
	expect(f, "orig.X-After", "1");

	/* an original without a body, and an empty one */
	static const char hdr_only[] = "Subject: no body\r\nFrom: alice@example.test";
	in.message = hdr_only;
	in.len = sizeof(hdr_only) - 1;
	build_ok(f, &in);
	check_lines(f->out.data, f->out.len);
	parse(f);
	expect_structure(f, "text/rfc822-headers");
	expect(f, "orig.From", "alice@example.test");
	in.message = NULL;
	in.len = 0;
	build_ok(f, &in);
	check_lines(f->out.data, f->out.len);
	parse(f);
	expect_structure(f, "text/rfc822-headers");
	expect_has(f, "text", "(0 bytes)");
}

static void test_huge_header_section(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 1 };
	struct envelope *e = mkenv(f);
	struct buf *m = &f->msg;
	buf_puts(m, "Subject: many headers\r\n");
	for (int i = 0; m->len < DSN_HEADERS_MAX + 10000; i++)
		buf_printf(m, "X-Filler-%d: some value\r\n\tcontinued\r\n", i);
	buf_puts(m, "X-Last: never returned\r\n\r\nbody\r\n");
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 1);
	in.message = m->data;
	in.len = m->len;
	build_ok(f, &in);
	check_lines(f->out.data, f->out.len);
	assert_true(f->out.len < DSN_HEADERS_MAX + 8192);
	assert_null(strstr(f->out.data, "X-Last"));
	/* the cut is at a field boundary: the part ends with a whole field */
	const char *end = strstr(f->out.data, "\tcontinued\r\n\r\n--=_rampart_");
	assert_non_null(end);
	parse(f);
	expect_structure(f, "text/rfc822-headers");
	expect(f, "orig.Subject", "many headers");
	expect_has(f, "text", "was cut to");
}

static void test_many_recipients(void **state)
{
	struct fx *f = *state;
	struct envelope *e = envelope_new();
	f->env = e;
	e->sender = pool_strdup(e->pool, "alice@example.test");
	e->arrival = ARRIVAL;
	size_t n = DSN_MAX_RCPTS + 500;
	size_t *idx = f->idx = xmalloc(n * sizeof(*idx));
	for (size_t i = 0; i < n; i++) {
		char a[64];
		snprintf(a, sizeof(a), "user%zu@example.net", i);
		struct env_rcpt *r = envelope_add_rcpt(e, a);
		r->state = RCPT_FAILED;
		r->last_code = 550;
		r->last_reply = pool_strdup(e->pool, "550 5.1.1 User unknown");
		idx[i] = i;
	}
	struct dsn_input in = mkin(e, DSN_FAILED, idx, n);
	build_ok(f, &in);
	check_lines(f->out.data, f->out.len);
	assert_int_equal(count(f->out.data, "Final-Recipient:"), DSN_MAX_RCPTS);
	assert_non_null(strstr(f->out.data, "user999@example.net"));
	assert_null(strstr(f->out.data, "user1000@example.net"));
	parse(f);
	expect_structure(f, "text/rfc822-headers");
	expect_num(f, "nblocks", DSN_MAX_RCPTS + 1);
	expect_has(f, "text", "and 500 more recipients, not listed");
}

static void test_smtputf8(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 1 };
	struct envelope *e = mkenv(f);
	e->smtputf8 = true;
	e->sender = pool_strdup(e->pool, "andr\xc3\xa9@example.test");
	e->rcpts[1].addr = pool_strdup(e->pool, "jos\xc3\xa9+x@exemple.fr");
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 1);
	build_ok(f, &in);
	check_lines(f->out.data, f->out.len);
	assert_true(dsn_is_8bit(f->out.data, f->out.len));
	assert_non_null(strstr(f->out.data, "To: <andr\xc3\xa9@example.test>\r\n"));
	assert_non_null(strstr(f->out.data, "Final-Recipient: utf-8; jos\\x{E9}\\x{2B}x@exemple.fr\r\n"));
	parse(f);
	expect_structure(f, "text/rfc822-headers");
	expect(f, "part0.charset", "utf-8");
	expect(f, "part0.cte", "8bit");
	expect_none(f, "part1.cte");
	expect_has(f, "text", "<jos\xc3\xa9+x@exemple.fr>");
	expect(f, "ds1.Final-Recipient", "utf-8; jos\\x{E9}\\x{2B}x@exemple.fr");

	/* without SMTPUTF8 the human part stays US-ASCII */
	e->smtputf8 = false;
	build_ok(f, &in);
	parse(f);
	expect(f, "part0.charset", "us-ascii");
	expect_has(f, "text", "<jos??+x@exemple.fr>");
}

/* A non-ASCII address whose utf-8-addr-xtext form is longer than a line
 * may be (found by fuzz_dsn): its field is cut at 998 octets, marked. */
static void test_long_utf8_address(void **state)
{
	struct fx *f = *state;
	const size_t idx[] = { 1 };
	struct envelope *e = mkenv(f);
	e->smtputf8 = true;
	char addr[600];
	size_t n = 0;
	for (int i = 0; i < 40; i++)
		addr[n++] = '+';                /* \x{2B}: 6 bytes each */
	addr[n++] = '@';
	while (n < 590) {
		addr[n++] = '\xc3';            /* U+00E9, \x{E9} */
		addr[n++] = '\xa9';
	}
	addr[n] = '\0';
	e->rcpts[1].addr = pool_strdup(e->pool, addr);
	struct dsn_input in = mkin(e, DSN_FAILED, idx, 1);
	build_ok(f, &in);
	check_lines(f->out.data, f->out.len);
	const char *fr = strstr(f->out.data, "Final-Recipient: utf-8; \\x{2B}\\x{2B}");
	assert_non_null(fr);
	const char *end = strstr(fr, "\r\n");
	assert_non_null(end);
	assert_true(end - fr <= 998);
	assert_true(end - fr > 990);            /* cut near the bound, not early */
	assert_memory_equal(end - 3, "...", 3);
	/* a cut never splits an escape */
	const char *last = end - 3;
	while (last > fr && last[-1] != '}')
		last--;
	assert_true(last == end - 3);
	parse(f);
	expect_structure(f, "text/rfc822-headers");
}

static void test_bad_input(void **state)
{
	struct fx *f = *state;
	struct envelope *e = mkenv(f);
	char why[256];
	const size_t bad[] = { 1, 3 };
	struct dsn_input in = mkin(e, DSN_FAILED, bad, 2);

	assert_false(dsn_build(&in, &f->out, why, sizeof(why)));
	assert_non_null(strstr(why, "out of range"));
	assert_int_equal(f->out.len, 0);

	in.nrcpts = 0;
	assert_false(dsn_build(&in, &f->out, why, sizeof(why)));
	assert_non_null(strstr(why, "no recipients"));

	in.nrcpts = 1;
	in.reporting_mta = NULL;
	assert_false(dsn_build(&in, &f->out, why, sizeof(why)));
	assert_non_null(strstr(why, "host"));
	in.reporting_mta = HOST;

	assert_false(dsn_build(NULL, &f->out, why, sizeof(why)));
	assert_int_equal(f->out.len, 0);

	/* an output limit too small for the report: refused, out unchanged */
	buf_puts(&f->out, "keep");
	buf_set_limit(&f->out, 100);
	assert_false(dsn_build(&in, &f->out, why, sizeof(why)));
	assert_non_null(strstr(why, "limit"));
	assert_int_equal(f->out.len, 4);
	/* and appended after what is there when it fits */
	buf_set_limit(&f->out, 0);
	assert_true(dsn_build(&in, &f->out, why, sizeof(why)));
	assert_memory_equal(f->out.data, "keepFrom: ", 10);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_failed_report, setup, teardown),
		cmocka_unit_test_setup_teardown(test_null_sender, setup, teardown),
		cmocka_unit_test_setup_teardown(test_postmaster_copy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_notify_never, setup, teardown),
		cmocka_unit_test_setup_teardown(test_notify_flags, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mixed_notify, setup, teardown),
		cmocka_unit_test_setup_teardown(test_delayed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ret_full, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ret_full_capped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_envid_orcpt, setup, teardown),
		cmocka_unit_test_setup_teardown(test_diagnostic_sanitised, setup, teardown),
		cmocka_unit_test_setup_teardown(test_status_derivation, setup, teardown),
		cmocka_unit_test_setup_teardown(test_boundary_unique, setup, teardown),
		cmocka_unit_test_setup_teardown(test_8bit_and_odd_originals, setup, teardown),
		cmocka_unit_test_setup_teardown(test_huge_header_section, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_recipients, setup, teardown),
		cmocka_unit_test_setup_teardown(test_smtputf8, setup, teardown),
		cmocka_unit_test_setup_teardown(test_long_utf8_address, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
