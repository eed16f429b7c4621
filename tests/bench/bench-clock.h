/*
 * bench-clock.h — the clocks the benchmark programs of tests/bench measure
 * with: wall time (CLOCK_MONOTONIC), the whole process's CPU time and the
 * calling thread's CPU time, all in seconds.  Header only.
 */
#ifndef BENCH_CLOCK_H
#define BENCH_CLOCK_H

#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>

/* CLOCK_MONOTONIC, seconds. */
static inline double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The process's CPU time (user + system, every thread), seconds. */
static inline double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* The calling thread's CPU time, seconds. */
static inline double thread_cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

#endif
