/*
 * route.h — next hops of the outgoing stage: a recipient domain (or a
 * configured smarthost list) turned into the ordered list of addresses to
 * try, through the shared resolver (util/dns.h).
 *
 * MX routing (RFC 5321 5.1): MX records sorted by preference, hosts of
 * equal preference shuffled (load spreading), each host resolved to its A
 * and AAAA addresses (IPv4 first unless configured otherwise).  No MX: the
 * domain itself is the host (implicit MX).  A sole MX "." is a null MX
 * (RFC 7505): 556 5.1.10.  A domain that is an address literal
 * ("[192.0.2.1]", "[IPv6:2001:db8::1]") needs no lookup.  MX hosts that do
 * not resolve are skipped.  The module keeps no cache and no state between
 * lookups; any number of lookups may run at once.
 */
#ifndef RAMPART_ROUTE_H
#define RAMPART_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct dns;
struct endpoint;        /* util/net.h */
struct strlist;         /* util/config.h */

#define ROUTE_MAX_HOPS_DEFAULT 20

struct route_hop {
	char host[256];         /* MX host, smarthost, or the domain (implicit MX / literal) */
	char addr[64];          /* IP literal to connect to, no brackets */
	int port;
	int pref;               /* MX preference; 0 implicit/literal; list index for smarthosts */
	bool secure;            /* every record that led here was DNSSEC-validated (for DANE) */
};

enum route_via { ROUTE_VIA_MX, ROUTE_VIA_IMPLICIT_MX, ROUTE_VIA_LITERAL, ROUTE_VIA_SMARTHOST };

struct route_result {
	int code;               /* 0: ok; else SMTP-style: 4xx temporary, 5xx permanent */
	char enh[16];           /* "5.1.10" null MX, "5.1.2" no such domain, "4.4.3" DNS failure ... */
	char text[256];         /* why, naming the domain */
	enum route_via via;
	unsigned ttl;           /* smallest TTL of the records used; 0 if none (how long to cache) */
	size_t n;
	struct route_hop *hops; /* in the order to try (n == 0 on failure) */
};

/* r is valid only during the callback; keep a copy with route_result_copy(). */
typedef void (*route_cb)(void *arg, const struct route_result *r);

enum route_family {
	ROUTE_IPV4_FIRST = 0,   /* per host: A addresses, then AAAA (default) */
	ROUTE_IPV6_FIRST,
	ROUTE_IPV4_ONLY,
	ROUTE_IPV6_ONLY,
};

struct route_opts {
	enum route_family family;
	size_t max_hops;                /* 0: ROUTE_MAX_HOPS_DEFAULT; also bounds the MX hosts resolved */
	const struct strlist *self_names; /* our own host names: an MX naming one of them
					 * drops every MX not better than it (RFC 5321 5.1);
					 * none left: 554 5.4.6.  NULL: no check.  Copied. */
	const char *log_id;             /* queue or session id on log lines; copied */
	unsigned *live;                 /* if set: +1 while a lookup exists, cancelled ones
					 * included, until its memory is freed */
};

struct route_lookup;

/*
 * Route mail for domain (a final dot is ignored; IDNs must already be
 * A-labels) to port (<= 0: 25).  opts may be NULL.  cb runs exactly once,
 * from the event loop (never inside this call), unless the lookup is
 * cancelled first; the lookup is freed when cb returns.  Never NULL.
 *
 * Failures: 556 5.1.10 null MX; 550 5.1.2 the domain does not exist, is
 * not a valid domain, or has neither MX nor address; 451 4.4.3 DNS
 * temporary failure (SERVFAIL, timeout, DNSSEC bogus) of the MX lookup, or
 * of some host when no host resolved; 550 5.4.4 no MX host has an address
 * (or none of a usable family); 554 5.4.6 the best MX is ourselves.
 */
struct route_lookup *route_lookup(struct event_base *base, struct dns *dns, const char *domain,
				  int port, const struct route_opts *opts, route_cb cb, void *arg);

/*
 * Smarthost routing: no MX lookup; the endpoints ("host:port", parsed with
 * endpoint_parse) are tried in the given order, each host name resolved to
 * its addresses (IP literals, bracketed or not, need no lookup).  Every
 * failure is temporary (a broken smarthost setup must not bounce mail):
 * 451 4.4.3 DNS failure, 451 4.4.4 no smarthost resolves, 451 4.3.5 no
 * usable smarthost configured (empty list, unix: endpoints).  domain is
 * the recipient domain, for log lines and texts only.
 */
struct route_lookup *route_smarthosts(struct event_base *base, struct dns *dns, const char *domain,
				      const struct endpoint *hosts, size_t n,
				      const struct route_opts *opts, route_cb cb, void *arg);

/*
 * Cancel a lookup whose callback has not run: cb will not be called.  The
 * resolver has no per-query cancel, so memory still awaited by running
 * queries is freed when their answers (or timeouts) come, from the event
 * loop; *opts->live tells when all is gone.  dns_free() drops those
 * answers: to shut down without a leak, cancel, run the loop until *live
 * is 0 (at most the resolver's timeout), then dns_free().  NULL is fine;
 * from inside the lookup's own callback it does nothing.
 */
void route_cancel(struct route_lookup *l);

/* The hops as next-hop strings for smtp_client ("192.0.2.1:25",
 * "[2001:db8::1]:25"), appended to out; release with strlist_free().
 * (smtp_client_connect() starts at a random hop: to keep this order, use
 * smtp_client_connect_rotating() with a zeroed rotor.) */
void route_result_hops(const struct route_result *r, struct strlist *out);

/* Deep copy (e.g. for a cache); release with route_result_clear(). */
void route_result_copy(struct route_result *dst, const struct route_result *src);
void route_result_clear(struct route_result *r);

#endif
