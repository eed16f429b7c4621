/*
 * net.c — endpoints ("host:port", "[v6]:port", "unix:/path"), listening
 * and connecting sockets (non-blocking, close-on-exec), CIDR networks.
 */
#include "net.h"
#include "log.h"
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- endpoints ---------------------------------------------------------- */

#define UNIX_PATH_MAX_LEN (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

/* Decimal port 1..65535 of exactly len characters; -1 if not. */
static int parse_port(const char *s, size_t len)
{
	int port = 0;

	if (len == 0 || len > 5)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		port = port * 10 + (s[i] - '0');
	}
	return port >= 1 && port <= 65535 ? port : -1;
}

/* A host name or IPv4 address: letters, digits, '-', '.', '_'. */
static bool host_chars_ok(const char *s, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || c == '_'))
			return false;
	}
	return true;
}

bool endpoint_parse(const char *text, int default_port, struct endpoint *out, char *why,
		    size_t whylen)
{
	const char *host, *colon;
	size_t hostlen;
	int port;

	memset(out, 0, sizeof *out);
	if (!text || !*text) {
		set_why(why, whylen, "empty endpoint");
		return false;
	}

	if (strncmp(text, "unix:", 5) == 0) {
		const char *path = text + 5;
		size_t len = strlen(path);
		if (len == 0) {
			set_why(why, whylen, "unix socket path is empty");
			return false;
		}
		if (path[0] != '/') {
			set_why(why, whylen, "unix socket path must be absolute");
			return false;
		}
		if (len > UNIX_PATH_MAX_LEN) {
			set_why(why, whylen, "unix socket path longer than %zu bytes",
				(size_t)UNIX_PATH_MAX_LEN);
			return false;
		}
		for (size_t i = 0; i < len; i++) {
			if ((unsigned char)path[i] < 0x20 || path[i] == 0x7f) {
				set_why(why, whylen, "control character in unix socket path");
				return false;
			}
		}
		out->is_unix = true;
		memcpy(out->host, path, len + 1);
		out->port = 0;
		return true;
	}

	if (text[0] == '[') {
		const char *close = strchr(text, ']');
		char tmp[INET6_ADDRSTRLEN];
		struct in6_addr a6;

		if (!close) {
			set_why(why, whylen, "missing ']' after IPv6 address");
			return false;
		}
		host = text + 1;
		hostlen = (size_t)(close - host);
		if (hostlen == 0 || hostlen >= sizeof tmp) {
			set_why(why, whylen, "bad IPv6 address in brackets");
			return false;
		}
		memcpy(tmp, host, hostlen);
		tmp[hostlen] = '\0';
		if (inet_pton(AF_INET6, tmp, &a6) != 1) {
			set_why(why, whylen, "bad IPv6 address \"%s\"", tmp);
			return false;
		}
		if (close[1] == '\0') {
			colon = NULL;
		} else if (close[1] == ':') {
			colon = close + 1;
		} else {
			set_why(why, whylen, "expected ':port' after ']'");
			return false;
		}
	} else {
		colon = strchr(text, ':');
		if (colon && strchr(colon + 1, ':')) {
			/* More than one colon: only a bare IPv6 address makes sense. */
			struct in6_addr a6;
			size_t len = strlen(text);
			if (len < INET6_ADDRSTRLEN && inet_pton(AF_INET6, text, &a6) == 1) {
				host = text;
				hostlen = len;
				colon = NULL;
			} else {
				set_why(why, whylen, "IPv6 address with a port must be in brackets: [addr]:port");
				return false;
			}
		} else {
			host = text;
			hostlen = colon ? (size_t)(colon - text) : strlen(text);
			if (hostlen == 0) {
				set_why(why, whylen, "missing host before ':'");
				return false;
			}
			if (hostlen >= sizeof out->host) {
				set_why(why, whylen, "host name too long");
				return false;
			}
			if (!host_chars_ok(host, hostlen)) {
				set_why(why, whylen, "bad character in host name");
				return false;
			}
		}
	}

	if (colon) {
		const char *p = colon + 1;
		port = parse_port(p, strlen(p));
		if (port < 0) {
			set_why(why, whylen, "bad port \"%.16s\": expected a number 1..65535", p);
			return false;
		}
	} else if (default_port > 0) {
		if (default_port > 65535) {
			set_why(why, whylen, "default port %d out of range 1..65535", default_port);
			return false;
		}
		port = default_port;
	} else {
		set_why(why, whylen, "missing port: expected host:port");
		return false;
	}

	memcpy(out->host, host, hostlen);
	out->host[hostlen] = '\0';
	out->port = port;
	out->is_unix = false;
	return true;
}

void endpoint_format(const struct endpoint *e, char *out, size_t outlen)
{
	if (!out || outlen == 0)
		return;
	if (e->is_unix)
		snprintf(out, outlen, "unix:%s", e->host);
	else if (strchr(e->host, ':'))
		snprintf(out, outlen, "[%s]:%d", e->host, e->port);
	else
		snprintf(out, outlen, "%s:%d", e->host, e->port);
}

/* ---- sockets ------------------------------------------------------------ */

static bool unix_addr(const struct endpoint *e, struct sockaddr_un *sun, char *why, size_t whylen)
{
	size_t len = strlen(e->host);

	memset(sun, 0, sizeof *sun);
	sun->sun_family = AF_UNIX;
	if (len == 0 || len >= sizeof sun->sun_path) {
		set_why(why, whylen, "unix socket path empty or too long");
		return false;
	}
	memcpy(sun->sun_path, e->host, len + 1);
	return true;
}

static int resolve_failed(int rc, const struct endpoint *e, char *why, size_t whylen)
{
	set_why(why, whylen, "cannot resolve %s: %s", e->host,
		rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
	return -1;
}

static int listen_unix(const struct endpoint *e, int backlog, char *why, size_t whylen)
{
	struct sockaddr_un sun;
	struct stat st;
	int fd;

	if (!unix_addr(e, &sun, why, whylen))
		return -1;
	/* Remove a stale socket left by an earlier run, but never anything else. */
	if (lstat(sun.sun_path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			set_why(why, whylen, "%s exists and is not a socket", sun.sun_path);
			return -1;
		}
		if (unlink(sun.sun_path) < 0 && errno != ENOENT) {
			set_why(why, whylen, "cannot remove stale socket %s: %s", sun.sun_path,
				strerror(errno));
			return -1;
		}
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		set_why(why, whylen, "socket: %s", strerror(errno));
		return -1;
	}
	if (bind(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
		set_why(why, whylen, "bind %s: %s", sun.sun_path, strerror(errno));
		close(fd);
		return -1;
	}
	if (listen(fd, backlog) < 0) {
		set_why(why, whylen, "listen %s: %s", sun.sun_path, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

int net_listen(const struct endpoint *e, int backlog, char *why, size_t whylen)
{
	struct addrinfo hints, *res = NULL, *ai;
	char portstr[16];
	int rc, fd = -1;

	if (backlog <= 0)
		backlog = SOMAXCONN;
	if (e->is_unix)
		return listen_unix(e, backlog, why, whylen);
	if (e->port < 0 || e->port > 65535) {       /* 0: an ephemeral port */
		set_why(why, whylen, "bad port %d", e->port);
		return -1;
	}

	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV | (net_is_ip(e->host) ? AI_NUMERICHOST : 0);
	snprintf(portstr, sizeof portstr, "%d", e->port);
	rc = getaddrinfo(e->host, portstr, &hints, &res);
	if (rc != 0)
		return resolve_failed(rc, e, why, whylen);

	set_why(why, whylen, "no usable address for %s", e->host);
	for (ai = res; ai; ai = ai->ai_next) {
		int on = 1;
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			set_why(why, whylen, "socket: %s", strerror(errno));
			continue;
		}
		if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0) {
			set_why(why, whylen, "SO_REUSEADDR: %s", strerror(errno));
		} else if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
			set_why(why, whylen, "bind %s:%d: %s", e->host, e->port, strerror(errno));
		} else if (listen(fd, backlog) < 0) {
			set_why(why, whylen, "listen %s:%d: %s", e->host, e->port, strerror(errno));
		} else {
			break;
		}
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	return fd;
}

static int connect_unix(const struct endpoint *e, char *why, size_t whylen)
{
	struct sockaddr_un sun;
	int fd;

	if (!unix_addr(e, &sun, why, whylen))
		return -1;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		set_why(why, whylen, "socket: %s", strerror(errno));
		return -1;
	}
	/* For unix sockets EAGAIN means the listener's backlog is full: a failure. */
	if (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0 && errno != EINPROGRESS) {
		set_why(why, whylen, "connect %s: %s", sun.sun_path, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

int net_connect_start(const struct endpoint *e, char *why, size_t whylen)
{
	struct addrinfo hints, *res = NULL, *ai;
	char portstr[16];
	int rc, fd = -1;

	if (e->is_unix)
		return connect_unix(e, why, whylen);
	if (e->port < 1 || e->port > 65535) {
		set_why(why, whylen, "bad port %d", e->port);
		return -1;
	}

	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV | (net_is_ip(e->host) ? AI_NUMERICHOST : 0);
	snprintf(portstr, sizeof portstr, "%d", e->port);
	rc = getaddrinfo(e->host, portstr, &hints, &res);
	if (rc != 0)
		return resolve_failed(rc, e, why, whylen);

	set_why(why, whylen, "no usable address for %s", e->host);
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			set_why(why, whylen, "socket: %s", strerror(errno));
			continue;
		}
		/* SMTP is a dialogue of small writes (a command, then the end
		 * of the message): Nagle would hold each for the peer's
		 * delayed ACK, 40 ms here. */
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS)
			break;
		set_why(why, whylen, "connect %s:%d: %s", e->host, e->port, strerror(errno));
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	return fd;
}

void net_addr_text(const struct sockaddr *sa, char *out, size_t outlen, int *port)
{
	int p = 0;

	if (out && outlen > 0)
		out[0] = '\0';
	if (!sa) {
		if (port)
			*port = 0;
		return;
	}
	switch (sa->sa_family) {
	case AF_INET: {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		char tmp[INET_ADDRSTRLEN];
		if (out && outlen > 0 && inet_ntop(AF_INET, &in->sin_addr, tmp, sizeof tmp))
			snprintf(out, outlen, "%s", tmp);
		p = ntohs(in->sin_port);
		break;
	}
	case AF_INET6: {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		char tmp[INET6_ADDRSTRLEN];
		if (out && outlen > 0 && inet_ntop(AF_INET6, &in6->sin6_addr, tmp, sizeof tmp))
			snprintf(out, outlen, "%s", tmp);
		p = ntohs(in6->sin6_port);
		break;
	}
	case AF_UNIX: {
		const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
		if (out && outlen > 0)
			snprintf(out, outlen, "%.*s", (int)sizeof un->sun_path, un->sun_path);
		break;
	}
	default:
		if (out && outlen > 0)
			snprintf(out, outlen, "?");
		break;
	}
	if (port)
		*port = p;
}

bool net_is_ip(const char *text)
{
	unsigned char buf[sizeof(struct in6_addr)];

	if (!text)
		return false;
	return inet_pton(AF_INET, text, buf) == 1 || inet_pton(AF_INET6, text, buf) == 1;
}

/* ---- CIDR --------------------------------------------------------------- */

static const uint8_t v4mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

/* Parse an address (no prefix) into family and 16 bytes (IPv4 in the first 4). */
static bool parse_ip(const char *text, int *family, uint8_t addr[16])
{
	memset(addr, 0, 16);
	if (inet_pton(AF_INET, text, addr) == 1) {
		*family = AF_INET;
		return true;
	}
	if (inet_pton(AF_INET6, text, addr) == 1) {
		*family = AF_INET6;
		return true;
	}
	return false;
}

bool cidr_parse(const char *text, struct cidr *out)
{
	char ip[INET6_ADDRSTRLEN];
	const char *slash;
	size_t iplen;
	int family, prefix, maxprefix;
	uint8_t addr[16];

	if (!text)
		return false;
	slash = strchr(text, '/');
	iplen = slash ? (size_t)(slash - text) : strlen(text);
	if (iplen == 0 || iplen >= sizeof ip)
		return false;
	memcpy(ip, text, iplen);
	ip[iplen] = '\0';
	if (!parse_ip(ip, &family, addr))
		return false;
	maxprefix = family == AF_INET ? 32 : 128;

	if (slash) {
		const char *p = slash + 1;
		size_t n = strlen(p);
		if (n == 0 || n > 3)
			return false;
		prefix = 0;
		for (size_t i = 0; i < n; i++) {
			if (p[i] < '0' || p[i] > '9')
				return false;
			prefix = prefix * 10 + (p[i] - '0');
		}
		if (prefix > maxprefix)
			return false;
	} else {
		prefix = maxprefix;
	}

	/* Clear host bits so that "192.0.2.7/24" means 192.0.2.0/24. */
	for (int bit = prefix; bit < maxprefix; bit++)
		addr[bit / 8] &= (uint8_t)~(0x80u >> (bit % 8));

	memset(out, 0, sizeof *out);
	out->family = family;
	memcpy(out->addr, addr, 16);
	out->prefix = prefix;
	return true;
}

static bool prefix_equal(const uint8_t *a, const uint8_t *b, int prefix)
{
	int full = prefix / 8, rest = prefix % 8;

	if (full > 0 && memcmp(a, b, (size_t)full) != 0)
		return false;
	if (rest) {
		uint8_t mask = (uint8_t)(0xff00u >> rest);
		if ((a[full] & mask) != (b[full] & mask))
			return false;
	}
	return true;
}

bool cidr_match(const struct cidr *net, const char *ip)
{
	int family, nfamily = net->family, nprefix = net->prefix;
	uint8_t addr[16], naddr[16];

	if (!ip || !parse_ip(ip, &family, addr))
		return false;
	memcpy(naddr, net->addr, 16);

	/* Compare IPv4-mapped IPv6 addresses and networks as IPv4. */
	if (family == AF_INET6 && memcmp(addr, v4mapped_prefix, 12) == 0) {
		memmove(addr, addr + 12, 4);
		memset(addr + 4, 0, 12);
		family = AF_INET;
	}
	if (nfamily == AF_INET6 && nprefix >= 96 && memcmp(naddr, v4mapped_prefix, 12) == 0) {
		memmove(naddr, naddr + 12, 4);
		memset(naddr + 4, 0, 12);
		nfamily = AF_INET;
		nprefix -= 96;
	}
	if (family != nfamily)
		return false;
	return prefix_equal(addr, naddr, nprefix);
}

bool cidr_list_match(const struct strlist *nets, const char *ip)
{
	struct cidr c;

	if (!nets || !ip)
		return false;
	for (size_t i = 0; i < nets->n; i++) {
		if (nets->v[i] && cidr_parse(nets->v[i], &c) && cidr_match(&c, ip))
			return true;
	}
	return false;
}

/* ---- canonical addresses and networks -------------------------------------- */

static bool parse_ip_mapped(const char *ip, int *family, unsigned char a[16])
{
	if (!ip || !*ip)
		return false;
	memset(a, 0, 16);
	if (inet_pton(AF_INET, ip, a) == 1) {
		*family = AF_INET;
		return true;
	}
	if (inet_pton(AF_INET6, ip, a) != 1)
		return false;
	static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	if (memcmp(a, mapped, 12) == 0) {
		memmove(a, a + 12, 4);
		memset(a + 4, 0, 12);
		*family = AF_INET;
		return true;
	}
	*family = AF_INET6;
	return true;
}

bool net_canon_ip(const char *ip, char *out, size_t outlen)
{
	int fam;
	unsigned char a[16];
	char t[INET6_ADDRSTRLEN];
	if (!parse_ip_mapped(ip, &fam, a) || !inet_ntop(fam, a, t, sizeof(t)))
		return false;
	return (size_t)snprintf(out, outlen, "%s", t) < outlen;
}

bool net_prefix(const char *ip, int v4prefix, int v6prefix, char *out, size_t outlen)
{
	int fam;
	unsigned char a[16];
	char t[INET6_ADDRSTRLEN];
	if (!parse_ip_mapped(ip, &fam, a))
		return false;
	int bits = fam == AF_INET ? v4prefix : v6prefix, len = fam == AF_INET ? 4 : 16;
	if (bits < 0 || bits > len * 8)
		return false;
	for (int i = 0; i < len; i++) {
		int keep = bits - i * 8;
		if (keep <= 0)
			a[i] = 0;
		else if (keep < 8)
			a[i] &= (unsigned char)(0xff << (8 - keep));
	}
	if (!inet_ntop(fam, a, t, sizeof(t)))
		return false;
	return (size_t)snprintf(out, outlen, "%s/%d", t, bits) < outlen;
}
