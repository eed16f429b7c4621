/*
 * test_spamrules.c — the scored content rules (shared/mail/spamrules.c)
 * and the message text they read (shared/mail/msgtext.c): header rules on
 * decoded values and on every field, body rules on decoded text and
 * HTML as text, URI rules on each link, a rule counting once, negative
 * scores, header fields read as far as SMTP accepts them (1000), the hit
 * list bound, a pathological pattern cut by the match
 * limit, every kind of bad rule with file:line, and the shipped default
 * rules loading and catching a spam sample.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "mail/msgtext.h"
#include "mail/spamrules.h"
#include "util/alloc.h"
#include "util/rx.h"

static char dir[PATH_MAX];

static int setup(void **state)
{
	(void)state;
	return tu_mkdtemp(dir, sizeof(dir), "spamrules");
}

static int teardown(void **state)
{
	(void)state;
	tu_rmtree(dir);
	return 0;
}

static struct spamrules *load(const char *text, char *why, size_t whylen)
{
	char path[PATH_MAX + 16];
	snprintf(path, sizeof(path), "%s/rules", dir);
	tu_write_file(path, text);
	return spamrules_load(path, why, whylen);
}

static const char SPAM[] =
	"From: \"Deals\" <123456789@pharma.example>\r\n"
	"Subject: =?UTF-8?B?Q0hFQVAgUElMTFMgRk9SIFlPVSEhIQ==?=\r\n"
	"Message-ID: <nodomain>\r\n"
	"Precedence: bulk\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: multipart/alternative; boundary=b\r\n"
	"\r\n"
	"--b\r\n"
	"Content-Type: text/plain\r\n"
	"\r\n"
	"Buy cheap pills. Click here to be removed.\r\n"
	"--b\r\n"
	"Content-Type: text/html\r\n"
	"Content-Transfer-Encoding: quoted-printable\r\n"
	"\r\n"
	"<p>Best V=49AGRA prices</p><a href=3D\"http://192.0.2.7/buy\">buy</a> <a href=3D\"http://x@shop.example/\">x</a>\r\n"
	"--b--\r\n";

static const char HAM[] =
	"From: alice@example.test\r\nSubject: Minutes\r\nMessage-ID: <1@example.test>\r\nPrecedence: list\r\n\r\n"
	"The minutes of Monday's meeting, see https://example.test/minutes\r\n";

static double eval(const struct spamrules *r, const char *msg, struct spamrule_hit *hits, size_t max, size_t *n,
		   unsigned *cut)
{
	struct msgtext t;
	msgtext_build(&t, msg, strlen(msg), 0, 0);
	struct rx_scratch *s = rx_scratch_new();
	double score = spamrules_eval(r, msg, &t, s, hits, max, n, cut);
	rx_scratch_free(s);
	msgtext_free(&t);
	return score;
}

static bool hit(const struct spamrule_hit *h, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(h[i].name, name) == 0)
			return true;
	return false;
}

static void test_msgtext(void **state)
{
	(void)state;
	struct msgtext t;
	msgtext_build(&t, SPAM, strlen(SPAM), 0, 0);
	assert_true(t.html);
	assert_false(t.bad_encoding);
	assert_non_null(strstr(t.text.data, "Buy cheap pills"));
	assert_non_null(strstr(t.text.data, "Best VIAGRA prices"));
	assert_int_equal(t.nurls, 2);
	const char *u = msgtext_url(&t, NULL);
	assert_string_equal(u, "http://192.0.2.7/buy");
	u = msgtext_url(&t, u);
	assert_string_equal(u, "http://x@shop.example/");
	assert_null(msgtext_url(&t, u));
	msgtext_free(&t);
	/* the bounds */
	msgtext_build(&t, SPAM, strlen(SPAM), 10, 1);
	assert_true(t.text.len <= 4 * 10 + 64);
	assert_true(t.nurls <= 1);
	msgtext_free(&t);
}

static void test_rules(void **state)
{
	(void)state;
	char why[512] = "";
	struct spamrules *r = load(
		"# a comment\n"
		"\n"
		"header:Subject  SUBJ_CAPS   /^[^a-z]+$/        1.5   Subject in capitals\n"
		"header:*        ANY_NODOM   /^Message-ID: <[^@]*>$/i  1.0\n"
		"header:From     FROM_DIGITS /\\d{6,}@/          0.5   digits\n"
		"header:Precedence LIST      /^list$/i          -1.0  a list\n"
		"body            PILLS       /cheap\\s+pills/i   2.0   pills\n"
		"body            VIAGRA      /viagra/i          2.5\n"
		"body            ABSENT      /nothing like this/ 9.0\n"
		"uri             IP_URI      /^https?:\\/\\/\\d+\\.\\d+\\.\\d+\\.\\d+/  1.5  bare IP\n"
		"uri             USERINFO    /^https?:\\/\\/[^\\/]*@/  1.5\n",
		why, sizeof(why));
	assert_non_null(r);
	assert_int_equal(spamrules_count(r), 9);
	struct spamrule_hit h[20];
	size_t n;
	unsigned cut;
	double s = eval(r, SPAM, h, 20, &n, &cut);
	assert_int_equal(cut, 0);
	assert_int_equal(n, 7);
	assert_true(fabs(s - (1.5 + 1.0 + 0.5 + 2.0 + 2.5 + 1.5 + 1.5)) < 1e-9);
	assert_string_equal(h[0].name, "SUBJ_CAPS");         /* file order */
	assert_string_equal(h[0].desc, "Subject in capitals");
	assert_false(hit(h, n, "ABSENT"));
	assert_false(hit(h, n, "LIST"));
	/* a ham sign scores below zero */
	s = eval(r, HAM, h, 20, &n, &cut);
	assert_int_equal(n, 1);
	assert_string_equal(h[0].name, "LIST");
	assert_true(s == -1.0);
	/* the hit list is bounded, the score is not */
	s = eval(r, SPAM, h, 2, &n, &cut);
	assert_int_equal(n, 2);
	assert_true(s > 9.0);
	spamrules_free(r);
}

/* Header rules read the fields as far as the SMTP engine accepts them
 * (1000): 300 filler fields do not hide the Subject. */
static void test_many_fields(void **state)
{
	(void)state;
	char why[512] = "";
	struct spamrules *r = load("header:Subject SUBJ_PILLS /cheap pills/i 1.0\n", why, sizeof(why));
	assert_non_null(r);
	struct buf m = BUF_INIT;
	for (int i = 0; i < 300; i++)
		buf_printf(&m, "X-Filler-%d: x\r\n", i);
	buf_puts(&m, "Subject: Cheap pills\r\n\r\nbody\r\n");
	buf_putc(&m, '\0');
	struct spamrule_hit h[4];
	size_t n;
	unsigned cut;
	double s = eval(r, m.data, h, 4, &n, &cut);
	assert_int_equal(n, 1);
	assert_string_equal(h[0].name, "SUBJ_PILLS");
	assert_true(s == 1.0);
	buf_free(&m);
	spamrules_free(r);
}

static void test_match_limit(void **state)
{
	(void)state;
	char why[512] = "";
	struct spamrules *r = load("body SLOW /^(a+)+$/ 1.0\n", why, sizeof(why));
	assert_non_null(r);
	struct buf m = BUF_INIT;
	buf_puts(&m, "Subject: x\r\n\r\n");
	for (int i = 0; i < 40; i++)
		buf_putc(&m, 'a');
	buf_puts(&m, "!\r\n");
	buf_putc(&m, '\0');
	struct spamrule_hit h[4];
	size_t n;
	unsigned cut;
	double s = eval(r, m.data, h, 4, &n, &cut);
	assert_int_equal(n, 0);
	assert_true(s == 0);
	assert_int_equal(cut, 1);
	buf_free(&m);
	spamrules_free(r);
}

static void test_bad_rules(void **state)
{
	(void)state;
	static const struct { const char *rules, *want; } bad[] = {
		{ "body A /x/ 1\nheaders:X B /y/ 1\n", "rules:2: unknown kind 'headers:X'" },
		{ "body /x/ 1\n", "rules:1: expected a rule name" },
		{ "body A-B /x/ 1\n", "rules:1: expected a rule name" },
		{ "body A /x/ 1\nuri A /y/ 2\n", "rules:2: rule A is already defined" },
		{ "body A /(x/ 1\n", "rules:1: A: bad pattern at offset" },
		{ "body A /x 1\n", "rules:1: A: the pattern has no closing '/'" },
		{ "body A /x/q 1\n", "rules:1: A: unknown flag 'q'" },
		{ "body A /x/\n", "rules:1: A: expected a score" },
		{ "body A /x/ 101\n", "rules:1: A: expected a score from -100 to 100" },
		{ "body A /x/ 1.5x\n", "rules:1: A: expected a score" },
		{ "body A x 1\n", "rules:1: A: expected /PATTERN/FLAGS" },
	};
	char why[512];
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why[0] = '\0';
		assert_null(load(bad[i].rules, why, sizeof(why)));
		if (!strstr(why, bad[i].want))
			fail_msg("rules %zu: why %s, want %s", i, why, bad[i].want);
	}
	char path[PATH_MAX + 16];
	snprintf(path, sizeof(path), "%s/none", dir);
	assert_null(spamrules_load(path, why, sizeof(why)));
	assert_non_null(strstr(why, "No such file"));
}

/* The rules the project ships load, and catch the sample. */
static void test_default_rules(void **state)
{
	(void)state;
	/* the source tree: $srcdir (make check), or the directory tests/run
	 * works in, or the build directory's parent */
	const char *src = getenv("srcdir");
	const char *tries[] = { src && *src ? src : ".", ".", ".." };
	char path[PATH_MAX] = "";
	for (size_t i = 0; i < 3; i++) {
		snprintf(path, sizeof(path), "%s/deploy/spam/rules", tries[i]);
		if (access(path, R_OK) == 0)
			break;
	}
	char why[512] = "";
	struct spamrules *r = spamrules_load(path, why, sizeof(why));
	if (!r)
		fail_msg("%s", why);
	assert_true(spamrules_count(r) >= 15);
	struct spamrule_hit h[40];
	size_t n;
	unsigned cut;
	double s = eval(r, SPAM, h, 40, &n, &cut);
	assert_true(hit(h, n, "SUBJECT_EXCLAIM"));
	assert_true(hit(h, n, "MSGID_NO_DOMAIN"));
	assert_true(hit(h, n, "FROM_DIGITS_LOCAL"));
	assert_true(hit(h, n, "BODY_PHARMA"));
	assert_true(hit(h, n, "BODY_UNSUBSCRIBE_LINK"));
	assert_true(hit(h, n, "URI_IP_HOST"));
	assert_true(hit(h, n, "URI_USERINFO"));
	assert_true(s > 5.0);
	s = eval(r, HAM, h, 40, &n, &cut);
	assert_true(s <= 0.0);
	spamrules_free(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_msgtext),
		cmocka_unit_test(test_rules),
		cmocka_unit_test(test_many_fields),
		cmocka_unit_test(test_match_limit),
		cmocka_unit_test(test_bad_rules),
		cmocka_unit_test(test_default_rules),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
