/*
 * test_sasl.c — decoding SMTP AUTH responses (shared/mail/sasl): base64
 * strictly, PLAIN's three fields and LOGIN's, with their bounds.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "mail/sasl.h"

static void test_decode(void **state)
{
	(void)state;
	unsigned char out[64];
	size_t n;
	assert_true(sasl_decode("AGFsaWNlAHNlY3JldA==", out, sizeof(out), &n));   /* \0alice\0secret */
	assert_int_equal(n, 13);
	assert_memory_equal(out, "\0alice\0secret", 13);
	assert_true(sasl_decode("YWxpY2U=", out, sizeof(out), &n));
	assert_int_equal(n, 5);
	assert_string_equal((char *)out, "alice");
	assert_true(sasl_decode("YWJj", out, sizeof(out), &n));
	assert_string_equal((char *)out, "abc");
	assert_true(sasl_decode("", out, sizeof(out), &n));
	assert_int_equal(n, 0);
	/* not base64: wrong length, foreign characters, blanks, '=' inside */
	assert_false(sasl_decode("YWxpY2", out, sizeof(out), &n));
	assert_false(sasl_decode("YW*pY2U=", out, sizeof(out), &n));
	assert_false(sasl_decode("YWxp Y2U=", out, sizeof(out), &n));
	assert_false(sasl_decode("YW=pY2U=", out, sizeof(out), &n));
	assert_false(sasl_decode("YWxpY2U=YWJj", out, sizeof(out), &n));
	assert_false(sasl_decode("Y===", out, sizeof(out), &n));
	/* bounded: what would not fit is refused, never written past */
	unsigned char small[4] = { 0, 0, 0, 0x55 };
	assert_false(sasl_decode("YWJjZGVm", small, 3, &n));
	assert_int_equal(small[3], 0x55);
}

static void test_plain(void **state)
{
	(void)state;
	struct sasl_creds c;
	const char *why = NULL;
	assert_true(sasl_plain((const unsigned char *)"\0alice@example.test\0s3cret", 26, &c, &why));
	assert_string_equal(c.authzid, "");
	assert_string_equal(c.user, "alice@example.test");
	assert_string_equal(c.pass, "s3cret");
	assert_true(sasl_plain((const unsigned char *)"bob\0bob\0pw", 10, &c, &why));
	assert_string_equal(c.authzid, "bob");
	sasl_creds_wipe(&c);
	assert_string_equal(c.pass, "");
	/* malformed */
	assert_false(sasl_plain((const unsigned char *)"alice\0secret", 12, &c, &why));
	assert_non_null(strstr(why, "NUL"));
	assert_false(sasl_plain((const unsigned char *)"\0\0secret", 8, &c, &why));
	assert_string_equal(why, "empty user name");
	assert_false(sasl_plain((const unsigned char *)"\0alice\0", 7, &c, &why));
	assert_string_equal(why, "empty password");
	assert_false(sasl_plain((const unsigned char *)"\0alice\0pa\0ss", 12, &c, &why));
	assert_string_equal(why, "bad password");
	assert_string_equal(c.user, "");            /* wiped on failure */
	assert_false(sasl_plain((const unsigned char *)"\0al\r\nice\0pw", 11, &c, &why));
	assert_string_equal(why, "bad user name");
	assert_false(sasl_plain((const unsigned char *)"\0al\x01ice\0pw", 10, &c, &why));
	assert_string_equal(why, "bad user name");
	assert_true(sasl_plain((const unsigned char *)"\0alice\0p\tw", 10, &c, &why));
	unsigned char longp[2 + 5 + SASL_FIELD_MAX];
	memset(longp, 'x', sizeof(longp));
	memcpy(longp, "\0alice\0", 7);
	assert_false(sasl_plain(longp, sizeof(longp), &c, &why));
	assert_string_equal(why, "bad password");
}

static void test_login_field(void **state)
{
	(void)state;
	char out[SASL_FIELD_MAX];
	const char *why = NULL;
	assert_true(sasl_login_field((const unsigned char *)"alice", 5, out, true, &why));
	assert_string_equal(out, "alice");
	assert_false(sasl_login_field((const unsigned char *)"", 0, out, true, &why));
	assert_false(sasl_login_field((const unsigned char *)"a\0b", 3, out, true, &why));
	/* a password may hold a TAB, a user name may not */
	assert_true(sasl_login_field((const unsigned char *)"pa\tss", 5, out, false, &why));
	assert_false(sasl_login_field((const unsigned char *)"al\tice", 6, out, true, &why));
	assert_string_equal(why, "bad user name");
	unsigned char big[SASL_FIELD_MAX];
	memset(big, 'y', sizeof(big));
	assert_false(sasl_login_field(big, sizeof(big), out, true, &why));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_decode),
		cmocka_unit_test(test_plain),
		cmocka_unit_test(test_login_field),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
