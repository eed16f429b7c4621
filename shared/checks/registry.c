/*
 * registry.c — the list of every check, by name.  A stage's "checks"
 * parameter names checks from this list, in the order they run.
 */
#include "check.h"

#include <string.h>

extern const struct check_def check_relay;
extern const struct check_def check_limits;
extern const struct check_def check_users;
extern const struct check_def check_lists;
extern const struct check_def check_dnsbl;
extern const struct check_def check_headers;
extern const struct check_def check_hygiene;
extern const struct check_def check_badrcpt;
extern const struct check_def check_ratelimit;
extern const struct check_def check_traps;
extern const struct check_def check_spf;
extern const struct check_def check_greylist;
extern const struct check_def check_dkim;
extern const struct check_def check_sender_login;
extern const struct check_def check_quota;
extern const struct check_def check_clamav;
extern const struct check_def check_spam;

const struct check_def *const check_registry[] = {
	&check_relay,
	&check_limits,
	&check_users,
	&check_lists,
	&check_dnsbl,
	&check_headers,
	&check_hygiene,
	&check_badrcpt,
	&check_ratelimit,
	&check_traps,
	&check_spf,
	&check_greylist,
	&check_dkim,
	&check_sender_login,
	&check_quota,
	&check_clamav,
	&check_spam,
	NULL
};

const struct check_def *check_find(const char *name)
{
	for (size_t i = 0; check_registry[i]; i++)
		if (strcmp(check_registry[i]->name, name) == 0)
			return check_registry[i];
	return NULL;
}
