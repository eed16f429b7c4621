/*
 * test_header.c — walking a message's header section (shared/mail/header).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "mail/header.h"

static void assert_field(const struct hdr_field *f, const char *name, const char *value)
{
	assert_int_equal(f->name_len, strlen(name));
	assert_memory_equal(f->name, name, f->name_len);
	assert_int_equal(f->value_len, strlen(value));
	assert_memory_equal(f->value, value, f->value_len);
}

static void test_body_start(void **state)
{
	(void)state;
	const char crlf[] = "A: 1\r\nB: 2\r\n\r\nbody\r\n";
	assert_int_equal(hdr_body_start(crlf, strlen(crlf)), strlen("A: 1\r\nB: 2\r\n\r\n"));
	const char lf[] = "A: 1\nB: 2\n\nbody\n";
	assert_int_equal(hdr_body_start(lf, strlen(lf)), strlen("A: 1\nB: 2\n\n"));
	const char none[] = "A: 1\r\nB: 2\r\n";
	assert_int_equal(hdr_body_start(none, strlen(none)), strlen(none));
	const char empty_head[] = "\r\nbody";
	assert_int_equal(hdr_body_start(empty_head, strlen(empty_head)), 2);
	assert_int_equal(hdr_body_start("", 0), 0);
}

static void test_fields_and_folding(void **state)
{
	(void)state;
	const char msg[] = "Subject: hello\r\n\tworld\r\n"
			   "not a field line\r\n"
			   "X-Empty:\r\n"
			   "Authentication-Results : mx.example; spf=pass\r\n"
			   "From: a@example.org\n"
			   "\r\n"
			   "Body: not a header\r\n";
	size_t hlen = hdr_body_start(msg, strlen(msg)), pos = 0;
	struct hdr_field f;

	assert_true(hdr_next(msg, hlen, &pos, &f));
	assert_field(&f, "Subject", " hello\r\n\tworld");
	assert_int_equal(f.off, 0);
	assert_int_equal(f.len, strlen("Subject: hello\r\n\tworld\r\n"));
	assert_true(hdr_is(&f, "subject"));
	assert_false(hdr_is(&f, "Subj"));

	assert_true(hdr_next(msg, hlen, &pos, &f));    /* the line without a colon is passed over */
	assert_field(&f, "X-Empty", "");
	assert_true(hdr_next(msg, hlen, &pos, &f));
	assert_field(&f, "Authentication-Results", " mx.example; spf=pass");
	assert_true(hdr_is(&f, "AUTHENTICATION-RESULTS"));
	assert_true(hdr_next(msg, hlen, &pos, &f));
	assert_field(&f, "From", " a@example.org");
	assert_int_equal(f.off + f.len, strlen(msg) - strlen("\r\nBody: not a header\r\n"));
	assert_false(hdr_next(msg, hlen, &pos, &f));
	/* without the bound of the header section, the walk still stops at the empty line */
	pos = 0;
	unsigned n = 0;
	while (hdr_next(msg, strlen(msg), &pos, &f))
		n++;
	assert_int_equal(n, 4);
}

/* The walk never reads past hlen, even in the middle of a field. */
static void test_bounded(void **state)
{
	(void)state;
	const char msg[] = "Subject: a long one\r\n continued\r\n";
	size_t pos = 0;
	struct hdr_field f;
	assert_true(hdr_next(msg, 12, &pos, &f));
	assert_field(&f, "Subject", " a l");
	assert_int_equal(f.len, 12);
	assert_false(hdr_next(msg, 12, &pos, &f));
	/* a leading continuation line belongs to no field */
	const char cont[] = " stray\r\nA: b\r\n";
	pos = 0;
	assert_true(hdr_next(cont, strlen(cont), &pos, &f));
	assert_field(&f, "A", " b");
	/* a name cut off before its colon is no field */
	pos = 0;
	assert_false(hdr_next("Subject", 7, &pos, &f));
}

struct got {
	char a[8][HDR_ADDR_MAX + 1];
	int n;
	int stop_after;
};

static bool collect(void *arg, const char *addr)
{
	struct got *g = arg;
	if (g->n < 8)
		snprintf(g->a[g->n], sizeof(g->a[0]), "%s", addr);
	g->n++;
	return !g->stop_after || g->n < g->stop_after;
}

static struct got addrs(const char *v, bool ok)
{
	struct got g = { .n = 0 };
	if (hdr_addresses(v, strlen(v), collect, &g) != ok)
		fail_msg("'%s': expected %s", v, ok ? "success" : "failure");
	return g;
}

static void test_addresses(void **state)
{
	(void)state;
	struct got g = addrs(" alice@example.test", true);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.a[0], "alice@example.test");
	g = addrs(" \"Smith, Alice\" <alice@example.test>, bob@example.test (Bob, the builder)", true);
	assert_int_equal(g.n, 2);
	assert_string_equal(g.a[0], "alice@example.test");
	assert_string_equal(g.a[1], "bob@example.test");
	g = addrs(" Alice (a <comment>) <alice@example.test>", true);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.a[0], "alice@example.test");
	g = addrs(" team: carol@example.test, <dave@example.test>;, eve@example.test", true);
	assert_int_equal(g.n, 3);
	assert_string_equal(g.a[0], "carol@example.test");
	assert_string_equal(g.a[1], "dave@example.test");
	assert_string_equal(g.a[2], "eve@example.test");
	g = addrs(" undisclosed-recipients:;", true);
	assert_int_equal(g.n, 0);
	g = addrs(" \"a,b\"@example.test", true);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.a[0], "\"a,b\"@example.test");
	g = addrs(" x@example.test,\r\n\ty@example.test", true);
	assert_int_equal(g.n, 2);
	assert_string_equal(g.a[1], "y@example.test");
	/* stopping early */
	g = (struct got){ .stop_after = 1 };
	assert_true(hdr_addresses("a@x.test, b@x.test", 18, collect, &g));
	assert_int_equal(g.n, 1);
	/* malformed */
	addrs(" \"unterminated <a@example.test>", false);
	addrs(" Alice <alice@example.test", false);
	addrs(" (open comment a@example.test", false);
	/* text after the angle-addr is a second address a reader may show
	 * (found in review): malformed; blanks and comments are fine */
	addrs(" <alice@example.test> <ceo@bank.example>", false);
	addrs(" <alice@example.test>ceo@bank.example", false);
	g = addrs(" Alice <alice@example.test> (work)  , bob@example.test", true);
	assert_int_equal(g.n, 2);
	assert_string_equal(g.a[0], "alice@example.test");
	/* a NUL would hide the address from the check */
	struct got z = { .n = 0 };
	assert_false(hdr_addresses(" <\0ceo@bank.example>", 20, collect, &z));
	assert_false(hdr_addresses(" <alice@example.test\0@bank.example>", 36, collect, &z));
	assert_int_equal(z.n, 0);
	/* bounded: a long address is cut, never overflows */
	char big[1200];
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	big[600] = '@';
	g = addrs(big, true);
	assert_int_equal(g.n, 1);
	assert_int_equal(strlen(g.a[0]), HDR_ADDR_MAX);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_body_start),
		cmocka_unit_test(test_fields_and_folding),
		cmocka_unit_test(test_bounded),
		cmocka_unit_test(test_addresses),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
