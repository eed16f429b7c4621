/*
 * test_passdb.c — the submission stage's accounts (shared/mail/passdb):
 * the file and its errors (file:line), crypt(3) hashes made and checked
 * (yescrypt and SHA-512-crypt), sender ownership, reloading, and the
 * atomic rewrite rampartctl user uses.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mail/passdb.h"
#include "testutil.h"

struct fx {
	char dir[PATH_MAX];
	char path[PATH_MAX + 16];
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_int_equal(tu_mkdtemp(f->dir, sizeof(f->dir), "passdb"), 0);
	snprintf(f->path, sizeof(f->path), "%s/accounts", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	tu_rmtree(f->dir);
	free(f);
	return 0;
}

static void test_hash_and_verify(void **state)
{
	(void)state;
	char why[256] = "";
	char *y = passdb_hash("correct horse", NULL, why, sizeof(why));
	assert_non_null(y);
	assert_true(strncmp(y, "$y$", 3) == 0);
	char *s = passdb_hash("correct horse", "sha512", why, sizeof(why));
	assert_non_null(s);
	assert_true(strncmp(s, "$6$", 3) == 0);
	assert_true(passdb_verify(y, "correct horse"));
	assert_true(passdb_verify(s, "correct horse"));
	assert_false(passdb_verify(y, "correct horsE"));
	assert_false(passdb_verify(s, ""));
	assert_false(passdb_verify(NULL, "correct horse"));      /* no account: the dummy, never true */
	assert_false(passdb_verify("", "x"));
	assert_false(passdb_verify("$1$bad", "x"));
	char *again = passdb_hash("correct horse", NULL, why, sizeof(why));
	assert_string_not_equal(again, y);                       /* salted */
	assert_null(passdb_hash("x", "md5", why, sizeof(why)));
	assert_non_null(strstr(why, "expected yescrypt or sha512"));
	free(y);
	free(s);
	free(again);
}

static void test_load_find_owns(void **state)
{
	struct fx *f = *state;
	char why[512] = "";
	tu_write_file(f->path,
		      "# accounts\n"
		      "alice@example.test:$y$j9T$abc$def\n"
		      "\n"
		      "  Bob@Example.Test:$6$salt$hash:senders=bob@example.test,@sales.example.test,@.lists.example.test\n"
		      "billing:$y$j9T$x$y:app senders=invoices@example.test\n"
		      "relay-app:$y$j9T$x$y:app senders=*\n"
		      "old@example.test:!$y$j9T$x$y\n"
		      "shared:$y$j9T$x$y:app senders=shared+billing@example.test\n"
		      "dave+test@example.test:$y$j9T$x$y\n");
	struct passdb *db = passdb_load(f->path, why, sizeof(why));
	assert_non_null(db);
	assert_int_equal(passdb_count(db), 7);
	const struct passdb_account *a = passdb_find(db, "ALICE@example.test");
	assert_non_null(a);
	assert_string_equal(a->hash, "$y$j9T$abc$def");
	assert_false(a->app);
	assert_false(a->locked);
	assert_null(passdb_find(db, "carol@example.test"));
	assert_true(passdb_find(db, "old@example.test")->locked);
	/* alice owns her own address (and its +subaddresses) only */
	assert_true(passdb_owns(a, "alice@example.test"));
	assert_true(passdb_owns(a, "Alice+lists@EXAMPLE.test"));
	assert_true(passdb_owns(a, ""));
	assert_false(passdb_owns(a, "bob@example.test"));
	assert_false(passdb_owns(a, "alice@example.test.evil.example"));
	assert_false(passdb_owns(a, "alice"));
	const struct passdb_account *b = passdb_find(db, "bob@example.test");
	assert_true(passdb_owns(b, "bob@example.test"));
	assert_true(passdb_owns(b, "anyone@sales.example.test"));
	assert_false(passdb_owns(b, "anyone@eu.sales.example.test"));
	assert_true(passdb_owns(b, "x@eu.lists.example.test"));
	assert_false(passdb_owns(b, "x@lists.example.test"));
	assert_false(passdb_owns(b, "alice@example.test"));
	const struct passdb_account *app = passdb_find(db, "billing");
	assert_true(app->app);
	assert_true(passdb_owns(app, "invoices@example.test"));
	assert_false(passdb_owns(app, "billing@example.test"));
	assert_true(passdb_owns(passdb_find(db, "relay-app"), "whoever@anywhere.example"));
	/* owning a +subaddress gives that address only, not its base (found
	 * in review: "shared+billing@" gave "shared@" and "shared+x@") */
	const struct passdb_account *sh = passdb_find(db, "shared");
	assert_true(passdb_owns(sh, "shared+billing@example.test"));
	assert_true(passdb_owns(sh, "Shared+Billing@example.test"));
	assert_false(passdb_owns(sh, "shared@example.test"));
	assert_false(passdb_owns(sh, "shared+other@example.test"));
	const struct passdb_account *d = passdb_find(db, "dave+test@example.test");
	assert_true(passdb_owns(d, "dave+test@example.test"));
	assert_false(passdb_owns(d, "dave@example.test"));
	passdb_free(db);
}

static void expect_error(struct fx *f, const char *text, const char *what)
{
	char why[512] = "";
	tu_write_file(f->path, text);
	struct passdb *db = passdb_load(f->path, why, sizeof(why));
	if (db)
		fail_msg("accepted: %s", text);
	if (!strstr(why, f->path) || !strstr(why, what))
		fail_msg("error '%s' lacks '%s'", why, what);
}

static void test_errors(void **state)
{
	struct fx *f = *state;
	expect_error(f, "alice@example.test\n", ":1: expected NAME:HASH[:OPTIONS]");
	expect_error(f, "# c\nalice@example.test:plaintext\n", ":2: account alice@example.test: expected a crypt(3) hash");
	expect_error(f, "alice@example.test:\n", ":1: account alice@example.test: empty password hash");
	expect_error(f, "a:$y$x:bogus\n", ":1: account a: unknown option 'bogus'");
	expect_error(f, "a:$y$x:senders=a@,b@example.test\n", "bad sender 'a@'");
	expect_error(f, "a:$y$x\nA:$y$z\n", "account A is listed twice");
	expect_error(f, "a b:$y$x\n", ":1: bad account name");
	char why[256];
	assert_null(passdb_load("/nonexistent/accounts", why, sizeof(why)));
	assert_non_null(strstr(why, "cannot read"));
}

static void test_update_and_refresh(void **state)
{
	struct fx *f = *state;
	char why[512] = "";
	tu_write_file(f->path, "# keep this comment\nalice@example.test:$y$old$h:senders=alice@example.test\n");
	chmod(f->path, 0640);
	struct passdb *db = passdb_load(f->path, why, sizeof(why));
	assert_non_null(db);
	/* add */
	assert_true(passdb_update(f->path, "bob@example.test", "$y$new$b", "app", false, true, why, sizeof(why)));
	/* an existing account needs create=false or is changed in place */
	assert_true(passdb_update(f->path, "ALICE@example.test", "$y$new$a", NULL, false, false, why, sizeof(why)));
	assert_false(passdb_update(f->path, "carol@example.test", "$y$c", NULL, false, false, why, sizeof(why)));
	assert_non_null(strstr(why, "no account carol@example.test"));
	assert_false(passdb_update(f->path, "x y", "$y$c", NULL, false, true, why, sizeof(why)));
	/* what would not load is not written */
	assert_false(passdb_update(f->path, "bob@example.test", "$y$new$b", "senders=bob", false, true, why, sizeof(why)));
	assert_non_null(strstr(why, "would be wrong"));
	assert_non_null(strstr(why, "bad sender 'bob'"));
	assert_false(passdb_update(f->path, "ALICE@example.test", "plaintext", NULL, false, false, why, sizeof(why)));
	char *text = tu_read_file(f->path, NULL);
	assert_string_equal(text, "# keep this comment\nALICE@example.test:$y$new$a:senders=alice@example.test\n"
			    "bob@example.test:$y$new$b:app\n");
	free(text);
	struct stat st;
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0640);            /* the mode is kept */
	sleep(1);                                              /* refresh looks once a second */
	assert_true(passdb_refresh(&db, why, sizeof(why)));
	assert_int_equal(passdb_count(db), 2);
	assert_string_equal(passdb_find(db, "alice@example.test")->hash, "$y$new$a");
	assert_true(passdb_find(db, "bob@example.test")->app);
	/* options replaced, then removed */
	assert_true(passdb_update(f->path, "bob@example.test", NULL, "", false, false, why, sizeof(why)));
	assert_true(passdb_update(f->path, "alice@example.test", NULL, NULL, true, false, why, sizeof(why)));
	text = tu_read_file(f->path, NULL);
	assert_string_equal(text, "# keep this comment\nbob@example.test:$y$new$b\n");
	free(text);
	/* a broken file on disk: the old accounts stay */
	sleep(1);
	tu_write_file(f->path, "broken\n");
	assert_false(passdb_refresh(&db, why, sizeof(why)));
	assert_non_null(strstr(why, ":1: expected NAME:HASH"));
	assert_int_equal(passdb_count(db), 2);
	sleep(1);
	why[0] = '\0';
	assert_true(passdb_refresh(&db, why, sizeof(why)));     /* the same broken version: said once */
	assert_string_equal(why, "");
	passdb_free(db);
	/* a new file is made 0600 */
	char p2[PATH_MAX + 32];
	snprintf(p2, sizeof(p2), "%s/new-accounts", f->dir);
	assert_true(passdb_update(p2, "a@example.test", "$y$h", NULL, false, true, why, sizeof(why)));
	assert_int_equal(stat(p2, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hash_and_verify),
		cmocka_unit_test_setup_teardown(test_load_find_owns, setup, teardown),
		cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_update_and_refresh, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
