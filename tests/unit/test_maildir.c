/*
 * test_maildir.c — unit tests of Maildir delivery (shared/mail/maildir.c):
 * tmp/new/cur creation, the stored form (prefix, LF line endings), the
 * Maildir++ ",S=size" name, usage, quotas, and failures that must be
 * temporary and leave nothing behind in tmp/.  Real files in a mkdtemp()
 * directory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include <dirent.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mail/maildir.h"
#include "util/buf.h"

struct fx {
	char dir[512];
	char box[600];          /* the Maildir the tests deliver to */
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	if (tu_mkdtemp(f->dir, sizeof(f->dir), "maildir") != 0)
		return -1;
	snprintf(f->box, sizeof(f->box), "%s/alice/Maildir", f->dir);
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

/* ---- helpers ------------------------------------------------------------- */

static void write_file(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	assert_true(fputs(text, fp) >= 0);
	assert_int_equal(fclose(fp), 0);
}

static char *read_all(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "r");
	if (!fp)
		fail_msg("cannot open %s", path);
	struct buf b = BUF_INIT;
	char tmp[4096];
	size_t n;
	while ((n = fread(tmp, 1, sizeof(tmp), fp)) > 0)
		buf_append(&b, tmp, n);
	fclose(fp);
	return buf_steal(&b, len);
}

/* Entries of box/sub (not . and ..); -1 if it cannot be opened.  The first
 * name goes to first (if given). */
static int count_in(const char *box, const char *sub, char *first, size_t firstlen)
{
	char p[800];
	snprintf(p, sizeof(p), "%s/%s", box, sub);
	DIR *d = opendir(p);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (n == 0 && first)
			snprintf(first, firstlen, "%s", e->d_name);
		n++;
	}
	closedir(d);
	return n;
}

static bool is_dir(const char *box, const char *sub)
{
	char p[800];
	struct stat st;
	snprintf(p, sizeof(p), "%s/%s", box, sub);
	return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static enum maildir_result deliver(const char *box, const char *prefix, const char *data, long long quota,
				   char *name, size_t namelen, char *why, size_t whylen)
{
	if (name)
		name[0] = '\0';
	why[0] = '\0';
	return maildir_deliver(box, prefix, data, strlen(data), quota, name, namelen, why, whylen);
}

/* The ",S=" value of a name; -1 if absent. */
static long long size_in_name(const char *name)
{
	const char *s = strstr(name, ",S=");
	return s ? strtoll(s + 3, NULL, 10) : -1;
}

static long long file_size(const char *box, const char *sub, const char *name)
{
	char p[1200];
	struct stat st;
	snprintf(p, sizeof(p), "%s/%s/%s", box, sub, name);
	assert_int_equal(stat(p, &st), 0);
	return (long long)st.st_size;
}

/* ---- delivery ------------------------------------------------------------ */

static void test_deliver_creates_maildir(void **state)
{
	struct fx *f = *state;
	char name[512], why[256];
	assert_int_equal(deliver(f->box, "", "Subject: hi\r\n\r\nbody\r\n", 0, name, sizeof(name), why, sizeof(why)),
			 MAILDIR_OK);
	assert_true(is_dir(f->box, "tmp"));
	assert_true(is_dir(f->box, "new"));
	assert_true(is_dir(f->box, "cur"));
	char found[512] = "";
	assert_int_equal(count_in(f->box, "new", found, sizeof(found)), 1);
	assert_string_equal(found, name);
	assert_int_equal(count_in(f->box, "tmp", NULL, 0), 0);
	assert_int_equal(count_in(f->box, "cur", NULL, 0), 0);
	/* private to the user */
	char p[1200];
	struct stat st;
	snprintf(p, sizeof(p), "%s/new/%s", f->box, name);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_true(S_ISREG(st.st_mode));
	/* Maildir++ name: time.M<usec>P<pid>R<rand>.<host>,S=<size> */
	char want[64];
	snprintf(want, sizeof(want), "P%dR", (int)getpid());
	assert_non_null(strstr(name, want));
	assert_non_null(strstr(name, ".M"));
	char *end;
	long long t = strtoll(name, &end, 10);
	assert_int_equal(*end, '.');
	assert_true(t > 1600000000LL);
	assert_null(strchr(name, '/'));
	assert_null(strchr(name, ':'));
}

static void test_stored_form(void **state)
{
	struct fx *f = *state;
	char name[512], why[256], p[1200];
	const char *prefix = "Return-Path: <bob@remote.test>\nDelivered-To: alice@example.test\n";
	const char *data =
		"Received: from x\r\n"
		"Subject: line endings\r\n"
		"\r\n"
		"crlf line\r\n"
		"bare\rcr stays\r\n"
		"bare lf stays\n"
		"\r\r\n"
		"trailing cr\r";
	const char *want =
		"Return-Path: <bob@remote.test>\nDelivered-To: alice@example.test\n"
		"Received: from x\n"
		"Subject: line endings\n"
		"\n"
		"crlf line\n"
		"bare\rcr stays\n"
		"bare lf stays\n"
		"\r\n"
		"trailing cr\r";
	assert_int_equal(deliver(f->box, prefix, data, 0, name, sizeof(name), why, sizeof(why)), MAILDIR_OK);
	snprintf(p, sizeof(p), "%s/new/%s", f->box, name);
	size_t len;
	char *got = read_all(p, &len);
	assert_int_equal(len, strlen(want));
	assert_memory_equal(got, want, len);
	free(got);
	/* ",S=" is the size of the file as stored */
	assert_int_equal(size_in_name(name), (long long)strlen(want));
	assert_int_equal(size_in_name(name), file_size(f->box, "new", name));
}

static void test_binary_and_empty(void **state)
{
	struct fx *f = *state;
	char name[512], why[256], p[1200];
	/* NUL bytes and 8-bit data are kept; len, not strlen, counts */
	static const char data[] = { 'a', '\0', '\r', '\n', (char)0xff, '\r', '\n', 'z' };
	static const char want[] = { 'X', '\n', 'a', '\0', '\n', (char)0xff, '\n', 'z' };
	why[0] = '\0';
	assert_int_equal(maildir_deliver(f->box, "X\n", data, sizeof(data), 0, name, sizeof(name), why, sizeof(why)),
			 MAILDIR_OK);
	snprintf(p, sizeof(p), "%s/new/%s", f->box, name);
	size_t len;
	char *got = read_all(p, &len);
	assert_int_equal(len, sizeof(want));
	assert_memory_equal(got, want, len);
	free(got);
	assert_int_equal(size_in_name(name), (long long)sizeof(want));

	/* an empty message: an empty file, ",S=0" */
	assert_int_equal(maildir_deliver(f->box, "", "", 0, 0, name, sizeof(name), why, sizeof(why)), MAILDIR_OK);
	assert_int_equal(size_in_name(name), 0);
	assert_int_equal(file_size(f->box, "new", name), 0);
	/* name_out is optional */
	assert_int_equal(maildir_deliver(f->box, "", "x\r\n", 3, 0, NULL, 0, why, sizeof(why)), MAILDIR_OK);
	assert_int_equal(count_in(f->box, "new", NULL, 0), 3);
	assert_int_equal(count_in(f->box, "tmp", NULL, 0), 0);
}

static void test_existing_maildir_and_unique_names(void **state)
{
	struct fx *f = *state;
	char why[256], names[20][512];
	/* a Maildir that exists already (created by someone else) */
	char p[800];
	snprintf(p, sizeof(p), "%s/alice", f->dir);
	assert_int_equal(mkdir(p, 0700), 0);
	assert_int_equal(mkdir(f->box, 0700), 0);
	snprintf(p, sizeof(p), "%s/cur", f->box);
	assert_int_equal(mkdir(p, 0700), 0);
	for (int i = 0; i < 20; i++)
		assert_int_equal(deliver(f->box, "", "m\r\n", 0, names[i], sizeof(names[i]), why, sizeof(why)), MAILDIR_OK);
	for (int i = 0; i < 20; i++)
		for (int j = i + 1; j < 20; j++)
			assert_string_not_equal(names[i], names[j]);
	assert_int_equal(count_in(f->box, "new", NULL, 0), 20);
	assert_int_equal(count_in(f->box, "tmp", NULL, 0), 0);
}

/* ---- usage and quota ------------------------------------------------------ */

static void test_usage(void **state)
{
	struct fx *f = *state;
	char name[512], why[256], p[1200];
	assert_int_equal(maildir_usage(f->box), 0);          /* no Maildir yet */
	assert_int_equal(deliver(f->box, "H: 1\n", "0123456789\r\n", 0, name, sizeof(name), why, sizeof(why)), MAILDIR_OK);
	long long s1 = file_size(f->box, "new", name);
	assert_int_equal(s1, 16);
	assert_int_equal(maildir_usage(f->box), 16);
	assert_int_equal(deliver(f->box, "", "abc\r\n", 0, name, sizeof(name), why, sizeof(why)), MAILDIR_OK);
	assert_int_equal(maildir_usage(f->box), 16 + 4);

	/* read mail in cur/ with flags: the size comes from ",S=" */
	snprintf(p, sizeof(p), "%s/cur/1700000000.M1P1R1.host,S=1000:2,S", f->box);
	write_file(p, "short");
	/* a file without ",S=": its real size */
	snprintf(p, sizeof(p), "%s/cur/1700000001.M2P1R2.host:2,", f->box);
	write_file(p, "seven b");
	/* dot files and tmp/ do not count */
	snprintf(p, sizeof(p), "%s/new/.hidden,S=5000", f->box);
	write_file(p, "x");
	snprintf(p, sizeof(p), "%s/tmp/1700000002.M3P1R3.host,S=9000", f->box);
	write_file(p, "x");
	assert_int_equal(maildir_usage(f->box), 16 + 4 + 1000 + 7);
	/* a name the user made (files can be renamed through IMAP): a size
	 * that is not a plain number is no size, the file's own counts
	 * (found in review: "S=-100000" made the box look empty) */
	snprintf(p, sizeof(p), "%s/cur/1700000003.M4P1R4.host,S=-100000:2,S", f->box);
	write_file(p, "abc");
	snprintf(p, sizeof(p), "%s/cur/1700000004.M5P1R5.host,S=99999999999999999999:2,", f->box);
	write_file(p, "abcd");
	snprintf(p, sizeof(p), "%s/cur/1700000005.M6P1R6.host,S=12abc", f->box);
	write_file(p, "abcde");
	assert_int_equal(maildir_usage(f->box), 16 + 4 + 1000 + 7 + 3 + 4 + 5);
	/* and a quota still holds against them */
	assert_int_equal(deliver(f->box, "", "0123456789\r\n", 16 + 4 + 1000 + 7 + 3 + 4 + 5 + 5, name, sizeof(name), why,
				 sizeof(why)), MAILDIR_OVER_QUOTA);
}

static void test_quota_too_big(void **state)
{
	struct fx *f = *state;
	char name[512], why[256];
	/* 61 bytes stored ("X: y\n" + 56) against a 60-byte quota */
	char data[64];
	memset(data, 'a', 56);
	data[56] = '\0';
	assert_int_equal(deliver(f->box, "X: y\n", data, 60, name, sizeof(name), why, sizeof(why)), MAILDIR_TOO_BIG);
	assert_non_null(strstr(why, "61 bytes"));
	assert_non_null(strstr(why, "60"));
	assert_string_equal(name, "");
	assert_int_equal(count_in(f->box, "new", NULL, 0) <= 0, 1);
	/* CRLF counts as stored (LF): 60 bytes fit exactly in an empty box */
	char crlf[64];
	memset(crlf, 'a', 53);
	memcpy(crlf + 53, "\r\n", 3);        /* 53 + 2 on the wire, 54 stored */
	assert_int_equal(deliver(f->box, "Xy: 1\n", crlf, 60, name, sizeof(name), why, sizeof(why)), MAILDIR_OK);
	assert_int_equal(size_in_name(name), 60);
	assert_int_equal(maildir_usage(f->box), 60);
	assert_int_equal(count_in(f->box, "tmp", NULL, 0), 0);
}

static void test_quota_over(void **state)
{
	struct fx *f = *state;
	char name[512], why[256];
	const long long quota = 100;
	char m40[41];
	memset(m40, 'b', 40);
	m40[40] = '\0';
	assert_int_equal(deliver(f->box, "", m40, quota, name, sizeof(name), why, sizeof(why)), MAILDIR_OK);
	assert_int_equal(deliver(f->box, "", m40, quota, name, sizeof(name), why, sizeof(why)), MAILDIR_OK);
	assert_int_equal(maildir_usage(f->box), 80);
	/* 80 + 21 > 100 */
	char m21[22];
	memset(m21, 'c', 21);
	m21[21] = '\0';
	assert_int_equal(deliver(f->box, "", m21, quota, name, sizeof(name), why, sizeof(why)), MAILDIR_OVER_QUOTA);
	assert_non_null(strstr(why, "mailbox full"));
	assert_non_null(strstr(why, "80 of 100"));
	assert_int_equal(count_in(f->box, "new", NULL, 0), 2);
	assert_int_equal(count_in(f->box, "tmp", NULL, 0), 0);
	/* 80 + 20 = 100: fits exactly */
	m21[20] = '\0';
	assert_int_equal(deliver(f->box, "", m21, quota, name, sizeof(name), why, sizeof(why)), MAILDIR_OK);
	assert_int_equal(maildir_usage(f->box), 100);
	/* now even one byte is too much, but not "too big" */
	assert_int_equal(deliver(f->box, "", "x", quota, name, sizeof(name), why, sizeof(why)), MAILDIR_OVER_QUOTA);
	/* read mail (cur/) counts too */
	char from[1200], to[1200], n0[512];
	assert_int_equal(count_in(f->box, "new", n0, sizeof(n0)), 3);
	snprintf(from, sizeof(from), "%s/new/%s", f->box, n0);
	snprintf(to, sizeof(to), "%s/cur/%s:2,S", f->box, n0);
	assert_int_equal(rename(from, to), 0);
	assert_int_equal(maildir_usage(f->box), 100);
	assert_int_equal(deliver(f->box, "", "x", quota, name, sizeof(name), why, sizeof(why)), MAILDIR_OVER_QUOTA);
	/* no quota: always delivered */
	assert_int_equal(deliver(f->box, "", m40, 0, name, sizeof(name), why, sizeof(why)), MAILDIR_OK);
	assert_int_equal(maildir_usage(f->box), 140);
}

/* ---- failures ------------------------------------------------------------ */

static void test_unwritable_path(void **state)
{
	struct fx *f = *state;
	char why[256], name[512], afile[600], box[700];
	/* a Maildir below a regular file cannot be made (ENOTDIR, even as root) */
	snprintf(afile, sizeof(afile), "%s/afile", f->dir);
	write_file(afile, "not a directory\n");
	snprintf(box, sizeof(box), "%s/box", afile);
	assert_int_equal(deliver(box, "", "Subject: x\r\n\r\nbody\r\n", 0, name, sizeof(name), why, sizeof(why)),
			 MAILDIR_TEMPFAIL);
	assert_true(why[0] != '\0');
	assert_non_null(strstr(why, box));
	assert_non_null(strstr(why, "Not a directory"));
	assert_string_equal(name, "");
	/* with a quota the outcome is the same (usage of nothing is 0) */
	assert_int_equal(deliver(box, "", "x\r\n", 1000, name, sizeof(name), why, sizeof(why)), MAILDIR_TEMPFAIL);
	assert_int_equal(maildir_usage(box), 0);
	struct stat st;
	assert_int_equal(stat(afile, &st), 0);
	assert_true(S_ISREG(st.st_mode));
}

static void test_tmp_is_a_file(void **state)
{
	struct fx *f = *state;
	char why[256], p[800];
	assert_int_equal(deliver(f->box, "", "x\r\n", 0, NULL, 0, why, sizeof(why)), MAILDIR_OK);
	snprintf(p, sizeof(p), "%s/tmp", f->box);
	assert_int_equal(rmdir(p), 0);
	write_file(p, "junk");
	assert_int_equal(deliver(f->box, "", "y\r\n", 0, NULL, 0, why, sizeof(why)), MAILDIR_TEMPFAIL);
	char want[800];
	snprintf(want, sizeof(want), "cannot create Maildir %s", f->box);
	assert_non_null(strstr(why, want));
	assert_non_null(strstr(why, "Not a directory"));
	assert_int_equal(count_in(f->box, "new", NULL, 0), 1);
}

static void test_new_is_a_file(void **state)
{
	struct fx *f = *state;
	char why[256], p[800];
	assert_int_equal(deliver(f->box, "", "x\r\n", 0, NULL, 0, why, sizeof(why)), MAILDIR_OK);
	char n0[512];
	assert_int_equal(count_in(f->box, "new", n0, sizeof(n0)), 1);
	/* new/ replaced by a file: the message is written to tmp/ but cannot
	 * be moved; it must not stay in tmp/ */
	char q[1200];
	snprintf(q, sizeof(q), "%s/new/%s", f->box, n0);
	assert_int_equal(unlink(q), 0);
	snprintf(p, sizeof(p), "%s/new", f->box);
	assert_int_equal(rmdir(p), 0);
	write_file(p, "junk");
	assert_int_equal(deliver(f->box, "", "y\r\n", 0, NULL, 0, why, sizeof(why)), MAILDIR_TEMPFAIL);
	assert_true(why[0] != '\0');
	assert_int_equal(count_in(f->box, "tmp", NULL, 0), 0);
}

static void test_write_failure(void **state)
{
	struct fx *f = *state;
	char why[256], name[512];
	assert_int_equal(deliver(f->box, "", "x\r\n", 0, NULL, 0, why, sizeof(why)), MAILDIR_OK);
	/* a file size limit makes the write fail (EFBIG) like a full disk */
	char big[4096];
	memset(big, 'z', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	struct rlimit old, lim;
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
	lim = old;
	lim.rlim_cur = 100;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	enum maildir_result r = deliver(f->box, "", big, 0, name, sizeof(name), why, sizeof(why));
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, oldsig);
	assert_int_equal(r, MAILDIR_TEMPFAIL);
	assert_non_null(strstr(why, "cannot write"));
	assert_non_null(strstr(why, "File too large"));
	assert_int_equal(count_in(f->box, "tmp", NULL, 0), 0);
	assert_int_equal(count_in(f->box, "new", NULL, 0), 1);
	/* and it works again once the limit is gone */
	assert_int_equal(deliver(f->box, "", big, 0, name, sizeof(name), why, sizeof(why)), MAILDIR_OK);
	assert_int_equal(file_size(f->box, "new", name), (long long)sizeof(big) - 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_deliver_creates_maildir, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stored_form, setup, teardown),
		cmocka_unit_test_setup_teardown(test_binary_and_empty, setup, teardown),
		cmocka_unit_test_setup_teardown(test_existing_maildir_and_unique_names, setup, teardown),
		cmocka_unit_test_setup_teardown(test_usage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quota_too_big, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quota_over, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unwritable_path, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tmp_is_a_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_new_is_a_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_write_failure, setup, teardown),
	};
	return cmocka_run_group_tests_name("maildir", tests, NULL, NULL);
}
