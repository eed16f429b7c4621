/*
 * greylist.h — the keys and values of the greylisting check
 * (greylist.c), shared with `rampartctl greylist`, which lists, allows and
 * purges entries in the state store the stages use.
 *
 * Entries (every key under the store's key_prefix):
 *   gl:t:CLIENT|SENDER|RECIPIENT   a triplet: "FIRST PASSED SEEN" (wall-clock
 *                                  ms; PASSED 0 while it waits for its retry)
 *   gl:a:CLIENT                    auto-allow counter: triplets of CLIENT
 *                                  that passed (state_incr)
 *   gl:m:CLIENT                    manual allow (rampartctl greylist allow):
 *                                  "CREATED_MS", no expiry
 * CLIENT is one of
 *   net:192.0.2.0/24, net:2001:db8::/64   the client's network (ipv4_prefix,
 *                                  ipv6_prefix; IPv4-mapped IPv6 as IPv4)
 *   spf:example.org                the domain SPF authorised the client to
 *                                  send for (key_on_spf)
 *   ip:192.0.2.7                   one address (manual allows only)
 * SENDER and RECIPIENT are canonical (gl_canon_addr): lower case,
 * +subaddress removed; for the sender also BATV tags and SRS0 hash and
 * time stamp removed and VERP numbers replaced by '#'; "<>" for the null
 * sender; '%', '|', spaces and control characters %-encoded; over
 * GL_ADDR_MAX bytes replaced by "#" and 32 hex digits of their SHA-256.
 */
#ifndef RAMPART_GREYLIST_H
#define RAMPART_GREYLIST_H

#include <stdbool.h>
#include <stddef.h>

#include "../util/config.h"

#define GL_TRIPLET "gl:t:"
#define GL_AUTO    "gl:a:"
#define GL_MANUAL  "gl:m:"
#define GL_ADDR_MAX 100         /* canonical address bytes kept as they are */
#define GL_CLIENT_MAX 300       /* a client key, with its NUL */

/* [check.greylist] */
struct greylist_params {
	long long delay;            /* ms */
	long long retry_window;     /* ms */
	long long lifetime;         /* ms */
	long long auto_allow_after; /* 0: never */
	long long ipv4_prefix;
	long long ipv6_prefix;
	bool key_on_spf;
	bool skip_dnswl;
	char *subaddress_separator;
	int failure_mode;           /* 0 tempfail, 1 continue */
};

extern const struct param_set greylist_params_set;

/* Client keys; false if there is nothing to key on. */
bool gl_net_key(const char *ip, const struct greylist_params *p, char *out, size_t outlen);
bool gl_ip_key(const char *ip, char *out, size_t outlen);
bool gl_domain_key(const char *domain, char *out, size_t outlen);

/* The canonical form of an envelope address (sender: also BATV, SRS0,
 * VERP numbers).  seps: the subaddress separators (NULL or "": none). */
void gl_canon_addr(const char *addr, bool sender, const char *seps, char *out, size_t outlen);

/* A triplet's value. */
struct gl_triplet {
	long long first_ms;         /* first seen */
	long long passed_ms;        /* when it passed; 0: waiting for its retry */
	long long seen_ms;          /* last written (the lifetime is renewed then) */
};
bool gl_triplet_parse(const char *value, struct gl_triplet *t);
void gl_triplet_format(const struct gl_triplet *t, char *out, size_t outlen);

#endif
