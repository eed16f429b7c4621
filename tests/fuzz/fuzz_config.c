/*
 * fuzz_config.c — libFuzzer target: rampart.conf as an administrator may
 * write it, typos and all.  The input is parsed as a configuration file;
 * each section is bound to the table it would meet ([global], [state],
 * [check.spam], [check.greylist], [check.ratelimit], and the server
 * parameters every stage has for any other section), then printed as
 * `rampartctl config show` does, then released.  A file that is refused
 * must be refused with a message naming the file and line.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "checks/greylist.h"
#include "checks/ratelimit.h"
#include "checks/spam.h"
#include "mail/stage.h"
#include "mail/state.h"
#include "util/config.h"

static FILE *devnull;
static const struct param_set *server_set;

static const struct param_set *set_for(const char *section)
{
	if (strcmp(section, "global") == 0)
		return &global_param_set;
	if (strcmp(section, "state") == 0)
		return &state_param_set;
	if (strcmp(section, "check.spam") == 0)
		return &spam_params_set;
	if (strcmp(section, "check.greylist") == 0)
		return &greylist_params_set;
	if (strcmp(section, "check.ratelimit") == 0)
		return &ratelimit_params_set;
	return server_set;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!devnull) {
		fuzz_quiet_logs();
		devnull = fopen("/dev/null", "w");
		static const struct stage_def def = {
			.name = "fuzz", .doc = "fuzz", .config_size = sizeof(struct server_config),
		};
		server_set = stage_param_set(&def);
	}
	char *text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	struct config_error err = { "" };
	struct config *cfg = config_parse_string("fuzz.conf", text, &err);
	if (!cfg) {
		if (strncmp(err.msg, "fuzz.conf", 9) != 0)
			abort();        /* a refusal that does not name the file */
		free(text);
		return 0;
	}
	size_t n = 0;
	const char **sections = config_sections(cfg, &n);
	for (size_t i = 0; i < n && i < 8; i++) {
		const struct param_set *set = set_for(sections[i]);
		void *target = calloc(1, set->size);
		if (!target)
			abort();
		memset(&err, 0, sizeof(err));
		if (config_bind(cfg, sections[i], set, target, &err)) {
			config_dump(devnull, cfg, sections[i], set, target);
			config_release(set, target);
		} else if (err.msg[0] == '\0') {
			abort();        /* refused without a reason */
		}
		free(target);
	}
	config_free(cfg);
	free(text);
	return 0;
}
