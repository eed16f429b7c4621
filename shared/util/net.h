/*
 * net.h — addresses: "host:port" endpoints, sockets, CIDR networks.
 */
#ifndef RAMPART_NET_H
#define RAMPART_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* An endpoint "127.0.0.1:25", "[::1]:25", "localhost:25" or "unix:/path". */
struct endpoint {
	bool is_unix;
	char host[256];         /* host name or address (no brackets), or unix path */
	int port;
};
bool endpoint_parse(const char *text, int default_port, struct endpoint *out, char *why, size_t whylen);
void endpoint_format(const struct endpoint *e, char *out, size_t outlen);

/* Listening socket, non-blocking, close-on-exec, SO_REUSEADDR, backlog given
 * (<= 0: SOMAXCONN).  -1 and why.  Port 0 binds an ephemeral port (read it
 * back with getsockname).  A unix endpoint first removes a stale socket
 * file at its path (never a file that is not a socket). */
int net_listen(const struct endpoint *e, int backlog, char *why, size_t whylen);
/* Non-blocking connect started (EINPROGRESS counts as started); -1 and why
 * if it failed at once.  Resolves host names with getaddrinfo and tries the
 * addresses in order until one starts; later failures (seen by the caller
 * through SO_ERROR) do not fall back to the next address. */
int net_connect_start(const struct endpoint *e, char *why, size_t whylen);

/* Text form of a socket address ("192.0.2.1", "2001:db8::1", a unix path),
 * port separate (0 for unix); "" if sa is NULL. */
void net_addr_text(const struct sockaddr *sa, char *out, size_t outlen, int *port);
bool net_is_ip(const char *text);

/* CIDR network: "192.0.2.0/24", "2001:db8::/32", a bare address (/32 or /128). */
struct cidr {
	int family;             /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	int prefix;
};
/* Host bits are cleared ("192.0.2.7/24" is 192.0.2.0/24); anything else
 * than an address with an optional decimal prefix in range is rejected. */
bool cidr_parse(const char *text, struct cidr *out);
bool cidr_match(const struct cidr *net, const char *ip);   /* ip as text; IPv4-mapped IPv6 matches IPv4 */
/* Any of a list of CIDR texts (a config strlist); entries that do not
 * parse never match (validate them when loading the configuration). */
struct strlist;
bool cidr_list_match(const struct strlist *nets, const char *ip);

/* An address in its canonical text form ("192.0.2.7", "2001:db8::7"; an
 * IPv4-mapped IPv6 address as IPv4), and its network with the given prefix
 * lengths ("192.0.2.0/24", "2001:db8::/64"): the keys of per-client and
 * per-network limits.  False if ip is not an address or out too small. */
bool net_canon_ip(const char *ip, char *out, size_t outlen);
bool net_prefix(const char *ip, int v4prefix, int v6prefix, char *out, size_t outlen);

#endif
