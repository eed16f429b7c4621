/*
 * test_config.c — unit tests for util/config: INI parsing and its errors,
 * every value type with bounds, binding (defaults, file, environment),
 * unknown keys, dump re-parsing, documentation and release.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/alloc.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/log.h"

/* ---- a table like a stage's ------------------------------------------- */

struct mx_conf {
	bool greylist;
	long long max_rcpts;
	long long max_size;
	long long timeout;
	char *banner;
	struct strlist hops;
	int mode;
	long long offset;
	long long spool_max;
	char *tag;
	double score;
};

#define MX(f) offsetof(struct mx_conf, f)

static const struct param_def mx_params[] = {
	{ .name = "greylist", .type = PT_BOOL, .def = "yes", .offset = MX(greylist),
	  .doc = "greylist unknown triplets" },
	{ .name = "max_rcpts", .type = PT_INT, .def = "100", .min = 1, .max = 1000,
	  .offset = MX(max_rcpts), .doc = "recipients per message" },
	{ .name = "max_size", .type = PT_SIZE, .def = "10m", .min = 1024, .max = 1024LL * 1024 * 1024,
	  .offset = MX(max_size), .doc = "largest message accepted" },
	{ .name = "timeout", .type = PT_TIME, .def = "5m", .min = 1000, .max = 3600000,
	  .offset = MX(timeout), .doc = "idle timeout" },
	{ .name = "banner", .type = PT_STR, .def = "Rampart ESMTP", .max = 200,
	  .offset = MX(banner), .doc = "greeting text" },
	{ .name = "hops", .type = PT_LIST, .def = "127.0.0.1:10025", .min = 1, .max = 8,
	  .offset = MX(hops), .doc = "next hops" },
	{ .name = "mode", .type = PT_ENUM, .def = "proxy", .choices = "queue|proxy",
	  .offset = MX(mode), .doc = "queue or proxy" },
	{ .name = "offset", .type = PT_INT, .def = "-5", .offset = MX(offset),
	  .doc = "an unbounded integer" },
	{ .name = "spool_max", .type = PT_SIZE, .def = "0", .offset = MX(spool_max),
	  .doc = "unbounded size, 0 = off" },
	{ .name = "tag", .type = PT_STR, .def = "", .offset = MX(tag), .doc = "optional tag" },
	{ .name = "score", .type = PT_NUMBER, .def = "5", .min = -100, .max = 100, .offset = MX(score),
	  .doc = "a decimal number" },
	PARAM_END,
};

static const struct param_set mx_set = { "mx", "SMTP entry for Internet mail", mx_params,
					 sizeof(struct mx_conf) };

struct req_conf {
	char *hostname;
	struct strlist peers;
};

static const struct param_def req_params[] = {
	{ .name = "hostname", .type = PT_STR, .def = "", .min = 1,
	  .offset = offsetof(struct req_conf, hostname), .doc = "required name" },
	{ .name = "peers", .type = PT_LIST, .def = "", .min = 2,
	  .offset = offsetof(struct req_conf, peers), .doc = "two or more" },
	PARAM_END,
};

static const struct param_set req_set = { "store", "required things", req_params,
					  sizeof(struct req_conf) };

static const char *env_vars[] = {
	"RAMPART_MX_GREYLIST", "RAMPART_MX_MAX_RCPTS", "RAMPART_MX_MAX_SIZE", "RAMPART_MX_TIMEOUT",
	"RAMPART_MX_BANNER", "RAMPART_MX_HOPS", "RAMPART_MX_MODE", "RAMPART_MX_OFFSET",
	"RAMPART_MX_SPOOL_MAX", "RAMPART_MX_TAG", "RAMPART_MX_B_MAX_SIZE", "RAMPART_MX_B_2_MODE",
	"RAMPART_STORE_HOSTNAME", "RAMPART_STORE_PEERS",
};

static int clear_env(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(env_vars) / sizeof(env_vars[0]); i++)
		unsetenv(env_vars[i]);
	return 0;
}

/* Parse text as "t.conf" and bind section; the test fails on errors. */
static struct config *parse_ok(const char *text)
{
	struct config_error err = { "" };
	struct config *cfg = config_parse_string("t.conf", text, &err);
	if (!cfg)
		fail_msg("unexpected parse error: %s", err.msg);
	return cfg;
}

static void bind_ok(struct config *cfg, const char *section, const struct param_set *set, void *t)
{
	struct config_error err = { "" };
	if (!config_bind(cfg, section, set, t, &err))
		fail_msg("unexpected bind error: %s", err.msg);
}

/* Parse must fail with exactly msg. */
static void parse_fails(const char *text, const char *msg)
{
	struct config_error err = { "" };
	struct config *cfg = config_parse_string("t.conf", text, &err);
	assert_null(cfg);
	assert_string_equal(err.msg, msg);
}

/* Parse succeeds, bind of [mx] fails with exactly msg; target is left clean. */
static void bind_fails(const char *text, const char *msg)
{
	struct config *cfg = parse_ok(text);
	struct config_error err = { "" };
	struct mx_conf c;
	memset(&c, 0xAB, sizeof(c));
	assert_false(config_bind(cfg, "mx", &mx_set, &c, &err));
	assert_string_equal(err.msg, msg);
	assert_null(c.banner);
	assert_null(c.hops.v);
	assert_int_equal(c.hops.n, 0);
	config_free(cfg);
}

/* One value through config_parse_value into a zeroed mx_conf. */
static bool value(const char *key, const char *text, struct mx_conf *c, char *why, size_t whylen)
{
	for (const struct param_def *p = mx_params; p->name; p++)
		if (strcmp(p->name, key) == 0)
			return config_parse_value(p, text, c, why, whylen);
	fail_msg("no param %s", key);
	return false;
}

/* ---- parsing ---------------------------------------------------------- */

static void test_parse_structure(void **state)
{
	(void)state;
	struct config *cfg = parse_ok("# leading comment\n"
				      "log_level = info\n"
				      "\n"
				      "   ; another comment\n"
				      "[mx]\n"
				      "  max_size   =   20m   \n"
				      "\tgreylist=no\n"
				      "[mx.b]\n"
				      "[store-2]\n");
	size_t n = 99;
	const char **names = config_sections(cfg, &n);
	assert_int_equal(n, 4);
	assert_string_equal(names[0], "global");
	assert_string_equal(names[1], "mx");
	assert_string_equal(names[2], "mx.b");
	assert_string_equal(names[3], "store-2");
	assert_true(config_has_section(cfg, "mx.b"));
	assert_false(config_has_section(cfg, "av"));
	assert_string_equal(config_path(cfg), "t.conf");

	struct mx_conf c;
	bind_ok(cfg, "mx", &mx_set, &c);
	assert_int_equal(c.max_size, 20 * 1024 * 1024);
	assert_false(c.greylist);
	config_release(&mx_set, &c);
	config_free(cfg);
}

static void test_explicit_global_after_implicit(void **state)
{
	(void)state;
	struct config *cfg = parse_ok("a = 1\n[global]\nb = 2\n[mx]\n");
	size_t n;
	const char **names = config_sections(cfg, &n);
	assert_int_equal(n, 2);
	assert_string_equal(names[0], "global");
	config_free(cfg);
	parse_fails("a = 1\n[global]\nA = 2\n",
		    "t.conf:3: duplicate key 'A' in [global] (first set on line 1)");
	parse_fails("[global]\n[mx]\n[global]\n",
		    "t.conf:3: duplicate section [global] (first on line 1)");
}

static void test_crlf_and_bom(void **state)
{
	(void)state;
	struct config *cfg = parse_ok("\xEF\xBB\xBF[mx]\r\nmax_rcpts = 7\r\nbanner = \"hi there\"\r\n");
	struct mx_conf c;
	bind_ok(cfg, "mx", &mx_set, &c);
	assert_int_equal(c.max_rcpts, 7);
	assert_string_equal(c.banner, "hi there");
	config_release(&mx_set, &c);
	config_free(cfg);
}

static void test_syntax_errors(void **state)
{
	(void)state;
	parse_fails("[mx]\nmax_size = 1m\njust some words\n",
		    "t.conf:3: expected 'key = value' or '[section]'");
	parse_fails("[mx\n", "t.conf:1: expected 'key = value' or '[section]'");
	parse_fails("\n\n= value\n", "t.conf:3: expected 'key = value' or '[section]'");
	parse_fails("two words = x\n", "t.conf:1: expected 'key = value' or '[section]'");
	parse_fails("[MX]\n", "t.conf:1: bad section name [MX] (use a-z, 0-9, '.', '_', '-')");
	parse_fails("[]\n", "t.conf:1: bad section name [] (use a-z, 0-9, '.', '_', '-')");
	parse_fails("[mx b]\n", "t.conf:1: bad section name [mx b] (use a-z, 0-9, '.', '_', '-')");
	parse_fails("[mx]\nbanner = \"open\n", "t.conf:2: unterminated quoted value (missing closing '\"')");
	parse_fails("[mx]\nbanner = \"a\" b\n", "t.conf:2: unexpected text after the closing quote");
}

static void test_duplicates(void **state)
{
	(void)state;
	parse_fails("[mx]\nmax_size = 1m\n\n# c\nmax_size = 2m\n",
		    "t.conf:5: duplicate key 'max_size' in [mx] (first set on line 2)");
	parse_fails("[mx]\nmax_size = 1m\n[store]\n[mx]\n",
		    "t.conf:4: duplicate section [mx] (first on line 1)");
	/* the same key in two sections is fine */
	struct config *cfg = parse_ok("[mx]\nmax_size = 1m\n[mx.b]\nmax_size = 2m\n");
	config_free(cfg);
}

static void test_long_line(void **state)
{
	(void)state;
	/* 8192 bytes is the most a line may hold */
	char *text = xmalloc(3 * 8192);
	strcpy(text, "[mx]\nbanner = \"");
	size_t n = strlen(text);
	size_t prefix = strlen("banner = \"");
	memset(text + n, 'x', 8192 - prefix - 1);
	strcpy(text + n + 8192 - prefix - 1, "\"\n");
	struct config *cfg = parse_ok(text);
	config_free(cfg);

	strcpy(text, "[mx]\n\nbanner = ");
	n = strlen(text);
	memset(text + n, 'y', 8192);
	text[n + 8192] = '\0';
	parse_fails(text, "t.conf:3: line too long (more than 8192 bytes)");
	free(text);
}

static void test_quoted_values(void **state)
{
	(void)state;
	struct config *cfg = parse_ok("[mx]\n"
				      "banner = \"  spaced # not a comment  \"   # a comment\n"
				      "tag = \"say \\\"hi\\\" \\\\ \\d\"\n"
				      "hops = a#b c   # trailing comment\n");
	struct mx_conf c;
	bind_ok(cfg, "mx", &mx_set, &c);
	assert_string_equal(c.banner, "  spaced # not a comment  ");
	assert_string_equal(c.tag, "say \"hi\" \\ \\d");
	assert_int_equal(c.hops.n, 2);
	assert_string_equal(c.hops.v[0], "a#b");
	assert_string_equal(c.hops.v[1], "c");
	config_release(&mx_set, &c);
	config_free(cfg);

	cfg = parse_ok("[mx]\ntag = \"\"\nbanner = # only a comment\n");
	bind_ok(cfg, "mx", &mx_set, &c);
	assert_string_equal(c.tag, "");
	assert_string_equal(c.banner, "");
	config_release(&mx_set, &c);
	config_free(cfg);
}

static void test_parse_file(void **state)
{
	(void)state;
	struct config_error err = { "" };
	assert_null(config_parse_file("/nonexistent/rampart.conf", &err));
	assert_string_equal(err.msg, "/nonexistent/rampart.conf: cannot read: No such file or directory");
	assert_null(config_parse_file("/tmp", &err));
	assert_string_equal(err.msg, "/tmp: cannot read: Is a directory");

	char path[] = "/tmp/test_config_XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	const char *text = "[mx]\nmax_rcpts = 5\nmax_size = nope\n";
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	struct config *cfg = config_parse_file(path, &err);
	assert_non_null(cfg);
	assert_string_equal(config_path(cfg), path);
	struct mx_conf c;
	assert_false(config_bind(cfg, "mx", &mx_set, &c, &err));
	char want[256];
	snprintf(want, sizeof(want),
		 "%s:3: [mx] max_size: expected a size between 1k and 1g (e.g. 10m), got 'nope'", path);
	assert_string_equal(err.msg, want);
	config_free(cfg);

	/* a NUL byte inside the file */
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "[mx]\na = b\0c\n", 13), 13);
	close(fd);
	assert_null(config_parse_file(path, &err));
	snprintf(want, sizeof(want), "%s:2: NUL byte in line", path);
	assert_string_equal(err.msg, want);
	unlink(path);
}

/* ---- value types ------------------------------------------------------ */

static void test_bool(void **state)
{
	(void)state;
	struct mx_conf c = { 0 };
	char why[256];
	const char *yes[] = { "yes", "YES", "true", "True", "on", "ON", "1" };
	const char *no[] = { "no", "No", "false", "FALSE", "off", "Off", "0" };
	for (size_t i = 0; i < 7; i++) {
		c.greylist = false;
		assert_true(value("greylist", yes[i], &c, why, sizeof(why)));
		assert_true(c.greylist);
		assert_true(value("greylist", no[i], &c, why, sizeof(why)));
		assert_false(c.greylist);
	}
	c.greylist = true;
	assert_false(value("greylist", "maybe", &c, why, sizeof(why)));
	assert_string_equal(why, "expected yes or no (also true/false, on/off, 1/0), got 'maybe'");
	assert_true(c.greylist);   /* unchanged */
	assert_false(value("greylist", "", &c, why, sizeof(why)));
	assert_false(value("greylist", "2", &c, why, sizeof(why)));
	bind_fails("[mx]\n\ngreylist = nah\n",
		   "t.conf:3: [mx] greylist: expected yes or no (also true/false, on/off, 1/0), got 'nah'");
}

static void test_int(void **state)
{
	(void)state;
	struct mx_conf c = { 0 };
	char why[256];
	assert_true(value("max_rcpts", "1", &c, why, sizeof(why)));
	assert_int_equal(c.max_rcpts, 1);
	assert_true(value("max_rcpts", "1000", &c, why, sizeof(why)));
	assert_int_equal(c.max_rcpts, 1000);
	assert_true(value("max_rcpts", "+42", &c, why, sizeof(why)));
	assert_int_equal(c.max_rcpts, 42);
	const char *bad[] = { "0", "1001", "-1", "", "12x", "x", "1.5", "1e3", " 5", "0x10",
			      "99999999999999999999" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_false(value("max_rcpts", bad[i], &c, why, sizeof(why)));
		assert_int_equal(c.max_rcpts, 42);
	}
	assert_false(value("max_rcpts", "1001", &c, why, sizeof(why)));
	assert_string_equal(why, "expected an integer between 1 and 1000, got '1001'");

	/* unbounded: the whole long long range, and not one past it */
	assert_true(value("offset", "9223372036854775807", &c, why, sizeof(why)));
	assert_true(c.offset == LLONG_MAX);
	assert_true(value("offset", "-9223372036854775808", &c, why, sizeof(why)));
	assert_true(c.offset == LLONG_MIN);
	assert_false(value("offset", "9223372036854775808", &c, why, sizeof(why)));
	assert_string_equal(why, "expected an integer, got '9223372036854775808'");
	assert_false(value("offset", "-9223372036854775809", &c, why, sizeof(why)));
	assert_false(value("offset", "-", &c, why, sizeof(why)));

	bind_fails("[mx]\nmax_rcpts = 0\n", "t.conf:2: [mx] max_rcpts: expected an integer between 1 and 1000, got '0'");
}

static void test_number(void **state)
{
	(void)state;
	struct mx_conf c = { 0 };
	char why[256];
	const char *good[] = { "5", "-1.5", "+2.25", "100", "-100", "0.0" };
	const double want[] = { 5, -1.5, 2.25, 100, -100, 0 };
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		assert_true(value("score", good[i], &c, why, sizeof(why)));
		assert_true(c.score == want[i]);
	}
	const char *bad[] = { "", "x", "1.", ".5", "1e3", " 5", "5 ", "0x10", "nan", "inf", "100.5", "-101", "1,5" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_false(value("score", bad[i], &c, why, sizeof(why)));
		assert_true(c.score == 0);
	}
	assert_false(value("score", "101", &c, why, sizeof(why)));
	assert_string_equal(why, "expected a number between -100 and 100, got '101'");
	bind_fails("[mx]\nscore = high\n", "t.conf:2: [mx] score: expected a number between -100 and 100, got 'high'");
}

static void test_size(void **state)
{
	(void)state;
	struct mx_conf c = { 0 };
	char why[256];
	struct { const char *text; long long want; } ok[] = {
		{ "1024", 1024 }, { "1k", 1024 }, { "1K", 1024 }, { "1kb", 1024 }, { "1KB", 1024 },
		{ "10m", 10LL << 20 }, { "10M", 10LL << 20 }, { "10mb", 10LL << 20 },
		{ "10 MB", 10LL << 20 }, { "1g", 1LL << 30 }, { "1G", 1LL << 30 }, { "2048b", 2048 },
		{ "1536", 1536 },
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		assert_true(value("max_size", ok[i].text, &c, why, sizeof(why)));
		assert_true(c.max_size == ok[i].want);
	}
	const char *bad[] = { "1023", "1025m", "2g", "abc", "", "10x", "1.5m", "-1k", "k",
			      "10mbb", "1t", "99999999999999999999k" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_false(value("max_size", bad[i], &c, why, sizeof(why)));
		assert_true(c.max_size == 1536);
	}
	assert_false(value("max_size", "2g", &c, why, sizeof(why)));
	assert_string_equal(why, "expected a size between 1k and 1g (e.g. 10m), got '2g'");

	/* unbounded: overflow of the multiplication is refused */
	assert_true(value("spool_max", "8589934591g", &c, why, sizeof(why)));
	assert_true(c.spool_max == 8589934591LL << 30);
	assert_false(value("spool_max", "8589934592g", &c, why, sizeof(why)));
	assert_string_equal(why, "expected a size (e.g. 10m), got '8589934592g'");
	assert_true(value("spool_max", "9223372036854775807", &c, why, sizeof(why)));
	assert_true(c.spool_max == LLONG_MAX);
	assert_false(value("spool_max", "9223372036854775808", &c, why, sizeof(why)));

	bind_fails("[mx]\nmax_rcpts = 5\nmax_size = abc\n",
		   "t.conf:3: [mx] max_size: expected a size between 1k and 1g (e.g. 10m), got 'abc'");
}

static void test_time(void **state)
{
	(void)state;
	struct mx_conf c = { 0 };
	char why[256];
	struct { const char *text; long long want; } ok[] = {
		{ "30", 30000 }, { "30s", 30000 }, { "30S", 30000 }, { "1000ms", 1000 },
		{ "1500ms", 1500 }, { "2m", 120000 }, { "1h", 3600000 }, { "1 h", 3600000 },
		{ "60m", 3600000 }, { "1", 1000 },
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		assert_true(value("timeout", ok[i].text, &c, why, sizeof(why)));
		assert_true(c.timeout == ok[i].want);
	}
	const char *bad[] = { "999ms", "0", "2h", "1d", "1w", "soon", "", "1.5s", "5y", "-1s",
			      "99999999999999999w" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_false(value("timeout", bad[i], &c, why, sizeof(why)));
		assert_true(c.timeout == 1000);
	}
	assert_false(value("timeout", "soon", &c, why, sizeof(why)));
	assert_string_equal(why, "expected a duration between 1s and 1h (e.g. 5m), got 'soon'");

	/* days and weeks where the bounds allow them */
	static const struct param_def long_time = { .name = "ttl", .type = PT_TIME, .def = "5d",
						    .offset = offsetof(struct mx_conf, timeout) };
	assert_true(config_parse_value(&long_time, "1d", &c, why, sizeof(why)));
	assert_true(c.timeout == 86400000LL);
	assert_true(config_parse_value(&long_time, "2w", &c, why, sizeof(why)));
	assert_true(c.timeout == 2 * 604800000LL);
	assert_false(config_parse_value(&long_time, "99999999999999999w", &c, why, sizeof(why)));
	assert_string_equal(why, "expected a duration (e.g. 5d), got '99999999999999999w'");

	bind_fails("[mx]\ntimeout = 2h\n",
		   "t.conf:2: [mx] timeout: expected a duration between 1s and 1h (e.g. 5m), got '2h'");
}

static void test_string(void **state)
{
	(void)state;
	struct mx_conf c = { 0 };
	char why[256];
	assert_true(value("banner", "hello", &c, why, sizeof(why)));
	assert_string_equal(c.banner, "hello");
	assert_true(value("banner", "", &c, why, sizeof(why)));   /* min 0: empty allowed */
	assert_string_equal(c.banner, "");
	assert_false(value("banner", "bad\r\nMAIL FROM:<x>", &c, why, sizeof(why)));
	assert_string_equal(why, "control characters are not allowed");
	char big[202];
	memset(big, 'b', 201);
	big[201] = '\0';
	assert_false(value("banner", big, &c, why, sizeof(why)));
	assert_string_equal(why, "expected at most 200 characters, got 201");
	big[200] = '\0';
	assert_true(value("banner", big, &c, why, sizeof(why)));
	assert_int_equal(strlen(c.banner), 200);
	config_release(&mx_set, &c);
	assert_null(c.banner);
}

static void test_required(void **state)
{
	(void)state;
	struct req_conf r;
	struct config_error err = { "" };
	struct config *cfg = parse_ok("[store]\n");
	assert_false(config_bind(cfg, "store", &req_set, &r, &err));
	assert_string_equal(err.msg, "t.conf: [store] hostname: required but not set "
				     "(set it in [store] or RAMPART_STORE_HOSTNAME)");
	config_free(cfg);

	cfg = parse_ok("[store]\nhostname =\n");
	assert_false(config_bind(cfg, "store", &req_set, &r, &err));
	assert_string_equal(err.msg, "t.conf:2: [store] hostname: must not be empty");
	config_free(cfg);

	cfg = parse_ok("[store]\nhostname = mail.example\npeers = a\n");
	assert_false(config_bind(cfg, "store", &req_set, &r, &err));
	assert_string_equal(err.msg, "t.conf:3: [store] peers: expected at least 2 items, got 1");
	config_free(cfg);

	/* no file at all: the environment alone can satisfy it */
	assert_false(config_bind(NULL, "store", &req_set, &r, &err));
	assert_string_equal(err.msg, "[store] hostname: required but not set "
				     "(set it in [store] or RAMPART_STORE_HOSTNAME)");
	setenv("RAMPART_STORE_HOSTNAME", "mx1.example", 1);
	setenv("RAMPART_STORE_PEERS", "a,b", 1);
	assert_true(config_bind(NULL, "store", &req_set, &r, &err));
	assert_string_equal(r.hostname, "mx1.example");
	assert_int_equal(r.peers.n, 2);
	config_release(&req_set, &r);
	clear_env(NULL);
}

static void test_list(void **state)
{
	(void)state;
	struct mx_conf c = { 0 };
	char why[256];
	assert_true(value("hops", "a, b,c  d\t e,,", &c, why, sizeof(why)));
	assert_int_equal(c.hops.n, 5);
	const char *want[] = { "a", "b", "c", "d", "e" };
	for (size_t i = 0; i < 5; i++)
		assert_string_equal(c.hops.v[i], want[i]);
	assert_true(strlist_contains(&c.hops, "C"));
	assert_false(strlist_contains(&c.hops, "f"));
	assert_false(value("hops", " , ", &c, why, sizeof(why)));
	assert_string_equal(why, "expected at least 1 item, got 0");
	assert_false(value("hops", "1 2 3 4 5 6 7 8 9", &c, why, sizeof(why)));
	assert_string_equal(why, "expected at most 8 items, got 9");
	assert_int_equal(c.hops.n, 5);  /* unchanged */
	assert_true(value("hops", "[::1]:25", &c, why, sizeof(why)));
	assert_int_equal(c.hops.n, 1);
	assert_string_equal(c.hops.v[0], "[::1]:25");
	strlist_free(&c.hops);
	assert_int_equal(c.hops.n, 0);
	assert_null(c.hops.v);
	strlist_free(&c.hops);   /* twice is harmless */
	assert_false(strlist_contains(&c.hops, "x"));
	assert_false(strlist_contains(NULL, "x"));
}

static void test_enum(void **state)
{
	(void)state;
	struct mx_conf c = { 0 };
	char why[256];
	assert_true(value("mode", "queue", &c, why, sizeof(why)));
	assert_int_equal(c.mode, 0);
	assert_true(value("mode", "PROXY", &c, why, sizeof(why)));
	assert_int_equal(c.mode, 1);
	assert_false(value("mode", "relay", &c, why, sizeof(why)));
	assert_string_equal(why, "expected one of queue, proxy, got 'relay'");
	assert_false(value("mode", "que", &c, why, sizeof(why)));
	assert_false(value("mode", "queue|proxy", &c, why, sizeof(why)));
	assert_false(value("mode", "", &c, why, sizeof(why)));
	assert_int_equal(c.mode, 1);
	bind_fails("[mx]\nmode = relay\n", "t.conf:2: [mx] mode: expected one of queue, proxy, got 'relay'");
}

/* ---- binding ----------------------------------------------------------- */

static void test_defaults(void **state)
{
	(void)state;
	struct mx_conf c;
	struct config *cfg = parse_ok("[store]\nx = 1\n");   /* no [mx] at all */
	bind_ok(cfg, "mx", &mx_set, &c);
	assert_true(c.greylist);
	assert_int_equal(c.max_rcpts, 100);
	assert_int_equal(c.max_size, 10 * 1024 * 1024);
	assert_int_equal(c.timeout, 300000);
	assert_string_equal(c.banner, "Rampart ESMTP");
	assert_int_equal(c.hops.n, 1);
	assert_string_equal(c.hops.v[0], "127.0.0.1:10025");
	assert_int_equal(c.mode, 1);
	assert_int_equal(c.offset, -5);
	assert_int_equal(c.spool_max, 0);
	assert_string_equal(c.tag, "");
	config_release(&mx_set, &c);
	assert_null(c.banner);
	assert_null(c.tag);
	assert_null(c.hops.v);

	/* NULL config: defaults only */
	bind_ok(NULL, "mx", &mx_set, &c);
	assert_int_equal(c.max_rcpts, 100);
	config_release(&mx_set, &c);
	config_free(cfg);
}

static void test_file_replaces_default(void **state)
{
	(void)state;
	struct config *cfg = parse_ok("[mx]\nbanner = custom\nhops = x y z\nMAX_RCPTS = 3\n");
	struct mx_conf c;
	bind_ok(cfg, "mx", &mx_set, &c);
	assert_string_equal(c.banner, "custom");
	assert_int_equal(c.hops.n, 3);
	assert_int_equal(c.max_rcpts, 3);   /* keys match case-insensitively */
	config_release(&mx_set, &c);
	config_free(cfg);
}

static void test_unknown_key(void **state)
{
	(void)state;
	bind_fails("[mx]\nmax_size = 1m\nmax_sise = 2m\n",
		   "t.conf:3: [mx] unknown key 'max_sise' (did you mean 'max_size'?)");
	bind_fails("[mx]\nfrobnicate = 1\n",
		   "t.conf:2: [mx] unknown key 'frobnicate' (known: greylist, max_rcpts, max_size, "
		   "timeout, banner, hops, mode, offset, spool_max, tag, score)");
	/* keys in other sections are not checked by binding [mx] */
	struct config *cfg = parse_ok("[av]\nfrobnicate = 1\n[mx]\n");
	struct mx_conf c;
	bind_ok(cfg, "mx", &mx_set, &c);
	config_release(&mx_set, &c);
	config_free(cfg);
}

static void test_env_override(void **state)
{
	(void)state;
	struct config *cfg = parse_ok("[mx]\nmax_size = 20m\nbanner = from file\n"
				      "[mx.b-2]\nmode = queue\n");
	setenv("RAMPART_MX_MAX_SIZE", "30m", 1);
	setenv("RAMPART_MX_HOPS", "h1,h2", 1);
	setenv("RAMPART_MX_BANNER", "  kept as is  ", 1);
	struct mx_conf c;
	bind_ok(cfg, "mx", &mx_set, &c);
	assert_int_equal(c.max_size, 30 * 1024 * 1024);   /* env beats the file */
	assert_string_equal(c.banner, "  kept as is  ");
	assert_int_equal(c.hops.n, 2);
	assert_int_equal(c.timeout, 300000);              /* default untouched */
	config_release(&mx_set, &c);

	/* section "mx.b-2": '.' and '-' become '_' */
	setenv("RAMPART_MX_B_2_MODE", "proxy", 1);
	bind_ok(cfg, "mx.b-2", &mx_set, &c);
	assert_int_equal(c.mode, 1);
	assert_int_equal(c.max_size, 10 * 1024 * 1024);  /* [mx]'s env does not leak into mx.b-2 */
	config_release(&mx_set, &c);

	/* a bad environment value names the variable */
	setenv("RAMPART_MX_MAX_SIZE", "huge", 1);
	struct config_error err = { "" };
	assert_false(config_bind(cfg, "mx", &mx_set, &c, &err));
	assert_string_equal(err.msg, "environment RAMPART_MX_MAX_SIZE: expected a size between 1k "
				     "and 1g (e.g. 10m), got 'huge'");
	assert_null(c.banner);
	setenv("RAMPART_MX_MAX_SIZE", "1m", 1);
	setenv("RAMPART_MX_GREYLIST", "perhaps", 1);
	assert_false(config_bind(cfg, "mx", &mx_set, &c, &err));
	assert_string_equal(err.msg, "environment RAMPART_MX_GREYLIST: expected yes or no "
				     "(also true/false, on/off, 1/0), got 'perhaps'");
	config_free(cfg);
	clear_env(NULL);
}

static void test_file_error_beats_env(void **state)
{
	(void)state;
	/* a bad file value is reported even if the environment would override it */
	setenv("RAMPART_MX_MAX_RCPTS", "5", 1);
	bind_fails("[mx]\nmax_rcpts = lots\n",
		   "t.conf:2: [mx] max_rcpts: expected an integer between 1 and 1000, got 'lots'");
	clear_env(NULL);
}

static void test_parse_value_replaces(void **state)
{
	(void)state;
	/* setting again frees the old value (ASan would report a leak) */
	struct mx_conf c = { 0 };
	char why[128];
	for (int i = 0; i < 5; i++) {
		assert_true(value("banner", "one", &c, why, sizeof(why)));
		assert_true(value("hops", "a b c", &c, why, sizeof(why)));
	}
	/* a failed set keeps the previous value */
	assert_false(value("hops", "", &c, why, sizeof(why)));
	assert_int_equal(c.hops.n, 3);
	/* why may be absent */
	assert_false(value("max_size", "x", &c, NULL, 0));
	config_release(&mx_set, &c);
	assert_null(c.banner);
	assert_null(c.hops.v);
	config_release(&mx_set, &c);   /* twice is harmless */
}

static void test_long_value_in_error(void **state)
{
	(void)state;
	char text[512];
	char big[300];
	memset(big, '9', 299);
	big[299] = '\0';
	snprintf(text, sizeof(text), "[mx]\nmax_rcpts = %s\n", big);
	struct config *cfg = parse_ok(text);
	struct config_error err = { "" };
	struct mx_conf c;
	assert_false(config_bind(cfg, "mx", &mx_set, &c, &err));
	assert_non_null(strstr(err.msg, "t.conf:2: [mx] max_rcpts: expected an integer between 1 and 1000, got '999"));
	assert_non_null(strstr(err.msg, "...'"));
	assert_true(strlen(err.msg) < 200);
	config_free(cfg);
}

static void test_bad_default_panics(void **state)
{
	(void)state;
	static const struct param_def bad[] = {
		{ .name = "limit", .type = PT_SIZE, .def = "lots", .offset = 0 },
		PARAM_END,
	};
	static const struct param_set bad_set = { "x", "broken", bad, sizeof(long long) };
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		log_set_fd(null);
		long long v;
		struct config_error err;
		config_bind(NULL, "x", &bad_set, &v, &err);
		_exit(0);   /* not reached when it panics */
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGABRT);
}

/* ---- dump and doc ------------------------------------------------------ */

static char *capture_dump(const struct config *cfg, const char *section, const void *target)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	assert_non_null(f);
	config_dump(f, cfg, section, &mx_set, target);
	fclose(f);
	return text;
}

static void assert_same(const struct mx_conf *a, const struct mx_conf *b)
{
	assert_int_equal(a->greylist, b->greylist);
	assert_true(a->max_rcpts == b->max_rcpts);
	assert_true(a->max_size == b->max_size);
	assert_true(a->timeout == b->timeout);
	assert_string_equal(a->banner, b->banner);
	assert_int_equal(a->hops.n, b->hops.n);
	for (size_t i = 0; i < a->hops.n; i++)
		assert_string_equal(a->hops.v[i], b->hops.v[i]);
	assert_int_equal(a->mode, b->mode);
	assert_true(a->offset == b->offset);
	assert_true(a->spool_max == b->spool_max);
	assert_string_equal(a->tag, b->tag);
}

static void dump_roundtrip(const char *text, const char *env_size, const char **expect_lines)
{
	struct config *cfg = parse_ok(text);
	if (env_size)
		setenv("RAMPART_MX_MAX_SIZE", env_size, 1);
	struct mx_conf a, b;
	bind_ok(cfg, "mx", &mx_set, &a);
	char *dump = capture_dump(cfg, "mx", &a);
	for (const char **l = expect_lines; *l; l++)
		if (!strstr(dump, *l))
			fail_msg("dump lacks '%s':\n%s", *l, dump);
	clear_env(NULL);

	/* the dump, read back as a file, gives the same values */
	struct config_error err = { "" };
	struct config *again = config_parse_string("dump", dump, &err);
	if (!again)
		fail_msg("dump does not parse: %s\n%s", err.msg, dump);
	bind_ok(again, "mx", &mx_set, &b);
	assert_same(&a, &b);
	config_release(&mx_set, &a);
	config_release(&mx_set, &b);
	config_free(again);
	config_free(cfg);
	free(dump);
}

static void test_dump_reparses(void **state)
{
	(void)state;
	const char *lines1[] = {
		"[mx]\n", "greylist = no", "# t.conf:2\n", "max_rcpts = 100", "# default\n",
		"max_size = 20m", "# env RAMPART_MX_MAX_SIZE\n", "timeout = 1500ms", "hops = a b c",
		"mode = queue", "banner = \"  has # and \\\"quotes\\\" \\\\ \"", "offset = -5",
		"tag = \"\"", NULL,
	};
	dump_roundtrip("[mx]\ngreylist = off\ntimeout = 1500ms\nhops = a,b,,c\nmode = QUEUE\n"
		       "banner = \"  has # and \\\"quotes\\\" \\\\ \"\n",
		       "20480k", lines1);

	const char *lines2[] = {
		"max_size = 1536", "timeout = 1h", "spool_max = 8589934591g", "hops = \"#x y\"",
		"tag = \"a#b\"", "banner = \"\\\"q\"", NULL,
	};
	dump_roundtrip("[mx]\nmax_size = 1536\ntimeout = 3600s\nspool_max = 8589934591g\n"
		       "hops = \"#x,y\"\ntag = a#b\nbanner = \"\\\"q\"\n",
		       NULL, lines2);

	const char *lines3[] = { "timeout = 90s", "max_size = 1g", "spool_max = 9223372036854775807",
				 "offset = -9223372036854775808", NULL };
	dump_roundtrip("[mx]\ntimeout = 90\nmax_size = 1024m\nspool_max = 9223372036854775807\n"
		       "offset = -9223372036854775808\n",
		       NULL, lines3);
}

static void test_dump_format(void **state)
{
	(void)state;
	struct config *cfg = parse_ok("[mx]\nmax_rcpts = 7\n");
	struct mx_conf c;
	bind_ok(cfg, "mx", &mx_set, &c);
	char *dump = capture_dump(cfg, "mx", &c);
	/* header first, then one line per parameter, comments aligned */
	assert_memory_equal(dump, "[mx]\ngreylist = yes ", strlen("[mx]\ngreylist = yes "));
	int lines = 0;
	size_t col = 0;
	for (char *l = dump; *l; lines++) {
		char *nl = strchr(l, '\n');
		assert_non_null(nl);
		if (lines > 0) {
			char *hash = strstr(l, "   # ");
			assert_true(hash && hash < nl);
			if (col == 0)
				col = (size_t)(hash - l);
			assert_int_equal((size_t)(hash - l), col);
		}
		l = nl + 1;
	}
	assert_int_equal(lines, 12);
	assert_non_null(strstr(dump, "max_rcpts = 7 "));
	assert_non_null(strstr(dump, "score = 5 "));
	free(dump);
	config_release(&mx_set, &c);
	config_free(cfg);
}

static void test_doc(void **state)
{
	(void)state;
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	config_doc(f, &mx_set);
	config_doc(f, &req_set);
	fclose(f);
	const char *want[] = {
		"# [mx]: SMTP entry for Internet mail\n[mx]\n",
		"greylist = yes ", "# bool: greylist unknown triplets\n",
		"max_rcpts = 100 ", "# int, 1..1000: recipients per message\n",
		"max_size = 10m ", "# size, 1k..1g: largest message accepted\n",
		"timeout = 5m ", "# time, 1s..1h: idle timeout\n",
		"banner = Rampart ESMTP ", "# string, at most 200 characters: greeting text\n",
		"hops = 127.0.0.1:10025 ", "# list, at least 1 item, at most 8 items: next hops\n",
		"mode = proxy ", "# enum, one of queue|proxy: queue or proxy\n",
		"offset = -5 ", "# int: an unbounded integer\n",
		"# size: unbounded size, 0 = off\n",
		"tag = \"\" ", "# string: optional tag\n",
		"score = 5 ", "# number, -100..100: a decimal number\n",
		"hostname = \"\" ", "# string, required: required name\n",
		"# list, at least 2 items: two or more\n",
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		if (!strstr(text, want[i]))
			fail_msg("doc lacks '%s':\n%s", want[i], text);
	/* the doc of [mx] is itself a valid file that binds to the defaults */
	char *mx_part = strndup(text, (size_t)(strstr(text, "# [store]") - text));
	struct config *cfg = parse_ok(mx_part);
	struct mx_conf a, b;
	bind_ok(cfg, "mx", &mx_set, &a);
	bind_ok(NULL, "mx", &mx_set, &b);
	assert_same(&a, &b);
	config_release(&mx_set, &a);
	config_release(&mx_set, &b);
	config_free(cfg);
	free(mx_part);
	free(text);
}

/* ---- helpers ------------------------------------------------------------ */

static void test_section_stage(void **state)
{
	(void)state;
	char out[16];
	config_section_stage("mx.b", out, sizeof(out));
	assert_string_equal(out, "mx");
	config_section_stage("mx", out, sizeof(out));
	assert_string_equal(out, "mx");
	config_section_stage("store.a.b", out, sizeof(out));
	assert_string_equal(out, "store");
	config_section_stage("global", out, sizeof(out));
	assert_string_equal(out, "global");
	config_section_stage("averyveryverylongstage.x", out, 8);
	assert_string_equal(out, "averyve");
	memset(out, 'z', sizeof(out));
	config_section_stage("mx", out, 0);   /* nothing written */
	assert_int_equal(out[0], 'z');
}

static void test_reload_is_independent(void **state)
{
	(void)state;
	/* two configs live side by side; freeing the old one keeps the new */
	struct config *old = parse_ok("[mx]\nmax_rcpts = 1\n");
	struct config *fresh = parse_ok("[mx]\nmax_rcpts = 2\n");
	struct mx_conf c;
	bind_ok(old, "mx", &mx_set, &c);
	assert_int_equal(c.max_rcpts, 1);
	config_release(&mx_set, &c);
	config_free(old);
	bind_ok(fresh, "mx", &mx_set, &c);
	assert_int_equal(c.max_rcpts, 2);
	config_release(&mx_set, &c);
	config_free(fresh);
	config_free(NULL);
}

int main(void)
{
	log_set_level(LL_WARN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_structure),
		cmocka_unit_test(test_explicit_global_after_implicit),
		cmocka_unit_test(test_crlf_and_bom),
		cmocka_unit_test(test_syntax_errors),
		cmocka_unit_test(test_duplicates),
		cmocka_unit_test(test_long_line),
		cmocka_unit_test(test_quoted_values),
		cmocka_unit_test(test_parse_file),
		cmocka_unit_test(test_bool),
		cmocka_unit_test(test_int),
		cmocka_unit_test(test_number),
		cmocka_unit_test(test_size),
		cmocka_unit_test(test_time),
		cmocka_unit_test(test_string),
		cmocka_unit_test(test_required),
		cmocka_unit_test(test_list),
		cmocka_unit_test(test_enum),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_file_replaces_default),
		cmocka_unit_test(test_unknown_key),
		cmocka_unit_test(test_env_override),
		cmocka_unit_test(test_file_error_beats_env),
		cmocka_unit_test(test_parse_value_replaces),
		cmocka_unit_test(test_long_value_in_error),
		cmocka_unit_test(test_bad_default_panics),
		cmocka_unit_test(test_dump_reparses),
		cmocka_unit_test(test_dump_format),
		cmocka_unit_test(test_doc),
		cmocka_unit_test(test_section_stage),
		cmocka_unit_test(test_reload_is_independent),
	};
	return cmocka_run_group_tests(tests, clear_env, clear_env);
}
