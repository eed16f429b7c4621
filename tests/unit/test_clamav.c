/*
 * test_clamav.c — the check "clamav" (shared/checks/clamav.c) on the
 * chain, with a signature directory the test writes (EICAR as .ndb):
 * verdicts for each action, the headers on clean mail, the clean cache
 * and its invalidation by a new engine, and configuration errors.
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

#include <event2/event.h>

#include "testutil.h"
#include "testutil_checks.h"
#include "checks/chain.h"
#include "checks/check.h"
#include "checks/shared.h"
#include "mail/envelope.h"
#include "util/alloc.h"
#include "util/buf.h"

static const char EICAR[] = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

struct fx {
	char dir[PATH_MAX];
	char db[PATH_MAX + 8];
	int logfd;
	struct tu_chain_fx c;
	struct envelope *e;
	struct check_ctx ctx;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_int_equal(tu_mkdtemp(f->dir, sizeof(f->dir), "clamav"), 0);
	char log[PATH_MAX + 8];
	snprintf(log, sizeof(log), "%s/log", f->dir);
	f->logfd = tu_log_open(log);
	snprintf(f->db, sizeof(f->db), "%s/db", f->dir);
	assert_int_equal(mkdir(f->db, 0700), 0);
	char path[PATH_MAX + 32], hex[200] = "";
	for (size_t i = 0; EICAR[i]; i++)
		snprintf(hex + 2 * i, 3, "%02x", (unsigned char)EICAR[i]);
	char *line = xasprintf("Eicar-Test-Signature:0:*:%s\n", hex);
	snprintf(path, sizeof(path), "%s/eicar.ndb", f->db);
	tu_write_file(path, line);
	free(line);
	assert_true(tu_chain_fx_init(&f->c, false));
	f->c.env.shared = check_shared_new();
	f->c.env.hostname = "av.example.test";
	f->e = tu_session_new(&f->ctx, "192.0.2.1", "a@example.org", "client.example.org");
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	chain_free(f->c.chain);
	f->c.chain = NULL;
	check_shared_free(f->c.env.shared);
	tu_chain_fx_free(&f->c, &f->ctx);
	envelope_free(f->e);
	tu_log_close(f->logfd);
	tu_rmtree(f->dir);
	free(f);
	return 0;
}

static void use_dir(struct fx *f, const char *db, const char *extra)
{
	char *conf = xasprintf("[check.clamav]\ndatabase_dir = %s\ndatabase_check_interval = 0\n%s", db, extra);
	tu_chain_use(&f->c, conf, "clamav");
	free(conf);
}

static void use(struct fx *f, const char *extra)
{
	use_dir(f, f->db, extra);
}

/* Runs the loop until the log has n lines with event (10 s at most). */
static bool wait_log(struct fx *f, const char *event, int n)
{
	char log[PATH_MAX + 8], pat[100];
	snprintf(log, sizeof(log), "%s/log", f->dir);
	snprintf(pat, sizeof(pat), "\"event\":\"%s\"", event);
	long long end = tu_mono_ms() + 10000;
	for (;;) {
		size_t len = 0;
		char *text = tu_read_file(log, &len);
		int seen = 0;
		for (const char *p = text ? text : ""; (p = strstr(p, pat)); p++)
			seen++;
		free(text);
		if (seen >= n)
			return true;
		if (tu_mono_ms() > end)
			return false;
		event_base_loop(f->c.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		usleep(10000);
	}
}

static struct verdict scan(struct fx *f, const char *msg)
{
	check_ctx_clear_headers(&f->ctx);
	f->ctx.data = msg;
	f->ctx.len = strlen(msg);
	f->ctx.header_bytes = strstr(msg, "\r\n\r\n") ? (size_t)(strstr(msg, "\r\n\r\n") + 4 - msg) : 0;
	return tu_chain_verdict(f->c.chain, PHASE_MESSAGE, &f->ctx, f->c.base);
}

static const char *header(struct fx *f, const char *name)
{
	return tu_added_header(&f->ctx, name);
}

static void test_actions(void **state)
{
	struct fx *f = *state;
	char *bad = xasprintf("Subject: x\r\n\r\n%s\r\n", EICAR);
	use(f, "");
	struct verdict v = scan(f, bad);
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 554);
	assert_string_equal(v.enh, "5.7.1");
	assert_string_equal(v.reason, "Message rejected: virus found (Eicar-Test-Signature.UNOFFICIAL)");
	use(f, "action = quarantine\n");
	v = scan(f, bad);
	assert_int_equal(v.kind, V_QUARANTINE);
	assert_string_equal(v.reason, "virus found (Eicar-Test-Signature.UNOFFICIAL)");
	use(f, "action = discard\n");
	assert_int_equal(scan(f, bad).kind, V_DISCARD);
	use(f, "action = tag\n");
	v = scan(f, bad);
	assert_int_equal(v.kind, V_CONTINUE);
	assert_string_equal(header(f, "X-Virus-Status"), "Infected (Eicar-Test-Signature.UNOFFICIAL)");
	assert_string_equal(header(f, "X-Virus-Scanned"), "ClamAV using Rampart on av.example.test");
	/* clean mail: headers, or none with scanned_headers = no; ones the
	 * message came with are removed */
	v = scan(f, "Subject: y\r\nX-Virus-Status: Clean\r\nX-Virus-Scanned: forged\r\n\r\nhello\r\n");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_string_equal(header(f, "X-Virus-Status"), "Clean");
	assert_int_equal(f->ctx.ndel, 2);
	use(f, "scanned_headers = no\n");
	scan(f, "Subject: y\r\n\r\nhello\r\n");
	assert_int_equal(f->ctx.nadd, 0);
	assert_true(tu_metric_has(f->c.metrics, "signature=\"Eicar-Test-Signature.UNOFFICIAL\"} 4\n"));
	free(bad);
}

/* The X-Virus-* fields the message came with are removed also when we
 * add none: over a scan limit with limits_action = accept, and clean mail
 * with scanned_headers = no. */
static void test_forged_headers_removed_without_ours(void **state)
{
	struct fx *f = *state;
	const char *forged = "X-Virus-Status: Clean\r\nX-Virus-Scanned: forged\r\n";
	struct buf m = BUF_INIT;
	buf_printf(&m, "Subject: many\r\n%sMIME-Version: 1.0\r\n"
		   "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n", forged);
	for (int i = 0; i < 5; i++)
		buf_printf(&m, "--b\r\nContent-Type: application/octet-stream; name=\"a%d.bin\"\r\n"
			   "Content-Disposition: attachment; filename=\"a%d.bin\"\r\n\r\npart %d\r\n", i, i, i);
	buf_puts(&m, "--b--\r\n");
	use(f, "max_files = 1\nlimits_action = accept\n");
	struct verdict v = scan(f, buf_cstr(&m));
	assert_int_equal(v.kind, V_CONTINUE);
	char log[PATH_MAX + 8];
	snprintf(log, sizeof(log), "%s/log", f->dir);
	assert_true(tu_file_has(log, "\"result\":\"limits\",\"signature\":\"Heuristics.Limits.Exceeded"));
	assert_int_equal(f->ctx.nadd, 0);
	assert_int_equal(f->ctx.ndel, 2);
	use(f, "scanned_headers = no\n");
	char *clean = xasprintf("Subject: y\r\n%s\r\nhello\r\n", forged);
	v = scan(f, clean);
	assert_int_equal(v.kind, V_CONTINUE);
	assert_int_equal(f->ctx.nadd, 0);
	assert_int_equal(f->ctx.ndel, 2);
	free(clean);
	buf_free(&m);
}

static void test_clean_cache(void **state)
{
	struct fx *f = *state;
	use(f, "");
	const char *clean = "Subject: one\r\n\r\nthe same body\r\n";
	scan(f, clean);
	scan(f, clean);                         /* a retry: the same bytes */
	assert_true(tu_metric_has(f->c.metrics, "result=\"cached\"} 1\n"));
	assert_true(tu_metric_has(f->c.metrics, "result=\"clean\"} 1\n"));
	/* the same body under other headers (another Content-Type could decode
	 * it otherwise) is scanned again */
	scan(f, "Subject: other headers, same body\r\n\r\nthe same body\r\n");
	assert_true(tu_metric_has(f->c.metrics, "result=\"clean\"} 2\n"));
	/* a new instance on the same engine (a reload) starts with an empty
	 * cache, and the engine is rebuilt in the background: once it is
	 * there, the old engine's clean results no longer count */
	use(f, "");
	long long end = tu_mono_ms() + 10000;
	char log[PATH_MAX + 8];
	snprintf(log, sizeof(log), "%s/log", f->dir);
	while (!tu_file_has(log, "\"event\":\"av.reloaded\"") && tu_mono_ms() < end)
		event_base_loop(f->c.base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(10000);
	assert_true(tu_file_has(log, "\"event\":\"av.reloaded\""));
	scan(f, clean);
	assert_true(tu_metric_has(f->c.metrics, "result=\"clean\"} 3\n"));
}

/* A reload (SIGHUP) that names another database directory: the new
 * engine is built in the background while the old one serves; a
 * directory without databases is refused at once; one that fails to
 * build keeps the engine in use. */
static void test_reload_to_another_directory(void **state)
{
	struct fx *f = *state;
	static const char other[] = "rampart-test-other-signature";
	const char *with_eicar = xasprintf("Subject: t\r\n\r\n%s\r\n", EICAR);
	const char *with_other = xasprintf("Subject: t\r\n\r\nx %s x\r\n", other);
	use(f, "");
	assert_int_equal(scan(f, with_eicar).kind, V_REJECT);
	assert_int_equal(scan(f, with_other).kind, V_CONTINUE);

	char db2[PATH_MAX + 16], path[PATH_MAX + 40], hex[100] = "";
	snprintf(db2, sizeof(db2), "%s/db2", f->dir);
	assert_int_equal(mkdir(db2, 0700), 0);
	for (size_t i = 0; other[i]; i++)
		snprintf(hex + 2 * i, 3, "%02x", (unsigned char)other[i]);
	char *line = xasprintf("Rampart-Other:0:*:%s\n", hex);
	snprintf(path, sizeof(path), "%s/other.ndb", db2);
	tu_write_file(path, line);
	free(line);
	use_dir(f, db2, "");
	assert_true(wait_log(f, "av.reloaded", 1));
	assert_int_equal(scan(f, with_eicar).kind, V_CONTINUE);
	struct verdict v = scan(f, with_other);
	assert_int_equal(v.kind, V_REJECT);
	assert_non_null(strstr(v.reason, "Rampart-Other"));

	/* no databases at all: refused before anything is built */
	char empty[PATH_MAX + 16], why[600] = "";
	snprintf(empty, sizeof(empty), "%s/empty", f->dir);
	assert_int_equal(mkdir(empty, 0700), 0);
	char *conf = xasprintf("[check.clamav]\ndatabase_dir = %s\n", empty);
	assert_false(tu_chain_try(&f->c, conf, "clamav", why, sizeof(why)));
	assert_non_null(strstr(why, "no signature databases"));
	free(conf);

	/* a database that does not load: the engine in use stays */
	char bad[PATH_MAX + 16];
	snprintf(bad, sizeof(bad), "%s/bad", f->dir);
	assert_int_equal(mkdir(bad, 0700), 0);
	snprintf(path, sizeof(path), "%s/broken.ndb", bad);
	tu_write_file(path, "not a signature at all\n");
	use_dir(f, bad, "");
	assert_true(wait_log(f, "av.reload_failed", 1));
	char log[PATH_MAX + 8];
	snprintf(log, sizeof(log), "%s/log", f->dir);
	char *kept = xasprintf("\"kept_dir\":\"%s\"", db2);
	assert_true(tu_file_has(log, kept));
	free(kept);
	v = scan(f, with_other);
	assert_int_equal(v.kind, V_REJECT);
	assert_non_null(strstr(v.reason, "Rampart-Other"));
	free((char *)with_eicar);
	free((char *)with_other);
}

static void test_bad_configuration(void **state)
{
	struct fx *f = *state;
	char why[600] = "";
	char *conf = xasprintf("[check.clamav]\ndatabase_dir = %s/nonexistent\n", f->dir);
	assert_false(tu_chain_try(&f->c, conf, "clamav", why, sizeof(why)));
	assert_non_null(strstr(why, "database_dir:"));
	assert_non_null(strstr(why, "cannot read the directory"));
	free(conf);
	char broken[PATH_MAX + 32];
	snprintf(broken, sizeof(broken), "%s/broken.ndb", f->db);
	tu_write_file(broken, "not a signature at all\n");
	conf = xasprintf("[check.clamav]\ndatabase_dir = %s\n", f->db);
	assert_false(tu_chain_try(&f->c, conf, "clamav", why, sizeof(why)));
	assert_non_null(strstr(why, "database_dir:"));
	free(conf);
	conf = xasprintf("[check.clamav]\ndatabase_dir = %s\naction = burn\n", f->db);
	assert_false(tu_chain_try(&f->c, conf, "clamav", why, sizeof(why)));
	assert_non_null(strstr(why, "action"));
	free(conf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_actions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_forged_headers_removed_without_ours, setup, teardown),
		cmocka_unit_test_setup_teardown(test_clean_cache, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reload_to_another_directory, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_configuration, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
