/*
 * fuzz_smtp_args.c — libFuzzer target: what a client puts in a command's
 * arguments.  The MAIL and RCPT paths with their parameters (null path
 * allowed or not), the domain check and normalisation, xtext (RFC 3461),
 * and AUTH's base64 responses with PLAIN and LOGIN.  Besides the
 * sanitizers it checks every output bound and that an accepted path is
 * well formed (its domain inside it, no more parameters than the bound).
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "mail/address.h"
#include "mail/sasl.h"

static void path(const char *arg, bool allow_null)
{
	struct smtp_path p;
	char why[128];
	memset(why, 'x', sizeof(why));
	why[sizeof(why) - 1] = '\0';
	enum addr_error e = smtp_parse_path(arg, allow_null, &p, why, sizeof(why));
	if (strlen(why) >= sizeof(why))
		abort();
	if (e != ADDR_OK)
		return;
	size_t alen = strlen(p.addr);
	if (alen > ADDR_MAX || p.nparams > SMTP_PARAMS_MAX)
		abort();
	if (!allow_null && alen == 0)
		abort();
	if (p.domain && (p.domain <= p.addr || p.domain > p.addr + alen || p.domain[-1] != '@'))
		abort();
	for (size_t i = 0; i < p.nparams; i++) {
		if (strlen(p.params[i].key) >= sizeof(p.params[i].key) ||
		    strlen(p.params[i].value) >= sizeof(p.params[i].value))
			abort();
		if (smtp_path_param(&p, p.params[i].key) == NULL)
			abort();
		char x[512];
		(void)xtext_decode(p.params[i].value, x, sizeof(x));
	}
	if (p.domain)
		(void)smtp_domain_valid(p.domain);
	smtp_addr_normalize(p.addr);
	if (strlen(p.addr) != alen)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_quiet_logs();
	char *s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';

	path(s, true);
	path(s, false);
	(void)smtp_domain_valid(s);
	char x[64];
	if (xtext_decode(s, x, sizeof(x)) && strlen(x) >= sizeof(x))
		abort();

	unsigned char dec[1024];
	size_t dlen = 0;
	if (sasl_decode(s, dec, sizeof(dec), &dlen)) {
		if (dlen >= sizeof(dec))
			abort();
		struct sasl_creds c;
		const char *why = NULL;
		if (sasl_plain(dec, dlen, &c, &why)) {
			if (!c.user[0] || !c.pass[0])
				abort();
		} else if (!why) {
			abort();
		}
		sasl_creds_wipe(&c);
		char field[SASL_FIELD_MAX];
		why = NULL;
		if (!sasl_login_field(dec, dlen, field, true, &why) && !why)
			abort();
		(void)sasl_login_field(dec, dlen, field, false, &why);
	}
	/* the raw bytes as a PLAIN message too (a NUL-separated triple) */
	struct sasl_creds c;
	const char *why = NULL;
	(void)sasl_plain(data, size, &c, &why);
	sasl_creds_wipe(&c);
	free(s);
	return 0;
}
