/*
 * dnslist.h — the sites of DNS lists (DNSBL, DNSWL, URIBL), as Postfix's
 * postscreen_dnsbl_sites writes them:
 *     DOMAIN[=FILTER][*WEIGHT]
 * FILTER is an IPv4 address whose octets may be a number, "[a..b]" or a
 * list "[a;b;c]" (a list item may itself be a range): 127.0.0.2,
 * 127.0.0.[2..11], 127.0.[0..255].[1;3].  No filter: any 127.x answer.
 * WEIGHT defaults to 1 (negative: an allow list).  The client DNSBL check
 * and the anti-spam score share them.
 */
#ifndef RAMPART_DNSLIST_H
#define RAMPART_DNSLIST_H

#include <stdbool.h>
#include <stddef.h>

#define DNSLIST_RANGES 8               /* per octet of a filter */

struct dnslist_octet {
	unsigned lo[DNSLIST_RANGES], hi[DNSLIST_RANGES];
	size_t n;
};

struct dnslist_site {
	char domain[256];
	bool filtered;
	struct dnslist_octet oct[4];
	int weight;
};

/* One entry; false when it is not DOMAIN[=FILTER][*WEIGHT]. */
bool dnslist_parse(const char *entry, struct dnslist_site *s);
/* Does an A answer (text) count for the site? */
bool dnslist_pass(const struct dnslist_site *s, const char *addr);
/* "4.3.2.1" for 1.2.3.4; nibbles for IPv6 (IPv4-mapped counts as IPv4). */
bool dnslist_reversed(const char *ip, char *out, size_t len);

#endif
