/*
 * Helpers shared by the benchmarks: a monotonic clock, medians, a fatal error, and starting
 * outbox-relay as its own process.
 */
#ifndef OUTBOX_BENCH_H
#define OUTBOX_BENCH_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void bench_die(const char *prog, const char *what, const char *why) {
    fprintf(stderr, "%s: %s: %s\n", prog, what, why);
    exit(1);
}

static inline int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Sorts v (n values) and returns its median (the upper one for even n). */
static inline double bench_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof(*v), bench_cmp_double);
    return v[n / 2];
}

/* Starts `relay -X kafka.bootstrap.servers=B -X log.level=4 [-X extra]... run`; returns its pid.
 * extra holds relay settings such as relay.inflight.batches=1. */
static inline pid_t bench_start_relay(const char *relay, const char *bootstrap, char *const *extra, int n_extra) {
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    char boot[512];
    snprintf(boot, sizeof(boot), "kafka.bootstrap.servers=%s", bootstrap);
    char **args = calloc((size_t)(2 * n_extra + 8), sizeof(char *));
    int k = 0;
    args[k++] = (char *)relay;
    args[k++] = (char *)"-X";
    args[k++] = boot;
    args[k++] = (char *)"-X";
    args[k++] = (char *)"log.level=4";
    for (int i = 0; i < n_extra; i++) {
        args[k++] = (char *)"-X";
        args[k++] = extra[i];
    }
    args[k++] = (char *)"run";
    execv(relay, args);
    _exit(127);
}

#endif
