/*
 * test_buf.c — growable buffers, pools and allocators.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "util/alloc.h"
#include "util/buf.h"

static void test_append_binary(void **state)
{
	(void)state;
	struct buf b = BUF_INIT;
	assert_string_equal(buf_cstr(&b), "");
	assert_true(buf_append(&b, "a\0b", 3));
	assert_int_equal(b.len, 3);
	assert_memory_equal(b.data, "a\0b", 3);
	assert_int_equal(b.data[3], '\0');
	for (int i = 0; i < 10000; i++)
		buf_putc(&b, 'x');
	assert_int_equal(b.len, 10003);
	buf_consume(&b, 3);
	assert_int_equal(b.len, 10000);
	assert_int_equal(b.data[0], 'x');
	buf_truncate(&b, 2);
	assert_string_equal(buf_cstr(&b), "xx");
	buf_free(&b);
}

static void test_printf_grows(void **state)
{
	(void)state;
	struct buf b = BUF_INIT;
	char big[1000];
	memset(big, 'q', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_true(buf_printf(&b, "<%s|%d>", big, 42));
	assert_int_equal(b.len, 999 + 5);
	assert_memory_equal(b.data + 1000, "|42>", 4);
	buf_free(&b);
}

static void test_limit_sets_overflow(void **state)
{
	(void)state;
	struct buf b = BUF_INIT;
	buf_set_limit(&b, 10);
	assert_true(buf_puts(&b, "0123456789"));
	assert_false(b.overflow);
	assert_false(buf_putc(&b, 'x'));
	assert_true(b.overflow);
	assert_int_equal(b.len, 10);
	buf_reset(&b);
	assert_false(b.overflow);
	assert_int_equal(b.len, 0);
	assert_false(buf_printf(&b, "%s", "this is longer than ten"));
	assert_true(b.overflow);
	buf_free(&b);
}

static void test_json_escape(void **state)
{
	(void)state;
	struct buf b = BUF_INIT;
	const char in[] = "a\"b\\c\n\x01\xc3\xa9\xff";
	buf_json_escape(&b, in, sizeof(in) - 1);
	assert_string_equal(buf_cstr(&b), "a\\\"b\\\\c\\n\\u0001\xc3\xa9\\u00ff");
	buf_free(&b);
}

static void test_steal(void **state)
{
	(void)state;
	struct buf b = BUF_INIT;
	buf_puts(&b, "hello");
	size_t n;
	char *p = buf_steal(&b, &n);
	assert_int_equal(n, 5);
	assert_string_equal(p, "hello");
	assert_null(b.data);
	free(p);
}

static void test_pool(void **state)
{
	(void)state;
	struct pool *p = pool_new(64);
	char *a = pool_strdup(p, "alpha");
	char *big = pool_alloc(p, 1000);   /* larger than a chunk */
	char *c = pool_asprintf(p, "%s-%d", a, 7);
	memset(big, 1, 1000);
	assert_string_equal(a, "alpha");
	assert_string_equal(c, "alpha-7");
	assert_int_equal(((uintptr_t)big) % 16, 0);
	assert_true(pool_used(p) >= 1000);
	assert_string_equal(pool_strndup(p, "abcdef", 3), "abc");
	pool_free(p);
	pool_free(NULL);
}

static void test_xasprintf(void **state)
{
	(void)state;
	char *s = xasprintf("%d-%s", 12, "x");
	assert_string_equal(s, "12-x");
	free(s);
	char *d = xstrndup("abcdef", 2);
	assert_string_equal(d, "ab");
	free(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_append_binary),
		cmocka_unit_test(test_printf_grows),
		cmocka_unit_test(test_limit_sets_overflow),
		cmocka_unit_test(test_json_escape),
		cmocka_unit_test(test_steal),
		cmocka_unit_test(test_pool),
		cmocka_unit_test(test_xasprintf),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
