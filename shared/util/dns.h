/*
 * dns.h — the one resolver of a process, asynchronous, on libunbound.
 *
 * All lookups (MX, A/AAAA, PTR, TXT, TLSA ...) go through it.  Resolution
 * is driven by the event loop (ub_fd registered with libevent).  A
 * dns_local_data file of resource records ("name TTL IN TYPE data", one
 * per line, '#' comments) is loaded as unbound local-data, so a lab or a
 * test needs no DNS server; with local_only set, names not found in the
 * local data answer NXDOMAIN instead of going to the network.  (A CNAME
 * in the local data answers CNAME queries only: unbound does not follow it
 * there, an A query for the alias is NODATA.)
 */
#ifndef RAMPART_DNS_H
#define RAMPART_DNS_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct dns;

struct dns_opts {
	const char *local_data;     /* path or NULL; its names are absolute, final dot or not */
	bool local_only;            /* never query the network */
	const char *resolv_conf;    /* NULL: /etc/resolv.conf (unless local_only) */
	long long timeout_ms;       /* per query (default 10 s) */
};

enum dns_status { DNS_OK, DNS_NXDOMAIN, DNS_NODATA, DNS_TEMPFAIL, DNS_BOGUS };

struct dns_rr {
	int type;                   /* 1 A, 28 AAAA, 15 MX, 16 TXT, 12 PTR, ... */
	unsigned ttl;
	int pref;                   /* MX preference */
	char *text;                 /* A/AAAA: address; MX/PTR/CNAME: name without trailing dot; TXT: strings joined */
	size_t len;                 /* strlen(text), unless a TXT string holds a NUL byte */
};
/* More on text: the root name (null MX, RFC 7505) is "."; special bytes in
 * a label are escaped as in zone files (\. \\ \DDD); TXT strings are
 * joined with nothing between them (RFC 7208 3.3); TLSA is "3 1 1 <hex>";
 * other types are in the generic form "\# <length> <hex>" (RFC 3597). */

struct dns_result {
	enum dns_status status;
	bool secure;                /* DNSSEC validated */
	size_t n;
	struct dns_rr *rr;
};

typedef void (*dns_cb)(void *arg, const struct dns_result *r);

struct dns *dns_new(struct event_base *base, const struct dns_opts *opts, char *why, size_t whylen);
/* As dns_new, but forwarding to the given servers ("192.0.2.53",
 * "127.0.0.1@5353", "2001:db8::53"; a NULL-terminated list) instead of
 * reading resolv_conf: a lab's DNS server on a port of its own, a test.
 * With local_only they are set but never queried. */
struct dns *dns_new_fwd(struct event_base *base, const struct dns_opts *opts,
			const char *const *forwarders, char *why, size_t whylen);
void dns_free(struct dns *d);
/* Query name for type (1, 28, 15, 16, 12 ...).  cb runs later from the
 * event loop (never inside dns_query).  Returns false if the query could
 * not be started (cb is then not called). */
bool dns_query(struct dns *d, const char *name, int type, dns_cb cb, void *arg);
/* dns_free() cancels the queries still running: their callbacks are not
 * called.  A callback may start queries, and may dns_free() the resolver. */
/* Cancel every query started with this arg (answered but not yet
 * delivered ones too): their callbacks are not called.  For a caller that
 * stops waiting (its own deadline) or goes away before the answers. */
void dns_cancel(struct dns *d, void *arg);
/* The same query, waited for: for worker threads (libspf2's resolver
 * hook).  The answer is the one dns_query() would give (same local data,
 * local_only, decoding), in out (release it with dns_result_free()); a
 * query not answered within timeout_ms (<= 0 or more than the resolver's
 * timeout: the resolver's) is DNS_TEMPFAIL.  The answer travels through
 * the event loop, which must therefore be running on its own thread (the
 * one that called dns_new): called on that thread, it would wait for
 * itself, so it answers DNS_TEMPFAIL at once and returns false; false too
 * if the query could not be started.  Every thread that may call it must
 * have stopped before dns_free(). */
bool dns_query_wait(struct dns *d, const char *name, int type, long long timeout_ms,
		    struct dns_result *out);
void dns_result_free(struct dns_result *r);
/* Reverse name of an IPv4/IPv6 address ("4.3.2.1.in-addr.arpa"); false if not an IP. */
bool dns_reverse_name(const char *ip, char *out, size_t outlen);
const char *dns_status_name(enum dns_status s);

#endif
