/*
 * rampart-av — stage C: every message, from the Internet (the MX) or from
 * the site's users (submission), is scanned for viruses before anything
 * else spends time on it.  The scan is the check "clamav"
 * (shared/checks/clamav.c), so a milter can use it too; what happens to
 * an infected message is its policy.  Run it in proxy mode to have a
 * rejection reach the original client at SMTP time.
 * It may reach: its listen sockets, its spool (quarantine/), the
 * signature databases, its next hops.
 */
#include "mail/stage.h"

#include <stddef.h>

struct av_config {
	struct server_config srv;
};

const struct stage_def av_stage = {
	.name = "av",
	.doc = "stage C: antivirus (libclamav) between the MX or submission and the next stage",
	.params = NULL,
	.config_size = sizeof(struct av_config),
	.lmtp = false,
	.default_checks = "limits clamav",
};
