/*
 * test_ledger.c — per-sender accounting: counts, the bound, and the file
 * round trip that makes counts survive a restart.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mail/ledger.h"

static void test_counts_by_sender_domain_login(void **state)
{
	(void)state;
	struct ledger *l = ledger_new(0);
	ledger_accepted(l, "app@Example.Test", "app1", 3, 1000);
	ledger_accepted(l, "other@example.test", NULL, 1, 50);
	ledger_outcome(l, "app@example.test", "app1", 250);
	ledger_outcome(l, "app@example.test", "app1", 451);
	ledger_outcome(l, "app@example.test", "app1", 550);
	const struct ledger_counts *c = ledger_get(l, LEDGER_SENDER, "APP@example.test");
	assert_non_null(c);
	assert_int_equal(c->messages, 1);
	assert_int_equal(c->recipients, 3);
	assert_int_equal(c->bytes, 1000);
	assert_int_equal(c->delivered, 1);
	assert_int_equal(c->deferred, 1);
	assert_int_equal(c->bounced, 1);
	c = ledger_get(l, LEDGER_DOMAIN, "example.test");
	assert_int_equal(c->messages, 2);
	assert_int_equal(c->bytes, 1050);
	c = ledger_get(l, LEDGER_LOGIN, "app1");
	assert_int_equal(c->messages, 1);
	assert_null(ledger_get(l, LEDGER_LOGIN, "nobody"));
	ledger_free(l);
}

static void test_bound_folds_into_other(void **state)
{
	(void)state;
	struct ledger *l = ledger_new(4);
	char s[64];
	for (int i = 0; i < 50; i++) {
		snprintf(s, sizeof(s), "u%d@d%d.example", i, i);
		ledger_accepted(l, s, NULL, 1, 10);
	}
	const struct ledger_counts *o = ledger_get(l, LEDGER_SENDER, "other");
	assert_non_null(o);
	assert_true(o->messages >= 40);
	ledger_free(l);
}

static void test_save_load_round_trip(void **state)
{
	(void)state;
	char dir[256], path[300], why[256];
	assert_int_equal(tu_mkdtemp(dir, sizeof(dir), "ledger"), 0);
	snprintf(path, sizeof(path), "%s/ledger", dir);
	struct ledger *l = ledger_new(0);
	assert_true(ledger_load(l, path, why, sizeof(why)));     /* missing file is fine */
	ledger_accepted(l, "", NULL, 1, 300);                   /* the null sender */
	ledger_accepted(l, "a@x.example", "app", 2, 20);
	ledger_outcome(l, "a@x.example", "app", 250);
	ledger_rejected(l, "a@x.example", "app");
	ledger_rejected(l, NULL, "app");                        /* refused before MAIL */
	assert_true(ledger_save(l, path, why, sizeof(why)));
	ledger_free(l);
	l = ledger_new(0);
	assert_true(ledger_load(l, path, why, sizeof(why)));
	const struct ledger_counts *c = ledger_get(l, LEDGER_SENDER, "a@x.example");
	assert_non_null(c);
	assert_int_equal(c->recipients, 2);
	assert_int_equal(c->delivered, 1);
	assert_int_equal(c->rejected, 1);
	assert_int_equal(ledger_get(l, LEDGER_LOGIN, "app")->rejected, 2);
	assert_non_null(ledger_get(l, LEDGER_SENDER, ""));
	FILE *out = tmpfile();
	assert_true(ledger_print(path, "sender", 0, out, why, sizeof(why)));
	rewind(out);
	char buf[2048] = "";
	size_t n = fread(buf, 1, sizeof(buf) - 1, out);
	buf[n] = '\0';
	fclose(out);
	assert_non_null(strstr(buf, "a@x.example"));
	assert_non_null(strstr(buf, "<>"));
	assert_null(strstr(buf, "domain "));
	assert_non_null(strstr(buf, "rejected"));
	ledger_free(l);
	/* A file of format 1 (six counts) still loads, with nothing rejected. */
	FILE *f1 = fopen(path, "w");
	fputs("# rampart ledger 1\nlogin\told\t5 6 700 4 1 1\n", f1);
	fclose(f1);
	l = ledger_new(0);
	assert_true(ledger_load(l, path, why, sizeof(why)));
	c = ledger_get(l, LEDGER_LOGIN, "old");
	assert_non_null(c);
	assert_int_equal(c->bytes, 700);
	assert_int_equal(c->rejected, 0);
	ledger_free(l);
	/* A broken file names the line. */
	FILE *f = fopen(path, "w");
	fputs("# rampart ledger 1\nsender\tb@x\t1 2 3\n", f);
	fclose(f);
	l = ledger_new(0);
	assert_false(ledger_load(l, path, why, sizeof(why)));
	assert_non_null(strstr(why, ":2:"));
	ledger_free(l);
	/* Bad lines are skipped, the good ones after them still load (found
	 * in review: loading stopped at the first bad line, and the next
	 * save lost the rest); counts are plain numbers. */
	f = fopen(path, "w");
	fputs("# rampart ledger 2\n"
	      "sender\ta@x\t1 2 3 4 5 6 7\n"
	      "sender\tb@x\t1 2\n"
	      "sender\tc@x\t-1 2 3 4 5 6 7\n"
	      "sender\td@x\t1 2 3 4 5 6junk\n"
	      "sender\te@x\t1 2 3 4 5 99999999999999999999999\n"
	      "login\tz\t9 8 7 6 5 4 3\n", f);
	fclose(f);
	l = ledger_new(0);
	assert_false(ledger_load(l, path, why, sizeof(why)));
	assert_non_null(strstr(why, ":3:"));
	assert_non_null(strstr(why, "(4 lines skipped)"));
	assert_non_null(ledger_get(l, LEDGER_SENDER, "a@x"));
	assert_null(ledger_get(l, LEDGER_SENDER, "c@x"));
	assert_null(ledger_get(l, LEDGER_SENDER, "d@x"));
	assert_null(ledger_get(l, LEDGER_SENDER, "e@x"));
	c = ledger_get(l, LEDGER_LOGIN, "z");
	assert_non_null(c);
	assert_int_equal(c->rejected, 3);
	ledger_free(l);
	tu_rmtree(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counts_by_sender_domain_login),
		cmocka_unit_test(test_bound_folds_into_other),
		cmocka_unit_test(test_save_load_round_trip),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
