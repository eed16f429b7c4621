/*
 * test_net.c — unit tests for util/net (endpoints, sockets over loopback,
 * CIDR) and util/id (uniqueness, alphabet, validation).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "util/config.h"
#include "util/id.h"
#include "util/net.h"

/* ---- endpoints ---------------------------------------------------------- */

static void test_endpoint_parse_valid(void **state)
{
	struct endpoint e;
	char why[128];
	(void)state;

	assert_true(endpoint_parse("127.0.0.1:25", 0, &e, why, sizeof why));
	assert_false(e.is_unix);
	assert_string_equal(e.host, "127.0.0.1");
	assert_int_equal(e.port, 25);

	assert_true(endpoint_parse("[::1]:2525", 0, &e, why, sizeof why));
	assert_string_equal(e.host, "::1");
	assert_int_equal(e.port, 2525);

	assert_true(endpoint_parse("[2001:db8::1]:65535", 0, &e, why, sizeof why));
	assert_string_equal(e.host, "2001:db8::1");
	assert_int_equal(e.port, 65535);

	assert_true(endpoint_parse("localhost:1", 0, &e, why, sizeof why));
	assert_string_equal(e.host, "localhost");
	assert_int_equal(e.port, 1);

	assert_true(endpoint_parse("mx-1.mail.example:587", 25, &e, why, sizeof why));
	assert_string_equal(e.host, "mx-1.mail.example");
	assert_int_equal(e.port, 587);

	/* Bare hosts take the default port. */
	assert_true(endpoint_parse("mail.example", 25, &e, why, sizeof why));
	assert_string_equal(e.host, "mail.example");
	assert_int_equal(e.port, 25);
	assert_true(endpoint_parse("[::1]", 587, &e, why, sizeof why));
	assert_string_equal(e.host, "::1");
	assert_int_equal(e.port, 587);
	assert_true(endpoint_parse("2001:db8::25", 25, &e, why, sizeof why));
	assert_string_equal(e.host, "2001:db8::25");
	assert_int_equal(e.port, 25);

	assert_true(endpoint_parse("unix:/run/rampart/mx.sock", 0, &e, why, sizeof why));
	assert_true(e.is_unix);
	assert_string_equal(e.host, "/run/rampart/mx.sock");
	assert_int_equal(e.port, 0);
}

static void test_endpoint_parse_invalid(void **state)
{
	static const struct {
		const char *text;
		int default_port;
	} bad[] = {
		{ "", 25 },
		{ "mail.example", 0 },          /* no port, no default */
		{ "mail.example:", 25 },
		{ "mail.example:0", 25 },
		{ "mail.example:65536", 25 },
		{ "mail.example:99999999999", 25 },
		{ "mail.example:-1", 25 },
		{ "mail.example:+25", 25 },
		{ "mail.example:25 ", 25 },
		{ "mail.example:2x5", 25 },
		{ "mail.example:smtp", 25 },
		{ ":25", 25 },
		{ "mail example:25", 25 },
		{ "mail/example:25", 25 },
		{ "a:b:25", 25 },               /* unbracketed, not an IPv6 address */
		{ "[::1", 25 },
		{ "[::1]25", 25 },
		{ "[::1]:", 25 },
		{ "[::1]:70000", 25 },
		{ "[]:25", 25 },
		{ "[mail.example]:25", 25 },
		{ "[1.2.3.4]:25", 25 },
		{ "unix:", 0 },
		{ "unix:relative/path", 0 },
		{ "mail.example", 70000 },      /* default port out of range */
	};
	struct endpoint e;
	char why[128];
	(void)state;

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		why[0] = '\0';
		if (endpoint_parse(bad[i].text, bad[i].default_port, &e, why, sizeof why))
			fail_msg("accepted bad endpoint \"%s\"", bad[i].text);
		assert_true(why[0] != '\0');
	}
	assert_false(endpoint_parse(NULL, 25, &e, why, sizeof why));

	/* The reason names the problem. */
	assert_false(endpoint_parse("host:0", 25, &e, why, sizeof why));
	assert_non_null(strstr(why, "1..65535"));

	/* Over-long host and unix path. */
	char longtext[400];
	memset(longtext, 'a', 300);
	strcpy(longtext + 300, ":25");
	assert_false(endpoint_parse(longtext, 25, &e, why, sizeof why));
	strcpy(longtext, "unix:/");
	memset(longtext + 6, 'p', 200);
	longtext[206] = '\0';
	assert_false(endpoint_parse(longtext, 0, &e, why, sizeof why));

	/* A NULL or zero-length why is fine. */
	assert_false(endpoint_parse("host:0", 25, &e, NULL, 0));
}

static void test_endpoint_format(void **state)
{
	static const char *const texts[] = {
		"127.0.0.1:25", "[::1]:2525", "mail.example:587", "unix:/tmp/x.sock",
	};
	struct endpoint e;
	char out[300], why[128];
	(void)state;

	for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
		assert_true(endpoint_parse(texts[i], 0, &e, why, sizeof why));
		endpoint_format(&e, out, sizeof out);
		assert_string_equal(out, texts[i]);
	}
	/* Truncates within the bound. */
	assert_true(endpoint_parse("mail.example:587", 0, &e, why, sizeof why));
	endpoint_format(&e, out, 5);
	assert_string_equal(out, "mail");
}

/* ---- sockets ------------------------------------------------------------ */

static void assert_nonblock_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
	assert_true(fl >= 0 && (fl & O_NONBLOCK));
	assert_true(fdfl >= 0 && (fdfl & FD_CLOEXEC));
}

static void wait_for(int fd, short events)
{
	struct pollfd pfd = { .fd = fd, .events = events, .revents = 0 };
	assert_int_equal(poll(&pfd, 1, 5000), 1);
	assert_true(pfd.revents & events);
}

static int sock_error(int fd)
{
	int err = -1;
	socklen_t len = sizeof err;
	assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len), 0);
	return err;
}

/* Connect e to the listener lfd, accept, and pass a few bytes each way. */
static void connect_and_talk(int lfd, const struct endpoint *e)
{
	char why[256], buf[16];
	int cfd, afd;

	cfd = net_connect_start(e, why, sizeof why);
	if (cfd < 0)
		fail_msg("connect: %s", why);
	assert_nonblock_cloexec(cfd);
	if (!e->is_unix) {
		int nodelay = 0;
		socklen_t nl = sizeof(nodelay);
		assert_int_equal(getsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &nodelay, &nl), 0);
		assert_int_equal(nodelay, 1);   /* small SMTP writes go out at once */
	}
	wait_for(cfd, POLLOUT);
	assert_int_equal(sock_error(cfd), 0);

	wait_for(lfd, POLLIN);
	afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	assert_true(afd >= 0);

	assert_int_equal(write(cfd, "EHLO", 4), 4);
	wait_for(afd, POLLIN);
	assert_int_equal(read(afd, buf, sizeof buf), 4);
	assert_memory_equal(buf, "EHLO", 4);
	assert_int_equal(write(afd, "250", 3), 3);
	wait_for(cfd, POLLIN);
	assert_int_equal(read(cfd, buf, sizeof buf), 3);
	assert_memory_equal(buf, "250", 3);

	close(afd);
	close(cfd);
}

static int listen_ephemeral(const char *host, int *port, char *why, size_t whylen)
{
	struct endpoint e;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	char text[64];
	int fd;

	memset(&e, 0, sizeof e);
	snprintf(e.host, sizeof e.host, "%s", host);
	e.port = 0;
	fd = net_listen(&e, 16, why, whylen);
	if (fd < 0)
		return -1;
	assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
	net_addr_text((struct sockaddr *)&ss, text, sizeof text, port);
	assert_true(*port > 0 && *port <= 65535);
	return fd;
}

static void test_tcp_v4_loopback(void **state)
{
	struct endpoint e;
	char why[256];
	int lfd, port, on = 0;
	socklen_t len = sizeof on;
	(void)state;

	lfd = listen_ephemeral("127.0.0.1", &port, why, sizeof why);
	if (lfd < 0)
		fail_msg("listen: %s", why);
	assert_nonblock_cloexec(lfd);
	assert_int_equal(getsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &on, &len), 0);
	assert_true(on != 0);

	char text[64];
	snprintf(text, sizeof text, "127.0.0.1:%d", port);
	assert_true(endpoint_parse(text, 0, &e, why, sizeof why));
	connect_and_talk(lfd, &e);

	/* A second listener on the same port is refused, with a reason. */
	struct endpoint dup = e;
	why[0] = '\0';
	assert_int_equal(net_listen(&dup, 16, why, sizeof why), -1);
	assert_true(why[0] != '\0');

	close(lfd);
}

static void test_tcp_name_listen(void **state)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	struct endpoint e;
	char why[256], ip[64];
	int lfd, port;
	(void)state;

	/* A host name goes through getaddrinfo; connect back to what was bound. */
	lfd = listen_ephemeral("localhost", &port, why, sizeof why);
	if (lfd < 0)
		fail_msg("listen localhost: %s", why);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&ss, &sl), 0);
	net_addr_text((struct sockaddr *)&ss, ip, sizeof ip, &port);
	assert_true(net_is_ip(ip));
	memset(&e, 0, sizeof e);
	snprintf(e.host, sizeof e.host, "%s", ip);
	e.port = port;
	connect_and_talk(lfd, &e);
	close(lfd);
}

static void test_tcp_v6_loopback(void **state)
{
	struct endpoint e;
	char why[256];
	int lfd, port;
	(void)state;

	lfd = listen_ephemeral("::1", &port, why, sizeof why);
	if (lfd < 0) {
		print_message("no IPv6 loopback (%s): skipped\n", why);
		skip();
	}
	char text[64];
	snprintf(text, sizeof text, "[::1]:%d", port);
	assert_true(endpoint_parse(text, 0, &e, why, sizeof why));
	connect_and_talk(lfd, &e);
	close(lfd);
}

static void test_connect_refused(void **state)
{
	struct endpoint e;
	char why[256];
	int lfd, port, cfd;
	(void)state;

	/* Find a free port, then close it: the connect must fail, either at
	 * once (-1 with a reason) or later through SO_ERROR. */
	lfd = listen_ephemeral("127.0.0.1", &port, why, sizeof why);
	assert_true(lfd >= 0);
	close(lfd);
	memset(&e, 0, sizeof e);
	snprintf(e.host, sizeof e.host, "127.0.0.1");
	e.port = port;
	why[0] = '\0';
	cfd = net_connect_start(&e, why, sizeof why);
	if (cfd < 0) {
		assert_true(why[0] != '\0');
	} else {
		wait_for(cfd, POLLOUT);
		assert_int_equal(sock_error(cfd), ECONNREFUSED);
		close(cfd);
	}

	/* Bad ports in a hand-built endpoint. */
	e.port = 0;
	assert_int_equal(net_connect_start(&e, why, sizeof why), -1);
	e.port = 70000;
	assert_int_equal(net_connect_start(&e, why, sizeof why), -1);
	assert_int_equal(net_listen(&e, 16, why, sizeof why), -1);
}

static void test_unix_socket(void **state)
{
	char dir[] = "/tmp/rampart-test-net-XXXXXX";
	char path[128], text[160], why[256];
	struct endpoint e;
	struct stat st;
	int lfd, fd;
	(void)state;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof path, "%s/s.sock", dir);
	snprintf(text, sizeof text, "unix:%s", path);
	assert_true(endpoint_parse(text, 0, &e, why, sizeof why));

	/* First listener, closed: leaves a stale socket file behind. */
	lfd = net_listen(&e, 4, why, sizeof why);
	if (lfd < 0)
		fail_msg("listen unix: %s", why);
	close(lfd);
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));

	/* The stale file is replaced. */
	lfd = net_listen(&e, 4, why, sizeof why);
	if (lfd < 0)
		fail_msg("listen unix over stale socket: %s", why);
	assert_nonblock_cloexec(lfd);
	connect_and_talk(lfd, &e);
	close(lfd);
	unlink(path);

	/* No listener: connect fails at once. */
	assert_int_equal(net_connect_start(&e, why, sizeof why), -1);

	/* A regular file at the path is never removed. */
	fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	close(fd);
	why[0] = '\0';
	assert_int_equal(net_listen(&e, 4, why, sizeof why), -1);
	assert_non_null(strstr(why, "not a socket"));
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	unlink(path);
	rmdir(dir);
}

static void test_addr_text(void **state)
{
	struct sockaddr_in in4;
	struct sockaddr_in6 in6;
	struct sockaddr_un un;
	char out[64];
	int port = -1;
	(void)state;

	memset(&in4, 0, sizeof in4);
	in4.sin_family = AF_INET;
	in4.sin_port = htons(2525);
	assert_int_equal(inet_pton(AF_INET, "192.0.2.1", &in4.sin_addr), 1);
	net_addr_text((struct sockaddr *)&in4, out, sizeof out, &port);
	assert_string_equal(out, "192.0.2.1");
	assert_int_equal(port, 2525);

	memset(&in6, 0, sizeof in6);
	in6.sin6_family = AF_INET6;
	in6.sin6_port = htons(25);
	assert_int_equal(inet_pton(AF_INET6, "2001:db8::1", &in6.sin6_addr), 1);
	net_addr_text((struct sockaddr *)&in6, out, sizeof out, &port);
	assert_string_equal(out, "2001:db8::1");
	assert_int_equal(port, 25);

	/* Port pointer optional; output bounded. */
	net_addr_text((struct sockaddr *)&in6, out, 5, NULL);
	assert_string_equal(out, "2001");

	memset(&un, 0, sizeof un);
	un.sun_family = AF_UNIX;
	strcpy(un.sun_path, "/run/x.sock");
	net_addr_text((struct sockaddr *)&un, out, sizeof out, &port);
	assert_string_equal(out, "/run/x.sock");
	assert_int_equal(port, 0);

	net_addr_text(NULL, out, sizeof out, &port);
	assert_string_equal(out, "");
}

static void test_is_ip(void **state)
{
	(void)state;
	assert_true(net_is_ip("192.0.2.1"));
	assert_true(net_is_ip("::1"));
	assert_true(net_is_ip("::ffff:192.0.2.1"));
	assert_true(net_is_ip("2001:db8::"));
	assert_false(net_is_ip("localhost"));
	assert_false(net_is_ip("192.0.2"));
	assert_false(net_is_ip("192.0.2.256"));
	assert_false(net_is_ip("[::1]"));
	assert_false(net_is_ip(""));
	assert_false(net_is_ip(NULL));
}

/* ---- CIDR --------------------------------------------------------------- */

static void test_cidr_parse(void **state)
{
	static const char *const bad[] = {
		"", "garbage", "/24", "192.0.2.0/", "192.0.2.0/33", "192.0.2.0/-1",
		"192.0.2.0/+8", "192.0.2.0/24x", "192.0.2.0/2 4", "192.0.2.0/1000",
		"192.0.2.0/24/8", "192.0.2/24", "192.0.2.256/24", " 192.0.2.0/24",
		"192.0.2.0 /24", "2001:db8::/129", "2001:db8:::/32", "2001:db8::/", "[::1]/128",
		"fe80::1%eth0/64", "0x7f000001/32",
	};
	struct cidr c;
	uint8_t want[16];
	(void)state;

	assert_true(cidr_parse("192.0.2.0/24", &c));
	assert_int_equal(c.family, AF_INET);
	assert_int_equal(c.prefix, 24);
	assert_memory_equal(c.addr, ((uint8_t[]){ 192, 0, 2, 0 }), 4);

	assert_true(cidr_parse("10.1.2.3", &c));
	assert_int_equal(c.family, AF_INET);
	assert_int_equal(c.prefix, 32);

	assert_true(cidr_parse("0.0.0.0/0", &c));
	assert_int_equal(c.prefix, 0);

	/* Host bits are cleared. */
	assert_true(cidr_parse("192.0.2.77/23", &c));
	assert_memory_equal(c.addr, ((uint8_t[]){ 192, 0, 2, 0 }), 4);

	assert_true(cidr_parse("2001:db8::/32", &c));
	assert_int_equal(c.family, AF_INET6);
	assert_int_equal(c.prefix, 32);
	assert_int_equal(inet_pton(AF_INET6, "2001:db8::", want), 1);
	assert_memory_equal(c.addr, want, 16);

	assert_true(cidr_parse("::1", &c));
	assert_int_equal(c.family, AF_INET6);
	assert_int_equal(c.prefix, 128);
	assert_true(cidr_parse("::/0", &c));
	assert_int_equal(c.prefix, 0);
	assert_true(cidr_parse("2001:db8::1/128", &c));

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (cidr_parse(bad[i], &c))
			fail_msg("accepted bad network \"%s\"", bad[i]);
	}
	assert_false(cidr_parse(NULL, &c));
}

static bool net_has(const char *net, const char *ip)
{
	struct cidr c;
	if (!cidr_parse(net, &c))
		fail_msg("cannot parse %s", net);
	return cidr_match(&c, ip);
}

static void test_cidr_match_v4(void **state)
{
	(void)state;
	assert_true(net_has("192.0.2.0/24", "192.0.2.0"));
	assert_true(net_has("192.0.2.0/24", "192.0.2.255"));
	assert_false(net_has("192.0.2.0/24", "192.0.3.0"));
	assert_false(net_has("192.0.2.0/24", "192.0.1.255"));
	/* Prefixes not on a byte boundary. */
	assert_true(net_has("10.0.0.0/9", "10.127.255.255"));
	assert_false(net_has("10.0.0.0/9", "10.128.0.0"));
	assert_true(net_has("192.0.2.64/26", "192.0.2.127"));
	assert_false(net_has("192.0.2.64/26", "192.0.2.128"));
	assert_false(net_has("192.0.2.64/26", "192.0.2.63"));
	assert_true(net_has("128.0.0.0/1", "255.1.2.3"));
	assert_false(net_has("128.0.0.0/1", "127.255.255.255"));
	/* /32 and /0. */
	assert_true(net_has("203.0.113.9", "203.0.113.9"));
	assert_false(net_has("203.0.113.9", "203.0.113.8"));
	assert_true(net_has("0.0.0.0/0", "198.51.100.1"));
	assert_false(net_has("0.0.0.0/0", "2001:db8::1"));
	/* Not an address. */
	assert_false(net_has("0.0.0.0/0", "example.org"));
	assert_false(net_has("0.0.0.0/0", ""));
	assert_false(net_has("0.0.0.0/0", NULL));
	assert_false(net_has("0.0.0.0/0", "1.2.3.4/32"));
}

static void test_cidr_match_v6(void **state)
{
	(void)state;
	assert_true(net_has("2001:db8::/32", "2001:db8::1"));
	assert_true(net_has("2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
	assert_false(net_has("2001:db8::/32", "2001:db9::1"));
	assert_true(net_has("2001:db8::/127", "2001:db8::1"));
	assert_false(net_has("2001:db8::/127", "2001:db8::2"));
	assert_true(net_has("fe80::/10", "febf::1"));
	assert_false(net_has("fe80::/10", "fec0::1"));
	assert_true(net_has("::1", "::1"));
	assert_false(net_has("::1", "::2"));
	assert_true(net_has("::/0", "2001:db8::1"));
	assert_false(net_has("::/0", "192.0.2.1"));
	assert_false(net_has("2001:db8::/32", "192.0.2.1"));
}

static void test_cidr_match_mapped(void **state)
{
	(void)state;
	/* IPv4-mapped IPv6 clients match IPv4 networks... */
	assert_true(net_has("192.0.2.0/24", "::ffff:192.0.2.5"));
	assert_true(net_has("192.0.2.0/24", "::FFFF:c000:0205"));
	assert_false(net_has("192.0.2.0/24", "::ffff:192.0.3.5"));
	assert_true(net_has("127.0.0.0/8", "::ffff:127.0.0.1"));
	assert_true(net_has("0.0.0.0/0", "::ffff:8.8.8.8"));
	/* ...and IPv4 clients match IPv4-mapped networks. */
	assert_true(net_has("::ffff:192.0.2.0/120", "192.0.2.200"));
	assert_false(net_has("::ffff:192.0.2.0/120", "192.0.3.200"));
	assert_true(net_has("::ffff:0:0/96", "10.0.0.1"));
	/* Mapped addresses are not other IPv6 addresses. */
	assert_false(net_has("192.0.2.0/24", "::192.0.2.5"));   /* deprecated v4-compatible */
	assert_false(net_has("192.0.2.0/24", "64:ff9b::192.0.2.5"));
}

static void test_cidr_list(void **state)
{
	char *items[] = { "garbage", "10.0.0.0/8", "2001:db8::/48", "192.0.2.1" };
	struct strlist l = { sizeof items / sizeof items[0], items };
	struct strlist empty = { 0, NULL };
	(void)state;

	assert_true(cidr_list_match(&l, "10.200.0.1"));
	assert_true(cidr_list_match(&l, "::ffff:10.0.0.1"));
	assert_true(cidr_list_match(&l, "2001:db8:0:1::1"));
	assert_false(cidr_list_match(&l, "2001:db8:1::1"));
	assert_true(cidr_list_match(&l, "192.0.2.1"));
	assert_false(cidr_list_match(&l, "192.0.2.2"));
	assert_false(cidr_list_match(&l, "garbage"));
	assert_false(cidr_list_match(&empty, "10.0.0.1"));
	assert_false(cidr_list_match(NULL, "10.0.0.1"));
}

/* ---- ids ---------------------------------------------------------------- */

#define NIDS 10000

static int cmp_id(const void *a, const void *b)
{
	return memcmp(a, b, ID_LEN + 1);
}

static int alpha_index(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'Z')
		return 10 + c - 'A';
	if (c >= 'a' && c <= 'z')
		return 36 + c - 'a';
	return -1;
}

static void test_id_unique_valid(void **state)
{
	char (*ids)[ID_LEN + 1] = calloc(NIDS, sizeof *ids);
	unsigned counts[62] = { 0 };
	(void)state;

	assert_non_null(ids);
	for (size_t i = 0; i < NIDS; i++) {
		memset(ids[i], 'x', ID_LEN + 1);
		id_new(ids[i]);
		assert_int_equal(strlen(ids[i]), ID_LEN);
		assert_true(id_valid(ids[i]));
		for (size_t j = 0; j < ID_LEN; j++) {
			int k = alpha_index(ids[i][j]);
			assert_true(k >= 0);
			counts[k]++;
		}
	}
	qsort(ids, NIDS, sizeof *ids, cmp_id);
	for (size_t i = 1; i < NIDS; i++)
		assert_int_not_equal(cmp_id(ids[i - 1], ids[i]), 0);

	/* 160,000 characters: 2580.6 of each expected, standard deviation about
	 * 50; the bounds are 5.5 deviations wide (a false alarm about once in
	 * 500,000 runs).  Plain "byte % 62" would give 3125 of '0'..'7'. */
	for (size_t k = 0; k < 62; k++) {
		if (counts[k] < 2300 || counts[k] > 2860)
			fail_msg("character %zu appeared %u times", k, counts[k]);
	}
	free(ids);
}

static void test_id_valid(void **state)
{
	(void)state;
	assert_true(id_valid("0123456789abcdef"));
	assert_true(id_valid("ABCDEFGHIJKLMNOP"));
	assert_true(id_valid("zZ09zZ09zZ09zZ09"));
	assert_false(id_valid(NULL));
	assert_false(id_valid(""));
	assert_false(id_valid("0123456789abcde"));      /* 15 */
	assert_false(id_valid("0123456789abcdef0"));    /* 17 */
	assert_false(id_valid("0123456789abcde-"));
	assert_false(id_valid("0123456789abcd_f"));
	assert_false(id_valid("../../etc/passwd"));
	assert_false(id_valid("01234567/9abcdef"));
	assert_false(id_valid("0123456789abcde "));
	assert_false(id_valid("0123456789abcd\xc3\xa9"));
	assert_false(id_valid("0123456789abcde\n"));
}

static void test_canon_and_prefix(void **state)
{
	(void)state;
	char out[64];
	assert_true(net_canon_ip("192.0.2.7", out, sizeof(out)));
	assert_string_equal(out, "192.0.2.7");
	assert_true(net_canon_ip("::ffff:192.0.2.7", out, sizeof(out)));
	assert_string_equal(out, "192.0.2.7");
	assert_true(net_canon_ip("2001:DB8:0:0::7", out, sizeof(out)));
	assert_string_equal(out, "2001:db8::7");
	assert_false(net_canon_ip("example.org", out, sizeof(out)));
	assert_false(net_canon_ip("", out, sizeof(out)));
	assert_true(net_prefix("192.0.2.77", 24, 64, out, sizeof(out)));
	assert_string_equal(out, "192.0.2.0/24");
	assert_true(net_prefix("192.0.2.77", 20, 64, out, sizeof(out)));
	assert_string_equal(out, "192.0.0.0/20");
	assert_true(net_prefix("::ffff:198.51.100.9", 16, 64, out, sizeof(out)));
	assert_string_equal(out, "198.51.0.0/16");
	assert_true(net_prefix("2001:db8:1:2:3:4:5:6", 24, 64, out, sizeof(out)));
	assert_string_equal(out, "2001:db8:1:2::/64");
	assert_true(net_prefix("2001:db8:1:2:3:4:5:6", 24, 50, out, sizeof(out)));
	assert_string_equal(out, "2001:db8:1::/50");
	assert_false(net_prefix("192.0.2.1", 33, 64, out, sizeof(out)));
	assert_false(net_prefix("192.0.2.1", 24, 64, out, 8));      /* too small */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_endpoint_parse_valid),
		cmocka_unit_test(test_endpoint_parse_invalid),
		cmocka_unit_test(test_endpoint_format),
		cmocka_unit_test(test_tcp_v4_loopback),
		cmocka_unit_test(test_tcp_name_listen),
		cmocka_unit_test(test_tcp_v6_loopback),
		cmocka_unit_test(test_connect_refused),
		cmocka_unit_test(test_unix_socket),
		cmocka_unit_test(test_addr_text),
		cmocka_unit_test(test_is_ip),
		cmocka_unit_test(test_cidr_parse),
		cmocka_unit_test(test_cidr_match_v4),
		cmocka_unit_test(test_cidr_match_v6),
		cmocka_unit_test(test_cidr_match_mapped),
		cmocka_unit_test(test_cidr_list),
		cmocka_unit_test(test_id_unique_valid),
		cmocka_unit_test(test_id_valid),
		cmocka_unit_test(test_canon_and_prefix),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
