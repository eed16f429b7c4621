/*
 * test_userlist.c — unit tests of the mail user list
 * (shared/mail/userlist.c): parsing with quotas and comments, errors with
 * file:line, duplicates, case-insensitive lookup, refresh when the file
 * changes (keeping the old list on a broken one) and atomic publishing.
 * Real files in a mkdtemp() directory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mail/userlist.h"
#include "util/alloc.h"
#include "util/buf.h"

#define KIB 1024LL
#define MIB (1024LL * 1024)
#define GIB (1024LL * 1024 * 1024)

struct fx {
	char dir[512];
	char path[600];         /* the list the tests write */
	struct userlist *u;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	if (tu_mkdtemp(f->dir, sizeof(f->dir), "userlist") != 0)
		return -1;
	snprintf(f->path, sizeof(f->path), "%s/users", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	userlist_free(f->u);
	tu_rmtree(f->dir);
	free(f);
	return 0;
}

static void write_file(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	assert_true(fputs(text, fp) >= 0);
	assert_int_equal(fclose(fp), 0);
}

static char *read_all(const char *path)
{
	FILE *fp = fopen(path, "r");
	assert_non_null(fp);
	struct buf b = BUF_INIT;
	char tmp[4096];
	size_t n;
	while ((n = fread(tmp, 1, sizeof(tmp), fp)) > 0)
		buf_append(&b, tmp, n);
	fclose(fp);
	return buf_steal(&b, NULL);
}

/* Load text as the list; fails the test with why if it does not load. */
static struct userlist *load(struct fx *f, const char *text)
{
	char why[512] = "";
	write_file(f->path, text);
	userlist_free(f->u);
	f->u = userlist_load(f->path, why, sizeof(why));
	if (!f->u)
		fail_msg("userlist_load: %s", why);
	return f->u;
}

/* Load text that must be refused; why must start with path:line: and
 * contain what. */
static void load_bad(struct fx *f, const char *text, unsigned line, const char *what)
{
	char why[512] = "", want[700];
	write_file(f->path, text);
	struct userlist *u = userlist_load(f->path, why, sizeof(why));
	if (u) {
		userlist_free(u);
		fail_msg("list loaded: %s", text);
	}
	snprintf(want, sizeof(want), "%s:%u: ", f->path, line);
	if (strncmp(why, want, strlen(want)) != 0 || !strstr(why, what))
		fail_msg("why: '%s' (want '%s...%s')", why, want, what);
}

static long long quota_of(const struct userlist *u, const char *addr)
{
	long long q = -12345;
	if (!userlist_find(u, addr, &q))
		fail_msg("%s not found", addr);
	return q;
}

/* Wait until time(NULL) moves on: refresh looks at the file once a second. */
static void next_second(void)
{
	time_t t0 = time(NULL);
	while (time(NULL) == t0) {
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

static void set_mtime(const char *path, time_t t)
{
	struct timespec ts[2] = { { t, 0 }, { t, 0 } };
	assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

/* Names in dir other than the ones given (NULL-terminated); "" if none. */
static void assert_dir_holds(const char *dir, const char *const *names)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		bool known = false;
		for (size_t i = 0; names[i]; i++)
			known |= strcmp(names[i], e->d_name) == 0;
		if (!known) {
			char name[256];
			snprintf(name, sizeof(name), "%s", e->d_name);
			closedir(d);
			fail_msg("unexpected file %s/%s", dir, name);
		}
	}
	closedir(d);
}

/* ---- loading ------------------------------------------------------------- */

static void test_load_with_quotas(void **state)
{
	struct fx *f = *state;
	struct userlist *u = load(f,
		"# the site's users\n"
		"\n"
		"alice@example.test 100m\n"
		"   bob@example.test\n"
		"carol@example.test\t2g   # with a comment\n"
		"dave@example.test 512k\n"
		"\t\n"
		"   # indented comment\n"
		"eve@example.test 12345\n"
		"frank@example.test # no quota, a comment\n"
		"gina@example.test 0\n");
	assert_int_equal(userlist_count(u), 7);
	assert_int_equal(quota_of(u, "alice@example.test"), 100 * MIB);
	assert_int_equal(quota_of(u, "bob@example.test"), 0);
	assert_int_equal(quota_of(u, "carol@example.test"), 2 * GIB);
	assert_int_equal(quota_of(u, "dave@example.test"), 512 * KIB);
	assert_int_equal(quota_of(u, "eve@example.test"), 12345);
	assert_int_equal(quota_of(u, "frank@example.test"), 0);
	assert_int_equal(quota_of(u, "gina@example.test"), 0);
	/* a comment is not an address */
	assert_false(userlist_find(u, "#", NULL));
	assert_false(userlist_find(u, "# the site's users", NULL));
	/* not found: quota untouched */
	long long q = 77;
	assert_false(userlist_find(u, "mallory@example.test", &q));
	assert_int_equal(q, 77);
	assert_false(userlist_find(u, "alice@example", NULL));
	assert_false(userlist_find(u, "alice", NULL));
	assert_false(userlist_find(u, "", NULL));
	/* the quota pointer is optional */
	assert_true(userlist_find(u, "alice@example.test", NULL));
}

static void test_crlf_and_no_final_newline(void **state)
{
	struct fx *f = *state;
	struct userlist *u = load(f, "alice@example.test 1k\r\nbob@example.test\r\ncarol@example.test 3m");
	assert_int_equal(userlist_count(u), 3);
	assert_int_equal(quota_of(u, "alice@example.test"), KIB);
	assert_int_equal(quota_of(u, "bob@example.test"), 0);
	assert_int_equal(quota_of(u, "carol@example.test"), 3 * MIB);
}

static void test_empty_list(void **state)
{
	struct fx *f = *state;
	struct userlist *u = load(f, "# nobody yet\n\n");
	assert_int_equal(userlist_count(u), 0);
	assert_false(userlist_find(u, "alice@example.test", NULL));
	u = load(f, "");
	assert_int_equal(userlist_count(u), 0);
	assert_false(userlist_find(u, "", NULL));
}

static void test_case_insensitive_lookup(void **state)
{
	struct fx *f = *state;
	struct userlist *u = load(f, "Alice.Smith@Example.TEST 5m\nbob@example.test\n");
	assert_int_equal(quota_of(u, "alice.smith@example.test"), 5 * MIB);
	assert_int_equal(quota_of(u, "ALICE.SMITH@EXAMPLE.TEST"), 5 * MIB);
	assert_int_equal(quota_of(u, "Alice.Smith@Example.TEST"), 5 * MIB);
	assert_true(userlist_find(u, "BoB@ExAmPlE.tEsT", NULL));
	assert_false(userlist_find(u, "alice.smith@example.test.", NULL));
	assert_false(userlist_find(u, "alice_smith@example.test", NULL));
}

static void test_duplicates_last_wins(void **state)
{
	struct fx *f = *state;
	struct userlist *u = load(f,
		"alice@example.test 1m\n"
		"bob@example.test 1m\n"
		"ALICE@example.TEST 2m\n"
		"alice@example.test\n"
		"bob@example.test 7k\n");
	assert_int_equal(userlist_count(u), 2);
	assert_int_equal(quota_of(u, "alice@example.test"), 0);
	assert_int_equal(quota_of(u, "bob@example.test"), 7 * KIB);
}

static void test_many_users(void **state)
{
	struct fx *f = *state;
	struct buf b = BUF_INIT;
	for (int i = 0; i < 3000; i++)
		buf_printf(&b, "user%d@d%d.example.test %dk\n", i, i % 7, i + 1);
	struct userlist *u = load(f, buf_cstr(&b));
	buf_free(&b);
	assert_int_equal(userlist_count(u), 3000);
	char addr[64];
	for (int i = 0; i < 3000; i++) {
		snprintf(addr, sizeof(addr), "USER%d@D%d.example.test", i, i % 7);
		assert_int_equal(quota_of(u, addr), (long long)(i + 1) * KIB);
		snprintf(addr, sizeof(addr), "user%d@d%d.example.test", i, (i + 1) % 7);
		assert_false(userlist_find(u, addr, NULL));
	}
}

static void test_bad_lines(void **state)
{
	struct fx *f = *state;
	load_bad(f, "alice@example.test\n# fine\nbob.example.test\n", 3,
		 "expected 'user@domain [quota]', got 'bob.example.test'");
	load_bad(f, "postmaster\n", 1, "expected 'user@domain [quota]'");
	char long_addr[300];
	memset(long_addr, 'a', 280);
	memcpy(long_addr + 280, "@example.test\n", 15);
	load_bad(f, long_addr, 1, "expected 'user@domain [quota]'");
	/* a line longer than the reader's buffer */
	struct buf b = BUF_INIT;
	buf_puts(&b, "alice@example.test\n");
	for (int i = 0; i < 3000; i++)
		buf_putc(&b, 'x');
	buf_puts(&b, "@example.test\n");
	load_bad(f, buf_cstr(&b), 2, "line too long");
	buf_free(&b);
	/* entries the store could never deliver to (found in review: they
	 * were taken, so the MX accepted mail that the store then bounced) */
	load_bad(f, "alice@example.test\na/b@example.test\n", 2, "'a/b@example.test' is not usable as a mailbox");
	load_bad(f, ".x@example.test\n", 1, "not usable as a mailbox");
	load_bad(f, "@example.test\n", 1, "not usable as a mailbox");
	load_bad(f, "x@\n", 1, "not usable as a mailbox");
	load_bad(f, "x@../etc\n", 1, "not usable as a mailbox");
	/* a NUL byte: the rest of the line is not read as another entry */
	static const char nul[] = "bob@example.test\0 mallory@example.test\n";
	FILE *fp = fopen(f->path, "w");
	assert_non_null(fp);
	assert_int_equal(fwrite(nul, 1, sizeof(nul) - 1, fp), sizeof(nul) - 1);
	assert_int_equal(fclose(fp), 0);
	char why[512] = "";
	struct userlist *u = userlist_load(f->path, why, sizeof(why));
	assert_null(u);
	assert_non_null(strstr(why, ":1: NUL byte in the line"));
}

static void test_bad_quota(void **state)
{
	struct fx *f = *state;
	load_bad(f, "alice@example.test 1m\nbob@example.test lots\n", 2, "quota:");
	load_bad(f, "bob@example.test 10x\n", 1, "quota:");
	load_bad(f, "bob@example.test -5\n", 1, "quota:");
	load_bad(f, "bob@example.test 5000000g\n", 1, "quota:");     /* beyond 2^50 */
	/* a stray word after the quota is an error, not ignored: "100 m"
	 * once loaded as a quota of 100 bytes */
	load_bad(f, "alice@example.test 100 m\n", 1, "got 'm' after the quota");
	load_bad(f, "alice@example.test\nbob@example.test 1m 2g # x\n", 2, "got '2g' after the quota");
	/* while a comment after the quota is fine */
	struct userlist *u = load(f, "alice@example.test 100m   # big\n");
	assert_int_equal(quota_of(u, "alice@example.test"), 100 * MIB);
}

static void test_missing_file(void **state)
{
	struct fx *f = *state;
	char why[512] = "";
	assert_null(userlist_load(f->path, why, sizeof(why)));
	assert_non_null(strstr(why, f->path));
	assert_non_null(strstr(why, "cannot read"));
	assert_non_null(strstr(why, "No such file"));
}

/* ---- refresh -------------------------------------------------------------- */

static void test_refresh(void **state)
{
	struct fx *f = *state;
	char why[512] = "";
	time_t t = time(NULL);
	load(f, "alice@example.test 1m\n");
	struct userlist *first = f->u;

	/* unchanged: the same list */
	next_second();
	assert_true(userlist_refresh(&f->u, why, sizeof(why)));
	assert_ptr_equal(f->u, first);

	/* changed: re-read */
	write_file(f->path, "alice@example.test 2m\nbob@example.test\n");
	set_mtime(f->path, t + 100);
	next_second();
	assert_true(userlist_refresh(&f->u, why, sizeof(why)));
	assert_int_equal(userlist_count(f->u), 2);
	assert_int_equal(quota_of(f->u, "alice@example.test"), 2 * MIB);
	assert_true(userlist_find(f->u, "bob@example.test", NULL));

	/* broken: refused, the last good list stays */
	write_file(f->path, "alice@example.test\ncarol\n");
	set_mtime(f->path, t + 200);
	next_second();
	why[0] = '\0';
	assert_false(userlist_refresh(&f->u, why, sizeof(why)));
	char want[700];
	snprintf(want, sizeof(want), "%s:2: expected 'user@domain [quota]'", f->path);
	assert_non_null(strstr(why, want));
	assert_non_null(f->u);
	assert_int_equal(userlist_count(f->u), 2);
	assert_int_equal(quota_of(f->u, "alice@example.test"), 2 * MIB);
	assert_true(userlist_find(f->u, "bob@example.test", NULL));

	/* gone: refused, the last good list stays */
	assert_int_equal(unlink(f->path), 0);
	next_second();
	why[0] = '\0';
	assert_false(userlist_refresh(&f->u, why, sizeof(why)));
	assert_non_null(strstr(why, "keeping the old list"));
	assert_int_equal(userlist_count(f->u), 2);

	/* repaired: picked up */
	write_file(f->path, "dave@example.test 3k\n");
	set_mtime(f->path, t + 300);
	next_second();
	assert_true(userlist_refresh(&f->u, why, sizeof(why)));
	assert_int_equal(userlist_count(f->u), 1);
	assert_int_equal(quota_of(f->u, "dave@example.test"), 3 * KIB);
	assert_false(userlist_find(f->u, "alice@example.test", NULL));
}

static void test_refresh_replaced_file(void **state)
{
	struct fx *f = *state;
	char why[512] = "";
	load(f, "alice@example.test\n");
	struct stat before;
	assert_int_equal(stat(f->path, &before), 0);
	/* a new file renamed into place with the old mtime and size: another inode */
	char tmp[700];
	snprintf(tmp, sizeof(tmp), "%s/users.new", f->dir);
	write_file(tmp, "bobby@example.test\n");
	struct timespec ts[2] = { before.st_mtim, before.st_mtim };
	assert_int_equal(utimensat(AT_FDCWD, tmp, ts, 0), 0);
	assert_int_equal(rename(tmp, f->path), 0);
	next_second();
	assert_true(userlist_refresh(&f->u, why, sizeof(why)));
	assert_true(userlist_find(f->u, "bobby@example.test", NULL));
	assert_false(userlist_find(f->u, "alice@example.test", NULL));
}

/* ---- publish -------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_publish(void **state)
{
	struct fx *f = *state;
	char why[512] = "", out[700];
	load(f, "# admin's list\nalice@example.test 100m\nBob@Example.Test\ncarol@local.test 1g # x\n");
	snprintf(out, sizeof(out), "%s/published", f->dir);
	/* an old published list is replaced as a whole (rename: a new inode) */
	write_file(out, "old@example.test\n");
	struct stat old_st, new_st;
	assert_int_equal(stat(out, &old_st), 0);

	assert_true(userlist_publish(f->u, out, why, sizeof(why)));
	assert_int_equal(stat(out, &new_st), 0);
	assert_true(new_st.st_ino != old_st.st_ino);
	assert_int_equal(new_st.st_mode & 0777, 0644);

	char *text = read_all(out);
	/* a comment line, then the bare addresses (no quotas), one per line */
	assert_memory_equal(text, "# ", 2);
	char *lines[8];
	size_t n = 0;
	char *save = NULL;
	for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		if (l[0] == '#')
			continue;
		assert_true(n < 8);
		lines[n++] = l;
	}
	assert_int_equal(n, 3);
	qsort(lines, n, sizeof(lines[0]), cmp_str);
	assert_string_equal(lines[0], "Bob@Example.Test");
	assert_string_equal(lines[1], "alice@example.test");
	assert_string_equal(lines[2], "carol@local.test");
	free(text);

	/* the published file is itself a valid list */
	struct userlist *p = userlist_load(out, why, sizeof(why));
	assert_non_null(p);
	assert_int_equal(userlist_count(p), 3);
	long long q = -1;
	assert_true(userlist_find(p, "bob@example.test", &q));
	assert_int_equal(q, 0);
	userlist_free(p);

	/* no temporary file left behind */
	static const char *const names[] = { "users", "published", NULL };
	assert_dir_holds(f->dir, names);
}

static void test_publish_empty_and_failure(void **state)
{
	struct fx *f = *state;
	char why[512] = "", out[700];
	load(f, "# nobody\n");
	snprintf(out, sizeof(out), "%s/published", f->dir);
	assert_true(userlist_publish(f->u, out, why, sizeof(why)));
	char *text = read_all(out);
	assert_int_equal(text[0], '#');
	assert_non_null(strchr(text, '\n'));
	assert_string_equal(strchr(text, '\n'), "\n");      /* only the comment line */
	free(text);

	/* a directory that does not exist: false, why names the path */
	snprintf(out, sizeof(out), "%s/nodir/published", f->dir);
	why[0] = '\0';
	assert_false(userlist_publish(f->u, out, why, sizeof(why)));
	assert_non_null(strstr(why, out));
	assert_non_null(strstr(why, "cannot write"));

	/* the target is a directory: rename fails, the temporary file is removed */
	snprintf(out, sizeof(out), "%s/adir", f->dir);
	assert_int_equal(mkdir(out, 0700), 0);
	char inside[800];
	snprintf(inside, sizeof(inside), "%s/keep", out);
	write_file(inside, "x");
	why[0] = '\0';
	assert_false(userlist_publish(f->u, out, why, sizeof(why)));
	assert_non_null(strstr(why, "cannot write"));
	static const char *const names[] = { "users", "published", "adir", NULL };
	assert_dir_holds(f->dir, names);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_load_with_quotas, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crlf_and_no_final_newline, setup, teardown),
		cmocka_unit_test_setup_teardown(test_empty_list, setup, teardown),
		cmocka_unit_test_setup_teardown(test_case_insensitive_lookup, setup, teardown),
		cmocka_unit_test_setup_teardown(test_duplicates_last_wins, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_users, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_lines, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_quota, setup, teardown),
		cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refresh, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refresh_replaced_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_publish, setup, teardown),
		cmocka_unit_test_setup_teardown(test_publish_empty_and_failure, setup, teardown),
	};
	return cmocka_run_group_tests_name("userlist", tests, NULL, NULL);
}
