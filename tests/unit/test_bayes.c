/*
 * test_bayes.c — the classifier's store-free halves (shared/mail/bayes.c):
 * the tokens of a message (headers, MIME, words, links, long words,
 * addresses; each once; within max_tokens and max_text), the chi-square
 * tail against known values, and scores: nothing known is 0.5, clues are
 * the strongest first, and a small trained corpus separates new
 * messages of each kind.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mail/bayes.h"
#include "util/alloc.h"
#include "util/buf.h"

struct seen {
	char **t;
	size_t n, cap;
};

static void collect(void *arg, const char *tok, size_t len)
{
	struct seen *s = arg;
	assert_int_equal(strlen(tok), len);
	if (s->n == s->cap) {
		s->cap = s->cap ? 2 * s->cap : 64;
		s->t = xrealloc(s->t, s->cap * sizeof(*s->t));
	}
	s->t[s->n++] = xstrdup(tok);
}

static bool has(const struct seen *s, const char *tok)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->t[i], tok) == 0)
			return true;
	return false;
}

static void seen_free(struct seen *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->t[i]);
	free(s->t);
	memset(s, 0, sizeof(*s));
}

static const char MSG[] =
	"From: \"Cheap Pills\" <Deals@Example.ORG>\r\n"
	"To: you@example.test\r\n"
	"Subject: =?UTF-8?Q?Cheap_pills_=E2=80=94_today?= only\r\n"
	"Message-ID: <abc@Mailer.Example.ORG>\r\n"
	"X-Mailer: Bulk Sender 3.0\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: multipart/alternative; boundary=b\r\n"
	"\r\n"
	"--b\r\n"
	"Content-Type: text/plain; charset=us-ascii\r\n"
	"\r\n"
	"Buy cheap pills now!! Visit www.shop.example.com today, or write to sales@pharma.example.net.\r\n"
	"Supercalifragilisticexpialidocious offer.\r\n"
	"--b\r\n"
	"Content-Type: text/html; charset=utf-8\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"PHA+PGEgaHJlZj0iaHR0cDovLzE5Mi4wLjIuOS94Ij5jbGljayBoZXJlPC9hPiDDvGJlcjwvcD4=\r\n"
	"--b\r\n"
	"Content-Type: application/octet-stream; name=\"invoice.EXE\"\r\n"
	"Content-Disposition: attachment\r\n"
	"\r\n"
	"MZ\r\n"
	"--b--\r\n";

static void test_tokens(void **state)
{
	(void)state;
	struct seen s = { 0 };
	bayes_tokens(MSG, strlen(MSG), NULL, collect, &s);
	const char *want[] = {
		"h:from", "h:subject", "h:x-mailer", "h:content-type",
		"subject:cheap", "subject:pills", "subject:today", "subject:only",
		"from:addr:deals@example.org", "from:domain:example.org", "from:name:cheap",
		"message-id:@mailer.example.org", "x-mailer:bulk sender 3.0",
		"ct:text/plain", "ct:text/html", "ct:application/octet-stream", "charset:us-ascii", "charset:utf-8",
		"cte:base64", "filename:ext:exe", "html:yes",
		"buy", "cheap", "pills", "now", "today", "offer", "click", "here", "\xc3\xbc" "ber",
		"url:www.shop.example.com", "url:shop.example.com", "url:example.com", "url:192.0.2.9", "url:ip-literal",
		"email:pharma.example.net", "skip:s 30",
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		if (!has(&s, want[i]))
			fail_msg("missing token %s", want[i]);
	/* never twice, never empty, never over the bound */
	for (size_t i = 0; i < s.n; i++) {
		assert_true(strlen(s.t[i]) > 0 && strlen(s.t[i]) <= BAYES_TOKEN_MAX);
		for (size_t j = i + 1; j < s.n; j++)
			assert_string_not_equal(s.t[i], s.t[j]);
	}
	assert_false(has(&s, "to"));           /* under 3 bytes */
	assert_false(has(&s, "www.shop.example.com"));  /* a link is a url: token only */
	seen_free(&s);

	/* the bounds */
	struct bayes_tok_opts o = { .max_tokens = 10 };
	bayes_tokens(MSG, strlen(MSG), &o, collect, &s);
	assert_int_equal(s.n, 10);
	seen_free(&s);
	struct buf big = BUF_INIT;
	buf_puts(&big, "Subject: x\r\n\r\n");
	for (int i = 0; i < 20000; i++)
		buf_printf(&big, "w%05d ", i);
	o = (struct bayes_tok_opts){ .max_text = 7000 };        /* 1000 words of 7 bytes */
	bayes_tokens(big.data, big.len, &o, collect, &s);
	assert_true(has(&s, "w00999"));
	assert_false(has(&s, "w01001"));
	seen_free(&s);
	buf_free(&big);
}

static void test_chi2q(void **state)
{
	(void)state;
	assert_true(fabs(bayes_chi2q(0.0, 2) - 1.0) < 1e-12);
	assert_true(fabs(bayes_chi2q(2.0, 2) - exp(-1.0)) < 1e-12);
	assert_true(fabs(bayes_chi2q(10.0, 10) - 0.4404932851) < 1e-9);
	assert_true(fabs(bayes_chi2q(30.0, 20) - 0.0698536) < 1e-6);
	assert_true(bayes_chi2q(5000.0, 300) < 1e-100);
}

static void test_score(void **state)
{
	(void)state;
	struct bayes_token t[4] = {
		{ "viagra", 90, 1, 0 }, { "meeting", 2, 80, 0 }, { "the", 50, 50, 0 }, { "new", 0, 0, 0 },
	};
	struct bayes_result r;
	bayes_score(t, 4, 0, 100, NULL, &r);
	assert_true(r.score == 0.5);           /* nothing trained on one side */
	bayes_score(t, 4, 100, 100, NULL, &r);
	assert_int_equal(r.nclues, 2);         /* "the" and "new" are no clues */
	assert_int_equal(r.nshown, 2);
	assert_true(t[0].prob > 0.95 && t[1].prob < 0.05);
	assert_true(fabs(t[2].prob - 0.5) < 1e-9 && fabs(t[3].prob - 0.5) < 1e-9);
	assert_true(r.score > 0.3 && r.score < 0.7);   /* one each way: unsure */
	struct bayes_token spam[3] = { { "viagra", 90, 1, 0 }, { "cheap", 70, 5, 0 }, { "pills", 60, 2, 0 } };
	bayes_score(spam, 3, 100, 100, NULL, &r);
	assert_true(r.score > 0.9);
	assert_int_equal(r.clues[0], 0);       /* the strongest first */
	struct bayes_token ham[2] = { { "meeting", 2, 80, 0 }, { "agenda", 1, 60, 0 } };
	bayes_score(ham, 2, 100, 100, NULL, &r);
	assert_true(r.score < 0.1);
	/* many clues: no underflow */
	struct bayes_token many[400];
	for (int i = 0; i < 400; i++)
		many[i] = (struct bayes_token){ "x", 1000, 1, 0 };
	bayes_score(many, 400, 1000, 1000, NULL, &r);
	assert_int_equal(r.nclues, 150);
	assert_true(r.score > 0.99 && r.score <= 1.0);
}

/* A toy corpus: spam and ham drawn from two vocabularies with some words
 * in common; counts trained by hand; new messages of each kind score on
 * their side. */
static void test_separates(void **state)
{
	(void)state;
	const char *spamw[] = { "winner", "prize", "claim", "urgent", "money", "free", "offer", "click" };
	const char *hamw[] = { "meeting", "agenda", "report", "thanks", "review", "draft", "lunch", "notes" };
	const char *common[] = { "today", "please", "your", "this" };
	struct bayes_token vocab[20];
	size_t nv = 0;
	for (size_t i = 0; i < 8; i++)
		vocab[nv++] = (struct bayes_token){ spamw[i], 0, 0, 0 };
	for (size_t i = 0; i < 8; i++)
		vocab[nv++] = (struct bayes_token){ hamw[i], 0, 0, 0 };
	for (size_t i = 0; i < 4; i++)
		vocab[nv++] = (struct bayes_token){ common[i], 0, 0, 0 };
	uint32_t seed = 7;
	for (int m = 0; m < 200; m++) {
		bool is_spam = m % 2;
		for (size_t i = 0; i < nv; i++) {
			seed = seed * 1103515245u + 12345u;
			bool mine = (i < 8) == is_spam && i < 16;
			int pct = i >= 16 ? 50 : mine ? 60 : 3;
			if ((int)((seed >> 16) % 100) < pct) {
				if (is_spam)
					vocab[i].spam++;
				else
					vocab[i].ham++;
			}
		}
	}
	struct bayes_token s[5] = { vocab[0], vocab[2], vocab[4], vocab[16], vocab[17] };
	struct bayes_token h[5] = { vocab[8], vocab[9], vocab[12], vocab[18], vocab[19] };
	struct bayes_result r;
	bayes_score(s, 5, 100, 100, NULL, &r);
	assert_true(r.score > 0.9);
	bayes_score(h, 5, 100, 100, NULL, &r);
	assert_true(r.score < 0.1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tokens),
		cmocka_unit_test(test_chi2q),
		cmocka_unit_test(test_score),
		cmocka_unit_test(test_separates),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
