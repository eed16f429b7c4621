/*
 * test_metrics.c — the registry and its text rendering, and /metrics over
 * HTTP on 127.0.0.1 fetched with a plain socket while the test drives the
 * event loop itself (EVLOOP_NONBLOCK), all in one thread.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "util/buf.h"
#include "util/log.h"
#include "util/metrics.h"

static char *render(struct metrics *m)
{
	struct buf b = BUF_INIT;
	metrics_render(m, &b);
	return buf_steal(&b, NULL);
}

static void assert_has(const char *text, const char *want)
{
	if (!strstr(text, want))
		fail_msg("\"%s\" not in:\n%s", want, text);
}

static void assert_lacks(const char *text, const char *bad)
{
	if (strstr(text, bad))
		fail_msg("\"%s\" unexpectedly in:\n%s", bad, text);
}

/* Run f with the log going into a pipe; what was logged into out. */
static void capture_log(void (*f)(void *), void *arg, char *out, size_t outlen)
{
	int p[2];
	assert_int_equal(pipe(p), 0);
	log_set_fd(p[1]);
	f(arg);
	log_set_fd(2);
	close(p[1]);
	ssize_t n = read(p[0], out, outlen - 1);
	out[n > 0 ? n : 0] = '\0';
	close(p[0]);
}

/* ---- rendering ------------------------------------------------------------ */

static void test_render(void **state)
{
	(void)state;
	struct metrics *m = metrics_new("mx", "mx");
	struct metric *sess = metrics_counter(m, "rampart_sessions_total", "SMTP sessions accepted.");
	struct metric *rej = metrics_counter(m, "rampart_rejected_total", "Messages rejected, by reason.");
	struct metric *q = metrics_gauge(m, "rampart_queue_messages", "Messages in the queue.");
	metric_inc(sess, NULL);
	metric_inc(sess, "");
	metric_add(sess, NULL, 3);
	metric_inc(rej, "check=\"relay\",reason=\"relay_denied\"");
	metric_add(rej, "check=\"dnsbl\",reason=\"listed\"", 2);
	metric_inc(rej, "check=\"relay\",reason=\"relay_denied\"");
	metric_set(q, "queue=\"active\"", 12);
	metric_set(q, "queue=\"deferred\"", 0.5);
	metric_set(q, "queue=\"active\"", 7);

	char *text = render(m);
	assert_string_equal(text,
		"# HELP rampart_sessions_total SMTP sessions accepted.\n"
		"# TYPE rampart_sessions_total counter\n"
		"rampart_sessions_total{stage=\"mx\",instance=\"mx\"} 5\n"
		"# HELP rampart_rejected_total Messages rejected, by reason.\n"
		"# TYPE rampart_rejected_total counter\n"
		"rampart_rejected_total{stage=\"mx\",instance=\"mx\",check=\"relay\",reason=\"relay_denied\"} 2\n"
		"rampart_rejected_total{stage=\"mx\",instance=\"mx\",check=\"dnsbl\",reason=\"listed\"} 2\n"
		"# HELP rampart_queue_messages Messages in the queue.\n"
		"# TYPE rampart_queue_messages gauge\n"
		"rampart_queue_messages{stage=\"mx\",instance=\"mx\",queue=\"active\"} 7\n"
		"rampart_queue_messages{stage=\"mx\",instance=\"mx\",queue=\"deferred\"} 0.5\n");
	free(text);
	metrics_free(m);
}

static void test_histogram(void **state)
{
	(void)state;
	struct metrics *m = metrics_new("spam", "spam");
	static const double b[] = { 0, 5, 10 };
	struct metric *h = metrics_histogram(m, "rampart_spam_score", "Scores.", b, 3);
	metric_observe(h, NULL, -1);
	metric_observe(h, NULL, 5);         /* a bound counts in its own bucket */
	metric_observe(h, NULL, 7.5);
	metric_observe(h, NULL, 30);
	metric_observe(h, "action=\"tag\"", 12);
	metric_add(h, NULL, 100);           /* not for histograms: ignored */
	char *text = render(m);
	assert_string_equal(text,
		"# HELP rampart_spam_score Scores.\n"
		"# TYPE rampart_spam_score histogram\n"
		"rampart_spam_score_bucket{stage=\"spam\",instance=\"spam\",le=\"0\"} 1\n"
		"rampart_spam_score_bucket{stage=\"spam\",instance=\"spam\",le=\"5\"} 2\n"
		"rampart_spam_score_bucket{stage=\"spam\",instance=\"spam\",le=\"10\"} 3\n"
		"rampart_spam_score_bucket{stage=\"spam\",instance=\"spam\",le=\"+Inf\"} 4\n"
		"rampart_spam_score_sum{stage=\"spam\",instance=\"spam\"} 41.5\n"
		"rampart_spam_score_count{stage=\"spam\",instance=\"spam\"} 4\n"
		"rampart_spam_score_bucket{stage=\"spam\",instance=\"spam\",action=\"tag\",le=\"0\"} 0\n"
		"rampart_spam_score_bucket{stage=\"spam\",instance=\"spam\",action=\"tag\",le=\"5\"} 0\n"
		"rampart_spam_score_bucket{stage=\"spam\",instance=\"spam\",action=\"tag\",le=\"10\"} 0\n"
		"rampart_spam_score_bucket{stage=\"spam\",instance=\"spam\",action=\"tag\",le=\"+Inf\"} 1\n"
		"rampart_spam_score_sum{stage=\"spam\",instance=\"spam\",action=\"tag\"} 12\n"
		"rampart_spam_score_count{stage=\"spam\",instance=\"spam\",action=\"tag\"} 1\n");
	free(text);
	metrics_free(m);
}

static void test_empty_family(void **state)
{
	(void)state;
	struct metrics *m = metrics_new("queue", "queue-2");
	metrics_gauge(m, "rampart_up", "Always 1.");
	char *text = render(m);
	assert_string_equal(text, "# HELP rampart_up Always 1.\n# TYPE rampart_up gauge\n");
	free(text);
	metrics_free(m);

	m = metrics_new("mx", NULL);                /* instance defaults to the stage */
	metric_set(metrics_gauge(m, "rampart_up", ""), NULL, 1);
	text = render(m);
	assert_has(text, "rampart_up{stage=\"mx\",instance=\"mx\"} 1\n");
	free(text);
	metrics_free(m);
	metrics_free(NULL);
}

static void test_values(void **state)
{
	(void)state;
	struct metrics *m = metrics_new("mx", "mx");
	struct metric *c = metrics_counter(m, "c_total", "c");
	struct metric *g = metrics_gauge(m, "g", "g");

	metric_inc(c, "k=\"a\"");
	metric_add(c, "k=\"a\"", 2.5);
	assert_true(metric_get(c, "k=\"a\"") == 3.5);
	metric_add(c, "k=\"a\"", -1);               /* counters never go down */
	metric_add(c, "k=\"a\"", NAN);
	assert_true(metric_get(c, "k=\"a\"") == 3.5);
	metric_set(c, "k=\"a\"", 100);              /* set is allowed (totals kept elsewhere) */
	assert_true(metric_get(c, "k=\"a\"") == 100);
	assert_true(metric_get(c, "k=\"other\"") == 0);
	assert_true(metric_get(c, NULL) == 0);

	metric_set(g, "v=\"int\"", -3);
	metric_add(g, "v=\"int\"", -1);              /* gauges do */
	metric_set(g, "v=\"tenth\"", 0.1);
	metric_set(g, "v=\"third\"", 1.0 / 3.0);
	metric_set(g, "v=\"big\"", 1e20);
	metric_set(g, "v=\"bigint\"", 4294967296.0 * 1000);
	metric_set(g, "v=\"nan\"", NAN);
	metric_set(g, "v=\"inf\"", INFINITY);
	metric_set(g, "v=\"ninf\"", -INFINITY);
	metric_set(g, "v=\"negzero\"", -0.0);
	char *text = render(m);
	assert_has(text, "c_total{stage=\"mx\",instance=\"mx\",k=\"a\"} 100\n");
	assert_lacks(text, "other");                /* metric_get creates nothing */
	assert_has(text, "g{stage=\"mx\",instance=\"mx\",v=\"int\"} -4\n");
	assert_has(text, "v=\"tenth\"} 0.1\n");
	assert_has(text, "v=\"third\"} 0.33333333333333331\n");
	assert_has(text, "v=\"big\"} 1e+20\n");
	assert_has(text, "v=\"bigint\"} 4294967296000\n");
	assert_has(text, "v=\"nan\"} NaN\n");
	assert_has(text, "v=\"inf\"} +Inf\n");
	assert_has(text, "v=\"ninf\"} -Inf\n");
	assert_has(text, "v=\"negzero\"} 0\n");
	free(text);
	metrics_free(m);
}

static double read_double(void *arg)
{
	return *(double *)arg;
}

static void test_gauge_cb(void **state)
{
	(void)state;
	struct metrics *m = metrics_new("queue", "queue");
	double active = 4, deferred = 9;
	metrics_gauge_cb(m, "rampart_queue_size", "Messages by queue.", "queue=\"active\"",
			 read_double, &active);
	metrics_gauge_cb(m, "rampart_queue_size", "Messages by queue.", "queue=\"deferred\"",
			 read_double, &deferred);
	char *text = render(m);
	assert_has(text, "# TYPE rampart_queue_size gauge\n");
	assert_has(text, "rampart_queue_size{stage=\"queue\",instance=\"queue\",queue=\"active\"} 4\n");
	assert_has(text, "rampart_queue_size{stage=\"queue\",instance=\"queue\",queue=\"deferred\"} 9\n");
	free(text);

	active = 17.25;                             /* computed at each scrape */
	text = render(m);
	assert_has(text, "queue=\"active\"} 17.25\n");
	free(text);
	/* One family, declared once. */
	struct metric *f = metrics_gauge(m, "rampart_queue_size", "Messages by queue.");
	assert_true(metric_get(f, "queue=\"active\"") == 17.25);
	text = render(m);
	char *first = strstr(text, "# HELP");
	assert_non_null(first);
	assert_null(strstr(first + 1, "# HELP"));
	free(text);
	metrics_free(m);
}

static void test_same_family(void **state)
{
	(void)state;
	struct metrics *m = metrics_new("mx", "mx");
	struct metric *a = metrics_counter(m, "x_total", "x");
	struct metric *b = metrics_counter(m, "x_total", "x");
	assert_ptr_equal(a, b);
	assert_ptr_not_equal(a, metrics_counter(m, "y_total", "y"));
	metrics_free(m);
}

static void test_escaping(void **state)
{
	(void)state;
	struct metrics *m = metrics_new("m\"x", "a\\b");
	struct metric *c = metrics_counter(m, "per_sender_total", "Per sender.\nSecond line with \\ in it.");
	struct buf labels = BUF_INIT;
	buf_puts(&labels, "sender=\"");
	metrics_escape_label(&labels, "we\"ird\\user\n@example.test");
	buf_puts(&labels, "\"");
	metric_inc(c, buf_cstr(&labels));
	assert_true(metric_get(c, buf_cstr(&labels)) == 1);
	buf_free(&labels);
	char *text = render(m);
	assert_has(text, "# HELP per_sender_total Per sender.\\nSecond line with \\\\ in it.\n");
	assert_has(text, "per_sender_total{stage=\"m\\\"x\",instance=\"a\\\\b\","
			 "sender=\"we\\\"ird\\\\user\\n@example.test\"} 1\n");
	free(text);
	metrics_free(m);
}

struct bad_labels {
	struct metric *c;
};

static void add_bad_labels(void *arg)
{
	struct bad_labels *b = arg;
	metric_inc(b->c, "reason=relay_denied");          /* unquoted */
	metric_inc(b->c, "stage=\"other\"");              /* the registry's own */
	metric_inc(b->c, "instance=\"x\"");
	metric_inc(b->c, "a=\"1\"b=\"2\"");                /* no comma */
	metric_inc(b->c, "a=\"1\",");
	metric_inc(b->c, "a=\"x\ny\"");
	metric_inc(b->c, "9a=\"1\"");
	metric_inc(b->c, "a=\"\\q\"");
}

static void test_bad_labels(void **state)
{
	(void)state;
	struct metrics *m = metrics_new("mx", "mx");
	struct bad_labels b = { metrics_counter(m, "r_total", "r") };
	char logged[8192];
	capture_log(add_bad_labels, &b, logged, sizeof(logged));
	assert_has(logged, "metric_bad_labels");
	metric_inc(b.c, "a=\"1\",b_2=\"x\\\"y\",c=\"\"");   /* well formed */
	char *text = render(m);
	assert_string_equal(text,
		"# HELP r_total r\n# TYPE r_total counter\n"
		"r_total{stage=\"mx\",instance=\"mx\",a=\"1\",b_2=\"x\\\"y\",c=\"\"} 1\n");
	free(text);
	metrics_free(m);
}

static void test_many_samples(void **state)
{
	(void)state;
	struct metrics *m = metrics_new("mx", "mx");
	struct metric *c = metrics_counter(m, "sender_total", "s");
	char l[64];
	for (int round = 0; round < 3; round++)
		for (int i = 0; i < 1000; i++) {
			snprintf(l, sizeof(l), "sender=\"s%d\"", i);
			metric_add(c, l, i);
		}
	for (int i = 0; i < 1000; i++) {
		snprintf(l, sizeof(l), "sender=\"s%d\"", i);
		assert_true(metric_get(c, l) == 3.0 * i);
	}
	char *text = render(m);
	int lines = 0;
	for (char *p = text; *p; p++)
		lines += *p == '\n';
	assert_int_equal(lines, 1002);
	/* Insertion order is kept. */
	assert_true(strstr(text, "sender=\"s1\"}") < strstr(text, "sender=\"s999\"}"));
	assert_has(text, "sender=\"s999\"} 2997\n");
	free(text);
	metrics_free(m);
}

/* ---- HTTP ----------------------------------------------------------------- */

struct response {
	int status;
	char *head;             /* status line and headers */
	char *body;
};

static void response_free(struct response *r)
{
	free(r->head);
	free(r->body);
}

/* Send request to 127.0.0.1:port, driving base until the server closes. */
static struct response http(struct event_base *base, int port, const char *request)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	/* On loopback the kernel completes the connection from the listen
	 * backlog, before the server accepts. */
	assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	size_t len = strlen(request);
	assert_int_equal(write(fd, request, len), (ssize_t)len);
	assert_int_equal(fcntl(fd, F_SETFL, O_NONBLOCK), 0);

	struct buf in = BUF_INIT;
	bool eof = false;
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (!eof) {
		event_base_loop(base, EVLOOP_NONBLOCK);
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 10) > 0) {
			char chunk[4096];
			ssize_t n = read(fd, chunk, sizeof(chunk));
			if (n > 0)
				buf_append(&in, chunk, (size_t)n);
			else if (n == 0 || errno != EAGAIN)
				eof = true;
		}
		clock_gettime(CLOCK_MONOTONIC, &t);
		if (t.tv_sec - t0.tv_sec > 5)
			fail_msg("no complete answer from the metrics server");
	}
	close(fd);

	struct response r = { 0 };
	const char *all = buf_cstr(&in);
	assert_int_equal(sscanf(all, "HTTP/1.%*d %d", &r.status), 1);
	const char *sep = strstr(all, "\r\n\r\n");
	assert_non_null(sep);
	r.head = strndup(all, (size_t)(sep - all) + 2);
	r.body = strdup(sep + 4);
	buf_free(&in);
	return r;
}

static void test_http(void **state)
{
	(void)state;
	struct event_base *base = event_base_new();
	assert_non_null(base);
	struct metrics *m = metrics_new("mx", "mx");
	struct metric *c = metrics_counter(m, "rampart_sessions_total", "SMTP sessions.");
	metric_add(c, NULL, 42);
	char why[256] = "";
	int port = 0;
	if (!metrics_listen(m, base, "127.0.0.1:0", &port, why, sizeof(why)))
		fail_msg("metrics_listen: %s", why);
	assert_true(port > 0 && port < 65536);

	struct response r = http(base, port, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
	assert_int_equal(r.status, 200);
	assert_has(r.head, "\r\nContent-Type: text/plain; version=0.0.4");
	assert_has(r.body, "# TYPE rampart_sessions_total counter\n");
	assert_has(r.body, "rampart_sessions_total{stage=\"mx\",instance=\"mx\"} 42\n");
	response_free(&r);

	/* A scrape sees the current values. */
	metric_inc(c, NULL);
	r = http(base, port, "GET /metrics?debug=1 HTTP/1.0\r\n\r\n");
	assert_int_equal(r.status, 200);
	assert_has(r.body, "rampart_sessions_total{stage=\"mx\",instance=\"mx\"} 43\n");
	response_free(&r);

	r = http(base, port, "GET / HTTP/1.0\r\n\r\n");
	assert_int_equal(r.status, 404);
	assert_lacks(r.body, "rampart_sessions_total");
	response_free(&r);

	r = http(base, port, "GET /metrics/x HTTP/1.0\r\n\r\n");
	assert_int_equal(r.status, 404);
	response_free(&r);

	r = http(base, port, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
	assert_true(r.status >= 400);
	assert_lacks(r.body, "rampart_sessions_total");
	response_free(&r);

	r = http(base, port, "HEAD /metrics HTTP/1.0\r\n\r\n");
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "");
	assert_has(r.head, "\r\nContent-Type: text/plain; version=0.0.4");
	response_free(&r);

	metrics_free(m);
	event_base_free(base);
}

static void test_listen_errors(void **state)
{
	(void)state;
	struct event_base *base = event_base_new();
	assert_non_null(base);
	struct metrics *m = metrics_new("mx", "mx");
	char why[256] = "";
	const char *bad[] = { "nonsense", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:-1",
			      "127.0.0.1:80x", "::1:9100", NULL };
	for (size_t i = 0; bad[i]; i++) {
		why[0] = '\0';
		if (metrics_listen(m, base, bad[i], NULL, why, sizeof(why)))
			fail_msg("%s accepted", bad[i]);
		assert_has(why, bad[i]);
	}

	/* A port that is taken. */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sin);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(fd, 1), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", ntohs(sin.sin_port));
	why[0] = '\0';
	assert_false(metrics_listen(m, base, addr, NULL, why, sizeof(why)));
	assert_has(why, addr);
	assert_has(why, "in use");
	close(fd);

	/* Two listeners on one registry and loop are fine; another loop is not. */
	int p1 = 0, p2 = 0;
	assert_true(metrics_listen(m, base, "127.0.0.1:0", &p1, why, sizeof(why)));
	assert_true(metrics_listen(m, base, "[127.0.0.1]:0", &p2, why, sizeof(why)));
	assert_int_not_equal(p1, p2);
	struct response r = http(base, p2, "GET /metrics HTTP/1.0\r\n\r\n");
	assert_int_equal(r.status, 200);
	response_free(&r);
	struct event_base *other = event_base_new();
	why[0] = '\0';
	assert_false(metrics_listen(m, other, "127.0.0.1:0", NULL, why, sizeof(why)));
	assert_true(why[0] != '\0');
	event_base_free(other);

	metrics_free(m);
	event_base_free(base);
}

int main(void)
{
	log_init("test", "test_metrics");
	log_set_level(LL_ERROR);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_render),
		cmocka_unit_test(test_histogram),
		cmocka_unit_test(test_empty_family),
		cmocka_unit_test(test_values),
		cmocka_unit_test(test_gauge_cb),
		cmocka_unit_test(test_same_family),
		cmocka_unit_test(test_escaping),
		cmocka_unit_test(test_bad_labels),
		cmocka_unit_test(test_many_samples),
		cmocka_unit_test(test_http),
		cmocka_unit_test(test_listen_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
