/*
 * test_log.c — the JSON-lines logger: fields, escaping, levels.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/log.h"

static void render(struct buf *out, enum log_level lv, const char *sid, const char *qid, const char *ev,
		   const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_format(out, lv, sid, qid, ev, fmt, ap);
	va_end(ap);
}

static void test_fields(void **state)
{
	(void)state;
	log_init("mx", "mx.b");
	struct buf b = BUF_INIT;
	render(&b, LL_INFO, "S1", "Q1", "smtp.mail", "from=%s size=%lld n=%zu ok=%d ratio=%f", "a\"b@x", -5LL,
	       (size_t)7, 1, 0.5);
	const char *s = buf_cstr(&b);
	assert_non_null(strstr(s, "\"level\":\"info\""));
	assert_non_null(strstr(s, "\"stage\":\"mx\",\"instance\":\"mx.b\""));
	assert_non_null(strstr(s, "\"session\":\"S1\",\"queue_id\":\"Q1\",\"event\":\"smtp.mail\""));
	assert_non_null(strstr(s, "\"from\":\"a\\\"b@x\",\"size\":-5,\"n\":7,\"ok\":1,\"ratio\":0.5}"));
	assert_int_equal(s[b.len - 1], '\n');
	assert_int_equal(s[0], '{');
	buf_free(&b);
}

static void test_null_and_precision(void **state)
{
	(void)state;
	struct buf b = BUF_INIT;
	render(&b, LL_WARN, NULL, NULL, "x", "a=%s b=%.*s c=%u", (char *)NULL, 3, "abcdef", 9u);
	const char *s = buf_cstr(&b);
	assert_null(strstr(s, "session"));
	assert_non_null(strstr(s, "\"a\":null,\"b\":\"abc\",\"c\":9}"));
	buf_free(&b);
}

static void test_levels_and_sink(void **state)
{
	(void)state;
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	log_set_fd(fds[1]);
	log_set_level(LL_WARN);
	log_info(NULL, NULL, "hidden", "k=%d", 1);
	log_warn("S", NULL, "shown", "k=%d", 2);
	log_set_fd(2);
	close(fds[1]);
	char rd[1024] = "";
	ssize_t n = read(fds[0], rd, sizeof(rd) - 1);
	close(fds[0]);
	assert_true(n > 0);
	assert_null(strstr(rd, "hidden"));
	assert_non_null(strstr(rd, "\"event\":\"shown\",\"k\":2"));
	enum log_level lv;
	assert_true(log_level_parse("debug", &lv));
	assert_int_equal(lv, LL_DEBUG);
	assert_false(log_level_parse("loud", &lv));
	log_set_level(LL_INFO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fields),
		cmocka_unit_test(test_null_and_precision),
		cmocka_unit_test(test_levels_and_sink),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
