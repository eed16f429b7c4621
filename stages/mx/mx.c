/*
 * rampart-mx — stage A, the only entry point for Internet mail.
 *
 * Accepts mail for the site's local domains (no open relay), enforces the
 * size and recipient limits, adds a Received header and hands the message
 * to the next stage in queue or proxy mode.  Every defence is a check of
 * the chain named by the "checks" parameter (DESIGN.md §2).
 * It may reach: its listen sockets (port 25), its spool, its next hops.
 */
#include "mail/stage.h"

#include <stddef.h>

struct mx_config {
	struct server_config srv;
};

const struct stage_def mx_stage = {
	.name = "mx",
	.doc = "stage A: Internet mail in (port 25)",
	.params = NULL,
	.config_size = sizeof(struct mx_config),
	.lmtp = false,
	/* The defences that need no site data; add users (recipient
	 * validation, with the store's list), and the stateful ones. */
	.default_checks = "lists hygiene dnsbl spf badrcpt relay limits headers dkim",
};

